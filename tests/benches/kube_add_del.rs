//! Benchmark: what the Kubernetes API costs ipamd. CNI ADD+DEL through the
//! real `moor` binary against two ipamds in the same run, one started
//! without the API and one with `--kubeconfig` at testkit's fake API server
//! holding a cluster (default 10,000 pods on 100 nodes, 110 of them on this
//! node, 100 namespaces); their latencies side by side, the ratio API/no
//! API, and each ipamd's memory.
//!
//! Run it with `sudo ./scripts/bench-kube [OPTIONS]` (it builds the release
//! binaries first); `--help` lists the options. What it does:
//!
//! - Topology: a ToR network namespace holding two gateways, a node network
//!   namespace with two Linux bridges (MACs pinned), each with a veth uplink
//!   to the ToR: `br-plain` for the ipamd without the API, `br-api` for the
//!   one with it. Both ipamds run in the node namespace (`ip netns exec`),
//!   each with its own socket and redb store, the same flags but
//!   `--kubeconfig`, and an environment of PATH only.
//! - The fake API listens on 127.0.0.1 inside the node namespace (where
//!   ipamd runs, as a hostNetwork pod reaches its API server). It is seeded
//!   before ipamd starts: namespaces, nodes, and pods shaped as the
//!   controllers make them (4 in 5 Deployment pods, 1 in 5 StatefulSet
//!   pods), spread evenly over namespaces and nodes. ipamd lists and watches
//!   its node's pods, all namespaces and its node (metadata only); the
//!   bench waits for those 3 watches before measuring memory.
//! - Pods: one network namespace per worker and side, created before any
//!   timing and reused. Each cycle is a new Deployment pod
//!   `bench/bench-7d9f8c6b5-xxxxx` (owner ReplicaSet `bench-7d9f8c6b5`,
//!   `pod-template-hash`), so both ipamds place it in pool `bench` (with the
//!   API from the pod's owner, without it from its name) and give the IP
//!   back on DEL. For the API side, a batch's pods are created in the fake
//!   API before the batch (then `--settle-ms`, so the watch delivers them)
//!   and deleted after it, all untimed: the ADDs (which pass `K8S_POD_UID`)
//!   find them in ipamd's cache. The fake's request log must show no GET
//!   of a pod during the timed part; the run reports every request ipamd
//!   made besides its watches.
//! - The plugin is spawned as the CNI bench spawns it (fork, setns into the
//!   node netns, private mount namespace, fresh /sys, exec); the time of one
//!   invocation is spawn to exit.
//! - Batches run interleaved, in rounds, with the order flipped every round;
//!   the ratio API/no API of each round's p50 is reported as the median
//!   over rounds, next to the ratio of the pooled percentiles.
//! - Memory: VmRSS and VmHWM (/proc/PID/status) of both ipamds once the
//!   caches synced (before any ADD), and after the run.
//! - Every invocation must exit 0; no IP may be live twice; afterwards no
//!   link is left in the node or pod namespaces and both pools show nothing
//!   in use or bound.
//!
//! Everything it creates (namespaces, ipamds, the fake API, temp dir) is
//! removed by Drop guards, also on error, panic or Ctrl-C.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{ExitCode, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moor_e2e::bench::{
    add_del, add_uplink, check_rounds, commit, container_id, cpus, ipamctl, kernel, leftover_links,
    loadavg, median, memory_kib, mib, ms, no_problems, pct, pool_busy, release_bins, round3, share,
    start, suffix, temp_dir, Args, CniPlugin, CniPod, Cycle, Live, Res, Samples, Uplink,
};
use moor_e2e::bins::Bins;
use moor_testkit::kubeapi::{objects, Resource};
use moor_testkit::netns::{spawn_in_netns, wait_ping};
use moor_testkit::{FakeApi, Ipamd, IpamdCommand, Netns, TempDir};
use serde_json::{json, Value};

const USAGE: &str = "\
kube_add_del: times CNI ADD+DEL of the real moor binary against an ipamd
without the Kubernetes API and one with --kubeconfig at a fake API server
holding a cluster, interleaved in one run; prints the ratio API/no API and
both ipamds' memory.

Usage: sudo ./scripts/bench-kube [OPTIONS]
   or: cargo bench -p moor-e2e --bench kube_add_del -- [OPTIONS]   (as root,
       after cargo build --release --bins)

