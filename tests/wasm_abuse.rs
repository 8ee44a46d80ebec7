//! Hostile WebAssembly adapters (`adapters/hostile`) against the limits on their time
//! (issue 12, part 4): guests that spin or sleep in WASI, uploads that compile, and a
//! tenant's caps on its adapters' concurrent calls and CPU time, while a healthy worker's
//! native writes are still answered. Each limit is shown at its boundary and one past it,
//! with the refusal's code and message. Time bounds are generous ("within 2 s, not 8 s").
//! What adapters may ask for, store, log and return is in `wasm_limits.rs`.

mod common;

use common::hostile::*;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// Eight adapters spinning at once (the default tenant: no cap on calls) still leave the
/// engine's threads to others: each guest yields every epoch tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_adapters_do_not_delay_native_writes() {
    let engine = start(test_config()).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let healthy = RawWorker::connect(engine.worker_addr).await;
    for i in 0..8 {
        bind(
            &w,
            &format!("spin{i}"),
            json!({}),
            json!({"timeout_ms": 2000}),
        )
        .await
        .unwrap();
    }
    let mut client = Client::connect(engine.client_addr, "/stream/native/g").await;
    client.next().await;
    let started = Instant::now();
    let spins = futures_util::future::join_all((0..8).map(|i| {
        w.call(
            "stream::set",
            set(&format!("spin{i}"), "g", "loop", json!(1)),
        )
    }));
    // Ten writes in the first 0.7 s of the spins' 2 s.
    let probe = probe(&healthy, started + Duration::from_millis(200), 10);
    let (spins, worst) = tokio::join!(spins, probe);
    for n in 0..10 {
        assert_eq!(client.next().await["event"]["data"], json!(n));
    }
    for e in spins {
        let e = e.unwrap_err();
        assert_eq!(code(&e), "adapter_timeout", "{e}");
    }
    eprintln!("worst lateness of a native write while 8 adapters spun: {worst:?}");
    assert!(
        worst < Duration::from_secs(1),
        "a native write took {worst:?}"
    );
    // All eight ended at their 2 s deadline, not one after another.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    engine.shutdown().await.unwrap();
}

/// Uploads compile on a blocking thread, one at a time: streams keep being served meanwhile.
/// The hostile component compiles in tens of ms, so this checks that uploads which bind take
/// that path; `slow_uploads_compile_while_native_writes_flow` shows the stall it prevents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_compile_off_the_engine_threads() {
    let engine = start(test_config()).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let healthy = RawWorker::connect(engine.worker_addr).await;
    // Four distinct uploads (a custom section makes each new to the cache), all at once.
    let uploads = futures_util::future::join_all((0..4u8).map(|i| {
        let mut wasm = component("hostile");
        wasm.extend_from_slice(&[0, 3, 1, b'x', i]);
        let payload = json!({"stream_name": format!("up{i}"), "component": b64(&wasm)});
        let w = &w;
        async move { w.call("streamhost::create_stream", payload).await }
    }));
    let probe = probe(&healthy, Instant::now(), 20);
    let (uploads, worst) = tokio::join!(uploads, probe);
    for u in uploads {
        u.expect("each upload binds");
    }
    eprintln!("worst lateness of a native write during 4 compiles: {worst:?}");
    assert!(
        worst < Duration::from_secs(1),
        "a native write took {worst:?}"
    );
    engine.shutdown().await.unwrap();
}

/// Two uploads that take seconds each to compile, at once: were they compiled on the
/// engine's async threads (two in this test), they would hold both and every native write
/// would wait for them. Off those threads, writes go on being answered on time throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_compile_while_native_writes_flow() {
    let mut config = test_config();
    // The components are about 700 KB, about 1 MB as base64.
    config.max_frame_bytes = 4 << 20;
    let engine = start(config).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let healthy = RawWorker::connect(engine.worker_addr).await;
    let done = std::sync::atomic::AtomicBool::new(false);
    let uploads = async {
        let calls = (0..2u32).map(|i| {
            let wasm = slow_component(100, i);
            let payload = json!({"stream_name": format!("slow{i}"), "component": b64(&wasm)});
            let w = &w;
            async move { w.call("streamhost::create_stream", payload).await }
        });
        let answers = futures_util::future::join_all(calls).await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        answers
    };
    // Native writes every 50 ms for as long as the uploads take.
    let probe = async {
        let (from, mut worst, mut n) = (Instant::now(), Duration::ZERO, 0u32);
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            let planned = from + Duration::from_millis(50) * n;
            tokio::time::sleep_until(planned.into()).await;
            native_write(&healthy, n as usize).await;
            worst = worst.max(planned.elapsed());
            n += 1;
        }
        (worst, n)
    };
    let (answers, (worst, writes)) = tokio::join!(uploads, probe);
    for answer in answers {
        // Compiled, then refused by the interface check: the component exports nothing.
        let e = answer.expect_err("the slow component is not an adapter");
        assert!(message(&e).contains("does not export"), "{e}");
    }
    eprintln!("worst lateness of {writes} native writes during 2 slow compiles: {worst:?}");
    // The compiles took long enough to matter (a write every 50 ms for over half a second)...
    assert!(
        writes >= 10,
        "only {writes} writes: the compiles were quick"
    );
    // ...and no write waited for them.
    assert!(
        worst < Duration::from_secs(1),
        "a native write took {worst:?}"
    );
    engine.shutdown().await.unwrap();
}

