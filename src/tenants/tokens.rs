//! Client tokens: JWTs that say which tenant a client belongs to and what it may join.
//!
//! The tenant is chosen by the token's `tenant` claim, read from the payload before anything
//! is verified, rather than by the Host name or a path prefix: it works behind any proxy and
//! on any URL, and the SDK clients already send a token. Reading an unverified claim is safe
//! here because it only picks *whose keys* to check the signature with: a forged `tenant`
//! leads to a tenant whose keys did not sign the token, and the signature fails.
//!
//! Then the key. Each tenant's keys are decoded once, at configuration time, into a map of
//! that tenant alone ([`ClientKeys`]), so the lookup is by (tenant, kid): two tenants that
//! both call their key `k1` never see each other's (the kid-only JWKS cache of a peer let one
//! tenant's token pass as another's). The header's `kid` names the key; a token without one
//! is tried only when the tenant has exactly one key, never against each key in turn.
//!
//! The algorithm is the key's, from the config, never the header's: an RS256 key only checks
//! RS256 signatures, so a token "signed" with HS256 using the public key as the secret fails,
//! and `alg: none` is refused before any key is looked at. HMAC signatures are compared in
//! constant time by the `hmac` crate; RS256 and ES256 verify with public keys only (the
//! `rsa` crate's timing advisory concerns private-key operations, which never happen here).
//!
//! Claims: `sub`, `exp` (required; 5 s of leeway for clock skew), `tenant`, `streams` (the
//! patterns this client may join, which the tenant's own `streams` further narrow), `nbf`
//! if present, `aud` if the tenant sets `clients.audience`. A token is at most 8 KiB:
//! longer ones are refused before any parsing.

use super::config::{ClientKeyConfig, KeyAlg, Secret, TenantConfig, TenantId, check_secret_len};
use super::error::{AuthCode, AuthError, shown};
use super::patterns::StreamPatterns;
use anyhow::{Context, bail};
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// The longest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8 << 10;
/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 5;
pub const MAX_SUB_BYTES: usize = 256;
/// The longest PEM file read for a public key.
pub const MAX_PEM_BYTES: usize = 16 << 10;

/// Who a verified token says the client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub tenant: TenantId,
    pub sub: String,
    /// Seconds since the epoch; the socket should close when it passes. None: no expiry
    /// (a client admitted without a token).
    pub exp: Option<u64>,
    /// What the token lets the client join, before the tenant's own patterns narrow it.
    pub streams: StreamPatterns,
}

impl ClientIdentity {
    /// A client admitted without a token (the tenant does not require one): the tenant's
    /// patterns alone decide.
    pub fn anonymous(tenant: TenantId) -> Self {
        ClientIdentity {
            tenant,
            sub: String::new(),
            exp: None,
            streams: StreamPatterns::all(),
        }
    }

    /// May this client join `stream`? Both the token and the tenant (as configured now) must
    /// allow it.
    pub fn may_join(&self, tenant: &TenantConfig, stream: &str) -> bool {
        tenant.id == self.tenant && tenant.streams.allows(stream) && self.streams.allows(stream)
    }
}

/// One decoded key; its algorithm is fixed here.
struct VerifyKey {
    alg: KeyAlg,
    key: DecodingKey,
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyKey({})", self.alg.as_str())
    }
}

/// One tenant's client keys, decoded, by kid. Rotation builds a new one from the tenant's
/// new key list; the old one is dropped with the tenant entry it belonged to.
#[derive(Debug, Default)]
pub struct ClientKeys {
    by_kid: HashMap<String, Arc<VerifyKey>>,
}

impl ClientKeys {
    /// Decodes every key: secrets from the config or the environment, public keys from the
    /// config or a file (relative to `base`). Any bad key fails the whole list, naming it.
    pub fn compile(
        tenant: &TenantId,
        keys: &[ClientKeyConfig],
        base: &Path,
    ) -> anyhow::Result<Self> {
        ClientKeys::compile_with(tenant, keys, base, |var| std::env::var(var).ok())
    }

