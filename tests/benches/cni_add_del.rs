//! Benchmark: CNI ADD+DEL through the real `moor` binary against a running
//! `ipamd`, side by side in the same run with Debian's reference plugins
//! (`bridge` + `host-local`), and the ratio moor/ref.
//!
//! Run it with `sudo ./scripts/bench [OPTIONS]` (it builds the release
//! binaries first); `--help` lists the options. What it does:
//!
//! - Topology: a ToR network namespace holding two gateways, a node network
//!   namespace with two Linux bridges (MACs pinned), each with a veth uplink
//!   to the ToR: `br-moor` for moor (ipamd runs in the node namespace on its
//!   own socket and redb store in a temp dir), `br-ref` for the reference.
//! - Pods: one network namespace per worker and plugin, created before any
//!   timing and reused: ADD, DEL, next ADD in the same namespace, each cycle
//!   with a new container id and a new Deployment-style pod name (so moor
//!   gives the IP back to the pool on DEL, as host-local does).
//! - Both plugins are spawned the same way, the way `ip netns exec` would run
//!   them in the node namespace (fork, setns, private mount namespace, fresh
//!   /sys, exec) but without the extra `ip` process; env and stdin as a
//!   runtime passes them. The time of one invocation is spawn to exit.
//! - Batches run interleaved, in rounds, with the order flipped every round,
//!   so machine drift hits both plugins alike.
//! - Every invocation must exit 0 (else the run aborts with the plugin's
//!   output); no IP may be live twice; afterwards no link is left in the node
//!   or pod namespaces, ipamd's pool shows nothing in use or bound, and
//!   host-local's data dir holds no reservation.
//!
//! - `--moor-b-args "..."` adds a third side, `moor-b`: moor against a
//!   second ipamd (own bridge, store, socket) started with those extra
//!   flags, to compare an ipamd setting in one run (e.g. the reaper held off
//!   during batches: `--reap-quiet-ms 300 --reap-max-wait-ms 30000`);
//!   `--moor-b-bins DIR` gives moor-b the `moor`, `ipamd` and `ipamctl` of
//!   DIR instead, to compare two builds (before/after) in one run.
//! - `--dual`: every side dual stack. The ToR netns gets an IPv6 gateway
//!   (no DAD) beside each IPv4 one, the node's bridges an IPv6 address;
//!   moor's ToR is defined with both subnets (its pool is dual: checked with
//!   `pool show`), host-local gets a second range (`"ranges": [[v4], [v6]]`)
//!   and a `::/0` route; every ADD's result must hold one IP of each
//!   family, and neither may be live twice. `--moor-b-dual`: only moor-b
//!   (same binaries and flags as moor unless told otherwise) is dual stack,
//!   so one run shows moor IPv4 against moor dual stack.
//! - `--timing`: the moor sides run with `MOOR_TIMING=1` and ipamd logs its
//!   per-step timing line; the report adds a table of where each ADD's and
//!   DEL's time goes (timing.rs).
//!
//! Everything it creates (namespaces, ipamd, temp dir) is removed by Drop
//! guards, also on error, panic or Ctrl-C.

#[path = "cni/timing.rs"]
mod timing;

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use moor_e2e::bench::{
    add_del_families, add_uplink, add_uplink6, check_interrupted, check_rounds, commit,
    container_id, cpus, ipamctl, kernel, leftover_links, loadavg, ms, no_problems, pct, pool_busy,
    release_bins, round3, share, spawn_in_node, start, suffix, temp_dir, Args, CniPlugin, CniPod,
    Cycle, Live, Res, Samples, Uplink, Uplink6, PATH_ENV, PERCENTILES,
};
use moor_e2e::bins::Bins;
use moor_testkit::cmd::{describe_failure, try_run as run};
use moor_testkit::netns::{retired_links, wait_ping};
use moor_testkit::{Ipamd, IpamdCommand, Netns, TempDir};
use serde_json::{json, Value};

use timing::{Invocation, Table};

const USAGE: &str = "\
cni_add_del: times CNI ADD+DEL of the real moor binary (against ipamd) and of
Debian's bridge + host-local, interleaved in one run, and prints the ratio.

Usage: sudo ./scripts/bench [OPTIONS]
   or: cargo bench -p moor-e2e --bench cni_add_del -- [OPTIONS]   (as root,
       after cargo build --release --bins)

