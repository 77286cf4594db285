//! The veth pair of one pod: the request that creates it, from the host
//! ends' netns, with the pod's thread doing its part in the pod's netns
//! (`pod_end`; CHECK is in `check`).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use futures::StreamExt;
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoVeth, LinkAttribute, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REQUEST,
};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth};

use super::announce::Announcer;
use super::netlinksafe::{self, to_io};
use super::netns::{open_netns, NetnsThread, Started};
use super::pod_end::{clear_ifname, configure_pod};
use super::retired;
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
/// previous veth, retired by its DEL and not yet reaped: the pod's thread
/// moves that end aside before the pair is requested ([`NewPair::create`]).
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
        link.validate_addresses()?;
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
    /// where the host end goes ("port of bridge br0"). The host end's IPv6
    /// is silenced ([`silence_ipv6`]) before the pod end comes up.
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
        let request = || {
            pair_request(
                &self.link,
                self.host_mac,
                controller,
                mtu,
                self.netns.as_raw_fd(),
            )
        };
        let mut created = add_echoed(handle, request()).await;
        // A same-key re-ADD before the reaper ran: the retired host end
        // still holds the name (DEL does not rename it, see `graveyard`).
        if matches!(&created, Err(e) if netlinksafe::errno(e) == Some(libc::EEXIST))
            && retired::free_retired_name(handle, &self.link.host_ifname).await?
        {
            created = add_echoed(handle, request()).await;
        }
        match created {
            Ok(index) => {
                self.pod_index = index;
                // Before the pod end is up: until then the host end has no
                // carrier, and IPv6 on it has done nothing yet.
                silence_ipv6(handle, &self.link.host_ifname).await;
                Ok(())
            }
            Err(e) => Err(create_error(handle, attached, &self.link, e).await),
        }
    }

    /// Sets the pod end up with its addresses and default routes, on the
    /// pod's thread; returns the announcer for the caller to send the
    /// announcements once the host end forwards. The caller rolls back on failure.
    /// `tx_checksum_off`: see [`super::disable_tx_checksum`]. `probe`: the
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

/// IPv6 quiet on a host end: `addr_gen_mode none` (RTM_SETLINK,
/// IFLA_AF_SPEC), before the pod end is up. A host end is an L2 port with
/// no address of its own to use; with IPv6 as the kernel leaves a new link,
/// it makes itself a link-local address when it gets carrier and sends a
/// DAD solicitation, router solicitations and MLD reports into the pod on
/// every ADD. Without a link-local address it sends none of them (on a
/// host with IPv6 forwarding on, two MLD reports for all-routers remain).
///
/// Not `net.ipv6.conf.<if>.disable_ipv6 = 1`: the kernel takes that
/// sysctl's write with a trylock of the rtnl lock and restarts the system
/// call until it gets it, so under a burst of ADDs and DELs (the lock held
/// most of the time) the write spun on a CPU: a quarter of ipamd's CPU per
/// pod in `scripts/bench` at 8 workers.
///
/// Not fatal to an ADD (the pod works either way): a failure is logged. A
/// kernel without IPv6, or a link without it (an MTU under 1280), answers
/// EAFNOSUPPORT: nothing to silence.
pub(crate) async fn silence_ipv6(handle: &Handle, host_ifname: &str) {
    let request = LinkUnspec::new_with_name(host_ifname)
        .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
            vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
        )]))
        .build();
    match handle.link().set(request).execute().await {
        Ok(()) => {}
        Err(e) if netlinksafe::errno(&e) == Some(libc::EAFNOSUPPORT) => {}
        Err(error) => tracing::warn!(host_ifname, %error,
            "could not turn IPv6 address generation off on the host end of a pod's veth; \
             it will send DAD/RS/MLD into the pod"),
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

/// The host end of a pod's veth, if it exists and is not retired (a
/// retired one keeps its name until it is reaped or a same-key re-ADD moves
/// it aside: it is gone for every purpose but the name).
pub(crate) async fn host_end(
    handle: &Handle,
    host_ifname: &str,
) -> Result<Option<LinkMessage>, DatapathError> {
    let link = netlinksafe::link_by_name(handle, host_ifname)
        .await
        .map_err(|source| DatapathError::Netlink {
            op: format!("look up host interface {host_ifname}"),
            source,
        })?;
    Ok(link.filter(|l| !retired::is_retired(l)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::{InfoKind, LinkFlags, LinkInfo};
    use std::net::Ipv4Addr;

    #[test]
    fn pair_request_puts_pod_end_in_the_pod_netns() {
        let link = PodLink {
            netns: "/run/netns/pod-a".into(),
            ifname: "eth0".into(),
            host_ifname: "mr0123456789ab".into(),
            address: "10.1.0.17/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 1, 0, 1).into(),
            ipv6: None,
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
