//! The fan-out hub: who is subscribed to which group or item, delivery to them, and each
//! group's offsets and recent history (see `history`).
//!
//! It knows nothing of storage: the engine hands it events after they are stored, each item's
//! in the order its writes were applied (`order`). Each event is encoded once; each socket gets
//! it once, however many of its subscriptions match.
//!
//! A group's offset is assigned, its history appended and its subscribers served under the
//! group's own lock, so the subscribers receive the offsets in order and a join sees a
//! consistent point: what was published before it has an offset at or below the one it reads,
//! and what is published after goes to it. Groups do not wait on each other.
//!
//! A new subscription is held until its snapshot has been read and its `sync` queued
//! (`release`). Its `sync` carries the offset read as it subscribed: every event at or below
//! it was stored before the snapshot was read (events are published after their write), and
//! every later one was held for it, so it follows the `sync`. A join that resumes from an
//! offset the history still covers is served from the history under the same lock, and then
//! live, with no snapshot at all.
//!
//! When the bus numbers events itself (Redis: `storage::redis::history`), this node's own
//! events are delivered as the bus hands them back numbered (`publish_at`), in the order every
//! node hears them. The history kept here is then this node's copy of the bus's, as heard (a
//! gap in what it heard clears it): a join it covers is answered from it, as above, and any
//! other from the bus's shared history (`sockets::client`), so a reconnect storm does not
//! become one round trip to the bus per client.

use crate::fanout::frame::{Position, StreamEvent, mark_recovered};
use crate::fanout::history::{Bounds, Log};
use crate::fanout::mirror::Mirror;
use crate::fanout::outbox::Outbox;
use crate::fanout::presence::{self, PresenceRules, Roster};
use crate::metrics::FanoutCounters;
use crate::storage::{EventBus, SharedPresence};

#[path = "hub_presence.rs"]
mod hub_presence;
use axum::extract::ws::Utf8Bytes;
use hub_presence::tell;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

pub type ConnId = u64;

/// How often idle groups are looked for, at most (a shorter ttl looks more often).
const SWEEP_EVERY: Duration = Duration::from_secs(10);

struct Subscriber {
    outbox: Arc<Outbox>,
    /// (subscription id, item id or None for the whole group)
    subs: Vec<(String, Option<String>)>,
    /// Frames held while a new subscription's snapshot is read; None when not holding.
    held: Option<Held>,
    /// For a subscription whose first frames (a recovery from the shared history, a `sync`)
    /// covered the group up to a position, that position: a live event at or before it is one
    /// they gave already, which a node whose bus lags behind the shared history delivers late.
    /// Dropped once a later event of its run has gone.
    floors: Vec<(String, Position)>,
}

/// What a socket holds back while a new subscription's snapshot is read (see
/// [`Hub::subscribe`]), or a resynchronised one's (see [`Hub::hold`]). The first frames may
/// cover some of it, but only for the subscriptions they are for: another of the socket goes
/// on getting every event it wants. A join and a resynchronisation may hold the socket at
/// once (a socket joins one subscription at a time, and one resynchronisation runs at a
/// time): each releases its own, and the frames go once neither holds them.
#[derive(Default)]
struct Held {
    /// The subscriptions of a join whose first frames are not queued yet.
    joining: Vec<String>,
    /// The subscriptions of a resynchronisation whose `sync` is not queued yet.
    resyncing: Vec<String>,
    frames: Vec<HeldFrame>,
}

struct HeldFrame {
    /// None for a frame outside the group's history (presence), which nothing covers.
    at: Option<Position>,
    frame: Utf8Bytes,
    /// The item of the event it carries: a frame another subscription wants goes whatever
    /// the first frames cover.
    item: Option<String>,
}

/// Queues frames in order, as long as the socket's queue takes them.
fn push_all(outbox: &Outbox, frames: Vec<Utf8Bytes>) -> bool {
    frames.into_iter().all(|f| outbox.push(f))
}

/// Whether a subscription to `want` (an item, or None for the whole group) wants an event
/// of item `id`.
fn matches(want: &Option<String>, id: Option<&str>) -> bool {
    want.as_deref().is_none_or(|want| id == Some(want))
}

impl Subscriber {
    /// Queues a frame, or holds it; `at` is None for a frame outside the group's history, and
    /// `item` the item of the event it carries.
    fn deliver(&mut self, frame: Utf8Bytes, at: Option<&Position>, item: Option<&str>) -> bool {
        let Subscriber { outbox, held, .. } = self;
        match held {
            Some(held) if held.frames.len() >= outbox.capacity() => outbox.overflowed(),
            Some(held) => {
                held.frames.push(HeldFrame {
                    at: at.cloned(),
                    frame,
                    item: item.map(str::to_owned),
                });
                true
            }
            None => outbox.push(frame),
        }
    }

    fn wants(&self, id: Option<&str>) -> bool {
        self.subs.iter().any(|(_, want)| matches(want, id))
    }

    /// Whether a subscription wants the live event at `at`: one whose first frames did not
    /// cover it already.
    fn wants_at(&mut self, id: Option<&str>, at: &Position) -> bool {
        if self.floors.is_empty() {
            return self.wants(id);
        }
        let Subscriber { subs, floors, .. } = self;
        let wanted = subs.iter().any(|(sub, want)| {
            matches(want, id)
                && !floors
                    .iter()
                    .any(|(floored, floor)| floored == sub && at.at_or_before(floor))
        });
        // A floor the event is past (in its run) has nothing left to cover.
        floors.retain(|(_, floor)| !floor.at_or_before(at) || at.at_or_before(floor));
        wanted
    }

    fn forget(&mut self, sub_id: &str) {
        self.subs.retain(|(id, _)| id != sub_id);
        self.floors.retain(|(id, _)| id != sub_id);
    }
}

/// One group: its subscribers, its offset and its recent events.
struct Group {
    epoch: Arc<str>,
    offset: u64,
    log: Log,
    subs: HashMap<ConnId, Subscriber>,
    /// Who is here, on a stream that keeps presence (see `presence`).
    roster: Roster,
    /// The same, when the nodes share rosters (see `mirror`).
    mirror: Mirror,
    /// The last event or subscription change, for dropping idle groups.
    active: Instant,
    /// The position is the bus's (shared by every node), not one this hub numbered.
    shared: bool,
    /// When a socket of this node last joined or left the group.
    watched: Option<Instant>,
}

