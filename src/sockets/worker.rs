//! The worker socket (port 49134): SDK workers register functions and triggers and call
//! functions (spec section 6).
//!
//! A worker is admitted to one tenant at the upgrade, by its key (`engine::admission`), and
//! from then on holds only that tenant's `Functions`: its registrations, triggers and calls
//! cannot name anything of another tenant. A frame that names another namespace (iii's word
//! for it) is refused, with a frame that says so (`workers::namespace`).
//!
//! Every path upgrades, so an SDK's telemetry socket (`/otel`) is accepted and its binary
//! frames ignored. Calls from a worker run concurrently, each in its own task, so that a
//! worker's burst of writes shares the store's group commit. Its calls to one group are put
//! in line as they are read (`fanout::sequence`), so they apply and emit in the order sent.
//!
//! Every call that carries an `invocation_id` is answered, a malformed one too: its caller
//! gets an `invocationresult` error saying what was wrong rather than waiting out its
//! timeout. `messages` reads each frame once into a typed message (a frame serde cannot read
//! at all goes through `scan` to find the id) and encodes every frame the engine writes. A
//! call's data stays the frame's text until it is read: a built-in call's payload straight
//! into its command (`functions::command`), any other call's into a `Value`.

use super::accept::ConnSlot;
use super::credentials;
use crate::engine::Engine;
use crate::engine::admission::{Admitted, take_connection};
use crate::engine::space::Kind;
use crate::error::{FnError, FnResult};
use crate::fanout::outbox::{self, CLOSE_TOO_BIG, Flow, Outbox, Peer};
use crate::fanout::sequence::Lines;
use crate::functions::command::Command;
use crate::functions::{Functions, streams};
use crate::json::Json;
use crate::storage::synced;
use crate::tenants::{QUOTA_EXCEEDED, TenantId};
use crate::workers::messages::{
    Data, EngineMessage, FUNCTION_NAMESPACE_CONFLICT, INVOKE_SHAPE, Invoke, Malformed, Problem,
    RegisterTrigger, WorkerMessage,
};
use crate::workers::namespace::{self, NAMESPACE_NOT_ALLOWED};
use crate::workers::router::WorkerHandle;
use crate::workers::shown::shown;
use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Extension, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::Value;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// Frames queued for one worker before senders wait.
const WORKER_QUEUE: usize = 8192;
/// Bytes queued for one worker before senders wait (a frame alone always fits): a worker
/// that pipelines reads of large items must not pin gigabytes of answers. A frame the engine
/// cannot hold back (a call to the worker's function) closes the worker as too slow past it.
const WORKER_QUEUE_BYTES: usize = 64 << 20;
/// Largest frame from a worker (the Python SDK sends up to 64 MiB).
const MAX_WORKER_FRAME: usize = 64 << 20;
/// Bytes read from a worker socket at a time. tungstenite zeroes this much of its buffer
/// before every read: its default (128 KiB) cost a pipelining worker's socket 6% of the
/// engine's time in `memset`, for reads that bring a few KiB. 16 KiB still holds about a
/// hundred small calls per read.
const WORKER_READ_BUFFER: usize = 16 << 10;
/// The longest a worker's socket stops reading after one of its calls was refused as over
/// quota: short enough that a worker's other calls are not held up long, long enough that a
/// worker ignoring `retry_after_ms` gets at most a hundred refusals a second answered.
const MAX_READ_PAUSE: Duration = Duration::from_millis(10);

pub fn routes(engine: Arc<Engine>) -> Router {
    Router::new().fallback(upgrade).with_state(engine)
}

/// Admits the worker to the tenant of its key (see `engine::admission`), or refuses the
/// upgrade with what to fix.
async fn upgrade(
    State(engine): State<Arc<Engine>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    slot: Option<Extension<ConnSlot>>,
    ws: WebSocketUpgrade,
) -> Response {
    let key = credentials::bearer(&headers)
        .or_else(|| credentials::query_param(query.as_deref(), "token"));
    let admitted = match engine.admit_worker(key.as_deref(), addr.ip()) {
        Ok(admitted) => admitted,
        Err(e) => {
            tracing::info!(%addr, code = e.code.as_str(), "worker refused: {}", e.message);
            return credentials::refusal(&e);
        }
    };
    let tenant_slot = match take_connection(&admitted.space) {
        Ok(permit) => permit,
        Err(e) => {
            tracing::info!(%addr, tenant = %admitted.tenant.id(), quota = e.quota, "worker refused: {}", e.message);
            return credentials::quota_refusal(&e);
        }
    };
    let slots = (slot.map(|Extension(s)| s), tenant_slot);
    ws.max_message_size(MAX_WORKER_FRAME)
        .max_frame_size(MAX_WORKER_FRAME)
        .read_buffer_size(WORKER_READ_BUFFER)
        .on_upgrade(move |socket| async move {
            serve(engine, admitted, addr, socket).await;
            drop(slots);
        })
}

