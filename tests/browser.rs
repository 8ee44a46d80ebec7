//! `clients/js` (@streamhost/client) in a real browser: Debian's `chromium`, driven by
//! `puppeteer-core` from `tests/browser/driver.mjs`, opens `tests/browser/page/index.html`,
//! which uses the client as an app would and records what it was given.
//!
//! Against the engine: a page's group and item state equals `stream::list` / `stream::get`
//! after writes, updates, deletes and sends; a leave stops the frames; a killed and restarted
//! engine is reconnected to and the state comes back; and (once the engine keeps offsets,
//! issue 14) every event arrives exactly once across the restart. Against a scripted server
//! (`browser/fake_server.rs`) that speaks the resume protocol of issue 14 frame by frame: the
//! client resumes from its last offset, drops what it has seen, rejoins on a gap, starts
//! afresh on a new epoch, and treats missing heartbeats as a dead connection.
//!
//! Needs `chromium` (`apt-get install chromium`), Node.js and `npm ci --prefix tests/browser`;
//! each test fails with that command when it is missing.

mod common;
#[path = "browser/fake_server.rs"]
mod fake_server;
#[path = "browser/harness.rs"]
mod harness;

use common::{EngineProcess, RawWorker, start, test_config};
use fake_server::{FakeServer, frame, marker, tick};
use harness::{Browser, ExampleChat, Redis, config_on, free_port};
use serde_json::{Map, Value, json};

const STREAM: &str = "chat";
const GROUP: &str = "room-1";
const VIEW: &str = "t.view('chat/room-1')";

fn set(item: &str, data: Value) -> Value {
    json!({"stream_name": STREAM, "group_id": GROUP, "item_id": item, "data": data})
}

fn send(name: &str, data: Value, id: Option<&str>) -> Value {
    json!({"stream_name": STREAM, "group_id": GROUP, "type": name, "data": data, "id": id})
}

/// `stream::list` as the page keeps it: item id (the value's `id`) -> value.
async fn listed(worker: &RawWorker) -> Value {
    let list = worker
        .ok(
            "stream::list",
            json!({"stream_name": STREAM, "group_id": GROUP}),
        )
        .await;
    let map: Map<String, Value> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["id"].as_str().unwrap().to_owned(), v.clone()))
        .collect();
    Value::Object(map)
}