impl Group {
    fn position(&self) -> Position {
        Position {
            offset: self.offset,
            epoch: self.epoch.clone(),
        }
    }

    /// Whether a socket of this node is subscribed, or was within `ttl`.
    fn served_within(&self, ttl: Duration) -> bool {
        !self.subs.is_empty() || self.watched.is_some_and(|at| at.elapsed() < ttl)
    }

    /// Nothing here is worth keeping: no subscriber, and no offset a client may resume from.
    fn forgettable(&self, bounds: Bounds, now: Instant) -> bool {
        self.subs.is_empty()
            && !self.mirror.in_use()
            && (self.offset == 0
                || bounds.size == 0
                || now.duration_since(self.active) >= bounds.ttl)
    }
}

type Groups = HashMap<String, HashMap<String, Mutex<Group>>>;

/// What the sweeper shares with the hub.
struct Shared {
    groups: RwLock<Groups>,
    size: AtomicU64,
    ttl_ms: AtomicU64,
    /// Names this hub's epochs: random per process, so a restarted engine never reuses one.
    epoch_prefix: String,
    /// Counts group epochs: a group dropped and started again gets a new one.
    epochs: AtomicU64,
}

impl Shared {
    fn bounds(&self) -> Bounds {
        Bounds {
            size: self.size.load(Ordering::Relaxed) as usize,
            ttl: Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed)),
        }
    }

    /// Whether this hub named `epoch` (and not a bus).
    fn made_epoch(&self, epoch: &str) -> bool {
        epoch
            .strip_prefix(self.epoch_prefix.as_str())
            .is_some_and(|rest| rest.starts_with('-'))
    }

    fn new_group(&self) -> Mutex<Group> {
        let n = self.epochs.fetch_add(1, Ordering::Relaxed) + 1;
        Mutex::new(Group {
            epoch: format!("{}-{n}", self.epoch_prefix).into(),
            offset: 0,
            log: Log::default(),
            subs: HashMap::new(),
            roster: Roster::default(),
            mirror: Mirror::default(),
            active: Instant::now(),
            shared: false,
            watched: None,
        })
    }

    /// Runs `f` on the group, made if it does not exist yet.
    fn with_group<T>(&self, stream: &str, group: &str, f: impl FnOnce(&mut Group) -> T) -> T {
        {
            let groups = self.groups.read().unwrap();
            if let Some(g) = groups.get(stream).and_then(|g| g.get(group)) {
                return f(&mut g.lock().unwrap());
            }
        }
        let mut groups = self.groups.write().unwrap();
        let g = groups
            .entry(stream.to_owned())
            .or_default()
            .entry(group.to_owned())
            .or_insert_with(|| self.new_group());
        f(g.get_mut().unwrap())
    }

    /// Drops expired events, and the groups with nothing left worth keeping.
    fn sweep(&self) {
        let bounds = self.bounds();
        let now = Instant::now();
        let mut groups = self.groups.write().unwrap();
        groups.retain(|_, by_group| {
            by_group.retain(|_, g| {
                let g = g.get_mut().unwrap();
                g.log.expire(bounds.ttl, now);
                !g.forgettable(bounds, now)
            });
            !by_group.is_empty()
        });
    }
}

/// How a join was answered (see [`Hub::subscribe`]).
pub enum Joined {
    /// Served from the history: the marker and the missed events are queued, then live events.
    Recovered,
    /// Held at this position until `release` queues its `sync`.
    Held(Position),
}

pub struct Hub {
    shared: Arc<Shared>,
    next_conn: AtomicU64,
    counters: FanoutCounters,
    sweeper: Option<tokio::task::JoinHandle<()>>,
    presence: RwLock<PresenceRules>,
    /// The bus that numbers events, when it does (see the module comment).
    numbering: OnceLock<Arc<dyn EventBus>>,
    /// Where rosters live when the nodes share them (see `mirror`).
    sharing: OnceLock<Arc<dyn SharedPresence>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new(FanoutCounters::default())
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(sweeper) = &self.sweeper {
            sweeper.abort();
        }
    }
}

impl Hub {
    /// A hub that counts what it publishes and delivers into `counters`, with the default
    /// history bounds. Within a tokio runtime it drops idle groups' history in the background.
    pub fn new(counters: FanoutCounters) -> Self {
        let bounds = Bounds::default();
        let shared = Arc::new(Shared {
            groups: RwLock::default(),
            size: AtomicU64::new(bounds.size as u64),
            ttl_ms: AtomicU64::new(bounds.ttl.as_millis() as u64),
            epoch_prefix: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
            epochs: AtomicU64::new(0),
        });
        let sweeper = tokio::runtime::Handle::try_current()
            .ok()
            .map(|rt| rt.spawn(sweep_loop(Arc::downgrade(&shared))));
        Hub {
            shared,
            next_conn: AtomicU64::new(0),
            counters,
            sweeper,
            presence: RwLock::default(),
            numbering: OnceLock::new(),
            sharing: OnceLock::new(),
        }
    }

    /// Lets `bus` number this hub's events when it keeps a shared history: from now on
    /// `publish` delivers nothing itself, and the history bounds are the bus's too.
    /// A bus that shares presence rosters keeps them from now on (see `mirror`).
    pub fn number_with(&self, bus: Arc<dyn EventBus>) {
        if let Some(presence) = bus.shared_presence() {
            let _ = self.sharing.set(presence);
        }
        if bus.shared_history().is_some() {
            bus.set_history(self.history());
            let _ = self.numbering.set(bus);
        }
    }

    /// Sets the history bounds of every group, from the next event on.
    pub fn set_history(&self, bounds: Bounds) {
        self.shared
            .size
            .store(bounds.size as u64, Ordering::Relaxed);
        self.shared
            .ttl_ms
            .store(bounds.ttl.as_millis() as u64, Ordering::Relaxed);
        if let Some(bus) = self.numbering.get() {
            bus.set_history(bounds);
        }
    }

    pub fn history(&self) -> Bounds {
        self.shared.bounds()
    }

    /// Forgets every group's history and starts each in a new epoch, after events may have
    /// been missed (the bus lost some): a client must not recover from a log with holes.
    pub fn history_lost(&self) {
        let groups = self.shared.groups.read().unwrap();
        for g in groups.values().flat_map(|g| g.values()) {
            let fresh = self.shared.new_group().into_inner().unwrap();
            let mut g = g.lock().unwrap();
            g.log.clear();
            g.offset = 0;
            g.epoch = fresh.epoch;
            g.shared = false;
        }
    }

