//! What presence costs a tenant (/work/notes/presence-protocol.md, "Cost"): a join that makes
//! a member pays its tenant's `deliveries_per_second` for its join and later leave to every
//! watching connection (and its own snapshot), at the quota's boundary and one past; a leave
//! is never refused; presence frames are counted in `/metrics`. And a member's `user` named
//! by the auth function, at its bound and one past.
//!
//! Rates are 1 per second with a burst, as in tests/quotas.rs: a burst is spent long before a
//! token comes back, even on a busy machine.

mod common;

use common::tenants::*;
use common::*;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use streamhost::Config;
use streamhost::admin::AdminConfig;
use streamhost::tenants::{Quotas, hash_key};

const OPERATOR: &str = "operator-key-for-the-presence-limit-tests";

/// `presence` on stream `chat` for the engine.
fn presence_on_chat() -> Config {
    let yaml = "workers:\n  - name: iii-stream\n    config: { presence: { streams: [chat] } }\n";
    Config::parse(yaml).expect("the presence config parses")
}

fn join_frame(sub: &str, stream: &str, extra: Value) -> Value {
    let mut data = json!({"subscriptionId": sub, "streamName": stream, "groupId": "g"});
    for (k, v) in extra.as_object().unwrap() {
        data[k] = v.clone();
    }
    json!({"type": "join", "data": data})
}

/// Joins `stream/g`; the `sync` must come.
async fn join(c: &mut Client, sub: &str, stream: &str, extra: Value) {
    c.send_json(join_frame(sub, stream, extra)).await;
    let sync = c.next().await;
    assert_eq!(sync["event"]["type"], "sync", "{sync}");
}

/// A join that must be refused for `deliveries_per_second`; returns the error.
async fn refused_join(c: &mut Client, sub: &str, extra: Value) -> Value {
    c.send_json(join_frame(sub, "chat", extra)).await;
    let frame = c.next().await;
    let e = frame["error"].clone();
    assert_eq!(e["code"], "quota_exceeded", "{frame}");
    let message = e["message"].as_str().unwrap();
    assert!(message.contains("`deliveries_per_second`"), "{message}");
    assert!(
        message.contains("quotas.deliveries_per_second"),
        "{message}"
    );
    assert!(message.contains("presence frames"), "{message}");
    e
}

/// The next frame, a presence frame: its action and member's client id.
async fn presence(c: &mut Client) -> (String, String) {
    let frame = c.next().await;
    assert_eq!(frame["event"]["type"], "presence", "{frame}");
    let data = &frame["event"]["data"];
    let who = data["member"]["client"].as_str().unwrap_or("").to_owned();
    (data["action"].as_str().unwrap().to_owned(), who)
}

async fn nothing_more(c: &mut Client) {
    let frame = c.try_next(Duration::from_millis(200)).await;
    assert!(frame.is_none(), "{frame:?}");
}

