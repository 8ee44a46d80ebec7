//! Fan-out between engine nodes over Redis pub/sub on the channel `stream::events` (spec §9).
//!
//! Each node publishes every frame it emits, with one extra field `"node"` naming itself, and
//! delivers what it hears except its own frames. Frames from iii nodes have no `node` field and
//! are delivered too. Publishing never blocks the caller: frames queue for a task that sends
//! them in pipelined batches. What cannot be sent (Redis away, or the queue full) is counted
//! and logged, and once publishing works again the node announces the gap on the channel
//! (`{"type":"streamhost_gap","node":...}`) so that the other nodes resynchronise their
//! clients: a dropped event never leaves a silent hole.
//!
//! The subscriber holds its own connection, pings it so that a silent network failure is
//! noticed, reconnects with backoff and subscribes again by itself, and then reports a
//! `BusMessage::Gap` so the engine sends its subscribers a fresh `sync`.

use super::RedisTarget;
use crate::fanout::frame::StreamEvent;
use crate::storage::{BusMessage, EventBus};
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub const CHANNEL: &str = "stream::events";
/// The `type` of the message a node publishes after some of its events were dropped.
const GAP: &str = "streamhost_gap";
/// Frames waiting to be published; past this, publications are dropped and counted.
const PUBLISH_QUEUE: usize = 65_536;
/// Frames sent to Redis in one pipeline.
const PUBLISH_BATCH: usize = 512;
/// How often the subscriber checks that its connection is alive.
const PING_EVERY: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct RedisBus {
    node: String,
    queue: mpsc::Sender<String>,
    incoming: Mutex<Option<mpsc::Receiver<BusMessage>>>,
    stats: Arc<BusStats>,
    tasks: Vec<JoinHandle<()>>,
}

/// Publications that never reached Redis.
#[derive(Default)]
pub struct BusStats {
    pub dropped: AtomicU64,
    /// Set while publications are being dropped, so a burst is logged once.
    dropping: AtomicBool,
}

impl RedisBus {
    /// Starts the publisher (on the shared command connection) and the subscriber (on its own).
    pub fn start(target: Arc<RedisTarget>, conn: ConnectionManager, node: String) -> RedisBus {
        let stats = Arc::new(BusStats::default());
        let (queue, queued) = mpsc::channel(PUBLISH_QUEUE);
        let (incoming_tx, incoming) = mpsc::channel(PUBLISH_QUEUE);
        let tasks = vec![
            tokio::spawn(publish_loop(
                target.clone(),
                conn.clone(),
                node.clone(),
                queued,
                stats.clone(),
            )),
            tokio::spawn(subscribe_loop(target, conn, node.clone(), incoming_tx)),
        ];
        RedisBus {
            node,
            queue,
            incoming: Mutex::new(Some(incoming)),
            stats,
            tasks,
        }
    }

    pub fn stats(&self) -> &BusStats {
        &self.stats
    }

    pub fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        self.stop();
    }
}

impl EventBus for RedisBus {
    fn publish(&self, event: &StreamEvent) {
        let mut frame = event.to_value();
        frame["node"] = Value::String(self.node.clone());
        match self.queue.try_send(frame.to_string()) {
            Ok(()) => {}
            Err(_) => self.stats.drop_publications(
                1,
                "the publish queue is full (Redis is slow or unreachable)",
            ),
        }
    }

    fn subscribe(&self) -> mpsc::Receiver<BusMessage> {
        self.incoming.lock().unwrap().take().unwrap_or_else(|| {
            tracing::error!(
                "the Redis event bus was subscribed to twice; the second subscriber hears nothing"
            );
            mpsc::channel(1).1
        })
    }
}

impl BusStats {
    fn drop_publications(&self, n: u64, why: &str) {
        let total = self.dropped.fetch_add(n, Ordering::Relaxed) + n;
        if !self.dropping.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                dropped = total,
                "events are not reaching the other nodes: {why}"
            );
        }
    }

    /// A batch got through; true when publications had been dropped before it.
    fn published(&self) -> bool {
        let recovered = self.dropping.swap(false, Ordering::Relaxed);
        if recovered {
            tracing::info!(
                dropped = self.dropped.load(Ordering::Relaxed),
                "events reach the other nodes again"
            );
        }
        recovered
    }
}

/// Sends queued frames in pipelined batches, in the order they were emitted.
async fn publish_loop(
    target: Arc<RedisTarget>,
    mut conn: ConnectionManager,
    node: String,
    mut queued: mpsc::Receiver<String>,
    stats: Arc<BusStats>,
) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while queued.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        let mut pipe = redis::pipe();
        for frame in &batch {
            pipe.cmd("PUBLISH").arg(CHANNEL).arg(frame).ignore();
        }
        match target.run("PUBLISH", pipe.exec_async(&mut conn)).await {
            Ok(()) => {
                if stats.published() {
                    announce_gap(&target, &mut conn, &node).await;
                }
            }
            Err(e) => stats.drop_publications(batch.len() as u64, &format!("{e:#}")),
        }
        batch.clear();
    }
}

