//! The Redis adapter: items shared by every engine node, in the layout iii uses (spec §9).
//!
//! Commands go over one multiplexed `ConnectionManager` (concurrent calls are pipelined on
//! one socket and it reconnects by itself); pub/sub between nodes has its own connection
//! (see `bus`). set, delete and update are Lua scripts or compare-and-set loops, so each is
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
//! Groups are found with SCAN (never KEYS) over `stream:{stream}:*`, so groups written by iii
//! nodes are listed too. SCAN walks the keyspace in steps of `SCAN_COUNT` keys without
//! blocking Redis; its cost grows with the size of the keyspace.

mod bus;
mod scripts;

pub use bus::{CHANNEL, RedisBus};

use super::{EventBus, Stored, StreamAdapter, UpdateOutcome};
use crate::fanout::item_lock::{ItemLock, ItemLocks};
use crate::fanout::order::{Order, Turns};
use crate::storage::update_ops::{self, UpdateOps};
use anyhow::{Context, anyhow};
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// The longest a call waits for Redis before failing.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest one connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Keys examined per SCAN step.
const SCAN_COUNT: usize = 1000;
/// Compare-and-set rounds an update may lose to other writers before it gives up.
const UPDATE_ATTEMPTS: usize = 200;

/// Where Redis is, and how to word errors about it.
pub struct RedisTarget {
    pub client: redis::Client,
    /// The URL with any password hidden, for logs and errors.
    pub url: String,
}

impl RedisTarget {
    /// Runs a Redis call with the command timeout, turning failures into errors that say what
    /// was unreachable.
    pub async fn run<T>(
        &self,
        what: &str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> anyhow::Result<T> {
        match tokio::time::timeout(COMMAND_TIMEOUT, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.to_string().contains("certificate") => Err(anyhow!(
                "redis at {}: the TLS handshake failed: {e} ({what} was not done; trust the server's CA by pointing SSL_CERT_FILE at it, or fix the certificate)",
                self.url
            )),
            Ok(Err(e))
                if e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_refusal()
                    || e.is_connection_dropped()
                    || e.is_unrecoverable_error() =>
            {
                Err(anyhow!(
                    "redis at {} is unreachable: {e} ({what} was not done or not confirmed; streamhost reconnects by itself once Redis is back)",
                    self.url
                ))
            }
            Ok(Err(e)) => Err(anyhow!("redis at {} refused {what}: {e}", self.url)),
            Err(_) => Err(anyhow!(
                "redis at {} is unreachable: no answer to {what} within {:?} (streamhost reconnects by itself once Redis is back)",
                self.url,
                COMMAND_TIMEOUT
            )),
        }
    }
}

pub struct RedisAdapter {
    target: Arc<RedisTarget>,
    conn: ConnectionManager,
    bus: Arc<RedisBus>,
    locks: ItemLocks,
    turns: Turns,
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
        let mut conn = self.conn.clone();
        self.run(
            "HGET",
            redis::cmd("HGET")
                .arg(group_key(stream, group))
                .arg(item)
                .query_async(&mut conn),
        )
        .await
    }

    /// A group's (item id, JSON text) pairs in insertion order.
    async fn entries(&self, stream: &str, group: &str) -> anyhow::Result<Vec<(String, String)>> {
        let mut conn = self.conn.clone();
        let mut call = scripts::LIST.key(group_key(stream, group));
        call.key(order_key(stream, group));
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
        let node = uuid::Uuid::new_v4().to_string();
        let bus = Arc::new(RedisBus::start(target.clone(), conn.clone(), node));
        Ok(RedisAdapter {
            target,
            conn,
            bus,
            locks: ItemLocks::default(),
            turns: Turns::default(),
        })
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
        self.target.run(what, call).await
    }

    /// Scans `stream:{stream}:*` (or `stream:*`), returning each matching key without the prefix.
    async fn scan_groups(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let pattern = format!("{}*", glob_escape(prefix));
        let mut conn = self.conn.clone();
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
}

/// The hash holding a group's items, as iii names it.
pub fn group_key(stream: &str, group: &str) -> String {
    format!("stream:{stream}:{group}")
}

/// The sorted set holding a group's insertion order; outside `stream:` so iii never lists it.
pub fn order_key(stream: &str, group: &str) -> String {
    format!("streamhost:order:{stream}:{group}")
}

fn parse(stream: &str, group: &str, item: &str, text: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text).with_context(|| {
        format!(
            "the value of {stream}/{group}/{item} in Redis (hash {}) is not JSON",
            group_key(stream, group)
        )
    })
}

