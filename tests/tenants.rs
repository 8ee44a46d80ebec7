//! Tenants through real sockets: workers admitted by key, clients by a token checked with
//! their own tenant's keys, and two tenants with the same names, the same `kid` and the same
//! function ids that never see each other. The Redis half of the isolation test is in
//! tests/redis.rs.

mod common;

use common::tenants::*;
use common::*;
use serde_json::{Value, json};
use std::time::Duration;
use streamhost::engine::CLOSE_TENANT_GONE;
use streamhost::sockets::client::CLOSE_TOKEN_EXPIRED;
use streamhost::tenants::hash_key;

/// `chat/room`'s items, in the order they were written.
async fn sorted_list(w: &RawWorker) -> Vec<Value> {
    let list = w
        .ok(
            "stream::list",
            json!({"stream_name": "chat", "group_id": "room"}),
        )
        .await;
    let mut v = list.as_array().unwrap().clone();
    v.sort_by_key(|x| x["step"].as_u64());
    v
}

fn item(stream: &str, group: &str, id: &str) -> Value {
    json!({"stream_name": stream, "group_id": group, "item_id": id})
}

fn with_data(mut v: Value, data: Value) -> Value {
    v["data"] = data;
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_are_admitted_by_key_and_refused_with_a_reason() {
    let engine = start(two_tenants("")).await;
    let addr = engine.worker_addr;

    let (status, body) = refused(ws_request(addr, "/", Some("shk_not_a_key"))).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("invalid_worker_key")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("III_TOKEN"),
        "{body}"
    );
    // The key goes in the query too, for clients that cannot set headers.
    let (status, body) = refused(ws_request(addr, "/?token=shk_wrong", None)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("invalid_worker_key")),
        "{body}"
    );

    // Both ways in work; a keyless worker from this machine is the default tenant's.
    let a = RawWorker::connect_with_key(addr, KEY_A).await;
    let b = RawWorker::connect_request(ws_request(addr, &format!("/?token={KEY_B}"), None)).await;
    let anonymous = RawWorker::connect(addr).await;
    a.ok(
        "stream::set",
        with_data(item("s", "g", "i"), json!("alpha")),
    )
    .await;
    b.ok("stream::set", with_data(item("s", "g", "i"), json!("beta")))
        .await;
    assert_eq!(a.ok("stream::get", item("s", "g", "i")).await, "alpha");
    assert_eq!(b.ok("stream::get", item("s", "g", "i")).await, "beta");
    assert_eq!(
        anonymous.ok("stream::get", item("s", "g", "i")).await,
        Value::Null
    );

    // A disabled tenant's key is refused, with its own code; enabling it lets it back in.
    engine.engine.set_tenant_enabled("beta", false).unwrap();
    let (status, body) = refused(ws_request(addr, "/", Some(KEY_B))).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("tenant_disabled")),
        "{body}"
    );
    engine.engine.set_tenant_enabled("beta", true).unwrap();
    let b2 = RawWorker::connect_with_key(addr, KEY_B).await;
    assert_eq!(b2.ok("stream::get", item("s", "g", "i")).await, "beta");
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_tenant_with_keys_refuses_keyless_workers() {
    let default_key = "shk_default_key_0123456789";
    let extra = format!(
        "- id: default\n  worker_keys: [{}]\n  clients: {{ token_required: false }}\n",
        hash_key(default_key)
    );
    let engine = start(two_tenants(&extra)).await;
    let (status, body) = refused(ws_request(engine.worker_addr, "/", None)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("missing_worker_key")),
        "{body}"
    );
    let w = RawWorker::connect_with_key(engine.worker_addr, default_key).await;
    w.ok("stream::set", with_data(item("s", "g", "i"), json!(1)))
        .await;
    // Clients of the default tenant still need no token.
    let mut c = Client::connect(engine.client_addr, "/stream/s/g").await;
    assert_eq!(c.next().await["event"]["data"], json!([1]));
    engine.shutdown().await.unwrap();
}

