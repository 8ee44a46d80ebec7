//! A client socket that the test scripts frame by frame, to hold the browser client to the
//! resume protocol (/work/notes/resume-protocol.md) exactly, including the cases a real engine
//! reaches only by bad luck: a duplicate, a gap, a new epoch, a server that goes quiet.

use crate::harness::SETTLE;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

pub struct FakeServer {
    listener: TcpListener,
    addr: SocketAddr,
}

/// One accepted socket, with what its upgrade request offered.
pub struct Conn {
    ws: WebSocketStream<TcpStream>,
    /// The subprotocols offered, in order.
    pub protocols: Vec<String>,
    /// The query string of the upgrade request.
    pub query: String,
}

impl FakeServer {
    pub async fn start() -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        FakeServer { listener, addr }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// The page's next connection; echoes `Authorization` when offered, as streamhost does.
    // The callback's error type is tungstenite's, large or not.
    #[allow(clippy::result_large_err)]
    pub async fn accept(&self) -> Conn {
        let (tcp, _) = tokio::time::timeout(SETTLE, self.listener.accept())
            .await
            .expect("the page connects (or reconnects) in time")
            .unwrap();
        let mut protocols = Vec::new();
        let mut query = String::new();
        let ws = tokio_tungstenite::accept_hdr_async(
            tcp,
            |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
                query = req.uri().query().unwrap_or_default().to_owned();
                protocols = req
                    .headers()
                    .get_all("sec-websocket-protocol")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .map(|p| p.trim().to_owned())
                    .collect();
                if protocols.first().map(String::as_str) == Some("Authorization") {
                    resp.headers_mut()
                        .insert("sec-websocket-protocol", "Authorization".parse().unwrap());
                }
                Ok(resp)
            },
        )
        .await
        .expect("the upgrade");
        Conn {
            ws,
            protocols,
            query,
        }
    }
}

impl Conn {
    /// The next JSON frame the page sent.
    pub async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(SETTLE, self.ws.next())
                .await
                .expect("a frame from the page in time")
                .expect("the page's socket is open")
                .unwrap();
            if let Message::Text(t) = msg {
                return serde_json::from_str(t.as_str()).unwrap();
            }
        }
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .unwrap();
    }
}

/// A server frame about `chat/room-1`, with an offset and epoch (and `recovered` when given).
pub fn frame(
    id: Option<&str>,
    event: Value,
    offset: u64,
    epoch: &str,
    recovered: Option<bool>,
) -> Value {
    let mut f = json!({"type": "stream", "timestamp": 1, "streamName": "chat", "groupId": "room-1",
                       "id": id, "event": event, "offset": offset, "epoch": epoch});
    if let Some(r) = recovered {
        f["recovered"] = json!(r);
    }
    f
}

/// A `stream::send` event frame named `tick` carrying `{"n": n}`.
pub fn tick(n: u64, offset: u64, epoch: &str, recovered: Option<bool>) -> Value {
    frame(
        None,
        json!({"type": "event", "event": {"type": "tick", "data": {"n": n}}}),
        offset,
        epoch,
        recovered,
    )
}

/// The marker that opens a recovery from `offset`, `missed` events following.
pub fn marker(offset: u64, epoch: &str, missed: u64) -> Value {
    frame(
        None,
        json!({"type": "recovered", "data": {"missed": missed}}),
        offset,
        epoch,
        Some(true),
    )
}
