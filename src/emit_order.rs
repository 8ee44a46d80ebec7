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
//! A stream served by a worker's functions takes no turns: [`lock`] orders its writes by
//! holding the engine's item lock from before the write until its event is out.

use crate::item_lock::ItemLock;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

tokio::task_local! {
    static CLAIMED: RefCell<Vec<Turn>>;
}

/// The latest turn of each item with a write in flight, by a hash of the item's address: its
/// id and the signal that fires when it is released (the sender side is dropped). Two items
/// whose hashes collide merely share one order.
type Tails = HashMap<u64, (u64, oneshot::Receiver<()>)>;

/// One store's turns, by item.
#[derive(Default)]
pub struct Turns {
    tails: Arc<Mutex<(u64, Tails)>>,
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
            if claimed.iter().any(|t| t.key == key && Arc::ptr_eq(&t.tails, &self.tails)) {
                return;
            }
            let (release, released) = oneshot::channel();
            let mut tails = self.tails.lock().unwrap();
            tails.0 += 1;
            let id = tails.0;
            let before = tails.1.insert(key, (id, released)).map(|(_, rx)| rx);
            drop(tails);
            claimed.push(Turn { tails: self.tails.clone(), key, id, before, _release: release });
        });
    }
}

/// A write's place in its item's order; released when dropped.
pub struct Turn {
    tails: Arc<Mutex<(u64, Tails)>>,
    key: u64,
    id: u64,
    before: Option<oneshot::Receiver<()>>,
    _release: oneshot::Sender<()>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut tails = self.tails.lock().unwrap();
        // Forget the item unless a later write already queued behind this turn.
        if tails.1.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            tails.1.remove(&self.key);
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

/// Runs a store write, collecting the turns it takes.
pub async fn scope<T>(write: impl Future<Output = T>) -> (T, Held) {
    CLAIMED
        .scope(RefCell::new(Vec::new()), async {
            let out = write.await;
            (out, Held { turns: CLAIMED.with(|c| c.take()), _lock: None })
        })
        .await
}

/// Locks an item for a write that takes no turns; keep the result until the event is out.
pub async fn lock(stream: &str, group: &str, item: &str) -> Held {
    Held { turns: Vec::new(), _lock: Some(ItemLock::acquire(stream, group, item).await) }
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
        assert!(tokio::time::timeout(Duration::from_millis(50), second.ready()).await.is_err(), "the second turn went before the first");
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), second.ready()).await.expect("released turn lets the next one go");
        drop((second, other));
        assert!(turns.tails.lock().unwrap().1.is_empty(), "finished items are forgotten");
    }

    #[tokio::test]
    async fn a_scope_takes_one_turn_per_item_and_none_outside_a_scope() {
        let turns = Turns::default();
        turns.claim("s", "g", "x");
        assert!(turns.tails.lock().unwrap().1.is_empty());
        let (_, mut held) = scope(async {
            turns.claim("s", "g", "x");
            turns.claim("s", "g", "x");
        })
        .await;
        assert_eq!(held.turns.len(), 1);
        tokio::time::timeout(Duration::from_secs(1), held.ready()).await.expect("no wait on its own turn");
    }
}
