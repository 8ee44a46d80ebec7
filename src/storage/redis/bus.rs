//! One tenant's fan-out between engine nodes over Redis pub/sub (spec §9): the default tenant
//! on iii's channel `stream::events`, every other tenant on its own (see `keys`).
//!
//! Every event this node emits is numbered in Redis (see `history`), which publishes the
//! numbered frame; every node, this one included, delivers the numbered frames it hears, so a
//! group's subscribers get its offsets in order on every node. Frames from iii nodes carry no
//! offset: they are delivered as heard, numbered by the node in an epoch of its own, and the
//! tenant's epochs change (a resume from before them cannot recover what Redis never held).
//!
//! Publishing never blocks the caller: events queue for a task that numbers them in pipelined
//! batches, one queue per tenant so that one tenant's burst never drops another's events. An
//! event that cannot be numbered (Redis away, or the queue full) is counted and logged, still
//! delivered to this node's own subscribers (in a local epoch), and before numbering again the
//! bus gives the tenant a new epoch generation, so no client recovers across it; then it
//! announces the gap on its channel (`{"type":"streamhost_gap","node":...}`) so that the other
//! nodes resynchronise that tenant's clients: a dropped event never leaves a silent hole.
//! A batch that timed out may still be run by a Redis that was only busy: its numbered
//! copies are then dropped on arrival (`echoes`), so no client gets an event twice.
//!
//! Hearing goes through the node's one shared subscriber (see `subscriber`), which reports a
//! `BusMessage::Gap` to each tenant after a reconnect.

use super::echoes::Echoes;
use super::history::RedisHistory;
use super::presence::{self, RedisPresence};
use super::subscriber::{Local, Registration, Subscriber};
use super::target::RedisTarget;
use crate::fanout::frame::{Position, StreamEvent};
use crate::fanout::history::Bounds;
use crate::storage::{BusMessage, EventBus, SharedHistory, SharedPresence};
use redis::aio::ConnectionManager;
use serde_json::Value;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// The `type` of the message a node publishes after some of its events were dropped.
const GAP: &str = "streamhost_gap";
/// Frames waiting to be published; past this, publications are dropped and counted.
const PUBLISH_QUEUE: usize = 65_536;
/// Frames sent to Redis in one pipeline.
const PUBLISH_BATCH: usize = 512;

pub struct RedisBus {
    queue: mpsc::Sender<StreamEvent>,
    /// Where this node's own events go when they cannot be numbered.
    local: Local,
    history: Arc<RedisHistory>,
    incoming: Mutex<Option<mpsc::Receiver<BusMessage>>>,
    stats: Arc<BusStats>,
    publisher: JoinHandle<()>,
    /// Dropped on stop, which unsubscribes the channel once no other bus of this node uses it.
    hearing: Mutex<Option<Registration>>,
    /// The tenant's presence rosters, whose changes this bus hears too.
    presence: Arc<RedisPresence>,
    hearing_presence: Mutex<Option<Registration>>,
}

/// Publications that never reached Redis.
pub struct BusStats {
    /// The tenant's channel, for logs.
    channel: String,
    pub dropped: AtomicU64,
    /// Set while publications are being dropped, so a burst is logged once.
    dropping: AtomicBool,
    /// Set when an event was numbered nowhere: a new epoch generation is due first.
    unnumbered: AtomicBool,
    /// Events published so far, and (watched) how many of them are settled: numbered, or given
    /// up. Batches settle in queue order, so one count says which events are done (an event
    /// refused by a full queue counts at once: under overflow the count runs a little ahead).
    queued: AtomicU64,
    settled: watch::Sender<u64>,
}

impl RedisBus {
    /// Starts publishing on `channel` over the shared command connection, and hears the
    /// channel through the node's subscriber. Each bus names itself with a node id of its own.
    pub(super) fn start(
        target: Arc<RedisTarget>,
        conn: ConnectionManager,
        subscriber: &Subscriber,
        channel: String,
        history: Arc<RedisHistory>,
        presence: Arc<RedisPresence>,
    ) -> RedisBus {
        let node = uuid::Uuid::new_v4().to_string();
        let stats = Arc::new(BusStats {
            channel: channel.clone(),
            dropped: AtomicU64::new(0),
            dropping: AtomicBool::new(false),
            unnumbered: AtomicBool::new(false),
            queued: AtomicU64::new(0),
            settled: watch::Sender::new(0),
        });
        let (queue, queued) = mpsc::channel(PUBLISH_QUEUE);
        let echoes = Arc::new(Echoes::default());
        let on_unnumbered = history.clone().on_unnumbered();
        let heard_echoes = echoes.clone();
        let admit = Box::new(move |message: BusMessage| match message {
            BusMessage::Event(_) => {
                on_unnumbered();
                Some(message)
            }
            BusMessage::Numbered(event, at) if heard_echoes.take(&event) => {
                Some(BusMessage::Skipped {
                    stream: event.stream_name,
                    group: event.group_id,
                    at,
                })
            }
            _ => Some(message),
        });
        let (hearing, incoming) = subscriber.register(&channel, &node, admit);
        let hearing_presence = subscriber.register_also(presence.channel(), &hearing);
        let local = hearing.local();
        presence.tell(local.clone());
        history.hear_echoes(echoes.clone(), local.clone());
        let publisher = tokio::spawn(publish_loop(
            Publisher {
                target,
                conn,
                node: node.clone(),
                channel,
                history: history.clone(),
                local: local.clone(),
                stats: stats.clone(),
                echoes,
            },
            queued,
        ));
        RedisBus {
            queue,
            local,
            history,
            incoming: Mutex::new(Some(incoming)),
            stats,
            publisher,
            hearing: Mutex::new(Some(hearing)),
            presence,
            hearing_presence: Mutex::new(Some(hearing_presence)),
        }
    }

