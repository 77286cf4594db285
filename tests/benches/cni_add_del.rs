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
//! Everything it creates (namespaces, ipamd, temp dir) is removed by Drop
//! guards, also on error, panic or Ctrl-C.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use moor_e2e::bench::{
    check_interrupted, commit, cpus, kernel, lat_json, loadavg, ms, pct, release_bins, round3,
    run_workers, start, suffix, Args, Res, PERCENTILES,
};
use moor_e2e::bins::Bins;
use moor_testkit::cmd::{describe_failure, try_ip as ip, try_run as run};
use moor_testkit::netns::{try_links as links, wait_ping};
use moor_testkit::{Ipamd, IpamdCommand, Netns, TempDir};
use serde_json::{json, Value};

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
  -h, --help         this text
";

const REF_PLUGIN_DIR: &str = "/usr/lib/cni";
const POD_NAME_PREFIX: &str = "bench-7d9f8c6b5-";
const POD_NAMESPACE: &str = "bench";
/// How long a gateway may take to answer a first ping.
const PING_WITHIN: Duration = Duration::from_secs(10);
/// How much of ipamd's log an error shows.
const LOG_LINES: usize = 30;
const PATH_ENV: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

// ---------------------------------------------------------------- options

#[derive(Debug, Clone)]
struct Opts {
    workers: usize,
    cycles: usize,
    single: usize,
    rounds: usize,
    version_runs: usize,
}

fn parse_opts() -> Res<Option<Opts>> {
    let mut o = Opts {
        workers: 8,
        cycles: 50,
        single: 40,
        rounds: 5,
        version_runs: 100,
    };
    let mut args = Args::new(USAGE);
    while let Some(a) = args.next_arg() {
        let slot = match a.key.as_str() {
            "-h" | "--help" => return Ok(None),
            "--workers" => &mut o.workers,
            "--cycles" => &mut o.cycles,
            "--single" => &mut o.single,
            "--rounds" => &mut o.rounds,
            "--version-runs" => &mut o.version_runs,
            _ => return Err(args.unknown(&a)),
        };
        *slot = args.number(a)?;
    }
    if o.workers == 0 || o.workers > 200 {
        return Err(format!("--workers {}: expected 1 to 200", o.workers));
    }
    if o.rounds == 0 {
        return Err("--rounds 0: expected at least 1".into());
    }
    if o.cycles < o.rounds || o.single < o.rounds {
        return Err(format!(
            "--cycles {} and --single {} must each be at least --rounds {} \
             (they are split over the rounds)",
            o.cycles, o.single, o.rounds
        ));
    }
    Ok(Some(o))
}

/// `total` split over `rounds` as evenly as possible.
fn share(total: usize, rounds: usize, round: usize) -> usize {
    total / rounds + usize::from(round < total % rounds)
}

// ---------------------------------------------------------------- spawning

