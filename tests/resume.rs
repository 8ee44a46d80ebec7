//! Resuming after a reconnect (issue 14, /work/notes/resume-protocol.md): offsets and epochs on
//! every frame, a join that carries them gets exactly what it missed, and a fresh `sync`
//! marked `recovered:false` when the history no longer covers the gap; heartbeats for pages.

mod common;

use common::tenants::*;
use common::*;
use serde_json::{Value, json};
use std::time::Duration;
use streamhost::Config;

fn set(group: &str, item: &str, data: Value) -> Value {
    json!({"stream_name": "chat", "group_id": group, "item_id": item, "data": data})
}

fn send(group: &str, n: u64) -> Value {
    json!({"stream_name": "chat", "group_id": group, "type": "typing", "data": n})
}

fn with_history(size: usize, ttl_ms: u64) -> Config {
    let yaml = format!(
        "workers:\n  - name: iii-stream\n    config: {{ history: {{ size: {size}, ttl_ms: {ttl_ms} }} }}\n"
    );
    let parsed = Config::parse(&yaml).expect("the history config parses");
    Config {
        history: parsed.history,
        ..test_config()
    }
}

async fn join_from(c: &mut Client, sub: &str, group: &str, item: Option<&str>, from: &Value) {
    c.send_json(
        json!({"type": "join", "data": {"subscriptionId": sub, "streamName": "chat",
        "groupId": group, "id": item, "offset": from["offset"], "epoch": from["epoch"]}}),
    )
    .await;
}

