//! Presence rosters shared by every node through Redis, so that each group has one member list
//! whichever node its clients are on.
//!
//! Per group (see `keys`): a hash of members by `client`, a sorted set of `client`s in join
//! order, and a meta hash holding the roster's `ver`sion, a join count (`seq`) and the `max`
//! listed. Every join and leave is one script that changes the roster, adds one to `ver`, works
//! out what to announce (only the first `max` members are listed; a listed member's leave lets
//! the next one in) and publishes it on the tenant's presence channel, apart from the events so
//! that iii nodes never hear it. Every node, the one that made the change included, applies the
//! changes it hears in `ver` order to its mirror of the roster (`fanout::mirror`).
//!
//! A node's calls go through one queue, in order, so a socket's leave never overtakes its join.
//! A leave that fails (Redis away) is retried until it is made: a leave is never lost.
//!
//! Nodes die without leaving. Each node with members keeps a score in the tenant's node set
//! (`presence-nodes`), renewed three times per `ttl`, and a set of its members' entries. Every
//! renewal also removes the members of nodes whose score has passed (announcing their leaves,
//! a bounded batch per run). A node that finds itself gone from the node set (it was cut off
//! from Redis for longer than the ttl, or Redis lost its data) joins its members again.

use super::keys::KeySpace;
use super::subscriber::Local;
use super::target::RedisTarget;
use crate::fanout::presence::{Announced, PresenceChange, SharedRoster};
use crate::storage::{BusMessage, SharedPresence};
use async_trait::async_trait;
use redis::Script;
use redis::aio::ConnectionManager;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// The `type` of a roster change on the presence channel.
pub const CHANGE: &str = "streamhost_presence";
/// How long a node's members outlive it unless configured (`presence_ttl_ms`).
pub const DEFAULT_PRESENCE_TTL: Duration = Duration::from_secs(15);
/// Members of dead nodes removed per node and renewal, so that one script stays short.
const SWEEP_BATCH: usize = 500;
/// How long a join waits for its turn and its script before it is refused.
const JOIN_WAIT: Duration = Duration::from_secs(10);
/// A roster's meta hash outlives its last member this long (ms): its version must not restart
/// while a node may still mirror it.
const META_TTL_MS: u64 = 3_600_000;

/// What every script shares: the time, and the change announced for a leave.
const COMMON: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function change(action, client, member)
  return '{"action":"' .. action .. '","client":' .. cjson.encode(client) .. ',"member":' .. member .. '}'
end
local function announce(chan, stream, group, ver, count, changes)
  redis.call('PUBLISH', chan, '{"type":"streamhost_presence","stream":' .. cjson.encode(stream)
    .. ',"group":' .. cjson.encode(group) .. ',"version":' .. ver .. ',"count":' .. count
    .. ',"changes":[' .. table.concat(changes, ',') .. ']}')
end
local function leave(roster, order, meta, chan, stream, group, client, max, meta_ttl)
  local rank = redis.call('ZRANK', order, client)
  if not rank then return false end
  local member = redis.call('HGET', roster, client) or 'null'
  redis.call('ZREM', order, client)
  redis.call('HDEL', roster, client)
  local ver = redis.call('HINCRBY', meta, 'ver', 1)
  local count = redis.call('ZCARD', order)
  local changes = {}
  if rank < max then
    changes[1] = change('leave', client, member)
    if count >= max then
      local nxt = redis.call('ZRANGE', order, max - 1, max - 1)[1]
      changes[2] = change('join', nxt, redis.call('HGET', roster, nxt))
    end
  end
  if count == 0 then redis.call('PEXPIRE', meta, meta_ttl) end
  announce(chan, stream, group, ver, count, changes)
  return ver
end
"#;

/// KEYS: roster, order, meta, nodes, node's set. ARGV: channel, stream, group, client, member
/// JSON, max, entry, node, ttl ms. Returns the roster's version after the join.
static JOIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{COMMON}
local max = tonumber(ARGV[6])
redis.call('ZADD', KEYS[4], now_ms() + tonumber(ARGV[9]), ARGV[8])
redis.call('SADD', KEYS[5], ARGV[7])
if redis.call('HEXISTS', KEYS[1], ARGV[4]) == 1 then
  return tonumber(redis.call('HGET', KEYS[3], 'ver') or '0')
