//! WebAssembly adapters, built from `adapters/`, driven end to end: bound by config and at
//! runtime, served to workers and clients, and contained when they misbehave.

mod common;

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use streamhost::config::CustomStreamConfig;
use streamhost::storage::wasm::Limits;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn create_stream(
    w: &RawWorker,
    stream: &str,
    name: &str,
    config: Value,
    limits: Value,
) -> Result<Option<Value>, Value> {
    w.call("streamhost::create_stream", json!({"stream_name": stream, "component": b64(&component(name)), "config": config, "limits": limits})).await
}

fn set(stream: &str, group: &str, item: &str, data: Value) -> Value {
    json!({"stream_name": stream, "group_id": group, "item_id": item, "data": data})
}

fn item(stream: &str, group: &str, item: &str) -> Value {
    json!({"stream_name": stream, "group_id": group, "item_id": item})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validator_refuses_bad_items_with_the_field_named() {
    let engine = start(test_config()).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let schema = json!({"schema": {
        "required": ["text"],
        "additionalProperties": false,
        "properties": {"text": {"type": "string", "maxLength": 10}, "likes": {"type": "integer", "minimum": 0}}
    }});
    let bound = create_stream(&w, "posts", "validator", schema, json!({}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bound["fanout"], false);
    assert!(bound["exports"].as_array().unwrap().iter().any(|e| {
        e.as_str()
            .unwrap()
            .starts_with("streamhost:adapter/stream-adapter")
    }));

    let mut client = Client::connect(engine.client_addr, "/stream/posts/wall").await;
    assert_eq!(
        client.next().await["event"],
        json!({"type": "sync", "data": []})
    );

    assert_eq!(
        w.ok(
            "stream::set",
            set("posts", "wall", "p1", json!({"text": "hello"}))
        )
        .await,
        json!({"old_value": null, "new_value": {"text": "hello"}})
    );
    assert_eq!(
        client.next().await["event"],
        json!({"type": "create", "data": {"text": "hello"}})
    );

    for (bad, field) in [
        (json!({"likes": 1}), "text"),
        (json!({"text": "far too long here"}), "text"),
        (json!({"text": "x", "spam": 1}), "spam"),
        (json!({"text": "x", "likes": -1}), "likes"),
    ] {
        let e = w
            .call("stream::set", set("posts", "wall", "p2", bad.clone()))
            .await
            .unwrap_err();
        assert_eq!(e["code"], "adapter_invalid", "{e}");
        let message = e["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("`{field}`")),
            "{bad} -> {message}"
        );
    }
    // Updates go through the adapter's set, so they are validated too.
    let e = w.call("stream::update", json!({"stream_name": "posts", "group_id": "wall", "item_id": "p1", "ops": [{"type": "decrement", "path": "likes", "by": 1}]})).await.unwrap_err();
    assert!(e["message"].as_str().unwrap().contains("likes"), "{e}");
    let r = w.ok("stream::update", json!({"stream_name": "posts", "group_id": "wall", "item_id": "p1", "ops": [{"type": "increment", "path": "likes", "by": 2}]})).await;
    assert_eq!(r["new_value"], json!({"text": "hello", "likes": 2}));
    assert_eq!(
        client.next().await["event"],
        json!({"type": "update", "data": {"text": "hello", "likes": 2}})
    );

    assert_eq!(
        w.ok(
            "stream::list",
            json!({"stream_name": "posts", "group_id": "wall"})
        )
        .await,
        json!([{"text": "hello", "likes": 2}])
    );
    assert_eq!(
        w.ok("stream::list_groups", json!({"stream_name": "posts"}))
            .await,
        json!(["wall"])
    );
    assert_eq!(
        w.ok("stream::get", item("posts", "wall", "p1")).await["likes"],
        2
    );
    assert_eq!(
        w.ok("stream::delete", item("posts", "wall", "p1")).await,
        json!({"old_value": {"text": "hello", "likes": 2}})
    );
    assert_eq!(client.next().await["event"]["type"], "delete");
    assert_eq!(
        client.try_next(Duration::from_millis(200)).await,
        None,
        "refused writes sent nothing"
    );
    engine.shutdown().await.unwrap();
}

/// One item's events leave in write order through a WebAssembly adapter too: its sets, ordered
/// by the turns its store writes take; and the updates it leaves to the host, a read-modify-write
/// under the engine's item lock (handed to the adapter), so no increment is lost and the
/// events count up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webassembly_stream_keeps_one_items_events_in_write_order() {
    let engine = start(test_config()).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    create_stream(&w, "hot", "validator", json!({"schema": {}}), json!({}))
        .await
        .unwrap();
    conformance::one_item_event_order(&engine, "hot").await;

    let mut client = Client::connect(engine.client_addr, "/stream/hot/g/n").await;
    client.next().await;
    let increment = json!({"stream_name": "hot", "group_id": "g", "item_id": "n",
        "ops": [{"type": "increment", "path": "n", "by": 1}]});
    let updates = (0..40).map(|_| {
        let (engine, increment) = (engine.engine.clone(), increment.clone());
        tokio::spawn(async move { engine.call("stream::update", increment).await.unwrap() })
    });
    for update in futures_util::future::join_all(updates).await {
        update.unwrap();
    }
    for n in 1..=40 {
        let event = client.next().await;
        assert_eq!(event["event"]["data"]["n"], n, "{event}");
    }
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capped_history_bound_in_config_evicts_and_tells_clients() {
    let mut config = test_config();
    config.custom_streams.push(CustomStreamConfig {
        stream_name: "chat".into(),
        component: adapters_dir().join("capped_history.wasm"),
        config: json!({"max_items": 3}),
        limits: Limits::default(),
    });
    let engine = start(config).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let mut client = Client::connect(engine.client_addr, "/stream/chat/room").await;
    client.next().await;
    for n in 1..=5 {
        w.ok(
            "stream::set",
            set("chat", "room", &format!("m{n}"), json!({"n": n})),
        )
        .await;
    }
    assert_eq!(
        w.ok(
            "stream::list",
            json!({"stream_name": "chat", "group_id": "room"})
        )
        .await,
        json!([{"n": 3}, {"n": 4}, {"n": 5}])
    );
    let mut seen = Vec::new();
    for _ in 0..7 {
        let f = client.next().await;
        seen.push(format!(
            "{} {}",
            f["event"]["type"].as_str().unwrap(),
            f["id"].as_str().unwrap()
        ));
    }
    assert_eq!(
        seen,
        [
            "create m1",
            "create m2",
            "create m3",
            "create m4",
            "delete m1",
            "create m5",
            "delete m2"
        ]
    );
    assert!(
        w.ok("stream::get", item("chat", "room", "m1"))
            .await
            .is_null()
    );
    // Triggers see the change itself; a `stream` trigger still fires for every write.
    assert_eq!(client.try_next(Duration::from_millis(200)).await, None);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drafts_stay_hidden_from_clients_until_published() {
    let engine = start(test_config()).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let bound = create_stream(&w, "docs", "drafts", json!({}), json!({}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bound["fanout"], true);
    w.ok(
        "stream::set",
        set("docs", "g", "old-draft", json!({"draft": true, "t": "x"})),
    )
    .await;

    let mut client = Client::connect(engine.client_addr, "/").await;
    assert_eq!(
        client.join("s", "docs", "g", None).await["event"]["data"],
        json!([]),
        "sync leaves drafts out"
    );

    w.ok(
        "stream::set",
        set("docs", "g", "a", json!({"draft": true, "t": "wip"})),
    )
    .await;
    assert_eq!(
        w.ok("stream::get", item("docs", "g", "a")).await["t"],
        "wip",
        "workers can read drafts"
    );
    w.ok(
        "stream::set",
        set("docs", "g", "a", json!({"draft": false, "t": "done"})),
    )
    .await;
    let f = client.next().await;
    assert_eq!(
        (f["id"].clone(), f["event"].clone()),
        (
            json!("a"),
            json!({"type": "create", "data": {"draft": false, "t": "done"}})
        )
    );
    w.ok(
        "stream::set",
        set("docs", "g", "a", json!({"draft": true, "t": "again"})),
    )
    .await;
    assert_eq!(
        client.next().await["event"]["type"],
        "delete",
        "unpublishing removes it from clients"
    );
    w.ok("stream::delete", item("docs", "g", "a")).await;
    assert_eq!(
        client.try_next(Duration::from_millis(200)).await,
        None,
        "a draft's delete is not shown"
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_adapters_fail_alone_and_serve_again() {
    let engine = start(test_config()).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    create_stream(
        &w,
        "evil",
        "hostile",
        json!({}),
        json!({"timeout_ms": 1500, "memory_mb": 16}),
    )
    .await
    .unwrap();
    create_stream(
        &w,
        "evil-big",
        "hostile",
        json!({}),
        json!({"memory_mb": 64, "max_payload_bytes": 1048576}),
    )
    .await
    .unwrap();
    create_stream(
        &w,
        "evil-fuel",
        "hostile",
        json!({}),
        json!({"fuel": 5_000_000, "timeout_ms": 5000}),
    )
    .await
    .unwrap();
    let mut native = Client::connect(engine.client_addr, "/stream/native/g").await;
    native.next().await;

    let cases = [
        ("evil", "loop", "adapter_timeout", "deadline of 1500 ms"),
        (
            "evil",
            "memory",
            "adapter_memory_limit",
            "memory limit of 16777216 bytes",
        ),
        ("evil", "panic", "adapter_trap", "trapped"),
        ("evil-fuel", "loop", "adapter_fuel_exhausted", "fuel"),
    ];
    for (stream, id, code, says) in cases {
        let started = Instant::now();
        // The hostile call and a native write race; the native one must not wait for it.
        let hostile = w.call("stream::set", set(stream, "g", id, json!(1)));
        let healthy = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let t = Instant::now();
            w.ok("stream::set", set("native", "g", id, json!({"ok": true})))
                .await;
            t.elapsed()
        };
        let (hostile, healthy_took) = tokio::join!(hostile, healthy);
        let e = hostile.unwrap_err();
        assert_eq!(e["code"], code, "{stream}/{id}: {e}");
        let message = e["message"].as_str().unwrap();
        assert!(
            message.contains(says),
            "{stream}/{id} should say {says:?}: {message}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "{stream}/{id} took {:?}",
            started.elapsed()
        );
        // A native write takes a few ms; one queued behind the looping adapter would take
        // most of its 1.5 s deadline. The margin keeps a busy CI machine from failing it.
        assert!(
            healthy_took < Duration::from_millis(1000),
            "a native write waited {healthy_took:?} behind {stream}/{id}"
        );
        assert_eq!(native.next().await["event"]["data"], json!({"ok": true}));
        // The adapter serves again on a fresh instance.
        w.ok(
            "stream::set",
            set(stream, "g", "fine", json!({"after": id})),
        )
        .await;
        assert_eq!(
            w.ok("stream::get", item(stream, "g", "fine")).await,
            json!({"after": id})
        );
    }
    let e = w
        .call("stream::get", item("evil-big", "g", "huge"))
        .await
        .unwrap_err();
    assert_eq!(e["code"], "adapter_payload_too_large", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("over the 1048576-byte limit"),
        "{e}"
    );
    assert_eq!(
        w.ok("stream::set", set("evil-big", "g", "fine", json!(2)))
            .await["new_value"],
        2
    );
    let started = engine
        .engine
        .default_space()
        .functions
        .storage
        .wasm()
        .get("evil")
        .unwrap()
        .instances_started
        .load(Ordering::Relaxed);
    assert_eq!(
        started, 4,
        "one first instance and one after each of the three failures"
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_are_replaced_removed_and_bad_uploads_refused() {
    let cache = tempfile::tempdir().unwrap();
    let mut config = test_config();
    config.wasm_cache_dir = Some(cache.path().to_path_buf());
    let engine = start(config).await;
    let w = RawWorker::connect(engine.worker_addr).await;

    let first = create_stream(
        &w,
        "s",
        "validator",
        json!({"schema": {"required": ["a"]}}),
        json!({}),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(first["cached"], false);
    assert!(
        w.call("stream::set", set("s", "g", "x", json!({"b": 1})))
            .await
            .is_err()
    );
    // The same component again comes from the compile cache.
    let again = create_stream(&w, "s2", "validator", json!({"schema": {}}), json!({}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again["cached"], true);
    assert!(again["load_ms"].as_f64().unwrap() < first["load_ms"].as_f64().unwrap());

    // Replaced: the new adapter takes over.
    create_stream(&w, "s", "drafts", json!({}), json!({}))
        .await
        .unwrap();
    w.ok("stream::set", set("s", "g", "x", json!({"b": 1})))
        .await;
    let listed = w.ok("streamhost::list_streams", json!({})).await;
    assert_eq!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["stream_name"].clone())
            .collect::<Vec<_>>(),
        vec![json!("s"), json!("s2")]
    );

    // A failed replacement leaves the old binding in place.
    let e = create_stream(&w, "s", "validator", json!({"schema": 5}), json!({}))
        .await
        .unwrap_err();
    assert_eq!(e["code"], "invalid_component");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("`schema` must be an object"),
        "{e}"
    );
    assert_eq!(
        w.ok("streamhost::list_streams", json!({})).await[0]["fanout"],
        true
    );

    // Removed: the stream falls back to the engine's store, data intact.
    assert_eq!(
        w.ok("streamhost::delete_stream", json!({"stream_name": "s"}))
            .await,
        json!({"removed": true})
    );
    assert_eq!(
        w.ok("stream::get", item("s", "g", "x")).await,
        json!({"b": 1})
    );

    for (component, says) in [
        ("not base64!".to_owned(), "base64"),
        (b64(b"just some bytes"), "not a WebAssembly file"),
        (
            b64(&wasmtime::Engine::default()
                .precompile_component(&component("drafts"))
                .unwrap()),
            "precompiled artifacts are not accepted",
        ),
    ] {
        let e = w
            .call(
                "streamhost::create_stream",
                json!({"stream_name": "bad", "component": component}),
            )
            .await
            .unwrap_err();
        assert_eq!(e["code"], "invalid_component");
        assert!(e["message"].as_str().unwrap().contains(says), "{e}");
    }
    let e = w.call("streamhost::create_stream", json!({"stream_name": "bad", "component": b64(&component("drafts")), "limits": {"memroy_mb": 1}})).await.unwrap_err();
    assert_eq!(e["code"], "deserialization_error");
    assert!(e["message"].as_str().unwrap().contains("memroy_mb"), "{e}");
    engine.shutdown().await.unwrap();
}

#[test]
fn adapter_check_reports_exports_or_what_is_wrong() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_streamhost"))
        .args(["adapter", "check"])
        .arg(adapters_dir().join("capped_history.wasm"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("fan-out hook: yes")
            && text.contains("streamhost:adapter/stream-adapter@0.1.0"),
        "{text}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_streamhost"))
        .args(["adapter", "check", "Cargo.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a WebAssembly file"));
}

/// Serves a component built from `python-example` or `js-example`, which both keep items
/// with a non-empty `text`, and checks it end to end.
async fn serves_a_text_adapter(wasm: &std::path::Path, stream: &str) {
    let engine = start(test_config()).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let component = b64(&std::fs::read(wasm).unwrap());
    // These components carry a language runtime: more memory, and time for the first call.
    let bound = w
        .call("streamhost::create_stream", json!({"stream_name": stream, "component": component, "limits": {"memory_mb": 128, "timeout_ms": 5000}}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bound["fanout"], false);
    let mut client = Client::connect(engine.client_addr, &format!("/stream/{stream}/g")).await;
    client.next().await;
    assert_eq!(
        w.ok(
            "stream::set",
            set(stream, "g", "a", json!({"text": "hello"}))
        )
        .await["new_value"],
        json!({"text": "hello"})
    );
    assert_eq!(
        client.next().await["event"],
        json!({"type": "create", "data": {"text": "hello"}})
    );
    for bad in [json!({"text": ""}), json!({"text": 5})] {
        let e = w
            .call("stream::set", set(stream, "g", "b", bad))
            .await
            .unwrap_err();
        assert_eq!(e["code"], "adapter_invalid");
        assert!(e["message"].as_str().unwrap().contains("`text`"), "{e}");
    }
    let r = w.ok("stream::update", json!({"stream_name": stream, "group_id": "g", "item_id": "a", "ops": [{"type": "set", "path": "n", "value": 1}]})).await;
    assert_eq!(r["new_value"], json!({"text": "hello", "n": 1}));
    assert_eq!(
        w.ok("stream::get", item(stream, "g", "a")).await,
        json!({"text": "hello", "n": 1})
    );
    assert_eq!(
        w.ok(
            "stream::list",
            json!({"stream_name": stream, "group_id": "g"})
        )
        .await,
        json!([{"text": "hello", "n": 1}])
    );
    engine.shutdown().await.unwrap();
}

/// An adapter written in Python (`adapters/python-example`), built by componentize-py, served
/// like the Rust ones: the guide's other-language path, really taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_adapter_built_with_componentize_py_serves_its_stream() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let tool = root.join("tests/sdk/python/.venv/bin/componentize-py");
    assert!(
        tool.exists(),
        "componentize-py is not installed; run scripts/test.sh (it installs tests/sdk/python/requirements.txt)"
    );
    let out = tempfile::tempdir().unwrap();
    let wasm = out.path().join("python_example.wasm");
    let status = std::process::Command::new(&tool)
        .args([
            "-d",
            "wit",
            "-w",
            "adapter",
            "componentize",
            "-p",
            "adapters/python-example",
            "app",
            "-o",
        ])
        .arg(&wasm)
        .current_dir(root)
        .status()
        .unwrap();
    assert!(status.success(), "componentize-py failed");
    serves_a_text_adapter(&wasm, "py").await;
}

/// An adapter written in JavaScript (`adapters/js-example`), built by componentize-js.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_adapter_built_with_componentize_js_serves_its_stream() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        root.join("tests/sdk/node/node_modules/@bytecodealliance/componentize-js")
            .exists(),
        "componentize-js is not installed; run scripts/test.sh (it runs npm ci in tests/sdk/node)"
    );
    let out = tempfile::tempdir().unwrap();
    let wasm = out.path().join("js_example.wasm");
    let status = std::process::Command::new("node")
        .arg("tests/sdk/node/build-js-adapter.mjs")
        .args(["adapters/js-example/app.js", "wit"])
        .arg(&wasm)
        .current_dir(root)
        .status()
        .unwrap();
    assert!(status.success(), "componentize-js failed");
    serves_a_text_adapter(&wasm, "js").await;
}

/// Each tenant binds its own adapters: the same stream name in two tenants is two bindings,
/// and a tenant's `adapter_ceilings` cap what its workers' adapters may ask for, at the
/// ceiling and one past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_bind_their_own_adapters_within_their_ceilings() {
    use common::tenants::*;
    let mut config = two_tenants("");
    let alpha = config.tenants.iter_mut().find(|t| t.id.as_str() == "alpha");
    alpha.unwrap().adapter_ceilings.max_memory_bytes = 16 << 20;
    let engine = start(config).await;
    let wa = RawWorker::connect_with_key(engine.worker_addr, KEY_A).await;
    let wb = RawWorker::connect_with_key(engine.worker_addr, KEY_B).await;

    let e = create_stream(
        &wa,
        "posts",
        "validator",
        json!({"schema": {}}),
        json!({"memory_mb": 17}),
    )
    .await
    .unwrap_err();
    assert_eq!(e["code"], "limits_over_ceiling", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("adapter_ceilings"),
        "{e}"
    );
    let schema = json!({"schema": {"type": "object", "required": ["title"]}});
    create_stream(&wa, "posts", "validator", schema, json!({"memory_mb": 16}))
        .await
        .expect("at the ceiling");
    // beta's `posts` is not bound: its items need no title, and alpha's binding is not listed.
    wb.ok(
        "stream::set",
        set("posts", "g", "i", json!({"no": "title"})),
    )
    .await;
    let e = wa
        .call(
            "stream::set",
            set("posts", "g", "i", json!({"no": "title"})),
        )
        .await
        .unwrap_err();
    assert!(e["message"].as_str().unwrap().contains("title"), "{e}");
    let listed = |v: Value| v.as_array().unwrap().len();
    assert_eq!(
        listed(wa.ok("streamhost::list_streams", json!({})).await),
        1
    );
    assert_eq!(
        listed(wb.ok("streamhost::list_streams", json!({})).await),
        0
    );
    // beta cannot unbind alpha's adapter.
    assert_eq!(
        wb.ok("streamhost::delete_stream", json!({"stream_name": "posts"}))
            .await["removed"],
        false
    );
    engine.shutdown().await.unwrap();
}
