//! One node under one ToR, made of network namespaces, with the real ipamd
//! running on it:
//!
//! ```text
//!   ToR netns                node netns                         pod netns
//!   tor0 (gateway .1) ---- uplink0 -[br0 .2, pinned MAC]- mr... ---- eth0
//!                                    ipamd (own temp dir)
//! ```
//!
//! Every testbed has its own /24, names that hold the process id and a
//! counter, and its own socket, store and pending-DEL directory, so many run
//! in parallel in one process and beside other processes. Drop kills ipamd
//! by pid and deletes every namespace it made, also when the test panicked
//! (then it prints the tail of ipamd's log first).
//!
//! With [`Options::root_netns`] the node is this machine's own (root) netns,
//! where real runtimes (podman, containerd) run CNI plugins: the bridge and
//! uplink get unique names there and ipamd runs there too.

use std::fs::File;
use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use moor_testkit::cmd::assert_ok;
use moor_testkit::cmd::{run as run_ok, tail};
use moor_testkit::netns::{live_host_ends, ping_from, wait_ping, Netns};
use moor_testkit::{Ipamd, IpamdCommand};
use serde_json::{json, Value};

use crate::bins::{bins, Bins};
pub use crate::ipamctl::Counts;
use crate::ipamctl::Ipamctl;

/// The node's bridge to the ToR, as ipamd's `--bridge`.
pub const BRIDGE: &str = "br0";
/// The name of the ToR every testbed defines (unless told not to).
pub const TOR: &str = "rack-1";
/// The k8s namespace of pods made by [`Testbed::pod`].
pub const POD_NAMESPACE: &str = "shop";
/// The network config's `name`.
pub const NETWORK: &str = "moor-e2e";

/// What differs between testbeds.
#[derive(Debug, Clone)]
pub struct Options {
    /// `ipamd --gc-grace-seconds`; None: ipamd's default.
    pub gc_grace_seconds: Option<u64>,
    /// Define the ToR with `ipamctl tor add` once ipamd is up.
    pub define_tor: bool,
    /// ipamd's `--log`.
    pub log: String,
    /// The node is the root netns (see the module doc): the bridge is
    /// `mbPID-N`, the uplink `muPID-N`, and the bridge has no node IP, since
    /// a /24 route in the root netns would clash with another process's
    /// testbed on the same subnet. `node_ns` then names the root netns.
    pub root_netns: bool,
    /// More `ipamd` flags, e.g. `--reconcile-interval-seconds 1`.
    pub ipamd_args: Vec<String>,
    /// The ToR's address families: IPv4 (default), dual stack or IPv6
    /// only. With IPv6, the ToR netns's `tor0` has the IPv6 gateway and
    /// the node's bridge an IPv6 node address (both without DAD).
    pub families: Families,
    /// The binaries the testbed starts with; None: this tree's
    /// ([`crate::bins::bins`]). The upgrade test starts on the previous
    /// release's and swaps them with [`Testbed::set_bins`].
    pub bins: Option<&'static Bins>,
}

/// Which subnets a testbed's ToR has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Families {
    #[default]
    Ipv4,
    Dual,
    Ipv6,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            gc_grace_seconds: None,
            define_tor: true,
            log: "info".into(),
            root_netns: false,
            ipamd_args: Vec::new(),
            families: Families::Ipv4,
            bins: None,
        }
    }
}

/// A pod: a network namespace and the Kubernetes identity the runtime passes
/// in CNI_ARGS.
#[derive(Debug, Clone)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The netns name (under /run/netns).
    pub netns: String,
}

impl Pod {
    /// CNI_NETNS.
    pub fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.netns)
    }

    /// Names of the pod's links other than lo. A DEL leaves the pod's
    /// interface without carrier and ipamd deletes it later, in a batch
    /// (within about a second; docs/architecture.md, DEL): while a link
    /// without carrier is there, this waits for it (up to 5 s), so that
    /// "eth0 is gone after DEL" holds without each test polling.
    pub fn links(&self) -> Vec<String> {
        let started = Instant::now();
        loop {
            let out = run_ok("ip", &["-n", &self.netns, "-j", "link", "show"]);
            let all: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
            let mut names = Vec::new();
            let mut retired = false;
            for l in all.as_array().into_iter().flatten() {
                let name = l["ifname"].as_str().unwrap_or_default();
                if name == "lo" || name.is_empty() {
                    continue;
                }
                let flags = l["flags"].as_array().cloned().unwrap_or_default();
                retired |= !flags.iter().any(|f| f == "LOWER_UP");
                names.push(name.to_string());
            }
            if !retired || started.elapsed() > Duration::from_secs(5) {
                return names;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// CNI_ARGS as kubelet's runtimes pass them.
    pub fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_UID={}",
            self.namespace, self.name, self.uid
        )
    }
}

