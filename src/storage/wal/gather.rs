//! When a batch of log records is complete: the runtime says so.
//!
//! A sync costs the core about as much CPU as a dozen writes, and its answers leave in as
//! many socket writes as it has writers' sockets, so the more writers a sync covers the less
//! each pays. Redis, with `appendfsync always`, syncs once per turn of its event loop: after
//! it has read and applied everything its clients sent. This does the same for the runtime
//! that writes to the log: the first record of a batch starts a round, and a task on the
//! runtime yields (each yield lets every task woken meanwhile run, reads of sockets with new
//! frames among them) until a turn of the runtime appends nothing more, then tells the flusher
//! to sync. A lone writer waits one quiet turn of the runtime (microseconds); writers that
//! keep the runtime busy are gathered for at most `MAX_GATHER`, or until the batch holds
//! `MAX_BATCH_WAITERS`, so a busy runtime cannot hold a sync back.
//!
//! Without a runtime (a test driving the log by hand), or once its runtime is gone, the
//! flusher syncs as soon as it has records, as before.

use super::{MAX_BATCH_WAITERS, Shared};
use std::sync::Weak;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The longest a round gathers while the runtime keeps appending.
pub const MAX_GATHER: Duration = Duration::from_millis(2);

/// The writers' side: starts a round when a batch's first record is appended.
pub struct Rounds(mpsc::Sender<()>);

impl Rounds {
    /// Starts the task that ends rounds on the current runtime; None without one.
    pub fn start(shared: Weak<Shared>) -> Option<Rounds> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        // One round at a time: a round is asked for only when none is under way.
        let (tx, mut rx) = mpsc::channel(1);
        runtime.spawn(async move {
            // Ends when the log is dropped (the sender with it).
            while rx.recv().await.is_some() {
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                round(&shared).await;
            }
        });
        Some(Rounds(tx))
    }

    /// Asks for a round; false if the runtime is gone and the caller must wake the flusher.
    pub fn begin(&self) -> bool {
        !matches!(
            self.0.try_send(()),
            Err(mpsc::error::TrySendError::Closed(_))
        )
    }
}

/// Yields until a turn of the runtime appends nothing (or the batch is full or old enough),
/// then marks the batch ready and wakes the flusher if it sleeps.
async fn round(shared: &Shared) {
    let started = Instant::now();
    let mut seen = shared.pending.lock().unwrap().appended;
    loop {
        tokio::task::yield_now().await;
        let mut p = shared.pending.lock().unwrap();
        let quiet = p.appended == seen;
        let full = p.waiters.len() >= MAX_BATCH_WAITERS;
        if quiet || full || p.shutdown || started.elapsed() >= MAX_GATHER {
            p.gathering = false;
            p.ready = true;
            let wake = std::mem::take(&mut p.flusher_idle);
            drop(p);
            if wake {
                shared.wake.notify_one();
            }
            return;
        }
        seen = p.appended;
    }
}

#[cfg(test)]
mod tests {
    use super::super::disk::{Disk, DiskFile, RealDisk};
    use super::super::{MAX_BATCH_WAITERS, Options, RecordRef, Wal};
    use serde_json::json;
    use std::io;
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    /// The real disk, counting the log's syncs.
    #[derive(Clone, Default)]
    struct Counting(Arc<AtomicU64>);

    struct CountingFile(Box<dyn DiskFile>, Arc<AtomicU64>);

    impl DiskFile for CountingFile {
        fn append(&mut self, buf: &[u8]) -> io::Result<()> {
            self.0.append(buf)
        }
        fn sync(&mut self) -> io::Result<()> {
            self.1.fetch_add(1, Ordering::SeqCst);
            self.0.sync()
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            self.0.read_at(buf, offset)
        }
        fn truncate(&mut self, len: u64) -> io::Result<()> {
            self.0.truncate(len)
        }
        fn size(&self) -> io::Result<u64> {
            self.0.size()
        }
    }

