//! The load generator (`streamhost-load`) against a real engine: its counts must be exact,
//! and a client closed as too slow must be reported as such, not as silent loss.

mod common;

use common::*;
use serde_json::Value;
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

#[test]
fn counts_every_delivery_and_measures_latency_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let engine = EngineProcess::spawn(&write_config(
        dir.path(),
        "{ name: kv, config: { store_method: in_memory } }",
    ));
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
