//! The admin API through real sockets: an engine in-process, the API over plain HTTP, and
//! the tenants' workers and clients on their own sockets, to see each change take effect
//! without a restart.

mod common;

use common::tenants::*;
use common::*;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use streamhost::ServerHandle;
use streamhost::admin::reply::MAX_BODY_BYTES;
use streamhost::admin::{AdminConfig, CLOSE_DISCONNECTED};
use streamhost::engine::CLOSE_TENANT_GONE;
use streamhost::engine::admission::CLOSE_KEY_REVOKED;
use streamhost::tenants::hash_key;

const OPERATOR: &str = "operator-key-for-the-admin-tests-0123";

/// `two_tenants` (alpha, beta) with the admin API on a free loopback port.
async fn engine() -> (ServerHandle, Admin) {
    let mut config = two_tenants("");
    config.admin = Some(AdminConfig {
        host: "127.0.0.1".into(),
        port: 0,
        key_sha256: hash_key(OPERATOR),
    });
    let engine = start(config).await;
    let admin = Admin {
        addr: engine.admin_addr.expect("the admin API listens"),
    };
    (engine, admin)
}

/// The admin API, with the operator key.
struct Admin {
    addr: SocketAddr,
}

impl Admin {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        self.raw(method, path, Some(OPERATOR), body.as_bytes())
            .await
    }

    async fn raw(&self, method: &str, path: &str, key: Option<&str>, body: &[u8]) -> (u16, Value) {
        let (status, text) = http_request(self.addr, method, path, key, body).await;
        let value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("{method} {path}: {status} with a body that is not JSON ({e}): {text:?}")
        });
        (status, value)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None).await
    }

    /// A call that must succeed with `status`; returns the body.
    async fn expect(&self, method: &str, path: &str, body: Option<Value>, status: u16) -> Value {
        let (got, value) = self.call(method, path, body).await;
        assert_eq!(got, status, "{method} {path}: {value}");
        value
    }
}

fn item(id: &str) -> Value {
    json!({"stream_name": "chat", "group_id": "room", "item_id": id})
}

fn set(id: &str, data: Value) -> Value {
    let mut v = item(id);
    v["data"] = data;
    v
}

