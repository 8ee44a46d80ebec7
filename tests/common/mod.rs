//! Shared test helpers: engines (in-process or as the real binary), raw WebSocket clients and
//! a raw worker that speaks the worker protocol.
#![allow(dead_code)]

pub mod build_adapters;
pub mod conformance;
pub mod exposition;
pub mod hostile;
pub mod tenants;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use streamhost::{Config, Server, ServerHandle};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

pub const WAIT: Duration = Duration::from_secs(10);

/// A config on free loopback ports with an in-memory store.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.host = "127.0.0.1".into();
    config.port = 0;
    config.worker_host = "127.0.0.1".into();
    config.worker_port = 0;
    config.adapter = streamhost::config::AdapterConfig::KvMemory;
    config.wasm_cache_dir = None;
    config
}

/// The directory of the `.wasm` adapters built from `adapters/` (built once per process).
pub fn adapters_dir() -> &'static Path {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_adapters::build)
}

/// The bytes of one adapter from `adapters/`, e.g. `component("validator")`.
pub fn component(name: &str) -> Vec<u8> {
    let path = adapters_dir().join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

pub async fn start(config: Config) -> ServerHandle {
    Server::start(config).await.expect("engine starts")
}

/// The engine as a separate process, for crash tests and SDK tests.
pub struct EngineProcess {
    pub child: Child,
    pub client_addr: SocketAddr,
    pub worker_addr: SocketAddr,
}

impl EngineProcess {
    /// Starts `streamhost serve --config FILE` and reads the addresses it prints.
    pub fn spawn(config_file: &Path) -> EngineProcess {
        Self::spawn_with_env(config_file, &[])
    }

    /// As `spawn`, with extra environment variables.
    pub fn spawn_with_env(config_file: &Path, env: &[(&str, &str)]) -> EngineProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_streamhost"))
            .args(["serve", "--config"])
            .arg(config_file)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn streamhost");
        EngineProcess::listening(child)
    }

    /// A started server (the engine, or a yardstick that prints the same line) once it has
    /// printed `clients ws://ADDR workers ws://ADDR` on its stdout.
    pub fn listening(mut child: Child) -> EngineProcess {
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read the listening line");
        let addr = |key: &str| -> SocketAddr {
            let rest = line
                .split(key)
                .nth(1)
                .unwrap_or_else(|| panic!("no {key} in {line:?}"));
            rest.split_whitespace().next().unwrap().parse().unwrap()
        };
        EngineProcess {
            client_addr: addr("clients ws://"),
            worker_addr: addr("workers ws://"),
            child,
        }
    }

    pub fn kill9(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe_kill(self.child.id(), "TERM");
        self.child.wait().unwrap()
    }
}

