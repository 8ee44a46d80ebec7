//! What a guest may call, and the state its store carries.
//!
//! The `store` import is the engine's own storage, limited to the stream the adapter is bound
//! to: an adapter can add logic to its stream without bringing storage of its own, and cannot
//! reach another tenant's data. WASI is linked so that ordinary guest toolchains work, with
//! wasmtime's defaults (see `new_store` in adapter.rs): the real clocks and random numbers are
//! granted; no files, no network, no environment unless the binding sets `limits.env`.
//!
//! Both imports are quota'd, because a guest can call them in a loop: `store` writes are
//! capped per call (count and bytes) and per stream (the items and bytes this binding added),
//! and a write over a cap is refused to the guest and fails the call with `quota_exceeded`;
//! `log::write` lines are cut to a length and rate-limited per stream, the excess dropped,
//! counted, and reported in one warning, not a flood.

use super::bindings::streamhost::adapter::{log, store, types};
use crate::fanout::order::Order;
use crate::json::Json;
use crate::storage::{Stored, StreamAdapter};
use serde_json::Value;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
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
    pub quotas: StoreQuotas,
    /// Net items and bytes this binding added to its stream through `store`.
    pub stored_items: AtomicI64,
    pub stored_bytes: AtomicI64,
    /// Log lines the guest may still write this second, and when the bucket last refilled.
    log_bucket: Mutex<(f64, Instant)>,
    /// Log lines dropped over the rate, in all (`dropped_logs`), and since the last warning.
    pub dropped_logs: AtomicU64,
    dropped_unreported: AtomicU64,
}

/// Caps on what a guest may do through its imports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoreQuotas {
    pub writes_per_call: u32,
    pub bytes_per_call: usize,
    pub items_per_stream: u64,
    pub bytes_per_stream: u64,
    pub log_lines_per_sec: u32,
    pub log_line_bytes: usize,
}

impl Default for StoreQuotas {
    fn default() -> Self {
        StoreQuotas {
            writes_per_call: 1_000,
            bytes_per_call: 8 << 20,
            items_per_stream: 100_000,
            bytes_per_stream: 64 << 20,
            log_lines_per_sec: 100,
            log_line_bytes: 1024,
        }
    }
}

impl Scope {
    pub fn new(
        stream: String,
        storage: Arc<dyn StreamAdapter>,
        max_payload_bytes: usize,
        values: crate::limits::ValueLimits,
        quotas: StoreQuotas,
    ) -> Scope {
        Scope {
            stream,
            storage,
            max_payload_bytes,
            values,
            quotas,
            stored_items: AtomicI64::new(0),
            stored_bytes: AtomicI64::new(0),
            log_bucket: Mutex::new((quotas.log_lines_per_sec as f64, Instant::now())),
            dropped_logs: AtomicU64::new(0),
            dropped_unreported: AtomicU64::new(0),
        }
    }

    /// Takes a log line from the bucket, or counts it dropped; says whether to log it.
    fn admit_log(&self) -> bool {
        let rate = self.quotas.log_lines_per_sec as f64;
        let mut b = self.log_bucket.lock().unwrap();
        let now = Instant::now();
        b.0 = (b.0 + now.duration_since(b.1).as_secs_f64() * rate).min(rate);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            return true;
        }
        drop(b);
        self.dropped_logs.fetch_add(1, Ordering::Relaxed);
        if self.dropped_unreported.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!(
                adapter = %self.stream,
                "adapter log over {} lines per second: dropping lines until the rate falls",
                self.quotas.log_lines_per_sec
            );
        }
        false
    }
}

/// What the guest's writes in the current call added up to.
#[derive(Debug, Default)]
pub struct CallUsage {
    pub writes: u32,
    pub bytes: usize,
    /// The first quota the guest's writes ran into; the call then fails with it.
    pub refused: Option<String>,
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
    /// When the current call must end: the epoch callback traps past it.
    pub deadline: Instant,
    pub usage: CallUsage,
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

