//! Hostile WebAssembly adapters (`adapters/hostile`) against the limits on what they may
//! ask for and move (issue 12, part 4): limits past the tenant's ceilings, floods of `store`
//! writes and log lines, and output past `max_payload_bytes` at every crossing. Each limit
//! is shown at its boundary and one past it, with the refusal's code and message. The limits
//! on adapters' time are in `wasm_abuse.rs`.

mod common;

use common::hostile::*;
use common::*;
use serde_json::json;
use std::time::Duration;

/// What a caller asks of `create_stream` is refused past the tenant's ceilings (the default
/// tenant's are `AdapterCeilings::HIGHEST`), with the ceiling named; at the ceiling it binds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asked_limits_are_capped_by_the_ceilings() {
    let engine = start(test_config()).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let over = [
        (json!({"memory_mb": 16384}), "memory"),
        (json!({"memory_mb": 4097}), "memory"),
        (json!({"timeout_ms": 3_600_000}), "timeout"),
        (json!({"timeout_ms": 600_001}), "timeout"),
        (
            json!({"max_payload_bytes": 1u64 << 40}),
            "max_payload_bytes",
        ),
        (
            json!({"max_payload_bytes": (64 << 20) + 1}),
            "max_payload_bytes",
        ),
    ];
    for (limits, what) in over {
        let e = bind(&w, "big", json!({}), limits.clone())
            .await
            .unwrap_err();
        assert_eq!(code(&e), "limits_over_ceiling", "{limits}: {e}");
        assert!(message(&e).contains(what), "{e}");
        assert!(message(&e).contains("adapter_ceilings"), "{e}");
    }
    let at = json!({"memory_mb": 4096, "timeout_ms": 600_000, "max_payload_bytes": 64 << 20});
    bind(&w, "big", json!({}), at)
        .await
        .expect("at the ceilings");
    engine.shutdown().await.unwrap();
}

/// `store` writes through the import: at most 1,000 and 8 MiB per call, 64 MiB added per
/// stream; a call past them fails with `quota_exceeded`, having written no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_writes_are_capped_per_call_and_per_stream() {
    let engine = start(test_config()).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    bind(
        &w,
        "flood",
        json!({}),
        json!({"timeout_ms": 5000, "memory_mb": 64}),
    )
    .await
    .unwrap();
    // Counted in the engine's own store: listing through the adapter is itself capped.
    let store = engine.engine.default_space().store().clone();
    let ids = async |group: &str| store.list_ids("flood", group).await.unwrap().len();
    // 999 writes and the item itself: 1,000, the cap.
    w.ok("stream::set", set("flood", "a", "flood:999:10", json!(1)))
        .await;
    assert_eq!(ids("a").await, 1000);
    let e = w
        .call("stream::set", set("flood", "b", "flood:1000:10", json!(1)))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "quota_exceeded", "{e}");
    assert!(
        message(&e).contains("more than 1000 store writes in one call"),
        "{e}"
    );
    assert_eq!(ids("b").await, 1000, "the 1,001st write was refused");

    // Bytes per call: 83 x 100 kB is under 8 MiB; 84 x 100 kB is over.
    w.ok(
        "stream::set",
        set("flood", "c", "flood:83:100000", json!(1)),
    )
    .await;
    let e = w
        .call(
            "stream::set",
            set("flood", "d", "flood:84:100000", json!(1)),
        )
        .await
        .unwrap_err();
    assert!(
        message(&e).contains("bytes of store writes in one call"),
        "{e}"
    );
    assert_eq!(ids("d").await, 83);

    // Per stream: about 8.3 MB a group, until 64 MiB have been added.
    let mut refused = None;
    for g in 0..10 {
        let r = w
            .call(
                "stream::set",
                set("flood", &format!("s{g}"), "flood:83:100000", json!(1)),
            )
            .await;
        if let Err(e) = r {
            refused = Some((g, e));
            break;
        }
    }
    let (g, e) = refused.expect("the stream's quota ends the flood");
    assert_eq!(code(&e), "quota_exceeded", "{e}");
    assert!(message(&e).contains("bytes added to its stream"), "{e}");
    assert!((5..=7).contains(&g), "refused at group {g}");
    assert!(native_write(&w, 0).await < Duration::from_secs(1));
    engine.shutdown().await.unwrap();
}

