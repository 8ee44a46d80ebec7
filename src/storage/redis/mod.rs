//! The Redis adapter: items shared by every engine node, in the layout iii uses (spec §9).
//!
//! Each tenant has an adapter of its own (`connect` gives the `default` tenant, `for_tenant`
//! the others), with its own key space and channel (see `keys`), but a node's tenants share
//! its connections: commands go over one multiplexed `ConnectionManager` (concurrent calls are
//! pipelined on one socket and it reconnects by itself), and pub/sub between nodes has one
//! connection of its own (see `subscriber`; each tenant's publishing is in `bus`). set, delete and update are Lua scripts or compare-and-set loops, so each is
//! atomic and returns the value it replaced.
//!
//! Start-up does not wait for Redis: when it is down, the engine starts anyway, logs the
//! URL and the error, and keeps retrying with backoff. Meanwhile, and whenever Redis is lost
//! later, calls that need it fail within `COMMAND_TIMEOUT` with an error naming the URL, while
//! everything else (stream::send, joins to local sockets, workers) keeps working.
//!
//! One node applies one item's writes one at a time (a per-item lock held for the round
//! trip) and takes the item's turn as it sends each, so its clients get that item's events in
//! the order Redis applied them (see `fanout::order`); writes to different items stay pipelined.
//! Between nodes, events travel by pub/sub after the write, so two nodes writing one item at
//! the same moment may each deliver the other's event last.
//!
//! Groups are found with SCAN (never KEYS) over `stream:{stream}:*` (under its own prefix for
//! a tenant other than `default`), so groups written by iii nodes are listed too. SCAN walks
//! the keyspace in steps of `SCAN_COUNT` keys without blocking Redis; its cost grows with the
//! size of the whole keyspace, every tenant's keys included.

mod bus;
mod echoes;
mod history;
mod keys;
mod presence;
mod roster_scripts;
mod scripts;
mod subscriber;
mod target;

pub use bus::RedisBus;
pub use keys::{CHANNEL, DEFAULT_TENANT, KeySpace};
pub use presence::{DEFAULT_PRESENCE_TTL, RedisPresence};
pub use target::{COMMAND_TIMEOUT, CONNECT_TIMEOUT, RedisTarget, redact};

use super::{EventBus, Stored, StreamAdapter, Telemetry, UpdateOutcome};
use crate::fanout::item_lock::{ItemLock, ItemLocks};
use crate::fanout::order::{Order, Turns};
use crate::json::Json;
use crate::storage::update_ops::{self, UpdateOps};
use anyhow::Context;
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use subscriber::Subscriber;

/// Keys examined per SCAN step.
const SCAN_COUNT: usize = 1000;
/// Compare-and-set rounds an update may lose to other writers before it gives up.
const UPDATE_ATTEMPTS: usize = 200;

/// One tenant's view of Redis: its own key space and bus, over the node's shared connections.
pub struct RedisAdapter {
    node: Arc<Node>,
    keys: KeySpace,
    bus: Arc<RedisBus>,
    locks: ItemLocks,
    turns: Turns,
}

/// What every tenant of a node shares: the command connection and the pub/sub connection.
struct Node {
    target: Arc<RedisTarget>,
    conn: ConnectionManager,
    subscriber: Subscriber,
    /// How long a node's presence members outlive it (see `presence`), in ms.
    presence_ttl: Arc<std::sync::atomic::AtomicU64>,
}

impl RedisAdapter {
    /// Locks the item for one write (this adapter's own lock, held for the round trip) and
    /// takes its turn to emit, which the write returns.
    async fn writing(&self, stream: &str, group: &str, item: &str) -> (ItemLock, Order) {
        let held = self.locks.acquire(stream, group, item).await;
        let order = self.turns.claim(stream, group, item);
        (held, order)
    }

