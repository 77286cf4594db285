//! Several nodes under several ToRs sharing one 3-member etcd cluster, each
//! node with the real ipamd on it: the cluster mode of issue 3.
//!
//! ```text
//!   etcd m0 m1 m2 (127.0.0.1, free ports)      root netns
//!     ^          ^            ^
//!   ipamd n1   ipamd n2     ipamd n3            root netns, --netns <node>
//!   (own socket, local state, pending dir; one etcd prefix for all)
//!
//!   ToR netns tor-a                    node netns n1
//!   sw0 (gateway .1, pinned MAC) - d-n1 ---- uplink0 -[br0 .2, pinned MAC]- mr... -- pod eth0
//!                                - d-n2 ---- uplink0 -[br0 .3 ...] (node netns n2)
//!   ToR netns tor-b
//!   sw0 (gateway .1)             - d-n3 ---- uplink0 -[br0 .4 ...] (node netns n3)
//! ```
//!
//! Every ToR has its own /24 and pod range; every cluster has its own
//! namespaces, names with the process id and a counter, its own etcd members
//! (data under /dev/shm: etcd's fsyncs cost nothing there) and its own etcd
//! prefix, so clusters run in parallel in one process and beside other
//! processes. ipamd runs in the root namespace (it reaches etcd on
//! 127.0.0.1) and works on its node's namespace with `--netns`; `moor` runs
//! inside the node namespace, as a runtime on that node would run it.
//!
//! With [`Fabric::Bare`] the cluster makes only the namespaces and each
//! node's uplink veth, and leaves switching them, starting the ipamds and
//! defining the ToRs to its caller (`crate::ovs_cluster` puts Open vSwitch
//! there).
//!
//! Drop kills the ipamds and the etcd members by pid and deletes every
//! namespace and directory it made, also when the test panicked (then it
//! prints the tail of every ipamd's log first). etcd members and ipamds get
//! SIGKILL if the thread that started them dies (`PR_SET_PDEATHSIG`): start
//! and restart them from the thread that owns the `Cluster`.

use std::fs::File;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use moor_ipamd::store::etcd::{EtcdOptions, EtcdStore};
use moor_ipamd::store::{Store, StoreError};
use moor_testkit::cmd::{run as run_ok, tail};
use moor_testkit::netns::{host_ends, ping_from};
use moor_testkit::{EtcdCluster, Ipamd, IpamdCommand};
use serde_json::{json, Value};

use crate::bins::{bins, Bins};
use crate::ipamctl::Ipamctl;
use crate::testbed::{
    addr_in, cni_env, net_conf, require_root, run_moor, Namespaces, BRIDGE, POD_NAMESPACE,
};
use crate::{CniRun, Counts, Pod, PodAddr};

/// The bridge in each ToR namespace that carries the gateway.
pub const TOR_BRIDGE: &str = "sw0";
/// Each node's end of its veth to the ToR (the ToR's end is `d-<node>`).
pub const UPLINK: &str = "uplink0";

/// ipamd flags for a leak sweep and a GC grace of one second, so tests see
/// what they clean up without waiting.
pub const FAST_SWEEP: [&str; 4] = [
    "--reconcile-interval-seconds",
    "1",
    "--gc-grace-seconds",
    "1",
];
/// The cniVersion of [`Cluster::moor`].
pub const CNI_VERSION: &str = "1.0.0";

/// How long etcd may take to answer writes after a start.
const ETCD_READY: Duration = Duration::from_secs(30);

/// How the ToRs and nodes of a cluster are switched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fabric {
    /// A Linux bridge with the gateway in each ToR, `br0` with the node's IP
    /// in each node, ipamd in physical mode; [`Cluster::new`] starts the
    /// ipamds and defines the ToRs.
    #[default]
    LinuxBridges,
    /// Only the namespaces and the uplink veths (up, switched by nothing):
    /// the caller builds the switches, sets [`ClusterNode::datapath_args`],
    /// starts the ipamds and calls [`Cluster::define_tors`]. VLANs and
    /// segments need this (a Linux bridge here has no VLAN filtering).
    Bare,
}

