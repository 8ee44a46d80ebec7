//! Events for one item leave in the order the store applied the writes.
//!
//! Concurrent writes to one item each wait for their own log sync and finish in any order;
//! if each emitted as it finished, clients could end on an older value than the store kept.
//! So a store takes a *turn* for the item while it applies a write (under its own lock, so
//! turns follow the apply order), and the engine emits a write's event only after the turn
//! before it has been released. Writes to different items never wait for each other, and
//! durability waits still overlap: only the emission is put in order.
//!
//! A write's place comes back to the engine as an [`Order`] in the adapter's result
//! (`storage::Stored`), and this module is the only place an `Order` comes from: a turn
//! claimed from the store's [`Turns`], or an item lock held from before the write until its
//! event is out ([`Order::locked`], for storage that takes no turns, such as a stream served
//! by a worker's functions). So an adapter that does not order its writes does not compile.
//! The engine waits on [`Order::ready`] before it emits and drops the `Order` once it has.
//! A write whose event waits for its log sync (`storage::synced`) drops its `Order` when that
//! sync answers, and marks its turn queued: a later write to the item whose own event waits for
//! a later sync of the same log need not wait, as the syncs answer in log order.

use crate::fanout::item_lock::ItemLock;
use crate::storage::synced;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// The keys are hashes of item addresses already: use them as they are. Two items whose hashes
/// collide merely share one order.
#[derive(Default)]
struct KeyIsHash(u64);

impl Hasher for KeyIsHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type ByHash<V> = HashMap<u64, V, BuildHasherDefault<KeyIsHash>>;

/// The turns in flight. A write that nobody queues behind costs one entry in `latest`, added
/// and removed, and no allocation; a signal is made only when a later write has to wait.
#[derive(Default)]
struct Line {
    next_id: u64,
    /// The latest turn taken for each item with a write in flight.
    latest: ByHash<u64>,
    /// For a turn that a later turn waits for (by id): the signal that releases the later one.
    waiting: HashMap<u64, oneshot::Sender<()>>,
    /// Turns (by id) whose release is queued behind a sync of this log (see
    /// `storage::synced`): a later write whose own event waits for a later sync of the same log
    /// is behind them already.
    queued: HashMap<u64, usize>,
}

/// One store's turns, by item.
#[derive(Default)]
pub struct Turns {
    line: Arc<Mutex<Line>>,
    hasher: std::hash::RandomState,
}

impl Turns {
    /// Takes the item's next turn for the write being applied now. Call it under the lock
    /// that orders the store's writes, so that turns follow the order writes are applied in.
    pub fn claim(&self, stream: &str, group: &str, item: &str) -> Order {
        let key = self.hasher.hash_one((stream, group, item));
        let mut line = self.line.lock().unwrap();
        line.next_id += 1;
        let id = line.next_id;
        let earlier = line.latest.insert(key, id);
        let before = earlier.map(|earlier| {
            let (release, released) = oneshot::channel();
            line.waiting.insert(earlier, release);
            released
        });
        drop(line);
        // Under the store's lock: the call this write belongs to has applied.
        super::sequence::claimed();
        Order {
            turn: Some(Turn {
                line: self.line.clone(),
                key,
                id,
                earlier,
                before,
            }),
            ..Order::nothing_written()
        }
    }
}

/// One write's place in one item's order; released when dropped.
struct Turn {
    line: Arc<Mutex<Line>>,
    key: u64,
    id: u64,
    /// The turn before this one, if there was one in flight.
    earlier: Option<u64>,
    /// Fires when that turn is released; None once waited for.
    before: Option<oneshot::Receiver<()>>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut line = self.line.lock().unwrap();
        line.queued.remove(&self.id);
        // Dropped while the turn before it is still held (an error or a cancelled call): what
        // queued behind this turn queues behind that one instead, so the order still holds.
        let held_before = self
            .earlier
            .filter(|earlier| line.waiting.contains_key(earlier));
        if let Entry::Occupied(mut latest) = line.latest.entry(self.key)
            && *latest.get() == self.id
        {
            match held_before {
                Some(earlier) => *latest.get_mut() = earlier,
                None => {
                    latest.remove();
                }
            }
        }
        if let Some(next) = line.waiting.remove(&self.id) {
            match held_before {
                Some(earlier) => {
                    line.waiting.insert(earlier, next);
                }
                None => drop(next),
            }
        }
    }
}