/// A flood of log lines is cut to the rate (100 a second), the excess dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_are_rate_limited() {
    let engine = start(test_config()).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    bind(&w, "noisy", json!({}), json!({"timeout_ms": 5000}))
        .await
        .unwrap();
    let adapter = || {
        let space = engine.engine.default_space();
        space.functions.storage.wasm().get("noisy").unwrap()
    };
    // At the burst, nothing is dropped; far past it, nearly all is.
    w.ok("stream::set", set("noisy", "g", "log:100:50", json!(1)))
        .await;
    assert_eq!(adapter().log_lines_dropped(), 0);
    w.ok("stream::set", set("noisy", "g", "log:20000:2000", json!(1)))
        .await;
    let dropped = adapter().log_lines_dropped();
    assert!(dropped >= 19_000, "only {dropped} of 20,000 lines dropped");
    engine.shutdown().await.unwrap();
}

/// `max_payload_bytes` holds for every crossing: list-groups, error text, list-items (the
/// copy stopped early) and the total output of a fan-out hook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_crossing_is_held_to_max_payload_bytes() {
    let engine = start(test_config()).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let limits = json!({"max_payload_bytes": 65536});
    bind(
        &w,
        "groups-at",
        json!({"groups_bytes": 65000}),
        limits.clone(),
    )
    .await
    .unwrap();
    bind(
        &w,
        "groups-over",
        json!({"groups_bytes": 66000}),
        limits.clone(),
    )
    .await
    .unwrap();
    let groups = |s: &str| w.call("stream::list_groups", json!({"stream_name": s}));
    assert_eq!(
        groups("groups-at")
            .await
            .unwrap()
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        65
    );
    let e = groups("groups-over").await.unwrap_err();
    assert_eq!(code(&e), "adapter_payload_too_large", "{e}");

    // Error text: short passes whole, long is cut, huge is not even copied.
    bind(&w, "errs", json!({}), limits.clone()).await.unwrap();
    let err = |n: usize| {
        w.call(
            "stream::set",
            set("errs", "g", &format!("error:{n}"), json!(1)),
        )
    };
    let e = err(1000).await.unwrap_err();
    assert!(message(&e).contains(&"e".repeat(1000)), "{e}");
    let e = err(100_000).await.unwrap_err();
    assert!(
        message(&e).len() < 1300 && message(&e).contains("more bytes cut"),
        "{e}"
    );
    let e = err(4 << 20).await.unwrap_err();
    assert_eq!(code(&e), "adapter_payload_too_large", "{e}");

    // list-items of 3 MiB against a 1 MiB limit: refused, having copied at most ~2 MiB.
    let big = json!({"max_payload_bytes": 1 << 20, "memory_mb": 64});
    bind(&w, "items", json!({"list_bytes": 3 << 20}), big)
        .await
        .unwrap();
    let e = w
        .call(
            "stream::list",
            json!({"stream_name": "items", "group_id": "huge"}),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), "adapter_payload_too_large", "{e}");
    assert!(message(&e).contains("stopped copying"), "{e}");

    // A fan-out hook's output: 60 copies of a 1 kB event fit in 64 KiB; 70 do not, and a
    // failing hook delivers nothing.
    bind(&w, "fan", json!({}), limits).await.unwrap();
    let mut client = Client::connect(engine.client_addr, "/stream/fan/g").await;
    client.next().await;
    let data = json!("d".repeat(1000));
    w.ok("stream::set", set("fan", "g", "fan:60", data.clone()))
        .await;
    for _ in 0..60 {
        assert_eq!(client.next().await["event"]["data"], data);
    }
    w.ok("stream::set", set("fan", "g", "fan:70", data)).await;
    w.ok("stream::set", set("fan", "g", "after", json!(1)))
        .await;
    assert_eq!(
        client.next().await["event"]["data"],
        json!(1),
        "no fan:70 event came"
    );
    engine.shutdown().await.unwrap();
}