/// The events a page recorded, as `(name, data)` pairs.
fn events(view: &Value) -> Vec<(String, Value)> {
    view["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["type"].as_str().unwrap().to_owned(), e["data"].clone()))
        .collect()
}

/// Basic: sync of what was there, then creates, updates (set and `stream::update`), deletes
/// and sends; the group state equals `stream::list`, the item state `stream::get`, every event
/// arrives once and in order; after a leave nothing more arrives for that subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_state_follows_the_group() {
    let engine = start(test_config()).await;
    let worker = RawWorker::connect(engine.worker_addr).await;
    worker
        .ok(
            "stream::set",
            set("m0", json!({"id": "m0", "text": "before the join"})),
        )
        .await;

    let mut page = Browser::launch().await;
    let url = format!("ws://{}", engine.client_addr);
    page.eval(&format!("t.start({url:?})")).await;
    page.eval("t.group('chat', 'room-1')").await;
    page.eval("t.item('chat', 'room-1', 'm2')").await;
    let view = page
        .wait_for(VIEW, "the first sync", |v| v["ready"] == true)
        .await;
    assert_eq!(view["items"], listed(&worker).await, "the sync");
    page.wait_for("t.view('chat/room-1/m2')", "the item's sync", |v| {
        v["ready"] == true
    })
    .await;

    worker
        .ok("stream::set", set("m1", json!({"id": "m1", "text": "one"})))
        .await;
    worker
        .ok("stream::send", send("typing", json!({"who": "ann"}), None))
        .await;
    worker
        .ok("stream::set", set("m2", json!({"id": "m2", "text": "two"})))
        .await;
    worker
        .ok(
            "stream::update",
            json!({"stream_name": STREAM, "group_id": GROUP, "item_id": "m2",
                   "ops": [{"type": "set", "path": "text", "value": "two, edited"},
                           {"type": "increment", "path": "edits", "by": 1}]}),
        )
        .await;
    worker
        .ok(
            "stream::send",
            send("read", json!({"upTo": "m2"}), Some("m2")),
        )
        .await;
    worker
        .ok(
            "stream::delete",
            json!({"stream_name": STREAM, "group_id": GROUP, "item_id": "m1"}),
        )
        .await;
    worker
        .ok(
            "stream::set",
            set("m3", json!({"id": "m3", "text": "three"})),
        )
        .await;
    worker
        .ok("stream::send", send("typing", json!({"who": "bob"}), None))
        .await;

    let expected_events = vec![
        ("typing".to_owned(), json!({"who": "ann"})),
        ("read".to_owned(), json!({"upTo": "m2"})),
        ("typing".to_owned(), json!({"who": "bob"})),
    ];
    let expected = listed(&worker).await;
    let view = page
        .wait_for(VIEW, "the state of stream::list and 3 events", |v| {
            v["items"] == expected && v["events"].as_array().unwrap().len() >= 3
        })
        .await;
    assert_eq!(events(&view), expected_events);
    let changes: Vec<&str> = view["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        changes,
        ["create", "create", "update", "delete", "create"],
        "every change once, in order"
    );

    let m2 = worker
        .ok(
            "stream::get",
            json!({"stream_name": STREAM, "group_id": GROUP, "item_id": "m2"}),
        )
        .await;
    assert_eq!(m2["text"], "two, edited");
    let item = page
        .wait_for("t.view('chat/room-1/m2')", "the item's value", |v| {
            v["value"] == m2
        })
        .await;
    assert_eq!(
        events(&item),
        [("read".to_owned(), json!({"upTo": "m2"}))],
        "the item subscription gets only the events sent with its id"
    );

    // Leave the group; the item subscription stays. Frames come in order on one socket, so
    // once the item has seen a later write, the group would have seen the one before it.
    page.eval("t.leave('chat/room-1')").await;
    // The engine reads a socket's frames in order: once a later join is answered, the leave
    // has been handled, and the writes below cannot race it.
    page.eval("t.item('chat', 'room-1', 'probe')").await;
    page.wait_for("t.view('chat/room-1/probe')", "the probe's sync", |v| {
        v["ready"] == true
    })
    .await;
    worker
        .ok(
            "stream::set",
            set("m4", json!({"id": "m4", "text": "after the leave"})),
        )
        .await;
    worker
        .ok(
            "stream::set",
            set("m2", json!({"id": "m2", "text": "last"})),
        )
        .await;
    page.wait_for("t.view('chat/room-1/m2')", "the last write", |v| {
        v["value"]["text"] == "last"
    })
    .await;
    let view = page.eval(VIEW).await;
    assert_eq!(
        view["items"], expected,
        "nothing reached the group after its leave"
    );
}

/// The page's token goes as the subprotocols `Authorization, <token>` (default) or as
/// `?token=` (the engine accepts both: tests/client_socket.rs, tests/tenants.rs), a token function is
/// called before connecting, and a join refused with `unauthorized` is reported to the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_connects_with_a_token() {
    let server = FakeServer::start().await;
    let mut page = Browser::launch().await;
    page.eval(&format!(
        "t.start({:?}, {{token: 'tok-123'}})",
        server.url()
    ))
    .await;
    page.eval("t.group('chat', 'room-1')").await;
    let hello = server.accept().await;
    assert_eq!(hello.protocols, ["Authorization", "tok-123"]);
    assert!(hello.query.contains("heartbeat=1"), "{}", hello.query);
    // A `stream:join` trigger refused the join: the app is told.
    let mut hello = hello;
    join_of(&hello.recv().await);
    hello
        .send(
            json!({"type": "stream", "timestamp": 1, "streamName": "chat", "groupId": "room-1",
                     "id": null, "event": {"type": "unauthorized"}}),
        )
        .await;
    page.wait_for(VIEW, "the refusal", |v| {
        v["unauthorized"] == 1 && v["pending"] == false && v["ready"] == false
    })
    .await;
    page.eval("t.client.close()").await; // so that it does not come back below
    drop(hello);

    let mut page = Browser::launch().await;
    page.eval(&format!(
        "t.start({:?}, {{token: () => Promise.resolve('tok 456'), tokenVia: 'query'}})",
        server.url()
    ))
    .await;
    let hello = server.accept().await;
    assert!(hello.protocols.is_empty(), "{:?}", hello.protocols);
    assert!(hello.query.contains("token=tok+456"), "{}", hello.query);
}

