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
//!
//! What a worker may hold is bounded, since a worker may be hostile: calls waiting on one
//! worker (the engine's `max_pending_invocations_per_worker`) and on all of a tenant's
//! workers (`quotas.pending_invocations`), the functions a tenant registers
//! (`quotas.functions`), and the length of a function id. A call past a cap fails at once
//! with `quota_exceeded`, before anything is sent or waited on; a registration past one is
//! answered with `registrationrejected`, and the worker keeps the functions it has.

use crate::error::{FnError, FnResult};
use crate::fanout::outbox::Outbox;
use crate::tenants::quotas::SlotPermit;
use crate::tenants::{QUOTA_EXCEEDED, QuotaExceeded, Quotas, TenantId, TenantQuotas};
use crate::workers::messages::EngineMessage;
use crate::workers::shown::{MAX_FUNCTION_ID_BYTES, shown};
use axum::extract::ws::Utf8Bytes;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;
use tokio::sync::oneshot;

/// The engine's default for `max_pending_invocations_per_worker`.
pub const DEFAULT_MAX_PENDING_PER_WORKER: usize = 10_000;

/// `registrationrejected`'s code for a function id longer than [`MAX_FUNCTION_ID_BYTES`].
pub const FUNCTION_ID_TOO_LONG: &str = "FUNCTION_ID_TOO_LONG";

/// What calls to a tenant's workers are held to: set by the router on each worker that
/// registers a function (a worker is called only through an id it registered).
pub struct Caps {
    /// Calls waiting on one worker at once.
    pub per_worker: usize,
    /// The tenant's quotas (`pending_invocations`, `functions`), live.
    pub quotas: Arc<TenantQuotas>,
}

impl Caps {
    fn unlimited() -> Arc<Caps> {
        let tenant = TenantId::new("default").expect("`default` is a tenant id");
        Arc::new(Caps {
            per_worker: usize::MAX,
            quotas: TenantQuotas::new(tenant, &Quotas::UNLIMITED, Default::default()),
        })
    }
}

/// A connected worker, as the rest of the engine sees it.
pub struct WorkerHandle {
    pub id: String,
    outbox: Arc<Outbox>,
    pending: Mutex<Option<HashMap<String, oneshot::Sender<FnResult>>>>,
    caps: OnceLock<Arc<Caps>>,
}

impl WorkerHandle {
    pub fn new(id: String, outbox: Arc<Outbox>) -> Self {
        WorkerHandle {
            id,
            outbox,
            pending: Mutex::new(Some(HashMap::new())),
            caps: OnceLock::new(),
        }
    }

    /// Calls waiting on this worker's answer.
    pub fn pending(&self) -> usize {
        self.pending
            .lock()
            .unwrap()
            .as_ref()
            .map_or(0, HashMap::len)
    }

    /// Puts a call on the pending map, within the worker's cap and its tenant's quota, or
    /// refuses it; the permit holds the tenant's slot until the call is over.
    fn admit(
        &self,
        function_id: &str,
        invocation_id: &str,
        tx: oneshot::Sender<FnResult>,
    ) -> Result<Option<SlotPermit>, FnError> {
        let mut pending = self.pending.lock().unwrap();
        let Some(pending) = pending.as_mut() else {
            return Err(self.disconnected(function_id));
        };
        let Some(caps) = self.caps.get() else {
            pending.insert(invocation_id.to_owned(), tx);
            return Ok(None);
        };
        if pending.len() >= caps.per_worker {
            let refusal = QuotaExceeded {
                quota: "pending_invocations",
                retry_after: None,
                message: format!(
                    "worker {} already has {} calls waiting for an answer, the engine's max_pending_invocations_per_worker: wait for some to finish, or raise the setting",
                    self.id, caps.per_worker
                ),
            };
            return Err(caps.quotas.refused(refusal).into());
        }
        let permit = caps
            .quotas
            .pending_invocations
            .take(1)
            .map_err(|e| FnError::from(caps.quotas.refused(e)))?;
        pending.insert(invocation_id.to_owned(), tx);
        Ok(Some(permit))
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

    /// Queues a frame for the worker from code that cannot wait: now if its queue has room,
    /// else by a task that waits for room.
    pub fn send_now(&self, frame: String) {
        self.outbox.send_now(Utf8Bytes::from(frame));
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
        let admitted = self.prepare(function_id, &data, metadata.as_ref())?;
        self.finish(function_id, admitted, timeout).await
    }

    /// Admits a call to this worker without waiting (see [`Invocation`]).
    pub fn start(
        self: &Arc<Self>,
        function_id: &str,
        data: &Value,
        metadata: Option<&Value>,
    ) -> Result<Invocation, FnError> {
        Ok(Invocation {
            admitted: Some(self.prepare(function_id, data, metadata)?),
            worker: self.clone(),
            function_id: function_id.to_owned(),
        })
    }

    /// Takes the call's place in the pending map, and encodes its frame.
    fn prepare(
        &self,
        function_id: &str,
        data: &Value,
        metadata: Option<&Value>,
    ) -> Result<Admitted, FnError> {
        let invocation_id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        let permit = self.admit(function_id, &invocation_id, tx)?;
        let frame = EngineMessage::InvokeFunction {
            invocation_id: &invocation_id,
            function_id,
            data,
            metadata: metadata.filter(|m| !m.is_null()),
        }
        .encode();
        Ok(Admitted {
            invocation_id,
            frame,
            rx,
            _permit: permit,
        })
    }

    /// Sends an admitted call and waits for its answer. However the wait ends (an answer, the
    /// timeout, or the caller dropping it), the call leaves the pending map.
    async fn finish(&self, function_id: &str, admitted: Admitted, timeout: Duration) -> FnResult {
        let Admitted {
            invocation_id,
            frame,
            rx,
            _permit,
        } = admitted;
        let _waiting = Waiting {
            worker: self,
            invocation_id: &invocation_id,
        };
        let call = async {
            if !self.send(frame).await {
                return Err(self.disconnected(function_id));
            }
            // Waiting on the worker uses no thread: the call's turn goes to others meanwhile.
            crate::fair::idle(rx)
                .await
                .unwrap_or_else(|_| Err(self.disconnected(function_id)))
        };
        tokio::time::timeout(timeout, call).await.unwrap_or_else(|_| {
            Err(FnError::new(
                "timeout",
                format!(
                    "function {} on worker {} did not answer within {} ms (raise invocation_timeout_ms to allow longer calls)",
                    shown(function_id),
                    self.id,
                    timeout.as_millis()
                ),
            ))
        })
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
                tracing::debug!(worker = %self.id, invocation_id = %shown(invocation_id), "result for an unknown or expired invocation")
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
            format!(
                "worker {} serving {} has disconnected",
                self.id,
                shown(function_id)
            ),
        )
    }
}

