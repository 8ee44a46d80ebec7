//! One bounded outbound queue per socket, and the task that runs the socket.
//!
//! Publishers never wait on a socket: they `push` an already-encoded frame and move on. The
//! socket's task (`drive`) reads what the peer sends and writes every frame queued so far
//! before it flushes once, so a busy socket gets many frames per write. A socket whose queue
//! fills up, in frames or in bytes (a few large events must not pin hundreds of megabytes), is
//! closed with [`CLOSE_SLOW`] and a reason, rather than left silently missing events.
//!
//! A client socket's writes take turns with the other sockets of its tenant
//! ([`Outbox::take_turns`], `fair::Turns::burst`), so that one tenant's fan-out to thousands
//! of sockets does not fill the runtime's run queue ahead of another tenant's, and they keep
//! to its delivery pace (`pace`), so that its bursts are spread over time.
//!
//! The same task keeps the socket honest about being alive: it pings every `ping_interval`
//! and closes with [`CLOSE_IDLE`] a peer that has sent nothing, not even a pong, for
//! `idle_timeout`; a write stuck on such a peer ends then too.

use super::pace::Pace;
use crate::fair::Turns;
use crate::metrics::CloseCounters;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Close code for a client that could not keep up (private-use range of RFC 6455).
pub const CLOSE_SLOW: u16 = 4008;
/// Close code for a frame over the size limit (RFC 6455 "message too big").
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code when the engine shuts down (RFC 6455 "going away").
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for a text frame that is not UTF-8 (RFC 6455 "invalid frame payload data").
pub const CLOSE_NOT_UTF8: u16 = 1007;
/// Close code for a peer that answered no ping in time (private-use range of RFC 6455).
pub const CLOSE_IDLE: u16 = 4010;

/// At most this many frames are written before a flush, so one flush stays bounded.
const MAX_BATCH: usize = 256;
/// At most this many bytes are taken off the queue for one write (one frame alone always
/// is): frames taken are no longer counted against the queue's bound, so this is all a
/// stuck write holds beyond it.
const MAX_BATCH_BYTES: usize = 128 << 10;
/// The longest a worker's socket gathers answers before it writes them (see `gather_answers`).
const MAX_GATHER: Duration = Duration::from_micros(500);
/// A queue that grew past this many frames in a burst gives the room back when it is found
/// empty at a ping ([`Outbox::trim`]). Not as soon as it empties: a worker pipelining
/// thousands of calls empties its queue of answers at every write, and growing it again
/// from here each time (a fresh, zeroed allocation at every doubling) cost in-memory sets
/// 5-8% of the engine's time.
const KEEP_FRAMES: usize = MAX_BATCH;

#[derive(Debug, Clone)]
pub struct CloseReason {
    pub code: u16,
    pub reason: String,
}

/// The frames waiting for one socket. A deque under a lock rather than a channel: a publish
/// pushes under one uncontended lock and the socket's task takes a whole batch under one
/// more, where a bounded channel paid a permit, a slot and a release per frame (a sixth of
/// fan-out's CPU).
#[derive(Default)]
struct Queue {
    frames: VecDeque<Utf8Bytes>,
    bytes: usize,
    /// The socket's task is gone ([`Frames`] dropped): nothing more is taken.
    closed: bool,
}

pub struct Outbox {
    queue: Mutex<Queue>,
    /// Wakes the socket's task when frames land in an empty queue.
    queued: Notify,
    closing: Mutex<Option<CloseReason>>,
    wake: Notify,
    capacity: usize,
    /// Bytes the queued frames may add up to; one frame alone always fits.
    max_bytes: usize,
    /// Wakes a `send` waiting for room in the queue.
    room: Notify,
    /// How many `send`s wait for room: a take wakes them only if there are any.
    waiting: AtomicUsize,
    /// Counts slow-client disconnects across the engine.
    counters: CloseCounters,
    /// The tenant's fan-out turns and pace, for a client socket; a worker socket writes at
    /// once.
    turns: OnceLock<(Turns, Arc<Pace>)>,
    /// Whether a write first lets the tasks that answer add to the queue (see `gather_answers`).
    gathers: AtomicBool,
}

