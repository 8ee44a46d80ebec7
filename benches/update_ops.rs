//! Update op cost: one update of `max_update_ops` ops on an item of 1 MiB, for each op kind,
//! applied by `update_ops::apply` (parse, copy of the item, ops, result check) and through the
//! in-memory KvStore. No op may cost time in the item's size, so each update stays far below
//! 100 ms. Then the slowest of the small sets made beside back-to-back updates of the item:
//! what an update costs the store's other writers. Prints figures; asserts nothing.
//!
//!     cargo bench --bench update_ops

use serde_json::{Map, Value, json};
use std::time::{Duration, Instant};
use streamhost::limits::{ValueLimits, measure};
use streamhost::storage::StreamAdapter;
use streamhost::storage::kv_store::KvStore;
use streamhost::storage::update_ops::{self, UpdateOps};

/// The engine's allocator (see src/main.rs), so that copies cost what they cost there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ITEM_BYTES: usize = 1 << 20;

/// An object of small keys, `{"k0":0,"k1":1,...}`, of about `bytes` bytes.
fn many_keys(bytes: usize) -> Value {
    let mut map = Map::new();
    let mut i = 0;
    while measure(&Value::Object(map.clone())).1 < bytes && i < 1 << 20 {
        for _ in 0..1000 {
            map.insert(format!("k{i}"), json!(i));
            i += 1;
        }
    }
    Value::Object(map)
}

/// The best of `runs` timings of `f`.
fn best(runs: usize, mut f: impl FnMut()) -> Duration {
    (0..runs)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed()
        })
        .min()
        .unwrap()
}

fn main() {
    let limits = ValueLimits {
        max_item_bytes: 4 * ITEM_BYTES,
        ..ValueLimits::default()
    };
    let n = limits.max_update_ops;
    let keys = many_keys(ITEM_BYTES);
    let key_count = keys.as_object().unwrap().len();
    let text = json!({"t": "x".repeat(ITEM_BYTES)});
    let list = json!({"list": vec![json!(1); ITEM_BYTES / 2]});
    let deep_path: Vec<String> = (0..32).map(|i| format!("p{i}")).collect();

    let cases: Vec<(&str, &Value, Vec<Value>)> = vec![
        (
            "remove (first keys)",
            &keys,
            (0..n)
                .map(|i| json!({"type": "remove", "path": format!("k{i}")}))
                .collect(),
        ),
        (
            "set (existing keys)",
            &keys,
            (0..n)
                .map(|i| json!({"type": "set", "path": format!("k{i}"), "value": "v"}))
                .collect(),
        ),
        (
            "increment",
            &keys,
            (0..n)
                .map(|i| json!({"type": "increment", "path": format!("k{}", i % 7), "by": 1}))
                .collect(),
        ),
        (
            "merge (16 keys each)",
            &keys,
            (0..n)
                .map(|i| {
                    let v: Map<String, Value> =
                        (0..16).map(|j| (format!("m{i}_{j}"), json!(j))).collect();
                    json!({"type": "merge", "value": v})
                })
                .collect(),
        ),
        (
            "merge at a 32-segment path",
            &keys,
            (0..n)
                .map(|i| json!({"type": "merge", "path": deep_path, "value": {format!("x{i}"): i}}))
                .collect(),
        ),
        (
            "append to a string",
            &text,
            (0..n)
                .map(|_| json!({"type": "append", "path": "t", "value": "abc"}))
                .collect(),
        ),
        (
            "append to an array",
            &list,
            (0..n)
                .map(|i| json!({"type": "append", "path": ["list"], "value": i}))
                .collect(),
        ),
        (
            "remove the whole value, then set it",
            &keys,
            (0..n)
                .map(|i| match i % 2 {
                    0 => json!({"type": "remove", "path": ""}),
                    _ => json!({"type": "set", "path": "", "value": {"a": i}}),
                })
                .collect(),
        ),
    ];

    println!(
        "one update of {n} ops on an item of {} bytes ({key_count} keys for the object cases)",
        ITEM_BYTES
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut worst = Duration::ZERO;
    for (name, item, raw) in &cases {
        let ops = UpdateOps::parse(raw, &limits).unwrap();
        let applied = best(5, || {
            let ops = UpdateOps::parse(raw, &limits).unwrap();
            let (v, errors) = update_ops::apply(Some(item), &ops).unwrap();
            assert!(errors.is_empty(), "{name}: {errors:?}");
            std::hint::black_box(v);
        });
        let store = KvStore::in_memory();
        let through_store = (0..5)
            .map(|_| {
                rt.block_on(async {
                    store
                        .set("b", "g", "i", (*item).clone().into())
                        .await
                        .unwrap();
                    let started = Instant::now();
                    store.update("b", "g", "i", &ops).await.unwrap();
                    started.elapsed()
                })
            })
            .min()
            .unwrap();
        worst = worst.max(applied).max(through_store);
        println!(
            "{name:<38} apply {:>7.2} ms   KvStore::update {:>7.2} ms",
            applied.as_secs_f64() * 1000.0,
            through_store.as_secs_f64() * 1000.0
        );
    }
    println!("slowest: {:.2} ms", worst.as_secs_f64() * 1000.0);
    beside_updates(&keys, &cases[2].2, &limits);
}

/// What updates of a large item cost the store's other writers: small sets of other items
/// made, on a thread of their own, while updates of the 1 MiB item run without a pause. Each
/// set waits for the store's lock as long as an update holds it.
fn beside_updates(item: &Value, raw_ops: &[Value], limits: &ValueLimits) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Arc::new(KvStore::in_memory());
        store
            .set("b", "g", "big", item.clone().into())
            .await
            .unwrap();
        let ops = Arc::new(UpdateOps::parse(raw_ops, limits).unwrap());
        let (stop, updates) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let updater = tokio::spawn({
            let (store, stop, updates) = (store.clone(), stop.clone(), updates.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    store.update("b", "g", "big", &ops).await.unwrap();
                    updates.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let (mut sets, mut slowest) = (0, Duration::ZERO);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(3) {
            let one = Instant::now();
            let small = json!({"n": sets}).into();
            store.set("b", "g", &format!("s{sets}"), small).await.unwrap();
            slowest = slowest.max(one.elapsed());
            sets += 1;
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        stop.store(true, Ordering::Relaxed);
        updater.await.unwrap();
        println!(
            "beside {} updates (increment) of the {ITEM_BYTES}-byte item: slowest of {sets} small sets {:.2} ms",
            updates.load(Ordering::Relaxed),
            slowest.as_secs_f64() * 1000.0
        );
    });
}
