//! A simulated disk for the log's fault tests: it keeps what was written apart from what was
//! synced, so a power cut loses (or tears) everything not yet synced, and it fails any chosen
//! call with EIO or ENOSPC, runs out of space, and flips bits.
//!
//! Files are inodes; names map to them. A file's bytes become durable on `sync`; a name
//! (created, renamed, removed) becomes durable on `sync_dir`. A failed `sync` may still have
//! made part of the data durable, as a real disk may.

use super::disk::{Disk, DiskFile};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Append,
    Sync,
    Read,
    Truncate,
    Open,
    Create,
    Rename,
    Remove,
    SyncDir,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Errno {
    Eio,
    Enospc,
}

impl Errno {
    fn error(self) -> io::Error {
        io::Error::from_raw_os_error(match self {
            Errno::Eio => libc::EIO,
            Errno::Enospc => libc::ENOSPC,
        })
    }
}

#[derive(Clone, Default)]
struct Inode {
    /// What reads see.
    cache: Vec<u8>,
    /// What survives a power cut.
    durable: Vec<u8>,
}

#[derive(Clone)]
struct State {
    inodes: Vec<Inode>,
    names: HashMap<PathBuf, usize>,
    durable_names: HashMap<PathBuf, usize>,
    /// Calls to fail: (op, how many more calls of it pass first, errno, once or for good).
    faults: Vec<(Op, u64, Errno, bool)>,
    /// Total bytes the disk holds; an append past it fails with ENOSPC after writing what fits.
    capacity: Option<u64>,
    rng: u64,
}

impl State {
    fn random(&mut self, below: u64) -> u64 {
        // xorshift64*: reproducible from the seed.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) % below.max(1)
    }

    fn check(&mut self, op: Op) -> io::Result<()> {
        let mut fired = None;
        for (k, (fop, after, errno, once)) in self.faults.iter_mut().enumerate() {
            if *fop != op {
                continue;
            }
            if *after > 0 {
                *after -= 1;
                continue;
            }
            fired = Some((k, *errno, *once));
            break;
        }
        match fired {
            Some((k, errno, once)) => {
                if once {
                    self.faults.remove(k);
                }
                Err(errno.error())
            }
            None => Ok(()),
        }
    }

    fn used(&self) -> u64 {
        let live: std::collections::HashSet<usize> = self.names.values().copied().collect();
        live.iter()
            .map(|&i| self.inodes[i].cache.len() as u64)
            .sum()
    }

    fn new_inode(&mut self) -> usize {
        self.inodes.push(Inode::default());
        self.inodes.len() - 1
    }
}

/// A simulated disk; clones share it.
#[derive(Clone)]
pub struct SimDisk(Arc<Mutex<State>>);

impl SimDisk {
    pub fn new(seed: u64) -> SimDisk {
        SimDisk(Arc::new(Mutex::new(State {
            inodes: Vec::new(),
            names: HashMap::new(),
            durable_names: HashMap::new(),
            faults: Vec::new(),
            capacity: None,
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        })))
    }

    /// Fails the call of `op` after `after` more pass, once.
    pub fn fail_once(&self, op: Op, after: u64, errno: Errno) {
        self.0.lock().unwrap().faults.push((op, after, errno, true));
    }

    /// Fails every call of `op` from `after` calls on, until `heal`.
    pub fn fail_always(&self, op: Op, after: u64, errno: Errno) {
        self.0
            .lock()
            .unwrap()
            .faults
            .push((op, after, errno, false));
    }

    /// Removes every scheduled fault and the capacity limit: the disk works again.
    pub fn heal(&self) {
        let mut s = self.0.lock().unwrap();
        s.faults.clear();
        s.capacity = None;
    }

    /// Leaves `spare` bytes free from now on.
    pub fn fill_up(&self, spare: u64) {
        let mut s = self.0.lock().unwrap();
        s.capacity = Some(s.used() + spare);
    }

    pub fn random(&self, below: u64) -> u64 {
        self.0.lock().unwrap().random(below)
    }

    /// The disk as a power cut at this moment leaves it: each file keeps what was synced plus,
    /// maybe, a prefix of what was appended after (a torn write); the names are those last
    /// synced, or (as a file system that writes its metadata eagerly would leave them) the
    /// current ones.
    pub fn power_cut(&self) -> SimDisk {
        let mut s = self.0.lock().unwrap();
        let eager_names = s.random(2) == 0;
        let names = if eager_names {
            s.names.clone()
        } else {
            s.durable_names.clone()
        };
        let mut inodes = s.inodes.clone();
        for inode in &mut inodes {
            let mut kept = inode.durable.clone();
            if inode.cache.len() > kept.len() && inode.cache.starts_with(&kept) {
                let extra = inode.cache.len() - kept.len();
                let torn = s.random(extra as u64 + 1) as usize;
                kept.extend_from_slice(
                    &inode.cache[inode.durable.len()..inode.durable.len() + torn],
                );
            }
            *inode = Inode {
                cache: kept.clone(),
                durable: kept,
            };
        }
        let rng = s.random(u64::MAX);
        SimDisk(Arc::new(Mutex::new(State {
            inodes,
            durable_names: names.clone(),
            names,
            faults: Vec::new(),
            capacity: None,
            rng: rng | 1,
        })))
    }

