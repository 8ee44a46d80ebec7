//! WebAssembly bindings: streams served by WebAssembly adapters (`createStream` for
//! components). Not to be confused with worker streams, which a worker serves with its own
//! `stream::<op>(name)` functions (see `storage::worker`).
//!
//! A stream is bound in the config file or at runtime by a worker calling
//! `streamhost::create_stream` with the component; `streamhost::delete_stream` removes the
//! binding and `streamhost::list_streams` lists them. A replaced binding takes over only once
//! the new component has compiled and initialised, so a bad upload never breaks a stream.
//! Adapters keep items in the engine's own store under their stream's name, so a stream
//! whose binding is removed keeps its data.

use crate::engine::Engine;
use crate::error::{FnError, FnResult};
use crate::storage::wasm::{Limits, WasmAdapter, WasmHost};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

pub const FUNCTIONS: [&str; 3] = [
    "streamhost::create_stream",
    "streamhost::delete_stream",
    "streamhost::list_streams",
];

pub struct WasmBindings {
    host: OnceLock<Arc<WasmHost>>,
    cache_dir: Option<PathBuf>,
    bound: RwLock<HashMap<String, Arc<WasmAdapter>>>,
}

impl WasmBindings {
    pub fn new(cache_dir: Option<PathBuf>) -> Self {
        WasmBindings {
            host: OnceLock::new(),
            cache_dir,
            bound: RwLock::default(),
        }
    }

    /// The wasmtime host, started on first use so that engines without adapters pay nothing.
    pub fn host(&self) -> anyhow::Result<Arc<WasmHost>> {
        if let Some(h) = self.host.get() {
            return Ok(h.clone());
        }
        let host = WasmHost::new(self.cache_dir.clone())?;
        Ok(self.host.get_or_init(|| host).clone())
    }

    pub fn get(&self, stream: &str) -> Option<Arc<WasmAdapter>> {
        let bound = self.bound.read().unwrap();
        if bound.is_empty() {
            return None;
        }
        bound.get(stream).cloned()
    }

    /// Compiles, initialises and binds a component; replaces an earlier binding.
    pub async fn bind(
        &self,
        engine: &Arc<Engine>,
        stream: &str,
        wasm: &[u8],
        config: Value,
        limits: Limits,
    ) -> anyhow::Result<Arc<WasmAdapter>> {
        let host = self.host()?;
        let limits = Limits {
            values: engine.config.value_limits,
            ..limits
        };
        let (storage, locks) = (engine.adapter.clone(), engine.item_locks.clone());
        let adapter = WasmAdapter::new(host, stream, wasm, config, limits, storage, locks).await?;
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

pub fn is_function(function_id: &str) -> bool {
    FUNCTIONS.contains(&function_id)
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
                .map(|m| (m << 20) as usize)
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

#[derive(Deserialize)]
struct CreatePayload {
    stream_name: String,
    /// The component, base64-encoded.
    component: String,
    #[serde(default)]
    config: Value,
    #[serde(default)]
    limits: LimitsSpec,
}

#[derive(Deserialize)]
struct StreamPayload {
    stream_name: String,
}

fn describe(stream: &str, adapter: &WasmAdapter) -> Value {
    let p = adapter.prepared();
    json!({
        "stream_name": stream,
        "fanout": p.fanout,
        "exports": p.exports,
        "imports": p.imports,
        "cached": p.from_cache,
        "load_ms": p.load_time.as_secs_f64() * 1000.0,
    })
}

pub async fn call(engine: &Arc<Engine>, function_id: &str, data: Value) -> FnResult {
    let parse_err = |e: serde_json::Error| FnError::deserialization(function_id, e);
    match function_id {
        "streamhost::create_stream" => {
            let p: CreatePayload = serde_json::from_value(data).map_err(parse_err)?;
            let wasm = base64::engine::general_purpose::STANDARD
                .decode(p.component.trim())
                .map_err(|e| {
                    FnError::new(
                        "invalid_component",
                        format!("`component` must be the .wasm file in base64: {e}"),
                    )
                })?;
            let adapter = engine
                .custom_streams
                .bind(
                    engine,
                    &p.stream_name,
                    &wasm,
                    p.config,
                    p.limits.to_limits(),
                )
                .await
                .map_err(|e| FnError::new("invalid_component", format!("{e:#}")))?;
            Ok(Some(describe(&p.stream_name, &adapter)))
        }
        "streamhost::delete_stream" => {
            let p: StreamPayload = serde_json::from_value(data).map_err(parse_err)?;
            Ok(Some(
                json!({"removed": engine.custom_streams.unbind(&p.stream_name)}),
            ))
        }
        "streamhost::list_streams" => {
            let list: Vec<Value> = engine
                .custom_streams
                .list()
                .iter()
                .map(|(s, a)| describe(s, a))
                .collect();
            Ok(Some(Value::Array(list)))
        }
        _ => Err(FnError::new(
            "function_not_found",
            format!("function {function_id} is not registered"),
        )),
    }
}
