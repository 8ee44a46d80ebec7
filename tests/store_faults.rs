//! The durable store against a real disk: damage stops the engine with the place named,
//! `streamhost store check|repair` report and salvage, and a full disk (a small tmpfs) refuses
//! writes clearly, keeps serving reads, and takes writes again once space is freed.

mod common;

use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use streamhost::storage::StreamAdapter;
use streamhost::storage::kv_store::KvStore;

fn streamhost(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_streamhost"))
        .args(args)
        .output()
        .expect("run streamhost");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn fill(dir: &Path, items: usize) {
    let store = KvStore::open(dir).unwrap();
    for k in 0..items {
        store
            .set(
                "s",
                "g",
                &format!("item{k:03}"),
                json!({"k": k, "text": "some words"}).into(),
            )
            .await
            .unwrap();
    }
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_flipped_byte_stops_the_engine_and_repair_salvages_every_intact_record() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    fill(&store_dir, 100).await;
    let log = store_dir.join("streams.wal");
    let mut bytes = std::fs::read(&log).unwrap();
    let original = bytes.clone();
    // One byte in the middle of the log, inside item050's record.
    let at = bytes.windows(7).position(|w| w == b"item050").unwrap() + 3;
    bytes[at] ^= 0x04;
    std::fs::write(&log, &bytes).unwrap();

    // The engine refuses to start, names the file, the place and what follows, and leaves
    // the file as it was.
    let err = format!(
        "{:#}",
        KvStore::open(&store_dir)
            .err()
            .expect("a damaged log is refused")
    );
    assert!(err.contains("streams.wal is damaged at byte"), "{err}");
    assert!(err.contains("49 intact records follow it"), "{err}");
    assert!(err.contains("streamhost store repair"), "{err}");
    assert_eq!(
        std::fs::read(&log).unwrap(),
        bytes,
        "the damaged log was changed"
    );

    let dir_arg = store_dir.to_str().unwrap();
    let (ok, report) = streamhost(&["store", "check", dir_arg]);
    assert!(!ok, "check succeeded on a damaged log:\n{report}");
    assert!(
        report.contains("DAMAGED at byte") && report.contains("49 intact records follow"),
        "{report}"
    );

    let (ok, report) = streamhost(&["store", "repair", dir_arg]);
    assert!(ok, "{report}");
    assert!(report.contains("kept 99 intact records"), "{report}");
    assert!(
        report.contains("lost") && report.contains("bytes at byte"),
        "{report}"
    );
    let backup = std::fs::read_dir(&store_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("damaged-"))
        .expect("a backup of the damaged log");
    assert_eq!(
        std::fs::read(backup).unwrap(),
        bytes,
        "the backup holds the damaged bytes"
    );

    let (ok, report) = streamhost(&["store", "check", dir_arg]);
    assert!(ok && report.contains("ok: the log is whole"), "{report}");
    let store = KvStore::open(&store_dir).unwrap();
    for k in 0..100 {
        let got = store.get("s", "g", &format!("item{k:03}")).await.unwrap();
        if k == 50 {
            assert_eq!(got, None);
        } else {
            assert_eq!(
                got,
                Some(json!({"k": k, "text": "some words"}).into()),
                "item{k:03}"
            );
        }
    }
    store.shutdown().await.unwrap();
    drop(original);
}

#[tokio::test]
async fn a_torn_tail_is_no_damage_for_check() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    fill(&store_dir, 10).await;
    let log = store_dir.join("streams.wal");
    let len = std::fs::metadata(&log).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let (ok, report) = streamhost(&["store", "check", store_dir.to_str().unwrap()]);
    assert!(ok, "{report}");
    assert!(
        report.contains("torn write that was never acknowledged"),
        "{report}"
    );
    let (ok, report) = streamhost(&[
        "store",
        "check",
        dir.path().join("nothing").to_str().unwrap(),
    ]);
    assert!(!ok && report.contains("a store directory?"), "{report}");
}

