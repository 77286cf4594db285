//! `ipamctl ip evict`: take a kept IP back from the pod that holds it (the
//! Mogujie ask: delete one StatefulSet instance by its IP).

use std::net::IpAddr;

use tracing::warn;

use crate::core::Attachment;
use crate::error::{Error, Result};
use crate::ipam::{registry, IpView};

use super::Node;

/// What an evict did.
#[derive(Debug, Clone)]
pub struct Evicted {
    /// The IP after the change.
    pub ip: IpView,
    /// The binding is gone now.
    pub released: bool,
    /// The binding goes with the holder's DEL.
    pub pending: bool,
    /// The pod that held the IP.
    pub holder: Option<Attachment>,
    pub message: String,
}

impl Node {
    /// Frees a bound IP, or marks a held one so its binding goes with the
    /// pod; with `force`, also ends the attachment when it is on this node
    /// (the pod loses its interface) or on a node that is not alive (its DEL
    /// will never come).
    pub async fn evict(&self, ip: IpAddr, force: bool) -> Result<Evicted> {
        // A forced evict that will be refused must change nothing: check the
        // holder's node before marking anything.
        if force {
            let now = self.ipam.ip(ip).await?;
            if let Some(h) = now.lease.as_ref().and_then(|l| l.attachment.as_ref()) {
                if h.key.node != self.cfg.name && self.node_alive(&h.key.node).await? {
                    return Err(Error::Conflict(format!(
                        "{ip} is held by pod {} (container {} on node {}) and node {} is alive: delete the pod (kubectl delete pod -n {} {}) or run the evict on that node",
                        h.pod, h.key.container_id, h.key.node, h.key.node, h.pod.namespace, h.pod.name
                    )));
                }
            }
        }
        let (view, released, holder) = self.ipam.mark_evict(ip).await?;
        let Some(h) = holder else {
            let message = if released {
                format!("{ip} was kept for a pod that is not running; it is free now")
            } else {
                format!("{ip} is free; nothing to evict")
            };
            return Ok(Evicted {
                ip: view,
                released,
                pending: false,
                holder: None,
                message,
            });
        };
        let who = format!(
            "pod {} (container {} on node {})",
            h.pod, h.key.container_id, h.key.node
        );
        if !force {
            let message = format!(
                "{ip} is held by {who}; its binding goes when that pod is deleted (kubectl delete pod -n {} {}); --force ends the attachment now if node {} is this node or not alive",
                h.pod.namespace, h.pod.name, h.key.node
            );
            return Ok(Evicted {
                ip: view,
                released,
                pending: true,
                holder: Some(h),
                message,
            });
        }
        if h.key.node == self.cfg.name {
            self.del_key(&h.key, false, false).await?;
        } else {
            // Checked above; a node that came alive since is only a race
            // with its own DEL, which releases the same attachment.
            let at = Some((view.pool.as_str(), view.ip));
            self.ipam.release_at(&h.key, false, at).await?;
        }
        warn!(%ip, holder = %h.key, "evicted by force");
        Ok(Evicted {
            ip: self.ipam.ip(ip).await?,
            released: true,
            pending: false,
            message: format!("{ip} was held by {who}; the attachment and the binding are released"),
            holder: Some(h),
        })
    }

    async fn node_alive(&self, node: &str) -> Result<bool> {
        let now = self.now();
        // Only `node`'s own record must decode: another's damage says
        // nothing about this one.
        let (nodes, unreadable) = registry::nodes_readable(self.ipam.store().as_ref()).await?;
        if unreadable.iter().any(|n| n == node) {
            let key = crate::store::keys::node(node);
            let e = self
                .ipam
                .store()
                .get(&key)
                .await?
                .map(|e| crate::store::decode::<registry::NodeRecord>(&e));
            if let Some(Err(e)) = e {
                return Err(e.into());
            }
        }
        Ok(nodes.iter().any(|n| n.name == node && n.alive(now)))
    }
}
