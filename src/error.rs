//! The error a function call answers with: `{code, message}` on the wire.

use serde::Serialize;
use std::fmt;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FnError {
    pub code: String,
    pub message: String,
    /// When a refused call may be retried (`quota_exceeded`): sent only when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl FnError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        FnError {
            code: code.into(),
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// A payload that did not deserialize; serde's message names the field.
    pub fn deserialization(function_id: &str, err: impl fmt::Display) -> Self {
        FnError::new(
            "deserialization_error",
            format!("invalid payload for {function_id}: {err}"),
        )
    }

    /// A storage failure: an error that carries its own code (a WebAssembly adapter's
    /// `adapter_timeout`, say) keeps it; others get the function's code (`STREAM_SET_ERROR`).
    pub fn storage(code: &str, err: anyhow::Error) -> Self {
        match err.downcast_ref::<FnError>() {
            Some(own) => own.clone(),
            None => FnError::new(code, format!("{err:#}")),
        }
    }
}

impl fmt::Display for FnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for FnError {}

/// What a function answers: a value, no value (`undefined` to the SDK), or an error.
/// A result is JSON text: most are a stored value, or built from stored values, and go out
/// as they are (see `json`).
pub type FnResult = Result<Option<crate::json::Json>, FnError>;
