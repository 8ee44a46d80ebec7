//! Helpers shared by the benchmarks.
#![allow(dead_code)]

use serde_json::json;
use std::sync::Arc;
use std::time::Instant;
use streamhost::adapter::StreamAdapter;

/// Runs `total` sets of 100-byte values from `concurrency` tasks; returns sets per second.
pub async fn sets_per_second(store: Arc<dyn StreamAdapter>, total: usize, concurrency: usize) -> f64 {
    let started = Instant::now();
    let per_task = total / concurrency;
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let pad = "x".repeat(80);
                for n in 0..per_task {
                    let item = format!("t{t}-{n}");
                    store.set("bench", &format!("g{}", t % 16), &item, json!({"n": n, "p": pad})).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (per_task * concurrency) as f64 / started.elapsed().as_secs_f64()
}

