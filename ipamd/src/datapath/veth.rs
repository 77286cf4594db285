//! The veth pair of one pod: the request that creates it, and what is done
//! on the pod's side of it (CHECK is in `check`).

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::time::Duration;

use futures::StreamExt;
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REQUEST,
};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::announce::Announcer;
use super::graveyard::{grave_name, park};
use super::netlinksafe::{self, to_io};
use super::netns::{open_netns, NetnsThread, Started};
use super::{validate_ifname, DatapathError, PodLink};

/// The one RTM_NEWLINK that creates the whole pair: the host end up (and
/// enslaved to `controller`, the Linux bridge, if given; an OVS port is added
/// by OVSDB afterwards instead), the pod end created directly in the pod's
/// netns (IFLA_NET_NS_FD on the peer, not created and then moved) under its
/// final name, CNI_IFNAME, with the pod's MAC and the same MTU.
///
/// Under its final name rather than a temporary one renamed later: a rename
/// is one of the dearest link requests there is (the kernel re-registers
/// the device's sysctl tables, net.ipv4.conf, net.ipv6.conf and the two
/// neigh ones, under the rtnl lock), about two thirds of the pair's creation
/// in `perf`. CNI_IFNAME may still be held by the pod end of this netns's
/// previous veth, retired by its DEL and not yet reaped: the request then
/// fails (EEXIST) and [`NewPair::create`] moves that end aside and asks once
/// more.
///
/// The pod end is not brought up here: the kernel applies the peer's
/// ifinfomsg flags before it links the two ends, so IFF_UP on the peer makes
/// veth_open fail and the whole request with it (ENOTCONN, seen on 6.18).
pub(crate) fn pair_request(
    link: &PodLink,
    host_mac: [u8; 6],
    controller: Option<u32>,
    mtu: u32,
    pod_netns: RawFd,
) -> LinkMessage {
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(link.ifname.clone())
        .address(link.mac.to_vec())
        .mtu(mtu)
        .setns_by_fd(pod_netns)
        .build();
    let host = LinkVeth::new(&link.host_ifname, &link.ifname)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .address(host_mac.to_vec())
        .mtu(mtu);
    match controller {
        Some(index) => host.controller(index),
        None => host,
    }
    .up()
    .build()
}

/// One pod's veth pair on its way: the input checked, the pod's netns open
/// and a thread entering it, the host end's MAC drawn. Shared by the bridge
/// and the OVS datapaths: [`NewPair::create`] makes both ends in one request,
/// [`NewPair::configure_pod`] sets the pod end up. Dropped unused, it leaves
/// nothing behind (the thread exits).
pub(crate) struct NewPair {
    link: PodLink,
    netns: File,
    pod: NetnsThread,
    /// The pod's thread making CNI_IFNAME free ([`clear_ifname`]).
    cleared: Option<Started<()>>,
    pub(crate) host_mac: [u8; 6],
    /// The pod end's ifindex, if the kernel echoed the created host end
    /// (its IFLA_LINK).
    pod_index: Option<u32>,
}

impl NewPair {
    /// Checks the names and the gateway and starts the pod's thread, so that
    /// entering the netns overlaps with the caller's next steps; its first
    /// job makes sure CNI_IFNAME is free for the pod end. `host`: netlink in
    /// the host ends' netns, to tell a retired pod end in the way.
    pub(crate) fn prepare(link: &PodLink, host: &Handle) -> Result<Self, DatapathError> {
        validate_ifname(&link.host_ifname)?;
        validate_ifname(&link.ifname)?;
        if !link.address.contains(link.gateway) {
            return Err(DatapathError::GatewayOutsideSubnet {
                gateway: link.gateway,
                address: link.address,
            });
        }
        let netns = open_netns(&link.netns)?;
        let pod = NetnsThread::spawn(
            netns.try_clone().map_err(|source| DatapathError::Netns {
                netns: link.netns.clone(),
                source,
            })?,
            link.netns.clone(),
        )?;
        let (host, for_pod) = (host.clone(), link.clone());
        let cleared =
            pod.start(move |pod| async move { clear_ifname(&pod, &host, &for_pod).await });
        let host_mac = random_mac().map_err(|source| DatapathError::Netlink {
            op: "draw a random MAC for the host end".to_string(),
            source,
        })?;
        Ok(NewPair {
            link: link.clone(),
            netns,
            pod,
            cleared: Some(cleared),
            host_mac,
            pod_index: None,
        })
    }

