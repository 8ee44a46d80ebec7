//! Admission: which tenant, and so which space, a socket belongs to. Decided once, at the
//! upgrade, before the socket exists; the socket then holds only that space.
//!
//! - A **worker** is the tenant of its key. A worker without a key is the `default` tenant's,
//!   and only when that tenant has no worker keys and the worker connects from this machine
//!   (or `allow_anonymous_workers: true` says any address will do).
//! - A **client** with a JWT that names a `tenant` is that tenant's, once the signature checks
//!   out with that tenant's keys (`tenants::tokens`). Any other client (no token, or a token
//!   that is not such a JWT, which the tenant's `auth_function` may still read, as iii does)
//!   is anonymous: of the tenant `?tenant=` names, else of `default`, and only if that tenant
//!   does not require tokens.

use super::Engine;
use super::space::Space;
use crate::tenants::{AuthCode, AuthError, ClientIdentity, DEFAULT_TENANT, Tenant, tokens};
use std::net::IpAddr;
use std::sync::Arc;

/// A socket's tenant, as admitted.
pub struct Admitted {
    pub tenant: Arc<Tenant>,
    pub space: Arc<Space>,
}

impl Engine {
    pub fn admit_worker(&self, key: Option<&str>, peer: IpAddr) -> Result<Admitted, AuthError> {
        let tenant = match key.filter(|k| !k.is_empty()) {
            Some(key) => self.tenants.resolve_worker_key(Some(key))?,
            None => {
                let tenant = self.known(DEFAULT_TENANT)?;
                if !tenant.config.worker_keys.is_empty() {
                    return Err(AuthError::new(
                        AuthCode::MissingWorkerKey,
                        "this engine needs a worker key: send `Authorization: Bearer <key>` (the iii SDKs send III_TOKEN) or `?token=<key>`",
                    ));
                }
                if !(self.config.allow_anonymous_workers || peer.is_loopback()) {
                    return Err(AuthError::new(
                        AuthCode::MissingWorkerKey,
                        "workers without a key are accepted only from this machine: send a worker key (III_TOKEN), or set `allow_anonymous_workers: true` in the engine's config",
                    ));
                }
                enabled(tenant)?
            }
        };
        self.admitted(tenant)
    }

    /// `token`: what the client offered (subprotocol, header or `?token=`); `tenant`: the
    /// `?tenant=` it asked for, for an anonymous client.
    pub fn admit_client(
        &self,
        token: Option<&str>,
        tenant: Option<&str>,
    ) -> Result<(ClientIdentity, Admitted), AuthError> {
        let token = token.filter(|t| !t.is_empty());
        let unreadable = match token.map(tokens::read_unverified) {
            Some(Ok(_)) => {
                let (identity, tenant) = self.tenants.verify_client_token(token.unwrap())?;
                return Ok((identity, self.admitted(tenant)?));
            }
            Some(Err(e)) => Some(e),
            None => None,
        };
        let tenant = enabled(self.known(tenant.unwrap_or(DEFAULT_TENANT))?)?;
        if tenant.config.clients.token_required {
            let why = match unreadable {
                Some(e) => e.message,
                None => "no token was offered".into(),
            };
            return Err(AuthError::invalid_token(format!(
                "tenant `{}` requires a token signed with one of its keys ({why}): send it as the `Authorization` subprotocol, an `Authorization: Bearer` header or `?token=`",
                tenant.id()
            )));
        }
        let identity = ClientIdentity::anonymous(tenant.id().clone());
        Ok((identity, self.admitted(tenant)?))
    }

    fn known(&self, id: &str) -> Result<Arc<Tenant>, AuthError> {
        self.tenants.get(id).ok_or_else(|| {
            AuthError::new(
                AuthCode::UnknownTenant,
                format!(
                    "no tenant `{}` on this engine",
                    crate::tenants::error::shown(id)
                ),
            )
        })
    }

    fn admitted(&self, tenant: Arc<Tenant>) -> Result<Admitted, AuthError> {
        let space = self.space(tenant.id().as_str()).ok_or_else(|| {
            AuthError::new(
                AuthCode::UnknownTenant,
                format!("tenant `{}` is being removed", tenant.id()),
            )
        })?;
        Ok(Admitted { tenant, space })
    }
}

fn enabled(tenant: Arc<Tenant>) -> Result<Arc<Tenant>, AuthError> {
    if tenant.enabled() {
        Ok(tenant)
    } else {
        Err(AuthError::new(
            AuthCode::TenantDisabled,
            format!(
                "tenant `{}` is disabled: ask its operator to enable it",
                tenant.id()
            ),
        ))
    }
}
