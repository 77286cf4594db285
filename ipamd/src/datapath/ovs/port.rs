//! A pod's OVS port: how it is written (`external_ids` naming the pod, the
//! VLAN tag of its ToR), and how a port found in the database is judged
//! against what a pod needs.

use moor_ovs::{ErrorKind, Port, PortSpec};

use crate::datapath::{DatapathError, PodLink};

/// `external_ids` keys of a pod's port.
pub const OWNER_KEY: &str = "moor-owner";
/// The value of [`OWNER_KEY`]: ports with it are ipamd's to add and remove.
pub const OWNER: &str = "moor";
pub const NAMESPACE_KEY: &str = "moor-namespace";
pub const NAME_KEY: &str = "moor-name";
pub const CONTAINER_KEY: &str = "moor-container";
pub const IFNAME_KEY: &str = "moor-ifname";
pub const IP_KEY: &str = "moor-ip";
/// A dual-stack or IPv6-only pod's IPv6 address (`moor-ip` holds its first
/// address: the IPv4 one of a dual-stack pod).
pub const IP6_KEY: &str = "moor-ip6";
/// The uplink's port says `moor-role=uplink` (and no owner, so that reconcile
/// never takes it for a pod's).
pub const ROLE_KEY: &str = "moor-role";
pub const UPLINK_ROLE: &str = "uplink";

/// The port of a pod: named after the host end, tagged with the pod's VLAN,
/// `external_ids` naming the pod.
pub fn pod_port(link: &PodLink) -> PortSpec {
    let mut spec = PortSpec::new(link.host_ifname.clone())
        .external_id(OWNER_KEY, OWNER)
        .external_id(NAMESPACE_KEY, link.pod_namespace.clone())
        .external_id(NAME_KEY, link.pod_name.clone())
        .external_id(CONTAINER_KEY, link.container_id.clone())
        .external_id(IFNAME_KEY, link.ifname.clone())
        .external_id(IP_KEY, link.address.ip().to_string());
    if let Some(v6) = &link.ipv6 {
        spec = spec.external_id(IP6_KEY, v6.address.ip().to_string());
    }
    spec.tag = link.vlan;
    spec
}

pub(super) fn ovs_error(op: impl Into<String>) -> impl FnOnce(moor_ovs::Error) -> DatapathError {
    let op = op.into();
    move |source| DatapathError::Ovs {
        op,
        source: Box::new(source),
    }
}

/// Whether a failed write certainly changed nothing in the database (so a
/// rollback need not remove the port).
pub(super) fn nothing_written(e: &moor_ovs::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Connect { .. }
            | ErrorKind::NoSuchBridge(_)
            | ErrorKind::Conflict { .. }
            | ErrorKind::Invalid(_)
            | ErrorKind::NotInitialized
    )
}

pub(super) fn fmt_tag(tag: Option<u16>) -> String {
    tag.map_or_else(|| "none".to_string(), |t| t.to_string())
}

/// How `port`'s settings differ from what `link` asks for; empty if not.
pub(super) fn setting_problems(port: &Port, link: &PodLink) -> Vec<String> {
    let mut problems = Vec::new();
    if port.tag != link.vlan {
        problems.push(format!(
            "tag {}, expected {} (the VLAN of the pod's ToR)",
            fmt_tag(port.tag),
            fmt_tag(link.vlan)
        ));
    }
    if !port.trunks.is_empty() {
        problems.push(format!(
            "trunks {:?}, expected none (an access port)",
            port.trunks
        ));
    }
    if port.kind != "system" {
        problems.push(format!(
            "interface type {:?}, expected a system device (the veth)",
            port.kind
        ));
    }
    for (key, want) in &pod_port(link).external_ids {
        let have = port.external_ids.get(key);
        if have != Some(want) {
            problems.push(format!(
                "external_ids:{key} is {}, expected {want:?}",
                have.map_or_else(|| "missing".to_string(), |h| format!("{h:?}"))
            ));
        }
    }
    problems
}

/// Whether ovs-vswitchd uses the port: it opened the device.
pub(super) fn usage_problem(port: &Port) -> Option<String> {
    if let Some(error) = &port.error {
        return Some(format!("ovs-vswitchd cannot use it: {error}"));
    }
    match port.ofport {
        Some(-1) => Some("ovs-vswitchd could not open its device (ofport -1)".to_string()),
        None => Some("not applied by ovs-vswitchd (no ofport yet); is it running?".to_string()),
        Some(_) => None,
    }
}
