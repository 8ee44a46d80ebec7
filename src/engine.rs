//! The engine: what every socket and function shares.

use crate::adapter::StreamAdapter;
use crate::config::Config;
use crate::error::{FnError, FnResult};
use crate::frame::StreamEvent;
use crate::hub::Hub;
use crate::router::Router;
use crate::streams;
use crate::triggers::Triggers;
use serde_json::Value;
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
    shutdown: watch::Sender<bool>,
}

impl Engine {
    pub fn new(config: Config, adapter: Arc<dyn StreamAdapter>) -> Arc<Engine> {
        Arc::new(Engine {
            router: Router::new(config.invocation_timeout),
            config,
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

    /// Sends a stored change or an ephemeral event to subscribers and `stream` triggers.
    pub fn emit(self: &Arc<Self>, event: StreamEvent) {
        self.hub.publish(&event);
        self.triggers.fire_stream(self, &event);
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
