//! Presence (issue 14, /work/notes/presence-protocol.md): who is subscribed to a group, on the
//! streams a config opts in; `stream::presence` for workers; join/leave frames and a snapshot
//! for the clients that ask; `max_members` at its bound and one past; tenants apart.

mod common;

use common::tenants::*;
use common::*;
use serde_json::{Value, json};
use std::time::Duration;
use streamhost::Config;

/// The stream module's `presence` config over the test config.
fn with_presence(presence: &str) -> Config {
    let yaml = format!("workers:\n  - name: iii-stream\n    config: {{ presence: {presence} }}\n");
    let parsed = Config::parse(&yaml).expect("the presence config parses");
    Config {
        presence: parsed.presence,
        ..test_config()
    }
}

fn join_frame(sub: &str, stream: &str, group: &str, extra: Value) -> Value {
    let mut data = json!({"subscriptionId": sub, "streamName": stream, "groupId": group});
    for (k, v) in extra.as_object().unwrap() {
        data[k] = v.clone();
    }
    json!({"type": "join", "data": data})
}

/// Joins `stream/group` with `extra` join data; returns the `sync`.
async fn join(c: &mut Client, sub: &str, stream: &str, group: &str, extra: Value) -> Value {
    c.send_json(join_frame(sub, stream, group, extra)).await;
    let sync = c.next().await;
    assert_eq!(sync["event"]["type"], "sync", "{sync}");
    sync
}

/// The next frame, which must be a presence frame; returns its data.
async fn presence(c: &mut Client) -> Value {
    let frame = c.next().await;
    assert_eq!(frame["event"]["type"], "presence", "{frame}");
    assert_eq!(frame["id"], Value::Null, "{frame}");
    assert!(frame.get("offset").is_none(), "no offset: {frame}");
    frame["event"]["data"].clone()
}

/// Sends an event to the group and checks it is the next frame `c` gets: nothing (no presence
/// frame) was queued for `c` before it.
async fn nothing_before_the_next_event(w: &RawWorker, c: &mut Client, stream: &str, group: &str) {
    let marker = json!({"stream_name": stream, "group_id": group, "type": "marker", "data": 1});
    w.ok("stream::send", marker).await;
    let frame = c.next().await;
    assert_eq!(frame["event"]["type"], "event", "{frame}");
}

async fn members(w: &RawWorker, stream: &str, group: &str) -> Value {
    w.ok(
        "stream::presence",
        json!({"stream_name": stream, "group_id": group}),
    )
    .await
}