    /// Waits for the pod's thread to have made CNI_IFNAME free (see
    /// [`NewPair::create`]); [`NewPair::create`] does it if not done.
    pub(crate) async fn clear(&mut self) -> Result<(), DatapathError> {
        match self.cleared.take() {
            Some(cleared) => cleared.outcome().await.map(|((), _)| ()),
            None => Ok(()),
        }
    }

    /// Creates both ends in one request (see [`pair_request`]) once the
    /// pod's thread has made CNI_IFNAME free; `attached` says, for errors,
    /// where the host end goes ("port of bridge br0").
    ///
    /// Checked first rather than after a failed request: a re-ADD into a
    /// netns whose last DEL's veth is not reaped yet finds that pod end
    /// there, and a failed veth request costs the kernel two devices made
    /// and freed under the rtnl lock. In a new netns the check is one
    /// lookup that finds nothing, done while the caller reads its bridge.
    pub(crate) async fn create(
        &mut self,
        handle: &Handle,
        controller: Option<u32>,
        mtu: u32,
        attached: &str,
    ) -> Result<(), DatapathError> {
        self.clear().await?;
        let request = pair_request(
            &self.link,
            self.host_mac,
            controller,
            mtu,
            self.netns.as_raw_fd(),
        );
        match add_echoed(handle, request).await {
            Ok(index) => {
                self.pod_index = index;
                Ok(())
            }
            Err(e) => Err(create_error(handle, attached, &self.link, e).await),
        }
    }

    /// Sets the pod end up with its address and default route, on the pod's
    /// thread; returns the announcer for the caller to send the gratuitous
    /// ARPs once the host end forwards. The caller rolls back on failure.
    /// `tx_checksum_off`: see [`disable_tx_checksum`]. `probe`: the
    /// announcer can also run the duplicate-address probe.
    /// Also returns how long the work waited for the pod's thread.
    pub(crate) async fn configure_pod(
        self,
        tx_checksum_off: bool,
        probe: bool,
    ) -> Result<(Announcer, Duration), DatapathError> {
        let (link, index) = (self.link, self.pod_index);
        self.pod
            .run_timed(move |pod| configure_pod(pod, link, index, tx_checksum_off, probe))
            .await
    }
}

