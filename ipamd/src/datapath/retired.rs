//! How a retired host end is told and named: its device group, its grave
//! name, and the rename a same-key re-ADD needs (see `graveyard`).

use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec};

use super::netlinksafe::{self, errno, to_io};
use super::DatapathError;
use moor_proto::GRAVEYARD_GROUP;

/// The alias (IFLA_IFALIAS) a retired host end carries, for whoever looks
/// at `ip link`: its pod was DEL'd, its IP may be another pod's by now, and
/// it must not be put back on the bridge by hand.
pub const RETIRED_ALIAS: &str = "moor: retired by a DEL, deleted soon; do not reuse";

/// Prefix of a retired host end's name; see the module doc.
pub const GRAVE_PREFIX: &str = "mgone";

/// The name a retired host end takes: unique in its netns while it exists,
/// at most 15 bytes (5 + up to 10 digits), and never a `host_ifname`.
pub fn grave_name(index: u32) -> String {
    format!("{GRAVE_PREFIX}{index}")
}

/// What a retired host end was a port of, which decides how it is retired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PortKind {
    /// A Linux bridge port: it leaves the bridge (`nomaster`) and keeps its
    /// name. A rename re-registers the device's four sysctl tables and waits
    /// for an RCU grace period under the rtnl lock, the dearest part of a
    /// retirement (and the rtnl lock is what concurrent pods queue on),
    /// while a re-ADD that needs the name (same container id and ifname) is
    /// rare: that one renames it then ([`free_retired_name`]).
    Bridge,
    /// An OVS port, whose row the DEL removes: it stays without a master (a
    /// kernel OVS datapath refuses `nomaster`) and is renamed to its grave
    /// name. ovs-vswitchd, dropping a port, restores the flags it found on
    /// the interface (up) by name, after the DEL has set it down: under its
    /// grave name the restore finds nothing.
    Ovs,
}

/// Whether `link` is a retired host end: parked in moor's device group.
pub(crate) fn is_retired(link: &LinkMessage) -> bool {
    link.attributes
        .contains(&LinkAttribute::Group(GRAVEYARD_GROUP))
}

/// A re-ADD of the same container id and ifname before the reaper ran: the
/// retired host end still holds `host_ifname`. Gives it its grave name.
/// `Ok(true)`: the name is free now (it was a retired one, or it is gone);
/// `Ok(false)`: a live link holds it.
pub(crate) async fn free_retired_name(
    handle: &Handle,
    host_ifname: &str,
) -> Result<bool, DatapathError> {
    let failed = |op: &str, source| DatapathError::Netlink {
        op: format!("{op} {host_ifname}"),
        source,
    };
    let link = netlinksafe::link_by_name(handle, host_ifname)
        .await
        .map_err(|e| failed("look up host interface", e))?;
    let Some(link) = link else {
        return Ok(true);
    };
    if !is_retired(&link) {
        return Ok(false);
    }
    let index = link.header.index;
    let rename = LinkUnspec::new_with_index(index).name(grave_name(index));
    match handle.link().set(rename.build()).execute().await {
        Ok(()) => {
            tracing::debug!(host_ifname, "re-ADD moved a retired host end aside");
            Ok(true)
        }
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(true),
        Err(e) => Err(failed("move aside the retired host end", to_io(e))),
    }
}

/// Sets link `index` down and renames it to `grave`, with what `extra`
/// adds, in one request; in two (down, then the name) on a kernel that
/// refuses to rename an up device (EBUSY before Linux 6.x).
pub(crate) async fn park(
    handle: &Handle,
    index: u32,
    grave: &str,
    extra: impl Fn(LinkMessageBuilder<LinkUnspec>) -> LinkMessageBuilder<LinkUnspec>,
) -> Result<(), rtnetlink::Error> {
    let down = || extra(LinkUnspec::new_with_index(index).down());
    let result = handle
        .link()
        .set(down().name(grave.to_string()).build())
        .execute()
        .await;
    match result {
        Err(e) if errno(&e) == Some(libc::EBUSY) => {
            handle.link().set(down().build()).execute().await?;
            let renamed = extra(LinkUnspec::new_with_index(index).name(grave.to_string()));
            handle.link().set(renamed.build()).execute().await
        }
        other => other,
    }
}
