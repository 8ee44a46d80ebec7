//! The adapter guide (adapters/README.md), followed by a newcomer: its own commands, run in a
//! directory outside the repository with the real `streamhost` binary on `PATH`.
//!
//! The ```sh blocks of "From nothing to a running adapter" run in order (`cd` moves the
//! newcomer; a here-document is one command). The last one, `streamhost serve`, gets
//! `--port 0 --worker-port 0` appended, as CI does with the README's command, and the engine
//! it starts is then driven by a raw worker (set and get through the adapter), by the guide's
//! runtime example (Node `iii-sdk`), and by the guide's fan-out hook, built into a second
//! crate. So the guide cannot drift from what works.
//!
//! One thing is added between the guide's commands: before `cargo build`, the crate's
//! `target` becomes a link to the directory the other adapter builds use
//! (tests/common/build_adapters.rs), so that wit-bindgen and the rest compile once, not on
//! every run; cargo still writes `target/wasm32-wasip2/release/NAME.wasm` where the guide
//! says.

mod common;

use common::{EngineProcess, RawWorker, build_adapters};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const GUIDE: &str = include_str!("../adapters/README.md");
const FROM_NOTHING: &str = "## From nothing to a running adapter";

/// The fenced blocks tagged `lang` in the section under `heading`, up to the next `## `.
fn blocks(heading: &str, lang: &str) -> Vec<String> {
    let start = GUIDE
        .find(heading)
        .unwrap_or_else(|| panic!("{heading} not in the guide"));
    let section = &GUIDE[start + heading.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let fence = format!("```{lang}\n");
    let mut found = Vec::new();
    let mut rest = section;
    while let Some(at) = rest.find(&fence) {
        let body = &rest[at + fence.len()..];
        let end = body.find("```").expect("a closed block");
        found.push(body[..end].to_owned());
        rest = &body[end + 3..];
    }
    found
}

/// The shell commands of some blocks: one a line, a here-document with its lines.
fn commands(blocks: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = blocks.iter().flat_map(|b| b.lines());
    while let Some(line) = lines.next() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let mut command = line.to_owned();
        if let Some(tag) = line.split("<<'").nth(1).and_then(|t| t.split('\'').next()) {
            for body in lines.by_ref() {
                command.push('\n');
                command.push_str(body);
                if body.trim() == tag {
                    break;
                }
            }
        }
        out.push(command);
    }
    out
}

/// Someone at a shell: a directory, and `streamhost` on the PATH.
struct Newcomer {
    dir: PathBuf,
    path: std::ffi::OsString,
    printed: String,
}

impl Newcomer {
    fn new(dir: &Path) -> Newcomer {
        let bin = Path::new(env!("CARGO_BIN_EXE_streamhost"))
            .parent()
            .unwrap();
        let mut paths = vec![bin.to_path_buf()];
        paths.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        Newcomer {
            dir: dir.to_path_buf(),
            path: std::env::join_paths(paths).unwrap(),
            printed: String::new(),
        }
    }

    fn shell(&self, command: &str) -> Command {
        let mut shell = Command::new("bash");
        shell
            .args(["-c", command])
            .current_dir(&self.dir)
            .env("PATH", &self.path)
            .env_remove("CARGO_TARGET_DIR")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        shell
    }

    /// Runs one command to the end; panics with its output when it fails.
    fn run(&mut self, command: &str) {
        if let Some(to) = command.strip_prefix("cd ") {
            self.dir = self.dir.join(to.trim());
            return;
        }
        if command.starts_with("cargo build") {
            share_build_cache(&self.dir);
        }
        let out = self.shell(command).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "`{command}` failed in {}:\n{stdout}\n{}",
            self.dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        self.printed.push_str(&stdout);
    }

    /// Starts `streamhost serve ...` on free ports and reads the addresses it prints.
    fn serve(&self, command: &str) -> EngineProcess {
        let mut child = self
            .shell(&format!("exec {command} --port 0 --worker-port 0"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.contains("streamhost listening"),
            "`{command}` did not start: {line:?}"
        );
        let addr = |key: &str| {
            let rest = line.split(key).nth(1).unwrap();
            let port: u16 = rest
                .split_whitespace()
                .next()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            std::net::SocketAddr::from(([127, 0, 0, 1], port))
        };
        EngineProcess {
            client_addr: addr("clients ws://"),
            worker_addr: addr("workers ws://"),
            child,
        }
    }
}

/// Points a new crate's `target` at the shared adapter build directory.
fn share_build_cache(crate_dir: &Path) {
    let shared = build_adapters::target_dir();
    std::fs::create_dir_all(&shared).unwrap();
    let link = crate_dir.join("target");
    if !link.exists() {
        std::os::unix::fs::symlink(&shared, &link).unwrap();
    }
}

#[test]
fn the_adapter_guide_works_from_a_directory_outside_the_repository() {
    let home = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .canonicalize()
        .unwrap();
    assert!(!home.path().canonicalize().unwrap().starts_with(&repo));
    let mut me = Newcomer::new(home.path());

    // The guide's commands, all but the last (`streamhost serve`), in order.
    let mut steps = commands(&blocks(FROM_NOTHING, "sh"));
    let serve = steps.pop().expect("the guide's commands");
    assert!(
        serve.starts_with("streamhost serve"),
        "the last command: {serve}"
    );
    assert!(
        steps[1].starts_with("streamhost adapter new my-adapter"),
        "{steps:?}"
    );
    for step in &steps {
        me.run(step);
    }
    let crate_dir = home.path().join("my-adapter");
    assert_eq!(me.dir, crate_dir);
    for file in ["Cargo.toml", "Cargo.lock", "wit/adapter.wit", "src/lib.rs"] {
        assert!(crate_dir.join(file).is_file(), "{file} was not written");
    }
    // `adapter check` marks every import of a Rust adapter as granted or a stub.
    let imports: Vec<&str> = me
        .printed
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("imports"))
        .skip(1)
        .collect();
    assert!(
        imports
            .iter()
            .any(|l| l.contains("streamhost:adapter/store") && l.contains("granted")),
        "{}",
        me.printed
    );
    assert!(
        imports.iter().any(|l| l.contains("stub:")),
        "{}",
        me.printed
    );
    for line in &imports {
        assert!(
            line.contains("granted") || line.contains("stub") || line.contains("types only"),
            "unexplained import: {line}"
        );
    }

