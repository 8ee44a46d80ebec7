//! The load generator (`streamhost-load`) against a real engine: its counts must be exact,
//! and a client closed as too slow must be reported as such, not as silent loss.

mod common;

use common::*;
use serde_json::{Value, json};
use std::process::Command;

/// The load generator is a package of its own (load/), built beside the engine by
/// scripts/test.sh (`cargo test` alone does not build it: load/ has no integration tests).
fn load_generator() -> std::path::PathBuf {
    let engine = std::path::Path::new(env!("CARGO_BIN_EXE_streamhost"));
    let load = engine.with_file_name(format!("streamhost-load{}", std::env::consts::EXE_SUFFIX));
    assert!(
        load.exists(),
        "{} is missing: build it with `cargo build -p streamhost-load`, or run the tests with scripts/test.sh",
        load.display()
    );
    load
}

fn run_load(engine: &EngineProcess, args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let out = Command::new(load_generator())
        .args([
            "--client",
            &format!("ws://{}", engine.client_addr),
            "--worker",
            &format!("ws://{}", engine.worker_addr),
        ])
        .args([
            "--drain-seconds",
            "10",
            "--engine-pid",
            &engine.child.id().to_string(),
            "--json",
        ])
        .arg(&report)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap()
}

/// An engine process on an in-memory store; the directory holds its config.
fn memory_engine() -> (tempfile::TempDir, EngineProcess) {
    let dir = tempfile::tempdir().unwrap();
    let engine = EngineProcess::spawn(&write_config(
        dir.path(),
        "{ name: kv, config: { store_method: in_memory } }",
    ));
    (dir, engine)
}

#[test]
fn counts_every_delivery_and_measures_latency_and_memory() {
    let (_dir, engine) = memory_engine();
    let r = run_load(
        &engine,
        &[
            "--subscribers",
            "20",
            "--groups",
            "2",
            "--events",
            "101",
            "--sources",
            "3",
        ],
    );
    // 101 events round-robin over 2 groups of 10: 51 and 50 events each.
    assert_eq!(r["delivered"], 10 * 51 + 10 * 50, "{r}");
    assert_eq!(
        (r["lost"].as_u64(), r["duplicated"].as_u64()),
        (Some(0), Some(0)),
        "{r}"
    );
    assert_eq!(r["acked"], 101);
    assert!(
        r["latency_us"]["p50"].as_u64().unwrap() > 0
            && r["latency_us"]["max"].as_u64() >= r["latency_us"]["p99"].as_u64(),
        "{r}"
    );
    assert!(
        r["engine_bytes_per_connection"].as_f64().unwrap() > 0.0,
        "{r}"
    );

    let r = run_load(
        &engine,
        &[
            "--subscribers",
            "5",
            "--events",
            "50",
            "--join",
            "path",
            "--function",
            "set",
            "--stream",
            "stored",
        ],
    );
    assert_eq!(
        (r["delivered"].as_u64(), r["lost"].as_u64()),
        (Some(250), Some(0)),
        "{r}"
    );
}

#[test]
fn a_client_closed_as_slow_is_reported_apart_from_loss() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("iii-config.yaml");
    std::fs::write(
        &config,
        "workers:\n  - name: iii-worker-manager\n    config: { host: 127.0.0.1, port: 0 }\n  - name: iii-stream\n    config: { host: 127.0.0.1, port: 0, send_queue_frames: 16, adapter: { name: kv, config: { store_method: in_memory } } }\n",
    )
    .unwrap();
    let engine = EngineProcess::spawn(&config);
    // Subscribers that stop reading while 3,000 events of 8 KB are published overflow a
    // 16-frame queue: each is closed with 4008 and told why.
    let r = run_load(
        &engine,
        &[
            "--subscribers",
            "3",
            "--events",
            "3000",
            "--size",
            "8000",
            "--pause-ms",
            "3000",
        ],
    );
    // The close frame waits behind megabytes the kernel already holds for each paused client,
    // so the engine must keep the socket open until they read up to it (close_grace_ms).
    assert_eq!(r["closed_as_slow_and_told"], 3, "{r}");
    assert_eq!(r["dropped_without_close_frame"], 0, "{r}");
    assert_eq!(
        r["lost"], 0,
        "events not delivered to closed clients are not silent loss: {r}"
    );
    assert!(
        r["not_delivered_to_closed_clients"].as_u64().unwrap() > 0,
        "{r}"
    );
}

