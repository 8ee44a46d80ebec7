//! The client port's plain HTTP endpoints: `GET /metrics` (Prometheus text) and
//! `GET /health` (whether the engine can serve writes).

use crate::engine::Engine;
use crate::metrics::Scrape;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;
use std::sync::Arc;

/// Renders every metric of `engine`.
pub fn render(engine: &Engine) -> String {
    let spaces = engine.spaces();
    for space in &spaces {
        space.update_gauges();
    }
    engine.metrics.render(Scrape {
        subscriptions: spaces.iter().map(|s| s.hub.subscription_count()).sum(),
        wasm_streams: spaces
            .iter()
            .map(|s| s.functions.storage.wasm().list().len())
            .sum(),
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
            "adapter": engine.store().name(),
            "problem": problem,
            "client_connections": engine.metrics.connections.clients(),
            "worker_connections": engine.metrics.connections.workers(),
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