Options:
  --workers W        concurrent workers (pods) per side            [default: 8]
  --cycles C         ADD+DEL cycles per worker per side            [default: 25]
  --single N         cycles with 1 worker per side                 [default: 200]
  --rounds R         interleaved rounds C and N are split over     [default: 5]
  --cluster-pods P   pods in the fake API                          [default: 10000]
  --node-pods K      of which on this node                         [default: 110]
  --nodes M          nodes in the fake API (this one included)     [default: 100]
  --namespaces S     namespaces the pods spread over               [default: 100]
  --settle-ms T      wait after creating a batch's pods, untimed   [default: 200]
  -h, --help         this text
";

/// This node, as ipamd's `--node` and the Node object name it.
const NODE: &str = "bench-node";
const TOR: &str = "bench-rack";
const TOR_LABEL: &str = "moor.io/tor";
const POD_NAMESPACE: &str = "bench";
/// The bench pods' Deployment and its ReplicaSet's pod-template-hash.
const DEPLOYMENT: &str = "bench";
const TEMPLATE_HASH: &str = "7d9f8c6b5";
const POOL: &str = "bench";
/// How long a gateway may take to answer a first ping.
const PING_WITHIN: Duration = Duration::from_secs(10);
/// How long ipamd (with its first lists) and its watches may take.
const START_WITHIN: Duration = Duration::from_secs(20);
/// How much of an ipamd's log an error shows.
const LOG_LINES: usize = 30;

// ---------------------------------------------------------------- options

#[derive(Debug, Clone)]
struct Opts {
    workers: usize,
    cycles: usize,
    single: usize,
    rounds: usize,
    cluster_pods: usize,
    node_pods: usize,
    nodes: usize,
    namespaces: usize,
    settle_ms: usize,
}

fn parse_opts() -> Res<Option<Opts>> {
    let mut o = Opts {
        workers: 8,
        cycles: 25,
        single: 200,
        rounds: 5,
        cluster_pods: 10_000,
        node_pods: 110,
        nodes: 100,
        namespaces: 100,
        settle_ms: 200,
    };
    let mut args = Args::new(USAGE);
    while let Some(a) = args.next_arg() {
        let slot = match a.key.as_str() {
            "-h" | "--help" => return Ok(None),
            "--workers" => &mut o.workers,
            "--cycles" => &mut o.cycles,
            "--single" => &mut o.single,
            "--rounds" => &mut o.rounds,
            "--cluster-pods" => &mut o.cluster_pods,
            "--node-pods" => &mut o.node_pods,
            "--nodes" => &mut o.nodes,
            "--namespaces" => &mut o.namespaces,
            "--settle-ms" => &mut o.settle_ms,
            _ => return Err(args.unknown(&a)),
        };
        *slot = args.number(a)?;
    }
    check_rounds(o.workers, o.cycles, o.single, o.rounds)?;
    if o.node_pods > o.cluster_pods {
        return Err(format!(
            "--node-pods {} is more than --cluster-pods {}",
            o.node_pods, o.cluster_pods
        ));
    }
    if o.nodes < 2 || o.namespaces == 0 {
        return Err("--nodes must be at least 2 and --namespaces at least 1".into());
    }
    Ok(Some(o))
}

// ---------------------------------------------------------------- sides

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// ipamd without the API: the pod's workload from its name.
    Plain,
    /// ipamd with `--kubeconfig`: the pod's workload from its cached metadata.
    Api,
}

const SIDES: [Side; 2] = [Side::Plain, Side::Api];

impl Side {
    fn key(self) -> &'static str {
        match self {
            Side::Plain => "no API",
            Side::Api => "API",
        }
    }

    fn idx(self) -> usize {
        usize::from(self == Side::Api)
    }
}

/// One side: the moor binary against one ipamd.
struct Moor {
    side: Side,
    cni: CniPlugin,
    gateway: &'static str,
    socket: PathBuf,
    /// Pod network namespaces, one per worker.
    pods: Vec<Netns>,
    seq: AtomicU64,
}

/// The pod name and UID of cycle `seq` (the same on both sides).
fn pod_identity(seq: u64) -> (String, String) {
    (
        format!("{DEPLOYMENT}-{TEMPLATE_HASH}-{}", suffix(seq)),
        format!("00000000-0000-4000-8000-{seq:012x}"),
    )
}