/// The noisy-neighbour options (scripts/bench-tenants.sh): subscribers and workers of one
/// tenant, publishing for a number of seconds, and failed calls counted by their error code.
#[test]
fn tenants_time_bounded_runs_and_errors_by_code() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "{ name: kv, config: { store_method: in_memory } }",
    );
    let key = "shk_load_generator_tenant_key_0123456789";
    let mut yaml = std::fs::read_to_string(&config).unwrap();
    yaml += &format!(
        "tenants:\n  - id: t\n    worker_keys: [{}]\n    clients: {{ token_required: false }}\n",
        streamhost::tenants::hash_key(key)
    );
    std::fs::write(&config, yaml).unwrap();
    let engine = EngineProcess::spawn(&config);

    // The worker's key puts its events in tenant t: subscribers of t get them all, and
    // subscribers of the default tenant none (so the key was sent, and ?tenant= was too).
    let of_t = ["--worker-key", key, "--subscribers", "4", "--events", "30"];
    let r = run_load(
        &engine,
        &[&of_t[..], &["--tenant", "t", "--join", "path"]].concat(),
    );
    assert_eq!(
        (r["delivered"].as_u64(), r["lost"].as_u64()),
        (Some(120), Some(0)),
        "{r}"
    );
    let r = run_load(&engine, &of_t);
    assert_eq!(
        (r["delivered"].as_u64(), r["lost"].as_u64()),
        (Some(0), Some(120)),
        "{r}"
    );

    // Stopped by --seconds long before --events: loss is counted against what was published.
    let r = run_load(
        &engine,
        &[
            "--tenant",
            "t",
            "--worker-key",
            key,
            "--subscribers",
            "3",
            "--workers",
            "2",
            "--events",
            "1000000",
            "--rate",
            "40",
            "--seconds",
            "1",
        ],
    );
    let published = r["published"].as_u64().unwrap();
    assert!(published > 0 && published < 1000, "{r}");
    assert_eq!(r["delivered"].as_u64(), Some(3 * published), "{r}");
    assert_eq!(
        (r["lost"].as_u64(), r["duplicated"].as_u64()),
        (Some(0), Some(0)),
        "{r}"
    );

    // Every set of the hostile adapter's `loop` item runs past its deadline: each failure is
    // counted under its code, and none as a quota refusal.
    let hostile = adapters_dir().join("hostile.wasm");
    let r = run_load(
        &engine,
        &[
            "--worker-key",
            key,
            "--subscribers",
            "0",
            "--function",
            "set",
            "--events",
            "4",
            "--workers",
            "2",
            "--item",
            "loop",
            "--adapter",
            hostile.to_str().unwrap(),
            "--adapter-limits",
            r#"{"timeout_ms": 50}"#,
        ],
    );
    assert_eq!(
        (r["acked"].as_u64(), r["failed"].as_u64()),
        (Some(0), Some(4)),
        "{r}"
    );
    assert_eq!(
        r["errors"],
        serde_json::json!({"adapter_timeout": 4}),
        "{r}"
    );
    assert_eq!(r["quota_exceeded"], 0, "{r}");
}

#[test]
fn discarding_subscribers_stay_connected_and_deliveries_are_estimated_from_acks() {
    let (_dir, engine) = memory_engine();
    let r = run_load(
        &engine,
        &[
            "--subscribers",
            "20",
            "--groups",
            "2",
            "--events",
            "100",
            "--read",
            "discard",
        ],
    );
    assert_eq!(r["acked"], 100, "{r}");
    assert_eq!(r["delivered"], 100 * 10, "{r}");
    assert_eq!(r["delivered_estimated"], true, "{r}");
    assert_eq!(
        (
            r["lost"].as_u64(),
            r["dropped_without_close_frame"].as_u64()
        ),
        (Some(0), Some(0)),
        "{r}"
    );
}

