//! The veth pair of one pod: the request that creates it, and what is done
//! and checked on the pod's side of it.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

use ipnetwork::Ipv4Network;
use moor_proto::format_mac;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::announce::Announcer;
use super::netlinksafe::{self, to_io};
use super::netns::{open_netns, NetnsThread};
use super::{validate_ifname, DatapathError, PodLink};

/// The one RTM_NEWLINK that creates the whole pair: the host end up (and
/// enslaved to `controller`, the Linux bridge, if given; an OVS port is added
/// by OVSDB afterwards instead), the pod end created directly in the pod's
/// netns (IFLA_NET_NS_FD on the peer, not created and then moved) with the
/// pod's name, MAC and the same MTU.
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
    netns: Option<File>,
    pod: NetnsThread,
    pub(crate) host_mac: [u8; 6],
}

impl NewPair {
    /// Checks the names and the gateway and starts the pod's thread, so that
    /// entering the netns overlaps with the caller's next steps.
    pub(crate) fn prepare(link: &PodLink) -> Result<Self, DatapathError> {
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
        let host_mac = random_mac().map_err(|source| DatapathError::Netlink {
            op: "draw a random MAC for the host end".to_string(),
            source,
        })?;
        Ok(NewPair {
            link: link.clone(),
            netns: Some(netns),
            pod,
            host_mac,
        })
    }

    /// Creates both ends in one request (see [`pair_request`]); `attached`
    /// says, for errors, where the host end goes ("port of bridge br0").
    pub(crate) async fn create(
        &mut self,
        handle: &Handle,
        controller: Option<u32>,
        mtu: u32,
        attached: &str,
    ) -> Result<(), DatapathError> {
        let netns = self.netns.take().ok_or_else(|| DatapathError::Worker {
            netns: self.link.netns.clone(),
            reason: "the pair was created already".to_string(),
        })?;
        let request = pair_request(
            &self.link,
            self.host_mac,
            controller,
            mtu,
            netns.as_raw_fd(),
        );
        match handle.link().add(request).execute().await {
            Ok(()) => Ok(()),
            Err(e) => Err(create_error(handle, attached, &self.link, e).await),
        }
    }

