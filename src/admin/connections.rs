//! A tenant's connections and usage: its open sockets, disconnecting one, and what it holds
//! right now (connections by kind, subscriptions, WebAssembly streams).

use super::CLOSE_DISCONNECTED;
use super::reply::{ApiError, ApiResult, ok};
use super::tenants::find;
use crate::engine::Engine;
use crate::engine::space::{Kind, Space};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::json;
use std::sync::Arc;

fn space_of(engine: &Engine, id: &str) -> Result<Arc<Space>, ApiError> {
    let (id, _) = find(engine, id)?;
    engine
        .space(id.as_str())
        .ok_or_else(|| ApiError::unknown_tenant(&id))
}

/// `{"connections": [{"id", "kind", "addr", "who", "key_sha256"?, "since"}]}`.
pub async fn list(State(engine): State<Arc<Engine>>, Path(id): Path<String>) -> ApiResult {
    let space = space_of(&engine, &id)?;
    ok(&json!({ "connections": space.sockets() }))
}

/// Closes one socket with `CLOSE_DISCONNECTED`; a client or an SDK may reconnect.
pub async fn disconnect(
    State(engine): State<Arc<Engine>>,
    Path((id, n)): Path<(String, String)>,
) -> ApiResult {
    let space = space_of(&engine, &id)?;
    let Ok(n) = n.parse::<u64>() else {
        return Err(ApiError::bad_request(
            "invalid_connection_id",
            "a connection id is a whole number: the `id` that `GET /tenants/{id}/connections` lists",
        ));
    };
    let closed = space.close(
        Some(n),
        None,
        CLOSE_DISCONNECTED,
        "disconnected by the operator",
    );
    if closed == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_connection",
            format!(
                "tenant `{}` has no open connection {n}: it may have closed already",
                space.tenant
            ),
        ));
    }
    tracing::info!(tenant = %space.tenant, action = "disconnect", connection = n, "admin: connection closed");
    ok(&json!({ "closed": n }))
}

/// What the tenant holds now.
pub async fn usage(State(engine): State<Arc<Engine>>, Path(id): Path<String>) -> ApiResult {
    let space = space_of(&engine, &id)?;
    let sockets = space.sockets();
    let count = |kind| sockets.iter().filter(|s| s.kind == kind).count();
    let wasm: Vec<String> = space
        .functions
        .storage
        .wasm()
        .list()
        .into_iter()
        .map(|(stream, _)| stream)
        .collect();
    ok(&json!({
        "tenant": space.tenant,
        "connections": {"clients": count(Kind::Client), "workers": count(Kind::Worker)},
        "subscriptions": space.hub.subscription_count(),
        "wasm_streams": wasm,
    }))
}
