//! The function router: which worker serves which function id, and calls to workers.
//!
//! A call to a worker gets a fresh invocation id and waits for the worker's
//! `invocationresult`. It fails with `timeout` when the worker takes longer than the
//! configured limit, and with `worker_disconnected` when the worker goes away first.
//!
//! A function id belongs to the live worker that registered it first: another worker's
//! registration of it is refused (`Conflict`) until the owner unregisters it or disconnects,
//! as iii refuses it. Letting a later registration win would let any worker take over a call
//! it was never meant to answer, the configured `auth_function` included.

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

/// A registration refused because another live worker serves the function id.
#[derive(Debug, PartialEq)]
pub struct Conflict {
    pub owner_worker_id: String,
}

impl Router {
    /// Registers a worker's function. An id another worker serves is refused; the same worker
    /// registering its own id again is no change.
    pub fn register(&self, function_id: &str, worker: &Arc<WorkerHandle>) -> Result<(), Conflict> {
        let mut functions = self.functions.write().unwrap();
        if let Some(owner) = functions.get(function_id) {
            if owner.id != worker.id {
                return Err(Conflict {
                    owner_worker_id: owner.id.clone(),
                });
            }
            return Ok(());
        }
        functions.insert(function_id.to_owned(), worker.clone());
        if is_stream_function(function_id) {
            self.stream_functions.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    fn worker(id: &str) -> Arc<WorkerHandle> {
        let (outbox, _rx) = Outbox::new(8, Counter::default());
        Arc::new(WorkerHandle::new(id.to_owned(), outbox))
    }

    #[test]
    fn an_id_belongs_to_its_first_live_worker() {
        let router = Router::default();
        let (a, b) = (worker("a"), worker("b"));
        assert_eq!(router.register("stream::set(s)", &a), Ok(()));
        assert_eq!(router.register("stream::set(s)", &a), Ok(()));
        let conflict = Conflict {
            owner_worker_id: "a".into(),
        };
        assert_eq!(router.register("stream::set(s)", &b), Err(conflict));
        router.unregister("stream::set(s)", "b");
        assert_eq!(router.lookup("stream::set(s)").unwrap().id, "a");
        // Counted once, however often it was registered or refused.
        assert!(router.has_worker_streams());
        router.remove_worker("a");
        assert!(!router.has_worker_streams());
        assert_eq!(router.register("stream::set(s)", &b), Ok(()));
        assert_eq!(router.lookup("stream::set(s)").unwrap().id, "b");
        router.unregister("stream::set(s)", "b");
        assert!(!router.has_worker_streams() && !router.contains("stream::set(s)"));
    }
}
