//! Per-tenant quotas: what the config says (`Quotas`) and the live meters that hold a tenant
//! to it (`TenantQuotas`).
//!
//! ```yaml
//! quotas:
//!   connections: 1000                     # sockets open at once, clients and workers
//!   connects_per_second: 50               # a number: the burst is the same number
//!   writes_per_second: { per_second: 1000, burst: 5000 }
//!   stored_bytes: null                    # null: no limit
//! ```
//!
//! Two kinds of meter. A count of things held at once (connections, pending invocations,
//! functions, stored bytes) is a [`Slots`]: taking is one compare-and-swap on the count, so
//! two racing admissions can never both pass the last slot, and the permit gives the slot
//! back when dropped. A rate (connects, writes, deliveries) is a [`Bucket`]: a token bucket
//! (governor's GCRA) that also says how long until the refused amount would fit, which goes
//! back to the caller as `retry_after_ms`.
//!
//! Only the excess is refused: a call over quota changes nothing and the tenant's other
//! calls go on. Quotas change live (`TenantQuotas::set`): counts keep what is held, and a
//! changed rate starts a full bucket.

use super::TenantId;
use crate::error::FnError;
use crate::metrics::TenantCounters;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

/// The error code of every refusal for a quota.
pub const QUOTA_EXCEEDED: &str = "quota_exceeded";

/// A rate with its burst: `per_second` on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "RateConfig", into = "RateConfig")]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

impl Rate {
    pub const fn new(per_second: u32, burst: u32) -> Self {
        Rate { per_second, burst }
    }
}

/// `50` or `{ per_second: 50, burst: 200 }`.
#[derive(Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
enum RateConfig {
    Plain(u32),
    Full { per_second: u32, burst: Option<u32> },
}

impl From<RateConfig> for Rate {
    fn from(c: RateConfig) -> Self {
        match c {
            RateConfig::Plain(n) => Rate::new(n, n),
            RateConfig::Full { per_second, burst } => {
                Rate::new(per_second, burst.unwrap_or(per_second))
            }
        }
    }
}

impl From<Rate> for RateConfig {
    fn from(r: Rate) -> Self {
        RateConfig::Full {
            per_second: r.per_second,
            burst: Some(r.burst),
        }
    }
}

/// A tenant's quotas; `None` (`null` in the config) is no limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    /// Sockets open at once, clients and workers together.
    pub connections: Option<u64>,
    /// New sockets (upgrades admitted) per second.
    pub connects_per_second: Option<Rate>,
    /// Subscriptions one client socket may hold.
    pub subscriptions_per_connection: Option<u64>,
    /// `stream::set`, `update`, `delete` and `send` calls per second.
    pub writes_per_second: Option<Rate>,
    /// Frames fanned out to the tenant's clients per second.
    pub deliveries_per_second: Option<Rate>,
    /// What the tenant's items take in its store, as compact JSON.
    pub stored_bytes: Option<u64>,
    /// One item, as compact JSON (the engine's own `max_item_bytes` still applies).
    pub item_bytes: Option<u64>,
    /// Functions the tenant's workers may register.
    pub functions: Option<u64>,
    /// Invocations waiting for an answer from the tenant's workers.
    pub pending_invocations: Option<u64>,
}

impl Default for Quotas {
    /// Safe defaults for a tenant the operator lists: room for a real application, not for
    /// one tenant to take the engine.
    fn default() -> Self {
        Quotas {
            connections: Some(10_000),
            connects_per_second: Some(Rate::new(200, 1_000)),
            subscriptions_per_connection: Some(1_000),
            writes_per_second: Some(Rate::new(5_000, 10_000)),
            deliveries_per_second: Some(Rate::new(1_000_000, 2_000_000)),
            stored_bytes: Some(1 << 30),
            item_bytes: Some(512 << 10),
            functions: Some(1_000),
            pending_invocations: Some(10_000),
        }
    }
}

impl Quotas {
    /// No limit at all: the `default` tenant when the config does not list it, so that an
    /// engine without tenants runs as it always has.
    pub const UNLIMITED: Quotas = Quotas {
        connections: None,
        connects_per_second: None,
        subscriptions_per_connection: None,
        writes_per_second: None,
        deliveries_per_second: None,
        stored_bytes: None,
        item_bytes: None,
        functions: None,
        pending_invocations: None,
    };

