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
//! ([`OvsCluster::pod_with_ipv6`] leaves it on, for IPv6 pods whose own
//! neighbour discovery a test means to see or suppress.)
//!
//! With [`OvsCluster::with_families`] the ToRs are dual stack or IPv6 only:
//! ToR `10.A.B.0/24` gets `fd00:A:B::/64` (the octets as hex groups: 200
//! is c8), gateway `::1` on the same internal port (no DAD), and a pod
//! range at the same positions as the IPv4 one (`.10` -> `::a`), so that a
//! dual-stack pod's IPv6 address ends as its IPv4 one does
//! ([`OvsCluster::tor6`]).
//! `ovs-ofctl` against a node's bridge ([`OvsCluster::ofctl`]) lets a test
//! add flows above the bridge's NORMAL one, e.g. to drop a pod's frames.
//!
//! Drop stops the ipamds, then every ovs-vswitchd and ovsdb-server (by pid),
//! then the etcd members, and deletes every namespace and directory; when
//! the test panicked it first prints the tail of every OVS log (the cluster
//! prints the ipamds').

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Deref;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use moor_testkit::cmd::{run as run_ok, tail};
use moor_testkit::netns::disable_ipv6;
use moor_testkit::Ovs;
use serde_json::Value;

use crate::cluster::{Cluster, Fabric, Layout, TorNet, FAST_SWEEP, TOR_BRIDGE, UPLINK};
use crate::testbed::Families;
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

/// The IPv6 side of a ToR (or segment) of an [`OvsCluster`] with IPv6.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tor6 {
    /// e.g. fd00:c8:5::/64.
    pub subnet: String,
    pub gateway: Ipv6Addr,
    /// The pod range: `range.0..=range.1`.
    pub range: (Ipv6Addr, Ipv6Addr),
}

impl Tor6 {
    /// The IPv6 side of `t`: `10.A.B.0/24` -> `fd00:A:B::/64`, gateway
    /// `::1`, the pod range at the IPv4 range's positions.
    fn of(t: &TorNet) -> Tor6 {
        let o = t.gateway.octets();
        let at = |last: u8| {
            Ipv6Addr::new(
                0xfd00,
                u16::from(o[1]),
                u16::from(o[2]),
                0,
                0,
                0,
                0,
                u16::from(last),
            )
        };
        Tor6 {
            subnet: format!("{}/64", at(0)),
            gateway: at(1),
            range: (at(t.range.0.octets()[3]), at(t.range.1.octets()[3])),
        }
    }

    pub fn in_range(&self, ip: Ipv6Addr) -> bool {
        (self.range.0..=self.range.1).contains(&ip)
    }
}

pub struct OvsCluster {
    /// One per ToR namespace, then one per node. Dropped (stopped) before
    /// `cluster`, which deletes their namespaces.
    tor_switches: Vec<Switch>,
    node_switches: Vec<Switch>,
    /// The ToRs' address families (all ToRs have the same).
    families: Families,
    /// The IPv6 side of every ToR and segment, by name (none with IPv4
    /// only).
    tor6: BTreeMap<String, Tor6>,
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
    pub fn new(layout: Layout) -> OvsCluster {
        Self::with_families(layout, Families::Ipv4)
    }

