//! The write-ahead log behind the durable KvStore, with group commit.
//!
//! Writers append a record while they hold the store's lock (so the log's order is the order
//! of the changes) and then wait, without the lock, until a flusher thread has written and
//! synced it. The flusher takes everything appended since its last sync in one write and one
//! `fdatasync`, so concurrent writers share the cost of a sync, and then answers exactly the
//! writers whose records that sync covered, in log order: waking them, or running what they
//! left to run (`ticket`). It syncs when the runtime says a batch is complete (`gather`: a
//! turn of the runtime appended nothing more), as Redis syncs once per turn of its event loop.
//! When the log has grown well past the live data it is rewritten while writes go on
//! (`rewrite`).
//!
//! When a write or sync fails, the flusher stops taking writes, fails every writer not yet
//! answered, cuts the log back to what was synced, and has the store reload its memory from
//! that (so nothing reads a change the disk does not have). It then probes the disk, with a
//! backoff, and resumes by itself once a probe record is written and synced.
//!
//! Recovery (`recovery`) drops only a torn tail; other damage stops the engine. File I/O goes
//! through `disk`, so tests run this code on a simulated disk that fails on demand (`sim`).

pub mod disk;
mod gather;
pub mod record;
pub mod recovery;
mod rewrite;
#[cfg(test)]
pub mod sim;
#[cfg(test)]
mod sim_tests;
pub mod ticket;
pub mod tool;

pub use record::{Record, RecordRef, encode};

use anyhow::{Context, bail};
use disk::{Disk, DiskFile, RealDisk};
use gather::Rounds;
use recovery::Tail;
use rewrite::Rewrite;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
pub use ticket::Ticket;
use ticket::Waiter;

pub const LOG_NAME: &str = "streams.wal";

/// Why a write failed, and whether it may still be on disk.
#[derive(Debug, Clone)]
pub enum WriteError {
    /// Nothing of the write is stored: it was refused, or it was cut from the log after a
    /// failed sync.
    NotStored(String),
    /// The sync failed and the log could not be cut back either: after a crash, the write
    /// may be there or not.
    InDoubt(String),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::NotStored(m) => write!(f, "{m}"),
            WriteError::InDoubt(m) => write!(f, "{m} (the write may or may not be on disk)"),
        }
    }
}

impl std::error::Error for WriteError {}

/// Hands writers the answer of their sync. Sent from the flusher's thread, each answer would
/// wake the runtime from outside (a syscall each), and the runtime, woken per writer, ran each
/// writer's reply to its socket alone: a socket write per call. A task on the runtime takes a
/// whole sync's writers in one wake-up and answers them from inside, where their replies gather.
enum Answers {
    /// No runtime (a test driving the log by hand): the flusher answers itself.
    Here,
    Runtime(tokio::sync::mpsc::UnboundedSender<(Vec<Waiter>, Result<(), WriteError>)>),
}

impl Answers {
    fn start() -> Answers {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Answers::Here;
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let answering = Answering(rx);
        runtime.spawn(async move {
            // Owned here, before any pass: a pass dropped part way answers its rest first,
            // then this the syncs after it, in log order.
            let mut answering = answering;
            while let Some((waiters, result)) = answering.0.recv().await {
                let mut pass = Pass::new(waiters, result);
                let mut turn = Instant::now();
                while pass.answer(ANSWERS_CHECKED) {
                    if turn.elapsed() >= MAX_ANSWERING {
                        tokio::task::yield_now().await;
                        turn = Instant::now();
                    }
                }
            }
        });
        Answers::Runtime(tx)
    }

    fn send(&self, waiters: Vec<Waiter>, result: Result<(), WriteError>) {
        if waiters.is_empty() {
            return;
        }
        match self {
            Answers::Here => answer(waiters, result),
            // The runtime is gone: answer here, to whoever still waits.
            Answers::Runtime(tx) => {
                if let Err(back) = tx.send((waiters, result)) {
                    let (waiters, result) = back.0;
                    answer(waiters, result);
                }
            }
        }
    }
}

