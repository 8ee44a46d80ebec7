//! The fan-out hub: who is subscribed to which group or item, and delivery to them.
//!
//! It knows nothing of storage: the engine hands it events after they are stored. Each event
//! is encoded once; each socket gets it once, however many of its subscriptions match.
//!
//! A new subscription is held until its snapshot has been read and its `sync` queued
//! (`release`): an event that raced the read is then in the snapshot or follows the `sync`.
//! Were it to go first, the older `sync` would take the client back.

use crate::fanout::frame::StreamEvent;
use crate::fanout::outbox::Outbox;
use crate::metrics::FanoutCounters;
use axum::extract::ws::Utf8Bytes;
use std::collections::HashMap;
use std::sync::{
    Arc, Mutex, RwLock,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

pub type ConnId = u64;

struct Subscriber {
    outbox: Arc<Outbox>,
    /// (subscription id, item id or None for the whole group)
    subs: Vec<(String, Option<String>)>,
    /// Set while a new subscription's snapshot is read; its frames wait in `held`.
    holding: AtomicBool,
    held: Mutex<Vec<Utf8Bytes>>,
}

impl Subscriber {
    fn deliver(&self, frame: Utf8Bytes) -> bool {
        if self.holding.load(Ordering::Acquire) {
            let mut held = self.held.lock().unwrap();
            if self.holding.load(Ordering::Acquire) {
                if held.len() >= self.outbox.capacity() {
                    return self.outbox.overflowed();
                }
                held.push(frame);
                return true;
            }
        }
        self.outbox.push(frame)
    }

    fn wants(&self, id: Option<&str>) -> bool {
        self.subs.iter().any(|(_, item)| match item {
            None => true,
            Some(item) => id == Some(item.as_str()),
        })
    }
}

type Groups = HashMap<String, HashMap<String, HashMap<ConnId, Subscriber>>>;

#[derive(Default)]
pub struct Hub {
    groups: RwLock<Groups>,
    next_conn: AtomicU64,
    counters: FanoutCounters,
}

impl Hub {
    /// A hub that counts what it publishes and delivers into `counters`.
    pub fn new(counters: FanoutCounters) -> Self {
        Hub {
            counters,
            ..Hub::default()
        }
    }

    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Adds (or replaces, by subscription id) a subscription of one socket, held until
    /// [`Hub::release`].
    pub fn subscribe(
        &self,
        stream: &str,
        group: &str,
        conn: ConnId,
        outbox: &Arc<Outbox>,
        sub_id: &str,
        item: Option<&str>,
    ) {
        let mut groups = self.groups.write().unwrap();
        let conns = groups
            .entry(stream.to_owned())
            .or_default()
            .entry(group.to_owned())
            .or_default();
        let sub = conns.entry(conn).or_insert_with(|| Subscriber {
            outbox: outbox.clone(),
            subs: Vec::new(),
            holding: AtomicBool::new(false),
            held: Mutex::new(Vec::new()),
        });
        sub.subs.retain(|(id, _)| id != sub_id);
        sub.subs.push((sub_id.to_owned(), item.map(str::to_owned)));
        sub.holding.store(true, Ordering::Release);
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
        let groups = self.groups.read().unwrap();
        let Some(sub) = groups
            .get(stream)
            .and_then(|g| g.get(group))
            .and_then(|c| c.get(&conn))
        else {
            outbox.push(first);
            return;
        };
        let mut held = sub.held.lock().unwrap();
        let frames = std::mem::take(&mut *held);
        if sub.outbox.push(first) {
            for frame in frames {
                if !sub.outbox.push(frame) {
                    break;
                }
            }
        }
        // Still under the lock: a delivery that saw `holding` waits for it, then queues after these.
        sub.holding.store(false, Ordering::Release);
    }

    /// Removes one subscription; empty entries are pruned so idle groups cost nothing.
    pub fn unsubscribe(&self, stream: &str, group: &str, conn: ConnId, sub_id: &str) {
        let mut groups = self.groups.write().unwrap();
        let Some(by_group) = groups.get_mut(stream) else {
            return;
        };
        let Some(conns) = by_group.get_mut(group) else {
            return;
        };
        if let Some(sub) = conns.get_mut(&conn) {
            sub.subs.retain(|(id, _)| id != sub_id);
            if sub.subs.is_empty() {
                conns.remove(&conn);
            }
        }
        if conns.is_empty() {
            by_group.remove(group);
            if by_group.is_empty() {
                groups.remove(stream);
            }
        }
    }

    /// Delivers an event to every socket subscribed to its group (or to its item).
    /// Returns how many sockets it was queued for.
    pub fn publish(&self, event: &StreamEvent) -> usize {
        self.counters.published.inc();
        let groups = self.groups.read().unwrap();
        let Some(conns) = groups
            .get(&event.stream_name)
            .and_then(|g| g.get(&event.group_id))
        else {
            return 0;
        };
        let frame = Utf8Bytes::from(event.encode());
        let mut n = 0;
        for sub in conns.values() {
            if sub.wants(event.id.as_deref()) && sub.deliver(frame.clone()) {
                n += 1;
            }
        }
        self.counters.delivered.inc_by(n as u64);
        self.counters.tenant_delivered.inc_by(n as u64);
        n
    }

    /// How many sockets an event for `group` (and `item`) would be queued for now: what a
    /// write is charged against its tenant's `deliveries_per_second` before it is made.
    pub fn audience(&self, stream: &str, group: &str, item: Option<&str>) -> usize {
        let groups = self.groups.read().unwrap();
        groups
            .get(stream)
            .and_then(|g| g.get(group))
            .map_or(0, |conns| conns.values().filter(|s| s.wants(item)).count())
    }

    /// Every subscription as (stream, group, item, socket), for resynchronising them.
    pub fn subscriptions(&self) -> Vec<(String, String, Option<String>, Arc<Outbox>)> {
        let groups = self.groups.read().unwrap();
        let mut out = Vec::new();
        for (stream, by_group) in groups.iter() {
            for (group, conns) in by_group {
                for sub in conns.values() {
                    for (_, item) in &sub.subs {
                        out.push((
                            stream.clone(),
                            group.clone(),
                            item.clone(),
                            sub.outbox.clone(),
                        ));
                    }
                }
            }
        }
        out
    }

    /// Subscriptions held, for metrics and tests.
    pub fn subscription_count(&self) -> usize {
        let groups = self.groups.read().unwrap();
        groups
            .values()
            .flat_map(|g| g.values())
            .flat_map(|c| c.values())
            .map(|s| s.subs.len())
            .sum()
    }
}
