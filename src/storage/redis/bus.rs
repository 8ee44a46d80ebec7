//! One tenant's fan-out between engine nodes over Redis pub/sub (spec §9): the default tenant
//! on iii's channel `stream::events`, every other tenant on its own (see `keys`).
//!
//! Each bus publishes every frame its engine emits, with one extra field `"node"` naming the
//! bus, and delivers what it hears except its own frames. Frames from iii nodes have no `node`
//! field and are delivered too. Publishing never blocks the caller: frames queue for a task
//! that sends them in pipelined batches, one queue per tenant so that one tenant's burst never
//! drops another's events. What cannot be sent (Redis away, or the queue full) is counted and
//! logged, and once publishing works again the bus announces the gap on its channel
//! (`{"type":"streamhost_gap","node":...}`) so that the other nodes resynchronise that
//! tenant's clients: a dropped event never leaves a silent hole.
//!
//! Hearing goes through the node's one shared subscriber (see `subscriber`), which reports a
//! `BusMessage::Gap` to each tenant after a reconnect.

use super::subscriber::{Registration, Subscriber};
use super::target::RedisTarget;
use crate::fanout::frame::StreamEvent;
use crate::storage::{BusMessage, EventBus};
use redis::aio::ConnectionManager;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The `type` of the message a node publishes after some of its events were dropped.
const GAP: &str = "streamhost_gap";
/// Frames waiting to be published; past this, publications are dropped and counted.
const PUBLISH_QUEUE: usize = 65_536;
/// Frames sent to Redis in one pipeline.
const PUBLISH_BATCH: usize = 512;

pub struct RedisBus {
    node: String,
    queue: mpsc::Sender<String>,
    incoming: Mutex<Option<mpsc::Receiver<BusMessage>>>,
    stats: Arc<BusStats>,
    publisher: JoinHandle<()>,
    /// Dropped on stop, which unsubscribes the channel once no other bus of this node uses it.
    hearing: Mutex<Option<Registration>>,
}

/// Publications that never reached Redis.
pub struct BusStats {
    /// The tenant's channel, for logs.
    channel: String,
    pub dropped: AtomicU64,
    /// Set while publications are being dropped, so a burst is logged once.
    dropping: AtomicBool,
}

impl RedisBus {
    /// Starts publishing on `channel` over the shared command connection, and hears the
    /// channel through the node's subscriber. Each bus names itself with a node id of its own.
    pub(super) fn start(
        target: Arc<RedisTarget>,
        conn: ConnectionManager,
        subscriber: &Subscriber,
        channel: String,
    ) -> RedisBus {
        let node = uuid::Uuid::new_v4().to_string();
        let stats = Arc::new(BusStats {
            channel: channel.clone(),
            dropped: AtomicU64::new(0),
            dropping: AtomicBool::new(false),
        });
        let (queue, queued) = mpsc::channel(PUBLISH_QUEUE);
        let (hearing, incoming) = subscriber.register(&channel, &node);
        let publisher = tokio::spawn(publish_loop(
            target,
            conn,
            node.clone(),
            channel,
            queued,
            stats.clone(),
        ));
        RedisBus {
            node,
            queue,
            incoming: Mutex::new(Some(incoming)),
            stats,
            publisher,
            hearing: Mutex::new(Some(hearing)),
        }
    }

    pub fn stats(&self) -> &BusStats {
        &self.stats
    }

    pub fn stop(&self) {
        self.publisher.abort();
        self.hearing.lock().unwrap().take();
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
                channel = %self.channel,
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
                channel = %self.channel,
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
    channel: String,
    mut queued: mpsc::Receiver<String>,
    stats: Arc<BusStats>,
) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while queued.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        let mut pipe = redis::pipe();
        for frame in &batch {
            pipe.cmd("PUBLISH").arg(&channel).arg(frame).ignore();
        }
        match target.run("PUBLISH", pipe.exec_async(&mut conn)).await {
            Ok(()) => {
                if stats.published() {
                    announce_gap(&target, &mut conn, &node, &channel).await;
                }
            }
            Err(e) => stats.drop_publications(batch.len() as u64, &format!("{e:#}")),
        }
        batch.clear();
    }
}

/// Tells the other nodes that some of this node's events never reached them.
async fn announce_gap(
    target: &RedisTarget,
    conn: &mut ConnectionManager,
    node: &str,
    channel: &str,
) {
    let marker = serde_json::json!({"type": GAP, "node": node}).to_string();
    let sent = target
        .run(
            "PUBLISH",
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(marker)
                .query_async::<i64>(conn),
        )
        .await;
    if let Err(e) = sent {
        tracing::warn!(channel, error = %format!("{e:#}"), "cannot tell the other nodes about dropped events");
    }
}

/// A frame from another node (or an iii node); None for this node's own frames and for noise.
pub(super) fn decode(payload: &[u8], node: &str, channel: &str) -> Option<BusMessage> {
    let frame: Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "ignored a message on {channel} that is not JSON");
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
        tracing::warn!("ignored a message on {channel} that is not a stream frame");
    }
    event.map(BusMessage::Event)
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
        assert!(decode(mine.as_bytes(), "me", "c").is_none());
        assert_eq!(
            event_of(decode(mine.as_bytes(), "other", "c")),
            event.to_value()
        );
        assert_eq!(
            event_of(decode(iii.as_bytes(), "me", "c")),
            event.to_value()
        );
        assert!(decode(b"not json", "me", "c").is_none());
        // Another node's gap makes this node resynchronise; its own does not.
        let gap = json!({"type": GAP, "node": "other"}).to_string();
        assert!(matches!(
            decode(gap.as_bytes(), "me", "c"),
            Some(BusMessage::Gap)
        ));
        assert!(decode(gap.as_bytes(), "other", "c").is_none());
    }
}
