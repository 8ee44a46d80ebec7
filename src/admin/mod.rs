//! The admin API: the operator changes tenants while the engine runs.
//!
//! It has a listener of its own (`admin:` in the config, 127.0.0.1 by default) and is off
//! unless configured, so that the client port, which faces the internet, carries no door to
//! it. Every request must carry `Authorization: Bearer <operator key>`; the key is hashed and
//! compared with the configured digest in constant time, before any body is read.
//!
//! Each change goes through the engine, which swaps the tenant's snapshot and closes the
//! sockets it no longer admits: a disabled or deleted tenant's with `CLOSE_TENANT_GONE`
//! (4403), a revoked key's workers with `CLOSE_KEY_REVOKED` (4001), one socket the operator
//! disconnects with [`CLOSE_DISCONNECTED`] (4000). Changes are logged with the tenant and the
//! action; a key never is. Bodies are JSON of at most 64 KiB (413 past it); answers are JSON,
//! and errors `{"code", "message"}` (`reply`).
//!
//! - `tenants`: list, show, put, enable, disable, delete;
//! - `keys`: worker keys (made here, shown once) and client keys (rotation);
//! - `connections`: a tenant's open sockets, disconnecting one, and its usage.

pub mod config;
mod connections;
mod keys;
pub mod reply;
mod tenants;

pub use config::AdminConfig;

use crate::engine::Engine;
use crate::tenants::error::shown;
use crate::tenants::keys::MAX_PRESENTED_KEY_BYTES;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use reply::ApiError;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The close code of a socket the operator disconnected (`DELETE .../connections/{n}`).
pub const CLOSE_DISCONNECTED: u16 = 4000;

/// The admin API's routes; `key_sha256` is the operator key's digest (lowercase hex).
pub fn routes(engine: Arc<Engine>, key_sha256: &str) -> Router {
    let operator = Arc::new(OperatorKey(key_sha256.to_ascii_lowercase()));
    Router::new()
        .route("/tenants", get(tenants::list))
        .route(
            "/tenants/{id}",
            get(tenants::show).put(tenants::put).delete(tenants::delete),
        )
        .route("/tenants/{id}/enable", post(tenants::enable))
        .route("/tenants/{id}/disable", post(tenants::disable))
        .route("/tenants/{id}/worker_keys", post(keys::add_worker_key))
        .route(
            "/tenants/{id}/worker_keys/{sha256}",
            delete(keys::revoke_worker_key),
        )
        .route("/tenants/{id}/client_keys", put(keys::set_client_keys))
        .route("/tenants/{id}/connections", get(connections::list))
        .route(
            "/tenants/{id}/connections/{n}",
            delete(connections::disconnect),
        )
        .route("/tenants/{id}/usage", get(connections::usage))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(engine)
        // Outermost, so that it guards the fallbacks too: without the key, nothing is told.
        .layer(middleware::from_fn_with_state(operator, authorize))
}

struct OperatorKey(String);

/// Lets a request through only with the operator key.
async fn authorize(State(key): State<Arc<OperatorKey>>, req: Request, next: Next) -> Response {
    let presented = crate::sockets::credentials::bearer(req.headers());
    let valid = presented.as_deref().is_some_and(|p| {
        p.len() <= MAX_PRESENTED_KEY_BYTES
            && bool::from(
                crate::tenants::hash_key(p)
                    .as_bytes()
                    .ct_eq(key.0.as_bytes()),
            )
    });
    if valid {
        return next.run(req).await;
    }
    let message = if presented.is_some() {
        "the operator key is wrong: send the key whose SHA-256 is `admin.key_sha256` (or the value of `admin.key_env`)"
    } else {
        "the admin API needs the operator key: send `Authorization: Bearer <operator key>`"
    };
    tracing::info!(path = %req.uri().path(), "admin request refused: no valid operator key");
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, "Bearer".parse().unwrap());
    resp
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no admin endpoint at {}: the API serves /tenants, /tenants/{{id}} and /tenants/{{id}}/{{enable,disable,worker_keys,client_keys,connections,usage}}",
            shown(req.uri().path())
        ),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not served at {}",
            req.method(),
            shown(req.uri().path())
        ),
    )
}
