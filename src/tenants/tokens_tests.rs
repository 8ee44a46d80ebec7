//! Real keys, real signatures: HS256 secrets, and RS256/ES256 key pairs made with OpenSSL
//! for these tests (tests/fixtures/jwt/).

use super::*;
use crate::tenants::Tenants;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/jwt/",
            $name
        ))
    };
}

const SECRET_A: &str = "tenant-a-secret-0123456789abcdefghijklmnop";
const SECRET_B: &str = "tenant-b-secret-0123456789abcdefghijklmnop";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Tenants `a` and `b`, each with an HS256, an RS256 and an ES256 key, under the SAME kids.
fn registry() -> Tenants {
    let tenant = |id: &str, secret: &str, rsa: &str, ec: &str| -> TenantConfig {
        serde_json::from_value(json!({
            "id": id,
            "clients": { "keys": [
                { "kid": "k1", "alg": "HS256", "secret": secret },
                { "kid": "r1", "alg": "RS256", "public_key_pem": rsa },
                { "kid": "e1", "alg": "ES256", "public_key_pem": ec },
            ]},
            "streams": ["chat", "room-*"],
        }))
        .unwrap()
    };
    let configs = vec![
        tenant("a", SECRET_A, fixture!("rsa_a.pub"), fixture!("ec_a.pub")),
        tenant("b", SECRET_B, fixture!("rsa_b.pub"), fixture!("ec_b.pub")),
    ];
    Tenants::from_configs(configs, "").unwrap()
}

