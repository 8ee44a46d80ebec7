//! Which storage serves a stream, decided in one place. First match wins:
//! 1. a worker that created the stream with `createStream`, for the operations it registered
//!    (`worker`); the others fall through to
//! 2. the stream's WebAssembly binding (`wasm::bindings`), or
//! 3. the engine's own store.
//!
//! Every `stream::*` function asks here, so no caller knows the order.

use super::StreamAdapter;
use super::wasm::registry::WasmBindings;
use super::wasm::{Limits, WasmAdapter};
use super::worker::WorkerAdapter;
use crate::fanout::item_lock::ItemLocks;
use crate::limits::ValueLimits;
use crate::workers::router::Router;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

pub struct StorageRouter {
    native: Arc<dyn StreamAdapter>,
    wasm: WasmBindings,
    workers: Arc<Router>,
    invocation_timeout: Duration,
    /// This router's per-item locks, for the storages that lock on the engine's behalf (worker
    /// streams; WebAssembly adapters' updates). Never shared with another engine or tenant.
    locks: Arc<ItemLocks>,
}

impl StorageRouter {
    pub fn new(
        native: Arc<dyn StreamAdapter>,
        wasm: WasmBindings,
        workers: Arc<Router>,
        invocation_timeout: Duration,
    ) -> Self {
        StorageRouter {
            native,
            wasm,
            workers,
            invocation_timeout,
            locks: Arc::default(),
        }
    }

    /// The storage that serves `stream`.
    pub fn for_stream(&self, stream: &str) -> Arc<dyn StreamAdapter> {
        let own: Arc<dyn StreamAdapter> = match self.wasm.get(stream) {
            Some(wasm) => wasm,
            None => self.native.clone(),
        };
        if WorkerAdapter::serves(&self.workers, stream) {
            Arc::new(WorkerAdapter::new(
                self.workers.clone(),
                self.invocation_timeout,
                stream,
                own,
                self.locks.clone(),
            ))
        } else {
            own
        }
    }

    /// The engine's own store (the configured adapter).
    pub fn native(&self) -> &Arc<dyn StreamAdapter> {
        &self.native
    }

    /// Binds `stream` to a WebAssembly component (see `WasmBindings::bind`). Its items live in
    /// the engine's own store, so a stream whose binding is removed keeps its data.
    pub async fn bind_wasm(
        &self,
        stream: &str,
        wasm: &[u8],
        config: Value,
        limits: Limits,
        values: ValueLimits,
    ) -> anyhow::Result<Arc<WasmAdapter>> {
        let limits = Limits { values, ..limits };
        let (native, locks) = (self.native.clone(), self.locks.clone());
        self.wasm
            .bind(stream, wasm, config, limits, native, locks)
            .await
    }

    /// The streams bound to WebAssembly adapters.
    pub fn wasm(&self) -> &WasmBindings {
        &self.wasm
    }
}