    /// Drops expired history and idle groups now (the background sweep does it too).
    pub fn sweep(&self) {
        self.shared.sweep();
    }

    /// Groups with state (subscribers, or history to resume from), for tests and metrics.
    pub fn group_count(&self) -> usize {
        let groups = self.shared.groups.read().unwrap();
        groups.values().map(HashMap::len).sum()
    }

    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Adds (or replaces, by subscription id) a subscription of one socket. With `resume`, a
    /// position the group's history still covers, it queues the `recovered` marker and the
    /// events after that position at once; otherwise the subscription is held until
    /// [`Hub::release`] and the returned position is what its `sync` must carry.
    #[allow(clippy::too_many_arguments)]
    pub fn subscribe(
        &self,
        stream: &str,
        group: &str,
        conn: ConnId,
        outbox: &Arc<Outbox>,
        sub_id: &str,
        item: Option<&str>,
        resume: Option<&Position>,
    ) -> Joined {
        let bounds = self.shared.bounds();
        self.shared.with_group(stream, group, |g| {
            g.active = Instant::now();
            g.watched = Some(g.active);
            let recovered = resume.filter(|from| from.epoch == g.epoch && bounds.size > 0);
            let missed = recovered.and_then(|from| {
                g.log.expire(bounds.ttl, Instant::now());
                let missed: Vec<&Utf8Bytes> = g
                    .log
                    .since(from.offset, g.offset)?
                    .filter(|e| item.is_none() || e.item.as_deref() == item)
                    .map(|e| &e.frame)
                    .collect();
                Some(missed)
            });
            if let (Some(from), Some(missed)) = (resume, &missed) {
                let marker = StreamEvent::recovered_marker(stream, group, item, from, missed.len());
                let mut ok = outbox.push(Utf8Bytes::from(marker));
                for frame in missed {
                    ok = ok && outbox.push(Utf8Bytes::from(mark_recovered(frame)));
                }
                if !ok {
                    tracing::debug!(stream, group, "a recovering client's queue overflowed");
                }
            }
            let holding = missed.is_none();
            let sub = g.subs.entry(conn).or_insert_with(|| Subscriber {
                outbox: outbox.clone(),
                subs: Vec::new(),
                held: None,
                floors: Vec::new(),
            });
            sub.forget(sub_id);
            sub.subs.push((sub_id.to_owned(), item.map(str::to_owned)));
            if holding {
                let held = sub.held.get_or_insert_with(Held::default);
                held.joining.push(sub_id.to_owned());
                Joined::Held(g.position())
            } else {
                Joined::Recovered
            }
        })
    }

    /// Queues `first` (the new subscription's `sync`, or an error) for the socket, then what
    /// was held back for it since `subscribe`.
    pub fn release(
        &self,
        stream: &str,
        group: &str,
        conn: ConnId,
        outbox: &Outbox,
        first: Utf8Bytes,
    ) {
        self.release_after(stream, group, conn, outbox, vec![first], None);
    }

    /// As `release`, with several first frames, and without the held frames the first
    /// frames already cover: those at or below `after` in its epoch (or an older generation
    /// of it, which a lagging node may still hold: `Position::at_or_before`), and, from
    /// another epoch, copies of an event among the first frames. (An event this node
    /// delivered in an epoch of its own, because the bus's numbering of it timed out, may
    /// still have been numbered by the bus, and so be in a shared history's recovery too.)
    /// A covered frame that another subscription of the socket wants still goes: that one
    /// has no `sync` covering it, and a repeat is better than a loss.
    pub fn release_after(
        &self,
        stream: &str,
        group: &str,
        conn: ConnId,
        outbox: &Outbox,
        first: Vec<Utf8Bytes>,
        after: Option<&Position>,
    ) {
        let groups = self.shared.groups.read().unwrap();
        let Some(g) = groups.get(stream).and_then(|g| g.get(group)) else {
            push_all(outbox, first);
            return;
        };
        let mut g = g.lock().unwrap();
        let Some(sub) = g.subs.get_mut(&conn) else {
            push_all(outbox, first);
            return;
        };
        self.unhold(sub, first, after, false);
    }

    /// Holds the group's frames for every socket subscribed to `item` (None: the whole
    /// group) while a resynchronisation reads its snapshot, as a join's are (see
    /// [`Hub::subscribe`]); returns the position its `sync` must carry and the sockets held,
    /// or None when there are none. A socket another resynchronisation holds is left out.
    pub fn hold(
        &self,
        stream: &str,
        group: &str,
        item: Option<&str>,
    ) -> Option<(Position, Vec<ConnId>)> {
        let groups = self.shared.groups.read().unwrap();
        let mut g = groups
            .get(stream)
            .and_then(|g| g.get(group))?
            .lock()
            .unwrap();
        let mut conns = Vec::new();
        for (conn, sub) in &mut g.subs {
            let ids: Vec<String> = sub
                .subs
                .iter()
                .filter(|(_, want)| want.as_deref() == item)
                .map(|(id, _)| id.clone())
                .collect();
            if ids.is_empty() || sub.held.as_ref().is_some_and(|h| !h.resyncing.is_empty()) {
                continue;
            }
            sub.held.get_or_insert_with(Held::default).resyncing = ids;
            conns.push(*conn);
        }
        (!conns.is_empty()).then(|| (g.position(), conns))
    }

    /// Ends a [`Hub::hold`] of `conns`: queues `sync` for each still subscribed to `item`,
    /// then what was held for it, without what the `sync` covers (as `release_after`). With
    /// no `sync` (the snapshot could not be read) the held frames go all the same.
    pub fn release_held(
        &self,
        stream: &str,
        group: &str,
        item: Option<&str>,
        conns: &[ConnId],
        sync: Option<(Utf8Bytes, &Position)>,
    ) {
        let groups = self.shared.groups.read().unwrap();
        let Some(g) = groups.get(stream).and_then(|g| g.get(group)) else {
            return;
        };
        let mut g = g.lock().unwrap();
        for conn in conns {
            // A socket that left since is not held any more, nor one that left and joined
            // again (its hold is its join's).
            let Some(sub) = g.subs.get_mut(conn) else {
                continue;
            };
            let Some(held) = sub.held.as_ref().filter(|h| !h.resyncing.is_empty()) else {
                continue;
            };
            let still = sub
                .subs
                .iter()
                .any(|(id, want)| held.resyncing.contains(id) && want.as_deref() == item);
            match &sync {
                Some((frame, at)) if still => self.unhold(sub, vec![frame.clone()], Some(at), true),
                _ => self.unhold(sub, Vec::new(), None, true),
            }
        }
    }

