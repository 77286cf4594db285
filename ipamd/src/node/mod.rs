//! The CNI operations of one node, joining the allocation service (which IP)
//! and the datapath (the veth), in the order that survives kill -9 at any
//! point:
//!
//! ADD: mark it in flight -> record the attachment (one commit) -> wire ->
//!   unmark -> reply. A restart rolls back every ADD still marked
//!   (`inflight`): the runtime never got a result for it, and it retries ADD
//!   after a DEL.
//! DEL: unwire -> release. A crash in between leaves an attachment whose
//!   link is gone; the runtime's retried DEL (or GC) finishes it.
//!
//! One `impl Node`, one file per operation: `add`, `del`, `check`,
//! `status`, `gc`, `evict`, `offline` (ADD and its write-back during a store
//! outage), `pending` (DELs recorded while ipamd or the store was out of
//! reach), `recover` (after a start), `health` (whether the store answers).
//! `sweep`, `mirror`, `heartbeat` and `tasks` are the node's background
//! work. Requests and outcomes are domain types; the API layer translates
//! the wire.

mod add;
mod check;
mod del;
mod evict;
mod gc;
mod health;
pub mod heartbeat;
pub mod inflight;
mod metrics;
pub mod mirror;
mod offline;
mod pending;
mod placement;
mod recover;
mod status;
pub mod sweep;
pub mod tasks;
mod timing;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use ipnetwork::{IpNetwork, Ipv6Network};
use moor_proto::fields;

use crate::clock::Clock;
use crate::core::{AttachmentKey, Lease, OwnerKind, Tor};
use crate::datapath::{Datapath, PodIpv6, PodLink};
use crate::error::{cni_code, Error, Result};
use crate::ipam::Ipam;
use crate::kubernetes::Cluster;

pub use add::{AddRequest, Added};
pub use check::CheckRequest;
pub use del::Deleted;
pub use evict::Evicted;
pub use mirror::{Mirror, Mirrored};
pub use status::Status;

pub struct NodeConfig {
    pub name: String,
    pub tor: String,
    /// Where the plugin leaves DELs it could not hand to ipamd.
    pub pending_dir: PathBuf,
    /// GC leaves attachments younger than this alone: the runtime's list of
    /// valid attachments may predate an ADD that just finished.
    pub gc_grace: Duration,
    /// Owner kinds whose pods keep their IP under the `auto` policy (read
    /// from the Kubernetes API).
    pub sticky_kinds: Vec<OwnerKind>,
}

pub struct Node {
    pub cfg: NodeConfig,
    pub ipam: Arc<Ipam>,
    pub datapath: Arc<dyn Datapath>,
    /// This node's attachments in a local file, when the shared store is
    /// remote (etcd): DEL, CHECK, GC and restarts keep working in an outage.
    pub mirror: Option<Mirror>,
    pub clock: Arc<dyn Clock>,
    /// The Kubernetes API (pods, namespaces, this node), when ipamd has one.
    pub cluster: Option<Arc<dyn Cluster>>,
    health: health::StoreHealth,
    /// The datapath was reconciled with this node's attachments (once, at
    /// the first `recover`, before ADDs are served).
    reconciled: AtomicBool,
    /// ADDs running now, marked so a crash's leftovers are rolled back.
    inflight: inflight::InFlight,
    /// Attachments made during an outage waiting for an earlier instance of
    /// their pod to let go of the IP, since when (`offline.rs`).
    offline_waits: std::sync::Mutex<std::collections::HashMap<crate::core::AttachmentKey, u64>>,
}

impl Node {
    pub fn new(
        cfg: NodeConfig,
        ipam: Arc<Ipam>,
        datapath: Arc<dyn Datapath>,
        mirror: Option<Mirror>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        ipam.serve_node(&cfg.name);
        Self {
            ipam,
            datapath,
            mirror,
            clock,
            cluster: None,
            health: health::StoreHealth::default(),
            reconciled: AtomicBool::new(false),
            inflight: inflight::InFlight::new(inflight::InFlight::dir_beside(&cfg.pending_dir)),
            offline_waits: Default::default(),
            cfg,
        }
    }

    /// With the Kubernetes API: pods' workloads and pools come from the API,
    /// and the node's ToR from its label when `--tor` is not set.
    pub fn with_cluster(mut self, cluster: Arc<dyn Cluster>) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// This node's ToR: `--tor`, else its Node's label. Until it is known an
    /// ADD is refused (code 103) with the command that fixes it.
    pub fn tor(&self) -> Result<String> {
        if !self.cfg.tor.is_empty() {
            return Ok(self.cfg.tor.clone());
        }
        match &self.cluster {
            Some(c) => c.node_tor().ok_or_else(|| {
                Error::refused(
                    cni_code::TOR_UNDEFINED,
                    format!(
                        "node {n} has no label {l}, so ipamd does not know its ToR: label it with `kubectl label node {n} {l}=TOR` (the ToR's name in `ipamctl tor list`)",
                        n = self.cfg.name,
                        l = c.tor_label()
                    ),
                )
            }),
            None => Err(Error::refused(
                cni_code::TOR_UNDEFINED,
                "ipamd has no ToR: start it with --tor, or with the Kubernetes API and a ToR label on its node",
            )),
        }
    }

    fn now(&self) -> u64 {
        self.clock.now_unix()
    }

    /// The attachment key of a request on this node. The plugin checks the
    /// same rules (`moor_proto::fields`), but the socket is an API of its own.
    pub fn key(&self, container_id: &str, ifname: &str) -> Result<AttachmentKey> {
        fields::container_id("container id", container_id)
            .and_then(|()| fields::ifname("interface name", ifname))
            .map_err(|e| Error::Invalid(e.to_string()))?;
        Ok(AttachmentKey {
            node: self.cfg.name.clone(),
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
        })
    }
}

/// What the datapath needs to wire (or check) the attachment of `lease`.
fn link_for(tor: &Tor, lease: &Lease, netns: &str) -> Result<PodLink> {
    let a = lease.attachment.as_ref().expect("attached lease");
    Ok(PodLink {
        netns: PathBuf::from(netns),
        ifname: a.key.ifname.clone(),
        host_ifname: moor_proto::host_ifname(&a.key.container_id, &a.key.ifname),
        address: IpNetwork::new(lease.ip, tor.first.subnet.prefix())
            .map_err(|e| Error::internal_from(e.to_string(), e))?,
        gateway: tor.first.gateway,
        // A dual-stack pod: its IPv6 address with the segment's IPv6
        // prefix and gateway.
        ipv6: match (lease.ipv6, &tor.ipv6) {
            (Some(ip), Some(f)) => match f.gateway {
                std::net::IpAddr::V6(gateway) => Some(PodIpv6 {
                    address: Ipv6Network::new(ip, f.subnet.prefix())
                        .map_err(|e| Error::internal_from(e.to_string(), e))?,
                    gateway,
                }),
                std::net::IpAddr::V4(_) => None,
            },
            _ => None,
        },
        mac: moor_proto::mac_for_ip(lease.ip),
        vlan: tor.vlan,
        pod_namespace: a.pod.namespace.clone(),
        pod_name: a.pod.name.clone(),
        container_id: a.key.container_id.clone(),
    })
}
