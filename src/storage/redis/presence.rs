//! Presence rosters shared by every node through Redis, so that each group has one member list
//! whichever node its clients are on.
//!
//! Every join and leave is one script (`roster_scripts`) that changes the group's roster, adds
//! one to its `ver`sion, works out what to announce (only the first `max` members are listed;
//! a listed member's leave lets the next one in) and publishes it on the tenant's presence
//! channel, apart from the events so that iii nodes never hear it. Every node applies the
//! changes it hears in version order to its mirror of the roster (`fanout::mirror`); the node
//! that joins applies its own change as soon as the script returns it.
//!
//! A node's calls go through one queue, in order, so a socket's leave never overtakes its join.
//! A leave that Redis could not take (unreachable, slow) is retried until it is made; one that
//! Redis refused (a script error) is logged and dropped, so it cannot block the queue.
//!
//! Nodes die without leaving. Each node with members keeps a score in the tenant's node set,
//! renewed three times per `ttl`, and a set of its members' entries; every renewal also removes
//! the members of nodes whose score has passed, announcing their leaves. A node that finds
//! itself gone from the node set, at a renewal or a join (it was cut off from Redis past the
//! ttl, or Redis lost its data), joins its members again and has its mirrors loaded anew.

use super::keys::KeySpace;
use super::roster_scripts::{JOIN, LEAVE, RENEW, ROSTER};
use super::subscriber::Local;
use super::target::{Failed, RedisTarget};
use crate::fanout::presence::{Announced, JoinedRoster, PresenceChange, SharedRoster};
use crate::storage::{BusMessage, SharedPresence};
use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{Script, ScriptInvocation};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// The `type` of a roster change on the presence channel.
pub const CHANGE: &str = "streamhost_presence";
/// How long a node's members outlive it unless configured (`presence_ttl_ms`).
pub const DEFAULT_PRESENCE_TTL: Duration = Duration::from_secs(15);
/// Joins and leaves sent to Redis in one pipeline.
const BATCH: usize = 256;
/// Members of dead nodes removed per node and renewal, so that one script stays short.
const SWEEP_BATCH: usize = 500;
/// How long a join waits for its turn and its script before it is refused.
const JOIN_WAIT: Duration = Duration::from_secs(10);
/// A roster's meta hash outlives its last member this long (ms): its version must not restart
/// while a node may still mirror it.
const META_TTL_MS: u64 = 3_600_000;

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
        reply: Option<oneshot::Sender<anyhow::Result<JoinedRoster>>>,
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
    /// Set once this node is in the node set: not finding it there later means it was
    /// removed (as dead, or with Redis's data).
    registered: AtomicBool,
    ops: mpsc::UnboundedSender<Op>,
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
        let (ops, queued) = mpsc::unbounded_channel();
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
            registered: AtomicBool::new(false),
            ops,
        });
        let tasks = vec![
            tokio::spawn(run_queue(state.clone(), queued)),
            tokio::spawn(renew_loop(state.clone())),
        ];
        Arc::new(RedisPresence {
            node,
            channel,
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
    ) -> anyhow::Result<JoinedRoster> {
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
        anyhow::ensure!(self.state.send(op), "the presence queue has stopped");
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
        self.state.send(Op::Leave { key, max });
    }

    async fn roster(&self, stream: &str, group: &str, max: usize) -> anyhow::Result<SharedRoster> {
        self.state.used.store(true, Ordering::Relaxed);
        let mut call = self.state.on_roster(&ROSTER, stream, group);
        call.arg(max);
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
    fn send(&self, op: Op) -> bool {
        self.pending.send_modify(|n| *n += 1);
        let sent = self.ops.send(op).is_ok();
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

    /// `script` with a group's roster keys (roster, order, meta) as its first three KEYS.
    fn on_roster(
        &self,
        script: &'static Script,
        stream: &str,
        group: &str,
    ) -> ScriptInvocation<'static> {
        let keys = &self.keys;
        let mut call = script.key(keys.roster_key(stream, group));
        call.key(keys.roster_order_key(stream, group))
            .key(keys.roster_meta_key(stream, group));
        call
    }

    fn join_call(&self, key: &Key, member: &str, max: usize) -> ScriptInvocation<'static> {
        let (stream, group, client) = key;
        let keys = &self.keys;
        let mut call = self.on_roster(&JOIN, stream, group);
        call.key(keys.presence_nodes_key())
            .key(self.node_set())
            .key(keys.presence_drains_key())
            .arg(&self.channel)
            .arg(stream)
            .arg(group)
            .arg(client)
            .arg(member)
            .arg(max)
            .arg(self.entry(key))
            .arg(&self.node)
            .arg(self.ttl_ms())
            .arg(self.own_drain());
        call
    }

    /// What a join's script returned.
    fn joined(&self, reply: redis::Value) -> anyhow::Result<JoinedRoster> {
        let (version, known, change): (u64, u8, String) = redis::from_redis_value(reply)?;
        let lost = self.found(known == 1);
        let change = serde_json::from_str(&change).ok().and_then(|m| decode(&m));
        Ok(JoinedRoster {
            version,
            change,
            lost,
        })
    }

    fn leave_call(&self, key: &Key, max: usize) -> ScriptInvocation<'static> {
        let (stream, group, client) = key;
        let mut call = self.on_roster(&LEAVE, stream, group);
        call.key(self.node_set())
            .arg(&self.channel)
            .arg(stream)
            .arg(group)
            .arg(client)
            .arg(max)
            .arg(self.entry(key))
            .arg(META_TTL_MS);
        call
    }

    /// Renews this node and removes a batch of dead nodes' members.
    async fn renew(&self) -> anyhow::Result<()> {
        let mut call = RENEW.key(self.keys.presence_nodes_key());
        call.key(self.keys.presence_drains_key())
            .arg(&self.node)
            .arg(self.ttl_ms())
            .arg(self.keys.presence_node_prefix())
            .arg(&self.channel)
            .arg(SWEEP_BATCH)
            .arg(META_TTL_MS)
            .arg(self.keys.presence_drain_prefix());
        let mut conn = self.conn.clone();
        let (known, removed): (u8, u64) = self
            .target
            .run("the presence renewal script", call.invoke_async(&mut conn))
            .await?;
        if removed > 0 {
            tracing::info!(channel = %self.channel, removed, "removed the presence members of engine nodes that stopped renewing them");
        }
        if self.found(known == 1) {
            self.send(Op::Lost);
        }
        Ok(())
    }

    fn own_drain(&self) -> String {
        format!("{}{}", self.keys.presence_drain_prefix(), self.node)
    }

    /// Takes what a script found of this node: once registered, a node missing from the node
    /// set was removed (as dead, or with Redis's data), so its members join again, in their
    /// join order. True then: the hub's mirrors must load anew.
    fn found(&self, known: bool) -> bool {
        let was_registered = self.registered.swap(true, Ordering::AcqRel);
        if known || !was_registered {
            return false;
        }
        let mut members: Vec<(Key, Member)> = self
            .members
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        tracing::warn!(channel = %self.channel, members = members.len(), "this node was gone from Redis's presence nodes (cut off past the ttl, or Redis lost its data); joining its members again");
        members.sort_by_key(|(_, m)| m.seq);
        for (key, m) in members {
            self.send(Op::Join {
                key,
                member: m.member,
                max: m.max,
                reply: None,
            });
        }
        true
    }
}

