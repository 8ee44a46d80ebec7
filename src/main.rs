//! The `streamhost` command: `serve` (the default) runs the engine; `adapter new` and
//! `adapter check` help write WebAssembly adapters; `store check|repair` look after a durable
//! store whose log is damaged. The grammar and its help text are in `cli`.

mod cli;

use anyhow::Context;
use clap::Parser;
use cli::{AdapterCommand, Cli, Command, StoreCommand};
use streamhost::{Config, Server};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    match run_command() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_command() -> anyhow::Result<()> {
    // Usage errors, --help and --version print and exit here (status 2, 0, 0).
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let serve = match cli.into_command() {
        Command::Serve(serve) => serve,
        Command::Adapter(AdapterCommand::Check { file }) => return check_adapter(&file),
        Command::Adapter(AdapterCommand::New { name, dir }) => {
            return new_adapter(&name, dir.as_deref());
        }
        Command::Store(StoreCommand::Check { dir }) => return check_store(&dir),
        Command::Store(StoreCommand::Repair { dir }) => {
            print!("{}", streamhost::storage::wal::tool::repair(&dir)?);
            return Ok(());
        }
    };
    let mut config = match &serve.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    config.port = serve.port.unwrap_or(config.port);
    config.worker_port = serve.worker_port.unwrap_or(config.worker_port);
    without_huge_pages();
    // On one core a work-stealing scheduler only adds cross-thread wake-ups.
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let runtime = if cores == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
    };
    runtime.block_on(run(config))
}

/// Keeps the engine's memory in ordinary pages. The allocator asks the kernel for transparent
/// huge pages, and each is zeroed (and, on a fragmented machine, compacted for) at its first
/// touch, as the store grows: that cost a durable set 14% of its time and an in-memory one 11%
/// (BENCHMARKS.md). Redis turns them off for itself too (`disable-thp`). Setting
/// `MIMALLOC_ALLOW_THP` leaves the choice to the allocator.
fn without_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
    #[cfg(target_os = "linux")]
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
        let e = std::io::Error::last_os_error();
        tracing::debug!(error = %e, "cannot turn transparent huge pages off");
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let server = Server::start(config).await?;
    // One plain line that people and test harnesses can read the bound addresses from.
    let admin = server
        .admin_addr
        .map(|a| format!(" admin http://{a}"))
        .unwrap_or_default();
    println!(
        "streamhost listening: clients ws://{} workers ws://{}{admin}",
        server.client_addr, server.worker_addr
    );
    wait_for_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await?;
    tracing::info!("stopped; every acknowledged write is on disk");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// `streamhost adapter check FILE.wasm`: compile, type-check against the WIT, report.
fn check_adapter(file: &str) -> anyhow::Result<()> {
    let wasm = std::fs::read(file).with_context(|| format!("cannot read {file}"))?;
    let host = streamhost::storage::wasm::WasmHost::new(None)?;
    let prepared = host
        .prepare(&wasm)
        .with_context(|| format!("{file} is not a streamhost adapter"))?;
    println!(
        "{file}: a streamhost adapter ({} KiB, compiled in {:.0} ms)",
        wasm.len() / 1024,
        prepared.load_time.as_secs_f64() * 1000.0
    );
    println!(
        "  fan-out hook: {}",
        if prepared.fanout { "yes" } else { "no" }
    );
    println!("  exports:");
    for e in &prepared.exports {
        println!("    {e}");
    }
    // A guest's standard library imports much of WASI: say which imports give it anything.
    println!("  imports (granted: works; stub: linked so the guest loads, gives nothing):");
    let width = prepared.imports.iter().map(String::len).max().unwrap_or(0);
    for i in &prepared.imports {
        println!("    {i:width$}  {}", import_note(i));
    }
    Ok(())
}

/// `streamhost store check DIR`: fails (exit status 1) when the log is damaged.
fn check_store(dir: &std::path::Path) -> anyhow::Result<()> {
    let report = streamhost::storage::wal::tool::check(dir)?;
    print!("{}", report.text);
    if report.damaged {
        anyhow::bail!("the store's log is damaged; see above");
    }
    Ok(())
}

/// What the host gives an adapter behind one import (see src/storage/wasm/imports.rs and the
/// `WasiCtxBuilder` in src/storage/wasm/adapter.rs: nothing is granted beyond the defaults).
fn import_note(import: &str) -> &'static str {
    let interface = import.split('@').next().unwrap_or(import);
    match interface {
        "streamhost:adapter/store" => "granted: the engine's store, for the bound stream only",
        "streamhost:adapter/log" => "granted: the engine's log",
        "streamhost:adapter/types" => "types only",
        "wasi:cli/environment" => {
            "granted: the variables in the binding's `limits.env` (none unless set); no arguments"
        }
        "wasi:clocks/wall-clock" | "wasi:clocks/monotonic-clock" => "granted: the real clocks",
        "wasi:random/random" | "wasi:random/insecure" | "wasi:random/insecure-seed" => {
            "granted: random numbers"
        }
        "wasi:io/error" | "wasi:io/streams" | "wasi:io/poll" => {
            "granted: plumbing for the other interfaces"
        }
        "wasi:cli/exit" => "granted: exit ends the call as adapter_trap; a new instance follows",
        "wasi:cli/stdout" | "wasi:cli/stderr" => "stub: output is dropped (use log::write)",
        "wasi:cli/stdin" => "stub: always empty",
        "wasi:filesystem/types" | "wasi:filesystem/preopens" => {
            "stub: no directories, every open fails"
        }
        s if s.starts_with("wasi:sockets/") => "stub: every address is refused",
        s if s.starts_with("wasi:cli/terminal") => "stub: no terminal",
        _ => "",
    }
}

/// `streamhost adapter new NAME [DIR]`: a standalone crate, with the next steps.
fn new_adapter(name: &str, dir: Option<&str>) -> anyhow::Result<()> {
    let dir = cli::new_adapter::create(name, dir)?;
    let wasm = cli::new_adapter::wasm_file(name);
    println!("created the adapter crate {name} in {}", dir.display());
    println!(
        "  build:  cd {} && cargo build --release --target wasm32-wasip2",
        dir.display()
    );
    println!("  check:  streamhost adapter check {wasm}");
    println!(
        "  bind:   give {wasm} to `component:` in the config, or to streamhost::create_stream"
    );
    Ok(())
}