/// Spawns `prog` inside the node's network namespace the way `ip netns exec`
/// does (setns, private mount namespace, /sys remounted so it shows this
/// namespace's devices), but in the forked child itself: no `ip` process in
/// between. Returns the wall time from spawn to exit and the output.
fn spawn_in_node(
    node_fd: RawFd,
    prog: &Path,
    env: &[(&str, &str)],
    stdin: &[u8],
) -> Res<(Duration, Output)> {
    let mut cmd = Command::new(prog);
    cmd.env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure only makes raw syscalls (async-signal-safe), and
    // node_fd stays open for the whole run.
    unsafe {
        cmd.pre_exec(move || enter_netns(node_fd));
    }
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot spawn {}: {e}", prog.display()))?;
    let mut pipe = child.stdin.take().expect("stdin is piped");
    let written = pipe.write_all(stdin);
    drop(pipe);
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for {}: {e}", prog.display()))?;
    let took = start.elapsed();
    if let Err(e) = written {
        return Err(format!(
            "writing stdin of {}: {e}; it printed: {}{}",
            prog.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok((took, out))
}

/// In the forked child: what `ip netns exec` does before exec.
fn enter_netns(fd: RawFd) -> std::io::Result<()> {
    let err = std::io::Error::last_os_error;
    // SAFETY: raw syscalls with valid, NUL-terminated static strings.
    unsafe {
        if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
            return Err(err());
        }
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(err());
        }
        if libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_SLAVE | libc::MS_REC,
            std::ptr::null(),
        ) != 0
        {
            return Err(err());
        }
        libc::umount2(c"/sys".as_ptr(), libc::MNT_DETACH);
        if libc::mount(
            c"sysfs".as_ptr(),
            c"/sys".as_ptr(),
            c"sysfs".as_ptr(),
            0,
            std::ptr::null(),
        ) != 0
        {
            return Err(err());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- plugins

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Moor,
    Ref,
}

impl Which {
    fn key(self) -> &'static str {
        match self {
            Which::Moor => "moor",
            Which::Ref => "ref",
        }
    }
}

struct Plugin {
    which: Which,
    bin: PathBuf,
    cni_path: String,
    config: String,
    gateway: &'static str,
    /// Pod network namespaces, one per worker.
    pods: Vec<Netns>,
    node_fd: RawFd,
    seq: AtomicU64,
}

struct Cycle {
    add: Duration,
    del: Duration,
}

impl Plugin {
    fn invoke(&self, command: &str, pod: &Netns, seq: u64) -> Res<(Duration, Output)> {
        let tag = match self.which {
            Which::Moor => 0xa,
            Which::Ref => 0xb,
        };
        let cid = format!("{tag:x}{:015x}{seq:048x}", std::process::id());
        let pod_name = format!("{POD_NAME_PREFIX}{}", suffix(seq));
        let uid = format!("00000000-0000-4000-8{tag:03x}-{seq:012x}");
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={POD_NAMESPACE};K8S_POD_NAME={pod_name};\
             K8S_POD_INFRA_CONTAINER_ID={cid};K8S_POD_UID={uid}"
        );
        let netns = pod.path().display().to_string();
        let env = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", cid.as_str()),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", self.cni_path.as_str()),
            ("CNI_ARGS", args.as_str()),
            ("PATH", PATH_ENV),
        ];
        let (took, out) = spawn_in_node(self.node_fd, &self.bin, &env, self.config.as_bytes())?;
        if !out.status.success() {
            check_interrupted()?;
            return Err(describe_failure(
                &format!(
                    "{} {command} (pod {pod_name}, netns {}, container {cid})",
                    self.which.key(),
                    pod.name
                ),
                &out,
            ));
        }
        Ok((took, out))
    }

    /// One ADD then DEL in `pod`; the ADD's IP is checked against `live`.
    fn cycle(&self, pod: &Netns, live: &Mutex<HashSet<String>>) -> Res<Cycle> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let (add, out) = self.invoke("ADD", pod, seq)?;
        let result: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            describe_failure(
                &format!("{} ADD printed no JSON result ({e}); it", self.which.key()),
                &out,
            )
        })?;
        let addr = result["ips"][0]["address"]
            .as_str()
            .ok_or_else(|| {
                format!(
                    "{} ADD result has no ips[0].address: {result}",
                    self.which.key()
                )
            })?
            .to_string();
        if !live.lock().unwrap().insert(addr.clone()) {
            return Err(format!(
                "{}: {addr} handed out while another pod still holds it",
                self.which.key()
            ));
        }
        // The pod holds its IP from ADD's result until the runtime calls
        // DEL. A plugin may release it before DEL returns (moor does, with
        // the pod cut off first; host-local too, before the bridge plugin
        // deletes the veth), so another worker's ADD may get it before
        // this DEL's process has exited.
        live.lock().unwrap().remove(&addr);
        let (del, _) = self.invoke("DEL", pod, seq)?;
        Ok(Cycle { add, del })
    }

    fn version(&self) -> Res<Duration> {
        let env = [("CNI_COMMAND", "VERSION"), ("PATH", PATH_ENV)];
        let (took, out) =
            spawn_in_node(self.node_fd, &self.bin, &env, br#"{"cniVersion":"1.0.0"}"#)?;
        if !out.status.success()
            || !String::from_utf8_lossy(&out.stdout).contains("supportedVersions")
        {
            return Err(describe_failure(
                &format!("{} VERSION", self.which.key()),
                &out,
            ));
        }
        Ok(took)
    }
}

// ---------------------------------------------------------------- batches

#[derive(Default)]
struct Samples {
    add: Vec<Duration>,
    del: Vec<Duration>,
    cycles: usize,
    wall: Duration,
    /// cycles/s of each batch, in order.
    per_batch: Vec<f64>,
}

impl Samples {
    fn absorb(&mut self, b: Samples) {
        self.per_batch.push(b.cycles as f64 / b.wall.as_secs_f64());
        self.add.extend(b.add);
        self.del.extend(b.del);
        self.cycles += b.cycles;
        self.wall += b.wall;
    }

