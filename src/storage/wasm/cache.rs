//! Compiled components on disk, so an adapter is compiled once, not at every start.
//!
//! An entry's name is the SHA-256 of the component's bytes and of the engine's compatibility
//! hash (wasmtime version and compilation settings). Only files this cache wrote are ever
//! loaded as compiled code; a precompiled artifact offered by a user is refused upstream.

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
}

/// A component, and whether it came from the cache.
pub struct Loaded {
    pub component: Component,
    pub from_cache: bool,
}

impl Cache {
    /// A cache in `dir`, or none (compile every time) when `dir` is None.
    pub fn new(dir: Option<PathBuf>) -> Cache {
        Cache { dir }
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

    /// Loads the compiled form of `wasm`, compiling and storing it when it is not cached.
    pub fn load(&self, engine: &Engine, wasm: &[u8]) -> anyhow::Result<Loaded> {
        let entry = self.entry(engine, wasm);
        if let Some(path) = entry.as_ref().filter(|p| p.exists()) {
            // SAFETY: the file was written by `store` below from our own compilation, under a
            // name that binds it to these exact bytes and this engine's settings.
            match unsafe { Component::deserialize_file(engine, path) } {
                Ok(component) => {
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
        if let Some(path) = entry
            && let Err(e) = store(&component, &path)
        {
            tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "cannot cache a compiled component");
        }
        Ok(Loaded {
            component,
            from_cache: false,
        })
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
