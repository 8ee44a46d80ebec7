//! The Redis adapter against a real `redis-server` that each test starts on a free port: the
//! stream functions, the key layout shared with iii, fan-out between two engine processes,
//! recovery when Redis dies and comes back, TLS with a password, and tenants (`tenants`).

mod common;
#[path = "redis/engine_tenants.rs"]
mod engine_tenants;
#[path = "common/limits_helpers.rs"]
mod limits_helpers;
#[path = "redis/presence.rs"]
mod presence;
#[path = "redis/resume.rs"]
mod resume;
#[path = "redis/tenants.rs"]
mod tenants;

use common::conformance::{at, with};
use common::*;
use serde_json::{Value, json};
use std::ffi::OsString;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use streamhost::Config;
use streamhost::config::AdapterConfig;

/// A `redis-server` of our own, killed when dropped.
struct RedisServer {
    child: Option<Child>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    fn start() -> RedisServer {
        RedisServer::start_on(free_port())
    }

    fn start_on(port: u16) -> RedisServer {
        RedisServer::launch(port, &["--port".into(), port.to_string().into()])
    }

    /// Listening with TLS only, on `port`, with `certs/server.{crt,key}`, `certs/ca.crt` and a password.
    fn start_tls(port: u16, certs: &Path, password: &str) -> RedisServer {
        let mut args: Vec<OsString> = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--requirepass",
            password,
            "--tls-auth-clients",
            "no",
        ]
        .map(OsString::from)
        .into();
        for (option, file) in [
            ("--tls-cert-file", "server.crt"),
            ("--tls-key-file", "server.key"),
            ("--tls-ca-cert-file", "ca.crt"),
        ] {
            args.extend([option.into(), certs.join(file).into()]);
        }
        RedisServer::launch(port, &args)
    }

    /// Runs redis-server with `listen` (its port options) and waits until `port` accepts.
    fn launch(port: u16, listen: &[OsString]) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(listen)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-server ({e}); install it with `apt-get install redis-server` (.ci/run does this)"));
        let server = RedisServer {
            child: Some(child),
            port,
            _dir: dir,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on port {} within {WAIT:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    async fn raw(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn redis_config(url: &str) -> Config {
    let mut config = test_config();
    config.adapter = AdapterConfig::redis(url);
    config
}

fn spawn_node(dir: &std::path::Path, url: &str) -> EngineProcess {
    let node_dir = dir.join(uuid::Uuid::new_v4().to_string());
    std::fs::create_dir(&node_dir).unwrap();
    EngineProcess::spawn(&write_config(
        &node_dir,
        &format!("{{ name: redis, config: {{ redis_url: \"{url}\" }} }}"),
    ))
}

/// Two engine processes on one Redis, a worker on each, with fan-out from B to A working.
struct TwoNodes {
    _dir: tempfile::TempDir,
    a: EngineProcess,
    b: EngineProcess,
    wa: RawWorker,
    wb: RawWorker,
}

async fn two_nodes(redis: &RedisServer) -> TwoNodes {
    let dir = tempfile::tempdir().unwrap();
    let a = spawn_node(dir.path(), &redis.url());
    let b = spawn_node(dir.path(), &redis.url());
    let wa = RawWorker::connect(a.worker_addr).await;
    let wb = RawWorker::connect(b.worker_addr).await;
    wait_for_fan_out(&wb, a.client_addr).await;
    TwoNodes {
        _dir: dir,
        a,
        b,
        wa,
        wb,
    }
}

/// Waits until an event sent on one node reaches a client of the other: both subscriptions are up.
async fn wait_for_fan_out(from: &RawWorker, to: std::net::SocketAddr) {
    let mut probe = Client::connect(to, "/stream/probe/ready").await;
    assert_eq!(probe.next().await["event"]["type"], "sync");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        from.ok(
            "stream::send",
            json!({"stream_name": "probe", "group_id": "ready", "type": "ping", "data": {}}),
        )
        .await;
        if probe.try_next(Duration::from_millis(200)).await.is_some() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "events never crossed between the nodes"
        );
    }
}

/// Reads frames until `n` have come, then checks that nothing else follows.
async fn exactly(client: &mut Client, n: usize) -> Vec<Value> {
    let mut frames = Vec::new();
    while frames.len() < n {
        frames.push(client.next().await);
    }
    if let Some(extra) = client.try_next(Duration::from_millis(700)).await {
        panic!("a frame more than the {n} expected: {extra}; before it: {frames:?}");
    }
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_behave_as_with_the_kv_store() {
    let redis = RedisServer::start();
    let engine = start(redis_config(&redis.url())).await;
    assert_eq!(engine.engine.store().name(), "redis");
    conformance::stream_functions(engine.worker_addr).await;
    conformance::one_item_event_order(&engine, "hot").await;
    // The emptied group took its hash and its order set with it.
    let mut raw = redis.raw().await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg("stream:chat:lobby")
        .arg("streamhost:order:chat:lobby")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(exists, 0);

    engine.shutdown().await.unwrap();
}

/// The value limits and iii's update paths hold as on the KvStore, and a refused value never
/// reaches Redis: the group's hash holds exactly the accepted items.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_update_paths_hold_and_refused_values_never_reach_redis() {
    let redis = RedisServer::start();
    let engine = start(redis_config(&redis.url())).await;
    let stored = limits_helpers::value_limits(engine.worker_addr, engine.client_addr, "lim").await;
    limits_helpers::update_paths(engine.worker_addr, engine.client_addr, "paths").await;
    let mut raw = redis.raw().await;
    let mut fields: Vec<String> = redis::cmd("HKEYS")
        .arg("stream:lim:g")
        .query_async(&mut raw)
        .await
        .unwrap();
    fields.sort();
    let mut accepted: Vec<String> = stored.iter().map(|(id, _)| id.clone()).collect();
    accepted.sort();
    assert_eq!(fields, accepted);
    for (id, value) in &stored {
        let text: String = redis::cmd("HGET")
            .arg("stream:lim:g")
            .arg(id)
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(
            &serde_json::from_str::<Value>(&text).unwrap(),
            value,
            "{id}"
        );
    }
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_layout_is_the_one_iii_uses() {
    let redis = RedisServer::start();
    let engine = start(redis_config(&redis.url())).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let mut raw = redis.raw().await;

    // Written by the engine, read as iii would.
    w.ok(
        "stream::set",
        with("s", "g", "i", json!({"text": "hi", "n": [1, 2]})),
    )
    .await;
    let text: String = redis::cmd("HGET")
        .arg("stream:s:g")
        .arg("i")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"text": "hi", "n": [1, 2]})
    );

    // Written by an iii node, read through the engine.
    let _: i64 = redis::cmd("HSET")
        .arg("stream:s:from-iii")
        .arg("x")
        .arg(r#"{"v":1}"#)
        .query_async(&mut raw)
        .await
        .unwrap();
    let _: i64 = redis::cmd("HSET")
        .arg("stream:s:g")
        .arg("added-by-iii")
        .arg("2")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(
        w.ok("stream::list_groups", json!({"stream_name": "s"}))
            .await,
        json!(["from-iii", "g"])
    );
    assert_eq!(
        w.ok(
            "stream::list",
            json!({"stream_name": "s", "group_id": "from-iii"})
        )
        .await,
        json!([{"v": 1}])
    );
    assert_eq!(
        w.ok("stream::list", json!({"stream_name": "s", "group_id": "g"}))
            .await,
        json!([{"text": "hi", "n": [1, 2]}, 2])
    );
    assert_eq!(
        w.ok("stream::get", at("s", "from-iii", "x")).await,
        json!({"v": 1})
    );
    assert_eq!(
        w.ok("stream::set", with("s", "from-iii", "x", json!(5)))
            .await["old_value"],
        json!({"v": 1})
    );
    assert_eq!(
        w.ok("stream::delete", at("s", "g", "added-by-iii")).await,
        json!({"old_value": 2})
    );
    // An item an iii node deleted is gone, whatever the order set still says.
    let _: i64 = redis::cmd("HDEL")
        .arg("stream:s:g")
        .arg("i")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(
        w.ok("stream::list", json!({"stream_name": "s", "group_id": "g"}))
            .await,
        json!([])
    );
    assert_eq!(
        w.ok("stream::list_groups", json!({"stream_name": "s"}))
            .await,
        json!(["from-iii"])
    );

    // Text another writer left that is JSON only at a glance (a lone surrogate, a number no
    // f64 holds) is the store's error, read or updated, and the engine serves on; spaced text
    // is read as the engine's compact text.
    let items = [
        ("surrogate", r#"{"s":"\ud800"}"#),
        ("huge", "1e400"),
        ("spaced", r#"{ "v" : [1, 2] }"#),
    ];
    for (item, text) in items {
        let _: i64 = redis::cmd("HSET")
            .arg("stream:s:odd")
            .arg(item)
            .arg(text)
            .query_async(&mut raw)
            .await
            .unwrap();
    }
    for item in ["surrogate", "huge"] {
        let e = w
            .call("stream::get", at("s", "odd", item))
            .await
            .unwrap_err();
        assert_eq!(e["code"], "STREAM_GET_ERROR", "{e}");
        assert!(
            e["message"].as_str().unwrap().contains("is not JSON"),
            "{e}"
        );
        let ops = json!([{"type": "set", "path": "x", "value": 1}]);
        let update = json!({"stream_name": "s", "group_id": "odd", "item_id": item, "ops": ops});
        let e = w.call("stream::update", update).await.unwrap_err();
        assert_eq!(e["code"], "STREAM_UPDATE_ERROR", "{e}");
    }
    let spaced = w.call_raw("stream::get", at("s", "odd", "spaced")).await;
    assert_eq!(spaced["result"], json!({"v": [1, 2]}));
    assert_eq!(
        w.ok("stream::get", at("s", "from-iii", "x")).await,
        json!(5)
    );
    for item in ["surrogate", "huge", "spaced"] {
        let _: i64 = redis::cmd("HDEL")
            .arg("stream:s:odd")
            .arg(item)
            .query_async(&mut raw)
            .await
            .unwrap();
    }

    // Frames: the engine's own arrive once; an iii node's (no "node" field) arrive too.
    let mut c = Client::connect(engine.client_addr, "/stream/s/g").await;
    assert_eq!(c.next().await["event"]["type"], "sync");
    let mut listener = redis::Client::open(redis.url())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    listener.subscribe("stream::events").await.unwrap();
    w.ok("stream::set", with("s", "g", "mine", json!(1))).await;
    let frames = exactly(&mut c, 1).await;
    assert_eq!(frames[0]["event"], json!({"type": "create", "data": 1}));
    let published: String = {
        use futures_util::StreamExt;
        let msg = tokio::time::timeout(WAIT, listener.on_message().next())
            .await
            .unwrap()
            .unwrap();
        msg.get_payload().unwrap()
    };
    let published: Value = serde_json::from_str(&published).unwrap();
    assert_eq!(published["streamName"], "s");
    assert_eq!(published["event"], json!({"type": "create", "data": 1}));

    let iii_frame = json!({"type": "stream", "timestamp": 1_700_000_000_001u64, "streamName": "s", "groupId": "g", "id": "z", "event": {"type": "update", "data": {"from": "iii"}}});
    let _: i64 = redis::cmd("PUBLISH")
        .arg("stream::events")
        .arg(iii_frame.to_string())
        .query_async(&mut raw)
        .await
        .unwrap();
    // Delivered as the iii node sent it, numbered in this node's history of the group.
    let mut delivered = exactly(&mut c, 1).await.remove(0);
    let map = delivered.as_object_mut().unwrap();
    assert!(map.remove("offset").unwrap().is_u64() && map.remove("epoch").unwrap().is_string());
    assert_eq!(delivered, iii_frame);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_deliver_each_others_events_exactly_once() {
    let redis = RedisServer::start();
    let TwoNodes { a, b, wa, wb, .. } = &two_nodes(&redis).await;
    wait_for_fan_out(wa, b.client_addr).await;

    let mut ca = Client::connect(a.client_addr, "/stream/chat/room").await;
    let mut cb = Client::connect(b.client_addr, "/stream/chat/room").await;
    assert_eq!(ca.next().await["event"]["type"], "sync");
    assert_eq!(cb.next().await["event"]["type"], "sync");

    for i in 0..5 {
        wb.ok(
            "stream::set",
            with("chat", "room", &format!("b{i}"), json!(i)),
        )
        .await;
        wa.ok(
            "stream::set",
            with("chat", "room", &format!("a{i}"), json!(i)),
        )
        .await;
    }
    wb.ok(
        "stream::send",
        json!({"stream_name": "chat", "group_id": "room", "type": "typing", "data": {"who": "b"}}),
    )
    .await;
    wa.ok("stream::delete", at("chat", "room", "b0")).await;
    let mut orders = Vec::new();
    for client in [&mut ca, &mut cb] {
        let frames = exactly(client, 12).await;
        // Numbered in Redis: one order for every node, offsets one apart.
        let order: Vec<(Value, Value, Value)> = frames
            .iter()
            .map(|f| (f["offset"].clone(), f["epoch"].clone(), f["id"].clone()))
            .collect();
        for pair in frames.windows(2) {
            assert_eq!(pair[1]["offset"], pair[0]["offset"].as_u64().unwrap() + 1);
        }
        orders.push(order);
        let mut seen: Vec<String> = frames
            .iter()
            .map(|f| {
                format!(
                    "{} {}",
                    f["event"]["type"].as_str().unwrap(),
                    f["id"].as_str().unwrap_or("-")
                )
            })
            .collect();
        seen.sort();
        let mut want: Vec<String> = (0..5)
            .flat_map(|i| [format!("create a{i}"), format!("create b{i}")])
            .collect();
        want.extend(["delete b0".to_owned(), "event -".to_owned()]);
        want.sort();
        assert_eq!(seen, want);
        // Each node's own writes arrive in the order they were made.
        let b_order: Vec<&str> = frames
            .iter()
            .filter_map(|f| f["id"].as_str())
            .filter(|id| id.starts_with('b'))
            .collect();
        assert_eq!(b_order, ["b0", "b1", "b2", "b3", "b4", "b0"]);
    }
    assert_eq!(orders[0], orders[1], "both nodes deliver one order");

    // Concurrent increments through both nodes: none lost.
    let mut workers = Vec::new();
    for node in [&a, &b, &a, &b] {
        workers.push(RawWorker::connect(node.worker_addr).await);
    }
    let inc = json!({"stream_name": "s", "group_id": "g", "item_id": "n", "ops": [{"type": "increment", "path": "n", "by": 1}]});
    let calls = workers
        .iter()
        .flat_map(|w| (0..50).map(|_| w.call("stream::update", inc.clone())));
    for r in futures_util::future::join_all(calls).await {
        r.unwrap();
    }
    assert_eq!(
        wa.ok("stream::get", at("s", "g", "n")).await,
        json!({"n": 200})
    );
    assert_eq!(
        wb.ok("stream::get", at("s", "g", "n")).await,
        json!({"n": 200})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_survive_redis_dying_and_resync_their_clients() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let TwoNodes { a, wa, wb, .. } = &two_nodes(&redis).await;
    // Over Redis a write's event comes back numbered after the reply: once an observer has
    // it, it cannot trail the snapshot.
    let mut observer = Client::connect(a.client_addr, "/stream/chat/room").await;
    assert_eq!(observer.next().await["event"]["type"], "sync");
    wa.ok("stream::set", with("chat", "room", "m1", json!("before")))
        .await;
    assert_eq!(observer.next().await["id"], "m1");

    let mut ca = Client::connect(a.client_addr, "/stream/chat/room").await;
    assert_eq!(
        ca.next().await["event"],
        json!({"type": "sync", "data": ["before"]})
    );

    redis.kill();
    let started = Instant::now();
    let e = wa
        .call("stream::set", with("chat", "room", "m2", json!("during")))
        .await
        .unwrap_err();
    assert_eq!(e["code"], "STREAM_SET_ERROR", "{e}");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("unreachable") && message.contains(&format!("127.0.0.1:{port}")),
        "{e}"
    );
    let e = wb
        .call(
            "stream::list",
            json!({"stream_name": "chat", "group_id": "room"}),
        )
        .await
        .unwrap_err();
    assert_eq!(e["code"], "STREAM_GET_GROUP_ERROR", "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "calls took {:?} to fail",
        started.elapsed()
    );

    // Local work goes on without Redis.
    wa.ok(
        "stream::send",
        json!({"stream_name": "chat", "group_id": "room", "type": "typing", "data": 1}),
    )
    .await;
    assert_eq!(ca.next().await["event"]["type"], "event");

    let _redis = RedisServer::start_on(port);
    // Redis came back empty: the client's fresh snapshot says so, without an engine restart.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let frame = ca
            .try_next(Duration::from_secs(30))
            .await
            .expect("a fresh sync after Redis came back");
        if frame["event"]["type"] == "sync" {
            assert_eq!(frame["event"]["data"], json!([]));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no sync frame after Redis came back"
        );
    }
    wait_for_fan_out(wb, a.client_addr).await;
    wb.ok("stream::set", with("chat", "room", "m3", json!("after")))
        .await;
    let frame = ca.next().await;
    assert_eq!(
        (frame["id"].clone(), frame["event"].clone()),
        (json!("m3"), json!({"type": "create", "data": "after"}))
    );
    assert_eq!(
        wa.ok(
            "stream::list",
            json!({"stream_name": "chat", "group_id": "room"})
        )
        .await,
        json!(["after"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_dropped_while_redis_is_away_are_exported() {
    const DROPPED: &str = "streamhost_redis_publications_dropped_total";
    let mut redis = RedisServer::start();
    let engine = start(redis_config(&redis.url())).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let (_, body) = http_get(engine.client_addr, "/metrics").await;
    assert!(
        body.contains(&format!("# TYPE {DROPPED} counter")),
        "{body}"
    );
    assert_eq!(sample(&body, DROPPED), 0.0);
    assert_eq!(
        try_sample(&body, "streamhost_wal_truncated_bytes_total"),
        None,
        "Redis keeps no log of ours"
    );

    // Redis goes away; an event emitted now cannot reach the other nodes.
    redis.kill();
    w.ok(
        "stream::send",
        json!({"stream_name": "chat", "group_id": "room", "type": "typing", "data": 1}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let dropped = loop {
        let (_, body) = http_get(engine.client_addr, "/metrics").await;
        let dropped = sample(&body, DROPPED);
        if dropped > 0.0 || Instant::now() > deadline {
            break dropped;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(dropped, 1.0, "the one event sent while Redis was away");
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_starts_without_redis_and_uses_it_once_it_is_up() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let started = Instant::now();
    let engine = start(redis_config(&url)).await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "start took {:?}",
        started.elapsed()
    );
    let w = RawWorker::connect(engine.worker_addr).await;
    let e = w.call("stream::get", at("s", "g", "i")).await.unwrap_err();
    assert_eq!(e["code"], "STREAM_GET_ERROR");
    assert!(e["message"].as_str().unwrap().contains(&url), "{e}");

    let _redis = RedisServer::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(15);
    while w
        .call("stream::set", with("s", "g", "i", json!(1)))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the engine never reached Redis once it was up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(w.ok("stream::get", at("s", "g", "i")).await, json!(1));
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_redis_url_stops_the_start_with_a_clear_error() {
    let err = streamhost::Server::start(redis_config("http://nope"))
        .await
        .err()
        .expect("start fails");
    assert!(format!("{err:#}").contains("not a Redis URL"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_urls_speak_tls() {
    // A plain server behind a rediss:// URL: the TLS handshake fails with an error, not a panic
    // (rustls has its crypto provider) and not a hang.
    let redis = RedisServer::start();
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let engine = start(redis_config(&url)).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let e = w.call("stream::get", at("s", "g", "i")).await.unwrap_err();
    assert_eq!(e["code"], "STREAM_GET_ERROR");
    assert!(e["message"].as_str().unwrap().contains(&url), "{e}");
    engine.shutdown().await.unwrap();
}

/// Runs openssl with `args` in `dir`, failing the test with its output if it fails.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_behind_tls_and_a_password_is_used_through_its_url() {
    // A CA, and a certificate for 127.0.0.1 that it signed.
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=streamhost test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );

    let port = free_port();
    let _redis = RedisServer::start_tls(port, dir, "s3cret");

    let engine_dir = tempfile::tempdir().unwrap();
    let ca = dir.join("ca.crt");
    let node_trusting = |url: &str, ca_file: &str| {
        let config = write_config(
            engine_dir.path(),
            &format!("{{ name: redis, config: {{ redis_url: \"{url}\" }} }}"),
        );
        EngineProcess::spawn_with_env(&config, &[("SSL_CERT_FILE", ca_file)])
    };
    let node = |url: &str| node_trusting(url, ca.to_str().unwrap());
    // The right password over TLS, with the server's certificate checked against the CA.
    let engine = node(&format!("rediss://:s3cret@127.0.0.1:{port}"));
    let w = RawWorker::connect(engine.worker_addr).await;
    w.ok("stream::set", with("s", "g", "i", json!({"over": "tls"})))
        .await;
    assert_eq!(
        w.ok("stream::get", at("s", "g", "i")).await,
        json!({"over": "tls"})
    );
    drop((w, engine));

    // A wrong password is refused with an error that names the URL, without the password.
    let engine = node(&format!("rediss://:wrong@127.0.0.1:{port}"));
    let w = RawWorker::connect(engine.worker_addr).await;
    let e = w.call("stream::get", at("s", "g", "i")).await.unwrap_err();
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("127.0.0.1:{port}")) && !message.contains("wrong"),
        "{e}"
    );
    drop((w, engine));

    // A node that trusts another CA refuses the server's certificate, and says so.
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "other.key",
            "-out",
            "other.crt",
            "-days",
            "2",
            "-subj",
            "/CN=another CA",
        ],
    );
    let engine = node_trusting(
        &format!("rediss://:s3cret@127.0.0.1:{port}"),
        dir.join("other.crt").to_str().unwrap(),
    );
    let w = RawWorker::connect(engine.worker_addr).await;
    let e = w.call("stream::get", at("s", "g", "i")).await.unwrap_err();
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("TLS handshake failed"),
        "{e}"
    );
}
