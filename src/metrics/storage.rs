//! The storage backend's own counters, read from it at each scrape.
//!
//! A backend is built before the engine and its registry (and also by tools and benches that
//! have none), so it keeps counting where it always has, and says what it counted through
//! `StreamAdapter::telemetry`. A counter the backend does not have is left out, rather than
//! shown as a zero that would mean "nothing went wrong".

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use std::sync::Arc;

/// A backend's own counters; None where the backend has no such thing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Telemetry {
    /// Events this node could not send to the other nodes (Redis slow or away).
    pub dropped_publications: Option<u64>,
    /// Bytes of a torn last write cut off the log when the store was opened.
    pub log_truncated_bytes: Option<u64>,
}

/// Reads the backend's counters; metrics knows the backend only through this.
pub type ReadTelemetry = Arc<dyn Fn() -> Telemetry + Send + Sync>;

pub struct StorageCollector(pub ReadTelemetry);

impl std::fmt::Debug for StorageCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StorageCollector")
    }
}

impl Collector for StorageCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let telemetry = (self.0)();
        let counters = [
            (
                "streamhost_redis_publications_dropped",
                "Events not sent to the other nodes because Redis was slow or unreachable (the other nodes then resync their clients).",
                telemetry.dropped_publications,
            ),
            (
                "streamhost_wal_truncated_bytes",
                "Bytes of a torn last write cut off the write-ahead log when the store was opened.",
                telemetry.log_truncated_bytes,
            ),
        ];
        for (name, help, value) in counters {
            let Some(value) = value else { continue };
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}
