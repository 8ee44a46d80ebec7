use super::*;
use crate::tenants::keys::hash_key;

fn parse(yaml: &str) -> anyhow::Result<Vec<TenantConfig>> {
    parse_tenants(serde_yaml_ng::from_str(yaml).unwrap())
}

fn err(yaml: &str) -> String {
    format!("{:#}", parse(yaml).unwrap_err())
}

const SECRET: &str = "0123456789abcdef0123456789abcdef";

#[test]
fn a_full_tenant_parses() {
    let digest = hash_key("shk_one");
    let yaml = format!(
        "- id: acme\n  worker_keys:\n    - {digest}\n    - {{ sha256: \"{}\", name: ci }}\n  clients:\n    keys:\n      - {{ kid: k1, alg: HS256, secret: {SECRET} }}\n      - {{ kid: k2, alg: RS256, public_key_file: keys/a.pub }}\n    auth_function: acme::auth\n  streams: [chat, \"room-*\"]\n  adapter_ceilings: {{ max_memory_bytes: 1048576 }}\n  quotas: {{}}\n",
        hash_key("shk_two").to_uppercase()
    );
    let t = &parse(&yaml).unwrap()[0];
    assert_eq!(t.id.as_str(), "acme");
    assert!(t.enabled);
    assert_eq!(t.worker_keys[0].sha256, digest);
    assert_eq!(t.worker_keys[1].sha256, hash_key("shk_two"), "lowercased");
    assert_eq!(t.worker_keys[1].name.as_deref(), Some("ci"));
    assert!(t.clients.token_required, "closed unless opened");
    assert_eq!(t.clients.keys[0].alg, KeyAlg::HS256);
    assert_eq!(t.clients.auth_function.as_deref(), Some("acme::auth"));
    assert!(t.streams.allows("room-1") && !t.streams.allows("lobby"));
    assert_eq!(t.adapter_ceilings.max_memory_bytes, 1 << 20);
    assert_eq!(
        t.adapter_ceilings.max_timeout_ms,
        AdapterCeilings::default().max_timeout_ms
    );
}

#[test]
fn a_minimal_tenant_gets_the_defaults() {
    let t = &parse("- id: t1\n").unwrap()[0];
    assert!(t.enabled && t.worker_keys.is_empty() && t.clients.keys.is_empty());
    assert_eq!(t.streams, StreamPatterns::all());
    assert_eq!(t.adapter_ceilings, AdapterCeilings::default());
    assert_eq!(
        t.warnings().len(),
        1,
        "token_required with no way to get a token"
    );
    let d = TenantConfig::default_tenant();
    assert!(d.id.is_default() && !d.clients.token_required && d.warnings().is_empty());
}

#[test]
fn serializing_never_writes_a_secret() {
    let yaml =
        format!("- id: a\n  clients:\n    keys: [{{ kid: k1, alg: HS256, secret: {SECRET} }}]\n");
    let t = &parse(&yaml).unwrap()[0];
    let json = serde_json::to_string(t).unwrap();
    assert!(!json.contains(SECRET), "{json}");
    assert!(json.contains("\"kid\":\"k1\""), "{json}");
    assert!(!format!("{t:?}").contains(SECRET), "nor Debug");
    // What the admin API returns reads back (minus the secret).
    let back: TenantConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back.clients.keys[0].secret, None);
    assert_eq!(back.id, t.id);
}

#[test]
fn worker_keys_serialize_in_the_form_they_came() {
    let d = hash_key("k");
    let yaml = format!("- id: a\n  worker_keys: [{d}, {{ sha256: {d}0, name: x }}]\n");
    // The second digest is 65 digits: refused without echoing it.
    let e = err(&yaml);
    assert!(e.contains("tenants[0].worker_keys[1]"), "{e}");
    assert!(e.contains("65-character"), "{e}");
    let t = WorkerKeyConfig::new(&d, Some("ci".into())).unwrap();
    assert_eq!(
        serde_json::to_value(&t).unwrap(),
        serde_json::json!({"sha256": d, "name": "ci"})
    );
    let bare = WorkerKeyConfig::new(&d, None).unwrap();
    assert_eq!(serde_json::to_value(&bare).unwrap(), serde_json::json!(d));
}

#[test]
fn a_clear_key_in_place_of_a_digest_is_refused_without_echo() {
    let clear = crate::tenants::keys::generate_key();
    let e = err(&format!("- id: a\n  worker_keys: [{clear}]\n"));
    assert!(e.contains("looks like a clear worker key"), "{e}");
    assert!(!e.contains(&clear[4..]), "the key is never echoed: {e}");
}

#[test]
fn tenant_ids_are_bounded_and_plain() {
    let at = "a".repeat(MAX_TENANT_ID_BYTES);
    assert!(parse(&format!("- id: {at}\n")).is_ok());
    let e = err(&format!("- id: {at}a\n"));
    assert!(e.contains("tenants[0].id") && e.contains("1 to 64"), "{e}");
    for bad in ["\"\"", "Acme", "a.b", "a:b", "\"a b\"", "é"] {
        assert!(parse(&format!("- id: {bad}\n")).is_err(), "{bad}");
    }
    for good in ["a", "a-b_c", "\"0\"", "default"] {
        assert!(parse(&format!("- id: {good}\n")).is_ok(), "{good}");
    }
}

#[test]
fn unknown_keys_are_errors_with_their_path() {
    let e = err("- id: a\n  client: {}\n");
    assert!(e.contains("unknown field `client`"), "{e}");
    let e = err("- id: a\n  clients: { keys: [{ kid: k, alg: HS512, secret: x }] }\n");
    assert!(
        e.contains("tenants[0].clients.keys[0].alg") && e.contains("HS512"),
        "{e}"
    );
    let e = err("- id: a\n  quotas: { max_connections: 10 }\n");
    assert!(
        e.contains("tenants[0].quotas") && e.contains("max_connections"),
        "{e}"
    );
    let e = err("- id: a\n  adapter_ceilings: { max_memory: 1 }\n");
    assert!(e.contains("max_memory"), "{e}");
}

