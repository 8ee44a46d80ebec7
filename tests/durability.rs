//! The durable KvStore: an acknowledged write survives `kill -9`, a torn tail is discarded,
//! a graceful stop keeps everything, and one store directory serves one engine.

mod common;

use common::*;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use streamhost::storage::StreamAdapter;
use streamhost::storage::kv_store::KvStore;

fn file_adapter(dir: &std::path::Path) -> String {
    format!(
        "{{ name: kv, config: {{ store_method: file_based, file_path: {} }} }}",
        dir.join("store").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &file_adapter(dir.path()));
    let mut engine = EngineProcess::spawn(&config);

    // 4 workers write concurrently, 32 calls in flight each, until the engine is killed.
    let acked: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..4 {
        let worker = RawWorker::connect(engine.worker_addr).await;
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            let worker = Arc::new(worker);
            let mut tasks = Vec::new();
            for lane in 0..32 {
                let (worker, acked) = (worker.clone(), acked.clone());
                tasks.push(tokio::spawn(async move {
                    for n in 0u64.. {
                        let id = format!("w{w}-l{lane}-{}", n % 50);
                        let data = json!({"n": n, "pad": "p".repeat(100)});
                        let payload = json!({"stream_name": "crash", "group_id": format!("g{w}"), "item_id": id, "data": data});
                        match worker.try_call_raw("stream::set", payload).await {
                            Some(r) if r.get("error").is_none() => {
                                acked.lock().unwrap().insert(id, n);
                            }
                            _ => return,
                        }
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        }));
    }
    // Kill while writes are in flight, once thousands are acknowledged.
    while acked.lock().unwrap().len() < 4 * 32 * 50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    engine.kill9();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 4 * 32 * 50,
        "only {} items acknowledged",
        acked.len()
    );

    let engine = EngineProcess::spawn(&config);
    let reader = RawWorker::connect(engine.worker_addr).await;
    let mut checked = 0;
    for w in 0..4 {
        for (id, n) in acked
            .iter()
            .filter(|(id, _)| id.starts_with(&format!("w{w}-")))
        {
            let got = reader
                .ok(
                    "stream::get",
                    json!({"stream_name": "crash", "group_id": format!("g{w}"), "item_id": id}),
                )
                .await;
            // Each id is written by one lane in order, so what is stored is the last
            // acknowledged write or a later one that reached the disk unacknowledged.
            assert!(
                got["n"].as_u64().is_some_and(|stored| stored >= *n),
                "{id}: acknowledged n={n}, found {got}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_keeps_everything_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &file_adapter(dir.path()));
    let mut engine = EngineProcess::spawn(&config);
    let w = RawWorker::connect(engine.worker_addr).await;
    for i in 0..100 {
        w.ok(
            "stream::set",
            json!({"stream_name": "s", "group_id": "g", "item_id": format!("i{i}"), "data": i}),
        )
        .await;
    }
    w.ok(
        "stream::delete",
        json!({"stream_name": "s", "group_id": "g", "item_id": "i7"}),
    )
    .await;
    w.ok("stream::update", json!({"stream_name": "s", "group_id": "g", "item_id": "i8", "ops": [{"type": "set", "path": "", "value": "eight"}]})).await;
    drop(w);
    assert!(engine.terminate().success());

    let engine = EngineProcess::spawn(&config);
    let w = RawWorker::connect(engine.worker_addr).await;
    let items = w
        .ok("stream::list", json!({"stream_name": "s", "group_id": "g"}))
        .await;
    let items = items.as_array().unwrap();
    assert_eq!(items.len(), 99);
    assert_eq!(items[0], 0);
    assert_eq!(items[7], "eight", "insertion order survives a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_discarded_and_the_rest_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    {
        let store = KvStore::open(&store_dir).unwrap();
        for i in 0..10 {
            store
                .set("s", "g", &format!("i{i}"), json!(i).into())
                .await
                .unwrap();
        }
        store.shutdown().await.unwrap();
    }
    let wal = store_dir.join("streams.wal");
    let good_len = std::fs::metadata(&wal).unwrap().len();
    // A record cut short by a crash: a length and a CRC, and half a payload.
    let mut bytes = std::fs::read(&wal).unwrap();
    bytes.extend_from_slice(&200u32.to_le_bytes());
    bytes.extend_from_slice(&7u32.to_le_bytes());
    bytes.extend_from_slice(b"{\"op\":\"set\",\"s\":");
    std::fs::write(&wal, bytes).unwrap();

    let store = KvStore::open(&store_dir).unwrap();
    assert_eq!(store.list("s", "g").await.unwrap().len(), 10);
    assert_eq!(
        std::fs::metadata(&wal).unwrap().len(),
        good_len,
        "the torn record was cut off"
    );
    store.set("s", "g", "after", json!(1).into()).await.unwrap();
    store.shutdown().await.unwrap();
    drop(store);
    let store = KvStore::open(&store_dir).unwrap();
    assert_eq!(
        store.get("s", "g", "after").await.unwrap(),
        Some(json!(1).into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_compacted_while_writes_go_on_and_still_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let wal = store_dir.join("streams.wal");
    let store = KvStore::open(&store_dir).unwrap();
    let big = "z".repeat(256 * 1024);
    // ~100 MiB of overwrites of 8 big items, with small items created and deleted around
    // them in other groups: the log is rewritten on the way, while these writes continue.
    for round in 0..50u64 {
        let names: Vec<String> = (0..8).map(|i| format!("i{i}")).collect();
        let writes = names
            .iter()
            .map(|name| store.set("s", "g", name, json!({"round": round, "big": big}).into()));
        let small: Vec<(String, String, String)> = (0..200u64)
            .map(|n| {
                (
                    format!("small{}", n % 7),
                    format!("r{round}-{n}"),
                    format!("r{}-{n}", round.saturating_sub(1)),
                )
            })
            .collect();
        let created = small
            .iter()
            .map(|(g, i, _)| store.set("s", g, i, json!(i).into()));
        let gone = small
            .iter()
            .take(100)
            .map(|(g, _, old)| store.delete("s", g, old));
        let (a, b, c) = tokio::join!(
            futures_util::future::join_all(writes),
            futures_util::future::join_all(created),
            futures_util::future::join_all(gone)
        );
        assert!(a.iter().chain(&b).all(Result::is_ok) && c.iter().all(Result::is_ok));
    }
    store.delete("s", "g", "i0").await.unwrap();
    // The rewrite finishes in the background; wait for the new, smaller log.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&wal).unwrap().len() >= 40 << 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the log was never compacted: {} bytes",
            std::fs::metadata(&wal).unwrap().len()
        );
        store.set("s", "tick", "t", json!(1).into()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = snapshot(&store).await;
    store.shutdown().await.unwrap();
    drop(store);
    let store = KvStore::open(&store_dir).unwrap();
    let items = store.list("s", "g").await.unwrap();
    assert_eq!(items.len(), 7);
    assert!(items.iter().all(|v| v.to_value()["round"] == 49));
    let after = snapshot(&store).await;
    let ids = |s: &Snapshot| {
        s.iter()
            .map(|(g, ids, _)| (g.clone(), ids.len()))
            .collect::<Vec<_>>()
    };
    assert!(
        after == before,
        "the recovered store differs from the one shut down: ids per group {:?} became {:?}",
        ids(&before),
        ids(&after)
    );
}

type Snapshot = Vec<(String, Vec<String>, Vec<streamhost::json::Json>)>;

/// Every group of stream `s` with its item ids and values, in order.
async fn snapshot(store: &KvStore) -> Snapshot {
    let mut all = Vec::new();
    for g in store.list_groups("s").await.unwrap() {
        all.push((
            g.clone(),
            store.list_ids("s", &g).await.unwrap(),
            store.list("s", &g).await.unwrap(),
        ));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_store_directory_serves_one_engine() {
    let dir = tempfile::tempdir().unwrap();
    let _first = KvStore::open(dir.path()).unwrap();
    let err = KvStore::open(dir.path())
        .err()
        .expect("a second open is refused");
    assert!(
        err.to_string().contains("in use by another streamhost"),
        "{err}"
    );
}
