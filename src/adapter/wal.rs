//! The write-ahead log behind the durable KvStore, with group commit.
//!
//! Writers append a record while they hold the store's lock (so the log's order is the order
//! of the changes) and then wait, without the lock, until a flusher thread has written and
//! synced it. The flusher takes everything appended since its last sync in one write and one
//! `fdatasync`, so concurrent writers share the cost of a sync, and then wakes exactly the
//! writers whose records that sync covered. When the log has grown well
//! past the live data it is rewritten from a snapshot of the store.
//!
//! On disk a record is `len: u32 LE | crc32: u32 LE | payload`, the payload JSON. Recovery
//! stops at the first torn or corrupt record (an unacknowledged write cut by a crash) and
//! truncates the log there.

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A change as written to the log.
#[derive(Serialize)]
#[serde(tag = "op")]
pub enum RecordRef<'a> {
    #[serde(rename = "set")]
    Set { s: &'a str, g: &'a str, i: &'a str, d: &'a Value },
    #[serde(rename = "del")]
    Del { s: &'a str, g: &'a str, i: &'a str },
}

/// A change as read back from the log.
#[derive(Deserialize)]
#[serde(tag = "op")]
pub enum Record {
    #[serde(rename = "set")]
    Set { s: String, g: String, i: String, d: Value },
    #[serde(rename = "del")]
    Del { s: String, g: String, i: String },
}

/// Appends one framed record to `buf`.
pub fn encode(record: &RecordRef<'_>, buf: &mut Vec<u8>) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 8]);
    serde_json::to_writer(&mut *buf, record).expect("a JSON value always serializes");
    let payload = &buf[start + 8..];
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

type Waiter = oneshot::Sender<Result<(), Arc<str>>>;

/// A record's place in the log: wait on it to know the record is on disk.
pub struct Ticket(oneshot::Receiver<Result<(), Arc<str>>>);

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    /// The writers of the records in `buf`.
    waiters: Vec<Waiter>,
    shutdown: bool,
    /// The flusher sleeps on the condvar: only then is a wake-up (a syscall) worth sending.
    flusher_idle: bool,
    /// The flusher is waiting for this many writers before it syncs (0: it is not).
    fill_target: usize,
    /// Set once the log cannot be written; every later write fails with it.
    failed: Option<Arc<str>>,
}

/// Produces the whole store as framed records. It must call `drain` while it holds the
/// store's lock, so that the snapshot covers exactly the records drained.
pub type SnapshotFn = dyn Fn(&mut dyn FnMut()) -> Vec<u8> + Send + Sync;

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
}

impl Shared {
    /// Marks the log as failed and fails every waiting writer.
    fn fail(&self, waiters: Vec<Waiter>, reason: String) {
        let reason: Arc<str> = reason.into();
        let mut p = self.pending.lock().unwrap();
        p.failed = Some(reason.clone());
        for w in waiters.into_iter().chain(p.waiters.drain(..)) {
            let _ = w.send(Err(reason.clone()));
        }
    }
}

pub struct Wal {
    shared: Arc<Shared>,
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// What recovery found, for the start-up report.
#[derive(Debug, Default)]
pub struct Recovery {
    pub records: u64,
    pub bytes: u64,
    pub truncated_bytes: u64,
    pub elapsed: Duration,
}

/// A replayed log, ready to take writes once the store has its state.
pub struct Opened {
    dir: PathBuf,
    file: File,
    /// Held for the life of the flusher: one engine per store directory.
    lock: File,
    pub recovery: Recovery,
}

impl Opened {
    /// Starts the flusher thread; `snapshot` serializes the store for compaction.
    pub fn start(self, snapshot: Arc<SnapshotFn>) -> Wal {
        let shared = Arc::new(Shared { pending: Mutex::new(Pending::default()), wake: Condvar::new() });
        let Opened { dir, file, lock, recovery } = self;
        let for_thread = shared.clone();
        let handle = std::thread::Builder::new()
            .name("wal-flusher".into())
            .spawn(move || flusher(for_thread, dir, file, lock, recovery.bytes, snapshot))
            .expect("spawn the log flusher");
        Wal { shared, flusher: Mutex::new(Some(handle)) }
    }
}

/// The longest a sync waits for more writers when writes are coming in concurrently.
const COMMIT_DELAY: Duration = Duration::from_micros(500);
/// A batch this large is synced at once.
const MAX_BATCH_WAITERS: usize = 512;

/// The log grows this much past the last snapshot before it is rewritten.
const COMPACT_MIN_BYTES: u64 = 64 << 20;

impl Wal {
    /// Opens (or creates) the log in `dir`, replaying every intact record into `apply`.
    pub fn open(dir: &Path, mut apply: impl FnMut(Record)) -> anyhow::Result<Opened> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the store directory {}", dir.display()))?;
        let path = dir.join("streams.wal");
        let started = Instant::now();
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let lock = File::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
        if lock.try_lock().is_err() {
            bail!("{} is in use by another streamhost process; stop it or choose another file_path", dir.display());
        }
        let mut data = Vec::new();
        file.read_to_end(&mut data).with_context(|| format!("cannot read {}", path.display()))?;
        let mut off = 0usize;
        let mut records = 0u64;
        while off + 8 <= data.len() {
            let len = u32::from_le_bytes(data[off..off + 4].try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(data[off + 4..off + 8].try_into().unwrap());
            let Some(payload) = data.get(off + 8..off + 8 + len) else { break };
            if crc32fast::hash(payload) != crc {
                break;
            }
            let Ok(record) = serde_json::from_slice::<Record>(payload) else { break };
            apply(record);
            records += 1;
            off += 8 + len;
        }
        let truncated = (data.len() - off) as u64;
        if truncated > 0 {
            tracing::warn!(path = %path.display(), bytes = truncated, "discarding a torn record at the end of the log (a write that was never acknowledged)");
            file.set_len(off as u64)?;
            file.sync_all()?;
        }
        let recovery = Recovery { records, bytes: off as u64, truncated_bytes: truncated, elapsed: started.elapsed() };
        Ok(Opened { dir: dir.to_path_buf(), file, lock, recovery })
    }

