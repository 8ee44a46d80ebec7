//! Who owns what among workers (issue 11, item 3): a live worker's function id cannot be
//! taken, only a trigger's owner removes it, and a `stream:join` check whose worker is gone
//! refuses joins instead of letting them through. Raw workers on real sockets.

mod common;

use common::*;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use streamhost::ServerHandle;

/// Waits until the engine has finished tearing down every worker socket but `n`: the gauge
/// drops only after the worker's functions and triggers have been dealt with.
async fn wait_for_workers(engine: &ServerHandle, n: u64) {
    let connections = &engine.engine.metrics.connections;
    tokio::time::timeout(WAIT, async {
        while connections.workers() != n {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} workers still connected, not {n}", connections.workers()));
}

/// The frames a worker has been sent so far, other than answers to its own calls and calls of
/// its functions. Frames from one socket arrive in order, so after a `sync` this holds every
/// reply to what was sent before it.
fn drain(w: &mut RawWorker) -> Vec<Value> {
    std::iter::from_fn(|| w.frames.try_recv().ok())
        .filter(|f| f["type"] != "invokefunction")
        .collect()
}

fn rejected(function_id: &str, owner: &str) -> Value {
    json!({
        "type": "registrationrejected",
        "code": "FUNCTION_NAMESPACE_CONFLICT",
        "namespace": "default",
        "function_id": function_id,
        "owner_worker_id": owner,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_workers_function_id_cannot_be_taken() {
    let engine = start(test_config()).await;
    let mut a = RawWorker::connect(engine.worker_addr).await;
    a.register("shared::fn", |_| Ok(Some(json!("a")))).await;
    a.register("stream::get(owned)", |_| Ok(Some(json!({"from": "a"}))))
        .await;
    let mut b = RawWorker::connect(engine.worker_addr).await;

    b.register("shared::fn", |_| Ok(Some(json!("b")))).await;
    assert_eq!(drain(&mut b), vec![rejected("shared::fn", &a.worker_id)]);
    // A worker stream's functions (createStream) are function ids like any other.
    b.register("stream::get(owned)", |_| Ok(Some(json!({"from": "b"}))))
        .await;
    assert_eq!(
        drain(&mut b),
        vec![rejected("stream::get(owned)", &a.worker_id)]
    );
    // Nor can B remove A's function.
    b.send_json(json!({"type": "unregisterfunction", "id": "shared::fn"}));
    b.sync().await;

    // Calls still reach A, and the refused worker stays connected, serving its other ids.
    assert_eq!(b.ok("shared::fn", json!({})).await, json!("a"));
    let get = json!({"stream_name": "owned", "group_id": "g", "item_id": "i"});
    assert_eq!(b.ok("stream::get", get.clone()).await, json!({"from": "a"}));
    b.register("b::own", |_| Ok(Some(json!("mine")))).await;
    assert_eq!(a.ok("b::own", json!({})).await, json!("mine"));

    // The owner registering its own id again is no conflict.
    a.register("shared::fn", |_| Ok(Some(json!("a again"))))
        .await;
    assert!(drain(&mut a).is_empty());
    assert_eq!(b.ok("shared::fn", json!({})).await, json!("a again"));

    // Once A is gone, the ids are free.
    drop(a);
    wait_for_workers(&engine, 1).await;
    b.register("shared::fn", |_| Ok(Some(json!("b")))).await;
    b.register("stream::get(owned)", |_| Ok(Some(json!({"from": "b"}))))
        .await;
    assert!(drain(&mut b).is_empty());
    assert_eq!(b.ok("shared::fn", json!({})).await, json!("b"));
    assert_eq!(b.ok("stream::get", get).await, json!({"from": "b"}));
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_triggers_owner_removes_or_replaces_it() {
    let engine = start(test_config()).await;
    let a = RawWorker::connect(engine.worker_addr).await;
    let (tx, rx) = std::sync::mpsc::channel::<(&str, Value)>();
    let tx_a = std::sync::Mutex::new(tx.clone());
    a.register("on_write_a", move |e| {
        tx_a.lock().unwrap().send(("a", e)).unwrap();
        Ok(None)
    })
    .await;
    a.register_trigger("t-a", "stream", "on_write_a", json!({"stream_name": "own"}))
        .await;
    let mut b = RawWorker::connect(engine.worker_addr).await;
    let tx_b = std::sync::Mutex::new(tx);
    b.register("on_write_b", move |e| {
        tx_b.lock().unwrap().send(("b", e)).unwrap();
        Ok(None)
    })
    .await;

    // B's unregister of A's trigger is ignored: A's trigger still fires.
    b.send_json(json!({"type": "unregistertrigger", "id": "t-a"}));
    b.sync().await;
    let set =
        |data: i64| json!({"stream_name": "own", "group_id": "g", "item_id": "i", "data": data});
    b.ok("stream::set", set(1)).await;
    let (by, event) = rx.recv_timeout(WAIT).expect("A's trigger fires");
    assert_eq!((by, &event["event"]["data"]), ("a", &json!(1)), "{event}");

    // B cannot register a trigger under A's id.
    b.register_trigger("t-a", "stream", "on_write_b", json!({"stream_name": "own"}))
        .await;
    let frames = drain(&mut b);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["type"], "triggerregistrationresult");
    assert_eq!(frames[0]["id"], "t-a");
    assert_eq!(frames[0]["error"]["code"], "trigger_id_conflict");
    let message = frames[0]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("t-a") && message.contains("another id"),
        "{message}"
    );
    b.ok("stream::set", set(2)).await;
    let (by, event) = rx.recv_timeout(WAIT).expect("A's trigger fires");
    assert_eq!((by, &event["event"]["data"]), ("a", &json!(2)), "{event}");

    // The owner removes its own trigger; then the id is free for B.
    a.send_json(json!({"type": "unregistertrigger", "id": "t-a"}));
    a.sync().await;
    b.register_trigger("t-a", "stream", "on_write_b", json!({"stream_name": "own"}))
        .await;
    assert!(drain(&mut b).is_empty());
    b.ok("stream::set", set(3)).await;
    let (by, event) = rx.recv_timeout(WAIT).expect("B's trigger fires");
    assert_eq!((by, &event["event"]["data"]), ("b", &json!(3)), "{event}");
    engine.shutdown().await.unwrap();
}

/// A join check that allows everything and counts its calls.
async fn allow_all(w: &RawWorker, function_id: &str) -> Arc<AtomicUsize> {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    w.register(function_id, move |_| {
        counted.fetch_add(1, Ordering::SeqCst);
        Ok(Some(json!({"unauthorized": false})))
    })
    .await;
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_fail_closed_when_the_checks_worker_is_gone() {
    let engine = start(test_config()).await;
    let mut c = Client::connect(engine.client_addr, "/").await;
    let a = RawWorker::connect(engine.worker_addr).await;
    allow_all(&a, "check").await;
    a.register_trigger("j", "stream:join", "check", json!({}))
        .await;
    assert_eq!(c.join("s1", "s", "g", None).await["event"]["type"], "sync");

    // The check's worker leaves: joins are refused, not let through.
    drop(a);
    wait_for_workers(&engine, 0).await;
    let refused = c.join("s2", "s", "g", None).await;
    assert_eq!(refused["event"]["type"], "unauthorized", "{refused}");
    assert_eq!(refused["streamName"], "s", "{refused}");

    // A worker serving the check's function again brings the check back.
    let b = RawWorker::connect(engine.worker_addr).await;
    let calls = allow_all(&b, "check").await;
    assert_eq!(c.join("s3", "s", "g", None).await["event"]["type"], "sync");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // A join check it registers on that function replaces the orphan (a restarted worker
    // comes back with new trigger ids): each join calls the check once, not once per restart.
    b.register_trigger("j-b", "stream:join", "check", json!({}))
        .await;
    assert_eq!(c.join("s4", "s", "g", None).await["event"]["type"], "sync");
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    drop(b);
    wait_for_workers(&engine, 0).await;
    let refused = c.join("s5", "s", "g", None).await;
    assert_eq!(refused["event"]["type"], "unauthorized", "{refused}");

    // A worker registering a trigger under the orphan's id takes it over, with its own check.
    let w = RawWorker::connect(engine.worker_addr).await;
    let calls = allow_all(&w, "check2").await;
    w.register_trigger("j-b", "stream:join", "check2", json!({}))
        .await;
    assert_eq!(c.join("s6", "s", "g", None).await["event"]["type"], "sync");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    engine.shutdown().await.unwrap();
}

/// The HTTP status (and body) of a refused client upgrade.
async fn refused_upgrade(url: String) -> (u16, String) {
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => (
            resp.status().as_u16(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        other => panic!("expected a refusal, got {:?}", other.map(|r| r.1.status())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_function_cannot_be_taken_over() {
    let mut config = test_config();
    config.auth_function = Some("auth".into());
    let engine = start(config).await;
    let a = RawWorker::connect(engine.worker_addr).await;
    a.register("auth", |req| {
        match req["query_params"]["token"][0].as_str() {
            Some("good") => Ok(Some(json!({"context": {}}))),
            _ => Err(json!({"code": "no_token", "message": "missing token"})),
        }
    })
    .await;

    let mut b = RawWorker::connect(engine.worker_addr).await;
    b.register("auth", |_| Ok(Some(json!({"context": {"user": "anyone"}}))))
        .await;
    assert_eq!(drain(&mut b), vec![rejected("auth", &a.worker_id)]);

    // A still decides: no token is refused, a good one admitted.
    let (code, body) = refused_upgrade(format!("ws://{}/", engine.client_addr)).await;
    assert_eq!(
        (code, body.contains("missing token")),
        (401, true),
        "{body}"
    );
    let mut c = Client::connect(engine.client_addr, "/?token=good").await;
    assert_eq!(c.join("s", "s", "g", None).await["event"]["type"], "sync");
    engine.shutdown().await.unwrap();
}
