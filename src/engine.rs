//! The engine: what every socket and function shares.

use crate::config::Config;
use crate::error::{FnError, FnResult};
use crate::fanout::frame::{EventKind, StreamEvent};
use crate::fanout::hub::Hub;
use crate::fanout::item_lock::ItemLocks;
use crate::fanout::outbox::Outbox;
use crate::functions::streams;
use crate::functions::triggers::Triggers;
use crate::functions::wasm_bindings::{self, WasmBindings};
use crate::metrics::Metrics;
use crate::storage::worker::WorkerAdapter;
use crate::storage::{BusMessage, EventBus, StreamAdapter};
use crate::workers::router::Router;
use axum::extract::ws::Utf8Bytes;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::watch;

/// Counters read by `/metrics` and the tests.
#[derive(Default)]
pub struct Stats {
    pub client_connections: AtomicU64,
    pub worker_connections: AtomicU64,
    pub slow_disconnects: Arc<AtomicU64>,
}

pub struct Engine {
    pub config: Config,
    pub adapter: Arc<dyn StreamAdapter>,
    pub hub: Hub,
    pub router: Router,
    pub triggers: Triggers,
    /// Streams bound to WebAssembly adapters (the WebAssembly bindings; the field keeps its
    /// old name, which `metrics` reads).
    pub custom_streams: WasmBindings,
    pub stats: Stats,
    pub metrics: Metrics,
    /// This engine's per-item locks, for the adapters that lock on its behalf (worker
    /// streams, WebAssembly adapters' updates); never shared with another engine.
    pub item_locks: Arc<ItemLocks>,
    /// Carries events to and from other nodes when the adapter is shared (Redis).
    bus: Option<Arc<dyn EventBus>>,
    shutdown: watch::Sender<bool>,
}

impl Engine {
    pub fn new(config: Config, adapter: Arc<dyn StreamAdapter>) -> Arc<Engine> {
        let cache_dir = config.wasm_cache_dir.clone();
        Arc::new(Engine {
            router: Router::default(),
            config,
            bus: adapter.event_bus(),
            adapter,
            hub: Hub::new(),
            triggers: Triggers::default(),
            custom_streams: WasmBindings::new(cache_dir),
            stats: Stats::default(),
            metrics: Metrics::default(),
            item_locks: Arc::default(),
            shutdown: watch::channel(false).0,
        })
    }

    /// Calls a function by id: a built-in `stream::*` function or one a worker registered.
    pub async fn call(self: &Arc<Self>, function_id: &str, data: Value) -> FnResult {
        self.call_with_metadata(function_id, data, None).await
    }

    /// As `call`, with the invocation's `metadata`: a worker that serves the function gets it
    /// unchanged (spec section 6); the built-in functions have no use for it.
    pub async fn call_with_metadata(
        self: &Arc<Self>,
        function_id: &str,
        data: Value,
        metadata: Option<Value>,
    ) -> FnResult {
        let started = std::time::Instant::now();
        let result = self.dispatch(function_id, data, metadata).await;
        let code = result.as_ref().err().map(|e| e.code.as_str());
        self.metrics
            .record_call(function_id, started.elapsed(), code);
        result
    }

    async fn dispatch(
        self: &Arc<Self>,
        function_id: &str,
        data: Value,
        metadata: Option<Value>,
    ) -> FnResult {
        if streams::is_builtin(function_id) {
            return streams::call(self, function_id, data).await;
        }
        if wasm_bindings::is_function(function_id) {
            return wasm_bindings::call(self, function_id, data).await;
        }
        match self.router.lookup(function_id) {
            Some(worker) => {
                worker
                    .invoke_with_metadata(
                        function_id,
                        data,
                        metadata,
                        self.config.invocation_timeout,
                    )
                    .await
            }
            None => Err(FnError::new(
                "function_not_found",
                format!("function {function_id} is not registered by any worker"),
            )),
        }
    }

