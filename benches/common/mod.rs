//! Helpers shared by the benchmarks.
#![allow(dead_code)]

use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use streamhost::storage::StreamAdapter;

/// Runs `total` sets of 100-byte values from `concurrency` tasks; returns sets per second.
pub async fn sets_per_second(
    store: Arc<dyn StreamAdapter>,
    total: usize,
    concurrency: usize,
) -> f64 {
    timed_sets(store, total, concurrency).await.0
}

/// As `sets_per_second`, and the slowest single set in milliseconds.
pub async fn timed_sets(
    store: Arc<dyn StreamAdapter>,
    total: usize,
    concurrency: usize,
) -> (f64, f64) {
    let slowest_us = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let per_task = total / concurrency;
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let (store, slowest_us) = (store.clone(), slowest_us.clone());
            tokio::spawn(async move {
                let pad = "x".repeat(80);
                for n in 0..per_task {
                    let item = format!("t{t}-{n}");
                    let one = Instant::now();
                    store
                        .set(
                            "bench",
                            &format!("g{}", t % 16),
                            &item,
                            json!({"n": n, "p": pad}).into(),
                        )
                        .await
                        .unwrap();
                    slowest_us.fetch_max(one.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let rate = (per_task * concurrency) as f64 / started.elapsed().as_secs_f64();
    (rate, slowest_us.load(Ordering::Relaxed) as f64 / 1000.0)
}