impl Outbox {
    /// A queue bounded in frames only.
    pub fn new(capacity: usize, counters: CloseCounters) -> (Arc<Outbox>, Frames) {
        Outbox::bounded(capacity, usize::MAX, counters)
    }

    /// A queue bounded in frames and in bytes.
    pub fn bounded(
        capacity: usize,
        max_bytes: usize,
        counters: CloseCounters,
    ) -> (Arc<Outbox>, Frames) {
        let outbox = Arc::new(Outbox {
            queue: Mutex::default(),
            queued: Notify::new(),
            closing: Mutex::new(None),
            wake: Notify::new(),
            capacity: capacity.max(1),
            max_bytes,
            room: Notify::new(),
            waiting: AtomicUsize::new(0),
            counters,
            turns: OnceLock::new(),
            gathers: AtomicBool::new(false),
        });
        let frames = Frames {
            outbox: outbox.clone(),
        };
        (outbox, frames)
    }

    /// Queues a frame; false when the socket is gone or its queue just overflowed.
    pub fn push(&self, frame: Utf8Bytes) -> bool {
        let queue = self.queue.lock().unwrap();
        if queue.closed {
            return false;
        }
        if queue.frames.len() >= self.capacity {
            drop(queue);
            return self.overflowed();
        }
        if !self.fits(&queue, frame.len()) {
            let queued = queue.bytes;
            drop(queue);
            return self.overflowed_bytes(queued);
        }
        self.enqueue(queue, frame);
        true
    }

    /// One frame alone always fits, however large.
    fn fits(&self, queue: &Queue, len: usize) -> bool {
        queue.bytes == 0 || queue.bytes.saturating_add(len) <= self.max_bytes
    }

    fn enqueue(&self, mut queue: std::sync::MutexGuard<'_, Queue>, frame: Utf8Bytes) {
        let was_empty = queue.frames.is_empty();
        queue.bytes += frame.len();
        queue.frames.push_back(frame);
        drop(queue);
        // A queue that held frames already has its wake-up coming (see `Frames::take`).
        if was_empty {
            self.queued.notify_one();
        }
    }

    /// Makes this socket's writes take turns with the other sockets holding `turns`, and keep
    /// to `pace` with them.
    pub fn take_turns(&self, turns: &Turns, pace: &Arc<Pace>) {
        let _ = self.turns.set((turns.clone(), pace.clone()));
    }

    /// Makes this socket, woken for a short queue, let the tasks that answer run while they
    /// add to it before it writes (see `gather_answers`). A worker's answers come from its
    /// calls' tasks, woken together (a sync of the log answers hundreds): without this the
    /// socket ran between them and wrote each answer alone, a socket write per call. A client
    /// socket does not wait: its frames come from one publish at a time, and waiting would
    /// only add to their latency.
    pub fn gather(&self) {
        self.gathers.store(true, Ordering::Relaxed);
    }

    /// Gives back the room a burst made the queue grow to, if it is empty now. The socket
    /// calls it at every ping, so an idle socket holds no more than `KEEP_FRAMES` for long.
    fn trim(&self) {
        let mut queue = self.queue.lock().unwrap();
        if queue.frames.is_empty() && queue.frames.capacity() > KEEP_FRAMES {
            queue.frames.shrink_to(KEEP_FRAMES);
        }
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.queue.lock().unwrap().bytes
    }

    /// How many frames may wait for this socket.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Closes the socket as too slow (its frames would not fit); always false.
    pub fn overflowed(&self) -> bool {
        let reason = format!(
            "slow client: {} frames waiting, events would be lost; reconnect to resync",
            self.capacity
        );
        self.close_slow(reason)
    }

    fn overflowed_bytes(&self, queued: usize) -> bool {
        let reason = format!(
            "slow client: {queued} bytes waiting (send_queue_bytes {}), events would be lost; reconnect to resync",
            self.max_bytes
        );
        self.close_slow(reason)
    }

    fn close_slow(&self, reason: String) -> bool {
        if self.close(CLOSE_SLOW, reason) {
            self.counters.slow.inc();
            tracing::warn!(
                capacity = self.capacity,
                max_bytes = self.max_bytes,
                "closing a client that cannot keep up"
            );
        }
        false
    }

