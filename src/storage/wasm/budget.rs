//! A tenant's share of the engine's time for its WebAssembly adapters: how many calls may run
//! guest code at once (`max_concurrent_calls`) and how much of it per second
//! (`max_cpu_ms_per_sec`).
//!
//! A call over either cap fails at once with `quota_exceeded` and a `retry_after_ms`, instead
//! of queueing behind the tenant's own hog: the refusal costs nothing and the caller knows
//! when to come back. CPU time is a token bucket holding one second of the tenant's rate; a
//! call is admitted while the bucket is not in debt and pays afterwards for the time it
//! actually held an engine thread (see `Metered`), so one call may overdraw it by at most its
//! own deadline, and then the tenant waits for the debt to refill.
//!
//! Each refusal is counted in the tenant's `streamhost_tenant_quota_refusals_total`, under
//! the quota names [`CONCURRENT_CALLS`] and [`CPU_TIME`]: the budget is given the tenant's
//! counters when its space is made, so storage needs to know nothing else of tenants.

use crate::error::FnError;
use crate::metrics::TenantCounters;
use crate::tenants::{AdapterCeilings, QuotaExceeded};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How long a caller refused for concurrency is told to wait: running calls end within their
/// deadline, most far sooner.
const BUSY_RETRY: Duration = Duration::from_millis(50);

/// The quota name a refusal for `max_concurrent_calls` is counted under.
pub const CONCURRENT_CALLS: &str = "adapter_concurrent_calls";
/// The quota name a refusal for `max_cpu_ms_per_sec` is counted under.
pub const CPU_TIME: &str = "adapter_cpu_ms_per_sec";

pub struct Budget {
    state: Mutex<State>,
    /// The tenant's series, where refusals are counted (none for a host without a tenant).
    counters: TenantCounters,
}

struct State {
    ceilings: AdapterCeilings,
    running: u64,
    /// CPU time the tenant may still spend, in microseconds; negative while in debt.
    balance_us: i64,
    refilled: Instant,
}

/// A running call's place; given back when dropped.
pub struct Slot<'a> {
    budget: &'a Budget,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.budget.state.lock().unwrap().running -= 1;
    }
}

impl Budget {
    /// A budget counting its refusals in `counters`.
    pub fn new(ceilings: AdapterCeilings, counters: TenantCounters) -> Budget {
        Budget {
            counters,
            state: Mutex::new(State {
                ceilings,
                running: 0,
                balance_us: burst_us(&ceilings),
                refilled: Instant::now(),
            }),
        }
    }

    /// Applies changed ceilings (the admin API changes them live).
    pub fn set_ceilings(&self, ceilings: AdapterCeilings) {
        let mut s = self.state.lock().unwrap();
        s.ceilings = ceilings;
        s.balance_us = s.balance_us.min(burst_us(&ceilings));
    }

    /// Admits a call, or refuses it with `quota_exceeded` saying which cap and when to retry.
    pub fn enter(&self, stream: &str) -> Result<Slot<'_>, FnError> {
        let mut s = self.state.lock().unwrap();
        s.refill();
        let c = s.ceilings;
        if s.balance_us < 0 {
            let rate = c.max_cpu_ms_per_sec.max(1) as i64;
            // Debt in µs over a rate in ms per s: the wait in ms, rounded up.
            let wait_ms = (-s.balance_us + rate - 1) / rate;
            self.counters.quota_refused(CPU_TIME);
            return Err(quota(
                CPU_TIME,
                format!(
                    "the adapter of stream {stream:?} is refused: this tenant's adapters used more than their {} ms of CPU time per second (adapter_ceilings.max_cpu_ms_per_sec)",
                    c.max_cpu_ms_per_sec
                ),
                Duration::from_millis(wait_ms as u64),
            ));
        }
        if s.running >= c.max_concurrent_calls {
            self.counters.quota_refused(CONCURRENT_CALLS);
            return Err(quota(
                CONCURRENT_CALLS,
                format!(
                    "the adapter of stream {stream:?} is refused: this tenant's adapters are already running {} calls, the most its adapter_ceilings.max_concurrent_calls allows",
                    s.running
                ),
                BUSY_RETRY,
            ));
        }
        s.running += 1;
        Ok(Slot { budget: self })
    }

    /// Charges CPU time a call spent on the engine's threads.
    pub fn charge(&self, used: Duration) {
        let mut s = self.state.lock().unwrap();
        s.refill();
        let used = i64::try_from(used.as_micros()).unwrap_or(i64::MAX);
        s.balance_us = s.balance_us.saturating_sub(used);
    }

    pub fn running(&self) -> u64 {
        self.state.lock().unwrap().running
    }
}

