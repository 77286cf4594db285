//! DELs recorded while ipamd or the store was out of reach: the plugin (or
//! ipamd itself, in an outage) leaves one file per DEL in the pending-DEL
//! directory; they are applied after a start, every few seconds, and before
//! an ADD of the same attachment.

use tracing::{info, warn};

use crate::core::AttachmentKey;
use crate::error::{Error, Result};

use super::Node;

impl Node {
    /// Applies every DEL the plugin recorded while ipamd was unreachable.
    pub async fn replay_pending_dels(&self) -> Result<usize> {
        let scan = match moor_proto::pending::scan(&self.cfg.pending_dir) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => {
                return Err(Error::internal_from(
                    format!(
                        "reading pending DELs in {}: {e}",
                        self.cfg.pending_dir.display()
                    ),
                    e,
                ))
            }
        };
        for s in &scan.skipped {
            warn!(path = %s.path.display(), reason = %s.reason, "skipping a file in the pending-DEL directory");
        }
        let mut n = 0;
        for (path, rec) in scan.records {
            let key = AttachmentKey {
                node: self.cfg.name.clone(),
                container_id: rec.container_id.clone(),
                ifname: rec.ifname.clone(),
            };
            // Not deferred again: on failure the record stays for the next try.
            match self.del_key(&key, false, rec.rollback).await {
                Ok(_) => {}
                // It waits for the repair; the others go on.
                Err(e) if e.is_corrupt() => {
                    warn!(%key, error = %e, "a recorded DEL waits for its record to be repaired");
                    continue;
                }
                Err(e) => return Err(e),
            }
            let _ = moor_proto::pending::remove(&path);
            info!(%key, "applied a DEL recorded while ipamd or the store was out of reach");
            n += 1;
        }
        Ok(n)
    }

    /// The DEL recorded for `key`, if any, applied now.
    pub(super) async fn replay_pending_del(&self, key: &AttachmentKey) -> Result<()> {
        let path =
            moor_proto::pending::path_for(&self.cfg.pending_dir, &key.container_id, &key.ifname);
        if let Ok(raw) = std::fs::read(&path) {
            let rollback = serde_json::from_slice::<moor_proto::pending::PendingDel>(&raw)
                .map(|r| r.rollback)
                .unwrap_or(false);
            self.del_key(key, false, rollback).await?;
            let _ = moor_proto::pending::remove(&path);
        }
        Ok(())
    }
}
