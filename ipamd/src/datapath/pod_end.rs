//! Inside the pod's netns, on the pod's thread: what is done to the pod
//! end of a pod's veth (CNI_IFNAME made free for it, then up with its
//! address and default route), and how a retired pod end is told from the
//! pod's own interface.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd};

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
/// CNI_IFNAME) up, address, default route, and a packet socket on the
/// interface for the announcements (sent by the caller once the host end
/// forwards).
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
