//! Refusals at the engine-wide connection cap (`max_connections`) are counted in
//! `streamhost_connections_refused_total{reason}`: answered 429 (`max_connections`), and
//! closed unanswered once [`MAX_REFUSING`] answers are already running (`unanswered`).
//!
//! Scraping `/metrics` is itself a connection, and a slot comes back only once the engine
//! sees a socket go, so each test counts what its own attempts were told (429, nothing, or
//! an answer) and checks the counters against that exactly.

mod common;

use common::{Client, RawWorker, sample, start, test_config, ws_request};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use streamhost::sockets::accept::MAX_REFUSING;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::connect_async;

const ANSWERED: &str = r#"streamhost_connections_refused_total{reason="max_connections"}"#;
const UNANSWERED: &str = r#"streamhost_connections_refused_total{reason="unanswered"}"#;

/// A GET: the status and body, or None if the engine closed the connection unanswered.
async fn try_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut tcp = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    // A connection closed at once may refuse the write; what it answered is read below.
    let _ = tcp.write_all(request.as_bytes()).await;
    let mut bytes = Vec::new();
    let _ = tcp.read_to_end(&mut bytes).await;
    let text = String::from_utf8_lossy(&bytes);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// Refusals seen by the polls of [`scrape`].
#[derive(Default)]
struct Seen {
    answered: u64,
    unanswered: u64,
}

/// `/metrics`, polled until a slot is free again; counts what each refused poll was told.
async fn scrape(addr: SocketAddr, seen: &mut Seen) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match try_get(addr, "/metrics").await {
            Some((200, body)) => return body,
            Some((429, _)) => seen.answered += 1,
            None => seen.unanswered += 1,
            Some((status, body)) => panic!("/metrics answered {status}: {body}"),
        }
        assert!(Instant::now() < deadline, "no slot was ever given back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn refusals_at_the_engine_cap_are_counted_and_admissions_are_not() {
    let mut config = test_config();
    config.max_connections = Some(2);
    let h = start(config).await;
    // At the cap: both admitted (both ports count against one cap), nothing counted.
    let client = Client::connect(h.client_addr, "/").await;
    let worker = RawWorker::connect(h.worker_addr).await;
    // One past it, on each port: refused with 429, each counted once.
    for addr in [h.client_addr, h.worker_addr] {
        match connect_async(ws_request(addr, "/", None)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 429)
            }
            other => panic!("expected a 429 refusal, got {:?}", other.map(|_| ())),
        }
    }
    drop(worker);
    let mut seen = Seen::default();
    let body = scrape(h.client_addr, &mut seen).await;
    assert_eq!(
        sample(&body, ANSWERED),
        (2 + seen.answered) as f64,
        "two refused upgrades and {} refused scrapes",
        seen.answered
    );
    assert_eq!(sample(&body, UNANSWERED), seen.unanswered as f64);
    drop(client);
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn past_the_answers_running_at_once_a_refusal_is_closed_unanswered_and_counted() {
    let mut config = test_config();
    config.max_connections = Some(1);
    // Long enough that no refusal times out while the others are being opened.
    config.client_timeouts.handshake = Duration::from_secs(30);
    let h = start(config).await;
    let holder = Client::connect(h.client_addr, "/").await;
    // MAX_REFUSING over-cap connections that never finish their request: each holds one of
    // the answers running at once. The accept loop takes them in the order they connect.
    let mut refusing = Vec::new();
    for _ in 0..MAX_REFUSING {
        let mut tcp = TcpStream::connect(h.client_addr).await.unwrap();
        tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        refusing.push(tcp);
    }
    // One past: closed at once, without a word.
    let mut seen = Seen::default();
    let past = tokio::time::timeout(Duration::from_secs(20), try_get(h.client_addr, "/health"))
        .await
        .expect("the connection one past was closed, not left waiting");
    assert_eq!(past.map(|(s, _)| s), None, "closed unanswered");
    seen.unanswered += 1;

    // The refusals still running were all answered 429 once their requests are whole.
    for tcp in &mut refusing[..3] {
        tcp.write_all(b"\r\n").await.unwrap();
        let mut bytes = Vec::new();
        tcp.read_to_end(&mut bytes).await.unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.starts_with("HTTP/1.1 429"), "{text}");
    }
    drop(refusing);
    drop(holder);
    let body = scrape(h.client_addr, &mut seen).await;
    assert_eq!(
        sample(&body, ANSWERED),
        (MAX_REFUSING as u64 + seen.answered) as f64
    );
    assert_eq!(sample(&body, UNANSWERED), seen.unanswered as f64);
    h.shutdown().await.unwrap();
}
