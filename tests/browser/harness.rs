//! What the browser tests run on: headless chromium behind `driver.mjs` (one JSON command per
//! line), an engine process that can die and come back on the same client port, and a
//! `redis-server` of the test's own so that the engine's data outlives it.
//!
//! Missing tools fail the test with the command that installs them: a browser test that
//! skips itself where chromium is absent would pass on a machine that tests nothing.

use crate::common::WAIT;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long a page may take to reach a state the test waits for (a ceiling, not a timing).
pub const SETTLE: Duration = Duration::from_secs(60);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `chromium` on PATH (or `$CHROMIUM`), or a failure that says how to install it.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(p);
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("chromium"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "chromium is not installed, and the browser tests need it.\nInstall it with:\n    apt-get update && apt-get install -y chromium\n(.ci/run does this), or set CHROMIUM to a Chrome/Chromium binary."
            )
        })
}

/// A headless chromium with `tests/browser/page/index.html` open.
pub struct Browser {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The driver's stdout, line by line (read on a thread: tokio's process support is off).
    lines: mpsc::UnboundedReceiver<String>,
    next_id: u64,
}

impl Browser {
    pub async fn launch() -> Browser {
        let chromium = chromium();
        let dir = repo().join("tests/browser");
        assert!(
            dir.join("node_modules/puppeteer-core").is_dir(),
            "puppeteer-core is not installed ({} is missing).\nInstall it from the repository root with:\n    npm ci --prefix tests/browser\n(scripts/test.sh does this on first use), then run `cargo test --test browser` again.",
            dir.join("node_modules/puppeteer-core").display()
        );
        let mut child = Command::new("node")
            .arg(dir.join("driver.mjs"))
            .env("CHROMIUM", &chromium)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run node ({e}); the browser tests need Node.js"));
        let stdin = child.stdin.take().unwrap();
        let mut lines = lines_of(child.stdout.take().unwrap());
        let first = tokio::time::timeout(SETTLE, lines.recv())
            .await
            .expect("chromium did not open the test page within a minute")
            .unwrap_or_else(|| {
                panic!("the browser driver exited before it was ready (its errors are above; chromium at {})", chromium.display())
            });
        let ready: Value = serde_json::from_str(&first).unwrap();
        assert_eq!(ready["ready"], true, "{first}");
        Browser {
            child,
            stdin: Some(stdin),
            lines,
            next_id: 0,
        }
    }

    async fn command(&mut self, mut cmd: Value) -> Value {
        self.next_id += 1;
        cmd["id"] = json!(self.next_id);
        let line = format!("{cmd}\n");
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.flush().unwrap();
        let answer = tokio::time::timeout(SETTLE, self.lines.recv())
            .await
            .unwrap_or_else(|_| panic!("no answer from the browser to {cmd}"))
            .unwrap_or_else(|| panic!("the browser driver exited during {cmd}"));
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["id"], cmd["id"], "answers come in order");
        if let Some(err) = answer.get("err") {
            panic!(
                "the page failed {cmd}:\n{}",
                err.as_str().unwrap_or_default()
            );
        }
        answer["ok"].clone()
    }

    /// The awaited value of a JavaScript expression in the page.
    pub async fn eval(&mut self, expr: &str) -> Value {
        self.command(json!({"eval": expr})).await
    }

    /// Opens a URL (or a path of the driver's own server).
    pub async fn goto(&mut self, url: &str) {
        self.command(json!({"goto": url})).await;
    }

    /// Saves a screenshot of the page to `file`; returns how many distinct colours it has.
    pub async fn screenshot(&mut self, file: &Path) -> u64 {
        let v = self.command(json!({"screenshot": file})).await;
        v["colours"].as_u64().unwrap()
    }

    /// Polls `view` (an expression) until `done` holds for its value; panics after `SETTLE`
    /// with the last value, so that a failure shows what the page had.
    pub async fn wait_for(
        &mut self,
        view: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + SETTLE;
        loop {
            let v = self.eval(view).await;
            if done(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "the page never reached {what} within {SETTLE:?}; it has:\n{v:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closing stdin asks the driver to close chromium and exit (chromium would outlive a
        // killed node); a driver that lingers is killed.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines a child process prints, read on a thread.
fn lines_of(out: impl std::io::Read + Send + 'static) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// `examples/chat/server.mjs` (its worker and page server) on a free port.
pub struct ExampleChat {
    child: Child,
    pub url: String,
}

impl ExampleChat {
    pub async fn start(worker: std::net::SocketAddr, client: std::net::SocketAddr) -> ExampleChat {
        let dir = repo().join("examples/chat");
        assert!(
            dir.join("node_modules/iii-sdk").is_dir(),
            "the chat example's iii-sdk is not installed.\nInstall it from the repository root with:\n    npm ci --prefix examples/chat\n(scripts/test.sh does this on first use)."
        );
        let mut child = Command::new("node")
            .arg(dir.join("server.mjs"))
            .env("III_URL", format!("ws://{worker}"))
            .env("STREAMHOST_CLIENT_URL", format!("ws://{client}"))
            .env("PORT", "0")
            .env("OTEL_ENABLED", "false")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run node ({e})"));
        let mut lines = lines_of(child.stdout.take().unwrap());
        // The SDK may print first; the server's own line names its URL.
        let url = loop {
            let line = tokio::time::timeout(SETTLE, lines.recv())
                .await
                .expect("the chat example starts within a minute")
                .expect("the chat example exited at once (its errors are above)");
            if let Some(rest) = line.strip_prefix("chat: open ") {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        };
        ExampleChat { child, url }
    }
}

impl Drop for ExampleChat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A config file whose client socket is on `client_port` (so that a restarted engine is found
/// where the page left it), heartbeats every `ping_ms`, and `adapter` as its store.
pub fn config_on(dir: &Path, client_port: u16, ping_ms: u64, adapter: &str) -> PathBuf {
    let path = dir.join("iii-config.yaml");
    let text = format!(
        "workers:\n  - name: iii-worker-manager\n    config: {{ host: 127.0.0.1, port: 0 }}\n  - name: iii-stream\n    config:\n      host: 127.0.0.1\n      port: {client_port}\n      ping_interval_ms: {ping_ms}\n      adapter: {adapter}\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A `redis-server` of the test's own on a free port, killed when dropped.
pub struct Redis {
    child: std::process::Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-server ({e}); install it with `apt-get install redis-server` (.ci/run does this)"));
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis {
            child,
            port,
            _dir: dir,
        }
    }

    /// The adapter mapping for `config_on`.
    pub fn adapter(&self) -> String {
        format!(
            "{{ name: redis, config: {{ redis_url: \"redis://127.0.0.1:{}\" }} }}",
            self.port
        )
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}