fn hs(secret: &str) -> EncodingKey {
    EncodingKey::from_secret(secret.as_bytes()).unwrap()
}
fn rsa(pem: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()
}
fn ec(pem: &str) -> EncodingKey {
    EncodingKey::from_ec_pem(pem.as_bytes()).unwrap()
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn claims(tenant: &str) -> Value {
    json!({ "sub": "user-1", "exp": now() + 600, "tenant": tenant, "streams": ["room-*"] })
}

fn code(r: Result<(ClientIdentity, Arc<crate::tenants::Tenant>), AuthError>) -> AuthError {
    match r {
        Ok((id, _)) => panic!("accepted as {id:?}"),
        Err(e) => e,
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[test]
fn each_algorithm_verifies_with_its_tenants_key() {
    let t = registry();
    let exp = now() + 600;
    let mut c = claims("a");
    c["exp"] = json!(exp);
    for (alg, kid, key) in [
        (Algorithm::HS256, "k1", hs(SECRET_A)),
        (Algorithm::RS256, "r1", rsa(fixture!("rsa_a.key"))),
        (Algorithm::ES256, "e1", ec(fixture!("ec_a.key"))),
    ] {
        let (id, tenant) = t
            .verify_client_token(&sign(alg, Some(kid), &c, &key))
            .unwrap();
        assert_eq!(tenant.id().as_str(), "a");
        assert_eq!(id.tenant.as_str(), "a");
        assert_eq!(id.sub, "user-1");
        assert_eq!(id.exp, Some(exp));
        assert_eq!(id.streams.as_slice(), ["room-*"]);
    }
}

#[test]
fn a_token_signed_with_a_key_is_refused_for_b_under_the_same_kid() {
    let t = registry();
    let c = claims("b");
    for (alg, kid, key) in [
        (Algorithm::HS256, "k1", hs(SECRET_A)),
        (Algorithm::RS256, "r1", rsa(fixture!("rsa_a.key"))),
        (Algorithm::ES256, "e1", ec(fixture!("ec_a.key"))),
    ] {
        let e = code(t.verify_client_token(&sign(alg, Some(kid), &c, &key)));
        assert_eq!(e.code, AuthCode::InvalidToken, "{alg:?}: {e}");
        assert!(e.message.contains("does not verify"), "{e}");
        assert!(e.message.contains("tenant `b`"), "{e}");
    }
    // And B's own keys do verify it: the refusal above was about the key.
    let ok = sign(
        Algorithm::RS256,
        Some("r1"),
        &c,
        &rsa(fixture!("rsa_b.key")),
    );
    assert_eq!(t.verify_client_token(&ok).unwrap().0.tenant.as_str(), "b");
}

#[test]
fn alg_confusion_with_the_public_key_as_hmac_secret_is_refused() {
    let t = registry();
    let c = claims("a");
    // The classic attack: HS256 "signed" with the RS256 key's public PEM as the secret.
    let forged = sign(Algorithm::HS256, Some("r1"), &c, &hs(fixture!("rsa_a.pub")));
    let e = code(t.verify_client_token(&forged));
    assert_eq!(e.code, AuthCode::InvalidToken);
    assert!(e.message.contains("is an RS256 key"), "{e}");
    // The same with the EC key, and an RS256 token presented to the HS256 kid.
    let forged = sign(Algorithm::HS256, Some("e1"), &c, &hs(fixture!("ec_a.pub")));
    assert_eq!(
        code(t.verify_client_token(&forged)).code,
        AuthCode::InvalidToken
    );
    let wrong = sign(
        Algorithm::RS256,
        Some("k1"),
        &c,
        &rsa(fixture!("rsa_a.key")),
    );
    assert!(
        code(t.verify_client_token(&wrong))
            .message
            .contains("is an HS256 key")
    );
    // Past our own header check, the crate refuses the mismatch too.
    let keys = &t.get("a").unwrap().client_keys;
    let (_, key) = keys
        .select(&TenantId::new("a").unwrap(), Some("r1"))
        .unwrap();
    let forged = sign(Algorithm::HS256, Some("r1"), &c, &hs(fixture!("rsa_a.pub")));
    let v = Validation::new(Algorithm::RS256);
    assert!(jsonwebtoken::decode::<Value>(&forged, &key.key, &v).is_err());
}

#[test]
fn unsigned_tokens_are_refused() {
    let t = registry();
    let payload = b64(claims("a").to_string().as_bytes());
    for alg in ["none", "None", "NONE"] {
        let header = b64(json!({ "alg": alg, "kid": "k1" }).to_string().as_bytes());
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}"),
        ] {
            let e = code(t.verify_client_token(&token));
            assert_eq!(e.code, AuthCode::InvalidToken);
            assert!(
                e.message.contains("alg") || e.message.contains("three"),
                "{e}"
            );
        }
        let e = code(t.verify_client_token(&format!("{header}.{payload}.")));
        assert!(e.message.contains("`alg: none`"), "{e}");
    }
}

#[test]
fn expiry_is_checked_with_five_seconds_of_leeway() {
    let t = registry();
    let key = hs(SECRET_A);
    let at = |exp: u64| {
        let mut c = claims("a");
        c["exp"] = json!(exp);
        t.verify_client_token(&sign(Algorithm::HS256, Some("k1"), &c, &key))
    };
    let e = code(at(now() - 60));
    assert_eq!(e.code, AuthCode::TokenExpired, "{e}");
    assert_eq!(e.code.as_str(), "token_expired");
    // One second past the leeway: refused (time only moves further past it).
    assert_eq!(
        code(at(now() - LEEWAY_SECS - 1)).code,
        AuthCode::TokenExpired
    );
    // Just expired, within the leeway (4 s of margin for a slow machine): accepted.
    assert!(at(now() - 1).is_ok());
    // No exp at all: refused.
    let mut c = claims("a");
    c.as_object_mut().unwrap().remove("exp");
    let e = code(t.verify_client_token(&sign(Algorithm::HS256, Some("k1"), &c, &key)));
    assert_eq!(e.code, AuthCode::InvalidToken);
    assert!(e.message.contains("exp"), "{e}");
}

/// A validly signed token of exactly `len` bytes, padded through a `pad` claim and the kid.
fn token_of_len(len: usize) -> String {
    for kid_pad in 0..4 {
        let kid = format!("k{}", "x".repeat(kid_pad));
        for pad in 0..len {
            let mut c = claims("a");
            c["pad"] = json!("p".repeat(pad));
            let token = sign(Algorithm::HS256, Some(&kid), &c, &hs(SECRET_A));
            if token.len() == len {
                return token;
            }
            if token.len() > len {
                break;
            }
        }
    }
    panic!("no token of {len} bytes")
}

#[test]
fn token_size_is_bounded_at_the_limit() {
    let t = registry();
    // All four padded kids at once, so whichever the search picks is known.
    let keys: Vec<ClientKeyConfig> = (0..4)
        .map(|n| {
            serde_json::from_value(
                json!({"kid": format!("k{}", "x".repeat(n)), "alg": "HS256", "secret": SECRET_A}),
            )
            .unwrap()
        })
        .collect();
    t.set_client_keys("a", keys).unwrap();
    let at = token_of_len(MAX_TOKEN_BYTES);
    assert!(t.verify_client_token(&at).is_ok());
    let over = token_of_len(MAX_TOKEN_BYTES + 1);
    let e = code(t.verify_client_token(&over));
    assert_eq!(e.code, AuthCode::InvalidToken);
    assert!(e.message.contains("8193 bytes"), "{e}");
    // A huge one is refused the same way, without being parsed.
    let huge = format!("{}.x.y", "a".repeat(1 << 20));
    assert!(
        code(t.verify_client_token(&huge))
            .message
            .contains("at most 8192")
    );
}

#[test]
fn a_tampered_token_is_refused() {
    let t = registry();
    let token = sign(
        Algorithm::RS256,
        Some("r1"),
        &claims("a"),
        &rsa(fixture!("rsa_a.key")),
    );
    let parts: Vec<&str> = token.split('.').collect();
    // Widen the streams the token allows, keep the signature.
    let mut c = claims("a");
    c["streams"] = json!(["*"]);
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(c.to_string().as_bytes()),
        parts[2]
    );
    let e = code(t.verify_client_token(&tampered));
    assert_eq!(e.code, AuthCode::InvalidToken);
    assert!(e.message.contains("does not verify"), "{e}");
    // Flip one signature character.
    let mut sig = parts[2].to_owned();
    let last = sig.pop().unwrap();
    sig.push(if last == 'A' { 'B' } else { 'A' });
    let flipped = format!("{}.{}.{sig}", parts[0], parts[1]);
    assert_eq!(
        code(t.verify_client_token(&flipped)).code,
        AuthCode::InvalidToken
    );
    // Garbage.
    for bad in ["", "abc", "a.b.c", "a.b.c.d", "..", "e30.e30.", "@@@.e30.x"] {
        assert_eq!(
            code(t.verify_client_token(bad)).code,
            AuthCode::InvalidToken,
            "{bad}"
        );
    }
}