impl Moor {
    fn invoke(&self, command: &str, pod: &Netns, seq: u64) -> Res<(Duration, Output)> {
        let cid = container_id(0xc + self.side.idx(), seq);
        let (pod_name, uid) = pod_identity(seq);
        let pod = CniPod {
            namespace: POD_NAMESPACE,
            name: &pod_name,
            uid: &uid,
            cid: &cid,
            netns: pod,
        };
        self.cni.invoke(&self.who(), command, &pod)
    }

    /// The plugin in an error: `moor (API)`.
    fn who(&self) -> String {
        format!("moor ({})", self.side.key())
    }

    /// One ADD then DEL in `pod`; the ADD's IP is checked against `live`.
    fn cycle(&self, pod: &Netns, live: &Live) -> Res<Cycle> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        add_del(&self.who(), self.side.key(), live, |command| {
            self.invoke(command, pod, seq)
        })
    }
}

// ---------------------------------------------------------------- the cluster

/// What the fake API holds besides the bench's own pods.
#[derive(Clone, Copy)]
struct Cluster {
    pods: usize,
    node_pods: usize,
    nodes: usize,
    namespaces: usize,
}

/// A stable pod-template-hash of `seed`: 10 characters of the name alphabet.
fn template_hash(seed: u64) -> String {
    format!(
        "{}{}",
        suffix(seed.wrapping_mul(7919)),
        suffix(seed.wrapping_add(104_729))
    )
}

/// Seeds `api` with `o.namespaces` namespaces (`bench` among them),
/// `o.nodes` nodes (this one among them, each with its ToR label) and
/// `o.cluster_pods` pods: pod i is in namespace i mod S; one in five is a
/// StatefulSet pod, the others Deployment pods; `o.node_pods` of them, spread
/// evenly over the index, on this node, the others round-robin on the
/// other nodes.
fn seed(api: &FakeApi, o: &Opts) -> Cluster {
    let mut namespaces = vec![POD_NAMESPACE.to_string()];
    namespaces.extend((1..o.namespaces).map(|i| format!("team-{i:03}")));
    for ns in &namespaces {
        api.create(objects::namespace(ns));
    }
    let mut nodes = vec![NODE.to_string()];
    nodes.extend((1..o.nodes).map(|i| format!("node-{i:03}")));
    for (i, n) in nodes.iter().enumerate() {
        let tor = if i == 0 {
            TOR.to_string()
        } else {
            format!("rack-{}", i / 20)
        };
        api.create(objects::node(n).label(TOR_LABEL, &tor));
    }
    let (total, here) = (o.cluster_pods, o.node_pods);
    let mut elsewhere = 0;
    for i in 0..total {
        let ns = &namespaces[i % namespaces.len()];
        let j = i / namespaces.len();
        // Exactly `here` indices pass, evenly spaced.
        let node = if (i * here) % total < here {
            NODE
        } else {
            elsewhere += 1;
            nodes[1 + elsewhere % (nodes.len() - 1)].as_str()
        };
        let pod = if j % 5 == 0 {
            let set = format!("db{}", j / 50);
            objects::statefulset_pod(ns, &set, ((j / 5) % 10) as u32).label("app", &set)
        } else {
            let deployment = format!("web{}", j / 40);
            let hash = template_hash((i % namespaces.len() * 1000 + j / 40) as u64);
            objects::deployment_pod(ns, &deployment, &hash)
                .name(&format!("{deployment}-{hash}-{}", suffix(j as u64)))
                .label("app", &deployment)
        };
        api.create(pod.node(node).phase("Running"));
    }
    Cluster {
        pods: total,
        node_pods: objects_on_node(api),
        nodes: api.objects(Resource::Nodes).len(),
        namespaces: api.objects(Resource::Namespaces).len(),
    }
}

fn objects_on_node(api: &FakeApi) -> usize {
    api.objects(Resource::Pods)
        .iter()
        .filter(|p| p["spec"]["nodeName"] == NODE)
        .count()
}

/// The bench pod of cycle `seq`, as the ReplicaSet controller and the
/// scheduler leave it.
fn bench_pod(seq: u64) -> Value {
    let (name, uid) = pod_identity(seq);
    objects::deployment_pod(POD_NAMESPACE, DEPLOYMENT, TEMPLATE_HASH)
        .name(&name)
        .uid(&uid)
        .label("app", DEPLOYMENT)
        .node(NODE)
        .build()
}

