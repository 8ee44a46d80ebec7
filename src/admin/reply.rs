//! What the admin API answers: JSON bodies, and errors as `{"code", "message"}` where the
//! code is for programs and the message says what to fix. Request bodies are read here too,
//! capped, so that no handler holds more than `MAX_BODY_BYTES` of what a caller sent.

use crate::tenants::TenantId;
use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// The largest request body the admin API reads.
pub const MAX_BODY_BYTES: usize = 64 << 10;

/// A refusal: an HTTP status, a stable code, and what to fix.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

pub type ApiResult = Result<Response, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unknown_tenant(id: &TenantId) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_tenant",
            format!("no tenant `{id}`: create it with `PUT /tenants/{id}`"),
        )
    }

    /// A change the registry refused: the whole chain of reasons, which name the field.
    pub fn invalid_config(e: &anyhow::Error) -> Self {
        ApiError::bad_request("invalid_config", format!("{e:#}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"code": self.code, "message": self.message});
        reply(self.status, &body)
    }
}

/// A JSON answer.
pub fn reply(status: StatusCode, body: &impl Serialize) -> Response {
    let text = serde_json::to_string(body).unwrap_or_else(|_| "null".into());
    (status, [(header::CONTENT_TYPE, "application/json")], text).into_response()
}

pub fn ok(body: &impl Serialize) -> ApiResult {
    Ok(reply(StatusCode::OK, body))
}

/// The tenant id of a path, checked as the config checks it.
pub fn tenant_id(raw: &str) -> Result<TenantId, ApiError> {
    TenantId::new(raw).map_err(|e| ApiError::bad_request("invalid_tenant_id", e))
}

/// Reads a request body of at most `MAX_BODY_BYTES`, without reading further than that.
pub async fn read_body(body: Body) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request(
                "unreadable_body",
                format!("the body could not be read: {e}"),
            )
        })?;
        if out.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

pub fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the body is over {MAX_BODY_BYTES} bytes; the admin API reads at most that much"),
    )
}

/// A JSON body as `T`; the error names the field that is wrong (`clients.keys[0].alg: ...`).
pub fn parse<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            String::new()
        } else {
            format!("{path}: ")
        };
        ApiError::bad_request("invalid_config", format!("{at}{}", e.inner()))
    })
}

/// The body as JSON; an empty body is `empty`.
pub fn json_body(bytes: &[u8], empty: Value) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(empty);
    }
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("the body is not valid JSON: {e}; send `Content-Type: application/json` and a JSON document"),
        )
    })
}
