//! Metrics in the Prometheus text format (`GET /metrics` on the client port) and a health
//! check (`GET /health`).
//!
//! Counters are plain atomics updated where things happen; this module only adds the
//! per-function call series and renders everything on request.

use crate::engine::Engine;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Upper bounds of the call latency buckets, in seconds.
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Function ids are chosen by workers: past this many series, calls count as `other`.
const MAX_SERIES: usize = 500;

#[derive(Default)]
struct Series {
    ok: AtomicU64,
    error: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    sum_micros: AtomicU64,
}

#[derive(Default)]
pub struct Metrics {
    calls: RwLock<HashMap<String, Arc<Series>>>,
    adapter_errors: RwLock<HashMap<String, AtomicU64>>,
}

impl Metrics {
    fn series(&self, function_id: &str) -> Arc<Series> {
        if let Some(s) = self.calls.read().unwrap().get(function_id) {
            return s.clone();
        }
        let mut calls = self.calls.write().unwrap();
        let key = if calls.len() >= MAX_SERIES && !calls.contains_key(function_id) {
            "other"
        } else {
            function_id
        };
        calls.entry(key.to_owned()).or_default().clone()
    }

    /// Records one call: its function, how long it took, and the error code if it failed.
    pub fn record_call(&self, function_id: &str, took: Duration, error_code: Option<&str>) {
        let s = self.series(function_id);
        match error_code {
            None => s.ok.fetch_add(1, Ordering::Relaxed),
            Some(_) => s.error.fetch_add(1, Ordering::Relaxed),
        };
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            s.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        s.sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        // Storage failures, from the engine's adapter or a stream's own.
        if let Some(code) =
            error_code.filter(|c| c.starts_with("STREAM_") || c.starts_with("adapter_"))
        {
            if let Some(n) = self.adapter_errors.read().unwrap().get(code) {
                n.fetch_add(1, Ordering::Relaxed);
                return;
            }
            self.adapter_errors
                .write()
                .unwrap()
                .entry(code.to_owned())
                .or_default()
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders every metric in the Prometheus text format.
pub fn render(engine: &Engine) -> String {
    let mut out = String::new();
    let stats = &engine.stats;
    let mut gauge = |name: &str, help: &str, kind: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    gauge(
        "streamhost_client_connections",
        "Client sockets open.",
        "gauge",
        stats.client_connections.load(Ordering::Relaxed),
    );
    gauge(
        "streamhost_worker_connections",
        "Worker sockets open.",
        "gauge",
        stats.worker_connections.load(Ordering::Relaxed),
    );
    gauge(
        "streamhost_subscriptions",
        "Subscriptions held by client sockets.",
        "gauge",
        engine.hub.subscription_count() as u64,
    );
    gauge(
        "streamhost_events_published_total",
        "Events published to the fan-out hub.",
        "counter",
        engine.hub.published.load(Ordering::Relaxed),
    );
    gauge(
        "streamhost_frames_delivered_total",
        "Frames queued for client sockets.",
        "counter",
        engine.hub.delivered.load(Ordering::Relaxed),
    );
    gauge(
        "streamhost_slow_client_disconnects_total",
        "Clients closed because their send queue overflowed (close code 4008).",
        "counter",
        stats.slow_disconnects.load(Ordering::Relaxed),
    );
    gauge(
        "streamhost_custom_streams",
        "Streams bound to WebAssembly adapters.",
        "gauge",
        engine.functions.storage.wasm().list().len() as u64,
    );

    let calls = engine.metrics.calls.read().unwrap();
    let mut ids: Vec<&String> = calls.keys().collect();
    ids.sort();
    out.push_str("# HELP streamhost_function_calls_total Function calls by function id and outcome.\n# TYPE streamhost_function_calls_total counter\n");
    for id in &ids {
        let s = &calls[*id];
        let id = escape(id);
        let _ = writeln!(
            out,
            "streamhost_function_calls_total{{function=\"{id}\",outcome=\"ok\"}} {}",
            s.ok.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "streamhost_function_calls_total{{function=\"{id}\",outcome=\"error\"}} {}",
            s.error.load(Ordering::Relaxed)
        );
    }
    out.push_str("# HELP streamhost_function_call_duration_seconds Function call latency.\n# TYPE streamhost_function_call_duration_seconds histogram\n");
    for id in &ids {
        let s = &calls[*id];
        let label = escape(id);
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += s.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "streamhost_function_call_duration_seconds_bucket{{function=\"{label}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = s.ok.load(Ordering::Relaxed) + s.error.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "streamhost_function_call_duration_seconds_bucket{{function=\"{label}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "streamhost_function_call_duration_seconds_sum{{function=\"{label}\"}} {}",
            s.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "streamhost_function_call_duration_seconds_count{{function=\"{label}\"}} {count}"
        );
    }
    drop(calls);
    out.push_str("# HELP streamhost_adapter_errors_total Storage failures by error code.\n# TYPE streamhost_adapter_errors_total counter\n");
    let errors = engine.metrics.adapter_errors.read().unwrap();
    let mut codes: Vec<(&String, &AtomicU64)> = errors.iter().collect();
    codes.sort_by_key(|(c, _)| *c);
    for (code, n) in codes {
        let _ = writeln!(
            out,
            "streamhost_adapter_errors_total{{code=\"{}\"}} {}",
            escape(code),
            n.load(Ordering::Relaxed)
        );
    }
    out
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
            "adapter": engine.store().name(),
            "problem": problem,
            "client_connections": engine.stats.client_connections.load(Ordering::Relaxed),
            "worker_connections": engine.stats.worker_connections.load(Ordering::Relaxed),
        })
        .to_string()
    };
    let (code, text) = match engine.store().health() {
        Ok(()) => (StatusCode::OK, body("ok", None)),
        Err(problem) => (
            StatusCode::SERVICE_UNAVAILABLE,
            body("unavailable", Some(problem)),
        ),
    };
    (code, [(header::CONTENT_TYPE, "application/json")], text)
}
