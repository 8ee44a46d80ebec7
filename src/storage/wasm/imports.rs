//! What a guest may call, and the state its store carries.
//!
//! The `store` import is the engine's own storage, limited to the stream the adapter is bound
//! to: an adapter can add logic to its stream without bringing storage of its own, and cannot
//! reach another tenant's data. WASI is linked so that ordinary guest toolchains work, with
//! wasmtime's defaults (see `new_store` in adapter.rs): the real clocks and random numbers are
//! granted; no files, no network, no environment unless the binding sets `limits.env`.

use super::bindings::streamhost::adapter::{log, store, types};
use crate::fanout::order::Order;
use crate::storage::{Stored, StreamAdapter};
use serde_json::Value;
use std::sync::Arc;
use types::AdapterError;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// What the guest's calls into the host may touch.
pub struct Scope {
    /// The adapter's name in logs: its stream.
    pub stream: String,
    pub storage: Arc<dyn StreamAdapter>,
    /// Largest JSON document accepted across the boundary.
    pub max_payload_bytes: usize,
    /// The engine's limits on values: what the guest stores must respect them.
    pub values: crate::limits::ValueLimits,
}

/// Caps a guest's linear memory and remembers that it tried to pass the cap.
pub struct MemoryLimiter {
    pub max_bytes: usize,
    pub exceeded: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.exceeded = true;
            // Trap rather than fail the growth: a guest's allocator would abort anyway, and a
            // trap lets the host say which limit was hit.
            return Err(wasmtime::Error::msg(format!(
                "memory limit of {} bytes exceeded",
                self.max_bytes
            )));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

pub struct HostState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limiter: MemoryLimiter,
    pub scope: Arc<Scope>,
    /// The order of the store writes made during the adapter's current write call, which that
    /// call returns (see `WasmAdapter::call_write`). None during other calls (get, list, init,
    /// a fan-out hook): no event follows their writes, so their turns are released at once.
    pub writes: Option<Order>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl HostState {
    /// Refuses a stream outside the adapter's scope.
    fn check_stream(&self, stream: &str) -> Result<(), AdapterError> {
        if stream == self.scope.stream {
            Ok(())
        } else {
            Err(AdapterError::Invalid(format!(
                "adapter of stream {:?} may not use stream {stream:?}",
                self.scope.stream
            )))
        }
    }

    /// Keeps a store write's order for the current write call, if there is one.
    fn keep<T>(&mut self, stored: anyhow::Result<Stored<T>>) -> anyhow::Result<T> {
        let stored = stored?;
        if let Some(writes) = &mut self.writes {
            writes.join(stored.order);
        }
        Ok(stored.value)
    }

    fn parse(&self, data: &str) -> Result<Value, AdapterError> {
        if data.len() > self.scope.max_payload_bytes {
            return Err(AdapterError::Invalid(format!(
                "{} bytes is over the {}-byte payload limit",
                data.len(),
                self.scope.max_payload_bytes
            )));
        }
        let value = serde_json::from_str(data)
            .map_err(|e| AdapterError::Invalid(format!("not JSON: {e}")))?;
        self.scope
            .values
            .check("the value", &value)
            .map_err(|e| AdapterError::Invalid(format!("{}: {}", e.code, e.message)))?;
        Ok(value)
    }
}

fn internal(e: anyhow::Error) -> AdapterError {
    AdapterError::Internal(format!("{e:#}"))
}

fn text(v: Value) -> String {
    v.to_string()
}

type Res<T> = wasmtime::Result<Result<T, AdapterError>>;

impl types::Host for HostState {}

impl log::Host for HostState {
    async fn write(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let mut message = message;
        if message.len() > 4096 {
            let mut end = 4096;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        let stream = &self.scope.stream;
        match level {
            log::Level::Trace => tracing::trace!(adapter = %stream, "{message}"),
            log::Level::Debug => tracing::debug!(adapter = %stream, "{message}"),
            log::Level::Info => tracing::info!(adapter = %stream, "{message}"),
            log::Level::Warn => tracing::warn!(adapter = %stream, "{message}"),
            log::Level::Error => tracing::error!(adapter = %stream, "{message}"),
        }
        Ok(())
    }
}

impl store::Host for HostState {
    async fn get(&mut self, stream: String, group: String, item: String) -> Res<Option<String>> {
        if let Err(e) = self.check_stream(&stream) {
            return Ok(Err(e));
        }
        Ok(self
            .scope
            .storage
            .get(&stream, &group, &item)
            .await
            .map(|v| v.map(text))
            .map_err(internal))
    }

    async fn set(
        &mut self,
        stream: String,
        group: String,
        item: String,
        data: String,
    ) -> Res<Option<String>> {
        let value = match self.check_stream(&stream).and_then(|_| self.parse(&data)) {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        };
        let stored = self.scope.storage.set(&stream, &group, &item, value).await;
        Ok(self.keep(stored).map(|v| v.map(text)).map_err(internal))
    }

    async fn delete(&mut self, stream: String, group: String, item: String) -> Res<Option<String>> {
        if let Err(e) = self.check_stream(&stream) {
            return Ok(Err(e));
        }
        let stored = self.scope.storage.delete(&stream, &group, &item).await;
        Ok(self.keep(stored).map(|v| v.map(text)).map_err(internal))
    }

    async fn list_items(&mut self, stream: String, group: String) -> Res<Vec<String>> {
        if let Err(e) = self.check_stream(&stream) {
            return Ok(Err(e));
        }
        Ok(self
            .scope
            .storage
            .list(&stream, &group)
            .await
            .map(|v| v.into_iter().map(text).collect())
            .map_err(internal))
    }

    async fn list_ids(&mut self, stream: String, group: String) -> Res<Vec<String>> {
        if let Err(e) = self.check_stream(&stream) {
            return Ok(Err(e));
        }
        Ok(self
            .scope
            .storage
            .list_ids(&stream, &group)
            .await
            .map_err(internal))
    }

    async fn list_groups(&mut self, stream: String) -> Res<Vec<String>> {
        if let Err(e) = self.check_stream(&stream) {
            return Ok(Err(e));
        }
        Ok(self
            .scope
            .storage
            .list_groups(&stream)
            .await
            .map_err(internal))
    }
}
