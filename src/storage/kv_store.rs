//! The built-in KvStore: items in memory, optionally made durable by a write-ahead log.
//!
//! `in_memory` keeps everything in this process. `file_based` also appends every change to
//! a log in `file_path` and answers a write only after the log is synced (see `wal`), so an
//! acknowledged write survives `kill -9`.

use super::wal::disk::{Disk, RealDisk};
use super::wal::{self, Record, RecordRef, Ticket, Wal};
use super::{Stored, StreamAdapter, Telemetry, UpdateOutcome};
use crate::fanout::order::{Order, Turns};
use crate::json::Json;
use crate::storage::update_ops::{self, UpdateOps};
use async_trait::async_trait;
use indexmap::IndexMap;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

/// A group's items, in insertion order, each as its JSON text.
type Group = IndexMap<String, Json>;

#[derive(Default)]
struct State {
    streams: HashMap<String, HashMap<String, Group>>,
}

impl State {
    fn group(&self, stream: &str, group: &str) -> Option<&Group> {
        self.streams.get(stream)?.get(group)
    }

    fn put(&mut self, stream: &str, group: &str, item: &str, data: Json) -> Option<Json> {
        let groups = match self.streams.get_mut(stream) {
            Some(g) => g,
            None => self.streams.entry(stream.to_owned()).or_default(),
        };
        let items = match groups.get_mut(group) {
            Some(items) => items,
            None => groups.entry(group.to_owned()).or_default(),
        };
        match items.get_mut(item) {
            Some(slot) => Some(std::mem::replace(slot, data)),
            None => {
                items.insert(item.to_owned(), data);
                None
            }
        }
    }

    /// Removes an item, dropping emptied groups and streams so they leave the listings.
    fn remove(&mut self, stream: &str, group: &str, item: &str) -> Option<Json> {
        let groups = self.streams.get_mut(stream)?;
        let items = groups.get_mut(group)?;
        let old = items.shift_remove(item)?;
        if items.is_empty() {
            groups.remove(group);
            if groups.is_empty() {
                self.streams.remove(stream);
            }
        }
        Some(old)
    }

    fn apply(&mut self, record: Record) {
        match record {
            Record::Set { s, g, i, d } => {
                self.put(&s, &g, &i, d);
            }
            Record::Del { s, g, i } => {
                self.remove(&s, &g, &i);
            }
            Record::Nop {} => {}
        }
    }

    fn item_count(&self) -> usize {
        self.streams
            .values()
            .flat_map(|g| g.values())
            .map(|i| i.len())
            .sum()
    }

    /// Writes every item as framed log records, one group at a time under the read lock, so
    /// writers wait at most for one group's encoding (see `wal::SnapshotFn`).
    fn write_snapshot(state: &RwLock<State>, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let groups: Vec<(String, String)> = {
            let state = state.read().unwrap();
            state
                .streams
                .iter()
                .flat_map(|(s, groups)| groups.keys().map(move |g| (s.clone(), g.clone())))
                .collect()
        };
        let mut buf = Vec::new();
        for (s, g) in &groups {
            buf.clear();
            if let Some(items) = state.read().unwrap().group(s, g) {
                for (i, d) in items {
                    wal::encode(&RecordRef::Set { s, g, i, d }, &mut buf);
                }
            }
            out.write_all(&buf)?;
        }
        Ok(())
    }
}

/// Tries of an update applied outside the store's lock before it is applied under it.
const UNLOCKED_UPDATES: usize = 3;

/// Whether the item is still the very text an update read (or still absent).
fn same(now: Option<&Json>, seen: Option<&Json>) -> bool {
    match (now, seen) {
        (Some(now), Some(seen)) => now.is(seen),
        (None, None) => true,
        _ => false,
    }
}

/// An update's result, made from the item's value and not yet stored.
struct Update {
    new_value: Json,
    errors: Vec<update_ops::OpError>,
}

impl Update {
    /// Applies `ops` to `current`; a result past the limits is refused here, before it is
    /// logged or stored.
    fn apply(current: Option<&Json>, ops: &UpdateOps) -> anyhow::Result<Update> {
        let (new_value, errors) = update_ops::apply_to_text(current, ops)?;
        Ok(Update { new_value, errors })
    }

    /// Logs and stores the result, under the store's lock.
    fn store(
        self,
        state: &mut State,
        log: &mut dyn FnMut(&RecordRef<'_>) -> anyhow::Result<Option<Ticket>>,
        s: &str,
        g: &str,
        i: &str,
    ) -> anyhow::Result<(UpdateOutcome, Option<Ticket>)> {
        let d = &self.new_value;
        let ticket = log(&RecordRef::Set { s, g, i, d })?;
        let old_value = state.put(s, g, i, self.new_value.clone());
        let outcome = UpdateOutcome {
            old_value,
            new_value: self.new_value,
            errors: self.errors,
        };
        Ok((outcome, ticket))
    }
}

pub struct KvStore {
    state: Arc<RwLock<State>>,
    wal: Option<Wal>,
    /// Each write's place in its item's event order, taken as it is applied.
    turns: Turns,
    /// Bytes of a torn write cut off the log at recovery; None in memory.
    truncated_bytes: Option<u64>,
}

impl KvStore {
    pub fn in_memory() -> Self {
        KvStore {
            state: Arc::default(),
            wal: None,
            turns: Turns::default(),
            truncated_bytes: None,
        }
    }

