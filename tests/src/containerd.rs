//! One node whose pods come from a real containerd 1.6 through CRI, as
//! kubelet makes them, with moor as its CNI:
//!
//! ```text
//!   ToR netns                root netns (the node)
//!   tor0 (gateway .1) ---- mtPIDxN -[mbPIDxN .2, pinned MAC]- mr... ---- eth0 (netns cni-UUID)
//!                          ipamd (embedded store, physical mode)
//!                          containerd (own root, state, socket) -> loopback, moor [, portmap,
//!                                                                  bandwidth, tuning]
//! ```
//!
//! containerd makes pod netns itself (under /run/netns, from the root netns)
//! and runs CNI plugins in the root netns, and portmap and bandwidth act on
//! the host end of the pod's veth in the netns they run in: so the bridge
//! and ipamd are in the root netns here, not in a node netns as in
//! [`crate::testbed`]. Names, the subnet and the CNI network name hold the
//! process id and a counter, so nodes run in parallel with each other and
//! with other test binaries.
//!
//! With [`Options::families`] = dual stack the ToR has an IPv6 subnet too
//! (`fd00:B1:B2::/64`, gateway `::1` on tor0, without DAD) and every sandbox
//! gets an address of each family; the root netns gets no IPv6 address or
//! route, so parallel nodes cannot clash there.
//!
//! With [`Options::kube`] ipamd reads a fake Kubernetes API server instead
//! of taking `--tor` ([`kube`]: the API's side, as the controllers make
//! objects); [`plugin`] runs moor directly where CRI hides what a test
//! checks (CNI codes, one ADD's duration, STATUS).
//!
//! Drop removes everything the node made, also after a panic: its sandboxes
//! (through CRI while containerd runs), containerd, the shims and sandbox
//! processes (by pid: see [`host`]), mounts under its dirs,
//! the pod netns containerd made for it, libcni's result cache entries of
//! its network, iptables and ifb state of its containers, ipamd, the links
//! and the ToR netns.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tonic::Status;

use crate::bins::{bins, Bins};
use crate::cri::v1::{PodSandboxConfig, PodSandboxMetadata, PodSandboxState};
use crate::cri::{Cri, SandboxInfo};
use crate::install_cni;
use crate::ipamctl::Ipamctl;
use crate::testbed::{require_root, Families};
use moor_testkit::cmd::{assert_ok, run as run_ok, tail};
use moor_testkit::netns::{link_names, Netns};
use moor_testkit::process::{kill9, spawn_appending, terminate};
use moor_testkit::{FakeApi, Ipamd, IpamdCommand};

mod host;
mod image;
mod kube;
mod moor_log;
mod plugin;

use host::{remove_cgroups, shim_pids, unmount_under, SHIM_SOCKETS};
pub use kube::{sandbox_config_of, Kube, NODE_TOR_LABEL};
use moor_log::parse_moor_start;
pub use moor_log::MoorCall;

/// The ToR every node defines.
pub const TOR: &str = "rack-1";
/// The k8s namespace of the pods in these tests.
pub const POD_NAMESPACE: &str = "shop";
/// The image containerd runs as every sandbox (its "pause" image).
pub const SANDBOX_IMAGE: &str = "moor.test/pause:1";
/// Where libcni caches results (and leaves them when a DEL fails).
pub const CNI_RESULTS: &str = "/var/lib/cni/results";
/// The sysctl the chained `tuning` plugin sets in every pod, and its value.
pub const TUNED_SYSCTL: (&str, &str) = ("net.core.somaxconn", "1234");
/// Debian's reference plugins the conflists use, from containernetworking-plugins.
const DEBIAN_PLUGINS: &str = "/usr/lib/cni";
/// The CRI plugin's containerd namespace.
const K8S_NS: &str = "k8s.io";

const CONTAINERD_START: Duration = Duration::from_secs(30);
const CONTAINERD_STOP: Duration = Duration::from_secs(5);
const CNI_READY: Duration = Duration::from_secs(20);

/// What differs between nodes.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The conflist chains portmap, bandwidth and tuning after moor.
    pub chain: bool,
    /// `ipamd --reconcile-interval-seconds`; None: ipamd's default.
    pub reconcile_interval_seconds: Option<u64>,
    /// `ipamd --gc-grace-seconds`; None: ipamd's default.
    pub gc_grace_seconds: Option<u64>,
    /// The conflist's `pool` (moor's config default).
    pub default_pool: Option<String>,
    /// ipamd reads pods, namespaces and its Node from a fake Kubernetes API
    /// server this node runs ([`CriNode::api`]).
    pub kube: Option<Kube>,
    /// The ToR's subnets: IPv4 (default) or dual stack. IPv6 only is not
    /// built: CRI's `network.ip` is the IPv4 one here.
    pub families: Families,
}

