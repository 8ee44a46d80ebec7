//! The write-ahead log behind the durable KvStore, with group commit.
//!
//! Writers append a record while they hold the store's lock (so the log's order is the order
//! of the changes) and then wait, without the lock, until a flusher thread has written and
//! synced it. The flusher takes everything appended since its last sync in one write and one
//! `fdatasync`, so concurrent writers share the cost of a sync, and then wakes exactly the
//! writers whose records that sync covered. When the log has grown well
//! past the live data it is rewritten (see `compact`) while writes go on.
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
    Set {
        s: &'a str,
        g: &'a str,
        i: &'a str,
        d: &'a Value,
    },
    #[serde(rename = "del")]
    Del { s: &'a str, g: &'a str, i: &'a str },
}

/// A change as read back from the log.
#[derive(Deserialize)]
#[serde(tag = "op")]
pub enum Record {
    #[serde(rename = "set")]
    Set {
        s: String,
        g: String,
        i: String,
        d: Value,
    },
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
    /// A background snapshot has finished (well or not) and waits for the flusher.
    compaction_done: bool,
}

/// Writes every item of the store as framed set records. It may take the store's lock in
/// turns (one group at a time, say) while writes go on: records appended after the snapshot
/// began are replayed after it, and set and delete records are idempotent.
pub type SnapshotFn = dyn Fn(&mut dyn Write) -> std::io::Result<()> + Send + Sync;

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
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
        });
        let Opened {
            dir,
            file,
            lock,
            recovery,
        } = self;
        let for_thread = shared.clone();
        let handle = std::thread::Builder::new()
            .name("wal-flusher".into())
            .spawn(move || flusher(for_thread, dir, file, lock, recovery.bytes, snapshot))
            .expect("spawn the log flusher");
        Wal {
            shared,
            flusher: Mutex::new(Some(handle)),
        }
    }
}

/// The longest a sync waits for more writers when writes are coming in concurrently.
const COMMIT_DELAY: Duration = Duration::from_micros(500);
/// A batch this large is synced at once.
const MAX_BATCH_WAITERS: usize = 512;

/// How long opening a store waits for another holder of its lock to let go.
const LOCK_PATIENCE: Duration = Duration::from_secs(2);

/// The log grows this much past the last snapshot before it is rewritten.
#[cfg(not(test))]
const COMPACT_MIN_BYTES: u64 = 64 << 20;
#[cfg(test)]
const COMPACT_MIN_BYTES: u64 = 64 << 10;

