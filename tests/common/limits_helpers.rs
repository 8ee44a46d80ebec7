//! Scenarios shared by every store: the value limits at the boundary and one past it, and
//! iii's update paths. Included with `#[path]` by tests/limits.rs, tests/update_paths.rs and
//! tests/redis.rs, so that each store is held to the same rules.
#![allow(dead_code)]

use crate::common::{Client, RawWorker};
use serde_json::{Value, json};
use std::net::SocketAddr;
use streamhost::limits::{ValueLimits, measure};

/// A value with exactly `depth` nested arrays and objects.
pub fn nested(depth: usize) -> Value {
    let mut v = json!("leaf");
    for i in 0..depth {
        v = if i % 2 == 0 {
            json!([v])
        } else {
            json!({"k": v})
        };
    }
    v
}

/// `{"t":"xx..."}` of exactly `bytes` bytes as compact JSON.
pub fn sized(bytes: usize) -> Value {
    json!({"t": "x".repeat(bytes - 8)})
}

/// Answers `Err(error)` for a call that must be refused, with the code it must carry.
async fn refused(w: &RawWorker, function: &str, data: Value, code: &str) -> String {
    let e = w
        .call(function, data)
        .await
        .expect_err("a value past a limit is refused");
    assert_eq!(e["code"], code, "{e}");
    e["message"].as_str().unwrap().to_owned()
}

/// Every limit at the default, at the boundary and one past it, through a real worker socket
/// and with a subscribed client watching. Returns the items it stored, for the caller to
/// read back (after a restart, or straight from Redis).
pub async fn value_limits(
    worker: SocketAddr,
    client: SocketAddr,
    stream: &str,
) -> Vec<(String, Value)> {
    let limits = ValueLimits::default();
    let (depth, bytes, ops) = (
        limits.max_value_depth,
        limits.max_item_bytes,
        limits.max_update_ops,
    );
    let w = RawWorker::connect(worker).await;
    let mut c = Client::connect(client, &format!("/stream/{stream}/g")).await;
    assert_eq!(c.next().await["event"]["type"], "sync");
    let item = |id: &str| json!({"stream_name": stream, "group_id": "g", "item_id": id});
    let with = |id: &str, key: &str, v: Value| {
        let mut p = item(id);
        p[key] = v;
        p
    };
    let send = |v: Value| json!({"stream_name": stream, "group_id": "g", "type": "e", "data": v});
    let mut stored = Vec::new();

    // stream::set
    w.ok("stream::set", with("deep", "data", nested(depth)))
        .await;
    stored.push(("deep".to_owned(), nested(depth)));
    let m = refused(
        &w,
        "stream::set",
        with("deeper", "data", nested(depth + 1)),
        "value_too_deep",
    )
    .await;
    assert!(
        m.contains(&format!("nests {} levels", depth + 1))
            && m.contains(&format!("limit is {depth} (max_value_depth)")),
        "{m}"
    );
    w.ok("stream::set", with("big", "data", sized(bytes))).await;
    stored.push(("big".to_owned(), sized(bytes)));
    let m = refused(
        &w,
        "stream::set",
        with("bigger", "data", sized(bytes + 1)),
        "item_too_large",
    )
    .await;
    assert!(
        m.contains(&format!("{} bytes", bytes + 1)) && m.contains("max_item_bytes"),
        "{m}"
    );

    // stream::send
    w.ok("stream::send", send(nested(depth))).await;
    refused(
        &w,
        "stream::send",
        send(nested(depth + 1)),
        "value_too_deep",
    )
    .await;
    w.ok("stream::send", send(sized(bytes))).await;
    refused(&w, "stream::send", send(sized(bytes + 1)), "item_too_large").await;

    // stream::update: the op count.
    let incs = |n: usize| Value::Array(vec![json!({"type": "increment", "path": "n", "by": 1}); n]);
    w.ok("stream::update", with("count", "ops", incs(ops)))
        .await;
    stored.push(("count".to_owned(), json!({"n": ops})));
    let m = refused(
        &w,
        "stream::update",
        with("count", "ops", incs(ops + 1)),
        "too_many_ops",
    )
    .await;
    assert!(
        m.contains(&format!("{} ops; the limit is {ops}", ops + 1)),
        "{m}"
    );

    // stream::update: the depth of the result. {"a": nested(d - 2)} is d - 1 deep.
    let set_key = |k: &str, v: Value| json!([{"type": "set", "path": k, "value": v}]);
    w.ok(
        "stream::set",
        with("u", "data", json!({"a": nested(depth - 2)})),
    )
    .await;
    w.ok(
        "stream::update",
        with("u", "ops", set_key("b", nested(depth - 1))),
    )
    .await;
    let m = refused(
        &w,
        "stream::update",
        with("u", "ops", set_key("c", nested(depth))),
        "value_too_deep",
    )
    .await;
    assert!(
        m.starts_with(&format!("the result of the update nests {}", depth + 1)),
        "{m}"
    );
    stored.push((
        "u".to_owned(),
        json!({"a": nested(depth - 2), "b": nested(depth - 1)}),
    ));

    // stream::update: the size of the result, reached by appends that each fit.
    let append = |s: &str| json!([{"type": "append", "path": "t", "value": s}]);
    w.ok("stream::set", with("s", "data", sized(bytes - 10)))
        .await;
    w.ok("stream::update", with("s", "ops", append(&"x".repeat(10))))
        .await;
    refused(
        &w,
        "stream::update",
        with("s", "ops", append("x")),
        "item_too_large",
    )
    .await;
    stored.push(("s".to_owned(), sized(bytes)));

    // Nothing refused was stored...
    for id in ["deeper", "bigger"] {
        assert_eq!(w.call("stream::get", item(id)).await.unwrap(), None, "{id}");
    }
    for (id, v) in &stored {
        assert_eq!(&w.ok("stream::get", item(id)).await, v, "{id}");
    }
    // ...or emitted: the client got exactly the accepted writes, in order, then the marker.
    w.ok(
        "stream::send",
        json!({"stream_name": stream, "group_id": "g", "type": "end", "data": null}),
    )
    .await;
    let mut seen = Vec::new();
    loop {
        let f = c.next().await;
        let event = &f["event"];
        if event["type"] == "event" {
            if event["event"]["type"] == "end" {
                break;
            }
            let (d, b) = measure(&event["event"]["data"]);
            seen.push(format!("event {d} levels {b} bytes"));
        } else {
            seen.push(format!(
                "{} {}",
                event["type"].as_str().unwrap(),
                f["id"].as_str().unwrap()
            ));
        }
    }
    assert_eq!(
        seen,
        [
            "create deep",
            "create big",
            &format!("event {depth} levels {} bytes", measure(&nested(depth)).1),
            &format!("event 1 levels {bytes} bytes"),
            "create count",
            "create u",
            "update u",
            "create s",
            "update s"
        ]
    );
    stored
}