/// A running sandbox as the test sees it.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub id: String,
    pub name: String,
    /// The IP PodSandboxStatus reports (`network.ip`).
    pub ip: Ipv4Addr,
    /// The IPv6 address PodSandboxStatus reports in
    /// `network.additional_ips` (a dual-stack pod's), if any.
    pub ip6: Option<Ipv6Addr>,
    /// The netns containerd made for it (/var/run/netns/cni-UUID).
    pub netns: String,
    /// The sandbox process.
    pub pid: u32,
}

impl Sandbox {
    /// The host end of its veth, as ipamd names it.
    pub fn host_veth(&self) -> String {
        moor_proto::host_ifname(&self.id, "eth0")
    }
}

pub struct CriNode {
    /// `mcri-PID-N`: the temp dir's name and the prefix of the ToR netns.
    pub id: String,
    /// The CNI network name (the conflist's `name`): unique per node and run,
    /// so libcni's cache entries and iptables comments of this node are
    /// told apart from anyone else's.
    pub network: String,
    pub subnet_base: [u8; 3],
    pub gateway: Ipv4Addr,
    /// The IPv6 gateway `fd00:B1:B2::1` (on tor0 with dual stack only).
    pub gateway6: Ipv6Addr,
    pub node_ip: Ipv4Addr,
    /// The ToR's pod range: `range.0..=range.1`.
    pub range: (Ipv4Addr, Ipv4Addr),
    pub bridge: String,
    pub bridge_mac: String,
    /// The root end of the veth to the ToR netns.
    pub uplink: String,
    pub tor_ns: String,
    pub dir: PathBuf,
    pub opts: Options,
    pub ipamd_socket: PathBuf,
    pub ipamd_log: PathBuf,
    pub cni_bin: PathBuf,
    pub cni_conf: PathBuf,
    /// moor's `logFile`: every call, its container id and netns.
    pub moor_log: PathBuf,
    pub containerd_socket: PathBuf,
    pub containerd_log: PathBuf,
    containerd_config: PathBuf,
    containerd_root: PathBuf,
    containerd_state: PathBuf,
    bins: &'static Bins,
    ipamd: Mutex<Option<Ipamd>>,
    containerd: Mutex<Option<Child>>,
    cri: Mutex<Option<Cri>>,
    /// Every sandbox id RunPodSandbox returned.
    sandboxes: Mutex<BTreeSet<String>>,
    /// Every pod netns path seen (status, moor's log): Drop removes the
    /// ones still there.
    netns_seen: Mutex<BTreeSet<String>>,
    made_links: Mutex<Vec<String>>,
    tor_netns: Option<Netns>,
    /// With [`Options::kube`]: the API server ipamd watches.
    api: Option<FakeApi>,
    /// The netns of ADDs the test runs moor for itself ([`CriNode::moor_add`]).
    direct_netns: Mutex<Option<Netns>>,
}

impl CriNode {
    /// A node: ToR and bridge, ipamd with the ToR defined, containerd with
    /// the sandbox image imported and moor's conflist installed and loaded.
    pub fn new(opts: Options) -> CriNode {
        require_root();
        assert_ne!(
            opts.families,
            Families::Ipv6,
            "CriNode builds IPv4 and dual-stack nodes, not IPv6-only ones"
        );
        for tool in [
            "containerd",
            "ctr",
            "runc",
            "containerd-shim-runc-v2",
            "iptables-save",
        ] {
            assert!(
                which(tool),
                "{tool} is missing: run ./scripts/setup (containerd, runc, iptables)"
            );
        }
        for p in ["/bin/busybox", &format!("{DEBIAN_PLUGINS}/loopback")] {
            assert!(
                Path::new(p).is_file(),
                "{p} is missing: run ./scripts/setup (busybox-static, containernetworking-plugins)"
            );
        }
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let id = format!("mcri-{pid}-{n}");
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let subnet_base = free_subnet(pid, n);
        let ip = |last: u8| Ipv4Addr::new(subnet_base[0], subnet_base[1], subnet_base[2], last);
        let dir = std::env::temp_dir().join(&id);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the node's temp dir");
        let cd = dir.join("containerd");
        let mut node = CriNode {
            network: format!("moor-cri-{pid}-{n}-{}", secs % 100_000),
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
            bridge: format!("mb{pid}x{n}"),
            bridge_mac: format!(
                "02:cd:{:02x}:{:02x}:{:02x}:{:02x}",
                (pid >> 16) as u8,
                (pid >> 8) as u8,
                pid as u8,
                n as u8
            ),
            uplink: format!("mt{pid}x{n}"),
            tor_ns: format!("{id}-tor"),
            ipamd_socket: dir.join("ipamd.sock"),
            ipamd_log: dir.join("ipamd.log"),
            cni_bin: dir.join("cni/bin"),
            cni_conf: dir.join("cni/conf"),
            moor_log: dir.join("moor.log"),
            containerd_socket: cd.join("containerd.sock"),
            containerd_log: cd.join("containerd.log"),
            containerd_config: cd.join("config.toml"),
            containerd_root: cd.join("root"),
            containerd_state: cd.join("state"),
            id,
            dir,
            opts,
            bins: bins(),
            ipamd: Mutex::new(None),
            containerd: Mutex::new(None),
            cri: Mutex::new(None),
            sandboxes: Mutex::new(BTreeSet::new()),
            netns_seen: Mutex::new(BTreeSet::new()),
            made_links: Mutex::new(Vec::new()),
            tor_netns: None,
            api: None,
            direct_netns: Mutex::new(None),
        };
        node.build_topology();
        node.start_api();
        node.start_ipamd();
        node.define_tor();
        node.write_containerd_config();
        node.start_containerd();
        node.import_sandbox_image();
        node.install_cni();
        node
    }

