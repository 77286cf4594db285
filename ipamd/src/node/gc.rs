//! CNI GC: releases this node's attachments of a network that the runtime
//! no longer knows. Errors are collected, not fatal: GC removes what it can.

use std::collections::HashSet;
use std::net::IpAddr;

use tracing::info;

use crate::core::AttachmentState;
use crate::error::{Error, Result};

use super::Node;

impl Node {
    /// `valid`: the (container id, ifname) pairs the runtime still has.
    /// Attachments younger than the grace period are left alone: the
    /// runtime's list may predate an ADD that just finished.
    pub async fn gc(
        &self,
        network: &str,
        valid: &HashSet<(String, String)>,
    ) -> Result<Vec<IpAddr>> {
        let cutoff = self.now().saturating_sub(self.cfg.gc_grace.as_secs());
        let mut released = Vec::new();
        let mut errors = Vec::new();
        let (mine, _) = self.my_attachments().await?;
        for lease in mine {
            let a = lease
                .attachment
                .as_ref()
                .expect("node attachments are attached");
            if a.network != network
                || a.state != AttachmentState::Ready
                || self.inflight.contains(&a.key)
                || a.created_unix > cutoff
                || valid.contains(&(a.key.container_id.clone(), a.key.ifname.clone()))
            {
                continue;
            }
            match self.del_key(&a.key, true, false).await {
                Ok(_) => {
                    info!(key = %a.key, ip = %lease.ip, "GC released a stale attachment");
                    released.push(lease.ip);
                }
                Err(e) => errors.push(format!("{}: {e}", a.key)),
            }
        }
        if errors.is_empty() {
            Ok(released)
        } else {
            Err(Error::internal(format!(
                "GC released {} attachments but failed on {}: {}",
                released.len(),
                errors.len(),
                errors.join("; ")
            )))
        }
    }
}
