//! The node's uplink to the ToR as a trunk port of the pods' bridge.

use moor_ovs::{ErrorKind, Ovsdb, PortSpec};
use netlink_packet_route::link::LinkFlags;
use rtnetlink::{Handle, LinkUnspec};

use crate::datapath::netlinksafe::{self, to_io};
use crate::datapath::DatapathError;

use super::port::{ovs_error, usage_problem, ROLE_KEY, UPLINK_ROLE};

/// up, and used by ovs-vswitchd.
pub(super) async fn ensure_uplink(
    handle: &Handle,
    ovs: &Ovsdb,
    bridge: &str,
    uplink: &str,
    vlans: &[u16],
) -> Result<(), DatapathError> {
    let port_error = |reason: String| DatapathError::OvsPort {
        port: uplink.to_string(),
        bridge: bridge.to_string(),
        reason,
    };
    let device = netlinksafe::link_by_name(handle, uplink)
        .await
        .map_err(|source| DatapathError::Netlink {
            op: format!("look up uplink {uplink}"),
            source,
        })?
        .ok_or_else(|| {
            port_error(format!(
                "uplink device {uplink} does not exist in ovs-vswitchd's network namespace \
                 (ipamd's --netns): create it or fix --uplink"
            ))
        })?;
    if !device.header.flags.contains(LinkFlags::Up) {
        handle
            .link()
            .set(LinkUnspec::new_with_index(device.header.index).up().build())
            .execute()
            .await
            .map_err(|e| DatapathError::Netlink {
                op: format!("set uplink {uplink} up"),
                source: to_io(e),
            })?;
    }
    let spec = PortSpec::new(uplink)
        .trunks(vlans.iter().copied())
        .external_id(ROLE_KEY, UPLINK_ROLE);
    match ovs.add_port(bridge, &spec).await {
        Ok(()) => {}
        // Someone made it by hand (other trunks, no external_ids): theirs to
        // keep, as long as it is on our bridge.
        Err(e) if matches!(e.kind(), ErrorKind::Conflict { .. }) => {
            tracing::warn!(uplink, bridge, error = %e, "uplink port exists with other settings; left as it is");
        }
        Err(e) => {
            return Err(ovs_error(format!(
                "add uplink {uplink} to OVS bridge {bridge} as a trunk"
            ))(e))
        }
    }
    let ports = ovs
        .ports(bridge)
        .await
        .map_err(ovs_error(format!("list the ports of OVS bridge {bridge}")))?;
    let port = ports.iter().find(|p| p.name == uplink).ok_or_else(|| {
        port_error(format!(
            "uplink {uplink} is a port of another bridge: move it \
             (ovs-vsctl del-port {uplink}) or fix --uplink"
        ))
    })?;
    if let Some(problem) = usage_problem(port) {
        return Err(port_error(problem));
    }
    tracing::info!(uplink, bridge, trunks = ?port.trunks, "uplink is a trunk port");
    Ok(())
}