    /// The storage that serves a stream, first match wins: the worker that created it with
    /// `createStream` (for the operations it registered), its WebAssembly binding, the
    /// engine's own adapter.
    pub fn storage(self: &Arc<Self>, stream: &str) -> Arc<dyn StreamAdapter> {
        let own: Arc<dyn StreamAdapter> = match self.custom_streams.get(stream) {
            Some(wasm) => wasm,
            None => self.adapter.clone(),
        };
        if WorkerAdapter::serves(self, stream) {
            let locks = self.item_locks.clone();
            Arc::new(WorkerAdapter::new(self.clone(), stream, own, locks))
        } else {
            own
        }
    }

    /// Sends a stored change or an ephemeral event to subscribers, `stream` triggers and the
    /// other engine nodes. Triggers fire only on the node where the change was made, and see
    /// the change itself; clients see what the stream's fan-out hook, if any, makes of it.
    pub async fn emit(self: &Arc<Self>, event: StreamEvent) {
        self.triggers.fire_stream(self, &event);
        for event in self.fan_out(event).await {
            self.hub.publish(&event);
            if let Some(bus) = &self.bus {
                bus.publish(&event);
            }
        }
    }

    /// Runs an event through its stream's fan-out hook. A failing hook delivers nothing: a
    /// hook may exist to keep data from clients, so failing open could leak it.
    async fn fan_out(&self, event: StreamEvent) -> Vec<StreamEvent> {
        let Some(adapter) = self.custom_streams.get(&event.stream_name) else {
            return vec![event];
        };
        match adapter.fanout(&event).await {
            None => vec![event],
            Some(Ok(events)) => events
                .into_iter()
                .filter(|e| {
                    let same = e.stream_name == event.stream_name;
                    if !same {
                        tracing::warn!(stream = %event.stream_name, to = %e.stream_name, "a fan-out hook may route only within its own stream; event dropped");
                    }
                    same
                })
                .collect(),
            Some(Err(e)) => {
                tracing::error!(stream = %event.stream_name, error = %format!("{e:#}"), "fan-out hook failed; the event was not delivered");
                Vec::new()
            }
        }
    }

    /// Delivers what other nodes emit; on a gap, gives every subscriber a fresh snapshot.
    pub fn listen_to_bus(self: &Arc<Self>) {
        let Some(bus) = &self.bus else { return };
        let mut rx = bus.subscribe();
        let engine = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                let Some(engine) = engine.upgrade() else {
                    return;
                };
                match msg {
                    BusMessage::Event(event) => {
                        engine.hub.publish(&event);
                    }
                    BusMessage::Gap => engine.resync_subscribers().await,
                }
            }
        });
    }

    /// Sends every subscription a new `sync` snapshot, after events may have been missed.
    /// Each group (or item) is read once, however many sockets subscribe to it.
    pub async fn resync_subscribers(self: &Arc<Self>) {
        let mut by_target: HashMap<(String, String, Option<String>), Vec<Arc<Outbox>>> =
            HashMap::new();
        for (stream, group, item, outbox) in self.hub.subscriptions() {
            by_target
                .entry((stream, group, item))
                .or_default()
                .push(outbox);
        }
        tracing::info!(
            targets = by_target.len(),
            "resynchronising subscribers after a gap in events from other nodes"
        );
        for ((stream, group, item), outboxes) in by_target {
            let snapshot = match &item {
                Some(item) => {
                    self.call(
                        "stream::get",
                        json!({"stream_name": stream, "group_id": group, "item_id": item}),
                    )
                    .await
                }
                None => {
                    self.call(
                        "stream::list",
                        json!({"stream_name": stream, "group_id": group}),
                    )
                    .await
                }
            };
            match snapshot {
                Ok(data) => {
                    let data = data.unwrap_or(if item.is_some() {
                        Value::Null
                    } else {
                        json!([])
                    });
                    let frame: Utf8Bytes =
                        StreamEvent::new(&stream, &group, item.as_deref(), EventKind::Sync(data))
                            .encode()
                            .into();
                    for outbox in outboxes {
                        outbox.push(frame.clone());
                    }
                }
                Err(e) => {
                    tracing::warn!(%stream, %group, error = %e, "cannot resynchronise a subscription")
                }
            }
        }
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
        self.stats.client_connections.load(Ordering::Relaxed)
    }
}
