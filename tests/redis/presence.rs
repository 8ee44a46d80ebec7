//! Presence over Redis: one roster per group whichever node its clients are on. Watchers on
//! every node get the same snapshot and the same joins and leaves, `max_members` is applied
//! to the whole roster, a node that dies has its members removed by the others within its
//! `presence_ttl_ms`, and a node whose members Redis lost joins them again.

use super::*;
use common::tenants::*;

/// Two engines' worth of config: Redis, and presence on `chat` listing `max` members.
fn presence_config(url: &str, max: usize) -> Config {
    presence_config_ttl(url, max, 1_500)
}

fn presence_config_ttl(url: &str, max: usize, ttl_ms: u64) -> Config {
    let yaml = format!(
        "workers:\n  - name: iii-stream\n    config: {{ presence: {{ streams: [chat], max_members: {max} }} }}\n"
    );
    let parsed = Config::parse(&yaml).expect("the presence config parses");
    Config {
        presence: parsed.presence,
        adapter: AdapterConfig::Redis {
            url: url.to_owned(),
            presence_ttl: Duration::from_millis(ttl_ms),
        },
        ..test_config()
    }
}

/// Joins chat/`group` asking for presence frames, with `info`; returns the snapshot's data.
async fn watch(c: &mut Client, group: &str, info: Value) -> Value {
    c.send_json(
        json!({"type": "join", "data": {"subscriptionId": "p", "streamName": "chat",
        "groupId": group, "presence": true, "info": info}}),
    )
    .await;
    assert_eq!(c.next().await["event"]["type"], "sync");
    let snap = presence_data(c).await;
    assert_eq!(snap["action"], "snapshot", "{snap}");
    snap
}

/// Ann watches chat/room on the node at `ann_at`, then bob on the node at `bob_at`; ann
/// hears bob join.
async fn ann_then_bob(
    ann_at: std::net::SocketAddr,
    bob_at: std::net::SocketAddr,
) -> (Client, Client) {
    let mut ann = Client::connect(ann_at, "/").await;
    watch(&mut ann, "room", json!({"name": "ann"})).await;
    let mut bob = Client::connect(bob_at, "/").await;
    watch(&mut bob, "room", json!({"name": "bob"})).await;
    assert_eq!(
        presence_data(&mut ann).await["member"]["info"]["name"],
        "bob"
    );
    (ann, bob)
}

/// The next frame, which must be a presence frame; returns its data.
async fn presence_data(c: &mut Client) -> Value {
    let frame = c.next().await;
    assert_eq!(frame["event"]["type"], "presence", "{frame}");
    frame["event"]["data"].clone()
}