/// One run of the `moor` binary.
#[derive(Debug, Clone)]
pub struct CniRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// stdout as JSON; Null when stdout is empty. Panics are left to the
    /// caller: a non-JSON stdout is kept as a JSON string.
    pub json: Value,
    pub took: Duration,
}

impl CniRun {
    /// Panics (showing everything) unless moor exited 0.
    pub fn ok(&self, what: &str) -> &Self {
        assert_eq!(
            self.code, 0,
            "{what}: moor exited {}\nstdout: {}\nstderr: {}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    /// The CNI error code, panicking unless moor failed with a CNI error.
    pub fn err_code(&self, what: &str) -> u64 {
        assert_ne!(
            self.code, 0,
            "{what}: moor succeeded but should have failed\nstdout: {}",
            self.stdout
        );
        self.json
            .get("code")
            .and_then(Value::as_u64)
            .unwrap_or_else(|| {
                panic!(
                    "{what}: failure without a CNI error on stdout\nstdout: {}\nstderr: {}",
                    self.stdout, self.stderr
                )
            })
    }

    /// The IPv6 address of an ADD result (the `ips` entry of family 6,
    /// without its prefix length), if any.
    pub fn ip6(&self) -> Option<Ipv6Addr> {
        self.json["ips"]
            .as_array()?
            .iter()
            .filter_map(|i| i["address"].as_str()?.split('/').next()?.parse().ok())
            .next()
    }

    /// The IP of an ADD result (`ips[0].address` without its prefix length).
    pub fn ip(&self) -> Ipv4Addr {
        self.json["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no ips[0].address in {}", self.stdout))
    }

    /// `msg` and `details` of a CNI error, joined.
    pub fn message(&self) -> String {
        let s = |k: &str| self.json.get(k).and_then(Value::as_str).unwrap_or("");
        format!("{}; {}", s("msg"), s("details"))
    }
}

/// An IPv4 address on a pod interface, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodAddr {
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub mac: String,
}

pub struct Testbed {
    /// Prefix of every namespace name: `moor-e2e-PID-N`.
    pub id: String,
    /// This testbed's subnet: `subnet_base`.0/24.
    pub subnet_base: [u8; 3],
    pub gateway: Ipv4Addr,
    /// The IPv6 gateway (`fd00:B1:B2::1` of `subnet6`), with IPv6.
    pub gateway6: Ipv6Addr,
    pub node_ip: Ipv4Addr,
    /// The pod range of the ToR: `range.0`..=`range.1`.
    pub range: (Ipv4Addr, Ipv4Addr),
    pub bridge_mac: String,
    /// ipamd's `--bridge`: [`BRIDGE`], or unique with `root_netns`.
    pub bridge: String,
    /// The node's end of the veth to the ToR.
    pub uplink: String,
    pub node: String,
    pub tor_ns: String,
    /// The node's netns name under /run/netns (with `root_netns`: a name
    /// attached to the root netns, removed again on drop).
    pub node_ns: String,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub store: PathBuf,
    pub pending_dir: PathBuf,
    pub log: PathBuf,
    pub opts: Options,
    bins: &'static Bins,
    node_ns_file: Option<File>,
    ipamd: Mutex<Option<Ipamd>>,
    netns: Namespaces,
}

/// Fails loudly (never skips) without root.
pub fn require_root() {
    moor_testkit::cmd::require_root(
        "run ./scripts/test as root (the e2e tests create network namespaces, \
         bridges and veths)",
    );
}

