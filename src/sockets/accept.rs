//! Accepting TCP connections on the client and worker ports, before any of it is WebSocket.
//!
//! `axum::serve` sets no limit on how long a connection may take to send its request, so a
//! peer that opens sockets and sends nothing (or half a request) holds a descriptor forever.
//! This loop serves each connection with hyper's HTTP/1 builder and a `header_read_timeout`
//! (the socket's `handshake_timeout_ms`), and counts every open connection of both ports
//! against one engine-wide cap (`max_connections`): past it, a connection is answered 429
//! with `Retry-After` and closed. The answer itself holds a descriptor for at most the
//! handshake timeout, and only [`MAX_REFUSING`] such answers run at once; past that a
//! connection is dropped unanswered. Both kinds of refusal are counted
//! (`streamhost_connections_refused_total{reason}`), so that an operator sees the cap bite.
//!
//! A connection's slot is a [`ConnSlot`] in the request's extensions: an upgraded socket
//! keeps a clone for as long as it lives, so the slot is given back when the WebSocket goes,
//! not when the HTTP exchange ends.

use crate::engine::Engine;
use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_service::Service;

/// Over-cap connections being answered 429 at once; more are closed unanswered.
pub const MAX_REFUSING: usize = 64;

/// One of the engine's `max_connections`, held while the connection (or its socket) lives.
#[derive(Clone)]
pub struct ConnSlot(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

/// The engine-wide count of open connections, shared by both ports.
pub struct Connections {
    open: Arc<Semaphore>,
    refusing: Arc<Semaphore>,
    max: usize,
}

impl Connections {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Connections {
            open: Arc::new(Semaphore::new(max)),
            refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
            max,
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// What one port serves and how.
pub struct Port {
    pub name: &'static str,
    pub router: Router,
    pub handshake_timeout: Duration,
    pub connections: Arc<Connections>,
}

/// Accepts connections until `stop` resolves; each one then finishes its exchange (an
/// upgraded socket closes itself on the engine's shutdown).
pub async fn serve(listener: TcpListener, port: Port, engine: Arc<Engine>) {
    let port = Arc::new(port);
    let stopped = engine.shutdown_signal();
    tokio::pin!(stopped);
    loop {
        let accepted = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors, most likely: back off rather than spin.
                tracing::warn!(port = port.name, error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match port.connections.open.clone().try_acquire_owned() {
            Ok(permit) => {
                let slot = ConnSlot(Arc::new(permit));
                tokio::spawn(connection(
                    stream,
                    addr,
                    port.clone(),
                    slot,
                    engine.shutdown_signal(),
                ));
            }
            Err(_) => match port.connections.refusing.clone().try_acquire_owned() {
                Ok(permit) => {
                    tracing::debug!(port = port.name, %addr, max = port.connections.max, "connection refused: max_connections");
                    engine.metrics.connections.refused("max_connections");
                    tokio::spawn(refuse(stream, port.clone(), permit));
                }
                Err(_) => {
                    tracing::debug!(port = port.name, %addr, "connection closed unanswered: max_connections, and too many refusals being answered");
                    engine.metrics.connections.refused("unanswered");
                    drop(stream)
                }
            },
        }
    }
}

fn builder(timeout: Duration) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeout);
    builder
}

async fn connection(
    stream: TcpStream,
    addr: SocketAddr,
    port: Arc<Port>,
    slot: ConnSlot,
    stop: impl Future<Output = ()>,
) {
    let router = port.router.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(addr));
        req.extensions_mut().insert(slot.clone());
        router.clone().call(req)
    });
    let conn = builder(port.handshake_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // A header timeout, a malformed request, a peer gone mid-request.
        tracing::debug!(port = port.name, %addr, error = %e, "connection ended");
    }
}

/// Answers every request on an over-cap connection 429, then closes it.
async fn refuse(stream: TcpStream, port: Arc<Port>, _permit: OwnedSemaphorePermit) {
    let max = port.connections.max;
    let service = hyper::service::service_fn(move |_req: Request<Incoming>| async move {
        Ok::<_, Infallible>(too_many(
            "max_connections",
            format!(
                "the engine holds its maximum of {max} connections (max_connections); retry shortly"
            ),
            Duration::from_secs(1),
        ))
    });
    let mut builder = builder(port.handshake_timeout);
    builder.keep_alive(false);
    let _ = builder
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// A 429 refusal with `Retry-After` (whole seconds, at least 1) and the JSON body of every
/// upgrade refusal, plus `retry_after_ms`.
pub fn too_many(code: &str, message: String, retry_after: Duration) -> Response<axum::body::Body> {
    let ms = retry_after.as_millis().max(1) as u64;
    let body = json!({"code": code, "message": message, "retry_after_ms": ms}).to_string();
    Response::builder()
        .status(StatusCode::TOO_MANY_REQUESTS)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::RETRY_AFTER, ms.div_ceil(1000).to_string())
        .body(axum::body::Body::from(body))
        .expect("a valid response")
}