    /// An item's stored JSON text, as Redis holds it.
    async fn item_text(
        &self,
        stream: &str,
        group: &str,
        item: &str,
    ) -> anyhow::Result<Option<String>> {
        let mut conn = self.node.conn.clone();
        self.run(
            "HGET",
            redis::cmd("HGET")
                .arg(self.keys.group_key(stream, group))
                .arg(item)
                .query_async(&mut conn),
        )
        .await
    }

    /// A group's (item id, JSON text) pairs in insertion order.
    async fn entries(&self, stream: &str, group: &str) -> anyhow::Result<Vec<(String, String)>> {
        let mut conn = self.node.conn.clone();
        let mut call = scripts::LIST.key(self.keys.group_key(stream, group));
        call.key(self.keys.order_key(stream, group));
        let (order, flat): (Vec<String>, Vec<String>) = self
            .run("the list script", call.invoke_async(&mut conn))
            .await?;
        let mut items: HashMap<String, String> = HashMap::with_capacity(flat.len() / 2);
        let mut flat = flat.into_iter();
        while let (Some(field), Some(value)) = (flat.next(), flat.next()) {
            items.insert(field, value);
        }
        let mut entries = Vec::with_capacity(items.len());
        for id in order {
            if let Some(text) = items.remove(&id) {
                entries.push((id, text));
            }
        }
        // Items written by an iii node have no place in the order: they come last, by id.
        let mut unordered: Vec<(String, String)> = items.into_iter().collect();
        unordered.sort();
        entries.extend(unordered);
        Ok(entries)
    }

