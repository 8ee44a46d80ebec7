//! One worker connection's calls to one group take effect and reach every subscriber in the
//! order the engine read them (`fanout::sequence`), although each call runs in a task of its
//! own on a runtime of several threads: the worker pipelines thousands of mixed
//! `stream::send` and `stream::set` calls without waiting for any answer, and subscribers
//! check the order of what they receive. The engine runs on the test's runtime, which has
//! two threads.

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::HashMap;
use streamhost::Config;
use streamhost::config::AdapterConfig;

const CALLS: u64 = 6000;
const SUBSCRIBERS: usize = 3;
/// Items the sets spread over: writes to different items of the group are in line too.
const ITEMS: u64 = 16;

/// The call for sequence number `seq`: two sends for each set.
fn frame(seq: u64) -> Value {
    let (function_id, data) = if seq % 3 == 2 {
        let item = format!("i{}", seq % ITEMS);
        let data =
            json!({"stream_name": "s", "group_id": "g", "item_id": item, "data": {"seq": seq}});
        ("stream::set", data)
    } else {
        let data =
            json!({"stream_name": "s", "group_id": "g", "type": "tick", "data": {"seq": seq}});
        ("stream::send", data)
    };
    json!({"type": "invokefunction", "invocation_id": format!("c{seq}"), "function_id": function_id, "data": data})
}

/// What the subscribers and the store saw.
struct Seen {
    /// Per subscriber: events that arrived after an event of a later call.
    late: Vec<u64>,
    /// Items whose stored value is not the one the worker wrote last.
    stale_items: u64,
}

/// Runs the pipelined calls against `config`'s engine.
async fn run(config: Config) -> Seen {
    let engine = start(config).await;
    let mut readers = Vec::new();
    for n in 0..SUBSCRIBERS {
        let mut c = Client::connect(engine.client_addr, "/").await;
        let sync = c.join(&format!("sub-{n}"), "s", "g", None).await;
        assert_eq!(sync["event"]["type"], "sync", "{sync}");
        // Read as the events come, so no queue's size decides anything here.
        readers.push(tokio::spawn(async move {
            let (mut latest, mut late) = (None::<u64>, 0);
            for _ in 0..CALLS {
                let frame = c.next().await;
                // A set's event carries the value, a send's its own event.
                let event = &frame["event"];
                let seq = (event["data"]["seq"].as_u64())
                    .or(event["event"]["data"]["seq"].as_u64())
                    .unwrap_or_else(|| panic!("an event of this test: {frame}"));
                match latest {
                    Some(l) if seq < l => late += 1,
                    _ => latest = Some(seq),
                }
            }
            late
        }));
    }
    let mut w = RawWorker::connect(engine.worker_addr).await;
    for seq in 0..CALLS {
        w.send_json(frame(seq));
    }

    // Every call is answered, and succeeds.
    let mut answered = 0;
    while answered < CALLS {
        let reply = tokio::time::timeout(WAIT, w.frames.recv())
            .await
            .expect("answers keep coming")
            .expect("the worker socket stays open");
        if reply["type"] != "invocationresult" {
            continue;
        }
        assert!(reply["error"].is_null(), "a call failed: {reply}");
        answered += 1;
    }
    let mut late = Vec::new();
    for r in readers {
        late.push(r.await.unwrap());
    }

    // What the worker wrote last to each item is what the item holds.
    let mut stale_items = 0;
    for item in 0..ITEMS {
        let last = (0..CALLS)
            .rev()
            .find(|seq| seq % 3 == 2 && seq % ITEMS == item);
        let Some(last) = last else { continue };
        let stored = w
            .ok(
                "stream::get",
                json!({"stream_name": "s", "group_id": "g", "item_id": format!("i{item}")}),
            )
            .await;
        if stored["seq"] != last {
            stale_items += 1;
        }
    }
    engine.shutdown().await.unwrap();
    Seen { late, stale_items }
}

fn assert_in_order(seen: Seen) {
    let total: u64 = seen.late.iter().sum();
    let by_subscriber: HashMap<usize, u64> = seen.late.into_iter().enumerate().collect();
    assert_eq!(
        (total, seen.stale_items),
        (0, 0),
        "events reached subscribers out of the order the worker sent them (late events per subscriber: {by_subscriber:?}), or items hold an earlier write ({} of {ITEMS})",
        seen.stale_items
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_durable_writes_and_sends_to_a_group_arrive_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    config.adapter = AdapterConfig::KvFile {
        path: dir.path().join("store"),
    };
    assert_in_order(run(config).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_in_memory_writes_and_sends_to_a_group_arrive_in_order() {
    assert_in_order(run(test_config()).await);
}

/// Several connections pipelining durable writes to one item: each write waits for the
/// item's earlier writes to emit, and those may need a tenant turn after their sync, so the
/// waiting ones must not hold the turns (`Order::ready` waits idle). The tenant has fewer
/// turns than connections, so held turns would run out. All calls are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_durable_writes_from_several_connections_to_one_item_all_finish() {
    const WORKERS: u64 = 4;
    const EACH: u64 = 1500;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    config.calls_in_flight_per_tenant = 2;
    config.adapter = AdapterConfig::KvFile {
        path: dir.path().join("store"),
    };
    let engine = start(config).await;
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        workers.push(RawWorker::connect(engine.worker_addr).await);
    }
    for seq in 0..EACH {
        for (n, w) in workers.iter().enumerate() {
            let data = json!({"stream_name": "s", "group_id": "g", "item_id": "x", "data": {"worker": n, "seq": seq}});
            w.send_json(json!({"type": "invokefunction", "invocation_id": format!("c{seq}"), "function_id": "stream::set", "data": data}));
        }
    }
    for w in &mut workers {
        let mut answered = 0;
        while answered < EACH {
            let reply = tokio::time::timeout(WAIT, w.frames.recv())
                .await
                .expect("answers keep coming")
                .expect("the worker socket stays open");
            if reply["type"] == "invocationresult" {
                assert!(reply["error"].is_null(), "a call failed: {reply}");
                answered += 1;
            }
        }
    }
    let stored = workers[0]
        .ok(
            "stream::get",
            json!({"stream_name": "s", "group_id": "g", "item_id": "x"}),
        )
        .await;
    assert_eq!(
        stored["seq"],
        EACH - 1,
        "the item holds a last write: {stored}"
    );
    engine.shutdown().await.unwrap();
}
