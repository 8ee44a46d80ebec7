//! Why a worker key or a client token was refused: a stable code for programs, and a message
//! for the person who has to fix it.
//!
//! Messages never contain key material: a presented key is never echoed, and what a token
//! says about itself (its kid, its tenant) is echoed only shortened and quoted.

use std::fmt;

/// The machine-readable reason, sent on the wire as [`AuthCode::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthCode {
    /// The token is malformed, unsigned, signed with the wrong key or algorithm, or its claims
    /// are missing or out of bounds.
    InvalidToken,
    /// The token's `exp` is past (beyond the leeway).
    TokenExpired,
    /// No tenant has the id the token (or the connection) names.
    UnknownTenant,
    /// The tenant exists but is disabled.
    TenantDisabled,
    /// The tenant has no key with the token's `kid`.
    UnknownKid,
    /// No worker key was presented where one is required.
    MissingWorkerKey,
    /// The presented worker key belongs to no tenant.
    InvalidWorkerKey,
}

impl AuthCode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthCode::InvalidToken => "invalid_token",
            AuthCode::TokenExpired => "token_expired",
            AuthCode::UnknownTenant => "unknown_tenant",
            AuthCode::TenantDisabled => "tenant_disabled",
            AuthCode::UnknownKid => "unknown_kid",
            AuthCode::MissingWorkerKey => "missing_worker_key",
            AuthCode::InvalidWorkerKey => "invalid_worker_key",
        }
    }
}

/// A refusal: its code and what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthError {
    pub code: AuthCode,
    pub message: String,
}

impl AuthError {
    pub fn new(code: AuthCode, message: impl Into<String>) -> Self {
        AuthError {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_token(message: impl Into<String>) -> Self {
        AuthError::new(AuthCode::InvalidToken, message)
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for AuthError {}

/// Untrusted text (a kid, a tenant id from a token) as it may appear in a message: quoted,
/// escaped, and cut to 64 characters.
pub(crate) fn shown(untrusted: &str) -> String {
    const MAX: usize = 64;
    match untrusted.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{:?}…", &untrusted[..cut]),
        None => format!("{untrusted:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_quotes_escapes_and_cuts() {
        assert_eq!(shown("k1"), "\"k1\"");
        assert_eq!(shown("a\nb"), "\"a\\nb\"");
        let long = "x".repeat(65);
        assert_eq!(shown(&long), format!("\"{}\"…", "x".repeat(64)));
        assert_eq!(shown(&"x".repeat(64)), format!("\"{}\"", "x".repeat(64)));
    }

    #[test]
    fn display_leads_with_the_code() {
        let e = AuthError::new(AuthCode::UnknownKid, "sign with a current key");
        assert_eq!(e.to_string(), "unknown_kid: sign with a current key");
    }
}
