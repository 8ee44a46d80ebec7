//! Metrics in the Prometheus text format, served as `GET /metrics` on the client port (see
//! `sockets::http`).
//!
//! One registry holds every family; prometheus-client renders it and escapes label values.
//! The parts that count hold clones of their own few metrics (`families`), so counting is an
//! atomic add where things happen. What is cheaper to compute than to track (subscriptions,
//! streams bound to WebAssembly adapters) is set at each scrape, and the storage backend's own
//! counters are read from it then (`storage`).

mod families;
mod storage;
mod tenants;

pub use storage::{ReadTelemetry, Telemetry};
pub use tenants::{MAX_TENANTS, QUOTA_NAMES, TenantCounters, TenantFamilies};

pub use families::{
    Calls, CloseCounters, Connections, FanoutCounters, MAX_ERROR_CODES, MAX_FUNCTIONS,
    MAX_LABEL_BYTES, OTHER, Open, REFUSAL_REASONS,
};

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Every metric `/metrics` shows, and the handles to count into them.
pub struct Metrics {
    registry: Registry,
    /// Sockets open and slow disconnects, for the sockets and their outboxes.
    pub connections: Connections,
    /// Calls by function and outcome, their latency, storage errors by code.
    pub calls: Calls,
    /// Each tenant's own series.
    pub tenants: TenantFamilies,
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
    /// The metrics of an engine whose backend's own counters `storage` reads.
    pub fn new(storage: ReadTelemetry) -> Metrics {
        let connections = Connections::default();
        let calls = Calls::default();
        let fanout = FanoutCounters::default();
        let subscriptions = Gauge::default();
        let wasm_streams = Gauge::default();
        let tenants = TenantFamilies::default();
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
        tenants.register(&mut registry);
        registry.register_collector(Box::new(storage::StorageCollector(storage)));
        Metrics {
            registry,
            connections,
            calls,
            tenants,
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