    fn rate(&self) -> f64 {
        self.cycles as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    fn sort(&mut self) {
        self.add.sort();
        self.del.sort();
    }

    fn to_json(&self) -> Value {
        json!({
            "add_ms": lat_json(&self.add),
            "del_ms": lat_json(&self.del),
            "cycles": self.cycles,
            "cycles_per_s": round3(self.rate()),
            "batch_cycles_per_s": self.per_batch.iter().map(|r| round3(*r)).collect::<Vec<_>>(),
        })
    }
}

/// `workers` threads, each doing `cycles` ADD+DEL cycles in its own pod
/// netns, started together; wall time from start to the last one's end.
fn batch(p: &Plugin, workers: usize, cycles: usize) -> Res<Samples> {
    let live = Mutex::new(HashSet::new());
    let (results, _, wall) = run_workers(
        workers,
        |w| Ok((&p.pods[w], cycles)),
        |(pod, left): &mut (&Netns, usize)| {
            if *left == 0 {
                return Ok(None);
            }
            *left -= 1;
            p.cycle(pod, &live).map(Some)
        },
    );
    let mut s = Samples {
        wall,
        ..Samples::default()
    };
    for r in results {
        for (c, _) in r? {
            s.add.push(c.add);
            s.del.push(c.del);
            s.cycles += 1;
        }
    }
    if !live.lock().unwrap().is_empty() {
        return Err(format!("{}: IPs still live after a batch", p.which.key()));
    }
    Ok(s)
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

/// A fresh temp dir for this run's sockets, stores and logs.
fn temp_dir() -> Res<TempDir> {
    TempDir::create(std::env::temp_dir().join(moor_testkit::unique("moor-bench")))
}

/// Field order is drop order: ipamd first, then pods, node, ToR, temp dir.
struct Testbed {
    ipamd: Option<Ipamd>,
    moor: Plugin,
    reference: Plugin,
    _node_fd: File,
    node: Netns,
    _tor: Netns,
    tmp: TempDir,
    socket: PathBuf,
    host_local_dir: PathBuf,
    ipamctl: PathBuf,
}

const MOOR_BRIDGE: &str = "br-moor";
const REF_BRIDGE: &str = "br-ref";
const MOOR_GW: &str = "10.211.0.1";
const REF_GW: &str = "10.212.0.1";
const POOL: &str = "bench";

impl Testbed {
    fn new(bins: &Bins, workers: usize) -> Res<Self> {
        let tmp = temp_dir()?;
        let id = format!("mbench{}", std::process::id());
        let tor = Netns::add(format!("{id}-tor"))?;
        let node = Netns::add(format!("{id}-node"))?;
        // (bridge, pinned MAC, node uplink, ToR side, gateway, node's own IP)
        let sides = [
            (
                MOOR_BRIDGE,
                "02:00:00:b0:01:01",
                "uplink-moor",
                "tor-moor",
                MOOR_GW,
                "10.211.0.2",
            ),
            (
                REF_BRIDGE,
                "02:00:00:b0:02:01",
                "uplink-ref",
                "tor-ref",
                REF_GW,
                "10.212.0.2",
            ),
        ];
        for (br, mac, up, down, gw, own) in sides {
            ip(&[
                "link", "add", down, "netns", &tor.name, "type", "veth", "peer", "name", up,
                "netns", &node.name,
            ])?;
            ip(&[
                "-n",
                &tor.name,
                "addr",
                "add",
                &format!("{gw}/16"),
                "dev",
                down,
            ])?;
            ip(&["-n", &tor.name, "link", "set", down, "up"])?;
            ip(&[
                "-n", &node.name, "link", "add", br, "address", mac, "type", "bridge",
            ])?;
            ip(&["-n", &node.name, "link", "set", up, "master", br, "up"])?;
            ip(&[
                "-n",
                &node.name,
                "addr",
                "add",
                &format!("{own}/16"),
                "dev",
                br,
            ])?;
            ip(&["-n", &node.name, "link", "set", br, "up"])?;
        }
        // A new bridge raises its carrier about a second after its first port
        // joins: wait until both gateways answer.
        for (_, _, _, _, gw, _) in sides {
            wait_ping(&node.name, gw, PING_WITHIN)?;
        }
        let node_fd =
            File::open(node.path()).map_err(|e| format!("open {}: {e}", node.path().display()))?;

        // ipamd in the node netns, its own socket and store.
        let socket = tmp.join("ipamd.sock");
        let log = tmp.join("ipamd.log");
        // `ip netns exec` execs ipamd: the child's pid is ipamd's.
        let ipamd = IpamdCommand::in_netns(&node.name, &bins.ipamd, &socket, &log)
            .arg("--store")
            .arg(format!("redb:{}", tmp.join("ipamd.redb").display()))
            .args([
                "--node",
                "bench-node",
                "--tor",
                "bench-rack",
                "--bridge",
                MOOR_BRIDGE,
            ])
            .args(["--log", "warn"])
            .within(Duration::from_secs(10))
            .start()?;

        let host_local_dir = tmp.join("host-local");
        let mut bed = Self {
            ipamd: Some(ipamd),
            moor: Plugin {
                which: Which::Moor,
                bin: bins.moor.clone(),
                cni_path: bins.moor.parent().unwrap().display().to_string(),
                config: json!({
                    "cniVersion": "1.0.0", "name": "moor", "type": "moor",
                    "socket": socket,
                })
                .to_string(),
                gateway: MOOR_GW,
                pods: Vec::new(),
                node_fd: node_fd.as_raw_fd(),
                seq: AtomicU64::new(0),
            },
            reference: Plugin {
                which: Which::Ref,
                bin: Path::new(REF_PLUGIN_DIR).join("bridge"),
                cni_path: REF_PLUGIN_DIR.into(),
                // The brief's reference config, plus a default route via
                // the gateway (moor sets one too) and a range that leaves
                // the node's own address alone.
                config: json!({
                    "cniVersion": "1.0.0", "name": "ref", "type": "bridge",
                    "bridge": REF_BRIDGE, "isGateway": false,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{
                            "subnet": "10.212.0.0/16", "gateway": REF_GW,
                            "rangeStart": "10.212.1.1", "rangeEnd": "10.212.4.254",
                        }]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": host_local_dir,
                    },
                })
                .to_string(),
                gateway: REF_GW,
                pods: Vec::new(),
                node_fd: node_fd.as_raw_fd(),
                seq: AtomicU64::new(0),
            },
            _node_fd: node_fd,
            node,
            _tor: tor,
            socket,
            host_local_dir,
            ipamctl: bins.ipamctl.clone(),
            tmp,
        };

        // The ToR and a pool big enough for every worker's pod at once.
        let size = (2 * workers + 2).to_string();
        bed.ctl(&[
            "tor",
            "add",
            "bench-rack",
            "--subnet",
            "10.211.0.0/16",
            "--gateway",
            MOOR_GW,
            "--range",
            "10.211.1.1-10.211.4.254",
        ])?;
        bed.ctl(&[
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

        for w in 0..workers {
            bed.moor.pods.push(Netns::add(format!("{id}-m{w}"))?);
            bed.reference.pods.push(Netns::add(format!("{id}-r{w}"))?);
        }
        Ok(bed)
    }

    fn ctl(&self, args: &[&str]) -> Res<String> {
        run(Command::new(&self.ipamctl)
            .arg("--socket")
            .arg(&self.socket)
            .args(args))
    }

    fn plugin(&self, w: Which) -> &Plugin {
        match w {
            Which::Moor => &self.moor,
            Which::Ref => &self.reference,
        }
    }

    /// One untimed ADD, a ping from the pod to its gateway (both setups must
    /// really work), DEL; then one untimed cycle per worker.
    fn warm_up(&self, w: Which, workers: usize) -> Res<()> {
        let p = self.plugin(w);
        let pod = &p.pods[0];
        let seq = p.seq.fetch_add(1, Ordering::Relaxed);
        p.invoke("ADD", pod, seq)?;
        let pinged = wait_ping(&pod.name, p.gateway, PING_WITHIN);
        p.invoke("DEL", pod, seq)?;
        pinged.map_err(|e| format!("{} pod: {e}", w.key()))?;
        batch(p, workers, 1)?;
        Ok(())
    }

    fn log_tail(&self) -> String {
        self.ipamd
            .as_ref()
            .map(|d| d.log_tail(LOG_LINES))
            .unwrap_or_default()
    }

    /// After the run: ipamd alive, nothing left over anywhere.
    fn verify_clean(&mut self) -> Res<()> {
        let mut problems = Vec::new();
        if let Some(d) = self.ipamd.as_mut() {
            if !d.alive() {
                problems.push(format!("ipamd died; its log:\n{}", d.log_tail(LOG_LINES)));
            }
        }
        let expected: HashSet<&str> =
            ["lo", MOOR_BRIDGE, REF_BRIDGE, "uplink-moor", "uplink-ref"].into();
        let left = links(&self.node.name)?;
        let extra: Vec<_> = left
            .iter()
            .filter(|l| !expected.contains(l.as_str()))
            .collect();
        if !extra.is_empty() {
            problems.push(format!("links left in the node netns: {extra:?}"));
        }
        for pod in self.moor.pods.iter().chain(&self.reference.pods) {
            let l = links(&pod.name)?;
            if l.iter().any(|n| n != "lo") {
                problems.push(format!("links left in pod netns {}: {l:?}", pod.name));
            }
        }
        let pool: Value = serde_json::from_str(&self.ctl(&["-o", "json", "pool", "show", POOL])?)
            .map_err(|e| format!("ipamctl -o json pool show: {e}"))?;
        let (in_use, bound) = (&pool["totals"]["in_use"], &pool["totals"]["bound"]);
        if in_use != &json!(0) || bound != &json!(0) {
            problems.push(format!(
                "moor pool {POOL} after the run: in_use {in_use}, bound {bound}"
            ));
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
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "not clean after the run:\n  {}",
                problems.join("\n  ")
            ))
        }
    }
}