fn client_ids(list: &Value) -> Vec<String> {
    let list = list.as_array().unwrap_or_else(|| panic!("a list: {list}"));
    list.iter()
        .map(|m| m["client"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_get_a_snapshot_then_joins_and_leaves_and_others_get_nothing_new() {
    let engine = start(with_presence(r#"{ streams: ["chat", "room-*"] }"#)).await;
    let w = RawWorker::connect(engine.worker_addr).await;

    let mut ann = Client::connect(engine.client_addr, "/").await;
    let info = json!({"name": "ann"});
    join(
        &mut ann,
        "s",
        "room-1",
        "g",
        json!({"presence": true, "info": info}),
    )
    .await;
    let snap = presence(&mut ann).await;
    assert_eq!(snap["action"], "snapshot");
    assert_eq!(snap["count"], 1);
    let me = snap["members"][0].clone();
    assert_eq!(me["info"], info);
    assert_eq!(me["user"], Value::Null, "an anonymous client has no user");

    // Bob does not ask for frames: he is a member, and gets only what he got before.
    let mut bob = Client::connect(engine.client_addr, "/").await;
    join(&mut bob, "s", "room-1", "g", json!({})).await;
    let joined = presence(&mut ann).await;
    assert_eq!(joined["action"], "join");
    assert_eq!(joined["member"]["info"], Value::Null);
    assert_ne!(joined["member"]["client"], me["client"]);
    let listed = members(&w, "room-1", "g").await;
    assert_eq!(listed["count"], 2);
    assert_eq!(
        client_ids(&listed["members"]),
        [&me["client"], &joined["member"]["client"]].map(|c| c.as_str().unwrap().to_owned())
    );
    nothing_before_the_next_event(&w, &mut bob, "room-1", "g").await;
    assert_eq!(ann.next().await["event"]["type"], "event");

    // An explicit leave.
    bob.send_json(json!({"type": "leave", "data": {"subscriptionId": "s", "streamName": "room-1", "groupId": "g"}}))
        .await;
    let left = presence(&mut ann).await;
    assert_eq!(left["action"], "leave");
    assert_eq!(left["member"], joined["member"]);

    // A second watcher sees both in its snapshot, then leaves by closing its socket.
    let mut cat = Client::connect(engine.client_addr, "/").await;
    join(&mut cat, "s", "room-1", "g", json!({"presence": true})).await;
    let snap = presence(&mut cat).await;
    assert_eq!(snap["count"], 2);
    assert_eq!(snap["members"][0], me);
    let cat_member = presence(&mut ann).await["member"].clone();
    assert_eq!(snap["members"][1], cat_member);
    drop(cat);
    let left = presence(&mut ann).await;
    assert_eq!(
        (&left["action"], &left["member"]),
        (&json!("leave"), &cat_member)
    );
    assert_eq!(members(&w, "room-1", "g").await["count"], 1);
    // Other groups of the stream are apart.
    assert_eq!(
        members(&w, "room-1", "other").await,
        json!({"members": [], "count": 0})
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_not_opted_in_answers_presence_not_enabled_and_joins_as_before() {
    let engine = start(with_presence(r#"{ streams: ["chat"] }"#)).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let e = w
        .call(
            "stream::presence",
            json!({"stream_name": "other", "group_id": "g"}),
        )
        .await
        .unwrap_err();
    assert_eq!(e["code"], "presence_not_enabled", "{e}");
    assert!(e["message"].as_str().unwrap().contains("presence.streams"));

    let mut c = Client::connect(engine.client_addr, "/").await;
    c.send_json(join_frame("s", "other", "g", json!({"presence": true})))
        .await;
    let err = c.next().await;
    assert_eq!(err["error"]["code"], "presence_not_enabled", "{err}");
    // Info too large on a stream that keeps presence: refused, naming the bound.
    let big = json!("x".repeat(2000));
    c.send_json(join_frame("s", "chat", "g", json!({"info": big})))
        .await;
    let err = c.next().await;
    assert_eq!(err["error"]["code"], "invalid_presence_info", "{err}");
    // Neither join subscribed: nobody is in `chat/g`.
    assert_eq!(members(&w, "chat", "g").await["count"], 0);
    // Without presence, the stream joins as it always did, and nothing new arrives.
    join(&mut c, "s", "other", "g", json!({})).await;
    nothing_before_the_next_event(&w, &mut c, "other", "g").await;
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_members_are_listed_and_one_past_is_counted_silently_until_a_place_frees() {
    let engine = start(with_presence(r#"{ streams: ["chat"], max_members: 2 }"#)).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let mut watcher = Client::connect(engine.client_addr, "/").await;
    join(&mut watcher, "s", "chat", "g", json!({"presence": true})).await;
    assert_eq!(presence(&mut watcher).await["count"], 1);

    // The second member: at the bound, listed and announced.
    let mut second = Client::connect(engine.client_addr, "/").await;
    join(&mut second, "s", "chat", "g", json!({"info": 2})).await;
    let at_bound = presence(&mut watcher).await;
    assert_eq!(at_bound["member"]["info"], 2);

    // One past: subscribed all the same, counted, neither listed nor announced.
    let mut third = Client::connect(engine.client_addr, "/").await;
    join(
        &mut third,
        "s",
        "chat",
        "g",
        json!({"info": 3, "presence": true}),
    )
    .await;
    let snap = presence(&mut third).await;
    assert_eq!(snap["count"], 3);
    assert_eq!(snap["members"].as_array().unwrap().len(), 2);
    nothing_before_the_next_event(&w, &mut watcher, "chat", "g").await;
    let listed = members(&w, "chat", "g").await;
    assert_eq!(listed["count"], 3);
    assert_eq!(listed["members"].as_array().unwrap().len(), 2);
    // The unlisted member's subscription works: it got the event too.
    assert_eq!(third.next().await["event"]["type"], "event");

    // The second leaves: the third takes its place, announced.
    drop(second);
    let left = presence(&mut watcher).await;
    assert_eq!(
        (&left["action"], &left["member"]),
        (&json!("leave"), &at_bound["member"])
    );
    let promoted = presence(&mut watcher).await;
    assert_eq!(promoted["action"], "join");
    assert_eq!(promoted["member"]["info"], 3);
    assert_eq!(presence(&mut third).await["action"], "leave");
    assert_eq!(presence(&mut third).await["member"]["info"], 3);
    let listed = members(&w, "chat", "g").await;
    assert_eq!(listed["count"], 2);
    assert_eq!(listed["members"].as_array().unwrap().len(), 2);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_idle_leaves() {
    let mut config = with_presence(r#"{ streams: ["chat"] }"#);
    config.client_timeouts.ping_interval = Duration::from_millis(200);
    config.client_timeouts.idle_timeout = Duration::from_millis(1000);
    let engine = start(config).await;
    let mut watcher = Client::connect(engine.client_addr, "/").await;
    join(&mut watcher, "s", "chat", "g", json!({"presence": true})).await;
    presence(&mut watcher).await;
    // Joins, then never reads again: its socket answers no ping and is closed as idle.
    let mut idle = Client::connect(engine.client_addr, "/").await;
    join(&mut idle, "s", "chat", "g", json!({})).await;
    let joined = presence(&mut watcher).await;
    let left = presence(&mut watcher).await;
    assert_eq!(
        (&left["action"], &left["member"]),
        (&json!("leave"), &joined["member"])
    );
    drop(idle);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_sees_only_its_own_members_named_by_token_sub() {
    // The engine keeps presence on `chat`; beta (the last tenant) lists one member only.
    let mut config = two_tenants("  presence: { max_members: 1 }\n");
    config.presence = with_presence(r#"{ streams: ["chat"] }"#).presence;
    let engine = start(config).await;
    let mut workers = Vec::new();
    let mut clients = Vec::new();
    for (tenant, key, secret) in [("alpha", KEY_A, SECRET_A), ("beta", KEY_B, SECRET_B)] {
        workers.push(RawWorker::connect_with_key(engine.worker_addr, key).await);
        let token = token(tenant, secret, &["*"], 300);
        let mut watcher = Client::connect_with_token(engine.client_addr, "/", &token).await;
        join(&mut watcher, "s", "chat", "room", json!({"presence": true})).await;
        let snap = presence(&mut watcher).await;
        assert_eq!(snap["count"], 1, "{tenant} sees only itself: {snap}");
        assert_eq!(snap["members"][0]["user"], format!("user-of-{tenant}"));
        let mut other = Client::connect_with_token(engine.client_addr, "/", &token).await;
        join(&mut other, "s", "chat", "room", json!({})).await;
        clients.push((watcher, other));
    }
    let alpha = members(&workers[0], "chat", "room").await;
    let beta = members(&workers[1], "chat", "room").await;
    assert_eq!((&alpha["count"], &beta["count"]), (&json!(2), &json!(2)));
    for m in alpha["members"].as_array().unwrap() {
        assert_eq!(m["user"], "user-of-alpha", "{alpha}");
    }
    assert_eq!(alpha["members"].as_array().unwrap().len(), 2);
    assert_eq!(
        beta["members"].as_array().unwrap().len(),
        1,
        "beta's own max_members"
    );
    assert_eq!(beta["members"][0]["user"], "user-of-beta");
    // alpha's watcher heard alpha's second member join; beta's heard nothing (past its bound).
    assert_eq!(
        presence(&mut clients[0].0).await["member"]["user"],
        "user-of-alpha"
    );
    nothing_before_the_next_event(&workers[1], &mut clients[1].0, "chat", "room").await;
    engine.shutdown().await.unwrap();
}

/// The JS client (`clients/js`) under Node 20's WebSocket: `members` and `onPresence`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_js_client_keeps_members_and_calls_on_presence() {
    let engine = start(with_presence(r#"{ streams: ["chat"] }"#)).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/js/test/presence.mjs");
    let url = format!("ws://{}", engine.client_addr);
    let run = move || {
        std::process::Command::new("node")
            .args(["--experimental-websocket", script, &url])
            .output()
    };
    let out = tokio::task::spawn_blocking(run)
        .await
        .unwrap()
        .expect("node runs (Node 20 or later, as the browser tests need)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(
        seen["seen"],
        json!(["ann:snapshot:", "ann:join:bob", "ann:leave:bob"])
    );
    assert_eq!(seen["bobNames"], json!(["ann", "bob"]));
    assert_eq!(seen["annNames"], json!(["ann"]));
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejoin_of_the_same_group_keeps_the_member_and_one_to_another_group_leaves() {
    let engine = start(with_presence(r#"{ streams: ["chat"] }"#)).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let mut watcher = Client::connect(engine.client_addr, "/").await;
    join(&mut watcher, "w", "chat", "g", json!({"presence": true})).await;
    presence(&mut watcher).await;
    let mut c = Client::connect(engine.client_addr, "/").await;
    join(&mut c, "s", "chat", "g", json!({})).await;
    let joined = presence(&mut watcher).await["member"].clone();
    // The same subscription id joins the same group again (a resync): no leave, no join.
    join(&mut c, "s", "chat", "g", json!({"presence": true})).await;
    let snap = presence(&mut c).await;
    assert_eq!(snap["count"], 2, "{snap}");
    nothing_before_the_next_event(&w, &mut watcher, "chat", "g").await;
    assert_eq!(c.next().await["event"]["type"], "event", "still subscribed");
    // The same id moved to another group: it left this one.
    join(&mut c, "s", "chat", "h", json!({})).await;
    let left = presence(&mut watcher).await;
    assert_eq!(
        (&left["action"], &left["member"]),
        (&json!("leave"), &joined)
    );
    assert_eq!(members(&w, "chat", "h").await["count"], 1);
    engine.shutdown().await.unwrap();
}

#[test]
fn max_members_is_refused_past_its_hard_maximum_at_load() {
    let at = "workers:\n  - name: iii-stream\n    config: { presence: { streams: [chat], max_members: 10000 } }\n";
    assert_eq!(
        Config::parse(at).unwrap().presence.max_members,
        Some(10_000)
    );
    let over = at.replace("10000", "10001");
    let err = format!("{:#}", Config::parse(&over).unwrap_err());
    assert!(
        err.contains("max_members 10001") && err.contains("10000"),
        "{err}"
    );
    let typo = at.replace("max_members", "max_member");
    assert!(Config::parse(&typo).is_err(), "an unknown key is refused");
    let tenant = "tenants:\n  - id: t\n    presence: { max_members: 10001 }\n";
    let err = format!("{:#}", Config::parse(tenant).unwrap_err());
    assert!(err.contains("tenant `t`, presence"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_one_member_and_gets_each_frame_once_however_many_subscriptions() {
    let engine = start(with_presence(r#"{ streams: ["chat"] }"#)).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let mut c = Client::connect(engine.client_addr, "/").await;
    join(&mut c, "group", "chat", "g", json!({"presence": true})).await;
    presence(&mut c).await;
    let item = json!({"presence": true, "id": "i1"});
    join(&mut c, "item", "chat", "g", item).await;
    let snap = presence(&mut c).await;
    assert_eq!(snap["count"], 1, "one connection, one member: {snap}");
    let mut other = Client::connect(engine.client_addr, "/").await;
    join(&mut other, "s", "chat", "g", json!({})).await;
    assert_eq!(presence(&mut c).await["action"], "join");
    nothing_before_the_next_event(&w, &mut c, "chat", "g").await;
    // Leaving the group subscription keeps the member (the item one is still there), and
    // the item subscription alone still gets the frames.
    c.send_json(json!({"type": "leave", "data": {"subscriptionId": "group", "streamName": "chat", "groupId": "g"}}))
        .await;
    drop(other);
    assert_eq!(presence(&mut c).await["action"], "leave");
    assert_eq!(members(&w, "chat", "g").await["count"], 1);
    engine.shutdown().await.unwrap();
}