    /// [`OvsCluster::new`] with ToRs of `families`: dual stack or IPv6
    /// only add each ToR's [`Tor6`] (its gateway on the ToR's switch, its
    /// subnet in `ipamctl tor add`); IPv6 only leaves out the IPv4 side.
    pub fn with_families(mut layout: Layout, families: Families) -> OvsCluster {
        layout.fabric = Fabric::Bare;
        let mut c = OvsCluster {
            tor_switches: Vec::new(),
            node_switches: Vec::new(),
            families,
            tor6: BTreeMap::new(),
            cluster: Cluster::new(layout),
        };
        if families != Families::Ipv4 {
            c.tor6 = c
                .cluster
                .tors
                .iter()
                .map(|t| (t.name.clone(), Tor6::of(t)))
                .collect();
        }
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
            ]
            .map(String::from)
            .to_vec();
            // The leak sweep removes ports a DEL during an OVS outage
            // could not; fast here so tests see it.
            c.cluster.nodes[i]
                .datapath_args
                .extend(FAST_SWEEP.map(String::from));
            c.node_switches.push(Switch {
                owner: name.clone(),
                ovs: Mutex::new(ovs),
            });
            c.cluster.start_ipamd(&name);
        }
        c.define_tors();
        c
    }

    /// `ipamctl tor add` of every ToR and segment, in order, with the
    /// subnets of [`OvsCluster::with_families`].
    fn define_tors(&self) {
        if self.families == Families::Ipv4 {
            return self.cluster.define_tors();
        }
        let ctl = self.cluster.ctl(&self.cluster.nodes[0].name);
        for t in &self.cluster.tors {
            let t6 = self.tor6(&t.name);
            let mut args: Vec<String> = ["tor", "add", &t.name].map(String::from).to_vec();
            let mut family = |subnet: &str, gateway: String, range: String| {
                args.extend(
                    ["--subnet", subnet, "--gateway", &gateway, "--range", &range]
                        .map(String::from),
                );
            };
            if self.families == Families::Dual {
                family(
                    &t.subnet,
                    t.gateway.to_string(),
                    format!("{}-{}", t.range.0, t.range.1),
                );
            }
            family(
                &t6.subnet,
                t6.gateway.to_string(),
                format!("{}-{}", t6.range.0, t6.range.1),
            );
            if let Some(v) = t.vlan {
                args.extend(["--vlan".to_string(), v.to_string()]);
            }
            if let Some(of) = &t.segment_of {
                args.extend(["--segment-of".to_string(), of.clone()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ctl.ok(&args);
        }
    }

    /// The IPv6 side of ToR (or segment) `name`; panics without IPv6.
    pub fn tor6(&self, name: &str) -> &Tor6 {
        self.tor6
            .get(name)
            .unwrap_or_else(|| panic!("ToR {name} has no IPv6 subnet (OvsCluster::with_families)"))
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
            if self.families != Families::Ipv6 {
                let cidr = format!("{}/24", t.gateway);
                run_ok("ip", &["-n", ns, "addr", "add", &cidr, "dev", &port]);
            }
            if let Some(t6) = self.tor6.get(&t.name) {
                // No DAD: usable at once, as the pods' addresses are.
                let cidr = format!("{}/64", t6.gateway);
                #[rustfmt::skip]
                run_ok("ip", &["-n", ns, "addr", "add", &cidr, "dev", &port, "nodad"]);
            }
            run_ok("ip", &["-n", ns, "link", "set", &port, "up"]);
            let link: Value = serde_json::from_str(&run_ok(
                "ip",
                &["-n", ns, "-j", "link", "show", "dev", &port],
            ))
            .expect("ip -j link prints JSON");
            assert_eq!(
                link[0]["address"].as_str(),
                Some(t.mac.as_str()),
                "gateway {port} of {} has its MAC",
                t.name
            );
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

    /// `ovs-ofctl COMMAND unix:<node's br-int management socket> ARGS...`
    /// (e.g. `add-flow`, `del-flows`, `dump-flows`); panics if it fails.
    pub fn ofctl(&self, node: &str, command: &str, args: &[&str]) -> String {
        let mgmt = self
            .node_switch(node)
            .ovs()
            .dir
            .join(format!("{NODE_BRIDGE}.mgmt"));
        let target = format!("unix:{}", mgmt.display());
        let mut all = vec![command, &target];
        all.extend_from_slice(args);
        run_ok("ovs-ofctl", &all)
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

    /// A pod's namespace as [`Cluster::pod`] makes it, IPv6 left on: its
    /// kernel's own neighbour discovery and MLD (link-local DAD, router
    /// solicitations, reports) go on the wire as they would in production.
    pub fn pod_with_ipv6(&self, name: &str) -> Pod {
        self.cluster.pod(name)
    }

    /// How long until a ping from `pod` to `ip` is answered, if within
    /// `within`: pings of 100 ms each, one after the other.
    pub fn reaches(&self, pod: &Pod, ip: Ipv4Addr, within: Duration) -> Option<Duration> {
        self.reaches_from(pod, None, ip.into(), within)
    }

    /// [`OvsCluster::reaches`] of any family, the pings sent from source
    /// address `from` when given (`ping -I`).
    pub fn reaches_from(
        &self,
        pod: &Pod,
        from: Option<IpAddr>,
        ip: IpAddr,
        within: Duration,
    ) -> Option<Duration> {
        let ip = ip.to_string();
        let from = from.map(|f| f.to_string());
        let mut args = vec!["netns", "exec", &pod.netns, "ping", "-c1", "-W0.1", "-q"];
        if let Some(from) = &from {
            args.extend(["-I", from.as_str()]);
        }
        args.push(&ip);
        let start = Instant::now();
        loop {
            let answered = Command::new("ip")
                .args(&args)
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