/// The whole isolation claim, on the in-memory store: the same stream, group and item names,
/// the same function ids and trigger ids, the same `kid`, and nothing crosses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_with_the_same_names_never_see_each_other() {
    let engine = start(two_tenants("")).await;
    let (wa, wb) = (
        RawWorker::connect_with_key(engine.worker_addr, KEY_A).await,
        RawWorker::connect_with_key(engine.worker_addr, KEY_B).await,
    );
    // The same function id in both tenants: no conflict, each call stays in its tenant.
    wa.register("app::whoami", |_| Ok(Some(json!("alpha"))))
        .await;
    wb.register("app::whoami", |_| Ok(Some(json!("beta"))))
        .await;
    assert_eq!(wa.ok("app::whoami", json!({})).await, "alpha");
    assert_eq!(wb.ok("app::whoami", json!({})).await, "beta");
    // The same trigger id watching the same stream: each fires for its own tenant's writes.
    let seen_a = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let seen_b = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let (sa, sb) = (seen_a.clone(), seen_b.clone());
    wa.register("app::watch", move |p| {
        sa.lock().unwrap().push(p);
        Ok(None)
    })
    .await;
    wb.register("app::watch", move |p| {
        sb.lock().unwrap().push(p);
        Ok(None)
    })
    .await;
    let cfg = json!({"stream_name": "chat"});
    wa.register_trigger("watch", "stream", "app::watch", cfg.clone())
        .await;
    wb.register_trigger("watch", "stream", "app::watch", cfg)
        .await;

    let path = "/stream/chat/room";
    let mut ca = Client::connect_with_token(
        engine.client_addr,
        path,
        &token("alpha", SECRET_A, &["*"], 300),
    )
    .await;
    let mut cb = Client::connect_with_token(
        engine.client_addr,
        path,
        &token("beta", SECRET_B, &["chat"], 300),
    )
    .await;
    assert_eq!(ca.next().await["event"]["type"], "sync");
    assert_eq!(cb.next().await["event"]["type"], "sync");

    // A random interleaving of writes with identical names in both tenants.
    let mut rng = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut expect_a = std::collections::BTreeMap::new();
    let mut expect_b = std::collections::BTreeMap::new();
    for step in 0..60 {
        let id = format!("item-{}", next() % 5);
        let (w, expect, who) = if next() % 2 == 0 {
            (&wa, &mut expect_a, "alpha")
        } else {
            (&wb, &mut expect_b, "beta")
        };
        if next() % 4 == 0 {
            w.ok("stream::delete", item("chat", "room", &id)).await;
            expect.remove(&id);
        } else {
            let data = json!({"by": who, "step": step});
            w.ok(
                "stream::set",
                with_data(item("chat", "room", &id), data.clone()),
            )
            .await;
            expect.insert(id, data);
        }
    }
    let mut want_a: Vec<Value> = expect_a.values().cloned().collect();
    want_a.sort_by_key(|x| x["step"].as_u64());
    let mut want_b: Vec<Value> = expect_b.values().cloned().collect();
    want_b.sort_by_key(|x| x["step"].as_u64());
    assert_eq!(sorted_list(&wa).await, want_a);
    assert_eq!(sorted_list(&wb).await, want_b);
    assert_eq!(
        wa.ok("stream::list_groups", json!({"stream_name": "chat"}))
            .await,
        json!(["room"])
    );

    // Each client saw only its own tenant's events.
    let mut frames = 0;
    for (client, who) in [(&mut ca, "alpha"), (&mut cb, "beta")] {
        while let Some(f) = client.try_next(Duration::from_millis(300)).await {
            let data = &f["event"]["data"];
            if !data.is_null() {
                assert_eq!(data["by"], who, "a {who} client got {f}");
            }
            frames += 1;
        }
    }
    assert!(
        frames >= 60,
        "every write reached its own tenant's client ({frames} frames)"
    );
    // Each tenant's trigger saw only its own writes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (seen, who) in [(&seen_a, "alpha"), (&seen_b, "beta")] {
        let seen = seen.lock().unwrap();
        assert!(!seen.is_empty(), "{who}'s trigger fired");
        for call in seen.iter() {
            // Creates, updates and deletes all carry the item, which says who wrote it.
            assert_eq!(
                call["event"]["data"]["by"], who,
                "{who}'s trigger saw {call}"
            );
        }
    }
    // The default tenant saw none of it.
    let d = RawWorker::connect(engine.worker_addr).await;
    assert_eq!(
        d.ok(
            "stream::list",
            json!({"stream_name": "chat", "group_id": "room"})
        )
        .await,
        json!([])
    );
    assert!(d.call("app::whoami", json!({})).await.is_err());
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tokens_are_checked_with_their_own_tenants_keys() {
    let engine = start(two_tenants("")).await;
    let addr = engine.client_addr;
    // Signed with alpha's secret, claiming beta, same kid: refused.
    let forged = token("beta", SECRET_A, &["*"], 300);
    let (status, body) = refused(ws_request(addr, "/", Some(&forged))).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("invalid_token")),
        "{body}"
    );
    // Expired beyond the leeway: refused with its own code.
    let (status, body) = refused(ws_request(
        addr,
        "/",
        Some(&token("alpha", SECRET_A, &["*"], -60)),
    ))
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("token_expired")),
        "{body}"
    );
    // A tenant that requires tokens refuses a client without one, and says how to send it.
    let (status, body) = refused(ws_request(addr, "/?tenant=alpha", None)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("invalid_token")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("Authorization"),
        "{body}"
    );
    let (status, body) = refused(ws_request(addr, "/?tenant=nobody", None)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("unknown_tenant")),
        "{body}"
    );

    // The browser way: the subprotocols `Authorization, <token>`; the first is echoed.
    let good = token("beta", SECRET_B, &["chat*"], 300);
    let mut req = ws_request(addr, "/", None);
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("Authorization, {good}").parse().unwrap(),
    );
    let mut c = Client::connect_request(req).await;
    // beta's token allows chat*; beta's own patterns allow chat*: `chat` is fine, `admin`
    // is outside both.
    assert_eq!(
        c.join("s1", "chat", "g", None).await["event"]["type"],
        "sync"
    );
    assert_eq!(
        c.join("s2", "admin", "g", None).await["event"]["type"],
        "unauthorized"
    );
    // ?token= works too; a token narrower than the tenant narrows the joins.
    let narrow = token("alpha", SECRET_A, &["news"], 300);
    let mut n = Client::connect_request(ws_request(addr, &format!("/?token={narrow}"), None)).await;
    assert_eq!(
        n.join("s1", "news", "g", None).await["event"]["type"],
        "sync"
    );
    assert_eq!(
        n.join("s2", "chat", "g", None).await["event"]["type"],
        "unauthorized"
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_closes_its_socket_with_its_own_code() {
    let engine = start(two_tenants("")).await;
    // exp is whole seconds: 2 s from now is between 1 and 2 s away.
    let short = token("alpha", SECRET_A, &["*"], 2);
    let mut c = Client::connect_with_token(engine.client_addr, "/stream/s/g", &short).await;
    let mut long = Client::connect_with_token(
        engine.client_addr,
        "/stream/s/g",
        &token("alpha", SECRET_A, &["*"], 300),
    )
    .await;
    assert_eq!(c.next().await["event"]["type"], "sync");
    assert_eq!(long.next().await["event"]["type"], "sync");
    let (code, reason) = c.close_frame().await.expect("a close frame");
    assert_eq!(code, CLOSE_TOKEN_EXPIRED, "{reason}");
    assert!(reason.contains("expired"), "{reason}");
    // The other socket is untouched.
    let w = RawWorker::connect_with_key(engine.worker_addr, KEY_A).await;
    w.ok("stream::set", with_data(item("s", "g", "i"), json!(1)))
        .await;
    assert_eq!(long.next().await["event"]["type"], "create");
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_tenant_closes_its_sockets_and_no_one_elses() {
    let engine = start(two_tenants("")).await;
    let addr = engine.client_addr;
    let mut a = Client::connect_with_token(
        addr,
        "/stream/chat/g",
        &token("alpha", SECRET_A, &["*"], 300),
    )
    .await;
    let mut b = Client::connect_with_token(
        addr,
        "/stream/chat/g",
        &token("beta", SECRET_B, &["*"], 300),
    )
    .await;
    let mut wb = RawWorker::connect_with_key(engine.worker_addr, KEY_B).await;
    assert_eq!(a.next().await["event"]["type"], "sync");
    assert_eq!(b.next().await["event"]["type"], "sync");

    let started = std::time::Instant::now();
    engine.engine.set_tenant_enabled("beta", false).unwrap();
    let (code, reason) = b.close_frame().await.expect("beta's client is closed");
    assert_eq!(code, CLOSE_TENANT_GONE, "{reason}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // beta's worker is closed too: its frames stop.
    let closed =
        tokio::time::timeout(WAIT, async { while wb.frames.recv().await.is_some() {} }).await;
    assert!(closed.is_ok(), "beta's worker socket closed");
    // alpha notices nothing.
    let wa = RawWorker::connect_with_key(engine.worker_addr, KEY_A).await;
    wa.ok("stream::set", with_data(item("chat", "g", "i"), json!(1)))
        .await;
    assert_eq!(a.next().await["event"]["type"], "create");
    engine.shutdown().await.unwrap();
}

/// Without any worker key the worker socket stays on this machine, even when the config
/// asks for every address; `allow_anonymous_workers: true` lets it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_worker_keys_the_worker_socket_is_local() {
    let mut config = test_config();
    config.worker_host = "0.0.0.0".into();
    let engine = start(config).await;
    assert!(
        engine.worker_addr.ip().is_loopback(),
        "{}",
        engine.worker_addr
    );
    engine.shutdown().await.unwrap();

    let mut config = test_config();
    config.worker_host = "0.0.0.0".into();
    config.allow_anonymous_workers = true;
    let engine = start(config).await;
    assert!(
        engine.worker_addr.ip().is_unspecified(),
        "{}",
        engine.worker_addr
    );
    engine.shutdown().await.unwrap();

    let mut config = two_tenants("");
    config.worker_host = "0.0.0.0".into();
    let engine = start(config).await;
    assert!(
        engine.worker_addr.ip().is_unspecified(),
        "with keys: {}",
        engine.worker_addr
    );
    engine.shutdown().await.unwrap();
}

/// Each tenant's sockets, subscriptions, calls and deliveries are counted under its own label,
/// and a deleted tenant's series go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_kept_per_tenant() {
    let engine = start(two_tenants("")).await;
    let wa = RawWorker::connect_with_key(engine.worker_addr, KEY_A).await;
    let _wb = RawWorker::connect_with_key(engine.worker_addr, KEY_B).await;
    let mut ca = Client::connect_with_token(
        engine.client_addr,
        "/stream/chat/g",
        &token("alpha", SECRET_A, &["*"], 300),
    )
    .await;
    assert_eq!(ca.next().await["event"]["type"], "sync");
    for n in 0..3 {
        wa.ok("stream::set", with_data(item("chat", "g", "i"), json!(n)))
            .await;
        ca.next().await;
    }
    assert!(wa.call("app::missing", json!({})).await.is_err());

    let (_, body) = http_get(engine.client_addr, "/metrics").await;
    let series = |name: &str, labels: &str| sample(&body, &format!("{name}{{{labels}}}"));
    assert_eq!(
        series(
            "streamhost_tenant_connections",
            "tenant=\"alpha\",kind=\"client\""
        ),
        1.0
    );
    assert_eq!(
        series(
            "streamhost_tenant_connections",
            "tenant=\"alpha\",kind=\"worker\""
        ),
        1.0
    );
    assert_eq!(
        series(
            "streamhost_tenant_connections",
            "tenant=\"beta\",kind=\"client\""
        ),
        0.0
    );
    assert_eq!(
        series(
            "streamhost_tenant_connections",
            "tenant=\"beta\",kind=\"worker\""
        ),
        1.0
    );
    assert_eq!(
        series("streamhost_tenant_subscriptions", "tenant=\"alpha\""),
        1.0
    );
    assert_eq!(
        series("streamhost_tenant_subscriptions", "tenant=\"beta\""),
        0.0
    );
    // The client's join read a snapshot (stream::list), then three sets and one failed call.
    assert_eq!(
        series("streamhost_tenant_calls_total", "tenant=\"alpha\""),
        5.0
    );
    assert_eq!(
        series("streamhost_tenant_call_errors_total", "tenant=\"alpha\""),
        1.0
    );
    assert_eq!(
        series(
            "streamhost_tenant_frames_delivered_total",
            "tenant=\"alpha\""
        ),
        3.0
    );
    assert_eq!(
        series(
            "streamhost_tenant_frames_delivered_total",
            "tenant=\"beta\""
        ),
        0.0
    );

    engine.engine.remove_tenant("beta").await.unwrap();
    let (_, body) = http_get(engine.client_addr, "/metrics").await;
    assert!(!body.contains("tenant=\"beta\""), "{body}");
    engine.shutdown().await.unwrap();
}

/// On the durable store each tenant has a log of its own, next to the `default` tenant's,
/// and finds its items again after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_has_its_own_durable_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = || streamhost::Config {
        adapter: streamhost::config::AdapterConfig::KvFile {
            path: dir.path().join("stream_store"),
        },
        ..two_tenants("")
    };
    let engine = start(config()).await;
    let wa = RawWorker::connect_with_key(engine.worker_addr, KEY_A).await;
    wa.ok(
        "stream::set",
        with_data(item("s", "g", "i"), json!("alpha's")),
    )
    .await;
    drop(wa);
    engine.shutdown().await.unwrap();
    assert!(dir.path().join("tenants/alpha").is_dir());

    let engine = start(config()).await;
    let wa = RawWorker::connect_with_key(engine.worker_addr, KEY_A).await;
    let wb = RawWorker::connect_with_key(engine.worker_addr, KEY_B).await;
    let anonymous = RawWorker::connect(engine.worker_addr).await;
    assert_eq!(wa.ok("stream::get", item("s", "g", "i")).await, "alpha's");
    assert_eq!(wb.ok("stream::get", item("s", "g", "i")).await, Value::Null);
    assert_eq!(
        anonymous.ok("stream::get", item("s", "g", "i")).await,
        Value::Null
    );
    engine.shutdown().await.unwrap();
}