end
local seq = redis.call('HINCRBY', KEYS[3], 'seq', 1)
redis.call('HSET', KEYS[3], 'max', max)
redis.call('PERSIST', KEYS[3])
redis.call('HSET', KEYS[1], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[2], seq, ARGV[4])
local ver = redis.call('HINCRBY', KEYS[3], 'ver', 1)
local count = redis.call('ZCARD', KEYS[2])
local changes = {{}}
if count <= max then changes[1] = change('join', ARGV[4], ARGV[5]) end
announce(ARGV[1], ARGV[2], ARGV[3], ver, count, changes)
return ver
"
    ))
});

/// KEYS: roster, order, meta, node's set. ARGV: channel, stream, group, client, max, entry,
/// meta ttl. Returns the version after the leave, 0 when it was no member.
static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{COMMON}
redis.call('SREM', KEYS[4], ARGV[6])
return leave(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[7])) or 0
"
    ))
});

/// KEYS: roster, order, meta. ARGV: max. Returns {version, count, client, member, ...} for the
/// first `max` members in join order, read together.
static ROSTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local out = {tonumber(redis.call('HGET', KEYS[3], 'ver') or '0'), redis.call('ZCARD', KEYS[2])}
for _, c in ipairs(redis.call('ZRANGE', KEYS[2], 0, tonumber(ARGV[1]) - 1)) do
  out[#out + 1] = c
  out[#out + 1] = redis.call('HGET', KEYS[1], c) or 'null'
end
return out
",
    )
});

/// KEYS: nodes. ARGV: node, ttl ms, node set prefix, channel, batch, meta ttl. Renews the node,
/// removes a batch of each dead node's members. Returns {1 if the node was still in the set,
/// members removed}.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{COMMON}
local now = now_ms()
local present = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local removed = 0
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 16)) do
  local set = ARGV[3] .. node
  for _, entry in ipairs(redis.call('SPOP', set, tonumber(ARGV[5]))) do
    local e = cjson.decode(entry)
    local max = tonumber(redis.call('HGET', e[3], 'max') or '1000')
    if leave(e[1], e[2], e[3], ARGV[4], e[4], e[5], e[6], max, tonumber(ARGV[6])) then
      removed = removed + 1
    end
  end
  if redis.call('SCARD', set) == 0 then redis.call('ZREM', KEYS[1], node) end
end
if present then return {{1, removed}} end
return {{0, removed}}
"
    ))
});

/// A member of this node: (stream, group, client).
type Key = (String, String, String);

#[derive(Clone)]
struct Member {
    seq: u64,
    member: Arc<str>,
    max: usize,
}

enum Op {
    /// `reply` is None for a join made again after the node was found gone.
    Join {
        key: Key,
        member: Arc<str>,
        max: usize,
        reply: Option<oneshot::Sender<anyhow::Result<u64>>>,
    },
    Leave {
        key: Key,
        max: usize,
    },
    /// Tells the tenant's hub that its rosters lost changes.
    Lost,
}

