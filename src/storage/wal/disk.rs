//! The log's file I/O, behind a narrow trait so that tests can put a simulated disk under it
//! (`sim`: power cuts, torn writes, EIO, ENOSPC, bit flips) and run the real log code.
//!
//! Only what the log needs: append-only files that can be synced, read at an offset and cut
//! back, plus create, rename, remove, directory sync and the store's lock.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// A file opened for reading and appending.
pub trait DiskFile: Send {
    /// Appends all of `buf`. On an error, part of it may have been written.
    fn append(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes everything appended so far durable (`fdatasync`).
    fn sync(&mut self) -> io::Result<()>;
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Cuts the file back to `len` bytes; later appends go after them.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    /// The file's length in bytes.
    fn size(&self) -> io::Result<u64>;
}

/// The directory operations the log needs.
pub trait Disk: Send + Sync + 'static {
    /// Opens `path` for reading and appending, creating it (empty) when `create` is set.
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn DiskFile>>;
    /// Creates `path` empty, replacing any file there.
    fn create(&self, path: &Path) -> io::Result<Box<dyn DiskFile>>;
    fn exists(&self, path: &Path) -> bool;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (created and renamed files) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Takes the directory's lock for one engine, or explains who holds it.
    fn lock(&self, dir: &Path) -> anyhow::Result<Box<dyn Send>>;
}

/// Reads a whole file.
pub fn read_all(file: &dyn DiskFile) -> io::Result<Vec<u8>> {
    let mut data = vec![0; file.size()? as usize];
    file.read_at(&mut data, 0)?;
    Ok(data)
}

/// The real file system.
pub struct RealDisk;

/// How long opening a store waits for another holder of its lock to let go.
const LOCK_PATIENCE: Duration = Duration::from_secs(2);

impl DiskFile for File {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        self.write_all(buf)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_exact_at(buf, offset)
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.set_len(len)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl Disk for RealDisk {
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn DiskFile>> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(create)
            .open(path)?;
        Ok(Box::new(file))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(path)?;
        Ok(Box::new(file))
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn lock(&self, dir: &Path) -> anyhow::Result<Box<dyn Send>> {
        use anyhow::Context;
        let lock = File::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
        // A lock can outlive its engine by a moment: a process being spawned holds a copy of
        // every descriptor until it execs. Only a lock held this long means another engine.
        let since = Instant::now();
        while lock.try_lock().is_err() {
            if since.elapsed() > LOCK_PATIENCE {
                anyhow::bail!(
                    "{} is in use by another streamhost process; stop it or choose another file_path",
                    dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Box::new(lock))
    }
}
