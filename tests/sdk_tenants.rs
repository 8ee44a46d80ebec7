//! The published iii SDKs (npm `iii-sdk` 0.22.1, PyPI `iii-sdk` 0.25.0) as workers of two keyed
//! tenants, and the rule that a worker's namespace must agree with its key.
//!
//! Each SDK test starts an engine in this process with tenants `alpha` and `beta`
//! (`common::tenants`), runs one script (`tests/sdk/node/tenants.mjs` or
//! `tests/sdk/python/tenants.py`) in a mode, and then looks at the engine from inside: what
//! each tenant's store holds, which workers are connected, what was logged. The scripts check
//! what the SDK sees: the stream functions, a `stream` trigger and `createStream` with the
//! same names in both tenants, each tenant reading back its own, each tenant's client seeing
//! only its own events; a wrong key refused at the upgrade (401); and, for Python, which
//! names III_NAMESPACE on the wire, a namespace of the other tenant rejected.
//!
//! The namespace rule is also tested frame by frame with a raw worker, which sends exactly
//! what iii-sdk 0.25 sends (`namespace` in the worker metadata, on `registertrigger` and on
//! `invokefunction`).
//!
//! The SDKs are installed outside cargo, by scripts/test.sh (see tests/sdk_clients.rs).

mod common;

use common::tenants::*;
use common::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use streamhost::ServerHandle;

const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);
const WRONG_KEY: &str = "shk_no_tenant_has_this_key_0123";

fn sdk_dir(lang: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(lang)
}

/// The Node or Python command for `script`, or a failure with the install command.
fn sdk(lang: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = sdk_dir(lang);
    let (program, marker, script, install) = match lang {
        "node" => (
            PathBuf::from("node"),
            dir.join("node_modules/iii-sdk/package.json"),
            dir.join("tenants.mjs"),
            "npm ci --prefix tests/sdk/node",
        ),
        _ => (
            dir.join(".venv/bin/python"),
            dir.join(".venv/bin/python"),
            dir.join("tenants.py"),
            "python3 -m venv tests/sdk/python/.venv && tests/sdk/python/.venv/bin/pip install -r tests/sdk/python/requirements.txt",
        ),
    };
    assert!(
        marker.exists(),
        "the {lang} iii-sdk is not installed ({} is missing).\nInstall it from the repository root with:\n    {install}\n(scripts/test.sh does it) then run `cargo test --test sdk_tenants` again.",
        marker.display()
    );
    (program, script, dir)
}

/// Runs `lang`'s tenants script in `mode` against `engine`, with the tenants' keys and client
/// tokens and `env` in its environment; its stdout and stderr, and how it ended (None: killed
/// after `SCRIPT_TIMEOUT`).
async fn run(
    engine: &ServerHandle,
    lang: &str,
    mode: &str,
    env: &[(&str, &str)],
) -> (Option<ExitStatus>, String) {
    let (program, script, dir) = sdk(lang);
    let mut command = Command::new(&program);
    command
        .arg(&script)
        .arg(mode)
        .current_dir(&dir)
        .env("III_URL", format!("ws://{}", engine.worker_addr))
        .env(
            "STREAMHOST_CLIENT_URL",
            format!("ws://{}", engine.client_addr),
        )
        .env("STREAMHOST_KEY_A", KEY_A)
        .env("STREAMHOST_KEY_B", KEY_B)
        .env("STREAMHOST_TOKEN_A", token("alpha", SECRET_A, &["*"], 300))
        .env(
            "STREAMHOST_TOKEN_B",
            token("beta", SECRET_B, &["chat*"], 300),
        )
        .env("STREAMHOST_WRONG_KEY", WRONG_KEY)
        .env("OTEL_ENABLED", "false")
        .env("PYTHONUNBUFFERED", "1")
        .env_remove("III_TOKEN")
        .env_remove("III_NAMESPACE")
        .env_remove("III_WORKER_NAME")
        .envs(env.iter().copied());
    tokio::task::spawn_blocking(move || run_blocking(command))
        .await
        .unwrap()
}

fn run_blocking(mut command: Command) -> (Option<ExitStatus>, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e} (is it installed?)"));
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

fn assert_passed(what: &str, (status, output): &(Option<ExitStatus>, String)) {
    match status {
        None => panic!("{what} did not finish within {SCRIPT_TIMEOUT:?}; its output:\n{output}"),
        Some(s) if !s.success() => panic!("{what} failed ({s}); its output:\n{output}"),
        Some(_) => assert!(
            output.contains("ALL PASSED"),
            "{what} exited 0 without finishing its checks; its output:\n{output}"
        ),
    }
}