// ---------------------------------------------------------------- report

struct Report {
    opts: Opts,
    multi: [Samples; 2],
    single: [Samples; 2],
    version: [Vec<Duration>; 2],
    floor: Vec<Duration>,
    total: Duration,
    /// 1-minute load average before and after the timed part.
    load: (String, String),
}

impl Report {
    fn print(&mut self) {
        for s in self.multi.iter_mut().chain(self.single.iter_mut()) {
            s.sort();
        }
        for v in self.version.iter_mut() {
            v.sort();
        }
        self.floor.sort();
        let o = &self.opts;
        let (m, r) = (&self.multi, &self.single);
        println!();
        println!(
            "moor (moor + ipamd) vs ref (Debian bridge + host-local {}), interleaved in {} rounds, {:.1} s",
            ref_version(),
            o.rounds,
            self.total.as_secs_f64()
        );
        println!(
            "machine: {} CPUs, kernel {}; each plugin: {} workers x {} cycles, then 1 worker x {} cycles",
            cpus(),
            kernel(),
            o.workers,
            o.cycles,
            o.single
        );
        println!(
            "load average (1 min): {} before the timed part, {} after (the bench adds to it); source {}",
            self.load.0,
            self.load.1,
            commit()
        );
        println!("{:<28}{:>12}{:>12}{:>12}", "", "moor", "ref", "moor/ref");
        let lat = |label: &str, a: &[Duration], b: &[Duration], p: f64| {
            let (x, y) = (ms(pct(a, p)), ms(pct(b, p)));
            println!("{label:<28}{:>9.2} ms{:>9.2} ms{:>12.2}", x, y, x / y);
        };
        for (title, s) in [
            (format!("{} workers", o.workers), m),
            ("1 worker".to_string(), r),
        ] {
            println!("-- {title}");
            for (name, p) in PERCENTILES {
                lat(&format!("  ADD {name}"), &s[0].add, &s[1].add, p);
            }
            for (name, p) in PERCENTILES {
                lat(&format!("  DEL {name}"), &s[0].del, &s[1].del, p);
            }
            let (x, y) = (s[0].rate(), s[1].rate());
            println!(
                "{:<28}{:>12.1}{:>12.1}{:>12.2}",
                "  ADD+DEL cycles/s",
                x,
                y,
                x / y
            );
            let spread = |s: &Samples| {
                let lo = s.per_batch.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = s.per_batch.iter().copied().fold(0.0, f64::max);
                format!("{lo:.0}-{hi:.0}")
            };
            println!(
                "{:<28}{:>12}{:>12}",
                "  cycles/s range per round",
                spread(&s[0]),
                spread(&s[1])
            );
        }
        println!("-- process start");
        lat("  VERSION p50", &self.version[0], &self.version[1], 50.0);
        println!(
            "{:<28}{:>9.2} ms   (/bin/true spawned the same way: fork, setns, mount ns, /sys)",
            "  spawn floor p50",
            ms(pct(&self.floor, 50.0))
        );
        println!("moor/ref < 1 on latencies and > 1 on cycles/s means moor is faster.");
        println!();
        let j = json!({
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
            "spawn_floor_p50_ms": round3(ms(pct(&self.floor, 50.0))),
            "moor": {
                "multi": m[0].to_json(),
                "single": r[0].to_json(),
                "version_p50_ms": round3(ms(pct(&self.version[0], 50.0))),
            },
            "ref": {
                "multi": m[1].to_json(),
                "single": r[1].to_json(),
                "version_p50_ms": round3(ms(pct(&self.version[1], 50.0))),
            },
            "ratio_moor_over_ref": {
                "add_p50_multi": round3(ms(pct(&m[0].add, 50.0)) / ms(pct(&m[1].add, 50.0))),
                "del_p50_multi": round3(ms(pct(&m[0].del, 50.0)) / ms(pct(&m[1].del, 50.0))),
                "cycles_per_s_multi": round3(m[0].rate() / m[1].rate()),
                "add_p50_single": round3(ms(pct(&r[0].add, 50.0)) / ms(pct(&r[1].add, 50.0))),
                "del_p50_single": round3(ms(pct(&r[0].del, 50.0)) / ms(pct(&r[1].del, 50.0))),
                "cycles_per_s_single": round3(r[0].rate() / r[1].rate()),
                "version_p50": round3(ms(pct(&self.version[0], 50.0)) / ms(pct(&self.version[1], 50.0))),
            },
        });
        println!("{j}");
    }
}

