//! What a `stream::*` write costs its tenant, taken before the write is made.
//!
//! A write is admitted in this order: one token of `writes_per_second`, taken when the call
//! is admitted (`Functions::begin`), before it is dispatched, so that a tenant far over its
//! rate costs the engine no task and no turn for the excess; then, in the call, the item's
//! size (`item_bytes`, with the engine's `max_item_bytes`), room in `stored_bytes` (a
//! reservation, given back if anything after it refuses or the write fails), then one token
//! of `deliveries_per_second` per socket subscribed to what the write touches. Tokens cannot
//! be given back, so a write refused after its write token has used it; it stores and sends
//! nothing. A client's join to a group that keeps presence takes deliveries the same way, for
//! the presence frames it may cause (`presence_join`); refused, it is not made.
//!
//! Each meter is taken in one atomic step (`Slots`, `Bucket`), so racing writes can never
//! pass the same last unit. What is measured, and where it is approximate:
//! - deliveries are counted from this node's subscribers to the write's group (and item)
//!   before the write: what a stream's fan-out hook makes of the event, and subscribers that
//!   come or go meanwhile, are not counted again; other nodes (Redis) do not charge them;
//! - stored bytes are the compact-JSON sizes of what `stream::set`, `update` and `delete`
//!   put in and take out, on top of what the tenant's store held when its space opened
//!   ([`load_stored_bytes`]: every item there, a WebAssembly adapter's own `store` writes
//!   included, which are not counted while it runs). A `set` needs room for its new value
//!   before the old one's bytes are given back, and an `update`, whose result is known only
//!   once made, needs room for the largest item it could make; what it did not use is
//!   given back.

use super::Functions;
use crate::error::FnError;
use crate::fanout::hub::ConnId;
use crate::json::Json;
use crate::storage::StreamAdapter;
use crate::tenants::{QuotaExceeded, Slots, TenantQuotas};
use std::sync::Arc;

/// The largest item the tenant may store: the engine's limit, or its tighter quota.
pub fn item_limit(functions: &Functions) -> u64 {
    let engine = functions.value_limits().max_item_bytes as u64;
    engine.min(functions.quotas.item_bytes())
}

/// The size of a stored value: its text's (compact JSON, unless another store wrote it).
pub fn size(value: &Json) -> u64 {
    value.len() as u64
}

/// Refuses a value past the tenant's `item_bytes` (the engine's own limit is checked first,
/// with its own error).
pub fn item_bytes(functions: &Functions, what: &str, bytes: u64) -> Result<(), FnError> {
    let quota = functions.quotas.item_bytes();
    if bytes <= quota {
        return Ok(());
    }
    let why = format!("{what} is {bytes} bytes as JSON; the tenant's limit is {quota}");
    Err(functions.quotas.over("item_bytes", why).into())
}

/// Takes one token of `writes_per_second`: the first check of a write, made when the call
/// is admitted, before it is dispatched.
pub fn write_token(functions: &Functions) -> Result<(), FnError> {
    let quotas = &functions.quotas;
    quotas.writes.take(1).map_err(|e| refused(quotas, e))
}

/// Takes the deliveries a write (whose write token is taken) would make to
/// `stream / group` (and `item`).
pub fn write(
    functions: &Functions,
    stream: &str,
    group: &str,
    item: Option<&str>,
) -> Result<(), FnError> {
    let quotas = &functions.quotas;
    let audience = functions.hub.audience(stream, group, item);
    let cost = u32::try_from(audience).unwrap_or(u32::MAX);
    quotas.deliveries.take(cost).map_err(|e| {
        let mut e = e;
        e.message = format!(
            "the write would send {audience} events to subscribers: {}",
            e.message
        );
        refused(quotas, e)
    })
}

/// Takes the presence frames a client's join to `stream / group` may send (see
/// `fanout::presence::join_cost`): nothing on a stream that does not keep presence.
pub fn presence_join(
    functions: &Functions,
    stream: &str,
    group: &str,
    conn: ConnId,
    watch: bool,
) -> Result<(), FnError> {
    let quotas = &functions.quotas;
    let cost = functions.hub.presence_cost(stream, group, conn, watch);
    let n = u32::try_from(cost).unwrap_or(u32::MAX);
    quotas.deliveries.take(n).map_err(|mut e| {
        e.message = format!(
            "the join would send {cost} presence frames (its join and later leave to each connection watching the group, and its snapshot); it was not made: {}",
            e.message
        );
        refused(quotas, e)
    })
}

fn refused(quotas: &TenantQuotas, e: QuotaExceeded) -> FnError {
    quotas.refused(e).into()
}

/// Stored bytes taken for a write, given back on drop unless settled.
pub struct Reserved {
    slots: Arc<Slots>,
    held: u64,
}

impl Reserved {
    /// Reserves `bytes` of the tenant's `stored_bytes`; `why` says what they are for.
    pub fn take(functions: &Functions, bytes: u64, why: &str) -> Result<Reserved, FnError> {
        let quotas = &functions.quotas;
        let slots = quotas.stored_bytes.clone();
        slots.add(bytes).map_err(|mut e| {
            e.message = format!("{why}: {}", e.message);
            refused(quotas, e)
        })?;
        Ok(Reserved { slots, held: bytes })
    }

    /// The write is made: `new` bytes stay stored (at most what was reserved), and the
    /// `old` value's bytes are given back.
    pub fn settle(mut self, new: u64, old: u64) {
        let kept = new.min(self.held);
        self.slots.release(self.held - kept + old);
        self.held = 0;
    }
}

impl Reserved {
    /// As [`settle`](Self::settle), once the write is on disk; a write whose sync fails
    /// gives its reservation back (see `storage::synced`).
    pub fn settle_after_sync(self, new: u64, old: u64) {
        crate::storage::synced::after_sync(move |synced| {
            if synced.is_ok() {
                self.settle(new, old);
            }
        });
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.slots.release(self.held);
    }
}

/// Gives back the bytes of a deleted item.
pub fn freed(functions: &Functions, old: &Option<Json>) {
    if let Some(old) = old {
        let (quotas, bytes) = (functions.quotas.clone(), size(old));
        // Once the delete is on disk (see `storage::synced`).
        crate::storage::synced::after_sync(move |synced| {
            if synced.is_ok() {
                quotas.stored_bytes.release(bytes);
            }
        });
    }
}

/// Counts what `store` already holds against the tenant's `stored_bytes`, so that a restart
/// does not give the quota back: the compact-JSON size of every item, read once when the
/// tenant's space opens (before the engine serves, or as an added tenant's space opens).
/// Returns the bytes counted.
pub async fn load_stored_bytes(
    quotas: &TenantQuotas,
    store: &dyn StreamAdapter,
) -> anyhow::Result<u64> {
    let mut total = 0u64;
    for (stream, groups) in store.list_all().await? {
        for group in groups {
            let items = store.list(&stream, &group).await?;
            total = items.iter().map(size).fold(total, u64::saturating_add);
        }
    }
    quotas.stored_bytes.hold(total);
    Ok(total)
}