    pub(super) fn validate(&self) -> anyhow::Result<()> {
        let rates = [
            ("connects_per_second", self.connects_per_second),
            ("writes_per_second", self.writes_per_second),
            ("deliveries_per_second", self.deliveries_per_second),
        ];
        for (name, rate) in rates {
            if let Some(r) = rate
                && (r.per_second == 0 || r.burst == 0)
            {
                anyhow::bail!(
                    "quotas.{name} must be at least 1 (per_second and burst); write `null` for no limit"
                );
            }
        }
        Ok(())
    }
}

/// A refusal for a quota: which one, and when the refused amount would fit.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaExceeded {
    pub quota: &'static str,
    /// None: it will never fit (more than the quota at once) or waits on others' releases.
    pub retry_after: Option<Duration>,
    pub message: String,
}

impl QuotaExceeded {
    pub fn retry_after_ms(&self) -> Option<u64> {
        self.retry_after.map(|d| d.as_millis().max(1) as u64)
    }
}

impl From<QuotaExceeded> for FnError {
    fn from(e: QuotaExceeded) -> Self {
        let mut err = FnError::new(QUOTA_EXCEEDED, e.message.clone());
        err.retry_after_ms = e.retry_after_ms();
        err
    }
}

impl std::fmt::Display for QuotaExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for QuotaExceeded {}

/// A count of things held at once, with a maximum (`u64::MAX`: none).
#[derive(Debug)]
pub struct Slots {
    quota: &'static str,
    used: AtomicU64,
    max: AtomicU64,
}

impl Slots {
    pub fn new(quota: &'static str, max: Option<u64>) -> Arc<Self> {
        Arc::new(Slots {
            quota,
            used: AtomicU64::new(0),
            max: AtomicU64::new(max.unwrap_or(u64::MAX)),
        })
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> Option<u64> {
        Some(self.max.load(Ordering::Relaxed)).filter(|m| *m != u64::MAX)
    }

    fn set_max(&self, max: Option<u64>) {
        self.max.store(max.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Takes `n`, all or none, held until the permit drops.
    pub fn take(self: &Arc<Self>, n: u64) -> Result<SlotPermit, QuotaExceeded> {
        self.add(n)?;
        Ok(SlotPermit {
            slots: self.clone(),
            n,
        })
    }

    /// Takes `n` without a permit (stored bytes, given back by [`Slots::release`]).
    pub fn add(&self, n: u64) -> Result<(), QuotaExceeded> {
        let max = self.max.load(Ordering::Relaxed);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= max)
            })
            .map(drop)
            .map_err(|used| QuotaExceeded {
                quota: self.quota,
                retry_after: None,
                message: format!(
                    "over the `{}` quota: {used} of {max} in use and {n} more asked; wait for some to be released, or ask the operator to raise `quotas.{}`",
                    self.quota, self.quota
                ),
            })
    }

    /// Counts `n` as held whatever the maximum: what is already there (the bytes a durable
    /// store holds at start) is held, even past a quota lowered since.
    pub fn hold(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_add(n))
            });
    }

    /// Gives back `n` taken by [`Slots::add`].
    pub fn release(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(n))
            });
    }
}

/// Slots held; given back on drop.
#[derive(Debug)]
pub struct SlotPermit {
    slots: Arc<Slots>,
    n: u64,
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        self.slots.release(self.n);
    }
}

/// A token bucket; no limiter means no limit.
pub struct Bucket {
    quota: &'static str,
    limiter: RwLock<Option<(Rate, Arc<DefaultDirectRateLimiter>)>>,
}

impl Bucket {
    pub fn new(quota: &'static str, rate: Option<Rate>) -> Self {
        let bucket = Bucket {
            quota,
            limiter: RwLock::new(None),
        };
        bucket.set(rate);
        bucket
    }

    fn set(&self, rate: Option<Rate>) {
        let mut slot = self.limiter.write().unwrap_or_else(PoisonError::into_inner);
        if slot.as_ref().map(|(r, _)| *r) == rate {
            return;
        }
        *slot = rate.and_then(|r| {
            let quota = Quota::per_second(NonZeroU32::new(r.per_second)?)
                .allow_burst(NonZeroU32::new(r.burst)?);
            Some((r, Arc::new(RateLimiter::direct(quota))))
        });
    }