    /// As [`ClientKeys::compile`], reading `secret_env` variables through `env`.
    pub fn compile_with(
        tenant: &TenantId,
        keys: &[ClientKeyConfig],
        base: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Self> {
        let mut by_kid = HashMap::with_capacity(keys.len());
        for k in keys {
            k.validate()
                .and_then(|()| decode_key(k, base, &env))
                .map(|key| by_kid.insert(k.kid.clone(), Arc::new(VerifyKey { alg: k.alg, key })))
                .with_context(|| format!("tenant `{tenant}`, client key `{}`", k.kid))?;
        }
        Ok(ClientKeys { by_kid })
    }

    pub fn len(&self) -> usize {
        self.by_kid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_kid.is_empty()
    }

    /// The key a token names, or the only key when it names none.
    fn select(
        &self,
        tenant: &TenantId,
        kid: Option<&str>,
    ) -> Result<(&str, &VerifyKey), AuthError> {
        if self.by_kid.is_empty() {
            return Err(AuthError::new(
                AuthCode::UnknownKid,
                format!(
                    "tenant `{tenant}` has no client keys, so it accepts no tokens: its operator must add one"
                ),
            ));
        }
        match kid {
            Some(kid) => self
                .by_kid
                .get_key_value(kid)
                .map(|(k, v)| (k.as_str(), &**v))
                .ok_or_else(|| {
                    AuthError::new(
                        AuthCode::UnknownKid,
                        format!(
                            "tenant `{tenant}` has no client key with kid {}: sign with one of its current keys (was the key rotated?)",
                            shown(kid)
                        ),
                    )
                }),
            None if self.by_kid.len() == 1 => {
                let (k, v) = self.by_kid.iter().next().expect("one key");
                Ok((k.as_str(), &**v))
            }
            None => Err(AuthError::new(
                AuthCode::UnknownKid,
                format!(
                    "the token has no `kid` header and tenant `{tenant}` has {} client keys: put the signing key's kid in the header",
                    self.by_kid.len()
                ),
            )),
        }
    }
}

fn decode_key(
    k: &ClientKeyConfig,
    base: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<DecodingKey> {
    if k.alg == KeyAlg::HS256 {
        let secret = match (&k.secret, &k.secret_env) {
            (Some(Secret(s)), _) => s.clone(),
            (None, Some(var)) => env(var).with_context(|| {
                format!("the environment variable `{var}` (its secret_env) is not set")
            })?,
            (None, None) => bail!("an HS256 key needs `secret` or `secret_env`"),
        };
        check_secret_len(secret.len())?;
        return Ok(DecodingKey::from_secret(secret.as_bytes())?);
    }
    let pem = match (&k.public_key_pem, &k.public_key_file) {
        (Some(pem), _) => pem.clone().into_bytes(),
        (None, Some(file)) => read_pem(&base.join(file))?,
        (None, None) => bail!(
            "an {} key needs `public_key_pem` or `public_key_file`",
            k.alg.as_str()
        ),
    };
    if pem.len() > MAX_PEM_BYTES {
        bail!(
            "the public key PEM is {} bytes; at most {MAX_PEM_BYTES} are accepted",
            pem.len()
        );
    }
    if String::from_utf8_lossy(&pem).contains("PRIVATE KEY") {
        bail!(
            "this is a private key: give the public key only (`openssl pkey -in KEY -pubout`), and keep the private key with the token issuer"
        );
    }
    if k.alg == KeyAlg::RS256 {
        return DecodingKey::from_rsa_pem(&pem)
            .map_err(|e| anyhow::anyhow!("not an RSA public key in PEM form ({e})"));
    }
    let key = DecodingKey::from_ec_pem(&pem)
        .map_err(|e| anyhow::anyhow!("not an EC public key in PEM form ({e})"))?;
    // An uncompressed P-256 point is 65 bytes; P-384 (ES384) is 97 and would never verify.
    match key.try_get_as_bytes() {
        Ok(point) if point.len() == 65 => Ok(key),
        _ => bail!("an ES256 key must be on the P-256 curve (prime256v1)"),
    }
}

fn read_pem(path: &Path) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read public_key_file {}", path.display()))?;
    if meta.len() > MAX_PEM_BYTES as u64 {
        bail!(
            "public_key_file {} is {} bytes; at most {MAX_PEM_BYTES} are accepted",
            path.display(),
            meta.len()
        );
    }
    std::fs::read(path).with_context(|| format!("cannot read public_key_file {}", path.display()))
}

/// The parts of a token looked at before its signature is checked.
pub struct Unverified {
    pub tenant: TenantId,
    kid: Option<String>,
    alg: String,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

#[derive(Deserialize)]
struct RawClaims {
    #[serde(default)]
    tenant: Option<String>,
}

/// Step one: the size bound, the shape, `alg: none`, and the tenant the token claims.
/// Nothing here is trusted beyond choosing whose keys to verify with.
pub fn read_unverified(token: &str) -> Result<Unverified, AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::invalid_token(format!(
            "the token is {} bytes; at most {MAX_TOKEN_BYTES} are accepted: carry fewer or shorter stream patterns",
            token.len()
        )));
    }
    let parts: Vec<&str> = token.splitn(4, '.').collect();
    let [header, payload, _signature] = parts[..] else {
        return Err(AuthError::invalid_token(
            "a token is a JWT: three base64url parts separated by dots (header.payload.signature)",
        ));
    };
    let header: RawHeader = json_part(header, "header")?;
    if header.alg.eq_ignore_ascii_case("none") {
        return Err(AuthError::invalid_token(
            "unsigned tokens (`alg: none`) are refused: sign the token with one of the tenant's keys",
        ));
    }
    let claims: RawClaims = json_part(payload, "payload")?;
    let tenant = claims.tenant.ok_or_else(|| {
        AuthError::invalid_token(
            "the token has no `tenant` claim: add the id of the tenant it is for",
        )
    })?;
    let tenant = TenantId::new(tenant).map_err(|e| AuthError::new(AuthCode::UnknownTenant, e))?;
    Ok(Unverified {
        tenant,
        kid: header.kid,
        alg: header.alg,
    })
}

