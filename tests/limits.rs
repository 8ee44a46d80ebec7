//! The value limits (depth, size, ops per update) through real worker sockets, on the
//! in-memory store and the durable file store, and what the stores read back: a store must
//! read back everything it accepts, even at the highest depth the config allows. The same
//! scenario runs against Redis in tests/redis.rs.

mod common;
#[path = "common/limits_helpers.rs"]
mod limits_helpers;

use common::*;
use limits_helpers::{nested, value_limits};
use serde_json::{Value, json};
use streamhost::config::{AdapterConfig, CustomStreamConfig};
use streamhost::limits::{MAX_DEPTH_SETTING, measure};
use streamhost::storage::wasm::Limits;

fn durable(dir: &std::path::Path) -> streamhost::Config {
    let mut config = test_config();
    config.adapter = AdapterConfig::KvFile {
        path: dir.join("store"),
    };
    config
}

fn item(stream: &str, id: &str) -> Value {
    json!({"stream_name": stream, "group_id": "g", "item_id": id})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_on_the_memory_store() {
    let engine = start(test_config()).await;
    value_limits(engine.worker_addr, engine.client_addr, "mem").await;
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_durable_store_reads_back_everything_it_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let engine = start(durable(dir.path())).await;
    let stored = value_limits(engine.worker_addr, engine.client_addr, "file").await;
    engine.shutdown().await.unwrap();

    // The log replays after a restart: every accepted value, at the limits, comes back.
    let engine = start(durable(dir.path())).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    for (id, value) in &stored {
        assert_eq!(&w.ok("stream::get", item("file", id)).await, value, "{id}");
    }
    let list = w
        .ok(
            "stream::list",
            json!({"stream_name": "file", "group_id": "g"}),
        )
        .await;
    assert_eq!(list.as_array().unwrap().len(), stored.len());
    engine.shutdown().await.unwrap();
}

/// At the highest depth the config allows, a value still parses everywhere it goes: in the
/// log after a restart, in a client's frames and in a trigger's call to a worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_depth_ceiling_stays_readable_in_the_log_frames_and_triggers() {
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut c = durable(dir.path());
        c.value_limits.max_value_depth = MAX_DEPTH_SETTING;
        c
    };
    let deepest = nested(MAX_DEPTH_SETTING);
    let engine = start(config()).await;
    let mut w = RawWorker::connect(engine.worker_addr).await;
    w.register("on_change", |_| Ok(None)).await;
    w.register_trigger("t", "stream", "on_change", json!({"stream_name": "top"}))
        .await;
    let mut client = Client::connect(engine.client_addr, "/stream/top/g").await;
    client.next().await;

    let mut set = item("top", "deep");
    set["data"] = deepest.clone();
    w.ok("stream::set", set.clone()).await;
    set["data"] = nested(MAX_DEPTH_SETTING + 1);
    let e = w.call("stream::set", set).await.unwrap_err();
    assert_eq!(e["code"], "value_too_deep");

    // Both the test client and the raw worker parse frames with serde_json (127 levels).
    let frame = client.next().await;
    assert_eq!(frame["event"]["data"], deepest);
    let call = loop {
        let f = w.frames.recv().await.expect("the trigger's call");
        if f["type"] == "invokefunction" && f["function_id"] == "on_change" {
            break f;
        }
    };
    assert_eq!(call["data"]["event"]["data"], deepest);
    let mut joined = Client::connect(engine.client_addr, "/stream/top/g").await;
    assert_eq!(
        joined.next().await["event"]["data"],
        json!([deepest.clone()])
    );
    engine.shutdown().await.unwrap();

    let engine = start(config()).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    assert_eq!(w.ok("stream::get", item("top", "deep")).await, deepest);
    engine.shutdown().await.unwrap();
}

/// What a WebAssembly adapter returns is held to the limits too. Here the engine's depth
/// limit was lowered after the adapter's items were written: its reads are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_a_webassembly_adapter_returns_are_held_to_the_limits() {
    let dir = tempfile::tempdir().unwrap();
    let config = |depth: usize| {
        let mut c = durable(dir.path());
        c.value_limits.max_value_depth = depth;
        c.custom_streams.push(CustomStreamConfig {
            stream_name: "wasm".into(),
            component: adapters_dir().join("template.wasm"),
            config: json!({}),
            limits: Limits::default(),
        });
        c
    };
    let engine = start(config(64)).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let mut set = item("wasm", "x");
    set["data"] = nested(40);
    w.ok("stream::set", set).await;
    engine.shutdown().await.unwrap();

    let engine = start(config(32)).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let e = w.call("stream::get", item("wasm", "x")).await.unwrap_err();
    assert_eq!(e["code"], "value_too_deep", "{e}");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("from the adapter of stream \"wasm\" nests 40 levels"),
        "{message}"
    );
    let e = w
        .call(
            "stream::list",
            json!({"stream_name": "wasm", "group_id": "g"}),
        )
        .await
        .unwrap_err();
    assert_eq!(e["code"], "value_too_deep", "{e}");
    // Within the lowered limit, the adapter serves as before.
    let mut set = item("wasm", "y");
    set["data"] = nested(32);
    w.ok("stream::set", set).await;
    let got = w.ok("stream::get", item("wasm", "y")).await;
    assert_eq!(measure(&got).0, 32);
    engine.shutdown().await.unwrap();
}
