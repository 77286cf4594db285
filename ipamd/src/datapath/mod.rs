//! The pod datapath: wires a pod's network interface to the node and tears it
//! down.
//!
//! Physical mode ([`BridgeDatapath`]): a veth pair whose host end is a port of
//! the node's bridge to the physical network and whose pod end is `CNI_IFNAME`
//! in the pod's network namespace, with the pod's sticky IP(s) and MAC, a
//! default route per family via the ToR's gateway, and gratuitous ARPs
//! (IPv4) and unsolicited neighbour advertisements (IPv6) so that peers which
//! cached an earlier owner of the IP learn the new MAC at once.
//!
//! OVS mode ([`OvsDatapath`]): the same veth pair, its host end an access
//! port of an Open vSwitch bridge (`br-int`) with the VLAN of the pod's ToR,
//! added and removed over OVSDB (crate `moor-ovs`), never by forking
//! `ovs-vsctl`.
//!
//! Netlink sockets belong to the netns of the thread that opened them, so all
//! work inside a pod netns runs on an OS thread of its own that entered it
//! ([`netns`], threads kept between pods by `netns_pool`); nothing async
//! ever calls `setns`.

mod announce;
mod arp;
mod bridge;
mod check;
pub mod fake;
mod graveyard;
pub mod ndp;
mod netlinksafe;
mod netns;
mod netns_pool;
mod ovs;
mod pod_end;
mod probe;
mod retired;
mod timing;
mod veth;

use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;

use ipnetwork::{IpNetwork, Ipv6Network};

pub use arp::{gratuitous_arp, GARP_LEN};
pub use bridge::BridgeDatapath;
pub use graveyard::{GraveyardStats, ReapPolicy, GRAVEYARD_GROUP};
pub use ovs::{pod_port, OvsConfig, OvsDatapath};
pub use pod_end::disable_tx_checksum;
pub use retired::{grave_name, GRAVE_PREFIX, RETIRED_ALIAS};
pub use timing::{monotonic_ns, Laps, WireSteps};

/// One pod interface to wire: what CNI ADD asks for, plus the IP ipamd chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLink {
    /// `CNI_NETNS`, e.g. `/run/netns/pod-a`.
    pub netns: PathBuf,
    /// `CNI_IFNAME`, e.g. `eth0`.
    pub ifname: String,
    /// Host end of the veth; callers use `moor_proto::host_ifname`.
    pub host_ifname: String,
    /// The pod's first address with its segment's prefix: IPv4 when the pod
    /// has one, else IPv6 (e.g. 10.1.0.17/24, fd00:1::11/64).
    pub address: IpNetwork,
    /// The gateway of `address`'s family.
    pub gateway: IpAddr,
    /// A dual-stack pod's IPv6 address (with its segment's prefix) and
    /// gateway; None: one family.
    pub ipv6: Option<PodIpv6>,
    /// Pod MAC; callers use `moor_proto::mac_for_ip(address.ip())`.
    pub mac: [u8; 6],
    /// VLAN of the pod's ToR (OVS mode: the access port's tag; `None`: an
    /// untagged port). Unused in physical mode.
    pub vlan: Option<u16>,
    /// Who the pod is, for the OVS port's external_ids.
    pub pod_namespace: String,
    pub pod_name: String,
    /// `CNI_CONTAINERID`; with `ifname` the attachment's key.
    pub container_id: String,
}

/// A dual-stack pod's IPv6 side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodIpv6 {
    pub address: Ipv6Network,
    pub gateway: Ipv6Addr,
}

impl PodLink {
    /// Each address of the pod with its gateway: `address` first, then the
    /// dual-stack IPv6 one.
    pub fn addresses(&self) -> impl Iterator<Item = (IpNetwork, IpAddr)> + '_ {
        let v6 = self
            .ipv6
            .map(|v6| (IpNetwork::V6(v6.address), IpAddr::V6(v6.gateway)));
        std::iter::once((self.address, self.gateway)).chain(v6)
    }

    /// Checks what the kernel would refuse with a bare EINVAL, or accept
    /// wrongly: each gateway inside its address's subnet (same family), and
    /// at most one address per family.
    pub(crate) fn validate_addresses(&self) -> Result<(), DatapathError> {
        for (address, gateway) in self.addresses() {
            if !address.contains(gateway) {
                return Err(DatapathError::GatewayOutsideSubnet { gateway, address });
            }
        }
        if self.address.is_ipv6() && self.ipv6.is_some() {
            return Err(DatapathError::TwoIpv6Addresses {
                first: self.address,
            });
        }
        Ok(())
    }
}