    /// Queues `first` for the socket, and ends the hold of the join (or with `resync`, the
    /// resynchronisation) that sent it: the held frames `first` covers are dropped (see
    /// `release_after`), and the rest go once nothing else holds them.
    fn unhold(
        &self,
        sub: &mut Subscriber,
        first: Vec<Utf8Bytes>,
        after: Option<&Position>,
        resync: bool,
    ) {
        let Subscriber {
            outbox,
            subs,
            held,
            floors,
        } = sub;
        let Some(h) = held else {
            push_all(outbox, first);
            return;
        };
        let done = std::mem::take(if resync {
            &mut h.resyncing
        } else {
            &mut h.joining
        });
        if let Some(after) = after {
            floors.retain(|(id, _)| !done.contains(id));
            let covered = done
                .iter()
                .filter(|id| subs.iter().any(|(sub, _)| sub == *id));
            floors.extend(covered.map(|id| (id.clone(), after.clone())));
        }
        let frames = std::mem::take(&mut h.frames);
        // What another subscription wants goes, even one the other hold waits on.
        let wanted = |item: Option<&str>| {
            subs.iter().any(|(id, want)| {
                (!done.contains(id) || h.joining.contains(id) || h.resyncing.contains(id))
                    && matches(want, item)
            })
        };
        // A presence frame (no position) is never covered by a snapshot of items.
        let covered = |at: &Option<Position>| {
            at.as_ref()
                .zip(after)
                .is_some_and(|(at, p)| at.at_or_before(p))
        };
        // Only an epoch of this hub's own can hold a copy of an event the bus numbered.
        let own = |at: &Option<Position>| {
            at.as_ref()
                .zip(after)
                .is_some_and(|(at, p)| p.epoch != at.epoch && self.shared.made_epoch(&at.epoch))
        };
        // Counted, so that two identical events sent are two.
        let mut copies: HashMap<u64, usize> = HashMap::new();
        if frames.iter().any(|f| own(&f.at)) {
            // The first frame is a `sync` or a `recovered` marker, never an event sent.
            for f in first
                .iter()
                .skip(1)
                .filter_map(|f| StreamEvent::fingerprint_of(f))
            {
                *copies.entry(f).or_default() += 1;
            }
        }
        let mut copy = |frame: &str| {
            if copies.is_empty() {
                return false;
            }
            match StreamEvent::fingerprint_of(frame).and_then(|f| copies.get_mut(&f)) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    true
                }
                _ => false,
            }
        };
        let kept = frames.into_iter().filter(|f| {
            wanted(f.item.as_deref()) || !(covered(&f.at) || (own(&f.at) && copy(&f.frame)))
        });
        // A resynchronising `sync` goes after the first frames of a join still held: they
        // may come from an older snapshot (read before the gap), which would undo it.
        if resync && !h.joining.is_empty() {
            let first = first.into_iter().map(|frame| HeldFrame {
                at: None,
                frame,
                item: None,
            });
            h.frames = first.chain(kept).collect();
            return;
        }
        let kept: Vec<HeldFrame> = kept.collect();
        let pushed = push_all(outbox, first);
        if !h.joining.is_empty() || !h.resyncing.is_empty() {
            h.frames = kept;
            return;
        }
        *held = None;
        if pushed {
            for HeldFrame { frame, .. } in kept {
                if !outbox.push(frame) {
                    break;
                }
            }
        }
    }

    /// Removes one subscription. A group left with no subscriber keeps its offset and
    /// history until it has been idle past the ttl, unless there is nothing to keep.
    pub fn unsubscribe(&self, stream: &str, group: &str, conn: ConnId, sub_id: &str) {
        let bounds = self.shared.bounds();
        let mut groups = self.shared.groups.write().unwrap();
        let Some(by_group) = groups.get_mut(stream) else {
            return;
        };
        let Some(g) = by_group.get_mut(group) else {
            return;
        };
        let g = g.get_mut().unwrap();
        let mut sent = 0;
        if let Some(sub) = g.subs.get_mut(&conn) {
            sub.forget(sub_id);
            g.roster.watch(conn, sub_id, false);
            g.mirror.watch(conn, sub_id, false, 0);
            if sub.subs.is_empty() {
                g.subs.remove(&conn);
                // Never refused and never dropped (a leave unsent would leave a ghost in the
                // others' lists): the member's join paid for it.
                let max = self.presence.read().unwrap().max_members;
                for (action, member) in g.roster.leave(conn, max) {
                    let data = presence::change_data(action, &member);
                    sent += tell(g, &presence::frame(stream, group, &data));
                }
                // Over shared rosters, every node hears of the leave and tells its watchers.
                if let (Some(client), Some(shared)) =
                    (g.mirror.remove_member(conn), self.sharing.get())
                {
                    shared.leave(stream, group, &client, max);
                }
                g.mirror.idle_if_unused();
            }
        }
        self.presence_sent(sent);
        g.active = Instant::now();
        g.watched = Some(g.active);
        if g.forgettable(bounds, Instant::now()) {
            by_group.remove(group);
            if by_group.is_empty() {
                groups.remove(stream);
            }
        }
    }

    /// Gives an event the group's next offset, keeps it in the group's history, and delivers
    /// it to every socket subscribed to its group (or to its item). Returns how many sockets
    /// it was queued for.
    ///
    /// When a bus numbers events (`number_with`), it hands this node's own events back
    /// numbered, and this delivers nothing.
    pub fn publish(&self, event: &StreamEvent) -> usize {
        if self.numbering.get().is_some() {
            return 0;
        }
        self.publish_local(event)
    }

    /// Numbers and delivers an event here, even when a bus numbers the others: an iii node's,
    /// or one the bus could not number. A group whose offsets were the bus's starts an epoch
    /// of this hub's own, which no shared history knows, so no client recovers across it.
    pub fn publish_local(&self, event: &StreamEvent) -> usize {
        let fresh = || self.shared.new_group().into_inner().unwrap().epoch;
        self.deliver(event, |g| {
            if g.shared {
                g.shared = false;
                g.epoch = fresh();
                g.offset = 0;
                g.log.clear();
            }
            g.offset += 1;
            Some(g.position())
        })
    }

    /// Delivers an event the bus numbered, at its position. One at or below what the group
    /// already delivered in that epoch is skipped.
    pub fn publish_at(&self, event: &StreamEvent, at: &Position) -> usize {
        self.deliver(event, |g| {
            if g.shared && g.epoch == at.epoch && at.offset <= g.offset {
                return None;
            }
            if !g.shared || g.epoch != at.epoch || at.offset != g.offset + 1 {
                g.log.clear();
            }
            g.shared = true;
            g.epoch = at.epoch.clone();
            g.offset = at.offset;
            Some(at.clone())
        })
    }

    /// Notes that the bus numbered an event at `at` which this node delivered before, in an
    /// epoch of its own (`BusMessage::Skipped`). The copy of the history kept here lacks it,
    /// so it is cleared, and a join from before `at` asks the bus.
    pub fn skipped_at(&self, stream: &str, group: &str, at: &Position) {
        let groups = self.shared.groups.read().unwrap();
        let Some(g) = groups.get(stream).and_then(|g| g.get(group)) else {
            return;
        };
        let mut g = g.lock().unwrap();
        if g.shared {
            g.log.clear();
            if g.epoch == at.epoch && at.offset > g.offset {
                g.offset = at.offset;
            }
        }
    }

    /// Places the event with `place` (None skips it), keeps it in the history and queues it
    /// for the group's subscribers, all under the group's lock.
    fn deliver(
        &self,
        event: &StreamEvent,
        place: impl FnOnce(&mut Group) -> Option<Position>,
    ) -> usize {
        self.counters.published.inc();
        let bounds = self.shared.bounds();
        let n = self
            .shared
            .with_group(&event.stream_name, &event.group_id, |g| {
                let Some(at) = place(g) else { return 0 };
                g.active = Instant::now();
                // Only a socket that joined the group in this epoch can hold a position to
                // resume from, so history is kept from the first join on. With a bus's shared
                // history, this node's copy of it, as heard, answers the joins whose gap it
                // covers without asking the bus: kept only for groups this node serves (or did
                // within the ttl), as every node hears every group, and one skipped event
                // makes a hole, so the copy then starts again.
                let keep = match self.numbering.get() {
                    None => g.watched.is_some(),
                    Some(_) => g.served_within(bounds.ttl),
                };
                let item = event.id.as_deref();
                if !keep {
                    g.log.clear();
                    if !g.subs.values().any(|s| s.wants(item)) {
                        // Nobody can receive it, now or by resuming: no frame is made.
                        return 0;
                    }
                }
                let frame = Utf8Bytes::from(event.encode_at(&at, None));
                if keep {
                    g.log.push(at.offset, item, frame.clone(), bounds);
                }
                let mut n = 0;
                for sub in g.subs.values_mut() {
                    if sub.wants_at(item, &at) && sub.deliver(frame.clone(), Some(&at), item) {
                        n += 1;
                    }
                }
                n
            });
        self.counters.delivered.inc_by(n as u64);
        self.counters.tenant_delivered.inc_by(n as u64);
        n
    }

    /// The group's current position. (A resynchronisation reads it as it holds the group's
    /// sockets: `hold`.)
    #[cfg(test)]
    pub fn position(&self, stream: &str, group: &str) -> Position {
        self.shared.with_group(stream, group, |g| g.position())
    }

    /// How many sockets an event for `group` (and `item`) would be queued for now: what a
    /// write is charged against its tenant's `deliveries_per_second` before it is made.
    pub fn audience(&self, stream: &str, group: &str, item: Option<&str>) -> usize {
        let groups = self.shared.groups.read().unwrap();
        groups
            .get(stream)
            .and_then(|g| g.get(group))
            .map_or(0, |g| {
                g.lock()
                    .unwrap()
                    .subs
                    .values()
                    .filter(|s| s.wants(item))
                    .count()
            })
    }

    /// Every target some socket subscribes to, once each, as (stream, group, item or None for
    /// the whole group): what a resynchronisation reads a snapshot of.
    pub fn subscribed_targets(&self) -> BTreeSet<(String, String, Option<String>)> {
        let groups = self.shared.groups.read().unwrap();
        let mut out = BTreeSet::new();
        for (stream, by_group) in groups.iter() {
            for (group, g) in by_group {
                for sub in g.lock().unwrap().subs.values() {
                    for (_, item) in &sub.subs {
                        out.insert((stream.clone(), group.clone(), item.clone()));
                    }
                }
            }
        }
        out
    }

    /// Subscriptions held, for metrics and tests.
    pub fn subscription_count(&self) -> usize {
        let groups = self.shared.groups.read().unwrap();
        groups
            .values()
            .flat_map(|g| g.values())
            .map(|g| {
                g.lock()
                    .unwrap()
                    .subs
                    .values()
                    .map(|s| s.subs.len())
                    .sum::<usize>()
            })
            .sum()
    }
}

