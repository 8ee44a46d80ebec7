//! One bound component: a live instance that serves its stream within its limits.
//!
//! Calls are serialized on the instance (a component instance is single-threaded). Before
//! each call the host sets the deadline (epoch ticks) and the fuel; after a trap, a deadline
//! or a limit, the instance is dropped and the next call starts a fresh one, because a
//! trapped instance may be left in any state. Every failure carries its own error code:
//! `adapter_timeout`, `adapter_memory_limit`, `adapter_fuel_exhausted`, `adapter_trap`,
//! `adapter_payload_too_large`, `adapter_invalid` (the adapter refused the input) and
//! `adapter_error`. A value the adapter returns is held to the engine's value limits (see
//! `limits`) before it is returned or emitted, as are values it writes through `store`.
//!
//! Guest code runs on the engine's async threads but never holds one for long: every epoch
//! tick the guest yields to the runtime (`tokio::task::yield_now`, which lets the I/O driver
//! run), and past its deadline it traps. A call that blocks in a host call (a WASI sleep, a
//! slow store) is ended by an outer timeout a little after the deadline, for `init` and
//! re-instantiation as for calls; the instance is dropped with it. The tenant's `Budget`
//! admits each call (concurrent calls, CPU time per second) and is charged for the time its
//! polls held a thread.

use super::bindings::exports::streamhost::adapter::stream_adapter;
use super::bindings::streamhost::adapter::types::{
    AdapterError, EventKind as WitKind, StreamEvent as WitEvent,
};
use super::budget::Metered;
use super::fanout_bindings::exports::streamhost::adapter::fanout;
use super::host::{Prepared, WasmHost};
use super::imports::{CallUsage, HostState, MemoryLimiter, Scope, StoreQuotas, cut};
use super::serve::to_wit;
use crate::error::FnError;
use crate::fanout::frame::{EventKind, StreamEvent};
use crate::fanout::item_lock::ItemLocks;
use crate::fanout::order::Order;
use crate::limits::ValueLimits;
use crate::storage::StreamAdapter;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;

/// Limits for one adapter; every one has a safe default.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Linear memory the instance may grow to.
    pub memory_bytes: usize,
    /// Wall-clock time one call may take.
    pub timeout: Duration,
    /// Fuel (roughly, wasm instructions) one call may burn; None for no fuel limit.
    pub fuel: Option<u64>,
    /// Largest JSON document that may cross the boundary, either way.
    pub max_payload_bytes: usize,
    /// Environment variables the guest may read (none by default).
    pub env: Vec<(String, String)>,
    /// The engine's limits on values, for what the adapter returns and stores.
    pub values: ValueLimits,
    /// Caps on the guest's `store` writes and `log` lines.
    pub quotas: StoreQuotas,
}

/// How long after its deadline a call blocked in a host call is cut off: the epoch trap
/// ends a running guest first, so this only fires for one that is waiting.
const OUTER_GRACE: Duration = Duration::from_millis(100);

/// The longest error message from a guest that is passed on; the rest is cut.
pub const MAX_ERROR_BYTES: usize = 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 32 << 20,
            timeout: Duration::from_millis(500),
            fuel: None,
            max_payload_bytes: 1 << 20,
            env: Vec::new(),
            values: ValueLimits::default(),
            quotas: StoreQuotas::default(),
        }
    }
}

pub(super) struct Live {
    pub(super) store: Store<HostState>,
    pub(super) guest: stream_adapter::Guest,
    fanout: Option<fanout::Guest>,
}

pub struct WasmAdapter {
    pub(super) stream: String,
    host: Arc<WasmHost>,
    prepared: Prepared,
    config: String,
    limits: Limits,
    pub(super) storage: Arc<dyn StreamAdapter>,
    /// What the guest's imports may touch, shared by its successive instances (the per-stream
    /// quotas outlive an instance).
    scope: Arc<Scope>,
    /// The engine's item locks, for the read-modify-write of an update the guest leaves to us.
    pub(super) locks: Arc<ItemLocks>,
    live: tokio::sync::Mutex<Option<Live>>,
    /// Instances started, the first included: more than one means some were discarded.
    pub instances_started: AtomicU64,
}

