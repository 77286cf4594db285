//! Issue 4's testbed: nodes and a ToR switched by Open vSwitch, on the
//! cluster of [`crate::cluster`] (a real 3-member etcd, one ipamd per node).
//!
//! ```text
//!   ToR netns rack-1                          node netns n1
//!   ovs-vswitchd, bridge sw0 (netdev)         ovs-vswitchd, bridge br-int (netdev)
//!     gw100  internal, tag 100, .1 of VLAN 100   uplink0  trunk (ipamd --uplink)
//!     gw200  internal, tag 200, .1 of VLAN 200   mr...    access, tag of the pod's
//!     d-n1   trunk -------------------------------- uplink0   ToR/segment -- pod eth0
//!     d-n2   trunk -------------- uplink0 (node netns n2, the same)
//! ```
//!
//! Every ToR namespace and every node namespace has its own ovsdb-server and
//! ovs-vswitchd (`datapath_type=netdev`: the kernel has no openvswitch
//! module and no 802.1Q), with database, sockets, pidfiles and logs in a
//! directory of its own (moor-testkit's `Ovs`, `/tmp/moor-ovs-PID-N`).
//! Both run inside the namespace (`ip netns exec`), where ovs-vswitchd's
//! netdevs are.
//! Each node's ipamd runs `--mode ovs --bridge br-int --uplink uplink0
//! --ovsdb unix:<that node's db.sock> --netns <node>`: it makes the bridge
//! and the trunk. The gateway of each VLAN is an internal port of the ToR's
//! switch with a pinned MAC; the ToR namespace does not route between its
//! VLANs, so whatever crosses VLANs crossed them at L2.
//!
//! Pods are namespaces made as a runtime makes them, with IPv6 off (pods'
//! link-local chatter teaches switches where a MAC is and would hide a
//! missing announcement), ADDed by the real `moor` in the node namespace.
//!
//! Drop stops the ipamds, then every ovs-vswitchd and ovsdb-server (by pid),
//! then the etcd members, and deletes every namespace and directory; when
//! the test panicked it first prints the tail of every OVS log (the cluster
//! prints the ipamds').

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::ops::Deref;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use moor_testkit::cmd::{run as run_ok, tail};
use moor_testkit::netns::disable_ipv6;
use moor_testkit::Ovs;
use serde_json::Value;

use crate::cluster::{Cluster, Fabric, Layout, TOR_BRIDGE, UPLINK};
use crate::Pod;

/// The integration bridge on every node (ipamd's `--bridge`).
pub const NODE_BRIDGE: &str = "br-int";

/// One port of an OVS bridge as `ovs-vsctl` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvsPort {
    pub name: String,
    /// None: a trunk (or untagged) port.
    pub tag: Option<u16>,
    pub trunks: Vec<u16>,
    pub external_ids: BTreeMap<String, String>,
    /// The interface's OpenFlow port number; None until ovs-vswitchd has
    /// applied it, -1 when it could not open the device.
    pub ofport: Option<i64>,
}

/// An Open vSwitch of a ToR or node namespace.
struct Switch {
    /// The ToR or node it switches.
    owner: String,
    ovs: Mutex<Ovs>,
}

impl Switch {
    fn ovs(&self) -> MutexGuard<'_, Ovs> {
        self.ovs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct OvsCluster {
    /// One per ToR namespace, then one per node. Dropped (stopped) before
    /// `cluster`, which deletes their namespaces.
    tor_switches: Vec<Switch>,
    node_switches: Vec<Switch>,
    cluster: Cluster,
}

impl Deref for OvsCluster {
    type Target = Cluster;

    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

/// The elements of an OVSDB set (a lone atom is a set of one).
fn set_of(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) if a.first().is_some_and(|k| k == "set") => a
            .get(1)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        other => vec![other.clone()],
    }
}