/// One ToR record of a layout: a ToR, or a segment of one.
#[derive(Debug, Clone)]
pub struct TorSpec {
    pub name: String,
    /// Number of pod IPs in its range (at most 240).
    pub pod_ips: u32,
    /// `ipamctl tor add --vlan`.
    pub vlan: Option<u16>,
    /// `ipamctl tor add --segment-of`: a segment shares the namespace (the
    /// switch) of its ToR and has its own subnet, gateway and VLAN.
    pub segment_of: Option<String>,
}

/// What ToRs and nodes a cluster has.
#[derive(Debug, Clone)]
pub struct Layout {
    /// ToRs and segments, in the order they are defined (a segment after
    /// its ToR).
    pub tors: Vec<TorSpec>,
    /// (node name, its ToR), in order. Node names are at most 12 bytes.
    pub nodes: Vec<(String, String)>,
    /// ipamd's `--log`.
    pub log: String,
    pub fabric: Fabric,
    /// More flags for every node's ipamd (e.g. `--kubeconfig PATH`).
    pub ipamd_args: Vec<String>,
    /// The binaries every node starts with; None: this tree's
    /// ([`crate::bins::bins`]). The upgrade test starts on the previous
    /// release's and swaps them node by node ([`Cluster::set_bins`]).
    pub bins: Option<&'static Bins>,
}

impl Default for Layout {
    fn default() -> Self {
        Self {
            tors: Vec::new(),
            nodes: Vec::new(),
            log: "info".into(),
            fabric: Fabric::default(),
            ipamd_args: Vec::new(),
            bins: None,
        }
    }
}

impl Layout {
    pub fn new() -> Self {
        Self::default()
    }

    /// A ToR with `pod_ips` addresses reserved for pods (at most 240).
    pub fn tor(mut self, name: &str, pod_ips: u32) -> Self {
        self.tors.push(TorSpec {
            name: name.into(),
            pod_ips,
            vlan: None,
            segment_of: None,
        });
        self
    }

    /// A ToR whose subnet is VLAN `vlan`.
    pub fn tor_on_vlan(self, name: &str, pod_ips: u32, vlan: u16) -> Self {
        let mut l = self.tor(name, pod_ips);
        l.tors.last_mut().expect("just pushed").vlan = Some(vlan);
        l
    }

    /// Another segment (subnet, VLAN `vlan`) of the ToR `of`, defined before.
    pub fn segment(mut self, name: &str, of: &str, pod_ips: u32, vlan: u16) -> Self {
        assert!(
            self.tors
                .iter()
                .any(|t| t.name == of && t.segment_of.is_none()),
            "segment {name}: define its ToR {of} first"
        );
        self.tors.push(TorSpec {
            name: name.into(),
            pod_ips,
            vlan: Some(vlan),
            segment_of: Some(of.into()),
        });
        self
    }

    pub fn node(mut self, name: &str, tor: &str) -> Self {
        self.nodes.push((name.into(), tor.into()));
        self
    }

    /// Issue 3's: n1 and n2 under tor-a (200 pod IPs), n3 under tor-b (100).
    pub fn standard() -> Self {
        Self::new()
            .tor("tor-a", 200)
            .tor("tor-b", 100)
            .node("n1", "tor-a")
            .node("n2", "tor-a")
            .node("n3", "tor-b")
    }
}

/// One ToR (or segment of one): a namespace with a bridge that holds the
/// gateway.
#[derive(Debug, Clone)]
pub struct TorNet {
    pub name: String,
    /// The ToR's namespace (a segment's is its ToR's).
    pub ns: String,
    /// e.g. 10.201.3.0/24.
    pub subnet: String,
    pub gateway: Ipv4Addr,
    /// The pod range: `range.0..=range.1`.
    pub range: (Ipv4Addr, Ipv4Addr),
    /// The pinned MAC of the gateway (with Linux bridges: of the ToR's
    /// bridge).
    pub mac: String,
    pub vlan: Option<u16>,
    /// The ToR this is a segment of.
    pub segment_of: Option<String>,
}

