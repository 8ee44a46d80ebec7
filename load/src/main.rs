//! streamhost-load: a load generator that speaks only the iii streams wire contract, so it can
//! be pointed at any compatible engine (streamhost, the iii engine, the raw floor).
//!
//! It opens subscriber sockets over several 127.x.y.z source addresses, publishes events
//! through a raw worker connection, and reports deliveries per second, publish-to-delivery
//! latency, events lost and duplicated, each call's latency, failed calls by error code, and
//! the engine's memory per connection. Subscribers and workers can belong to a tenant, which
//! is what the noisy-neighbour benchmark (scripts/bench-tenants.sh) needs.
//!
//!     streamhost-load --subscribers 1000 --events 1000 --size 100
//!     streamhost-load --tenant b --worker-key KEY --subscribers 1000 --events 400 --rate 40
//!     streamhost-load --help

mod adapter;
mod calls;
mod histogram;
mod options;
mod publisher;
mod refusals;
mod report;
mod subscribers;

use options::Options;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Counters shared by the subscribers, the publisher and the progress line.
#[derive(Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub failed: AtomicU64,
    pub delivered: AtomicU64,
    pub closed_slow: AtomicU64,
    /// The publisher's failed calls, by error code (`quota_exceeded` among them).
    pub refusals: refusals::Refusals,
    /// From each call sent to its answer, in microseconds.
    pub call_latency: std::sync::Mutex<histogram::Histogram>,
    /// Frames to subscribers that carried `quota_exceeded`.
    pub client_quota_errors: AtomicU64,
}

fn main() {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}\n\n{}", options::USAGE);
            std::process::exit(2);
        }
    };
    // One socket per subscriber: take the hard limit on open files, not the soft one.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(options)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn run(o: Options) -> anyhow::Result<i32> {
    let epoch = Instant::now();
    let counters = Arc::new(Counters::default());
    let rss_before = o.engine_pid.and_then(report::rss_bytes);

    eprintln!(
        "connecting {} subscribers over {} source addresses...",
        o.subscribers, o.sources
    );
    let connect_started = Instant::now();
    let subs = subscribers::connect_all(&o, epoch, counters.clone()).await?;
    let connect_time = connect_started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = o.engine_pid.and_then(report::rss_bytes);
    eprintln!(
        "{} subscribers joined in {:.1} s",
        subs.len(),
        connect_time.as_secs_f64()
    );

    if o.idle_seconds > 0 {
        eprintln!("holding the connections idle for {} s", o.idle_seconds);
        tokio::time::sleep(Duration::from_secs(o.idle_seconds)).await;
    }

    if let Some(path) = &o.start_when {
        eprintln!("waiting for {} to exist", path.display());
        let deadline = Instant::now() + Duration::from_secs(300);
        while !path.exists() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} did not appear within 5 minutes",
                path.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let done = Arc::new(AtomicBool::new(false));
    let progress = tokio::spawn(report::progress(counters.clone(), done.clone()));
    let cpu_before = o.engine_pid.and_then(report::cpu_ns);
    let own_cpu_before = report::cpu_ns(std::process::id());
    let publish_started = Instant::now();
    let storm = o.storm_after.map(|after| {
        let subs = subs.storm_handle();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(after)).await;
            eprintln!("reconnect storm: every subscriber drops and rejoins from its offset");
            let _ = subs.send(true);
        })
    });
    let published = publisher::publish(&o, epoch, counters.clone()).await?;
    if let Some(storm) = storm {
        // A run shorter than the wait still has its storm, before the drain.
        let _ = storm.await;
    }
    let publish_time = publish_started.elapsed();

    // Wait for deliveries to stop arriving (or everything expected to arrive).
    let expected = subscribers::expected_total(&o, published);
    let mut last = u64::MAX;
    let settle = Instant::now();
    loop {
        let now = counters.delivered.load(Ordering::Relaxed);
        if now >= expected
            || (now == last && settle.elapsed() > Duration::from_secs(2))
            || settle.elapsed() > Duration::from_secs(o.drain_seconds)
        {
            break;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let deliver_time = publish_started.elapsed();
    let engine_cpu_ns = o
        .engine_pid
        .and_then(report::cpu_ns)
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    let own_cpu_ns = report::cpu_ns(std::process::id())
        .zip(own_cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    done.store(true, Ordering::Relaxed);
    let _ = progress.await;

    let results = subscribers::finish(subs, &o, published).await;
    let report = report::Report::build(
        &o,
        &results,
        &counters,
        published,
        publish_time,
        deliver_time,
        connect_time,
        rss_before,
        rss_after,
        engine_cpu_ns,
        own_cpu_ns,
    );
    println!("{}", report.human());
    if let Some(path) = &o.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.json())?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(0)
}