impl Turn {
    fn same_item(&self, other: &Turn) -> bool {
        self.key == other.key && Arc::ptr_eq(&self.line, &other.line)
    }
}

/// A write's place in its items' order: the turns it took, or the item lock it holds. The
/// engine keeps it until the write's event is out; dropping it lets the next write go.
#[must_use = "an order holds the item's later events back only while it is kept"]
pub struct Order {
    /// The turn nearly every write takes: one, so ordering a write allocates nothing.
    turn: Option<Turn>,
    /// Turns for further items, when one write stored several (a WebAssembly adapter's).
    more: Vec<Turn>,
    locks: Vec<ItemLock>,
}

impl std::fmt::Debug for Order {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Order")
            .field("turns", &self.turns().count())
            .field("locks", &self.locks.len())
            .finish()
    }
}

impl Order {
    /// The order of storage that takes no turns: `lock`, taken before the write and kept
    /// until its event is out, keeps every other write to the item (and its event) waiting.
    pub fn locked(lock: ItemLock) -> Order {
        Order {
            locks: vec![lock],
            ..Order::nothing_written()
        }
    }

    /// No place in any order, for a call that stored nothing and so has no event to put in
    /// order: a delete of a missing item, or a WebAssembly adapter's call that made no store
    /// write. A call that does store must return a claimed turn or a held lock instead, or its
    /// event may overtake an earlier write's.
    pub fn nothing_written() -> Order {
        Order {
            turn: None,
            more: Vec::new(),
            locks: Vec::new(),
        }
    }

    /// Adds the places taken by another store write made for the same call. An item keeps its
    /// first turn only: that one already orders it, and a later one would wait on it forever.
    pub fn join(&mut self, other: Order) {
        let Order { turn, more, locks } = other;
        for turn in turn.into_iter().chain(more) {
            if self.turns().any(|t| t.same_item(&turn)) {
                continue;
            }
            match self.turn {
                None => self.turn = Some(turn),
                Some(_) => self.more.push(turn),
            }
        }
        self.locks.extend(locks);
    }

    fn turns(&self) -> impl Iterator<Item = &Turn> {
        self.turn.iter().chain(&self.more)
    }

    /// Waits until every write applied before this one to the same items has emitted. It
    /// waits without the call's tenant turn (`fair::idle`): the write it waits for may need a
    /// turn to finish, and the later writes of one item must not hold them all.
    pub async fn ready(&mut self) {
        let holding = synced::holding();
        for turn in self.turn.iter_mut().chain(&mut self.more) {
            let Some(before) = turn.before.take() else {
                continue;
            };
            // An earlier write whose event and release are queued behind an earlier sync of
            // the log this write's event waits for: the syncs answer in log order.
            if let (Some(log), Some(earlier)) = (holding, turn.earlier)
                && turn.line.lock().unwrap().queued.get(&earlier) == Some(&log)
            {
                continue;
            }
            let _ = crate::fair::idle(before).await;
        }
    }

    /// Lets the item's next write emit once this write's event is out: now, or when the sync
    /// the call holds answers, if its event waits for it (see `storage::synced`).
    pub fn release_after_sync(self) {
        let Some(log) = synced::holding() else {
            return drop(self);
        };
        // The write's event is queued already; the mark goes when the turn does.
        for turn in self.turns() {
            turn.line.lock().unwrap().queued.insert(turn.id, log);
        }
        synced::after_sync(move |_| drop(self));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Whether the write still waits for its turn 50 ms on.
    async fn still_waits(order: &mut Order) -> bool {
        tokio::time::timeout(Duration::from_millis(50), order.ready())
            .await
            .is_err()
    }

    #[tokio::test]
    async fn a_later_turn_waits_for_the_earlier_one_and_others_do_not() {
        let turns = Arc::new(Turns::default());
        let mut first = turns.claim("s", "g", "x");
        let mut second = turns.claim("s", "g", "x");
        let mut other = turns.claim("s", "g", "y");
        first.ready().await;
        other.ready().await;
        assert!(
            still_waits(&mut second).await,
            "the second turn went before the first"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), second.ready())
            .await
            .expect("released turn lets the next one go");
        drop((second, other));
        let line = turns.line.lock().unwrap();
        assert!(
            line.latest.is_empty() && line.waiting.is_empty(),
            "finished items are forgotten"
        );
    }