/// Sends the pair's RTM_NEWLINK with NLM_F_ECHO: the kernel (6.3 and
/// later) answers with the new host end, whose IFLA_LINK is the pod end's
/// ifindex, so the pod's thread needs no lookup. `None`: no echo (an older
/// kernel); the pod's thread looks the pod end up by name.
async fn add_echoed(
    handle: &Handle,
    request: LinkMessage,
) -> Result<Option<u32>, rtnetlink::Error> {
    let mut message = NetlinkMessage::from(RouteNetlinkMessage::NewLink(request));
    message.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO;
    let mut replies = handle.clone().request(message)?;
    let mut peer = None;
    while let Some(reply) = replies.next().await {
        match reply.payload {
            NetlinkPayload::Error(e) => return Err(rtnetlink::Error::NetlinkError(e)),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(host)) => {
                peer = host.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Link(index) => Some(*index),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    Ok(peer)
}

/// Inside the pod's netns, before the pair is requested: a retired pod end
/// holding CNI_IFNAME is moved aside; the pod's own interface there is
/// [`DatapathError::PodIfnameExists`]; nothing there is the common case.
async fn clear_ifname(pod: &Handle, host: &Handle, link: &PodLink) -> Result<(), DatapathError> {
    let old = netlinksafe::link_by_name(pod, &link.ifname)
        .await
        .map_err(|source| DatapathError::Netlink {
            op: format!("look up {} in netns {}", link.ifname, link.netns.display()),
            source,
        })?;
    match old {
        Some(old) => move_aside(pod, host, link, old).await,
        None => Ok(()),
    }
}

/// Turns a failed veth creation into the error a person can act on. EEXIST
/// means either the host name exists here or `CNI_IFNAME` exists in the pod;
/// one lookup of the host name tells which.
async fn create_error(
    handle: &Handle,
    attached: &str,
    link: &PodLink,
    e: rtnetlink::Error,
) -> DatapathError {
    if netlinksafe::errno(&e) == Some(libc::EEXIST) {
        return match netlinksafe::link_by_name(handle, &link.host_ifname).await {
            Ok(Some(_)) => DatapathError::HostLinkExists {
                host_ifname: link.host_ifname.clone(),
            },
            _ => DatapathError::PodIfnameExists {
                ifname: link.ifname.clone(),
                netns: link.netns.clone(),
            },
        };
    }
    DatapathError::Netlink {
        op: format!(
            "create veth {} ({attached}) with peer {} in netns {}",
            link.host_ifname,
            link.ifname,
            link.netns.display()
        ),
        source: to_io(e),
    }
}

/// Deletes the host end (and with it the pod end) after a failed wire.
pub(crate) async fn rollback(handle: &Handle, host_ifname: &str) {
    if let Err(e) = netlinksafe::delete_link_by_name(handle, host_ifname).await {
        tracing::error!(
            host_ifname,
            error = %e,
            "rollback of a failed wire could not delete the host interface; reconcile will retry"
        );
    }
}

/// A random locally administered unicast MAC, as the kernel would pick for
/// the host end; drawn here so that `Wired` needs no extra lookup.
fn random_mac() -> io::Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    // SAFETY: the buffer is valid for writes of its length.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != mac.len() as isize {
        return Err(io::Error::last_os_error());
    }
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Ok(mac)
}

/// Inside the pod's netns: the new pod end (`index`, else looked up by
/// CNI_IFNAME) up, address, default route, and a packet socket on the
/// interface for the announcements (sent by the caller once the host end
/// forwards).
async fn configure_pod(
    handle: Handle,
    link: PodLink,
    index: Option<u32>,
    tx_checksum_off: bool,
    probe: bool,
) -> Result<Announcer, DatapathError> {
    let netns = link.netns.display();
    let ifname = &link.ifname;
    if tx_checksum_off {
        disable_tx_checksum(ifname).map_err(|source| DatapathError::Netlink {
            op: format!("turn TX checksum offload off on {ifname} in netns {netns} (SIOCETHTOOL)"),
            source,
        })?;
    }
    let index = match index {
        Some(index) => index,
        None => {
            netlinksafe::link_by_name(&handle, ifname)
                .await
                .and_then(|l| l.ok_or_else(|| io::Error::from(io::ErrorKind::NotFound)))
                .map_err(|source| DatapathError::Netlink {
                    op: format!("find {ifname} in netns {netns} right after creating it"),
                    source,
                })?
                .header
                .index
        }
    };

    let ip = link.address.ip();
    // The alias marks it as moor's pod end (see `move_aside`).
    let set_up = handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .alias(POD_END_ALIAS)
                .up()
                .build(),
        )
        .execute();
    let add_address = handle
        .address()
        .add(index, IpAddr::V4(ip), link.address.prefix())
        .execute();
    let add_route = handle
        .route()
        .add(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(link.gateway)
                .output_interface(index)
                .build(),
        )
        .execute();
    // All three requests go out before any answer is awaited. The kernel
    // handles one socket's requests in order, so the route (whose gateway is
    // reachable only through the up link and the address's subnet) is still
    // added last.
    let (up, address_added, route_added) = futures::join!(set_up, add_address, add_route);
    up.map_err(|e| DatapathError::Netlink {
        op: format!("set {ifname} up in netns {netns}"),
        source: to_io(e),
    })?;
    address_added.map_err(|e| DatapathError::Netlink {
        op: format!("add address {} to {ifname} in netns {netns}", link.address),
        source: to_io(e),
    })?;
    route_added.map_err(|e| {
        let exists = netlinksafe::errno(&e) == Some(libc::EEXIST);
        DatapathError::Netlink {
            op: if exists {
                format!(
                    "add default route via {} on {ifname}: netns {netns} already has a default route \
                     (another interface of this pod is wired with a gateway)",
                    link.gateway
                )
            } else {
                format!("add default route via {} on {ifname} in netns {netns}", link.gateway)
            },
            source: to_io(e),
        }
    })?;

    let announce_error = |source| DatapathError::Announce {
        ip,
        ifname: ifname.clone(),
        source,
    };
    Announcer::open(index, link.mac, ip, probe).map_err(announce_error)
}

