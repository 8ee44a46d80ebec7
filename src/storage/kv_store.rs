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

    async fn update(
        &self,
        s: &str,
        g: &str,
        i: &str,
        ops: &UpdateOps,
    ) -> anyhow::Result<Stored<UpdateOutcome>> {
        self.change(|state, log| {
            let current = state.group(s, g).and_then(|items| items.get(i));
            let current = current.map(Json::to_value);
            // A result past the limits is refused here, before it is logged or stored.
            let (new_value, errors) = update_ops::apply(current.as_ref(), ops)?;
            let new_value = Json::from_value(&new_value);
            let ticket = log(&RecordRef::Set {
                s,
                g,
                i,
                d: &new_value,
            })?;
            let old_value = state.put(s, g, i, new_value.clone());
            Ok((
                UpdateOutcome {
                    old_value,
                    new_value,
                    errors,
                },
                ticket,
            ))
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