    /// Connects to `url` (`redis://[user:pass@]host:port[/db]`, `rediss://` for TLS). A URL that
    /// cannot be parsed is an error; a server that is down is not (see the module comment).
    pub async fn connect(url: &str) -> anyhow::Result<RedisAdapter> {
        let shown = redact(url);
        let client = redis::Client::open(url).with_context(|| {
            format!("the Redis adapter's redis_url `{shown}` is not a Redis URL: write redis://[user:password@]host:port[/db], or rediss://... for TLS")
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .with_context(|| format!("cannot set up the connection to redis at {shown}"))?;
        let target = Arc::new(RedisTarget { client, url: shown });
        let mut ping_conn = conn.clone();
        match target
            .run(
                "PING",
                redis::cmd("PING").query_async::<String>(&mut ping_conn),
            )
            .await
        {
            Ok(_) => tracing::info!(url = %target.url, "connected to redis"),
            Err(e) => tracing::error!(
                url = %target.url,
                "{e:#}. streamhost starts anyway: calls that need Redis fail until it answers, and it keeps retrying with backoff"
            ),
        }
        let subscriber = Subscriber::start(target.clone(), conn.clone());
        let node = Arc::new(Node {
            target,
            conn,
            subscriber,
            presence_ttl: Arc::new(
                DEFAULT_PRESENCE_TTL
                    .as_millis()
                    .try_into()
                    .unwrap_or(u64::MAX)
                    .into(),
            ),
        });
        Ok(RedisAdapter::in_key_space(node, KeySpace::Default))
    }

    /// The adapter of `tenant` on this node's connections: its own keys (see `keys`), its own
    /// channel and bus, which the node's one pub/sub connection subscribes to from now until
    /// the adapter is shut down or dropped. `default` is the layout iii uses. Create one
    /// adapter per tenant and share it: two adapters of one tenant on one node hear each
    /// other like two nodes, but do not order each other's writes to one item.
    pub fn for_tenant(&self, tenant: &str) -> anyhow::Result<RedisAdapter> {
        Ok(RedisAdapter::in_key_space(
            self.node.clone(),
            KeySpace::of(tenant)?,
        ))
    }

    fn in_key_space(node: Arc<Node>, keys: KeySpace) -> RedisAdapter {
        let history = Arc::new(history::RedisHistory::new(
            node.target.clone(),
            node.conn.clone(),
            keys.clone(),
        ));
        let presence = RedisPresence::start(
            node.target.clone(),
            node.conn.clone(),
            keys.clone(),
            node.presence_ttl.clone(),
        );
        let bus = Arc::new(RedisBus::start(
            node.target.clone(),
            node.conn.clone(),
            &node.subscriber,
            keys.channel(),
            history,
            presence,
        ));
        RedisAdapter {
            node,
            keys,
            bus,
            locks: ItemLocks::default(),
            turns: Turns::default(),
        }
    }

    /// How long this node's presence members outlive it, should it die without removing
    /// them: it renews them three times per `ttl`, and the others remove them past it. For
    /// every tenant of the node, from their next renewal.
    pub fn set_presence_ttl(&self, ttl: Duration) {
        let ms = ttl.as_millis().clamp(1, u64::MAX as u128) as u64;
        self.node
            .presence_ttl
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// The tenant whose key space this adapter reads and writes.
    pub fn tenant(&self) -> &str {
        self.keys.tenant()
    }

    /// Publications to other nodes that were dropped because Redis was slow or away.
    pub fn dropped_publications(&self) -> u64 {
        self.bus
            .stats()
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn run<T>(
        &self,
        what: &str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> anyhow::Result<T> {
        self.node.target.run(what, call).await
    }

    /// Scans for group hashes whose key starts with `prefix` (taken literally), returning
    /// each key without it.
    async fn scan_groups(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let pattern = format!("{}*", glob_escape(prefix));
        let mut conn = self.node.conn.clone();
        let mut cursor = 0u64;
        let mut found = Vec::new();
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .run(
                    "SCAN",
                    redis::cmd("SCAN")
                        .cursor_arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(SCAN_COUNT)
                        .arg("TYPE")
                        .arg("hash")
                        .query_async(&mut conn),
                )
                .await?;
            found.extend(
                keys.into_iter()
                    .filter_map(|k| k.strip_prefix(prefix).map(str::to_owned)),
            );
            if next == 0 {
                return Ok(found);
            }
            cursor = next;
        }
    }

    /// An item's text as Redis holds it, checked to be JSON (another node may have written it).
    fn parse(&self, stream: &str, group: &str, item: &str, text: &str) -> anyhow::Result<Json> {
        Json::parse(text).with_context(|| {
            format!(
                "the value of {stream}/{group}/{item} in Redis (hash {}) is not JSON",
                self.keys.group_key(stream, group)
            )
        })
    }

    fn parse_opt(
        &self,
        stream: &str,
        group: &str,
        item: &str,
        text: Option<String>,
    ) -> anyhow::Result<Option<Json>> {
        text.map(|t| self.parse(stream, group, item, &t))
            .transpose()
    }
}

/// Escapes the glob characters of a SCAN MATCH pattern.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[async_trait]
impl StreamAdapter for RedisAdapter {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn get(&self, stream: &str, group: &str, item: &str) -> anyhow::Result<Option<Json>> {
        let text = self.item_text(stream, group, item).await?;
        self.parse_opt(stream, group, item, text)
    }

    async fn set(
        &self,
        stream: &str,
        group: &str,
        item: &str,
        data: Json,
    ) -> anyhow::Result<Stored<Option<Json>>> {
        let (_writing, order) = self.writing(stream, group, item).await;
        let mut conn = self.node.conn.clone();
        let mut call = scripts::SET.key(self.keys.group_key(stream, group));
        call.key(self.keys.order_key(stream, group))
            .arg(item)
            .arg(data.get());
        let old: Option<String> = self
            .run("the set script", call.invoke_async(&mut conn))
            .await?;
        let value = self.parse_opt(stream, group, item, old)?;
        Ok(Stored { value, order })
    }

    async fn delete(
        &self,
        stream: &str,
        group: &str,
        item: &str,
    ) -> anyhow::Result<Stored<Option<Json>>> {
        let (_writing, order) = self.writing(stream, group, item).await;
        let mut conn = self.node.conn.clone();
        let mut call = scripts::DELETE.key(self.keys.group_key(stream, group));
        call.key(self.keys.order_key(stream, group)).arg(item);
        let old: Option<String> = self
            .run("the delete script", call.invoke_async(&mut conn))
            .await?;
        let value = self.parse_opt(stream, group, item, old)?;
        Ok(Stored { value, order })
    }

    async fn list(&self, stream: &str, group: &str) -> anyhow::Result<Vec<Json>> {
        let entries = self.entries(stream, group).await?;
        entries
            .iter()
            .map(|(id, text)| self.parse(stream, group, id, text))
            .collect()
    }

    async fn list_ids(&self, stream: &str, group: &str) -> anyhow::Result<Vec<String>> {
        Ok(self
            .entries(stream, group)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    async fn list_groups(&self, stream: &str) -> anyhow::Result<Vec<String>> {
        let found = self.scan_groups(&self.keys.stream_prefix(stream)).await?;
        let mut groups: Vec<String> = found
            .iter()
            .filter_map(|rest| self.keys.group_of(rest))
            .collect();
        groups.sort();
        groups.dedup();
        Ok(groups)
    }

    async fn list_all(&self) -> anyhow::Result<Vec<(String, Vec<String>)>> {
        let mut all: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for rest in self.scan_groups(&self.keys.groups_prefix()).await? {
            // The default tenant's `stream:{stream}:{group}` is ambiguous when a stream name has
            // a `:` in it, as in iii; other tenants' keys are not (see `keys`).
            if let Some((stream, group)) = self.keys.split(&rest) {
                all.entry(stream).or_default().push(group);
            }
        }
        Ok(all
            .into_iter()
            .map(|(s, mut g)| {
                g.sort();
                g.dedup();
                (s, g)
            })
            .collect())
    }

    async fn update(
        &self,
        stream: &str,
        group: &str,
        item: &str,
        ops: &UpdateOps,
    ) -> anyhow::Result<Stored<UpdateOutcome>> {
        let (_writing, order) = self.writing(stream, group, item).await;
        let mut conn = self.node.conn.clone();
        let mut current = self.item_text(stream, group, item).await?;
        for _ in 0..UPDATE_ATTEMPTS {
            let old_value = self.parse_opt(stream, group, item, current.clone())?;
            // A result past the limits is refused before it reaches Redis.
            let (new_value, errors) = update_ops::apply_to_text(old_value.as_ref(), ops)?;
            let mut call = scripts::COMPARE_AND_SET.key(self.keys.group_key(stream, group));
            call.key(self.keys.order_key(stream, group))
                .arg(item)
                .arg(if current.is_some() { "1" } else { "0" })
                .arg(current.as_deref().unwrap_or(""))
                .arg(new_value.get());
            let (written, exists, now): (i64, i64, String) = self
                .run("the update script", call.invoke_async(&mut conn))
                .await?;
            if written == 1 {
                return Ok(Stored {
                    value: UpdateOutcome {
                        old_value,
                        new_value,
                        errors,
                    },
                    order,
                });
            }
            // Another writer got in between: apply the ops again to what is there now.
            current = (exists == 1).then_some(now);
        }
        anyhow::bail!(
            "stream::update of {stream}/{group}/{item} lost {UPDATE_ATTEMPTS} races in a row to other writers of the same item; try again"
        )
    }

    async fn shutdown(&self) -> anyhow::Result<()> {
        self.bus.stop();
        Ok(())
    }

    fn event_bus(&self) -> Option<Arc<dyn EventBus>> {
        Some(self.bus.clone())
    }

    fn telemetry(&self) -> Telemetry {
        Telemetry {
            dropped_publications: Some(self.dropped_publications()),
            ..Telemetry::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_patterns_match_names_literally() {
        assert_eq!(
            glob_escape("stream:a*b?[c]\\:"),
            "stream:a\\*b\\?\\[c\\]\\\\:"
        );
    }
}