/// A failed call into the guest, with the code the caller will see.
fn fail(code: &str, message: String) -> anyhow::Error {
    FnError::new(code, message).into()
}

impl WasmAdapter {
    /// Prepares an adapter for `stream`, keeping its items in `storage` (the engine's store)
    /// and locking items in `locks` (the engine's); its first call starts an instance and
    /// runs `init`.
    pub async fn new(
        host: Arc<WasmHost>,
        stream: &str,
        wasm: &[u8],
        config: Value,
        limits: Limits,
        storage: Arc<dyn StreamAdapter>,
        locks: Arc<ItemLocks>,
    ) -> anyhow::Result<Arc<WasmAdapter>> {
        let prepared = host.prepare_async(Arc::from(wasm)).await?;
        let scope = Arc::new(Scope::new(
            stream.to_owned(),
            storage.clone(),
            limits.max_payload_bytes,
            limits.values,
            limits.quotas,
        ));
        let adapter = Arc::new(WasmAdapter {
            stream: stream.to_owned(),
            host,
            prepared,
            config: config.to_string(),
            limits,
            storage,
            scope,
            locks,
            live: tokio::sync::Mutex::new(None),
            instances_started: AtomicU64::new(0),
        });
        // Start it now so that a broken `init` is reported when the stream is bound.
        let mut live = adapter.live.lock().await;
        let running = adapter.host.budget.enter(stream)?;
        *live = Some(adapter.instantiate().await?);
        drop((running, live));
        tracing::info!(
            stream,
            fanout = adapter.prepared.fanout,
            cached = adapter.prepared.from_cache,
            load_ms = adapter.prepared.load_time.as_secs_f64() * 1000.0,
            "WebAssembly adapter bound"
        );
        Ok(adapter)
    }

    pub fn has_fanout(&self) -> bool {
        self.prepared.fanout
    }

    pub fn prepared(&self) -> &Prepared {
        &self.prepared
    }

    /// Log lines the guest wrote over its rate, dropped.
    pub fn log_lines_dropped(&self) -> u64 {
        self.scope.dropped_logs.load(Ordering::Relaxed)
    }

