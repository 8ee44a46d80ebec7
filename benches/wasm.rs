//! WebAssembly adapter benchmark: the cost an operation adds when it goes through a warm
//! adapter instead of the native KvStore, and the time to load an adapter compiled or cached.
//! Builds `adapters/` first. Prints figures; asserts nothing.
//!
//!     cargo bench --bench wasm

#[path = "../tests/common/build_adapters.rs"]
mod build_adapters;

use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use streamhost::storage::StreamAdapter;
use streamhost::storage::kv_store::KvStore;
use streamhost::storage::wasm::{Limits, WasmAdapter, WasmHost};

/// Mean time per call of `op` over `n` calls, after a warm-up.
async fn per_op<F: AsyncFnMut(usize)>(n: usize, mut op: F) -> Duration {
    for i in 0..n / 10 {
        op(i).await;
    }
    let started = Instant::now();
    for i in 0..n {
        op(i).await;
    }
    started.elapsed() / n as u32
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let dir = build_adapters::build();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let n = 20_000;
        let value = streamhost::json::Json::from_value(&json!({"text": "x".repeat(80), "n": 1}));
        let native: Arc<dyn StreamAdapter> = Arc::new(KvStore::in_memory());
        let wasm_bytes = std::fs::read(dir.join("template.wasm")).unwrap();
        let host = WasmHost::new(None).unwrap();
        let adapter = WasmAdapter::new(
            host,
            "bench",
            &wasm_bytes,
            json!({}),
            Limits::default(),
            Arc::new(KvStore::in_memory()),
            Arc::default(),
        )
        .await
        .unwrap();

        let native_set = per_op(n, async |i| {
            native
                .set("bench", "g", &format!("i{}", i % 1000), value.clone())
                .await
                .unwrap();
        })
        .await;
        let wasm_set = per_op(n, async |i| {
            adapter
                .set("bench", "g", &format!("i{}", i % 1000), value.clone())
                .await
                .unwrap();
        })
        .await;
        let native_get = per_op(n, async |i| {
            native
                .get("bench", "g", &format!("i{}", i % 1000))
                .await
                .unwrap();
        })
        .await;
        let wasm_get = per_op(n, async |i| {
            adapter
                .get("bench", "g", &format!("i{}", i % 1000))
                .await
                .unwrap();
        })
        .await;
        println!("op    native KvStore   through wasm (template adapter)   added");
        println!(
            "set   {:>8.2} us      {:>8.2} us                       {:>6.2} us",
            us(native_set),
            us(wasm_set),
            us(wasm_set) - us(native_set)
        );
        println!(
            "get   {:>8.2} us      {:>8.2} us                       {:>6.2} us",
            us(native_get),
            us(wasm_get),
            us(wasm_get) - us(native_get)
        );

        for name in ["template", "validator", "capped_history"] {
            let bytes = std::fs::read(dir.join(format!("{name}.wasm"))).unwrap();
            let cache = tempfile::tempdir().unwrap();
            let host = WasmHost::new(Some(cache.path().to_path_buf())).unwrap();
            let cold = host.prepare(&bytes).unwrap();
            let warm = host.prepare(&bytes).unwrap();
            assert!(!cold.from_cache && warm.from_cache);
            println!(
                "load {name:<15} {:>4} KiB: compile {:>7.1} ms, from cache {:>5.2} ms",
                bytes.len() / 1024,
                cold.load_time.as_secs_f64() * 1000.0,
                warm.load_time.as_secs_f64() * 1000.0
            );
        }
    });
}