impl Wal {
    /// Opens (or creates) the log in `dir`, replaying every intact record into `apply`.
    pub fn open(dir: &Path, mut apply: impl FnMut(Record)) -> anyhow::Result<Opened> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the store directory {}", dir.display()))?;
        let path = dir.join("streams.wal");
        let started = Instant::now();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let lock = File::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
        // A lock can outlive its engine by a moment: a process being spawned holds a copy of
        // every descriptor until it execs. Only a lock held this long means another engine.
        let locked_since = Instant::now();
        while lock.try_lock().is_err() {
            if locked_since.elapsed() > LOCK_PATIENCE {
                bail!(
                    "{} is in use by another streamhost process; stop it or choose another file_path",
                    dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut data = Vec::new();
        file.read_to_end(&mut data)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut off = 0usize;
        let mut records = 0u64;
        while off + 8 <= data.len() {
            let len = u32::from_le_bytes(data[off..off + 4].try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(data[off + 4..off + 8].try_into().unwrap());
            let Some(payload) = data.get(off + 8..off + 8 + len) else {
                break;
            };
            if crc32fast::hash(payload) != crc {
                break;
            }
            let Ok(record) = serde_json::from_slice::<Record>(payload) else {
                break;
            };
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
        let recovery = Recovery {
            records,
            bytes: off as u64,
            truncated_bytes: truncated,
            elapsed: started.elapsed(),
        };
        Ok(Opened {
            dir: dir.to_path_buf(),
            file,
            lock,
            recovery,
        })
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
        self.shared
            .pending
            .lock()
            .unwrap()
            .failed
            .as_ref()
            .map(|f| f.to_string())
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

fn flusher(
    shared: Arc<Shared>,
    dir: PathBuf,
    mut file: File,
    lock: File,
    mut log_bytes: u64,
    snapshot: Arc<SnapshotFn>,
) {
    let _lock = lock;
    let mut compacted_bytes = 0u64;
    let mut compaction: Option<Compaction> = None;
    let mut buf = Vec::new();
    let mut last_batch = 0;
    loop {
        let (waiters, snapshot_done) = {
            let mut p = shared.pending.lock().unwrap();
            while p.buf.is_empty() && !p.shutdown && !p.compaction_done {
                p.flusher_idle = true;
                p = shared.wake.wait(p).unwrap();
            }
            p.flusher_idle = false;
            let snapshot_done = std::mem::take(&mut p.compaction_done);
            if p.buf.is_empty() && p.shutdown {
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
                    let Some(left) = deadline.checked_duration_since(std::time::Instant::now())
                    else {
                        break;
                    };
                    p = shared.wake.wait_timeout(p, left).unwrap().0;
                }
                p.fill_target = 0;
            }
            last_batch = p.waiters.len();
            // Swap buffers, so both keep their capacity from one batch to the next.
            buf.clear();
            std::mem::swap(&mut buf, &mut p.buf);
            (std::mem::take(&mut p.waiters), snapshot_done)
        };
        if !buf.is_empty() {
            if let Err(e) = file.write_all(&buf).and_then(|_| file.sync_data()) {
                tracing::error!(error = %e, "cannot write the store's log; writes now fail until restart");
                shared.fail(waiters, e.to_string());
                return;
            }
            log_bytes += buf.len() as u64;
            for w in waiters {
                let _ = w.send(Ok(()));
            }
        }
        let failed = if snapshot_done && let Some(running) = compaction.take() {
            match running.finish(&dir, &file, log_bytes) {
                Ok((new_file, bytes)) => {
                    tracing::info!(
                        before = log_bytes,
                        after = bytes,
                        "rewrote the store's log from a snapshot"
                    );
                    file = new_file;
                    log_bytes = bytes;
                    compacted_bytes = bytes;
                    None
                }
                Err(e) => Some(e),
            }
        } else if compaction.is_none()
            && log_bytes > COMPACT_MIN_BYTES
            && log_bytes > 2 * compacted_bytes
        {
            match Compaction::start(shared.clone(), &dir, log_bytes, snapshot.clone()) {
                Ok(started) => {
                    compaction = Some(started);
                    None
                }
                Err(e) => Some(e),
            }
        } else {
            None
        };
        if let Some(e) = failed {
            // The old log is whole and still in use: try again once it has grown as much again.
            tracing::warn!(error = %format!("{e:#}"), "cannot compact the store's log; it keeps growing until a later attempt succeeds");
            compacted_bytes = log_bytes;
        }
    }
}

/// A log rewrite in progress. A thread writes a snapshot of the store to a new file while the
/// flusher keeps appending to the old log; then the flusher copies the records appended since
/// the snapshot began (from `from` on) after it and puts the new file in place. Writers never
/// wait for the snapshot, only for the copy of that tail. If anything fails, the old log,
/// still whole, stays in use. Dropped unfinished (the engine stops), it stops the thread.
struct Compaction {
    /// Where in the old log the records not surely in the snapshot begin.
    from: u64,
    /// The snapshot's file, renamed over the log once the tail is copied after it.
    tmp: PathBuf,
    abort: Arc<std::sync::atomic::AtomicBool>,
    /// The thread writing the snapshot; its result is whether it succeeded.
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

/// The snapshot's file, which refuses further writes once the rewrite is abandoned.
struct Abortable {
    out: std::io::BufWriter<File>,
    abort: Arc<std::sync::atomic::AtomicBool>,
}

impl Write for Abortable {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.abort.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(std::io::Error::other("the rewrite was abandoned"));
        }
        self.out.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

impl Compaction {
    fn start(
        shared: Arc<Shared>,
        dir: &Path,
        from: u64,
        snapshot: Arc<SnapshotFn>,
    ) -> anyhow::Result<Compaction> {
        let abort = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tmp = dir.join("streams.wal.tmp");
        let (path, stop) = (tmp.clone(), abort.clone());
        let thread = std::thread::Builder::new()
            .name("wal-compactor".into())
            .spawn(move || {
                let written = (|| -> anyhow::Result<()> {
                    let file = File::create(&path)
                        .with_context(|| format!("cannot create {}", path.display()))?;
                    let mut out = Abortable {
                        out: std::io::BufWriter::with_capacity(1 << 20, file),
                        abort: stop,
                    };
                    snapshot(&mut out)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    out.out
                        .into_inner()
                        .map_err(|e| e.into_error())?
                        .sync_all()?;
                    Ok(())
                })();
                shared.pending.lock().unwrap().compaction_done = true;
                shared.wake.notify_one();
                written
            })
            .context("cannot start the compaction thread")?;
        Ok(Compaction {
            from,
            tmp,
            abort,
            thread: Some(thread),
        })
    }

    /// Appends the old log's tail to the snapshot and puts it in place of the old log.
    fn finish(mut self, dir: &Path, old: &File, log_bytes: u64) -> anyhow::Result<(File, u64)> {
        let thread = self.thread.take().expect("a rewrite is finished once");
        thread
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the compaction thread panicked")))?;
        let path = dir.join("streams.wal");
        let mut out = OpenOptions::new()
            .append(true)
            .open(&self.tmp)
            .with_context(|| format!("cannot reopen {}", self.tmp.display()))?;
        let mut tail = vec![0u8; (log_bytes - self.from) as usize];
        std::os::unix::fs::FileExt::read_exact_at(old, &mut tail, self.from)
            .context("cannot read the log's tail")?;
        out.write_all(&tail)?;
        out.sync_all()?;
        std::fs::rename(&self.tmp, &path)?;
        File::open(dir)?.sync_all()?;
        let file = OpenOptions::new().read(true).append(true).open(&path)?;
        let bytes = file.metadata()?.len();
        Ok((file, bytes))
    }
}

impl Drop for Compaction {
    fn drop(&mut self) {
        self.abort.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;
    use std::sync::mpsc;

    type Items = BTreeMap<String, Value>;

    fn replay(dir: &Path) -> Items {
        let mut items = Items::new();
        let opened = Wal::open(dir, |r| match r {
            Record::Set { i, d, .. } => {
                items.insert(i, d);
            }
            Record::Del { i, .. } => {
                items.remove(&i);
            }
        })
        .unwrap();
        drop(opened);
        items
    }

    /// Writes made while a snapshot is being taken are not in it: the rewritten log must
    /// still hold them, after the snapshot, in their order.
    #[tokio::test]
    async fn writes_made_during_a_snapshot_survive_the_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let items: Arc<Mutex<Items>> = Arc::default();
        let (started_tx, started) = mpsc::channel();
        let (go, go_rx) = mpsc::channel::<()>();
        let go_rx = Mutex::new(go_rx);
        let for_snapshot = items.clone();
        // A snapshot of the items as they are when it starts, written only once the test says.
        let snapshot: Arc<SnapshotFn> = Arc::new(move |out: &mut dyn Write| {
            let taken = for_snapshot.lock().unwrap().clone();
            let _ = started_tx.send(());
            go_rx.lock().unwrap().recv().unwrap();
            let mut buf = Vec::new();
            for (i, d) in &taken {
                encode(
                    &RecordRef::Set {
                        s: "s",
                        g: "g",
                        i,
                        d,
                    },
                    &mut buf,
                );
            }
            out.write_all(&buf)
        });
        let wal = Wal::open(dir.path(), |_| {}).unwrap().start(snapshot);
        let write = |record: RecordRef<'_>| {
            let mut items = items.lock().unwrap();
            match &record {
                RecordRef::Set { i, d, .. } => items.insert(i.to_string(), (*d).clone()),
                RecordRef::Del { i, .. } => items.remove(*i),
            };
            wal.append(&record).unwrap()
        };
        let pad = json!("x".repeat(1000));
        // Overwrites of a few items, until the log is big enough to be rewritten.
        for n in 0..200 {
            let i = format!("old{}", n % 5);
            wal.wait(write(RecordRef::Set {
                s: "s",
                g: "g",
                i: &i,
                d: &pad,
            }))
            .await
            .unwrap();
        }
        started
            .recv_timeout(Duration::from_secs(10))
            .expect("a rewrite starts");
        // While the snapshot is being taken: new items, an overwrite and a delete.
        for n in 0..20 {
            wal.wait(write(RecordRef::Set {
                s: "s",
                g: "g",
                i: &format!("new{n}"),
                d: &json!(n),
            }))
            .await
            .unwrap();
        }
        wal.wait(write(RecordRef::Set {
            s: "s",
            g: "g",
            i: "old1",
            d: &json!("changed"),
        }))
        .await
        .unwrap();
        wal.wait(write(RecordRef::Del {
            s: "s",
            g: "g",
            i: "old2",
        }))
        .await
        .unwrap();
        let before = std::fs::metadata(dir.path().join("streams.wal"))
            .unwrap()
            .len();
        go.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(dir.path().join("streams.wal"))
            .unwrap()
            .len()
            >= before
        {
            assert!(Instant::now() < deadline, "the log was not rewritten");
            std::thread::sleep(Duration::from_millis(10));
        }
        wal.wait(write(RecordRef::Set {
            s: "s",
            g: "g",
            i: "after",
            d: &json!(1),
        }))
        .await
        .unwrap();
        wal.shutdown();
        drop(wal);
        let recovered = replay(dir.path());
        let expected = items.lock().unwrap().clone();
        assert_eq!(
            recovered.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>()
        );
        assert!(
            recovered == expected,
            "the recovered values differ from those written"
        );
        assert_eq!(recovered.get("old1"), Some(&json!("changed")));
        assert!(!recovered.contains_key("old2") && recovered.contains_key("new19"));
    }
}
