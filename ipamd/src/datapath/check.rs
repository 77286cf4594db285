//! CHECK of a pod's wiring, both datapaths: the host end exists and is up,
//! and, on a thread inside the pod's netns, the pod's interface has its MAC,
//! is up, has its address, and the default route goes via the gateway.

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::Ipv4Network;
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
