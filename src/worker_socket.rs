//! The worker socket (port 49134): SDK workers register functions and triggers and call
//! functions (spec section 6).
//!
//! Every path upgrades, so an SDK's telemetry socket (`/otel`) is accepted and its binary
//! frames ignored. Calls from a worker run concurrently, each in its own task, so that a
//! worker's burst of writes shares the store's group commit.

use crate::engine::Engine;
use crate::error::{FnError, FnResult};
use crate::outbox::{self, CLOSE_GOING_AWAY, CLOSE_NORMAL, Outbox};
use crate::router::WorkerHandle;
use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::StreamExt;
use serde::Deserialize;
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
    ws.max_message_size(MAX_WORKER_FRAME).max_frame_size(MAX_WORKER_FRAME).on_upgrade(move |socket| serve(engine, socket))
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
}

#[derive(Deserialize)]
struct Invoke {
    invocation_id: Option<String>,
    function_id: String,
    #[serde(default)]
    data: Value,
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
    let (sink, mut stream) = socket.split();
    let mut writer = tokio::spawn(outbox::run_writer(sink, rx, outbox.clone()));
    let worker = Arc::new(WorkerHandle::new(worker_id.clone(), outbox.clone()));
    engine.stats.worker_connections.fetch_add(1, Ordering::Relaxed);
    worker.send(json!({"type": "workerregistered", "worker_id": worker_id}).to_string()).await;
    tracing::debug!(worker = %worker_id, "worker connected");

    let shutdown = engine.shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let msg = tokio::select! {
            msg = stream.next() => msg,
            _ = &mut writer => break,
            _ = &mut shutdown => {
                outbox.close(CLOSE_GOING_AWAY, "the engine is shutting down");
                break;
            }
        };
        match msg {
            Some(Ok(Message::Text(text))) => handle(&engine, &worker, text.as_str()).await,
            // Telemetry (OTLP, MTRC, LOGS) and any other binary frame: not ours to read.
            Some(Ok(Message::Binary(_))) => {}
            Some(Ok(Message::Close(_))) | None => break,
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::debug!(worker = %worker_id, error = %e, "worker socket error");
                break;
            }
        }
    }
    engine.router.remove_worker(&worker_id);
    engine.triggers.remove_worker(&worker_id);
    worker.disconnect();
    outbox.close(CLOSE_NORMAL, "");
    if tokio::time::timeout(std::time::Duration::from_secs(2), &mut writer).await.is_err() {
        writer.abort();
    }
    engine.stats.worker_connections.fetch_sub(1, Ordering::Relaxed);
    tracing::debug!(worker = %worker_id, "worker disconnected");
}

fn parse<T: for<'de> Deserialize<'de>>(msg: &Value) -> Result<T, String> {
    T::deserialize(msg).map_err(|e| e.to_string())
}

async fn handle(engine: &Arc<Engine>, worker: &Arc<WorkerHandle>, text: &str) {
    let msg: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(worker = %worker.id, error = %e, "worker sent a frame that is not JSON; ignored");
            return;
        }
    };
    let kind = msg.get("type").and_then(Value::as_str).unwrap_or("");
    let outcome = match kind {
        "registerfunction" => parse::<RegisterFunction>(&msg).map(|f| engine.router.register(&f.id, worker)),
        "unregisterfunction" => parse::<RegisterFunction>(&msg).map(|f| engine.router.unregister(&f.id, &worker.id)),
        "registertrigger" => parse::<RegisterTrigger>(&msg).map(|t| register_trigger(engine, worker, t)),
        "unregistertrigger" => parse::<RegisterFunction>(&msg).map(|t| engine.triggers.unregister(&t.id)),
        "invokefunction" => parse::<Invoke>(&msg).map(|call| invoke(engine, worker, call)),
        "invocationresult" => parse::<InvocationResult>(&msg).map(|r| worker.complete(&r.invocation_id, to_result(r.result, r.error))),
        "ping" => {
            worker.send(json!({"type": "pong"}).to_string()).await;
            Ok(())
        }
        "pong" | "registertriggertype" | "unregistertriggertype" | "registerservice" | "reattach" => Ok(()),
        other => {
            tracing::info!(worker = %worker.id, message_type = other, "unknown worker message type; ignored");
            Ok(())
        }
    };
    if let Err(e) = outcome {
        tracing::warn!(worker = %worker.id, message_type = kind, error = %e, "malformed worker message; ignored");
    }
}

fn register_trigger(engine: &Arc<Engine>, worker: &Arc<WorkerHandle>, t: RegisterTrigger) {
    if let Err(e) = engine.triggers.register(&t.id, &t.trigger_type, &t.function_id, t.config, &worker.id) {
        tracing::warn!(worker = %worker.id, trigger = %t.id, error = %e, "trigger refused");
        let reply = json!({
            "type": "triggerregistrationresult",
            "id": t.id,
            "trigger_type": t.trigger_type,
            "function_id": t.function_id,
            "error": e,
        });
        let worker = worker.clone();
        tokio::spawn(async move { worker.send(reply.to_string()).await });
    }
}

/// Runs a worker's call in its own task and answers it when it has an invocation id.
fn invoke(engine: &Arc<Engine>, worker: &Arc<WorkerHandle>, call: Invoke) {
    let engine = engine.clone();
    let worker = worker.clone();
    tokio::spawn(async move {
        if call.function_id == "engine::workers::register" {
            tracing::debug!(worker = %worker.id, metadata = %call.data, "worker metadata");
            return;
        }
        let result = engine.call(&call.function_id, call.data).await;
        let Some(invocation_id) = call.invocation_id else {
            if let Err(e) = result {
                tracing::debug!(worker = %worker.id, function_id = %call.function_id, error = %e, "fire-and-forget call failed");
            }
            return;
        };
        let mut reply = json!({"type": "invocationresult", "invocation_id": invocation_id, "function_id": call.function_id});
        match result {
            Ok(Some(value)) => reply["result"] = value,
            Ok(None) => {}
            Err(e) => reply["error"] = json!(e),
        }
        worker.send(reply.to_string()).await;
    });
}

/// A worker's answer as a function result.
fn to_result(result: Option<Value>, error: Option<Value>) -> FnResult {
    match error.filter(|e| !e.is_null()) {
        None => Ok(result.filter(|r| !r.is_null())),
        Some(e) => {
            let code = e.get("code").and_then(Value::as_str).unwrap_or("invocation_failed");
            let message = e.get("message").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| e.to_string());
            Err(FnError::new(code, message))
        }
    }
}