    /// Flips one bit of a file, as a bad sector or a cosmic ray would, in what reads see and
    /// in what is durable.
    pub fn flip_bit(&self, path: &Path, byte: usize, bit: u8) {
        let mut s = self.0.lock().unwrap();
        let i = s.names[path];
        let inode = &mut s.inodes[i];
        for data in [&mut inode.cache, &mut inode.durable] {
            if let Some(b) = data.get_mut(byte) {
                *b ^= 1 << bit;
            }
        }
    }

    /// A file's bytes as reads see them, if it exists.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let s = self.0.lock().unwrap();
        s.names.get(path).map(|&i| s.inodes[i].cache.clone())
    }
}

struct SimFile {
    disk: SimDisk,
    inode: usize,
}

impl DiskFile for SimFile {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut s = self.disk.0.lock().unwrap();
        if let Err(e) = s.check(Op::Append) {
            // A failed write may have written part of its bytes.
            let part = s.random(buf.len() as u64 + 1) as usize;
            s.inodes[self.inode].cache.extend_from_slice(&buf[..part]);
            return Err(e);
        }
        if let Some(capacity) = s.capacity {
            let free = capacity.saturating_sub(s.used()) as usize;
            if free < buf.len() {
                s.inodes[self.inode].cache.extend_from_slice(&buf[..free]);
                return Err(Errno::Enospc.error());
            }
        }
        s.inodes[self.inode].cache.extend_from_slice(buf);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        let mut s = self.disk.0.lock().unwrap();
        if let Err(e) = s.check(Op::Sync) {
            // Part of the unsynced bytes may have reached the disk all the same.
            let inode = &s.inodes[self.inode];
            if inode.cache.len() > inode.durable.len() && inode.cache.starts_with(&inode.durable) {
                let extra = (inode.cache.len() - inode.durable.len()) as u64;
                let part = s.random(extra + 1) as usize;
                let inode = &mut s.inodes[self.inode];
                let end = inode.durable.len() + part;
                inode.durable = inode.cache[..end].to_vec();
            }
            return Err(e);
        }
        let inode = &mut s.inodes[self.inode];
        inode.durable = inode.cache.clone();
        Ok(())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut s = self.disk.0.lock().unwrap();
        s.check(Op::Read)?;
        let data = &s.inodes[self.inode].cache;
        let start = offset as usize;
        match data.get(start..start + buf.len()) {
            Some(bytes) => {
                buf.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
        }
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        let mut s = self.disk.0.lock().unwrap();
        s.check(Op::Truncate)?;
        s.inodes[self.inode].cache.resize(len as usize, 0);
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.disk.0.lock().unwrap().inodes[self.inode].cache.len() as u64)
    }
}

impl Disk for SimDisk {
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn DiskFile>> {
        let mut s = self.0.lock().unwrap();
        s.check(Op::Open)?;
        let inode = match s.names.get(path) {
            Some(&i) => i,
            None if create => {
                let i = s.new_inode();
                s.names.insert(path.to_path_buf(), i);
                i
            }
            None => return Err(io::Error::from(io::ErrorKind::NotFound)),
        };
        Ok(Box::new(SimFile {
            disk: self.clone(),
            inode,
        }))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        let mut s = self.0.lock().unwrap();
        s.check(Op::Create)?;
        let inode = s.new_inode();
        s.names.insert(path.to_path_buf(), inode);
        Ok(Box::new(SimFile {
            disk: self.clone(),
            inode,
        }))
    }

    fn exists(&self, path: &Path) -> bool {
        self.0.lock().unwrap().names.contains_key(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.0.lock().unwrap();
        s.check(Op::Rename)?;
        let inode = s.names.remove(from).ok_or(io::ErrorKind::NotFound)?;
        s.names.insert(to.to_path_buf(), inode);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.0.lock().unwrap();
        s.check(Op::Remove)?;
        s.names.remove(path).ok_or(io::ErrorKind::NotFound)?;
        Ok(())
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        let mut s = self.0.lock().unwrap();
        s.check(Op::SyncDir)?;
        s.durable_names = s.names.clone();
        Ok(())
    }

    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn lock(&self, _dir: &Path) -> anyhow::Result<Box<dyn Send>> {
        Ok(Box::new(()))
    }
}

impl SimDisk {
    /// Whether a name exists now.
    pub fn exists_now(&self, path: &Path) -> bool {
        self.exists(path)
    }
}