/// A tmpfs of 8 MiB, unmounted on drop; None where this process may not mount.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &Path) -> Option<SmallDisk> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // CI runs as root; a developer without the right to mount sees why a test did not run.
            eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        }
        ok.then(|| SmallDisk(at.to_path_buf()))
    }

    /// Fills the disk to the last byte with a file, whose path it returns.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.0.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![7u8; 64 << 10];
        while f.write_all(&block).is_ok() {}
        let small = [7u8; 512];
        while f.write_all(&small).is_ok() {}
        let _ = f.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_serves_reads_and_resumes_once_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&dir.path().join("small")) else {
        return;
    };
    let store_dir = disk.0.join("store");
    let store = KvStore::open(&store_dir).unwrap();
    store
        .set("s", "g", "kept", json!("before the disk filled").into())
        .await
        .unwrap();

    let filler = disk.fill();

    // Writes fail with a clear error; reads go on.
    let pad = "x".repeat(8 << 10);
    let mut refused = None;
    for k in 0..50 {
        if let Err(e) = store
            .set("s", "g", &format!("w{k}"), json!({"pad": pad}).into())
            .await
        {
            refused = Some(format!("{e:#}"));
            break;
        }
    }
    let refused = refused.expect("a write on a full disk fails");
    assert!(refused.contains("No space left on device"), "{refused}");
    assert!(
        refused.contains("resume"),
        "the error says writes resume by themselves: {refused}"
    );
    let err = format!(
        "{:#}",
        store
            .set("s", "g", "more", json!(1).into())
            .await
            .unwrap_err()
    );
    assert!(
        err.contains("not taking writes while its disk fails"),
        "{err}"
    );
    assert_eq!(
        store.get("s", "g", "kept").await.unwrap(),
        Some(json!("before the disk filled").into())
    );
    assert_eq!(
        store.get("s", "g", "more").await.unwrap(),
        None,
        "a refused write is not served"
    );
    assert!(store.health().is_err(), "health reports the failing disk");

    // Free the space: writes resume by themselves, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    loop {
        match store.set("s", "g", "after", json!("resumed").into()).await {
            Ok(_) => break,
            Err(e) => assert!(
                freed.elapsed() < Duration::from_secs(10),
                "writes did not resume: {e:#}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(store.health().is_ok());
    store.shutdown().await.unwrap();
    drop(store);

    // Everything acknowledged is there after a restart; nothing refused is.
    let store = KvStore::open(&store_dir).unwrap();
    assert_eq!(
        store.get("s", "g", "kept").await.unwrap(),
        Some(json!("before the disk filled").into())
    );
    assert_eq!(
        store.get("s", "g", "after").await.unwrap(),
        Some(json!("resumed").into())
    );
    assert_eq!(store.get("s", "g", "more").await.unwrap(), None);
    store.shutdown().await.unwrap();
}

/// A worker's pipelined durable sets while the disk fills, through the worker socket: there a
/// set's call goes on without waiting for its sync, and its answer and event wait for it
/// instead (`storage::synced`). Each set is answered, ok or with the disk's error; every set
/// answered ok reached the subscriber and is stored, after a restart too, and no set answered
/// with an error did either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_s_sets_on_a_filling_disk_are_sent_and_stored_exactly_when_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&dir.path().join("small")) else {
        return;
    };
    let store_dir = disk.0.join("store");
    let mut config = common::test_config();
    config.adapter = streamhost::config::AdapterConfig::KvFile {
        path: store_dir.clone(),
    };
    let engine = common::start(config).await;
    let mut client = common::Client::connect(engine.client_addr, "/").await;
    let sync = client.join("sub", "s", "g", None).await;
    assert_eq!(sync["event"]["type"], "sync", "{sync}");
    let worker = common::RawWorker::connect(engine.worker_addr).await;

    // Fill the disk, then give back 256 KiB: room for about 30 of the sets below.
    let filler = disk.fill();
    let len = std::fs::metadata(&filler).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap();
    f.set_len(len - (256 << 10)).unwrap();
    let pad = "x".repeat(8 << 10);
    // A set of item `n`, or a send right behind it, which joins its sync.
    let call = |n: usize, send: bool| {
        let (function, data) = match send {
            false => (
                "stream::set",
                json!({"stream_name": "s", "group_id": "g", "item_id": format!("i{n}"), "data": {"n": n, "pad": pad}}),
            ),
            true => (
                "stream::send",
                json!({"stream_name": "s", "group_id": "g", "type": "after", "data": {"s": n}}),
            ),
        };
        worker.call_raw(function, data)
    };
    // A few one at a time, sure to fit; then 200 pipelined, each with a send behind it, which
    // run out of room.
    let mut answers = Vec::new();
    for n in 0..5 {
        answers.push(call(n, false).await);
    }
    let pipelined = (5..205).flat_map(|n| [call(n, false), call(n, true)]);
    let mut pipelined = futures_util::future::join_all(pipelined).await.into_iter();
    while let (Some(set), Some(send)) = (pipelined.next(), pipelined.next()) {
        answers.push(set);
        assert!(send["error"].is_null(), "a send failed: {send}");
    }

    let (mut acked, mut refused, mut by_the_sync) = (Vec::new(), Vec::new(), 0);
    for (n, answer) in answers.iter().enumerate() {
        let error = &answer["error"];
        if error.is_null() {
            acked.push(n);
            continue;
        }
        assert_eq!(error["code"], "STREAM_SET_ERROR", "{answer}");
        let message = error["message"].as_str().unwrap_or_default();
        // Refused at once, or failed by its sync after its call went on.
        by_the_sync += usize::from(message.contains("No space left on device"));
        assert!(
            message.contains("No space left on device")
                || message.contains("not taking writes while its disk fails"),
            "{answer}"
        );
        refused.push(n);
    }
    assert!(acked.len() >= 5, "acknowledged: {acked:?}");
    assert!(
        by_the_sync > 0,
        "no set was failed by its sync: {answers:?}"
    );

    // The subscriber got the acknowledged sets' events and nothing else of the sets, and
    // every send, each after its set's event if there was one.
    let (mut sent, mut arrived) = (Vec::new(), Vec::new());
    while let Some(frame) = client.try_next(Duration::from_secs(1)).await {
        let event = &frame["event"];
        if let Some(n) = event["data"]["n"].as_u64() {
            sent.push(n as usize);
            arrived.push(format!("set {n}"));
        } else if let Some(n) = event["event"]["data"]["s"].as_u64() {
            arrived.push(format!("send {n}"));
        }
    }
    let expected: Vec<String> = (0..205)
        .flat_map(|n| {
            let set = acked.contains(&n).then(|| format!("set {n}"));
            let send = (n >= 5).then(|| format!("send {n}"));
            set.into_iter().chain(send)
        })
        .collect();
    assert_eq!(arrived, expected, "events in the order of the calls");
    sent.sort_unstable();
    assert_eq!(sent, acked, "events sent against sets acknowledged");

    // Stored: exactly the acknowledged sets (reads wait out the store's reload).
    let stored = |n: usize| {
        let data = json!({"stream_name": "s", "group_id": "g", "item_id": format!("i{n}")});
        worker.call("stream::get", data)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    for n in 0..205 {
        let value = loop {
            match stored(n).await {
                Ok(value) => break value.filter(|v| !v.is_null()),
                Err(e) if Instant::now() < deadline => {
                    eprintln!("read refused, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("reads did not resume: {e}"),
            }
        };
        assert_eq!(value.is_some(), acked.contains(&n), "item i{n}: {value:?}");
    }
    drop(worker);
    let _ = engine.shutdown().await;

    // After a restart, with room again: the same.
    std::fs::remove_file(&filler).unwrap();
    let store = KvStore::open(&store_dir).unwrap();
    for n in 0..205 {
        let value = store.get("s", "g", &format!("i{n}")).await.unwrap();
        assert_eq!(
            value.is_some(),
            acked.contains(&n),
            "item i{n} after a restart"
        );
    }
    store.shutdown().await.unwrap();
}