/// The answering task's end of the channel. Dropped with its runtime (a shutdown), it still
/// answers the syncs queued in it, so that a write on disk is never told it is in doubt; the
/// flusher answers any later sync itself.
struct Answering(tokio::sync::mpsc::UnboundedReceiver<(Vec<Waiter>, Result<(), WriteError>)>);

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.close();
        while let Ok((waiters, result)) = self.0.try_recv() {
            answer(waiters, result);
        }
    }
}

/// The longest a pass answers writers before it yields to the runtime, looked at every
/// `ANSWERS_CHECKED` writers. Answering a writer runs what it left to run (its event to every
/// subscriber, among others): a pass over hundreds of events to large groups would keep every
/// other task off the thread. A pass that yields whenever it can, every 64 writers, cost a
/// durable set 10%: the sockets wrote their answers in 6 times as many writes.
const MAX_ANSWERING: Duration = Duration::from_millis(1);
const ANSWERS_CHECKED: usize = 64;

/// One sync's writers being answered, in log order. Dropped part way (its runtime shutting
/// down), it answers the rest at once: a write on disk is never told it is in doubt.
struct Pass {
    waiters: std::vec::IntoIter<Waiter>,
    result: Result<(), WriteError>,
}

impl Pass {
    fn new(waiters: Vec<Waiter>, result: Result<(), WriteError>) -> Pass {
        Pass {
            waiters: waiters.into_iter(),
            result,
        }
    }

    /// Answers up to `n` writers; true while some are left.
    fn answer(&mut self, n: usize) -> bool {
        for w in self.waiters.by_ref().take(n) {
            w.send(self.result.clone());
        }
        self.waiters.len() > 0
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        self.answer(usize::MAX);
    }
}

fn answer(waiters: Vec<Waiter>, result: Result<(), WriteError>) {
    Pass::new(waiters, result).answer(usize::MAX);
}

/// Tunables; the defaults suit a real disk, tests shrink them.
#[derive(Debug, Clone)]
pub struct Options {
    /// The log grows this much past the last snapshot before it is rewritten.
    pub rewrite_min_bytes: u64,
    /// The first wait before probing a failed disk; it doubles up to `probe_max`.
    pub probe_first: Duration,
    pub probe_max: Duration,
    /// The longest the flusher waits for the runtime to say a batch is complete (see
    /// `gather`): a runtime whose thread is held up (a long call) holds a sync back no longer.
    pub max_unready: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rewrite_min_bytes: 64 << 20,
            probe_first: Duration::from_millis(100),
            probe_max: Duration::from_secs(2),
            max_unready: Duration::from_millis(8),
        }
    }
}

#[derive(Default)]
pub(crate) struct Pending {
    buf: Vec<u8>,
    /// The writers of the records in `buf`.
    waiters: Vec<Waiter>,
    shutdown: bool,
    /// The flusher sleeps on the condvar: only then is a wake-up (a syscall) worth sending.
    flusher_idle: bool,
    /// Records appended since the log opened: a round of `gather` ends when this stops moving.
    appended: u64,
    /// The flusher is waiting for this many writers before it syncs (0: it is not).
    fill_target: usize,
    /// A round of `gather` is under way for the records in `buf`.
    gathering: bool,
    /// The batch in `buf` is complete (the runtime says so, or there is none): sync it.
    ready: bool,
    /// Set while the disk fails; writes are refused with it until a probe succeeds.
    failed: Option<Arc<str>>,
    /// A background snapshot has finished (well or not) and waits for the flusher.
    rewrite_done: bool,
}

/// Writes every item of the store as framed set records. It may take the store's lock in
/// turns (one group at a time, say) while writes go on: records appended after the snapshot
/// began are replayed after it, and set and delete records are idempotent.
pub type SnapshotFn = dyn Fn(&mut dyn std::io::Write) -> std::io::Result<()> + Send + Sync;

/// Replaces the store's memory with the state the given log bytes hold, after a failed write
/// left memory ahead of the disk.
pub type ReloadFn = dyn Fn(&[u8]) + Send + Sync;

