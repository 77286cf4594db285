//! Physical mode: pods' veths are ports of a Linux bridge that is itself
//! attached to the physical network (the node's uplink is also a port).

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use moor_proto::format_mac;
use netlink_packet_route::link::{
    BridgePortState, InfoBridgePort, InfoKind, InfoPortData, LinkAttribute, LinkInfo,
};
use rtnetlink::{Handle, LinkUnspec};

use super::announce::{announce_again, announce_first};
use super::check;
use super::graveyard::{Graveyard, GraveyardStats, ReapPolicy};
use super::netlinksafe::{self, to_io};
use super::netns::{netlink_in, LinkDeleter, Netlink};
use super::probe::probe_for_owner;
use super::retired::PortKind;
use super::timing::{Laps, WireSteps};
use super::veth::{self, rollback, NewPair};
use super::{validate_ifname, Datapath, DatapathError, PodLink, Wired};

/// How long the first announcement waits for the new bridge port to forward.
const PORT_FORWARDING_WAIT: Duration = Duration::from_millis(100);

/// Wires pods onto a bridge in ipamd's own network namespace.
pub struct BridgeDatapath {
    /// One rtnetlink connection in ipamd's netns for the daemon's life.
    handle: Netlink,
    /// A second one for the ADD's lookups (the bridge, the new port's
    /// state): a netlink socket answers its requests one after another, each
    /// in the sender's context, so on the first one a lookup waited behind
    /// every veth creation and retirement queued before it (8 workers:
    /// `prepare` and `forwarding` ~1.5 ms each, mostly that queue; 0.7 and
    /// 0.3 ms with it). The DEL's lookup is not among them: moved here, the
    /// 8-worker cycle rate dropped 6-7 % (two runs, sides swapped).
    lookups: Netlink,
    /// A third for the DEL's retirements (lookup and park): with them on
    /// the first, creations and retirements queued behind each other; on
    /// their own socket the 8-worker cycle rate rose ~6 % and the CPU per
    /// cycle fell 2-12 % (four runs, sides swapped).
    retirements: Netlink,
    bridge: String,
    deleter: LinkDeleter,
    /// Retired host ends and their reaper (DEL does not wait for the
    /// kernel to unregister a veth).
    graveyard: Graveyard,
    /// The duplicate-address probe's window; None: no probe.
    dad_probe: Option<Duration>,
}

/// What `wire` needs to know about the bridge, read fresh each time so that a
/// re-created bridge or a changed MTU is followed.
struct BridgeInfo {
    index: u32,
    mtu: u32,
    mac: Option<Vec<u8>>,
}

impl BridgeDatapath {
    /// Connects to the kernel in the calling thread's netns, verifies that
    /// `bridge` exists and is a bridge, and pins its MAC.
    ///
    /// A bridge whose MAC was never set takes the lowest MAC of its ports, so
    /// its MAC (and with it the MAC of the node's or gateway's IP on it)
    /// changes as pod veths come and go, and peers that cached the old one
    /// lose the node for up to a minute. Setting the MAC explicitly, even to
    /// its current value, marks it as set (NET_ADDR_SET) and the bridge stops
    /// following its ports.
    pub async fn new(bridge: &str) -> Result<Self, DatapathError> {
        Self::new_in(bridge, None).await
    }

    /// Like [`BridgeDatapath::new`], with the bridge and the host ends of pod
    /// veths in the network namespace `netns` rather than ipamd's own. Lets
    /// several "nodes" share one machine (tests, the testbed) while ipamd
    /// itself stays where its store is reachable.
    pub async fn new_in(bridge: &str, netns: Option<&Path>) -> Result<Self, DatapathError> {
        validate_ifname(bridge)?;
        let handle = netlink_in(netns)?;
        let lookups = netlink_in(netns)?;
        let retirements = netlink_in(netns)?;
        let deleter = LinkDeleter::new(netns)?;
        let info = bridge_info(&handle, bridge).await?;
        let graveyard = Graveyard::start(netns).await?;
        let mac = info.mac.ok_or_else(|| DatapathError::Netlink {
            op: format!("read the MAC of bridge {bridge}"),
            source: io::Error::other("the kernel reported no address"),
        })?;
        if mac_already_set(bridge, info.index, &mac) {
            tracing::info!(bridge, mac = %format_mac(&mac), mtu = info.mtu, "bridge MAC already pinned");
        } else {
            pin_mac(&handle, bridge, info.index, &mac).await?;
            tracing::info!(bridge, mac = %format_mac(&mac), mtu = info.mtu, "pinned bridge MAC");
        }
        Ok(BridgeDatapath {
            handle,
            lookups,
            retirements,
            bridge: bridge.to_string(),
            deleter,
            graveyard,
            dad_probe: None,
        })
    }

