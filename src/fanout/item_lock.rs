//! Per-item locks: for read-modify-writes that the engine does on behalf of an adapter that
//! cannot do them atomically itself (createStream workers, WebAssembly adapters), and for
//! adapters that must apply one item's writes one at a time (see `fanout::order`).
//!
//! There is no process-wide set: each engine owns one (its `StorageRouter`'s) and hands it to
//! the adapters that lock on its behalf, so engines in one process (the tests run many) never
//! wait for each other. An adapter that serialises its own writes (Redis) keeps its own set.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

type LockMap = Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>;

/// A set of per-item locks. Separate sets never block each other, so an adapter's own locks
/// cannot deadlock with the engine's.
#[derive(Default)]
pub struct ItemLocks {
    map: LockMap,
}

impl ItemLocks {
    /// Waits for the item's lock; it is held until the `ItemLock` is dropped.
    pub async fn acquire(&self, stream: &str, group: &str, item: &str) -> ItemLock {
        let key = format!("{stream}\u{0}{group}\u{0}{item}");
        let lock = self
            .map
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .clone();
        let guard = lock.clone().lock_owned().await;
        ItemLock {
            map: self.map.clone(),
            key,
            lock,
            _guard: guard,
        }
    }
}

/// A held per-item lock, forgotten once nobody holds or waits for it.
pub struct ItemLock {
    map: LockMap,
    key: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for ItemLock {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap();
        // The map's reference, ours and the guard's: nobody else is waiting.
        if Arc::strong_count(&self.lock) == 3 {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_set_serialises_an_item_and_separate_sets_do_not_share() {
        let (mine, theirs) = (ItemLocks::default(), ItemLocks::default());
        let held = mine.acquire("s", "g", "i").await;
        assert!(
            tokio::time::timeout(Duration::from_millis(50), mine.acquire("s", "g", "i"))
                .await
                .is_err(),
            "the same set let two writers hold one item"
        );
        let _other_item = tokio::time::timeout(Duration::from_secs(5), mine.acquire("s", "g", "j"))
            .await
            .expect("another item is not locked");
        let _elsewhere =
            tokio::time::timeout(Duration::from_secs(5), theirs.acquire("s", "g", "i"))
                .await
                .expect("another set does not wait for this one");
        drop(held);
        let _again = tokio::time::timeout(Duration::from_secs(5), mine.acquire("s", "g", "i"))
            .await
            .expect("a released item can be locked again");
    }
}