    impl Disk for Counting {
        fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn DiskFile>> {
            let file = RealDisk.open(path, create)?;
            Ok(Box::new(CountingFile(file, self.0.clone())))
        }
        fn create(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
            RealDisk.create(path)
        }
        fn exists(&self, path: &Path) -> bool {
            RealDisk.exists(path)
        }
        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            RealDisk.rename(from, to)
        }
        fn remove(&self, path: &Path) -> io::Result<()> {
            RealDisk.remove(path)
        }
        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            RealDisk.sync_dir(dir)
        }
        fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
            RealDisk.create_dir_all(dir)
        }
        fn lock(&self, dir: &Path) -> anyhow::Result<Box<dyn Send>> {
            RealDisk.lock(dir)
        }
    }

    /// A log whose flusher never syncs on its own while the runtime gathers: only a round's
    /// end, a full batch or shutdown makes it sync.
    fn open(dir: &Path, disk: &Counting) -> Wal {
        let options = Options {
            max_unready: Duration::from_secs(600),
            ..Options::default()
        };
        Wal::open_on(Arc::new(disk.clone()), dir, options, |_| {})
            .unwrap()
            .start(
                Arc::new(|_: &mut dyn io::Write| Ok(())),
                Arc::new(|_: &[u8]| {}),
            )
    }

    /// A log as `open` makes it, in a directory of its own (kept while the handle lives).
    fn opened() -> (tempfile::TempDir, Counting, Wal) {
        let dir = tempfile::tempdir().unwrap();
        let disk = Counting::default();
        let wal = open(dir.path(), &disk);
        (dir, disk, wal)
    }

    fn set(n: usize) -> RecordRef<'static> {
        let i: &'static str = Box::leak(format!("i{n}").into_boxed_str());
        let d: &'static crate::json::Json = Box::leak(Box::new(json!(n).into()));
        RecordRef::Set {
            s: "s",
            g: "g",
            i,
            d,
        }
    }

    /// Writes appended in one turn of the runtime go to disk in one sync, although the turn
    /// is long: the flusher, woken by the first record, would otherwise sync it alone.
    #[tokio::test]
    async fn writes_of_one_turn_of_the_runtime_share_one_sync() {
        let (_dir, disk, wal) = opened();
        let before = disk.0.load(Ordering::SeqCst);
        let mut tickets = vec![wal.append(&set(0)).unwrap()];
        // The turn goes on without yielding: the flusher has time to take the first record.
        std::thread::sleep(Duration::from_millis(20));
        tickets.extend((1..100).map(|n| wal.append(&set(n)).unwrap()));
        for ticket in tickets {
            wal.wait(ticket).await.unwrap();
        }
        assert_eq!(
            disk.0.load(Ordering::SeqCst) - before,
            1,
            "syncs for 100 writes"
        );
        // The next turn's write gets a sync of its own, without waiting for more.
        wal.wait(wal.append(&set(100)).unwrap()).await.unwrap();
        assert_eq!(disk.0.load(Ordering::SeqCst) - before, 2);
    }

    /// A batch of `MAX_BATCH_WAITERS` writers is synced at once, while the turn that logs
    /// them goes on: one writer fewer waits for the turn to end.
    #[tokio::test]
    async fn a_full_batch_is_synced_before_its_turn_ends() {
        let (_dir, disk, wal) = opened();
        let before = disk.0.load(Ordering::SeqCst);
        let syncs = || disk.0.load(Ordering::SeqCst) - before;
        let mut tickets: Vec<_> = (0..MAX_BATCH_WAITERS - 1)
            .map(|n| wal.append(&set(n)).unwrap())
            .collect();
        // The turn goes on without yielding, so no round can end it.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            syncs(),
            0,
            "{} writers are not a full batch",
            MAX_BATCH_WAITERS - 1
        );
        tickets.push(wal.append(&set(MAX_BATCH_WAITERS)).unwrap());
        let deadline = Instant::now() + Duration::from_secs(30);
        while syncs() == 0 {
            assert!(Instant::now() < deadline, "a full batch was not synced");
            std::thread::sleep(Duration::from_millis(1));
        }
        for ticket in tickets {
            wal.wait(ticket).await.unwrap();
        }
        assert_eq!(syncs(), 1, "one sync for the full batch");
    }

    /// Once the runtime that ends rounds is gone, a write is synced at once, not after
    /// `max_unready`.
    #[test]
    fn writes_are_synced_after_the_runtime_that_gathered_them_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Counting::default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let wal = {
            let _entered = runtime.enter();
            open(dir.path(), &disk)
        };
        assert!(wal.rounds.is_some());
        drop(runtime);
        let waiting = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        for n in 0..3 {
            let ticket = wal.append(&set(n)).unwrap();
            let waited = waiting.block_on(async {
                tokio::time::timeout(Duration::from_secs(60), wal.wait(ticket)).await
            });
            assert!(matches!(waited, Ok(Ok(()))), "write {n} was not synced");
        }
    }
}
