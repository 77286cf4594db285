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
            pending_dels: pending_count(&self.cfg.pending_dir),
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
            Some(m) => m.readable().await.ok()?.0.len(),
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

/// The DEL records in `dir`, counted by name (`moor_proto::pending`'s
/// files), not read: a scrape parses nothing. None: unreadable.
fn pending_count(dir: &std::path::Path) -> Option<u64> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(0),
        Err(_) => return None,
    };
    let records = entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            moor_proto::pending::is_record_name(&name)
        })
        .count();
    Some(records as u64)
}