/// The alias (IFLA_IFALIAS) of every pod end moor wires.
pub(crate) const POD_END_ALIAS: &str = "moor pod end";

/// Inside the pod's netns: CNI_IFNAME is held by another interface. If it is
/// the pod end of a retired veth (a re-ADD into the same netns before the
/// reaper ran), it is set down, which takes its linkdown default route
/// along, and given its grave name; the reaper deletes it with its host
/// end. Anything else is the pod's own interface:
/// [`DatapathError::PodIfnameExists`].
///
/// Retired = without carrier (moor sets a host end down only to retire it)
/// and moor's: it carries [`POD_END_ALIAS`], or (a pod end wired before the
/// alias) its peer in the host ends' netns is named as a grave. The alias
/// also holds when the retired end's host side is on another node (a netns
/// shared by test "nodes").
async fn move_aside(
    pod: &Handle,
    host: &Handle,
    link: &PodLink,
    old: LinkMessage,
) -> Result<(), DatapathError> {
    let netns = link.netns.display();
    let ifname = &link.ifname;
    let lookup = |source| DatapathError::Netlink {
        op: format!("look up {ifname} in netns {netns}"),
        source,
    };
    let taken = || DatapathError::PodIfnameExists {
        ifname: ifname.clone(),
        netns: link.netns.clone(),
    };
    let carrier = old.header.flags.contains(LinkFlags::LowerUp);
    let peer = old.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(peer) => Some(*peer),
        _ => None,
    });
    let marked = old
        .attributes
        .contains(&LinkAttribute::IfAlias(POD_END_ALIAS.to_string()));
    let retired = match peer {
        _ if carrier => false,
        _ if marked => true,
        Some(peer) => netlinksafe::link_by_index(host, peer)
            .await
            .map_err(lookup)?
            .is_some_and(|l| {
                l.attributes
                    .contains(&LinkAttribute::IfName(grave_name(peer)))
            }),
        None => false,
    };
    if !retired {
        return Err(taken());
    }
    let index = old.header.index;
    match park(pod, index, &grave_name(index), |b| b).await {
        Ok(()) => {
            tracing::debug!(%ifname, netns = %netns, "re-ADD moved a retired pod end aside");
            Ok(())
        }
        // The reaper deleted the pair since it was listed: the name is free.
        Err(e) if netlinksafe::errno(&e) == Some(libc::ENODEV) => Ok(()),
        Err(e) => Err(DatapathError::Netlink {
            op: format!("move the retired {ifname} aside in netns {netns}"),
            source: to_io(e),
        }),
    }
}

