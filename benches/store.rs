//! Store benchmark: durable and in-memory set throughput with group commit, and start-up
//! recovery of a large store. Prints figures; asserts nothing.
//!
//!     cargo bench --bench store                 # defaults
//!     STORE_BENCH_ITEMS=1000000 cargo bench --bench store

use std::sync::Arc;
use std::time::Instant;
use streamhost::storage::StreamAdapter;
use streamhost::storage::kv_store::KvStore;

mod common;

use common::{sets_per_second, timed_sets};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let total = env("STORE_BENCH_SETS", 200_000);
        let items = env("STORE_BENCH_ITEMS", 500_000);
        let dir = tempfile::tempdir().unwrap();

        let memory: Arc<dyn StreamAdapter> = Arc::new(KvStore::in_memory());
        let rate = sets_per_second(memory, total, 64).await;
        println!("in-memory set        {rate:>10.0} sets/s  ({total} sets, 64 concurrent writers)");

        for concurrency in [1, 16, 64, 256] {
            let path = dir.path().join(format!("durable-{concurrency}"));
            let store: Arc<dyn StreamAdapter> = Arc::new(KvStore::open(&path).unwrap());
            let n = if concurrency == 1 { total / 20 } else { total };
            let rate = sets_per_second(store.clone(), n, concurrency).await;
            store.shutdown().await.unwrap();
            println!("durable set          {rate:>10.0} sets/s  ({n} sets, {concurrency} concurrent writers, fsync before every ack)");
        }

        let path = dir.path().join("recovery");
        let store: Arc<dyn StreamAdapter> = Arc::new(KvStore::open(&path).unwrap());
        let (rate, slowest_ms) = timed_sets(store.clone(), items, 256).await;
        store.shutdown().await.unwrap();
        println!("filling {items} items    {rate:>10.0} sets/s  (256 writers; the log passed 64 MiB and was compacted; slowest set {slowest_ms:.1} ms)");
        drop(store);
        let bytes = std::fs::metadata(path.join("streams.wal")).unwrap().len();
        let started = Instant::now();
        let store = KvStore::open(&path).unwrap();
        let elapsed = started.elapsed();
        let groups = store.list_groups("bench").await.unwrap().len();
        println!(
            "recovery             {:>10.0} ms      ({items} items in {groups} groups, {:.1} MiB log, {:.0} items/s)",
            elapsed.as_secs_f64() * 1000.0,
            bytes as f64 / (1 << 20) as f64,
            items as f64 / elapsed.as_secs_f64()
        );
    });
}
