//! Two tenants for the tenant tests: `alpha` and `beta`, each with a worker key and an HS256
//! client key, both keys with kid `k1`; and client tokens for them.

use super::test_config;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;
use std::time::{SystemTime, UNIX_EPOCH};
use streamhost::Config;
use streamhost::tenants::hash_key;

pub const KEY_A: &str = "shk_alpha_worker_key_0123456789";
pub const KEY_B: &str = "shk_beta_worker_key_0123456789";
pub const SECRET_A: &str = "alpha-secret-0123456789abcdef-0123";
pub const SECRET_B: &str = "beta-secret-0123456789abcdef-01234";

/// Tenants `alpha` and `beta`: a worker key each, and an HS256 client key each, both with
/// kid `k1`. `beta`'s clients may join `chat*` streams only.
pub fn two_tenants(extra: &str) -> Config {
    let yaml = format!(
        "tenants:\n\
         - id: alpha\n  worker_keys: [{}]\n  clients:\n    keys: [{{ kid: k1, alg: HS256, secret: {SECRET_A} }}]\n\
         - id: beta\n  worker_keys: [{}]\n  clients:\n    keys: [{{ kid: k1, alg: HS256, secret: {SECRET_B} }}]\n  streams: [\"chat*\"]\n\
         {extra}",
        hash_key(KEY_A),
        hash_key(KEY_B),
    );
    let parsed = Config::parse(&yaml).expect("the tenants config parses");
    Config {
        tenants: parsed.tenants,
        ..test_config()
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A client token for `tenant`, signed with `secret`, valid for `ttl` seconds.
pub fn token(tenant: &str, secret: &str, streams: &[&str], ttl: i64) -> String {
    let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("k1".into());
    let claims = json!({
        "sub": format!("user-of-{tenant}"),
        "tenant": tenant,
        "streams": streams,
        "exp": (now() as i64 + ttl) as u64,
    });
    encode(
        &header,
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}