/// An engine on a Redis of its own (so that a restart keeps the items), a worker, and a page
/// that has started the client, reconnecting quickly, and joined `chat/room-1`.
struct OnRedis {
    _redis: Redis,
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
    engine: EngineProcess,
    worker: RawWorker,
    page: Browser,
}

async fn page_on_redis() -> OnRedis {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config_on(dir.path(), free_port(), 500, &redis.adapter());
    let engine = EngineProcess::spawn(&config);
    let worker = RawWorker::connect(engine.worker_addr).await;
    let mut page = Browser::launch().await;
    let url = format!("ws://{}", engine.client_addr);
    page.eval(&format!(
        "t.start({url:?}, {{reconnect: {{initialDelayMs: 100, maxDelayMs: 1000}}}})"
    ))
    .await;
    page.eval("t.group('chat', 'room-1')").await;
    OnRedis {
        _redis: redis,
        _dir: dir,
        config,
        engine,
        worker,
        page,
    }
}

/// A group's items written across a restart of the engine (Redis keeps them): the page
/// reconnects by itself and ends with `stream::list`'s state. Works without offsets: the
/// client takes the fresh `sync` of its new join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_state_survives_an_engine_restart() {
    let OnRedis {
        _redis,
        _dir,
        config,
        mut engine,
        mut worker,
        mut page,
    } = page_on_redis().await;
    page.wait_for(VIEW, "the first sync", |v| v["ready"] == true)
        .await;

    for n in 0..40 {
        if n == 20 {
            engine.kill9();
            engine = EngineProcess::spawn(&config);
            worker = RawWorker::connect(engine.worker_addr).await;
        }
        let item = format!("i{}", n % 7);
        worker
            .ok("stream::set", set(&item, json!({"id": item, "n": n})))
            .await;
        if n % 5 == 0 {
            worker
                .ok(
                    "stream::delete",
                    json!({"stream_name": STREAM, "group_id": GROUP, "item_id": format!("i{}", (n + 3) % 7)}),
                )
                .await;
        }
    }
    let expected = listed(&worker).await;
    let view = page
        .wait_for(VIEW, "stream::list's state after the restart", |v| {
            v["items"] == expected
        })
        .await;
    assert!(
        view["client"]["reconnects"].as_u64().unwrap() >= 1,
        "the page reconnected: {view:#}"
    );
    let answers =
        view["stats"]["syncs"].as_u64().unwrap() + view["stats"]["recoveries"].as_u64().unwrap();
    assert!(
        answers >= 2,
        "the page joined again after the restart: {view:#}"
    );
}

