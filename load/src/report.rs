//! The summary: printed for people, written as JSON for tools; and the progress line.

use crate::Counters;
use crate::histogram::Histogram;
use crate::options::Options;
use crate::subscribers::SubResult;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The resident memory of a process, from /proc.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The CPU time a process has had so far, in nanoseconds: the sum over its threads of
/// `/proc/PID/task/*/schedstat` (nanosecond counts, where `stat`'s are 10 ms ticks). The
/// engine's CPU per delivery is steadier than its throughput on a shared machine: it leaves
/// out the time the engine waited for a core.
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue; // a thread that ended meanwhile
        };
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// One line a second while the run goes on.
pub async fn progress(c: Arc<Counters>, done: Arc<AtomicBool>) {
    let mut last = 0;
    while !done.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let d = c.delivered.load(Ordering::Relaxed);
        eprintln!(
            "  sent {:>9}  acked {:>9}  failed {:>6}  delivered {:>11}  ({:>9}/s)",
            c.sent.load(Ordering::Relaxed),
            c.acked.load(Ordering::Relaxed),
            c.failed.load(Ordering::Relaxed),
            d,
            d - last
        );
        last = d;
    }
}

pub struct Report {
    json: Value,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        o: &Options,
        results: &[SubResult],
        c: &Counters,
        published: u64,
        publish_time: Duration,
        deliver_time: Duration,
        connect_time: Duration,
        rss_before: Option<u64>,
        rss_after: Option<u64>,
        engine_cpu_ns: Option<u64>,
        own_cpu_ns: Option<u64>,
    ) -> Report {
        let mut latency = Histogram::default();
        let (mut received, mut lost, mut dup) = (0, 0, 0);
        let mut last_ns = 0;
        let (mut closed_told, mut dropped) = (0, 0);
        for r in results {
            latency.merge(&r.latency);
            received += r.received;
            dup += r.duplicates;
            last_ns = last_ns.max(r.last_delivery_ns);
            dropped += r.dropped as u64;
            if r.closed.is_some() {
                closed_told += 1;
            } else {
                lost += r.lost;
            }
        }
        let lost_by_closed: u64 = results
            .iter()
            .filter(|r| r.closed.is_some())
            .map(|r| r.lost)
            .sum();
        let storm = o.storm_after.map(|after| storm_json(after, results));
        let mut secs = deliver_time.as_secs_f64().max(1e-9);
        let acked = c.acked.load(Ordering::Relaxed);
        if o.discard {
            // Nothing was counted: each admitted event reached its group's subscribers.
            received = acked * (o.subscribers / o.groups) as u64;
            secs = publish_time.as_secs_f64().max(1e-9);
        }
        let calls = c.call_latency.lock().unwrap().clone();
        let per_conn = match (rss_before, rss_after) {
            (Some(b), Some(a)) if o.subscribers > 0 => {
                Some(a.saturating_sub(b) as f64 / o.subscribers as f64)
            }
            _ => None,
        };
        let json = json!({
            "config": {
                "subscribers": o.subscribers, "groups": o.groups, "events": o.events, "size": o.size,
                "rate": o.rate, "function": o.function.id(),
                "window": o.window, "workers": o.workers, "join": if o.join_path { "path" } else { "frame" },
                "pause_ms": o.pause_ms, "seconds": o.seconds, "tenant": o.tenant,
                "stream": o.stream, "adapter": o.adapter.as_ref().map(|p| p.display().to_string()),
            },
            "published": published,
            "acked": acked,
            "failed": c.failed.load(Ordering::Relaxed),
            "publish_seconds": publish_time.as_secs_f64(),
            "calls_per_second": acked as f64 / publish_time.as_secs_f64().max(1e-9),
            "offered_per_second": published as f64 / publish_time.as_secs_f64().max(1e-9),
            "errors": c.refusals.json(),
            "quota_exceeded": c.refusals.count("quota_exceeded"),
            "client_quota_errors": c.client_quota_errors.load(Ordering::Relaxed),
            "delivered": received,
            "delivered_estimated": o.discard,
            "deliveries_per_second": received as f64 / secs,
            "lost": lost,
            "duplicated": dup,
            "closed_as_slow_and_told": closed_told,
            "not_delivered_to_closed_clients": lost_by_closed,
            "dropped_without_close_frame": dropped,
            "latency_us": {
                "p50": latency.quantile(0.5), "p99": latency.quantile(0.99),
                "p999": latency.quantile(0.999), "max": latency.max_us,
            },
            "call_latency_us": {
                "p50": calls.quantile(0.5), "p99": calls.quantile(0.99), "max": calls.max_us,
            },
            "connect_seconds": connect_time.as_secs_f64(),
            "engine_rss_before": rss_before,
            "engine_rss_after_connect": rss_after,
            "engine_bytes_per_connection": per_conn,
            "engine_cpu_seconds": engine_cpu_ns.map(|ns| ns as f64 / 1e9),
            "engine_cpu_ns_per_delivery": engine_cpu_ns.filter(|_| received > 0).map(|ns| ns as f64 / received as f64),
            "engine_cpu_ns_per_call": engine_cpu_ns.filter(|_| acked > 0).map(|ns| ns as f64 / acked as f64),
            // The load generator's own: when it nears a core's worth, it is what limits the run.
            "load_cpu_seconds": own_cpu_ns.map(|ns| ns as f64 / 1e9),
            "load_cpu_ns_per_call": own_cpu_ns.filter(|_| acked > 0).map(|ns| ns as f64 / acked as f64),
            "storm": storm,
        });
        Report { json }
    }

    pub fn json(&self) -> &Value {
        &self.json
    }

    pub fn human(&self) -> String {
        let j = &self.json;
        let c = &j["config"];
        let ms = |v: &Value| v.as_u64().unwrap_or(0) as f64 / 1000.0;
        let mut s = format!(
            "\n{} subscribers in {} groups, {} events of {} bytes via {}{}\n",
            c["subscribers"],
            c["groups"],
            j["published"],
            c["size"],
            c["function"].as_str().unwrap_or(""),
            if c["rate"].as_f64().unwrap_or(0.0) > 0.0 {
                format!(" at {}/s", c["rate"])
            } else {
                " as fast as possible".into()
            },
        );
        s += &format!(
            "  calls        {} acked, {} failed, {:.0} calls/s\n",
            j["acked"],
            j["failed"],
            j["calls_per_second"].as_f64().unwrap_or(0.0)
        );
        s += &format!(
            "  call latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms\n",
            ms(&j["call_latency_us"]["p50"]),
            ms(&j["call_latency_us"]["p99"]),
            ms(&j["call_latency_us"]["max"])
        );
        if j["failed"].as_u64().unwrap_or(0) > 0 || j["client_quota_errors"].as_u64() > Some(0) {
            s += &format!(
                "  refusals     {} quota_exceeded of {:.0} calls/s offered; errors by code {}; {} quota errors to subscribers\n",
                j["quota_exceeded"],
                j["offered_per_second"].as_f64().unwrap_or(0.0),
                j["errors"],
                j["client_quota_errors"]
            );
        }
        s += &format!(
            "  deliveries   {} in total, {:.0}/s\n",
            j["delivered"],
            j["deliveries_per_second"].as_f64().unwrap_or(0.0)
        );
        s += &format!(
            "  latency      p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms\n",
            ms(&j["latency_us"]["p50"]),
            ms(&j["latency_us"]["p99"]),
            ms(&j["latency_us"]["p999"]),
            ms(&j["latency_us"]["max"])
        );
        s += &format!(
            "  lost         {} (duplicated {})",
            j["lost"], j["duplicated"]
        );
        if j["closed_as_slow_and_told"].as_u64().unwrap_or(0) > 0 {
            s += &format!(
                "; {} clients closed and told ({} events not delivered to them)",
                j["closed_as_slow_and_told"], j["not_delivered_to_closed_clients"]
            );
        }
        if j["dropped_without_close_frame"].as_u64().unwrap_or(0) > 0 {
            s += &format!(
                "; {} connections dropped without a close frame",
                j["dropped_without_close_frame"]
            );
        }
        s.push('\n');
        let storm = &j["storm"];
        if !storm.is_null() {
            s += &format!(
                "  storm        {} dropped at {} s: {} recovered, {} resynced (not recovered), {} could not rejoin; all back within {:.0} ms (p50 {:.0} ms, p99 {:.0} ms)\n",
                storm["clients"],
                storm["after_seconds"],
                storm["recovered"],
                storm["not_recovered"],
                storm["rejoin_failed"],
                ms(&storm["back_us"]["max"]),
                ms(&storm["back_us"]["p50"]),
                ms(&storm["back_us"]["p99"]),
            );
        }
        if let Some(cpu) = j["engine_cpu_seconds"].as_f64() {
            let per = |key: &str| {
                j[key]
                    .as_f64()
                    .map_or("-".into(), |ns| format!("{ns:.0} ns"))
            };
            s += &format!(
                "  engine CPU   {cpu:.2} s from the first call to the end: {} per delivery, {} per call\n",
                per("engine_cpu_ns_per_delivery"),
                per("engine_cpu_ns_per_call"),
            );
        }
        if let Some(cpu) = j["load_cpu_seconds"].as_f64() {
            let per_call = j["load_cpu_ns_per_call"]
                .as_f64()
                .map_or("-".into(), |ns| format!("{ns:.0} ns"));
            s += &format!(
                "  load CPU     {cpu:.2} s (this load generator's own): {per_call} per call\n"
            );
        }
        if let Some(b) = j["engine_bytes_per_connection"].as_f64() {
            s += &format!(
                "  memory       {:.1} KB per connection ({} MB before, {} MB after connecting)\n",
                b / 1000.0,
                j["engine_rss_before"].as_u64().unwrap_or(0) >> 20,
                j["engine_rss_after_connect"].as_u64().unwrap_or(0) >> 20
            );
        }
        s
    }
}

/// The reconnect storm's outcome: how many subscribers recovered their missed events, and
/// how long from the drop until each was back (its first frame after rejoining).
fn storm_json(after: f64, results: &[SubResult]) -> Value {
    let mut back = Histogram::default();
    let (mut recovered, mut resynced, mut failed) = (0u64, 0u64, 0u64);
    for r in results {
        failed += r.rejoin_failed as u64;
        if let Some(rec) = r.recovery {
            back.record(rec.micros);
            if rec.recovered {
                recovered += 1;
            } else {
                resynced += 1;
            }
        }
    }
    json!({
        "after_seconds": after,
        "clients": results.len(),
        "recovered": recovered,
        "not_recovered": resynced,
        "rejoin_failed": failed,
        "back_us": {"p50": back.quantile(0.5), "p99": back.quantile(0.99), "max": back.max_us},
    })
}