    /// Counts a write against the per-call and per-stream quotas, or refuses it (and
    /// remembers the refusal, which fails the call).
    fn quota_write(&mut self, bytes: usize, new_item: bool) -> Result<(), AdapterError> {
        let q = self.scope.quotas;
        let u = &self.usage;
        // Once refused, the call writes nothing more: it fails anyway.
        if let Some(first) = &u.refused {
            return Err(AdapterError::Internal(format!("quota_exceeded: {first}")));
        }
        let refusal = if u.writes >= q.writes_per_call {
            Some(format!(
                "more than {} store writes in one call",
                q.writes_per_call
            ))
        } else if u.bytes + bytes > q.bytes_per_call {
            Some(format!(
                "more than {} bytes of store writes in one call",
                q.bytes_per_call
            ))
        } else if new_item
            && self.scope.stored_items.load(Ordering::Relaxed) >= q.items_per_stream as i64
        {
            Some(format!(
                "more than {} items added to its stream",
                q.items_per_stream
            ))
        } else if self.scope.stored_bytes.load(Ordering::Relaxed) + bytes as i64
            > q.bytes_per_stream as i64
        {
            Some(format!(
                "more than {} bytes added to its stream",
                q.bytes_per_stream
            ))
        } else {
            None
        };
        if let Some(what) = refusal {
            let message = format!(
                "the adapter of stream {:?} is over its store quota: {what}; delete items or write less per call",
                self.scope.stream
            );
            self.usage.refused.get_or_insert(message.clone());
            return Err(AdapterError::Internal(format!("quota_exceeded: {message}")));
        }
        self.usage.writes += 1;
        self.usage.bytes += bytes;
        Ok(())
    }

    /// Counts the net change a write made to the stream.
    fn account(&self, added: Option<usize>, removed: Option<&Json>) {
        let mut items = added.is_some() as i64;
        let mut bytes = added.unwrap_or(0) as i64;
        if let Some(old) = removed {
            items -= 1;
            bytes -= old.len() as i64;
        }
        self.scope.stored_items.fetch_add(items, Ordering::Relaxed);
        self.scope.stored_bytes.fetch_add(bytes, Ordering::Relaxed);
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

/// Cuts `s` to at most `max` bytes (on a character boundary), saying how much was cut.
pub fn cut(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let total = s.len();
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str(&format!("… ({} more bytes cut)", total - end));
    s
}

fn text(v: Json) -> String {
    v.get().to_owned()
}

type Res<T> = wasmtime::Result<Result<T, AdapterError>>;

impl types::Host for HostState {}

impl log::Host for HostState {
    async fn write(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        if !self.scope.admit_log() {
            return Ok(());
        }
        let dropped = self.scope.dropped_unreported.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(adapter = %self.scope.stream, dropped, "adapter log lines were dropped over the rate");
        }
        let message = cut(message, self.scope.quotas.log_line_bytes);
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
        // Counted as stored, compact: what a delete or an overwrite gives back (`account`).
        let value = match self
            .check_stream(&stream)
            .and_then(|_| self.parse(&data))
            .map(|v| Json::from_value(&v))
            .and_then(|v| self.quota_write(v.len(), true).map(|_| v))
        {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        };
        let bytes = value.len();
        let stored = self.scope.storage.set(&stream, &group, &item, value).await;
        let old = self.keep(stored).map_err(internal);
        if let Ok(old) = &old {
            self.account(Some(bytes), old.as_ref());
        }
        Ok(old.map(|v| v.map(text)))
    }

    async fn delete(&mut self, stream: String, group: String, item: String) -> Res<Option<String>> {
        if let Err(e) = self
            .check_stream(&stream)
            .and_then(|_| self.quota_write(0, false))
        {
            return Ok(Err(e));
        }
        let stored = self.scope.storage.delete(&stream, &group, &item).await;
        let old = self.keep(stored).map_err(internal);
        if let Ok(old) = &old {
            self.account(None, old.as_ref());
        }
        Ok(old.map(|v| v.map(text)))
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

#[cfg(test)]
mod tests {
    use super::cut;

    #[test]
    fn long_text_is_cut_on_a_character_boundary_and_says_so() {
        assert_eq!(cut("abc".into(), 3), "abc");
        assert_eq!(cut("abcd".into(), 3), "abc… (1 more bytes cut)");
        // "é" is two bytes: a cut inside it moves back before it.
        assert_eq!(cut("aé".into(), 2), "a… (2 more bytes cut)");
    }
}