/// Issue 14's test: the engine is killed and restarted in the middle of a stream of writes and
/// sends; the page ends with exactly `stream::list`'s state and every event, none twice.
/// Events sent while the page was away come back because offsets and history live in Redis
/// (`storage::redis::history`): the restarted engine serves the page's resume from there.
/// The engine is killed right after an acknowledged write or send: a write's reply waits until
/// its event is numbered in Redis (`Functions::published`), so none is lost with the node.
/// Without that wait the last event before the kill was lost about one run in five.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_once_across_an_engine_restart() {
    const N: u64 = 200;
    let OnRedis {
        _redis,
        _dir,
        config,
        mut engine,
        mut worker,
        mut page,
    } = page_on_redis().await;
    let first = page
        .wait_for(VIEW, "the first sync", |v| v["ready"] == true)
        .await;
    assert!(
        first["offset"].is_u64() && first["epoch"].is_string(),
        "the engine sends offsets and epochs on sync (resume-protocol.md): {first:#}"
    );

    for n in 0..N {
        if n == N / 2 {
            // Right after an acknowledged write: its frame may still be on its way.
            engine.kill9();
            engine = EngineProcess::spawn(&config);
            worker = RawWorker::connect(engine.worker_addr).await;
        }
        let item = format!("i{}", n % 11);
        worker
            .ok("stream::set", set(&item, json!({"id": item, "n": n})))
            .await;
        worker
            .ok("stream::send", send("tick", json!({"n": n}), None))
            .await;
        if n % 13 == 0 {
            worker
                .ok(
                    "stream::delete",
                    json!({"stream_name": STREAM, "group_id": GROUP, "item_id": format!("i{}", (n + 5) % 11)}),
                )
                .await;
        }
    }
    let expected = listed(&worker).await;
    let view = page
        .wait_for(VIEW, "every event and stream::list's state", |v| {
            v["items"] == expected && v["events"].as_array().unwrap().len() as u64 >= N
        })
        .await;
    let got: Vec<Value> = events(&view)
        .into_iter()
        .map(|(_, d)| d["n"].clone())
        .collect();
    let want: Vec<Value> = (0..N).map(|n| json!(n)).collect();
    assert_eq!(got, want, "every event once, in order");
    assert!(view["client"]["reconnects"].as_u64().unwrap() >= 1);
    assert!(
        view["stats"]["recoveries"].as_u64().unwrap() >= 1,
        "Redis keeps the history: the page resumed instead of a fresh sync: {view:#}"
    );
    assert_eq!(view["epoch"], first["epoch"], "Redis keeps the epoch");
}

/// The join a page sent: its subscription id, and its `offset`/`epoch` when it resumes.
fn join_of(frame: &Value) -> (String, Option<u64>, Option<String>) {
    assert_eq!(frame["type"], "join", "{frame}");
    let d = &frame["data"];
    assert_eq!(
        (d["streamName"].as_str(), d["groupId"].as_str()),
        (Some("chat"), Some("room-1"))
    );
    assert_eq!(
        d.get("offset").is_some(),
        d.get("epoch").is_some(),
        "offset and epoch go together: {frame}"
    );
    (
        d["subscriptionId"].as_str().unwrap().to_owned(),
        d.get("offset").and_then(Value::as_u64),
        d.get("epoch").and_then(Value::as_str).map(str::to_owned),
    )
}

fn ticks(view: &Value) -> Vec<u64> {
    events(view)
        .iter()
        .map(|(_, d)| d["n"].as_u64().unwrap())
        .collect()
}