    /// Probe for another owner of each pod's IP for `window` before using it
    /// (see [`DatapathError::AddressConflict`]).
    pub fn with_dad_probe(mut self, window: Duration) -> Self {
        self.dad_probe = Some(window);
        self
    }

    /// When retired host veths are deleted (see `graveyard`).
    pub fn with_reap_policy(self, policy: ReapPolicy) -> Self {
        self.graveyard.set_policy(policy);
        self
    }

    /// What the graveyard of retired host veths did so far.
    pub fn graveyard_stats(&self) -> GraveyardStats {
        self.graveyard.stats()
    }

    /// Deletes the retired host veths now.
    pub async fn flush_graveyard(&self) -> Result<(), DatapathError> {
        self.graveyard.flush().await
    }

    /// The bridge's name.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }
}

#[async_trait::async_trait]
impl Datapath for BridgeDatapath {
    async fn wire(&self, link: &PodLink) -> Result<Wired, DatapathError> {
        // Run to completion even if the caller is cancelled (a client gone
        // mid-ADD), so a half-wired pod is always rolled back.
        let busy = self.graveyard.busy();
        let task = tokio::spawn(wire(
            self.handle.clone(),
            self.lookups.clone(),
            self.bridge.clone(),
            link.clone(),
            self.dad_probe,
        ));
        let result = task.await.map_err(|e| DatapathError::Worker {
            netns: link.netns.clone(),
            reason: format!("wiring task failed: {e}"),
        });
        drop(busy);
        result?
    }

    async fn unwire(&self, host_ifname: &str) -> Result<(), DatapathError> {
        // Down, off the bridge, renamed into the graveyard: the pod is cut
        // off and the name free; the reaper deletes the pair later (with it
        // the pod end, wherever it is). A netns that is already gone took
        // the pair with it.
        let _busy = self.graveyard.busy();
        let retired = self
            .graveyard
            .retire(
                &self.retirements,
                &self.deleter,
                host_ifname,
                PortKind::Bridge,
            )
            .await?;
        tracing::debug!(host_ifname, retired, "unwired");
        Ok(())
    }

    async fn check(&self, link: &PodLink) -> Result<(), DatapathError> {
        let bridge = bridge_info(&self.handle, &self.bridge).await?;
        let host_ifname = &link.host_ifname;
        let host = check::check_host_end_up(&self.handle, host_ifname).await?;
        let master = host.attributes.iter().find_map(|a| match a {
            LinkAttribute::Controller(index) => Some(*index),
            _ => None,
        });
        if master != Some(bridge.index) {
            return Err(DatapathError::CheckFailed(format!(
                "host interface {host_ifname} is not a port of bridge {}",
                self.bridge
            )));
        }
        check::check_pod_side(link).await
    }

    async fn host_link_exists(&self, host_ifname: &str) -> Result<bool, DatapathError> {
        Ok(veth::host_end(&self.handle, host_ifname).await?.is_some())
    }
}

async fn wire(
    handle: Netlink,
    lookups: Netlink,
    bridge: String,
    link: PodLink,
    dad_probe: Option<Duration>,
) -> Result<Wired, DatapathError> {
    let mut laps = Laps::start();
    let mut steps = WireSteps::default();
    // Enters the pod's netns while the bridge is looked up.
    let mut pair = NewPair::prepare(&link, &handle)?;
    let br = bridge_info(&lookups, &bridge).await?;
    let host_mac = pair.host_mac;
    steps.prepare = laps.lap();
    pair.clear().await?;
    steps.clear = laps.lap();
    pair.create(
        &handle,
        Some(br.index),
        br.mtu,
        &format!("port of bridge {bridge}"),
    )
    .await?;
    steps.create = laps.lap();
    let configured = pair.configure_pod(false, dad_probe.is_some()).await;
    steps.pod_side = laps.lap();
    let announcer = match configured {
        Ok((announcer, waited)) => {
            steps.pod_thread_wait = waited;
            announcer
        }
        Err(e) => {
            rollback(&handle, &link.host_ifname).await;
            return Err(e);
        }
    };
    wait_forwarding(&lookups, &link).await;
    steps.forwarding = laps.lap();
    let announcer = match probe_for_owner(announcer, dad_probe, &link).await {
        Ok(a) => a,
        Err(e) => {
            rollback(&handle, &link.host_ifname).await;
            return Err(e);
        }
    };
    steps.probe = laps.lap();
    if let Err(e) = announce_first(&announcer, &link) {
        rollback(&handle, &link.host_ifname).await;
        return Err(e);
    }
    steps.announce = laps.lap();
    tokio::spawn(announce_again(announcer, link.clone()));
    Ok(Wired {
        host_mac,
        mtu: br.mtu,
        steps,
    })
}

