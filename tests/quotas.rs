//! Per-tenant quotas on calls, through real sockets: each one holding at its boundary and
//! refusing one past it with `quota_exceeded` (and `retry_after_ms` for a rate), the
//! refused call changing nothing, the other tenant and the tenant's other calls still
//! served, a quota changed live through the admin API, and each refusal counted in
//! `/metrics`.
//!
//! Rates are set low (1 per second) with a burst, so that the burst is spent long before a
//! token comes back even on a busy machine; where time could still refill a token, the test
//! allows for what the elapsed time could have refilled.

mod common;

use common::tenants::*;
use common::*;
use serde_json::{Value, json};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use streamhost::admin::AdminConfig;
use streamhost::tenants::{Quotas, Rate, hash_key};
use streamhost::{Config, ServerHandle};

const OPERATOR: &str = "operator-key-for-the-quota-tests-0123";

/// `two_tenants` with `alpha` held to `quotas` (beta keeps the defaults), and the admin API.
fn config(quotas: Quotas) -> Config {
    let mut config = two_tenants("");
    let alpha = config.tenants.iter_mut().find(|t| t.id.as_str() == "alpha");
    alpha.unwrap().quotas = quotas;
    config.admin = Some(AdminConfig {
        host: "127.0.0.1".into(),
        port: 0,
        key_sha256: hash_key(OPERATOR),
    });
    config
}

async fn engine(quotas: Quotas) -> (ServerHandle, RawWorker, RawWorker) {
    let engine = start(config(quotas)).await;
    let a = RawWorker::connect_with_key(engine.worker_addr, KEY_A).await;
    let b = RawWorker::connect_with_key(engine.worker_addr, KEY_B).await;
    (engine, a, b)
}

fn item(group: &str, id: &str) -> Value {
    json!({"stream_name": "chat", "group_id": group, "item_id": id})
}

fn set(group: &str, id: &str, data: Value) -> Value {
    let mut v = item(group, id);
    v["data"] = data;
    v
}

/// Checks a refusal: its code, that its message names the quota, and its retry hint.
fn assert_refused(e: &Value, quota: &str, retry: bool) {
    assert_eq!(e["code"], "quota_exceeded", "{e}");
    let message = e["message"].as_str().unwrap();
    assert!(message.contains(&format!("`{quota}`")), "{message}");
    assert!(message.contains(&format!("quotas.{quota}")), "{message}");
    match e.get("retry_after_ms").and_then(Value::as_u64) {
        Some(ms) => assert!(retry && ms >= 1, "{e}"),
        None => assert!(!retry, "a rate's refusal says when to retry: {e}"),
    }
}