/// Sets alpha's `deliveries_per_second` through the admin API: a changed rate starts full.
async fn set_deliveries(admin: SocketAddr, per_second: u32, burst: u32) {
    let (status, shown) = http_request(admin, "GET", "/tenants/alpha", Some(OPERATOR), b"").await;
    assert_eq!(status, 200, "{shown}");
    let mut tenant: Value = serde_json::from_str(&shown).unwrap();
    let mut config = tenant["config"].take();
    config["clients"]["keys"][0]["secret"] = json!(SECRET_A);
    config["quotas"]["deliveries_per_second"] = json!({"per_second": per_second, "burst": burst});
    let body = config.to_string();
    let (status, answer) = http_request(
        admin,
        "PUT",
        "/tenants/alpha",
        Some(OPERATOR),
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
}

async fn alpha_client(addr: SocketAddr) -> Client {
    let token = token("alpha", SECRET_A, &["*"], 300);
    Client::connect_with_token(addr, "/", &token).await
}

fn alpha_sample(body: &str, series: &str) -> f64 {
    sample(body, &format!("{series}{{tenant=\"alpha\"}}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_pay_for_their_presence_frames_and_leaves_always_go() {
    let mut config = two_tenants("");
    config.presence = presence_on_chat().presence;
    let alpha = config.tenants.iter_mut().find(|t| t.id.as_str() == "alpha");
    alpha.unwrap().quotas = Quotas::UNLIMITED;
    config.admin = Some(AdminConfig {
        host: "127.0.0.1".into(),
        port: 0,
        key_sha256: hash_key(OPERATOR),
    });
    let engine = start(config).await;
    let admin = engine.admin_addr.unwrap();
    let w = RawWorker::connect_with_key(engine.worker_addr, KEY_A).await;

    // Two watchers, joined while the tenant has no delivery limit.
    let mut a = alpha_client(engine.client_addr).await;
    join(&mut a, "s", "chat", json!({"presence": true})).await;
    assert_eq!(presence(&mut a).await.0, "snapshot");
    let mut b = alpha_client(engine.client_addr).await;
    join(&mut b, "s", "chat", json!({"presence": true})).await;
    assert_eq!(presence(&mut b).await.0, "snapshot");
    assert_eq!(presence(&mut a).await.0, "join");

    // A member costs 2 x 2 (its join and its leave, to each watcher): two spend a burst of 8
    // to the last token, and are made and announced.
    set_deliveries(admin, 1, 8).await;
    let mut m1 = alpha_client(engine.client_addr).await;
    join(&mut m1, "s", "chat", json!({})).await;
    let mut m2 = alpha_client(engine.client_addr).await;
    join(&mut m2, "s", "chat", json!({})).await;
    let mut ids = Vec::new();
    for watcher in [&mut a, &mut b] {
        let (first, second) = (presence(watcher).await, presence(watcher).await);
        assert_eq!((first.0.as_str(), second.0.as_str()), ("join", "join"));
        ids = vec![first.1, second.1];
    }

    // One past: the third is refused with when to retry (4 tokens at 1 a second), not made,
    // and nobody hears of it.
    let mut m3 = alpha_client(engine.client_addr).await;
    let e = refused_join(&mut m3, "s", json!({})).await;
    assert!(
        e["message"].as_str().unwrap().contains("4 presence frames"),
        "{e}"
    );
    assert!(e["retry_after_ms"].as_u64().unwrap() >= 1, "{e}");
    let listed = w
        .ok(
            "stream::presence",
            json!({"stream_name": "chat", "group_id": "g"}),
        )
        .await;
    assert_eq!(listed["count"], 4, "{listed}");
    nothing_more(&mut a).await;
    nothing_more(&mut b).await;
    // A stream without presence costs no presence frame: joined as always.
    join(&mut m3, "o", "other", json!({})).await;

    // Leaves, with the bucket empty: never refused (the joins paid for them), never dropped.
    m1.send_json(json!({"type": "leave", "data": {"subscriptionId": "s", "streamName": "chat", "groupId": "g"}}))
        .await;
    drop(m2);
    // Two sockets leave at once: their frames may come in either order.
    for watcher in [&mut a, &mut b] {
        let mut left = vec![presence(watcher).await, presence(watcher).await];
        left.sort();
        let mut expected = vec![
            ("leave".into(), ids[0].clone()),
            ("leave".into(), ids[1].clone()),
        ];
        expected.sort();
        assert_eq!(left, expected);
    }

    // A burst of 7, one short of two members: the first is made, the second refused.
    set_deliveries(admin, 1, 7).await;
    join(&mut m3, "s", "chat", json!({})).await;
    assert_eq!(presence(&mut a).await.0, "join");
    assert_eq!(presence(&mut b).await.0, "join");
    let mut m4 = alpha_client(engine.client_addr).await;
    let e = refused_join(&mut m4, "s", json!({})).await;
    assert!(e["retry_after_ms"].as_u64().unwrap() >= 1, "{e}");

    // A burst of 3, under one member's 4: waiting will never let it in, so no retry_after_ms.
    set_deliveries(admin, 1, 3).await;
    let e = refused_join(&mut m4, "s", json!({})).await;
    assert!(e.get("retry_after_ms").is_none(), "{e}");
    assert!(e["message"].as_str().unwrap().contains("burst of 3"), "{e}");
    nothing_more(&mut a).await;

    // Counted: snapshots 2, b's join 1, three members' joins 2 each, two leaves 2 each.
    let (_, body) = http_get(engine.client_addr, "/metrics").await;
    assert_eq!(
        alpha_sample(&body, "streamhost_tenant_presence_frames_total"),
        13.0
    );
    // No event was sent: every frame delivered to alpha's clients was a presence frame.
    assert_eq!(
        alpha_sample(&body, "streamhost_tenant_frames_delivered_total"),
        13.0
    );
    let refusals =
        r#"streamhost_tenant_quota_refusals_total{tenant="alpha",quota="deliveries_per_second"}"#;
    assert_eq!(sample(&body, refusals), 3.0);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_function_may_name_a_members_user_up_to_its_bound() {
    let mut config = Config {
        presence: presence_on_chat().presence,
        ..test_config()
    };
    config.auth_function = Some("auth".into());
    let engine = start(config).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    w.register("auth", |req| {
        let who = req["query_params"]["who"][0].as_str().unwrap_or("");
        let user = match who {
            "ann" => json!("ann"),
            "at" => json!("u".repeat(256)),
            "past" => json!("u".repeat(257)),
            "number" => json!(42),
            _ => Value::Null,
        };
        Ok(Some(
            json!({"context": {"user": "private-context"}, "user": user}),
        ))
    })
    .await;
    let mut clients = Vec::new();
    for who in ["ann", "at", "past", "number", "none"] {
        let mut c = Client::connect(engine.client_addr, &format!("/?who={who}")).await;
        join(&mut c, "s", "chat", json!({})).await;
        clients.push(c);
    }
    let listed = w
        .ok(
            "stream::presence",
            json!({"stream_name": "chat", "group_id": "g"}),
        )
        .await;
    let users: Vec<&Value> = listed["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["user"])
        .collect();
    let at = json!("u".repeat(256));
    let null = Value::Null;
    assert_eq!(users, [&json!("ann"), &at, &null, &null, &null]);
    // Refused `user`s are logged, not fatal: the clients were admitted and joined.
    assert_eq!(listed["count"], 5);
    assert!(
        !listed.to_string().contains("private-context"),
        "the auth context is never shown to other members: {listed}"
    );
    engine.shutdown().await.unwrap();
}
