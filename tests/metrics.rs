//! `/metrics` (Prometheus text) and `/health` on the client port.

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_connections_events_calls_and_errors() {
    let engine = start(test_config()).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let mut a = Client::connect(engine.client_addr, "/stream/s/g").await;
    let mut b = Client::connect(engine.client_addr, "/stream/s/g").await;
    a.next().await;
    b.next().await;
    for i in 0..3 {
        w.ok(
            "stream::set",
            json!({"stream_name": "s", "group_id": "g", "item_id": format!("i{i}"), "data": i}),
        )
        .await;
    }
    w.call("stream::get", json!({"stream_name": 1}))
        .await
        .unwrap_err();
    w.call("nope", json!({})).await.unwrap_err();

    let (status, body) = http_get(engine.client_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(sample(&body, "streamhost_client_connections"), 2.0);
    assert_eq!(sample(&body, "streamhost_worker_connections"), 1.0);
    assert_eq!(sample(&body, "streamhost_subscriptions"), 2.0);
    assert_eq!(sample(&body, "streamhost_events_published_total"), 3.0);
    assert_eq!(sample(&body, "streamhost_frames_delivered_total"), 6.0);
    assert_eq!(
        sample(&body, "streamhost_slow_client_disconnects_total"),
        0.0
    );
    // Three sets from the worker, plus the two joins' snapshots (stream::list).
    assert_eq!(
        sample(
            &body,
            r#"streamhost_function_calls_total{function="stream::set",outcome="ok"}"#
        ),
        3.0
    );
    assert_eq!(
        sample(
            &body,
            r#"streamhost_function_calls_total{function="stream::list",outcome="ok"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(
            &body,
            r#"streamhost_function_calls_total{function="stream::get",outcome="error"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &body,
            r#"streamhost_function_calls_total{function="nope",outcome="error"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &body,
            r#"streamhost_function_call_duration_seconds_count{function="stream::set"}"#
        ),
        3.0
    );
    assert_eq!(
        sample(
            &body,
            r#"streamhost_function_call_duration_seconds_bucket{function="stream::set",le="+Inf"}"#
        ),
        3.0
    );
    assert!(body.contains("# TYPE streamhost_function_call_duration_seconds histogram"));

    let (status, body) = http_get(engine.client_addr, "/health").await;
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (health["status"].as_str(), health["adapter"].as_str()),
        (Some("ok"), Some("kv_memory"))
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_errors_are_counted_by_code() {
    let mut config = test_config();
    config
        .custom_streams
        .push(streamhost::config::CustomStreamConfig {
            stream_name: "v".into(),
            component: adapters_dir().join("validator.wasm"),
            config: json!({"schema": {"required": ["x"]}}),
            limits: Default::default(),
        });
    let engine = start(config).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    for _ in 0..2 {
        w.call(
            "stream::set",
            json!({"stream_name": "v", "group_id": "g", "item_id": "i", "data": {}}),
        )
        .await
        .unwrap_err();
    }
    let (_, body) = http_get(engine.client_addr, "/metrics").await;
    assert_eq!(
        sample(
            &body,
            r#"streamhost_adapter_errors_total{code="adapter_invalid"}"#
        ),
        2.0
    );
    assert_eq!(sample(&body, "streamhost_custom_streams"), 1.0);
    engine.shutdown().await.unwrap();
}

/// The function label of every `streamhost_function_calls_total` sample, each once.
fn function_labels(samples: &[exposition::Sample]) -> std::collections::BTreeSet<String> {
    samples
        .iter()
        .filter(|s| s.name == "streamhost_function_calls_total")
        .filter_map(|s| s.label("function").map(str::to_owned))
        .collect()
}

fn parse(body: &str) -> Vec<exposition::Sample> {
    exposition::parse(body).unwrap_or_else(|e| panic!("not valid exposition text: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_values_are_escaped_into_valid_exposition_text() {
    let engine = start(test_config()).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let id = "say \"hi\"\\now\nthen";
    let e = w.call(id, json!({})).await.unwrap_err();
    assert_eq!(e["code"], "function_not_found");

    let (_, body) = http_get(engine.client_addr, "/metrics").await;
    assert!(
        body.contains(
            r#"streamhost_function_calls_total{function="say \"hi\"\\now\nthen",outcome="error"} 1"#
        ),
        "{body}"
    );
    // Every line parses, and the label reads back as the id the worker sent.
    let samples = parse(&body);
    let calls: Vec<_> = samples
        .iter()
        .filter(|s| s.name == "streamhost_function_calls_total" && s.label("function") == Some(id))
        .map(|s| (s.label("outcome").unwrap(), s.value))
        .collect();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls.contains(&("error", 1.0)), "{calls:?}");
    assert!(calls.contains(&("ok", 0.0)), "{calls:?}");
    let count = samples
        .iter()
        .find(|s| {
            s.name == "streamhost_function_call_duration_seconds_count"
                && s.label("function") == Some(id)
        })
        .expect("the call's latency");
    assert_eq!(count.value, 1.0);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_ids_past_the_bound_count_as_other() {
    use streamhost::metrics::{MAX_FUNCTIONS, OTHER};
    let engine = start(test_config()).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    // Up to the bound, each id a worker calls has its own series.
    for i in 0..MAX_FUNCTIONS {
        w.call(&format!("f{i}"), json!({})).await.unwrap_err();
    }
    let (_, body) = http_get(engine.client_addr, "/metrics").await;
    let named = function_labels(&parse(&body));
    assert_eq!(named.len(), MAX_FUNCTIONS);
    assert!(!named.contains(OTHER));

    // One past it: a new id counts as `other`; ids already seen keep their own series.
    w.call("one-past", json!({})).await.unwrap_err();
    w.call("f0", json!({})).await.unwrap_err();
    let (_, body) = http_get(engine.client_addr, "/metrics").await;
    let named = function_labels(&parse(&body));
    assert_eq!(named.len(), MAX_FUNCTIONS + 1);
    assert!(!named.contains("one-past"));
    let calls = |function: &str| {
        sample(
            &body,
            &format!(r#"streamhost_function_calls_total{{function="{function}",outcome="error"}}"#),
        )
    };
    assert_eq!(calls(OTHER), 1.0);
    assert_eq!(calls("f0"), 2.0);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_cut_off_the_log_at_recovery_are_exported() {
    use streamhost::storage::StreamAdapter;
    use streamhost::storage::kv_store::KvStore;
    const TRUNCATED: &str = "streamhost_wal_truncated_bytes_total";
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    {
        let store = KvStore::open(&store_dir).unwrap();
        store.set("s", "g", "i", json!(1).into()).await.unwrap();
        store.shutdown().await.unwrap();
    }
    // A record cut short by a crash: a length, a CRC and part of a payload.
    let wal = store_dir.join("streams.wal");
    let mut bytes = std::fs::read(&wal).unwrap();
    let torn: &[u8] = b"\xc8\0\0\0\x07\0\0\0{\"op\":\"set\",\"s\":";
    bytes.extend_from_slice(torn);
    std::fs::write(&wal, bytes).unwrap();

    let mut config = test_config();
    config.adapter = streamhost::config::AdapterConfig::KvFile {
        path: store_dir.clone(),
    };
    let engine = start(config.clone()).await;
    let (_, body) = http_get(engine.client_addr, "/metrics").await;
    parse(&body);
    assert_eq!(sample(&body, TRUNCATED), torn.len() as f64);
    assert!(body.contains(&format!("# TYPE {TRUNCATED} counter")));
    assert_eq!(
        try_sample(&body, "streamhost_redis_publications_dropped_total"),
        None,
        "a store with no event bus drops no publications"
    );
    engine.shutdown().await.unwrap();

    // The next start finds a clean log.
    let engine = start(config).await;
    let (_, body) = http_get(engine.client_addr, "/metrics").await;
    assert_eq!(sample(&body, TRUNCATED), 0.0);
    engine.shutdown().await.unwrap();

    // A store in memory has no log.
    let engine = start(test_config()).await;
    let (_, body) = http_get(engine.client_addr, "/metrics").await;
    assert_eq!(try_sample(&body, TRUNCATED), None);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_labels_and_error_codes_past_their_bounds_count_as_other() {
    use streamhost::metrics::{MAX_ERROR_CODES, MAX_LABEL_BYTES, OTHER};
    let engine = start(test_config()).await;
    let w = RawWorker::connect(engine.worker_addr).await;

    // A function id of the longest length has its own series; one byte more counts as other.
    let longest = "x".repeat(MAX_LABEL_BYTES);
    w.call(&longest, json!({})).await.unwrap_err();
    w.call(&"y".repeat(MAX_LABEL_BYTES + 1), json!({}))
        .await
        .unwrap_err();
    let (_, body) = http_get(engine.client_addr, "/metrics").await;
    let named = function_labels(&parse(&body));
    assert!(named.contains(&longest), "{named:?}");
    assert!(named.contains(OTHER), "{named:?}");
    assert_eq!(named.len(), 2, "{named:?}");

    // A worker's function fails with the code it is asked for.
    w.register("fail", |data| {
        Err(json!({"code": data["code"], "message": "failed on purpose"}))
    })
    .await;
    let fail = |code: String| {
        let w = &w;
        async move {
            let e = w.call("fail", json!({"code": code})).await.unwrap_err();
            assert_eq!(e["code"], json!(code));
        }
    };
    for i in 0..MAX_ERROR_CODES {
        fail(format!("adapter_c{i}")).await;
    }
    let codes = |body: &str| {
        parse(body)
            .into_iter()
            .filter(|s| s.name == "streamhost_adapter_errors_total")
            .map(|s| (s.label("code").unwrap().to_owned(), s.value))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let (_, body) = http_get(engine.client_addr, "/metrics").await;
    let counted = codes(&body);
    assert_eq!(counted.len(), MAX_ERROR_CODES);
    assert!(counted.values().all(|n| *n == 1.0), "{counted:?}");
    assert!(!counted.contains_key(OTHER));

    // One code past the bound, and an over-long one, count as other; known codes keep theirs.
    fail("adapter_one_past".into()).await;
    fail(format!("adapter_{}", "z".repeat(MAX_LABEL_BYTES))).await;
    fail("adapter_c0".into()).await;
    let (_, body) = http_get(engine.client_addr, "/metrics").await;
    let counted = codes(&body);
    assert_eq!(counted.len(), MAX_ERROR_CODES + 1);
    assert_eq!(counted[OTHER], 2.0);
    assert_eq!(counted["adapter_c0"], 2.0);
    engine.shutdown().await.unwrap();
}
