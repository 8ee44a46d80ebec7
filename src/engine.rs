//! The engine: what the sockets share. It builds the parts below it (the storage router,
//! the function registry, the hub) and hands each the narrow handle it needs; nothing below
//! the sockets holds the engine.

use crate::config::Config;
use crate::error::FnResult;
use crate::fanout::frame::{EventKind, StreamEvent};
use crate::fanout::hub::Hub;
use crate::fanout::outbox::Outbox;
use crate::functions::{Functions, Parts};
use crate::metrics::Metrics;
use crate::storage::router::StorageRouter;
use crate::storage::wasm::registry::WasmBindings;
use crate::storage::{BusMessage, EventBus, StreamAdapter};
use crate::workers::router::Router;
use axum::extract::ws::Utf8Bytes;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::watch;

pub struct Engine {
    pub config: Config,
    /// Calls, storage and emission: everything a function needs.
    pub functions: Arc<Functions>,
    pub hub: Arc<Hub>,
    /// Every counter `/metrics` shows; the parts that count hold clones of theirs.
    pub metrics: Metrics,
    /// Carries events to and from other nodes when the adapter is shared (Redis).
    bus: Option<Arc<dyn EventBus>>,
    shutdown: watch::Sender<bool>,
}

impl Engine {
    pub fn new(config: Config, adapter: Arc<dyn StreamAdapter>) -> Arc<Engine> {
        let read_telemetry = {
            let adapter = adapter.clone();
            Arc::new(move || adapter.telemetry())
        };
        let metrics = Metrics::new(read_telemetry);
        let hub = Arc::new(Hub::new(metrics.fanout()));
        let bus = adapter.event_bus();
        let workers = Arc::new(Router::default());
        let storage = StorageRouter::new(
            adapter,
            WasmBindings::new(config.wasm_cache_dir.clone()),
            workers.clone(),
            config.invocation_timeout,
        );
        let functions = Functions::new(Parts {
            storage,
            workers,
            hub: hub.clone(),
            bus: bus.clone(),
            calls: metrics.calls.clone(),
            value_limits: config.value_limits,
            invocation_timeout: config.invocation_timeout,
        });
        Arc::new(Engine {
            config,
            functions,
            hub,
            metrics,
            bus,
            shutdown: watch::channel(false).0,
        })
    }

    /// Calls a function by id: a built-in `stream::*` function or one a worker registered.
    pub async fn call(&self, function_id: &str, data: Value) -> FnResult {
        self.functions.call(function_id, data).await
    }

    /// The engine's own store (the configured adapter).
    pub fn store(&self) -> &Arc<dyn StreamAdapter> {
        self.functions.storage.native()
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
        self.metrics.connections.clients()
    }
}
