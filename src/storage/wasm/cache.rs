//! Compiled components on disk, so an adapter is compiled once, not at every start.
//!
//! An entry's name is the SHA-256 of the component's bytes and of the engine's compatibility
//! hash (wasmtime version and compilation settings). Only files this cache wrote are ever
//! loaded as compiled code; a precompiled artifact offered by a user is refused upstream.
//!
//! Uploads are anyone's, so the cache is bounded: only components that passed the interface
//! check are kept (`keep`, called after it), and the directory is held under `max_bytes`
//! (`STREAMHOST_WASM_CACHE_BYTES`, default 256 MiB) by removing the least recently used
//! entries (a hit refreshes an entry's modification time).

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Feeds `Hash` output into SHA-256, for the engine's compatibility hash.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

pub struct Cache {
    dir: Option<PathBuf>,
    pub max_bytes: u64,
}

pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;

/// A component, and whether it came from the cache.
pub struct Loaded {
    pub component: Component,
    pub from_cache: bool,
}

impl Cache {
    /// A cache in `dir`, or none (compile every time) when `dir` is None.
    pub fn new(dir: Option<PathBuf>) -> Cache {
        let max_bytes = std::env::var("STREAMHOST_WASM_CACHE_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MAX_BYTES);
        Cache { dir, max_bytes }
    }

    fn entry(&self, engine: &Engine, wasm: &[u8]) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        let mut hasher = ShaHasher(Sha256::new());
        hasher.0.update(wasm);
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let digest = hasher.0.finalize();
        let name: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Some(dir.join(format!("{name}.cwasm")))
    }

    /// Loads the compiled form of `wasm`, compiling it when it is not cached (`keep` stores
    /// it once it has passed the interface check).
    pub fn load(&self, engine: &Engine, wasm: &[u8]) -> anyhow::Result<Loaded> {
        let entry = self.entry(engine, wasm);
        if let Some(path) = entry.as_ref().filter(|p| p.exists()) {
            // SAFETY: the file was written by `store` below from our own compilation, under a
            // name that binds it to these exact bytes and this engine's settings.
            match unsafe { Component::deserialize_file(engine, path) } {
                Ok(component) => {
                    // The entry is now the most recently used.
                    let now = std::time::SystemTime::now();
                    let _ = std::fs::File::options()
                        .write(true)
                        .open(path)
                        .and_then(|f| f.set_modified(now));
                    return Ok(Loaded {
                        component,
                        from_cache: true,
                    });
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "discarding an unreadable cache entry")
                }
            }
        }
        let component = Component::new(engine, wasm)
            .map_err(|e| anyhow::anyhow!("not a valid WebAssembly component: {e:#}"))?;
        Ok(Loaded {
            component,
            from_cache: false,
        })
    }

    /// Stores a compiled component that passed the interface check, then evicts the least
    /// recently used entries until the cache is under `max_bytes`.
    pub fn keep(&self, engine: &Engine, wasm: &[u8], component: &Component) {
        let Some(path) = self.entry(engine, wasm) else {
            return;
        };
        if let Err(e) = store(component, &path) {
            tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "cannot cache a compiled component");
            return;
        }
        if let Some(dir) = path.parent() {
            self.evict(dir);
        }
    }

    fn evict(&self, dir: &Path) {
        let Ok(read) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<_> = read
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), e.path()))
            })
            .collect();
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        entries.sort();
        for (_, len, path) in entries {
            if total <= self.max_bytes {
                break;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    total -= len;
                    tracing::info!(path = %path.display(), bytes = len, "compile cache entry evicted");
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot evict a compile cache entry")
                }
            }
        }
    }
}

fn store(component: &Component, path: &Path) -> anyhow::Result<()> {
    let bytes = component.serialize().map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn eviction_removes_the_least_recently_used_until_under_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = SystemTime::now() - Duration::from_secs(100);
        for (i, name) in ["old", "mid", "new"].iter().enumerate() {
            let path = dir.path().join(format!("{name}.cwasm"));
            std::fs::write(&path, vec![0u8; 100]).unwrap();
            let f = std::fs::File::options().write(true).open(&path).unwrap();
            f.set_modified(t0 + Duration::from_secs(i as u64)).unwrap();
        }
        std::fs::write(dir.path().join("other.txt"), vec![0u8; 1000]).unwrap();
        let exists = |n: &str| dir.path().join(format!("{n}.cwasm")).exists();
        // At the cap: nothing goes.
        let cache = Cache {
            dir: Some(dir.path().into()),
            max_bytes: 300,
        };
        cache.evict(dir.path());
        assert!(exists("old") && exists("mid") && exists("new"));
        // One byte under it: the least recently used goes, and only it.
        let cache = Cache {
            max_bytes: 299,
            ..cache
        };
        cache.evict(dir.path());
        assert!(!exists("old") && exists("mid") && exists("new"));
        assert!(
            dir.path().join("other.txt").exists(),
            "only cache entries are evicted"
        );
    }
}
