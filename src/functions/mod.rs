//! Calling a function by id, and emitting what a call changed.
//!
//! `Functions` is what a call needs and nothing more: the storage router, the registry of
//! workers' functions, the triggers, and the way out to subscribers (the hub, and the bus to
//! other nodes). The sockets reach it through the engine; nothing in here knows about sockets.
//!
//! - `streams`: the built-in `stream::*` functions, run as typed commands (`command`) whose
//!   payloads `payloads` reads, admitted by `admit` against the tenant's quotas;
//! - `triggers`: `stream`, `stream:join` and `stream:leave` triggers;
//! - `wasm_bindings`: the `streamhost::*` functions that bind WebAssembly adapters to streams.

pub mod admit;
pub mod command;
mod payloads;
pub mod streams;
pub mod triggers;
pub mod wasm_bindings;

use crate::error::{FnError, FnResult};
use crate::fair::Turns;
use crate::fanout::frame::StreamEvent;
use crate::fanout::hub::Hub;
use crate::limits::ValueLimits;
use crate::metrics::Calls;
use crate::storage::EventBus;
use crate::storage::router::StorageRouter;
use crate::storage::synced;
use crate::tenants::{AdapterCeilings, TenantQuotas};
use crate::workers::router::Router;
use crate::workers::shown::shown;
use command::Command;
use serde_json::Value;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use triggers::Triggers;

/// A call admitted and ready to run (see [`Functions::begin`]).
pub type Call = Pin<Box<dyn Future<Output = FnResult> + Send>>;

pub struct Functions {
    pub storage: StorageRouter,
    /// Which worker serves which function id.
    pub workers: Arc<Router>,
    pub triggers: Triggers,
    hub: Arc<Hub>,
    /// Carries events to other nodes when the store is shared (Redis).
    bus: Option<Arc<dyn EventBus>>,
    calls: Calls,
    value_limits: ValueLimits,
    invocation_timeout: Duration,
    /// The most a WebAssembly adapter bound at runtime may ask for (the tenant's ceilings,
    /// changed live by the admin API).
    ceilings: RwLock<AdapterCeilings>,
    /// The tenant's quotas, shared with its space (connections) and changed live.
    pub quotas: Arc<TenantQuotas>,
    /// The tenant's share of the engine's time: its workers' calls run in these turns.
    pub turns: Turns,
}

/// A call's input: a built-in function's command, or the data (and metadata) of any other.
enum Input {
    Command(Result<Command, FnError>),
    Value(Value, Option<Value>),
}

/// What `Functions` is built from.
pub struct Parts {
    pub storage: StorageRouter,
    pub workers: Arc<Router>,
    pub hub: Arc<Hub>,
    pub bus: Option<Arc<dyn EventBus>>,
    pub calls: Calls,
    pub value_limits: ValueLimits,
    pub invocation_timeout: Duration,
    pub quotas: Arc<TenantQuotas>,
    pub turns: Turns,
}

impl Functions {
    pub fn new(parts: Parts) -> Arc<Functions> {
        Arc::new(Functions {
            storage: parts.storage,
            workers: parts.workers,
            triggers: Triggers::default(),
            hub: parts.hub,
            bus: parts.bus,
            calls: parts.calls,
            value_limits: parts.value_limits,
            invocation_timeout: parts.invocation_timeout,
            quotas: parts.quotas,
            turns: parts.turns,
            ceilings: RwLock::new(AdapterCeilings::default()),
        })
    }

    pub fn ceilings(&self) -> AdapterCeilings {
        *self.ceilings.read().unwrap()
    }

    pub fn set_ceilings(&self, ceilings: AdapterCeilings) {
        *self.ceilings.write().unwrap() = ceilings;
        self.storage.wasm().set_ceilings(ceilings);
    }

    /// Calls a function by id: a built-in `stream::*` function or one a worker registered.
    pub async fn call(self: &Arc<Self>, function_id: &str, data: Value) -> FnResult {
        self.call_with_metadata(function_id, data, None).await
    }

    /// As `call`, with the invocation's `metadata`: a worker that serves the function gets it
    /// unchanged (spec section 6); the built-in functions have no use for it.
    pub async fn call_with_metadata(
        self: &Arc<Self>,
        function_id: &str,
        data: Value,
        metadata: Option<Value>,
    ) -> FnResult {
        self.begin(function_id, data, metadata)?.await
    }

    /// Admits a call and returns it ready to run, without waiting; or its refusal. A call to
    /// a worker takes its place among the worker's pending invocations here, so a caller
    /// that runs each call in a task of its own (the worker socket) spawns none for a call
    /// refused for `pending_invocations`. Refusals are counted in the call metrics here.
    pub fn begin(
        self: &Arc<Self>,
        function_id: &str,
        data: Value,
        metadata: Option<Value>,
    ) -> Result<Call, FnError> {
        let input = match streams::is_builtin(function_id) {
            true => Input::Command(Command::parse(function_id, data)),
            false => Input::Value(data, metadata),
        };
        self.begin_input(function_id, input)
    }

    /// As `begin`, for a built-in call whose payload the caller has read already (a worker's
    /// call, read from its frame's text: see `command`). An unreadable payload is answered
    /// as the call's error, after the call is admitted as any other.
    pub fn begin_command(
        self: &Arc<Self>,
        function_id: &str,
        command: Result<Command, FnError>,
    ) -> Result<Call, FnError> {
        self.begin_input(function_id, Input::Command(command))
    }

