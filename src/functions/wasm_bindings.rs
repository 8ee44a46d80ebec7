//! WebAssembly bindings: streams served by WebAssembly adapters (`createStream` for
//! components). Not to be confused with worker streams, which a worker serves with its own
//! `stream::<op>(name)` functions (see `storage::worker`).
//!
//! A stream is bound in the config file or at runtime by a worker calling
//! `streamhost::create_stream` with the component; `streamhost::delete_stream` removes the
//! binding and `streamhost::list_streams` lists them. A worker's adapter gets the limits it
//! asks for only up to its tenant's `adapter_ceilings`. The bindings themselves live in the
//! storage router (`storage::wasm::registry`).

use super::Functions;
use crate::error::{FnError, FnResult};
use crate::storage::wasm::WasmAdapter;
use crate::storage::wasm::registry::LimitsSpec;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

pub const FUNCTIONS: [&str; 3] = [
    "streamhost::create_stream",
    "streamhost::delete_stream",
    "streamhost::list_streams",
];

pub fn is_function(function_id: &str) -> bool {
    FUNCTIONS.contains(&function_id)
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

pub async fn call(functions: &Arc<Functions>, function_id: &str, data: Value) -> FnResult {
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
            // A worker's adapter asks for its limits; the tenant's ceilings cap them.
            let mut limits = p.limits.to_limits();
            functions
                .ceilings()
                .enforce(&mut limits)
                .map_err(|e| FnError::new("limits_over_ceiling", e))?;
            let adapter = functions
                .storage
                .bind_wasm(
                    &p.stream_name,
                    &wasm,
                    p.config,
                    limits,
                    *functions.value_limits(),
                )
                .await
                .map_err(|e| match e.downcast_ref::<FnError>() {
                    // Retry later, or make `init` faster: not a bad component.
                    Some(own) if ["quota_exceeded", "adapter_timeout"].contains(&&*own.code) => {
                        own.clone()
                    }
                    _ => FnError::new("invalid_component", format!("{e:#}")),
                })?;
            Ok(Some(describe(&p.stream_name, &adapter).into()))
        }
        "streamhost::delete_stream" => {
            let p: StreamPayload = serde_json::from_value(data).map_err(parse_err)?;
            Ok(Some(
                json!({"removed": functions.storage.wasm().unbind(&p.stream_name)}).into(),
            ))
        }
        "streamhost::list_streams" => {
            let list: Vec<Value> = functions
                .storage
                .wasm()
                .list()
                .iter()
                .map(|(s, a)| describe(s, a))
                .collect();
            Ok(Some(Value::Array(list).into()))
        }
        _ => Err(FnError::new(
            "function_not_found",
            format!("function {function_id} is not registered"),
        )),
    }
}