#[test]
fn rotation_retires_the_old_kid() {
    let t = registry();
    let old = sign(Algorithm::HS256, Some("k1"), &claims("a"), &hs(SECRET_A));
    assert!(t.verify_client_token(&old).is_ok());
    let new_secret = "rotated-secret-for-tenant-a-0123456789";
    let keys = vec![
        serde_json::from_value(json!({"kid": "k2", "alg": "HS256", "secret": new_secret})).unwrap(),
    ];
    t.set_client_keys("a", keys).unwrap();
    let e = code(t.verify_client_token(&old));
    assert_eq!(e.code, AuthCode::UnknownKid, "{e}");
    assert!(e.message.contains("rotated"), "{e}");
    let new = sign(Algorithm::HS256, Some("k2"), &claims("a"), &hs(new_secret));
    assert!(t.verify_client_token(&new).is_ok());
    // The new secret under the old kid is not a way back in either.
    let sneaky = sign(Algorithm::HS256, Some("k1"), &claims("a"), &hs(new_secret));
    assert_eq!(
        code(t.verify_client_token(&sneaky)).code,
        AuthCode::UnknownKid
    );
    // B was not touched.
    let b = sign(Algorithm::HS256, Some("k1"), &claims("b"), &hs(SECRET_B));
    assert!(t.verify_client_token(&b).is_ok());
}

fn one_key() -> Vec<ClientKeyConfig> {
    vec![serde_json::from_value(json!({"kid": "k1", "alg": "HS256", "secret": SECRET_A})).unwrap()]
}

#[test]
fn a_token_without_kid_needs_a_tenant_with_one_key() {
    let t = registry();
    let token = sign(Algorithm::HS256, None, &claims("a"), &hs(SECRET_A));
    let e = code(t.verify_client_token(&token));
    assert_eq!(e.code, AuthCode::UnknownKid);
    assert!(e.message.contains("has 3 client keys"), "{e}");
    t.set_client_keys("a", one_key()).unwrap();
    assert!(t.verify_client_token(&token).is_ok());
    t.set_client_keys("a", vec![]).unwrap();
    assert!(
        code(t.verify_client_token(&token))
            .message
            .contains("no client keys")
    );
    t.set_client_keys("a", one_key()).unwrap();
    // Still only with that key's algorithm and secret.
    let other = sign(Algorithm::HS256, None, &claims("a"), &hs(SECRET_B));
    assert_eq!(
        code(t.verify_client_token(&other)).code,
        AuthCode::InvalidToken
    );
}

