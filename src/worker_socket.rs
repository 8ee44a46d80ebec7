//! The worker socket (port 49134): SDK workers register functions and triggers and call
//! functions (spec section 6).
//!
//! Every path upgrades, so an SDK's telemetry socket (`/otel`) is accepted and its binary
//! frames ignored. Calls from a worker run concurrently, each in its own task, so that a
//! worker's burst of writes shares the store's group commit.
//!
//! Every call that carries an `invocation_id` is answered, a malformed one too: its caller
//! gets an `invocationresult` error saying what was wrong rather than waiting out its
//! timeout. A frame serde cannot read at all goes through `scan` to find the id.

mod scan;

use crate::engine::Engine;
use crate::error::{FnError, FnResult};
use crate::outbox::{self, CLOSE_TOO_BIG, Flow, Outbox, Peer};
use crate::router::WorkerHandle;
use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Frames queued for one worker before senders wait.
const WORKER_QUEUE: usize = 8192;
/// Largest frame from a worker (the Python SDK sends up to 64 MiB).
const MAX_WORKER_FRAME: usize = 64 << 20;

pub fn routes(engine: Arc<Engine>) -> Router {
    Router::new().fallback(upgrade).with_state(engine)
}

async fn upgrade(State(engine): State<Arc<Engine>>, ws: WebSocketUpgrade) -> Response {
    ws.max_message_size(MAX_WORKER_FRAME)
        .max_frame_size(MAX_WORKER_FRAME)
        .on_upgrade(move |socket| serve(engine, socket))
}

#[derive(Deserialize)]
struct RegisterFunction {
    id: String,
}

#[derive(Deserialize)]
struct RegisterTrigger {
    id: String,
    trigger_type: String,
    function_id: String,
    #[serde(default)]
    config: Value,
    /// Passed to every call the trigger makes.
    #[serde(default)]
    metadata: Option<Value>,
}

#[derive(Deserialize)]
struct Invoke {
    invocation_id: Option<String>,
    function_id: String,
    #[serde(default)]
    data: Value,
    /// Forwarded unchanged to the worker that serves the call.
    #[serde(default)]
    metadata: Option<Value>,
}

#[derive(Deserialize)]
struct InvocationResult {
    invocation_id: String,
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    error: Option<Value>,
}

async fn serve(engine: Arc<Engine>, socket: WebSocket) {
    let worker_id = uuid::Uuid::new_v4().to_string();
    let (outbox, rx) = Outbox::new(WORKER_QUEUE, engine.stats.slow_disconnects.clone());
    let worker = Arc::new(WorkerHandle::new(worker_id.clone(), outbox.clone()));
    engine
        .stats
        .worker_connections
        .fetch_add(1, Ordering::Relaxed);
    worker.push(json!({"type": "workerregistered", "worker_id": worker_id}).to_string());
    tracing::debug!(worker = %worker_id, "worker connected");

    let mut peer = WorkerPeer {
        engine: engine.clone(),
        worker: worker.clone(),
    };
    outbox::drive(
        socket,
        rx,
        outbox,
        engine.shutdown_signal(),
        engine.config.close_grace,
        &mut peer,
    )
    .await;
    engine.router.remove_worker(&worker_id);
    engine.triggers.remove_worker(&worker_id);
    worker.disconnect();
    engine
        .stats
        .worker_connections
        .fetch_sub(1, Ordering::Relaxed);
    tracing::debug!(worker = %worker_id, "worker disconnected");
}

struct WorkerPeer {
    engine: Arc<Engine>,
    worker: Arc<WorkerHandle>,
}

impl Peer for WorkerPeer {
    async fn on_message(&mut self, msg: Result<Message, axum::Error>) -> Flow {
        match msg {
            Ok(Message::Text(text)) => handle(&self.engine, &self.worker, text.as_str()),
            // Telemetry (OTLP, MTRC, LOGS) and any other binary frame: not ours to read.
            Ok(_) => {}
            Err(e) => {
                match outbox::read_error_close(&e) {
                    Some((code, detail)) => {
                        let reason = if code == CLOSE_TOO_BIG {
                            format!("{detail} (a worker frame may be 64 MiB)")
                        } else {
                            detail
                        };
                        tracing::warn!(worker = %self.worker.id, code, %reason, "closing a worker socket");
                        self.worker.close(code, reason);
                    }
                    None => {
                        tracing::debug!(worker = %self.worker.id, error = %e, "worker socket error")
                    }
                }
                return Flow::Stop;
            }
        }
        Flow::Continue
    }
}

