//! The `streamhost` command: `serve` (the default) runs the engine; `adapter new` and
//! `adapter check` help write WebAssembly adapters; `store check|repair` look after a durable
//! store whose log is damaged.

mod new_adapter;

use anyhow::Context;
use std::path::PathBuf;
use streamhost::{Config, Server};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str =
    "usage: streamhost [serve] [--config iii-config.yaml] [--port N] [--worker-port N]
       streamhost adapter new NAME [DIR]
       streamhost adapter check FILE.wasm
       streamhost store check|repair DIR

  serve                 run the engine (the default)
  --config FILE         an iii config file; without one the engine listens on 3112 (clients)
                        and 49134 (workers) and keeps streams durably under ./data/stream_store
  --port N              the client socket's port, over the config's (0: any free port)
  --worker-port N       the worker socket's port, over the config's (0: any free port)
  adapter new NAME      write a new adapter crate, ready to build, in DIR (default ./NAME)
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
            [new, name, dir @ ..] if new == "new" && dir.len() <= 1 => {
                new_adapter(name, dir.first().map(String::as_str))
            }
            _ => anyhow::bail!(
                "usage: streamhost adapter new NAME [DIR]\n       streamhost adapter check FILE.wasm"
            ),
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
    let (mut port, mut worker_port): (Option<u16>, Option<u16>) = (None, None);
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "serve" => {}
            "--config" | "-c" => {
                config_path = Some(args.next().context("--config needs a file name")?.into())
            }
            "--port" => port = Some(port_arg("--port", args.next())?),
            "--worker-port" => worker_port = Some(port_arg("--worker-port", args.next())?),
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
    let mut config = match &config_path {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    config.port = port.unwrap_or(config.port);
    config.worker_port = worker_port.unwrap_or(config.worker_port);
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

fn port_arg(flag: &str, value: Option<String>) -> anyhow::Result<u16> {
    let value = value.with_context(|| format!("{flag} needs a port number"))?;
    value
        .parse()
        .with_context(|| format!("{flag} must be a port number (0-65535), not {value:?}"))
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
    let report = streamhost::adapter::wal::tool::check(dir)?;
    print!("{}", report.text);
    if report.damaged {
        anyhow::bail!("the store's log is damaged; see above");
    }
    Ok(())
}

/// What the host gives an adapter behind one import (see src/wasm/imports.rs and the
/// `WasiCtxBuilder` in src/wasm/adapter.rs: nothing is granted beyond the defaults).
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
    let dir = new_adapter::create(name, dir)?;
    let wasm = new_adapter::wasm_file(name);
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

#[cfg(test)]
mod tests {
    #[test]
    fn port_flags_take_a_port_number() {
        assert_eq!(super::port_arg("--port", Some("0".into())).unwrap(), 0);
        assert_eq!(
            super::port_arg("--port", Some("65535".into())).unwrap(),
            65535
        );
        let err = super::port_arg("--port", Some("65536".into())).unwrap_err();
        assert!(
            format!("{err:#}").contains("--port must be a port number"),
            "{err:#}"
        );
        let err = super::port_arg("--worker-port", None).unwrap_err();
        assert!(
            err.to_string()
                .contains("--worker-port needs a port number")
        );
    }
}