    /// Opens the durable store in directory `dir`, replaying its log.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        KvStore::open_on(Arc::new(RealDisk), dir, wal::Options::default())
    }

    /// Opens the durable store on `disk` (a simulated one, in the fault tests).
    pub fn open_on(disk: Arc<dyn Disk>, dir: &Path, options: wal::Options) -> anyhow::Result<Self> {
        let mut state = State::default();
        let opened = Wal::open_on(disk, dir, options, |record| state.apply(record))?;
        let recovery = &opened.recovery;
        let truncated_bytes = Some(recovery.truncated_bytes);
        tracing::info!(
            dir = %dir.display(),
            items = state.item_count(),
            records = recovery.records,
            bytes = recovery.bytes,
            ms = recovery.elapsed.as_secs_f64() * 1000.0,
            "recovered the stream store"
        );
        let state = Arc::new(RwLock::new(state));
        let for_snapshot = state.clone();
        let snapshot: Arc<wal::SnapshotFn> =
            Arc::new(move |out: &mut dyn std::io::Write| State::write_snapshot(&for_snapshot, out));
        // After a failed write, memory goes back to what the log holds: nothing may read a
        // change the disk does not have.
        let for_reload = state.clone();
        let reload: Arc<wal::ReloadFn> = Arc::new(move |log: &[u8]| {
            let mut fresh = State::default();
            wal::recovery::scan(log, |record| fresh.apply(record));
            *for_reload.write().unwrap() = fresh;
        });
        Ok(KvStore {
            state,
            wal: Some(opened.start(snapshot, reload)),
            turns: Turns::default(),
            truncated_bytes,
        })
    }

    /// The state, to read; refused while a failed write has left it ahead of the disk and it
    /// could not yet be reloaded, so that no read serves a write the disk does not have.
    fn read(&self) -> anyhow::Result<std::sync::RwLockReadGuard<'_, State>> {
        let state = self.state.read().unwrap();
        if let Some(wal) = &self.wal
            && wal.memory_ahead()
        {
            anyhow::bail!(
                "the store cannot serve reads for a moment: its disk failed and it is reloading what the disk holds; retry shortly"
            );
        }
        Ok(state)
    }

    /// Runs a change under the write lock, logs it (taking the item's turn to emit), and
    /// waits for the log outside the lock. A change that logs nothing stored nothing, and
    /// takes no turn.
    async fn change<R>(
        &self,
        change: impl FnOnce(
            &mut State,
            &mut dyn FnMut(&RecordRef<'_>) -> anyhow::Result<Option<Ticket>>,
        ) -> anyhow::Result<(R, Option<Ticket>)>,
    ) -> anyhow::Result<Stored<R>> {
        let mut order = Order::nothing_written();
        let (result, ticket) = {
            let mut state = self.state.write().unwrap();
            let mut log = |record: &RecordRef<'_>| {
                if let RecordRef::Set { s, g, i, .. } | RecordRef::Del { s, g, i } = record {
                    order.join(self.turns.claim(s, g, i));
                }
                match &self.wal {
                    Some(wal) => Ok(Some(wal.append(record)?)),
                    None => Ok(None),
                }
            };
            change(&mut state, &mut log)?
        };
        if let (Some(wal), Some(ticket)) = (&self.wal, ticket) {
            // A worker's call goes on without waiting: what must wait for the disk waits for
            // the ticket it holds (see `synced`).
            let log = std::ptr::from_ref(wal) as usize;
            if let Err(ticket) = super::synced::hold(log, ticket) {
                // Waiting on the disk uses no thread: the call's turn goes to others meanwhile.
                crate::fair::idle(wal.wait(ticket)).await?;
            }
        }
        Ok(Stored {
            value: result,
            order,
        })
    }
}