/// `ethtool -K IFNAME tx off` in the calling thread's netns (the kernel drops
/// TSO with it).
///
/// A veth hands the packets a pod sends to its peer with the TCP/UDP
/// checksum left for "the hardware" to fill in (CHECKSUM_PARTIAL). The
/// kernel's own bridge and OVS's kernel datapath keep that state with the
/// packet, but OVS's userspace datapath (`datapath_type=netdev`) reads the
/// host end through a packet socket and forwards the bytes as they are, so
/// every TCP segment arrives with a wrong checksum and is dropped: ping
/// works, TCP does not (seen here). With TX checksum offload off, the pod's
/// kernel fills the checksum itself.
pub fn disable_tx_checksum(ifname: &str) -> io::Result<()> {
    const ETHTOOL_STXCSUM: u32 = 0x17;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: 0,
    };
    if ifname.len() >= libc::IFNAMSIZ {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: plain syscall with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket() and is owned by nobody else.
    let socket = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    request.ifr_ifru.ifru_data = std::ptr::addr_of_mut!(value).cast();
    // SAFETY: SIOCETHTOOL takes an ifreq whose ifru_data points to an
    // ethtool command struct; both live until the call returns.
    let r = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &mut request) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The host end of a pod's veth, if it exists.
pub(crate) async fn host_end(
    handle: &Handle,
    host_ifname: &str,
) -> Result<Option<LinkMessage>, DatapathError> {
    netlinksafe::link_by_name(handle, host_ifname)
        .await
        .map_err(|source| DatapathError::Netlink {
            op: format!("look up host interface {host_ifname}"),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::{InfoKind, LinkInfo};

    #[test]
    fn pair_request_puts_pod_end_in_the_pod_netns() {
        let link = PodLink {
            netns: "/run/netns/pod-a".into(),
            ifname: "eth0".into(),
            host_ifname: "mr0123456789ab".into(),
            address: "10.1.0.17/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 1, 0, 1),
            mac: [0x0a, 0x58, 10, 1, 0, 17],
            vlan: None,
            pod_namespace: "default".into(),
            pod_name: "a".into(),
            container_id: "0123".into(),
        };
        let message = pair_request(&link, [2, 0, 0, 0, 0, 9], Some(7), 1400, 42);
        let a = &message.attributes;
        assert!(message.header.flags.contains(LinkFlags::Up));
        assert!(a.contains(&LinkAttribute::IfName("mr0123456789ab".into())));
        assert!(a.contains(&LinkAttribute::Controller(7)));
        assert!(a.contains(&LinkAttribute::Mtu(1400)));
        assert!(a.contains(&LinkAttribute::Address(vec![2, 0, 0, 0, 0, 9])));
        let infos = a
            .iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(i) => Some(i),
                _ => None,
            })
            .unwrap();
        assert!(infos.contains(&LinkInfo::Kind(InfoKind::Veth)));
        let peer = infos
            .iter()
            .find_map(|i| match i {
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))) => Some(p),
                _ => None,
            })
            .expect("exactly the peer we built");
        // Not up: see pair_request.
        assert!(!peer.header.change_mask.contains(LinkFlags::Up));
        let p = &peer.attributes;
        // Under its final name: no rename later (see pair_request).
        assert!(p.contains(&LinkAttribute::IfName("eth0".into())));
        assert!(p.contains(&LinkAttribute::Address(link.mac.to_vec())));
        assert!(p.contains(&LinkAttribute::Mtu(1400)));
        assert!(p.contains(&LinkAttribute::NetNsFd(42)));
        // One peer only: LinkVeth::new's own peer was replaced, not added to.
        assert_eq!(
            infos
                .iter()
                .filter(|i| matches!(i, LinkInfo::Data(_)))
                .count(),
            1
        );

        // For OVS: no controller, still up.
        let free = pair_request(&link, [2, 0, 0, 0, 0, 9], None, 1400, 42);
        assert!(free.header.flags.contains(LinkFlags::Up));
        assert!(!free
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::Controller(_))));
    }
}
