//! The function-level behaviour every storage adapter must show, run against an engine
//! whatever its adapter: results in the iii shapes, insertion order, group listing, update
//! ops, and no lost increments under concurrency.

use super::{Client, RawWorker};
use serde_json::{Value, json};
use std::net::SocketAddr;
use streamhost::ServerHandle;

pub fn at(stream: &str, group: &str, item: &str) -> Value {
    json!({"stream_name": stream, "group_id": group, "item_id": item})
}

pub fn with(stream: &str, group: &str, item: &str, data: Value) -> Value {
    json!({"stream_name": stream, "group_id": group, "item_id": item, "data": data})
}

/// Runs every check through workers on `worker_addr`; the engine's store must start empty.
pub async fn stream_functions(worker_addr: SocketAddr) {
    let w = RawWorker::connect(worker_addr).await;
    assert_eq!(
        w.ok("stream::set", with("chat", "room", "a", json!({"n": 1})))
            .await,
        json!({"old_value": null, "new_value": {"n": 1}})
    );
    assert_eq!(
        w.ok("stream::set", with("chat", "room", "b", json!("two")))
            .await,
        json!({"old_value": null, "new_value": "two"})
    );
    assert_eq!(
        w.ok("stream::set", with("chat", "room", "c", json!([3])))
            .await,
        json!({"old_value": null, "new_value": [3]})
    );
    assert_eq!(
        w.ok("stream::set", with("chat", "room", "a", json!({"n": 2})))
            .await,
        json!({"old_value": {"n": 1}, "new_value": {"n": 2}})
    );
    assert_eq!(
        w.ok("stream::get", at("chat", "room", "a")).await,
        json!({"n": 2})
    );
    // A missing item gives no result at all: the SDKs see undefined / None.
    let raw = w.call_raw("stream::get", at("chat", "room", "nope")).await;
    assert!(
        raw.get("result").is_none() && raw.get("error").is_none(),
        "{raw}"
    );

    // Insertion order survives overwrites, and a re-created item goes last.
    assert_eq!(
        w.ok(
            "stream::list",
            json!({"stream_name": "chat", "group_id": "room"})
        )
        .await,
        json!([{"n": 2}, "two", [3]])
    );
    w.ok("stream::delete", at("chat", "room", "b")).await;
    w.ok("stream::set", with("chat", "room", "b", json!("again")))
        .await;
    assert_eq!(
        w.ok(
            "stream::list",
            json!({"stream_name": "chat", "group_id": "room"})
        )
        .await,
        json!([{"n": 2}, [3], "again"])
    );
    assert_eq!(
        w.ok(
            "stream::list",
            json!({"stream_name": "chat", "group_id": "empty"})
        )
        .await,
        json!([])
    );

    w.ok("stream::set", with("chat", "lobby", "x", json!(1)))
        .await;
    w.ok("stream::set", with("news", "g", "x", json!(1))).await;
    w.ok("stream::set", with("weird*[name]", "g?", "x", json!(1)))
        .await;
    assert_eq!(
        w.ok("stream::list_groups", json!({"stream_name": "chat"}))
            .await,
        json!(["lobby", "room"])
    );
    assert_eq!(
        w.ok(
            "stream::list_groups",
            json!({"stream_name": "weird*[name]"})
        )
        .await,
        json!(["g?"])
    );
    assert_eq!(
        w.ok("stream::list_groups", json!({"stream_name": "none"}))
            .await,
        json!([])
    );
    assert_eq!(
        w.ok("stream::list_all", json!({})).await,
        json!({"stream": [{"id": "chat", "groups": ["lobby", "room"]}, {"id": "news", "groups": ["g"]}, {"id": "weird*[name]", "groups": ["g?"]}], "count": 3})
    );

    assert_eq!(
        w.ok("stream::delete", at("chat", "room", "a")).await,
        json!({"old_value": {"n": 2}})
    );
    assert_eq!(
        w.ok("stream::delete", at("chat", "room", "a")).await,
        json!({"old_value": null})
    );
    assert_eq!(
        w.ok(
            "stream::send",
            json!({"stream_name": "chat", "group_id": "room", "type": "typing", "data": {}})
        )
        .await,
        Value::Null
    );
    // The group's last item takes the group with it.
    w.ok("stream::delete", at("chat", "lobby", "x")).await;
    assert_eq!(
        w.ok("stream::list_groups", json!({"stream_name": "chat"}))
            .await,
        json!(["room"])
    );

    // update: ops in order, failures reported and skipped.
    let update =
        |ops: Value| json!({"stream_name": "s", "group_id": "g", "item_id": "counter", "ops": ops});
    let r = w.ok("stream::update", update(json!([{"type": "set", "path": "name", "value": "c"}, {"type": "increment", "path": "n", "by": 1}]))).await;
    assert_eq!(
        r,
        json!({"old_value": null, "new_value": {"name": "c", "n": 1}})
    );
    let r = w.ok("stream::update", update(json!([{"type": "append", "path": "name", "value": 5}, {"type": "decrement", "path": "n", "by": 3}]))).await;
    assert_eq!(r["old_value"], json!({"name": "c", "n": 1}));
    assert_eq!(r["new_value"], json!({"name": "c", "n": -2}));
    assert_eq!(r["errors"][0]["op_index"], 0);
    assert_eq!(r["errors"][0]["code"], "append.type_mismatch");

    // 200 concurrent increments from 4 workers: none lost.
    let mut workers = Vec::new();
    for _ in 0..4 {
        workers.push(RawWorker::connect(worker_addr).await);
    }
    let calls = workers.iter().flat_map(|w| {
        (0..50).map(move |_| {
            w.call(
                "stream::update",
                update(json!([{"type": "increment", "path": "n", "by": 1}])),
            )
        })
    });
    for r in futures_util::future::join_all(calls).await {
        r.unwrap();
    }
    assert_eq!(w.ok("stream::get", at("s", "g", "counter")).await["n"], 198);
}

/// Concurrent writes to one item each wait for their own durability and may finish in any
/// order; a client must still end on the value the store kept, round after round.
pub async fn one_item_event_order(engine: &ServerHandle, stream: &str) {
    const WRITERS: u64 = 16;
    let mut client = Client::connect(engine.client_addr, &format!("/stream/{stream}/g/x")).await;
    client.next().await;
    for round in 0..150u64 {
        let writes: Vec<_> = (0..WRITERS)
            .map(|w| {
                let engine = engine.engine.clone();
                let data = with(stream, "g", "x", json!({"round": round, "writer": w}));
                tokio::spawn(async move { engine.call("stream::set", data).await.unwrap() })
            })
            .collect();
        for w in writes {
            w.await.unwrap();
        }
        let stored = engine
            .engine
            .call("stream::get", at(stream, "g", "x"))
            .await
            .unwrap()
            .unwrap()
            .to_value();
        let mut last = Value::Null;
        for _ in 0..WRITERS {
            let event = client.next().await;
            assert_eq!(event["event"]["data"]["round"], round, "{event}");
            last = event["event"]["data"].clone();
        }
        assert_eq!(
            last, stored,
            "{stream}, round {round}: the last event a client saw is not the stored value"
        );
    }
}