fn json_part<T: for<'de> Deserialize<'de>>(part: &str, what: &str) -> Result<T, AuthError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| {
            AuthError::invalid_token(format!(
                "the token's {what} is not base64url (without padding)"
            ))
        })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        AuthError::invalid_token(format!(
            "the token's {what} is not valid: {}",
            cut(&e.to_string())
        ))
    })
}

fn cut(message: &str) -> String {
    match message.char_indices().nth(200) {
        Some((at, _)) => format!("{}…", &message[..at]),
        None => message.to_owned(),
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    tenant: String,
    streams: Vec<String>,
}

/// Step two: checks the signature with the claimed tenant's key, then the claims.
/// `tenant` and `keys` must be the entry [`read_unverified`] pointed to; whether the tenant
/// is enabled is the caller's to check (after this, so only a valid token learns it).
pub fn verify(
    token: &str,
    seen: &Unverified,
    tenant: &TenantConfig,
    keys: &ClientKeys,
) -> Result<ClientIdentity, AuthError> {
    let id = &tenant.id;
    if *id != seen.tenant {
        return Err(AuthError::invalid_token(
            "the token was read for another tenant",
        ));
    }
    let (kid, key) = keys.select(id, seen.kid.as_deref())?;
    if seen.alg != key.alg.as_str() {
        return Err(AuthError::invalid_token(format!(
            "the token is signed with {} but client key `{kid}` of tenant `{id}` is an {} key: sign with {}",
            shown(&seen.alg),
            key.alg.as_str(),
            key.alg.as_str()
        )));
    }
    let mut validation = Validation::new(match key.alg {
        KeyAlg::HS256 => Algorithm::HS256,
        KeyAlg::RS256 => Algorithm::RS256,
        KeyAlg::ES256 => Algorithm::ES256,
    });
    validation.leeway = LEEWAY_SECS;
    validation.validate_nbf = true;
    match &tenant.clients.audience {
        Some(aud) => validation.set_audience(&[aud]),
        None => validation.validate_aud = false,
    }
    let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
        .map_err(|e| refusal(e.kind(), kid, tenant))?
        .claims;
    if claims.tenant != id.as_str() {
        return Err(AuthError::invalid_token(
            "the token's `tenant` claim changed between reads",
        ));
    }
    if claims.sub.is_empty() || claims.sub.len() > MAX_SUB_BYTES {
        return Err(AuthError::invalid_token(format!(
            "the `sub` claim must be 1 to {MAX_SUB_BYTES} bytes"
        )));
    }
    let streams = StreamPatterns::new(claims.streams)
        .map_err(|e| AuthError::invalid_token(format!("the `streams` claim: {e}")))?;
    Ok(ClientIdentity {
        tenant: id.clone(),
        sub: claims.sub,
        exp: Some(claims.exp),
        streams,
    })
}

fn refusal(kind: &ErrorKind, kid: &str, tenant: &TenantConfig) -> AuthError {
    let id = &tenant.id;
    let message = match kind {
        ErrorKind::ExpiredSignature => {
            return AuthError::new(
                AuthCode::TokenExpired,
                "the token has expired (its `exp` is past): get a fresh token from the issuer",
            );
        }
        ErrorKind::InvalidSignature => format!(
            "the signature does not verify with client key `{kid}` of tenant `{id}`: the token was signed with another key, or altered"
        ),
        ErrorKind::ImmatureSignature => {
            "the token is not valid yet (its `nbf` is in the future)".into()
        }
        ErrorKind::MissingRequiredClaim(c) => format!("the token has no `{c}` claim"),
        ErrorKind::InvalidClaimFormat(c) => format!("the `{c}` claim has the wrong type"),
        ErrorKind::InvalidAudience => format!(
            "the token's `aud` is not {}",
            shown(tenant.clients.audience.as_deref().unwrap_or_default())
        ),
        ErrorKind::InvalidAlgorithm => {
            format!("the token's algorithm is not the one of client key `{kid}`")
        }
        ErrorKind::Json(e) => format!("the token's claims are not valid: {}", cut(&e.to_string())),
        _ => "the token is not a well-formed JWT".into(),
    };
    AuthError::invalid_token(message)
}

#[cfg(test)]
#[path = "tokens_tests.rs"]
mod tests;
