//! Storage behind the streams: one trait, one backend per module, chosen by configuration.
//!
//! An adapter stores items addressed by `stream / group / item`. Write methods return only
//! once the write is as durable as the backend promises (in a worker's call, the engine's own
//! store returns at once and leaves the call holding its sync: see `synced`), and return the
//! write's place in its item's event order with the result ([`Stored`]); the engine emits the
//! write's event after that, in that order. The place comes only from `fanout::order`: a turn
//! claimed from the adapter's `Turns` under the lock that orders its writes, or an engine item
//! lock held from before the write. So an adapter cannot forget to order its writes.

pub mod kv_store;
pub mod redis;
pub mod router;
pub mod synced;

pub mod update_ops;
pub mod wal;
pub mod wasm;
pub mod worker;

use crate::fanout::frame::{Position, StreamEvent};
use crate::fanout::history::Bounds;
use crate::fanout::order::Order;
use crate::fanout::presence::{JoinedRoster, PresenceChange, SharedRoster};
use crate::json::Json;
use crate::metrics::Telemetry;
use crate::storage::update_ops::{OpError, UpdateOps};
use async_trait::async_trait;
use std::sync::Arc;

/// The result of an atomic read-modify-write.
#[derive(Debug, Clone)]
pub struct UpdateOutcome {
    pub old_value: Option<Json>,
    pub new_value: Json,
    pub errors: Vec<OpError>,
}

/// What a write returns: its result, and its place in the item's event order, which the
/// engine keeps until the write's event is out (see `fanout::order`).
#[derive(Debug)]
pub struct Stored<T> {
    pub value: T,
    pub order: Order,
}

impl<T> Stored<T> {
    /// The same place in the order, with the result made into something else.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Stored<U> {
        Stored {
            value: f(self.value),
            order: self.order,
        }
    }
}

#[async_trait]
pub trait StreamAdapter: Send + Sync {
    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;
    async fn get(&self, stream: &str, group: &str, item: &str) -> anyhow::Result<Option<Json>>;
    /// Stores `data` and returns the value it replaced.
    async fn set(
        &self,
        stream: &str,
        group: &str,
        item: &str,
        data: Json,
    ) -> anyhow::Result<Stored<Option<Json>>>;
    /// Stores `data`; returns the value it replaced and the value now stored. Only storage
    /// that may store something other than `data` (a worker's `stream::set(name)`) overrides it.
    async fn write(
        &self,
        stream: &str,
        group: &str,
        item: &str,
        data: Json,
    ) -> anyhow::Result<Stored<(Option<Json>, Json)>> {
        let stored = self.set(stream, group, item, data.clone()).await?;
        Ok(stored.map(|old| (old, data)))
    }
    /// Removes an item and returns it; removing a missing item is not an error.
    async fn delete(
        &self,
        stream: &str,
        group: &str,
        item: &str,
    ) -> anyhow::Result<Stored<Option<Json>>>;
    /// The group's values in insertion order.
    async fn list(&self, stream: &str, group: &str) -> anyhow::Result<Vec<Json>>;
    async fn list_groups(&self, stream: &str) -> anyhow::Result<Vec<String>>;
    /// The group's item ids in insertion order.
    async fn list_ids(&self, stream: &str, group: &str) -> anyhow::Result<Vec<String>> {
        let _ = (stream, group);
        anyhow::bail!("the {} adapter cannot list item ids", self.name())
    }
    /// Every stream with its groups.
    async fn list_all(&self) -> anyhow::Result<Vec<(String, Vec<String>)>>;
    /// Applies update ops to the current value atomically (no write from elsewhere in between).
    /// A result past the ops' value limits is refused and nothing is stored.
    async fn update(
        &self,
        stream: &str,
        group: &str,
        item: &str,
        ops: &UpdateOps,
    ) -> anyhow::Result<Stored<UpdateOutcome>>;
    /// Makes everything acknowledged durable before the engine exits.
    async fn shutdown(&self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Whether the adapter can serve writes; the reason when it cannot.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }

    /// The channel that carries events between engine nodes, for adapters shared by several
    /// nodes (Redis); None when this node is alone.
    fn event_bus(&self) -> Option<Arc<dyn EventBus>> {
        None
    }

    /// What the backend counted that `/metrics` exports, read at each scrape.
    fn telemetry(&self) -> Telemetry {
        Telemetry::default()
    }
}