/// A client token for `tenant` signed with `secret` under `kid`.
fn token_with_kid(tenant: &str, secret: &str, kid: &str) -> String {
    let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid.into());
    let claims = json!({"sub": "u", "tenant": tenant, "streams": ["*"], "exp": now() + 300});
    encode(
        &header,
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// A worker socket read as a plain WebSocket, to see its close frame; returns once the
/// engine has listed it (its `workerregistered` came).
async fn watched_worker(addr: SocketAddr, key: &str) -> Client {
    let mut w = Client::connect_request(ws_request(addr, "/", Some(key))).await;
    assert_eq!(w.next().await["type"], "workerregistered");
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_needs_the_operator_key() {
    let (engine, admin) = engine().await;
    for (key, why) in [
        (None, "no key"),
        (Some("operator-key-for-the-admin-tests-0124"), "a wrong key"),
        (
            Some(hash_key(OPERATOR).as_str()),
            "the digest instead of the key",
        ),
    ] {
        for (method, path) in [
            ("GET", "/tenants"),
            ("DELETE", "/tenants/beta"),
            ("GET", "/no/such/endpoint"),
        ] {
            let (status, body) = admin.raw(method, path, key, b"").await;
            assert_eq!(
                (status, body["code"].as_str()),
                (401, Some("unauthorized")),
                "{why}, {method} {path}: {body}"
            );
        }
    }
    // Nothing changed: beta is still there.
    let list = admin.expect("GET", "/tenants", None, 200).await;
    let ids: Vec<&str> = list["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alpha", "beta", "default"]);
    // With the key, the errors say what is wrong.
    let (status, body) = admin.get("/no/such/endpoint").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    let (status, body) = admin.get("/tenants/Not%20An%20Id").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_tenant_id")),
        "{body}"
    );
    let (status, body) = admin.call("POST", "/tenants", None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_created_at_runtime_serves_a_worker_with_a_new_key() {
    let (engine, admin) = engine().await;
    let (status, body) = admin.get("/tenants/gamma").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("unknown_tenant"))
    );
    let (status, body) = admin
        .call("PUT", "/tenants/gamma", Some(json!({"id": "delta"})))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("id_mismatch")),
        "{body}"
    );
    let (status, body) = admin
        .call(
            "PUT",
            "/tenants/gamma",
            Some(json!({"clients": {"keys": [{"kid": "k", "alg": "HS999"}]}})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_config")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("clients.keys[0].alg"),
        "{body}"
    );

    let created = admin
        .expect(
            "PUT",
            "/tenants/gamma",
            Some(json!({"clients": {"token_required": false}})),
            201,
        )
        .await;
    assert_eq!(
        (created["id"].as_str(), created["enabled"].as_bool()),
        (Some("gamma"), Some(true))
    );
    // No key yet: a worker has nothing to connect with.
    let (status, _) = refused(ws_request(engine.worker_addr, "/", Some("shk_guess"))).await;
    assert_eq!(status, 401);

    let made = admin
        .expect(
            "POST",
            "/tenants/gamma/worker_keys",
            Some(json!({"name": "ci"})),
            201,
        )
        .await;
    let key = made["key"].as_str().unwrap();
    assert!(key.starts_with("shk_"), "{made}");
    assert_eq!(made["sha256"].as_str().unwrap(), hash_key(key));
    let mut client = Client::connect(engine.client_addr, "/stream/chat/room?tenant=gamma").await;
    assert_eq!(client.next().await["event"]["type"], "sync");
    let w = RawWorker::connect_with_key(engine.worker_addr, key).await;
    w.ok("stream::set", set("i", json!("gamma's"))).await;
    assert_eq!(w.ok("stream::get", item("i")).await, "gamma's");
    assert_eq!(client.next().await["event"]["data"], "gamma's");
    // alpha's worker does not see gamma's item.
    let wa = RawWorker::connect_with_key(engine.worker_addr, KEY_A).await;
    assert_eq!(wa.ok("stream::get", item("i")).await, Value::Null);

    // The key is listed by its digest and name, never in clear; a PUT of the shown config
    // replaces it as it is (200), and the worker keeps working.
    let shown = admin.expect("GET", "/tenants/gamma", None, 200).await;
    assert_eq!(
        shown["config"]["worker_keys"],
        json!([{"sha256": hash_key(key), "name": "ci"}])
    );
    assert!(!shown.to_string().contains(key));
    assert_eq!(shown["connections"], json!({"clients": 1, "workers": 1}));
    admin
        .expect("PUT", "/tenants/gamma", Some(shown["config"].clone()), 200)
        .await;
    w.ok("stream::set", set("j", json!(2))).await;
    // A key can name one tenant only.
    let (status, body) = admin
        .call(
            "PUT",
            "/tenants/alpha",
            Some(json!({"worker_keys": [hash_key(key)]})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("worker_key_conflict")),
        "{body}"
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_worker_key_is_refused_and_its_workers_closed() {
    let (engine, admin) = engine().await;
    let made = admin
        .expect("POST", "/tenants/alpha/worker_keys", None, 201)
        .await;
    let (key, sha) = (
        made["key"].as_str().unwrap(),
        made["sha256"].as_str().unwrap(),
    );
    let mut doomed = watched_worker(engine.worker_addr, key).await;
    let mut kept = watched_worker(engine.worker_addr, KEY_A).await;
    let listed = admin.get("/tenants/alpha/connections").await.1;
    let keys: Vec<&str> = listed["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key_sha256"].as_str().unwrap())
        .collect();
    assert_eq!(keys, [sha.to_owned(), hash_key(KEY_A)]);

    let (status, body) = admin
        .call("DELETE", &format!("/tenants/alpha/worker_keys/{key}"), None)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_digest")),
        "{body}"
    );
    let (status, body) = admin
        .call("DELETE", &format!("/tenants/beta/worker_keys/{sha}"), None)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("unknown_worker_key")),
        "{body}"
    );

    let revoked = admin
        .expect(
            "DELETE",
            &format!("/tenants/alpha/worker_keys/{}", sha.to_uppercase()),
            None,
            200,
        )
        .await;
    assert_eq!(revoked["closed_workers"], 1, "{revoked}");
    let (code, reason) = doomed.close_frame().await.expect("a close frame");
    assert_eq!(code, CLOSE_KEY_REVOKED, "{reason}");
    let (status, body) = refused(ws_request(engine.worker_addr, "/", Some(key))).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("invalid_worker_key")),
        "{body}"
    );
    // The tenant's other key, and its open worker, are untouched.
    let w = RawWorker::connect_with_key(engine.worker_addr, KEY_A).await;
    w.ok("stream::set", set("i", json!(1))).await;
    kept.send_json(json!({"type": "ping"})).await;
    assert_eq!(kept.next().await["type"], "pong");
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_client_keys_refuse_the_old_kid() {
    const NEW_SECRET: &str = "alpha-rotated-secret-0123456789abcdef";
    let (engine, admin) = engine().await;
    let old = token_with_kid("alpha", SECRET_A, "k1");
    let new = token_with_kid("alpha", NEW_SECRET, "k2");
    // Before: k1 works, k2 is unknown.
    Client::connect_with_token(engine.client_addr, "/", &old).await;
    let (status, body) = refused(ws_request(engine.client_addr, "/", Some(&new))).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("unknown_kid")),
        "{body}"
    );

    let (status, body) = admin
        .call(
            "PUT",
            "/tenants/alpha/client_keys",
            Some(json!([{"kid": "k2", "alg": "HS256", "secret": "short"}])),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_config")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("at least 32"),
        "{body}"
    );
    let view = admin
        .expect(
            "PUT",
            "/tenants/alpha/client_keys",
            Some(json!({"keys": [{"kid": "k2", "alg": "HS256", "secret": NEW_SECRET}]})),
            200,
        )
        .await;
    assert!(!view.to_string().contains(NEW_SECRET), "{view}");

    let (status, body) = refused(ws_request(engine.client_addr, "/", Some(&old))).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("unknown_kid")),
        "{body}"
    );
    let mut c = Client::connect_with_token(engine.client_addr, "/", &new).await;
    assert_eq!(
        c.join("s", "chat", "room", None).await["event"]["type"],
        "sync"
    );
    // beta's k1 is beta's own, and unchanged.
    Client::connect_with_token(
        engine.client_addr,
        "/",
        &token_with_kid("beta", SECRET_B, "k1"),
    )
    .await;
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_tenant_closes_its_sockets_and_enabling_lets_them_back() {
    let (engine, admin) = engine().await;
    let path = "/stream/chat/room";
    let mut a = Client::connect_with_token(
        engine.client_addr,
        path,
        &token("alpha", SECRET_A, &["*"], 300),
    )
    .await;
    let mut b = Client::connect_with_token(
        engine.client_addr,
        path,
        &token("beta", SECRET_B, &["*"], 300),
    )
    .await;
    assert_eq!(a.next().await["event"]["type"], "sync");
    assert_eq!(b.next().await["event"]["type"], "sync");
    let mut bw = watched_worker(engine.worker_addr, KEY_B).await;

    let started = Instant::now();
    let view = admin
        .expect("POST", "/tenants/beta/disable", None, 200)
        .await;
    assert_eq!(view["enabled"], false);
    for (socket, what) in [(&mut b, "client"), (&mut bw, "worker")] {
        let (code, reason) = socket.close_frame().await.expect("a close frame");
        assert_eq!(code, CLOSE_TENANT_GONE, "beta's {what}: {reason}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let (status, body) = refused(ws_request(engine.worker_addr, "/", Some(KEY_B))).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("tenant_disabled")),
        "{body}"
    );
    let beta_token = token("beta", SECRET_B, &["*"], 300);
    let (status, body) = refused(ws_request(engine.client_addr, path, Some(&beta_token))).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("tenant_disabled")),
        "{body}"
    );

    // alpha's client keeps receiving.
    let wa = RawWorker::connect_with_key(engine.worker_addr, KEY_A).await;
    wa.ok("stream::set", set("i", json!("a1"))).await;
    assert_eq!(a.next().await["event"]["data"], "a1");

    admin
        .expect("POST", "/tenants/beta/enable", None, 200)
        .await;
    let wb = RawWorker::connect_with_key(engine.worker_addr, KEY_B).await;
    let mut b = Client::connect_with_token(engine.client_addr, path, &beta_token).await;
    assert_eq!(b.next().await["event"]["type"], "sync");
    wb.ok("stream::set", set("i", json!("b1"))).await;
    assert_eq!(b.next().await["event"]["data"], "b1");
    let (status, body) = admin.call("POST", "/tenants/nobody/disable", None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("unknown_tenant"))
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_tenant_is_refused_and_default_cannot_be_deleted() {
    let (engine, admin) = engine().await;
    let (status, body) = admin.call("DELETE", "/tenants/default", None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("default_tenant")),
        "{body}"
    );
    let mut b = Client::connect_with_token(
        engine.client_addr,
        "/",
        &token("beta", SECRET_B, &["*"], 300),
    )
    .await;

    admin.expect("DELETE", "/tenants/beta", None, 200).await;
    let (code, reason) = b.close_frame().await.expect("a close frame");
    assert_eq!(code, CLOSE_TENANT_GONE, "{reason}");
    let (status, body) = refused(ws_request(
        engine.client_addr,
        "/",
        Some(&token("beta", SECRET_B, &["*"], 300)),
    ))
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("unknown_tenant")),
        "{body}"
    );
    let (status, body) = refused(ws_request(engine.client_addr, "/?tenant=beta", None)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("unknown_tenant")),
        "{body}"
    );
    let (status, body) = refused(ws_request(engine.worker_addr, "/", Some(KEY_B))).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("invalid_worker_key")),
        "{body}"
    );
    for (method, path) in [
        ("GET", "/tenants/beta"),
        ("DELETE", "/tenants/beta"),
        ("GET", "/tenants/beta/usage"),
    ] {
        let (status, body) = admin.call(method, path, None).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (404, Some("unknown_tenant")),
            "{method} {path}"
        );
    }
    // default and alpha still serve.
    let d = RawWorker::connect(engine.worker_addr).await;
    d.ok("stream::set", set("i", json!(1))).await;
    RawWorker::connect_with_key(engine.worker_addr, KEY_A).await;
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_listed_and_one_is_disconnected() {
    let (engine, admin) = engine().await;
    let path = "/stream/chat/room";
    let alpha = token("alpha", SECRET_A, &["*"], 300);
    let mut first = Client::connect_with_token(engine.client_addr, path, &alpha).await;
    let mut second = Client::connect_with_token(engine.client_addr, path, &alpha).await;
    assert_eq!(first.next().await["event"]["type"], "sync");
    assert_eq!(second.next().await["event"]["type"], "sync");
    let w = RawWorker::connect_with_key(engine.worker_addr, KEY_A).await;

    let usage = admin.expect("GET", "/tenants/alpha/usage", None, 200).await;
    assert_eq!(
        usage,
        json!({"tenant": "alpha", "connections": {"clients": 2, "workers": 1}, "subscriptions": 2, "wasm_streams": []})
    );
    let beta = admin.expect("GET", "/tenants/beta/usage", None, 200).await;
    assert_eq!(beta["connections"], json!({"clients": 0, "workers": 0}));

    let listed = admin
        .expect("GET", "/tenants/alpha/connections", None, 200)
        .await;
    let conns = listed["connections"].as_array().unwrap();
    let kinds: Vec<&str> = conns.iter().map(|c| c["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["client", "client", "worker"]);
    assert_eq!(conns[0]["who"], "user-of-alpha");
    assert_eq!(conns[2]["who"].as_str(), Some(w.worker_id.as_str()));
    assert_eq!(
        conns[2]["key_sha256"].as_str(),
        Some(hash_key(KEY_A).as_str())
    );
    assert!(conns[0].get("key_sha256").is_none(), "{listed}");
    let first_id = conns[0]["id"].as_u64().unwrap();

    for (n, status, code) in [
        ("abc", 400, "invalid_connection_id"),
        ("999999", 404, "unknown_connection"),
    ] {
        let (got, body) = admin
            .call("DELETE", &format!("/tenants/alpha/connections/{n}"), None)
            .await;
        assert_eq!((got, body["code"].as_str()), (status, Some(code)), "{body}");
    }
    // Another tenant's connection id is not found through this one.
    let (got, _) = admin
        .call(
            "DELETE",
            &format!("/tenants/beta/connections/{first_id}"),
            None,
        )
        .await;
    assert_eq!(got, 404);

    admin
        .expect(
            "DELETE",
            &format!("/tenants/alpha/connections/{first_id}"),
            None,
            200,
        )
        .await;
    let (code, reason) = first.close_frame().await.expect("a close frame");
    assert_eq!(code, CLOSE_DISCONNECTED, "{reason}");
    // Exactly one closed: the other client still receives, the worker still calls.
    w.ok("stream::set", set("i", json!(1))).await;
    assert_eq!(second.next().await["event"]["type"], "create");
    let deadline = Instant::now() + WAIT;
    loop {
        let listed = admin.get("/tenants/alpha/connections").await.1;
        let ids: Vec<u64> = listed["connections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_u64().unwrap())
            .collect();
        if ids.len() == 2 {
            assert!(!ids.contains(&first_id), "{listed}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed socket is still listed: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_capped_at_64_kib() {
    let (engine, admin) = engine().await;
    let body = |len: usize| {
        let mut b = json!({"clients": {"token_required": false}})
            .to_string()
            .into_bytes();
        b.resize(len, b' ');
        b
    };
    let (status, view) = admin
        .raw("PUT", "/tenants/big", Some(OPERATOR), &body(MAX_BODY_BYTES))
        .await;
    assert_eq!((status, view["id"].as_str()), (201, Some("big")), "{view}");
    let (status, err) = admin
        .raw(
            "PUT",
            "/tenants/big2",
            Some(OPERATOR),
            &body(MAX_BODY_BYTES + 1),
        )
        .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (413, Some("body_too_large")),
        "{err}"
    );
    assert_eq!(admin.get("/tenants/big2").await.0, 404, "nothing was made");
    // The other bodied endpoints read through the same cap.
    let (status, _) = admin
        .raw(
            "PUT",
            "/tenants/alpha/client_keys",
            Some(OPERATOR),
            &body(MAX_BODY_BYTES + 1),
        )
        .await;
    assert_eq!(status, 413);
    let (status, _) = admin
        .raw(
            "POST",
            "/tenants/alpha/worker_keys",
            Some(OPERATOR),
            &body(MAX_BODY_BYTES + 1),
        )
        .await;
    assert_eq!(status, 413);
    let (status, err) = admin
        .raw("PUT", "/tenants/big3", Some(OPERATOR), b"{not json")
        .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (400, Some("invalid_json")),
        "{err}"
    );
    // Deep nesting within the cap is refused, not followed down the stack.
    let deep = format!(
        "{{\"streams\": {}{}}}",
        "[".repeat(30_000),
        "]".repeat(30_000)
    );
    let (status, err) = admin
        .raw("PUT", "/tenants/big3", Some(OPERATOR), deep.as_bytes())
        .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (400, Some("invalid_json")),
        "{err}"
    );
    assert!(
        err["message"].as_str().unwrap().contains("recursion limit"),
        "{err}"
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_put_in_is_never_shown() {
    const SECRET: &str = "gamma-inline-secret-0123456789abcdef";
    let (engine, admin) = engine().await;
    let created = admin
        .expect(
            "PUT",
            "/tenants/gamma",
            Some(json!({"clients": {"keys": [{"kid": "k1", "alg": "HS256", "secret": SECRET}]}})),
            201,
        )
        .await;
    let made = admin
        .expect("POST", "/tenants/gamma/worker_keys", None, 201)
        .await;
    let key = made["key"].as_str().unwrap();
    let shown = [
        created.to_string(),
        admin.get("/tenants/gamma").await.1.to_string(),
        admin.get("/tenants").await.1.to_string(),
        admin.get("/tenants/gamma/connections").await.1.to_string(),
    ];
    for text in &shown {
        assert!(!text.contains(SECRET), "the secret is shown: {text}");
        assert!(!text.contains(key), "the worker key is shown: {text}");
    }
    assert!(
        shown[1].contains("\"kid\":\"k1\""),
        "the key itself is listed: {}",
        shown[1]
    );
    // The secret is in force all the same.
    Client::connect_with_token(
        engine.client_addr,
        "/",
        &token_with_kid("gamma", SECRET, "k1"),
    )
    .await;
    engine.shutdown().await.unwrap();
}
