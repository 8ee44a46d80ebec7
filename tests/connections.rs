//! Connection hygiene (issue 12, part 1): the handshake timeout, the engine's and the
//! tenant's connection caps, subscriptions per connection, pings and idle timeouts, and the
//! byte bound of a client's send queue. Each limit is shown holding at its boundary and one
//! past it, and the engine still serving a healthy client and worker afterwards.

mod common;

use common::tenants::{KEY_A, KEY_B, SECRET_A, SECRET_B, token, two_tenants};
use common::{Client, RawWorker, http_get, sample, start, test_config, ws_request};
use futures_util::SinkExt;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use streamhost::ServerHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::client::Request;

/// Generous: the limits under test are short, and a busy 2-core machine is slow.
const HEALTHY_WITHIN: Duration = Duration::from_secs(2);

/// A new client and a new worker are served at once: the worker's write reaches the client.
async fn assert_healthy(h: &ServerHandle, client_token: Option<&str>, worker_key: Option<&str>) {
    let started = Instant::now();
    let round_trip = async {
        let mut client =
            Client::connect_request(ws_request(h.client_addr, "/", client_token)).await;
        let worker = match worker_key {
            Some(key) => RawWorker::connect_with_key(h.worker_addr, key).await,
            None => RawWorker::connect(h.worker_addr).await,
        };
        let sync = client.join("healthy", "chat", "health", None).await;
        assert_eq!(sync["event"]["type"], "sync", "{sync}");
        static ROUND: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let item = ROUND
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .to_string();
        let data = json!({"stream_name": "chat", "group_id": "health", "item_id": item, "data": 1});
        worker.ok("stream::set", data).await;
        let event = client.next().await;
        assert_eq!(event["event"]["type"], "create", "{event}");
    };
    tokio::time::timeout(HEALTHY_WITHIN, round_trip)
        .await
        .expect("a healthy client and worker are served");
    assert!(started.elapsed() < HEALTHY_WITHIN);
}

/// A WebSocket upgrade done by hand on a raw socket, which then answers nothing.
async fn raw_upgrade(addr: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp
}

/// The code and reason of the close frame among unmasked server frames (pings, then close).
fn close_frame(mut bytes: &[u8]) -> Option<(u16, String)> {
    while bytes.len() >= 2 {
        let (opcode, len) = (bytes[0] & 0x0f, (bytes[1] & 0x7f) as usize);
        assert!(len < 126, "only control frames are expected");
        let payload = bytes.get(2..2 + len)?;
        if opcode == 0x8 {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            return Some((code, String::from_utf8_lossy(&payload[2..]).into_owned()));
        }
        bytes = &bytes[2 + len..];
    }
    None
}

