//! One pub/sub connection per node, shared by every tenant the node serves.
//!
//! One, not one per tenant: Redis lets a connection subscribe to any number of channels and
//! names the channel of each message, so one reader routes every message to its tenant, and a
//! node serving many tenants holds one socket, one ping and one reconnect loop instead of one
//! each. A node hears only the tenants it has an adapter for: registering a channel subscribes
//! it on the live connection, dropping its last registration unsubscribes it.
//!
//! The connection is pinged so that a silent network failure is noticed. After any loss it
//! reconnects with backoff, subscribes every registered channel again, and hands each tenant a
//! `BusMessage::Gap`, since events may have been missed meanwhile.
//!
//! One tenant's engine falling behind must not hold up the others' events, so delivery never
//! waits: a message for a full queue is dropped, and that tenant alone gets a `Gap` as soon as
//! its queue has room, which resynchronises its subscribers from Redis.

use super::bus::decode;
use super::target::{COMMAND_TIMEOUT, CONNECT_TIMEOUT, RedisTarget};
use crate::storage::BusMessage;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, PubSubSink, PubSubStream};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

/// Messages heard but not yet taken by a tenant's engine; past this they are dropped for a gap.
const INCOMING_QUEUE: usize = 65_536;
/// How often the connection is checked.
const PING_EVERY: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The node's subscriber task; stops when dropped.
pub struct Subscriber {
    state: Arc<State>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct State {
    /// Channel -> the buses that listen on it.
    listeners: Mutex<HashMap<String, Vec<Arc<Listener>>>>,
    /// Woken when a channel is registered or released.
    changed: Notify,
    next_id: AtomicU64,
}

/// One bus's end of a channel.
struct Listener {
    id: u64,
    channel: String,
    /// The bus's own frames are not delivered back to it.
    node: String,
    tx: mpsc::Sender<BusMessage>,
    /// Sees each message first: false drops it (see `bus`: events heard without an offset,
    /// and numbered copies of events this node already delivered).
    admit: Admit,
    /// Told of reconnects with a `Gap`: one listener per bus is, the first it registered.
    gaps: bool,
    /// Set while a `Gap` waits for room: what arrives meanwhile is dropped, as the gap covers it.
    behind: AtomicBool,
}

/// What a listener is asked of each message before it is queued.
/// What a bus makes of a message it hears: itself, another, or nothing.
pub type Admit = Box<dyn Fn(BusMessage) -> Option<BusMessage> + Send + Sync>;

/// A bus's place on a channel; leaving it (drop) unsubscribes once no bus is left there.
pub struct Registration {
    state: Arc<State>,
    listener: Arc<Listener>,
}

/// A bus's way to hand its own tenant a message directly (events it could not number).
#[derive(Clone)]
pub struct Local(Arc<Listener>);

impl Local {
    /// Queues without waiting, as heard messages are (a full queue turns into a gap).
    pub fn deliver(&self, message: BusMessage) {
        self.0.deliver(message);
    }
}

impl Registration {
    pub fn local(&self) -> Local {
        Local(self.listener.clone())
    }
}

impl Subscriber {
    pub fn start(target: Arc<RedisTarget>, conn: ConnectionManager) -> Subscriber {
        let state = Arc::new(State::default());
        let task = tokio::spawn(run(target, conn, state.clone()));
        Subscriber { state, task }
    }

    /// Hears `channel` for a bus named `node`, whose own frames are skipped.
    pub fn register(
        &self,
        channel: &str,
        node: &str,
        admit: Admit,
    ) -> (Registration, mpsc::Receiver<BusMessage>) {
        let (tx, rx) = mpsc::channel(INCOMING_QUEUE);
        let listener = Arc::new(Listener {
            id: self.state.next_id.fetch_add(1, Ordering::Relaxed),
            channel: channel.to_owned(),
            node: node.to_owned(),
            tx,
            admit,
            gaps: true,
            behind: AtomicBool::new(false),
        });
        (self.listen(listener), rx)
    }

    /// Adds a listener to its channel, which the connection subscribes if it is new there.
    fn listen(&self, listener: Arc<Listener>) -> Registration {
        self.state
            .listeners
            .lock()
            .unwrap()
            .entry(listener.channel.clone())
            .or_default()
            .push(listener.clone());
        self.state.changed.notify_one();
        Registration {
            state: self.state.clone(),
            listener,
        }
    }

