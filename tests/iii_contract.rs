//! Issue 9, the iii contract: update paths as iii applies them (dots are never separators),
//! on the built-in store and on a worker's stream (createStream, updated by get and set), and
//! `stream::send` with the `event_type` spelling of the iii skill. The same path scenario runs
//! against Redis in tests/redis.rs.

mod common;
#[path = "common/limits_helpers.rs"]
mod limits_helpers;

use common::*;
use limits_helpers::update_paths;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_paths_follow_iii_on_the_store() {
    let engine = start(test_config()).await;
    update_paths(engine.worker_addr, engine.client_addr, "paths").await;
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_paths_follow_iii_on_a_worker_stream() {
    let engine = start(test_config()).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let items: Arc<Mutex<HashMap<String, Value>>> = Arc::default();
    let store = items.clone();
    w.register("stream::get(custom)", move |p| {
        Ok(store
            .lock()
            .unwrap()
            .get(p["item_id"].as_str().unwrap())
            .cloned())
    })
    .await;
    let store = items.clone();
    w.register("stream::set(custom)", move |p| {
        let id = p["item_id"].as_str().unwrap().to_owned();
        let old = store.lock().unwrap().insert(id, p["data"].clone());
        Ok(Some(json!({"old_value": old, "new_value": p["data"]})))
    })
    .await;
    update_paths(engine.worker_addr, engine.client_addr, "custom").await;
    // The engine applied the ops and wrote the results through the worker's set.
    assert_eq!(items.lock().unwrap()["greeting"], Value::Null);
    assert_eq!(items.lock().unwrap()["list"], json!([{"k": 1}]));
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_takes_event_type_as_the_skill_writes_it() {
    let engine = start(test_config()).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let mut client = Client::connect(engine.client_addr, "/stream/chat/room").await;
    client.next().await;
    for spelling in ["type", "event_type"] {
        let mut p = json!({"stream_name": "chat", "group_id": "room", "data": {"by": spelling}});
        p[spelling] = json!("typing");
        assert_eq!(w.ok("stream::send", p).await, Value::Null);
        let frame = client.next().await;
        assert_eq!(
            frame["event"],
            json!({"type": "event", "event": {"type": "typing", "data": {"by": spelling}}})
        );
    }
    // Neither spelling: the error names the field.
    let e = w
        .call(
            "stream::send",
            json!({"stream_name": "chat", "group_id": "room", "data": 1}),
        )
        .await
        .unwrap_err();
    assert_eq!(e["code"], "deserialization_error");
    assert!(e["message"].as_str().unwrap().contains("type"), "{e}");
    engine.shutdown().await.unwrap();
}
