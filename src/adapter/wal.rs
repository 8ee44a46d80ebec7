//! The write-ahead log behind the durable KvStore, with group commit.
//!
//! Writers append a record while they hold the store's lock (so the log's order is the order
//! of the changes) and then wait, without the lock, until a flusher thread has written and
//! synced it. The flusher takes everything appended since its last sync in one write and one
//! `fdatasync`, so concurrent writers share the cost of a sync. When the log has grown well
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
use tokio::sync::watch;

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

#[derive(Clone, Debug, Default)]
struct Durable {
    seq: u64,
    failed: Option<Arc<str>>,
}

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    seq: u64,
    shutdown: bool,
}

/// Produces the whole store as framed records. It must call `drain` while it holds the
/// store's lock, so that the snapshot covers exactly the records drained.
pub type SnapshotFn = dyn Fn(&mut dyn FnMut() -> u64) -> Vec<u8> + Send + Sync;

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    durable: watch::Sender<Durable>,
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
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            durable: watch::channel(Durable::default()).0,
        });
        let Opened { dir, file, lock, recovery } = self;
        let for_thread = shared.clone();
        let handle = std::thread::Builder::new()
            .name("wal-flusher".into())
            .spawn(move || flusher(for_thread, dir, file, lock, recovery.bytes, snapshot))
            .expect("spawn the log flusher");
        Wal { shared, flusher: Mutex::new(Some(handle)) }
    }
}

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

    /// Appends a record; call it while holding the store's lock. Returns its sequence number.
    pub fn append(&self, record: &RecordRef<'_>) -> anyhow::Result<u64> {
        if let Some(err) = &self.shared.durable.borrow().failed {
            bail!("the store's log cannot be written ({err}); fix the disk and restart the engine");
        }
        let mut p = self.shared.pending.lock().unwrap();
        if p.shutdown {
            bail!("the store is shutting down");
        }
        encode(record, &mut p.buf);
        p.seq += 1;
        let seq = p.seq;
        drop(p);
        self.shared.wake.notify_one();
        Ok(seq)
    }

    /// Why the log can no longer be written, if it cannot.
    pub fn failure(&self) -> Option<String> {
        self.shared.durable.borrow().failed.as_ref().map(|f| f.to_string())
    }

    /// Waits until the record `seq` is on disk.
    pub async fn wait(&self, seq: u64) -> anyhow::Result<()> {
        let mut rx = self.shared.durable.subscribe();
        let state = rx
            .wait_for(|d| d.seq >= seq || d.failed.is_some())
            .await
            .map_err(|_| anyhow::anyhow!("the store's log flusher stopped"))?
            .clone();
        if state.seq >= seq {
            return Ok(());
        }
        bail!("the write was not made durable: {}", state.failed.unwrap_or_default())
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
    loop {
        let (buf, seq) = {
            let mut p = shared.pending.lock().unwrap();
            while p.buf.is_empty() && !p.shutdown {
                p = shared.wake.wait(p).unwrap();
            }
            if p.buf.is_empty() {
                return;
            }
            let seq = p.seq;
            (std::mem::take(&mut p.buf), seq)
        };
        let written = file.write_all(&buf).and_then(|_| file.sync_data());
        if let Err(e) = written {
            tracing::error!(error = %e, "cannot write the store's log; writes now fail until restart");
            shared.durable.send_modify(|d| d.failed = Some(e.to_string().into()));
            return;
        }
        log_bytes += buf.len() as u64;
        shared.durable.send_modify(|d| d.seq = seq);
        if log_bytes > COMPACT_MIN_BYTES && log_bytes > 2 * compacted_bytes {
            match compact(&shared, &dir, snapshot.as_ref()) {
                Ok((new_file, bytes)) => {
                    tracing::info!(before = log_bytes, after = bytes, "rewrote the store's log from a snapshot");
                    file = new_file;
                    log_bytes = bytes;
                    compacted_bytes = bytes;
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "cannot compact the store's log; writes now fail until restart");
                    shared.durable.send_modify(|d| d.failed = Some(format!("{e:#}").into()));
                    return;
                }
            }
        }
    }
}

/// Rewrites the log as a snapshot of the store; records pending at that moment are covered
/// by the snapshot and marked durable once it is in place.
fn compact(shared: &Shared, dir: &Path, snapshot: &SnapshotFn) -> anyhow::Result<(File, u64)> {
    let mut covered = 0u64;
    let bytes = snapshot(&mut || {
        let mut p = shared.pending.lock().unwrap();
        p.buf.clear();
        covered = p.seq;
        covered
    });
    let tmp = dir.join("streams.wal.tmp");
    let path = dir.join("streams.wal");
    let mut out = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    out.write_all(&bytes)?;
    out.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()?;
    let file = OpenOptions::new().append(true).open(&path)?;
    shared.durable.send_modify(|d| d.seq = d.seq.max(covered));
    Ok((file, bytes.len() as u64))
}
