//! A space: one tenant's share of the engine. Its own functions (worker registry, triggers,
//! storage router with its own WebAssembly bindings and its own store), its own hub of
//! subscribers, its own bus channel, and the list of its open sockets.
//!
//! Isolation is by construction: a socket is admitted to exactly one space and holds only
//! that space's handles, so no name a worker or client sends can reach another space's
//! functions, triggers, streams or subscribers. Nothing in a space knows another exists.

use crate::fair::Turns;
use crate::fanout::frame::{EventKind, StreamEvent};
use crate::fanout::history::Bounds;
use crate::fanout::hub::Hub;
use crate::fanout::outbox::Outbox;
use crate::fanout::pace::Pace;
use crate::fanout::presence::PresenceRules;
use crate::functions::{Functions, Parts};
use crate::json::Json;
use crate::limits::ValueLimits;
use crate::metrics::{FanoutCounters, Metrics, TenantCounters};
use crate::storage::router::StorageRouter;
use crate::storage::wasm::registry::WasmBindings;
use crate::storage::{BusMessage, EventBus, StreamAdapter};
use crate::tenants::{Quotas, TenantId, TenantQuotas};
use crate::workers::router::Router;
use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a space is built from, beside its store.
pub struct Settings {
    pub value_limits: ValueLimits,
    pub invocation_timeout: Duration,
    /// Calls that may wait on one worker at once.
    pub max_pending_per_worker: usize,
    /// Calls of the tenant's workers that run at once (`fair::Turns`).
    pub calls_in_flight: usize,
    /// Client sockets of the tenant written at once (`fair::Turns::burst`).
    pub fanout_in_flight: usize,
    pub wasm_cache_dir: Option<PathBuf>,
    /// Each group's history, unless the tenant says otherwise.
    pub history: Bounds,
    /// Which streams keep presence, unless the tenant says otherwise.
    pub presence: PresenceRules,
}

pub struct Space {
    pub tenant: TenantId,
    pub functions: Arc<Functions>,
    pub hub: Arc<Hub>,
    /// The turns the tenant's client sockets take to write (`fair`).
    pub fanout_turns: Turns,
    /// The pace of those writes: the tenant's `deliveries_per_second` (`fanout::pace`).
    pub fanout_pace: Arc<Pace>,
    bus: Option<Arc<dyn EventBus>>,
    sockets: Mutex<HashMap<u64, Socket>>,
    next_socket: AtomicU64,
    /// This tenant's own metric series.
    counters: TenantCounters,
    /// The engine's history bounds, which a tenant's `history` overrides.
    history: Bounds,
    /// The engine's presence rules, which a tenant's `presence` overrides.
    presence: PresenceRules,
}

/// Which socket a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Client,
    Worker,
}

struct Socket {
    kind: Kind,
    addr: Option<SocketAddr>,
    /// The token's `sub` for a client, the worker id for a worker.
    who: String,
    /// The digest of the worker key that admitted a worker, so that revoking the key closes it.
    key_sha256: Option<String>,
    since: SystemTime,
    outbox: Arc<Outbox>,
}

/// One open socket, as the admin API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct SocketInfo {
    pub id: u64,
    pub kind: Kind,
    pub addr: Option<String>,
    pub who: String,
    /// The digest of the worker key a worker was admitted with (none: a keyless worker).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
    /// Seconds since the epoch.
    pub since: u64,
}

/// Keeps a socket on its space's list; dropping it takes it off.
pub struct Listed {
    space: Arc<Space>,
    id: u64,
}

impl Drop for Listed {
    fn drop(&mut self) {
        if let Some(s) = self.space.sockets.lock().unwrap().remove(&self.id) {
            self.space.gauge(s.kind).dec();
        }
    }
}

