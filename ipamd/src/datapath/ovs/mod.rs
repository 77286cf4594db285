//! OVS mode: pods' veths are VLAN access ports of an Open vSwitch bridge
//! (`br-int`), whose trunk port (the node's uplink) carries every VLAN to the
//! ToR. The veth pair is made exactly as in physical mode, without a master;
//! the port is added over OVSDB ([`moor_ovs`]), one transaction, no
//! `ovs-vsctl` fork, and tagged with the VLAN of the pod's ToR.
//!
//! Each pod port's `external_ids` say whose it is (`moor-owner=moor`, the
//! pod's namespace and name, container id, ifname and IP), so that a restarted
//! ipamd can tell its ports from anyone else's and reconcile them with its
//! attachments ([`Datapath::reconcile`]).

use std::path::Path;
use std::time::Duration;

use moor_ovs::{Endpoint, ErrorKind, Options, Ovsdb, Port};
use netlink_packet_route::link::LinkAttribute;
use rtnetlink::Handle;

use crate::datapath::announce::{announce_again, announce_first};
use crate::datapath::check;
use crate::datapath::graveyard::{Graveyard, GraveyardStats, ReapPolicy};
use crate::datapath::netlinksafe;
use crate::datapath::netns::{netlink_in, LinkDeleter, Netlink};
use crate::datapath::probe::probe_for_owner;
use crate::datapath::retired::PortKind;
use crate::datapath::timing::{Laps, WireSteps};
use crate::datapath::veth::{self, NewPair};
use crate::datapath::{validate_ifname, Datapath, DatapathError, PodLink, ReconcileReport, Wired};

mod port;
mod reconcile;
mod uplink;

pub use port::*;
use uplink::ensure_uplink;

/// MTU of pod veths when neither the uplink nor the bridge device tells one.
const DEFAULT_MTU: u32 = 1500;

/// How ipamd reaches Open vSwitch and what it makes sure exists there.
#[derive(Debug, Clone)]
pub struct OvsConfig {
    /// ovsdb-server, `unix:PATH` or `tcp:IP:PORT`.
    pub endpoint: Endpoint,
    /// The integration bridge, created if missing.
    pub bridge: String,
    /// `datapath_type` of the bridge if ipamd creates it (`netdev`: the
    /// userspace datapath); an existing bridge with another one is an error.
    pub datapath_type: Option<String>,
    /// The node's link to the ToR, made a trunk port of the bridge.
    pub uplink: Option<String>,
    /// VLANs the uplink carries; empty = all.
    pub uplink_vlans: Vec<u16>,
    /// Bounds every OVSDB call, reconnecting and waiting for ovs-vswitchd
    /// included.
    pub timeout: Duration,
}

