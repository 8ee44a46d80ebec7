//! The wasmtime engine shared by a tenant's adapters: configuration, the epoch clock that
//! enforces per-call deadlines, the linker with the host's imports, loading components, and
//! the tenant's `Budget`.
//!
//! Compiling a component takes from milliseconds to many seconds of CPU, and the upload
//! decides which: it runs on a blocking thread, never on the engine's async threads, one
//! compile at a time in the whole process (`STREAMHOST_WASM_COMPILES` raises it), and single-
//! threaded (no parallel compilation), so that compiles never take every core.

use super::bindings;
use super::budget::Budget;
use super::cache::Cache;
use super::imports::HostState;
use crate::metrics::TenantCounters;
use crate::tenants::AdapterCeilings;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use wasmtime::component::{HasSelf, InstancePre, Linker};
use wasmtime::{Config, Engine};

/// How often the epoch advances: the granularity of call deadlines, and the longest a
/// running guest holds a thread before it yields it (so the longest another tenant's
/// work waits behind it). The clock runs only once some tenant has bound an adapter.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

pub struct WasmHost {
    pub engine: Engine,
    linker: Linker<HostState>,
    cache: Cache,
    stop_clock: Arc<AtomicBool>,
    /// The tenant's caps on its adapters' concurrent calls and CPU time.
    pub budget: Budget,
}

/// Compiles at once in the whole process: `STREAMHOST_WASM_COMPILES`, else one per two cores.
fn compile_permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    PERMITS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let n = std::env::var("STREAMHOST_WASM_COMPILES")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or((cores / 2).max(1));
        tokio::sync::Semaphore::new(n)
    })
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
        WasmHost::with_ceilings(
            cache_dir,
            AdapterCeilings::HIGHEST,
            TenantCounters::default(),
        )
    }

    /// A host whose adapters share `ceilings`' caps on concurrent calls and CPU time, and
    /// count their refusals in the tenant's `counters`.
    pub fn with_ceilings(
        cache_dir: Option<PathBuf>,
        ceilings: AdapterCeilings,
        counters: TenantCounters,
    ) -> anyhow::Result<Arc<WasmHost>> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.consume_fuel(true);
        config.parallel_compilation(false);
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
            budget: Budget::new(ceilings, counters),
        }))
    }

    /// `prepare` on a blocking thread, behind the process-wide cap on concurrent compiles.
    pub async fn prepare_async(self: &Arc<Self>, wasm: Arc<[u8]>) -> anyhow::Result<Prepared> {
        let _permit = compile_permits()
            .acquire()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let host = self.clone();
        tokio::task::spawn_blocking(move || host.prepare(&wasm))
            .await
            .map_err(|e| anyhow::anyhow!("compiling the component failed: {e}"))?
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
        let prepared = self.check(&loaded.component, loaded.from_cache, started)?;
        // Only a component that passed the interface check is worth keeping.
        if !loaded.from_cache {
            self.cache.keep(&self.engine, wasm, &loaded.component);
        }
        Ok(prepared)
    }

    /// Type-checks a compiled component against the WIT.
    fn check(
        &self,
        component: &wasmtime::component::Component,
        from_cache: bool,
        started: Instant,
    ) -> anyhow::Result<Prepared> {
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
            from_cache,
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