    // ------------------------------------------------------------ network

    fn build_topology(&mut self) {
        self.tor_netns = Some(Netns::add(self.tor_ns.clone()).unwrap_or_else(|e| panic!("{e}")));
        let gw = format!("{}/24", self.gateway);
        let node_ip = format!("{}/24", self.node_ip);
        let (br, up, tor) = (
            self.bridge.clone(),
            self.uplink.clone(),
            self.tor_ns.clone(),
        );
        self.made_links.lock().unwrap().push(br.clone());
        #[rustfmt::skip]
        let steps: &[&[&str]] = &[
            // Pinned: a bridge takes the lowest MAC of its ports otherwise,
            // and that changes as pod veths come and go.
            &["link", "add", &br, "address", &self.bridge_mac, "type", "bridge"],
            &["link", "add", &up, "type", "veth", "peer", "name", "tor0", "netns", &tor],
        ];
        for args in steps {
            run_ok("ip", args);
        }
        self.made_links.lock().unwrap().push(up.clone());
        #[rustfmt::skip]
        let steps: &[&[&str]] = &[
            &["-n", &tor, "addr", "add", &gw, "dev", "tor0"],
            &["-n", &tor, "link", "set", "tor0", "up"],
            &["link", "set", &up, "master", &br, "up"],
            &["addr", "add", &node_ip, "dev", &br],
            &["link", "set", &br, "up"],
        ];
        for args in steps {
            run_ok("ip", args);
        }
        if self.opts.families == Families::Dual {
            // No DAD: usable at once, as the pods' addresses are.
            let gw6 = format!("{}/64", self.gateway6);
            run_ok(
                "ip",
                &["-n", &tor, "addr", "add", &gw6, "dev", "tor0", "nodad"],
            );
        }
    }

    /// The subnet in CIDR notation.
    pub fn subnet(&self) -> String {
        let b = self.subnet_base;
        format!("{}.{}.{}.0/24", b[0], b[1], b[2])
    }

    /// The IPv6 subnet of the dual-stack ToR (`fd00:B1:B2::/64`).
    pub fn subnet6(&self) -> String {
        let mut net = self.gateway6.octets();
        net[15] = 0;
        format!("{}/64", Ipv6Addr::from(net))
    }

    /// Names of the links enslaved to this node's bridge whose names start
    /// with "mr": host ends of pod veths.
    pub fn host_veths(&self) -> Vec<String> {
        let out = run_ok("ip", &["-j", "link", "show", "master", &self.bridge]);
        link_names(&serde_json::from_str(&out).unwrap_or(Value::Null))
            .into_iter()
            .filter(|n| n.starts_with("mr"))
            .collect()
    }

    // ------------------------------------------------------------ ipamd

    /// Starts ipamd in the root netns and waits until its socket accepts.
    pub fn start_ipamd(&self) {
        let mut guard = self.ipamd.lock().unwrap();
        assert!(guard.is_none(), "ipamd is already running");
        let store = format!("redb:{}", self.dir.join("ipamd.redb").display());
        let mut cmd = IpamdCommand::new(&self.bins.ipamd, &self.ipamd_socket, &self.ipamd_log)
            .args(["--store", &store, "--node", &self.id])
            .args(["--bridge", &self.bridge, "--log", "info"]);
        cmd = match &self.opts.kube {
            // The ToR comes from the Node's label.
            Some(kube) => cmd.args(self.kube_args(kube)),
            None => cmd.args(["--tor", TOR]),
        };
        if let Some(g) = self.opts.gc_grace_seconds {
            cmd = cmd.args(["--gc-grace-seconds", &g.to_string()]);
        }
        if let Some(i) = self.opts.reconcile_interval_seconds {
            cmd = cmd.args(["--reconcile-interval-seconds", &i.to_string()]);
        }
        let ipamd = cmd
            .env_only_path()
            .start()
            .unwrap_or_else(|e| panic!("{e}"));
        *guard = Some(ipamd);
    }

    /// Stops ipamd (SIGTERM) and starts it again on the same store.
    pub fn restart_ipamd(&self) {
        let old = self.ipamd.lock().unwrap().take();
        if let Some(ipamd) = old {
            ipamd.stop();
        }
        self.start_ipamd();
    }

