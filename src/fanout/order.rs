//! Events for one item leave in the order the store applied the writes.
//!
//! Concurrent writes to one item each wait for their own log sync and finish in any order;
//! if each emitted as it finished, clients could end on an older value than the store kept.
//! So a store takes a *turn* for the item while it applies a write (under its own lock, so
//! turns follow the apply order), and the engine emits a write's event only after the turn
//! before it has been released. Writes to different items never wait for each other, and
//! durability waits still overlap: only the emission is put in order.
//!
//! The turn travels from the store back to the engine in a task-local slot opened by
//! [`scope`], so the adapter trait stays as it is; a write made outside a scope takes no turn.
//! A stream served by a worker's functions takes no turns: its adapter [`hold`]s the engine's
//! item lock from before the write until its event is out, which orders its writes.

use crate::fanout::item_lock::ItemLock;
use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

tokio::task_local! {
    static CLAIMED: RefCell<Claimed>;
}

/// What a write in a [`scope`] took: turns, or an item lock.
#[derive(Default)]
struct Claimed {
    turns: Vec<Turn>,
    lock: Option<ItemLock>,
}

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
}

/// One store's turns, by item.
#[derive(Default)]
pub struct Turns {
    line: Arc<Mutex<Line>>,
    hasher: std::hash::RandomState,
}

impl Turns {
    /// Takes the item's next turn for the write being applied now. Call it under the lock
    /// that orders the store's writes. Does nothing outside a [`scope`], or when this scope
    /// already holds a turn for the item (its first turn already orders it).
    pub fn claim(&self, stream: &str, group: &str, item: &str) {
        let _ = CLAIMED.try_with(|claimed| {
            let key = self.hasher.hash_one((stream, group, item));
            let mut claimed = claimed.borrow_mut();
            if claimed
                .turns
                .iter()
                .any(|t| t.key == key && Arc::ptr_eq(&t.line, &self.line))
            {
                return;
            }
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
            claimed.turns.push(Turn {
                line: self.line.clone(),
                key,
                id,
                earlier,
                before,
            });
        });
    }
}

/// A write's place in its item's order; released when dropped.
pub struct Turn {
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

/// The turns one write took (or the item lock it holds), kept until its event is out.
#[must_use = "the turns order emission only while they are held"]
pub struct Held {
    turns: Vec<Turn>,
    _lock: Option<ItemLock>,
}

impl Held {
    /// Waits until every write applied before this one to the same items has emitted.
    pub async fn ready(&mut self) {
        for turn in &mut self.turns {
            if let Some(before) = turn.before.take() {
                let _ = before.await;
            }
        }
    }
}

/// Runs a store write, collecting the turns (or the item lock) it takes.
pub async fn scope<T>(write: impl Future<Output = T>) -> (T, Held) {
    CLAIMED
        .scope(RefCell::default(), async {
            let out = write.await;
            let Claimed { turns, lock } = CLAIMED.with(|c| c.take());
            (out, Held { turns, _lock: lock })
        })
        .await
}

/// Keeps an item lock, taken by storage that takes no turns before it writes, until the
/// scope's event is out. Outside a [`scope`] the lock is released at once.
pub fn hold(lock: ItemLock) {
    let mut lock = Some(lock);
    let _ = CLAIMED.try_with(|c| c.borrow_mut().lock = lock.take());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_later_turn_waits_for_the_earlier_one_and_others_do_not() {
        let turns = Arc::new(Turns::default());
        let (_, mut first) = scope(async { turns.claim("s", "g", "x") }).await;
        let (_, mut second) = scope(async { turns.claim("s", "g", "x") }).await;
        let (_, mut other) = scope(async { turns.claim("s", "g", "y") }).await;
        first.ready().await;
        other.ready().await;
        assert!(
            tokio::time::timeout(Duration::from_millis(50), second.ready())
                .await
                .is_err(),
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

    #[tokio::test]
    async fn a_turn_dropped_early_passes_its_place_on() {
        let turns = Turns::default();
        let (_, first) = scope(async { turns.claim("s", "g", "x") }).await;
        let (_, second) = scope(async { turns.claim("s", "g", "x") }).await;
        let (_, mut third) = scope(async { turns.claim("s", "g", "x") }).await;
        drop(second);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), third.ready())
                .await
                .is_err(),
            "the third went before the first"
        );
        let (_, mut fourth) = scope(async { turns.claim("s", "g", "x") }).await;
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), third.ready())
            .await
            .expect("the first released the third");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), fourth.ready())
                .await
                .is_err(),
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
        let (_, first) = scope(async { turns.claim("s", "g", "y") }).await;
        let (_, second) = scope(async { turns.claim("s", "g", "y") }).await;
        drop(second);
        let (_, mut third) = scope(async { turns.claim("s", "g", "y") }).await;
        assert!(
            tokio::time::timeout(Duration::from_millis(50), third.ready())
                .await
                .is_err(),
            "the third went before the first"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), third.ready())
            .await
            .expect("the first released the third");
    }

    #[tokio::test]
    async fn a_scope_takes_one_turn_per_item_and_none_outside_a_scope() {
        let turns = Turns::default();
        turns.claim("s", "g", "x");
        assert!(turns.line.lock().unwrap().latest.is_empty());
        let (_, mut held) = scope(async {
            turns.claim("s", "g", "x");
            turns.claim("s", "g", "x");
        })
        .await;
        assert_eq!(held.turns.len(), 1);
        tokio::time::timeout(Duration::from_secs(1), held.ready())
            .await
            .expect("no wait on its own turn");
    }
}
