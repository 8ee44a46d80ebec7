//! Where a socket's credentials come from on the upgrade request, and how a refusal looks.
//!
//! A worker key or a client token may come as `Authorization: Bearer <x>` (the iii SDKs send
//! `III_TOKEN` so), as `?token=<x>` (for clients that cannot set headers), or, for clients
//! only, as the subprotocol pair `Authorization, <token>` (what browsers can send: the Motia
//! clients do). A refusal is an HTTP error before the upgrade: 401 when the credential is
//! missing or wrong, 403 when it is right but the tenant is disabled, with a JSON body
//! `{"code", "message"}` that says what to fix. An upgrade over the tenant's connection quotas
//! is 429 with `Retry-After`, code `quota_exceeded` and `retry_after_ms` in the body.

use crate::tenants::quotas::{QUOTA_EXCEEDED, QuotaExceeded};
use crate::tenants::{AuthCode, AuthError};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("authorization")?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// The value of query parameter `name`.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

/// The subprotocols a client offers, in its order (axum's own list is sorted).
pub fn offered_protocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// The token a browser offers as the subprotocols `Authorization, <token>`.
pub fn subprotocol_token(headers: &HeaderMap) -> Option<String> {
    let offered: Vec<&str> = offered_protocols(headers).collect();
    let at = offered
        .iter()
        .position(|p| p.eq_ignore_ascii_case("authorization"))?;
    offered
        .get(at + 1)
        .map(|t| (*t).to_owned())
        .filter(|t| !t.is_empty())
}

/// The HTTP answer to a refused upgrade.
pub fn refusal(e: &AuthError) -> Response {
    let status = match e.code {
        AuthCode::TenantDisabled => StatusCode::FORBIDDEN,
        _ => StatusCode::UNAUTHORIZED,
    };
    let body = json!({"code": e.code.as_str(), "message": e.message}).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The HTTP answer to an upgrade over one of the tenant's quotas. A count (`connections`) has
/// no known time to wait: it says one second, when a slot may well be free.
pub fn quota_refusal(e: &QuotaExceeded) -> Response {
    let wait = e.retry_after.unwrap_or(std::time::Duration::from_secs(1));
    super::accept::too_many(QUOTA_EXCEEDED, e.message.clone(), wait).into_response()
}
