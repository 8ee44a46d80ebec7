//! The engine: what the sockets share. It holds the tenants' registry and one space per
//! tenant (`space`: its functions, hub and store), decides which space a socket belongs to
//! (`admission`), and nothing below the sockets holds it.

pub mod admission;
pub mod space;
pub mod stores;

use crate::config::Config;
use crate::error::FnResult;
use crate::metrics::Metrics;
use crate::storage::StreamAdapter;
use crate::tenants::{DEFAULT_TENANT, TenantConfig, TenantId, Tenants};
use anyhow::Context;
use serde_json::Value;
use space::{Settings, Space};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use stores::Stores;
use tokio::sync::watch;

/// The close code of a socket whose tenant was disabled or deleted.
pub const CLOSE_TENANT_GONE: u16 = 4403;

pub struct Engine {
    pub config: Config,
    /// Every counter `/metrics` shows; the parts that count hold clones of theirs.
    pub metrics: Metrics,
    /// Who the tenants are: their keys, patterns and ceilings.
    pub tenants: Tenants,
    /// Each tenant's running share of the engine.
    spaces: RwLock<HashMap<TenantId, Arc<Space>>>,
    /// Opens a new tenant's store.
    stores: Stores,
    settings: Settings,
    shutdown: watch::Sender<bool>,
}

impl Engine {
    /// An engine serving the configured tenants; `default_store` is the `default` tenant's.
    pub fn new(
        config: Config,
        default_store: Arc<dyn StreamAdapter>,
        stores: Stores,
    ) -> anyhow::Result<Arc<Engine>> {
        let read_telemetry = {
            let adapter = default_store.clone();
            Arc::new(move || adapter.telemetry())
        };
        let metrics = Metrics::new(read_telemetry);
        let mut configs = config.tenants.clone();
        if !configs.iter().any(|t| t.id.is_default()) {
            configs.push(TenantConfig::default_tenant());
        }
        // The iii-style `auth_function` of the stream module is the `default` tenant's.
        for tenant in configs.iter_mut().filter(|t| t.id.is_default()) {
            if tenant.clients.auth_function.is_none() {
                tenant.clients.auth_function = config.auth_function.clone();
            }
        }
        let tenants = Tenants::from_configs(configs, config.base_dir.clone())?;
        let settings = Settings {
            value_limits: config.value_limits,
            invocation_timeout: config.invocation_timeout,
            max_pending_per_worker: config.max_pending_invocations_per_worker,
            calls_in_flight: config.calls_in_flight_per_tenant,
            fanout_in_flight: config.fanout_in_flight_per_tenant,
            wasm_cache_dir: config.wasm_cache_dir.clone(),
            history: config.history.over(Default::default()),
            presence: config.presence.over(&Default::default()),
        };
        let mut spaces = HashMap::new();
        for tenant in tenants.list() {
            let store = if tenant.id().is_default() {
                default_store.clone()
            } else {
                stores.open(tenant.id())?
            };
            let space = Space::new(tenant.id().clone(), store, &settings, &metrics);
            space.configure(&tenant.config);
            spaces.insert(tenant.id().clone(), space);
        }
        Ok(Arc::new(Engine {
            config,
            metrics,
            tenants,
            spaces: RwLock::new(spaces),
            stores,
            settings,
            shutdown: watch::channel(false).0,
        }))
    }

    /// The `default` tenant's space: the engine as an iii deployment knows it.
    pub fn default_space(&self) -> Arc<Space> {
        self.space(DEFAULT_TENANT)
            .expect("the default tenant always has a space")
    }

    pub fn space(&self, tenant: &str) -> Option<Arc<Space>> {
        self.spaces.read().unwrap().get(tenant).cloned()
    }

    pub fn spaces(&self) -> Vec<Arc<Space>> {
        let mut all: Vec<_> = self.spaces.read().unwrap().values().cloned().collect();
        all.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        all
    }

    /// Calls a function in the `default` tenant.
    pub async fn call(&self, function_id: &str, data: Value) -> FnResult {
        self.default_space().functions.call(function_id, data).await
    }

    /// The `default` tenant's store (the configured adapter).
    pub fn store(&self) -> Arc<dyn StreamAdapter> {
        self.default_space().store().clone()
    }

    /// Adds a tenant (or replaces its config) and opens its space if it has none yet.
    pub fn put_tenant(&self, config: TenantConfig) -> anyhow::Result<Arc<Space>> {
        let id = config.id.clone();
        let existing = self.space(id.as_str());
        // Open the store first: a tenant that cannot store anything is not added.
        let store = match &existing {
            Some(_) => None,
            None => Some(
                self.stores
                    .open(&id)
                    .with_context(|| format!("cannot open the store of tenant `{id}`"))?,
            ),
        };
        let (tenant, _) = self.tenants.replace(config)?;
        let space = match (existing, store) {
            (Some(space), _) => space,
            (None, Some(store)) => {
                let space = Space::new(id.clone(), store, &self.settings, &self.metrics);
                self.spaces
                    .write()
                    .unwrap()
                    .insert(id.clone(), space.clone());
                space
            }
            (None, None) => unreachable!(),
        };
        space.configure(&tenant.config);
        if !tenant.enabled() {
            space.close(
                None,
                None,
                CLOSE_TENANT_GONE,
                &format!("tenant `{id}` is disabled"),
            );
        }
        Ok(space)
    }

    /// Enables or disables a tenant; disabling closes its sockets at once.
    pub fn set_tenant_enabled(&self, id: &str, enabled: bool) -> anyhow::Result<()> {
        self.tenants.set_enabled(id, enabled)?;
        if !enabled && let Some(space) = self.space(id) {
            let closed = space.close(
                None,
                None,
                CLOSE_TENANT_GONE,
                &format!("tenant `{id}` is disabled"),
            );
            tracing::info!(tenant = id, closed, "tenant disabled");
        }
        Ok(())
    }

    /// Deletes a tenant: its sockets close and its space goes; its stored data stays where
    /// its store keeps it (see `stores`).
    pub async fn remove_tenant(&self, id: &str) -> anyhow::Result<()> {
        if id == DEFAULT_TENANT {
            anyhow::bail!("the `default` tenant cannot be deleted; disable it instead");
        }
        self.tenants
            .remove(id)
            .with_context(|| format!("no tenant `{id}`"))?;
        let space = self.spaces.write().unwrap().remove(id);
        if let Some(space) = space {
            let closed = space.close(
                None,
                None,
                CLOSE_TENANT_GONE,
                &format!("tenant `{id}` was deleted"),
            );
            tracing::info!(tenant = id, closed, "tenant deleted");
            self.metrics.tenants.forget(id);
            // Before the store stops: its members leave shared rosters (their leaves would be
            // dropped with the store, and no node would renew or remove them).
            let within = self
                .config
                .close_grace
                .min(std::time::Duration::from_secs(3));
            space.leave_shared_rosters(within).await;
            space
                .store()
                .shutdown()
                .await
                .with_context(|| format!("closing the store of tenant `{id}`"))?;
        }
        Ok(())
    }

    /// Resolves when the engine starts shutting down.
    pub fn shutdown_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.shutdown.subscribe();
        async move {
            let _ = rx.wait_for(|down| *down).await;
        }
    }

    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn client_count(&self) -> u64 {
        self.metrics.connections.clients()
    }
}
