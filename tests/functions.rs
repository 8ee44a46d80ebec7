//! The `stream::*` functions, update ops, triggers, createStream and calls between workers,
//! driven through the worker socket with a raw worker that sees every frame.

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_functions_in_memory() {
    let engine = start(test_config()).await;
    conformance::stream_functions(engine.worker_addr).await;
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_functions_durable() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    config.adapter = streamhost::config::AdapterConfig::KvFile {
        path: dir.path().join("store"),
    };
    let engine = start(config).await;
    conformance::stream_functions(engine.worker_addr).await;
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payloads_and_unknown_functions_get_clear_errors() {
    let engine = start(test_config()).await;
    let w = RawWorker::connect(engine.worker_addr).await;

    let e = w
        .call(
            "stream::set",
            json!({"stream_name": "s", "group_id": "g", "data": 1}),
        )
        .await
        .unwrap_err();
    assert_eq!(e["code"], "deserialization_error");
    assert!(e["message"].as_str().unwrap().contains("item_id"), "{e}");

    let e = w
        .call(
            "stream::get",
            json!({"stream_name": "s", "group_id": 7, "item_id": "i"}),
        )
        .await
        .unwrap_err();
    assert_eq!(e["code"], "deserialization_error");
    assert!(e["message"].as_str().unwrap().contains("group_id"), "{e}");

    let e = w
        .call(
            "stream::update",
            json!({"stream_name": "s", "group_id": "g", "item_id": "i", "ops": {}}),
        )
        .await
        .unwrap_err();
    assert!(e["message"].as_str().unwrap().contains("ops"), "{e}");

    let e = w.call("no::such", json!({})).await.unwrap_err();
    assert_eq!(e["code"], "function_not_found");
    assert!(e["message"].as_str().unwrap().contains("no::such"), "{e}");

    // Junk and unknown frames are ignored and the worker keeps working.
    w.send_raw(tokio_tungstenite::tungstenite::Message::text("{not json"));
    w.send_json(json!({"type": "fancynewthing", "x": 1}));
    w.send_json(json!({"type": "invokefunction"}));
    w.send_raw(tokio_tungstenite::tungstenite::Message::binary(
        b"OTLP{}".to_vec(),
    ));
    w.send_json(json!({"type": "registertriggertype", "id": "x"}));
    assert_eq!(
        w.ok("stream::list_groups", json!({"stream_name": "s"}))
            .await,
        json!([])
    );

    // An unsupported trigger type is refused with a triggerregistrationresult.
    let mut w = w;
    w.send_json(json!({"type": "registertrigger", "id": "t1", "trigger_type": "cron", "function_id": "f", "config": {}}));
    let frame = tokio::time::timeout(WAIT, w.frames.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(frame["type"], "triggerregistrationresult");
    assert_eq!(frame["id"], "t1");
    assert_eq!(frame["error"]["code"], "trigger_type_not_found");
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_call_each_other_and_failures_are_reported() {
    let mut config = test_config();
    config.invocation_timeout = Duration::from_millis(300);
    let engine = start(config).await;
    let server = RawWorker::connect(engine.worker_addr).await;
    server
        .register("math::double", |d| {
            Ok(Some(json!(d["x"].as_i64().unwrap() * 2)))
        })
        .await;
    server
        .register("math::fail", |_| {
            Err(json!({"code": "bad_input", "message": "x must be odd"}))
        })
        .await;
    server.register("math::nothing", |_| Ok(None)).await;
    server
        .register("math::never", |_| {
            std::thread::sleep(Duration::from_millis(800));
            Ok(Some(json!(1)))
        })
        .await;

    let client = RawWorker::connect(engine.worker_addr).await;
    assert_eq!(client.ok("math::double", json!({"x": 21})).await, json!(42));
    let e = client.call("math::fail", json!({})).await.unwrap_err();
    assert_eq!(e, json!({"code": "bad_input", "message": "x must be odd"}));
    assert_eq!(client.call("math::nothing", json!({})).await.unwrap(), None);

    let e = client.call("math::never", json!({})).await.unwrap_err();
    assert_eq!(e["code"], "timeout");
    assert!(
        e["message"].as_str().unwrap().contains("math::never"),
        "{e}"
    );

    // A worker that disconnects mid-call fails the call, and its functions go away.
    let slow = RawWorker::connect(engine.worker_addr).await;
    slow.register("slow::hang", |_| {
        std::thread::sleep(Duration::from_secs(5));
        Ok(None)
    })
    .await;
    let pending = client.call("slow::hang", json!({}));
    let (result, _) = tokio::join!(pending, async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(slow);
    });
    let e = result.unwrap_err();
    assert!(
        e["code"] == "worker_disconnected" || e["code"] == "timeout",
        "{e}"
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_fails_waiting_calls_at_once() {
    let engine = start(test_config()).await; // 30 s timeout: only the disconnect can end the call
    let hanging = RawWorker::connect(engine.worker_addr).await;
    hanging
        .register("hang", |_| {
            std::thread::sleep(Duration::from_secs(3));
            Ok(None)
        })
        .await;
    let caller = RawWorker::connect(engine.worker_addr).await;
    let started = std::time::Instant::now();
    let (result, _) = tokio::join!(caller.call("hang", json!({})), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(hanging);
    });
    let e = result.unwrap_err();
    assert_eq!(e["code"], "worker_disconnected", "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    let e = caller.call("hang", json!({})).await.unwrap_err();
    assert_eq!(e["code"], "function_not_found");
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_triggers_fire_with_filters_and_conditions() {
    let engine = start(test_config()).await;
    let mut w = RawWorker::connect(engine.worker_addr).await;
    w.register("on_room", |_| Ok(None)).await;
    w.register("on_item_b", |_| Ok(None)).await;
    w.register("only_hot", |frame| {
        Ok(Some(json!(frame["event"]["data"]["hot"] == json!(true))))
    })
    .await;
    w.register("on_hot", |_| Ok(None)).await;
    w.register_trigger(
        "t1",
        "stream",
        "on_room",
        json!({"stream_name": "s", "group_id": "room"}),
    )
    .await;
    w.register_trigger(
        "t2",
        "stream",
        "on_item_b",
        json!({"stream_name": "s", "item_id": "b"}),
    )
    .await;
    w.register_trigger(
        "t3",
        "stream",
        "on_hot",
        json!({"stream_name": "s", "condition_function_id": "only_hot"}),
    )
    .await;

    w.ok(
        "stream::set",
        json!({"stream_name": "s", "group_id": "room", "item_id": "a", "data": {"hot": false}}),
    )
    .await;
    w.ok(
        "stream::set",
        json!({"stream_name": "s", "group_id": "other", "item_id": "b", "data": {"hot": true}}),
    )
    .await;
    w.ok(
        "stream::send",
        json!({"stream_name": "s", "group_id": "room", "type": "ping", "data": 1}),
    )
    .await;
    w.ok(
        "stream::delete",
        json!({"stream_name": "s", "group_id": "room", "item_id": "missing"}),
    )
    .await;

    let mut seen = Vec::new();
    while let Ok(Some(frame)) =
        tokio::time::timeout(Duration::from_millis(700), w.frames.recv()).await
    {
        if frame["type"] == "invokefunction" && frame["function_id"] != "only_hot" {
            let data = &frame["data"];
            assert_eq!(data["type"], "stream");
            seen.push(format!(
                "{} {} {}",
                frame["function_id"].as_str().unwrap(),
                data["groupId"].as_str().unwrap(),
                data["event"]["type"].as_str().unwrap()
            ));
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            "on_hot other create",
            "on_item_b other create",
            "on_room room create",
            "on_room room event"
        ]
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_stream_functions_serve_their_stream() {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    let engine = start(test_config()).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let store: Arc<Mutex<BTreeMap<String, Value>>> = Arc::default();
    let s = store.clone();
    w.register("stream::get(custom)", move |p| {
        Ok(s.lock()
            .unwrap()
            .get(p["item_id"].as_str().unwrap())
            .cloned())
    })
    .await;
    let s = store.clone();
    w.register("stream::set(custom)", move |p| {
        let old = s
            .lock()
            .unwrap()
            .insert(p["item_id"].as_str().unwrap().to_owned(), p["data"].clone());
        Ok(Some(json!({"old_value": old, "new_value": p["data"]})))
    })
    .await;
    let s = store.clone();
    w.register("stream::delete(custom)", move |p| {
        Ok(Some(
            json!({"old_value": s.lock().unwrap().remove(p["item_id"].as_str().unwrap())}),
        ))
    })
    .await;
    let s = store.clone();
    w.register("stream::list(custom)", move |_| {
        Ok(Some(Value::Array(
            s.lock().unwrap().values().cloned().collect(),
        )))
    })
    .await;
    w.register("stream::list_groups(custom)", |_| Ok(Some(json!(["only"]))))
        .await;

    let mut client = Client::connect(engine.client_addr, "/stream/custom/only").await;
    assert_eq!(
        client.next().await["event"],
        json!({"type": "sync", "data": []})
    );

    let item = json!({"stream_name": "custom", "group_id": "only", "item_id": "k"});
    let mut with = item.clone();
    with["data"] = json!({"v": 1});
    assert_eq!(
        w.ok("stream::set", with).await,
        json!({"old_value": null, "new_value": {"v": 1}})
    );
    assert_eq!(store.lock().unwrap().get("k"), Some(&json!({"v": 1})));
    assert_eq!(
        client.next().await["event"],
        json!({"type": "create", "data": {"v": 1}})
    );
    assert_eq!(w.ok("stream::get", item.clone()).await, json!({"v": 1}));
    assert_eq!(
        w.ok(
            "stream::list",
            json!({"stream_name": "custom", "group_id": "only"})
        )
        .await,
        json!([{"v": 1}])
    );
    assert_eq!(
        w.ok("stream::list_groups", json!({"stream_name": "custom"}))
            .await,
        json!(["only"])
    );

    // No stream::update(custom): the engine reads, applies and writes through the worker.
    let mut upd = item.clone();
    upd["ops"] = json!([{"type": "increment", "path": "v", "by": 4}]);
    assert_eq!(
        w.ok("stream::update", upd.clone()).await,
        json!({"old_value": {"v": 1}, "new_value": {"v": 5}})
    );
    assert_eq!(
        client.next().await["event"],
        json!({"type": "update", "data": {"v": 5}})
    );

    // With stream::update(custom) registered, it is called instead.
    w.register("stream::update(custom)", |_| {
        Ok(Some(
            json!({"old_value": {"v": 5}, "new_value": "from-worker"}),
        ))
    })
    .await;
    assert_eq!(
        w.ok("stream::update", upd).await["new_value"],
        "from-worker"
    );
    assert_eq!(
        client.next().await["event"],
        json!({"type": "update", "data": "from-worker"})
    );

    assert_eq!(
        w.ok("stream::delete", item).await,
        json!({"old_value": {"v": 5}})
    );
    assert_eq!(
        client.next().await["event"],
        json!({"type": "delete", "data": {"v": 5}})
    );
    // The engine's own store was never touched.
    assert_eq!(engine.engine.store().list_all().await.unwrap(), vec![]);
    // A worker's stream keeps one item's events in write order too.
    conformance::one_item_event_order(&engine, "custom").await;
    engine.shutdown().await.unwrap();
}

/// A worker may serve only some of its stream's operations: the others go to the storage the
/// stream would have without it (here the engine's store), and the storage router decides
/// that per operation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stream_serves_only_the_operations_it_registers() {
    let engine = start(test_config()).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let item = json!({"stream_name": "half", "group_id": "g", "item_id": "k"});
    let mut with = item.clone();
    with["data"] = json!({"v": 1});
    // Before any worker serves `half`, everything is the engine's store.
    w.ok("stream::set", with.clone()).await;
    assert_eq!(w.ok("stream::get", item.clone()).await, json!({"v": 1}));

    // Now a worker serves get only.
    w.register("stream::get(half)", |p| {
        Ok(Some(json!({"from": "worker", "item": p["item_id"]})))
    })
    .await;
    assert_eq!(
        w.ok("stream::get", item.clone()).await,
        json!({"from": "worker", "item": "k"}),
        "get goes to the worker"
    );
    with["data"] = json!({"v": 2});
    assert_eq!(
        w.ok("stream::set", with).await,
        json!({"old_value": {"v": 1}, "new_value": {"v": 2}}),
        "set still goes to the engine's store, which has the old value"
    );
    let group = json!({"stream_name": "half", "group_id": "g"});
    assert_eq!(w.ok("stream::list", group.clone()).await, json!([{"v": 2}]));
    assert_eq!(
        w.ok("stream::list_groups", json!({"stream_name": "half"}))
            .await,
        json!(["g"])
    );
    // Without the worker's set, an update is the engine store's own.
    let mut upd = item.clone();
    upd["ops"] = json!([{"type": "increment", "path": "v", "by": 3}]);
    assert_eq!(
        w.ok("stream::update", upd).await,
        json!({"old_value": {"v": 2}, "new_value": {"v": 5}})
    );
    assert_eq!(
        w.ok("stream::delete", item.clone()).await,
        json!({"old_value": {"v": 5}})
    );

    // The worker unregisters: get is the store's again.
    w.send_json(json!({"type": "unregisterfunction", "id": "stream::get(half)"}));
    w.sync().await;
    assert_eq!(w.ok("stream::get", item).await, Value::Null);
    engine.shutdown().await.unwrap();
}

/// What a worker stream's functions answer is checked before it is used: an answer of the
/// wrong shape is an error with the calling built-in's code that names the function and
/// says what it should have answered; an empty answer is an empty result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_streams_malformed_answers_are_errors_that_name_the_function() {
    let engine = start(test_config()).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    w.register("stream::list(bad)", |p| {
        Ok(match p["group_id"].as_str() {
            Some("empty") => None,
            Some("null") => Some(Value::Null),
            _ => Some(json!({"not": "an array"})),
        })
    })
    .await;
    w.register("stream::list_groups(bad)", |_| Ok(Some(json!("g"))))
        .await;
    w.register("stream::update(bad)", |_| {
        Ok(Some(
            json!({"old_value": null, "new_value": 1, "errors": [{"no": "shape"}]}),
        ))
    })
    .await;
    w.register("stream::get(bad)", |_| {
        Err(json!({"code": "BOOM", "message": "disk on fire"}))
    })
    .await;

    let list = |group: &str| json!({"stream_name": "bad", "group_id": group});
    for group in ["empty", "null"] {
        assert_eq!(
            w.ok("stream::list", list(group)).await,
            json!([]),
            "{group}"
        );
    }
    let e = w.call("stream::list", list("g")).await.unwrap_err();
    assert_eq!(e["code"], "STREAM_GET_GROUP_ERROR", "{e}");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("stream::list(bad)") && message.contains("must answer an array of items"),
        "{message}"
    );

    let e = w
        .call("stream::list_groups", json!({"stream_name": "bad"}))
        .await
        .unwrap_err();
    assert_eq!(e["code"], "STREAM_LIST_GROUPS_ERROR", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("stream::list_groups(bad) must answer an array of group ids"),
        "{e}"
    );

    let item = json!({"stream_name": "bad", "group_id": "g", "item_id": "k"});
    let mut upd = item.clone();
    upd["ops"] = json!([{"type": "set", "path": "", "value": 1}]);
    let e = w.call("stream::update", upd).await.unwrap_err();
    assert_eq!(e["code"], "STREAM_UPDATE_ERROR", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("answered `errors` not as"),
        "{e}"
    );

    // A worker's own error keeps its message and takes the built-in's code.
    let e = w.call("stream::get", item).await.unwrap_err();
    assert_eq!(e["code"], "STREAM_GET_ERROR", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("stream::get(bad): disk on fire"),
        "{e}"
    );
    // Nothing reached the engine's store.
    assert_eq!(engine.engine.store().list_all().await.unwrap(), vec![]);
    engine.shutdown().await.unwrap();
}

/// Each engine has its own item locks: while a worker-stream write holds an item on engine A,
/// a write to the same item on engine B, in the same process, goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_in_one_process_do_not_share_item_locks() {
    let (a, b) = (start(test_config()).await, start(test_config()).await);
    let wa = RawWorker::connect(a.worker_addr).await;
    let wb = RawWorker::connect(b.worker_addr).await;
    let (entered, entered_rx) = tokio::sync::oneshot::channel::<()>();
    let entered = std::sync::Mutex::new(Some(entered));
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = std::sync::Mutex::new(released);
    wa.register("stream::set(custom)", move |p| {
        if let Some(entered) = entered.lock().unwrap().take() {
            let _ = entered.send(());
        }
        // Engine A holds the item's lock until this answers.
        let _ = released.lock().unwrap().recv();
        Ok(Some(json!({"old_value": null, "new_value": p["data"]})))
    })
    .await;
    wb.register("stream::set(custom)", |p| {
        Ok(Some(json!({"old_value": null, "new_value": p["data"]})))
    })
    .await;
    let item = |data: &str| json!({"stream_name": "custom", "group_id": "g", "item_id": "k", "data": data});
    let on_a = wa.ok("stream::set", item("a"));
    let on_b = async {
        entered_rx.await.expect("engine A's worker was called");
        let done = tokio::time::timeout(WAIT, wb.ok("stream::set", item("b"))).await;
        release.send(()).unwrap();
        done.expect("engine B waited for an item lock that engine A holds")
    };
    let (on_a, on_b) = tokio::join!(on_a, on_b);
    assert_eq!(on_b["new_value"], "b");
    assert_eq!(on_a["new_value"], "a");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_for_one_item_leave_in_the_order_the_writes_were_applied() {
    let engine = start(test_config()).await;
    conformance::one_item_event_order(&engine, "hot").await;
    engine.shutdown().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    config.adapter = streamhost::config::AdapterConfig::KvFile {
        path: dir.path().join("store"),
    };
    let engine = start(config).await;
    conformance::one_item_event_order(&engine, "hot").await;
    engine.shutdown().await.unwrap();
}