fn ref_version() -> String {
    run(Command::new("dpkg-query").args(["-W", "-f=${Version}", "containernetworking-plugins"]))
        .unwrap_or_else(|_| "?".into())
}

// ---------------------------------------------------------------- main

fn bench(opts: &Opts, bed: &mut Testbed) -> Res<Report> {
    let order = [Which::Moor, Which::Ref];
    let idx = |w: Which| usize::from(w == Which::Ref);
    eprintln!("bench: warm-up (one pod of each pings its gateway)");
    for w in order {
        bed.warm_up(w, opts.workers)?;
    }
    let load_before = loadavg();
    let t0 = Instant::now();
    let mut multi = [Samples::default(), Samples::default()];
    let mut single = [Samples::default(), Samples::default()];
    for round in 0..opts.rounds {
        let mut this = order;
        if round % 2 == 1 {
            this.reverse();
        }
        let (c, n) = (
            share(opts.cycles, opts.rounds, round),
            share(opts.single, opts.rounds, round),
        );
        for w in this {
            let s = batch(bed.plugin(w), opts.workers, c)?;
            eprintln!(
                "bench: round {}/{} {:<4} {} workers x {c}: {:.1} cycles/s",
                round + 1,
                opts.rounds,
                w.key(),
                opts.workers,
                s.cycles as f64 / s.wall.as_secs_f64()
            );
            multi[idx(w)].absorb(s);
        }
        this.reverse();
        for w in this {
            let s = batch(bed.plugin(w), 1, n)?;
            single[idx(w)].absorb(s);
        }
    }
    let total = t0.elapsed();

    eprintln!("bench: VERSION x {} per binary", opts.version_runs);
    let mut version = [Vec::new(), Vec::new()];
    let mut floor = Vec::new();
    let truth = Path::new("/bin/true");
    for i in 0..opts.version_runs {
        check_interrupted()?;
        let mut this = order;
        if i % 2 == 1 {
            this.reverse();
        }
        for w in this {
            version[idx(w)].push(bed.plugin(w).version()?);
        }
        let (took, out) = spawn_in_node(bed.moor.node_fd, truth, &[("PATH", PATH_ENV)], b"")?;
        if !out.status.success() {
            return Err(describe_failure("/bin/true in the node netns", &out));
        }
        floor.push(took);
    }

    bed.verify_clean()?;
    Ok(Report {
        opts: opts.clone(),
        multi,
        single,
        version,
        floor,
        total,
        load: (load_before, loadavg()),
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
    let mut bed = match Testbed::new(&bins, opts.workers) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("cni_add_del: setup failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    match bench(&opts, &mut bed) {
        Ok(mut report) => {
            drop(bed);
            report.print();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cni_add_del: {e}");
            let tail = bed.log_tail();
            if !tail.is_empty() {
                eprintln!(
                    "ipamd log ({}):\n{tail}",
                    bed.tmp.join("ipamd.log").display()
                );
            }
            ExitCode::FAILURE
        }
    }
}