impl TorNet {
    /// Is `ip` in this ToR's pod range?
    pub fn in_range(&self, ip: Ipv4Addr) -> bool {
        (self.range.0..=self.range.1).contains(&ip)
    }

    pub fn pod_ips(&self) -> u32 {
        u32::from(self.range.1) - u32::from(self.range.0) + 1
    }
}

/// One node: a namespace with `br0` (pinned MAC, the node's IP) and an
/// uplink into its ToR's bridge, and its ipamd.
pub struct ClusterNode {
    pub name: String,
    pub tor: String,
    /// The node's namespace (`--netns /run/netns/<ns>`).
    pub ns: String,
    /// The node's IP on `br0` (not configured with [`Fabric::Bare`]).
    pub ip: Ipv4Addr,
    pub bridge_mac: String,
    /// ipamd's arguments that choose and set up its datapath; default
    /// `--bridge br0` (physical mode).
    pub datapath_args: Vec<String>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub local_state: PathBuf,
    /// `--pending-dir`: the socket path + ".pending", where moor writes DELs
    /// it could not hand to ipamd too.
    pub pending_dir: PathBuf,
    pub log: PathBuf,
    ns_file: File,
    ipamd: Mutex<Option<Ipamd>>,
    /// The binaries this node runs: its ipamd, and the `moor` and
    /// `ipamctl` run on it.
    bins: Mutex<&'static Bins>,
}

impl ClusterNode {
    /// The last `lines` lines of this node's ipamd log (all its runs).
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// The DEL records waiting in this node's pending directory.
    pub fn pending(&self) -> Vec<moor_proto::pending::PendingDel> {
        moor_proto::pending::scan(&self.pending_dir)
            .map(|s| s.records.into_iter().map(|(_, r)| r).collect())
            .unwrap_or_default()
    }
}

pub struct Cluster {
    /// Prefix of every namespace name: `moor-cl-PID-N`.
    pub id: String,
    /// The etcd prefix every ipamd of this cluster uses.
    pub prefix: String,
    pub tors: Vec<TorNet>,
    pub nodes: Vec<ClusterNode>,
    /// ipamds' directories.
    pub dir: PathBuf,
    /// The etcd members (data under /dev/shm when there is one).
    etcd: EtcdCluster,
    log_level: String,
    ipamd_args: Vec<String>,
    /// The binaries nodes start with.
    bins: &'static Bins,
    netns: Namespaces,
}

/// A current-thread tokio runtime for one call into the store.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

impl Cluster {
    /// Starts the etcd members, builds the namespaces, starts one ipamd per
    /// node and defines the ToRs (`ipamctl tor add` on the first node).
    pub fn new(layout: Layout) -> Cluster {
        require_root();
        assert!(!layout.tors.is_empty() && !layout.nodes.is_empty());
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let id = format!("moor-cl-{pid}-{n}");
        let dir = std::env::temp_dir().join(&id);
        let etcd_dir = crate::control_plane::etcd_dir(&id, &dir);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the cluster's directory");
        let etcd = EtcdCluster::start(&etcd_dir, 3, &id, &[])
            .unwrap_or_else(|e| panic!("the cluster tests need a real etcd: {e}"));
        let mut c = Cluster {
            prefix: format!("/moor-test-{pid}-{n}/"),
            tors: Vec::new(),
            nodes: Vec::new(),
            dir,
            etcd,
            log_level: layout.log.clone(),
            ipamd_args: layout.ipamd_args.clone(),
            bins: layout.bins.unwrap_or_else(bins),
            netns: Namespaces::new(&id),
            id,
        };
        c.etcd_wait_ready();
        c.build_topology(&layout, n);
        if layout.fabric == Fabric::LinuxBridges {
            for i in 0..c.nodes.len() {
                let name = c.nodes[i].name.clone();
                c.start_ipamd(&name);
            }
            c.define_tors();
        }
        c
    }

    /// `ipamctl tor add` of every ToR and segment of the layout, in order,
    /// through the first node's ipamd.
    pub fn define_tors(&self) {
        let ctl = self.ctl(&self.nodes[0].name);
        for t in &self.tors {
            let vlan = t.vlan.map(|v| v.to_string());
            let mut extra = vec![];
            if let Some(v) = &vlan {
                extra.extend(["--vlan", v.as_str()]);
            }
            if let Some(of) = &t.segment_of {
                extra.extend(["--segment-of", of.as_str()]);
            }
            ctl.tor_add(&t.name, &t.subnet, t.gateway, t.range, &extra);
        }
    }