async fn serve(engine: Arc<Engine>, admitted: Admitted, addr: SocketAddr, socket: WebSocket) {
    let Admitted {
        space,
        tenant,
        key_sha256,
    } = admitted;
    let worker_id = uuid::Uuid::new_v4().to_string();
    let _open = engine.metrics.connections.worker_opened();
    let closes = engine.metrics.connections.closes();
    let (outbox, rx) = Outbox::bounded(WORKER_QUEUE, WORKER_QUEUE_BYTES, closes);
    outbox.gather();
    let _listed = engine.list_socket(
        &space,
        Kind::Worker,
        Some(addr),
        &worker_id,
        key_sha256.as_deref(),
        &outbox,
    );
    let worker = Arc::new(WorkerHandle::new(worker_id.clone(), outbox.clone()));
    worker.push(
        EngineMessage::WorkerRegistered {
            worker_id: &worker_id,
        }
        .encode(),
    );
    tracing::debug!(worker = %worker_id, tenant = %tenant.id(), "worker connected");

    let mut peer = WorkerPeer {
        functions: space.functions.clone(),
        tenant: tenant.id().clone(),
        worker: worker.clone(),
        lines: Lines::default(),
        read_after: None,
    };
    outbox::drive(
        socket,
        rx,
        outbox,
        engine.shutdown_signal(),
        engine.config.close_grace,
        super::client::keepalive(&engine.config.worker_timeouts),
        &mut peer,
    )
    .await;
    space.functions.workers.remove_worker(&worker_id);
    space.functions.triggers.remove_worker(&worker_id);
    worker.disconnect();
    tracing::debug!(worker = %worker_id, "worker disconnected");
}

struct WorkerPeer {
    /// The worker's tenant's functions: all a worker can reach.
    functions: Arc<Functions>,
    tenant: TenantId,
    worker: Arc<WorkerHandle>,
    /// This connection's calls to each group, in the order they were read.
    lines: Lines,
    /// After a call refused as over quota, the socket reads nothing more until then.
    read_after: Option<tokio::time::Instant>,
}