#[test]
fn a_reconnect_storm_recovers_every_event_once() {
    let (_dir, engine) = memory_engine();
    // 300 sends at 100/s; one second in, all 30 subscribers drop and rejoin from their offset.
    let r = run_load(
        &engine,
        &[
            "--subscribers",
            "30",
            "--events",
            "300",
            "--rate",
            "100",
            "--storm-after",
            "1",
        ],
    );
    let storm = &r["storm"];
    assert_eq!(storm["clients"], 30, "{r}");
    assert_eq!(storm["recovered"], 30, "every subscriber recovered: {r}");
    assert_eq!(
        (
            storm["not_recovered"].as_u64(),
            storm["rejoin_failed"].as_u64()
        ),
        (Some(0), Some(0)),
        "{r}"
    );
    assert_eq!(r["delivered"], 30 * 300, "{r}");
    assert_eq!(
        (r["lost"].as_u64(), r["duplicated"].as_u64()),
        (Some(0), Some(0)),
        "{r}"
    );
}

/// The worker-call floor (`load/src/bin/streamhost-write-floor.rs`), started as `bench.sh
/// --floor` starts it, on free ports.
fn write_floor(args: &[&str]) -> EngineProcess {
    let load = load_generator();
    let floor = load.with_file_name(format!(
        "streamhost-write-floor{}",
        std::env::consts::EXE_SUFFIX
    ));
    let child = Command::new(floor)
        .args(["--port", "0", "--worker-port", "0"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn streamhost-write-floor (built with `cargo build -p streamhost-load`)");
    EngineProcess::listening(child)
}

/// `bench.sh --floor` sets the floor beside the engine as the least work the wire asks of a
/// set or a get: so it must answer them as the engine does (the same bytes go back to the
/// load), have a durable set in its log before it answers, and carry the load generator's runs.
#[tokio::test(flavor = "multi_thread")]
async fn the_write_floor_answers_sets_and_gets_as_the_engine_does() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    let floor = write_floor(&["--durable", log_dir.to_str().unwrap()]);
    let (_engine_dir, engine) = memory_engine();
    let item = |item: &str| json!({"stream_name": "s", "group_id": "g", "item_id": item});
    let set = |i: &str, data: Value| {
        let mut call = item(i);
        call["data"] = data;
        ("stream::set", call)
    };
    let calls = [
        set(
            "i1",
            json!({"a": 1, "b": [1.5, "two", null], "c": {"d": true}}),
        ),
        set("i1", json!({"e": "é \" \\ x"})),
        ("stream::get", item("i1")),
        ("stream::get", item("missing")),
        set("i2", json!(7)),
        ("stream::get", item("i2")),
    ];
    let on_floor = RawWorker::connect(floor.worker_addr).await;
    let on_engine = RawWorker::connect(engine.worker_addr).await;
    for (function, data) in calls {
        let theirs = on_engine.call_raw(function, data.clone()).await;
        let ours = on_floor.call_raw(function, data.clone()).await;
        assert!(theirs["error"].is_null(), "{theirs}");
        assert_eq!(
            (&ours["result"], &ours["function_id"]),
            (&theirs["result"], &theirs["function_id"]),
            "{function} {data}: the floor answered {ours}, the engine {theirs}"
        );
        if function == "stream::set" {
            let log = std::fs::read_to_string(log_dir.join("floor.log")).unwrap();
            let value = data["data"].to_string();
            assert!(
                log.contains(&value),
                "{value} answered before it was logged: {log:?}"
            );
        }
    }
    let r = run_load(
        &floor,
        &[
            "--subscribers",
            "0",
            "--function",
            "set",
            "--events",
            "3000",
            "--window",
            "256",
            "--workers",
            "2",
        ],
    );
    assert_eq!(
        (r["acked"].as_u64(), r["failed"].as_u64()),
        (Some(3000), Some(0)),
        "{r}"
    );
}