    /// Sends `sig` to ipamd (SIGSTOP/SIGCONT hold an ADD open).
    pub fn signal_ipamd(&self, sig: Signal) {
        let guard = self.ipamd.lock().unwrap();
        let ipamd = guard.as_ref().expect("ipamd is not running");
        ipamd.signal(sig).expect("signal ipamd");
    }

    /// `ipamctl tor add`: the IPv4 subnet with its range and, with dual
    /// stack, the IPv6 subnet (its pod range: the whole subnet).
    fn define_tor(&self) {
        let (subnet6, gw6) = (self.subnet6(), self.gateway6.to_string());
        let extra: &[&str] = match self.opts.families {
            Families::Dual => &["--subnet", &subnet6, "--gateway", &gw6],
            _ => &[],
        };
        self.ctl()
            .tor_add(TOR, &self.subnet(), self.gateway, self.range, extra);
    }

    /// `ipamctl` against this node's ipamd.
    pub fn ctl(&self) -> Ipamctl<'_> {
        Ipamctl {
            bin: &self.bins.ipamctl,
            socket: &self.ipamd_socket,
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

    /// `ipamctl -o json ip list` (every IP of every pool).
    pub fn ip_list(&self) -> Vec<Value> {
        self.ctl().ip_list()
    }

    /// The `ip list` entry of `ip`.
    pub fn ip_entry(&self, ip: Ipv4Addr) -> Option<Value> {
        let ip = ip.to_string();
        self.ip_list().into_iter().find(|e| e["address"] == ip)
    }

    // ------------------------------------------------------------ containerd

    fn write_containerd_config(&self) {
        let runc_root = self.dir.join("containerd/runc");
        for d in [&self.containerd_root, &self.containerd_state, &runc_root] {
            fs::create_dir_all(d).expect("create containerd's dirs");
        }
        fs::create_dir_all(&self.cni_bin).expect("create the CNI bin dir");
        fs::create_dir_all(&self.cni_conf).expect("create the CNI conf dir");
        let d = |p: &Path| p.display().to_string();
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{sock}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{SANDBOX_IMAGE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{runc}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
    max_conf_num = 1
"#,
            root = d(&self.containerd_root),
            state = d(&self.containerd_state),
            sock = d(&self.containerd_socket),
            opt = d(&self.dir.join("containerd/opt")),
            runc = d(&runc_root),
            bin = d(&self.cni_bin),
            conf = d(&self.cni_conf),
        );
        fs::write(&self.containerd_config, config).expect("write containerd's config");
    }

    /// Starts containerd and waits until its CRI answers Version.
    pub fn start_containerd(&self) {
        let mut guard = self.containerd.lock().unwrap();
        assert!(guard.is_none(), "containerd is already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.containerd_log)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.containerd_log.display()));
        let _ = writeln!(&log, "==== containerd start ====");
        let mut child = spawn_appending(
            Command::new("containerd")
                .arg("--config")
                .arg(&self.containerd_config)
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                // Inherited by the CNI plugins it runs (libcni passes its own
                // environment on): moor logs every call it gets, with netns.
                .env("MOOR_LOG", "debug"),
            &self.containerd_log,
        )
        .expect("spawn containerd");
        let start = Instant::now();
        let cri = loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "containerd exited ({status}) at start:\n{}",
                    tail(&self.containerd_log, 40)
                );
            }
            if UnixStream::connect(&self.containerd_socket).is_ok() {
                if let Ok(cri) = Cri::connect(&self.containerd_socket, Duration::from_secs(2)) {
                    if cri.version().is_ok() {
                        break cri;
                    }
                }
            }
            if start.elapsed() > CONTAINERD_START {
                kill9(&mut child);
                panic!(
                    "containerd's CRI did not answer within {CONTAINERD_START:?}:\n{}",
                    tail(&self.containerd_log, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        *guard = Some(child);
        *self.cri.lock().unwrap() = Some(cri);
    }

    /// SIGKILL containerd and reap it: the shims and sandboxes live on.
    /// The CRI connection is dropped after the kill, so a call in flight on
    /// another thread ends with the connection rather than blocking this.
    pub fn kill9_containerd(&self) {
        let mut child = self
            .containerd
            .lock()
            .unwrap()
            .take()
            .expect("containerd is not running");
        kill9(&mut child);
        *self.cri.lock().unwrap() = None;
    }

    /// The CRI connection; panics when containerd is not running.
    pub fn cri(&self) -> MutexGuard<'_, Option<Cri>> {
        let g = self.cri.lock().unwrap();
        assert!(g.is_some(), "containerd is not running");
        g
    }

    fn with_cri<T>(&self, f: impl FnOnce(&Cri) -> T) -> T {
        let g = self.cri();
        f(g.as_ref().expect("checked by cri()"))
    }

    /// Builds the sandbox image (a static busybox that sleeps) as a docker
    /// archive and imports it: there is no registry here.
    fn import_sandbox_image(&self) {
        let tar = self.dir.join("sandbox-image.tar");
        image::build_sandbox_image(SANDBOX_IMAGE, &self.dir.join("image"), &tar);
        let sock = self.containerd_socket.display().to_string();
        let tar = tar.display().to_string();
        run_ok(
            "ctr",
            &[
                "-a",
                &sock,
                "-n",
                K8S_NS,
                "images",
                "import",
                "--snapshotter",
                "overlayfs",
                &tar,
            ],
        );
    }

    /// The conflist: moor, then (chain) portmap, bandwidth, tuning.
    pub fn conflist(&self) -> Value {
        let mut plugins = vec![self.moor_conf()];
        if self.opts.chain {
            plugins.push(json!({"type": "portmap", "capabilities": {"portMappings": true}}));
            plugins.push(json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}));
            plugins.push(json!({"type": "tuning", "sysctl": {TUNED_SYSCTL.0: TUNED_SYSCTL.1}}));
        }
        json!({"cniVersion": "1.0.0", "name": self.network, "plugins": plugins})
    }