pub(crate) struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// A failed write left the store's memory ahead of the log, and it is not reloaded yet.
    memory_ahead: AtomicBool,
}

pub struct Wal {
    shared: Arc<Shared>,
    /// Tells the flusher when a batch is complete; None without a runtime (see `gather`).
    rounds: Option<Rounds>,
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
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    file: Box<dyn DiskFile>,
    /// Held for the life of the flusher: one engine per store directory.
    lock: Box<dyn Send>,
    options: Options,
    pub recovery: Recovery,
}

impl Opened {
    /// Starts the flusher thread; `snapshot` serializes the store for a rewrite and `reload`
    /// puts the store back to what the disk holds after a failed write.
    pub fn start(self, snapshot: Arc<SnapshotFn>, reload: Arc<ReloadFn>) -> Wal {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            memory_ahead: AtomicBool::new(false),
        });
        let rounds = Rounds::start(Arc::downgrade(&shared));
        let flusher = Flusher {
            shared: shared.clone(),
            answers: Answers::start(),
            log_bytes: self.recovery.bytes,
            rewritten_bytes: 0,
            rewrite: None,
            dir_unsynced: false,
            disk: self.disk,
            dir: self.dir,
            file: self.file,
            _lock: self.lock,
            options: self.options,
            snapshot,
            reload,
        };
        let handle = std::thread::Builder::new()
            .name("wal-flusher".into())
            .spawn(move || flusher.run())
            .expect("spawn the log flusher");
        Wal {
            shared,
            rounds,
            flusher: Mutex::new(Some(handle)),
        }
    }
}

/// The longest a sync waits for as many writers as the last one had.
const COMMIT_DELAY: Duration = Duration::from_micros(500);
/// A batch this large is synced at once.
const MAX_BATCH_WAITERS: usize = 512;
/// The padding of a probe record: a write of a few blocks, so a disk that is still full fails.
const PROBE_BYTES: usize = 16 << 10;

impl Wal {
    /// Opens (or creates) the log in `dir` on the real disk, replaying it into `apply`.
    pub fn open(dir: &Path, apply: impl FnMut(Record)) -> anyhow::Result<Opened> {
        Wal::open_on(Arc::new(RealDisk), dir, Options::default(), apply)
    }

    /// Opens (or creates) the log in `dir`, replaying every record into `apply`. A torn tail
    /// is cut off; damage is an error that names the file, the offset and what follows, and
    /// leaves the file as it is.
    pub fn open_on(
        disk: Arc<dyn Disk>,
        dir: &Path,
        options: Options,
        apply: impl FnMut(Record),
    ) -> anyhow::Result<Opened> {
        disk.create_dir_all(dir)
            .with_context(|| format!("cannot create the store directory {}", dir.display()))?;
        let lock = disk.lock(dir)?;
        let path = dir.join(LOG_NAME);
        let started = Instant::now();
        let existed = disk.exists(&path);
        let mut file = disk
            .open(&path, true)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if !existed {
            disk.sync_dir(dir)
                .with_context(|| format!("cannot sync the directory {}", dir.display()))?;
        }
        let tmp = dir.join(rewrite::TMP_NAME);
        if disk.exists(&tmp) {
            tracing::info!(path = %tmp.display(), "removing an unfinished log rewrite");
            disk.remove(&tmp)
                .with_context(|| format!("cannot remove {}", tmp.display()))?;
        }
        let data = disk::read_all(file.as_ref())
            .with_context(|| format!("cannot read {}", path.display()))?;
        let scan = recovery::scan(&data, apply);
        let truncated = match scan.tail {
            Tail::Clean => 0,
            Tail::Torn { bytes } => {
                tracing::warn!(path = %path.display(), offset = scan.good_len, bytes, "discarding a torn write at the end of the log (it was never acknowledged)");
                file.truncate(scan.good_len)
                    .and_then(|_| file.sync())
                    .with_context(|| format!("cannot cut the torn tail off {}", path.display()))?;
                bytes
            }
            Tail::Damaged(d) => bail!(
                "{} is damaged at byte {}: {}; {} intact records follow it. The engine does not start on a damaged log, so that nothing is lost silently: run `streamhost store check {}` for a report, then `streamhost store repair {}` to keep a backup and salvage every intact record",
                path.display(),
                d.offset,
                d.reason,
                d.records_after,
                dir.display(),
                dir.display()
            ),
        };
        let recovery = Recovery {
            records: scan.records,
            bytes: scan.good_len,
            truncated_bytes: truncated,
            elapsed: started.elapsed(),
        };
        Ok(Opened {
            disk,
            dir: dir.to_path_buf(),
            file,
            lock,
            options,
            recovery,
        })
    }