Options:
  --workers W        concurrent workers (pods) per plugin       [default: 8]
  --cycles C         ADD+DEL cycles per worker per plugin       [default: 50]
  --single N         cycles with 1 worker per plugin            [default: 40]
  --rounds R         interleaved rounds C and N are split over  [default: 5]
  --version-runs V   CNI_COMMAND=VERSION runs per binary        [default: 100]
  --moor-b-args A    a third side, moor-b: moor against a second ipamd
                     started with these extra flags (one string)
  --moor-b-bins DIR  moor-b runs the moor, ipamd and ipamctl of DIR
  --dual             every side dual stack: IPv6 gateways on the ToR, moor's
                     ToR and pool dual, host-local with an IPv6 range too;
                     each ADD must return one IPv4 and one IPv6 address
  --moor-b-dual      moor-b (added if not asked for otherwise) dual stack,
                     moor and ref IPv4: moor IPv4 against moor dual
  --timing           per-step timing of every moor ADD and DEL (MOOR_TIMING=1,
                     ipamd's timing log line), printed as a table
  -h, --help         this text
";

const REF_PLUGIN_DIR: &str = "/usr/lib/cni";
const POD_NAME_PREFIX: &str = "bench-7d9f8c6b5-";
const POD_NAMESPACE: &str = "bench";
/// How long a gateway may take to answer a first ping.
const PING_WITHIN: Duration = Duration::from_secs(10);
/// How much of ipamd's log an error shows.
const LOG_LINES: usize = 30;
/// How long the end check waits for retired veths to be reaped.
const REAPED_WITHIN: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- options

#[derive(Debug, Clone)]
struct Opts {
    workers: usize,
    cycles: usize,
    single: usize,
    rounds: usize,
    version_runs: usize,
    moor_b_args: Option<Vec<String>>,
    moor_b_bins: Option<PathBuf>,
    /// Every side dual stack.
    dual: bool,
    /// moor-b dual stack (with `dual` off: the other sides IPv4).
    moor_b_dual: bool,
    timing: bool,
}

impl Opts {
    /// Whether the side `key` runs dual stack.
    fn dual(&self, key: &str) -> bool {
        self.dual || (self.moor_b_dual && key == "moor-b")
    }
}

fn parse_opts() -> Res<Option<Opts>> {
    let mut o = Opts {
        workers: 8,
        cycles: 50,
        single: 40,
        rounds: 5,
        version_runs: 100,
        moor_b_args: None,
        moor_b_bins: None,
        dual: false,
        moor_b_dual: false,
        timing: false,
    };
    let mut args = Args::new(USAGE);
    while let Some(a) = args.next_arg() {
        let slot = match a.key.as_str() {
            "-h" | "--help" => return Ok(None),
            "--timing" => {
                o.timing = true;
                continue;
            }
            "--dual" => {
                o.dual = true;
                continue;
            }
            "--moor-b-dual" => {
                o.moor_b_dual = true;
                o.moor_b_args.get_or_insert_with(Vec::new);
                continue;
            }
            "--moor-b-args" => {
                let v = args.value(a, "ipamd flags")?;
                o.moor_b_args = Some(v.split_whitespace().map(str::to_owned).collect());
                continue;
            }
            "--moor-b-bins" => {
                let dir = PathBuf::from(args.value(a, "a directory")?);
                for b in ["moor", "ipamd", "ipamctl"] {
                    if !dir.join(b).is_file() {
                        return Err(format!("--moor-b-bins: no {b} in {}", dir.display()));
                    }
                }
                o.moor_b_bins = Some(dir);
                o.moor_b_args.get_or_insert_with(Vec::new);
                continue;
            }
            "--workers" => &mut o.workers,
            "--cycles" => &mut o.cycles,
            "--single" => &mut o.single,
            "--rounds" => &mut o.rounds,
            "--version-runs" => &mut o.version_runs,
            _ => return Err(args.unknown(&a)),
        };
        *slot = args.number(a)?;
    }
    check_rounds(o.workers, o.cycles, o.single, o.rounds)?;
    Ok(Some(o))
}

// ---------------------------------------------------------------- sides

/// One side's own part of the topology: a bridge (MAC pinned) with an
/// uplink to the ToR, the gateway there, and what its plugin hands out.
struct Net {
    bridge: &'static str,
    mac: &'static str,
    node_end: &'static str,
    tor_end: &'static str,
    gateway: &'static str,
    node_ip: &'static str,
    subnet: &'static str,
    range: &'static str,
    /// The same in IPv6, used when the side is dual stack.
    gateway6: &'static str,
    node_ip6: &'static str,
    subnet6: &'static str,
    range6: (&'static str, &'static str),
}

impl Net {
    /// The IPv6 range as ipamctl takes it.
    fn range6(&self) -> String {
        format!("{}-{}", self.range6.0, self.range6.1)
    }
}

const MOOR_NET: Net = Net {
    bridge: "br-moor",
    mac: "02:00:00:b0:01:01",
    node_end: "uplink-moor",
    tor_end: "tor-moor",
    gateway: "10.211.0.1",
    node_ip: "10.211.0.2",
    subnet: "10.211.0.0/16",
    range: "10.211.1.1-10.211.4.254",
    gateway6: "fd00:211::1",
    node_ip6: "fd00:211::2",
    subnet6: "fd00:211::/64",
    // Larger than the IPv4 range: every IPv4 address of a dual pool has
    // its IPv6 partner.
    range6: ("fd00:211::1000", "fd00:211::1fff"),
};
const REF_NET: Net = Net {
    bridge: "br-ref",
    mac: "02:00:00:b0:02:01",
    node_end: "uplink-ref",
    tor_end: "tor-ref",
    gateway: "10.212.0.1",
    node_ip: "10.212.0.2",
    subnet: "10.212.0.0/16",
    range: "10.212.1.1-10.212.4.254",
    gateway6: "fd00:212::1",
    node_ip6: "fd00:212::2",
    subnet6: "fd00:212::/64",
    // Larger than the IPv4 range: every IPv4 address of a dual pool has
    // its IPv6 partner.
    range6: ("fd00:212::1000", "fd00:212::1fff"),
};
const MOOR_B_NET: Net = Net {
    bridge: "br-moorb",
    mac: "02:00:00:b0:03:01",
    node_end: "uplink-moorb",
    tor_end: "tor-moorb",
    gateway: "10.213.0.1",
    node_ip: "10.213.0.2",
    subnet: "10.213.0.0/16",
    range: "10.213.1.1-10.213.4.254",
    gateway6: "fd00:213::1",
    node_ip6: "fd00:213::2",
    subnet6: "fd00:213::/64",
    // Larger than the IPv4 range: every IPv4 address of a dual pool has
    // its IPv6 partner.
    range6: ("fd00:213::1000", "fd00:213::1fff"),
};

/// A moor side's daemon.
struct Daemon {
    ipamd: Ipamd,
    ipamctl: PathBuf,
    socket: PathBuf,
    log: PathBuf,
}

/// One plugin setup under test. Field order is drop order: the daemon
/// before the pods.
struct Side {
    key: &'static str,
    /// The digit its container ids start with.
    tag: usize,
    daemon: Option<Daemon>,
    cni: CniPlugin,
    net: &'static Net,
    /// Dual stack: each ADD hands out an IPv4 and an IPv6 address.
    dual: bool,
    /// Pod network namespaces, one per worker.
    pods: Vec<Netns>,
    seq: AtomicU64,
    /// With --timing: every invocation's stamps; `phase` says which batch
    /// kind is running.
    timed: Option<Mutex<Vec<Invocation>>>,
    phase: AtomicUsize,
}

impl Side {
    fn is_moor(&self) -> bool {
        self.daemon.is_some()
    }

    fn invoke(
        &self,
        command: &'static str,
        pod: &Netns,
        seq: u64,
    ) -> Res<(Duration, std::process::Output)> {
        let cid = container_id(self.tag, seq);
        let pod_name = format!("{POD_NAME_PREFIX}{}", suffix(seq));
        let uid = format!("00000000-0000-4000-8{:03x}-{seq:012x}", self.tag);
        let pod = CniPod {
            namespace: POD_NAMESPACE,
            name: &pod_name,
            uid: &uid,
            cid: &cid,
            netns: pod,
        };
        let Some(timed) = &self.timed else {
            return self.cni.invoke(self.key, command, &pod);
        };
        let spawned = timing::monotonic_ns();
        let (took, out) = self.cni.invoke(self.key, command, &pod)?;
        let reaped = timing::monotonic_ns();
        timed.lock().unwrap().push(Invocation {
            phase: self.phase.load(Ordering::Relaxed),
            cmd: command,
            cid,
            spawned,
            reaped,
            stamps: timing::plugin_stamps(&out.stderr),
        });
        Ok((took, out))
    }

    /// One ADD then DEL in `pod`; the ADD's IP is checked against `live`.
    fn cycle(&self, pod: &Netns, live: &Live) -> Res<Cycle> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        add_del_families(self.key, self.key, self.dual, live, |command| {
            let command = if command == "ADD" { "ADD" } else { "DEL" };
            self.invoke(command, pod, seq)
        })
    }

    fn version(&self) -> Res<Duration> {
        let env = [("CNI_COMMAND", "VERSION"), ("PATH", PATH_ENV)];
        let (took, out) = spawn_in_node(
            self.cni.node_fd,
            &self.cni.bin,
            &env,
            br#"{"cniVersion":"1.0.0"}"#,
        )?;
        if !out.status.success()
            || !String::from_utf8_lossy(&out.stdout).contains("supportedVersions")
        {
            return Err(describe_failure(&format!("{} VERSION", self.key), &out));
        }
        Ok(took)
    }

    /// `workers` threads, each doing `cycles` ADD+DEL cycles in its own pod
    /// netns, started together; wall time from start to the last one's end.
    fn batch(&self, workers: usize, cycles: usize) -> Res<Samples> {
        self.phase
            .store(usize::from(workers == 1), Ordering::Relaxed);
        moor_e2e::bench::batch(self.key, &self.pods, workers, cycles, |pod, live| {
            self.cycle(pod, live)
        })
    }

    /// CPU time ipamd (all its threads, ended ones included) has used so
    /// far, to clock ticks (10 ms); zero for the reference.
    fn daemon_cpu(&self) -> Duration {
        let Some(d) = &self.daemon else {
            return Duration::ZERO;
        };
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", d.ipamd.pid())).unwrap_or_default();
        // Fields 14 and 15 (utime, stime), counted after the command name,
        // which ends at the last ')'.
        let ticks: u64 = stat
            .rsplit_once(')')
            .map(|(_, rest)| {
                rest.split_whitespace()
                    .skip(11)
                    .take(2)
                    .filter_map(|t| t.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
        Duration::from_nanos(ticks * 1_000_000_000 / hz.max(1))
    }

    fn ctl(&self, args: &[&str]) -> Res<String> {
        let d = self.daemon.as_ref().expect("a moor side");
        ipamctl(&d.ipamctl, &d.socket, args)
    }

    /// The bench pool's family as `pool show` gives it is the side's:
    /// `dual` on a dual-stack ToR, `ipv4` else.
    fn check_family(&self) -> Res<()> {
        let shown = self.ctl(&["-o", "json", "pool", "show", POOL])?;
        let pool: Value = serde_json::from_str(&shown)
            .map_err(|e| format!("{}: ipamctl -o json pool show: {e}", self.key))?;
        let want = if self.dual { "dual" } else { "ipv4" };
        // A build from before IPv6 (`--moor-b-bins`) shows no family: IPv4.
        let ipv4_before_ipv6 = pool["family"].is_null() && !self.dual;
        if pool["family"] != want && !ipv4_before_ipv6 {
            return Err(format!(
                "{}: pool {POOL} has family {}, want {want}: {shown}",
                self.key, pool["family"]
            ));
        }
        Ok(())
    }
}

/// The reference's config: the brief's, plus a default route via the
/// gateway (moor sets one too) and a range that leaves the node's own
/// address alone; with `dual`, a second range set from the IPv6 subnet
/// (host-local hands out one IP of each) and a `::/0` route.
fn ref_config(host_local_dir: &Path, dual: bool) -> String {
    let n = &REF_NET;
    let (first, last) = n.range.split_once('-').expect("a range is FIRST-LAST");
    let mut ranges = vec![json!([{
        "subnet": n.subnet, "gateway": n.gateway,
        "rangeStart": first, "rangeEnd": last,
    }])];
    let mut routes = vec![json!({"dst": "0.0.0.0/0"})];
    if dual {
        ranges.push(json!([{
            "subnet": n.subnet6, "gateway": n.gateway6,
            "rangeStart": n.range6.0, "rangeEnd": n.range6.1,
        }]));
        routes.push(json!({"dst": "::/0"}));
    }
    json!({
        "cniVersion": "1.0.0", "name": "ref", "type": "bridge",
        "bridge": n.bridge, "isGateway": false,
        "ipam": {
            "type": "host-local",
            "ranges": ranges,
            "routes": routes,
            "dataDir": host_local_dir,
        },
    })
    .to_string()
}

// ---------------------------------------------------------------- testbed

fn find_bins() -> Res<Bins> {
    let bins = release_bins("./scripts/bench")?;
    for b in ["bridge", "host-local"] {
        let p = Path::new(REF_PLUGIN_DIR).join(b);
        if !p.is_file() {
            return Err(format!(
                "{} is missing: install Debian's containernetworking-plugins (./scripts/setup)",
                p.display()
            ));
        }
    }
    Ok(bins)
}

/// Field order is drop order: the sides (ipamds, pods) first, then node,
/// ToR, temp dir.
struct Testbed {
    /// moor, then moor-b if asked for, then ref (always last).
    sides: Vec<Side>,
    _node_fd: File,
    node: Netns,
    _tor: Netns,
    _tmp: TempDir,
    host_local_dir: PathBuf,
}

const POOL: &str = "bench";

impl Testbed {
    fn new(bins: &Bins, opts: &Opts) -> Res<Self> {
        let tmp = temp_dir("moor-bench")?;
        let id = format!("mbench{}", std::process::id());
        let tor = Netns::add(format!("{id}-tor"))?;
        let node = Netns::add(format!("{id}-node"))?;
        let mut nets = vec![("moor", &MOOR_NET)];
        if opts.moor_b_args.is_some() {
            nets.push(("moor-b", &MOOR_B_NET));
        }
        nets.push(("ref", &REF_NET));
        for (key, n) in &nets {
            let uplink = Uplink {
                bridge: n.bridge,
                mac: n.mac,
                node_end: n.node_end,
                tor_end: n.tor_end,
                gateway: n.gateway,
                node_ip: n.node_ip,
            };
            add_uplink(&tor, &node, &uplink)?;
            if opts.dual(key) {
                let uplink6 = Uplink6 {
                    bridge: n.bridge,
                    tor_end: n.tor_end,
                    gateway6: n.gateway6,
                    node_ip6: n.node_ip6,
                };
                add_uplink6(&tor, &node, &uplink6)?;
            }
        }
        // A new bridge raises its carrier about a second after its first port
        // joins: wait until every gateway answers.
        for (key, n) in &nets {
            wait_ping(&node.name, n.gateway, PING_WITHIN)?;
            if opts.dual(key) {
                wait_ping(&node.name, n.gateway6, PING_WITHIN)?;
            }
        }
        let node_fd =
            File::open(node.path()).map_err(|e| format!("open {}: {e}", node.path().display()))?;

        let host_local_dir = tmp.join("host-local");
        let mut sides = Vec::new();
        let moor_sides = [("moor", 0xa, &MOOR_NET, Vec::new())].into_iter().chain(
            opts.moor_b_args
                .clone()
                .map(|a| ("moor-b", 0xc, &MOOR_B_NET, a)),
        );
        for (key, tag, net, extra) in moor_sides {
            let (moor, ipamd_bin, ipamctl_bin) = match (&opts.moor_b_bins, key) {
                (Some(dir), "moor-b") => (dir.join("moor"), dir.join("ipamd"), dir.join("ipamctl")),
                _ => (bins.moor.clone(), bins.ipamd.clone(), bins.ipamctl.clone()),
            };
            // Another build's ipamd may have no timing line to join.
            let timed = opts.timing && !(key == "moor-b" && opts.moor_b_bins.is_some());
            let socket = tmp.join(format!("ipamd-{key}.sock"));
            let log = tmp.join(format!("ipamd-{key}.log"));
            let level = if timed {
                "warn,moor_ipamd::node::timing=debug"
            } else {
                "warn"
            };
            // `ip netns exec` execs ipamd: the child's pid is ipamd's. Only
            // PATH from this environment: a KUBECONFIG there would give it
            // the API.
            let ipamd = IpamdCommand::in_netns(&node.name, &ipamd_bin, &socket, &log)
                .env_only_path()
                .arg("--store")
                .arg(format!(
                    "redb:{}",
                    tmp.join(format!("ipamd-{key}.redb")).display()
                ))
                .args(["--node", "bench-node", "--tor", "bench-rack"])
                .args(["--bridge", net.bridge, "--log", level])
                .args(&extra)
                .within(Duration::from_secs(10))
                .start()?;
            sides.push(Side {
                key,
                tag,
                daemon: Some(Daemon {
                    ipamd,
                    ipamctl: ipamctl_bin,
                    socket: socket.clone(),
                    log,
                }),
                cni: CniPlugin {
                    cni_path: moor.parent().unwrap().display().to_string(),
                    bin: moor,
                    config: json!({
                        "cniVersion": "1.0.0", "name": "moor", "type": "moor",
                        "socket": socket,
                    })
                    .to_string(),
                    node_fd: node_fd.as_raw_fd(),
                    env: if timed {
                        vec![("MOOR_TIMING", "1")]
                    } else {
                        Vec::new()
                    },
                },
                net,
                dual: opts.dual(key),
                pods: Vec::new(),
                seq: AtomicU64::new(0),
                timed: timed.then(|| Mutex::new(Vec::new())),
                phase: AtomicUsize::new(0),
            });
        }
        sides.push(Side {
            key: "ref",
            tag: 0xb,
            daemon: None,
            cni: CniPlugin {
                bin: Path::new(REF_PLUGIN_DIR).join("bridge"),
                cni_path: REF_PLUGIN_DIR.into(),
                config: ref_config(&host_local_dir, opts.dual("ref")),
                node_fd: node_fd.as_raw_fd(),
                env: Vec::new(),
            },
            net: &REF_NET,
            dual: opts.dual("ref"),
            pods: Vec::new(),
            seq: AtomicU64::new(0),
            timed: None,
            phase: AtomicUsize::new(0),
        });
        let bed = Self {
            sides,
            _node_fd: node_fd,
            node,
            _tor: tor,
            host_local_dir,
            _tmp: tmp,
        };

        // Each moor side's ToR and a pool big enough for every worker's pod
        // at once.
        let size = (2 * opts.workers + 2).to_string();
        for side in bed.sides.iter().filter(|s| s.is_moor()) {
            let n = side.net;
            let range6 = n.range6();
            let mut tor = vec![
                "tor",
                "add",
                "bench-rack",
                "--subnet",
                n.subnet,
                "--gateway",
                n.gateway,
                "--range",
                n.range,
            ];
            if side.dual {
                tor.extend([
                    "--subnet",
                    n.subnet6,
                    "--gateway",
                    n.gateway6,
                    "--range",
                    &range6,
                ]);
            }
            side.ctl(&tor)?;
            // No --family: a pool takes every family its ToRs have.
            side.ctl(&[
                "pool",
                "create",
                POOL,
                "--namespace",
                POD_NAMESPACE,
                "--app",
                "bench",
                "--size",
                &size,
            ])?;
            side.check_family()?;
        }
        let mut bed = bed;
        for side in bed.sides.iter_mut() {
            for w in 0..opts.workers {
                side.pods.push(Netns::add(format!("{id}-{}{w}", side.key))?);
            }
        }
        Ok(bed)
    }

    /// One untimed ADD, a ping from the pod to its gateway (every setup must
    /// really work), DEL; then one untimed cycle per worker.
    fn warm_up(&self, side: &Side, workers: usize) -> Res<()> {
        let pod = &side.pods[0];
        let seq = side.seq.fetch_add(1, Ordering::Relaxed);
        side.invoke("ADD", pod, seq)?;
        let mut pinged = wait_ping(&pod.name, side.net.gateway, PING_WITHIN);
        if side.dual && pinged.is_ok() {
            pinged = wait_ping(&pod.name, side.net.gateway6, PING_WITHIN);
        }
        side.invoke("DEL", pod, seq)?;
        pinged.map_err(|e| format!("{} pod: {e}", side.key))?;
        side.batch(workers, 1)?;
        if let Some(t) = &side.timed {
            t.lock().unwrap().clear();
        }
        Ok(())
    }

    fn log_tails(&self) -> String {
        self.sides
            .iter()
            .filter_map(|s| {
                let d = s.daemon.as_ref()?;
                Some(format!(
                    "ipamd of {} ({}):\n{}",
                    s.key,
                    d.log.display(),
                    d.ipamd.log_tail(LOG_LINES)
                ))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// After the run: every ipamd alive, nothing left over anywhere (retired
    /// veths are given their reaper's time).
    fn verify_clean(&mut self) -> Res<()> {
        let mut problems = Vec::new();
        for s in self.sides.iter_mut() {
            if let Some(d) = s.daemon.as_mut() {
                if !d.ipamd.alive() {
                    problems.push(format!(
                        "ipamd of {} died; its log:\n{}",
                        s.key,
                        d.ipamd.log_tail(LOG_LINES)
                    ));
                }
            }
        }
        let waited = Instant::now();
        while !retired_links(&self.node.name).is_empty() && waited.elapsed() < REAPED_WITHIN {
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut expected: HashSet<&str> = ["lo"].into();
        for s in &self.sides {
            expected.extend([s.net.bridge, s.net.node_end]);
        }
        let pods = self.sides.iter().flat_map(|s| &s.pods);
        leftover_links(&self.node.name, &expected, pods, &mut problems)?;
        for s in self.sides.iter().filter(|s| s.is_moor()) {
            let shown = s.ctl(&["-o", "json", "pool", "show", POOL])?;
            if let Some(busy) = pool_busy(&shown)? {
                problems.push(format!("{} pool {POOL} after the run: {busy}", s.key));
            }
        }
        let dir = self.host_local_dir.join("ref");
        if let Ok(entries) = std::fs::read_dir(&dir) {
            let held: Vec<String> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
                .collect();
            if !held.is_empty() {
                problems.push(format!("host-local still holds {held:?}"));
            }
        }
        no_problems(problems, "not clean after the run")
    }

    /// With --timing: each moor side's per-step tables, by phase and
    /// command: ("moor ADD", [W workers, 1 worker]).
    fn timing_tables(&self) -> Vec<(String, [Table; 2])> {
        let mut out = Vec::new();
        for s in &self.sides {
            let (Some(timed), Some(d)) = (&s.timed, &s.daemon) else {
                continue;
            };
            let log = std::fs::read_to_string(&d.log).unwrap_or_default();
            let lines = timing::ipamd_lines(&log);
            for cmd in ["ADD", "DEL"] {
                let mut tables = [Table::default(), Table::default()];
                for inv in timed.lock().unwrap().iter().filter(|i| i.cmd == cmd) {
                    let ipamd = lines.get(&(cmd.to_string(), inv.cid.clone()));
                    tables[inv.phase].absorb(inv, ipamd);
                }
                out.push((format!("{} {cmd}", s.key), tables));
            }
        }
        out
    }
}

// ---------------------------------------------------------------- report

struct Report {
    opts: Opts,
    /// The plugin the moor side ran (the musl build when scripts/bench
    /// made it): named in the report, so a fallback to glibc shows.
    plugin: PathBuf,
    /// Per side, in the testbed's order (ref last).
    keys: Vec<&'static str>,
    /// Per side, whether it ran dual stack.
    dual: Vec<bool>,
    multi: Vec<Samples>,
    single: Vec<Samples>,
    /// Per side, the CPU of its multi-worker batches.
    cpu: Vec<Cpu>,
    /// VERSION, per side.
    version: Vec<Vec<Duration>>,
    floor: Vec<Duration>,
    /// Per side, VERSION minus the floor run next to it, run by run.
    over_floor: Vec<Vec<Duration>>,
    total: Duration,
    /// 1-minute load average before and after the timed part.
    load: (String, String),
    timing: Vec<(String, [Table; 2])>,
}

impl Report {
    fn print(&mut self) {
        for s in self.multi.iter_mut().chain(self.single.iter_mut()) {
            s.sort();
        }
        for v in self.version.iter_mut().chain(self.over_floor.iter_mut()) {
            v.sort();
        }
        self.floor.sort();
        let o = &self.opts;
        let n = self.keys.len();
        let r = n - 1;
        println!();
        println!(
            "{} (moor + ipamd) vs ref (Debian bridge + host-local {}), interleaved in {} rounds, {:.1} s",
            self.keys[..r].join(", "),
            ref_version(),
            o.rounds,
            self.total.as_secs_f64()
        );
        println!("moor: the plugin {}", self.plugin.display());
        if let Some(d) = &o.moor_b_bins {
            println!("moor-b: the binaries of {}", d.display());
        }
        if let Some(a) = o.moor_b_args.as_ref().filter(|a| !a.is_empty()) {
            println!("moor-b: ipamd started with {}", a.join(" "));
        }
        if self.dual.contains(&true) {
            let families: Vec<String> = self
                .keys
                .iter()
                .zip(&self.dual)
                .map(|(k, d)| format!("{k} {}", if *d { "dual stack" } else { "IPv4" }))
                .collect();
            println!("address families: {}", families.join(", "));
        }
        println!(
            "machine: {} CPUs, kernel {}; each plugin: {} workers x {} cycles, then 1 worker x {} cycles",
            cpus(),
            kernel(),
            o.workers,
            o.cycles,
            o.single
        );
        println!(
            "load average (1 min): {} before the timed part, {} after (the bench adds to it); source {}{}",
            self.load.0,
            self.load.1,
            commit(),
            if o.timing { "; --timing on" } else { "" }
        );
        print!("{:<28}", "");
        for k in &self.keys {
            print!("{k:>12}");
        }
        for k in &self.keys[..r] {
            print!("{:>12}", format!("{k}/ref"));
        }
        println!();
        let row = |label: &str, v: Vec<f64>, unit: &str| {
            print!("{label:<28}");
            for x in &v {
                if unit.is_empty() {
                    print!("{x:>12.1}");
                } else {
                    print!("{x:>9.2} {unit}");
                }
            }
            for x in &v[..r] {
                if v[r] > 0.0 {
                    print!("{:>12.2}", x / v[r]);
                } else {
                    print!("{:>12}", "-");
                }
            }
            println!();
        };
        for (title, s) in [
            (format!("{} workers", o.workers), &self.multi),
            ("1 worker".to_string(), &self.single),
        ] {
            println!("-- {title}");
            for (name, p) in PERCENTILES {
                row(
                    &format!("  ADD {name}"),
                    s.iter().map(|x| ms(pct(&x.add, p))).collect(),
                    "ms",
                );
            }
            for (name, p) in PERCENTILES {
                row(
                    &format!("  DEL {name}"),
                    s.iter().map(|x| ms(pct(&x.del, p))).collect(),
                    "ms",
                );
            }
            row(
                "  ADD+DEL cycles/s",
                s.iter().map(Samples::rate).collect(),
                "",
            );
            print!("{:<28}", "  cycles/s range per round");
            for x in s.iter() {
                let lo = x.per_batch.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = x.per_batch.iter().copied().fold(0.0, f64::max);
                print!("{:>12}", format!("{lo:.0}-{hi:.0}"));
            }
            println!();
        }
        println!(
            "-- CPU per ADD+DEL cycle, {} workers (user + system; the plugins with the bench's \
             spawn, moor's with ipamd)",
            o.workers
        );
        row(
            "  plugin processes",
            self.cpu.iter().map(|c| c.per_cycle().0).collect(),
            "ms",
        );
        row(
            "  ipamd",
            self.cpu.iter().map(|c| c.per_cycle().1).collect(),
            "ms",
        );
        // The reference has no daemon: ratios against its plugins.
        row(
            "  all",
            self.cpu.iter().map(|c| c.per_cycle().2).collect(),
            "ms",
        );
        println!("-- process start (CNI_COMMAND=VERSION)");
        let p50 = |v: &[Duration]| ms(pct(v, 50.0));
        let fl = p50(&self.floor);
        row(
            "  VERSION p50",
            self.version.iter().map(|v| p50(v)).collect(),
            "ms",
        );
        row(
            "  VERSION - floor, p50",
            self.over_floor.iter().map(|v| p50(v)).collect(),
            "ms",
        );
        println!(
            "{:<28}{fl:>9.2} ms   (/bin/true spawned the same way: fork, setns, mount ns, /sys;",
            "  spawn floor p50",
        );
        println!(
            "{:<28}each VERSION run is paired with the floor run next to it)",
            ""
        );
        println!("moor/ref < 1 on latencies and > 1 on cycles/s means moor is faster.");
        for (what, [multi, single]) in &self.timing {
            println!();
            timing::print(
                &format!("where the time of a {what} goes"),
                &[
                    (format!("{} workers", o.workers), multi),
                    ("1 worker".to_string(), single),
                ],
            );
        }
        println!();
        let side_json = |i: usize| {
            json!({
                "multi": self.multi[i].to_json(),
                "single": self.single[i].to_json(),
            })
        };
        let ratio = |a: &Samples, b: &Samples, f: &dyn Fn(&Samples) -> f64| round3(f(a) / f(b));
        let add50 = |s: &Samples| ms(pct(&s.add, 50.0));
        let del50 = |s: &Samples| ms(pct(&s.del, 50.0));
        let rate = |s: &Samples| s.rate();
        let ratios = |i: usize| {
            json!({
                "add_p50_multi": ratio(&self.multi[i], &self.multi[r], &add50),
                "del_p50_multi": ratio(&self.multi[i], &self.multi[r], &del50),
                "cycles_per_s_multi": ratio(&self.multi[i], &self.multi[r], &rate),
                "add_p50_single": ratio(&self.single[i], &self.single[r], &add50),
                "del_p50_single": ratio(&self.single[i], &self.single[r], &del50),
                "cycles_per_s_single": ratio(&self.single[i], &self.single[r], &rate),
            })
        };
        let mut j = json!({
            "bench": "cni_add_del",
            "cpus": cpus(),
            "kernel": kernel(),
            "loadavg_before": self.load.0,
            "loadavg_after": self.load.1,
            "commit": commit(),
            "ref_plugins": format!("containernetworking-plugins {}", ref_version()),
            "workers": o.workers,
            "cycles_per_worker": o.cycles,
            "single_cycles": o.single,
            "rounds": o.rounds,
            "seconds": round3(self.total.as_secs_f64()),
            "spawn_floor_p50_ms": round3(fl),
        });
        for (i, k) in self.keys.iter().enumerate() {
            j[*k] = side_json(i);
            j[*k]["dual"] = json!(self.dual[i]);
            j[*k]["version_p50_ms"] = json!(round3(p50(&self.version[i])));
            j[*k]["version_minus_floor_p50_ms"] = json!(round3(p50(&self.over_floor[i])));
            let (plugins, daemon, all) = self.cpu[i].per_cycle();
            j[*k]["multi"]["cpu_ms_per_cycle"] = json!({
                "plugins": round3(plugins),
                "ipamd": round3(daemon),
                "all": round3(all),
            });
            if i < r {
                j[format!("ratio_{}_over_ref", k.replace('-', "_"))] = ratios(i);
            }
        }
        if let Some(a) = &o.moor_b_args {
            j["moor_b_args"] = json!(a.join(" "));
        }
        j["moor_plugin"] = json!(self.plugin.display().to_string());
        if let Some(d) = &o.moor_b_bins {
            j["moor_b_bins"] = json!(d.display().to_string());
        }
        j["dual"] = json!(o.dual);
        j["moor_b_dual"] = json!(o.moor_b_dual);
        if !self.timing.is_empty() {
            j["timing"] = Value::Object(
                self.timing
                    .iter()
                    .map(|(what, [m, s])| {
                        (
                            what.clone(),
                            json!({"multi": m.to_json(), "single": s.to_json()}),
                        )
                    })
                    .collect(),
            );
        }
        println!("{j}");
    }
}

/// Pairwise differences `a[i] - b[i]` (the VERSION runs and the floor runs
/// alternate, so pair i ran at about the same moment), sorted.
fn diffs(a: &[Duration], b: &[Duration]) -> Vec<Duration> {
    let mut d: Vec<Duration> = a.iter().zip(b).map(|(x, y)| x.saturating_sub(*y)).collect();
    d.sort();
    d
}

fn ref_version() -> String {
    run(Command::new("dpkg-query").args(["-W", "-f=${Version}", "containernetworking-plugins"]))
        .unwrap_or_else(|_| "?".into())
}

/// CPU time this process's ended and waited-for children (every plugin
/// invocation, with what it spawned, e.g. host-local) used so far: user +
/// system, the bench's own fork, setns and /sys mount before exec included.
fn children_cpu() -> Duration {
    // SAFETY: rusage is plain old data; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage for the call.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU a side used in its multi-worker batches: the plugin processes and
/// ipamd. Less moved by the machine's load than the cycle rate (a busy
/// machine slows a cycle down, it hardly makes it cost more CPU), so it
/// compares builds across runs; kernel work done outside both (softirqs,
/// kworkers) is not in it.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    plugins: Duration,
    daemon: Duration,
    cycles: usize,
}

impl Cpu {
    /// ms per ADD+DEL cycle of (plugins, ipamd, both).
    fn per_cycle(&self) -> (f64, f64, f64) {
        let per = |d: Duration| d.as_secs_f64() * 1e3 / self.cycles.max(1) as f64;
        let (p, d) = (per(self.plugins), per(self.daemon));
        (p, d, p + d)
    }
}

// ---------------------------------------------------------------- main

fn bench(opts: &Opts, plugin: &Path, bed: &mut Testbed) -> Res<Report> {
    eprintln!("bench: warm-up (one pod of each pings its gateway)");
    for side in &bed.sides {
        bed.warm_up(side, opts.workers)?;
    }
    let n = bed.sides.len();
    let load_before = loadavg();
    let t0 = Instant::now();
    let mut multi: Vec<Samples> = (0..n).map(|_| Samples::default()).collect();
    let mut single: Vec<Samples> = (0..n).map(|_| Samples::default()).collect();
    let mut cpu = vec![Cpu::default(); n];
    for round in 0..opts.rounds {
        // The order rotates every round, so each side follows each other.
        let order: Vec<usize> = (0..n).map(|i| (i + round) % n).collect();
        let (c, k) = (
            share(opts.cycles, opts.rounds, round),
            share(opts.single, opts.rounds, round),
        );
        for &i in &order {
            let side = &bed.sides[i];
            let (plugins, daemon) = (children_cpu(), side.daemon_cpu());
            let s = side.batch(opts.workers, c)?;
            cpu[i].plugins += children_cpu().saturating_sub(plugins);
            cpu[i].daemon += side.daemon_cpu().saturating_sub(daemon);
            cpu[i].cycles += s.cycles;
            eprintln!(
                "bench: round {}/{} {:<6} {} workers x {c}: {:.1} cycles/s",
                round + 1,
                opts.rounds,
                side.key,
                opts.workers,
                s.cycles as f64 / s.wall.as_secs_f64()
            );
            multi[i].absorb(s);
        }
        for &i in order.iter().rev() {
            single[i].absorb(bed.sides[i].batch(1, k)?);
        }
    }
    let total = t0.elapsed();

    eprintln!("bench: VERSION x {} per binary", opts.version_runs);
    let mut version: Vec<Vec<Duration>> = vec![Vec::new(); n];
    let mut floor = Vec::new();
    let truth = Path::new("/bin/true");
    let node_fd = bed.sides[0].cni.node_fd;
    for i in 0..opts.version_runs {
        check_interrupted()?;
        for k in (0..n).map(|k| (k + i) % n) {
            version[k].push(bed.sides[k].version()?);
        }
        let (took, out) = spawn_in_node(node_fd, truth, &[("PATH", PATH_ENV)], b"")?;
        if !out.status.success() {
            return Err(describe_failure("/bin/true in the node netns", &out));
        }
        floor.push(took);
    }
    let over_floor = version.iter().map(|v| diffs(v, &floor)).collect();
    bed.verify_clean()?;
    Ok(Report {
        opts: opts.clone(),
        plugin: plugin.to_path_buf(),
        keys: bed.sides.iter().map(|s| s.key).collect(),
        dual: bed.sides.iter().map(|s| s.dual).collect(),
        multi,
        single,
        cpu,
        version,
        floor,
        over_floor,
        total,
        load: (load_before, loadavg()),
        timing: bed.timing_tables(),
    })
}

fn main() -> ExitCode {
    let (opts, bins) = match start(
        "cni_add_del",
        USAGE,
        parse_opts(),
        "it creates network namespaces, bridges and veths",
        "./scripts/bench",
        find_bins,
    ) {
        Ok(started) => started,
        Err(code) => return code,
    };
    eprintln!(
        "bench: moor {} vs {}/bridge + host-local; setting up",
        bins.moor.display(),
        REF_PLUGIN_DIR
    );
    moor_e2e::bench::run(
        "cni_add_del",
        Testbed::new(&bins, &opts),
        |bed| bench(&opts, &bins.moor, bed),
        |mut report| report.print(),
        |bed| {
            let tails = bed.log_tails();
            if !tails.is_empty() {
                eprintln!("{tails}");
            }
        },
    )
}