    // ------------------------------------------------------------ etcd

    /// The members' client URLs.
    pub fn etcd_endpoints(&self) -> Vec<String> {
        self.etcd.endpoints()
    }

    /// `--store` of every ipamd.
    pub fn store_spec(&self) -> String {
        format!("etcd:{}", self.etcd_endpoints().join(","))
    }

    /// A new 3-member etcd with nothing in it in place of the cluster's
    /// (whose members are killed and their data removed): a cluster
    /// restored from a backup. Stop the ipamds first; they find the new
    /// members when started again.
    pub fn replace_etcd(&mut self) {
        let id = format!("{}-fresh", self.id);
        let dir = crate::control_plane::etcd_dir(&id, &self.dir.join("etcd-new"));
        let _ = std::fs::remove_dir_all(&dir);
        let fresh = EtcdCluster::start(&dir, 3, &id, &[])
            .unwrap_or_else(|e| panic!("a fresh etcd would not start: {e}"));
        drop(std::mem::replace(&mut self.etcd, fresh));
        self.etcd_wait_ready();
    }

    pub fn etcd_members(&self) -> usize {
        self.etcd.len()
    }

    pub fn etcd_running(&self, i: usize) -> bool {
        self.etcd.running(i)
    }

    /// Starts member `i` (again) on its data directory and ports; does not
    /// wait (see [`Cluster::etcd_wait_ready`]).
    pub fn etcd_start(&self, i: usize) {
        self.etcd.start_member(i);
    }

    /// SIGKILL member `i` (its data stays). No-op if it is not running.
    pub fn etcd_kill9(&self, i: usize) {
        self.etcd.kill9(i);
    }

    /// SIGTERM member `i`, SIGKILL if it has not exited after 3 s (a member
    /// that lost quorum may ignore SIGTERM).
    pub fn etcd_stop(&self, i: usize) {
        self.etcd.stop(i);
    }

    /// SIGSTOP (`pause`) or SIGCONT member `i`: a member that hangs, with
    /// its connections open, instead of one that is gone.
    pub fn etcd_pause(&self, i: usize, pause: bool) {
        self.etcd.pause(i, pause);
    }

    pub fn etcd_kill9_all(&self) {
        self.etcd.kill9_all();
    }

    /// Starts every member that is not running and waits until it answers.
    pub fn etcd_start_all(&self) {
        self.etcd.start_all();
    }

    /// Until a write through every running member succeeds (so there is a
    /// leader and that member is in the cluster); panics after 30 s with the
    /// member's log.
    pub fn etcd_wait_ready(&self) {
        self.etcd
            .wait_ready(ETCD_READY)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// The index of the member that is the leader, if a running member
    /// knows one.
    pub fn etcd_leader(&self) -> Option<usize> {
        self.etcd.leader()
    }

    /// Runs `f` against this cluster's etcd, through every member, under
    /// [`Cluster::prefix`] (the store ipamd sees).
    pub fn with_store<T, F, Fut>(&self, f: F) -> T
    where
        F: FnOnce(EtcdStore) -> Fut,
        Fut: Future<Output = T>,
    {
        let rt = runtime();
        rt.block_on(async {
            let s = EtcdStore::open(EtcdOptions {
                prefix: self.prefix.clone(),
                ..EtcdOptions::new(self.etcd_endpoints())
            })
            .await
            .expect("open the etcd store");
            f(s).await
        })
    }

    /// Every key under the prefix (relative to it) with its JSON value;
    /// retries for 10 s while etcd is unavailable.
    pub fn etcd_list(&self, prefix: &str) -> Vec<(String, Value)> {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self.with_store(|s| async move { s.list(prefix).await });
            match r {
                Ok((entries, _)) => {
                    return entries
                        .into_iter()
                        .map(|e| {
                            let v = serde_json::from_slice(&e.value).unwrap_or_else(|err| {
                                panic!("etcd key {} is not JSON: {err}", e.key)
                            });
                            (e.key, v)
                        })
                        .collect()
                }
                Err(StoreError::Unavailable(e)) if Instant::now() < until => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("etcd list {prefix}: {e}"),
            }
        }
    }