#[async_trait]
impl StreamAdapter for KvStore {
    fn name(&self) -> &'static str {
        if self.wal.is_some() {
            "kv_file"
        } else {
            "kv_memory"
        }
    }

    async fn get(&self, stream: &str, group: &str, item: &str) -> anyhow::Result<Option<Json>> {
        Ok(self
            .read()?
            .group(stream, group)
            .and_then(|g| g.get(item))
            .cloned())
    }

    async fn set(
        &self,
        s: &str,
        g: &str,
        i: &str,
        data: Json,
    ) -> anyhow::Result<Stored<Option<Json>>> {
        Ok(self.write(s, g, i, data).await?.map(|(old, _)| old))
    }

    /// The store keeps the value it is given: the value now stored is `data`, shared.
    async fn write(
        &self,
        s: &str,
        g: &str,
        i: &str,
        data: Json,
    ) -> anyhow::Result<Stored<(Option<Json>, Json)>> {
        self.change(|state, log| {
            let ticket = log(&RecordRef::Set { s, g, i, d: &data })?;
            let old = state.put(s, g, i, data.clone());
            Ok(((old, data), ticket))
        })
        .await
    }

    async fn delete(&self, s: &str, g: &str, i: &str) -> anyhow::Result<Stored<Option<Json>>> {
        self.change(|state, log| {
            if state.group(s, g).is_none_or(|items| !items.contains_key(i)) {
                if let Some(wal) = &self.wal {
                    wal.check_writable()?;
                }
                return Ok((None, None));
            }
            let ticket = log(&RecordRef::Del { s, g, i })?;
            Ok((state.remove(s, g, i), ticket))
        })
        .await
    }

    async fn list(&self, stream: &str, group: &str) -> anyhow::Result<Vec<Json>> {
        let state = self.read()?;
        Ok(state
            .group(stream, group)
            .map(|g| g.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn list_ids(&self, stream: &str, group: &str) -> anyhow::Result<Vec<String>> {
        let state = self.read()?;
        Ok(state
            .group(stream, group)
            .map(|g| g.keys().cloned().collect())
            .unwrap_or_default())
    }

    async fn list_groups(&self, stream: &str) -> anyhow::Result<Vec<String>> {
        let state = self.read()?;
        let mut groups: Vec<String> = state
            .streams
            .get(stream)
            .map(|g| g.keys().cloned().collect())
            .unwrap_or_default();
        groups.sort();
        Ok(groups)
    }

    async fn list_all(&self) -> anyhow::Result<Vec<(String, Vec<String>)>> {
        let state = self.read()?;
        let mut all: Vec<(String, Vec<String>)> = state
            .streams
            .iter()
            .map(|(s, groups)| {
                let mut g: Vec<String> = groups.keys().cloned().collect();
                g.sort();
                (s.clone(), g)
            })
            .collect();
        all.sort();
        Ok(all)
    }

    /// The ops are applied outside the store's lock, to the item as read, and the result is
    /// stored only if the item is still that very text: reading an item of up to 500 KiB into
    /// a tree and writing the result out under the lock held every writer of the store for
    /// milliseconds. An item rewritten under an update each time is updated under the lock.
    async fn update(
        &self,
        s: &str,
        g: &str,
        i: &str,
        ops: &UpdateOps,
    ) -> anyhow::Result<Stored<UpdateOutcome>> {
        for _ in 0..UNLOCKED_UPDATES {
            // As the update under the lock reads: a value the disk may not hold yet is stored
            // onto only if the log then takes the result, as it would be under the lock.
            let seen = {
                let state = self.state.read().unwrap();
                state.group(s, g).and_then(|items| items.get(i)).cloned()
            };
            let update = Update::apply(seen.as_ref(), ops)?;
            let stored = self
                .change(|state, log| {
                    let now = state.group(s, g).and_then(|items| items.get(i));
                    if !same(now, seen.as_ref()) {
                        return Ok((None, None));
                    }
                    let (outcome, ticket) = update.store(state, log, s, g, i)?;
                    Ok((Some(outcome), ticket))
                })
                .await?;
            if let Some(outcome) = stored.value {
                let order = stored.order;
                return Ok(Stored {
                    value: outcome,
                    order,
                });
            }
        }
        self.change(|state, log| {
            let current = state.group(s, g).and_then(|items| items.get(i));
            Update::apply(current, ops)?.store(state, log, s, g, i)
        })
        .await
    }

    fn health(&self) -> Result<(), String> {
        match self.wal.as_ref().and_then(|w| w.failure()) {
            Some(failure) => Err(format!("the store's log cannot be written: {failure}")),
            None => Ok(()),
        }
    }

    fn telemetry(&self) -> Telemetry {
        Telemetry {
            log_truncated_bytes: self.truncated_bytes,
            ..Telemetry::default()
        }
    }

    async fn shutdown(&self) -> anyhow::Result<()> {
        if let Some(wal) = &self.wal {
            wal.shutdown();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::ValueLimits;
    use serde_json::json;

    /// Updates that race each other (and with 20 KB to read, they do) lose no increment: an
    /// update applied outside the lock is stored only onto the very text it read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_updates_lose_no_increment() {
        let increment = [json!({"type": "increment", "path": "n", "by": 1})];
        let ops = Arc::new(UpdateOps::parse(&increment, &ValueLimits::default()).unwrap());
        let store = Arc::new(KvStore::in_memory());
        let item = json!({"n": 0, "pad": "x".repeat(20_000)});
        store.set("s", "g", "i", item.into()).await.unwrap();
        let racers: Vec<_> = (0..8)
            .map(|_| {
                let (store, ops) = (store.clone(), ops.clone());
                tokio::spawn(async move {
                    for _ in 0..200 {
                        store.update("s", "g", "i", &ops).await.unwrap();
                    }
                })
            })
            .collect();
        for racer in racers {
            racer.await.unwrap();
        }
        let stored = store.get("s", "g", "i").await.unwrap().unwrap();
        assert_eq!(stored.to_value()["n"], 1600);
    }
}