    /// Hears `channel` too, for the bus that holds `first`, into the same queue. A reconnect
    /// gives that bus one `Gap`, through `first`.
    pub fn register_also(&self, channel: &str, first: &Registration) -> Registration {
        let like = &first.listener;
        let listener = Arc::new(Listener {
            id: self.state.next_id.fetch_add(1, Ordering::Relaxed),
            channel: channel.to_owned(),
            node: like.node.clone(),
            tx: like.tx.clone(),
            admit: Box::new(Some),
            gaps: false,
            behind: AtomicBool::new(false),
        });
        self.listen(listener)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut listeners = self.state.listeners.lock().unwrap();
        let channel = &self.listener.channel;
        if let Some(on_channel) = listeners.get_mut(channel) {
            on_channel.retain(|l| l.id != self.listener.id);
            if on_channel.is_empty() {
                listeners.remove(channel);
            }
        }
        drop(listeners);
        self.state.changed.notify_one();
    }
}

impl State {
    fn channels(&self) -> BTreeSet<String> {
        self.listeners.lock().unwrap().keys().cloned().collect()
    }

    /// Hands a message to the buses of its channel.
    fn dispatch(&self, channel: &str, payload: &[u8]) {
        let listeners = self.listeners.lock().unwrap();
        for listener in listeners.get(channel).into_iter().flatten() {
            if let Some(message) =
                decode(payload, &listener.node, channel).and_then(|m| (listener.admit)(m))
            {
                listener.deliver(message);
            }
        }
    }

    /// Tells every bus that it may have missed events.
    fn gap_everywhere(&self) {
        for listener in self.listeners.lock().unwrap().values().flatten() {
            if listener.gaps {
                listener.deliver(BusMessage::Gap);
            }
        }
    }
}

impl Listener {
    /// Queues a message without waiting; when the queue is full, a gap replaces what is lost.
    fn deliver(self: &Arc<Self>, message: BusMessage) {
        if self.behind.load(Ordering::Acquire) {
            return;
        }
        let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(message) else {
            return;
        };
        if self.behind.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(
            channel = %self.channel,
            "events from other nodes arrive faster than this tenant's engine takes them; dropping them until it catches up, then resynchronising its subscribers"
        );
        let listener = self.clone();
        tokio::spawn(async move {
            // Room is reserved before the flag drops, so every dropped message came before the gap.
            if let Ok(permit) = listener.tx.reserve().await {
                listener.behind.store(false, Ordering::Release);
                permit.send(BusMessage::Gap);
            }
        });
    }
}

/// Subscribes, delivers, and after any loss subscribes again and reports a gap to every bus.
async fn run(target: Arc<RedisTarget>, conn: ConnectionManager, state: Arc<State>) {
    let mut missed = false;
    let mut attempt: u32 = 0;
    loop {
        let wanted = state.channels();
        if wanted.is_empty() {
            // No tenant to hear yet (or any more): no connection until one registers.
            state.changed.notified().await;
            continue;
        }
        let subscribed = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let (mut sink, messages) = target.client.get_async_pubsub().await?.split();
            sink.subscribe(&wanted).await?;
            Ok::<_, redis::RedisError>((sink, messages))
        })
        .await;
        let (sink, messages) = match subscribed {
            Ok(Ok(pubsub)) => pubsub,
            failed => {
                attempt += 1;
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {CONNECT_TIMEOUT:?}"),
                };
                let delay = backoff(attempt);
                tracing::warn!(url = %target.url, attempt, retry_in_ms = delay.as_millis() as u64, channels = wanted.len(), "cannot subscribe to the event channels at redis {}: {why}; events from other nodes are missed until this succeeds", target.url);
                missed = true;
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        if missed {
            // The snapshots of the resync are read over the command connection: wait for it too.
            wait_for_commands(&target, conn.clone()).await;
            tracing::info!(url = %target.url, channels = wanted.len(), "subscribed to the event channels again; resynchronising local subscribers");
            state.gap_everywhere();
        } else {
            tracing::debug!(url = %target.url, ?wanted, "subscribed");
        }
        attempt = 0;
        missed = true;
        let why = listen(sink, messages, wanted, &state).await;
        tracing::warn!(url = %target.url, "lost the subscription to the event channels at redis {}: {why}; reconnecting", target.url);
    }
}