/// The resume protocol, frame by frame, against a scripted server: a fresh join, a duplicate
/// dropped, a resume from the last offset with a replay that overlaps what was seen, a gap
/// that makes the page join again from its offset (frames of the old subscription ignored
/// until the answer), a server gone quiet after heartbeats (the watchdog reconnects), a new
/// epoch answered with a fresh `sync`, and an event of an unknown epoch (a fresh join).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_protocol_against_a_scripted_server() {
    let server = FakeServer::start().await;
    let mut page = Browser::launch().await;
    page.eval(&format!(
        "t.start({:?}, {{heartbeatIntervalMs: 300, reconnect: {{initialDelayMs: 50, maxDelayMs: 200}}}})",
        server.url()
    ))
    .await;
    page.eval("t.group('chat', 'room-1')").await;
    let create = |id: &str, n: u64| json!({"type": "create", "data": {"id": id, "n": n}});

    // A first join: no position to resume from.
    let mut c = server.accept().await;
    let (sub, offset, epoch) = join_of(&c.recv().await);
    assert_eq!((offset, epoch), (None, None));
    c.send(frame(
        None,
        json!({"type": "sync", "data": [{"id": "a", "n": 1}]}),
        5,
        "e1",
        None,
    ))
    .await;
    c.send(frame(Some("b"), create("b", 1), 6, "e1", None))
        .await;
    c.send(tick(1, 7, "e1", None)).await;
    c.send(tick(1, 7, "e1", None)).await; // a duplicate
    c.send(frame(
        Some("a"),
        json!({"type": "update", "data": {"id": "a", "n": 2}}),
        8,
        "e1",
        None,
    ))
    .await;
    let view = page.wait_for(VIEW, "offset 8", |v| v["offset"] == 8).await;
    assert_eq!(
        view["items"],
        json!({"a": {"id": "a", "n": 2}, "b": {"id": "b", "n": 1}})
    );
    assert_eq!(ticks(&view), [1]);
    assert_eq!(view["epoch"], "e1");

    // The connection drops; the page resumes from offset 8 and the server recovers.
    drop(c);
    let mut c = server.accept().await;
    assert_eq!(
        join_of(&c.recv().await),
        (sub.clone(), Some(8), Some("e1".into()))
    );
    c.send(marker(8, "e1", 3)).await;
    c.send(tick(1, 7, "e1", Some(true))).await; // seen already
    c.send(tick(2, 9, "e1", Some(true))).await;
    c.send(frame(
        Some("b"),
        json!({"type": "delete", "data": {"id": "b", "n": 1}}),
        10,
        "e1",
        Some(true),
    ))
    .await;
    c.send(frame(Some("c"), create("c", 1), 11, "e1", None))
        .await;
    let view = page
        .wait_for(VIEW, "offset 11", |v| v["offset"] == 11)
        .await;
    assert_eq!(
        view["items"],
        json!({"a": {"id": "a", "n": 2}, "c": {"id": "c", "n": 1}})
    );
    assert_eq!(ticks(&view), [1, 2]);
    assert_eq!(view["stats"]["recoveries"], 1);
    assert_eq!(view["stats"]["duplicates"], 2);

    // A gap (12 is missing): the page joins again from 11 on the same socket.
    c.send(tick(4, 13, "e1", None)).await;
    assert_eq!(
        join_of(&c.recv().await),
        (sub.clone(), Some(11), Some("e1".into()))
    );
    c.send(tick(5, 14, "e1", None)).await; // the old subscription's, before the answer
    c.send(marker(11, "e1", 3)).await;
    for (n, offset) in [(3, 12), (4, 13), (5, 14)] {
        c.send(tick(n, offset, "e1", Some(true))).await;
    }
    let view = page
        .wait_for(VIEW, "offset 14", |v| v["offset"] == 14)
        .await;
    assert_eq!(ticks(&view), [1, 2, 3, 4, 5]);
    assert_eq!(view["stats"]["gaps"], 1);

    // Heartbeats, then silence on an open socket: the watchdog gives up on it and reconnects.
    for _ in 0..3 {
        c.send(json!({"type": "heartbeat", "timestamp": 1})).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut c2 = server.accept().await;
    assert_eq!(
        join_of(&c2.recv().await),
        (sub.clone(), Some(14), Some("e1".into()))
    );
    drop(c);
    let view = page.eval(VIEW).await;
    assert_eq!(view["client"]["watchdogCloses"], 1, "{view:#}");

    // Another epoch: the server cannot recover and sends a fresh sync; the state is replaced.
    c2.send(frame(
        None,
        json!({"type": "sync", "data": [{"id": "z", "n": 9}]}),
        3,
        "e2",
        Some(false),
    ))
    .await;
    c2.send(tick(100, 4, "e2", None)).await;
    let view = page
        .wait_for(VIEW, "epoch e2 at 4", |v| {
            v["epoch"] == "e2" && v["offset"] == 4
        })
        .await;
    assert_eq!(view["items"], json!({"z": {"id": "z", "n": 9}}));
    assert_eq!(ticks(&view), [1, 2, 3, 4, 5, 100]);

    // A live event of an epoch the page never synced to: it starts over with a plain join.
    c2.send(tick(101, 5, "e3", None)).await;
    assert_eq!(join_of(&c2.recv().await), (sub, None, None));
    let view = page.eval(VIEW).await;
    assert_eq!(
        ticks(&view),
        [1, 2, 3, 4, 5, 100],
        "the unknown epoch's event is not applied"
    );
}