impl Peer for WorkerPeer {
    async fn on_message(&mut self, msg: Result<Message, axum::Error>) -> Flow {
        match msg {
            Ok(Message::Text(text)) => handle(self, text.as_str()),
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

    fn read_after(&self) -> Option<tokio::time::Instant> {
        self.read_after
    }
}

/// Handles one frame from a worker. It never waits: a call that must wait goes on in a task of
/// its own, so the socket's own task keeps writing (a worker's queue is drained by the task
/// reading it).
fn handle(peer: &mut WorkerPeer, text: &str) {
    let (functions, worker) = (&peer.functions, &peer.worker);
    match WorkerMessage::parse(text) {
        WorkerMessage::RegisterFunction(f) => register_function(peer, &f.id),
        WorkerMessage::UnregisterFunction(f) => functions.workers.unregister(&f.id, &worker.id),
        WorkerMessage::RegisterTrigger(t) => {
            if trigger_namespace_ok(peer, &t) {
                register_trigger(functions, worker, t)
            }
        }
        WorkerMessage::UnregisterTrigger(t) => functions.triggers.unregister(&t.id, &worker.id),
        WorkerMessage::InvokeFunction(mut call) => {
            if call_namespace_ok(peer, &mut call)
                && let Some(pause) = invoke(&peer.functions, &peer.worker, &mut peer.lines, call)
            {
                peer.read_after = Some(tokio::time::Instant::now() + pause);
            }
        }
        WorkerMessage::InvocationResult(r) => {
            worker.complete(&r.invocation_id, to_result(r.result, r.error))
        }
        WorkerMessage::Ping => worker.push(EngineMessage::Pong.encode()),
        WorkerMessage::Pong | WorkerMessage::Ignored => {}
        WorkerMessage::Unknown { kind } => {
            tracing::info!(worker = %worker.id, message_type = kind, "unknown worker message type; ignored")
        }
        WorkerMessage::Malformed(m) => malformed(worker, m),
    }
}

/// A frame that is not the message it says it is: a call in it is still answered, and a
/// worker's answer still ends the wait of the call it answers.
fn malformed(worker: &WorkerHandle, m: Malformed) {
    let kind = m.kind.as_deref();
    let id = m.invocation_id;
    let function_id = m.function_id.unwrap_or_default();
    match m.problem {
        Problem::Shape(e) => {
            tracing::warn!(worker = %worker.id, message_type = kind.unwrap_or_default(), error = %e, "malformed worker message; ignored");
            match kind {
                Some("invokefunction") => {
                    let message = format!("malformed invokefunction: {e}; {INVOKE_SHAPE}");
                    refuse_call(worker, id, &function_id, "invalid_message", message);
                }
                Some("invocationresult") => {
                    let message = format!("the worker's invocationresult is malformed: {e}");
                    fail_pending(worker, id, message);
                }
                _ => {}
            }
        }
        Problem::NotJson(message) => {
            let shown = id.as_ref().and_then(Value::as_str).unwrap_or_default();
            tracing::warn!(worker = %worker.id, message_type = kind.unwrap_or("?"), invocation_id = shown, error = %message, "unreadable worker frame");
            match kind {
                Some("invokefunction") => {
                    refuse_call(worker, id, &function_id, "deserialization_error", message)
                }
                Some("invocationresult") => {
                    let message = format!("the worker's invocationresult is unreadable: {message}");
                    fail_pending(worker, id, message);
                }
                _ => {}
            }
        }
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
    let error = FnError::new(code, message);
    let reply = EngineMessage::InvocationResult {
        invocation_id: &invocation_id,
        function_id,
        result: None,
        error: Some(&error),
    };
    worker.push(reply.encode());
}

/// Ends the wait of the engine's call that a malformed answer was meant for.
fn fail_pending(worker: &WorkerHandle, invocation_id: Option<Value>, message: String) {
    if let Some(Value::String(id)) = invocation_id {
        worker.complete(&id, Err(FnError::new("invalid_message", message)));
    }
}

/// Registers a function id, unless another live worker serves it: then only this one
/// registration is refused, with iii's frame, and the worker carries on serving the rest.
fn register_function(peer: &WorkerPeer, function_id: &str) {
    let worker = &peer.worker;
    let Err(conflict) = peer.functions.workers.register(function_id, worker) else {
        return;
    };
    let owner = conflict.owner_worker_id.as_str();
    tracing::warn!(
        function_id,
        owner,
        refused = %worker.id,
        "function id served by another live worker; registration refused ({FUNCTION_NAMESPACE_CONFLICT}): use another id, or stop the owner first"
    );
    let reply = EngineMessage::RegistrationRejected {
        code: FUNCTION_NAMESPACE_CONFLICT,
        namespace: peer.tenant.as_str(),
        worker_name: None,
        function_id: Some(function_id),
        owner_worker_id: owner,
        message: None,
    };
    worker.push(reply.encode());
}

fn register_trigger(functions: &Functions, worker: &Arc<WorkerHandle>, t: RegisterTrigger) {
    if let Err(e) = functions.triggers.register(
        &t.id,
        &t.trigger_type,
        &t.function_id,
        t.config,
        t.metadata,
        &worker.id,
    ) {
        tracing::warn!(worker = %worker.id, trigger = %t.id, error = %e, "trigger refused");
        let reply = EngineMessage::TriggerRegistrationResult {
            id: &t.id,
            trigger_type: &t.trigger_type,
            function_id: &t.function_id,
            error: &e,
        };
        worker.push(reply.encode());
    }
}

/// A trigger whose `namespace` or `trigger_namespace` is not the worker's tenant is refused
/// (see `workers::namespace`), as iii refuses a trigger: with `triggerregistrationresult`.
fn trigger_namespace_ok(peer: &WorkerPeer, t: &RegisterTrigger) -> bool {
    let tenant = peer.tenant.as_str();
    let checked = namespace::check(tenant, t.namespace.as_deref(), false)
        .and_then(|()| namespace::check(tenant, t.trigger_namespace.as_deref(), true));
    let Err(why) = checked else { return true };
    tracing::warn!(worker = %peer.worker.id, tenant, trigger = %t.id, "trigger refused ({NAMESPACE_NOT_ALLOWED}): {why}");
    let error = FnError::new(NAMESPACE_NOT_ALLOWED, why);
    let reply = EngineMessage::TriggerRegistrationResult {
        id: &t.id,
        trigger_type: &t.trigger_type,
        function_id: &t.function_id,
        error: &error,
    };
    peer.worker.push(reply.encode());
    false
}

/// Worker metadata (`engine::workers::register`) naming a namespace that is not the worker's
/// tenant is refused with `registrationrejected`; a call naming one is answered with an
/// error. The socket stays open: the SDKs take the rejection as fatal and stop themselves.
fn call_namespace_ok(peer: &WorkerPeer, call: &mut Invoke) -> bool {
    let (tenant, worker) = (peer.tenant.as_str(), &peer.worker);
    let id = || call.invocation_id.clone().map(Value::String);
    if call.function_id == "engine::workers::register" {
        let data = match call.data.as_value() {
            Ok(data) => data,
            Err(why) => {
                refuse_call(
                    worker,
                    id(),
                    &call.function_id,
                    "deserialization_error",
                    why,
                );
                return false;
            }
        };
        let declared = data.get("namespace").and_then(Value::as_str);
        if let Err(why) = namespace::check(tenant, declared, false) {
            let name = data.get("name").and_then(Value::as_str);
            let name = name.map(namespace::echoed);
            let declared = namespace::echoed(declared.unwrap_or_default());
            tracing::warn!(worker = %worker.id, tenant, worker_name = name.as_deref(), "worker registration refused ({NAMESPACE_NOT_ALLOWED}): {why}");
            let reply = EngineMessage::RegistrationRejected {
                code: NAMESPACE_NOT_ALLOWED,
                namespace: &declared,
                worker_name: name.as_deref(),
                function_id: None,
                owner_worker_id: "",
                message: Some(&why),
            };
            worker.push(reply.encode());
            refuse_call(worker, id(), &call.function_id, NAMESPACE_NOT_ALLOWED, why);
            return false;
        }
    }
    // `default` reaches the engine's own functions, which every tenant has.
    let engine_function = !peer.functions.workers.contains(&call.function_id);
    let Err(why) = namespace::check(tenant, call.namespace.as_deref(), engine_function) else {
        return true;
    };
    tracing::warn!(worker = %worker.id, tenant, function_id = %call.function_id, "call refused ({NAMESPACE_NOT_ALLOWED}): {why}");
    refuse_call(worker, id(), &call.function_id, NAMESPACE_NOT_ALLOWED, why);
    false
}

/// Runs a worker's call in its own task and answers it when it has an invocation id. The
/// call is admitted first, without waiting: a refused one (`quota_exceeded` for pending
/// invocations) is answered at once and costs no task. A call admitted to a group takes its
/// place in the group's line now, as it is read; it waits there without a turn.
///
/// Returns how long to stop reading from the worker when the call was refused as over
/// quota: its next frames would most likely be refused too, and a worker that ignores
/// `retry_after_ms` must not make the engine spend its time refusing.
fn invoke(
    functions: &Arc<Functions>,
    worker: &Arc<WorkerHandle>,
    lines: &mut Lines,
    mut call: Invoke,
) -> Option<Duration> {
    let mut group = None;
    // The SDKs announce themselves with this call; it is for logs, and answers nothing.
    let admitted = if call.function_id == "engine::workers::register" {
        // Read already, by `call_namespace_ok`.
        let data = call.data.as_value().unwrap_or(&Value::Null);
        tracing::debug!(worker = %worker.id, metadata = %data, "worker metadata");
        Ok(None)
    } else if streams::is_builtin(&call.function_id) {
        let command = match call.data {
            Data::Text(text) => Command::parse_text(&call.function_id, text),
            Data::Value(value) => Command::parse(&call.function_id, value),
        };
        let in_group = command.as_ref().ok().and_then(Command::group);
        group = in_group.map(|(stream, group)| lines.key(stream, group));
        functions
            .begin_command(&call.function_id, command)
            .map(Some)
    } else {
        match call.data.into_value() {
            Ok(data) => functions
                .begin(&call.function_id, data, call.metadata)
                .map(Some),
            Err(why) => Err(FnError::new("deserialization_error", why)),
        }
    };
    let (worker, function_id, invocation_id) =
        (worker.clone(), call.function_id, call.invocation_id);
    match admitted {
        Ok(Some(run)) => {
            // The call waits its tenant's turn (`fair`), parked, not in the run queue.
            let turns = functions.turns.clone();
            let place = group.map(|key| lines.claim(key));
            run_here_or_spawn(async move {
                let (result, held) = synced::scope(async {
                    match place {
                        Some(place) => place.run(turns.run(run)).await,
                        None => turns.run(run).await,
                    }
                })
                .await;
                if held.is_empty() {
                    return answer(&worker, &function_id, invocation_id, result).await;
                }
                // A write not yet on disk is answered by its sync (see `storage::synced`),
                // with the answer encoded now, while its values are in cache.
                let frame = reply(&worker, &function_id, invocation_id.clone(), result);
                held.then(move |synced| {
                    let frame = match synced {
                        Ok(()) => frame,
                        Err(e) => {
                            let failed = Err(streams::sync_failed(&function_id, e));
                            reply(&worker, &function_id, invocation_id, failed)
                        }
                    };
                    if let Some(frame) = frame {
                        worker.send_now(frame);
                    }
                });
            });
        }
        Ok(None) => {
            tokio::spawn(
                async move { answer(&worker, &function_id, invocation_id, Ok(None)).await },
            );
        }
        Err(e) => {
            let pause = (e.code == QUOTA_EXCEEDED)
                .then(|| Duration::from_millis(e.retry_after_ms.unwrap_or(0)).min(MAX_READ_PAUSE));
            if let Some(invocation_id) = invocation_id {
                let invocation_id = Value::String(invocation_id);
                let reply = EngineMessage::InvocationResult {
                    invocation_id: &invocation_id,
                    function_id: &function_id,
                    result: None,
                    error: Some(&e),
                };
                worker.push(reply.encode());
            }
            return pause;
        }
    }
    None
}

/// Runs a call on the socket's task as far as it goes without waiting, and spawns a task
/// for the rest only when it must wait (for the disk, a turn, its place in line, an adapter,
/// room in the worker's queue). Most calls (a write to the memory store, a read) finish in
/// that first step: they cost no task, and their large future is freed while still in
/// cache. Order is kept: a call takes its place in its group's line before it starts.
fn run_here_or_spawn(call: impl std::future::Future<Output = ()> + Send + 'static) {
    let mut call = Box::pin(call);
    // The waker of this first poll is never woken: whatever the call waits on registers
    // again, with the task's own waker, when the task polls it (every future must).
    let mut cx = Context::from_waker(Waker::noop());
    // Outside the socket task's cooperative budget: a call's own awaits (its turn, its
    // place in line) would otherwise spend the budget the socket reads by, and the socket
    // would yield after a few calls instead of reading on. Its subscribers' writers then
    // woke after fewer events each: fan-out took 1.3x the CPU per delivery in smaller writes.
    let mut first_step = |cx: &mut Context<'_>| {
        let step = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx)));
        match std::pin::pin!(tokio::task::unconstrained(step)).poll(cx) {
            Poll::Ready(step) => step,
            Poll::Pending => unreachable!("poll_fn above is always ready"),
        }
    };
    let first = std::panic::catch_unwind(AssertUnwindSafe(|| first_step(&mut cx)));
    match first {
        Ok(Poll::Ready(())) => {}
        Ok(Poll::Pending) => {
            tokio::spawn(call);
        }
        // As in a task of its own, a panic ends the call, not the worker's socket.
        Err(_) => {
            tracing::error!("a worker's call panicked and was dropped (a bug: see the panic above)")
        }
    }
}

