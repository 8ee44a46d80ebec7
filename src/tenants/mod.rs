//! Tenants: isolated, authenticated namespaces on one engine.
//!
//! The trust model, from the outside in:
//! - A **worker** proves its tenant with a worker key (`Authorization: Bearer <key>` or
//!   `?token=<key>` on the upgrade). The engine stores only SHA-256 digests of the keys
//!   ([`keys`]); the key decides the tenant, and a key belongs to exactly one tenant.
//! - A **client** proves its tenant with a JWT whose `tenant` claim names the tenant and
//!   whose signature verifies with one of *that* tenant's keys ([`tokens`]). Its `streams`
//!   claim, intersected with the tenant's own `streams`, is what it may join ([`patterns`]).
//! - The **operator** writes the config and drives the admin API; nothing a worker or a client
//!   sends can change a tenant. The `default` tenant is today's engine, for existing iii
//!   deployments.
//!
//! [`Tenants`] is the live registry: tenant id to an immutable [`Tenant`] snapshot (its
//! config and decoded client keys), plus the worker-key index, behind one `RwLock`. Every
//! change builds the new entry first (reading key files and the environment, decoding PEMs),
//! outside the lock, and then swaps it in, so readers (every connection) never wait on file
//! I/O and never see a tenant half-changed. A connection that was admitted keeps the
//! `Arc<Tenant>` it was admitted with; a disable or a rotation is a new snapshot, and closing
//! the connections of the old one is the caller's (the sockets').

pub mod config;
pub mod error;
pub mod keys;
pub mod patterns;
pub mod quotas;
pub mod tokens;

pub use config::{
    AdapterCeilings, ClientAuthConfig, ClientKeyConfig, DEFAULT_TENANT, KeyAlg, Quotas,
    TenantConfig, TenantId, WorkerKeyConfig, parse_tenants,
};
pub use error::{AuthCode, AuthError};
pub use keys::{WorkerKeys, generate_key, hash_key};
pub use patterns::StreamPatterns;
pub use quotas::{QUOTA_EXCEEDED, QuotaExceeded, Rate, Slots, TenantQuotas};
pub use tokens::{ClientIdentity, ClientKeys};

use anyhow::{Context, bail};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// One tenant as the engine serves it. Immutable: a change is a new `Tenant`.
#[derive(Debug)]
pub struct Tenant {
    pub config: TenantConfig,
    pub client_keys: Arc<ClientKeys>,
}

impl Tenant {
    pub fn id(&self) -> &TenantId {
        &self.config.id
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// The tenant, or `tenant_disabled` saying who can fix it.
    pub fn require_enabled(self: Arc<Self>) -> Result<Arc<Self>, AuthError> {
        if self.enabled() {
            Ok(self)
        } else {
            Err(AuthError::new(
                AuthCode::TenantDisabled,
                format!(
                    "tenant `{}` is disabled: ask its operator to enable it",
                    self.id()
                ),
            ))
        }
    }
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<TenantId, Arc<Tenant>>,
    worker_keys: WorkerKeys,
}

/// The live registry of tenants.
pub struct Tenants {
    inner: RwLock<Inner>,
    /// What relative `public_key_file`s are relative to: the config file's folder.
    base: PathBuf,
}

impl Tenants {
    /// No tenants; key files will be looked up relative to `base`.
    pub fn new(base: impl Into<PathBuf>) -> Self {
        Tenants {
            inner: RwLock::new(Inner::default()),
            base: base.into(),
        }
    }

