//! A group's recent events, kept so that a client that reconnects gets exactly what it missed.
//!
//! Each group numbers its events (`offset`, 1 for its first) within an `epoch`, and keeps the
//! last `size` of them for at most `ttl`. A log holds the frames as they were sent (shared with
//! the sockets' queues, not copied), so an entry costs its frame's bytes plus a few words.
//!
//! Memory: at most `size` frames per group, for each group with an event in the last `ttl`.
//! The worst case is (groups written within `ttl`) x `size` x (frame bytes): 10,000 busy groups
//! x 1,000 events x 1 KiB is about 10 GiB, so size it for the traffic (`size: 0` turns history
//! off). The hub drops a group's history once it has been idle (no event and no subscriber)
//! past `ttl`; a later event starts the group again in a new epoch.

use crate::fanout::frame::{Position, StreamEvent, mark_recovered};
use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Events a group keeps unless configured otherwise.
pub const DEFAULT_SIZE: usize = 1_000;
/// How long an event is kept unless configured otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_millis(300_000);
/// The most events one group may be configured to keep.
pub const MAX_SIZE: usize = 100_000;
/// The longest an event may be configured to be kept: a day.
pub const MAX_TTL_MS: u64 = 86_400_000;

/// `history: { size, ttl_ms }` in the stream module config or a tenant's; a key left out keeps
/// the value below it (the engine's, or the default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

impl HistoryConfig {
    /// Refuses a bound that would let one group hold too much, or keep nothing for no time.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(size) = self.size
            && size > MAX_SIZE
        {
            anyhow::bail!(
                "history.size {size} is over {MAX_SIZE} events per group: lower it (0 turns history off)"
            );
        }
        if let Some(ttl) = self.ttl_ms
            && !(1..=MAX_TTL_MS).contains(&ttl)
        {
            anyhow::bail!("history.ttl_ms {ttl} must be from 1 to {MAX_TTL_MS} (a day)");
        }
        Ok(())
    }

    /// These bounds over `below`.
    pub fn over(&self, below: Bounds) -> Bounds {
        Bounds {
            size: self.size.unwrap_or(below.size),
            ttl: self.ttl_ms.map_or(below.ttl, Duration::from_millis),
        }
    }
}

/// The bounds in force for every group of a hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub size: usize,
    pub ttl: Duration,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            size: DEFAULT_SIZE,
            ttl: DEFAULT_TTL,
        }
    }
}

/// One sent event.
pub struct Entry {
    pub offset: u64,
    /// The item it is about, so that an item subscription recovers only its own.
    pub item: Option<String>,
    pub frame: Utf8Bytes,
    at: Instant,
}

/// A group's last events, oldest first, with consecutive offsets.
#[derive(Default)]
pub struct Log {
    entries: VecDeque<Entry>,
}

impl Log {
    pub fn push(&mut self, offset: u64, item: Option<&str>, frame: Utf8Bytes, bounds: Bounds) {
        if bounds.size == 0 {
            self.entries.clear();
            return;
        }
        while self.entries.len() >= bounds.size {
            self.entries.pop_front();
        }
        self.entries.push_back(Entry {
            offset,
            item: item.map(str::to_owned),
            frame,
            at: Instant::now(),
        });
    }

    /// Drops what is older than `ttl`.
    pub fn expire(&mut self, ttl: Duration, now: Instant) {
        while self
            .entries
            .front()
            .is_some_and(|e| now.duration_since(e.at) >= ttl)
        {
            self.entries.pop_front();
        }
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Every event after `from`, when the log still holds all of them (`last` is the group's
    /// latest offset); None when some are gone, or `from` is not an offset of this group yet.
    pub fn since(&self, from: u64, last: u64) -> Option<impl Iterator<Item = &Entry>> {
        if from > last {
            return None;
        }
        if from < last {
            let first = self.entries.front()?.offset;
            if first > from + 1 {
                return None;
            }
        }
        Some(self.entries.iter().filter(move |e| e.offset > from))
    }
}

/// The frames that answer a join recovered from a shared history (see `storage::redis::history`):
/// the `recovered` marker, then the missed `frames` (those of `item` only, for an item
/// subscription), each marked recovered.
pub fn recovered_frames(
    stream: &str,
    group: &str,
    item: Option<&str>,
    from: &Position,
    frames: Vec<String>,
) -> Vec<Utf8Bytes> {
    #[derive(Deserialize)]
    struct About {
        id: Option<String>,
    }
    let missed: Vec<Utf8Bytes> = frames
        .iter()
        .filter(|f| {
            item.is_none()
                || serde_json::from_str::<About>(f).is_ok_and(|a| a.id.as_deref() == item)
        })
        .map(|f| Utf8Bytes::from(mark_recovered(f)))
        .collect();
    let marker = StreamEvent::recovered_marker(stream, group, item, from, missed.len());
    std::iter::once(Utf8Bytes::from(marker))
        .chain(missed)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_of(offsets: std::ops::RangeInclusive<u64>, size: usize) -> Log {
        let mut log = Log::default();
        let bounds = Bounds {
            size,
            ..Bounds::default()
        };
        for n in offsets {
            log.push(n, None, Utf8Bytes::from(n.to_string()), bounds);
        }
        log
    }

    fn offsets(log: &Log, from: u64, last: u64) -> Option<Vec<u64>> {
        log.since(from, last).map(|e| e.map(|e| e.offset).collect())
    }

    #[test]
    fn the_log_recovers_what_it_still_holds_and_nothing_else() {
        let log = log_of(1..=10, 4);
        assert_eq!(
            offsets(&log, 6, 10),
            Some(vec![7, 8, 9, 10]),
            "exactly size"
        );
        assert_eq!(offsets(&log, 5, 10), None, "size + 1 is gone");
        assert_eq!(offsets(&log, 10, 10), Some(vec![]));
        assert_eq!(offsets(&log, 11, 10), None, "an offset from the future");
        assert_eq!(offsets(&log_of(1..=3, 0), 1, 3), None, "history off");
        assert_eq!(offsets(&log_of(1..=3, 0), 3, 3), Some(vec![]));
    }

    #[test]
    fn old_entries_expire() {
        let mut log = log_of(1..=3, 10);
        log.expire(Duration::from_secs(60), Instant::now());
        assert_eq!(offsets(&log, 0, 3), Some(vec![1, 2, 3]));
        log.expire(Duration::ZERO, Instant::now());
        assert_eq!(offsets(&log, 0, 3), None);
    }

    #[test]
    fn bounds_are_checked_and_layered() {
        let c = HistoryConfig {
            size: Some(MAX_SIZE + 1),
            ttl_ms: None,
        };
        assert!(c.validate().unwrap_err().to_string().contains("100000"));
        let c = HistoryConfig {
            size: Some(MAX_SIZE),
            ttl_ms: Some(0),
        };
        assert!(c.validate().unwrap_err().to_string().contains("ttl_ms"));
        let c = HistoryConfig {
            size: Some(5),
            ttl_ms: None,
        };
        assert!(c.validate().is_ok());
        assert_eq!(
            c.over(Bounds::default()),
            Bounds {
                size: 5,
                ttl: DEFAULT_TTL
            }
        );
    }
}