    /// moor's entry of the conflist.
    pub fn moor_conf(&self) -> Value {
        let mut conf = json!({
            "type": "moor",
            "socket": self.ipamd_socket,
            "logFile": self.moor_log,
        });
        if let Some(pool) = &self.opts.default_pool {
            conf["pool"] = pool.as_str().into();
        }
        conf
    }

    /// Debian's plugins into the bin dir, then moor and the conflist through
    /// scripts/install-cni (which waits for ipamd and writes each file to a
    /// temp file inside its target dir before renaming it: containerd 1.6
    /// misses a rename from another dir). Waits until containerd reports
    /// NetworkReady, as kubelet does before it runs pods.
    fn install_cni(&self) {
        for p in ["loopback", "portmap", "bandwidth", "tuning"] {
            let tmp = self.cni_bin.join(format!(".{p}.tmp"));
            fs::copy(Path::new(DEBIAN_PLUGINS).join(p), &tmp)
                .unwrap_or_else(|e| panic!("copy {DEBIAN_PLUGINS}/{p}: {e}"));
            fs::rename(&tmp, self.cni_bin.join(p)).expect("rename a plugin into the bin dir");
        }
        let src = self.dir.join(format!("10-{}.conflist", self.network));
        fs::write(&src, self.conflist().to_string()).expect("write the conflist");
        let out = install_cni::run(&[
            "--bin-dir".as_ref(),
            self.cni_bin.as_os_str(),
            "--conf-dir".as_ref(),
            self.cni_conf.as_os_str(),
            "--conflist".as_ref(),
            src.as_os_str(),
            "--moor".as_ref(),
            self.bins.moor.as_os_str(),
            "--timeout".as_ref(),
            "15".as_ref(),
        ]);
        assert_ok(&out, "scripts/install-cni");
        self.wait_network_ready();
    }