/// Delivers messages and follows registrations until the connection fails, saying why.
async fn listen(
    mut sink: PubSubSink,
    mut messages: PubSubStream,
    mut subscribed: BTreeSet<String>,
    state: &State,
) -> String {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            msg = messages.next() => {
                let Some(msg) = msg else { return "the connection closed".into() };
                state.dispatch(msg.get_channel_name(), msg.get_payload_bytes());
            }
            _ = state.changed.notified() => {
                if let Err(e) = follow(&mut sink, &mut subscribed, state).await {
                    return e;
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(COMMAND_TIMEOUT, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return format!("ping failed: {e}"),
                    Err(_) => return format!("no answer to ping within {COMMAND_TIMEOUT:?}"),
                }
            }
        }
    }
}

/// Subscribes the channels registered since, and unsubscribes those no bus listens on any more.
async fn follow(
    sink: &mut PubSubSink,
    subscribed: &mut BTreeSet<String>,
    state: &State,
) -> Result<(), String> {
    let wanted = state.channels();
    let new: Vec<&String> = wanted.difference(subscribed).collect();
    let gone: Vec<&String> = subscribed.difference(&wanted).collect();
    if !new.is_empty() {
        bounded("SUBSCRIBE", sink.subscribe(&new)).await?;
    }
    if !gone.is_empty() {
        bounded("UNSUBSCRIBE", sink.unsubscribe(&gone)).await?;
    }
    *subscribed = wanted;
    Ok(())
}

async fn bounded(
    what: &str,
    call: impl Future<Output = redis::RedisResult<()>>,
) -> Result<(), String> {
    match tokio::time::timeout(COMMAND_TIMEOUT, call).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("{what} failed: {e}")),
        Err(_) => Err(format!("no answer to {what} within {COMMAND_TIMEOUT:?}")),
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

fn backoff(attempt: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << attempt.min(10));
    Duration::from_millis(ms).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::frame::{EventKind, StreamEvent};
    use serde_json::json;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }

    fn frame(n: u64) -> Vec<u8> {
        let event = StreamEvent::new("s", "g", Some("i"), EventKind::Create(json!(n)));
        event.to_value().to_string().into_bytes()
    }

    /// A tenant that does not take its events loses them to a gap; its neighbour loses nothing.
    #[tokio::test]
    async fn a_full_queue_turns_into_one_gap_for_that_tenant_only() {
        let state = State::default();
        let subscriber = Subscriber {
            state: Arc::new(state),
            task: tokio::spawn(async {}),
        };
        let (_slow, mut slow_rx) = subscriber.register("slow", "me", Box::new(Some));
        let (_other, mut other_rx) = subscriber.register("other", "me", Box::new(Some));
        let n = INCOMING_QUEUE as u64 + 10;
        for i in 0..n {
            subscriber.state.dispatch("slow", &frame(i));
            if i % 1000 == 0 {
                subscriber.state.dispatch("other", &frame(i));
            }
        }
        // The slow tenant's queue holds what fitted; the rest became one gap, sent once room is made.
        let mut got = 0;
        while let Ok(BusMessage::Event(_)) = slow_rx.try_recv() {
            got += 1;
        }
        assert_eq!(got, INCOMING_QUEUE);
        assert!(matches!(slow_rx.recv().await, Some(BusMessage::Gap)));
        assert!(slow_rx.try_recv().is_err());
        // Delivery resumes after the gap.
        subscriber.state.dispatch("slow", &frame(n));
        assert!(matches!(slow_rx.recv().await, Some(BusMessage::Event(_))));
        for _ in (0..n).step_by(1000) {
            assert!(matches!(other_rx.try_recv(), Ok(BusMessage::Event(_))));
        }
        assert!(other_rx.try_recv().is_err());
        // A frame of the bus's own node is not delivered back to it.
        let mut mine: serde_json::Value = serde_json::from_slice(&frame(0)).unwrap();
        mine["node"] = json!("me");
        subscriber
            .state
            .dispatch("other", mine.to_string().as_bytes());
        assert!(other_rx.try_recv().is_err());
    }
}