fn parse_opt(
    stream: &str,
    group: &str,
    item: &str,
    text: Option<String>,
) -> anyhow::Result<Option<Value>> {
    text.map(|t| parse(stream, group, item, &t)).transpose()
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

/// The URL with its password replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let user = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None if userinfo.is_empty() => String::new(),
        None => "***".to_owned(),
    };
    format!("{scheme}://{user}@{}", &rest[at + 1..])
}

#[async_trait]
impl StreamAdapter for RedisAdapter {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn get(&self, stream: &str, group: &str, item: &str) -> anyhow::Result<Option<Value>> {
        let text = self.item_text(stream, group, item).await?;
        parse_opt(stream, group, item, text)
    }

    async fn set(
        &self,
        stream: &str,
        group: &str,
        item: &str,
        data: Value,
    ) -> anyhow::Result<Stored<Option<Value>>> {
        let (_writing, order) = self.writing(stream, group, item).await;
        let mut conn = self.conn.clone();
        let mut call = scripts::SET.key(group_key(stream, group));
        call.key(order_key(stream, group))
            .arg(item)
            .arg(data.to_string());
        let old: Option<String> = self
            .run("the set script", call.invoke_async(&mut conn))
            .await?;
        let value = parse_opt(stream, group, item, old)?;
        Ok(Stored { value, order })
    }

    async fn delete(
        &self,
        stream: &str,
        group: &str,
        item: &str,
    ) -> anyhow::Result<Stored<Option<Value>>> {
        let (_writing, order) = self.writing(stream, group, item).await;
        let mut conn = self.conn.clone();
        let mut call = scripts::DELETE.key(group_key(stream, group));
        call.key(order_key(stream, group)).arg(item);
        let old: Option<String> = self
            .run("the delete script", call.invoke_async(&mut conn))
            .await?;
        let value = parse_opt(stream, group, item, old)?;
        Ok(Stored { value, order })
    }

    async fn list(&self, stream: &str, group: &str) -> anyhow::Result<Vec<Value>> {
        let entries = self.entries(stream, group).await?;
        entries
            .iter()
            .map(|(id, text)| parse(stream, group, id, text))
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
        let mut groups = self.scan_groups(&format!("stream:{stream}:")).await?;
        groups.sort();
        groups.dedup();
        Ok(groups)
    }

    async fn list_all(&self) -> anyhow::Result<Vec<(String, Vec<String>)>> {
        let mut all: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for rest in self.scan_groups("stream:").await? {
            // `stream:{stream}:{group}`: a stream name with `:` in it is ambiguous, as in iii.
            if let Some((stream, group)) = rest.split_once(':') {
                all.entry(stream.to_owned())
                    .or_default()
                    .push(group.to_owned());
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
        let mut conn = self.conn.clone();
        let mut current = self.item_text(stream, group, item).await?;
        for _ in 0..UPDATE_ATTEMPTS {
            let old_value = parse_opt(stream, group, item, current.clone())?;
            // A result past the limits is refused before it reaches Redis.
            let (new_value, errors) = update_ops::apply(old_value.as_ref(), ops)?;
            let mut call = scripts::COMPARE_AND_SET.key(group_key(stream, group));
            call.key(order_key(stream, group))
                .arg(item)
                .arg(if current.is_some() { "1" } else { "0" })
                .arg(current.as_deref().unwrap_or(""))
                .arg(new_value.to_string());
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redact("redis://:secret@host:6379/1"),
            "redis://:***@host:6379/1"
        );
        assert_eq!(redact("rediss://ann:secret@host"), "rediss://ann:***@host");
        assert_eq!(redact("redis://token@host"), "redis://***@host");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn scan_patterns_match_names_literally() {
        assert_eq!(
            glob_escape("stream:a*b?[c]\\:"),
            "stream:a\\*b\\?\\[c\\]\\\\:"
        );
    }
}