/// Sends a call's answer to the worker that made it; a call without an id is only logged.
async fn answer(
    worker: &WorkerHandle,
    function_id: &str,
    invocation_id: Option<String>,
    result: FnResult,
) {
    if let Some(frame) = reply(worker, function_id, invocation_id, result) {
        worker.send(frame).await;
    }
}

/// A call's answer as a frame; None for a call without an id, which is only logged.
fn reply(
    worker: &WorkerHandle,
    function_id: &str,
    invocation_id: Option<String>,
    result: FnResult,
) -> Option<String> {
    let Some(invocation_id) = invocation_id else {
        if let Err(e) = result {
            tracing::debug!(worker = %worker.id, function_id = %shown(function_id), error = %e, "fire-and-forget call failed");
        }
        return None;
    };
    // Moves the id into a Value, without copying it.
    let invocation_id = Value::String(invocation_id);
    let (result, error) = match &result {
        Ok(value) => (value.as_ref(), None),
        Err(e) => (None, Some(e)),
    };
    let reply = EngineMessage::InvocationResult {
        invocation_id: &invocation_id,
        function_id,
        result,
        error,
    };
    Some(reply.encode())
}

/// A worker's answer as a function result.
fn to_result(result: Option<Value>, error: Option<Value>) -> FnResult {
    match error.filter(|e| !e.is_null()) {
        None => Ok(result.filter(|r| !r.is_null()).map(Json::from)),
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