/// Reads from a raw TCP socket until the engine closes it; returns what it sent.
async fn read_until_closed(tcp: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(within, async {
        let mut buf = [0u8; 1024];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the engine closed the socket");
    got
}

async fn half_request(addr: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        .await
        .unwrap();
    tcp
}

#[tokio::test]
async fn a_socket_that_does_not_finish_its_request_is_closed_after_the_handshake_timeout() {
    let mut config = test_config();
    let timeout = Duration::from_millis(1500);
    config.client_timeouts.handshake = timeout;
    config.worker_timeouts.handshake = timeout;
    let h = start(config).await;
    let opened = Instant::now();
    let mut silent = TcpStream::connect(h.client_addr).await.unwrap();
    let mut half_client = half_request(h.client_addr).await;
    let mut half_worker = half_request(h.worker_addr).await;

    // Meanwhile the engine serves everyone else.
    assert_healthy(&h, None, None).await;

    // A request sent in pieces is fine as long as its head is whole within the timeout.
    let mut slow_but_whole = half_request(h.client_addr).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    slow_but_whole
        .write_all(b"Connection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut slow_but_whole, Duration::from_secs(10)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 400"),
        "a whole (bad) upgrade request is answered: {answer:?}"
    );

    for tcp in [&mut silent, &mut half_client, &mut half_worker] {
        let sent = read_until_closed(tcp, Duration::from_secs(20)).await;
        let sent = String::from_utf8_lossy(&sent);
        assert!(
            sent.is_empty() || sent.starts_with("HTTP/1.1 408"),
            "{sent:?}"
        );
    }
    // Timers never fire early: the sockets lived out the timeout and no more than the wait.
    assert!(opened.elapsed() >= timeout, "{:?}", opened.elapsed());
    assert_healthy(&h, None, None).await;
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_engine_wide_cap_answers_429_one_past_it() {
    let mut config = test_config();
    config.max_connections = Some(3);
    let h = start(config).await;
    let a = Client::connect(h.client_addr, "/").await;
    let b = Client::connect(h.client_addr, "/").await;
    let w = RawWorker::connect(h.worker_addr).await; // both ports count against one cap
    for addr in [h.client_addr, h.worker_addr] {
        let (status, body) = refused_with_retry_after(ws_request(addr, "/", None)).await;
        assert_eq!(status, 429);
        assert_eq!(body["code"], "max_connections", "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("maximum of 3 connections (max_connections)"),
            "{message}"
        );
    }
    // A slot comes back when a socket goes: the engine serves a new pair again.
    drop((a, b, w));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = http_get(h.client_addr, "/health").await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the slots were never given back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // /health above was a connection too; now a client and a worker fit (2 of 3).
    assert_healthy(&h, None, None).await;
    h.shutdown().await.unwrap();
}

/// An upgrade refused with 429: its status and JSON body, once its `Retry-After` is checked.
async fn refused_with_retry_after(req: Request) -> (u16, Value) {
    match connect_async(req).await {
        Ok(_) => panic!("the upgrade was expected to be refused"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let retry: u64 = resp.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(retry >= 1, "Retry-After is whole seconds, at least 1");
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert!(body["retry_after_ms"].as_u64().unwrap() >= 1, "{body}");
            assert!(
                body["retry_after_ms"].as_u64().unwrap() <= retry * 1000,
                "{body}"
            );
            (resp.status().as_u16(), body)
        }
        Err(e) => panic!("the upgrade failed, not with an HTTP refusal: {e}"),
    }
}

fn alpha_token() -> String {
    token("alpha", SECRET_A, &["*"], 300)
}

#[tokio::test]
async fn a_tenant_over_its_connections_quota_gets_429_and_the_others_go_on() {
    let h = start(two_tenants(
        "  quotas: { connections: 2, connects_per_second: null }\n",
    ))
    .await;
    // `quotas` above is beta's (the last tenant listed): alpha's defaults are far higher.
    let beta = token("beta", SECRET_B, &["chat*"], 300);
    let _c1 = Client::connect_with_token(h.client_addr, "/", &beta).await;
    let _w1 = RawWorker::connect_with_key(h.worker_addr, KEY_B).await;
    for (addr, req) in [
        (h.client_addr, ws_request(h.client_addr, "/", Some(&beta))),
        (h.worker_addr, ws_request(h.worker_addr, "/", Some(KEY_B))),
    ] {
        let (status, body) = refused_with_retry_after(req).await;
        assert_eq!(status, 429, "{addr}");
        assert_eq!(body["code"], "quota_exceeded", "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("`connections` quota: 2 of 2 in use"),
            "{message}"
        );
        assert!(message.contains("quotas.connections"), "{message}");
    }
    let (_, metrics) = http_get(h.client_addr, "/metrics").await;
    let series = r#"streamhost_tenant_quota_refusals_total{tenant="beta",quota="connections"}"#;
    assert_eq!(sample(&metrics, series), 2.0);
    // Alpha is not held to beta's quota.
    assert_healthy(&h, Some(&alpha_token()), Some(KEY_A)).await;
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_tenant_over_its_connects_per_second_gets_429_with_the_wait() {
    let h = start(two_tenants(
        "  quotas: { connects_per_second: { per_second: 1, burst: 2 } }\n",
    ))
    .await;
    let beta = token("beta", SECRET_B, &["chat*"], 300);
    let _c1 = Client::connect_with_token(h.client_addr, "/", &beta).await;
    let _w1 = RawWorker::connect_with_key(h.worker_addr, KEY_B).await;
    let (status, body) =
        refused_with_retry_after(ws_request(h.client_addr, "/", Some(&beta))).await;
    assert_eq!(status, 429);
    assert_eq!(body["code"], "quota_exceeded");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("`connects_per_second` quota (1 per second, bursts of 2)"),
        "{message}"
    );
    assert!(body["retry_after_ms"].as_u64().unwrap() <= 1000, "{body}");
    assert_healthy(&h, Some(&alpha_token()), Some(KEY_A)).await;
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_join_over_subscriptions_per_connection_gets_an_error_frame_and_changes_nothing() {
    let h = start(two_tenants(
        "  quotas: { subscriptions_per_connection: 2 }\n",
    ))
    .await;
    let beta = token("beta", SECRET_B, &["chat*"], 300);
    let mut client = Client::connect_with_token(h.client_addr, "/", &beta).await;
    let worker = RawWorker::connect_with_key(h.worker_addr, KEY_B).await;
    for group in ["g1", "g2"] {
        let sync = client.join(group, "chat", group, None).await;
        assert_eq!(sync["event"]["type"], "sync", "{sync}");
    }
    let refused = client.join("g3", "chat", "g3", None).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["error"]["code"], "quota_exceeded");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("already holds 2 subscriptions"),
        "{message}"
    );
    assert!(
        message.contains("quotas.subscriptions_per_connection"),
        "{message}"
    );
    // Re-joining under a held id replaces it, within the quota.
    let sync = client.join("g2", "chat", "g2", None).await;
    assert_eq!(sync["event"]["type"], "sync", "{sync}");
    // Nothing changed: g3's event does not come, g1's (written after it) does.
    let set = |group: &str| json!({"stream_name": "chat", "group_id": group, "item_id": "i", "data": group});
    worker.ok("stream::set", set("g3")).await;
    worker.ok("stream::set", set("g1")).await;
    let event = client.next().await;
    assert_eq!(event["groupId"], "g1", "{event}");
    let (_, metrics) = http_get(h.client_addr, "/metrics").await;
    let series = r#"streamhost_tenant_quota_refusals_total{tenant="beta",quota="subscriptions_per_connection"}"#;
    assert_eq!(sample(&metrics, series), 1.0);
    assert_healthy(&h, Some(&beta), Some(KEY_B)).await;
    h.shutdown().await.unwrap();
}

fn short_keepalive(config: &mut streamhost::Config) -> Duration {
    let idle = Duration::from_millis(1000);
    for t in [&mut config.client_timeouts, &mut config.worker_timeouts] {
        t.ping_interval = Duration::from_millis(200);
        t.idle_timeout = idle;
    }
    idle
}

#[tokio::test]
async fn a_worker_that_stops_answering_pings_is_dropped_and_its_calls_fail_fast() {
    let mut config = test_config();
    let idle = short_keepalive(&mut config);
    // Far above everything below: a call that waited for it would fail the test's bound.
    config.invocation_timeout = Duration::from_secs(60);
    let h = start(config).await;
    let caller = RawWorker::connect(h.worker_addr).await;

    // A worker that registers a function, makes one round trip, then never reads again: its
    // socket answers no ping (tungstenite answers pings only while it is read).
    let (mut dead, _) = connect_async(ws_request(h.worker_addr, "/", None))
        .await
        .unwrap();
    dead.send(Message::text(
        json!({"type": "registerfunction", "id": "dead::echo"}).to_string(),
    ))
    .await
    .unwrap();
    let call = json!({"type": "invokefunction", "invocation_id": "x", "function_id": "stream::list_groups", "data": {"stream_name": "s"}});
    dead.send(Message::text(call.to_string())).await.unwrap();
    loop {
        let frame = futures_util::StreamExt::next(&mut dead)
            .await
            .unwrap()
            .unwrap();
        if frame
            .to_text()
            .unwrap_or_default()
            .contains("invocationresult")
        {
            break;
        }
    }

    let started = Instant::now();
    let pending = caller.call("dead::echo", json!({})).await;
    let waited = started.elapsed();
    let e = pending.expect_err("the dead worker's call fails");
    assert_eq!(e["code"], "worker_disconnected", "{e}");
    assert!(
        waited < Duration::from_secs(15),
        "failed after {waited:?}, not the 60 s timeout"
    );
    // Its registration went with it: a new call fails at once, not after a timeout.
    let started = Instant::now();
    let e = caller.call("dead::echo", json!({})).await.unwrap_err();
    assert_eq!(e["code"], "function_not_found", "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // The caller, which answers pings, outlived several idle timeouts and is still served.
    assert!(started.elapsed() + waited > idle);
    tokio::time::sleep(idle * 2).await;
    caller
        .ok("stream::list_groups", json!({"stream_name": "s"}))
        .await;
    assert_healthy(&h, None, None).await;
    drop(dead);
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_that_answers_no_pings_is_closed_and_one_that_does_stays() {
    let mut config = test_config();
    let idle = short_keepalive(&mut config);
    let h = start(config).await;
    let mut silent = raw_upgrade(h.client_addr).await;
    let mut alive = Client::connect(h.client_addr, "/").await;
    // `alive` reads (and so answers pings) for three idle timeouts; `silent` reads nothing.
    let reading = async {
        loop {
            match futures_util::StreamExt::next(&mut alive.ws).await {
                Some(Ok(Message::Ping(_))) => continue,
                other => panic!("the reading client got {other:?}"),
            }
        }
    };
    let _ = tokio::time::timeout(idle * 3, reading).await;
    let sync = alive.join("s", "chat", "room", None).await;
    assert_eq!(
        sync["event"]["type"], "sync",
        "the reading client is still served: {sync}"
    );
    // Read raw: a WebSocket library would answer the pings now, and its write to the closed
    // socket would reset the connection before the close frame is read.
    let frames = read_until_closed(&mut silent, Duration::from_secs(10)).await;
    let (code, reason) = close_frame(&frames).expect("a close frame");
    assert_eq!(code, 4010);
    assert!(reason.contains("no frame or pong for 1000 ms"), "{reason}");
    let (_, metrics) = http_get(h.client_addr, "/metrics").await;
    assert_eq!(
        sample(&metrics, "streamhost_idle_disconnects_total"),
        1.0,
        "the silent client is counted, the reading one is not"
    );
    assert_healthy(&h, None, None).await;
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_that_does_not_read_is_closed_once_its_queue_passes_the_byte_bound() {
    let mut config = test_config();
    config.send_queue_bytes = 256 << 10;
    config.send_queue_frames = 1 << 20; // the frame bound is not what closes it
    config.close_grace = Duration::from_secs(30);
    let h = start(config).await;
    let mut reader = Client::connect(h.client_addr, "/").await;
    let sync = reader.join("s", "chat", "big", None).await;
    assert_eq!(sync["event"]["type"], "sync");
    let worker = RawWorker::connect(h.worker_addr).await;
    let event = "x".repeat(32 << 10);
    // The kernel's buffers take a few megabytes before the queue grows at all.
    let mut closed = false;
    for i in 0..4000 {
        let data = json!({"stream_name": "chat", "group_id": "big", "item_id": format!("i{i}"), "data": event});
        worker.ok("stream::set", data).await;
        if i % 50 == 49 {
            let (_, metrics) = http_get(h.client_addr, "/metrics").await;
            if sample(&metrics, "streamhost_slow_client_disconnects_total") >= 1.0 {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "the client that does not read was never closed");
    let (code, reason) = reader
        .close_frame()
        .await
        .expect("a close frame after the queued events");
    assert_eq!(code, 4008);
    assert!(
        reason.contains("bytes waiting (send_queue_bytes 262144)"),
        "{reason}"
    );
    assert_healthy(&h, None, None).await;
    h.shutdown().await.unwrap();
}