/// What [`Datapath::reconcile`] found and did, by host interface name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Live pods whose wiring was already right.
    pub kept: usize,
    /// Ports of pods that are not live, removed.
    pub removed: Vec<String>,
    /// Live pods whose port was missing, added again.
    pub readded: Vec<String>,
    /// Live pods whose port had other settings (tag, external_ids), replaced.
    pub repaired: Vec<String>,
    /// Live pods whose host interface is gone: their network namespace (and
    /// with it their network) is gone; the caller decides what to do.
    pub host_gone: Vec<PodLink>,
}

/// What [`Datapath::wire`] created, for the CNI result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wired {
    /// MAC of the host end of the veth.
    pub host_mac: [u8; 6],
    /// MTU of both ends (the bridge's).
    pub mtu: u32,
    /// How long each step took.
    pub steps: WireSteps,
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "network namespace {} does not exist: the pod sandbox is gone or CNI_NETNS is wrong",
        netns.display()
    )]
    NetnsNotFound { netns: PathBuf },

    #[error("cannot use network namespace {}: {source}", netns.display())]
    Netns {
        netns: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "bridge {bridge} not found in ipamd's network namespace: create it \
         (ip link add {bridge} type bridge) or set ipamd's bridge to an existing one"
    )]
    BridgeNotFound { bridge: String },

    #[error(
        "link {bridge} is a {kind} device, not a bridge: set ipamd's bridge to the name of a Linux bridge"
    )]
    NotABridge { bridge: String, kind: String },

    #[error(
        "host interface {host_ifname} already exists: an earlier attachment with the same \
         container id and CNI_IFNAME was not torn down; run CNI DEL for it \
         (or ip link del {host_ifname}) and retry"
    )]
    HostLinkExists { host_ifname: String },

    #[error(
        "interface {ifname} (CNI_IFNAME) already exists in the pod's network namespace {}: \
         pick another CNI_IFNAME or remove that interface from the pod",
        netns.display()
    )]
    PodIfnameExists { ifname: String, netns: PathBuf },

    #[error("invalid interface name {name:?}: {reason}")]
    InvalidIfname { name: String, reason: &'static str },

    #[error(
        "gateway {gateway} is not inside the pod's subnet {address}: fix the ToR's gateway or subnet"
    )]
    GatewayOutsideSubnet { gateway: IpAddr, address: IpNetwork },

    #[error(
        "the pod's first address {first} is IPv6 and it has a second IPv6 address: \
         a dual-stack pod's first address is its IPv4 one (PodLink.ipv6 is its IPv6 one)"
    )]
    TwoIpv6Addresses { first: IpNetwork },

    /// A kernel request failed; `op` says what was being done to which link.
    #[error("failed to {op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: io::Error,
    },

    /// The duplicate-address probe heard another interface use the IP.
    #[error(
        "{ip} is already used on the network by MAC {mac} (it answered moor's duplicate-address probe)"
    )]
    AddressConflict { ip: IpAddr, mac: String },

    #[error(
        "failed to announce {ip} ({}) on {ifname}: {source}",
        if ip.is_ipv4() { "gratuitous ARP" } else { "unsolicited neighbour advertisement" }
    )]
    Announce {
        ip: IpAddr,
        ifname: String,
        #[source]
        source: io::Error,
    },

    /// [`Datapath::check`] found the wiring different from what was asked.
    #[error("pod wiring check failed: {0}")]
    CheckFailed(String),

    #[error("worker thread for network namespace {}: {reason}", netns.display())]
    Worker { netns: PathBuf, reason: String },

    /// An OVSDB call failed; `source` names the ovsdb-server endpoint.
    #[error("failed to {op}: {source}")]
    Ovs {
        op: String,
        #[source]
        source: Box<moor_ovs::Error>,
    },

    /// Open vSwitch holds the port but cannot use it (e.g. the uplink
    /// device does not exist in ovs-vswitchd's network namespace).
    #[error("OVS port {port} on bridge {bridge}: {reason}")]
    OvsPort {
        port: String,
        bridge: String,
        reason: String,
    },
}