/// Tells the other nodes that some of this node's events never reached them.
async fn announce_gap(target: &RedisTarget, conn: &mut ConnectionManager, node: &str) {
    let marker = serde_json::json!({"type": GAP, "node": node}).to_string();
    let sent = target
        .run(
            "PUBLISH",
            redis::cmd("PUBLISH")
                .arg(CHANNEL)
                .arg(marker)
                .query_async::<i64>(conn),
        )
        .await;
    if let Err(e) = sent {
        tracing::warn!(error = %format!("{e:#}"), "cannot tell the other nodes about dropped events");
    }
}

/// Subscribes, delivers other nodes' frames, and after any loss subscribes again and reports a gap.
async fn subscribe_loop(
    target: Arc<RedisTarget>,
    conn: ConnectionManager,
    node: String,
    incoming: mpsc::Sender<BusMessage>,
) {
    let mut missed = false;
    let mut attempt: u32 = 0;
    loop {
        let subscribed = tokio::time::timeout(super::CONNECT_TIMEOUT, async {
            let mut pubsub = target.client.get_async_pubsub().await?;
            pubsub.subscribe(CHANNEL).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        let pubsub = match subscribed {
            Ok(Ok(pubsub)) => pubsub,
            failed => {
                attempt += 1;
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {:?}", super::CONNECT_TIMEOUT),
                };
                let delay = backoff(attempt);
                tracing::warn!(url = %target.url, attempt, retry_in_ms = delay.as_millis() as u64, "cannot subscribe to {CHANNEL} at redis {}: {why}; events from other nodes are missed until this succeeds", target.url);
                missed = true;
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        if missed {
            // The snapshots of the resync are read over the command connection: wait for it too.
            wait_for_commands(&target, conn.clone()).await;
            tracing::info!(url = %target.url, "subscribed to {CHANNEL} again; resynchronising local subscribers");
            if incoming.send(BusMessage::Gap).await.is_err() {
                return;
            }
        } else {
            tracing::debug!(url = %target.url, "subscribed to {CHANNEL}");
        }
        attempt = 0;
        missed = true;
        let why = listen(pubsub, &node, &incoming).await;
        let Some(why) = why else { return };
        tracing::warn!(url = %target.url, "lost the subscription to {CHANNEL} at redis {}: {why}; reconnecting", target.url);
    }
}

/// Returns once the command connection answers again (it reconnects on the first failed call).
async fn wait_for_commands(target: &RedisTarget, mut conn: ConnectionManager) {
    for attempt in 1u32.. {
        match target
            .run(
                "PING",
                redis::cmd("PING").query_async::<redis::Value>(&mut conn),
            )
            .await
        {
            Ok(_) => return,
            Err(e) if attempt % 10 == 0 => tracing::warn!(attempt, "{e:#}"),
            Err(_) => {}
        }
        tokio::time::sleep(backoff(attempt).min(Duration::from_millis(500))).await;
    }
}

/// Delivers frames until the connection fails (Some(why)) or the engine stops listening (None).
async fn listen(
    pubsub: redis::aio::PubSub,
    node: &str,
    incoming: &mpsc::Sender<BusMessage>,
) -> Option<String> {
    let (mut sink, mut messages) = pubsub.split();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            msg = messages.next() => {
                let Some(msg) = msg else { return Some("the connection closed".into()) };
                let Some(message) = decode(msg.get_payload_bytes(), node) else { continue };
                if incoming.send(message).await.is_err() {
                    return None;
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(super::COMMAND_TIMEOUT, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Some(format!("ping failed: {e}")),
                    Err(_) => return Some(format!("no answer to ping within {:?}", super::COMMAND_TIMEOUT)),
                }
            }
        }
    }
}

/// A frame from another node (or an iii node); None for this node's own frames and for noise.
fn decode(payload: &[u8], node: &str) -> Option<BusMessage> {
    let frame: Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "ignored a message on {CHANNEL} that is not JSON");
            return None;
        }
    };
    if frame.get("node").and_then(Value::as_str) == Some(node) {
        return None;
    }
    if frame.get("type").and_then(Value::as_str) == Some(GAP) {
        return Some(BusMessage::Gap);
    }
    let event = StreamEvent::from_value(&frame);
    if event.is_none() {
        tracing::warn!("ignored a message on {CHANNEL} that is not a stream frame");
    }
    event.map(BusMessage::Event)
}

fn backoff(attempt: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << attempt.min(10));
    Duration::from_millis(ms).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::frame::EventKind;
    use serde_json::json;

    #[test]
    fn own_frames_are_skipped_and_others_delivered() {
        let event = StreamEvent::new("s", "g", Some("i"), EventKind::Create(json!({"a": 1})));
        let mut frame = event.to_value();
        let iii = frame.to_string();
        frame["node"] = json!("me");
        let mine = frame.to_string();
        let event_of = |m: Option<BusMessage>| match m {
            Some(BusMessage::Event(e)) => e.to_value(),
            other => panic!("expected an event, got {other:?}"),
        };
        assert!(decode(mine.as_bytes(), "me").is_none());
        assert_eq!(event_of(decode(mine.as_bytes(), "other")), event.to_value());
        assert_eq!(event_of(decode(iii.as_bytes(), "me")), event.to_value());
        assert!(decode(b"not json", "me").is_none());
        // Another node's gap makes this node resynchronise; its own does not.
        let gap = json!({"type": GAP, "node": "other"}).to_string();
        assert!(matches!(
            decode(gap.as_bytes(), "me"),
            Some(BusMessage::Gap)
        ));
        assert!(decode(gap.as_bytes(), "other").is_none());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }
}
