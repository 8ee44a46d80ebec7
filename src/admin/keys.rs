//! Keys: a tenant's worker keys (made here, the clear key shown once) and its client keys
//! (replaced as a whole: rotation).
//!
//! A new worker key takes effect at the next upgrade; a revoked one is refused from then on,
//! and the workers it admitted are closed with `CLOSE_KEY_REVOKED`. A client key rotation
//! refuses tokens with a kid no longer listed at their next upgrade; open clients keep their
//! socket until their token expires (their `exp` is what bounds a leaked token).

use super::reply::{self, ApiError, ApiResult, ok};
use super::tenants::{find, view};
use crate::engine::Engine;
use crate::tenants::{ClientKeyConfig, ClientKeys, hash_key};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewWorkerKey {
    #[serde(default)]
    name: Option<String>,
}

/// Makes a worker key: `{"key", "sha256", "name"}`. The key is in no log and no later
/// answer; only its digest is kept.
pub async fn add_worker_key(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult {
    let (id, _) = find(&engine, &id)?;
    let bytes = reply::read_body(body).await?;
    let NewWorkerKey { name } = reply::parse(reply::json_body(&bytes, json!({}))?)?;
    let key = engine
        .tenants
        .add_worker_key(id.as_str(), name.clone())
        .map_err(|e| ApiError::invalid_config(&e))?;
    let sha256 = hash_key(&key);
    tracing::info!(tenant = %id, action = "add_worker_key", %sha256, name = name.as_deref().unwrap_or_default(), "admin: worker key made");
    Ok(reply::reply(
        StatusCode::CREATED,
        &json!({"key": key, "sha256": sha256, "name": name}),
    ))
}

/// Revokes a worker key by its digest and closes the workers it admitted.
pub async fn revoke_worker_key(
    State(engine): State<Arc<Engine>>,
    Path((id, sha256)): Path<(String, String)>,
) -> ApiResult {
    let (id, _) = find(&engine, &id)?;
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request(
            "invalid_digest",
            "name the key by its SHA-256, 64 hex digits (the `sha256` that made it, or `echo -n KEY | sha256sum`), never by the key itself",
        ));
    }
    let sha256 = sha256.to_ascii_lowercase();
    let found = engine
        .tenants
        .revoke_worker_key(id.as_str(), &sha256)
        .map_err(|e| ApiError::invalid_config(&e))?;
    if !found {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_worker_key",
            format!(
                "tenant `{id}` has no worker key with digest {sha256}: `GET /tenants/{id}` lists them"
            ),
        ));
    }
    let closed = engine.close_revoked_workers(id.as_str());
    tracing::info!(tenant = %id, action = "revoke_worker_key", %sha256, closed_workers = closed, "admin: worker key revoked");
    ok(&json!({"revoked": sha256, "closed_workers": closed}))
}

/// The new client keys: a JSON list of keys, or `{"keys": [...]}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum ClientKeysBody {
    List(Vec<Value>),
    Object { keys: Vec<Value> },
}

/// Replaces a tenant's client keys (rotation by kid).
pub async fn set_client_keys(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult {
    let (id, _) = find(&engine, &id)?;
    let bytes = reply::read_body(body).await?;
    let value = reply::json_body(&bytes, Value::Null)?;
    let keys = match serde_json::from_value::<ClientKeysBody>(value) {
        Ok(ClientKeysBody::List(keys) | ClientKeysBody::Object { keys }) => keys,
        Err(_) => {
            return Err(ApiError::bad_request(
                "invalid_config",
                "the body must be the new list of client keys, e.g. [{\"kid\": \"k2\", \"alg\": \"HS256\", \"secret_env\": \"ACME_JWT_K2\"}], or {\"keys\": [...]}",
            ));
        }
    };
    let keys: Vec<ClientKeyConfig> = reply::parse(Value::Array(keys))?;
    // Checked first, so that a bad key is the caller's error and not the registry's.
    ClientKeys::compile(&id, &keys, engine.tenants.base())
        .map_err(|e| ApiError::invalid_config(&e))?;
    let kids: Vec<&str> = keys.iter().map(|k| k.kid.as_str()).collect();
    let kids = kids.join(",");
    let tenant = engine
        .tenants
        .set_client_keys(id.as_str(), keys)
        .map_err(|e| ApiError::invalid_config(&e))?;
    tracing::info!(tenant = %id, action = "set_client_keys", kids, "admin: client keys replaced");
    ok(&view(&engine, &tenant))
}