#[test]
fn the_tenant_claim_must_name_a_known_enabled_tenant() {
    let t = registry();
    let key = hs(SECRET_A);
    let e = code(t.verify_client_token(&sign(Algorithm::HS256, Some("k1"), &claims("c"), &key)));
    assert_eq!(e.code, AuthCode::UnknownTenant);
    let e =
        code(t.verify_client_token(&sign(Algorithm::HS256, Some("k1"), &claims("Bad Id"), &key)));
    assert_eq!(e.code, AuthCode::UnknownTenant);
    let mut c = claims("a");
    c.as_object_mut().unwrap().remove("tenant");
    let e = code(t.verify_client_token(&sign(Algorithm::HS256, Some("k1"), &c, &key)));
    assert_eq!(e.code, AuthCode::InvalidToken);
    assert!(e.message.contains("`tenant` claim"), "{e}");

    t.set_enabled("a", false).unwrap();
    let good = sign(Algorithm::HS256, Some("k1"), &claims("a"), &key);
    assert_eq!(
        code(t.verify_client_token(&good)).code,
        AuthCode::TenantDisabled
    );
    // A bad signature learns nothing about the tenant being disabled.
    let bad = sign(Algorithm::HS256, Some("k1"), &claims("a"), &hs(SECRET_B));
    assert_eq!(
        code(t.verify_client_token(&bad)).code,
        AuthCode::InvalidToken
    );
    t.set_enabled("a", true).unwrap();
    assert!(t.verify_client_token(&good).is_ok());
}

#[test]
fn claims_are_checked_and_streams_intersect_with_the_tenants() {
    let t = registry();
    let key = hs(SECRET_A);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims("a");
        f(&mut c);
        t.verify_client_token(&sign(Algorithm::HS256, Some("k1"), &c, &key))
    };
    let e = code(with(&|c| {
        c.as_object_mut().unwrap().remove("streams");
    }));
    assert!(e.message.contains("streams"), "{e}");
    let e = code(with(&|c| c["streams"] = json!(vec!["s"; 65])));
    assert!(e.message.contains("65 stream patterns"), "{e}");
    assert!(with(&|c| c["streams"] = json!(vec!["s"; 64])).is_ok());
    assert_eq!(
        code(with(&|c| c["sub"] = json!(""))).code,
        AuthCode::InvalidToken
    );
    assert_eq!(
        code(with(&|c| c["sub"] = json!(7))).code,
        AuthCode::InvalidToken
    );
    assert!(with(&|c| c["sub"] = json!("u".repeat(MAX_SUB_BYTES))).is_ok());
    assert!(with(&|c| c["sub"] = json!("u".repeat(MAX_SUB_BYTES + 1))).is_err());
    let e = code(with(&|c| c["nbf"] = json!(now() + 600)));
    assert!(e.message.contains("nbf"), "{e}");

    // Tenant: chat, room-*. Token: room-1, chat-x, lobby.
    let (id, tenant) = with(&|c| c["streams"] = json!(["room-1", "chat-x", "lobby"])).unwrap();
    assert!(id.may_join(&tenant.config, "room-1"));
    assert!(!id.may_join(&tenant.config, "room-2"), "not in the token");
    assert!(!id.may_join(&tenant.config, "chat"), "not in the token");
    assert!(!id.may_join(&tenant.config, "chat-x"), "not in the tenant");
    assert!(!id.may_join(&tenant.config, "lobby"), "not in the tenant");
    let (all, _) = with(&|c| c["streams"] = json!(["*"])).unwrap();
    assert!(all.may_join(&tenant.config, "chat") && !all.may_join(&tenant.config, "lobby"));
    // Never across tenants, whatever the patterns.
    assert!(!all.may_join(&t.get("b").unwrap().config, "chat"));
    let anon = ClientIdentity::anonymous(TenantId::new("a").unwrap());
    assert!(anon.may_join(&tenant.config, "room-9") && !anon.may_join(&tenant.config, "x"));
}

