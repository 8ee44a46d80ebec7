//! Where each tenant's items live: the configured adapter, one store per tenant.
//!
//! - in memory: a store of its own per tenant;
//! - on disk (`file_path: DIR`): the `default` tenant in `DIR` itself, as iii has it, and
//!   tenant `T` in `DIR/../tenants/T`, a log of its own;
//! - Redis: one connection per node, each tenant under its own key prefix and channel
//!   (`storage::redis::KeySpace`); `default` keeps iii's layout.
//!
//! Deleting a tenant closes its store but leaves its data where it is: putting the tenant
//! back finds it again.

use crate::config::AdapterConfig;
use crate::storage::StreamAdapter;
use crate::storage::kv_store::KvStore;
use crate::storage::redis::RedisAdapter;
use crate::tenants::TenantId;
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub enum Stores {
    Memory,
    Files { root: PathBuf },
    Redis(Arc<RedisAdapter>),
}

impl Stores {
    /// Opens the `default` tenant's store, and returns how to open the others'.
    pub async fn open_default(
        config: &AdapterConfig,
    ) -> anyhow::Result<(Arc<dyn StreamAdapter>, Stores)> {
        Ok(match config {
            AdapterConfig::KvMemory => (Arc::new(KvStore::in_memory()), Stores::Memory),
            AdapterConfig::KvFile { path } => {
                let root = path.parent().unwrap_or(Path::new(".")).join("tenants");
                (Arc::new(KvStore::open(path)?), Stores::Files { root })
            }
            AdapterConfig::Redis { url, presence_ttl } => {
                let redis = Arc::new(RedisAdapter::connect(url).await?);
                redis.set_presence_ttl(*presence_ttl);
                (redis.clone(), Stores::Redis(redis))
            }
        })
    }

    /// Opens the store of a tenant other than `default`.
    pub fn open(&self, tenant: &TenantId) -> anyhow::Result<Arc<dyn StreamAdapter>> {
        Ok(match self {
            Stores::Memory => Arc::new(KvStore::in_memory()),
            Stores::Files { root } => {
                let dir = root.join(tenant.as_str());
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                Arc::new(KvStore::open(&dir)?)
            }
            Stores::Redis(redis) => Arc::new(redis.for_tenant(tenant.as_str())?),
        })
    }
}
