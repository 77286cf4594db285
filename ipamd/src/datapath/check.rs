//! CHECK of a pod's wiring, both datapaths: the host end exists and is up,
//! and, on a thread inside the pod's netns, the pod's interface has its MAC,
//! is up, has its addresses, and the default route of each family goes via
//! its gateway.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use moor_proto::format_mac;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::netlinksafe;
use super::netns::open_netns;
use super::veth::host_end;
use super::{DatapathError, PodLink};

/// Inside the pod's netns: the interface has the MAC, is up, has each
/// address, and the default route of each address's family goes via its
/// gateway.
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
    for (address, gateway) in link.addresses() {
        let ipv4 = address.is_ipv4();
        let mut request = AddressMessage::default();
        request.header.family = if ipv4 {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let addresses: Vec<IpNetwork> =
            netlinksafe::dump(&handle, RouteNetlinkMessage::GetAddress(request))
                .await
                .map_err(|e| dump_error("addresses", e))?
                .into_iter()
                .filter_map(|m| match m {
                    RouteNetlinkMessage::NewAddress(a) if a.header.index == index => address_of(&a),
                    _ => None,
                })
                .filter(|a| a.is_ipv4() == ipv4)
                .collect();
        if !addresses.contains(&address) {
            return Err(DatapathError::CheckFailed(format!(
                "{ifname} in netns {netns} does not have address {address} (it has: {})",
                list_or_none(&addresses)
            )));
        }

        let request = if ipv4 {
            RouteMessageBuilder::<Ipv4Addr>::new().build()
        } else {
            RouteMessageBuilder::<Ipv6Addr>::new().build()
        };
        let gateways: Vec<IpAddr> =
            netlinksafe::dump(&handle, RouteNetlinkMessage::GetRoute(request))
                .await
                .map_err(|e| dump_error("routes", e))?
                .into_iter()
                .filter_map(|m| match m {
                    RouteNetlinkMessage::NewRoute(r) => default_gateway(&r),
                    _ => None,
                })
                .filter(|gw| gw.is_ipv4() == ipv4)
                .collect();
        if !gateways.contains(&gateway) {
            return Err(DatapathError::CheckFailed(format!(
                "netns {netns} has no default route via {gateway} (default routes via: {})",
                list_or_none(&gateways)
            )));
        }
    }
    Ok(())
}

fn address_of(message: &AddressMessage) -> Option<IpNetwork> {
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on
    // point-to-point links and the same otherwise (IPv6 sends only
    // IFA_ADDRESS).
    let local = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    IpNetwork::new(local.or(address)?, message.header.prefix_len).ok()
}

/// The gateway of `route` if it is a default route of the main table.
fn default_gateway(route: &RouteMessage) -> Option<IpAddr> {
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
        RouteAttribute::Gateway(RouteAddress::Inet(gw)) => Some(IpAddr::V4(*gw)),
        RouteAttribute::Gateway(RouteAddress::Inet6(gw)) => Some(IpAddr::V6(*gw)),
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

/// CHECK of the host end, whatever it is plugged into: it exists and is up.
pub(crate) async fn check_host_end_up(
    handle: &Handle,
    host_ifname: &str,
) -> Result<LinkMessage, DatapathError> {
    let host = host_end(handle, host_ifname).await?.ok_or_else(|| {
        DatapathError::CheckFailed(format!(
            "host interface {host_ifname} does not exist (or a DEL retired it)"
        ))
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
