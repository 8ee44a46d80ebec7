//! Tenants as a whole: list, show, create or replace, enable, disable, delete.
//!
//! A tenant is shown as `{"id", "enabled", "config", "connections"}`, where `config` is what
//! `PUT` takes back (the config file's shape, which never writes an HS256 `secret`: to put
//! back a key that had one, give it again or use `secret_env`).

use super::reply::{self, ApiError, ApiResult, ok, tenant_id};
use crate::engine::Engine;
use crate::engine::space::Kind;
use crate::tenants::{ClientKeys, Tenant, TenantConfig, TenantId};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;

/// A tenant as the admin API shows it.
pub fn view(engine: &Engine, tenant: &Tenant) -> Value {
    let (mut clients, mut workers) = (0, 0);
    if let Some(space) = engine.space(tenant.id().as_str()) {
        for s in space.sockets() {
            match s.kind {
                Kind::Client => clients += 1,
                Kind::Worker => workers += 1,
            }
        }
    }
    json!({
        "id": tenant.id(),
        "enabled": tenant.enabled(),
        "config": tenant.config,
        "connections": {"clients": clients, "workers": workers},
    })
}

/// The tenant of a path: 400 for an id no tenant could have, 404 for one none has.
pub fn find(engine: &Engine, raw: &str) -> Result<(TenantId, Arc<Tenant>), ApiError> {
    let id = tenant_id(raw)?;
    let tenant = engine
        .tenants
        .get(id.as_str())
        .ok_or_else(|| ApiError::unknown_tenant(&id))?;
    Ok((id, tenant))
}

pub async fn list(State(engine): State<Arc<Engine>>) -> ApiResult {
    let tenants: Vec<Value> = engine
        .tenants
        .list()
        .iter()
        .map(|t| view(&engine, t))
        .collect();
    ok(&json!({ "tenants": tenants }))
}

pub async fn show(State(engine): State<Arc<Engine>>, Path(id): Path<String>) -> ApiResult {
    let (_, tenant) = find(&engine, &id)?;
    ok(&view(&engine, &tenant))
}

/// Creates a tenant, or replaces its whole config (keys, patterns, ceilings) at once.
/// Workers whose key the new config leaves out are closed, as a revocation would.
pub async fn put(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult {
    let id = tenant_id(&id)?;
    let bytes = reply::read_body(body).await?;
    let mut value = reply::json_body(&bytes, Value::Null)?;
    let Some(fields) = value.as_object_mut() else {
        return Err(ApiError::bad_request(
            "invalid_config",
            "the body must be a tenant's config as a JSON object, e.g. {\"worker_keys\": [], \"clients\": {\"token_required\": false}}",
        ));
    };
    match fields.get("id") {
        None => {
            fields.insert("id".into(), json!(id));
        }
        Some(v) if v.as_str() == Some(id.as_str()) => {}
        Some(_) => {
            return Err(ApiError::bad_request(
                "id_mismatch",
                format!(
                    "the body's `id` is not `{id}`, the tenant of the path: leave `id` out or make them agree"
                ),
            ));
        }
    }
    let config: TenantConfig = reply::parse(value)?;
    check(&engine, &config)?;
    let created = engine.tenants.get(id.as_str()).is_none();
    let space = engine.put_tenant(config).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "put_failed",
            format!("{e:#}"),
        )
    })?;
    if created {
        // A tenant put back finds its data again: count it against its quota.
        space.load_stored_bytes().await;
    }
    let closed = engine.close_revoked_workers(id.as_str());
    let tenant = engine
        .tenants
        .get(id.as_str())
        .ok_or_else(|| ApiError::unknown_tenant(&id))?;
    tracing::info!(tenant = %id, action = if created { "create" } else { "replace" }, enabled = tenant.enabled(), closed_workers = closed, "admin: tenant put");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(reply::reply(status, &view(&engine, &tenant)))
}

/// What the registry would refuse, refused first with a client's error: the config's own
/// rules, its client keys (files, variables, PEMs), and worker keys owned by another tenant.
fn check(engine: &Engine, config: &TenantConfig) -> Result<(), ApiError> {
    config
        .validate()
        .map_err(|e| ApiError::invalid_config(&e))?;
    ClientKeys::compile(&config.id, &config.clients.keys, engine.tenants.base())
        .map_err(|e| ApiError::invalid_config(&e))?;
    for other in engine.tenants.list() {
        if other.id() == &config.id {
            continue;
        }
        for k in &config.worker_keys {
            if other
                .config
                .worker_keys
                .iter()
                .any(|o| o.sha256 == k.sha256)
            {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "worker_key_conflict",
                    format!(
                        "worker key digest {} belongs to tenant `{}`; a key names one tenant: make a new key for this one",
                        k.sha256,
                        other.id()
                    ),
                ));
            }
        }
    }
    Ok(())
}

pub async fn enable(State(engine): State<Arc<Engine>>, Path(id): Path<String>) -> ApiResult {
    set_enabled(&engine, &id, true)
}

/// Closes the tenant's sockets with 4403 and refuses new ones until it is enabled again.
pub async fn disable(State(engine): State<Arc<Engine>>, Path(id): Path<String>) -> ApiResult {
    set_enabled(&engine, &id, false)
}

fn set_enabled(engine: &Engine, id: &str, enabled: bool) -> ApiResult {
    let (id, _) = find(engine, id)?;
    engine
        .set_tenant_enabled(id.as_str(), enabled)
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, "unknown_tenant", format!("{e:#}")))?;
    let action = if enabled { "enable" } else { "disable" };
    tracing::info!(tenant = %id, action, "admin: tenant {action}d");
    let (_, tenant) = find(engine, id.as_str())?;
    ok(&view(engine, &tenant))
}

/// Deletes a tenant: its sockets close with 4403, its keys are forgotten, its data stays
/// in its store (putting the tenant back finds it).
pub async fn delete(State(engine): State<Arc<Engine>>, Path(id): Path<String>) -> ApiResult {
    let (id, _) = find(&engine, &id)?;
    if id.is_default() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "default_tenant",
            "the `default` tenant cannot be deleted: disable it instead (POST /tenants/default/disable)",
        ));
    }
    engine.remove_tenant(id.as_str()).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "delete_failed",
            format!("{e:#}"),
        )
    })?;
    tracing::info!(tenant = %id, action = "delete", "admin: tenant deleted");
    ok(&json!({ "deleted": id }))
}