    fn new_store(&self) -> Store<HostState> {
        let mut wasi = WasiCtxBuilder::new();
        for (k, v) in &self.limits.env {
            wasi.env(k, v);
        }
        let state = HostState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                max_bytes: self.limits.memory_bytes,
                exceeded: false,
            },
            scope: self.scope.clone(),
            writes: None,
            deadline: Instant::now(),
            usage: CallUsage::default(),
        };
        let mut store = Store::new(&self.host.engine, state);
        store.limiter(|s| &mut s.limiter);
        // Bounds what one crossing from the guest may make the host copy (a string, a list
        // of them) before the host has seen its size: twice the payload limit, and room for
        // the lists' own entries.
        store.set_hostcall_fuel(self.limits.max_payload_bytes.saturating_mul(2) + (64 << 10));
        // At every tick: past the deadline, trap; else give the thread back to the runtime.
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().deadline {
                return Err(Trap::Interrupt.into());
            }
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            ))
        });
        store
    }

    /// Arms the per-call deadline, fuel and quotas; all start afresh for each call.
    fn arm(&self, store: &mut Store<HostState>) {
        store.set_epoch_deadline(1);
        let _ = store.set_fuel(self.limits.fuel.unwrap_or(u64::MAX));
        let state = store.data_mut();
        state.deadline = Instant::now() + self.limits.timeout;
        state.usage = CallUsage::default();
    }

    /// Starts an instance and runs `init`, within the deadline even when the guest blocks
    /// in a host call: past it the future, the store and the instance with it, is dropped.
    async fn instantiate(&self) -> anyhow::Result<Live> {
        let outer = self.limits.timeout + OUTER_GRACE;
        let mut metered = Metered::new(self.instantiate_unbounded());
        let result = tokio::time::timeout(outer, &mut metered).await;
        self.host.budget.charge(metered.used);
        result.unwrap_or_else(|_| {
            Err(fail(
                "adapter_timeout",
                format!(
                    "adapter of stream {:?} ran past its deadline of {} ms in init (it was blocked in a host call)",
                    self.stream,
                    self.limits.timeout.as_millis()
                ),
            ))
        })
    }

    async fn instantiate_unbounded(&self) -> anyhow::Result<Live> {
        self.instances_started.fetch_add(1, Ordering::Relaxed);
        let mut store = self.new_store();
        self.arm(&mut store);
        let instance = self
            .prepared
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| self.classify(&store, e, "instantiating"))?;
        let guest = stream_adapter::GuestIndices::new(&self.prepared.pre)
            .and_then(|i| i.load(&mut store, &instance))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let fanout = match self.prepared.fanout {
            true => Some(
                fanout::GuestIndices::new(&self.prepared.pre)
                    .and_then(|i| i.load(&mut store, &instance))
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            ),
            false => None,
        };
        let mut live = Live {
            store,
            guest,
            fanout,
        };
        self.arm(&mut live.store);
        let init = live
            .guest
            .call_init(&mut live.store, &self.config)
            .await
            .map_err(|e| self.classify(&live.store, e, "init"))?;
        init.map_err(|e| self.guest_error(e, "init"))?;
        Ok(live)
    }

    /// Names the limit a failed call hit.
    fn classify(
        &self,
        store: &Store<HostState>,
        err: wasmtime::Error,
        what: &str,
    ) -> anyhow::Error {
        let stream = &self.stream;
        let err_text = cut(format!("{err:#}"), MAX_ERROR_BYTES);
        if err_text.contains("fuel allocated for hostcalls has been exhausted") {
            return fail(
                "adapter_payload_too_large",
                format!(
                    "what the adapter of stream {stream:?} passed the host in {what} is over the {}-byte limit (max_payload_bytes): the host stopped copying it at twice that",
                    self.limits.max_payload_bytes
                ),
            );
        }
        if store.data().limiter.exceeded {
            return fail(
                "adapter_memory_limit",
                format!(
                    "adapter of stream {stream:?} went over its memory limit of {} bytes in {what}",
                    self.limits.memory_bytes
                ),
            );
        }
        let late = Instant::now() >= store.data().deadline;
        match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => fail(
                "adapter_timeout",
                format!(
                    "adapter of stream {stream:?} ran past its deadline of {} ms in {what}",
                    self.limits.timeout.as_millis()
                ),
            ),
            Some(Trap::OutOfFuel) => fail(
                "adapter_fuel_exhausted",
                format!(
                    "adapter of stream {stream:?} used up its fuel ({}) in {what}",
                    self.limits.fuel.unwrap_or(0)
                ),
            ),
            None if late && err_text.contains("interrupt") => fail(
                "adapter_timeout",
                format!(
                    "adapter of stream {stream:?} ran past its deadline of {} ms in {what}",
                    self.limits.timeout.as_millis()
                ),
            ),
            Some(trap) => fail(
                "adapter_trap",
                format!("adapter of stream {stream:?} trapped in {what}: {trap}"),
            ),
            None => fail(
                "adapter_trap",
                format!("adapter of stream {stream:?} failed in {what}: {err_text}"),
            ),
        }
    }

    pub(super) fn guest_error(&self, err: AdapterError, what: &str) -> anyhow::Error {
        match err {
            AdapterError::Invalid(m) => fail("adapter_invalid", cut(m, MAX_ERROR_BYTES)),
            AdapterError::Unsupported => fail(
                "adapter_unsupported",
                format!(
                    "adapter of stream {:?} does not support {what}",
                    self.stream
                ),
            ),
            AdapterError::Internal(m) => fail(
                "adapter_error",
                format!(
                    "adapter of stream {:?} failed in {what}: {}",
                    self.stream,
                    cut(m, MAX_ERROR_BYTES)
                ),
            ),
        }
    }

    pub(super) fn check_size(&self, len: usize, what: &str) -> anyhow::Result<()> {
        if len > self.limits.max_payload_bytes {
            return Err(fail(
                "adapter_payload_too_large",
                format!(
                    "{what} of {len} bytes is over the {}-byte limit (max_payload_bytes) of the adapter of stream {:?}",
                    self.limits.max_payload_bytes, self.stream
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn parse(&self, json: &str, what: &str) -> anyhow::Result<Value> {
        self.check_size(json.len(), what)?;
        let value = serde_json::from_str(json).map_err(|e| {
            fail(
                "adapter_error",
                format!(
                    "adapter of stream {:?} returned {what} that is not JSON: {e}",
                    self.stream
                ),
            )
        })?;
        let what = format_args!("{what} from the adapter of stream {:?}", self.stream);
        self.limits.values.check(what, &value)?;
        Ok(value)
    }

    /// Runs one call on the live instance (starting one if needed); any trap discards it.
    pub(super) async fn call<R>(
        &self,
        what: &str,
        f: impl AsyncFnOnce(&mut Live) -> wasmtime::Result<R>,
    ) -> anyhow::Result<R> {
        // Calls wait their turn on the instance, but not longer than one call may take: a
        // queue behind a hog fails rather than grows.
        let Ok(mut slot) = tokio::time::timeout(self.limits.timeout, self.live.lock()).await else {
            return Err(fail(
                "adapter_timeout",
                format!(
                    "adapter of stream {:?} was busy with earlier calls for its whole deadline of {} ms; {what} did not start",
                    self.stream,
                    self.limits.timeout.as_millis()
                ),
            ));
        };
        let _running = self.host.budget.enter(&self.stream)?;
        if slot.is_none() {
            *slot = Some(self.instantiate().await?);
        }
        let live = slot.as_mut().unwrap();
        self.arm(&mut live.store);
        // The epoch deadline stops guest code; this also bounds time spent in host imports.
        let outer = self.limits.timeout + OUTER_GRACE;
        let mut metered = Metered::new(f(live));
        let result = tokio::time::timeout(outer, &mut metered).await;
        self.host.budget.charge(metered.used);
        drop(metered);
        let live = slot.as_mut().unwrap();
        match result {
            Ok(Ok(result)) => match live.store.data_mut().usage.refused.take() {
                Some(quota) => Err(fail("quota_exceeded", quota)),
                None => Ok(result),
            },
            Ok(Err(e)) => {
                let err = self.classify(&live.store, e, what);
                *slot = None;
                tracing::warn!(stream = %self.stream, error = %err, "adapter instance discarded");
                Err(err)
            }
            Err(_) => {
                *slot = None;
                Err(fail(
                    "adapter_timeout",
                    format!(
                        "adapter of stream {:?} ran past its deadline of {} ms in {what}",
                        self.stream,
                        self.limits.timeout.as_millis()
                    ),
                ))
            }
        }
    }

    /// Runs a write call, returning with its result the order of the store writes the guest
    /// made during it: the turns those writes took in the engine's store.
    pub(super) async fn call_write<R>(
        &self,
        what: &str,
        f: impl AsyncFnOnce(&mut Live) -> wasmtime::Result<R>,
    ) -> anyhow::Result<(R, Order)> {
        self.call(what, async move |live| {
            live.store.data_mut().writes = Some(Order::nothing_written());
            let result = f(live).await;
            let order = live.store.data_mut().writes.take();
            result.map(|r| (r, order.unwrap_or_else(Order::nothing_written)))
        })
        .await
    }

    /// Runs an event through the adapter's fan-out hook; None when it has no hook.
    pub async fn fanout(&self, event: &StreamEvent) -> Option<anyhow::Result<Vec<StreamEvent>>> {
        if !self.prepared.fanout {
            return None;
        }
        let wit = to_wit(event)?;
        let result = self
            .call("on-event", async |live| {
                live.fanout
                    .as_ref()
                    .unwrap()
                    .call_on_event(&mut live.store, &wit)
                    .await
            })
            .await;
        Some(result.and_then(|events| {
            let total = events.iter().map(|e| e.data.len()).sum();
            self.check_size(total, "the fan-out hook's output")?;
            events.into_iter().map(|e| self.event_from_wit(e)).collect()
        }))
    }

    fn event_from_wit(&self, e: WitEvent) -> anyhow::Result<StreamEvent> {
        let data = self.parse(&e.data, "an event")?;
        let kind = match e.kind {
            WitKind::Create => EventKind::Create(data),
            WitKind::Update => EventKind::Update(data),
            WitKind::Delete => EventKind::Delete(data),
            WitKind::Custom => EventKind::Custom {
                name: e.name.unwrap_or_default(),
                data,
            },
        };
        Ok(StreamEvent::new(
            &e.stream_name,
            &e.group_id,
            e.id.as_deref(),
            kind,
        ))
    }
}