    // A directory that is not empty is refused, with what to do.
    let again = me
        .shell("streamhost adapter new my-adapter .")
        .output()
        .unwrap();
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("not empty"), "{err}");

    // The engine, from the guide's config.
    let mut engine = me.serve(&serve);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let w = RawWorker::connect(engine.worker_addr).await;
        let streams = w.ok("streamhost::list_streams", json!({})).await;
        assert_eq!(streams[0]["stream_name"], "posts", "{streams}");
        let item = json!({"stream_name": "posts", "group_id": "g", "item_id": "p1", "data": {"text": "hi"}});
        w.ok("stream::set", item).await;
        let got = w
            .ok("stream::get", json!({"stream_name": "posts", "group_id": "g", "item_id": "p1"}))
            .await;
        assert_eq!(got, json!({"text": "hi"}));
    });

    run_the_runtime_example(&me, &engine, &rt);
    build_and_bind_the_fanout_hook(home.path(), &engine, &rt);

    assert!(engine.terminate().success(), "the engine stops cleanly");
}

/// The guide's `bind.mjs`, run with Node and the SDK the other SDK tests install.
fn run_the_runtime_example(me: &Newcomer, engine: &EngineProcess, rt: &tokio::runtime::Runtime) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let modules = repo.join("tests/sdk/node/node_modules");
    assert!(
        modules.join("iii-sdk").exists(),
        "the Node iii-sdk is not installed; run `npm ci --prefix tests/sdk/node` (scripts/test.sh does)"
    );
    let script = blocks(FROM_NOTHING, "js");
    assert_eq!(script.len(), 1, "one runtime example");
    std::fs::write(me.dir.join("bind.mjs"), &script[0]).unwrap();
    std::os::unix::fs::symlink(&modules, me.dir.join("node_modules")).unwrap();
    let out = me
        .shell("node bind.mjs")
        .env("III_URL", format!("ws://{}", engine.worker_addr))
        .env("OTEL_ENABLED", "false")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bind.mjs failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("stream_name: 'notes'"), "{stdout}");
    // The binding is gone; the item it stored is still in the engine's store.
    rt.block_on(async {
        let w = RawWorker::connect(engine.worker_addr).await;
        let streams = w.ok("streamhost::list_streams", json!({})).await;
        assert!(!streams.to_string().contains("notes"), "{streams}");
        let kept = w
            .ok(
                "stream::get",
                json!({"stream_name": "notes", "group_id": "g", "item_id": "n1"}),
            )
            .await;
        assert_eq!(kept, json!({"text": "hi"}));
    });
}

/// The guide's fan-out hook, put into a new crate as the guide says, built and bound.
fn build_and_bind_the_fanout_hook(
    home: &Path,
    engine: &EngineProcess,
    rt: &tokio::runtime::Runtime,
) {
    let hook = blocks("## The fan-out hook", "rust");
    assert_eq!(hook.len(), 1, "one hook");
    let (generate, rest) = hook[0].split_once('\n').unwrap();
    assert!(generate.starts_with("wit_bindgen::generate!"), "{generate}");
    let mut me = Newcomer::new(home);
    me.run("streamhost adapter new fan-out");
    me.run("cd fan-out");
    let lib = me.dir.join("src/lib.rs");
    let code = std::fs::read_to_string(&lib).unwrap();
    let old = code
        .lines()
        .find(|l| l.starts_with("wit_bindgen::generate!"))
        .unwrap()
        .to_owned();
    std::fs::write(&lib, code.replace(&old, generate) + rest).unwrap();
    me.run("cargo build --release --target wasm32-wasip2");
    let wasm = std::fs::read(me.dir.join("target/wasm32-wasip2/release/fan_out.wasm")).unwrap();

    rt.block_on(async {
        use base64::Engine as _;
        let w = RawWorker::connect(engine.worker_addr).await;
        let component = base64::engine::general_purpose::STANDARD.encode(&wasm);
        let bound = w
            .ok(
                "streamhost::create_stream",
                json!({"stream_name": "rooms", "component": component, "limits": {"timeout_ms": 10000}}),
            )
            .await;
        assert_eq!(bound["fanout"], true, "{bound}");
        let mut all = common::Client::connect(engine.client_addr, "/stream/rooms/all").await;
        assert_eq!(all.next().await["event"]["type"], "sync");
        w.ok(
            "stream::set",
            json!({"stream_name": "rooms", "group_id": "room-1", "item_id": "m", "data": 1}),
        )
        .await;
        let frame = all.next().await;
        assert_eq!(
            (frame["groupId"].as_str(), frame["event"]["type"].as_str()),
            (Some("all"), Some("create")),
            "{frame}"
        );
    });
}
