//! Metrics in the Prometheus text format (`GET /metrics` on the client port) and a health
//! check (`GET /health`).
//!
//! One registry holds every family; prometheus-client renders it and escapes label values.
//! The parts that count hold clones of their own few metrics (`families`), so counting is an
//! atomic add where things happen. What is cheaper to compute than to track (subscriptions,
//! streams bound to WebAssembly adapters) is set at each scrape, and the storage backend's own
//! counters are read from it then (`storage`).

mod families;
mod storage;

pub use families::{
    Calls, Connections, FanoutCounters, MAX_ERROR_CODES, MAX_FUNCTIONS, MAX_LABEL_BYTES, OTHER,
    Open,
};

use crate::engine::Engine;
use crate::storage::StreamAdapter;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::json;
use std::sync::Arc;

/// Every metric `/metrics` shows, and the handles to count into them.
pub struct Metrics {
    registry: Registry,
    /// Sockets open and slow disconnects, for the sockets and their outboxes.
    pub connections: Connections,
    /// Calls by function and outcome, their latency, storage errors by code.
    pub calls: Calls,
    fanout: FanoutCounters,
    subscriptions: Gauge,
    wasm_streams: Gauge,
}

/// What a scrape computes rather than tracks.
pub struct Scrape {
    pub subscriptions: usize,
    pub wasm_streams: usize,
}

impl Metrics {
    /// The metrics of an engine whose backend is `storage`.
    pub fn new(storage: Arc<dyn StreamAdapter>) -> Metrics {
        let connections = Connections::default();
        let calls = Calls::default();
        let fanout = FanoutCounters::default();
        let subscriptions = Gauge::default();
        let wasm_streams = Gauge::default();
        let mut registry = Registry::default();
        // In the order `/metrics` has always shown them.
        connections.register(&mut registry);
        registry.register(
            "streamhost_subscriptions",
            "Subscriptions held by client sockets",
            subscriptions.clone(),
        );
        fanout.register(&mut registry);
        connections.register_slow(&mut registry);
        registry.register(
            "streamhost_custom_streams",
            "Streams bound to WebAssembly adapters",
            wasm_streams.clone(),
        );
        calls.register(&mut registry);
        registry.register_collector(Box::new(storage::StorageCollector(storage)));
        Metrics {
            registry,
            connections,
            calls,
            fanout,
            subscriptions,
            wasm_streams,
        }
    }

    /// The counters the fan-out hub adds to.
    pub fn fanout(&self) -> FanoutCounters {
        self.fanout.clone()
    }

    /// Every metric in the Prometheus text format (version 0.0.4).
    pub fn render(&self, scrape: Scrape) -> String {
        self.subscriptions.set(scrape.subscriptions as i64);
        self.wasm_streams.set(scrape.wasm_streams as i64);
        let mut out = String::new();
        prometheus_text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Renders every metric of `engine`.
pub fn render(engine: &Engine) -> String {
    engine.metrics.render(Scrape {
        subscriptions: engine.hub.subscription_count(),
        wasm_streams: engine.custom_streams.list().len(),
    })
}

pub async fn metrics(State(engine): State<Arc<Engine>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(&engine),
    )
}

/// 200 while the engine can serve writes; 503 with the reason when its store cannot.
pub async fn health(State(engine): State<Arc<Engine>>) -> impl IntoResponse {
    let body = |status: &str, problem: Option<String>| {
        json!({
            "status": status,
            "adapter": engine.adapter.name(),
            "problem": problem,
            "client_connections": engine.metrics.connections.clients(),
            "worker_connections": engine.metrics.connections.workers(),
        })
        .to_string()
    };
    let (code, text) = match engine.adapter.health() {
        Ok(()) => (StatusCode::OK, body("ok", None)),
        Err(problem) => (
            StatusCode::SERVICE_UNAVAILABLE,
            body("unavailable", Some(problem)),
        ),
    };
    (code, [(header::CONTENT_TYPE, "application/json")], text)
}