    /// Asks the writer to close the socket with this code; the first reason wins.
    pub fn close(&self, code: u16, reason: impl Into<String>) -> bool {
        let mut closing = self.closing.lock().unwrap();
        if closing.is_some() {
            return false;
        }
        *closing = Some(CloseReason {
            code,
            reason: reason.into(),
        });
        drop(closing);
        self.wake.notify_one();
        true
    }

    pub fn is_closing(&self) -> bool {
        self.closing.lock().unwrap().is_some()
    }

    fn close_reason(&self) -> Option<CloseReason> {
        self.closing.lock().unwrap().clone()
    }
}

/// The socket task's end of an outbox: it takes the queued frames. Dropped, the outbox takes
/// no more.
pub struct Frames {
    outbox: Arc<Outbox>,
}

impl Frames {
    /// Frames queued now.
    pub fn len(&self) -> usize {
        self.outbox.queue.lock().unwrap().frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the oldest frame, if any: for tests, which look at what was queued.
    #[cfg(test)]
    pub fn try_recv(&mut self) -> Option<Utf8Bytes> {
        let mut batch = Vec::with_capacity(1);
        self.take(1, 0, &mut batch);
        batch.pop()
    }

    /// Resolves once frames may be queued (it can be early: take, then look).
    async fn ready(&self) {
        self.outbox.queued.notified().await
    }

    /// Moves the oldest frames into `into`: at most `max` of them, and no more than
    /// `max_bytes` unless the first alone is larger.
    fn take(&mut self, max: usize, max_bytes: usize, into: &mut Vec<Utf8Bytes>) {
        let outbox = &self.outbox;
        let more = {
            let mut guard = outbox.queue.lock().unwrap();
            let queue = &mut *guard;
            let mut bytes = 0;
            while into.len() < max {
                let Some(len) = queue.frames.front().map(|f| f.len()) else {
                    break;
                };
                if bytes > 0 && bytes + len > max_bytes {
                    break;
                }
                bytes += len;
                queue.bytes -= len;
                into.extend(queue.frames.pop_front());
            }
            !queue.frames.is_empty()
        };
        // Pushes wake the socket only into an empty queue: what is left needs a wake-up of
        // its own.
        if more {
            outbox.queued.notify_one();
        }
        // Counted before a sender looks for room, so one that found none is seen here.
        if outbox.waiting.load(Ordering::SeqCst) > 0 {
            outbox.room.notify_waiters();
        }
    }
}

impl Drop for Frames {
    fn drop(&mut self) {
        // The outbox outlives its socket in the hub's and the registry's hands: its frames
        // and their room go now.
        *self.outbox.queue.lock().unwrap() = Queue {
            closed: true,
            ..Queue::default()
        };
        self.outbox.room.notify_waiters();
    }
}

/// What a socket's message handler wants next.
pub enum Flow {
    Continue,
    Stop,
}

/// The side of a socket that reads: the client or worker connection.
pub trait Peer: Send {
    /// Handles one message, or the read error that ends the socket (so that the peer can
    /// choose the close code).
    fn on_message(
        &mut self,
        msg: Result<Message, axum::Error>,
    ) -> impl Future<Output = Flow> + Send;