/// The other tenant is served, and within a second.
async fn beta_served(b: &RawWorker) {
    let started = Instant::now();
    b.ok("stream::set", set("room", "b", json!({"ok": true})))
        .await;
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// alpha's refusals for `quota`, as `/metrics` counts them.
async fn refusals(engine: &ServerHandle, quota: &str) -> f64 {
    let (_, body) = http_get(engine.client_addr, "/metrics").await;
    let series =
        format!("streamhost_tenant_quota_refusals_total{{tenant=\"alpha\",quota=\"{quota}\"}}");
    try_sample(&body, &series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_past_the_rate_are_refused_and_change_nothing() {
    let quotas = Quotas {
        writes_per_second: Some(Rate::new(1, 5)),
        ..Quotas::UNLIMITED
    };
    let (engine, a, b) = engine(quotas).await;
    let started = Instant::now();
    let mut results = Vec::new();
    for i in 0..8 {
        let r = a
            .call("stream::set", set("room", &format!("i{i}"), json!(i)))
            .await;
        results.push(r);
    }
    // The burst of 5 passes; then only what the elapsed time refilled (1 a second).
    let refilled = started.elapsed().as_secs() as usize + 1;
    assert!(results[..5].iter().all(Result::is_ok), "{results:?}");
    let passed = results.iter().filter(|r| r.is_ok()).count();
    assert!(passed <= 5 + refilled, "{passed} passed: {results:?}");
    let refused = results.iter().position(Result::is_err).expect("a refusal");
    assert_refused(
        results[refused].as_ref().unwrap_err(),
        "writes_per_second",
        true,
    );
    let ms = results[refused].as_ref().unwrap_err()["retry_after_ms"]
        .as_u64()
        .unwrap();
    assert!(ms <= 1000, "a token comes back within a second: {ms}");

    // Nothing was stored for the refused write; reads are not writes, and beta is served.
    let refused_item = item("room", &format!("i{refused}"));
    assert_eq!(a.ok("stream::get", refused_item).await, Value::Null);
    assert_eq!(a.ok("stream::get", item("room", "i0")).await, json!(0));
    beta_served(&b).await;
    assert!(refusals(&engine, "writes_per_second").await >= 1.0);

    // send, update and delete are writes too.
    for (f, data) in [
        (
            "stream::send",
            json!({"stream_name": "chat", "group_id": "room", "type": "t", "data": 1}),
        ),
        (
            "stream::update",
            json!({"stream_name": "chat", "group_id": "room", "item_id": "i0", "ops": [{"type": "set", "path": "x", "value": 1}]}),
        ),
        ("stream::delete", item("room", "i0")),
    ] {
        // Spend what refilled meanwhile, then one more is refused.
        let mut refusal = None;
        for _ in 0..5 {
            if let Err(e) = a.call(f, data.clone()).await {
                refusal = Some(e);
                break;
            }
        }
        assert_refused(&refusal.expect("refused"), "writes_per_second", true);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_ignores_retry_after_is_read_slowly_and_every_call_is_answered() {
    // One write a second, no burst to speak of: of 41 writes sent at once, 40 are refused.
    // After each refusal the engine reads nothing from that worker for 10 ms, so the 40
    // refusals take at least 400 ms to be answered, however fast the worker sends.
    let quotas = Quotas {
        writes_per_second: Some(Rate::new(1, 1)),
        ..Quotas::UNLIMITED
    };
    let (engine, a, b) = engine(quotas).await;
    let started = Instant::now();
    let calls = (0..41).map(|i| a.call("stream::set", set("room", &format!("p{i}"), json!(i))));
    let results = futures_util::future::join_all(calls).await;
    let elapsed = started.elapsed();
    let refused: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    // A token may come back meanwhile: one per elapsed second.
    let refilled = elapsed.as_secs() as usize;
    assert!(refused.len() + refilled >= 40, "{results:?}");
    for e in &refused {
        assert_refused(e, "writes_per_second", true);
    }
    assert!(
        elapsed >= Duration::from_millis(10) * (refused.len() as u32 - 1),
        "{} refusals answered in {elapsed:?}: the worker was not read more slowly",
        refused.len()
    );
    // The other tenant was never slowed, and the worker itself is still served.
    beta_served(&b).await;
    assert_eq!(a.ok("stream::get", item("room", "p0")).await, json!(0));
    drop(engine);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_fan_out_is_over_the_deliveries_quota_is_refused() {
    let quotas = Quotas {
        deliveries_per_second: Some(Rate::new(1, 3)),
        ..Quotas::UNLIMITED
    };
    let (engine, a, b) = engine(quotas).await;
    let mut clients = subscribers(&engine, "alpha", SECRET_A, 3).await;
    // Three subscribers: the first write costs the whole burst of 3, and is delivered.
    a.ok("stream::set", set("room", "x", json!(1))).await;
    for c in &mut clients {
        assert_eq!(c.next().await["event"]["type"], "create");
    }
    let e = a
        .call("stream::set", set("room", "y", json!(2)))
        .await
        .unwrap_err();
    assert_refused(&e, "deliveries_per_second", true);
    assert!(e["message"].as_str().unwrap().contains("3 events"), "{e}");
    // Nothing stored, nothing sent.
    assert_eq!(a.ok("stream::get", item("room", "y")).await, Value::Null);
    for c in &mut clients {
        assert!(c.try_next(Duration::from_millis(200)).await.is_none());
    }
    // A write nobody watches costs no delivery; beta is served.
    a.ok("stream::set", set("quiet", "z", json!(3))).await;
    beta_served(&b).await;
    assert!(refusals(&engine, "deliveries_per_second").await >= 1.0);
}

/// Subscribes `n` clients of `tenant` to `chat/room`, each past its `sync`.
async fn subscribers(engine: &ServerHandle, tenant: &str, secret: &str, n: usize) -> Vec<Client> {
    let mut clients = Vec::new();
    for _ in 0..n {
        let token = token(tenant, secret, &["*"], 300);
        let mut c =
            Client::connect_with_token(engine.client_addr, "/stream/chat/room", &token).await;
        assert_eq!(c.next().await["event"]["type"], "sync");
        clients.push(c);
    }
    clients
}

/// When each client's next frame, which must be a `create`, arrived.
async fn arrivals(clients: &mut [Client]) -> Vec<Instant> {
    let each = clients.iter_mut().map(|c| async move {
        let frame = c.next().await;
        assert_eq!(frame["event"]["type"], "create", "{frame}");
        Instant::now()
    });
    futures_util::future::join_all(each).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_fan_out_goes_out_at_its_deliveries_rate() {
    // 200 a second, one every 5 ms: the window (64 frames at this rate) and as much of idle
    // credit let at most 129 frames go at once, and the rest of one write's 200 follow at
    // the rate, the last at least 355 ms later. Unpaced, 200 local writes take a few ms.
    let quotas = Quotas {
        deliveries_per_second: Some(Rate::new(200, 200)),
        ..Quotas::UNLIMITED
    };
    let (engine, a, b) = engine(quotas).await;
    let mut alpha = subscribers(&engine, "alpha", SECRET_A, 200).await;
    let mut beta = subscribers(&engine, "beta", SECRET_B, 1).await;

    // Times are taken from before the write: a frame read late can only seem later.
    let written = Instant::now();
    a.ok("stream::set", set("room", "x", json!(1))).await;
    let alpha_arrived = tokio::spawn(async move { arrivals(&mut alpha).await });
    // beta (paced at the default quota, 1,000,000 a second) is not held behind alpha's
    // paced fan-out: its event arrives while alpha's are still going out.
    b.ok("stream::set", set("room", "y", json!(2))).await;
    let beta_arrived = arrivals(&mut beta).await[0];
    let alpha_arrived = alpha_arrived.await.unwrap();
    let last = *alpha_arrived.iter().max().unwrap();
    assert!(
        last - written >= Duration::from_millis(300),
        "alpha's 200 deliveries were all out {:?} after the write: not paced at 200 a second",
        last - written
    );
    assert!(
        beta_arrived < last,
        "beta's event waited {:?} behind the end of alpha's fan-out",
        beta_arrived - last
    );
    let late = Duration::from_millis(100);
    let paced = alpha_arrived.iter().filter(|t| **t > written + late);
    assert!(paced.count() >= 50, "{alpha_arrived:?}");
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_bytes_hold_at_the_quota_and_come_back_on_delete() {
    // Items of 11 bytes as JSON: {"v":"abc"}.
    let data = json!({"v": "abc"});
    let size = data.to_string().len() as u64;
    assert_eq!(size, 11);
    let quotas = Quotas {
        stored_bytes: Some(2 * size),
        ..Quotas::UNLIMITED
    };
    let (engine, a, b) = engine(quotas).await;
    a.ok("stream::set", set("room", "1", data.clone())).await;
    a.ok("stream::set", set("room", "2", data.clone())).await;
    let e = a
        .call("stream::set", set("room", "3", data.clone()))
        .await
        .unwrap_err();
    assert_refused(&e, "stored_bytes", false);
    assert!(e["message"].as_str().unwrap().contains("22 of 22"), "{e}");
    assert_eq!(a.ok("stream::get", item("room", "3")).await, Value::Null);
    // The tenant's other calls go on: reads, and ephemeral sends.
    a.ok(
        "stream::send",
        json!({"stream_name": "chat", "group_id": "room", "type": "t", "data": 1}),
    )
    .await;
    beta_served(&b).await;
    assert_eq!(refusals(&engine, "stored_bytes").await, 1.0);

    // A delete gives its bytes back.
    a.ok("stream::delete", item("room", "1")).await;
    a.ok("stream::set", set("room", "3", data.clone())).await;
    // An update needs room for the largest item it could make: none is left.
    let update = json!({"stream_name": "chat", "group_id": "room", "item_id": "2", "ops": [{"type": "set", "path": "v", "value": "x"}]});
    let e = a.call("stream::update", update).await.unwrap_err();
    assert_refused(&e, "stored_bytes", false);
    assert_eq!(a.ok("stream::get", item("room", "2")).await, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_past_the_tenant_item_bytes_are_refused() {
    let quotas = Quotas {
        item_bytes: Some(20),
        ..Quotas::UNLIMITED
    };
    let (engine, a, b) = engine(quotas).await;
    // {"v":"..."} is 8 bytes around the string.
    let at = json!({"v": "x".repeat(12)});
    assert_eq!(at.to_string().len(), 20);
    a.ok("stream::set", set("room", "at", at.clone())).await;
    let past = json!({"v": "x".repeat(13)});
    let e = a
        .call("stream::set", set("room", "past", past))
        .await
        .unwrap_err();
    assert_refused(&e, "item_bytes", false);
    assert!(e["message"].as_str().unwrap().contains("21 bytes"), "{e}");
    assert_eq!(a.ok("stream::get", item("room", "past")).await, Value::Null);

    // An update whose result would be one byte past is refused too, and stores nothing.
    let update = json!({"stream_name": "chat", "group_id": "room", "item_id": "at", "ops": [{"type": "set", "path": "v", "value": "x".repeat(13)}]});
    let e = a.call("stream::update", update).await.unwrap_err();
    assert_refused(&e, "item_bytes", false);
    assert_eq!(a.ok("stream::get", item("room", "at")).await, at);
    beta_served(&b).await;
    // Beta keeps the default (512 KiB): 21 bytes are nothing to it.
    let big = json!({"v": "x".repeat(1000)});
    b.ok("stream::set", set("room", "big", big)).await;
    assert_eq!(refusals(&engine, "item_bytes").await, 2.0);
}

/// The next `registrationrejected` frame a worker got.
async fn rejection(w: &mut RawWorker) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), w.frames.recv())
            .await
            .expect("a frame in time")
            .expect("the socket is open");
        if frame["type"] == "registrationrejected" {
            return frame;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_are_counted_per_tenant_and_released_when_a_worker_goes() {
    let quotas = Quotas {
        functions: Some(2),
        ..Quotas::UNLIMITED
    };
    let (engine, mut a, b) = engine(quotas).await;
    a.register("f1", |_| Ok(Some(json!(1)))).await;
    a.register("f2", |_| Ok(Some(json!(2)))).await;
    a.register("f3", |_| Ok(Some(json!(3)))).await;
    let frame = rejection(&mut a).await;
    assert_eq!(frame["code"], "quota_exceeded", "{frame}");
    assert_eq!(frame["function_id"], "f3", "{frame}");
    assert_eq!(frame["namespace"], "alpha", "{frame}");
    assert!(
        frame["message"].as_str().unwrap().contains("`functions`"),
        "{frame}"
    );
    let e = a.call("f3", json!({})).await.unwrap_err();
    assert_eq!(e["code"], "function_not_found");
    // The worker keeps what it has; beta registers as many as it likes.
    assert_eq!(a.ok("f2", json!({})).await, json!(2));
    for i in 0..3 {
        b.register(&format!("g{i}"), |_| Ok(None)).await;
    }
    assert_eq!(b.call("g2", json!({})).await, Ok(None));
    assert_eq!(refusals(&engine, "functions").await, 1.0);

    // Unregistering gives one back; a worker that goes gives back all of its own.
    a.send_json(json!({"type": "unregisterfunction", "id": "f1"}));
    a.register("f3", |_| Ok(Some(json!(3)))).await;
    assert_eq!(a.ok("f3", json!({})).await, json!(3));
    drop(a);
    let mut a2 = RawWorker::connect_with_key(engine.worker_addr, KEY_A).await;
    // The old socket's close is handled on its own task: retry until its functions are gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        a2.register("h1", |_| Ok(Some(json!("h1")))).await;
        a2.register("h2", |_| Ok(Some(json!("h2")))).await;
        if a2.call("h2", json!({})).await == Ok(Some(json!("h2"))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old worker's functions were not released"
        );
        while a2.frames.try_recv().is_ok() {}
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_id_past_the_bound_is_refused_at_registration() {
    let (_engine, mut a, _b) = engine(Quotas::UNLIMITED).await;
    let longest = "f".repeat(streamhost::workers::shown::MAX_FUNCTION_ID_BYTES);
    a.register(&longest, |_| Ok(Some(json!("longest")))).await;
    assert_eq!(a.ok(&longest, json!({})).await, json!("longest"));
    let past = format!("{longest}f");
    a.register(&past, |_| Ok(None)).await;
    let frame = rejection(&mut a).await;
    assert_eq!(frame["code"], "FUNCTION_ID_TOO_LONG", "{frame}");
    let message = frame["message"].as_str().unwrap();
    assert!(
        message.contains("257 bytes") && message.contains("256"),
        "{message}"
    );
    // The id is echoed cut short, with a marker.
    assert!(
        frame["function_id"]
            .as_str()
            .unwrap()
            .ends_with("…(+129 bytes)"),
        "{frame}"
    );
    let e = a.call(&past, json!({})).await.unwrap_err();
    assert_eq!(e["code"], "function_not_found");
    assert!(e["message"].as_str().unwrap().len() < 300, "{e}");
}

/// A function that waits until the gate opens.
type Gate = Arc<(Mutex<bool>, Condvar)>;

fn open(gate: &Gate) {
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
}

async fn register_slow(w: &RawWorker, gate: &Gate) {
    let gate = gate.clone();
    w.register("slow", move |_| {
        let (lock, cvar) = &*gate;
        let _open = cvar.wait_while(lock.lock().unwrap(), |open| !*open);
        Ok(Some(json!("done")))
    })
    .await;
}

/// Sends `n` calls to `slow` without waiting, and waits until the serving worker has them.
async fn park(caller: &RawWorker, server: &mut RawWorker, n: usize) {
    for i in 0..n {
        caller.send_json(json!({"type": "invokefunction", "invocation_id": format!("p{i}"), "function_id": "slow", "data": {}}));
    }
    let mut seen = 0;
    while seen < n {
        let frame = tokio::time::timeout(Duration::from_secs(10), server.frames.recv())
            .await
            .expect("the calls reach the worker")
            .unwrap();
        seen += usize::from(frame["type"] == "invokefunction");
    }
}

/// Waits for the answers to `n` parked calls.
async fn answered(caller: &mut RawWorker, n: usize) {
    let mut seen = 0;
    while seen < n {
        let frame = tokio::time::timeout(Duration::from_secs(10), caller.frames.recv())
            .await
            .expect("the parked calls are answered")
            .unwrap();
        if frame["type"] == "invocationresult" {
            assert_eq!(frame["result"], "done", "{frame}");
            seen += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_invocations_are_capped_per_tenant() {
    let quotas = Quotas {
        pending_invocations: Some(3),
        ..Quotas::UNLIMITED
    };
    let (engine, mut a, b) = engine(quotas).await;
    let gate: Gate = Arc::default();
    register_slow(&a, &gate).await;
    let mut caller = RawWorker::connect_with_key(engine.worker_addr, KEY_A).await;
    park(&caller, &mut a, 3).await;
    // The fourth is refused at once, never reaching the worker.
    let started = Instant::now();
    let e = caller.call("slow", json!({})).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_refused(&e, "pending_invocations", false);
    assert!(e["message"].as_str().unwrap().contains("3 of 3"), "{e}");
    assert!(
        a.frames.try_recv().is_err(),
        "the refused call reached the worker"
    );
    // The tenant's stream calls and beta go on.
    caller.ok("stream::set", set("room", "s", json!(1))).await;
    beta_served(&b).await;
    assert_eq!(refusals(&engine, "pending_invocations").await, 1.0);

    // Answered calls give their slots back.
    open(&gate);
    answered(&mut caller, 3).await;
    assert_eq!(
        caller.call("slow", json!({})).await,
        Ok(Some(json!("done")))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_invocations_are_capped_per_worker_by_the_engine() {
    let mut config = config(Quotas::UNLIMITED);
    config.max_pending_invocations_per_worker = 2;
    let engine = start(config).await;
    let mut a = RawWorker::connect_with_key(engine.worker_addr, KEY_A).await;
    let gate: Gate = Arc::default();
    register_slow(&a, &gate).await;
    a.register("quick", |_| Ok(Some(json!("quick")))).await;
    let mut caller = RawWorker::connect_with_key(engine.worker_addr, KEY_A).await;
    park(&caller, &mut a, 2).await;
    let e = caller.call("quick", json!({})).await.unwrap_err();
    assert_eq!(e["code"], "quota_exceeded", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("max_pending_invocations_per_worker"),
        "{e}"
    );
    // Another worker of the same tenant is not held to this one's cap.
    let other = RawWorker::connect_with_key(engine.worker_addr, KEY_A).await;
    other
        .register("elsewhere", |_| Ok(Some(json!("there"))))
        .await;
    assert_eq!(
        caller.call("elsewhere", json!({})).await,
        Ok(Some(json!("there")))
    );
    open(&gate);
    answered(&mut caller, 2).await;
    assert_eq!(
        caller.call("quick", json!({})).await,
        Ok(Some(json!("quick")))
    );
}

/// Puts tenant `alpha`'s config through the admin API, as an operator changes it live.
async fn put_alpha(admin: std::net::SocketAddr, config: &Value) {
    let body = config.to_string();
    let (status, answer) = http_request(
        admin,
        "PUT",
        "/tenants/alpha",
        Some(OPERATOR),
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_changed_through_the_admin_api_takes_effect_live() {
    let quotas = Quotas {
        writes_per_second: Some(Rate::new(1, 2)),
        ..Quotas::UNLIMITED
    };
    let (engine, a, _b) = engine(quotas).await;
    let admin = engine.admin_addr.unwrap();
    let mut refusal = None;
    for i in 0..6 {
        if let Err(e) = a
            .call("stream::set", set("room", &format!("{i}"), json!(i)))
            .await
        {
            refusal = Some(e);
            break;
        }
    }
    assert_refused(&refusal.expect("refused"), "writes_per_second", true);

    // The tenant's config as shown (secrets are not shown: given again), its quota raised.
    let (status, shown) = http_request(admin, "GET", "/tenants/alpha", Some(OPERATOR), b"").await;
    assert_eq!(status, 200, "{shown}");
    let mut tenant: Value = serde_json::from_str(&shown).unwrap();
    let mut config = tenant["config"].take();
    config["clients"]["keys"][0]["secret"] = json!(SECRET_A);
    config["quotas"]["writes_per_second"] = json!({"per_second": 1000, "burst": 1000});
    put_alpha(admin, &config).await;
    for i in 0..20 {
        a.ok("stream::set", set("room", &format!("after{i}"), json!(i)))
            .await;
    }

    // And lowered again: a burst of 1.
    config["quotas"]["writes_per_second"] = json!({"per_second": 1, "burst": 1});
    put_alpha(admin, &config).await;
    a.ok("stream::set", set("room", "one", json!(1))).await;
    let e = a
        .call("stream::set", set("room", "two", json!(2)))
        .await
        .unwrap_err();
    assert_refused(&e, "writes_per_second", true);
}