    /// Sets the pod end up with its address and default route, on the pod's
    /// thread; returns the announcer for the caller to send the gratuitous
    /// ARPs once the host end forwards. The caller rolls back on failure.
    /// `tx_checksum_off`: see [`disable_tx_checksum`]. `probe`: the
    /// announcer can also run the duplicate-address probe.
    pub(crate) async fn configure_pod(
        self,
        tx_checksum_off: bool,
        probe: bool,
    ) -> Result<Announcer, DatapathError> {
        let link = self.link;
        self.pod
            .run(move |pod| configure_pod(pod, link, tx_checksum_off, probe))
            .await
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

/// Inside the pod's netns: link up, address, default route, and a packet
/// socket on the interface for the announcements (sent by the caller once the
/// host end forwards).
pub(crate) async fn configure_pod(
    handle: Handle,
    link: PodLink,
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
    let index = pod_ifindex(&handle, &link)
        .await?
        .ok_or_else(|| DatapathError::Netlink {
            op: format!("find {ifname} in netns {netns} right after creating it"),
            source: io::Error::from(io::ErrorKind::NotFound),
        })?;

    let ip = link.address.ip();
    let set_up = handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
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

/// Inside the pod's netns: the interface has the MAC, is up, has the
/// address, and the default route goes via the gateway.
pub(crate) async fn check_pod(handle: Handle, link: PodLink) -> Result<(), DatapathError> {
    let netns = link.netns.display();
    let ifname = &link.ifname;
    let pod = netlinksafe::link_by_name(&handle, ifname)
        .await
        .map_err(|source| DatapathError::Netlink {
            op: format!("look up {ifname} in netns {netns}"),
            source,
        })?
        .ok_or_else(|| {
            DatapathError::CheckFailed(format!("interface {ifname} not found in netns {netns}"))
        })?;
    let index = pod.header.index;

    let mac = pod.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(mac) => Some(mac.as_slice()),
        _ => None,
    });
    if mac != Some(link.mac.as_slice()) {
        return Err(DatapathError::CheckFailed(format!(
            "{ifname} in netns {netns} has MAC {}, expected {}",
            mac.map_or_else(|| "none".to_string(), format_mac),
            format_mac(&link.mac)
        )));
    }
    if !pod.header.flags.contains(LinkFlags::Up) {
        return Err(DatapathError::CheckFailed(format!(
            "{ifname} in netns {netns} is down"
        )));
    }

    let dump_error = |what: &str, source| DatapathError::Netlink {
        op: format!("list {what} in netns {netns}"),
        source,
    };
    let mut request = AddressMessage::default();
    request.header.family = AddressFamily::Inet;
    let addresses: Vec<Ipv4Network> =
        netlinksafe::dump(&handle, RouteNetlinkMessage::GetAddress(request))
            .await
            .map_err(|e| dump_error("addresses", e))?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => ipv4_of(&a),
                _ => None,
            })
            .collect();
    if !addresses.contains(&link.address) {
        return Err(DatapathError::CheckFailed(format!(
            "{ifname} in netns {netns} does not have address {} (it has: {})",
            link.address,
            list_or_none(&addresses)
        )));
    }

    let request = RouteMessageBuilder::<Ipv4Addr>::new().build();
    let gateways: Vec<Ipv4Addr> =
        netlinksafe::dump(&handle, RouteNetlinkMessage::GetRoute(request))
            .await
            .map_err(|e| dump_error("routes", e))?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => default_gateway(&r),
                _ => None,
            })
            .collect();
    if !gateways.contains(&link.gateway) {
        return Err(DatapathError::CheckFailed(format!(
            "netns {netns} has no default route via {} (default routes via: {})",
            link.gateway,
            list_or_none(&gateways)
        )));
    }
    Ok(())
}

async fn pod_ifindex(handle: &Handle, link: &PodLink) -> Result<Option<u32>, DatapathError> {
    let pod = netlinksafe::link_by_name(handle, &link.ifname)
        .await
        .map_err(|source| DatapathError::Netlink {
            op: format!("look up {} in netns {}", link.ifname, link.netns.display()),
            source,
        })?;
    Ok(pod.map(|l| l.header.index))
}

fn ipv4_of(message: &AddressMessage) -> Option<Ipv4Network> {
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on
    // point-to-point links and the same otherwise.
    let local = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
        _ => None,
    });
    let address = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
        _ => None,
    });
    Ipv4Network::new(local.or(address)?, message.header.prefix_len).ok()
}

/// The gateway of `route` if it is a default route of the main table.
fn default_gateway(route: &RouteMessage) -> Option<Ipv4Addr> {
    let table = route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table));
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) || route.header.destination_prefix_length != 0
    {
        return None;
    }
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(gw)) => Some(*gw),
        _ => None,
    })
}

fn list_or_none<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "none".to_string();
    }
    items
        .iter()
        .map(T::to_string)
        .collect::<Vec<_>>()
        .join(", ")
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

/// CHECK of the host end, whatever it is plugged into: it exists and is up.
pub(crate) async fn check_host_end_up(
    handle: &Handle,
    host_ifname: &str,
) -> Result<LinkMessage, DatapathError> {
    let host = host_end(handle, host_ifname).await?.ok_or_else(|| {
        DatapathError::CheckFailed(format!("host interface {host_ifname} does not exist"))
    })?;
    if !host.header.flags.contains(LinkFlags::Up) {
        return Err(DatapathError::CheckFailed(format!(
            "host interface {host_ifname} is down"
        )));
    }
    Ok(host)
}

/// CHECK of the pod side, on a thread inside the pod's netns.
pub(crate) async fn check_pod_side(link: &PodLink) -> Result<(), DatapathError> {
    let netns = open_netns(&link.netns)?;
    super::netns::run_in_netns(netns, link.netns.clone(), {
        let link = link.clone();
        move |handle| check_pod(handle, link)
    })
    .await
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
