//! `/metrics` (Prometheus text) and `/health` on the client port.

mod common;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).await.unwrap();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of one sample line, e.g. `streamhost_subscriptions`.
fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{body}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

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