    fn begin_input(self: &Arc<Self>, function_id: &str, input: Input) -> Result<Call, FnError> {
        let started = Instant::now();
        let run = self.admit(function_id, input).inspect_err(|e| {
            self.calls
                .record(function_id, started.elapsed(), Some(e.code.as_str()))
        })?;
        let (this, function_id) = (self.clone(), function_id.to_owned());
        Ok(Box::pin(async move {
            let result = run.await;
            let code = result.as_ref().err().map(|e| e.code.clone());
            // A call's time runs until its write is on disk (see `storage::synced`).
            crate::storage::synced::after_sync(move |synced| {
                let code = match synced {
                    Ok(()) => code,
                    Err(e) => Some(streams::sync_failed(&function_id, e).code),
                };
                this.calls
                    .record(&function_id, started.elapsed(), code.as_deref());
            });
            result
        }))
    }

    fn admit(self: &Arc<Self>, function_id: &str, input: Input) -> Result<Call, FnError> {
        let this = self.clone();
        let (data, metadata) = match input {
            Input::Command(command) => {
                // A write over the tenant's rate is refused here, before it costs a task or a
                // turn: a tenant far over its quota pays only for reading and answering it.
                if streams::is_write(function_id) {
                    admit::write_token(self)?;
                }
                return Ok(Box::pin(async move { streams::run(&this, command?).await }));
            }
            Input::Value(data, metadata) => (data, metadata),
        };
        if wasm_bindings::is_function(function_id) {
            let id = function_id.to_owned();
            return Ok(Box::pin(async move {
                wasm_bindings::call(&this, &id, data).await
            }));
        }
        let Some(worker) = self.workers.lookup(function_id) else {
            return Err(FnError::new(
                "function_not_found",
                format!(
                    "function {} is not registered by any worker",
                    shown(function_id)
                ),
            ));
        };
        let invocation = worker.start(function_id, &data, metadata.as_ref())?;
        let timeout = self.invocation_timeout;
        Ok(Box::pin(invocation.wait(timeout)))
    }

    /// Sends a stored change or an ephemeral event to subscribers, `stream` triggers and the
    /// other engine nodes. Triggers fire only on the node where the change was made, and see
    /// the change itself; clients see what the stream's fan-out hook, if any, makes of it.
    /// A call holding a sync of the engine's store has the event queued on it, not copied.
    pub async fn emit(self: &Arc<Self>, event: StreamEvent) {
        // A call whose write is not yet on disk sends its event when it is, in log order
        // (see `storage::synced`); an event for a fan-out hook or for other nodes waits here.
        if synced::holding().is_some() {
            if self.bus.is_none() && self.storage.wasm().get(&event.stream_name).is_none() {
                let (this, queued) = (self.clone(), event);
                synced::after_sync(move |synced| {
                    // Without a runtime (it is shutting down) triggers cannot run.
                    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                        return;
                    };
                    if synced.is_err() {
                        return;
                    }
                    if this.storage.wasm().get(&queued.stream_name).is_some() {
                        // A fan-out hook was bound meanwhile: the event goes through it.
                        runtime.spawn(async move { this.emit_now(queued).await });
                        return;
                    }
                    this.triggers.fire_stream(&this, &queued);
                    this.publish(&queued);
                });
                return;
            }
            if synced::synced().await.is_err() {
                // Not stored: the call answers the sync's error, and nothing is sent.
                return;
            }
        }
        self.emit_now(event).await
    }

    /// Sends an event now (see [`emit`](Self::emit)).
    async fn emit_now(self: &Arc<Self>, event: StreamEvent) {
        self.triggers.fire_stream(self, &event);
        match self.fan_out(&event).await {
            None => self.publish(&event),
            Some(events) => events.iter().for_each(|e| self.publish(e)),
        }
    }

    fn publish(&self, event: &StreamEvent) {
        self.hub.publish(event);
        if let Some(bus) = &self.bus {
            bus.publish(event);
        }
    }

    /// Waits until the events emitted so far are in the other nodes' hands: numbered and
    /// published by the bus (Redis), or given up on and delivered here. A write awaits it
    /// before its reply, after its group's line has moved on, so that an acknowledged event
    /// survives this node dying right after; meanwhile its turn goes to other calls.
    pub async fn published(&self) {
        if let Some(bus) = &self.bus {
            crate::fair::idle(bus.settled()).await;
        }
    }

    /// Runs an event through its stream's fan-out hook: None when the stream has none (the
    /// event goes as it is). A failing hook delivers nothing: a hook may exist to keep data
    /// from clients, so failing open could leak it.
    async fn fan_out(&self, event: &StreamEvent) -> Option<Vec<StreamEvent>> {
        let adapter = self.storage.wasm().get(&event.stream_name)?;
        match adapter.fanout(event).await {
            None => None,
            Some(Ok(events)) => Some(
                events
                    .into_iter()
                    .filter(|e| {
                        let same = e.stream_name == event.stream_name;
                        if !same {
                            tracing::warn!(stream = %shown(&event.stream_name), to = %shown(&e.stream_name), "a fan-out hook may route only within its own stream; event dropped");
                        }
                        same
                    })
                    .collect(),
            ),
            Some(Err(e)) => {
                tracing::error!(stream = %shown(&event.stream_name), error = %format!("{e:#}"), "fan-out hook failed; the event was not delivered");
                Some(Vec::new())
            }
        }
    }

    /// The limits every value entering a store is held to.
    pub fn value_limits(&self) -> &ValueLimits {
        &self.value_limits
    }
}
