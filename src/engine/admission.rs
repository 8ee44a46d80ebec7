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
//!
//! An admission can go stale: the operator disables or deletes the tenant, or revokes the
//! worker key. The change closes the sockets listed at that moment; a socket admitted just
//! before it but listed just after is caught by [`Engine::list_socket`], which lists first
//! and checks second, so that no change falls between the two.

use super::space::{Kind, Listed, Space};
use super::{CLOSE_TENANT_GONE, Engine};
use crate::fanout::outbox::Outbox;
use crate::tenants::quotas::{QuotaExceeded, SlotPermit};
use crate::tenants::{
    AuthCode, AuthError, ClientIdentity, DEFAULT_TENANT, Tenant, hash_key, tokens,
};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The close code of a worker whose key was revoked: reconnect with a current key.
pub const CLOSE_KEY_REVOKED: u16 = 4001;

/// A socket's tenant, as admitted.
pub struct Admitted {
    pub tenant: Arc<Tenant>,
    pub space: Arc<Space>,
    /// The SHA-256 of the worker key that admitted a worker; None for a keyless one.
    pub key_sha256: Option<String>,
}

/// Takes one of the tenant's connections for a socket about to open: a token of its
/// `connects_per_second`, then a slot of its `connections`, held by the permit for as long as
/// the socket lives. The slot is one atomic step, so two racing upgrades never both take the
/// last one. Every refusal is counted in the tenant's metrics.
pub fn take_connection(space: &Space) -> Result<SlotPermit, QuotaExceeded> {
    let quotas = space.quotas();
    quotas.connects.take(1).map_err(|e| quotas.refused(e))?;
    quotas.connections.take(1).map_err(|e| quotas.refused(e))
}

impl Engine {
    pub fn admit_worker(&self, key: Option<&str>, peer: IpAddr) -> Result<Admitted, AuthError> {
        let key = key.filter(|k| !k.is_empty());
        let tenant = match key {
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
                tenant.require_enabled()?
            }
        };
        let mut admitted = self.admitted(tenant)?;
        admitted.key_sha256 = key.map(hash_key);
        Ok(admitted)
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
        let tenant = self
            .known(tenant.unwrap_or(DEFAULT_TENANT))?
            .require_enabled()?;
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
        Ok(Admitted {
            tenant,
            space,
            key_sha256: None,
        })
    }

    /// Puts an admitted socket on its space's list, and closes it at once if its admission
    /// went stale since the upgrade (see the module comment).
    pub fn list_socket(
        &self,
        space: &Arc<Space>,
        kind: Kind,
        addr: Option<SocketAddr>,
        who: &str,
        key_sha256: Option<&str>,
        outbox: &Arc<Outbox>,
    ) -> Listed {
        let listed = space.list(kind, addr, who, key_sha256, outbox);
        if let Err((code, reason)) = self.admission_holds(space, key_sha256) {
            tracing::info!(tenant = %space.tenant, code, "closing a socket admitted just before a change: {reason}");
            outbox.close(code, reason);
        }
        listed
    }

    /// Whether a socket of `space`, admitted with this worker key (if any), may stay open:
    /// else the close code and reason it gets.
    fn admission_holds(
        &self,
        space: &Arc<Space>,
        key_sha256: Option<&str>,
    ) -> Result<(), (u16, String)> {
        let id = &space.tenant;
        let current = self.space(id.as_str());
        let tenant = match self.tenants.get(id.as_str()) {
            Some(t) if current.is_some_and(|s| Arc::ptr_eq(&s, space)) => t,
            _ => return Err((CLOSE_TENANT_GONE, format!("tenant `{id}` was deleted"))),
        };
        if !tenant.enabled() {
            return Err((CLOSE_TENANT_GONE, format!("tenant `{id}` is disabled")));
        }
        match key_sha256 {
            Some(k) if !holds_key(&tenant, k) => Err((CLOSE_KEY_REVOKED, revoked_reason())),
            _ => Ok(()),
        }
    }

    /// Closes the tenant's workers whose key it no longer lists (revoked, or left out of a
    /// new config); returns how many.
    pub fn close_revoked_workers(&self, id: &str) -> usize {
        let (Some(space), Some(tenant)) = (self.space(id), self.tenants.get(id)) else {
            return 0;
        };
        space.close_revoked(
            |k| holds_key(&tenant, k),
            CLOSE_KEY_REVOKED,
            &revoked_reason(),
        )
    }
}

fn holds_key(tenant: &Tenant, sha256: &str) -> bool {
    tenant.config.worker_keys.iter().any(|k| k.sha256 == sha256)
}

fn revoked_reason() -> String {
    "the worker key was revoked: reconnect with a current key".into()
}