/// iii's update paths end to end (spec section 4), each rule once, with a client watching.
pub async fn update_paths(worker: SocketAddr, client: SocketAddr, stream: &str) {
    let w = RawWorker::connect(worker).await;
    let mut c = Client::connect(client, &format!("/stream/{stream}/p")).await;
    assert_eq!(c.next().await["event"]["type"], "sync");
    let update = |id: &str, ops: Value| json!({"stream_name": stream, "group_id": "p", "item_id": id, "ops": ops});
    let r = w
        .ok(
            "stream::update",
            update(
                "doc",
                json!([
                    {"type": "set", "path": "a.b", "value": 1},
                    {"type": "merge", "path": ["m", "n.o"], "value": {"x": 1}},
                    {"type": "append", "path": ["x", "y"], "value": "s"},
                    {"type": "append", "path": "log", "value": "t"},
                    {"type": "increment", "path": "c.d", "by": 2},
                    {"type": "set", "path": ["a", "b"], "value": 2},
                    {"type": "remove", "path": "a"},
                    {"type": "merge", "path": ["k", "", "z"], "value": {}},
                    {"type": "set", "path": "k".repeat(257), "value": 1}
                ]),
            ),
        )
        .await;
    let doc = json!({"a.b": 1, "m": {"n.o": {"x": 1}}, "x": {"y": ["s"]}, "log": "t", "c.d": 2});
    assert_eq!((&r["old_value"], &r["new_value"]), (&Value::Null, &doc));
    let codes: Vec<(u64, &str)> = r["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["op_index"].as_u64().unwrap(), e["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        codes,
        [
            (5, "set.invalid"),
            (7, "merge.path.empty_segment"),
            (8, "set.path.segment_too_long")
        ]
    );

    // At the root of a missing item an append makes the value the item; remove "" clears it.
    let root = |id: &str, op: Value| w.ok("stream::update", update(id, json!([op])));
    let r = root("greeting", json!({"type": "append", "value": "hello"})).await;
    assert_eq!(r["new_value"], "hello");
    let r = root(
        "greeting",
        json!({"type": "append", "path": "", "value": " world"}),
    )
    .await;
    assert_eq!(r["new_value"], "hello world");
    let r = root("list", json!({"type": "append", "value": {"k": 1}})).await;
    assert_eq!(r["new_value"], json!([{"k": 1}]));
    let r = root("greeting", json!({"type": "remove", "path": ""})).await;
    assert_eq!(
        (&r["old_value"], &r["new_value"]),
        (&json!("hello world"), &Value::Null)
    );

    let got = |id: &str| {
        w.call(
            "stream::get",
            json!({"stream_name": stream, "group_id": "p", "item_id": id}),
        )
    };
    assert_eq!(got("doc").await.unwrap(), Some(doc.clone()));
    assert_eq!(got("list").await.unwrap(), Some(json!([{"k": 1}])));
    // The client saw each stored result, in order.
    let mut seen = Vec::new();
    for _ in 0..5 {
        let f = c.next().await;
        seen.push((
            f["id"].clone(),
            f["event"]["type"].clone(),
            f["event"]["data"].clone(),
        ));
    }
    let frame = |id: &str, kind: &str, data: Value| (json!(id), json!(kind), data);
    assert_eq!(
        seen,
        [
            frame("doc", "create", doc),
            frame("greeting", "create", json!("hello")),
            frame("greeting", "update", json!("hello world")),
            frame("list", "create", json!([{"k": 1}])),
            frame("greeting", "update", Value::Null)
        ]
    );
}
