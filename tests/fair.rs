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