    /// Appends a record; call it while holding the store's lock, then wait on the ticket
    /// without it. Fails at once, storing nothing, while the disk fails.
    pub fn append(&self, record: &RecordRef<'_>) -> Result<Ticket, WriteError> {
        let mut p = self.shared.pending.lock().unwrap();
        Self::writable(&p)?;
        encode(record, &mut p.buf);
        let (waiter, ticket) = ticket::pair();
        p.waiters.push(waiter);
        p.appended += 1;
        // Without a runtime to say when a batch is complete, each is as soon as it starts.
        p.ready |= self.rounds.is_none();
        let begin_round = self.rounds.is_some() && !std::mem::replace(&mut p.gathering, true);
        let full = p.waiters.len() >= MAX_BATCH_WAITERS;
        let filled = p.fill_target > 0 && p.waiters.len() >= p.fill_target;
        let mut wake = (self.rounds.is_none() || full) && std::mem::take(&mut p.flusher_idle);
        wake |= filled;
        drop(p);
        if let Some(rounds) = &self.rounds
            && begin_round
            && !rounds.begin()
        {
            // The runtime is gone: nobody will say the batch is complete.
            let mut p = self.shared.pending.lock().unwrap();
            p.ready = true;
            p.gathering = false;
            wake |= std::mem::take(&mut p.flusher_idle);
        }
        if wake {
            self.shared.wake.notify_one();
        }
        Ok(ticket)
    }

    fn writable(p: &Pending) -> Result<(), WriteError> {
        if let Some(err) = &p.failed {
            return Err(WriteError::NotStored(format!(
                "the store is not taking writes while its disk fails ({err}); it retries by itself and resumes once the disk takes writes again (free space, or check the disk); reads still work"
            )));
        }
        if p.shutdown {
            return Err(WriteError::NotStored("the store is shutting down".into()));
        }
        Ok(())
    }

    /// Fails as `append` would, for a write that changes nothing (a delete of a missing
    /// item): while the disk fails, a write the log may still hold could make its answer
    /// untrue after a crash.
    pub fn check_writable(&self) -> Result<(), WriteError> {
        Self::writable(&self.shared.pending.lock().unwrap())
    }

    /// Why the log is not taking writes, while it is not.
    pub fn failure(&self) -> Option<String> {
        self.shared
            .pending
            .lock()
            .unwrap()
            .failed
            .as_ref()
            .map(|f| f.to_string())
    }

    /// Whether a failed write left the store's memory ahead of the disk, not yet reloaded:
    /// the store then refuses reads.
    pub fn memory_ahead(&self) -> bool {
        self.shared.memory_ahead.load(Ordering::Acquire)
    }