#[test]
fn audience_is_checked_only_when_configured() {
    let t = registry();
    let key = hs(SECRET_A);
    let mut c = claims("a");
    c["aud"] = json!("other-service");
    let token = sign(Algorithm::HS256, Some("k1"), &c, &key);
    assert!(t.verify_client_token(&token).is_ok());
    let mut config = t.get("a").unwrap().config.clone();
    config.clients.audience = Some("streams".into());
    t.replace(config).unwrap();
    let e = code(t.verify_client_token(&token));
    assert!(e.message.contains("aud"), "{e}");
    c["aud"] = json!("streams");
    assert!(
        t.verify_client_token(&sign(Algorithm::HS256, Some("k1"), &c, &key))
            .is_ok()
    );
}

#[test]
fn keys_are_checked_when_compiled() {
    let a = TenantId::new("a").unwrap();
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt"));
    let compile = |key: Value| {
        let k: ClientKeyConfig = serde_json::from_value(key).unwrap();
        ClientKeys::compile_with(&a, &[k], dir, |v| (v == "SET").then(|| SECRET_A.to_owned()))
            .map_err(|e| format!("{e:#}"))
    };
    assert!(compile(json!({"kid": "f", "alg": "RS256", "public_key_file": "rsa_a.pub"})).is_ok());
    assert!(compile(json!({"kid": "f", "alg": "ES256", "public_key_file": "ec_a.pub"})).is_ok());
    assert!(compile(json!({"kid": "s", "alg": "HS256", "secret_env": "SET"})).is_ok());
    let err = compile(json!({"kid": "s", "alg": "HS256", "secret_env": "UNSET"})).unwrap_err();
    assert!(
        err.contains("`UNSET`") && err.contains("client key `s`"),
        "{err}"
    );
    let err =
        compile(json!({"kid": "f", "alg": "RS256", "public_key_file": "missing.pub"})).unwrap_err();
    assert!(err.contains("missing.pub"), "{err}");
    let err =
        compile(json!({"kid": "p", "alg": "ES256", "public_key_file": "ec_p384.pub"})).unwrap_err();
    assert!(err.contains("P-256"), "{err}");
    let err = compile(json!({"kid": "x", "alg": "ES256", "public_key_pem": fixture!("rsa_a.pub")}))
        .unwrap_err();
    assert!(err.contains("not an EC public key"), "{err}");
    let err = compile(json!({"kid": "x", "alg": "RS256", "public_key_pem": fixture!("ec_a.pub")}))
        .unwrap_err();
    assert!(err.contains("not an RSA public key"), "{err}");
    let err = compile(json!({"kid": "x", "alg": "RS256", "public_key_pem": fixture!("rsa_a.key")}))
        .unwrap_err();
    assert!(err.contains("private key"), "{err}");
    let err = compile(json!({"kid": "x", "alg": "HS256", "secret": "short"})).unwrap_err();
    assert!(err.contains("at least 32"), "{err}");
    assert!(!err.contains("short"), "the secret is never echoed: {err}");
}

#[test]
fn a_duplicated_claim_is_refused_not_read_two_ways() {
    // If the tenant were read from the first `tenant` and verified against the last, a
    // token for one tenant could be routed to another. serde refuses duplicate fields.
    let t = registry();
    let header = b64(br#"{"alg":"HS256","kid":"k1"}"#);
    let exp = now() + 600;
    for payload in [
        format!(r#"{{"sub":"u","exp":{exp},"tenant":"b","tenant":"a","streams":["*"]}}"#),
        format!(r#"{{"sub":"u","exp":{exp},"tenant":"a","streams":["*"],"streams":["x"]}}"#),
    ] {
        let message = format!("{header}.{}", b64(payload.as_bytes()));
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &hs(SECRET_A), Algorithm::HS256)
            .unwrap();
        let e = code(t.verify_client_token(&format!("{message}.{sig}")));
        assert_eq!(e.code, AuthCode::InvalidToken, "{e}");
        assert!(e.message.contains("duplicate field"), "{e}");
    }
    // The same bytes without the duplicate verify: the refusal above was the duplicate.
    let payload = format!(r#"{{"sub":"u","exp":{exp},"tenant":"a","streams":["*"]}}"#);
    let message = format!("{header}.{}", b64(payload.as_bytes()));
    let sig =
        jsonwebtoken::crypto::sign(message.as_bytes(), &hs(SECRET_A), Algorithm::HS256).unwrap();
    assert!(t.verify_client_token(&format!("{message}.{sig}")).is_ok());
}
