//! The metric families, and the narrow handles that the parts which count hold.
//!
//! A prometheus-client metric is a shared value: a clone counts into the same series the
//! registry renders. So each part keeps a clone of the few metrics it touches (the hub its
//! two counters, a socket its gauge, the call path `Calls`) and needs neither the engine nor
//! the registry. Label values that peers choose (function ids, error codes) are bounded
//! here, since every series is kept for the life of the process.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Upper bounds of the call latency buckets, in seconds.
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Function ids are chosen by workers: past this many, a new id counts as [`OTHER`].
pub const MAX_FUNCTIONS: usize = 500;
/// Error codes too (a worker's function may fail with any code).
pub const MAX_ERROR_CODES: usize = 100;
/// A longer label value counts as [`OTHER`]: an id may be megabytes, and is kept forever.
pub const MAX_LABEL_BYTES: usize = 256;
/// The label value of everything past those bounds.
pub const OTHER: &str = "other";

/// Why the accept loop turned a connection away (`sockets::accept`), a fixed few.
pub const REFUSAL_REASONS: [&str; 2] = [
    // Over the engine-wide cap, answered 429.
    "max_connections",
    // Over the cap while the most 429 answers already ran: closed unanswered.
    "unanswered",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// Client and worker sockets open, sockets closed for being too slow, and connections
/// refused at the engine's cap.
#[derive(Clone, Default)]
pub struct Connections {
    clients: Gauge,
    workers: Gauge,
    slow_disconnects: Counter,
    idle_disconnects: Counter,
    refused: Family<ReasonLabel, Counter>,
}

/// What a socket adds to when the engine closes it: as too slow (4008), or as dead (4010).
#[derive(Clone, Default)]
pub struct CloseCounters {
    pub slow: Counter,
    pub idle: Counter,
}

/// An open socket, counted until it is dropped.
pub struct Open(Gauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Connections {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "streamhost_client_connections",
            "Client sockets open",
            self.clients.clone(),
        );
        registry.register(
            "streamhost_worker_connections",
            "Worker sockets open",
            self.workers.clone(),
        );
    }

    pub(super) fn register_slow(&self, registry: &mut Registry) {
        registry.register(
            "streamhost_slow_client_disconnects",
            "Clients closed because their send queue overflowed (close code 4008)",
            self.slow_disconnects.clone(),
        );
        registry.register(
            "streamhost_idle_disconnects",
            "Client and worker sockets closed because their peer sent nothing, not even a pong, for idle_timeout_ms (close code 4010)",
            self.idle_disconnects.clone(),
        );
        // Every reason is shown from the start, so a zero means "none refused".
        for reason in REFUSAL_REASONS {
            let _ = self.refused.get_or_create(&ReasonLabel { reason });
        }
        registry.register(
            "streamhost_connections_refused",
            "Connections refused at the engine-wide cap (max_connections), by reason: answered 429, or closed unanswered when too many refusals were being answered",
            self.refused.clone(),
        );
    }

    /// Counts a connection the accept loop turned away; `reason` is one of
    /// [`REFUSAL_REASONS`].
    pub fn refused(&self, reason: &'static str) {
        debug_assert!(REFUSAL_REASONS.contains(&reason), "{reason}");
        self.refused.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Counts a client socket until the guard is dropped.
    pub fn client_opened(&self) -> Open {
        self.clients.inc();
        Open(self.clients.clone())
    }

    /// Counts a worker socket until the guard is dropped.
    pub fn worker_opened(&self) -> Open {
        self.workers.inc();
        Open(self.workers.clone())
    }

    pub fn clients(&self) -> u64 {
        self.clients.get().max(0) as u64
    }

    pub fn workers(&self) -> u64 {
        self.workers.get().max(0) as u64
    }

    /// The counter an outbox adds to when it closes its socket as too slow.
    pub fn closes(&self) -> CloseCounters {
        CloseCounters {
            slow: self.slow_disconnects.clone(),
            idle: self.idle_disconnects.clone(),
        }
    }
}

/// What the fan-out hub counts.
#[derive(Clone, Default)]
pub struct FanoutCounters {
    /// Events handed to the hub.
    pub published: Counter,
    /// Frames queued for sockets (one per socket an event reached).
    pub delivered: Counter,
    /// The same, for the hub's tenant alone (`streamhost_tenant_frames_delivered`).
    pub tenant_delivered: Counter,
    /// Presence frames among those delivered, for the hub's tenant
    /// (`streamhost_tenant_presence_frames`).
    pub tenant_presence: Counter,
}

impl FanoutCounters {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "streamhost_events_published",
            "Events published to the fan-out hub",
            self.published.clone(),
        );
        registry.register(
            "streamhost_frames_delivered",
            "Frames queued for client sockets",
            self.delivered.clone(),
        );
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    function: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabel {
    function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: String,
}

/// One function's series, found once and then counted into without a label lookup.
struct FunctionSeries {
    ok: Counter,
    error: Counter,
    latency: Histogram,
}

/// Calls by function id and outcome, their latency, and storage errors by code. Cloning it
/// is cheap; every clone counts into the same series.
#[derive(Clone)]
pub struct Calls(Arc<CallsInner>, Option<TenantCalls>);

/// A tenant's own call counters: all calls, failed calls.
#[derive(Clone)]
struct TenantCalls {
    calls: Counter,
    errors: Counter,
}

struct CallsInner {
    count: Family<CallLabels, Counter>,
    latency: Family<FunctionLabel, Histogram>,
    errors: Family<CodeLabel, Counter>,
    functions: Bounded<Arc<FunctionSeries>>,
    codes: Bounded<Counter>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

impl Default for Calls {
    fn default() -> Self {
        Calls(
            Arc::new(CallsInner {
                count: Family::default(),
                latency: Family::new_with_constructor(latency_histogram),
                errors: Family::default(),
                functions: Bounded::new(MAX_FUNCTIONS),
                codes: Bounded::new(MAX_ERROR_CODES),
            }),
            None,
        )
    }
}

impl Calls {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "streamhost_function_calls",
            "Function calls by function id and outcome",
            self.0.count.clone(),
        );
        registry.register(
            "streamhost_function_call_duration_seconds",
            "Function call latency",
            self.0.latency.clone(),
        );
        registry.register(
            "streamhost_adapter_errors",
            "Storage failures by error code",
            self.0.errors.clone(),
        );
    }

    /// These counters, also counting into one tenant's `calls` and `errors`.
    pub fn for_tenant(&self, calls: Counter, errors: Counter) -> Calls {
        Calls(self.0.clone(), Some(TenantCalls { calls, errors }))
    }

    /// Records one call: its function, how long it took, and the error code if it failed.
    pub fn record(&self, function_id: &str, took: Duration, error_code: Option<&str>) {
        if let Some(tenant) = &self.1 {
            tenant.calls.inc();
            if error_code.is_some() {
                tenant.errors.inc();
            }
        }
        let inner = &*self.0;
        let series = inner.functions.get(function_id, |function| {
            let labels = |outcome| CallLabels {
                function: function.to_owned(),
                outcome,
            };
            // Both outcomes are created at once, so each function shows an `ok` and an `error` line.
            Arc::new(FunctionSeries {
                ok: inner.count.get_or_create_owned(&labels("ok")),
                error: inner.count.get_or_create_owned(&labels("error")),
                latency: inner.latency.get_or_create_owned(&FunctionLabel {
                    function: function.to_owned(),
                }),
            })
        });
        match error_code {
            None => series.ok.inc(),
            Some(_) => series.error.inc(),
        };
        series.latency.observe(took.as_secs_f64());
        // Storage failures, from the engine's adapter or a stream's own.
        if let Some(code) =
            error_code.filter(|c| c.starts_with("STREAM_") || c.starts_with("adapter_"))
        {
            let counter = inner.codes.get(code, |code| {
                inner.errors.get_or_create_owned(&CodeLabel {
                    code: code.to_owned(),
                })
            });
            counter.inc();
        }
    }
}