impl State {
    fn refill(&mut self) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_micros() as i64;
        self.refilled = now;
        // µs of CPU per µs of wall time is the rate in ms per s, over 1000.
        let earned = elapsed.saturating_mul(self.ceilings.max_cpu_ms_per_sec as i64) / 1000;
        self.balance_us = self
            .balance_us
            .saturating_add(earned)
            .min(burst_us(&self.ceilings));
    }
}

/// The bucket holds one second of the rate.
fn burst_us(c: &AdapterCeilings) -> i64 {
    (c.max_cpu_ms_per_sec as i64).saturating_mul(1000)
}

/// A refusal in the shape of every quota refusal (`tenants::QuotaExceeded`).
fn quota(quota: &'static str, message: String, retry_after: Duration) -> FnError {
    let ms = retry_after.as_millis().max(1);
    QuotaExceeded {
        quota,
        retry_after: Some(retry_after),
        message: format!("{message}; retry in {ms} ms"),
    }
    .into()
}

/// A future whose polls are timed: the time it held an engine thread, guest code and the
/// host calls it made in line, which is what a tenant's CPU time counts.
pub struct Metered<F> {
    inner: Pin<Box<F>>,
    pub used: Duration,
}

impl<F: Future> Metered<F> {
    pub fn new(inner: F) -> Self {
        Metered {
            inner: Box::pin(inner),
            used: Duration::ZERO,
        }
    }
}

impl<F: Future> Future for Metered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let started = Instant::now();
        let out = self.inner.as_mut().poll(cx);
        self.used += started.elapsed();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ceilings(calls: u64, cpu_ms: u64) -> AdapterCeilings {
        AdapterCeilings {
            max_concurrent_calls: calls,
            max_cpu_ms_per_sec: cpu_ms,
            ..AdapterCeilings::default()
        }
    }

    #[test]
    fn concurrent_calls_are_capped_at_the_ceiling() {
        let g = Budget::new(ceilings(2, 1000), TenantCounters::default());
        let a = g.enter("s").unwrap();
        let _b = g.enter("s").expect("at the cap");
        let e = g.enter("s").err().expect("one past the cap");
        assert_eq!(e.code, "quota_exceeded");
        assert!(e.message.contains("max_concurrent_calls"), "{e}");
        assert_eq!(e.retry_after_ms, Some(50), "{e}");
        drop(a);
        assert!(g.enter("s").is_ok(), "a slot given back is taken again");
    }

    /// The tenant's refusals of `quota`, as `/metrics` shows them.
    fn refusals(metrics: &crate::metrics::Metrics, quota: &str) -> String {
        let text = metrics.render(crate::metrics::Scrape {
            subscriptions: 0,
            wasm_streams: 0,
        });
        let series =
            format!("streamhost_tenant_quota_refusals_total{{tenant=\"t\",quota=\"{quota}\"}} ");
        let line = text.lines().find(|l| l.starts_with(&series));
        line.map_or("none".into(), |l| l[series.len()..].to_owned())
    }

    #[test]
    fn refusals_are_counted_in_the_tenant_series_and_admissions_are_not() {
        for name in [CONCURRENT_CALLS, CPU_TIME] {
            assert!(crate::metrics::QUOTA_NAMES.contains(&name), "{name}");
        }
        let metrics = crate::metrics::Metrics::new(std::sync::Arc::new(Default::default));
        let g = Budget::new(ceilings(1, 100), metrics.tenants.tenant("t"));
        let running = g.enter("s").expect("at the cap");
        assert_eq!(refusals(&metrics, CONCURRENT_CALLS), "none");
        g.enter("s").err().expect("one past the cap");
        g.enter("s").err().expect("one past the cap");
        assert_eq!(refusals(&metrics, CONCURRENT_CALLS), "2");
        drop(running);
        g.charge(Duration::from_millis(100));
        drop(g.enter("s").expect("no debt yet"));
        assert_eq!(refusals(&metrics, CPU_TIME), "none");
        g.charge(Duration::from_millis(500));
        g.enter("s").err().expect("in debt");
        assert_eq!(refusals(&metrics, CPU_TIME), "1");
        assert_eq!(refusals(&metrics, CONCURRENT_CALLS), "2");
    }

    #[test]
    fn cpu_debt_refuses_until_it_refills() {
        let g = Budget::new(ceilings(10, 100), TenantCounters::default());
        // The bucket holds 100 ms; spending exactly that leaves it at zero, still admitted.
        g.charge(Duration::from_millis(100));
        drop(g.enter("s").expect("at the boundary"));
        g.charge(Duration::from_millis(900));
        let e = g.enter("s").err().expect("in debt");
        assert_eq!(e.code, "quota_exceeded");
        assert!(e.message.contains("max_cpu_ms_per_sec"), "{e}");
        // 900 ms of debt at 100 ms/s: about 9 s to wait.
        let ms = e.retry_after_ms.unwrap();
        assert!((8000..=9000).contains(&ms), "{e}");
    }
}