/// Sweeps the hub's groups every ttl (at most every `SWEEP_EVERY`) until the hub is dropped.
async fn sweep_loop(shared: Weak<Shared>) {
    loop {
        let every = match shared.upgrade() {
            Some(shared) => shared.bounds().ttl.min(SWEEP_EVERY),
            None => return,
        };
        tokio::time::sleep(every.max(Duration::from_millis(10))).await;
        match shared.upgrade() {
            Some(shared) => shared.sweep(),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::frame::EventKind;
    use crate::metrics::CloseCounters;

    fn send(hub: &Hub, group: &str) {
        let event = StreamEvent::new("s", group, None, EventKind::Update(1.into()));
        hub.publish(&event);
    }

    #[test]
    fn an_idle_group_is_dropped_after_its_ttl_and_starts_again_in_a_new_epoch() {
        let hub = Hub::default();
        send(&hub, "g");
        send(&hub, "g");
        let before = hub.position("s", "g");
        assert_eq!(before.offset, 2);
        hub.sweep();
        assert_eq!(hub.group_count(), 1, "within its ttl the group is kept");

        hub.set_history(Bounds {
            size: 10,
            ttl: Duration::ZERO,
        });
        hub.sweep();
        assert_eq!(hub.group_count(), 0, "idle past its ttl, it is dropped");
        send(&hub, "g");
        let after = hub.position("s", "g");
        assert_eq!(after.offset, 1);
        assert_ne!(after.epoch, before.epoch, "offsets restarted: a new epoch");
    }

    #[test]
    fn a_group_with_a_subscriber_is_kept_and_one_without_offsets_is_not() {
        let hub = Hub::default();
        hub.set_history(Bounds {
            size: 10,
            ttl: Duration::ZERO,
        });
        let (outbox, _rx) = Outbox::new(8, CloseCounters::default());
        let Joined::Held(at) = hub.subscribe("s", "g", 1, &outbox, "a", None, None) else {
            panic!("a join without a position is held");
        };
        assert_eq!(at.offset, 0);
        send(&hub, "g");
        hub.sweep();
        assert_eq!(hub.group_count(), 1);
        hub.unsubscribe("s", "g", 1, "a");
        assert_eq!(hub.group_count(), 0);
        // Joined and left with nothing sent: nothing to keep.
        let _ = hub.subscribe("s", "h", 1, &outbox, "a", None, None);
        hub.set_history(Bounds::default());
        hub.unsubscribe("s", "h", 1, "a");
        assert_eq!(hub.group_count(), 0);
    }

    /// Over a bus that numbers events: positions are the bus's, a frame heard twice goes once,
    /// a join's release skips what its first frames cover, and an event numbered here starts
    /// an epoch of this hub's own.
    #[test]
    fn numbered_events_keep_the_bus_positions() {
        let hub = Hub::default();
        let (outbox, mut rx) = Outbox::new(8, CloseCounters::default());
        let _ = hub.subscribe("s", "g", 1, &outbox, "a", None, None);
        let at = |offset| Position {
            offset,
            epoch: "bus".into(),
        };
        let event = StreamEvent::new("s", "g", None, EventKind::Update(1.into()));
        hub.publish_at(&event, &at(5));
        hub.publish_at(&event, &at(5));
        hub.publish_at(&event, &at(6));
        let sync = Utf8Bytes::from_static("sync");
        hub.release_after("s", "g", 1, &outbox, vec![sync], Some(&at(5)));
        let mut got = Vec::new();
        while let Some(frame) = rx.try_recv() {
            got.push(frame.to_string());
        }
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0], "sync");
        let frame: serde_json::Value = serde_json::from_str(&got[1]).unwrap();
        assert_eq!(
            (frame["offset"].as_u64(), frame["epoch"].as_str()),
            (Some(6), Some("bus"))
        );
        hub.publish_local(&event);
        let local = hub.position("s", "g");
        assert_eq!(local.offset, 1);
        assert_ne!(&*local.epoch, "bus");
    }

    /// A recovery from the shared history can run ahead of this node's bus: the events it gave
    /// come again, live, when the bus catches up. They go no more to the subscription it
    /// covered, but still to another subscription of the socket that it did not cover.
    /// (`drain` shows an event by its data, here its offset.)
    #[test]
    fn live_events_a_recovery_covered_go_only_where_it_did_not() {
        let hub = Hub::default();
        let at = |offset| Position {
            offset,
            epoch: "bus".into(),
        };
        let publish = |offset: i64| {
            let event = StreamEvent::new("s", "g", Some("x"), EventKind::Update(offset.into()));
            hub.publish_at(&event, &at(offset as u64));
        };
        let (outbox, mut rx) = Outbox::new(16, CloseCounters::default());
        let _ = hub.subscribe("s", "g", 1, &outbox, "a", None, None);
        let recovered = vec![Utf8Bytes::from_static("recovered up to 9")];
        hub.release_after("s", "g", 1, &outbox, recovered, Some(&at(9)));
        for offset in [6, 7, 9, 10, 11] {
            publish(offset);
        }
        assert_eq!(drain(&mut rx), ["recovered up to 9", "10", "11"]);

        // A socket with an older subscription, synced at 3, recovers a new one up to 9.
        let (outbox, mut rx) = Outbox::new(16, CloseCounters::default());
        let hub = Hub::default();
        let publish = |offset: i64| {
            let event = StreamEvent::new("s", "g", Some("x"), EventKind::Update(offset.into()));
            hub.publish_at(&event, &at(offset as u64));
        };
        let _ = hub.subscribe("s", "g", 2, &outbox, "a", None, None);
        hub.release_after("s", "g", 2, &outbox, vec!["sync".into()], Some(&at(3)));
        let _ = hub.subscribe("s", "g", 2, &outbox, "b", None, None);
        hub.release_after("s", "g", 2, &outbox, vec!["b".into()], Some(&at(9)));
        publish(6);
        assert_eq!(drain(&mut rx), ["sync", "b", "6"], "the older one wants 6");
        // Left, and joined again with no floor: it gets everything live.
        hub.unsubscribe("s", "g", 2, "a");
        publish(8);
        assert!(drain(&mut rx).is_empty(), "b's recovery gave 8");
        let _ = hub.subscribe("s", "g", 2, &outbox, "b", None, None);
        hub.release_after("s", "g", 2, &outbox, vec!["b again".into()], None);
        publish(9);
        assert_eq!(drain(&mut rx), ["b again", "9"]);
    }

    /// Held frames of this hub's own epoch that repeat an event of the recovery go no more
    /// often than they were sent.
    #[test]
    fn a_release_skips_held_copies_of_recovered_events_one_for_one() {
        let hub = Hub::default();
        hub.set_history(Bounds::default());
        let (outbox, mut rx) = Outbox::new(16, CloseCounters::default());
        let _ = hub.subscribe("s", "g", 1, &outbox, "a", None, None);
        let a = StreamEvent::new("s", "g", None, EventKind::Update(1.into()));
        let b = StreamEvent::new("s", "g", None, EventKind::Update(2.into()));
        for event in [&a, &a, &b] {
            hub.publish_local(event);
        }
        let bus = Position {
            offset: 9,
            epoch: "bus".into(),
        };
        let first = vec![
            Utf8Bytes::from_static("marker"),
            Utf8Bytes::from(mark_recovered(&a.encode_at(&bus, None))),
        ];
        hub.release_after("s", "g", 1, &outbox, first, Some(&bus));
        let mut got = Vec::new();
        while let Some(frame) = rx.try_recv() {
            got.push(StreamEvent::fingerprint_of(&frame));
        }
        let (a, b) = (Some(a.fingerprint()), Some(b.fingerprint()));
        assert_eq!(
            got,
            [None, a, a, b],
            "the marker, a recovered, then a once more and b"
        );
    }

    /// An event this node delivered in its own epoch, numbered by the bus later: its numbered
    /// copy is not delivered (`Skipped`), but no join may recover across its position from
    /// this node's copy, which lacks it.
    #[test]
    fn a_skipped_position_is_a_hole_no_join_recovers_across() {
        let hub = Hub::default();
        let (outbox, _rx) = Outbox::new(8, CloseCounters::default());
        let _ = hub.subscribe("s", "g", 1, &outbox, "a", None, None);
        let at = |offset| Position {
            offset,
            epoch: "bus".into(),
        };
        let x = StreamEvent::new("s", "g", None, EventKind::Update(1.into()));
        let y = StreamEvent::new("s", "g", None, EventKind::Update(2.into()));
        hub.publish_at(&y, &at(6));
        hub.publish_local(&x);
        hub.publish_at(&y, &at(7));
        hub.skipped_at("s", "g", &at(8));
        assert_eq!(hub.position("s", "g"), at(8));
        let from = at(7);
        let joined = hub.subscribe("s", "g", 2, &outbox, "b", None, Some(&from));
        assert!(
            matches!(joined, Joined::Held(_)),
            "recovered from 7 without the event at 8"
        );
    }

    fn drain(rx: &mut crate::fanout::outbox::Frames) -> Vec<String> {
        let mut got = Vec::new();
        while let Some(frame) = rx.try_recv() {
            let text = frame.to_string();
            let kind = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|f| Some(format!("{}", f["event"]["data"].as_i64()?)));
            got.push(kind.unwrap_or(text));
        }
        got
    }

    fn update(hub: &Hub, item: &str, n: i64) {
        let event = StreamEvent::new("s", "g", Some(item), EventKind::Update(n.into()));
        hub.publish(&event);
    }

    /// A second subscription joining on a socket: its `sync` covers what came before its
    /// snapshot for it alone. The socket's live subscription still gets every event it wants
    /// (after the `sync`, repeated for the new one); an event only the new one wants, and its
    /// `sync` covers, does not go twice.
    #[test]
    fn a_join_takes_no_event_from_the_sockets_live_subscription() {
        let hub = Hub::default();
        let (outbox, mut rx) = Outbox::new(32, CloseCounters::default());
        let sync = |name: &'static str| vec![Utf8Bytes::from_static(name)];
        let Joined::Held(at) = hub.subscribe("s", "g", 1, &outbox, "a", Some("x"), None) else {
            panic!("held");
        };
        hub.release_after("s", "g", 1, &outbox, sync("sync-a"), Some(&at));
        update(&hub, "x", 1);
        let _ = hub.subscribe("s", "g", 1, &outbox, "b", None, None);
        update(&hub, "x", 2);
        update(&hub, "y", 3);
        let covers = hub.position("s", "g");
        update(&hub, "y", 4);
        hub.release_after("s", "g", 1, &outbox, sync("sync-b"), Some(&covers));
        update(&hub, "x", 5);
        assert_eq!(
            drain(&mut rx),
            ["sync-a", "1", "sync-b", "2", "4", "5"],
            "x:2 goes for `a` though `b`'s sync covers it; y:3 only `b` wants, and it is covered"
        );
    }

    fn live(hub: &Hub, conn: ConnId, outbox: &Arc<Outbox>, sub: &str, item: Option<&str>) {
        let Joined::Held(at) = hub.subscribe("s", "g", conn, outbox, sub, item, None) else {
            panic!("held");
        };
        let sync = vec![Utf8Bytes::from_static("sync")];
        hub.release_after("s", "g", conn, outbox, sync, Some(&at));
    }

    /// A resynchronisation holds the sockets while it reads its snapshot: an event published
    /// meanwhile (stored too late for the snapshot) goes after the `sync`, not before it,
    /// where the older snapshot would undo it.
    #[test]
    fn a_resync_holds_what_is_published_while_it_reads() {
        let hub = Hub::default();
        let (outbox, mut rx) = Outbox::new(32, CloseCounters::default());
        live(&hub, 1, &outbox, "a", None);
        update(&hub, "x", 1);
        let (at, conns) = hub.hold("s", "g", None).expect("a socket subscribes");
        assert_eq!(conns, [1]);
        update(&hub, "x", 2);
        assert_eq!(drain(&mut rx), ["sync", "1"], "2 waits for the resync");
        let resync = Utf8Bytes::from_static("resync");
        hub.release_held("s", "g", None, &conns, Some((resync, &at)));
        update(&hub, "x", 3);
        assert_eq!(drain(&mut rx), ["resync", "2", "3"]);
    }

    /// A snapshot that cannot be read: the held events go all the same, without a `sync`.
    #[test]
    fn a_failed_resync_releases_what_it_held() {
        let hub = Hub::default();
        let (outbox, mut rx) = Outbox::new(32, CloseCounters::default());
        live(&hub, 1, &outbox, "a", Some("x"));
        let (_, conns) = hub.hold("s", "g", Some("x")).expect("a socket subscribes");
        assert!(
            hub.hold("s", "g", None).is_none(),
            "none subscribes to the group"
        );
        update(&hub, "x", 1);
        hub.release_held("s", "g", Some("x"), &conns, None);
        update(&hub, "x", 2);
        assert_eq!(drain(&mut rx), ["sync", "1", "2"]);
    }

    /// A socket joining when a resynchronisation holds it, or held by a join when one starts:
    /// each releases its own, the frames go once neither holds them, and the resynchronising
    /// `sync` never goes before the join's, whose snapshot may be older.
    #[test]
    fn a_resync_and_a_join_of_one_socket_release_their_own() {
        let hub = Hub::default();
        let (outbox, mut rx) = Outbox::new(32, CloseCounters::default());
        let resync = || Utf8Bytes::from_static("resync");
        let join_sync = || vec![Utf8Bytes::from_static("sync-b")];
        live(&hub, 1, &outbox, "a", Some("x"));
        // Joined first; the resynchronisation is released first.
        let Joined::Held(b) = hub.subscribe("s", "g", 1, &outbox, "b", None, None) else {
            panic!("held");
        };
        update(&hub, "x", 1);
        let (at, conns) = hub.hold("s", "g", Some("x")).expect("a socket subscribes");
        update(&hub, "x", 2);
        hub.release_held("s", "g", Some("x"), &conns, Some((resync(), &at)));
        assert_eq!(drain(&mut rx), ["sync"], "the join still holds the socket");
        hub.release_after("s", "g", 1, &outbox, join_sync(), Some(&b));
        assert_eq!(drain(&mut rx), ["sync-b", "resync", "1", "2"]);
        hub.unsubscribe("s", "g", 1, "b");

        // Held first; the join is released first.
        let (at, conns) = hub.hold("s", "g", Some("x")).expect("a socket subscribes");
        let Joined::Held(b) = hub.subscribe("s", "g", 1, &outbox, "b", None, None) else {
            panic!("held");
        };
        update(&hub, "x", 3);
        hub.release_after("s", "g", 1, &outbox, join_sync(), Some(&b));
        update(&hub, "x", 4);
        assert_eq!(
            drain(&mut rx),
            ["sync-b"],
            "the resynchronisation still holds"
        );
        hub.release_held("s", "g", Some("x"), &conns, Some((resync(), &at)));
        update(&hub, "x", 5);
        assert_eq!(drain(&mut rx), ["resync", "3", "4", "5"]);
    }

    /// A socket that left while it was held gets no `sync`, and is not subscribed again; one
    /// that left and joined again keeps its join's hold.
    #[test]
    fn a_resync_leaves_alone_the_sockets_that_left() {
        let hub = Hub::default();
        let (gone, mut gone_rx) = Outbox::new(32, CloseCounters::default());
        let (back, mut back_rx) = Outbox::new(32, CloseCounters::default());
        live(&hub, 1, &gone, "a", None);
        live(&hub, 2, &back, "a", None);
        assert_eq!(drain(&mut gone_rx), ["sync"]);
        assert_eq!(drain(&mut back_rx), ["sync"]);
        let (at, conns) = hub.hold("s", "g", None).expect("sockets subscribe");
        hub.unsubscribe("s", "g", 1, "a");
        hub.unsubscribe("s", "g", 2, "a");
        let Joined::Held(b) = hub.subscribe("s", "g", 2, &back, "a", None, None) else {
            panic!("held");
        };
        update(&hub, "x", 1);
        let resync = Utf8Bytes::from_static("resync");
        hub.release_held("s", "g", None, &conns, Some((resync, &at)));
        assert!(drain(&mut gone_rx).is_empty());
        assert!(drain(&mut back_rx).is_empty(), "its join still holds it");
        assert_eq!(hub.subscription_count(), 1);
        let sync = vec![Utf8Bytes::from_static("sync-b")];
        hub.release_after("s", "g", 2, &back, sync, Some(&b));
        assert_eq!(drain(&mut back_rx), ["sync-b", "1"]);
    }

    /// Events to a group that no socket has joined in its epoch make no frame and no
    /// history: no client can hold a position in it. From the first join on, history is kept
    /// for resuming, through times without subscribers.
    #[test]
    fn history_is_kept_from_a_groups_first_join() {
        let hub = Hub::default();
        send(&hub, "g");
        send(&hub, "g");
        let two = hub.position("s", "g");
        assert_eq!(two.offset, 2, "offsets count every event");
        let (outbox, mut rx) = Outbox::new(16, CloseCounters::default());
        let one = Position {
            offset: 1,
            epoch: two.epoch.clone(),
        };
        let joined = hub.subscribe("s", "g", 1, &outbox, "a", None, Some(&one));
        let Joined::Held(at) = joined else {
            panic!("recovered from history kept before any join");
        };
        assert_eq!(at, two);
        hub.unsubscribe("s", "g", 1, "a");
        send(&hub, "g");
        send(&hub, "g");
        let joined = hub.subscribe("s", "g", 2, &outbox, "b", None, Some(&two));
        assert!(matches!(joined, Joined::Recovered), "kept since the join");
        let got = drain(&mut rx);
        assert_eq!(got.len(), 3, "the marker and the two events: {got:?}");
    }

    #[test]
    fn lost_history_means_a_new_epoch_and_no_recovery() {
        let hub = Hub::default();
        send(&hub, "g");
        let from = hub.position("s", "g");
        send(&hub, "g");
        hub.history_lost();
        let (outbox, _rx) = Outbox::new(8, CloseCounters::default());
        let joined = hub.subscribe("s", "g", 1, &outbox, "a", None, Some(&from));
        let Joined::Held(at) = joined else {
            panic!("recovered from a lost history");
        };
        assert_ne!(at.epoch, from.epoch);
        assert_eq!(at.offset, 0);
    }

    /// A node that lags can still hold events of a bus epoch's older generation when a join's
    /// recovery (or `sync`) from the shared history is in the newer one. Generations go on
    /// with the same offsets, so those events are covered: they do not follow the recovery,
    /// a second time and older than it.
    #[test]
    fn a_release_covers_held_events_of_an_older_generation() {
        let hub = Hub::default();
        let (recovering, mut recovered) = Outbox::new(16, CloseCounters::default());
        let (syncing, mut synced) = Outbox::new(16, CloseCounters::default());
        let _ = hub.subscribe("s", "g", 1, &recovering, "a", None, None);
        let _ = hub.subscribe("s", "g", 2, &syncing, "b", None, None);
        let at = |offset, epoch: &str| Position {
            offset,
            epoch: epoch.into(),
        };
        let event = |n: i64| StreamEvent::new("s", "g", None, EventKind::Update(n.into()));
        for (n, epoch) in [(10, "e.g1"), (11, "e.g1"), (12, "e.g2"), (13, "e.g2")] {
            hub.publish_at(&event(n), &at(n as u64, epoch));
        }
        // Socket 1 saw 12 on another node: the shared history recovers 13.
        let last = at(13, "e.g2");
        let first = vec![
            Utf8Bytes::from_static("marker"),
            Utf8Bytes::from(mark_recovered(&event(13).encode_at(&last, None))),
        ];
        hub.release_after("s", "g", 1, &recovering, first, Some(&last));
        let sync = vec![Utf8Bytes::from_static("sync")];
        hub.release_after("s", "g", 2, &syncing, sync, Some(&last));
        hub.publish_at(&event(14), &at(14, "e.g2"));
        assert_eq!(drain(&mut recovered), ["marker", "13", "14"]);
        assert_eq!(drain(&mut synced), ["sync", "14"]);
        // Another bus epoch counts offsets of its own: nothing there is covered.
        assert!(!at(5, "f.g2").at_or_before(&last));
        assert!(!at(5, "local-1").at_or_before(&at(6, "local-2")));
    }
}