/// `init` that sleeps in a WASI poll ends at its timeout, at bind time and when an instance
/// is started again after a trap; so does a call that sleeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_in_wasi_ends_at_the_timeout() {
    let engine = start(test_config()).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let t = Instant::now();
    let e = bind(
        &w,
        "sleepy",
        json!({"init_sleep_ms": 8000}),
        json!({"timeout_ms": 300}),
    )
    .await
    .unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "init answered after {:?}",
        t.elapsed()
    );
    assert_eq!(code(&e), "adapter_timeout", "{e}");
    assert!(message(&e).contains("deadline of 300 ms in init"), "{e}");

    bind(
        &w,
        "evil",
        json!({"stream": "evil"}),
        json!({"timeout_ms": 300}),
    )
    .await
    .unwrap();
    let t = Instant::now();
    let e = w
        .call("stream::set", set("evil", "g", "sleep", json!(1)))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "adapter_timeout", "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "a sleeping call took {:?}",
        t.elapsed()
    );
    // The next instance's init will sleep 8 s; a trap makes the host start one.
    w.ok(
        "stream::set",
        set("evil", "ctl", "init_sleep_ms", json!(8000)),
    )
    .await;
    let e = w
        .call("stream::set", set("evil", "g", "panic", json!(1)))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "adapter_trap", "{e}");
    let t = Instant::now();
    let e = w
        .call("stream::set", set("evil", "g", "fine", json!(1)))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "adapter_timeout", "{e}");
    assert!(message(&e).contains("in init"), "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "re-instantiation took {:?}",
        t.elapsed()
    );
    assert!(native_write(&w, 0).await < Duration::from_secs(1));
    engine.shutdown().await.unwrap();
}

fn capped_tenants(calls: u64, cpu_ms: u64) -> streamhost::Config {
    let mut config = common::tenants::two_tenants("");
    for t in &mut config.tenants {
        if t.id.as_str() == "alpha" {
            t.adapter_ceilings.max_concurrent_calls = calls;
            t.adapter_ceilings.max_cpu_ms_per_sec = cpu_ms;
            // Spinning calls end at their deadline, not when the default fuel runs out
            // (which a fast, idle machine reaches first).
            t.adapter_ceilings.max_fuel = streamhost::tenants::AdapterCeilings::HIGHEST.max_fuel;
        }
    }
    config
}

/// A tenant's refusals for `quota` in `/metrics` (0 while it has none).
async fn refusals(engine: &streamhost::ServerHandle, tenant: &str, quota: &str) -> f64 {
    let (status, body) = http_get(engine.client_addr, "/metrics").await;
    assert_eq!(status, 200);
    let series =
        format!("streamhost_tenant_quota_refusals_total{{tenant=\"{tenant}\",quota=\"{quota}\"}}");
    try_sample(&body, &series).unwrap_or(0.0)
}

/// A tenant's adapters run at most `max_concurrent_calls` calls at once; one more fails at
/// once, and another tenant is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_are_capped_per_tenant() {
    use common::tenants::*;
    let engine = start(capped_tenants(2, 1_000_000)).await;
    let a = RawWorker::connect_with_key(engine.worker_addr, KEY_A).await;
    let b = RawWorker::connect_with_key(engine.worker_addr, KEY_B).await;
    for s in ["s0", "s1", "s2"] {
        bind(&a, s, json!({}), json!({"timeout_ms": 1500}))
            .await
            .unwrap();
    }
    let spins = futures_util::future::join(
        a.call("stream::set", set("s0", "g", "loop", json!(1))),
        a.call("stream::set", set("s1", "g", "loop", json!(1))),
    );
    let third = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = Instant::now();
        let r = a
            .call("stream::set", set("s2", "g", "fine", json!(1)))
            .await;
        let other = native_write(&b, 0).await;
        (r, t.elapsed(), other)
    };
    let ((r0, r1), (r2, took, other)) = tokio::join!(spins, third);
    // The two at the cap ran (and hit their deadline); the one past it was refused at once.
    assert_eq!(code(&r0.unwrap_err()), "adapter_timeout");
    assert_eq!(code(&r1.unwrap_err()), "adapter_timeout");
    let e = r2.unwrap_err();
    assert_eq!(code(&e), "quota_exceeded", "{e}");
    assert!(message(&e).contains("max_concurrent_calls"), "{e}");
    assert!(retry_after_ms(&e) > 0, "{e}");
    assert!(
        took < Duration::from_millis(1000),
        "the refusal took {took:?}"
    );
    assert!(
        other < Duration::from_secs(1),
        "beta's write took {other:?}"
    );
    // Only the refusal is counted, in alpha's series.
    assert_eq!(
        refusals(&engine, "alpha", "adapter_concurrent_calls").await,
        1.0
    );
    // With the slots free again, the call runs.
    a.ok("stream::set", set("s2", "g", "fine", json!(2))).await;
    assert_eq!(
        refusals(&engine, "alpha", "adapter_concurrent_calls").await,
        1.0
    );
    engine.shutdown().await.unwrap();
}

