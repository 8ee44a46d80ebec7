//! Fair turns (`streamhost::fair`) through real sockets: a tenant runs at most
//! `calls_in_flight_per_tenant` calls at once, and a call waiting on a worker holds no turn,
//! so calls that call back into their own tenant never wait on each other.

mod common;

use common::tenants::*;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_call_waiting_on_a_worker_holds_no_turn() {
    // One turn: without giving it back while waiting on a worker, the nested write below
    // could never run, and the outer call would end in `timeout` after 5 s.
    let mut config = two_tenants("");
    config.calls_in_flight_per_tenant = 1;
    config.invocation_timeout = Duration::from_secs(5);
    let engine = start(config).await;
    let addr = engine.worker_addr;

    // alpha's `app::nested` writes through another alpha worker before it answers.
    let nested = RawWorker::connect_with_key(addr, KEY_A).await;
    let server = RawWorker::connect_with_key(addr, KEY_A).await;
    let runtime = tokio::runtime::Handle::current();
    let nested = std::sync::Arc::new(nested);
    let writer = nested.clone();
    server
        .register("app::nested", move |data| {
            let writer = writer.clone();
            let item = json!({"stream_name": "s", "group_id": "g", "item_id": "i", "data": data});
            runtime.block_on(async move { writer.call("stream::set", item).await.map(|_| None) })
        })
        .await;

    let caller = RawWorker::connect_with_key(addr, KEY_A).await;
    let started = Instant::now();
    let answer = caller.call("app::nested", json!({"n": 1})).await;
    assert_eq!(answer, Ok(None), "the nested write got a turn");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let stored = caller
        .ok(
            "stream::get",
            json!({"stream_name": "s", "group_id": "g", "item_id": "i"}),
        )
        .await;
    assert_eq!(stored, json!({"n": 1}));

    // Many at once through the one turn: each completes, none times out.
    let calls = (0..20).map(|n| caller.call("app::nested", json!({"n": n})));
    for answer in futures_util::future::join_all(calls).await {
        assert_eq!(answer, Ok(None));
    }
    engine.shutdown().await.unwrap();
}

#[test]
fn the_width_is_read_from_the_worker_module() {
    let yaml =
        "workers:\n  - name: iii-worker-manager\n    config: { calls_in_flight_per_tenant: 8 }\n";
    let config = streamhost::Config::parse(yaml).unwrap();
    assert_eq!(config.calls_in_flight_per_tenant, 8);
    assert_eq!(
        streamhost::Config::default().calls_in_flight_per_tenant,
        streamhost::fair::DEFAULT_WIDTH
    );
}

#[tokio::test]
async fn a_client_that_does_not_read_holds_no_fanout_turn() {
    // One fan-out turn for the tenant: were it held while a write waits on a peer that reads
    // nothing, every other socket of the tenant would wait as long (up to the idle timeout).
    let mut config = test_config();
    config.fanout_in_flight_per_tenant = 1;
    config.send_queue_bytes = 256 << 20; // the stuck client is not closed as slow meanwhile
    config.send_queue_frames = 1 << 20;
    let h = start(config).await;
    let mut stuck = Client::connect(h.client_addr, "/").await;
    stuck.join("s", "chat", "big", None).await;
    let mut reader = Client::connect(h.client_addr, "/").await;
    reader.join("s", "chat", "big", None).await;
    let worker = RawWorker::connect(h.worker_addr).await;
    // 16 MB: well past what the kernel buffers for the stuck socket, so its write waits.
    let value = "x".repeat(32 << 10);
    for i in 0..512 {
        let data = json!({"stream_name": "chat", "group_id": "big", "item_id": format!("i{i}"), "data": value});
        worker.ok("stream::set", data).await;
        let event = tokio::time::timeout(Duration::from_secs(10), reader.next())
            .await
            .unwrap_or_else(|_| panic!("event {i} never reached the reading client"));
        assert_eq!(event["id"], format!("i{i}"));
    }
    h.shutdown().await.unwrap();
}

#[test]
fn the_fanout_width_is_read_from_the_stream_module() {
    let yaml = "workers:\n  - name: iii-stream\n    config: { fanout_in_flight_per_tenant: 16 }\n";
    let config = streamhost::Config::parse(yaml).unwrap();
    assert_eq!(config.fanout_in_flight_per_tenant, 16);
    assert_eq!(
        streamhost::Config::default().fanout_in_flight_per_tenant,
        streamhost::fair::DEFAULT_FANOUT_WIDTH
    );
}