/// One tenant's rosters on this node.
pub struct RedisPresence {
    node: String,
    channel: String,
    ops: mpsc::UnboundedSender<Op>,
    state: Arc<State>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// What the queue's task and the renewal task share with the handle.
struct State {
    target: Arc<RedisTarget>,
    conn: ConnectionManager,
    keys: KeySpace,
    node: String,
    channel: String,
    ttl_ms: Arc<AtomicU64>,
    /// This node's members, with what joins them again if the node was found gone: a count
    /// that keeps their join order, the member, and `max`.
    members: Mutex<HashMap<Key, Member>>,
    joins: AtomicU64,
    /// Where this tenant's bus hears; told when the rosters lost changes.
    hearing: OnceLock<Local>,
    /// Set at the first use: a tenant that never keeps presence renews nothing.
    used: AtomicBool,
    /// Ops queued and not yet done (see `flush`).
    pending: watch::Sender<u64>,
}

impl RedisPresence {
    pub fn start(
        target: Arc<RedisTarget>,
        conn: ConnectionManager,
        keys: KeySpace,
        ttl_ms: Arc<AtomicU64>,
    ) -> Arc<RedisPresence> {
        let node = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let channel = keys.presence_channel();
        let state = Arc::new(State {
            target,
            conn,
            keys,
            node: node.clone(),
            channel: channel.clone(),
            ttl_ms,
            members: Mutex::default(),
            joins: AtomicU64::new(0),
            hearing: OnceLock::new(),
            used: AtomicBool::new(false),
            pending: watch::Sender::new(0),
        });
        let (ops, queued) = mpsc::unbounded_channel();
        let tasks = vec![
            tokio::spawn(run_queue(state.clone(), queued)),
            tokio::spawn(renew_loop(state.clone(), ops.clone())),
        ];
        Arc::new(RedisPresence {
            node,
            channel,
            ops,
            state,
            tasks: Mutex::new(tasks),
        })
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Where to tell this tenant that its rosters lost changes (see `renew_loop`).
    pub fn tell(&self, hearing: Local) {
        let _ = self.state.hearing.set(hearing);
    }

    /// Stops the queue and the renewal: this node's members stay until their ttl passes.
    pub fn stop(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Drop for RedisPresence {
    fn drop(&mut self) {
        self.stop();
    }
}

#[async_trait]
impl SharedPresence for RedisPresence {
    fn node(&self) -> &str {
        &self.node
    }

    async fn join(
        &self,
        stream: &str,
        group: &str,
        client: &str,
        member: Arc<str>,
        max: usize,
    ) -> anyhow::Result<u64> {
        self.state.used.store(true, Ordering::Relaxed);
        let key = (stream.to_owned(), group.to_owned(), client.to_owned());
        let seq = self.state.joins.fetch_add(1, Ordering::Relaxed);
        let entry = Member {
            seq,
            member: member.clone(),
            max,
        };
        self.state
            .members
            .lock()
            .unwrap()
            .insert(key.clone(), entry);
        let (reply, answer) = oneshot::channel();
        let op = Op::Join {
            key,
            member,
            max,
            reply: Some(reply),
        };
        anyhow::ensure!(
            self.state.send(&self.ops, op),
            "the presence queue has stopped"
        );
        match tokio::time::timeout(JOIN_WAIT, answer).await {
            Ok(Ok(joined)) => joined,
            Ok(Err(_)) => anyhow::bail!("the presence queue has stopped"),
            Err(_) => anyhow::bail!(
                "Redis at {} did not take the join within {JOIN_WAIT:?}",
                self.state.target.url
            ),
        }
    }

    fn leave(&self, stream: &str, group: &str, client: &str, max: usize) {
        let key = (stream.to_owned(), group.to_owned(), client.to_owned());
        self.state.members.lock().unwrap().remove(&key);
        self.state.send(&self.ops, Op::Leave { key, max });
    }

    async fn roster(&self, stream: &str, group: &str, max: usize) -> anyhow::Result<SharedRoster> {
        self.state.used.store(true, Ordering::Relaxed);
        let keys = &self.state.keys;
        let mut call = ROSTER.key(keys.roster_key(stream, group));
        call.key(keys.roster_order_key(stream, group))
            .key(keys.roster_meta_key(stream, group))
            .arg(max);
        let mut conn = self.state.conn.clone();
        let reply: Vec<redis::Value> = self
            .state
            .target
            .run("the presence roster script", call.invoke_async(&mut conn))
            .await?;
        let mut reply = reply.into_iter();
        let mut next = || reply.next().unwrap_or(redis::Value::Nil);
        let version: u64 = redis::from_redis_value(next())?;
        let count: usize = redis::from_redis_value(next())?;
        let mut listed = Vec::new();
        loop {
            let client = next();
            if client == redis::Value::Nil {
                break;
            }
            let client: String = redis::from_redis_value(client)?;
            let member: String = redis::from_redis_value(next())?;
            listed.push((client, member.into()));
        }
        Ok(SharedRoster {
            version,
            count,
            listed,
        })
    }

    async fn flush(&self, within: Duration) {
        let mut pending = self.state.pending.subscribe();
        let done = tokio::time::timeout(within, pending.wait_for(|n| *n == 0)).await;
        if done.is_err() {
            let left = *self.state.pending.borrow();
            tracing::warn!(channel = %self.channel, left, "presence joins and leaves still queued at shutdown; other nodes remove this node's members after its ttl");
        }
    }
}

impl State {
    /// Queues an op, counted until it is done.
    fn send(&self, ops: &mpsc::UnboundedSender<Op>, op: Op) -> bool {
        self.pending.send_modify(|n| *n += 1);
        let sent = ops.send(op).is_ok();
        if !sent {
            self.pending.send_modify(|n| *n -= 1);
        }
        sent
    }
    /// A member's entry in its node's set: what a node that finds this one dead needs to
    /// remove it.
    fn entry(&self, (stream, group, client): &Key) -> String {
        let keys = &self.keys;
        serde_json::json!([
            keys.roster_key(stream, group),
            keys.roster_order_key(stream, group),
            keys.roster_meta_key(stream, group),
            stream,
            group,
            client
        ])
        .to_string()
    }

    fn node_set(&self) -> String {
        format!("{}{}", self.keys.presence_node_prefix(), self.node)
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl_ms.load(Ordering::Relaxed)
    }

    async fn join(&self, key: &Key, member: &str, max: usize) -> anyhow::Result<u64> {
        let (stream, group, client) = key;
        let keys = &self.keys;
        let mut call = JOIN.key(keys.roster_key(stream, group));
        call.key(keys.roster_order_key(stream, group))
            .key(keys.roster_meta_key(stream, group))
            .key(keys.presence_nodes_key())
            .key(self.node_set())
            .arg(&self.channel)
            .arg(stream)
            .arg(group)
            .arg(client)
            .arg(member)
            .arg(max)
            .arg(self.entry(key))
            .arg(&self.node)
            .arg(self.ttl_ms());
        let mut conn = self.conn.clone();
        self.target
            .run("the presence join script", call.invoke_async(&mut conn))
            .await
    }

    async fn leave(&self, key: &Key, max: usize) -> anyhow::Result<u64> {
        let (stream, group, client) = key;
        let keys = &self.keys;
        let mut call = LEAVE.key(keys.roster_key(stream, group));
        call.key(keys.roster_order_key(stream, group))
            .key(keys.roster_meta_key(stream, group))
            .key(self.node_set())
            .arg(&self.channel)
            .arg(stream)
            .arg(group)
            .arg(client)
            .arg(max)
            .arg(self.entry(key))
            .arg(META_TTL_MS);
        let mut conn = self.conn.clone();
        self.target
            .run("the presence leave script", call.invoke_async(&mut conn))
            .await
    }

    /// Renews this node and removes a batch of dead nodes' members; true when this node was
    /// still known.
    async fn renew(&self) -> anyhow::Result<bool> {
        let mut call = RENEW.key(self.keys.presence_nodes_key());
        call.arg(&self.node)
            .arg(self.ttl_ms())
            .arg(self.keys.presence_node_prefix())
            .arg(&self.channel)
            .arg(SWEEP_BATCH)
            .arg(META_TTL_MS);
        let mut conn = self.conn.clone();
        let (known, removed): (u8, u64) = self
            .target
            .run("the presence renewal script", call.invoke_async(&mut conn))
            .await?;
        if removed > 0 {
            tracing::info!(channel = %self.channel, removed, "removed the presence members of engine nodes that stopped renewing them");
        }
        Ok(known == 1)
    }
}

/// Makes the queued joins and leaves in order. A failed join is refused to its caller; a
/// failed leave is tried again, with backoff, until Redis takes it.
async fn run_queue(state: Arc<State>, mut ops: mpsc::UnboundedReceiver<Op>) {
    while let Some(op) = ops.recv().await {
        run_op(&state, op).await;
        state.pending.send_modify(|n| *n -= 1);
    }
}

async fn run_op(state: &State, op: Op) {
    match op {
        Op::Join {
            key,
            member,
            max,
            reply: Some(reply),
        } => {
            let _ = reply.send(state.join(&key, &member, max).await);
        }
        // A join made again is retried like a leave, until it is made or the member has left.
        Op::Join {
            key,
            member,
            max,
            reply: None,
        } => {
            let still_here = || state.members.lock().unwrap().contains_key(&key);
            let mut wait = Backoff::default();
            while still_here() {
                match state.join(&key, &member, max).await {
                    Ok(_) => return,
                    Err(e) => wait.after(&key, "join a presence member again", e).await,
                }
            }
        }
        Op::Leave { key, max } => {
            let mut wait = Backoff::default();
            while let Err(e) = state.leave(&key, max).await {
                wait.after(&key, "remove a presence member", e).await;
            }
        }
        Op::Lost => {
            if let Some(hearing) = state.hearing.get() {
                hearing.deliver(BusMessage::RostersLost);
            }
        }
    }
}

/// Waits between the tries of an op Redis did not take: 50 ms, doubling up to 5 s.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Duration::from_millis(50))
    }
}

impl Backoff {
    async fn after(&mut self, (stream, group, _): &Key, what: &str, e: anyhow::Error) {
        tracing::warn!(stream, group, error = %format!("{e:#}"), "cannot {what} yet; retrying");
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }
}

/// Renews this node three times per ttl once presence is used; when the node was found gone,
/// joins its members again.
async fn renew_loop(state: Arc<State>, ops: mpsc::UnboundedSender<Op>) {
    loop {
        let every = Duration::from_millis((state.ttl_ms() / 3).max(10));
        tokio::time::sleep(every).await;
        if !state.used.load(Ordering::Relaxed) {
            continue;
        }
        match state.renew().await {
            Ok(true) => {}
            Ok(false) => {
                let mut members: Vec<(Key, Member)> = state
                    .members
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if members.is_empty() {
                    continue;
                }
                tracing::warn!(channel = %state.channel, members = members.len(), "this node's presence members were removed from Redis (cut off past the ttl, or Redis lost its data); joining them again");
                members.sort_by_key(|(_, m)| m.seq);
                for (key, m) in members {
                    let op = Op::Join {
                        key,
                        member: m.member,
                        max: m.max,
                        reply: None,
                    };
                    state.send(&ops, op);
                }
                // The mirrors hold versions Redis no longer has: they load again, once the
                // members are back.
                state.send(&ops, Op::Lost);
            }
            Err(e) => {
                tracing::warn!(channel = %state.channel, error = %format!("{e:#}"), "cannot renew this node's presence members; others remove them if this lasts past the ttl");
            }
        }
    }
}

/// A roster change heard on the presence channel.
pub fn decode(message: &Value) -> Option<PresenceChange> {
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let changes = message.get("changes")?.as_array()?;
    let mut announced = Vec::with_capacity(changes.len());
    for c in changes {
        let action = match c.get("action")?.as_str()? {
            "join" => "join",
            "leave" => "leave",
            _ => return None,
        };
        announced.push(Announced {
            action,
            client: text(c.get("client")?)?,
            member: c.get("member")?.to_string().into(),
        });
    }
    Some(PresenceChange {
        stream: text(message.get("stream")?)?,
        group: text(message.get("group")?)?,
        version: message.get("version")?.as_u64()?,
        count: usize::try_from(message.get("count")?.as_u64()?).ok()?,
        changes: announced,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_change_decodes_with_its_members_as_sent() {
        let message = json!({"type": CHANGE, "stream": "chat", "group": "r:1", "version": 7,
            "count": 2, "changes": [
                {"action": "leave", "client": "a.1", "member": {"client": "a.1", "user": null, "info": null}},
                {"action": "join", "client": "b.2", "member": {"client": "b.2", "user": "ann", "info": {"x": [1]}}}]});
        let change = decode(&message).unwrap();
        assert_eq!((change.version, change.count), (7, 2));
        assert_eq!(change.group, "r:1");
        assert_eq!(change.changes[1].action, "join");
        assert_eq!(
            &*change.changes[1].member,
            r#"{"client":"b.2","user":"ann","info":{"x":[1]}}"#
        );
        let mut bad = message.clone();
        bad["changes"][0]["action"] = json!("wave");
        assert!(decode(&bad).is_none());
        assert!(decode(&json!({"type": CHANGE})).is_none());
    }
}