fn offset(frame: &Value) -> u64 {
    frame["offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("no offset: {frame}"))
}

/// Joins `room`, then takes `writes` live events; returns the last frame seen.
async fn watch(engine: &streamhost::ServerHandle, w: &RawWorker, writes: u64) -> Value {
    let mut c = Client::connect(engine.client_addr, "/").await;
    let mut last = c.join("s", "chat", "room", None).await;
    assert_eq!(last["event"]["type"], "sync", "{last}");
    for n in 0..writes {
        w.ok("stream::set", set("room", &format!("live{n}"), json!(n)))
            .await;
        let frame = c.next().await;
        assert_eq!(offset(&frame), offset(&last) + 1, "{frame}");
        assert_eq!(frame["epoch"], last["epoch"], "{frame}");
        last = frame;
    }
    last
}

/// A mix of what a group sees while a client is away: creates, updates, sends and a delete.
async fn miss(w: &RawWorker, n: u64) -> Vec<Value> {
    let mut expected = Vec::new();
    for i in 0..n {
        match i % 4 {
            0 | 1 => {
                let item = format!("m{}", i / 4);
                w.ok("stream::set", set("room", &item, json!(i))).await;
                let kind = if i % 4 == 0 { "create" } else { "update" };
                expected.push(json!({"type": kind, "data": i}));
            }
            2 => {
                w.ok("stream::send", send("room", i)).await;
                expected.push(json!({"type": "event", "event": {"type": "typing", "data": i}}));
            }
            _ => {
                let item = format!("m{}", i / 4);
                w.ok(
                    "stream::delete",
                    json!({"stream_name": "chat", "group_id": "room", "item_id": item}),
                )
                .await;
                expected.push(json!({"type": "delete", "data": i - 2}));
            }
        }
        // Another group's events never count.
        w.ok("stream::send", send("elsewhere", i)).await;
    }
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_rejoins_gets_exactly_what_it_missed_then_live_events() {
    let engine = start(test_config()).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let last = watch(&engine, &w, 2).await;
    let expected = miss(&w, 7).await;

    let mut c = Client::connect(engine.client_addr, "/").await;
    join_from(&mut c, "s", "room", None, &last).await;
    let marker = c.next().await;
    assert_eq!(
        marker["event"],
        json!({"type": "recovered", "data": {"missed": 7}})
    );
    assert_eq!(marker["id"], Value::Null);
    assert_eq!(
        (&marker["offset"], &marker["epoch"], &marker["recovered"]),
        (&last["offset"], &last["epoch"], &json!(true))
    );
    for (n, event) in expected.iter().enumerate() {
        let frame = c.next().await;
        assert_eq!(&frame["event"], event, "missed event {n}: {frame}");
        assert_eq!(offset(&frame), offset(&last) + 1 + n as u64, "{frame}");
        assert_eq!(frame["epoch"], last["epoch"]);
        assert_eq!(frame["recovered"], true, "{frame}");
    }
    // Then live, and nothing twice: the next frame is the next offset.
    w.ok("stream::set", set("room", "after", json!("live")))
        .await;
    let live = c.next().await;
    assert_eq!(live["event"], json!({"type": "create", "data": "live"}));
    assert_eq!(offset(&live), offset(&last) + 8);
    assert!(live.get("recovered").is_none(), "{live}");

    // Nothing missed: an empty recovery.
    let mut again = Client::connect(engine.client_addr, "/").await;
    join_from(&mut again, "s", "room", None, &live).await;
    let marker = again.next().await;
    assert_eq!(marker["event"]["data"]["missed"], 0, "{marker}");
    w.ok("stream::send", send("room", 99)).await;
    assert_eq!(offset(&again.next().await), offset(&live) + 1);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_size_is_recovered_exactly_and_one_past_it_gets_a_fresh_sync() {
    let engine = start(with_history(4, 300_000)).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let last = watch(&engine, &w, 1).await;
    miss(&w, 4).await;
    let mut c = Client::connect(engine.client_addr, "/").await;
    join_from(&mut c, "s", "room", None, &last).await;
    let marker = c.next().await;
    assert_eq!(
        marker["event"]["data"]["missed"], 4,
        "exactly size: {marker}"
    );

    let last = watch(&engine, &w, 1).await;
    miss(&w, 5).await;
    let mut c = Client::connect(engine.client_addr, "/").await;
    join_from(&mut c, "s", "room", None, &last).await;
    let sync = c.next().await;
    assert_eq!(sync["event"]["type"], "sync", "size + 1: {sync}");
    assert_eq!(sync["recovered"], false);
    assert_eq!(offset(&sync), offset(&last) + 5, "{sync}");
    assert_eq!(sync["epoch"], last["epoch"]);
    let listed = w
        .ok(
            "stream::list",
            json!({"stream_name": "chat", "group_id": "room"}),
        )
        .await;
    assert_eq!(sync["event"]["data"], listed);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_epoch_or_an_unknown_offset_gets_a_fresh_sync() {
    let engine = start(test_config()).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let last = watch(&engine, &w, 2).await;
    let cases = [
        json!({"offset": last["offset"], "epoch": "not-this-one"}),
        json!({"offset": offset(&last) + 1, "epoch": last["epoch"]}),
    ];
    for from in cases {
        let mut c = Client::connect(engine.client_addr, "/").await;
        join_from(&mut c, "s", "room", None, &from).await;
        let sync = c.next().await;
        assert_eq!(sync["event"]["type"], "sync", "{from}: {sync}");
        assert_eq!(sync["recovered"], false, "{sync}");
        assert_eq!(
            (&sync["offset"], &sync["epoch"]),
            (&last["offset"], &last["epoch"])
        );
    }
    // An engine restarted (here: another in-memory engine) has another epoch.
    let other = start(test_config()).await;
    let ow = RawWorker::connect(other.worker_addr).await;
    let other_last = watch(&other, &ow, 2).await;
    assert_eq!(other_last["offset"], last["offset"]);
    assert_ne!(other_last["epoch"], last["epoch"]);
    engine.shutdown().await.unwrap();
    other.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_without_offset_is_answered_as_before_and_half_a_resume_is_refused() {
    let engine = start(test_config()).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    w.ok("stream::set", set("room", "a", json!(1))).await;
    let mut c = Client::connect(engine.client_addr, "/").await;
    let sync = c.join("s", "chat", "room", None).await;
    assert_eq!(sync["event"], json!({"type": "sync", "data": [1]}));
    assert_eq!(offset(&sync), 1);
    assert!(sync.get("recovered").is_none(), "{sync}");
    w.ok("stream::send", send("room", 2)).await;
    let event = c.next().await;
    assert_eq!(offset(&event), 2);
    let mut fields: Vec<&str> = event
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "epoch",
            "event",
            "groupId",
            "id",
            "offset",
            "streamName",
            "timestamp",
            "type"
        ]
    );

    for half in [json!({"offset": 1}), json!({"epoch": "x"})] {
        let mut data = json!({"subscriptionId": "t", "streamName": "chat", "groupId": "room"});
        data.as_object_mut()
            .unwrap()
            .extend(half.as_object().unwrap().clone());
        c.send_json(json!({"type": "join", "data": data})).await;
        let e = c.next().await;
        assert_eq!(e["type"], "error", "{e}");
        assert_eq!(e["error"]["code"], "invalid_frame");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("both `offset` and `epoch`")
        );
    }
    engine.shutdown().await.unwrap();
}

/// The sync's offset splits events exactly: the snapshot holds everything at or below it,
/// and every later event follows it, while writes race the join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_offset_splits_events_racing_the_join() {
    let engine = start(test_config()).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let writer = RawWorker::connect(engine.worker_addr).await;
    const WRITES: u64 = 300;
    let writing = tokio::spawn(async move {
        for n in 0..WRITES {
            writer
                .ok(
                    "stream::set",
                    set("room", &format!("i{}", n % 20), json!(n)),
                )
                .await;
        }
        writer
    });
    // Clients join while the writes go on, each at another point of them.
    let mut joined = Vec::new();
    while !writing.is_finished() && joined.len() < 20 {
        let mut c = Client::connect(engine.client_addr, "/").await;
        let sync = c.join("s", "chat", "room", None).await;
        joined.push((c, sync));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _writer = writing.await.unwrap();
    let mut listed: Vec<Value> = w
        .ok(
            "stream::list",
            json!({"stream_name": "chat", "group_id": "room"}),
        )
        .await
        .as_array()
        .unwrap()
        .clone();
    listed.sort_by_key(|v| v.as_u64());
    assert!(joined.len() >= 2, "the writes ended before a second join");
    let mut mid_stream = 0;
    for (mut c, sync) in joined {
        let mut state: Vec<Value> = sync["event"]["data"].as_array().unwrap().clone();
        let mut seen = offset(&sync);
        if seen < WRITES {
            mid_stream += 1;
        }
        // Every event after the sync's offset follows it, once and in order.
        while seen < WRITES {
            let frame = c.next().await;
            assert_eq!(
                offset(&frame),
                seen + 1,
                "gap or repeat after sync: {frame}"
            );
            seen += 1;
            let value = frame["event"]["data"].clone();
            let n = value.as_u64().unwrap();
            state.retain(|v| v.as_u64().unwrap() % 20 != n % 20);
            state.push(value);
        }
        state.sort_by_key(|v| v.as_u64());
        assert_eq!(
            state, listed,
            "the snapshot and the events after it end on the store's state"
        );
    }
    assert!(mid_stream >= 1, "no join raced the writes");
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_subscription_recovers_its_own_events_only() {
    let engine = start(test_config()).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let mut c = Client::connect(engine.client_addr, "/").await;
    let sync = c.join("s", "chat", "room", Some("x")).await;
    w.ok("stream::set", set("room", "x", json!(1))).await;
    let last = c.next().await;
    assert_eq!(offset(&last), offset(&sync) + 1);
    drop(c);
    for n in 2..5 {
        w.ok("stream::set", set("room", "y", json!(n))).await;
        w.ok("stream::set", set("room", "x", json!(n))).await;
    }
    let mut c = Client::connect(engine.client_addr, "/").await;
    join_from(&mut c, "s", "room", Some("x"), &last).await;
    let marker = c.next().await;
    assert_eq!(marker["event"]["data"]["missed"], 3, "{marker}");
    assert_eq!(marker["id"], "x");
    for n in 2..5u64 {
        let frame = c.next().await;
        assert_eq!(frame["id"], "x");
        assert_eq!(frame["event"]["data"], n);
        assert_eq!(
            offset(&frame),
            offset(&last) + 2 * (n - 1),
            "gaps are normal"
        );
    }
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_expires_after_its_ttl_and_size_zero_keeps_none() {
    let engine = start(with_history(100, 300)).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let last = watch(&engine, &w, 1).await;
    w.ok("stream::send", send("room", 1)).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut c = Client::connect(engine.client_addr, "/").await;
    join_from(&mut c, "s", "room", None, &last).await;
    let sync = c.next().await;
    assert_eq!(sync["recovered"], false, "the missed event expired: {sync}");
    engine.shutdown().await.unwrap();

    // A tenant turns history off over the engine's default.
    let extra = "- id: gamma\n  history: { size: 0 }\n  clients:\n    keys: [{ kid: k1, alg: HS256, secret: gamma-secret-0123456789abcdef-0123 }]\n";
    let engine = start(two_tenants(extra)).await;
    let gamma = token("gamma", "gamma-secret-0123456789abcdef-0123", &["*"], 300);
    let alpha = token("alpha", SECRET_A, &["*"], 300);
    for (tok, recovers) in [(alpha, true), (gamma, false)] {
        // The first client stays, so the group stays even with nothing written to it.
        let mut first = Client::connect_with_token(engine.client_addr, "/", &tok).await;
        let sync = first.join("s", "chat", "room", None).await;
        let mut c = Client::connect_with_token(engine.client_addr, "/", &tok).await;
        join_from(&mut c, "s", "room", None, &sync).await;
        let answer = c.next().await;
        assert_eq!(answer["recovered"], recovers, "{answer}");
    }
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_bounds_out_of_range_are_refused() {
    let e = Config::parse(
        "workers:\n  - name: iii-stream\n    config: { history: { size: 100001 } }\n",
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("100000"), "{e:#}");
    let e =
        Config::parse("workers:\n  - name: iii-stream\n    config: { history: { ttl_ms: 0 } }\n")
            .unwrap_err();
    assert!(format!("{e:#}").contains("ttl_ms"), "{e:#}");
    let e = Config::parse("workers:\n  - name: iii-stream\n    config: { history: { sise: 1 } }\n")
        .unwrap_err();
    assert!(format!("{e:#}").contains("unknown field `sise`"), "{e:#}");
    let ok = Config::parse(
        "workers:\n  - name: iii-stream\n    config: { history: { size: 100000, ttl_ms: 86400000 } }\n",
    );
    assert!(ok.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_frames_go_only_to_sockets_that_ask() {
    let mut config = test_config();
    config.client_timeouts.ping_interval = Duration::from_millis(100);
    let engine = start(config).await;
    let mut asked = Client::connect(engine.client_addr, "/?heartbeat=1").await;
    let mut plain = Client::connect(engine.client_addr, "/").await;
    for _ in 0..2 {
        let beat = asked.next().await;
        assert_eq!(beat["type"], "heartbeat", "{beat}");
        assert!(beat["timestamp"].as_u64().unwrap() > 1_700_000_000_000);
        assert_eq!(beat.as_object().unwrap().len(), 2);
    }
    // Two intervals and more, then the first frame the plain socket gets is its sync.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sync = plain.join("s", "chat", "room", None).await;
    assert_eq!(sync["event"]["type"], "sync", "{sync}");
    engine.shutdown().await.unwrap();
}