// ---------------------------------------------------------------- batches

/// `workers` threads, each doing `cycles` ADD+DEL cycles in its own pod
/// netns, started together; wall time from start to the last one's end.
/// For the API side the batch's pods exist in the fake API (and, after the
/// settle, in ipamd's cache) before the start, and are deleted after.
fn batch(bed: &Testbed, side: Side, workers: usize, cycles: usize) -> Res<Samples> {
    let p = &bed.sides[side.idx()];
    let seqs = {
        let first = p.seq.load(Ordering::SeqCst);
        first..first + (workers * cycles) as u64
    };
    if side == Side::Api {
        for s in seqs.clone() {
            bed.api.create(bench_pod(s));
        }
        std::thread::sleep(bed.settle);
    }
    let s = moor_e2e::bench::batch(side.key(), &p.pods, workers, cycles, |pod, live| {
        p.cycle(pod, live)
    })?;
    if p.seq.load(Ordering::SeqCst) != seqs.end {
        return Err(format!("{}: the batch used other pods", side.key()));
    }
    if side == Side::Api {
        for s in seqs {
            let (name, _) = pod_identity(s);
            bed.api.delete(Resource::Pods, POD_NAMESPACE, &name);
        }
    }
    Ok(s)
}

// ---------------------------------------------------------------- testbed

/// Memory of both ipamds at one moment, KiB: [side] = (VmRSS, VmHWM).
type Memory = [(u64, u64); 2];

/// Field order is drop order: the ipamds first, then the fake API, pods,
/// node, ToR, temp dir.
struct Testbed {
    ipamds: [Ipamd; 2],
    api: FakeApi,
    sides: [Moor; 2],
    _node_fd: File,
    node: Netns,
    _tor: Netns,
    tmp: TempDir,
    ipamctl: PathBuf,
    cluster: Cluster,
    settle: Duration,
}

/// Per side: (bridge, pinned MAC, node uplink, ToR side, subnet prefix).
const TOPOLOGY: [(&str, &str, &str, &str, &str); 2] = [
    (
        "br-plain",
        "02:00:00:b1:01:01",
        "uplink-plain",
        "tor-plain",
        "10.211",
    ),
    (
        "br-api",
        "02:00:00:b1:02:01",
        "uplink-api",
        "tor-api",
        "10.213",
    ),
];
const GATEWAYS: [&str; 2] = ["10.211.0.1", "10.213.0.1"];