    /// `moor_ipamd::audit::audit` on the etcd store (ipamds keep running);
    /// retries for 10 s while etcd is unavailable.
    pub fn audit(&self) -> Vec<String> {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self.with_store(|s| async move { moor_ipamd::audit::audit(&s).await });
            match r {
                Ok(problems) => return problems,
                Err(StoreError::Unavailable(_)) if Instant::now() < until => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("audit of etcd {}: {e}", self.prefix),
            }
        }
    }

    // ------------------------------------------------------------ topology

    fn build_topology(&mut self, layout: &Layout, n: u32) {
        assert!(layout.tors.len() <= 50, "at most 50 ToRs");
        let bare = layout.fabric == Fabric::Bare;
        for (t, spec) in layout.tors.iter().enumerate() {
            let (name, pod_ips) = (&spec.name, spec.pod_ips);
            assert!((1..=240).contains(&pod_ips), "ToR {name}: 1 to 240 pod IPs");
            assert!(
                bare || (spec.vlan.is_none() && spec.segment_of.is_none()),
                "ToR {name}: VLANs and segments need Fabric::Bare and a VLAN-aware switch \
                 (e.g. moor_e2e::ovs_cluster)"
            );
            let base = [10, 200 + t as u8, (n % 256) as u8];
            let ip = |last: u8| Ipv4Addr::new(base[0], base[1], base[2], last);
            let ns = match &spec.segment_of {
                Some(of) => self.tor(of).ns.clone(),
                None => format!("{}-{name}", self.id),
            };
            let tor = TorNet {
                name: name.clone(),
                ns,
                subnet: format!("{}/24", ip(0)),
                gateway: ip(1),
                range: (ip(10), ip(10 + (pod_ips - 1) as u8)),
                mac: format!("02:a0:{:02x}:{:02x}:{:02x}:01", (n >> 8) as u8, n as u8, t),
                vlan: spec.vlan,
                segment_of: spec.segment_of.clone(),
            };
            if tor.segment_of.is_some() {
                self.tors.push(tor);
                continue;
            }
            self.netns.add(&tor.ns);
            if bare {
                self.tors.push(tor);
                continue;
            }
            let gw = format!("{}/24", tor.gateway);
            #[rustfmt::skip]
            let steps: &[&[&str]] = &[
                &["-n", &tor.ns, "link", "add", TOR_BRIDGE, "address", &tor.mac, "type", "bridge"],
                &["-n", &tor.ns, "addr", "add", &gw, "dev", TOR_BRIDGE],
                &["-n", &tor.ns, "link", "set", TOR_BRIDGE, "up"],
            ];
            for args in steps {
                run_ok("ip", args);
            }
            self.tors.push(tor);
        }
        for (i, (name, tor_name)) in layout.nodes.iter().enumerate() {
            assert!(
                name.len() <= 12 && !name.is_empty(),
                "node name {name:?}: 1 to 12 bytes"
            );
            let (t, tor) = self
                .tors
                .iter()
                .enumerate()
                .find(|(_, t)| &t.name == tor_name)
                .unwrap_or_else(|| panic!("node {name}: no ToR {tor_name}"));
            assert!(
                tor.segment_of.is_none(),
                "node {name}: {tor_name} is a segment; a node is under its ToR"
            );
            let tor = tor.clone();
            let ns = format!("{}-{name}", self.id);
            self.netns.add(&ns);
            let on_tor = self.nodes.iter().filter(|x| x.tor == tor.name).count() as u8;
            let o = tor.gateway.octets();
            let node_ip = Ipv4Addr::new(o[0], o[1], o[2], 2 + on_tor);
            let bridge_mac = format!(
                "02:b0:{:02x}:{:02x}:{:02x}:{:02x}",
                (n >> 8) as u8,
                n as u8,
                t,
                i
            );
            let port = format!("d-{name}");
            let cidr = format!("{node_ip}/24");
            #[rustfmt::skip]
            let veth = ["link", "add", &port, "netns", &tor.ns, "type", "veth", "peer", "name", UPLINK, "netns", &ns];
            run_ok("ip", &veth);
            #[rustfmt::skip]
            let steps: &[&[&str]] = if bare {
                &[
                    &["-n", &tor.ns, "link", "set", &port, "up"],
                    &["-n", &ns, "link", "set", UPLINK, "up"],
                ]
            } else {
                &[
                    &["-n", &tor.ns, "link", "set", &port, "master", TOR_BRIDGE, "up"],
                    // Pinned: a bridge takes the lowest MAC of its ports otherwise,
                    // and that changes as pod veths come and go.
                    &["-n", &ns, "link", "add", BRIDGE, "address", &bridge_mac, "type", "bridge"],
                    &["-n", &ns, "link", "set", UPLINK, "master", BRIDGE, "up"],
                    &["-n", &ns, "addr", "add", &cidr, "dev", BRIDGE],
                    &["-n", &ns, "link", "set", BRIDGE, "up"],
                ]
            };
            for args in steps {
                run_ok("ip", args);
            }
            let ns_file = File::open(format!("/run/netns/{ns}")).expect("open the node's netns");
            let dir = self.dir.join(name);
            std::fs::create_dir_all(&dir).expect("node dir");
            let socket = dir.join("ipamd.sock");
            let mut pending = socket.clone().into_os_string();
            pending.push(".pending");
            self.nodes.push(ClusterNode {
                name: name.clone(),
                tor: tor.name.clone(),
                ns,
                ip: node_ip,
                bridge_mac,
                datapath_args: vec!["--bridge".into(), BRIDGE.into()],
                local_state: dir.join("local.redb"),
                pending_dir: pending.into(),
                log: dir.join("ipamd.log"),
                socket,
                dir,
                ns_file,
                ipamd: Mutex::new(None),
                bins: Mutex::new(self.bins),
            });
        }
        if bare {
            return;
        }
        // A new bridge raises its carrier about a second after its first
        // port joins: wait until every node reaches its gateway.
        let start = Instant::now();
        for node in &self.nodes {
            let gw = self.tor(&node.tor).gateway;
            while !ping_from(&node.ns, gw) {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "node {} cannot ping its gateway {gw} after 10 s",
                    node.name
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// The ToR named `name`.
    pub fn tor(&self, name: &str) -> &TorNet {
        self.tors
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no ToR {name}"))
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> &ClusterNode {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// The ToR of node `name`.
    pub fn tor_of(&self, node: &str) -> &TorNet {
        self.tor(&self.node(node).tor)
    }

    // ------------------------------------------------------------ ipamd

    /// Starts node `name`'s ipamd and waits until its socket answers.
    /// Works while etcd is down (ipamd serves from its local state then).
    pub fn start_ipamd(&self, name: &str) {
        self.start_ipamd_with_env(name, &[]);
    }

    /// [`Cluster::start_ipamd`] with these environment variables set (test
    /// hooks).
    pub fn start_ipamd_with_env(&self, name: &str, env: &[(&str, &str)]) {
        let node = self.node(name);
        let mut guard = node.ipamd.lock().unwrap();
        assert!(guard.is_none(), "ipamd of {name} is already running");
        let _ = std::fs::remove_file(&node.socket);
        let netns = format!("/run/netns/{}", node.ns);
        let ipamd = IpamdCommand::new(&self.bins_of(name).ipamd, &node.socket, &node.log)
            .args(["--store", &self.store_spec(), "--etcd-prefix", &self.prefix])
            .arg("--local-state")
            .arg(&node.local_state)
            .args(["--netns", &netns, "--node", &node.name, "--tor", &node.tor])
            .args(&node.datapath_args)
            .args(["--log", &self.log_level])
            .args(&self.ipamd_args)
            .arg("--pending-dir")
            .arg(&node.pending_dir);
        let ipamd = env
            .iter()
            .fold(ipamd, |cmd, (k, v)| cmd.env(k, v))
            .kill_with_thread()
            .start()
            .unwrap_or_else(|e| panic!("ipamd of {name}: {e}"));
        *guard = Some(ipamd);
    }

    /// SIGTERM and wait (SIGKILL after 3 s). No-op if it is not running.
    pub fn stop_ipamd(&self, name: &str) {
        if let Some(ipamd) = self.node(name).ipamd.lock().unwrap().take() {
            ipamd.stop();
        }
    }

    /// SIGKILL and reap: a crash at whatever point ipamd is at.
    pub fn kill9_ipamd(&self, name: &str) {
        self.node(name)
            .ipamd
            .lock()
            .unwrap()
            .take()
            .unwrap_or_else(|| panic!("ipamd of {name} is not running"))
            .kill9();
    }

    pub fn ipamd_running(&self, name: &str) -> bool {
        self.node(name).ipamd.lock().unwrap().is_some()
    }

    /// The binaries node `name` runs.
    pub fn bins_of(&self, name: &str) -> &'static Bins {
        *self.node(name).bins.lock().unwrap()
    }

    /// Node `name` runs `bins` from now on: its next ipamd start, and every
    /// `moor` and `ipamctl` on it (a DaemonSet's rolling update: stop its
    /// ipamd, swap, start it).
    pub fn set_bins(&self, name: &str, bins: &'static Bins) {
        *self.node(name).bins.lock().unwrap() = bins;
    }

    /// The first node whose ipamd runs (for cluster-wide ipamctl reads).
    fn any_running(&self) -> &str {
        self.nodes
            .iter()
            .find(|n| n.ipamd.lock().unwrap().is_some())
            .map(|n| n.name.as_str())
            .expect("no ipamd is running")
    }

    // ------------------------------------------------------------ ipamctl

    /// `ipamctl` against `node`'s ipamd.
    pub fn ctl(&self, node: &str) -> Ipamctl<'_> {
        Ipamctl {
            bin: &self.bins_of(node).ipamctl,
            socket: &self.node(node).socket,
        }
    }

    /// `ipamctl --socket <node's socket> args...`.
    pub fn ipamctl(&self, node: &str, args: &[&str]) -> Output {
        self.ctl(node).run(args)
    }

    /// `ipamctl -o json args...` against `node`, which must succeed.
    pub fn ipamctl_json(&self, node: &str, args: &[&str]) -> Value {
        self.ctl(node).json(args)
    }

    /// `ipamctl pool create NAME --namespace shop --app APP --size N [--tor T...]`
    /// (all ToRs when `tors` is empty).
    pub fn create_pool(&self, name: &str, app: &str, size: u32, tors: &[&str]) {
        self.ctl(self.any_running())
            .create_pool(name, app, size, tors);
    }

    /// `ipamctl pool resize NAME --size N`.
    pub fn resize_pool(&self, name: &str, size: u32) {
        self.ctl(self.any_running()).resize_pool(name, size);
    }

    /// `ipamctl -o json pool show NAME`.
    pub fn pool_show(&self, pool: &str) -> Value {
        self.ctl(self.any_running()).pool_show(pool)
    }

    /// The pool's totals, and its counts per ToR.
    pub fn pool_counts(&self, pool: &str) -> (Counts, Vec<(String, Counts)>) {
        self.ctl(self.any_running()).pool_counts_per_tor(pool)
    }

    /// `ipamctl -o json ip list` (all pools, all nodes).
    pub fn ip_list(&self) -> Vec<Value> {
        self.ctl(self.any_running()).ip_list()
    }

    /// The pool's IPs as `ipamctl -o json pool export NAME` prints them.
    pub fn pool_export(&self, pool: &str) -> Vec<String> {
        self.ctl(self.any_running()).pool_export(pool)
    }

    // ------------------------------------------------------------ pods

    /// A pod in namespace `shop`: a fresh netns with lo up. Each call makes a
    /// new netns, also for a name used before (a re-created pod). A pod is
    /// on no node until it is ADDed on one.
    pub fn pod(&self, name: &str) -> Pod {
        self.netns.pod(POD_NAMESPACE, name)
    }

    /// Deletes the pod's netns, as a runtime does after the sandbox's DEL.
    pub fn remove_pod(&self, pod: &Pod) {
        self.netns.remove_pod(pod);
    }

    /// The network config moor reads on stdin for `node`, every key of
    /// `extra` (an object) over it.
    pub fn net_conf(&self, node: &str, extra: &Value) -> Value {
        net_conf(CNI_VERSION, &self.node(node).socket, extra)
    }

    /// Runs `moor` inside `node`'s netns as a runtime on that node does:
    /// CNI_COMMAND=`cmd` for `pod` (ifname eth0), the config of
    /// [`Cluster::net_conf`] on stdin.
    pub fn moor(&self, node: &str, cmd: &str, pod: &Pod, cid: &str, extra: &Value) -> CniRun {
        let bins = self.bins_of(node);
        let env = cni_env(bins, cmd, pod, cid);
        let conf = self.net_conf(node, extra).to_string();
        run_moor(&bins.moor, &self.node(node).ns_file, &env, conf.as_bytes())
    }

    pub fn add(&self, node: &str, pod: &Pod, cid: &str) -> CniRun {
        self.moor(node, "ADD", pod, cid, &json!({}))
    }

    pub fn del(&self, node: &str, pod: &Pod, cid: &str) -> CniRun {
        self.moor(node, "DEL", pod, cid, &json!({}))
    }

    /// CHECK with a prevResult naming `ip` on eth0, as a runtime keeps it.
    pub fn check(&self, node: &str, pod: &Pod, cid: &str, ip: Ipv4Addr) -> CniRun {
        let prev = json!({
            "cniVersion": CNI_VERSION,
            "interfaces": [{"name": "eth0", "sandbox": pod.netns_path()}],
            "ips": [{"address": format!("{ip}/24"), "interface": 0}],
        });
        self.moor(node, "CHECK", pod, cid, &json!({ "prevResult": prev }))
    }

    // ------------------------------------------------------------ looking

    /// Host ends of live pod veths ("mr...", not retired) in `node`'s netns.
    pub fn host_links(&self, node: &str) -> Vec<String> {
        host_ends(&self.node(node).ns)
    }

    /// (node, link) of every host veth end on every node.
    pub fn all_host_links(&self) -> Vec<(String, String)> {
        self.nodes
            .iter()
            .flat_map(|n| {
                self.host_links(&n.name)
                    .into_iter()
                    .map(move |l| (n.name.clone(), l))
            })
            .collect()
    }

    /// Names of the pod's links other than lo.
    pub fn pod_links(&self, pod: &Pod) -> Vec<String> {
        pod.links()
    }

    /// The IPv4 address and MAC of eth0 in the pod, if any.
    pub fn pod_addr(&self, pod: &Pod) -> Option<PodAddr> {
        addr_in(&pod.netns, "eth0")
    }

    /// Does a ping from the pod to `ip` get an answer (3 tries)?
    pub fn ping(&self, pod: &Pod, ip: Ipv4Addr) -> bool {
        ping_from(&pod.netns, ip)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in &self.nodes {
                eprintln!(
                    "---- cluster {} failed; last lines of {}'s ipamd log ({}):\n{}\n----",
                    self.id,
                    n.name,
                    n.log.display(),
                    n.log_tail(60)
                );
            }
            for i in 0..self.etcd.len() {
                eprintln!(
                    "---- etcd member {} ({}), last lines of its log:\n{}\n----",
                    self.etcd.name(i),
                    self.etcd.client_url(i),
                    self.etcd.log_tail(i, 8)
                );
            }
        }
        for n in &mut self.nodes {
            let ipamd = n.ipamd.get_mut().map(Option::take).unwrap_or_default();
            if let Some(ipamd) = ipamd {
                ipamd.stop();
            }
        }
        self.etcd.kill9_all();
        // Close the node netns files before deleting the namespaces.
        let nodes = std::mem::take(&mut self.nodes);
        drop(nodes);
        self.netns.delete_all();
        let _ = std::fs::remove_dir_all(&self.dir);
        // The etcd members' directory goes with `self.etcd`.
    }
}
