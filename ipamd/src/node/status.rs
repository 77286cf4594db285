//! CNI STATUS: whether this node can serve an ADD now: free IPs in the
//! pools on its ToR (`Ipam::free_on`; from the node's view on etcd).

use crate::error::Result;

use super::Node;

/// What STATUS reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub node: String,
    pub tor: String,
    pub ready: bool,
    /// Free IPs over all pools on this node's ToR.
    pub free: u32,
    /// Why the node is not ready, and the command that fixes it.
    pub reason: String,
}

impl Node {
    pub async fn status(&self) -> Status {
        let mut reply = Status {
            node: self.cfg.name.clone(),
            ..Default::default()
        };
        let tor = match self.tor() {
            Ok(t) => t,
            Err(e) => {
                reply.reason = e.to_string();
                return reply;
            }
        };
        reply.tor = tor.clone();
        match self.free_on_tor(&tor).await {
            Err(e) => reply.reason = e.to_string(),
            Ok(None) => {
                reply.reason = format!(
                    "this node's ToR {t} is not defined: add it with `ipamctl tor add {t} ...`",
                    t = tor
                )
            }
            Ok(Some((0, pools))) => {
                reply.reason = if pools == 0 {
                    format!("no pool has IPs on ToR {tor}: create one with `ipamctl pool create`")
                } else {
                    format!("all {pools} pools with IPs on ToR {tor} are full: grow them with `ipamctl pool resize`")
                }
            }
            Ok(Some((free, _))) => {
                reply.ready = true;
                reply.free = free;
            }
        }
        reply
    }

    /// Free IPs over all pools on this node's ToR (all its segments), and how
    /// many pools have IPs there; None when the ToR is not defined.
    async fn free_on_tor(&self, tor: &str) -> Result<Option<(u32, u32)>> {
        let segments: Vec<String> = self
            .ipam
            .segments_of(tor)
            .await?
            .into_iter()
            .map(|t| t.name)
            .collect();
        if segments.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.ipam.free_on(tor, &segments).await?))
    }
}