fn unsafe_kill(pid: u32, signal: &str) {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// A config file on free loopback ports; `adapter` is the YAML of the adapter mapping.
pub fn write_config(dir: &Path, adapter: &str) -> std::path::PathBuf {
    let path = dir.join("iii-config.yaml");
    let text = format!(
        "workers:\n  - name: iii-worker-manager\n    config: {{ host: 127.0.0.1, port: 0 }}\n  - name: iii-stream\n    config:\n      host: 127.0.0.1\n      port: 0\n      adapter: {adapter}\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A browser-like client on the client socket.
pub struct Client {
    pub ws: Ws,
}

impl Client {
    pub async fn connect(addr: SocketAddr, path: &str) -> Client {
        Client::connect_request(ws_request(addr, path, None)).await
    }

    /// Connects with a token, sent as `Authorization: Bearer <token>`.
    pub async fn connect_with_token(addr: SocketAddr, path: &str, token: &str) -> Client {
        Client::connect_request(ws_request(addr, path, Some(token))).await
    }

    pub async fn connect_request(req: Request) -> Client {
        let (ws, _) = connect_async(req).await.expect("client connects");
        Client { ws }
    }

    pub async fn send_json(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    pub async fn join(&mut self, sub: &str, stream: &str, group: &str, id: Option<&str>) -> Value {
        self.send_json(json!({"type": "join", "data": {"subscriptionId": sub, "streamName": stream, "groupId": group, "id": id}})).await;
        self.next().await
    }

    /// The next JSON frame; panics after `WAIT`.
    pub async fn next(&mut self) -> Value {
        self.try_next(WAIT).await.expect("a frame within the wait")
    }

    pub async fn try_next(&mut self, wait: Duration) -> Option<Value> {
        // One deadline for the whole wait: the engine's pings must not extend it.
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match msg.ok()? {
                Message::Text(t) => return Some(serde_json::from_str(t.as_str()).unwrap()),
                Message::Binary(b) => return Some(serde_json::from_slice(&b).unwrap()),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Reads until the socket closes; returns the close code and reason.
    pub async fn close_frame(&mut self) -> Option<(u16, String)> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await.ok()?? {
                Ok(Message::Close(Some(f))) => return Some((f.code.into(), f.reason.to_string())),
                Ok(Message::Close(None)) => return None,
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }
}

type Handler = Arc<dyn Fn(Value) -> Result<Option<Value>, Value> + Send + Sync>;

/// Calls waiting for an answer; None once the socket has closed, so that a call made after
/// that fails at once instead of waiting for an answer that cannot come.
type Pending = Arc<Mutex<Option<HashMap<String, oneshot::Sender<Value>>>>>;

/// A worker speaking the raw worker protocol, so tests see every frame exactly.
pub struct RawWorker {
    out: mpsc::UnboundedSender<Message>,
    pending: Pending,
    handlers: Arc<Mutex<HashMap<String, Handler>>>,
    pub worker_id: String,
    pub frames: mpsc::UnboundedReceiver<Value>,
    next_id: std::sync::atomic::AtomicU64,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Dropping a worker closes its socket, as a crashed worker process would.
impl Drop for RawWorker {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl RawWorker {
    pub async fn connect(addr: SocketAddr) -> RawWorker {
        RawWorker::connect_request(ws_request(addr, "/", None)).await
    }

    /// Connects with a worker key, sent as `Authorization: Bearer <key>` (as the SDKs send
    /// III_TOKEN).
    pub async fn connect_with_key(addr: SocketAddr, key: &str) -> RawWorker {
        RawWorker::connect_request(ws_request(addr, "/", Some(key))).await
    }

    pub async fn connect_request(req: Request) -> RawWorker {
        let (ws, _) = connect_async(req).await.expect("worker connects");
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let (frames_tx, frames) = mpsc::unbounded_channel();
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let handlers: Arc<Mutex<HashMap<String, Handler>>> = Arc::default();
        let writer = tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
        });
        let (registered_tx, registered_rx) = oneshot::channel();
        let mut registered_tx = Some(registered_tx);
        let (p, h, o) = (pending.clone(), handlers.clone(), out.clone());
        let reader = tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(text) = msg else { continue };
                let v: Value = serde_json::from_str(text.as_str()).unwrap();
                match v["type"].as_str() {
                    Some("workerregistered") => {
                        if let Some(tx) = registered_tx.take() {
                            let _ = tx.send(v["worker_id"].as_str().unwrap().to_owned());
                        }
                    }
                    Some("invocationresult") => {
                        let id = v["invocation_id"].as_str().unwrap_or_default().to_owned();
                        let waiter = p.lock().unwrap().as_mut().and_then(|p| p.remove(&id));
                        match waiter {
                            Some(tx) => {
                                let _ = tx.send(v);
                            }
                            // An answer to no call of ours: the test may want to see it.
                            None => {
                                let _ = frames_tx.send(v);
                            }
                        }
                    }
                    Some("invokefunction") => {
                        // Handlers may block (tests simulate slow workers): run them off the runtime.
                        let handler = h
                            .lock()
                            .unwrap()
                            .get(v["function_id"].as_str().unwrap())
                            .cloned();
                        let (o, call) = (o.clone(), v.clone());
                        tokio::task::spawn_blocking(move || {
                            let reply = match handler {
                                Some(f) => match f(call["data"].clone()) {
                                    Ok(Some(r)) => json!({"result": r}),
                                    Ok(None) => json!({}),
                                    Err(e) => json!({"error": e}),
                                },
                                None => {
                                    json!({"error": {"code": "function_not_found", "message": "no handler"}})
                                }
                            };
                            if let Some(id) = call.get("invocation_id").filter(|i| !i.is_null()) {
                                let mut reply = reply;
                                reply["type"] = json!("invocationresult");
                                reply["invocation_id"] = id.clone();
                                reply["function_id"] = call["function_id"].clone();
                                let _ = o.send(Message::text(reply.to_string()));
                            }
                        });
                        let _ = frames_tx.send(v);
                    }
                    _ => {
                        let _ = frames_tx.send(v);
                    }
                }
            }
            // The socket is gone: calls still waiting fail now, and later ones at once.
            p.lock().unwrap().take();
        });
        let worker_id = tokio::time::timeout(WAIT, registered_rx)
            .await
            .expect("workerregistered in time")
            .unwrap();
        RawWorker {
            out,
            pending,
            handlers,
            worker_id,
            frames,
            next_id: Default::default(),
            tasks: vec![writer, reader],
        }
    }

    pub fn send_raw(&self, msg: Message) {
        self.out.send(msg).unwrap();
    }

    pub fn send_json(&self, v: Value) {
        self.send_raw(Message::text(v.to_string()));
    }

    /// Calls a function and returns the whole `invocationresult` frame.
    pub async fn call_raw(&self, function_id: &str, data: Value) -> Value {
        self.try_call_raw(function_id, data)
            .await
            .expect("the worker socket closed before the answer")
    }

    /// Like `call_raw`, but None when the socket closes first.
    pub async fn try_call_raw(&self, function_id: &str, data: Value) -> Option<Value> {
        self.try_call_frame(
            json!({"type": "invokefunction", "function_id": function_id, "data": data}),
        )
        .await
    }

    /// Sends `frame` with a fresh `invocation_id` and returns the `invocationresult` frame.
    pub async fn call_frame(&self, frame: Value) -> Value {
        self.try_call_frame(frame)
            .await
            .expect("the worker socket closed before the answer")
    }

    pub async fn try_call_frame(&self, mut frame: Value) -> Option<Value> {
        self.try_call_text(|id| {
            frame["invocation_id"] = json!(id);
            frame.to_string()
        })
        .await
    }

    /// Sends the text `make(id)` for a fresh invocation id and waits for the answer to that
    /// id: for frames that are not JSON a test could build with serde.
    pub async fn try_call_text(&self, make: impl FnOnce(&str) -> String) -> Option<Value> {
        let id = format!(
            "call-{}",
            self.next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let (tx, rx) = oneshot::channel();
        // Checked under the lock the reader takes to close, so no call slips in after it.
        self.pending
            .lock()
            .unwrap()
            .as_mut()?
            .insert(id.clone(), tx);
        let _ = self.out.send(Message::text(make(&id)));
        // Only a guard against a hang: compiling a large component on a busy machine is slow.
        tokio::time::timeout(Duration::from_secs(120), rx)
            .await
            .expect("an answer in time")
            .ok()
    }

    /// Calls a function: Ok(result or None) or Err(error object).
    pub async fn call(&self, function_id: &str, data: Value) -> Result<Option<Value>, Value> {
        let r = self.call_raw(function_id, data).await;
        match r.get("error") {
            Some(e) if !e.is_null() => Err(e.clone()),
            _ => Ok(r.get("result").cloned()),
        }
    }

    pub async fn ok(&self, function_id: &str, data: Value) -> Value {
        self.call(function_id, data)
            .await
            .unwrap_or_else(|e| panic!("{function_id} failed: {e}"))
            .unwrap_or(Value::Null)
    }

    /// Registers a function served by `handler`, and waits until the engine knows it.
    pub async fn register(
        &self,
        id: &str,
        handler: impl Fn(Value) -> Result<Option<Value>, Value> + Send + Sync + 'static,
    ) {
        self.handlers
            .lock()
            .unwrap()
            .insert(id.to_owned(), Arc::new(handler));
        self.send_json(json!({"type": "registerfunction", "id": id}));
        self.sync().await;
    }

    pub async fn register_trigger(
        &self,
        id: &str,
        trigger_type: &str,
        function_id: &str,
        config: Value,
    ) {
        self.send_json(json!({"type": "registertrigger", "id": id, "trigger_type": trigger_type, "function_id": function_id, "config": config}));
        self.sync().await;
    }

    /// Frames from one worker are handled in order: a round trip means all before it are done.
    pub async fn sync(&self) {
        let _ = self
            .call("stream::list_groups", json!({"stream_name": "__sync__"}))
            .await;
    }
}

/// A WebSocket request for `path`, with `Authorization: Bearer <token>` when given.
pub fn ws_request(addr: SocketAddr, path: &str, token: Option<&str>) -> Request {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    if let Some(token) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    req
}

/// The HTTP status and JSON body of an upgrade the engine refuses; panics if it upgrades.
pub async fn refused(req: Request) -> (u16, Value) {
    match connect_async(req).await {
        Ok(_) => panic!("the upgrade was expected to be refused"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_deref().unwrap_or_default();
            let body = serde_json::from_slice(body).unwrap_or(Value::Null);
            (resp.status().as_u16(), body)
        }
        Err(e) => panic!("the upgrade failed, not with an HTTP refusal: {e}"),
    }
}

/// A plain HTTP/1.1 GET on the client port (`/metrics`, `/health`): the status and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(addr).await.unwrap();
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

/// The value of one sample line of `/metrics`, e.g. `streamhost_subscriptions`; None if absent.
pub fn try_sample(body: &str, series: &str) -> Option<f64> {
    let line = body
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))?;
    Some(line.rsplit(' ').next().unwrap().parse().unwrap())
}

/// As `try_sample`, for a sample that must be there.
pub fn sample(body: &str, series: &str) -> f64 {
    try_sample(body, series).unwrap_or_else(|| panic!("no {series} in\n{body}"))
}

/// A plain HTTP/1.1 request (the admin API): `Authorization: Bearer <bearer>` when given,
/// `body` as the request body. Returns the status and the body.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    // A server that refuses early may stop reading; its answer is still there to read.
    let _ = tcp.write_all(&request).await;
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut bytes)).await;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer to {method} {path}: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