    /// While this is in the future the socket reads nothing more from the peer (it still
    /// writes): backpressure on a peer whose calls are being refused, so that ignoring
    /// `retry_after_ms` costs the engine little.
    fn read_after(&self) -> Option<Instant> {
        None
    }
}

/// How a socket's task finds a dead peer.
#[derive(Debug, Clone, Copy)]
pub struct Keepalive {
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
}

/// Runs one socket in one task: writes every queued frame (many per flush), hands each
/// message that arrives to the peer, and pings. Ends when the other side goes, the peer says
/// stop, a close is asked for, the peer is silent past its idle timeout, or `shutdown`
/// resolves; then it sends the close frame, if any, and flushes a close reply, waiting at
/// most `grace` for a peer that reads slowly.
pub async fn drive(
    mut ws: WebSocket,
    mut rx: Frames,
    outbox: Arc<Outbox>,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
    keepalive: Keepalive,
    peer: &mut impl Peer,
) {
    tokio::pin!(shutdown);
    let mut heard = Instant::now();
    let mut ping =
        tokio::time::interval_at(heard + keepalive.ping_interval, keepalive.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One timer for the socket's life, moved on only when it fires: setting a timer on every
    // turn of the loop (every read and write) cost fan-out a timer-wheel insert and removal
    // per write, 7% of its CPU.
    let dead = tokio::time::sleep_until(heard + keepalive.idle_timeout);
    tokio::pin!(dead);
    let mut write_at = None;
    loop {
        let dead_at = heard + keepalive.idle_timeout;
        let paused = peer.read_after().filter(|at| *at > Instant::now());
        tokio::select! {
            biased;
            _ = outbox.wake.notified() => break,
            _ = &mut shutdown => {
                outbox.close(CLOSE_GOING_AWAY, "the engine is shutting down");
                break;
            }
            _ = &mut dead => {
                if Instant::now() < dead_at {
                    dead.as_mut().reset(dead_at);
                    continue;
                }
                idle(&outbox, keepalive.idle_timeout);
                break;
            }
            // Wakes the loop to read again once a pause is over.
            _ = pause_over(paused), if paused.is_some() => {}
            msg = ws.recv(), if paused.is_none() => {
                let Some(msg) = msg else { break };
                heard = Instant::now();
                if matches!(msg, Ok(Message::Close(_))) || matches!(peer.on_message(msg).await, Flow::Stop) {
                    break;
                }
            }
            // Before the queue: a busy socket must still ping, or its peer looks dead.
            _ = ping.tick() => {
                outbox.trim();
                let sent = tokio::time::timeout_at(dead_at, ws.send(Message::Ping(Default::default()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    if sent.is_err() {
                        idle(&outbox, keepalive.idle_timeout);
                    }
                    break;
                }
            }
            // A write that waits for its tenant's pace (see `pace`); the socket reads and
            // pings meanwhile.
            _ = pause_over(write_at), if write_at.is_some() => {
                write_at = None;
                if !write_queued(&mut ws, &mut rx, &outbox, dead.as_mut(), dead_at, keepalive).await {
                    break;
                }
            }
            _ = rx.ready(), if write_at.is_none() => {
                if let Some(at) = outbox.turns.get().and_then(|(_, pace)| pace.reserve()) {
                    write_at = Some(at);
                    continue;
                }
                if outbox.gathers.load(Ordering::Relaxed) {
                    gather_answers(&rx).await;
                }
                if !write_queued(&mut ws, &mut rx, &outbox, dead.as_mut(), dead_at, keepalive).await {
                    break;
                }
            }
        }
    }
    // Nothing more is written but the close: what is still queued goes, and pushes fail now.
    drop(rx);
    let reason = outbox.close_reason();
    // The close frame waits behind what the kernel already holds for this peer, so a slow
    // client needs time to read up to it; a shutdown, or a peer that answers nothing, does
    // not wait that long.
    let grace = match &reason {
        Some(r) if r.code == CLOSE_GOING_AWAY || r.code == CLOSE_IDLE => {
            grace.min(Duration::from_secs(1))
        }
        _ => grace,
    };
    let _ = tokio::time::timeout(grace, async {
        if let Some(CloseReason { code, reason }) = reason {
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from(truncate_reason(&reason)),
            };
            ws.send(Message::Close(Some(frame))).await?;
        }
        // Flushes a close reply the socket queued by itself (when the peer closed first).
        ws.close().await
    })
    .await;
}

/// Lets the tasks that answer a worker's calls add to its queue before it is written: yields
/// while each turn of the runtime adds to it, up to a batch or `MAX_GATHER`. A sync of the
/// log wakes hundreds of calls, which answer over several turns of the runtime (each waits
/// for its turn, its place in line, the call before it); written after a single turn, their
/// answers left in about eight a socket write, and socket writes were an eighth of a durable
/// set's time. A lone call's answer waits one turn of the runtime.
async fn gather_answers(rx: &Frames) {
    let started = Instant::now();
    let mut queued = rx.len();
    while queued < MAX_BATCH && started.elapsed() < MAX_GATHER {
        tokio::task::yield_now().await;
        let now = rx.len();
        if now == queued {
            return;
        }
        queued = now;
    }
}

/// Resolves at `at`. An async fn, so that building it (select! builds every branch's future
/// on every turn of a socket's loop, the disabled ones too) costs no timer until polled.
async fn pause_over(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// Asks for the close of a peer that has been silent for `timeout`.
fn idle(outbox: &Outbox, timeout: Duration) {
    let reason = format!(
        "no frame or pong for {} ms: the connection is taken as dead; reconnect",
        timeout.as_millis()
    );
    if outbox.close(CLOSE_IDLE, reason) {
        outbox.counters.idle.inc();
        tracing::info!(
            idle_timeout_ms = timeout.as_millis() as u64,
            "closing a socket whose peer answers nothing"
        );
    }
}

/// Writes a batch (see `write_batch`); false when the socket is done. A write still stuck
/// when the idle timeout passed closes the socket as idle.
async fn write_queued(
    ws: &mut WebSocket,
    rx: &mut Frames,
    outbox: &Outbox,
    dead: std::pin::Pin<&mut tokio::time::Sleep>,
    dead_at: Instant,
    keepalive: Keepalive,
) -> bool {
    let written = write_batch(ws, rx, outbox, dead, dead_at).await;
    if !written && Instant::now() >= dead_at {
        idle(outbox, keepalive.idle_timeout);
    }
    written
}

/// Takes a batch of queued frames and writes it, then flushes once; false when the socket is
/// done (an error, a close asked for while a flush was stuck on a slow peer, or `dead_at`
/// passed with the write still stuck). A client socket waits for a turn; the frames are taken
/// on the write's first poll, under the turn, so frames queued while it waited go in this
/// write. Its tenant's pace counts them.
async fn write_batch(
    ws: &mut WebSocket,
    rx: &mut Frames,
    outbox: &Outbox,
    mut dead: std::pin::Pin<&mut tokio::time::Sleep>,
    dead_at: Instant,
) -> bool {
    let turns = outbox.turns.get();
    let batch = async {
        let mut batch = Vec::new();
        rx.take(MAX_BATCH, MAX_BATCH_BYTES, &mut batch);
        if batch.is_empty() {
            return true;
        }
        // The pace reserved one frame: the rest of the batch counts too.
        if let Some((_, pace)) = turns {
            pace.spent(batch.len() - 1);
        }
        for frame in batch {
            if ws.feed(Message::Text(frame)).await.is_err() {
                return false;
            }
        }
        ws.flush().await.is_ok()
    };
    let write = async {
        match turns {
            Some((turns, _)) => turns.burst(batch).await,
            None => batch.await,
        }
    };
    tokio::pin!(write);
    loop {
        tokio::select! {
            biased;
            _ = outbox.wake.notified() => return false,
            _ = dead.as_mut() => {
                if Instant::now() >= dead_at {
                    return false;
                }
                dead.as_mut().reset(dead_at);
            }
            ok = &mut write => return ok,
        }
    }
}

/// A close reason must fit in a control frame (123 bytes), cut on a char boundary.
fn truncate_reason(reason: &str) -> &str {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

impl Outbox {
    /// Queues a frame, waiting for room in frames and in bytes (one frame alone always fits):
    /// for peers (workers) whose frames must not be dropped. False once the socket is done.
    pub async fn send(&self, frame: Utf8Bytes) -> bool {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let sent = self.send_when_room(frame).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        sent
    }

    /// Queues a frame now, as `send` would, behind any caller already waiting for room; or
    /// a task waits for room with it. False once the socket is done (or it was left to a task).
    pub fn send_now(self: &Arc<Self>, frame: Utf8Bytes) -> bool {
        let frame = match self.waiting.load(Ordering::SeqCst) {
            0 => match self.enqueue_if_room(frame) {
                Ok(sent) => return sent,
                Err(frame) => frame,
            },
            _ => frame,
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let outbox = self.clone();
            runtime.spawn(async move { outbox.send(frame).await });
        }
        false
    }

    /// Queues a frame if there is room now; gives it back if not. False once the socket is
    /// done.
    fn enqueue_if_room(&self, frame: Utf8Bytes) -> Result<bool, Utf8Bytes> {
        if self.is_closing() {
            return Ok(false);
        }
        let queue = self.queue.lock().unwrap();
        if queue.closed {
            return Ok(false);
        }
        if queue.frames.len() < self.capacity && self.fits(&queue, frame.len()) {
            self.enqueue(queue, frame);
            return Ok(true);
        }
        Err(frame)
    }

    async fn send_when_room(&self, mut frame: Utf8Bytes) -> bool {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            // Registered before the look, so frames taken in between are not missed.
            room.as_mut().enable();
            match self.enqueue_if_room(frame) {
                Ok(sent) => return sent,
                Err(back) => frame = back,
            }
            room.await;
        }
    }
}

/// The close code and reason a read error deserves, when the peer broke a rule the engine can
/// name: a frame over the size limit (1009) or a text frame that is not UTF-8 (1007). The
/// socket library reports these before the frame reaches the peer's handler; the close frame
/// still goes out, since only reading has stopped.
pub fn read_error_close(err: &axum::Error) -> Option<(u16, String)> {
    use tungstenite::error::{CapacityError, Error};
    match std::error::Error::source(err)?.downcast_ref::<Error>()? {
        Error::Capacity(CapacityError::MessageTooLong { size, max_size }) => Some((
            CLOSE_TOO_BIG,
            format!("frame of {size} bytes is over the {max_size}-byte limit"),
        )),
        Error::Utf8(_) => Some((
            CLOSE_NOT_UTF8,
            "a text frame must be UTF-8; send other bytes in a binary frame".to_owned(),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    fn frame(len: usize) -> Utf8Bytes {
        Utf8Bytes::from("x".repeat(len))
    }

    #[test]
    fn the_byte_bound_holds_at_its_limit_and_closes_one_past_it() {
        let slow = Counter::default();
        let counters = CloseCounters {
            slow: slow.clone(),
            ..CloseCounters::default()
        };
        let (outbox, mut rx) = Outbox::bounded(100, 1000, counters);
        assert!(outbox.push(frame(500)));
        assert!(outbox.push(frame(500)), "exactly the bound fits");
        assert_eq!(outbox.queued_bytes(), 1000);
        assert!(!outbox.push(frame(1)), "one byte past the bound does not");
        let reason = outbox.close_reason().expect("closed as slow");
        assert_eq!(reason.code, CLOSE_SLOW);
        assert!(
            reason.reason.contains("send_queue_bytes 1000"),
            "{reason:?}"
        );
        assert_eq!(slow.get(), 1);
        // What was queued stays queued, for the socket to write before its close frame.
        assert_eq!(rx.try_recv().unwrap().len(), 500);
    }

    #[test]
    fn one_frame_larger_than_the_bound_still_goes_to_an_empty_queue() {
        let (outbox, mut rx) = Outbox::bounded(100, 1000, CloseCounters::default());
        assert!(outbox.push(frame(5000)));
        rx.try_recv().unwrap();
        assert_eq!(outbox.queued_bytes(), 0);
        assert!(outbox.push(frame(1000)));
        assert!(!outbox.is_closing());
    }

    #[tokio::test]
    async fn a_sender_waits_for_room_in_bytes_at_the_bound_and_one_past_it() {
        let (outbox, mut rx) = Outbox::bounded(100, 1000, CloseCounters::default());
        let sent = |len| {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.send(frame(len)).await })
        };
        assert!(sent(500).await.unwrap());
        assert!(sent(500).await.unwrap(), "exactly the bound fits at once");
        assert_eq!(outbox.queued_bytes(), 1000);
        let past = sent(1);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!past.is_finished(), "one byte past the bound waits");
        assert_eq!(outbox.queued_bytes(), 1000);
        rx.try_recv().unwrap();
        assert!(past.await.unwrap(), "queued once bytes left");
        assert_eq!(outbox.queued_bytes(), 501);
        assert!(!outbox.is_closing(), "a waiting sender closes nothing");
        // A sender still waiting when the socket is gone gives up.
        let stuck = sent(500);
        drop(rx);
        assert!(!stuck.await.unwrap());
    }

    #[tokio::test]
    async fn frames_left_after_a_batch_wake_the_socket_again() {
        let (outbox, mut rx) = Outbox::new(1000, CloseCounters::default());
        for _ in 0..MAX_BATCH + 10 {
            assert!(outbox.push(frame(1)));
        }
        let mut batch = Vec::new();
        rx.ready().await;
        rx.take(MAX_BATCH, usize::MAX, &mut batch);
        assert_eq!(batch.len(), MAX_BATCH, "one batch at most");
        assert_eq!(outbox.queued_bytes(), 10);
        // Pushes wake the socket only into an empty queue: the rest must wake it by itself.
        tokio::time::timeout(Duration::from_secs(5), rx.ready())
            .await
            .expect("the socket is woken for the frames left");
        batch.clear();
        rx.take(MAX_BATCH, usize::MAX, &mut batch);
        assert_eq!(batch.len(), 10);
        assert_eq!(outbox.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn a_queue_keeps_its_room_between_bursts_and_gives_it_back_when_trimmed() {
        let (outbox, mut rx) = Outbox::new(10_000, CloseCounters::default());
        let capacity = || outbox.queue.lock().unwrap().frames.capacity();
        let mut batch = Vec::new();
        for _ in 0..2 {
            for _ in 0..4 * KEEP_FRAMES {
                assert!(outbox.push(frame(1)));
            }
            while outbox.queued_bytes() > 0 {
                batch.clear();
                rx.take(MAX_BATCH, usize::MAX, &mut batch);
            }
            assert!(capacity() >= 4 * KEEP_FRAMES, "kept for the next burst");
        }
        outbox.push(frame(1));
        outbox.trim();
        assert!(
            capacity() >= 4 * KEEP_FRAMES,
            "a queue holding frames is not trimmed"
        );
        batch.clear();
        rx.take(MAX_BATCH, usize::MAX, &mut batch);
        outbox.trim();
        assert!(
            capacity() <= 2 * KEEP_FRAMES,
            "trimmed once empty: {}",
            capacity()
        );
    }

    #[test]
    fn a_batch_holds_its_byte_bound_and_one_frame_past_it_waits() {
        let (outbox, mut rx) = Outbox::new(100, CloseCounters::default());
        for len in [400, 600, 1] {
            assert!(outbox.push(frame(len)));
        }
        let mut batch = Vec::new();
        rx.take(MAX_BATCH, 1000, &mut batch);
        assert_eq!(batch.len(), 2, "exactly the byte bound is taken");
        assert_eq!(
            outbox.queued_bytes(),
            1,
            "the frame past it stays queued, counted"
        );
        batch.clear();
        assert!(outbox.push(frame(5000)));
        rx.take(MAX_BATCH, 1000, &mut batch);
        assert_eq!(
            batch.len(),
            1,
            "the small frame, not the large one behind it"
        );
        batch.clear();
        rx.take(MAX_BATCH, 1000, &mut batch);
        assert_eq!(
            batch[0].len(),
            5000,
            "a frame larger than the bound goes alone"
        );
    }

    #[test]
    fn nothing_is_queued_once_the_socket_is_gone() {
        let (outbox, rx) = Outbox::new(8, CloseCounters::default());
        assert!(outbox.push(frame(3)));
        drop(rx);
        assert!(!outbox.push(frame(3)));
        assert_eq!(
            outbox.queued_bytes(),
            0,
            "what was queued went with the socket"
        );
        assert!(
            !outbox.is_closing(),
            "a socket that is gone is not closed as slow"
        );
    }

    #[test]
    fn the_frame_bound_still_holds() {
        let (outbox, _rx) = Outbox::bounded(2, usize::MAX, CloseCounters::default());
        assert!(outbox.push(frame(1)));
        assert!(outbox.push(frame(1)));
        assert!(!outbox.push(frame(1)));
        assert!(outbox.close_reason().unwrap().reason.contains("2 frames"));
        assert_eq!(outbox.queued_bytes(), 2, "a refused frame is not counted");
    }
}