/// What the engine logs, kept for the tests to read (one subscriber for the whole binary).
static LOGS: Mutex<String> = Mutex::new(String::new());

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().push_str(&String::from_utf8_lossy(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An engine with tenants `alpha` and `beta`, its logs captured.
async fn engine() -> ServerHandle {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("streamhost=info"))
            .with_writer(|| LogWriter)
            .with_ansi(false)
            .init();
    });
    start(two_tenants("")).await
}

/// The lines logged so far that contain every one of `needles`.
fn logged(needles: &[&str]) -> Vec<String> {
    LOGS.lock()
        .unwrap()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_owned)
        .collect()
}

/// Calls a function in `tenant`'s space, from inside the engine.
async fn inside(engine: &ServerHandle, tenant: &str, function_id: &str, data: Value) -> Value {
    let space = engine.engine.space(tenant).expect("the tenant exists");
    space
        .functions
        .call(function_id, data)
        .await
        .unwrap_or_else(|e| panic!("{function_id} in {tenant}: {e}"))
        .map_or(Value::Null, |r| r.to_value())
}

/// Sockets open in any tenant.
fn sockets_open(engine: &ServerHandle) -> usize {
    engine
        .engine
        .spaces()
        .iter()
        .map(|s| s.sockets().len())
        .sum()
}