/// Takes the message apart (moving, not copying, its payload); errors name the field.
fn parse<T: for<'de> Deserialize<'de>>(msg: Value, text: &str) -> Result<T, String> {
    serde_json::from_value(msg).map_err(|e| explain::<T>(text).unwrap_or_else(|| e.to_string()))
}

/// Why a frame does not fit `T`, with the path of the field at fault. The frame is read again
/// for this: tracking the path on every frame would cost an allocation per key.
fn explain<T: for<'de> Deserialize<'de>>(text: &str) -> Option<String> {
    let mut frame = serde_json::Deserializer::from_str(text);
    let e = serde_path_to_error::deserialize::<_, T>(&mut frame).err()?;
    Some(match e.path().to_string().as_str() {
        "." => e.inner().to_string(),
        path => format!("{path}: {}", e.inner()),
    })
}

const INVOKE_SHAPE: &str = r#"expected {"type":"invokefunction","invocation_id"?:string,"function_id":string,"data":any,"metadata"?:any}"#;

/// Handles one frame from a worker. It never waits: calls run in tasks of their own, so the
/// socket's own task keeps writing (a worker's queue is drained by the task reading it).
fn handle(engine: &Arc<Engine>, worker: &Arc<WorkerHandle>, text: &str) {
    let msg: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return unreadable(worker, text, &e),
    };
    let kind = msg
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let kind = kind.as_str();
    let outcome = match kind {
        "registerfunction" => {
            parse::<RegisterFunction>(msg, text).map(|f| engine.router.register(&f.id, worker))
        }
        "unregisterfunction" => parse::<RegisterFunction>(msg, text)
            .map(|f| engine.router.unregister(&f.id, &worker.id)),
        "registertrigger" => {
            parse::<RegisterTrigger>(msg, text).map(|t| register_trigger(engine, worker, t))
        }
        "unregistertrigger" => {
            parse::<RegisterFunction>(msg, text).map(|t| engine.triggers.unregister(&t.id))
        }
        "invokefunction" => {
            let (id, function_id) = (msg.get("invocation_id").cloned(), function_of(&msg));
            parse::<Invoke>(msg, text)
                .map(|call| invoke(engine, worker, call))
                .inspect_err(|e| {
                    let message = format!("malformed invokefunction: {e}; {INVOKE_SHAPE}");
                    refuse_call(worker, id, &function_id, "invalid_message", message);
                })
        }
        "invocationresult" => {
            let id = msg.get("invocation_id").cloned();
            parse::<InvocationResult>(msg, text)
                .map(|r| worker.complete(&r.invocation_id, to_result(r.result, r.error)))
                .inspect_err(|e| {
                    let message = format!("the worker's invocationresult is malformed: {e}");
                    fail_pending(worker, id.as_ref().and_then(Value::as_str), message);
                })
        }
        "ping" => {
            worker.push(json!({"type": "pong"}).to_string());
            Ok(())
        }
        "pong"
        | "registertriggertype"
        | "unregistertriggertype"
        | "registerservice"
        | "reattach" => Ok(()),
        other => {
            tracing::info!(worker = %worker.id, message_type = other, "unknown worker message type; ignored");
            Ok(())
        }
    };
    if let Err(e) = outcome {
        tracing::warn!(worker = %worker.id, message_type = kind, error = %e, "malformed worker message; ignored");
    }
}

fn function_of(msg: &Value) -> String {
    let id = msg.get("function_id").and_then(Value::as_str);
    id.unwrap_or_default().to_owned()
}