    /// A write whose turn's release waits for its sync does not hold up a later write of the
    /// item whose own event waits for a later sync of the same log; a write with no sync
    /// waits for the release.
    #[tokio::test]
    async fn a_turn_queued_behind_a_sync_holds_back_only_writes_not_queued_behind_a_later_one() {
        use crate::storage::{synced, wal::ticket};
        let turns = Arc::new(Turns::default());
        let (first_sync, first_ticket) = ticket::pair();
        let t = turns.clone();
        let ((), held) = synced::scope(async move {
            synced::may_hold(async { synced::hold(1, first_ticket) })
                .await
                .ok()
                .unwrap();
            t.claim("s", "g", "x").release_after_sync();
        })
        .await;
        let t = turns.clone();
        let (_second_sync, second_ticket) = ticket::pair();
        let (went, _) = synced::scope(async move {
            let mut second = t.claim("s", "g", "x");
            synced::may_hold(async { synced::hold(1, second_ticket) })
                .await
                .ok()
                .unwrap();
            tokio::time::timeout(Duration::from_secs(1), second.ready())
                .await
                .is_ok()
        })
        .await;
        assert!(went, "a write queued behind a later sync waited");
        let mut third = turns.claim("s", "g", "x");
        let mut fourth = turns.claim("s", "g", "y");
        fourth.ready().await;
        drop(held);
        assert!(
            still_waits(&mut third).await,
            "a write with no sync went before the queued release"
        );
        first_sync.send(Ok(()));
        tokio::time::timeout(Duration::from_secs(1), third.ready())
            .await
            .expect("the sync released the turns");
        drop((third, fourth));
        let line = turns.line.lock().unwrap();
        assert!(line.queued.is_empty(), "released turns are forgotten");
    }

    #[tokio::test]
    async fn a_turn_dropped_early_passes_its_place_on() {
        let turns = Turns::default();
        let first = turns.claim("s", "g", "x");
        let second = turns.claim("s", "g", "x");
        let mut third = turns.claim("s", "g", "x");
        drop(second);
        assert!(
            still_waits(&mut third).await,
            "the third went before the first"
        );
        let mut fourth = turns.claim("s", "g", "x");
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), third.ready())
            .await
            .expect("the first released the third");
        assert!(
            still_waits(&mut fourth).await,
            "the fourth went before the third"
        );
        drop(third);
        tokio::time::timeout(Duration::from_secs(1), fourth.ready())
            .await
            .expect("the third released the fourth");
        drop(fourth);
        {
            let line = turns.line.lock().unwrap();
            assert!(line.latest.is_empty() && line.waiting.is_empty());
        }

        // The latest turn dropped early: a new turn still waits for the one before it.
        let first = turns.claim("s", "g", "y");
        let second = turns.claim("s", "g", "y");
        drop(second);
        let mut third = turns.claim("s", "g", "y");
        assert!(
            still_waits(&mut third).await,
            "the third went before the first"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), third.ready())
            .await
            .expect("the first released the third");
    }

    #[tokio::test]
    async fn joined_orders_keep_one_turn_per_item() {
        let turns = Turns::default();
        let mut order = turns.claim("s", "g", "x");
        order.join(turns.claim("s", "g", "x"));
        order.join(turns.claim("s", "g", "y"));
        order.join(Order::nothing_written());
        assert_eq!(order.turns().count(), 2);
        tokio::time::timeout(Duration::from_secs(1), order.ready())
            .await
            .expect("no wait on its own turn");
        let mut next = turns.claim("s", "g", "x");
        assert!(
            still_waits(&mut next).await,
            "a later write went before the joined order"
        );
        drop(order);
        tokio::time::timeout(Duration::from_secs(1), next.ready())
            .await
            .expect("the joined order released the item");
        drop(next);
        let line = turns.line.lock().unwrap();
        assert!(line.latest.is_empty() && line.waiting.is_empty());
    }
}