    /// Waits until containerd reports NetworkReady (a CNI config loaded), as
    /// kubelet does before it runs pods.
    fn wait_network_ready(&self) {
        let start = Instant::now();
        loop {
            match self.with_cri(Cri::network_ready) {
                Ok(true) => return,
                Ok(false) if start.elapsed() < CNI_READY => {}
                other => panic!(
                    "containerd did not report NetworkReady within {CNI_READY:?} ({other:?}); \
                     Status: {:?}",
                    self.with_cri(Cri::status).map(|s| s.info)
                ),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// containerd loses everything it knew about its pods, as when a node's
    /// containerd root is wiped to recover it, across a reboot: containerd,
    /// its shims and sandboxes are SIGKILLed, its root and state deleted,
    /// the pod netns it made removed (/run is a tmpfs). Then a fresh
    /// containerd starts on the same config, image and CNI config. Nobody
    /// will ever send the DELs of the lost pods.
    pub fn lose_containerd_state(&self) {
        self.kill9_containerd();
        self.kill_shims();
        unmount_under(&self.dir.join("containerd"));
        self.remove_seen_netns();
        let runc_root = self.dir.join("containerd/runc");
        for d in [&self.containerd_root, &self.containerd_state, &runc_root] {
            let _ = fs::remove_dir_all(d);
            fs::create_dir_all(d).expect("re-create containerd's dirs");
        }
        self.start_containerd();
        self.import_sandbox_image();
        self.wait_network_ready();
    }

    /// Unmounts and removes every pod netns seen that is still there.
    fn remove_seen_netns(&self) {
        let _ = self.moor_calls(); // collects netns paths from moor's log
        let seen = self.netns_seen.lock().unwrap_or_else(|e| e.into_inner());
        for ns in seen.iter() {
            if Path::new(ns).exists() {
                let _ = nix::mount::umount2(ns.as_str(), nix::mount::MntFlags::MNT_DETACH);
                let _ = fs::remove_file(ns);
            }
        }
    }

    // ------------------------------------------------------------ sandboxes

    /// Runs a sandbox for `config` and reads its IP, netns and pid; the
    /// RunPodSandbox error as is.
    pub fn run_sandbox(&self, config: PodSandboxConfig) -> Result<Sandbox, Status> {
        let name = config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let id = self.with_cri(|c| c.run_pod_sandbox(config))?;
        self.sandboxes.lock().unwrap().insert(id.clone());
        let resp = self
            .with_cri(|c| c.pod_sandbox_status(&id))
            .unwrap_or_else(|e| panic!("PodSandboxStatus {id}: {e}"));
        let status = resp.status.clone().expect("PodSandboxStatus has a status");
        assert_eq!(
            status.state(),
            PodSandboxState::SandboxReady,
            "sandbox {id} ({name}) is not ready: {status:?}"
        );
        let info = SandboxInfo::of(&resp)
            .unwrap_or_else(|| panic!("PodSandboxStatus {id}: no verbose info: {:?}", resp.info));
        let netns = info
            .netns
            .unwrap_or_else(|| panic!("sandbox {id}: no network namespace in {}", info.raw));
        self.netns_seen.lock().unwrap().insert(netns.clone());
        let network = status.network.clone().unwrap_or_default();
        let ip = network.ip.parse().unwrap_or_else(|_| {
            panic!("sandbox {id} ({name}): no IPv4 in PodSandboxStatus: {status:?}")
        });
        // containerd puts the IPv4 address first and the rest of the CNI
        // result's IPs after it: with moor, at most the IPv6 partner.
        let additional: Vec<IpAddr> = network
            .additional_ips
            .iter()
            .map(|p| {
                p.ip.parse().unwrap_or_else(|_| {
                    panic!("sandbox {id} ({name}): additional IP {:?} is no IP", p.ip)
                })
            })
            .collect();
        let ip6 = match additional[..] {
            [] => None,
            [IpAddr::V6(v6)] => Some(v6),
            _ => panic!(
                "sandbox {id} ({name}): additional IPs {additional:?}, not one IPv6 at most: \
                 {status:?}"
            ),
        };
        Ok(Sandbox {
            id,
            name,
            ip,
            ip6,
            netns,
            pid: info.pid,
        })
    }

    pub fn stop_sandbox(&self, id: &str) -> Result<(), Status> {
        self.with_cri(|c| c.stop_pod_sandbox(id))
    }

    pub fn remove_sandbox(&self, id: &str) -> Result<(), Status> {
        self.with_cri(|c| c.remove_pod_sandbox(id))
    }

    /// StopPodSandbox then RemovePodSandbox, as kubelet does; both must
    /// succeed.
    pub fn stop_and_remove(&self, id: &str) {
        self.stop_sandbox(id)
            .unwrap_or_else(|e| panic!("StopPodSandbox {id}: {e}"));
        self.remove_sandbox(id)
            .unwrap_or_else(|e| panic!("RemovePodSandbox {id}: {e}"));
    }

    /// Ids of every sandbox containerd knows.
    pub fn listed_sandboxes(&self) -> Vec<String> {
        self.with_cri(Cri::list_pod_sandbox)
            .unwrap_or_else(|e| panic!("ListPodSandbox: {e}"))
            .into_iter()
            .map(|s| s.id)
            .collect()
    }

    // ------------------------------------------------------------ looking

    /// Every call moor logged, in order. moor logs at debug (MOOR_LOG, from
    /// containerd's environment) into `logFile`: one `start` line per call,
    /// inside a span naming the command and container id.
    pub fn moor_calls(&self) -> Vec<MoorCall> {
        let text = fs::read_to_string(&self.moor_log).unwrap_or_default();
        let calls: Vec<MoorCall> = text.lines().filter_map(parse_moor_start).collect();
        let mut seen = self.netns_seen.lock().unwrap();
        let direct = self.direct_netns_path();
        for c in &calls {
            if !c.netns.is_empty() && c.netns != direct {
                seen.insert(c.netns.clone());
            }
        }
        calls
    }

    /// Container ids moor was called with, plus the sandboxes RunPodSandbox
    /// returned.
    pub fn container_ids(&self) -> BTreeSet<String> {
        let mut ids: BTreeSet<String> = self
            .moor_calls()
            .into_iter()
            .map(|c| c.container_id)
            .collect();
        ids.extend(self.sandboxes.lock().unwrap().iter().cloned());
        ids
    }

    /// libcni's cache entries of this node's network, or of the loopback
    /// network for our containers.
    pub fn cni_results(&self) -> Vec<String> {
        let ids = self.container_ids();
        let ours = |name: &str| {
            name.starts_with(&format!("{}-", self.network))
                || ids.iter().any(|id| name.contains(id.as_str()))
        };
        fs::read_dir(CNI_RESULTS)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| ours(n))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Lines of `iptables-save -t nat` naming one of our containers (the
    /// portmap rules carry the container id in a comment).
    pub fn nat_rules(&self) -> Vec<String> {
        let ids = self.container_ids();
        run_ok("iptables-save", &["-t", "nat"])
            .lines()
            .filter(|l| ids.iter().any(|id| l.contains(id.as_str())))
            .map(str::to_owned)
            .collect()
    }

    /// Everything this node's pods left behind: host veths, attachments,
    /// leases without a binding, result cache entries, pod netns, NAT rules,
    /// shims.
    /// Empty when all is clean; sticky bindings are not leftovers.
    pub fn leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        for v in self.host_veths() {
            found.push(format!("host veth {v} on {}", self.bridge));
        }
        let ids = self.container_ids();
        for id in &ids {
            let veth = moor_proto::host_ifname(id, "eth0");
            if live_host_end_exists(&veth) {
                found.push(format!("host veth {veth} of container {id}"));
            }
        }
        for e in self.ip_list() {
            if !e["attachment"].is_null() {
                found.push(format!("attachment: {e}"));
            } else if e["state"] != "free" && e["binding"].is_null() {
                found.push(format!("lease without binding: {e}"));
            }
        }
        for r in self.cni_results() {
            found.push(format!("{CNI_RESULTS}/{r}"));
        }
        for ns in self.netns_seen.lock().unwrap().iter() {
            if Path::new(ns).exists() {
                found.push(format!("pod netns {ns}"));
            }
        }
        for r in self.nat_rules() {
            found.push(format!("nat rule: {r}"));
        }
        // A shim exits once its sandbox is deleted, maybe just after
        // RemovePodSandbox returned.
        let start = Instant::now();
        let mut shims = shim_pids(&self.containerd_socket);
        while !shims.is_empty() && start.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(50));
            shims = shim_pids(&self.containerd_socket);
        }
        for pid in shims {
            found.push(format!("containerd-shim-runc-v2 pid {pid}"));
        }
        found
    }

    /// The last `lines` lines of ipamd's log.
    pub fn ipamd_log_tail(&self, lines: usize) -> String {
        tail(&self.ipamd_log, lines)
    }

    // ------------------------------------------------------------ cleanup

    /// Stops and removes every sandbox containerd lists (errors ignored).
    fn remove_all_sandboxes(&self) {
        let guard = self.cri.lock().unwrap_or_else(|e| e.into_inner());
        let Some(cri) = guard.as_ref() else { return };
        let mut ids: BTreeSet<String> = self
            .sandboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Ok(list) = cri.list_pod_sandbox() {
            ids.extend(list.into_iter().map(|s| s.id));
        }
        for id in ids {
            let _ = cri.stop_pod_sandbox(&id);
            let _ = cri.remove_pod_sandbox(&id);
        }
    }

    /// The task dirs (one per sandbox) in containerd's state dir.
    fn task_dirs(&self) -> Vec<PathBuf> {
        let base = self
            .containerd_state
            .join("io.containerd.runtime.v2.task")
            .join(K8S_NS);
        fs::read_dir(base)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// SIGKILL the sandbox processes and shims of this containerd, wait for
    /// them to go, and remove the shims' sockets. The shims are not our
    /// children (they daemonize) and containerd 1.6 keeps no pid file for
    /// them: they are the processes started with `-address` = this
    /// containerd's private socket. A sandbox's init has its init.pid, and
    /// its shim's socket is named in the task dir's `address`.
    fn kill_shims(&self) {
        let mut pids = shim_pids(&self.containerd_socket);
        for task in self.task_dirs() {
            let pid = fs::read_to_string(task.join("init.pid"))
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok());
            pids.extend(pid.filter(|p| *p > 1));
            if let Ok(addr) = fs::read_to_string(task.join("address")) {
                if let Some(path) = addr.trim().strip_prefix("unix://") {
                    if path.starts_with(SHIM_SOCKETS) {
                        let _ = fs::remove_file(path);
                    }
                }
            }
        }
        for &pid in &pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let start = Instant::now();
        while pids
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
            && start.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// For containers whose chained plugins never got a DEL: the portmap
    /// rules and the bandwidth ifb, by running those plugins' DEL as
    /// containerd would.
    fn del_chained_leftovers(&self) {
        if !self.opts.chain {
            return;
        }
        let rules = run_ok("iptables-save", &["-t", "nat"]);
        for id in self.container_ids() {
            let conf = |ty: &str| {
                json!({
                    "cniVersion": "1.0.0", "name": self.network, "type": ty,
                    // portmap's DEL does nothing without a mapping.
                    "runtimeConfig": {"portMappings": [
                        {"hostPort": 1, "containerPort": 1, "protocol": "tcp"}]},
                })
            };
            let mut plugins = vec!["bandwidth"];
            if rules.contains(id.as_str()) {
                plugins.push("portmap");
            }
            for p in plugins {
                let _ = run_plugin(
                    &self.cni_bin,
                    p,
                    &[
                        ("CNI_COMMAND", "DEL"),
                        ("CNI_CONTAINERID", &id),
                        ("CNI_NETNS", ""),
                        ("CNI_IFNAME", "eth0"),
                    ],
                    &conf(p).to_string(),
                );
            }
        }
    }
}

impl Drop for CriNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- node {} failed; ipamd's log ({}):\n{}\n---- containerd's log ({}):\n{}\n----",
                self.id,
                self.ipamd_log.display(),
                tail(&self.ipamd_log, 40),
                self.containerd_log.display(),
                tail(&self.containerd_log, 30)
            );
            if self.api.is_some() {
                eprintln!("{}", self.api_requests_tail(30));
            }
        }
        // Through CRI first: containerd tears the pod networks down itself.
        self.remove_all_sandboxes();
        *self.cri.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
        if let Some(child) = self
            .containerd
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            terminate(child, CONTAINERD_STOP);
        }
        self.kill_shims();
        unmount_under(&self.dir);
        self.remove_seen_netns();
        self.del_chained_leftovers();
        for r in self.cni_results() {
            let _ = fs::remove_file(Path::new(CNI_RESULTS).join(r));
        }
        if let Some(ipamd) = self
            .ipamd
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            ipamd.stop();
        }
        self.api = None;
        *self
            .direct_netns
            .get_mut()
            .unwrap_or_else(|e| e.into_inner()) = None;
        let ids = self.container_ids();
        let mut links: Vec<String> = ids
            .iter()
            .map(|id| moor_proto::host_ifname(id, "eth0"))
            .collect();
        if link_exists(&self.bridge) {
            links.extend(self.host_veths());
        }
        links.extend(
            self.made_links
                .get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .drain(..)
                .rev(),
        );
        for l in links {
            if link_exists(&l) {
                let _ = Command::new("ip").args(["link", "del", &l]).status();
            }
        }
        self.tor_netns = None;
        remove_cgroups(&ids);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A sandbox config as kubelet builds it for pod `name` of