/// Label values chosen by peers, each with its metrics: at most `cap` of them by name, and
/// the rest (and any value over [`MAX_LABEL_BYTES`]) together as [`OTHER`].
pub(super) struct Bounded<T> {
    cap: usize,
    seen: RwLock<HashMap<String, T>>,
}

impl<T: Clone> Bounded<T> {
    pub(super) fn new(cap: usize) -> Self {
        Bounded {
            cap,
            seen: RwLock::new(HashMap::new()),
        }
    }

    /// The metrics of `value`, made by `make` (given the label value to use) the first time.
    pub(super) fn get(&self, value: &str, make: impl FnOnce(&str) -> T) -> T {
        let value = if value.len() > MAX_LABEL_BYTES {
            OTHER
        } else {
            value
        };
        if let Some(found) = self.seen.read().unwrap().get(value) {
            return found.clone();
        }
        let mut seen = self.seen.write().unwrap();
        let named = seen.len() - usize::from(seen.contains_key(OTHER));
        let key = if named >= self.cap && !seen.contains_key(value) {
            OTHER
        } else {
            value
        };
        seen.entry(key.to_owned())
            .or_insert_with(|| make(key))
            .clone()
    }

    /// Forgets `value`, freeing its place under the cap; true if it was there.
    pub(super) fn remove(&self, value: &str) -> bool {
        self.seen.write().unwrap().remove(value).is_some()
    }
}