/// Waits (bounded) until the host end forwards, so that the probe and the
/// first announcements reach the network.
///
/// The bridge enables a new port only when the kernel's linkwatch worker
/// processes the carrier change of the host end, asynchronously and after
/// the pod end came up; a frame sent before that is dropped at the bridge.
/// Sent straight from the pod's thread, the first announcement was lost that
/// way in about a third of our test runs, so wait for the port (usually
/// already forwarding by now; bounded, since a bridge running STP keeps new
/// ports in listening/learning for seconds).
async fn wait_forwarding(handle: &Handle, link: &PodLink) {
    let started = Instant::now();
    let mut state = port_state(handle, &link.host_ifname).await;
    while state != Some(BridgePortState::Forwarding) && started.elapsed() < PORT_FORWARDING_WAIT {
        tokio::time::sleep(Duration::from_millis(1)).await;
        state = port_state(handle, &link.host_ifname).await;
    }
    if state != Some(BridgePortState::Forwarding) {
        tracing::warn!(
            host_ifname = %link.host_ifname,
            ?state,
            "bridge port not forwarding {PORT_FORWARDING_WAIT:?} after wiring (STP on?); \
             announcements may be dropped until it does"
        );
    }
    tracing::debug!(host_ifname = %link.host_ifname, waited = ?started.elapsed(), "host end forwarding");
}

/// The bridge port state of `host_ifname`, if it can be read.
async fn port_state(handle: &Handle, host_ifname: &str) -> Option<BridgePortState> {
    let link = netlinksafe::link_by_name(handle, host_ifname)
        .await
        .ok()??;
    link.attributes.into_iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.into_iter().find_map(|i| match i {
            LinkInfo::PortData(InfoPortData::BridgePort(port)) => {
                port.into_iter().find_map(|p| match p {
                    InfoBridgePort::State(state) => Some(state),
                    _ => None,
                })
            }
            _ => None,
        }),
        _ => None,
    })
}

/// Sets the bridge's MAC to `mac`. Any MAC change, even to the same value,
/// also flushes the bridge's neighbour entries (permanent ones included), so
/// this is done only when [`mac_already_set`] cannot tell it was done before.
async fn pin_mac(
    handle: &Handle,
    bridge: &str,
    index: u32,
    mac: &[u8],
) -> Result<(), DatapathError> {
    let request = LinkUnspec::new_with_index(index)
        .address(mac.to_vec())
        .build();
    handle
        .link()
        .set(request)
        .execute()
        .await
        .map_err(|e| DatapathError::Netlink {
            op: format!("pin the MAC of bridge {bridge} to {}", format_mac(mac)),
            source: to_io(e),
        })
}

/// Whether the bridge's MAC is already marked as set (addr_assign_type 3,
/// NET_ADDR_SET), so that an ipamd restart does not flush the node's
/// neighbour table. Netlink does not report addr_assign_type; sysfs does,
/// but /sys shows the devices of the netns it was mounted in, which need not
/// be ours: it is trusted only when it describes this very device.
fn mac_already_set(bridge: &str, index: u32, mac: &[u8]) -> bool {
    const NET_ADDR_SET: &str = "3";
    let dir = std::path::Path::new("/sys/class/net").join(bridge);
    let read = |file: &str| {
        std::fs::read_to_string(dir.join(file))
            .map(|s| s.trim().to_string())
            .ok()
    };
    read("ifindex") == Some(index.to_string())
        && read("address") == Some(format_mac(mac))
        && read("addr_assign_type").as_deref() == Some(NET_ADDR_SET)
}

async fn bridge_info(handle: &Handle, bridge: &str) -> Result<BridgeInfo, DatapathError> {
    let link = netlinksafe::link_by_name(handle, bridge)
        .await
        .map_err(|source| DatapathError::Netlink {
            op: format!("look up bridge {bridge}"),
            source,
        })?
        .ok_or_else(|| DatapathError::BridgeNotFound {
            bridge: bridge.to_string(),
        })?;
    let mut info = BridgeInfo {
        index: link.header.index,
        mtu: 0,
        mac: None,
    };
    let mut kind = None;
    for attribute in link.attributes {
        match attribute {
            LinkAttribute::Mtu(mtu) => info.mtu = mtu,
            LinkAttribute::Address(mac) => info.mac = Some(mac),
            LinkAttribute::LinkInfo(infos) => {
                kind = infos.into_iter().find_map(|i| match i {
                    LinkInfo::Kind(kind) => Some(kind),
                    _ => None,
                })
            }
            _ => {}
        }
    }
    match kind {
        Some(InfoKind::Bridge) => Ok(info),
        other => Err(DatapathError::NotABridge {
            bridge: bridge.to_string(),
            kind: other.map_or_else(
                || "kind-less (physical or loopback)".to_string(),
                |k| k.to_string(),
            ),
        }),
    }
}