/// A tenant whose adapters used more than `max_cpu_ms_per_sec` is refused until the debt
/// refills, with the wait in `retry_after_ms`; the other tenant's adapter is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_time_is_capped_per_tenant() {
    use common::tenants::*;
    let engine = start(capped_tenants(4, 300)).await;
    let a = RawWorker::connect_with_key(engine.worker_addr, KEY_A).await;
    let b = RawWorker::connect_with_key(engine.worker_addr, KEY_B).await;
    bind(&a, "hog", json!({}), json!({"timeout_ms": 1500}))
        .await
        .unwrap();
    bind(&b, "calm", json!({}), json!({"timeout_ms": 1500}))
        .await
        .unwrap();
    a.ok("stream::set", set("hog", "g", "fine", json!(1))).await;
    let e = a
        .call("stream::set", set("hog", "g", "loop", json!(1)))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "adapter_timeout", "{e}");
    // Up to 1.5 s used against a bucket of 0.3 s refilling at 0.3 s per second: in debt.
    let t = Instant::now();
    let e = a
        .call("stream::set", set("hog", "g", "fine", json!(2)))
        .await
        .unwrap_err();
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(code(&e), "quota_exceeded", "{e}");
    assert!(message(&e).contains("max_cpu_ms_per_sec"), "{e}");
    let wait = retry_after_ms(&e);
    assert!((1..=6000).contains(&wait), "{e}");
    b.ok("stream::set", set("calm", "g", "fine", json!(1)))
        .await;
    assert_eq!(
        refusals(&engine, "alpha", "adapter_cpu_ms_per_sec").await,
        1.0
    );
    tokio::time::sleep(Duration::from_millis(wait + 300)).await;
    a.ok("stream::set", set("hog", "g", "fine", json!(3))).await;
    assert_eq!(
        refusals(&engine, "alpha", "adapter_cpu_ms_per_sec").await,
        1.0
    );
    assert_eq!(
        refusals(&engine, "beta", "adapter_cpu_ms_per_sec").await,
        0.0
    );
    engine.shutdown().await.unwrap();
}

/// Calls queue for one adapter's instance no longer than one call's deadline: behind two
/// spinning calls, a third fails with `adapter_timeout` rather than waiting for both. Each
/// call comes from its own worker: one worker's calls to a group run in the order sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_do_not_queue_past_a_deadline_behind_a_hog() {
    let engine = start(test_config()).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    bind(&w, "hog", json!({}), json!({"timeout_ms": 1000}))
        .await
        .unwrap();
    let mut callers = Vec::new();
    for _ in 0..3 {
        callers.push(RawWorker::connect(engine.worker_addr).await);
    }
    let later = async |n: usize, ms: u64, item: &'static str| {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        let t = Instant::now();
        let r = callers[n]
            .call("stream::set", set("hog", "g", item, json!(1)))
            .await;
        (r, t.elapsed())
    };
    let ((a, _), (b, _), (c, waited)) = tokio::join!(
        later(0, 0, "loop"),
        later(1, 100, "loop"),
        later(2, 200, "fine")
    );
    assert_eq!(code(&a.unwrap_err()), "adapter_timeout");
    assert_eq!(code(&b.unwrap_err()), "adapter_timeout");
    let e = c.unwrap_err();
    assert_eq!(code(&e), "adapter_timeout", "{e}");
    assert!(message(&e).contains("busy with earlier calls"), "{e}");
    assert!(waited < Duration::from_millis(1800), "it waited {waited:?}");
    w.ok("stream::set", set("hog", "g", "fine", json!(2))).await;
    engine.shutdown().await.unwrap();
}