impl Testbed {
    /// A testbed with the default options: the ToR is defined, no pools.
    // No Default: making a testbed creates namespaces and starts a daemon.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Testbed {
        Self::with(Options::default())
    }

    pub fn with(opts: Options) -> Testbed {
        require_root();
        let bins = opts.bins.unwrap_or_else(bins);
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let id = format!("moor-e2e-{pid}-{n}");
        // Namespaces isolate the subnets of different processes; within one
        // process each testbed gets its own anyway, for readable logs.
        let subnet_base = [10, 100 + (n % 150) as u8, (n / 150) as u8];
        let ip = |last: u8| Ipv4Addr::new(subnet_base[0], subnet_base[1], subnet_base[2], last);
        let dir = std::env::temp_dir().join(&id);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the testbed's temp dir");
        let socket = dir.join("ipamd.sock");
        let mut pending = socket.clone().into_os_string();
        pending.push(".pending");
        let (bridge, uplink, bridge_mac) = if opts.root_netns {
            // One root netns for every process: the pid makes them unique.
            let mac = format!(
                "02:01:{:02x}:{:02x}:{:02x}:{:02x}",
                (pid >> 8) as u8,
                pid as u8,
                (n >> 8) as u8,
                n as u8
            );
            (format!("mb{pid}-{n}"), format!("mu{pid}-{n}"), mac)
        } else {
            let mac = format!("02:00:00:{:02x}:{:02x}:02", (n >> 8) as u8, n as u8);
            (BRIDGE.to_string(), "uplink0".to_string(), mac)
        };
        let mut tb = Testbed {
            subnet_base,
            gateway: ip(1),
            gateway6: Ipv6Addr::new(
                0xfd00,
                u16::from(subnet_base[1]),
                u16::from(subnet_base[2]),
                0,
                0,
                0,
                0,
                1,
            ),
            node_ip: ip(2),
            range: (ip(10), ip(249)),
            bridge_mac,
            bridge,
            uplink,
            node: format!("node-{n}"),
            tor_ns: format!("{id}-tor"),
            node_ns: format!("{id}-node"),
            store: dir.join("ipamd.redb"),
            pending_dir: pending.into(),
            log: dir.join("ipamd.log"),
            socket,
            dir,
            opts,
            bins,
            node_ns_file: None,
            ipamd: Mutex::new(None),
            netns: Namespaces::new(&id),
            id,
        };
        tb.build_topology();
        tb.start_ipamd();
        if tb.opts.define_tor {
            tb.define_tor();
        }
        tb
    }

    fn build_topology(&mut self) {
        let (tor, node) = (self.tor_ns.clone(), self.node_ns.clone());
        let (bridge, uplink) = (self.bridge.as_str(), self.uplink.as_str());
        self.netns.add(&tor);
        if self.opts.root_netns {
            // A name for our own netns, so every `ip -n` and `ip netns exec`
            // below works unchanged; `ip netns del` only removes the name.
            run_ok(
                "ip",
                &["netns", "attach", &node, &std::process::id().to_string()],
            );
            self.netns.adopt(&node);
        } else {
            self.netns.add(&node);
        }
        let gw = format!("{}/24", self.gateway);
        let node_ip = format!("{}/24", self.node_ip);
        #[rustfmt::skip]
        let steps: &[&[&str]] = &[
            &["link", "add", "tor0", "netns", &tor, "type", "veth", "peer", "name", uplink, "netns", &node],
            &["-n", &tor, "addr", "add", &gw, "dev", "tor0"],
            &["-n", &tor, "link", "set", "tor0", "up"],
            // Pinned: a bridge takes the lowest MAC of its ports otherwise,
            // and that changes as pod veths come and go.
            &["-n", &node, "link", "add", bridge, "address", &self.bridge_mac, "type", "bridge"],
            &["-n", &node, "link", "set", uplink, "master", bridge, "up"],
            &["-n", &node, "link", "set", bridge, "up"],
        ];
        for args in steps {
            run_ok("ip", args);
        }
        if !self.opts.root_netns {
            run_ok("ip", &["-n", &node, "addr", "add", &node_ip, "dev", bridge]);
        }
        if self.opts.families != Families::Ipv4 {
            // No DAD: the addresses are usable at once, as the pods' are.
            let gw6 = format!("{}/64", self.gateway6);
            run_ok(
                "ip",
                &["-n", &tor, "addr", "add", &gw6, "dev", "tor0", "nodad"],
            );
            if !self.opts.root_netns {
                let mut node6 = self.gateway6.octets();
                node6[15] = 2;
                let node6 = format!("{}/64", Ipv6Addr::from(node6));
                run_ok(
                    "ip",
                    &["-n", &node, "addr", "add", &node6, "dev", bridge, "nodad"],
                );
            }
        }
        self.node_ns_file =
            Some(File::open(format!("/run/netns/{node}")).expect("open the node's netns"));
        if self.opts.root_netns {
            self.wait_bridge_up();
            return;
        }
        // A new bridge raises its carrier about a second after its first port
        // joins: wait until the node reaches the gateway.
        wait_ping(&node, self.gateway, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("node {node} cannot reach its gateway: {e}"));
    }

    /// Without a node IP to ping from, the bridge's carrier says when its
    /// uplink forwards.
    fn wait_bridge_up(&self) {
        let start = Instant::now();
        loop {
            let out = run_ok("ip", &["-j", "link", "show", "dev", &self.bridge]);
            let v: Value = serde_json::from_str(&out).expect("ip -j link show is JSON");
            if v[0]["operstate"] == "UP" {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "bridge {} is not up after 5 s: {out}",
                self.bridge
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `ipamctl tor add` for this testbed's ToR.
    pub fn define_tor(&self) {
        let (subnet6, gw6) = (self.subnet6(), self.gateway6.to_string());
        let range6 = self.range6();
        let range6 = format!("{}-{}", range6.0, range6.1);
        match self.opts.families {
            Families::Ipv4 => {
                self.ctl()
                    .tor_add(TOR, &self.subnet(), self.gateway, self.range, &[]);
            }
            Families::Dual => self.ctl().tor_add(
                TOR,
                &self.subnet(),
                self.gateway,
                self.range,
                &["--subnet", &subnet6, "--gateway", &gw6, "--range", &range6],
            ),
            Families::Ipv6 => {
                assert_ok(
                    &self.ipamctl(&[
                        "tor",
                        "add",
                        TOR,
                        "--subnet",
                        &subnet6,
                        "--gateway",
                        &gw6,
                        "--range",
                        &range6,
                    ]),
                    "ipamctl tor add (IPv6 only)",
                );
            }
        }
    }

    /// The IPv6 pod range: `::1000`-`::1fff` of the /64, clear of the
    /// gateway (::1) and the node (::2), and larger than the IPv4 range,
    /// so every IPv4 pod IP has its partner.
    pub fn range6(&self) -> (Ipv6Addr, Ipv6Addr) {
        let at = |n: u16| {
            let mut s = self.gateway6.segments();
            s[7] = n;
            Ipv6Addr::from(s)
        };
        (at(0x1000), at(0x1fff))
    }

    /// The IPv6 subnet (used with [`Options::families`] other than IPv4).
    pub fn subnet6(&self) -> String {
        let mut net = self.gateway6.octets();
        net[15] = 0;
        format!("{}/64", Ipv6Addr::from(net))
    }

    /// The subnet in CIDR notation.
    pub fn subnet(&self) -> String {
        let b = self.subnet_base;
        format!("{}.{}.{}.0/24", b[0], b[1], b[2])
    }

    /// Where moor leaves the pending DEL of (`container_id`, eth0) while
    /// ipamd is down.
    pub fn pending_record(&self, container_id: &str) -> PathBuf {
        moor_proto::pending::path_for(&self.pending_dir, container_id, "eth0")
    }

    /// The binaries this testbed runs.
    pub fn bins(&self) -> &'static Bins {
        self.bins
    }

    /// Runs `bins` from now on: the next [`Testbed::start_ipamd`], every
    /// `moor` and `ipamctl` (an upgrade: stop ipamd, swap, start it).
    pub fn set_bins(&mut self, bins: &'static Bins) {
        self.bins = bins;
    }

    /// Is `ip` in this testbed's /24?
    pub fn in_subnet(&self, ip: Ipv4Addr) -> bool {
        ip.octets()[..3] == self.subnet_base
    }

    // ------------------------------------------------------------ ipamd

    /// Starts ipamd in the node netns and waits until its socket accepts.
    pub fn start_ipamd(&self) {
        let mut guard = self.ipamd.lock().unwrap();
        assert!(guard.is_none(), "ipamd is already running");
        let store = format!("redb:{}", self.store.display());
        let mut cmd =
            IpamdCommand::in_netns(&self.node_ns, &self.bins.ipamd, &self.socket, &self.log)
                .args(["--store", &store, "--node", &self.node, "--tor", TOR])
                .args(["--bridge", &self.bridge, "--log", &self.opts.log]);
        if let Some(g) = self.opts.gc_grace_seconds {
            cmd = cmd.args(["--gc-grace-seconds", &g.to_string()]);
        }
        let ipamd = cmd
            .args(&self.opts.ipamd_args)
            .start()
            .unwrap_or_else(|e| panic!("{e}"));
        *guard = Some(ipamd);
    }

    /// SIGTERM and wait (SIGKILL after 3 s). No-op if ipamd is not running.
    pub fn stop_ipamd(&self) {
        if let Some(ipamd) = self.ipamd.lock().unwrap().take() {
            ipamd.stop();
        }
    }

    /// SIGKILL and reap: a crash at whatever point ipamd is at.
    pub fn kill9_ipamd(&self) {
        self.ipamd
            .lock()
            .unwrap()
            .take()
            .expect("ipamd is not running")
            .kill9();
    }

    /// The running ipamd's pid.
    pub fn ipamd_pid(&self) -> Option<u32> {
        self.ipamd.lock().unwrap().as_ref().map(|i| i.pid())
    }

    pub fn ipamd_running(&self) -> bool {
        self.ipamd.lock().unwrap().is_some()
    }

    /// The last `lines` lines of ipamd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    // ------------------------------------------------------------ ipamctl

    /// `ipamctl` against this testbed's ipamd.
    pub fn ctl(&self) -> Ipamctl<'_> {
        Ipamctl {
            bin: &self.bins.ipamctl,
            socket: &self.socket,
        }
    }

    /// `ipamctl --socket SOCKET args...`.
    pub fn ipamctl(&self, args: &[&str]) -> Output {
        self.ctl().run(args)
    }

    /// `ipamctl -o json args...`, which must succeed.
    pub fn ipamctl_json(&self, args: &[&str]) -> Value {
        self.ctl().json(args)
    }

    /// `ipamctl pool create NAME --namespace shop --app APP --size N`.
    pub fn create_pool(&self, name: &str, app: &str, size: u32) {
        self.ctl().create_pool(name, app, size, &[]);
    }

    /// The pool's totals from `ipamctl -o json pool show`.
    pub fn pool_counts(&self, pool: &str) -> Counts {
        self.ctl().pool_counts(pool)
    }

    /// `ipamctl -o json ip list` (all pools).
    pub fn ip_list(&self) -> Vec<Value> {
        self.ctl().ip_list()
    }

    /// The `ip list` entry whose attachment has this container id.
    pub fn ip_of_container(&self, container_id: &str) -> Option<Value> {
        self.ip_list()
            .into_iter()
            .find(|ip| ip["attachment"]["container_id"] == container_id)
    }

    // ------------------------------------------------------------ pods

    /// A pod in namespace `shop`: a fresh netns with lo up. Each call makes a
    /// new netns, also for a name used before (a re-created pod).
    pub fn pod(&self, name: &str) -> Pod {
        self.pod_in(POD_NAMESPACE, name)
    }

    pub fn pod_in(&self, namespace: &str, name: &str) -> Pod {
        self.netns.pod(namespace, name)
    }

    /// Deletes the pod's netns, as a runtime does after the sandbox's DEL.
    pub fn remove_pod(&self, pod: &Pod) {
        self.netns.remove_pod(pod);
    }

    /// The network config moor reads on stdin: `cniVersion`, `name`, `type`,
    /// `socket`, then every key of `extra` (an object) over them.
    pub fn net_conf(&self, cni_version: &str, extra: &Value) -> Value {
        net_conf(cni_version, &self.socket, extra)
    }

    /// The CNI environment of `cmd` for `pod` (ifname eth0).
    pub fn cni_env(&self, cmd: &str, pod: &Pod, container_id: &str) -> Vec<(String, String)> {
        cni_env(self.bins, cmd, pod, container_id)
    }

    /// Runs `moor` as a runtime does: CNI_COMMAND=`cmd` for `pod` (ifname
    /// eth0), the config of [`Testbed::net_conf`] on stdin, CNI_ARGS from the
    /// pod unless `cni_args` is given.
    pub fn moor(
        &self,
        cmd: &str,
        pod: &Pod,
        container_id: &str,
        cni_version: &str,
        extra_config: &Value,
        cni_args: Option<&str>,
    ) -> CniRun {
        let mut env = self.cni_env(cmd, pod, container_id);
        if let Some(a) = cni_args {
            env.retain(|(k, _)| k != "CNI_ARGS");
            env.push(("CNI_ARGS".into(), a.into()));
        }
        let conf = self.net_conf(cni_version, extra_config).to_string();
        self.moor_raw(&env, conf.as_bytes())
    }

    /// Runs `moor` in the node netns with exactly `env` (nothing inherited)
    /// and `stdin`.
    pub fn moor_raw<K: AsRef<str>, V: AsRef<str>>(&self, env: &[(K, V)], stdin: &[u8]) -> CniRun {
        let ns = self.node_ns_file.as_ref().expect("node netns is open");
        run_moor(&self.bins.moor, ns, env, stdin)
    }

    // ------------------------------------------------------------ looking

    /// Names of live host ends of pod veths in the node netns ("mr…", not
    /// retired). With `root_netns` only those on this testbed's bridge: the root
    /// netns holds other testbeds' too.
    pub fn host_links(&self) -> Vec<String> {
        let all = if self.opts.root_netns {
            run_ok("ip", &["-j", "link", "show", "master", &self.bridge])
        } else {
            run_ok("ip", &["-n", &self.node_ns, "-j", "link", "show"])
        };
        let v: Value = serde_json::from_str(&all).expect("ip -j link show is JSON");
        live_host_ends(&v)
    }

    /// Names of the pod's links other than lo.
    pub fn pod_links(&self, pod: &Pod) -> Vec<String> {
        pod.links()
    }

    /// The IPv4 address and MAC of `ifname` in the pod; None if there is no
    /// such link (or it has no IPv4 address).
    pub fn pod_addr(&self, pod: &Pod, ifname: &str) -> Option<PodAddr> {
        addr_in(&pod.netns, ifname)
    }

    /// The pod's default gateway, if it has a default route.
    pub fn pod_default_gateway(&self, pod: &Pod) -> Option<Ipv4Addr> {
        let out = run_ok(
            "ip",
            &["-n", &pod.netns, "-j", "-4", "route", "show", "default"],
        );
        let v: Value = serde_json::from_str(&out).ok()?;
        v.as_array()?.first()?["gateway"].as_str()?.parse().ok()
    }

    /// Does one ping from the pod to `ip` get an answer (3 tries)?
    pub fn ping(&self, pod: &Pod, ip: Ipv4Addr) -> bool {
        ping_from(&pod.netns, ip)
    }

    /// Stops ipamd if it runs, opens the store and cross-checks every record
    /// (`moor_ipamd::audit::audit`). Returns the problems found; leaves ipamd
    /// stopped.
    pub fn audit(&self) -> Vec<String> {
        self.stop_ipamd();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async {
            let store = moor_ipamd::store::redb::RedbStore::open(&self.store)
                .unwrap_or_else(|e| panic!("open {}: {e}", self.store.display()));
            moor_ipamd::audit::audit(&store)
                .await
                .unwrap_or_else(|e| panic!("audit {}: {e}", self.store.display()))
        })
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- testbed {} failed; last lines of ipamd's log ({}):\n{}\n----",
                self.id,
                self.log.display(),
                self.log_tail(60)
            );
        }
        if let Some(ipamd) = self.ipamd.get_mut().map(Option::take).unwrap_or_default() {
            ipamd.stop();
        }
        self.node_ns_file = None;
        if self.opts.root_netns {
            // The root netns outlives us: its links go by name. The uplink
            // goes with the ToR's netns, but not if that was never made.
            for link in [&self.bridge, &self.uplink] {
                let _ = Command::new("ip")
                    .args(["link", "del", link])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        self.netns.delete_all();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The network namespaces a testbed or cluster makes, and its pods'.
pub(crate) struct Namespaces {
    /// Prefix of pod netns names and uids: the testbed's or cluster's id.
    id: String,
    /// Every namespace made, in order; deleted in reverse.
    made: Mutex<Vec<Netns>>,
    pods: AtomicU32,
}

impl Namespaces {
    pub(crate) fn new(id: &str) -> Namespaces {
        Namespaces {
            id: id.to_string(),
            made: Mutex::new(Vec::new()),
            pods: AtomicU32::new(0),
        }
    }

    /// Makes netns `name` with lo up.
    pub(crate) fn add(&self, name: &str) {
        let netns = Netns::add(name.to_string()).unwrap_or_else(|e| panic!("{e}"));
        self.made.lock().unwrap().push(netns);
    }

    /// Deletes `name` with the others, though it was made elsewhere.
    pub(crate) fn adopt(&self, name: &str) {
        self.made.lock().unwrap().push(Netns {
            name: name.to_string(),
        });
    }

    /// A pod: a fresh netns with lo up, also for a name used before.
    pub(crate) fn pod(&self, namespace: &str, name: &str) -> Pod {
        let k = self.pods.fetch_add(1, Ordering::Relaxed);
        let netns = format!("{}-p{k}", self.id);
        self.add(&netns);
        Pod {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: format!("uid-{}-{k}", self.id),
            netns,
        }
    }

    pub(crate) fn remove_pod(&self, pod: &Pod) {
        let mut made = self.made.lock().unwrap();
        match made.iter().position(|n| n.name == pod.netns) {
            Some(i) => made.remove(i).delete(),
            None => {
                run_ok("ip", &["netns", "del", &pod.netns]);
            }
        }
    }

    /// Deletes every namespace made, the last first.
    pub(crate) fn delete_all(&mut self) {
        let made = std::mem::take(self.made.get_mut().unwrap_or_else(|e| e.into_inner()));
        for netns in made.into_iter().rev() {
            drop(netns);
        }
    }
}

/// The network config moor reads on stdin: `cniVersion`, `name`, `type`,
/// `socket`, then every key of `extra` (an object) over them.
pub(crate) fn net_conf(cni_version: &str, socket: &std::path::Path, extra: &Value) -> Value {
    let mut conf = json!({
        "cniVersion": cni_version,
        "name": NETWORK,
        "type": "moor",
        "socket": socket,
    });
    if let Some(extra) = extra.as_object() {
        for (k, v) in extra {
            conf[k] = v.clone();
        }
    }
    conf
}

/// The CNI environment of `cmd` for `pod` (ifname eth0), as a runtime sets
/// it.
pub(crate) fn cni_env(
    bins: &Bins,
    cmd: &str,
    pod: &Pod,
    container_id: &str,
) -> Vec<(String, String)> {
    [
        ("CNI_COMMAND", cmd.to_string()),
        ("CNI_CONTAINERID", container_id.to_string()),
        ("CNI_NETNS", pod.netns_path()),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_ARGS", pod.cni_args()),
        ("CNI_PATH", bins.dir().display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Runs the `moor` binary in the network namespace `netns` (an open
/// /run/netns file) with exactly `env` (nothing inherited) and `stdin`, as a
/// runtime does.
pub(crate) fn run_moor<K: AsRef<str>, V: AsRef<str>>(
    moor: &std::path::Path,
    netns: &File,
    env: &[(K, V)],
    stdin: &[u8],
) -> CniRun {
    let fd = netns.as_raw_fd();
    let mut cmd = Command::new(moor);
    cmd.env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_ref(), v.as_ref())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Into the node netns between fork and exec, as `ip netns exec`
    // would, without its extra process and remount.
    // SAFETY: setns is async-signal-safe; `fd` stays open in the parent
    // (and so in the child) for the whole call.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn moor");
    // moor may exit before reading stdin; a runtime ignores that.
    let written = child.stdin.take().expect("stdin").write_all(stdin);
    if let Err(e) = written {
        assert_eq!(
            e.kind(),
            io::ErrorKind::BrokenPipe,
            "writing moor's stdin: {e}"
        );
    }
    let out = child.wait_with_output().expect("wait for moor");
    let took = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).unwrap_or_else(|_| Value::String(stdout.clone()))
    };
    CniRun {
        code: out.status.code().unwrap_or(-1),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        json,
        took,
    }
}

/// The IPv4 address and MAC of `ifname` in the netns `netns`; None if there
/// is no such link (or it has no IPv4 address).
pub(crate) fn addr_in(netns: &str, ifname: &str) -> Option<PodAddr> {
    let out = Command::new("ip")
        .args(["-n", netns, "-j", "addr", "show", "dev", ifname])
        .stderr(Stdio::null())
        .output()
        .expect("run ip");
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let link = v.as_array()?.first()?;
    let mac = link["address"].as_str()?.to_string();
    let inet = link["addr_info"]
        .as_array()?
        .iter()
        .find(|a| a["family"] == "inet")?;
    Some(PodAddr {
        ip: inet["local"].as_str()?.parse().ok()?,
        prefix: inet["prefixlen"].as_u64()? as u8,
        mac,
    })
}