fn names(list: &Value) -> Vec<String> {
    let list = list.as_array().unwrap_or_else(|| panic!("a list: {list}"));
    list.iter()
        .map(|m| m["info"]["name"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// Reads `c`'s presence frames as an app does (a snapshot replaces the list, a join adds, a
/// leave removes) until its list is `want`, by name, in order.
async fn view_becomes(c: &mut Client, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut view: Vec<String> = Vec::new();
    while view != want {
        let data = tokio::time::timeout_at(deadline.into(), presence_data(c))
            .await
            .unwrap_or_else(|_| panic!("the watcher's list stayed {view:?}, not {want:?}"));
        let name = |m: &Value| m["info"]["name"].as_str().unwrap_or("?").to_owned();
        match data["action"].as_str() {
            Some("snapshot") => view = names(&data["members"]),
            Some("join") => view.push(name(&data["member"])),
            Some("leave") => view.retain(|n| *n != name(&data["member"])),
            other => panic!("unknown presence action {other:?}"),
        }
    }
}

async fn roster(w: &RawWorker, group: &str) -> Value {
    w.ok(
        "stream::presence",
        json!({"stream_name": "chat", "group_id": group}),
    )
    .await
}

/// Waits until `stream::presence` on `w` lists `want` (by name), for changes that reach Redis
/// after their reply (a leave is queued).
async fn roster_becomes(w: &RawWorker, group: &str, want: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = roster(w, group).await;
        if names(&r["members"]) == want {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "the roster stayed {r}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_on_two_nodes_see_one_roster_in_join_order() {
    let redis = RedisServer::start();
    let (one, two) = (
        start(presence_config(&redis.url(), 100)).await,
        start(presence_config(&redis.url(), 100)).await,
    );
    let (w1, w2) = (
        RawWorker::connect(one.worker_addr).await,
        RawWorker::connect(two.worker_addr).await,
    );
    wait_for_fan_out(&w1, two.client_addr).await;

    let mut ann = Client::connect(one.client_addr, "/").await;
    let snap = watch(&mut ann, "room", json!({"name": "ann"})).await;
    assert_eq!(
        (names(&snap["members"]), &snap["count"]),
        (vec!["ann".into()], &json!(1))
    );
    let ann_id = snap["members"][0]["client"].as_str().unwrap().to_owned();

    // A member on the other node: in its own snapshot after ann, announced to ann.
    let mut bob = Client::connect(two.client_addr, "/").await;
    let snap = watch(&mut bob, "room", json!({"name": "bob"})).await;
    assert_eq!(names(&snap["members"]), ["ann", "bob"], "{snap}");
    assert_eq!(snap["count"], 2);
    let bob_id = snap["members"][1]["client"].as_str().unwrap().to_owned();
    assert_ne!(ann_id, bob_id, "client ids are unique across nodes");
    let joined = presence_data(&mut ann).await;
    assert_eq!(joined["action"], "join");
    assert_eq!(joined["member"]["client"], bob_id.as_str());
    assert_eq!(joined["member"]["info"], json!({"name": "bob"}));

    // A member that does not watch, on node one: both watchers hear of it.
    let mut cat = Client::connect(one.client_addr, "/").await;
    cat.send_json(
        json!({"type": "join", "data": {"subscriptionId": "c", "streamName": "chat",
        "groupId": "room", "info": {"name": "cat"}}}),
    )
    .await;
    assert_eq!(cat.next().await["event"]["type"], "sync");
    for c in [&mut ann, &mut bob] {
        let joined = presence_data(c).await;
        assert_eq!(
            (&joined["action"], &joined["member"]["info"]["name"]),
            (&json!("join"), &json!("cat"))
        );
    }

    // Workers on either node read the same roster from Redis.
    for w in [&w1, &w2] {
        let r = roster(w, "room").await;
        assert_eq!(names(&r["members"]), ["ann", "bob", "cat"], "{r}");
        assert_eq!(r["count"], 3);
    }
    // Another group is another roster.
    assert_eq!(
        roster(&w2, "other").await,
        json!({"members": [], "count": 0})
    );

    // Leaving by closing the socket, on either node.
    drop(bob);
    let left = presence_data(&mut ann).await;
    assert_eq!(
        (&left["action"], &left["member"]["client"]),
        (&json!("leave"), &json!(bob_id))
    );
    cat.send_json(json!({"type": "leave", "data": {"subscriptionId": "c", "streamName": "chat", "groupId": "room"}}))
        .await;
    let left = presence_data(&mut ann).await;
    assert_eq!(
        (&left["action"], &left["member"]["info"]["name"]),
        (&json!("leave"), &json!("cat"))
    );
    roster_becomes(&w2, "room", &["ann"]).await;

    // A late watcher on node two sees exactly who is left.
    let mut dan = Client::connect(two.client_addr, "/").await;
    let snap = watch(&mut dan, "room", json!({"name": "dan"})).await;
    assert_eq!(names(&snap["members"]), ["ann", "dan"], "{snap}");
    assert_eq!(
        presence_data(&mut ann).await["member"]["info"]["name"],
        "dan"
    );
    assert!(ann.try_next(Duration::from_millis(300)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_members_applies_to_the_whole_roster_and_a_freed_place_goes_to_the_next_in_line() {
    let redis = RedisServer::start();
    let (one, two) = (
        start(presence_config(&redis.url(), 2)).await,
        start(presence_config(&redis.url(), 2)).await,
    );
    let w1 = RawWorker::connect(one.worker_addr).await;
    wait_for_fan_out(&w1, two.client_addr).await;
    let (mut ann, mut bob) = ann_then_bob(one.client_addr, two.client_addr).await;
    // The bound (2) is reached: a third member is counted, neither listed nor announced.
    let mut cat = Client::connect(one.client_addr, "/").await;
    let snap = watch(&mut cat, "room", json!({"name": "cat"})).await;
    assert_eq!(names(&snap["members"]), ["ann", "bob"], "{snap}");
    assert_eq!(snap["count"], 3);
    for c in [&mut ann, &mut bob] {
        assert!(c.try_next(Duration::from_millis(300)).await.is_none());
    }
    // bob leaves on node two: node one's watchers hear the leave and cat taking the place.
    drop(bob);
    for c in [&mut ann, &mut cat] {
        let left = presence_data(c).await;
        assert_eq!(
            (&left["action"], &left["member"]["info"]["name"]),
            (&json!("leave"), &json!("bob"))
        );
        let next = presence_data(c).await;
        assert_eq!(
            (&next["action"], &next["member"]["info"]["name"]),
            (&json!("join"), &json!("cat"))
        );
    }
    let r = roster_becomes(&w1, "room", &["ann", "cat"]).await;
    assert_eq!(r["count"], 2);
}

/// The config file of an engine process on Redis with presence on `chat`.
fn process_config(dir: &Path, url: &str, ttl_ms: u64) -> std::path::PathBuf {
    let path = dir.join("presence.yaml");
    let text = format!(
        "workers:\n  - name: iii-worker-manager\n    config: {{ host: 127.0.0.1, port: 0 }}\n  - name: iii-stream\n    config:\n      host: 127.0.0.1\n      port: 0\n      presence: {{ streams: [chat] }}\n      adapter: {{ name: redis, config: {{ redis_url: \"{url}\", presence_ttl_ms: {ttl_ms} }} }}\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_without_leaving_has_its_members_removed_within_its_ttl() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut doomed = EngineProcess::spawn(&process_config(dir.path(), &redis.url(), 3_000));
    // The survivor's own ttl is long: this test's 500 sockets keep its runtime busy, and a
    // renewal late past the ttl would (rightly) have the doomed node remove its members.
    let survivor = start(presence_config_ttl(&redis.url(), 1_000, 20_000)).await;
    let w = RawWorker::connect(survivor.worker_addr).await;
    let doomed_worker = RawWorker::connect(doomed.worker_addr).await;
    wait_for_fan_out(&doomed_worker, survivor.client_addr).await;

    let mut ann = Client::connect(survivor.client_addr, "/").await;
    watch(&mut ann, "room", json!({"name": "ann"})).await;
    let mut ghosts = Vec::new();
    for name in ["bob", "cat"] {
        let mut c = Client::connect(doomed.client_addr, "/").await;
        watch(&mut c, "room", json!({"name": name})).await;
        assert_eq!(
            presence_data(&mut ann).await["member"]["info"]["name"],
            name
        );
        ghosts.push(c);
    }
    // More members than one renewal removes (500): they go over several renewals.
    let mut crowd = Vec::new();
    for n in 0..501 {
        let mut c = Client::connect(doomed.client_addr, "/").await;
        c.send_json(
            json!({"type": "join", "data": {"subscriptionId": "p", "streamName": "chat",
            "groupId": "room", "info": {"name": format!("c{n}")}}}),
        )
        .await;
        crowd.push(c);
    }
    for c in &mut crowd {
        assert_eq!(c.next().await["event"]["type"], "sync");
    }
    let mut announced = 0;
    while announced < 501 {
        let joined = presence_data(&mut ann).await;
        assert_eq!(joined["action"], "join", "{joined}");
        announced += 1;
    }
    assert_eq!(roster(&w, "room").await["count"], 504);
    // kill -9: no socket closes cleanly, no leave is sent.
    doomed.kill9();
    let killed = Instant::now();
    let mut gone = Vec::new();
    let mut first_leave = None;
    for _ in 0..503 {
        let left = tokio::time::timeout(Duration::from_secs(10), presence_data(&mut ann))
            .await
            .expect("the dead node's members leave within its ttl and a few renewals");
        assert_eq!(left["action"], "leave", "{left}");
        first_leave.get_or_insert_with(|| killed.elapsed());
        gone.push(left["member"]["info"]["name"].as_str().unwrap().to_owned());
    }
    gone.retain(|n| !n.starts_with('c') || n == "cat");
    gone.sort();
    assert_eq!(gone, ["bob", "cat"]);
    // Not before the ttl (3 s) has passed since the last renewal (every second).
    let first_leave = first_leave.unwrap();
    assert!(
        first_leave >= Duration::from_millis(1_900),
        "{first_leave:?}"
    );
    let r = roster(&w, "room").await;
    assert_eq!(
        (names(&r["members"]), &r["count"]),
        (vec!["ann".into()], &json!(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_that_redis_lost_are_joined_again_and_watchers_hear_them() {
    let redis = RedisServer::start();
    let one = start(presence_config(&redis.url(), 100)).await;
    let w = RawWorker::connect(one.worker_addr).await;
    let (mut ann, _bob) = ann_then_bob(one.client_addr, one.client_addr).await;
    let mut raw = redis.raw().await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut raw).await.unwrap();
    // Its scripts too: the joins made again meet NOSCRIPT, load them, and go through.
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(roster(&w, "room").await["count"], 0);
    // The next renewal finds the node gone and joins both again; the watchers' view follows.
    roster_becomes(&w, "room", &["ann", "bob"]).await;
    // Redis's versions started again: the node loads the roster anew, and a watcher gets a
    // new snapshot with both (the joins made again alone would be taken as old news).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let data = tokio::time::timeout_at(deadline.into(), presence_data(&mut ann))
            .await
            .expect("a new snapshot after Redis lost the roster");
        if data["action"] == "snapshot" && names(&data["members"]) == ["ann", "bob"] {
            break;
        }
    }
    let mut dan = Client::connect(one.client_addr, "/").await;
    let snap = watch(&mut dan, "room", json!({"name": "dan"})).await;
    assert_eq!(names(&snap["members"]), ["ann", "bob", "dan"], "{snap}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_roster_is_out_of_reach_of_another_tenant_on_another_node() {
    let redis = RedisServer::start();
    let config = || Config {
        adapter: presence_config(&redis.url(), 100).adapter,
        presence: presence_config(&redis.url(), 100).presence,
        ..two_tenants("")
    };
    let (one, two) = (start(config()).await, start(config()).await);
    let wa = RawWorker::connect_with_key(one.worker_addr, KEY_A).await;
    let as_tenant = |tenant: &str, secret: &str| token(tenant, secret, &["*"], 300);
    let mut ann =
        Client::connect_with_token(one.client_addr, "/", &as_tenant("alpha", SECRET_A)).await;
    watch(&mut ann, "room", json!({"name": "ann"})).await;
    // Same stream and group names, another tenant, another node: an empty roster, no frames.
    let wb = RawWorker::connect_with_key(two.worker_addr, KEY_B).await;
    assert_eq!(
        roster(&wb, "room").await,
        json!({"members": [], "count": 0})
    );
    let mut eve =
        Client::connect_with_token(two.client_addr, "/", &as_tenant("beta", SECRET_B)).await;
    let snap = watch(&mut eve, "room", json!({"name": "eve"})).await;
    assert_eq!(names(&snap["members"]), ["eve"], "{snap}");
    assert!(ann.try_next(Duration::from_millis(300)).await.is_none());
    assert_eq!(names(&roster(&wa, "room").await["members"]), ["ann"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_cleanly_takes_its_members_out_at_once() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    // A ttl of a minute: the leaves below cannot come from it.
    let mut stopping = EngineProcess::spawn(&process_config(dir.path(), &redis.url(), 60_000));
    let survivor = start(presence_config(&redis.url(), 100)).await;
    let stopping_worker = RawWorker::connect(stopping.worker_addr).await;
    wait_for_fan_out(&stopping_worker, survivor.client_addr).await;
    let (mut ann, _bob) = ann_then_bob(survivor.client_addr, stopping.client_addr).await;
    assert!(stopping.terminate().success());
    let left = tokio::time::timeout(Duration::from_secs(5), presence_data(&mut ann))
        .await
        .expect("a clean stop announces its members' leaves");
    assert_eq!(
        (&left["action"], &left["member"]["info"]["name"]),
        (&json!("leave"), &json!("bob"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_that_finds_its_node_gone_from_redis_brings_the_nodes_members_back_at_once() {
    let redis = RedisServer::start();
    // A minute's ttl: a renewal comes every 20 s, so only the join below can notice.
    let one = start(presence_config_ttl(&redis.url(), 100, 60_000)).await;
    let w = RawWorker::connect(one.worker_addr).await;
    let (mut ann, mut bob) = ann_then_bob(one.client_addr, one.client_addr).await;
    let mut raw = redis.raw().await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut raw).await.unwrap();
    let mut cat = Client::connect(one.client_addr, "/").await;
    c_watch_then(&mut cat).await;
    roster_becomes(&w, "room", &["cat", "ann", "bob"]).await;
    // Every watcher's list ends right, in Redis's new order.
    for c in [&mut ann, &mut bob, &mut cat] {
        view_becomes(c, &["cat", "ann", "bob"]).await;
    }
}

/// Joins as `cat` asking for presence frames, and takes the `sync` (its snapshot is read by
/// `view_becomes` with the rest).
async fn c_watch_then(c: &mut Client) {
    c.send_json(
        json!({"type": "join", "data": {"subscriptionId": "p", "streamName": "chat",
        "groupId": "room", "presence": true, "info": {"name": "cat"}}}),
    )
    .await;
    assert_eq!(c.next().await["event"]["type"], "sync");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rosters_max_members_is_fixed_by_its_first_member_whatever_each_node_says() {
    let redis = RedisServer::start();
    let (one, two) = (
        start(presence_config(&redis.url(), 1)).await,
        start(presence_config(&redis.url(), 5)).await,
    );
    let w2 = RawWorker::connect(two.worker_addr).await;
    let mut ann = Client::connect(one.client_addr, "/").await;
    watch(&mut ann, "room", json!({"name": "ann"})).await;
    // Node two would list five; the roster started with one.
    let mut bob = Client::connect(two.client_addr, "/").await;
    let snap = watch(&mut bob, "room", json!({"name": "bob"})).await;
    assert_eq!(
        (names(&snap["members"]), &snap["count"]),
        (vec!["ann".into()], &json!(2))
    );
    let r = roster(&w2, "room").await;
    assert_eq!(
        (names(&r["members"]), &r["count"]),
        (vec!["ann".into()], &json!(2))
    );
    // ann's leave lets bob in, announced on both nodes.
    drop(ann);
    view_becomes(&mut bob, &["bob"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_deleted_on_one_node_takes_its_members_there_out_of_the_shared_roster() {
    let redis = RedisServer::start();
    const OPERATOR: &str = "operator-key-for-the-presence-tests-01";
    // A minute's ttl: the leave below cannot come from it.
    let config = |admin: bool| Config {
        adapter: presence_config_ttl(&redis.url(), 100, 60_000).adapter,
        presence: presence_config(&redis.url(), 100).presence,
        admin: admin.then(|| streamhost::admin::AdminConfig {
            host: "127.0.0.1".into(),
            port: 0,
            key_sha256: streamhost::tenants::hash_key(OPERATOR),
        }),
        ..two_tenants("")
    };
    let (one, two) = (start(config(true)).await, start(config(false)).await);
    let wa = RawWorker::connect_with_key(one.worker_addr, KEY_A).await;
    wait_for_tenant_fan_out(&wa, two.client_addr).await;
    let alpha = token("alpha", SECRET_A, &["*"], 300);
    let mut ann = Client::connect_with_token(two.client_addr, "/", &alpha).await;
    watch(&mut ann, "room", json!({"name": "ann"})).await;
    let mut bob = Client::connect_with_token(one.client_addr, "/", &alpha).await;
    watch(&mut bob, "room", json!({"name": "bob"})).await;
    assert_eq!(
        presence_data(&mut ann).await["member"]["info"]["name"],
        "bob"
    );
    let admin = one.admin_addr.unwrap();
    let (status, body) = http_request(admin, "DELETE", "/tenants/alpha", Some(OPERATOR), b"").await;
    assert_eq!(status, 200, "{body}");
    let left = tokio::time::timeout(Duration::from_secs(5), presence_data(&mut ann))
        .await
        .expect("the deleted tenant's members on node one leave at once");
    assert_eq!(
        (&left["action"], &left["member"]["info"]["name"]),
        (&json!("leave"), &json!("bob"))
    );
}

/// Waits until tenant alpha's events written on one node reach its clients on `to`.
async fn wait_for_tenant_fan_out(from: &RawWorker, to: std::net::SocketAddr) {
    let alpha = token("alpha", SECRET_A, &["*"], 300);
    let mut probe = Client::connect_with_token(to, "/stream/probe/ready", &alpha).await;
    assert_eq!(probe.next().await["event"]["type"], "sync");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ping = json!({"stream_name": "probe", "group_id": "ready", "type": "ping", "data": {}});
        from.ok("stream::send", ping).await;
        if probe.try_next(Duration::from_millis(200)).await.is_some() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "events never crossed between the nodes"
        );
    }
}