    /// Takes `n` tokens, all or none.
    pub fn take(&self, n: u32) -> Result<(), QuotaExceeded> {
        let limiter = self
            .limiter
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some((rate, limiter)) = limiter else {
            return Ok(());
        };
        let Some(n) = NonZeroU32::new(n) else {
            return Ok(());
        };
        let quota = self.quota;
        match limiter.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Err(QuotaExceeded {
                    quota,
                    retry_after: Some(wait),
                    message: format!(
                        "over the `{quota}` quota ({} per second, bursts of {}): retry in {} ms, or ask the operator to raise `quotas.{quota}`",
                        rate.per_second,
                        rate.burst,
                        wait.as_millis().max(1)
                    ),
                })
            }
            Err(_) => Err(QuotaExceeded {
                quota,
                retry_after: None,
                message: format!(
                    "{n} at once is more than the `{quota}` quota's burst of {}: split it, or ask the operator to raise `quotas.{quota}`",
                    rate.burst
                ),
            }),
        }
    }
}

/// The live meters of one tenant, held by its space and shared with its functions.
pub struct TenantQuotas {
    pub tenant: TenantId,
    pub connections: Arc<Slots>,
    pub connects: Bucket,
    subscriptions_per_connection: AtomicU64,
    pub writes: Bucket,
    pub deliveries: Bucket,
    pub stored_bytes: Arc<Slots>,
    item_bytes: AtomicU64,
    pub functions: Arc<Slots>,
    pub pending_invocations: Arc<Slots>,
    counters: TenantCounters,
}

impl TenantQuotas {
    pub fn new(tenant: TenantId, quotas: &Quotas, counters: TenantCounters) -> Arc<Self> {
        let q = quotas;
        Arc::new(TenantQuotas {
            tenant,
            connections: Slots::new("connections", q.connections),
            connects: Bucket::new("connects_per_second", q.connects_per_second),
            subscriptions_per_connection: AtomicU64::new(max(q.subscriptions_per_connection)),
            writes: Bucket::new("writes_per_second", q.writes_per_second),
            deliveries: Bucket::new("deliveries_per_second", q.deliveries_per_second),
            stored_bytes: Slots::new("stored_bytes", q.stored_bytes),
            item_bytes: AtomicU64::new(max(q.item_bytes)),
            functions: Slots::new("functions", q.functions),
            pending_invocations: Slots::new("pending_invocations", q.pending_invocations),
            counters,
        })
    }

    /// Applies changed quotas; what is held stays held.
    pub fn set(&self, q: &Quotas) {
        self.connections.set_max(q.connections);
        self.connects.set(q.connects_per_second);
        self.subscriptions_per_connection
            .store(max(q.subscriptions_per_connection), Ordering::Relaxed);
        self.writes.set(q.writes_per_second);
        self.deliveries.set(q.deliveries_per_second);
        self.stored_bytes.set_max(q.stored_bytes);
        self.item_bytes.store(max(q.item_bytes), Ordering::Relaxed);
        self.functions.set_max(q.functions);
        self.pending_invocations.set_max(q.pending_invocations);
    }

    pub fn subscriptions_per_connection(&self) -> u64 {
        self.subscriptions_per_connection.load(Ordering::Relaxed)
    }

    pub fn item_bytes(&self) -> u64 {
        self.item_bytes.load(Ordering::Relaxed)
    }

    /// Counts a refusal in the tenant's metrics and hands it on; every refusal goes through
    /// here, so `streamhost_tenant_quota_refusals_total` misses none.
    pub fn refused(&self, e: QuotaExceeded) -> QuotaExceeded {
        self.counters.quota_refused(e.quota);
        e
    }

    /// A refusal for a count that is not metered by slots (subscriptions on one socket,
    /// the size of one item).
    pub fn over(&self, quota: &'static str, what: String) -> QuotaExceeded {
        self.refused(QuotaExceeded {
            quota,
            retry_after: None,
            message: format!(
                "{what}: over the `{quota}` quota; ask the operator to raise `quotas.{quota}`"
            ),
        })
    }
}

fn max(limit: Option<u64>) -> u64 {
    limit.unwrap_or(u64::MAX)
}

#[cfg(test)]
#[path = "quotas_tests.rs"]
mod tests;
