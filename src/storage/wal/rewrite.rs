//! Rewriting the log from a snapshot while writes go on.
//!
//! A thread writes a snapshot of the store to `streams.wal.tmp` while the flusher keeps
//! appending to the old log. Then the flusher copies the records appended since the snapshot
//! began (from `from` on) after it, syncs, renames it over the log and syncs the directory.
//! Writers never wait for the snapshot, only for the copy of that tail. Until the rename, a
//! failure leaves the old, whole log in use and removes the temporary file; after it, the new
//! file is the log (the old one is gone), so the flusher keeps its handle whatever happens.

use super::disk::{Disk, DiskFile};
use super::{Shared, SnapshotFn};
use anyhow::Context;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub const TMP_NAME: &str = "streams.wal.tmp";

pub struct Rewrite {
    disk: Arc<dyn Disk>,
    /// Where in the old log the records not surely in the snapshot begin.
    from: u64,
    tmp: PathBuf,
    abort: Arc<AtomicBool>,
    /// The thread writing the snapshot; it hands back the file it wrote.
    thread: Option<std::thread::JoinHandle<anyhow::Result<Box<dyn DiskFile>>>>,
    /// Set once the snapshot is the log: from then on the temporary file is not ours to remove.
    renamed: bool,
}

/// The new log, in place.
pub struct Finished {
    pub file: Box<dyn DiskFile>,
    pub bytes: u64,
    /// Whether the rename is durable; if not, the flusher takes no writes until it is.
    pub dir_synced: bool,
}

/// The snapshot's file as a `Write`, which refuses further writes once the rewrite is
/// abandoned.
struct Out {
    file: Box<dyn DiskFile>,
    abort: Arc<AtomicBool>,
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.abort.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("the rewrite was abandoned"));
        }
        self.file.append(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Rewrite {
    pub fn start(
        shared: Arc<Shared>,
        disk: Arc<dyn Disk>,
        dir: &Path,
        from: u64,
        snapshot: Arc<SnapshotFn>,
    ) -> anyhow::Result<Rewrite> {
        let abort = Arc::new(AtomicBool::new(false));
        let tmp = dir.join(TMP_NAME);
        let (path, stop, on_disk) = (tmp.clone(), abort.clone(), disk.clone());
        let thread = std::thread::Builder::new()
            .name("wal-rewrite".into())
            .spawn(move || {
                let written = (|| -> anyhow::Result<Box<dyn DiskFile>> {
                    let file = on_disk
                        .create(&path)
                        .with_context(|| format!("cannot create {}", path.display()))?;
                    let out = Out { file, abort: stop };
                    let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
                    snapshot(&mut out)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    let mut out = out.into_inner().map_err(|e| e.into_error())?;
                    out.file.sync()?;
                    Ok(out.file)
                })();
                shared.pending.lock().unwrap().rewrite_done = true;
                shared.wake.notify_one();
                written
            })
            .context("cannot start the log rewrite thread")?;
        Ok(Rewrite {
            disk,
            from,
            tmp,
            abort,
            thread: Some(thread),
            renamed: false,
        })
    }

    /// Appends the old log's tail to the snapshot and puts it in place of the old log, which
    /// holds `log_bytes` synced bytes.
    pub fn finish(
        mut self,
        dir: &Path,
        old: &dyn DiskFile,
        log_bytes: u64,
    ) -> anyhow::Result<Finished> {
        let thread = self.thread.take().expect("a rewrite is finished once");
        let mut file = thread
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the rewrite thread panicked")))?;
        let mut tail = vec![0u8; (log_bytes - self.from) as usize];
        old.read_at(&mut tail, self.from)
            .context("cannot read the log's tail")?;
        let base = file.size()?;
        file.append(&tail)
            .and_then(|_| file.sync())
            .with_context(|| format!("cannot write {}", self.tmp.display()))?;
        let path = dir.join(super::LOG_NAME);
        self.disk.rename(&self.tmp, &path).with_context(|| {
            format!("cannot rename {} to {}", self.tmp.display(), path.display())
        })?;
        self.renamed = true;
        let dir_synced = match self.disk.sync_dir(dir) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot sync the store directory after the log rewrite");
                false
            }
        };
        Ok(Finished {
            file,
            bytes: base + tail.len() as u64,
            dir_synced,
        })
    }
}

impl Drop for Rewrite {
    fn drop(&mut self) {
        self.abort.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if !self.renamed
            && self.disk.exists(&self.tmp)
            && let Err(e) = self.disk.remove(&self.tmp)
        {
            tracing::warn!(path = %self.tmp.display(), error = %e, "cannot remove an abandoned log rewrite");
        }
    }
}
