//! CNI CHECK: the attachment exists, holds the IP the runtime was told, and
//! its wiring is intact. Works from the local mirror during a store outage.

use std::net::IpAddr;

use crate::core::{AttachmentKey, Lease, Tor};
use crate::error::{cni_code, Error, Result};

use super::{link_for, Node};

#[derive(Debug, Clone, Default)]
pub struct CheckRequest {
    pub container_id: String,
    pub ifname: String,
    /// `CNI_NETNS`; empty: the one recorded at ADD.
    pub netns: String,
    /// The IP the runtime's prevResult holds, if it passed one.
    pub address: Option<IpAddr>,
}

impl Node {
    pub async fn check(&self, req: &CheckRequest) -> Result<()> {
        let key = self.key(&req.container_id, &req.ifname)?;
        let Some((lease, tor)) = self.attachment_of(&key).await? else {
            return Err(Error::refused(
                cni_code::NOT_ATTACHED,
                format!("{key} has no attachment on this node: ADD it first"),
            ));
        };
        if let Some(want) = req.address {
            if want != lease.ip {
                return Err(Error::Conflict(format!(
                    "{key} holds {} but prevResult says {want}",
                    lease.ip
                )));
            }
        }
        let netns = if req.netns.is_empty() {
            lease
                .attachment
                .as_ref()
                .map(|a| a.netns.clone())
                .unwrap_or_default()
        } else {
            req.netns.clone()
        };
        let link = link_for(&tor, &lease, &netns)?;
        self.datapath
            .check(&link)
            .await
            .map_err(|e| Error::datapath(format!("{key} ({})", lease.ip), e))
    }

    /// The attachment of `key`, from the store or, when it is out of reach,
    /// from the local mirror. One made during a store outage is in the
    /// mirror alone until the write-back after the outage (up to 5 s).
    async fn attachment_of(&self, key: &AttachmentKey) -> Result<Option<(Lease, Tor)>> {
        // A mirror record that does not decode is left out (as DEL does):
        // the store answers while it is up.
        let cached = match &self.mirror {
            Some(m) => m.get(key).await.ok().flatten(),
            None => None,
        };
        // Where the mirror says it is: found there also outside the leases
        // the node's view follows (the node moved to another ToR).
        let hint = cached
            .as_ref()
            .filter(|c| !c.offline)
            .map(|c| (c.lease.pool.as_str(), c.lease.ip));
        match self.note(self.ipam.attached_at(key, hint).await) {
            Ok(None) => Ok(cached.filter(|c| c.offline).map(|c| (c.lease, c.tor))),
            Ok(Some(lease)) => {
                let tor = self.ipam.tor(&lease.tor).await?.ok_or_else(|| {
                    Error::internal(format!("ToR {} of {} is gone", lease.tor, lease.ip))
                })?;
                Ok(Some((lease, tor)))
            }
            Err(why) if why.is_unavailable() && self.mirror.is_some() => {
                Ok(cached.map(|c| (c.lease, c.tor)))
            }
            Err(e) => Err(e),
        }
    }
}