impl Space {
    pub fn new(
        tenant: TenantId,
        store: Arc<dyn StreamAdapter>,
        settings: &Settings,
        metrics: &Metrics,
    ) -> Arc<Space> {
        let counters = metrics.tenants.tenant(tenant.as_str());
        let hub = Arc::new(Hub::new(FanoutCounters {
            tenant_delivered: counters.delivered.clone(),
            tenant_presence: counters.presence_frames.clone(),
            ..metrics.fanout()
        }));
        hub.set_history(settings.history);
        let bus = store.event_bus();
        if let Some(bus) = &bus {
            hub.number_with(bus.clone());
        }
        // Unlimited until `configure` applies the tenant's.
        let quotas = TenantQuotas::new(tenant.clone(), &Quotas::UNLIMITED, counters.clone());
        let workers = Arc::new(Router::new(settings.max_pending_per_worker, quotas.clone()));
        let storage = StorageRouter::new(
            store,
            WasmBindings::new(settings.wasm_cache_dir.clone(), counters.clone()),
            workers.clone(),
            settings.invocation_timeout,
        );
        let functions = Functions::new(Parts {
            storage,
            workers,
            hub: hub.clone(),
            bus: bus.clone(),
            calls: metrics
                .calls
                .for_tenant(counters.calls.clone(), counters.call_errors.clone()),
            value_limits: settings.value_limits,
            invocation_timeout: settings.invocation_timeout,
            quotas,
            turns: Turns::new(settings.calls_in_flight),
        });
        let space = Arc::new(Space {
            tenant,
            functions,
            hub,
            fanout_turns: Turns::new(settings.fanout_in_flight),
            fanout_pace: Arc::default(),
            bus,
            sockets: Mutex::default(),
            next_socket: AtomicU64::new(1),
            counters,
            history: settings.history,
            presence: settings.presence.clone(),
        });
        space.listen_to_bus();
        space
    }

    /// Applies what of its tenant's config the space itself enforces: adapter ceilings and
    /// quotas, live.
    pub fn configure(&self, tenant: &crate::tenants::TenantConfig) {
        self.functions.set_ceilings(tenant.adapter_ceilings);
        self.functions.quotas.set(&tenant.quotas);
        let pace = tenant
            .quotas
            .deliveries_per_second
            .map(|r| (r.per_second, r.burst));
        self.fanout_pace.set(pace);
        let history = tenant.history.unwrap_or_default();
        self.hub.set_history(history.over(self.history));
        let presence = tenant.presence.clone().unwrap_or_default();
        self.hub.set_presence(presence.over(&self.presence));
    }

    /// Counts what the tenant's store already holds against its `stored_bytes` quota
    /// (`functions::admit::load_stored_bytes`); a store that cannot be read is logged, and
    /// the quota then counts from zero as before.
    pub async fn load_stored_bytes(&self) {
        let store = self.store().clone();
        match crate::functions::admit::load_stored_bytes(self.quotas(), store.as_ref()).await {
            Ok(bytes) => tracing::debug!(tenant = %self.tenant, bytes, "stored bytes counted"),
            Err(e) => tracing::warn!(tenant = %self.tenant, error = %format!("{e:#}"),
                "cannot read the tenant's store to count its stored bytes: its stored_bytes quota counts only writes from now on"),
        }
    }

    /// The tenant's quotas, live.
    pub fn quotas(&self) -> &Arc<TenantQuotas> {
        &self.functions.quotas
    }

    /// The space's own store.
    pub fn store(&self) -> &Arc<dyn StreamAdapter> {
        self.functions.storage.native()
    }

    /// Puts a socket on the list, for as long as the returned guard lives.
    pub fn list(
        self: &Arc<Self>,
        kind: Kind,
        addr: Option<SocketAddr>,
        who: &str,
        key_sha256: Option<&str>,
        outbox: &Arc<Outbox>,
    ) -> Listed {
        let id = self.next_socket.fetch_add(1, Ordering::Relaxed);
        self.gauge(kind).inc();
        self.sockets.lock().unwrap().insert(
            id,
            Socket {
                kind,
                addr,
                who: who.to_owned(),
                key_sha256: key_sha256.map(str::to_owned),
                since: SystemTime::now(),
                outbox: outbox.clone(),
            },
        );
        Listed {
            space: self.clone(),
            id,
        }
    }

    fn gauge(&self, kind: Kind) -> &prometheus_client::metrics::gauge::Gauge {
        match kind {
            Kind::Client => &self.counters.clients,
            Kind::Worker => &self.counters.workers,
        }
    }

    /// Sets the gauges that are read rather than tracked; called at each scrape.
    pub fn update_gauges(&self) {
        self.counters
            .subscriptions
            .set(self.hub.subscription_count() as i64);
    }

    /// Takes this space's members out of rosters shared with other nodes before it stops: waits,
    /// at most `within`, for its client sockets to go (each leaves its groups as it goes), then
    /// for their leaves to be made. Otherwise the other nodes would list them until this
    /// node's presence ttl passes.
    pub async fn leave_shared_rosters(&self, within: std::time::Duration) {
        let Some(presence) = self.hub.shared_presence() else {
            return;
        };
        let deadline = tokio::time::Instant::now() + within;
        let clients_left = || {
            let sockets = self.sockets.lock().unwrap();
            sockets.values().any(|s| s.kind == Kind::Client)
        };
        while clients_left() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        presence.flush(within).await;
    }