impl OvsConfig {
    pub fn new(endpoint: Endpoint, bridge: impl Into<String>) -> Self {
        OvsConfig {
            endpoint,
            bridge: bridge.into(),
            datapath_type: None,
            uplink: None,
            uplink_vlans: Vec::new(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Wires pods as VLAN access ports of an OVS bridge.
#[derive(Clone)]
pub struct OvsDatapath {
    /// rtnetlink in the netns of ovs-vswitchd (ipamd's `--netns`), where
    /// the host ends of the veths live.
    handle: Netlink,
    /// Deletes veths off the shared socket (see `LinkDeleter`).
    deleter: LinkDeleter,
    /// Retired host ends and their reaper (see `graveyard`).
    graveyard: Graveyard,
    /// Writes return once ovs-vswitchd applied them.
    ovs: Ovsdb,
    /// The same connection, not waiting for ovs-vswitchd: for removals, where
    /// the database is what counts (a stopped ovs-vswitchd applies it when it
    /// is back).
    ovs_nowait: Ovsdb,
    bridge: String,
    mtu: u32,
    /// The bridge is on the userspace datapath: pods' veths need TX
    /// checksum offload off (see `pod_end::disable_tx_checksum`).
    userspace: bool,
    /// The duplicate-address probe's window; None: no probe.
    dad_probe: Option<Duration>,
}

async fn link_mtu(handle: &Handle, name: &str) -> Option<u32> {
    let link = netlinksafe::link_by_name(handle, name).await.ok()??;
    link.attributes.into_iter().find_map(|a| match a {
        LinkAttribute::Mtu(mtu) => Some(mtu),
        _ => None,
    })
}

impl OvsDatapath {
    /// Connects to ovsdb-server (retrying until `cfg.timeout`, in case it is
    /// starting), makes sure the bridge and the uplink's trunk port exist, with
    /// the host ends of pod veths in the calling thread's netns.
    pub async fn new(cfg: &OvsConfig) -> Result<Self, DatapathError> {
        Self::new_in(cfg, None).await
    }

    /// Like [`OvsDatapath::new`], with ovs-vswitchd and the host ends of pod
    /// veths in the network namespace `netns` (ipamd's `--netns`).
    pub async fn new_in(cfg: &OvsConfig, netns: Option<&Path>) -> Result<Self, DatapathError> {
        validate_ifname(&cfg.bridge)?;
        if let Some(uplink) = &cfg.uplink {
            validate_ifname(uplink)?;
        }
        let handle = netlink_in(netns)?;
        let deleter = LinkDeleter::new(netns)?;
        let graveyard = Graveyard::start(netns).await?;
        let opts = Options {
            timeout: cfg.timeout,
            wait_applied: true,
        };
        let ovs = Ovsdb::connect(&cfg.endpoint, opts.clone())
            .await
            .map_err(ovs_error("connect to ovsdb-server"))?;
        let ovs_nowait = ovs.with_options(Options {
            wait_applied: false,
            ..opts
        });
        let bridge = cfg.bridge.as_str();
        ovs.ensure_bridge(bridge, cfg.datapath_type.as_deref())
            .await
            .map_err(ovs_error(format!("make sure OVS bridge {bridge} exists")))?;
        let userspace = match cfg.datapath_type.as_deref() {
            Some(t) => t == "netdev",
            // An existing bridge, type unknown: asking for "netdev" changes
            // nothing and is refused unless it is one.
            None => match ovs.ensure_bridge(bridge, Some("netdev")).await {
                Ok(()) => true,
                Err(e) if matches!(e.kind(), ErrorKind::Conflict { .. }) => false,
                Err(e) => {
                    return Err(ovs_error(format!(
                        "read the datapath_type of OVS bridge {bridge}"
                    ))(e))
                }
            },
        };
        if let Some(uplink) = &cfg.uplink {
            ensure_uplink(&handle, &ovs, bridge, uplink, &cfg.uplink_vlans).await?;
        }
        // The uplink's MTU is the segment's; the bridge's own device (a tap
        // with the userspace datapath) is the next best guess.
        let mut mtu = None;
        for name in cfg.uplink.iter().map(String::as_str).chain([bridge]) {
            mtu = link_mtu(&handle, name).await;
            if mtu.is_some() {
                break;
            }
        }
        let mtu = mtu.unwrap_or(DEFAULT_MTU);
        tracing::info!(
            endpoint = %cfg.endpoint,
            bridge,
            uplink = cfg.uplink.as_deref().unwrap_or("none"),
            mtu,
            userspace,
            "OVS datapath ready"
        );
        Ok(OvsDatapath {
            handle,
            deleter,
            graveyard,
            ovs,
            ovs_nowait,
            bridge: bridge.to_string(),
            mtu,
            userspace,
            dad_probe: None,
        })
    }

    /// Probe for another owner of each pod's IP for `window` before using it
    /// (see [`DatapathError::AddressConflict`]).
    pub fn with_dad_probe(mut self, window: Duration) -> Self {
        self.dad_probe = Some(window);
        self
    }

    /// When retired host veths are deleted (see `graveyard`).
    pub fn with_reap_policy(self, policy: ReapPolicy) -> Self {
        self.graveyard.set_policy(policy);
        self
    }

    /// What the graveyard of retired host veths did so far.
    pub fn graveyard_stats(&self) -> GraveyardStats {
        self.graveyard.stats()
    }

    /// The ports on our bridge marked `moor-owner=moor`.
    async fn our_ports(&self) -> Result<Vec<moor_ovs::Port>, DatapathError> {
        let bridge = self.bridge.as_str();
        let all = self
            .ovs
            .ports_with(OWNER_KEY, OWNER)
            .await
            .map_err(ovs_error(format!(
                "list moor's ports on OVS bridge {bridge}"
            )))?;
        Ok(all.into_iter().filter(|p| p.bridge == bridge).collect())
    }

    /// The OVS bridge's name.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// MTU given to both ends of pod veths.
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// The OVSDB client (writes wait for ovs-vswitchd).
    pub fn ovsdb(&self) -> &Ovsdb {
        &self.ovs
    }

    async fn wire_now(self, link: PodLink) -> Result<Wired, DatapathError> {
        // Enters the pod's netns while the pair is being created here.
        let _busy = self.graveyard.busy();
        let mut laps = Laps::start();
        let mut steps = WireSteps::default();
        let mut pair = NewPair::prepare(&link, &self.handle)?;
        let host_mac = pair.host_mac;
        steps.prepare = laps.lap();
        pair.clear().await?;
        steps.clear = laps.lap();
        pair.create(
            &self.handle,
            None,
            self.mtu,
            &format!("for OVS bridge {}", self.bridge),
        )
        .await?;
        steps.create = laps.lap();
        // The pod end is configured on its thread while OVS adds the host end
        // as a port: each needs only the pair.
        let spec = pod_port(&link);
        let pod_started = laps;
        let pod_side = async {
            let configured = pair
                .configure_pod(self.userspace, self.dad_probe.is_some())
                .await;
            let mut since = pod_started;
            (configured, since.lap())
        };
        let ((configured, pod_took), added) =
            tokio::join!(pod_side, self.ovs.add_port(&self.bridge, &spec));
        let all_took = laps.lap();
        steps.pod_side = pod_took;
        steps.forwarding = all_took.saturating_sub(pod_took);
        let configured = configured.map(|(announcer, waited)| {
            steps.pod_thread_wait = waited;
            announcer
        });
        let port_written = match &added {
            Ok(()) => true,
            Err(e) => !nothing_written(e),
        };
        let announcer = match (configured, added) {
            (Ok(announcer), Ok(())) => announcer,
            (configured, added) => {
                self.rollback(&link.host_ifname, port_written).await;
                return Err(match (configured, added) {
                    (Err(e), _) => e,
                    (_, Err(e)) => ovs_error(format!(
                        "add port {} (VLAN {}) to OVS bridge {}",
                        link.host_ifname,
                        fmt_tag(link.vlan),
                        self.bridge
                    ))(e),
                    (Ok(_), Ok(())) => unreachable!("handled above"),
                });
            }
        };
        // ovs-vswitchd has applied the port: the probe and the first
        // announcement go through an installed port.
        let announcer = match probe_for_owner(announcer, self.dad_probe, &link).await {
            Ok(a) => a,
            Err(e) => {
                self.rollback(&link.host_ifname, true).await;
                return Err(e);
            }
        };
        steps.probe = laps.lap();
        let sent = announce_first(&announcer, &link);
        steps.announce = laps.lap();
        if let Err(e) = sent {
            self.rollback(&link.host_ifname, true).await;
            return Err(e);
        }
        tokio::spawn(announce_again(announcer, link));
        Ok(Wired {
            host_mac,
            mtu: self.mtu,
            steps,
        })
    }

    /// Undoes a failed wire: the port (if it may have been written) and the
    /// veth, both at once so that an unreachable ovsdb-server delays it by
    /// one timeout at most.
    async fn rollback(&self, host_ifname: &str, port: bool) {
        let remove = async {
            if !port {
                return;
            }
            if let Err(e) = self.ovs_nowait.remove_port(&self.bridge, host_ifname).await {
                tracing::error!(
                    host_ifname,
                    bridge = %self.bridge,
                    error = %e,
                    "rollback of a failed wire could not remove the OVS port; \
                     ipamd's next start removes it (reconcile)"
                );
            }
        };
        tokio::join!(remove, veth::rollback(&self.handle, host_ifname));
    }

    /// The port named `link.host_ifname` on our bridge, if any.
    async fn port_of(&self, link: &PodLink) -> Result<Option<Port>, DatapathError> {
        let find = |ports: Vec<Port>| {
            ports
                .into_iter()
                .find(|p| p.name == link.host_ifname && p.bridge == self.bridge)
        };
        let op = || {
            format!(
                "look up port {} on OVS bridge {}",
                link.host_ifname, self.bridge
            )
        };
        let mine = self
            .ovs
            .ports_with(CONTAINER_KEY, &link.container_id)
            .await
            .map_err(ovs_error(op()))?;
        if let Some(port) = find(mine) {
            return Ok(Some(port));
        }
        // Not found by its external_ids: it may be there without them.
        let all = self
            .ovs
            .ports(&self.bridge)
            .await
            .map_err(ovs_error(op()))?;
        Ok(find(all))
    }
}

/// Makes the uplink a trunk port of `bridge` (all VLANs if `vlans` is empty),
#[async_trait::async_trait]
impl Datapath for OvsDatapath {
    async fn wire(&self, link: &PodLink) -> Result<Wired, DatapathError> {
        // Run to completion even if the caller is cancelled, so a half-wired
        // pod is always rolled back.
        let task = tokio::spawn(self.clone().wire_now(link.clone()));
        task.await.map_err(|e| DatapathError::Worker {
            netns: link.netns.clone(),
            reason: format!("wiring task failed: {e}"),
        })?
    }

    async fn unwire(&self, host_ifname: &str) -> Result<(), DatapathError> {
        // The port row goes and the veth is retired (down, renamed into the
        // graveyard; the reaper deletes it later) at once; both are
        // idempotent, so a DEL that failed half-way (ovsdb-server down) is
        // simply retried. The host end stays without a master: moving it out
        // of OVS is the port row's removal, and a kernel OVS datapath
        // refuses `nomaster`.
        let _busy = self.graveyard.busy();
        let (port, host) = tokio::join!(
            self.ovs_nowait.remove_port(&self.bridge, host_ifname),
            self.graveyard
                .retire(&self.handle, &self.deleter, host_ifname, PortKind::Ovs)
        );
        let deleted = host?;
        match port {
            Ok(removed) => tracing::debug!(host_ifname, removed, deleted, "unwired"),
            // The pod is gone with its veth; a DEL must not fail because the
            // switch's database is out of reach. The port row, now without
            // an interface, is the leak sweep's (`orphan_ports`).
            Err(e) => tracing::warn!(host_ifname, bridge = %self.bridge, error = %e,
                "DEL removed the pod's veth but not its OVS port (ovsdb-server unreachable?); \
                 the leak sweep removes the port once the database answers"),
        }
        Ok(())
    }

    async fn check(&self, link: &PodLink) -> Result<(), DatapathError> {
        let host_ifname = &link.host_ifname;
        check::check_host_end_up(&self.handle, host_ifname).await?;
        let port = self.port_of(link).await?.ok_or_else(|| {
            DatapathError::CheckFailed(format!(
                "host interface {host_ifname} is not a port of OVS bridge {}",
                self.bridge
            ))
        })?;
        let mut problems = setting_problems(&port, link);
        problems.extend(usage_problem(&port));
        if !problems.is_empty() {
            return Err(DatapathError::CheckFailed(format!(
                "OVS port {host_ifname} on bridge {}: {}",
                self.bridge,
                problems.join("; ")
            )));
        }
        check::check_pod_side(link).await
    }

    async fn host_link_exists(&self, host_ifname: &str) -> Result<bool, DatapathError> {
        self.host_exists(host_ifname).await
    }

    async fn orphan_ports(&self) -> Result<Vec<String>, DatapathError> {
        let mut out = Vec::new();
        for port in self.our_ports().await? {
            if !self.host_exists(&port.name).await? {
                out.push(port.name.clone());
            }
        }
        Ok(out)
    }

    async fn remove_orphan_port(&self, name: &str) -> Result<bool, DatapathError> {
        // An ADD may have re-created the pod's veth (and port) since.
        if self.host_exists(name).await? {
            return Ok(false);
        }
        self.ovs_nowait
            .remove_port(&self.bridge, name)
            .await
            .map_err(ovs_error(format!(
                "remove port {name}, whose interface is gone, from OVS bridge {}",
                self.bridge
            )))
    }

    /// Ports with `moor-owner=moor` on our bridge whose (container, ifname)
    /// is not live are removed (the host veth, if any, is left alone);
    /// live pods' ports with other settings are replaced; missing ones are
    /// added again if the host veth exists, and reported in `host_gone` if
    /// not. Ports without our owner mark (the uplink, anyone else's) are
    /// never touched, except one squatting a live pod's port name.
    async fn reconcile(&self, live: &[PodLink]) -> Result<ReconcileReport, DatapathError> {
        self.reconcile_ports(live).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::PodIpv6;
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    fn link() -> PodLink {
        PodLink {
            netns: "/run/netns/pod-a".into(),
            ifname: "eth0".into(),
            host_ifname: "mr0123456789ab".into(),
            address: "10.1.0.17/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 1, 0, 1).into(),
            ipv6: None,
            mac: [0x0a, 0x58, 10, 1, 0, 17],
            vlan: Some(100),
            pod_namespace: "default".into(),
            pod_name: "web-0".into(),
            container_id: "c0ffee".into(),
        }
    }

    #[test]
    fn pod_port_names_the_pod() {
        let spec = pod_port(&link());
        assert_eq!(spec.name, "mr0123456789ab");
        assert_eq!(spec.tag, Some(100));
        assert!(spec.trunks.is_empty() && spec.kind.is_none());
        let want: BTreeMap<String, String> = [
            (OWNER_KEY, "moor"),
            (NAMESPACE_KEY, "default"),
            (NAME_KEY, "web-0"),
            (CONTAINER_KEY, "c0ffee"),
            (IFNAME_KEY, "eth0"),
            (IP_KEY, "10.1.0.17"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(spec.external_ids, want);
        let untagged = pod_port(&PodLink {
            vlan: None,
            ..link()
        });
        assert_eq!(untagged.tag, None);
        let dual = pod_port(&PodLink {
            ipv6: Some(PodIpv6 {
                address: "fd00:1::17/64".parse().unwrap(),
                gateway: "fd00:1::1".parse().unwrap(),
            }),
            ..link()
        });
        assert_eq!(dual.external_ids[IP_KEY], "10.1.0.17");
        assert_eq!(dual.external_ids[IP6_KEY], "fd00:1::17");
        assert!(!spec.external_ids.contains_key(IP6_KEY));
    }

    #[test]
    fn problems_name_each_difference() {
        let l = link();
        let spec = pod_port(&l);
        let mut port = Port {
            name: l.host_ifname.clone(),
            bridge: "br-int".into(),
            kind: "system".into(),
            tag: spec.tag,
            trunks: vec![],
            external_ids: spec.external_ids.clone(),
            ofport: Some(3),
            error: None,
        };
        assert!(setting_problems(&port, &l).is_empty());
        assert!(usage_problem(&port).is_none());
        // Extra keys (other tools') are fine.
        port.external_ids.insert("attached-mac".into(), "x".into());
        assert!(setting_problems(&port, &l).is_empty());
        port.tag = Some(300);
        port.external_ids.insert(IP_KEY.into(), "10.1.0.99".into());
        port.external_ids.remove(NAME_KEY);
        let p = setting_problems(&port, &l).join("; ");
        for want in [
            "tag 300, expected 100",
            "external_ids:moor-ip is \"10.1.0.99\", expected \"10.1.0.17\"",
            "external_ids:moor-name is missing",
        ] {
            assert!(p.contains(want), "{p}");
        }
        port.ofport = Some(-1);
        assert!(usage_problem(&port).unwrap().contains("could not open"));
        port.error = Some("could not open network device x (No such device)".into());
        assert!(usage_problem(&port).unwrap().contains("No such device"));
    }
}
