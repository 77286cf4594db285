//! What a metrics scrape reports of this node (`api::metrics`): the use of
//! the pools on its ToR, its attachments, the DELs waiting for replay.

use tracing::debug;

use crate::metrics::{PoolUse, Snapshot};
use crate::store::keys;

use super::Node;

impl Node {
    /// The gauges of a scrape. What cannot be read now (the store is down,
    /// the ToR not defined yet) is left out, and the scrape keeps its last
    /// value.
    pub async fn metrics_snapshot(&self) -> Snapshot {
        Snapshot {
            pools: self.pool_use().await,
            attachments: self.attachment_count().await,
            pending_dels: moor_proto::pending::scan(&self.cfg.pending_dir)
                .ok()
                .map(|s| s.records.len() as u64),
        }
    }

    async fn pool_use(&self) -> Option<Vec<PoolUse>> {
        let tor = self.tor().ok()?;
        match self.ipam.usage_on(&tor).await {
            Ok(usage) => Some(
                usage
                    .into_iter()
                    .map(|u| PoolUse {
                        pool: u.pool,
                        tor: u.segment,
                        total: u.counts.total,
                        free: u.counts.free,
                        bound: u.counts.bound,
                        in_use: u.counts.in_use,
                    })
                    .collect(),
            ),
            Err(e) => {
                debug!(error = %e, "metrics: pool use not read; the scrape keeps the last");
                None
            }
        }
    }

    /// This node's attachments: from its mirror (a local file) when it has
    /// one, else one read of the store.
    async fn attachment_count(&self) -> Option<u64> {
        let n = match &self.mirror {
            Some(m) => m.all().await.ok()?.len(),
            None => self
                .ipam
                .store()
                .list_keys(&keys::node_attachments(&self.cfg.name))
                .await
                .ok()?
                .len(),
        };
        Some(n as u64)
    }
}
