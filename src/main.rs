//! `streamhost serve [--config FILE]`: run the engine.

use anyhow::Context;
use std::path::PathBuf;
use streamhost::{Config, Server};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: streamhost [serve] [--config iii-config.yaml]
       streamhost adapter check FILE.wasm
       streamhost store check|repair DIR

  serve                 run the engine (the default)
  --config FILE         an iii config file; without one the engine listens on 3112 (clients)
                        and 49134 (workers) and keeps streams durably under ./data/stream_store
  adapter check FILE    check that a WebAssembly component implements wit/adapter.wit and
                        report what it imports and exports
  store check DIR       read a durable store's log (the KvStore's file_path) and report
                        whether the engine can start on it, and any damage
  store repair DIR      back the log up, then keep every intact record of a damaged log

Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=streamhost=debug) for more.";

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
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("adapter") {
        return match args.get(1..).unwrap_or_default() {
            [check, file] if check == "check" => check_adapter(file),
            _ => anyhow::bail!("usage: streamhost adapter check FILE.wasm"),
        };
    }
    if args.first().map(String::as_str) == Some("store") {
        return match args.get(1..).unwrap_or_default() {
            [cmd, dir] if cmd == "check" => check_store(dir.as_ref()),
            [cmd, dir] if cmd == "repair" => {
                print!("{}", streamhost::adapter::wal::tool::repair(dir.as_ref())?);
                Ok(())
            }
            _ => anyhow::bail!("usage: streamhost store check|repair DIR"),
        };
    }
    let mut config_path: Option<PathBuf> = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "serve" => {}
            "--config" | "-c" => {
                config_path = Some(args.next().context("--config needs a file name")?.into())
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(());
            }
            "--version" | "-V" => {
                println!("streamhost {}", env!("CARGO_PKG_VERSION"));
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    let config = match &config_path {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
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

async fn run(config: Config) -> anyhow::Result<()> {
    let server = Server::start(config).await?;
    // One plain line that people and test harnesses can read the bound addresses from.
    println!(
        "streamhost listening: clients ws://{} workers ws://{}",
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
    let host = streamhost::wasm::WasmHost::new(None)?;
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
    println!("  imports:");
    for i in &prepared.imports {
        println!("    {i}");
    }
    Ok(())
}

/// `streamhost store check DIR`: fails (exit status 1) when the log is damaged.
fn check_store(dir: &std::path::Path) -> anyhow::Result<()> {
    let report = streamhost::adapter::wal::tool::check(dir)?;
    print!("{}", report.text);
    if report.damaged {
        anyhow::bail!("the store's log is damaged; see above");
    }
    Ok(())
}
