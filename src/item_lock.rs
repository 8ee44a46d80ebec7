//! Per-item locks for read-modify-writes that the engine does on behalf of an adapter that
//! cannot do them atomically itself (createStream workers, WebAssembly adapters).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

type LockMap = Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>;

/// A per-item lock, forgotten once nobody holds or waits for it.
pub struct ItemLock {
    key: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl ItemLock {
    fn map() -> &'static LockMap {
        static LOCKS: std::sync::OnceLock<LockMap> = std::sync::OnceLock::new();
        LOCKS.get_or_init(Default::default)
    }

    pub async fn acquire(stream: &str, group: &str, item: &str) -> ItemLock {
        let key = format!("{stream}\u{0}{group}\u{0}{item}");
        let lock = Self::map().lock().unwrap().entry(key.clone()).or_default().clone();
        let guard = lock.clone().lock_owned().await;
        ItemLock { key, lock, _guard: guard }
    }
}

impl Drop for ItemLock {
    fn drop(&mut self) {
        let mut map = Self::map().lock().unwrap();
        // The map's reference, ours and the guard's: nobody else is waiting.
        if Arc::strong_count(&self.lock) == 3 {
            map.remove(&self.key);
        }
    }
}
