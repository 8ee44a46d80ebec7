//! The wasmtime engine shared by every adapter: configuration, the epoch clock that enforces
//! per-call deadlines, the linker with the host's imports, and loading components.

use super::bindings;
use super::cache::Cache;
use super::imports::HostState;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::{HasSelf, InstancePre, Linker};
use wasmtime::{Config, Engine};

/// How often the epoch advances: the granularity of call deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

pub struct WasmHost {
    pub engine: Engine,
    linker: Linker<HostState>,
    cache: Cache,
    stop_clock: Arc<AtomicBool>,
}

/// A component checked against the WIT and ready to instantiate.
pub struct Prepared {
    pub pre: InstancePre<HostState>,
    pub fanout: bool,
    pub from_cache: bool,
    pub load_time: Duration,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

impl WasmHost {
    /// `cache_dir`: where compiled components are kept (None: compile at every load).
    pub fn new(cache_dir: Option<PathBuf>) -> anyhow::Result<Arc<WasmHost>> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.consume_fuel(true);
        let engine =
            Engine::new(&config).map_err(|e| anyhow::anyhow!("cannot start wasmtime: {e}"))?;
        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| anyhow::anyhow!("{e}"))?;
        bindings::Adapter::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| anyhow::anyhow!("{e}"))?;

        // The epoch clock: a thread that advances every tick, so that a call past its deadline
        // traps wherever the guest is, loops included.
        let stop_clock = Arc::new(AtomicBool::new(false));
        let (weak, stop) = (engine.weak(), stop_clock.clone());
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                }
            })
            .expect("spawn the epoch clock");
        Ok(Arc::new(WasmHost {
            engine,
            linker,
            cache: Cache::new(cache_dir),
            stop_clock,
        }))
    }

    /// Compiles (or loads from the cache) and type-checks a component against the WIT.
    pub fn prepare(&self, wasm: &[u8]) -> anyhow::Result<Prepared> {
        if Engine::detect_precompiled(wasm).is_some() {
            anyhow::bail!(
                "precompiled artifacts are not accepted: give the .wasm component itself"
            );
        }
        if !wasm.starts_with(b"\0asm") {
            anyhow::bail!("not a WebAssembly file (it does not start with the \\0asm magic)");
        }
        let started = Instant::now();
        let loaded = self.cache.load(&self.engine, wasm)?;
        let component = &loaded.component;
        let ty = component.component_type();
        let imports: Vec<String> = ty
            .imports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let pre = self.linker.instantiate_pre(component).map_err(|e| {
            anyhow::anyhow!("the component imports something streamhost does not provide: {e:#} (it may use the `log` and `store` interfaces of wit/adapter.wit and WASI 0.2)")
        })?;
        bindings::exports::streamhost::adapter::stream_adapter::GuestIndices::new(&pre)
            .map_err(|e| anyhow::anyhow!("the component does not export `streamhost:adapter/stream-adapter` as wit/adapter.wit defines it: {e:#}"))?;
        let fanout = exports
            .iter()
            .any(|e| e.starts_with("streamhost:adapter/fanout"));
        if fanout {
            super::fanout_bindings::exports::streamhost::adapter::fanout::GuestIndices::new(&pre)
                .map_err(|e| {
                anyhow::anyhow!(
                    "the component's `fanout` export does not match wit/adapter.wit: {e:#}"
                )
            })?;
        }
        Ok(Prepared {
            pre,
            fanout,
            from_cache: loaded.from_cache,
            load_time: started.elapsed(),
            imports,
            exports,
        })
    }
}

impl Drop for WasmHost {
    fn drop(&mut self) {
        self.stop_clock.store(true, Ordering::Relaxed);
    }
}