/// What a node hears from the other nodes.
#[derive(Debug)]
pub enum BusMessage {
    /// An event with no shared offset (from an iii node, or one of this node's that could not
    /// be numbered), for this node's subscribers; the hub numbers it in an epoch of its own.
    Event(StreamEvent),
    /// An event numbered by the bus (any node's, this node's too), delivered at that position.
    Numbered(StreamEvent, Position),
    /// Events may have been missed (the bus reconnected): subscribers need a fresh `sync`.
    Gap,
    /// A change to a group's shared presence roster (any node's, this node's too).
    Presence(PresenceChange),
    /// The shared rosters lost changes (Redis lost its data, or this node was cut off past
    /// its ttl): mirrors must be loaded again.
    RostersLost,
    /// An event of this node's, numbered by the bus at this position after this node had
    /// delivered it in an epoch of its own (its numbering timed out): not delivered again, but
    /// the position is taken, so this node's copy of the history has a hole there.
    Skipped {
        stream: String,
        group: String,
        at: Position,
    },
    /// Answered once everything queued before it has been handled.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Carries events between engine nodes, so each node's clients see every node's changes.
pub trait EventBus: Send + Sync {
    /// Sends an event emitted on this node to the other nodes. It must not block.
    fn publish(&self, event: &StreamEvent);
    /// The events of the other nodes (and this node's own, once numbered), and gaps. Called
    /// once.
    fn subscribe(&self) -> tokio::sync::mpsc::Receiver<BusMessage>;
    /// Resolves once every event published so far is settled: numbered and published by the
    /// backend, or given up (and then delivered locally). A writer that awaits it before its
    /// reply knows that an acknowledged event is in the shared history even if this node dies
    /// right after.
    fn settled(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::ready(()))
    }
    /// Where offsets and history live when the bus numbers events itself; then the hub
    /// delivers only what the bus hands back (`Numbered`), and joins resume from here.
    fn shared_history(&self) -> Option<Arc<dyn SharedHistory>> {
        None
    }
    /// The history bounds in force, for a bus that keeps history.
    fn set_history(&self, bounds: Bounds) {
        let _ = bounds;
    }
    /// Where presence rosters live when every node shares them; then the hub mirrors the
    /// rosters of the groups it serves from the changes the bus hands it (`Presence`).
    fn shared_presence(&self) -> Option<Arc<dyn SharedPresence>> {
        None
    }
}

/// Presence rosters shared by every node (see `redis::presence`). Changes are applied in one
/// order by the backend, numbered per group (`version`), and heard by every node as
/// `BusMessage::Presence`.
#[async_trait]
pub trait SharedPresence: Send + Sync {
    /// This node's name, unique among the live nodes: it prefixes its members' `client`.
    fn node(&self) -> &str;
    /// Adds a member (`member` is its encoded JSON) unless it is one already; returns the
    /// group's version once the change is made, and the change. Joins and leaves are applied
    /// in call order. `max` is the members listed, for a roster this join starts.
    async fn join(
        &self,
        stream: &str,
        group: &str,
        client: &str,
        member: Arc<str>,
        max: usize,
    ) -> anyhow::Result<JoinedRoster>;
    /// Removes a member. Never fails: a leave that cannot be made now is retried until it is,
    /// and a node that dies has its members removed by the others.
    fn leave(&self, stream: &str, group: &str, client: &str, max: usize);
    /// The group's roster as it is now: its version, its member count, the first `max`.
    async fn roster(&self, stream: &str, group: &str, max: usize) -> anyhow::Result<SharedRoster>;
    /// Waits, at most `within`, until every join and leave asked so far is made: an engine
    /// that stops cleanly takes its members out before it goes.
    async fn flush(&self, within: std::time::Duration);
}

/// Offsets and history shared by every node (see `redis::history`).
#[async_trait]
pub trait SharedHistory: Send + Sync {
    /// Where a join stands: with `from`, the events after it when the history holds every one
    /// (same epoch, within the bounds); otherwise the group's position for a `sync`.
    async fn resume(
        &self,
        stream: &str,
        group: &str,
        from: Option<&Position>,
    ) -> anyhow::Result<Resumed>;
}

/// How a join against a shared history is answered.
#[derive(Debug)]
pub enum Resumed {
    /// Every frame after the join's offset, oldest first; `last` is the group's position.
    Recovered { frames: Vec<String>, last: Position },
    /// Not recoverable (or not asked): the position a `sync` read now must carry.
    Sync(Position),
}