/// After an isolation script: each tenant holds its own marker, and the default tenant
/// nothing at all.
async fn assert_markers(engine: &ServerHandle, sdk: &str) {
    let who = json!({"stream_name": "chat", "group_id": "final", "item_id": "who"});
    for tenant in ["alpha", "beta"] {
        assert_eq!(
            inside(engine, tenant, "stream::get", who.clone()).await,
            json!({"tenant": tenant, "sdk": sdk}),
            "{tenant}'s store holds its own worker's marker"
        );
    }
    let all = inside(engine, "default", "stream::list_all", json!({})).await;
    assert_eq!(all["count"], 0, "the default tenant was not written: {all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sdk_workers_of_two_tenants_stay_apart() {
    let engine = engine().await;
    let result = run(&engine, "node", "isolation", &[]).await;
    assert_passed("tests/sdk/node/tenants.mjs isolation", &result);
    assert_markers(&engine, "node").await;
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_workers_of_two_tenants_stay_apart() {
    let engine = engine().await;
    // Worker A is alpha's by III_TOKEN and says so with III_NAMESPACE; worker B (in the
    // script) uses the `headers` and `namespace` options.
    let env = [("III_TOKEN", KEY_A), ("III_NAMESPACE", "alpha")];
    let result = run(&engine, "python", "isolation", &env).await;
    assert_passed("tests/sdk/python/tenants.py isolation", &result);
    assert_markers(&engine, "python").await;
    engine.shutdown().await.unwrap();
}

/// After a wrong-key script: the engine logged a refusal for each upgrade the script saw
/// refused (3 at least: the first try and two retries), and admitted nothing.
fn assert_refused(engine: &ServerHandle) {
    let refusals = logged(&["worker refused", "code=\"invalid_worker_key\""]);
    assert!(refusals.len() >= 3, "{refusals:#?}");
    assert_eq!(sockets_open(engine), 0);
}

/// The SDK retries; the script bounds its retries and checks that each upgrade got the
/// engine's 401, with the key as a header and as `?token=`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sdk_with_a_wrong_key_is_refused() {
    let engine = engine().await;
    let result = run(&engine, "node", "wrong-key", &[]).await;
    assert_passed("tests/sdk/node/tenants.mjs wrong-key", &result);
    assert_refused(&engine);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_with_a_wrong_key_is_refused() {
    let engine = engine().await;
    let result = run(&engine, "python", "wrong-key", &[("III_TOKEN", WRONG_KEY)]).await;
    assert_passed("tests/sdk/python/tenants.py wrong-key", &result);
    assert_refused(&engine);
    engine.shutdown().await.unwrap();
}

/// Alpha's key with III_NAMESPACE=beta: the engine rejects the worker's registration and logs
/// why; the SDK takes the rejection as fatal and stops. Nothing reached either tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_whose_namespace_is_the_other_tenants_is_rejected() {
    let engine = engine().await;
    let env = [("III_TOKEN", KEY_A), ("III_NAMESPACE", "beta")];
    let result = run(&engine, "python", "wrong-namespace", &env).await;
    assert_passed("tests/sdk/python/tenants.py wrong-namespace", &result);
    let lines = logged(&[
        "worker registration refused (NAMESPACE_NOT_ALLOWED)",
        "py-wrong-namespace",
        "tenant=\"alpha\"",
    ]);
    assert_eq!(lines.len(), 1, "{:#?}", logged(&["NAMESPACE_NOT_ALLOWED"]));
    assert!(lines[0].contains("namespace \"beta\""), "{}", lines[0]);
    for tenant in ["alpha", "beta"] {
        let all = inside(&engine, tenant, "stream::list_all", json!({})).await;
        assert_eq!(all["count"], 0, "{tenant} was not written: {all}");
    }
    engine.shutdown().await.unwrap();
}

/// The next frame the engine pushed to `w` that answers none of its calls.
async fn pushed(w: &mut RawWorker) -> Value {
    tokio::time::timeout(WAIT, w.frames.recv())
        .await
        .expect("a frame in time")
        .expect("the socket is open")
}

/// Asserts that the engine pushed nothing to `w` before the answer to a later call.
async fn nothing_pushed(w: &mut RawWorker) {
    w.sync().await;
    if let Ok(frame) = w.frames.try_recv() {
        panic!("unexpected frame {frame}");
    }
}

/// The worker metadata iii-sdk 0.25 sends after connecting: a fire-and-forget call.
fn metadata(name: &str, namespace: Value) -> Value {
    json!({"type": "invokefunction", "function_id": "engine::workers::register",
           "data": {"runtime": "python", "name": name, "namespace": namespace},
           "action": {"type": "void"}})
}

fn without_message(mut frame: Value) -> (Value, String) {
    let message = frame["message"].take();
    frame.as_object_mut().unwrap().remove("message");
    (frame, message.as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_metadata_naming_another_namespace_is_rejected_and_the_socket_kept() {
    let engine = engine().await;
    let mut w = RawWorker::connect_with_key(engine.worker_addr, KEY_A).await;
    w.send_json(metadata("raw-alpha", json!("beta")));
    let (frame, message) = without_message(pushed(&mut w).await);
    assert_eq!(
        frame,
        json!({"type": "registrationrejected", "code": "NAMESPACE_NOT_ALLOWED", "namespace": "beta",
               "worker_name": "raw-alpha", "owner_worker_id": ""})
    );
    for what in ["\"beta\"", "tenant `alpha`", "III_NAMESPACE", "III_TOKEN"] {
        assert!(message.contains(what), "{what} in {message}");
    }
    assert_eq!(
        logged(&[
            "worker registration refused (NAMESPACE_NOT_ALLOWED)",
            "raw-alpha"
        ])
        .len(),
        1
    );

    // The socket stays open, still alpha's.
    let item = json!({"stream_name": "s", "group_id": "g", "item_id": "i"});
    let mut set = item.clone();
    set["data"] = json!("alpha");
    w.ok("stream::set", set).await;
    assert_eq!(inside(&engine, "alpha", "stream::get", item).await, "alpha");

    // No namespace, an empty one, or the tenant's own: accepted without a word.
    for namespace in [json!(null), json!(""), json!("alpha")] {
        w.send_json(metadata("raw-alpha", namespace));
    }
    let mut bare = metadata("raw-alpha", Value::Null);
    bare["data"].as_object_mut().unwrap().remove("namespace");
    w.send_json(bare);
    nothing_pushed(&mut w).await;

    // `default` is not alpha's either; a call with an id is answered as well.
    let mut call = metadata("raw-alpha", json!("default"));
    call.as_object_mut().unwrap().remove("action");
    let answer = w.call_frame(call).await;
    assert_eq!(answer["error"]["code"], "NAMESPACE_NOT_ALLOWED", "{answer}");
    let (frame, _) = without_message(pushed(&mut w).await);
    assert_eq!(frame["namespace"], "default");

    // A namespace of 100 000 characters is echoed cut to 64.
    w.send_json(metadata("raw-alpha", json!("n".repeat(100_000))));
    let (frame, message) = without_message(pushed(&mut w).await);
    assert_eq!(frame["namespace"], format!("{}…", "n".repeat(64)));
    assert!(message.len() < 600, "{} bytes", message.len());

    // A worker of the default tenant may say `default`, not a tenant's name.
    let mut d = RawWorker::connect(engine.worker_addr).await;
    d.send_json(metadata("raw-default", json!("default")));
    nothing_pushed(&mut d).await;
    d.send_json(metadata("raw-default", json!("alpha")));
    let (frame, message) = without_message(pushed(&mut d).await);
    assert_eq!(
        (&frame["code"], &frame["namespace"]),
        (&json!("NAMESPACE_NOT_ALLOWED"), &json!("alpha"))
    );
    assert!(message.contains("tenant `default`"), "{message}");
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_and_calls_naming_another_namespace_are_refused() {
    let engine = engine().await;
    let mut w = RawWorker::connect_with_key(engine.worker_addr, KEY_A).await;
    let allowed = Arc::new(Mutex::new(0));
    let seen = allowed.clone();
    w.register("app::allow", move |_| {
        *seen.lock().unwrap() += 1;
        Ok(Some(json!({"unauthorized": false})))
    })
    .await;
    w.register("app::deny", |_| Ok(Some(json!({"unauthorized": true}))))
        .await;

    // `stream:join` triggers run in turn on every join, so a deny trigger that had been
    // registered would reject the join below.
    let join = |id: &str, function_id: &str, namespaces: Value| {
        let mut frame = json!({"type": "registertrigger", "id": id, "trigger_type": "stream:join",
                               "function_id": function_id, "config": {}});
        frame
            .as_object_mut()
            .unwrap()
            .extend(namespaces.as_object().unwrap().clone());
        frame
    };
    for (id, namespaces) in [
        ("t-target", json!({"namespace": "beta"})),
        ("t-provider", json!({"trigger_namespace": "beta"})),
        ("t-default", json!({"namespace": "default"})),
    ] {
        w.send_json(join(id, "app::deny", namespaces));
        let frame = pushed(&mut w).await;
        assert_eq!(
            (&frame["type"], &frame["id"], &frame["error"]["code"]),
            (
                &json!("triggerregistrationresult"),
                &json!(id),
                &json!("NAMESPACE_NOT_ALLOWED")
            ),
            "{frame}"
        );
    }
    // Alpha's own namespace, and the engine's `default` for the trigger type's provider.
    w.send_json(join(
        "t-ok",
        "app::allow",
        json!({"namespace": "alpha", "trigger_namespace": "default"}),
    ));
    nothing_pushed(&mut w).await;
    let mut client = Client::connect_with_token(
        engine.client_addr,
        "/",
        &token("alpha", SECRET_A, &["*"], 300),
    )
    .await;
    let answer = client.join("s", "chat", "room", None).await;
    assert_eq!(answer["event"]["type"], "sync", "{answer}");
    assert_eq!(*allowed.lock().unwrap(), 1);
    // The engine's call of app::allow, as the worker saw it.
    assert_eq!(pushed(&mut w).await["function_id"], "app::allow");

    // Calls: another tenant's namespace is answered with the refusal, and nothing is written.
    let item = json!({"stream_name": "chat", "group_id": "room", "item_id": "i"});
    let mut set = item.clone();
    set["data"] = json!(1);
    let call = |function_id: &str, data: &Value, namespace: &str| json!({"type": "invokefunction", "function_id": function_id, "data": data, "namespace": namespace});
    let answer = w.call_frame(call("stream::set", &set, "beta")).await;
    assert_eq!(answer["error"]["code"], "NAMESPACE_NOT_ALLOWED", "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("tenant `alpha`"), "{message}");
    assert_eq!(w.ok("stream::get", item.clone()).await, Value::Null);
    // Without an id the refusal is only logged.
    w.send_json(call("stream::set", &set, "beta"));
    nothing_pushed(&mut w).await;
    assert_eq!(w.ok("stream::get", item.clone()).await, Value::Null);
    // Alpha's own namespace, and `default` for a function of the engine's: accepted.
    let answer = w.call_frame(call("stream::set", &set, "alpha")).await;
    assert_eq!(answer["result"]["new_value"], 1, "{answer}");
    let answer = w.call_frame(call("stream::get", &item, "default")).await;
    assert_eq!(answer["result"], 1, "{answer}");
    // `default` for a function a worker of alpha serves would be the default tenant's.
    let answer = w
        .call_frame(call("app::allow", &json!({}), "default"))
        .await;
    assert_eq!(answer["error"]["code"], "NAMESPACE_NOT_ALLOWED", "{answer}");
    assert_eq!(*allowed.lock().unwrap(), 1);
    engine.shutdown().await.unwrap();
}