/// `examples/chat`: the page sends a message through its form and sees it, with one a worker
/// wrote, live; `stream::list` has both; the screenshot is not blank.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_chat_shows_messages_live() {
    let engine = start(test_config()).await;
    let worker = RawWorker::connect(engine.worker_addr).await;
    let chat = ExampleChat::start(engine.worker_addr, engine.client_addr).await;
    let mut page = Browser::launch().await;
    page.goto(&format!("{}#test-room", chat.url)).await;
    page.wait_for(
        "document.getElementById('status')?.textContent",
        "a connection",
        |v| v == "open",
    )
    .await;

    page.eval(
        "(() => { const $ = (id) => document.getElementById(id); $('name').value = 'ann'; \
         $('text').value = 'hello from the page'; $('compose').requestSubmit(); return true })()",
    )
    .await;
    worker
        .ok(
            "stream::set",
            json!({"stream_name": "chat", "group_id": "test-room", "item_id": "zz-worker",
                   "data": {"id": "zz-worker", "name": "bob", "text": "hello from a worker", "at": 0}}),
        )
        .await;
    let shown = page
        .wait_for(
            "document.getElementById('messages').innerText",
            "both messages",
            |v| {
                let t = v.as_str().unwrap_or_default();
                t.contains("hello from the page") && t.contains("hello from a worker")
            },
        )
        .await;
    assert!(shown.as_str().unwrap().contains("ann"), "{shown}");
    let list = worker
        .ok(
            "stream::list",
            json!({"stream_name": "chat", "group_id": "test-room"}),
        )
        .await;
    let texts: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert!(texts.contains(&"hello from the page"), "{list}");
    assert_eq!(texts.len(), 2, "{list}");

    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("chat.png");
    let colours = page.screenshot(&png).await;
    assert!(std::fs::metadata(&png).unwrap().len() > 0);
    // A blank page has one colour; the chat has a dark header, cards, text and anti-aliasing.
    assert!(
        colours >= 16,
        "the screenshot looks blank: {colours} colours"
    );
}

/// Heartbeats from the engine (`?heartbeat=1`): a frozen engine (SIGSTOP) keeps the socket
/// open but sends nothing, and the page gives up on it after two missed heartbeats; once the
/// engine runs again the page is back and sees the writes made meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_notices_a_frozen_engine() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_on(
        dir.path(),
        free_port(),
        300,
        "{ name: kv, config: { store_method: in_memory } }",
    );
    let engine = EngineProcess::spawn(&config);
    let worker = RawWorker::connect(engine.worker_addr).await;
    let mut page = Browser::launch().await;
    let url = format!("ws://{}", engine.client_addr);
    page.eval(&format!(
        "t.start({url:?}, {{heartbeatIntervalMs: 300, reconnect: {{initialDelayMs: 100, maxDelayMs: 500}}}})"
    ))
    .await;
    page.eval("t.group('chat', 'room-1')").await;
    page.wait_for(VIEW, "heartbeats", |v| {
        v["ready"] == true && v["client"]["heartbeats"].as_u64() >= Some(2)
    })
    .await;

    let signal = |sig: &str| {
        let pid = engine.child.id().to_string();
        assert!(
            std::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    signal("-STOP");
    page.wait_for(VIEW, "the watchdog", |v| {
        v["client"]["watchdogCloses"].as_u64() >= Some(1)
    })
    .await;
    signal("-CONT");
    worker
        .ok(
            "stream::set",
            set("m1", json!({"id": "m1", "text": "after the freeze"})),
        )
        .await;
    let expected = listed(&worker).await;
    page.wait_for(VIEW, "the write after the freeze", |v| {
        v["items"] == expected
    })
    .await;
}
