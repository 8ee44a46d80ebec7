//! The engine: what every socket and function shares.

use crate::adapter::{BusMessage, EventBus, StreamAdapter};
use crate::config::Config;
use crate::error::{FnError, FnResult};
use crate::frame::{EventKind, StreamEvent};
use crate::hub::Hub;
use crate::router::Router;
use crate::streams;
use crate::triggers::Triggers;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::watch;

/// Counters read by tests and, later, by metrics.
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
    pub stats: Stats,
    /// Carries events to and from other nodes when the adapter is shared (Redis).
    bus: Option<Arc<dyn EventBus>>,
    shutdown: watch::Sender<bool>,
}

impl Engine {
    pub fn new(config: Config, adapter: Arc<dyn StreamAdapter>) -> Arc<Engine> {
        Arc::new(Engine {
            router: Router::new(config.invocation_timeout),
            config,
            bus: adapter.event_bus(),
            adapter,
            hub: Hub::new(),
            triggers: Triggers::default(),
            stats: Stats::default(),
            shutdown: watch::channel(false).0,
        })
    }

    /// Calls a function by id: a built-in `stream::*` function or one a worker registered.
    pub async fn call(self: &Arc<Self>, function_id: &str, data: Value) -> FnResult {
        if streams::is_builtin(function_id) {
            return streams::call(self, function_id, data).await;
        }
        match self.router.lookup(function_id) {
            Some(worker) => worker.invoke(function_id, data, self.config.invocation_timeout).await,
            None => Err(FnError::new("function_not_found", format!("function {function_id} is not registered by any worker"))),
        }
    }

    /// Sends a stored change or an ephemeral event to subscribers, `stream` triggers and the
    /// other engine nodes. Triggers fire only on the node where the change was made.
    pub fn emit(self: &Arc<Self>, event: StreamEvent) {
        self.hub.publish(&event);
        if let Some(bus) = &self.bus {
            bus.publish(&event);
        }
        self.triggers.fire_stream(self, &event);
    }

    /// Delivers what other nodes emit; on a gap, gives every subscriber a fresh snapshot.
    pub fn listen_to_bus(self: &Arc<Self>) {
        let Some(bus) = &self.bus else { return };
        let mut rx = bus.subscribe();
        let engine = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                let Some(engine) = engine.upgrade() else { return };
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
    pub async fn resync_subscribers(self: &Arc<Self>) {
        let subs = self.hub.subscriptions();
        tracing::info!(subscriptions = subs.len(), "resynchronising subscribers after a gap in events from other nodes");
        for (stream, group, item, outbox) in subs {
            let snapshot = match &item {
                Some(item) => self.call("stream::get", json!({"stream_name": stream, "group_id": group, "item_id": item})).await,
                None => self.call("stream::list", json!({"stream_name": stream, "group_id": group})).await,
            };
            match snapshot {
                Ok(data) => {
                    let data = data.unwrap_or(if item.is_some() { Value::Null } else { json!([]) });
                    let event = StreamEvent::new(&stream, &group, item.as_deref(), EventKind::Sync(data));
                    outbox.push(event.encode().into());
                }
                Err(e) => tracing::warn!(%stream, %group, error = %e, "cannot resynchronise a subscription"),
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