impl Testbed {
    fn new(bins: &Bins, o: &Opts) -> Res<Self> {
        // This run's sockets, stores, logs and kubeconfig.
        let tmp = temp_dir("moor-bench-kube")?;
        let id = format!("mkbench{}", std::process::id());
        let tor = Netns::add(format!("{id}-tor"))?;
        let node = Netns::add(format!("{id}-node"))?;
        for ((bridge, mac, node_end, tor_end, net), gateway) in TOPOLOGY.into_iter().zip(GATEWAYS) {
            let uplink = Uplink {
                bridge,
                mac,
                node_end,
                tor_end,
                gateway,
                node_ip: &format!("{net}.0.2"),
            };
            add_uplink(&tor, &node, &uplink)?;
        }
        // A new bridge raises its carrier about a second after its first port
        // joins: wait until both gateways answer.
        for gw in GATEWAYS {
            wait_ping(&node.name, gw, PING_WITHIN)?;
        }
        let node_fd =
            File::open(node.path()).map_err(|e| format!("open {}: {e}", node.path().display()))?;

        // The fake API on 127.0.0.1 of the node netns: it binds on the
        // thread that starts it.
        let api = spawn_in_netns(node.path(), FakeApi::start)
            .join()
            .map_err(|_| "starting the fake API in the node netns panicked")?;
        let seeded = Instant::now();
        let cluster = seed(&api, o);
        eprintln!(
            "bench: fake API seeded with {} pods ({} on {NODE}), {} nodes, {} namespaces in {:.1} s",
            cluster.pods,
            cluster.node_pods,
            cluster.nodes,
            cluster.namespaces,
            seeded.elapsed().as_secs_f64()
        );
        let kubeconfig = api.write_kubeconfig(&tmp);

        // Both ipamds: the same flags in the node netns, but --kubeconfig;
        // only PATH from this environment (no stray KUBECONFIG).
        let mut ipamds = Vec::new();
        let mut sockets = Vec::new();
        for side in SIDES {
            let tag = if side == Side::Api { "api" } else { "plain" };
            let socket = tmp.join(format!("ipamd-{tag}.sock"));
            let log = tmp.join(format!("ipamd-{tag}.log"));
            let mut cmd = IpamdCommand::in_netns(&node.name, &bins.ipamd, &socket, &log)
                .env_only_path()
                .arg("--store")
                .arg(format!(
                    "redb:{}",
                    tmp.join(format!("{tag}.redb")).display()
                ))
                .args([
                    "--node",
                    NODE,
                    "--tor",
                    TOR,
                    "--bridge",
                    TOPOLOGY[side.idx()].0,
                ])
                .args(["--log", "warn"])
                .within(START_WITHIN);
            if side == Side::Api {
                cmd = cmd.arg("--kubeconfig").arg(&kubeconfig);
            }
            ipamds.push(cmd.start()?);
            sockets.push(socket);
        }
        let ipamds: [Ipamd; 2] = ipamds.try_into().map_err(|_| "two ipamds")?;
        // Pods, namespaces, this node.
        if !api.wait_open_watches(3, START_WITHIN) {
            return Err(format!(
                "ipamd (API) opened {} of its 3 watches within {START_WITHIN:?}; its log:\n{}",
                api.open_watches(),
                ipamds[1].log_tail(LOG_LINES)
            ));
        }

        let config = |socket: &PathBuf| {
            json!({"cniVersion": "1.0.0", "name": "moor", "type": "moor", "socket": socket})
                .to_string()
        };
        let side = |s: Side| Moor {
            side: s,
            cni: CniPlugin {
                bin: bins.moor.clone(),
                cni_path: bins.moor.parent().unwrap().display().to_string(),
                config: config(&sockets[s.idx()]),
                node_fd: node_fd.as_raw_fd(),
                env: Vec::new(),
            },
            gateway: GATEWAYS[s.idx()],
            socket: sockets[s.idx()].clone(),
            pods: Vec::new(),
            seq: AtomicU64::new(0),
        };
        let mut bed = Self {
            sides: [side(Side::Plain), side(Side::Api)],
            ipamds,
            api,
            _node_fd: node_fd,
            node,
            _tor: tor,
            tmp,
            ipamctl: bins.ipamctl.clone(),
            cluster,
            settle: Duration::from_millis(o.settle_ms as u64),
        };

        // Each store: the ToR and a pool big enough for every worker's pod.
        let size = (2 * o.workers + 2).to_string();
        for s in SIDES {
            let net = TOPOLOGY[s.idx()].4;
            bed.ctl(
                s,
                &[
                    "tor",
                    "add",
                    TOR,
                    "--subnet",
                    &format!("{net}.0.0/16"),
                    "--gateway",
                    GATEWAYS[s.idx()],
                    "--range",
                    &format!("{net}.1.1-{net}.4.254"),
                ],
            )?;
            bed.ctl(
                s,
                &[
                    "pool",
                    "create",
                    POOL,
                    "--namespace",
                    POD_NAMESPACE,
                    "--app",
                    DEPLOYMENT,
                    "--size",
                    &size,
                ],
            )?;
        }
        for w in 0..o.workers {
            for s in SIDES {
                let tag = if s == Side::Api { "a" } else { "p" };
                let pod = Netns::add(format!("{id}-{tag}{w}"))?;
                bed.sides[s.idx()].pods.push(pod);
            }
        }
        Ok(bed)
    }

    fn ctl(&self, side: Side, args: &[&str]) -> Res<String> {
        ipamctl(&self.ipamctl, &self.sides[side.idx()].socket, args)
    }

    fn memory(&self) -> Res<Memory> {
        let read = |s: Side| {
            let pid = self.ipamds[s.idx()].pid();
            memory_kib(pid).ok_or_else(|| format!("cannot read /proc/{pid}/status"))
        };
        Ok([read(Side::Plain)?, read(Side::Api)?])
    }

