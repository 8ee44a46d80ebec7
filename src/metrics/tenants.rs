//! Per-tenant series: sockets open by kind, calls and failed calls, frames delivered (and the
//! presence frames among them), and subscriptions (set at each scrape from the tenant's hub).
//!
//! Tenant ids come from the operator, not from peers, and a tenant's series go when the
//! tenant is deleted (`forget`), so the label's cardinality is the number of tenants; it is
//! still capped at [`MAX_TENANTS`], past which new tenants count together as `other`.

use super::families::Bounded;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// The quotas a refusal can be for (`tenants::quotas`, and a tenant's adapter ceilings in
/// `storage::wasm::budget`), so that a deleted tenant's series can all be found.
pub const QUOTA_NAMES: [&str; 11] = [
    "connections",
    "connects_per_second",
    "subscriptions_per_connection",
    "writes_per_second",
    "deliveries_per_second",
    "stored_bytes",
    "item_bytes",
    "functions",
    "pending_invocations",
    "adapter_concurrent_calls",
    "adapter_cpu_ms_per_sec",
];

/// Tenants with series of their own; more count as [`OTHER`].
pub const MAX_TENANTS: usize = 1000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabel {
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuotaLabels {
    tenant: String,
    quota: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SocketLabels {
    tenant: String,
    kind: &'static str,
}

/// One tenant's series, held by its space (hub, functions, socket list).
#[derive(Clone, Default)]
pub struct TenantCounters {
    pub clients: Gauge,
    pub workers: Gauge,
    pub calls: Counter,
    pub call_errors: Counter,
    pub delivered: Counter,
    pub presence_frames: Counter,
    pub subscriptions: Gauge,
    /// Refusals by quota; the quota names are the engine's own, a fixed few.
    refusals: Option<(Family<QuotaLabels, Counter>, String)>,
}

impl TenantCounters {
    pub fn quota_refused(&self, quota: &'static str) {
        if let Some((family, tenant)) = &self.refusals {
            family
                .get_or_create(&QuotaLabels {
                    tenant: tenant.clone(),
                    quota,
                })
                .inc();
        }
    }
}

#[derive(Clone)]
pub struct TenantFamilies(Arc<Inner>);

struct Inner {
    sockets: Family<SocketLabels, Gauge>,
    calls: Family<TenantLabel, Counter>,
    call_errors: Family<TenantLabel, Counter>,
    delivered: Family<TenantLabel, Counter>,
    presence_frames: Family<TenantLabel, Counter>,
    subscriptions: Family<TenantLabel, Gauge>,
    refusals: Family<QuotaLabels, Counter>,
    named: Bounded<TenantCounters>,
}

impl Default for TenantFamilies {
    fn default() -> Self {
        TenantFamilies(Arc::new(Inner {
            sockets: Family::default(),
            calls: Family::default(),
            call_errors: Family::default(),
            delivered: Family::default(),
            presence_frames: Family::default(),
            subscriptions: Family::default(),
            refusals: Family::default(),
            named: Bounded::new(MAX_TENANTS),
        }))
    }
}

impl TenantFamilies {
    pub(super) fn register(&self, registry: &mut Registry) {
        let i = &*self.0;
        registry.register(
            "streamhost_tenant_connections",
            "Sockets open, by tenant and kind (client or worker)",
            i.sockets.clone(),
        );
        registry.register(
            "streamhost_tenant_subscriptions",
            "Subscriptions held by a tenant's client sockets",
            i.subscriptions.clone(),
        );
        registry.register(
            "streamhost_tenant_calls",
            "Function calls made in a tenant",
            i.calls.clone(),
        );
        registry.register(
            "streamhost_tenant_call_errors",
            "Function calls made in a tenant that failed",
            i.call_errors.clone(),
        );
        registry.register(
            "streamhost_tenant_frames_delivered",
            "Frames queued for a tenant's client sockets",
            i.delivered.clone(),
        );
        registry.register(
            "streamhost_tenant_presence_frames",
            "Presence frames (snapshot, join, leave) queued for a tenant's client sockets; counted in its frames delivered too",
            i.presence_frames.clone(),
        );
        registry.register(
            "streamhost_tenant_quota_refusals",
            "Calls, upgrades and frames refused because a tenant was over a quota, by quota",
            i.refusals.clone(),
        );
    }

    /// The series of `tenant` (made the first time).
    pub fn tenant(&self, tenant: &str) -> TenantCounters {
        let i = &*self.0;
        i.named.get(tenant, |label| {
            let t = TenantLabel {
                tenant: label.to_owned(),
            };
            let sockets = |kind| SocketLabels {
                tenant: label.to_owned(),
                kind,
            };
            TenantCounters {
                clients: i.sockets.get_or_create_owned(&sockets("client")),
                workers: i.sockets.get_or_create_owned(&sockets("worker")),
                calls: i.calls.get_or_create_owned(&t),
                call_errors: i.call_errors.get_or_create_owned(&t),
                delivered: i.delivered.get_or_create_owned(&t),
                presence_frames: i.presence_frames.get_or_create_owned(&t),
                subscriptions: i.subscriptions.get_or_create_owned(&t),
                refusals: Some((i.refusals.clone(), label.to_owned())),
            }
        })
    }

    /// Drops a deleted tenant's series.
    pub fn forget(&self, tenant: &str) {
        let i = &*self.0;
        if !i.named.remove(tenant) {
            return;
        }
        let t = TenantLabel {
            tenant: tenant.to_owned(),
        };
        for kind in ["client", "worker"] {
            i.sockets.remove(&SocketLabels {
                tenant: tenant.to_owned(),
                kind,
            });
        }
        i.calls.remove(&t);
        i.call_errors.remove(&t);
        i.delivered.remove(&t);
        i.presence_frames.remove(&t);
        i.subscriptions.remove(&t);
        // Label sets by quota: keep those of other tenants.
        let quotas = i.refusals.clone();
        for quota in QUOTA_NAMES {
            quotas.remove(&QuotaLabels {
                tenant: tenant.to_owned(),
                quota,
            });
        }
    }
}