#[async_trait::async_trait]
pub trait Datapath: Send + Sync + 'static {
    /// Create everything for the pod; on any failure undo what this call did
    /// and return the error.
    async fn wire(&self, link: &PodLink) -> Result<Wired, DatapathError>;
    /// Cut the pod's interface off for good and free its host end's name:
    /// when this returns, the pod can no longer send or receive on it and
    /// its IP may be given to another interface; the kernel may delete the
    /// veth itself later (the real datapaths retire it to a graveyard and
    /// reap it in batches, see `graveyard`). Idempotent: missing host link /
    /// missing netns = Ok.
    async fn unwire(&self, host_ifname: &str) -> Result<(), DatapathError>;
    /// Verify the pod's wiring: host link exists, is up and enslaved to the
    /// bridge; pod interface exists in netns with the address, MAC; default
    /// route via gateway. The error says what is wrong.
    async fn check(&self, link: &PodLink) -> Result<(), DatapathError>;
    /// Whether the host end exists (used by reconcile).
    async fn host_link_exists(&self, host_ifname: &str) -> Result<bool, DatapathError>;
    /// After a start: make the switch's state match `live`, this node's
    /// attachments (ports of pods not in it removed, missing ports of live
    /// pods added again). Physical mode keeps no state apart from the veths
    /// themselves: nothing to do.
    async fn reconcile(&self, live: &[PodLink]) -> Result<ReconcileReport, DatapathError> {
        let _ = live;
        Ok(ReconcileReport::default())
    }
    /// Switch ports of moor's whose host interface does not exist (a DEL
    /// that could not reach the switch's database removed only the veth).
    /// A Linux bridge drops a port with its interface: none there.
    async fn orphan_ports(&self) -> Result<Vec<String>, DatapathError> {
        Ok(Vec::new())
    }
    /// Removes such a port, if it still has no interface.
    async fn remove_orphan_port(&self, name: &str) -> Result<bool, DatapathError> {
        let _ = name;
        Ok(false)
    }
}

/// Deletes the link `name` in the calling thread's network namespace, with a
/// netlink socket and a current_thread runtime of its own. `Ok(true)` = it was
/// deleted, `Ok(false)` = there was no such link.
///
/// For synchronous callers (the CNI plugin's DEL when ipamd is down). Called
/// from inside a tokio runtime it runs on a scoped thread instead, since a
/// runtime cannot be started inside another; a new thread starts in the netns
/// of the thread that created it, so "current netns" still holds.
pub fn delete_link_blocking(name: &str) -> io::Result<bool> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return std::thread::scope(|s| match s.spawn(|| delete_link_now(name)).join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        });
    }
    delete_link_now(name)
}

pub(crate) fn delete_link_now(name: &str) -> io::Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    runtime.block_on(async {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        netlinksafe::delete_link_by_name(&handle, name).await
    })
}

/// Kernel interface names: 1..=15 bytes (IFNAMSIZ - 1), no '/', ':' or
/// whitespace, not "." or "..". The kernel's own error for these is a bare
/// EINVAL, which names nothing.
pub(crate) fn validate_ifname(name: &str) -> Result<(), DatapathError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > 15 {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("reserved")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
    {
        Some("contains '/', ':', a NUL or whitespace")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(DatapathError::InvalidIfname {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifname_validation() {
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("mr0123456789ab").is_ok());
        assert!(validate_ifname("abcdefghijklmno").is_ok());
        for bad in ["", "abcdefghijklmnop", "a/b", "a:b", "a b", ".", ".."] {
            let err = validate_ifname(bad).unwrap_err().to_string();
            assert!(err.contains("invalid interface name"), "{bad:?}: {err}");
        }
    }
}