    pub fn stats(&self) -> &BusStats {
        &self.stats
    }

    pub fn stop(&self) {
        self.publisher.abort();
        // Nothing more will be numbered: nobody waits for it.
        self.stats.settled.send_replace(u64::MAX);
        self.hearing.lock().unwrap().take();
        self.hearing_presence.lock().unwrap().take();
        self.presence.stop();
    }
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        self.stop();
    }
}

impl EventBus for RedisBus {
    fn publish(&self, event: &StreamEvent) {
        self.stats.queued.fetch_add(1, Ordering::AcqRel);
        if let Err(e) = self.queue.try_send(event.clone()) {
            self.stats.settle(1);
            self.stats.unnumbered.store(true, Ordering::Release);
            self.stats.drop_publications(
                1,
                "the publish queue is full (Redis is slow or unreachable)",
            );
            self.local.deliver(BusMessage::Event(e.into_inner()));
        }
    }

    fn settled(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let target = self.stats.queued.load(Ordering::Acquire);
        let mut settled = self.stats.settled.subscribe();
        Box::pin(async move {
            // Ends early only if the publishing task is gone (the bus stopped).
            let _ = settled.wait_for(|n| *n >= target).await;
        })
    }

    fn shared_history(&self) -> Option<Arc<dyn SharedHistory>> {
        Some(self.history.clone())
    }

    fn set_history(&self, bounds: Bounds) {
        self.history.set_bounds(bounds);
    }

    fn shared_presence(&self) -> Option<Arc<dyn SharedPresence>> {
        Some(self.presence.clone())
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
    fn settle(&self, n: usize) {
        self.settled
            .send_modify(|settled| *settled = settled.saturating_add(n as u64));
    }

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

/// What the publishing task works with.
struct Publisher {
    target: Arc<RedisTarget>,
    conn: ConnectionManager,
    node: String,
    channel: String,
    history: Arc<RedisHistory>,
    local: Local,
    stats: Arc<BusStats>,
    /// Events delivered here after a failed numbering, whose numbered copies are not.
    echoes: Arc<Echoes>,
}

/// Numbers queued events in pipelined batches, in the order they were emitted.
async fn publish_loop(mut p: Publisher, mut queued: mpsc::Receiver<StreamEvent>) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while queued.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        match p.number(&batch).await {
            Ok(()) => {
                if p.stats.published() {
                    announce_gap(&p.target, &mut p.conn, &p.node, &p.channel).await;
                }
            }
            Err(e) => {
                p.stats.unnumbered.store(true, Ordering::Release);
                p.stats
                    .drop_publications(batch.len() as u64, &format!("{e:#}"));
                // Numbered nowhere (or not known to be): this node's clients still get them,
                // and not again should Redis have numbered them after all (a timeout).
                p.echoes.expect(&batch);
                for event in &batch {
                    p.local.deliver(BusMessage::Event(event.clone()));
                }
            }
        }
        p.stats.settle(batch.len());
        batch.clear();
    }
}

impl Publisher {
    /// Numbers and publishes `batch`; after events were numbered nowhere, first gives the
    /// tenant a new epoch generation (so nothing numbered later continues an old epoch).
    async fn number(&mut self, batch: &[StreamEvent]) -> anyhow::Result<()> {
        if self.stats.unnumbered.load(Ordering::Acquire) {
            self.history.new_generation().await?;
            self.stats.unnumbered.store(false, Ordering::Release);
        }
        let mut pipe = redis::pipe();
        for event in batch {
            self.history.number(&mut pipe, event, &self.channel);
        }
        let conn = &mut self.conn;
        let call = async move {
            match pipe.exec_async(conn).await {
                // Redis has not got the script (first use, or it restarted): none of the batch
                // ran, so it is loaded and the batch sent again.
                Err(e) if no_script(&e) => {
                    RedisHistory::load_cmd().query_async::<String>(conn).await?;
                    pipe.exec_async(conn).await
                }
                done => done,
            }
        };
        self.target.run("the numbering script", call).await
    }
}

/// Whether every command failed for want of the script.
fn no_script(e: &redis::RedisError) -> bool {
    e.clone().into_server_errors().is_some_and(|errors| {
        !errors.is_empty()
            && errors
                .iter()
                .all(|(_, e)| e.kind() == Some(redis::ServerErrorKind::NoScript))
    })
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
    let numbered = match (frame.get("offset"), frame.get("epoch")) {
        (Some(offset), Some(Value::String(epoch))) => offset.as_u64().map(|offset| Position {
            offset,
            epoch: epoch.as_str().into(),
        }),
        _ => None,
    };
    if numbered.is_none() && frame.get("node").and_then(Value::as_str) == Some(node) {
        return None;
    }
    match frame.get("type").and_then(Value::as_str) {
        Some(GAP) => return Some(BusMessage::Gap),
        Some(presence::CHANGE) => {
            let change = presence::decode(&frame);
            if change.is_none() {
                tracing::warn!("ignored a presence change on {channel} that does not parse");
            }
            return change.map(BusMessage::Presence);
        }
        _ => {}
    }
    let Some(event) = StreamEvent::from_value(&frame) else {
        tracing::warn!("ignored a message on {channel} that is not a stream frame");
        return None;
    };
    Some(match numbered {
        Some(at) => BusMessage::Numbered(event, at),
        None => BusMessage::Event(event),
    })
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
