//! The streams bound to WebAssembly adapters, by name: the registry behind the
//! `streamhost::*` functions (see `functions::wasm_bindings`) and the stream bindings in the
//! config file. A replaced binding takes over only once the new component has compiled and
//! initialised, so a bad upload never breaks a stream. Adapters keep items in the engine's
//! own store under their stream's name, so a stream whose binding is removed keeps its data.

use super::{Limits, WasmAdapter, WasmHost};
use crate::fanout::item_lock::ItemLocks;
use crate::metrics::TenantCounters;
use crate::storage::StreamAdapter;
use crate::tenants::AdapterCeilings;
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

pub struct WasmBindings {
    host: OnceLock<Arc<WasmHost>>,
    cache_dir: Option<PathBuf>,
    bound: RwLock<HashMap<String, Arc<WasmAdapter>>>,
    /// The tenant's ceilings, for the host.s budget (kept here until the host starts).
    ceilings: Mutex<AdapterCeilings>,
    /// The tenant's series, where its adapters' budget counts refusals.
    counters: TenantCounters,
}

impl WasmBindings {
    pub fn new(cache_dir: Option<PathBuf>, counters: TenantCounters) -> Self {
        WasmBindings {
            host: OnceLock::new(),
            cache_dir,
            counters,
            bound: RwLock::default(),
            ceilings: Mutex::new(AdapterCeilings::default()),
        }
    }

    /// Applies the tenant's ceilings to its adapters' concurrent calls and CPU time.
    pub fn set_ceilings(&self, ceilings: AdapterCeilings) {
        *self.ceilings.lock().unwrap() = ceilings;
        if let Some(host) = self.host.get() {
            host.budget.set_ceilings(ceilings);
        }
    }

    /// The wasmtime host, started on first use so that engines without adapters pay nothing.
    pub fn host(&self) -> anyhow::Result<Arc<WasmHost>> {
        if let Some(h) = self.host.get() {
            return Ok(h.clone());
        }
        let ceilings = *self.ceilings.lock().unwrap();
        let host =
            WasmHost::with_ceilings(self.cache_dir.clone(), ceilings, self.counters.clone())?;
        let host = self.host.get_or_init(|| host).clone();
        // Ceilings changed while the host started apply too.
        host.budget.set_ceilings(*self.ceilings.lock().unwrap());
        Ok(host)
    }

    pub fn get(&self, stream: &str) -> Option<Arc<WasmAdapter>> {
        let bound = self.bound.read().unwrap();
        if bound.is_empty() {
            return None;
        }
        bound.get(stream).cloned()
    }

    /// Compiles, initialises and binds a component that keeps its items in `store` and locks
    /// items with `locks`; replaces an earlier binding.
    pub async fn bind(
        &self,
        stream: &str,
        wasm: &[u8],
        config: Value,
        limits: Limits,
        store: Arc<dyn StreamAdapter>,
        locks: Arc<ItemLocks>,
    ) -> anyhow::Result<Arc<WasmAdapter>> {
        let host = self.host()?;
        let adapter = WasmAdapter::new(host, stream, wasm, config, limits, store, locks).await?;
        let previous = self
            .bound
            .write()
            .unwrap()
            .insert(stream.to_owned(), adapter.clone());
        if previous.is_some() {
            tracing::info!(stream, "WebAssembly adapter replaced");
        }
        Ok(adapter)
    }

    pub fn unbind(&self, stream: &str) -> bool {
        self.bound.write().unwrap().remove(stream).is_some()
    }

    pub fn list(&self) -> Vec<(String, Arc<WasmAdapter>)> {
        let mut all: Vec<_> = self
            .bound
            .read()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// Limits as a config file or a `create_stream` payload gives them; absent ones keep defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    pub memory_mb: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub fuel: Option<u64>,
    pub max_payload_bytes: Option<usize>,
    #[serde(default)]
    pub env: HashMap<String, String>,
}

impl LimitsSpec {
    pub fn to_limits(&self) -> Limits {
        let d = Limits::default();
        let mut env: Vec<(String, String)> = self
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.sort();
        Limits {
            memory_bytes: self
                .memory_mb
                // Saturates: a huge ask must stay huge (and be refused by a ceiling), not
                // wrap round to a small one.
                .map(|m| usize::try_from(m.saturating_mul(1 << 20)).unwrap_or(usize::MAX))
                .unwrap_or(d.memory_bytes),
            timeout: self
                .timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(d.timeout),
            fuel: self.fuel.or(d.fuel),
            max_payload_bytes: self.max_payload_bytes.unwrap_or(d.max_payload_bytes),
            env,
            ..d
        }
    }
}