    /// Requests ipamd made since the log was last cleared, but watches, as
    /// "verb resource" -> count.
    fn api_requests(&self) -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for r in self.api.requests() {
            if r.verb != "watch" {
                *seen
                    .entry(format!("{} {}", r.verb, r.resource))
                    .or_insert(0) += 1;
            }
        }
        seen
    }

    /// What ipamd (API) listed and watched so far, with the field selectors,
    /// e.g. "list pods [spec.nodeName=bench-node] x1".
    fn reads(&self) -> Vec<String> {
        let mut seen = BTreeMap::new();
        for r in self.api.requests() {
            if r.verb != "list" && r.verb != "watch" {
                continue;
            }
            let selector = r
                .query
                .split('&')
                .find_map(|kv| kv.strip_prefix("fieldSelector="))
                .map(|s| format!(" [{}]", s.replace("%3D", "=").replace("%2C", ",")))
                .unwrap_or_default();
            *seen
                .entry(format!("{} {}{selector}", r.verb, r.resource))
                .or_insert(0) += 1;
        }
        seen.into_iter().map(|(k, n)| format!("{k} x{n}")).collect()
    }

    /// One untimed ADD, a ping from the pod to its gateway (both setups must
    /// really work), DEL; then one untimed cycle per worker.
    fn warm_up(&self, s: Side, workers: usize) -> Res<()> {
        let p = &self.sides[s.idx()];
        let pod = &p.pods[0];
        let seq = p.seq.fetch_add(1, Ordering::SeqCst);
        if s == Side::Api {
            self.api.create(bench_pod(seq));
            std::thread::sleep(self.settle);
        }
        p.invoke("ADD", pod, seq)?;
        let pinged = wait_ping(&pod.name, p.gateway, PING_WITHIN);
        p.invoke("DEL", pod, seq)?;
        if s == Side::Api {
            self.api
                .delete(Resource::Pods, POD_NAMESPACE, &pod_identity(seq).0);
        }
        pinged.map_err(|e| format!("{} pod: {e}", s.key()))?;
        batch(self, s, workers, 1)?;
        Ok(())
    }

    fn log_tails(&self) -> String {
        SIDES
            .iter()
            .map(|s| {
                format!(
                    "ipamd ({}) log:\n{}",
                    s.key(),
                    self.ipamds[s.idx()].log_tail(LOG_LINES)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// After the run: both ipamds alive, nothing left over anywhere.
    fn verify_clean(&mut self) -> Res<()> {
        let mut problems = Vec::new();
        for s in SIDES {
            let d = &mut self.ipamds[s.idx()];
            if !d.alive() {
                problems.push(format!(
                    "ipamd ({}) died; its log:\n{}",
                    s.key(),
                    d.log_tail(LOG_LINES)
                ));
            }
        }
        let mut expected: HashSet<&str> = ["lo"].into();
        for (br, _, up, _, _) in TOPOLOGY {
            expected.extend([br, up]);
        }
        let pods = self.sides.iter().flat_map(|s| &s.pods);
        leftover_links(&self.node.name, &expected, pods, &mut problems)?;
        for s in SIDES {
            if let Some(busy) = pool_busy(&self.ctl(s, &["-o", "json", "pool", "show", POOL])?)? {
                problems.push(format!(
                    "pool {POOL} of ipamd ({}) after the run: {busy}",
                    s.key()
                ));
            }
        }
        let on_node = objects_on_node(&self.api);
        if on_node != self.cluster.node_pods {
            problems.push(format!(
                "the fake API holds {on_node} pods on {NODE} after the run, {} before",
                self.cluster.node_pods
            ));
        }
        no_problems(problems, "not clean after the run")
    }
}

// ---------------------------------------------------------------- report

/// One shape's samples: pooled per side, and each round's (ADD p50, DEL
/// p50, cycles/s) per side.
#[derive(Default)]
struct Shape {
    pooled: [Samples; 2],
    rounds: Vec<[(f64, f64, f64); 2]>,
}

impl Shape {
    fn absorb(&mut self, round: usize, side: Side, s: Samples) {
        if self.rounds.len() <= round {
            self.rounds.push([(0.0, 0.0, 0.0); 2]);
        }
        self.rounds[round][side.idx()] = (
            ms(median(&s.add)),
            ms(median(&s.del)),
            s.cycles as f64 / s.wall.as_secs_f64().max(1e-9),
        );
        self.pooled[side.idx()].absorb(s);
    }

    /// The median over rounds of API/no API of what `f` picks.
    fn round_ratio(&self, f: impl Fn(&(f64, f64, f64)) -> f64) -> f64 {
        let mut r: Vec<f64> = self.rounds.iter().map(|x| f(&x[1]) / f(&x[0])).collect();
        r.sort_by(f64::total_cmp);
        match r.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => r[n / 2],
            n => (r[n / 2 - 1] + r[n / 2]) / 2.0,
        }
    }

    fn to_json(&self) -> Value {
        let [plain, api] = &self.pooled;
        json!({
            "no_api": plain.to_json(),
            "api": api.to_json(),
            "ratio_api_over_no_api": {
                "add_p50_round_median": round3(self.round_ratio(|x| x.0)),
                "del_p50_round_median": round3(self.round_ratio(|x| x.1)),
                "cycles_per_s_round_median": round3(self.round_ratio(|x| x.2)),
                "add_p50": round3(ms(pct(&api.add, 50.0)) / ms(pct(&plain.add, 50.0))),
                "add_p99": round3(ms(pct(&api.add, 99.0)) / ms(pct(&plain.add, 99.0))),
                "del_p50": round3(ms(pct(&api.del, 50.0)) / ms(pct(&plain.del, 50.0))),
                "del_p99": round3(ms(pct(&api.del, 99.0)) / ms(pct(&plain.del, 99.0))),
            },
        })
    }
}

struct Report {
    opts: Opts,
    multi: Shape,
    single: Shape,
    cluster: Cluster,
    synced: Memory,
    after: Memory,
    requests: BTreeMap<String, usize>,
    /// What ipamd (API) listed and watched before the warm-up.
    reads: Vec<String>,
    total: Duration,
    load: (String, String),
}

impl Report {
    fn print(&mut self) {
        for s in [&mut self.multi, &mut self.single] {
            s.pooled.iter_mut().for_each(Samples::sort);
        }
        let o = &self.opts;
        let c = &self.cluster;
        println!();
        println!(
            "moor + ipamd with the Kubernetes API (API) vs without (no API), interleaved in {} rounds, {:.1} s",
            o.rounds,
            self.total.as_secs_f64()
        );
        println!(
            "machine: {} CPUs, kernel {}; each side: {} workers x {} cycles, then 1 worker x {} cycles",
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
        println!(
            "fake API: {} pods ({} on this node), {} nodes, {} namespaces; ipamd (API) watches its node's pods, namespaces, its node",
            c.pods, c.node_pods, c.nodes, c.namespaces
        );
        println!("ipamd (API) read at start: {}", self.reads.join(", "));
        println!(
            "{:<24}{:>12}{:>12}{:>12}{:>14}",
            "", "no API", "API", "API/no API", "round median"
        );
        for (title, s) in [
            (format!("{} workers", o.workers), &self.multi),
            ("1 worker".to_string(), &self.single),
        ] {
            println!("-- {title}");
            let [plain, api] = &s.pooled;
            for (op, a, b, pick) in [
                ("ADD", &plain.add, &api.add, 0),
                ("DEL", &plain.del, &api.del, 1),
            ] {
                for (name, p) in [("p50", 50.0), ("p99", 99.0)] {
                    let (x, y) = (ms(pct(a, p)), ms(pct(b, p)));
                    let median = if p == 50.0 {
                        format!(
                            "{:.2}",
                            s.round_ratio(|r| if pick == 0 { r.0 } else { r.1 })
                        )
                    } else {
                        "-".into()
                    };
                    println!(
                        "{:<24}{x:>9.2} ms{y:>9.2} ms{:>12.2}{median:>14}",
                        format!("  {op} {name}"),
                        y / x
                    );
                }
            }
            let (x, y) = (plain.rate(), api.rate());
            println!(
                "{:<24}{x:>12.1}{y:>12.1}{:>12.2}{:>14.2}",
                "  ADD+DEL cycles/s",
                y / x,
                s.round_ratio(|r| r.2)
            );
        }
        println!(
            "{:<24}{:>12}{:>12}{:>12}",
            "-- ipamd memory", "no API", "API", "API-no API"
        );
        for (label, m, f) in [
            ("  VmRSS, caches synced", &self.synced, 0),
            ("  VmHWM, caches synced", &self.synced, 1),
            ("  VmRSS, after the run", &self.after, 0),
            ("  VmHWM, after the run", &self.after, 1),
        ] {
            let pick = |x: &(u64, u64)| if f == 0 { x.0 } else { x.1 };
            let (x, y) = (pick(&m[0]), pick(&m[1]));
            println!(
                "{label:<24}{:>8.1} MiB{:>8.1} MiB{:>+8.1} MiB",
                mib(x),
                mib(y),
                mib(y) - mib(x)
            );
        }
        let requests = if self.requests.is_empty() {
            "none".to_string()
        } else {
            self.requests
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!("API requests of ipamd during the timed part, besides its watches: {requests}");
        println!("API/no API > 1 on latencies and < 1 on cycles/s means the API costs time.");
        println!();
        let mem = |m: &Memory| {
            json!({
                "no_api": {"vmrss_kib": m[0].0, "vmhwm_kib": m[0].1},
                "api": {"vmrss_kib": m[1].0, "vmhwm_kib": m[1].1},
            })
        };
        let j = json!({
            "bench": "kube_add_del",
            "cpus": cpus(),
            "kernel": kernel(),
            "loadavg_before": self.load.0,
            "loadavg_after": self.load.1,
            "commit": commit(),
            "workers": o.workers,
            "cycles_per_worker": o.cycles,
            "single_cycles": o.single,
            "rounds": o.rounds,
            "seconds": round3(self.total.as_secs_f64()),
            "cluster": {
                "pods": c.pods, "node_pods": c.node_pods,
                "nodes": c.nodes, "namespaces": c.namespaces,
            },
            "multi": self.multi.to_json(),
            "single": self.single.to_json(),
            "memory_synced": mem(&self.synced),
            "memory_after": mem(&self.after),
            "api_requests_timed": self.requests,
            "api_reads_at_start": self.reads,
        });
        println!("{j}");
    }
}

// ---------------------------------------------------------------- main

fn bench(opts: &Opts, bed: &mut Testbed) -> Res<Report> {
    // Both ipamds idle, the API one's caches filled (ipamd waits for its
    // first lists before it opens its socket; its 3 watches are open).
    std::thread::sleep(Duration::from_secs(1));
    let synced = bed.memory()?;
    let reads = bed.reads();
    eprintln!("bench: warm-up (one pod of each side pings its gateway)");
    bed.api.clear_requests();
    for s in SIDES {
        bed.warm_up(s, opts.workers)?;
    }
    let missed = bed.api_requests();
    if missed.keys().any(|k| k == "get pods") {
        return Err(format!(
            "ipamd (API) GET pods during the warm-up ({missed:?}): its cache did not hold \
             them yet; try a longer --settle-ms"
        ));
    }
    bed.api.clear_requests();
    let load_before = loadavg();
    let t0 = Instant::now();
    let mut multi = Shape::default();
    let mut single = Shape::default();
    for round in 0..opts.rounds {
        let mut this = SIDES;
        if round % 2 == 1 {
            this.reverse();
        }
        let (c, n) = (
            share(opts.cycles, opts.rounds, round),
            share(opts.single, opts.rounds, round),
        );
        for s in this {
            let b = batch(bed, s, opts.workers, c)?;
            eprintln!(
                "bench: round {}/{} {:<6} {} workers x {c}: {:.1} cycles/s",
                round + 1,
                opts.rounds,
                s.key(),
                opts.workers,
                b.cycles as f64 / b.wall.as_secs_f64()
            );
            multi.absorb(round, s, b);
        }
        this.reverse();
        for s in this {
            let b = batch(bed, s, 1, n)?;
            single.absorb(round, s, b);
        }
    }
    let total = t0.elapsed();
    let requests = bed.api_requests();
    let after = bed.memory()?;
    bed.verify_clean()?;
    Ok(Report {
        opts: opts.clone(),
        multi,
        single,
        cluster: bed.cluster,
        synced,
        after,
        requests,
        reads,
        total,
        load: (load_before, loadavg()),
    })
}

fn main() -> ExitCode {
    let (opts, bins) = match start(
        "kube_add_del",
        USAGE,
        parse_opts(),
        "it creates network namespaces, bridges and veths",
        "./scripts/bench-kube",
        || release_bins("./scripts/bench-kube"),
    ) {
        Ok(started) => started,
        Err(code) => return code,
    };
    eprintln!(
        "bench: moor {} against ipamd without and with the Kubernetes API; setting up",
        bins.moor.display()
    );
    moor_e2e::bench::run(
        "kube_add_del",
        Testbed::new(&bins, &opts),
        |bed| bench(&opts, bed),
        |mut report| report.print(),
        |bed| {
            eprintln!(
                "{}\n(logs in {})",
                bed.log_tails(),
                bed.tmp.path().display()
            );
        },
    )
}