#[test]
fn each_client_key_has_exactly_one_source_for_its_algorithm() {
    let key = |k: &str| format!("- id: a\n  clients: {{ keys: [{{ kid: k, {k} }}] }}\n");
    let e = err(&key("alg: HS256"));
    assert!(
        e.contains("exactly one of `secret` or `secret_env`") && e.contains("none"),
        "{e}"
    );
    let e = err(&key(&format!(
        "alg: HS256, secret: {SECRET}, secret_env: X"
    )));
    assert!(e.contains("`secret`, `secret_env`"), "{e}");
    let e = err(&key("alg: RS256, secret_env: X"));
    assert!(e.contains("`public_key_pem` or `public_key_file`"), "{e}");
    let e = err(&key("alg: HS256, public_key_file: a.pub"));
    assert!(e.contains("client key `k`"), "{e}");
    assert!(parse(&key("alg: HS256, secret_env: X")).is_ok());
    assert!(
        parse(&key("alg: ES256, public_key_pem: PEM")).is_ok(),
        "decoded later"
    );
}

#[test]
fn hs256_secrets_have_a_floor_and_a_ceiling() {
    let with = |s: String| {
        parse(&format!(
            "- id: a\n  clients: {{ keys: [{{ kid: k, alg: HS256, secret: \"{s}\" }}] }}\n"
        ))
    };
    assert!(with("s".repeat(MIN_HS256_SECRET_BYTES)).is_ok());
    let e = format!(
        "{:#}",
        with("s".repeat(MIN_HS256_SECRET_BYTES - 1)).unwrap_err()
    );
    assert!(e.contains("31 bytes") && e.contains("openssl rand"), "{e}");
    assert!(with("s".repeat(MAX_SECRET_BYTES)).is_ok());
    assert!(with("s".repeat(MAX_SECRET_BYTES + 1)).is_err());
}

#[test]
fn counts_and_uniqueness_are_checked() {
    let kids = |n: usize| {
        let keys: Vec<String> = (0..n)
            .map(|i| format!("{{ kid: k{i}, alg: HS256, secret_env: X }}"))
            .collect();
        format!("- id: a\n  clients: {{ keys: [{}] }}\n", keys.join(", "))
    };
    assert!(parse(&kids(MAX_CLIENT_KEYS)).is_ok());
    assert!(err(&kids(MAX_CLIENT_KEYS + 1)).contains("17 client keys"));
    let wkeys = |n: usize| {
        let keys: Vec<String> = (0..n).map(|i| hash_key(&i.to_string())).collect();
        format!("- id: a\n  worker_keys: [{}]\n", keys.join(", "))
    };
    assert!(parse(&wkeys(MAX_WORKER_KEYS)).is_ok());
    assert!(err(&wkeys(MAX_WORKER_KEYS + 1)).contains("65 worker keys"));

    let e = err(
        "- id: a\n  clients: { keys: [{ kid: k, alg: HS256, secret_env: X }, { kid: k, alg: RS256, public_key_pem: P }] }\n",
    );
    assert!(e.contains("two client keys with kid `k`"), "{e}");
    assert!(err("- id: a\n- id: a\n").contains("defined twice"));
    let d = hash_key("shared");
    let e = err(&format!(
        "- id: a\n  worker_keys: [{d}]\n- id: b\n  worker_keys: [{d}]\n"
    ));
    assert!(e.contains("both `a` and `b`"), "{e}");
    let e = err(&format!("- id: a\n  worker_keys: [{d}, {d}]\n"));
    assert!(e.contains("twice"), "{e}");
}

#[test]
fn adapter_ceilings_are_enforced() {
    let c = AdapterCeilings::default();
    let mut limits = crate::storage::wasm::Limits::default();
    assert_eq!(limits.fuel, None);
    c.enforce(&mut limits).unwrap();
    assert_eq!(
        limits.fuel,
        Some(c.max_fuel),
        "no fuel limit gets the ceiling"
    );

    let mut at = crate::storage::wasm::Limits {
        memory_bytes: c.max_memory_bytes as usize,
        timeout: std::time::Duration::from_millis(c.max_timeout_ms),
        fuel: Some(c.max_fuel),
        max_payload_bytes: c.max_payload_bytes as usize,
        ..Default::default()
    };
    c.enforce(&mut at).unwrap();
    let mut over = at.clone();
    over.memory_bytes += 1;
    let e = c.enforce(&mut over).unwrap_err();
    assert!(
        e.contains("memory") && e.contains("ceiling is 67108864"),
        "{e}"
    );
    let mut over = at.clone();
    over.timeout += std::time::Duration::from_millis(1);
    assert!(c.enforce(&mut over).unwrap_err().contains("timeout"));
    let mut over = at.clone();
    over.fuel = Some(c.max_fuel + 1);
    assert!(c.enforce(&mut over).unwrap_err().contains("fuel"));
    let mut over = at;
    over.max_payload_bytes += 1;
    assert!(
        c.enforce(&mut over)
            .unwrap_err()
            .contains("max_payload_bytes")
    );

    let e = err("- id: a\n  adapter_ceilings: { max_timeout_ms: 0 }\n");
    assert!(e.contains("`max_timeout_ms` is 0"), "{e}");
    assert!(parse("- id: a\n  adapter_ceilings: { max_memory_bytes: 4294967296 }\n").is_ok());
    assert!(parse("- id: a\n  adapter_ceilings: { max_memory_bytes: 4294967297 }\n").is_err());
}