    /// Waits until the ticket's record is on disk.
    pub async fn wait(&self, ticket: Ticket) -> Result<(), WriteError> {
        ticket.await
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

/// The flusher thread's state: the log file and everything only it touches.
struct Flusher {
    shared: Arc<Shared>,
    answers: Answers,
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    file: Box<dyn DiskFile>,
    /// The log's synced length: everything before it is on disk and whole.
    log_bytes: u64,
    /// The log's length after the last rewrite (or failed attempt).
    rewritten_bytes: u64,
    rewrite: Option<Rewrite>,
    /// A rename is not yet durable: no write may be acknowledged until the directory syncs.
    dir_unsynced: bool,
    _lock: Box<dyn Send>,
    options: Options,
    snapshot: Arc<SnapshotFn>,
    reload: Arc<ReloadFn>,
}

impl Flusher {
    fn run(mut self) {
        let mut buf = Vec::new();
        let mut last_batch = 0;
        loop {
            let (waiters, rewrite_done) = {
                let mut p = self.shared.pending.lock().unwrap();
                let mut unready_since = None;
                while !p.shutdown && !p.rewrite_done {
                    if p.buf.is_empty() {
                        p.flusher_idle = true;
                        p = self.shared.wake.wait(p).unwrap();
                        continue;
                    }
                    if p.ready || p.waiters.len() >= MAX_BATCH_WAITERS {
                        break;
                    }
                    let since = *unready_since.get_or_insert_with(Instant::now);
                    let Some(left) =
                        (since + self.options.max_unready).checked_duration_since(Instant::now())
                    else {
                        break;
                    };
                    p.flusher_idle = true;
                    p = self.shared.wake.wait_timeout(p, left).unwrap().0;
                }
                p.flusher_idle = false;
                p.ready = false;
                let rewrite_done = std::mem::take(&mut p.rewrite_done);
                if p.buf.is_empty() && p.shutdown {
                    return;
                }
                // Writers with one call in flight each come back in separate turns of the
                // runtime: wait (briefly) for as many writers as the last sync had, as an
                // fsync costs the disk far more than the wait costs them.
                let target = last_batch.min(MAX_BATCH_WAITERS);
                if target > 1 && p.waiters.len() < target && !p.shutdown {
                    let deadline = Instant::now() + COMMIT_DELAY;
                    p.fill_target = target;
                    while p.waiters.len() < target && !p.shutdown {
                        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                            break;
                        };
                        p = self.shared.wake.wait_timeout(p, left).unwrap().0;
                    }
                    p.fill_target = 0;
                }
                last_batch = p.waiters.len();
                // Swap buffers, so both keep their capacity from one batch to the next.
                buf.clear();
                std::mem::swap(&mut buf, &mut p.buf);
                (std::mem::take(&mut p.waiters), rewrite_done)
            };
            if !buf.is_empty() {
                match self.file.append(&buf).and_then(|_| self.file.sync()) {
                    Ok(()) => {
                        self.log_bytes += buf.len() as u64;
                        self.answers.send(waiters, Ok(()));
                    }
                    Err(e) => {
                        if !self.fail(waiters, &e.to_string()) {
                            return;
                        }
                        continue;
                    }
                }
            }
            self.maybe_rewrite(rewrite_done);
            if self.dir_unsynced
                && !self.fail(
                    Vec::new(),
                    "the directory could not be synced after the log rewrite",
                )
            {
                return;
            }
        }
    }

    /// Starts a rewrite when the log has grown enough, or finishes the one whose snapshot is
    /// done.
    fn maybe_rewrite(&mut self, snapshot_done: bool) {
        let failed = if snapshot_done && let Some(running) = self.rewrite.take() {
            match running.finish(&self.dir, self.file.as_ref(), self.log_bytes) {
                Ok(done) => {
                    tracing::info!(
                        before = self.log_bytes,
                        after = done.bytes,
                        "rewrote the store's log from a snapshot"
                    );
                    self.file = done.file;
                    self.log_bytes = done.bytes;
                    self.rewritten_bytes = done.bytes;
                    self.dir_unsynced = !done.dir_synced;
                    None
                }
                Err(e) => Some(e),
            }
        } else if self.rewrite.is_none()
            && self.log_bytes > self.options.rewrite_min_bytes
            && self.log_bytes > 2 * self.rewritten_bytes
        {
            match Rewrite::start(
                self.shared.clone(),
                self.disk.clone(),
                &self.dir,
                self.log_bytes,
                self.snapshot.clone(),
            ) {
                Ok(started) => {
                    self.rewrite = Some(started);
                    None
                }
                Err(e) => Some(e),
            }
        } else {
            None
        };
        if let Some(e) = failed {
            // The old log is whole and still in use: try again once it has grown as much again.
            tracing::warn!(error = %format!("{e:#}"), "cannot rewrite the store's log; it keeps growing until a later attempt succeeds");
            self.rewritten_bytes = self.log_bytes;
        }
    }

    /// A write, sync or directory sync failed: refuse writes, fail every writer not yet
    /// answered, cut the log back to what was synced, put memory back to it, then probe until
    /// the disk takes writes again. False if the store shut down meanwhile.
    fn fail(&mut self, mut waiters: Vec<Waiter>, reason: &str) -> bool {
        tracing::error!(error = %reason, "the store's disk failed; writes are refused until it takes writes again (reads still work)");
        self.shared.memory_ahead.store(true, Ordering::Release);
        {
            let mut p = self.shared.pending.lock().unwrap();
            p.failed = Some(reason.into());
            // Records queued behind the failed batch were applied on top of it: they go too.
            waiters.append(&mut p.waiters);
            p.buf.clear();
        }
        // A rewrite's snapshot holds the failed changes; start again later.
        self.rewrite = None;
        let cut = self
            .file
            .truncate(self.log_bytes)
            .and_then(|_| self.file.sync());
        let _ = self.reload_memory();
        let error = match cut {
            Ok(()) => WriteError::NotStored(format!(
                "the store's disk failed ({reason}); this write was not stored. Writes resume by themselves once the disk takes writes again"
            )),
            Err(_) => WriteError::InDoubt(format!("the store's disk failed ({reason})")),
        };
        self.answers.send(waiters, Err(error));
        self.probe_until_healthy()
    }

    /// Replaces the store's memory with what the synced log holds.
    fn reload_memory(&mut self) -> anyhow::Result<()> {
        if !self.shared.memory_ahead.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut data = vec![0; self.log_bytes as usize];
        self.file
            .read_at(&mut data, 0)
            .context("cannot read the log back")?;
        (self.reload)(&data);
        self.shared.memory_ahead.store(false, Ordering::Release);
        Ok(())
    }

    fn probe_until_healthy(&mut self) -> bool {
        let mut delay = self.options.probe_first;
        let mut attempts = 0u64;
        loop {
            {
                let p = self.shared.pending.lock().unwrap();
                let (p, _) = self
                    .shared
                    .wake
                    .wait_timeout_while(p, delay, |p| !p.shutdown)
                    .unwrap();
                if p.shutdown {
                    return false;
                }
            }
            attempts += 1;
            match self.probe() {
                Ok(()) => {
                    self.shared.pending.lock().unwrap().failed = None;
                    tracing::info!(
                        attempts,
                        "the store's disk takes writes again; writes resumed"
                    );
                    return true;
                }
                Err(e) => {
                    if attempts.is_power_of_two() {
                        tracing::warn!(attempts, error = %format!("{e:#}"), "the store's disk still fails; writes stay refused");
                    }
                    delay = (delay * 2).min(self.options.probe_max);
                }
            }
        }
    }

    /// Cuts off what a failed write left, makes a pending rename durable, and writes and
    /// syncs a probe record: success means the disk takes writes again.
    fn probe(&mut self) -> anyhow::Result<()> {
        self.file.truncate(self.log_bytes)?;
        self.file.sync()?;
        if self.dir_unsynced {
            self.disk.sync_dir(&self.dir)?;
            self.dir_unsynced = false;
        }
        let mut probe = Vec::new();
        encode(
            &RecordRef::Nop {
                pad: &" ".repeat(PROBE_BYTES),
            },
            &mut probe,
        );
        self.file.append(&probe)?;
        self.file.sync()?;
        self.log_bytes += probe.len() as u64;
        self.reload_memory()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::Json;
    use serde_json::json;
    use std::collections::BTreeMap;
    use std::io::Write;
    use std::sync::mpsc;

    /// Answers given to a task on a runtime that runs only when the test drives it.
    fn answers_on_a_runtime() -> (tokio::runtime::Runtime, Answers) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let answers = {
            let _entered = runtime.enter();
            Answers::start()
        };
        assert!(matches!(answers, Answers::Runtime(_)));
        (runtime, answers)
    }

    /// Syncs answered while the runtime that answers them shuts down still reach their
    /// writers as done, not as in doubt.
    #[test]
    fn answers_queued_when_their_runtime_stops_still_arrive() {
        let (runtime, answers) = answers_on_a_runtime();
        let answered = |ticket: Ticket| {
            let seen = Arc::new(Mutex::new(None));
            let into = seen.clone();
            ticket.then(Box::new(move |r| *into.lock().unwrap() = Some(r.is_ok())));
            seen
        };
        let (waiter, ticket) = ticket::pair();
        let seen = answered(ticket);
        // Queued, never run: the runtime is not driven before it is dropped.
        answers.send(vec![waiter], Ok(()));
        drop(runtime);
        assert_eq!(
            *seen.lock().unwrap(),
            Some(true),
            "the queued answer was lost"
        );
        let (waiter, ticket) = ticket::pair();
        let seen = answered(ticket);
        answers.send(vec![waiter], Ok(()));
        assert_eq!(
            *seen.lock().unwrap(),
            Some(true),
            "no runtime: answered in place"
        );
    }

    /// A sync's writers are answered a batch per turn of the runtime; a runtime that stops
    /// part way through still answers the rest as done, and in order.
    #[test]
    fn a_pass_cut_short_by_its_runtime_stopping_answers_the_rest_in_order() {
        let (runtime, answers) = answers_on_a_runtime();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let batch = |from: usize, n: usize| {
            (from..from + n)
                .map(|k| {
                    let (waiter, ticket) = ticket::pair();
                    let into = seen.clone();
                    ticket.then(Box::new(move |r| into.lock().unwrap().push((k, r.is_ok()))));
                    waiter
                })
                .collect::<Vec<_>>()
        };
        let n = 3 * ANSWERS_CHECKED;
        // The first writer's step takes a whole turn's time: the pass yields after its batch.
        let mut first = batch(0, n);
        let (slow, ticket) = ticket::pair();
        ticket.then(Box::new(|_| std::thread::sleep(MAX_ANSWERING)));
        first.insert(0, slow);
        answers.send(first, Ok(()));
        answers.send(batch(n, 10), Ok(()));
        runtime.block_on(tokio::task::yield_now());
        let answered = seen.lock().unwrap().len();
        assert!(
            (ANSWERS_CHECKED - 1..n).contains(&answered),
            "{answered} answered in the first turn"
        );
        drop(runtime);
        let seen = seen.lock().unwrap();
        let expected: Vec<_> = (0..n + 10).map(|k| (k, true)).collect();
        assert_eq!(*seen, expected);
    }

    type Items = BTreeMap<String, Json>;

    fn replay(dir: &Path) -> Items {
        let mut items = Items::new();
        let opened = Wal::open(dir, |r| match r {
            Record::Set { i, d, .. } => {
                items.insert(i, d);
            }
            Record::Del { i, .. } => {
                items.remove(&i);
            }
            Record::Nop {} => {}
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
        let options = Options {
            rewrite_min_bytes: 64 << 10,
            ..Options::default()
        };
        let wal = Wal::open_on(Arc::new(RealDisk), dir.path(), options, |_| {})
            .unwrap()
            .start(snapshot, Arc::new(|_: &[u8]| {}));
        let write = |record: RecordRef<'_>| {
            let mut items = items.lock().unwrap();
            match &record {
                RecordRef::Set { i, d, .. } => items.insert(i.to_string(), (*d).clone()),
                RecordRef::Del { i, .. } => items.remove(*i),
                RecordRef::Nop { .. } => None,
            };
            wal.append(&record).unwrap()
        };
        let pad = Json::from_value(&json!("x".repeat(1000)));
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
                d: &json!(n).into(),
            }))
            .await
            .unwrap();
        }
        wal.wait(write(RecordRef::Set {
            s: "s",
            g: "g",
            i: "old1",
            d: &json!("changed").into(),
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
            d: &json!(1).into(),
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
        assert_eq!(recovered["old1"], json!("changed"));
        assert!(!recovered.contains_key("old2") && recovered.contains_key("new19"));
    }
}
