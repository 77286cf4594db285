//! Inside the pod's netns, on the pod's thread: what is done to the pod
//! end of a pod's veth (CNI_IFNAME made free for it, then up with its
//! address and default route), and how a retired pod end is told from the
//! pod's own interface.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd};

use netlink_packet_route::address::AddressHeaderFlags;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use super::announce::Announcer;
use super::netlinksafe::{self, to_io};
use super::retired::{grave_name, is_retired, park};
use super::{DatapathError, PodLink};

/// Inside the pod's netns, before the pair is requested: a retired pod end
/// holding CNI_IFNAME is moved aside; the pod's own interface there is
/// [`DatapathError::PodIfnameExists`]; nothing there is the common case.
pub(crate) async fn clear_ifname(
    pod: &Handle,
    host: &Handle,
    link: &PodLink,
) -> Result<(), DatapathError> {
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

/// Inside the pod's netns: the new pod end (`index`, else looked up by
/// CNI_IFNAME) up, its addresses (IPv6 without DAD), a default route per
/// family, and packet sockets on the interface for the announcements (sent
/// by the caller once the host end forwards).
pub(crate) async fn configure_pod(
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

    if link.addresses().any(|(a, _)| a.is_ipv6()) {
        enable_ipv6(ifname).map_err(|source| DatapathError::Netlink {
            op: format!(
                "turn IPv6 on for {ifname} in netns {netns} \
                 (/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6 = 0, accept_ra = 0) for the pod's IPv6 address"
            ),
            source,
        })?;
    }
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
    let add_addresses = futures::future::join_all(link.addresses().map(|(address, _)| {
        let mut request = handle.address().add(index, address.ip(), address.prefix());
        if address.is_ipv6() {
            // Usable at once: no DAD by the pod's kernel (see `probe`).
            request.message_mut().header.flags |= AddressHeaderFlags::Nodad;
        }
        request.execute()
    }));
    let add_routes = futures::future::join_all(link.addresses().map(|(_, gateway)| {
        let route = match gateway {
            IpAddr::V4(gw) => RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gw)
                .output_interface(index)
                .build(),
            IpAddr::V6(gw) => RouteMessageBuilder::<Ipv6Addr>::new()
                .gateway(gw)
                .output_interface(index)
                .build(),
        };
        handle.route().add(route).execute()
    }));
    // All requests go out before any answer is awaited. The kernel handles
    // one socket's requests in order, so each route (whose gateway is
    // reachable only through the up link and its address's subnet) is still
    // added after the link is up and the addresses are in place.
    let (up, addresses_added, routes_added) = futures::join!(set_up, add_addresses, add_routes);
    up.map_err(|e| DatapathError::Netlink {
        op: format!("set {ifname} up in netns {netns}"),
        source: to_io(e),
    })?;
    for ((address, _), added) in link.addresses().zip(addresses_added) {
        added.map_err(|e| DatapathError::Netlink {
            op: format!("add address {address} to {ifname} in netns {netns}"),
            source: to_io(e),
        })?;
    }
    for ((_, gateway), added) in link.addresses().zip(routes_added) {
        added.map_err(|e| route_error(&link, gateway, e))?;
    }

    let ips = link.addresses().map(|(a, _)| a.ip()).collect();
    Announcer::open(index, link.mac, ips, probe).map_err(|source| DatapathError::Announce {
        ip: link.address.ip(),
        ifname: ifname.clone(),
        source,
    })
}

fn route_error(link: &PodLink, gateway: IpAddr, e: rtnetlink::Error) -> DatapathError {
    let (netns, ifname) = (link.netns.display(), &link.ifname);
    let exists = netlinksafe::errno(&e) == Some(libc::EEXIST);
    DatapathError::Netlink {
        op: if exists {
            format!(
                "add default route via {gateway} on {ifname}: netns {netns} already has a default \
                 route (another interface of this pod is wired with a gateway)"
            )
        } else {
            format!("add default route via {gateway} on {ifname} in netns {netns}")
        },
        source: to_io(e),
    }
}

/// `net.ipv6.conf.<ifname>.disable_ipv6 = 0` in the calling thread's netns
/// if it is 1: a new link takes the netns's `default` value, which a
/// runtime or image may have set to 1, and an IPv6 address cannot be added
/// then (EACCES). Read first, so that the common case (0, as in a new netns
/// on Debian 12) is one read. As the reference plugins do for IPv6.
///
/// And `accept_ra = 0`: moor gives the pod its IPv6 address and default
/// route; a router advertisement on the segment would add a SLAAC address
/// and a default route of its own (a second source address a database
/// whitelist does not know).
fn enable_ipv6(ifname: &str) -> io::Result<()> {
    let conf = format!("/proc/sys/net/ipv6/conf/{ifname}");
    std::fs::write(format!("{conf}/accept_ra"), "0")?;
    let path = format!("{conf}/disable_ipv6");
    if std::fs::read_to_string(&path)?.trim() == "0" {
        return Ok(());
    }
    std::fs::write(&path, "0")
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
/// alias) its peer in the host ends' netns is retired (in the group, or
/// named as a grave). The alias
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
                is_retired(&l)
                    || l.attributes
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
