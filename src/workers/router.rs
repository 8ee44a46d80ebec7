//! The function router: which worker serves which function id, and calls to workers.
//!
//! A call to a worker gets a fresh invocation id and waits for the worker's
//! `invocationresult`. It fails with `timeout` when the worker takes longer than the
//! configured limit, and with `worker_disconnected` when the worker goes away first.

use crate::error::{FnError, FnResult};
use crate::fanout::outbox::Outbox;
use crate::workers::messages::EngineMessage;
use axum::extract::ws::Utf8Bytes;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::oneshot;

/// A connected worker, as the rest of the engine sees it.
pub struct WorkerHandle {
    pub id: String,
    outbox: Arc<Outbox>,
    pending: Mutex<Option<HashMap<String, oneshot::Sender<FnResult>>>>,
}

impl WorkerHandle {
    pub fn new(id: String, outbox: Arc<Outbox>) -> Self {
        WorkerHandle {
            id,
            outbox,
            pending: Mutex::new(Some(HashMap::new())),
        }
    }

    /// Queues a frame without waiting, from the worker's own socket task (which must not wait
    /// on its own queue); a worker that lets 8192 frames pile up is closed as too slow.
    pub fn push(&self, frame: String) {
        self.outbox.push(Utf8Bytes::from(frame));
    }

    /// Asks the socket's task to close the socket with this code and reason.
    pub fn close(&self, code: u16, reason: impl Into<String>) {
        self.outbox.close(code, reason);
    }

    /// Queues a frame for the worker, waiting for room rather than dropping it.
    pub async fn send(&self, frame: String) -> bool {
        self.outbox.send(Utf8Bytes::from(frame)).await
    }

    /// Calls one of this worker's functions and waits for its answer.
    pub async fn invoke(&self, function_id: &str, data: Value, timeout: Duration) -> FnResult {
        self.invoke_with_metadata(function_id, data, None, timeout)
            .await
    }

    /// As `invoke`, passing the caller's (or the trigger's) `metadata` on unchanged; it is
    /// left out of the frame when there is none, as iii does.
    pub async fn invoke_with_metadata(
        &self,
        function_id: &str,
        data: Value,
        metadata: Option<Value>,
        timeout: Duration,
    ) -> FnResult {
        let invocation_id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        match self.pending.lock().unwrap().as_mut() {
            Some(pending) => pending.insert(invocation_id.clone(), tx),
            None => return Err(self.disconnected(function_id)),
        };
        let frame = EngineMessage::InvokeFunction {
            invocation_id: &invocation_id,
            function_id,
            data: &data,
            metadata: metadata.as_ref().filter(|m| !m.is_null()),
        }
        .encode();
        let call = async {
            if !self.send(frame).await {
                return Err(self.disconnected(function_id));
            }
            rx.await
                .unwrap_or_else(|_| Err(self.disconnected(function_id)))
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => {
                if let Some(pending) = self.pending.lock().unwrap().as_mut() {
                    pending.remove(&invocation_id);
                }
                Err(FnError::new(
                    "timeout",
                    format!(
                        "function {function_id} on worker {} did not answer within {} ms (raise invocation_timeout_ms to allow longer calls)",
                        self.id,
                        timeout.as_millis()
                    ),
                ))
            }
        }
    }

    /// Delivers a worker's `invocationresult`; an unknown or late id is ignored.
    pub fn complete(&self, invocation_id: &str, result: FnResult) {
        let waiter = self
            .pending
            .lock()
            .unwrap()
            .as_mut()
            .and_then(|p| p.remove(invocation_id));
        match waiter {
            Some(tx) => {
                let _ = tx.send(result);
            }
            None => {
                tracing::debug!(worker = %self.id, invocation_id, "result for an unknown or expired invocation")
            }
        }
    }

    /// Fails every call still waiting on this worker; later calls fail at once.
    pub fn disconnect(&self) {
        let pending = self.pending.lock().unwrap().take().unwrap_or_default();
        for (_, tx) in pending {
            let _ = tx.send(Err(FnError::new(
                "worker_disconnected",
                format!("worker {} disconnected before answering", self.id),
            )));
        }
    }

    fn disconnected(&self, function_id: &str) -> FnError {
        FnError::new(
            "worker_disconnected",
            format!("worker {} serving {function_id} has disconnected", self.id),
        )
    }
}

#[derive(Default)]
pub struct Router {
    functions: RwLock<HashMap<String, Arc<WorkerHandle>>>,
    /// How many registered ids serve a worker stream (`stream::set(NAME)` and the rest), so
    /// that the common case, none, costs the storage router one load.
    stream_functions: AtomicUsize,
}

/// Whether an id is one of a worker stream's functions, `stream::<op>(<name>)`.
fn is_stream_function(function_id: &str) -> bool {
    function_id.starts_with("stream::") && function_id.ends_with(')')
}

impl Router {
    /// Registers a worker's function; a later registration of the same id takes over.
    pub fn register(&self, function_id: &str, worker: &Arc<WorkerHandle>) {
        let previous = self
            .functions
            .write()
            .unwrap()
            .insert(function_id.to_owned(), worker.clone());
        if previous.is_none() && is_stream_function(function_id) {
            self.stream_functions.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(prev) = previous.filter(|p| p.id != worker.id) {
            tracing::warn!(function_id, from = %prev.id, to = %worker.id, "function re-registered by another worker");
        }
    }

    pub fn unregister(&self, function_id: &str, worker_id: &str) {
        let mut functions = self.functions.write().unwrap();
        if functions
            .get(function_id)
            .is_some_and(|w| w.id == worker_id)
        {
            functions.remove(function_id);
            if is_stream_function(function_id) {
                self.stream_functions.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    pub fn remove_worker(&self, worker_id: &str) {
        let mut removed = 0;
        self.functions.write().unwrap().retain(|id, w| {
            let keep = w.id != worker_id;
            removed += usize::from(!keep && is_stream_function(id));
            keep
        });
        self.stream_functions.fetch_sub(removed, Ordering::Relaxed);
    }

    /// Whether any worker serves a stream of its own (createStream).
    pub fn has_worker_streams(&self) -> bool {
        self.stream_functions.load(Ordering::Relaxed) > 0
    }

    pub fn lookup(&self, function_id: &str) -> Option<Arc<WorkerHandle>> {
        self.functions.read().unwrap().get(function_id).cloned()
    }

    pub fn contains(&self, function_id: &str) -> bool {
        self.functions.read().unwrap().contains_key(function_id)
    }
}