/// [`POD_NAMESPACE`]: see [`sandbox_config_in`].
pub fn sandbox_config(name: &str, uid: &str) -> PodSandboxConfig {
    sandbox_config_in(POD_NAMESPACE, name, uid)
}

/// A sandbox config as kubelet builds it: metadata (name, uid, namespace,
/// attempt 0), hostname, the labels kubelet sets.
pub fn sandbox_config_in(namespace: &str, name: &str, uid: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: namespace.into(),
            attempt: 0,
        }),
        hostname: name.into(),
        labels: [
            ("io.kubernetes.pod.name".to_string(), name.to_string()),
            (
                "io.kubernetes.pod.namespace".to_string(),
                namespace.to_string(),
            ),
            ("io.kubernetes.pod.uid".to_string(), uid.to_string()),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    }
}

/// Does one ping from the netns at `netns` (a path) to `ip` (either
/// family) get an answer (3 tries)?
pub fn ping_in(netns: &str, ip: impl Into<IpAddr>) -> bool {
    let ip = ip.into().to_string();
    (0..3).any(|_| {
        Command::new("nsenter")
            .arg(format!("--net={netns}"))
            .args(["ping", "-c1", "-W1", "-q", &ip])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Runs `program args` inside the netns at `netns`; its stdout.
pub fn in_netns(netns: &str, program: &str, args: &[&str]) -> String {
    let mut all = vec![format!("--net={netns}"), program.to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    run_ok("nsenter", &all)
}

/// Is there a link named `name` in the root netns?
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Is there a live (not retired) pod veth host end named `name` in the root
/// netns? A retired one keeps its name, in moor's device group, until it is
/// reaped.
pub fn live_host_end_exists(name: &str) -> bool {
    let group = Path::new("/sys/class/net").join(name).join("netdev_group");
    match std::fs::read_to_string(group) {
        Ok(g) => g.trim() != moor_proto::GRAVEYARD_GROUP.to_string(),
        Err(_) => false,
    }
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(tool).is_file()))
}

/// A /24 in 10.128.0.0/9 that no route of the root netns covers, chosen
/// from the pid and counter so parallel processes do not pick the same one.
fn free_subnet(pid: u32, n: u32) -> [u8; 3] {
    let routes = run_ok("ip", &["-4", "-j", "route", "show"]);
    let routes: Value = serde_json::from_str(&routes).expect("ip -j route is JSON");
    let taken: BTreeSet<String> = routes
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["dst"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let start = (pid.wrapping_mul(16).wrapping_add(n)) % 32768;
    (0..64)
        .map(|i| (start + i) % 32768)
        .map(|k| [10, 128 + (k >> 8) as u8, k as u8])
        .find(|b| !taken.contains(&format!("{}.{}.{}.0/24", b[0], b[1], b[2])))
        .expect("a free /24 in 10.128.0.0/9")
}

/// Runs the CNI plugin `name` from `bin` with `env` (nothing inherited but
/// PATH) and `stdin`.
fn run_plugin(bin: &Path, name: &str, env: &[(&str, &str)], stdin: &str) -> Option<Output> {
    let mut child = Command::new(bin.join(name))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_PATH", bin)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let _ = child.stdin.take()?.write_all(stdin.as_bytes());
    child.wait_with_output().ok()
}