/// A frame serde_json cannot read: a call in it is still answered, and a worker's answer
/// still ends the wait of the call it answers.
fn unreadable(worker: &Arc<WorkerHandle>, text: &str, err: &serde_json::Error) {
    let found = scan::envelope(text);
    let detail = err.to_string();
    let hint = if detail.contains("recursion limit") {
        "; a frame may nest at most 127 levels, its own object included (serde_json's limit, as in iii): flatten the data"
    } else if detail.contains("surrogate") || detail.contains("end of hex escape") {
        // serde_json says "unexpected end of hex escape" for `"\ud83d"` on its own.
        "; a string holds a lone UTF-16 surrogate escape such as \\ud83d, what JavaScript writes for a string cut inside an emoji or other pair: cut strings on whole characters"
    } else {
        ""
    };
    let message = format!("the frame is not valid JSON: {detail}{hint}");
    tracing::warn!(worker = %worker.id, message_type = found.kind.as_deref().unwrap_or("?"), invocation_id = found.invocation_id.as_deref().unwrap_or(""), error = %message, "unreadable worker frame");
    match found.kind.as_deref() {
        Some("invokefunction") => {
            let id = found.invocation_id.map(Value::String);
            let function_id = found.function_id.unwrap_or_default();
            refuse_call(worker, id, &function_id, "deserialization_error", message);
        }
        Some("invocationresult") => {
            let message = format!("the worker's invocationresult is unreadable: {message}");
            fail_pending(worker, found.invocation_id.as_deref(), message);
        }
        _ => {}
    }
}

/// Answers a call that cannot run; one without an id (fire and forget) is only logged.
fn refuse_call(
    worker: &WorkerHandle,
    invocation_id: Option<Value>,
    function_id: &str,
    code: &str,
    message: String,
) {
    let Some(invocation_id) = invocation_id.filter(|id| !id.is_null()) else {
        return;
    };
    // The id goes back as it came, so a caller that sent a number can still match it.
    let reply = json!({
        "type": "invocationresult",
        "invocation_id": invocation_id,
        "function_id": function_id,
        "error": FnError::new(code, message),
    });
    worker.push(reply.to_string());
}

/// Ends the wait of the engine's call that a malformed answer was meant for.
fn fail_pending(worker: &WorkerHandle, invocation_id: Option<&str>, message: String) {
    if let Some(id) = invocation_id {
        worker.complete(id, Err(FnError::new("invalid_message", message)));
    }
}

fn register_trigger(engine: &Arc<Engine>, worker: &Arc<WorkerHandle>, t: RegisterTrigger) {
    if let Err(e) = engine.triggers.register(
        &t.id,
        &t.trigger_type,
        &t.function_id,
        t.config,
        t.metadata,
        &worker.id,
    ) {
        tracing::warn!(worker = %worker.id, trigger = %t.id, error = %e, "trigger refused");
        let reply = json!({
            "type": "triggerregistrationresult",
            "id": t.id,
            "trigger_type": t.trigger_type,
            "function_id": t.function_id,
            "error": e,
        });
        worker.push(reply.to_string());
    }
}

/// Runs a worker's call in its own task and answers it when it has an invocation id.
fn invoke(engine: &Arc<Engine>, worker: &Arc<WorkerHandle>, call: Invoke) {
    let engine = engine.clone();
    let worker = worker.clone();
    tokio::spawn(async move {
        // The SDKs announce themselves with this call; it is for logs, and answers nothing.
        let result = if call.function_id == "engine::workers::register" {
            tracing::debug!(worker = %worker.id, metadata = %call.data, "worker metadata");
            Ok(None)
        } else {
            engine
                .call_with_metadata(&call.function_id, call.data, call.metadata)
                .await
        };
        let Some(invocation_id) = call.invocation_id else {
            if let Err(e) = result {
                tracing::debug!(worker = %worker.id, function_id = %call.function_id, error = %e, "fire-and-forget call failed");
            }
            return;
        };
        let (result, error) = match &result {
            Ok(value) => (value.as_ref(), None),
            Err(e) => (None, Some(e)),
        };
        let reply = Reply {
            kind: "invocationresult",
            invocation_id: &invocation_id,
            function_id: &call.function_id,
            result,
            error,
        };
        worker
            .send(serde_json::to_string(&reply).expect("a reply serializes"))
            .await;
    });
}

/// The answer to a worker's call; `result` is left out when the function gave none.
#[derive(Serialize)]
struct Reply<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    invocation_id: &'a str,
    function_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a FnError>,
}

/// A worker's answer as a function result.
fn to_result(result: Option<Value>, error: Option<Value>) -> FnResult {
    match error.filter(|e| !e.is_null()) {
        None => Ok(result.filter(|r| !r.is_null())),
        Some(e) => {
            let code = e
                .get("code")
                .and_then(Value::as_str)
                .unwrap_or("invocation_failed");
            let message = e
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| e.to_string());
            Err(FnError::new(code, message))
        }
    }
}