/// Makes the queued joins and leaves in order, in pipelined batches (one round trip for up to
/// `BATCH` ops: a reconnect storm is thousands of them), each counted done once made.
async fn run_queue(state: Arc<State>, mut ops: mpsc::UnboundedReceiver<Op>) {
    let mut batch = Vec::with_capacity(BATCH);
    while ops.recv_many(&mut batch, BATCH).await > 0 {
        let n = batch.len() as u64;
        let mut segment = Vec::with_capacity(batch.len());
        for op in batch.drain(..) {
            match op {
                // After what was queued before it, as it says those are made.
                Op::Lost => {
                    run_pipelined(&state, std::mem::take(&mut segment)).await;
                    if let Some(hearing) = state.hearing.get() {
                        hearing.deliver(BusMessage::RostersLost);
                    }
                }
                // Its caller gave up waiting (and will leave): nothing to make.
                Op::Join {
                    reply: Some(ref reply),
                    ..
                } if reply.is_closed() => {}
                op => segment.push(op),
            }
        }
        run_pipelined(&state, segment).await;
        state.pending.send_modify(|p| *p -= n);
    }
}

/// Sends `ops` as one pipeline. A join asked by a socket is tried once (its caller is told);
/// a join made again, or a leave, is tried again while Redis is unreachable, until it is made
/// (a join: or its member left). Ops Redis refused are logged and dropped.
async fn run_pipelined(state: &State, mut ops: Vec<Op>) {
    let mut wait = Backoff::default();
    let mut conn = state.conn.clone();
    loop {
        ops.retain(|op| match op {
            Op::Join {
                key, reply: None, ..
            } => state.members.lock().unwrap().contains_key(key),
            _ => true,
        });
        if ops.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for op in &ops {
            match op {
                Op::Join {
                    key, member, max, ..
                } => pipe.invoke_script(&state.join_call(key, member, *max)),
                Op::Leave { key, max } => pipe.invoke_script(&state.leave_call(key, *max)),
                Op::Lost => unreachable!("run_queue keeps Lost out of pipelines"),
            };
        }
        let replies: Vec<redis::Value> = match state
            .target
            .try_run("the presence scripts", pipe.query_async(&mut conn))
            .await
        {
            Ok(replies) => replies,
            Err(f) => {
                // Joins fail to their callers at once; the rest wait for Redis.
                let error = format!("{:#}", f.error);
                ops.retain_mut(|op| match op {
                    Op::Join { reply, .. } if reply.is_some() => {
                        let reply = reply.take().expect("checked");
                        let _ = reply.send(Err(anyhow::anyhow!("{error}")));
                        false
                    }
                    _ => true,
                });
                if ops.is_empty() || !wait.after("make presence joins and leaves", f).await {
                    return;
                }
                continue;
            }
        };
        let mut again = Vec::new();
        let mut reload = false;
        for (op, reply) in ops.drain(..).zip(replies) {
            if let redis::Value::ServerError(e) = &reply
                && e.kind() == Some(redis::ServerErrorKind::NoScript)
            {
                reload = true;
                again.push(op);
                continue;
            }
            match op {
                Op::Join {
                    reply: Some(answer),
                    ..
                } => {
                    let _ = answer.send(state.joined(reply));
                }
                Op::Join { key, .. } => {
                    if let Err(e) = state.joined(reply) {
                        let (stream, group, _) = &key;
                        tracing::error!(stream, group, error = %format!("{e:#}"), "Redis refused to join a presence member again; giving it up");
                    }
                }
                Op::Leave { key, .. } => {
                    if let redis::Value::ServerError(e) = reply {
                        let (stream, group, _) = &key;
                        tracing::error!(stream, group, error = ?e, "Redis refused a presence leave; giving it up");
                    }
                }
                Op::Lost => {}
            }
        }
        if !reload {
            return;
        }
        // Redis lost its scripts (a restart, SCRIPT FLUSH): load them and send those again.
        for script in [&*JOIN, &*LEAVE] {
            if let Err(e) = script.prepare_invoke().load_async(&mut conn).await {
                tracing::warn!(error = %e, "cannot load the presence scripts into Redis");
            }
        }
        ops = again;
    }
}

/// Waits between the tries of an op Redis could not take: 50 ms, doubling up to 5 s.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Duration::from_millis(50))
    }
}

impl Backoff {
    /// Logs the failure; waits and returns true when trying again may help.
    async fn after(&mut self, what: &str, f: Failed) -> bool {
        let error = format!("{:#}", f.error);
        if !f.transient {
            tracing::error!(error, "cannot {what}: Redis refused it; giving it up");
            return false;
        }
        tracing::warn!(error, "cannot {what} yet; retrying");
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        true
    }
}

/// Renews this node three times per ttl once presence is used.
async fn renew_loop(state: Arc<State>) {
    loop {
        let every = Duration::from_millis((state.ttl_ms() / 3).max(10));
        tokio::time::sleep(every).await;
        if !state.used.load(Ordering::Relaxed) {
            continue;
        }
        if let Err(e) = state.renew().await {
            tracing::warn!(channel = %state.channel, error = %format!("{e:#}"), "cannot renew this node's presence members; others remove them if this lasts past the ttl");
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
