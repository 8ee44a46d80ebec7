//! Events this node delivered itself because their numbering failed, which Redis may yet have
//! numbered and published.
//!
//! A numbering batch that times out is ambiguous: Redis may run it late (it was only busy) and
//! publish the numbered frames after this node has already delivered the events locally. Each
//! such event is remembered by a fingerprint of its frame (a count, so two identical events
//! are two), and its numbered copy, if it ever comes, is dropped once. Entries are forgotten
//! after `KEEP`: a batch Redis never ran leaves nothing behind for long.

use crate::fanout::frame::StreamEvent;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a locally delivered event waits for its numbered copy.
const KEEP: Duration = Duration::from_secs(120);
/// Events remembered at most; past this, newer ones are not (their copies would be delivered).
const MAX: usize = 65_536;

#[derive(Default)]
pub struct Echoes {
    /// fingerprint -> (copies still expected, when last added)
    expected: Mutex<HashMap<u64, (u32, Instant)>>,
    /// Set while anything is remembered: the common case costs one load.
    any: AtomicBool,
    /// When events were last delivered here unnumbered.
    last: Mutex<Option<Instant>>,
}

impl Echoes {
    /// Remembers events delivered locally whose numbered copies may still come.
    pub fn expect(&self, events: &[StreamEvent]) {
        let now = Instant::now();
        *self.last.lock().unwrap() = Some(now);
        let mut expected = self.expected.lock().unwrap();
        expected.retain(|_, (_, at)| now.duration_since(*at) < KEEP);
        for event in events {
            if expected.len() >= MAX {
                break;
            }
            let entry = expected.entry(event.fingerprint()).or_insert((0, now));
            *entry = (entry.0 + 1, now);
        }
        self.any.store(!expected.is_empty(), Ordering::Release);
    }

    /// Whether events were delivered here unnumbered within the last `KEEP`: their local
    /// copies may still be on their way to the hub (see `RedisHistory::resume`).
    pub fn recent(&self) -> bool {
        self.last
            .lock()
            .unwrap()
            .is_some_and(|at| at.elapsed() < KEEP)
    }

    /// Whether `event`, heard numbered, is the copy of one delivered locally (then it is
    /// forgotten: a second copy would be delivered).
    pub fn take(&self, event: &StreamEvent) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let mut expected = self.expected.lock().unwrap();
        let key = event.fingerprint();
        let Some((count, _)) = expected.get_mut(&key) else {
            return false;
        };
        *count -= 1;
        if *count == 0 {
            expected.remove(&key);
        }
        self.any.store(!expected.is_empty(), Ordering::Release);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::frame::EventKind;
    use serde_json::json;

    #[test]
    fn each_local_delivery_drops_one_numbered_copy_and_no_more() {
        let echoes = Echoes::default();
        let a = StreamEvent::new("s", "g", None, EventKind::Update(json!(1)));
        let b = StreamEvent::new("s", "g", None, EventKind::Update(json!(2)));
        assert!(!echoes.take(&a));
        echoes.expect(&[a.clone(), a.clone()]);
        // As heard back from Redis: decoded from the numbered frame.
        let mut frame = a.to_value();
        frame["offset"] = json!(7);
        frame["epoch"] = json!("e");
        let heard = StreamEvent::from_value(&frame).unwrap();
        assert!(!echoes.take(&b));
        assert!(echoes.take(&heard));
        assert!(echoes.take(&heard));
        assert!(!echoes.take(&heard));
    }
}
