//! The published iii SDKs (npm `iii-sdk` 0.22.1, PyPI `iii-sdk` 0.25.0) run as real workers
//! against the real `streamhost` binary.
//!
//! Each test starts an engine on free ports with an in-memory store, then runs one script:
//! `tests/sdk/node/streams.mjs` or `tests/sdk/python/streams.py`. The scripts get the worker
//! socket in `III_URL` and the client socket in `STREAMHOST_CLIENT_URL`, check the stream
//! functions, errors, cross-worker calls, `stream` / `stream:join` triggers and `createStream`
//! (with a raw WebSocket client watching the frames), and exit 0 only when every check passed.
//!
//! The SDKs are installed outside cargo:
//!   npm ci --prefix tests/sdk/node
//!   python3 -m venv tests/sdk/python/.venv && tests/sdk/python/.venv/bin/pip install -r tests/sdk/python/requirements.txt

mod common;

use common::{EngineProcess, write_config};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);
const IN_MEMORY: &str = "{ name: kv, config: { store_method: in_memory } }";
const NODE_INSTALL: &str = "npm ci --prefix tests/sdk/node";
const PYTHON_INSTALL: &str = "python3 -m venv tests/sdk/python/.venv && tests/sdk/python/.venv/bin/pip install -r tests/sdk/python/requirements.txt";

fn sdk_dir(lang: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(lang)
}

/// Fails with the install command when the SDK has not been installed.
fn require_installed(marker: &Path, what: &str, install: &str) {
    assert!(
        marker.exists(),
        "{what} is not installed ({} is missing).\nInstall it from the repository root with:\n    {install}\nthen run `cargo test --test sdk_clients` again.",
        marker.display()
    );
}

/// Runs `program args` with the engine's addresses in its environment and collects its stdout
/// and stderr; kills it after `SCRIPT_TIMEOUT`.
fn run_script(
    engine: &EngineProcess,
    program: &Path,
    args: &[&Path],
    cwd: &Path,
) -> (Option<ExitStatus>, String) {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .env("III_URL", format!("ws://{}", engine.worker_addr))
        .env(
            "STREAMHOST_CLIENT_URL",
            format!("ws://{}", engine.client_addr),
        )
        .env("OTEL_ENABLED", "false")
        .env("PYTHONUNBUFFERED", "1")
        .env_remove("III_TOKEN")
        .env_remove("III_NAMESPACE")
        .env_remove("III_WORKER_NAME")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e} (is it installed and on PATH?)",
                program.display()
            )
        });
    let output = Arc::new(Mutex::new(String::new()));
    let readers: Vec<_> = [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
    ]
    .into_iter()
    .map(|pipe| {
        let output = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut out = output.lock().unwrap();
                out.push_str(&line);
                out.push('\n');
            }
        })
    })
    .collect();
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for r in readers {
        r.join().ok();
    }
    let text = output.lock().unwrap().clone();
    (status, text)
}

fn assert_passed(what: &str, (status, output): (Option<ExitStatus>, String)) {
    match status {
        None => panic!("{what} did not finish within {SCRIPT_TIMEOUT:?}; its output:\n{output}"),
        Some(s) if !s.success() => panic!("{what} failed ({s}); its output:\n{output}"),
        Some(_) => assert!(
            output.contains("ALL PASSED"),
            "{what} exited 0 without finishing its checks; its output:\n{output}"
        ),
    }
}

fn engine() -> (tempfile::TempDir, EngineProcess) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), IN_MEMORY);
    let engine = EngineProcess::spawn(&config);
    (dir, engine)
}

/// npm `iii-sdk` 0.22.1: built-in stream functions, errors, functions across two workers,
/// `stream` and `stream:join` triggers, `createStream` from `iii-sdk/helpers`, client frames.
#[test]
fn node_sdk_worker() {
    let dir = sdk_dir("node");
    require_installed(
        &dir.join("node_modules/iii-sdk/package.json"),
        "the npm iii-sdk",
        NODE_INSTALL,
    );
    let (_tmp, engine) = engine();
    let result = run_script(
        &engine,
        Path::new("node"),
        &[&dir.join("streams.mjs")],
        &dir,
    );
    assert_passed("tests/sdk/node/streams.mjs", result);
}

/// PyPI `iii-sdk` 0.25.0: the same checks as the Node test, with `iii.helpers.create_stream`.
#[test]
fn python_sdk_worker() {
    let dir = sdk_dir("python");
    let python = dir.join(".venv/bin/python");
    require_installed(&python, "the Python venv with iii-sdk", PYTHON_INSTALL);
    let (_tmp, engine) = engine();
    let result = run_script(&engine, &python, &[&dir.join("streams.py")], &dir);
    assert_passed("tests/sdk/python/streams.py", result);
}