/// A call in a worker's pending map, not yet sent: what the caller holds between admitting
/// a call (at once, so that a refusal costs no task) and running it.
struct Admitted {
    invocation_id: String,
    frame: String,
    rx: oneshot::Receiver<FnResult>,
    /// The tenant's `pending_invocations` slot, held until the call is over.
    _permit: Option<SlotPermit>,
}

/// A call admitted by [`WorkerHandle::start`]; [`Invocation::wait`] sends it and waits for the
/// answer. Dropped unsent, it gives its places back.
pub struct Invocation {
    worker: Arc<WorkerHandle>,
    function_id: String,
    /// None once sent.
    admitted: Option<Admitted>,
}

impl Invocation {
    pub async fn wait(mut self, timeout: Duration) -> FnResult {
        let admitted = self.admitted.take().expect("an invocation is sent once");
        self.worker
            .finish(&self.function_id, admitted, timeout)
            .await
    }
}

impl Drop for Invocation {
    fn drop(&mut self) {
        if let Some(admitted) = &self.admitted {
            let waiting = Waiting {
                worker: &self.worker,
                invocation_id: &admitted.invocation_id,
            };
            drop(waiting);
        }
    }
}

/// Takes a call off the pending map when its wait ends, however it ends.
struct Waiting<'a> {
    worker: &'a WorkerHandle,
    invocation_id: &'a str,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(pending) = self.worker.pending.lock().unwrap().as_mut() {
            pending.remove(self.invocation_id);
        }
    }
}

pub struct Router {
    functions: RwLock<HashMap<String, Arc<WorkerHandle>>>,
    /// How many registered ids serve a worker stream (`stream::set(NAME)` and the rest), so
    /// that the common case, none, costs the storage router one load.
    stream_functions: AtomicUsize,
    caps: Arc<Caps>,
}

impl Default for Router {
    /// A router without caps, for tests.
    fn default() -> Self {
        Router::with_caps(Caps::unlimited())
    }
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
    /// A tenant's router: `per_worker` calls may wait on one worker, and the tenant's quotas
    /// bound the rest.
    pub fn new(per_worker: usize, quotas: Arc<TenantQuotas>) -> Self {
        Router::with_caps(Arc::new(Caps { per_worker, quotas }))
    }

    fn with_caps(caps: Arc<Caps>) -> Self {
        Router {
            functions: RwLock::default(),
            stream_functions: AtomicUsize::new(0),
            caps,
        }
    }

    /// Registers a worker's function. An id another worker serves is refused (`Conflict`,
    /// for the caller to answer); the same worker registering its own id again is no change.
    /// An id that is too long, or past the tenant's `functions` quota, is refused and
    /// answered here, with `registrationrejected`, since the answer needs only the worker.
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
        if function_id.len() > MAX_FUNCTION_ID_BYTES {
            let why = format!(
                "the function id is {} bytes; the limit is {MAX_FUNCTION_ID_BYTES}: use a shorter id",
                function_id.len()
            );
            self.reject(worker, function_id, FUNCTION_ID_TOO_LONG, &why);
            return Ok(());
        }
        if let Err(e) = self.caps.quotas.functions.add(1) {
            let e = self.caps.quotas.refused(e);
            self.reject(worker, function_id, QUOTA_EXCEEDED, &e.message);
            return Ok(());
        }
        worker.caps.get_or_init(|| self.caps.clone());
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
            self.caps.quotas.functions.release(1);
            if is_stream_function(function_id) {
                self.stream_functions.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    pub fn remove_worker(&self, worker_id: &str) {
        let (mut removed, mut streams) = (0, 0);
        self.functions.write().unwrap().retain(|id, w| {
            let keep = w.id != worker_id;
            removed += u64::from(!keep);
            streams += usize::from(!keep && is_stream_function(id));
            keep
        });
        self.caps.quotas.functions.release(removed);
        self.stream_functions.fetch_sub(streams, Ordering::Relaxed);
    }

    /// Answers a registration refused for its id or for a quota; the worker keeps the rest.
    fn reject(&self, worker: &WorkerHandle, function_id: &str, code: &str, why: &str) {
        let shown_id = shown(function_id);
        tracing::warn!(worker = %worker.id, function_id = %shown_id, code, "function registration refused: {why}");
        let reply = EngineMessage::RegistrationRejected {
            code,
            namespace: self.caps.quotas.tenant.as_str(),
            worker_name: None,
            function_id: Some(&shown_id),
            owner_worker_id: "",
            message: Some(why),
        };
        worker.push(reply.encode());
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
#[path = "router_tests.rs"]
mod tests;