    /// Every open socket of this space.
    pub fn sockets(&self) -> Vec<SocketInfo> {
        let mut all: Vec<SocketInfo> = self
            .sockets
            .lock()
            .unwrap()
            .iter()
            .map(|(id, s)| SocketInfo {
                id: *id,
                kind: s.kind,
                addr: s.addr.map(|a| a.to_string()),
                who: s.who.clone(),
                key_sha256: s.key_sha256.clone(),
                since: s
                    .since
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            })
            .collect();
        all.sort_by_key(|s| s.id);
        all
    }

    /// Closes one socket (`Some(id)`) or all of them, of one kind or both; returns how many.
    pub fn close(&self, id: Option<u64>, kind: Option<Kind>, code: u16, reason: &str) -> usize {
        let sockets = self.sockets.lock().unwrap();
        let mut closed = 0;
        for (sid, s) in sockets.iter() {
            if id.is_none_or(|id| id == *sid) && kind.is_none_or(|k| k == s.kind) {
                s.outbox.close(code, reason);
                closed += 1;
            }
        }
        closed
    }

    /// Closes the workers admitted with a key that `still_valid` no longer accepts (revoked,
    /// or dropped by a new config); returns how many.
    pub fn close_revoked(
        &self,
        still_valid: impl Fn(&str) -> bool,
        code: u16,
        reason: &str,
    ) -> usize {
        let sockets = self.sockets.lock().unwrap();
        let mut closed = 0;
        for s in sockets.values() {
            if s.key_sha256.as_deref().is_some_and(|k| !still_valid(k)) {
                s.outbox.close(code, reason);
                closed += 1;
            }
        }
        closed
    }

    /// Delivers what other nodes emit for this tenant; on a gap, resends every snapshot.
    fn listen_to_bus(self: &Arc<Self>) {
        let Some(bus) = &self.bus else { return };
        let mut rx = bus.subscribe();
        let space = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                let Some(space) = space.upgrade() else {
                    return;
                };
                match msg {
                    BusMessage::Event(event) => {
                        space.hub.publish_local(&event);
                    }
                    BusMessage::Numbered(event, at) => {
                        space.hub.publish_at(&event, &at);
                    }
                    BusMessage::Presence(change) => space.hub.presence_heard(change),
                    BusMessage::RostersLost => space.hub.presence_lost(),
                    BusMessage::Skipped { stream, group, at } => {
                        space.hub.skipped_at(&stream, &group, &at)
                    }
                    BusMessage::Flush(done) => {
                        let _ = done.send(());
                    }
                    BusMessage::Gap => {
                        // The history now has holes: no client may recover from it.
                        space.hub.history_lost();
                        space.hub.presence_lost();
                        space.resync_subscribers().await
                    }
                }
            }
        });
    }

    /// Sends every subscription a new `sync` snapshot, after events may have been missed.
    /// Each group (or item) is read once, however many sockets subscribe to it. Its sockets
    /// are held while it is read, as a join's are: an event published meanwhile goes after
    /// the `sync`, not before it, where the older snapshot would undo it.
    pub async fn resync_subscribers(&self) {
        let targets = self.hub.subscribed_targets();
        tracing::info!(
            tenant = %self.tenant,
            targets = targets.len(),
            "resynchronising subscribers after a gap in events from other nodes"
        );
        for (stream, group, item) in targets {
            // The position is read as the sockets are held: every event at or below it is
            // stored before the snapshot is read, and every later one is held.
            let Some((position, conns)) = self.hub.hold(&stream, &group, item.as_deref()) else {
                continue;
            };
            let snapshot = match &item {
                Some(item) => {
                    self.functions
                        .call(
                            "stream::get",
                            json!({"stream_name": stream, "group_id": group, "item_id": item}),
                        )
                        .await
                }
                None => {
                    self.functions
                        .call(
                            "stream::list",
                            json!({"stream_name": stream, "group_id": group}),
                        )
                        .await
                }
            };
            let sync = match snapshot {
                Ok(data) => {
                    let data = data.unwrap_or_else(|| match item {
                        Some(_) => Json::null(),
                        None => Json::array(&[]),
                    });
                    let event =
                        StreamEvent::new(&stream, &group, item.as_deref(), EventKind::Sync(data));
                    Some(Utf8Bytes::from(event.encode_at(&position, None)))
                }
                Err(e) => {
                    tracing::warn!(tenant = %self.tenant, %stream, %group, error = %e, "cannot resynchronise a subscription");
                    None
                }
            };
            // Released even without a `sync`, so that live events are not held for ever.
            let sync = sync.map(|frame| (frame, &position));
            self.hub
                .release_held(&stream, &group, item.as_deref(), &conns, sync);
        }
    }
}