    /// Appends a record; call it while holding the store's lock, then wait on the ticket
    /// without it.
    pub fn append(&self, record: &RecordRef<'_>) -> anyhow::Result<Ticket> {
        let mut p = self.shared.pending.lock().unwrap();
        if let Some(err) = &p.failed {
            bail!("the store's log cannot be written ({err}); fix the disk and restart the engine");
        }
        if p.shutdown {
            bail!("the store is shutting down");
        }
        encode(record, &mut p.buf);
        let (tx, rx) = oneshot::channel();
        p.waiters.push(tx);
        let filled = p.fill_target > 0 && p.waiters.len() >= p.fill_target;
        let wake = std::mem::take(&mut p.flusher_idle) || filled;
        drop(p);
        if wake {
            self.shared.wake.notify_one();
        }
        Ok(Ticket(rx))
    }

    /// Why the log can no longer be written, if it cannot.
    pub fn failure(&self) -> Option<String> {
        self.shared.pending.lock().unwrap().failed.as_ref().map(|f| f.to_string())
    }

    /// Waits until the ticket's record is on disk.
    pub async fn wait(&self, ticket: Ticket) -> anyhow::Result<()> {
        match ticket.0.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => bail!("the write was not made durable: {reason}"),
            Err(_) => bail!("the store's log flusher stopped before the write was on disk"),
        }
    }

    /// Flushes what is pending and stops the flusher.
    pub fn shutdown(&self) {
        self.shared.pending.lock().unwrap().shutdown = true;
        self.shared.wake.notify_one();
        if let Some(handle) = self.flusher.lock().unwrap().take() {
            let _ = handle.join();
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn flusher(shared: Arc<Shared>, dir: PathBuf, mut file: File, lock: File, mut log_bytes: u64, snapshot: Arc<SnapshotFn>) {
    let _lock = lock;
    let mut compacted_bytes = 0u64;
    let mut buf = Vec::new();
    let mut last_batch = 0;
    loop {
        let waiters = {
            let mut p = shared.pending.lock().unwrap();
            while p.buf.is_empty() && !p.shutdown {
                p.flusher_idle = true;
                p = shared.wake.wait(p).unwrap();
            }
            p.flusher_idle = false;
            if p.buf.is_empty() {
                return;
            }
            // Under concurrent load, wait (briefly) for as many writers as the last sync had:
            // they come back with their next writes as soon as they are answered, and an
            // fsync costs the core far more than the wait costs them.
            let target = last_batch.min(MAX_BATCH_WAITERS);
            if target > 1 && p.waiters.len() < target && !p.shutdown {
                let deadline = std::time::Instant::now() + COMMIT_DELAY;
                p.fill_target = target;
                while p.waiters.len() < target && !p.shutdown {
                    let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) else { break };
                    p = shared.wake.wait_timeout(p, left).unwrap().0;
                }
                p.fill_target = 0;
            }
            last_batch = p.waiters.len();
            // Swap buffers, so both keep their capacity from one batch to the next.
            buf.clear();
            std::mem::swap(&mut buf, &mut p.buf);
            std::mem::take(&mut p.waiters)
        };
        if let Err(e) = file.write_all(&buf).and_then(|_| file.sync_data()) {
            tracing::error!(error = %e, "cannot write the store's log; writes now fail until restart");
            shared.fail(waiters, e.to_string());
            return;
        }
        log_bytes += buf.len() as u64;
        for w in waiters {
            let _ = w.send(Ok(()));
        }
        if log_bytes > COMPACT_MIN_BYTES && log_bytes > 2 * compacted_bytes {
            match compact(&shared, &dir, &*snapshot) {
                Ok((new_file, bytes)) => {
                    tracing::info!(before = log_bytes, after = bytes, "rewrote the store's log from a snapshot");
                    file = new_file;
                    log_bytes = bytes;
                    compacted_bytes = bytes;
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "cannot compact the store's log; writes now fail until restart");
                    shared.fail(Vec::new(), format!("{e:#}"));
                    return;
                }
            }
        }
    }
}

/// Rewrites the log as a snapshot of the store; records pending at that moment are covered
/// by the snapshot, and their writers are answered once it is in place.
fn compact(shared: &Shared, dir: &Path, snapshot: &SnapshotFn) -> anyhow::Result<(File, u64)> {
    let mut covered = Vec::new();
    let bytes = snapshot(&mut || {
        let mut p = shared.pending.lock().unwrap();
        p.buf.clear();
        covered = std::mem::take(&mut p.waiters);
    });
    let tmp = dir.join("streams.wal.tmp");
    let path = dir.join("streams.wal");
    let written = (|| -> anyhow::Result<File> {
        let mut out = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        out.write_all(&bytes)?;
        out.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()?;
        Ok(OpenOptions::new().append(true).open(&path)?)
    })();
    match written {
        Ok(file) => {
            for w in covered {
                let _ = w.send(Ok(()));
            }
            Ok((file, bytes.len() as u64))
        }
        Err(e) => {
            shared.fail(covered, format!("{e:#}"));
            Err(e)
        }
    }
}