    /// The registry a config file describes; any invalid tenant fails the whole start.
    pub fn from_configs(
        configs: Vec<TenantConfig>,
        base: impl Into<PathBuf>,
    ) -> anyhow::Result<Self> {
        let tenants = Tenants::new(base);
        for c in configs {
            tenants.insert(c)?;
        }
        Ok(tenants)
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // Nothing panics while holding the lock; if something ever did, the data is still a
        // consistent snapshot (every write is a single swap), so keep serving.
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    pub fn get(&self, id: &str) -> Option<Arc<Tenant>> {
        self.read().by_id.get(id).cloned()
    }

    /// Every tenant, by id.
    pub fn list(&self) -> Vec<Arc<Tenant>> {
        let mut all: Vec<_> = self.read().by_id.values().cloned().collect();
        all.sort_by(|a, b| a.id().cmp(b.id()));
        all
    }

    pub fn len(&self) -> usize {
        self.read().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().by_id.is_empty()
    }

    /// Does any tenant have a worker key? (If none does, workers cannot authenticate at all.)
    pub fn has_worker_keys(&self) -> bool {
        !self.read().worker_keys.is_empty()
    }

    /// Adds a tenant; refuses an id that exists.
    pub fn insert(&self, config: TenantConfig) -> anyhow::Result<Arc<Tenant>> {
        self.commit(config, false).map(|(new, _)| new)
    }

    /// Adds or replaces a tenant (its keys, patterns and ceilings, all at once); returns the
    /// tenant it replaced.
    pub fn replace(
        &self,
        config: TenantConfig,
    ) -> anyhow::Result<(Arc<Tenant>, Option<Arc<Tenant>>)> {
        self.commit(config, true)
    }

    fn commit(
        &self,
        config: TenantConfig,
        may_replace: bool,
    ) -> anyhow::Result<(Arc<Tenant>, Option<Arc<Tenant>>)> {
        config.validate()?;
        let keys = ClientKeys::compile(&config.id, &config.clients.keys, &self.base)?;
        let id = config.id.clone();
        let mut inner = self.write();
        if !may_replace && inner.by_id.contains_key(&id) {
            bail!("tenant `{id}` already exists");
        }
        let (new, old) = inner.swap(config, Arc::new(keys))?;
        drop(inner);
        warn_about(&new);
        Ok((new, old))
    }

    /// Changes a tenant's config under the write lock, so that two changes at once both
    /// land. `keys`, when given, were compiled (outside the lock) from the changed config.
    fn update(
        &self,
        id: &str,
        change: impl FnOnce(&mut TenantConfig),
        keys: Option<Arc<ClientKeys>>,
    ) -> anyhow::Result<Arc<Tenant>> {
        let mut inner = self.write();
        let current = inner
            .by_id
            .get(id)
            .with_context(|| format!("no tenant `{id}`"))?;
        let mut config = current.config.clone();
        change(&mut config);
        config.validate()?;
        let keys = keys.unwrap_or_else(|| current.client_keys.clone());
        let (new, _) = inner.swap(config, keys)?;
        drop(inner);
        warn_about(&new);
        Ok(new)
    }

    /// Enables or disables a tenant. A disabled tenant's workers and clients are refused
    /// with `tenant_disabled`; its data and keys stay.
    pub fn set_enabled(&self, id: &str, enabled: bool) -> anyhow::Result<Arc<Tenant>> {
        self.update(id, |c| c.enabled = enabled, None)
    }

    /// Removes a tenant and forgets its worker keys.
    pub fn remove(&self, id: &str) -> Option<Arc<Tenant>> {
        let mut inner = self.write();
        let old = inner.by_id.remove(id)?;
        inner.worker_keys.remove_tenant(old.id());
        Some(old)
    }

    /// Rotation: the tenant's client keys become `keys`; tokens signed with a kid that is no
    /// longer listed are refused from now on.
    pub fn set_client_keys(
        &self,
        id: &str,
        keys: Vec<ClientKeyConfig>,
    ) -> anyhow::Result<Arc<Tenant>> {
        let tenant = TenantId::new(id).map_err(anyhow::Error::msg)?;
        let compiled = Arc::new(ClientKeys::compile(&tenant, &keys, &self.base)?);
        self.update(id, |c| c.clients.keys = keys, Some(compiled))
    }

    /// Makes a new worker key for a tenant and returns it in clear: the only time it is
    /// shown. Only its digest is kept.
    pub fn add_worker_key(&self, id: &str, name: Option<String>) -> anyhow::Result<String> {
        let clear = generate_key();
        let key = WorkerKeyConfig::new(&hash_key(&clear), name).map_err(anyhow::Error::msg)?;
        self.update(id, |c| c.worker_keys.push(key), None)?;
        Ok(clear)
    }

    /// Revokes a worker key by its digest; false if the tenant had no such key.
    pub fn revoke_worker_key(&self, id: &str, sha256: &str) -> anyhow::Result<bool> {
        let sha256 = sha256.to_ascii_lowercase();
        let mut found = false;
        self.update(
            id,
            |c| {
                let before = c.worker_keys.len();
                c.worker_keys.retain(|k| k.sha256 != sha256);
                found = c.worker_keys.len() != before;
            },
            None,
        )?;
        Ok(found)
    }

    /// The tenant a worker's key belongs to. `None`: the worker sent no key.
    pub fn resolve_worker_key(&self, presented: Option<&str>) -> Result<Arc<Tenant>, AuthError> {
        let Some(presented) = presented.filter(|k| !k.is_empty()) else {
            return Err(AuthError::new(
                AuthCode::MissingWorkerKey,
                "this worker socket needs a worker key: send `Authorization: Bearer <key>` (the iii SDKs send III_TOKEN) or `?token=<key>`",
            ));
        };
        let inner = self.read();
        let tenant = inner
            .worker_keys
            .resolve(presented)
            .and_then(|id| inner.by_id.get(id))
            .cloned()
            .ok_or_else(|| {
                AuthError::new(
                    AuthCode::InvalidWorkerKey,
                    "the worker key is not known: check III_TOKEN or the token you pass (was the key revoked or rotated?)",
                )
            })?;
        drop(inner);
        tenant.require_enabled()
    }

    /// Verifies a client's token: the tenant it claims, that tenant's key, the claims, and
    /// that the tenant is enabled. Returns who the client is and the tenant as it is now.
    pub fn verify_client_token(
        &self,
        token: &str,
    ) -> Result<(ClientIdentity, Arc<Tenant>), AuthError> {
        let seen = tokens::read_unverified(token)?;
        let tenant = self.get(seen.tenant.as_str()).ok_or_else(|| {
            AuthError::new(
                AuthCode::UnknownTenant,
                format!(
                    "no tenant `{}`: check the token's `tenant` claim",
                    seen.tenant
                ),
            )
        })?;
        let identity = tokens::verify(token, &seen, &tenant.config, &tenant.client_keys)?;
        Ok((identity, tenant.require_enabled()?))
    }
}

impl Inner {
    /// Puts a tenant in, with its worker keys; nothing slow happens here.
    fn swap(
        &mut self,
        config: TenantConfig,
        client_keys: Arc<ClientKeys>,
    ) -> anyhow::Result<(Arc<Tenant>, Option<Arc<Tenant>>)> {
        let id = config.id.clone();
        self.worker_keys
            .set_tenant(&id, &config.worker_keys)
            .map_err(|e| anyhow::anyhow!("tenant `{id}`: {e}"))?;
        let tenant = Arc::new(Tenant {
            config,
            client_keys,
        });
        let old = self.by_id.insert(id, tenant.clone());
        Ok((tenant, old))
    }
}

fn warn_about(tenant: &Tenant) {
    for w in tenant.config.warnings() {
        tracing::warn!(tenant = %tenant.id(), "{w}");
    }
}

#[cfg(test)]
mod tests;
