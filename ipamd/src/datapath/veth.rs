//! The veth pair of one pod: the request that creates it, and what is done
//! and checked on the pod's side of it.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;

use ipnetwork::Ipv4Network;
use moor_proto::format_mac;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::announce::Announcer;
use super::netlinksafe::{self, to_io};
use super::{DatapathError, PodLink};

/// The one RTM_NEWLINK that creates the whole pair: the host end enslaved to
/// the bridge and up, the pod end created directly in the pod's netns
/// (IFLA_NET_NS_FD on the peer, not created and then moved) with the pod's
/// name, MAC and the same MTU.
///
/// The pod end is not brought up here: the kernel applies the peer's
/// ifinfomsg flags before it links the two ends, so IFF_UP on the peer makes
/// veth_open fail and the whole request with it (ENOTCONN, seen on 6.18).
pub(crate) fn pair_request(
    link: &PodLink,
    host_mac: [u8; 6],
    bridge_index: u32,
    mtu: u32,
    pod_netns: RawFd,
) -> LinkMessage {
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(link.ifname.clone())
        .address(link.mac.to_vec())
        .mtu(mtu)
        .setns_by_fd(pod_netns)
        .build();
    LinkVeth::new(&link.host_ifname, &link.ifname)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .address(host_mac.to_vec())
        .mtu(mtu)
        .controller(bridge_index)
        .up()
        .build()
}

/// Inside the pod's netns: link up, address, default route, and a packet
/// socket on the interface for the announcements (sent by the caller once the
/// host end forwards).
pub(crate) async fn configure_pod(
    handle: Handle,
    link: PodLink,
) -> Result<Announcer, DatapathError> {
    let netns = link.netns.display();
    let ifname = &link.ifname;
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
    Announcer::open(index, link.mac, ip).map_err(announce_error)
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
        };
        let message = pair_request(&link, [2, 0, 0, 0, 0, 9], 7, 1400, 42);
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
    }
}
