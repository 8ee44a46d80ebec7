//! Per-item locks: for read-modify-writes that the engine does on behalf of an adapter that
//! cannot do them atomically itself (createStream workers, WebAssembly adapters), and for
//! adapters that must apply one item's writes one at a time (see `fanout::order`).

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

impl ItemLock {
    /// The engine's own per-item lock.
    pub async fn acquire(stream: &str, group: &str, item: &str) -> ItemLock {
        static ENGINE: std::sync::OnceLock<ItemLocks> = std::sync::OnceLock::new();
        ENGINE
            .get_or_init(Default::default)
            .acquire(stream, group, item)
            .await
    }
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
