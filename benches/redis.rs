//! Redis adapter benchmark: set throughput through the Redis adapter against the KvStore, and
//! how long an event written on one engine node takes to reach a client of another node.
//! Starts its own `redis-server` on a free port. Prints figures; asserts nothing.
//!
//!     cargo bench --bench redis
//!     REDIS_BENCH_SETS=200000 REDIS_BENCH_SAMPLES=5000 cargo bench --bench redis

mod common;

use common::sets_per_second;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use streamhost::config::AdapterConfig;
use streamhost::storage::StreamAdapter;
use streamhost::storage::kv_store::KvStore;
use streamhost::storage::redis::RedisAdapter;
use streamhost::{Config, Server, ServerHandle};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A `redis-server` of our own, killed on drop.
struct RedisServer(Child, u16);

impl RedisServer {
    fn start() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run redis-server ({e}); install it with `apt-get install redis-server`"
                )
            });
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisServer(child, port)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.1)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

fn engine_config(adapter: AdapterConfig) -> Config {
    Config {
        host: "127.0.0.1".into(),
        port: 0,
        worker_host: "127.0.0.1".into(),
        worker_port: 0,
        adapter,
        ..Default::default()
    }
}

/// Writes on `writer`, times until a client of `reader` sees each write; returns (p50, p99).
async fn delivery_latency(
    writer: &ServerHandle,
    reader: &ServerHandle,
    samples: usize,
) -> (Duration, Duration) {
    let (mut ws, _) = connect_async(format!("ws://{}/stream/lat/g", reader.client_addr))
        .await
        .unwrap();
    let mut next = async || loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .unwrap()
            .unwrap()
        {
            Message::Text(t) => return serde_json::from_str::<Value>(t.as_str()).unwrap(),
            _ => continue,
        }
    };
    assert_eq!(next().await["event"]["type"], "sync");
    // Wait until both nodes hear each other before timing anything.
    loop {
        let probe = json!({"stream_name": "lat", "group_id": "g", "type": "probe", "data": {}});
        writer.engine.call("stream::send", probe).await.unwrap();
        if tokio::time::timeout(Duration::from_millis(200), next())
            .await
            .is_ok()
        {
            break;
        }
    }
    let mut took = Vec::with_capacity(samples);
    for n in 0..samples {
        let started = Instant::now();
        writer.engine.call("stream::set", json!({"stream_name": "lat", "group_id": "g", "item_id": format!("i{}", n % 100), "data": {"n": n}})).await.unwrap();
        loop {
            let frame = next().await;
            if frame["event"]["data"]["n"] == n {
                break;
            }
        }
        took.push(started.elapsed());
    }
    took.sort();
    (took[samples / 2], took[samples * 99 / 100])
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let total = env("REDIS_BENCH_SETS", 100_000);
        let samples = env("REDIS_BENCH_SAMPLES", 2_000);
        let redis = RedisServer::start();
        let dir = tempfile::tempdir().unwrap();

        for concurrency in [1, 16, 64, 256] {
            let n = if concurrency == 1 { total / 10 } else { total };
            let store: Arc<dyn StreamAdapter> = Arc::new(RedisAdapter::connect(&redis.url()).await.unwrap());
            let rate = sets_per_second(store.clone(), n, concurrency).await;
            store.shutdown().await.unwrap();
            println!("redis set            {rate:>10.0} sets/s  ({n} sets, {concurrency} concurrent writers, one multiplexed connection)");
        }
        let memory: Arc<dyn StreamAdapter> = Arc::new(KvStore::in_memory());
        let rate = sets_per_second(memory, total, 64).await;
        println!("kv in-memory set     {rate:>10.0} sets/s  ({total} sets, 64 concurrent writers)");
        for concurrency in [1, 64] {
            let n = if concurrency == 1 { total / 20 } else { total };
            let store: Arc<dyn StreamAdapter> = Arc::new(KvStore::open(&dir.path().join(format!("durable-{concurrency}"))).unwrap());
            let rate = sets_per_second(store.clone(), n, concurrency).await;
            store.shutdown().await.unwrap();
            println!("kv durable set       {rate:>10.0} sets/s  ({n} sets, {concurrency} concurrent writers, fsync before every ack)");
        }

        let a = Server::start(engine_config(AdapterConfig::redis(redis.url()))).await.unwrap();
        let b = Server::start(engine_config(AdapterConfig::redis(redis.url()))).await.unwrap();
        let (p50, p99) = delivery_latency(&b, &a, samples).await;
        println!("cross-node delivery  p50 {p50:>9.2?}  p99 {p99:>9.2?}  (set on node B to a client of node A, via Redis; {samples} samples)");
        let (p50, p99) = delivery_latency(&a, &a, samples).await;
        println!("same-node delivery   p50 {p50:>9.2?}  p99 {p99:>9.2?}  (set and client on node A, Redis adapter)");
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
        let alone = Server::start(engine_config(AdapterConfig::KvMemory)).await.unwrap();
        let (p50, p99) = delivery_latency(&alone, &alone, samples).await;
        println!("kv in-memory node    p50 {p50:>9.2?}  p99 {p99:>9.2?}  (set and client on one node)");
        alone.shutdown().await.unwrap();
    });
}