/// An OVSDB map of strings.
fn map_of(v: &Value) -> BTreeMap<String, String> {
    v.get(1)
        .and_then(Value::as_array)
        .map(|pairs| {
            pairs
                .iter()
                .filter_map(|kv| Some((kv[0].as_str()?.to_string(), kv[1].as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// `ovs-vsctl --format=json` output as rows of cells.
fn rows(json: &str) -> Vec<Vec<Value>> {
    let v: Value = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("ovs-vsctl printed no JSON ({e}): {json}"));
    v["data"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| r.as_array().cloned().unwrap_or_default())
                .collect()
        })
        .unwrap_or_default()
}

impl OvsCluster {
    /// The cluster of `layout` (its fabric is set to [`Fabric::Bare`]) with
    /// Open vSwitch in every ToR and node namespace, every node's ipamd in
    /// OVS mode, and the ToRs (and segments) defined.
    pub fn new(mut layout: Layout) -> OvsCluster {
        layout.fabric = Fabric::Bare;
        let mut c = OvsCluster {
            tor_switches: Vec::new(),
            node_switches: Vec::new(),
            cluster: Cluster::new(layout),
        };
        // Each step pushes what it started, so a panic half-way still
        // stops it (Drop).
        let primaries: Vec<String> = c
            .cluster
            .tors
            .iter()
            .filter(|t| t.segment_of.is_none())
            .map(|t| t.name.clone())
            .collect();
        for tor in primaries {
            let ns = c.cluster.tor(&tor).ns.clone();
            c.tor_switches.push(Switch {
                owner: tor.clone(),
                ovs: Mutex::new(Ovs::start_in(&ns)),
            });
            c.build_tor_switch(&tor);
        }
        for i in 0..c.cluster.nodes.len() {
            let (name, ns) = (
                c.cluster.nodes[i].name.clone(),
                c.cluster.nodes[i].ns.clone(),
            );
            let ovs = Ovs::start_in(&ns);
            c.cluster.nodes[i].datapath_args = [
                "--mode",
                "ovs",
                "--bridge",
                NODE_BRIDGE,
                "--ovsdb",
                &ovs.db(),
                "--uplink",
                UPLINK,
                "--ovs-datapath-type",
                "netdev",
                // The leak sweep removes ports a DEL during an OVS outage
                // could not; fast here so tests see it.
                "--reconcile-interval-seconds",
                "1",
                "--gc-grace-seconds",
                "1",
            ]
            .map(String::from)
            .to_vec();
            c.node_switches.push(Switch {
                owner: name.clone(),
                ovs: Mutex::new(ovs),
            });
            c.cluster.start_ipamd(&name);
        }
        c.cluster.define_tors();
        c
    }

    /// The ToR's switch: every node under it on a trunk port, and the
    /// gateway of the ToR and of each of its segments on an internal port
    /// tagged with its VLAN.
    fn build_tor_switch(&self, tor: &str) {
        let sw = self.tor_switch(tor);
        let ovs = sw.ovs();
        let ns = &self.cluster.tor(tor).ns;
        ovs.vsctl(&[
            "add-br",
            TOR_BRIDGE,
            "--",
            "set",
            "bridge",
            TOR_BRIDGE,
            "datapath_type=netdev",
        ]);
        for node in self.cluster.nodes.iter().filter(|n| n.tor == tor) {
            // No tag, no trunks: a trunk of every VLAN.
            ovs.vsctl(&["add-port", TOR_BRIDGE, &format!("d-{}", node.name)]);
        }
        // A ToR routes between its VLANs; this one must not, so that the
        // tests see what VLAN isolation alone does.
        run_ok(
            "ip",
            &[
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=0",
            ],
        );
        let segments = self
            .cluster
            .tors
            .iter()
            .filter(|t| t.name == tor || t.segment_of.as_deref() == Some(tor));
        for t in segments {
            let port = gateway_port(t.vlan);
            let mut add = vec!["add-port", TOR_BRIDGE, &port];
            let tag = t.vlan.map(|v| format!("tag={v}"));
            if let Some(tag) = &tag {
                add.push(tag);
            }
            // Pinned: the gateway's MAC must not change under the pods.
            let mac = format!("mac=\"{}\"", t.mac);
            add.extend(["--", "set", "interface", &port, "type=internal", &mac]);
            ovs.vsctl(&add);
            let cidr = format!("{}/24", t.gateway);
            run_ok("ip", &["-n", ns, "addr", "add", &cidr, "dev", &port]);
            run_ok("ip", &["-n", ns, "link", "set", &port, "up"]);
            let have = crate::testbed::addr_in(ns, &port)
                .unwrap_or_else(|| panic!("gateway port {port} in {ns} has no address"));
            assert_eq!(have.mac, t.mac, "gateway {port} of {} has its MAC", t.name);
        }
    }

    fn tor_switch(&self, tor: &str) -> &Switch {
        self.tor_switches
            .iter()
            .find(|s| s.owner == tor)
            .unwrap_or_else(|| panic!("no switch for ToR {tor}"))
    }

    fn node_switch(&self, node: &str) -> &Switch {
        self.node_switches
            .iter()
            .find(|s| s.owner == node)
            .unwrap_or_else(|| panic!("no switch on node {node}"))
    }

    // ------------------------------------------------------------ switches

    /// `ovs-vsctl` against `node`'s ovsdb-server; panics if it fails.
    pub fn vsctl(&self, node: &str, args: &[&str]) -> String {
        self.node_switch(node).ovs().vsctl(args)
    }

    /// `ovs-vsctl` against the switch of ToR `tor`; panics if it fails.
    pub fn tor_vsctl(&self, tor: &str, args: &[&str]) -> String {
        self.tor_switch(tor).ovs().vsctl(args)
    }

    /// `node`'s ovsdb-server endpoint, `unix:PATH`.
    pub fn ovsdb(&self, node: &str) -> String {
        self.node_switch(node).ovs().db()
    }

    /// SIGKILLs `node`'s ovsdb-server and ovs-vswitchd, as a crash would.
    pub fn kill9_ovs(&self, node: &str) {
        let mut ovs = self.node_switch(node).ovs();
        ovs.kill_ovsdb_server();
        ovs.kill_vswitchd();
    }

    /// Starts `node`'s ovsdb-server (on its database) and ovs-vswitchd again.
    pub fn start_ovs(&self, node: &str) {
        let mut ovs = self.node_switch(node).ovs();
        ovs.start_ovsdb_server();
        ovs.start_vswitchd();
    }

    /// Every port of `node`'s `br-int` (not the bridge's own), by name.
    pub fn ports(&self, node: &str) -> BTreeMap<String, OvsPort> {
        let ovs = self.node_switch(node).ovs();
        let on_bridge: Vec<String> = ovs
            .vsctl(&["list-ports", NODE_BRIDGE])
            .lines()
            .map(str::to_string)
            .collect();
        let ofports: BTreeMap<String, Option<i64>> = rows(&ovs.vsctl(&[
            "--format=json",
            "--columns=name,ofport",
            "list",
            "interface",
        ]))
        .into_iter()
        .map(|r| {
            let name = r[0].as_str().unwrap_or_default().to_string();
            (name, set_of(&r[1]).first().and_then(Value::as_i64))
        })
        .collect();
        let u16s = |v: &Value| -> Vec<u16> {
            set_of(v)
                .iter()
                .filter_map(|x| x.as_u64().map(|n| n as u16))
                .collect()
        };
        rows(&ovs.vsctl(&[
            "--format=json",
            "--columns=name,tag,trunks,external_ids",
            "list",
            "port",
        ]))
        .into_iter()
        .filter_map(|r| {
            let name = r[0].as_str()?.to_string();
            let port = OvsPort {
                tag: u16s(&r[1]).first().copied(),
                trunks: u16s(&r[2]),
                external_ids: map_of(&r[3]),
                ofport: ofports.get(&name).copied().flatten(),
                name: name.clone(),
            };
            on_bridge.contains(&name).then_some((name, port))
        })
        .collect()
    }

    /// The ports of `node`'s `br-int` that say they are moor's pods'
    /// (`external_ids:moor-owner=moor`).
    pub fn pod_ports(&self, node: &str) -> BTreeMap<String, OvsPort> {
        let mut ports = self.ports(node);
        ports.retain(|_, p| p.external_ids.get("moor-owner").map(String::as_str) == Some("moor"));
        ports
    }

    /// The last `lines` lines of the ovs-vswitchd and ovsdb-server logs of
    /// every switch.
    pub fn ovs_log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for (role, sw) in self
            .tor_switches
            .iter()
            .map(|s| ("ToR", s))
            .chain(self.node_switches.iter().map(|s| ("node", s)))
        {
            let dir = sw.ovs().dir.clone();
            for log in ["ovs-vswitchd.log", "ovsdb-server.log"] {
                out += &format!(
                    "---- {role} {}: last lines of {}:\n{}\n",
                    sw.owner,
                    dir.join(log).display(),
                    tail(&dir.join(log), lines)
                );
            }
        }
        out
    }

    // ------------------------------------------------------------ pods

    /// A pod's namespace as [`Cluster::pod`] makes it, with IPv6 off.
    pub fn pod(&self, name: &str) -> Pod {
        let pod = self.cluster.pod(name);
        disable_ipv6(&pod.netns).unwrap_or_else(|e| panic!("{e}"));
        pod
    }

    /// How long until a ping from `pod` to `ip` is answered, if within
    /// `within`: pings of 100 ms each, one after the other.
    pub fn reaches(&self, pod: &Pod, ip: Ipv4Addr, within: Duration) -> Option<Duration> {
        let ip = ip.to_string();
        let start = Instant::now();
        loop {
            let answered = Command::new("ip")
                .args([
                    "netns", "exec", &pod.netns, "ping", "-c1", "-W0.1", "-q", &ip,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            let took = start.elapsed();
            if answered && took <= within {
                return Some(took);
            }
            if took >= within {
                return None;
            }
        }
    }
}

/// Sends 256 KiB over TCP from `client` to an echo server in `server` at
/// `ip`:port 7777 and checks what comes back: full-size segments with right
/// checksums cross the userspace datapaths of two nodes and the ToR.
pub fn tcp_echo(client: &Pod, server: &Pod, ip: Ipv4Addr) -> Result<(), String> {
    moor_testkit::tcp_echo::tcp_echo(
        client.netns_path().into(),
        server.netns_path().into(),
        ip,
        256 << 10,
    )
}

/// The ToR's internal port that carries the gateway of VLAN `vlan`.
pub fn gateway_port(vlan: Option<u16>) -> String {
    vlan.map_or_else(|| "gw".to_string(), |v| format!("gw{v}"))
}

impl Drop for OvsCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- OVS cluster {} failed; its switches' logs:\n{}----",
                self.cluster.id,
                self.ovs_log_tails(30)
            );
        }
        // The ipamds talk to the switches: stop them first. The switches
        // stop when their fields drop, before the cluster deletes the
        // namespaces (and with them the switches' tap devices).
        let nodes: Vec<String> = self.cluster.nodes.iter().map(|n| n.name.clone()).collect();
        for n in nodes {
            self.cluster.stop_ipamd(&n);
        }
    }
}
