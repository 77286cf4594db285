//! The fault-injecting soak (issue 15): 3 nodes on a 3-member etcd, each
//! with the real ipamd, driven by pod workers that run the real `moor`
//! binary as a runtime does (ADD, DEL, CHECK of StatefulSet and Deployment
//! pods, moves of sticky pods between the nodes of one ToR), while a fault
//! injector kills ipamds, etcd members, the whole etcd cluster, (OVS
//! mode) a node's Open vSwitch and (physical mode) the API server and the
//! leading controller, and an independent checker scans every namespace
//! for an IP live in two places.
//!
//! - [`driver`]: the pod workers and the runtime's rules they follow.
//! - [`faults`]: the fault schedule and the injector.
//! - [`checker`]: the scan of every netns for an IP live twice.
//! - [`kube`]: the fake API server, pods as its objects, two controllers.
//! - [`settle`]: the end checks (every DEL succeeded, audit, no leak).
//! - [`figures`]: the counts a run prints.
//!
//! Every choice (op kinds, pods, nodes, fault kinds, delays) comes from the
//! seed, so a run is reproducible in its choices; the interleaving with
//! the daemons is not.

pub mod checker;
pub mod driver;
pub mod faults;
pub mod figures;
pub mod kube;
pub mod settle;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, Layout, FAST_SWEEP};
use crate::ovs_cluster::OvsCluster;
use crate::testbed::Families;
use crate::Pod;

pub use figures::Figures;

/// Which datapath the nodes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Linux bridges to the ToR, ipamd `--mode physical`, the node agents
    /// on the (fake) Kubernetes API, two controllers.
    Physical,
    /// Open vSwitch per node and per ToR, ipamd `--mode ovs`, dual-stack
    /// ToRs (pods get an IPv4 and an IPv6 address).
    Ovs,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Physical => "physical",
            Mode::Ovs => "ovs",
        })
    }
}

/// What one soak run does.
#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    /// CNI operations (ADD, DEL, CHECK, moves) to run, retries not counted.
    pub ops: u64,
    /// ipamd kills; the other fault kinds come in proportion (see
    /// [`faults::schedule`]).
    pub faults: u64,
    /// The run stops starting operations after this long, done or not.
    pub seconds: u64,
    pub seed: u64,
    /// Pod workers per node.
    pub workers_per_node: usize,
}

impl Config {
    /// Issue 15's full run: 10,000 ops, 100 ipamd kills, under 15 minutes.
    pub fn full(mode: Mode, seed: u64) -> Config {
        Config {
            mode,
            ops: 10_000,
            faults: 100,
            seconds: 840,
            seed,
            workers_per_node: 3,
        }
    }
}

/// splitmix64: small, seedable, enough to make the run's choices.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A child generator for stream `k` (a worker, the injector).
    pub fn fork(seed: u64, k: u64) -> Rng {
        let mut r = Rng(seed ^ k.wrapping_mul(0xa076_1d64_78bd_642f));
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// Uniform in `lo..=hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// The network of a soak: physical or OVS.
pub enum Net {
    Physical(Cluster),
    Ovs(OvsCluster),
}

/// What a soak runs on: the cluster, and in physical mode the Kubernetes
/// API with two controllers ([`kube`]). Dropped in this order: the
/// ipamds first, then the controllers and the API.
pub struct Bed {
    pub net: Net,
    pub kube: Option<kube::Kube>,
}

impl Bed {
    /// The layout of every soak: n1 and n2 under tor-a (sticky pods move
    /// between them), n3 under tor-b. Physical mode: the node agents read
    /// their pods from the fake API and two controllers run; OVS mode:
    /// ipamd reads workloads from pod names (podman, plain containerd) and
    /// the ToRs are dual stack.
    fn new(mode: Mode) -> Bed {
        let layout = Layout::standard();
        match mode {
            Mode::Physical => {
                let kube = kube::Kube::start();
                // The leak sweep short, so the end's settle is quick;
                // OvsCluster sets the same for its nodes.
                let mut args: Vec<String> = FAST_SWEEP.map(String::from).to_vec();
                args.push("--kubeconfig".into());
                args.push(kube.kubeconfig.display().to_string());
                let c = Cluster::new(Layout {
                    ipamd_args: args,
                    ..layout
                });
                kube.seed(&c, driver::STATEFULSET_APP, driver::DEPLOYMENT_APP);
                for i in 0..kube::CONTROLLERS.len() {
                    kube.start_controller(&c, i);
                }
                Bed {
                    net: Net::Physical(c),
                    kube: Some(kube),
                }
            }
            Mode::Ovs => Bed {
                net: Net::Ovs(OvsCluster::with_families(layout, Families::Dual)),
                kube: None,
            },
        }
    }

    pub fn cluster(&self) -> &Cluster {
        match &self.net {
            Net::Physical(c) => c,
            Net::Ovs(c) => c,
        }
    }

    pub fn mode(&self) -> Mode {
        match self.net {
            Net::Physical(_) => Mode::Physical,
            Net::Ovs(_) => Mode::Ovs,
        }
    }

    /// A pod's netns as a runtime makes it (OVS mode: IPv6 on, the pods
    /// are dual stack).
    pub fn pod(&self, name: &str) -> Pod {
        match &self.net {
            Net::Physical(c) => c.pod(name),
            Net::Ovs(c) => c.pod_with_ipv6(name),
        }
    }
}

/// Set by [`request_stop`]: every run starts no new operation and ends
/// as if out of time (final DELs, end checks, clean-up).
static STOP: AtomicBool = AtomicBool::new(false);

/// Ends every run early (e.g. on Ctrl-C); async-signal-safe.
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// What the workers, the injector and the checker share.
pub struct Shared {
    pub cfg: Config,
    pub started: Instant,
    /// Operations started (reserved by a worker).
    pub ops_started: AtomicU64,
    /// Set when the workers are done: the injector stops.
    pub workers_done: AtomicBool,
    /// The progress marks (0..1, sorted) of the planned faults, and how
    /// many have been injected: ops wait at the mark after the pending
    /// fault's until it is done (see [`Shared::may_start_op`]).
    pub fault_marks: Vec<f64>,
    pub faults_done: AtomicU64,
    /// Set after the end checks: the checker stops.
    pub stop_checker: AtomicBool,
    /// Set when the run's own thread panics: workers and checker stop at
    /// once (the scope waits for them before the cluster is removed).
    pub abort: AtomicBool,
    pub figures: Figures,
}

impl Shared {
    /// How far the run is, 0..=1: ops started or time spent, whichever is
    /// further.
    pub fn progress(&self) -> f64 {
        let ops = self.ops_started.load(Ordering::Relaxed) as f64 / self.cfg.ops.max(1) as f64;
        let time = self.started.elapsed().as_secs_f64() / self.cfg.seconds.max(1) as f64;
        ops.max(time).min(1.0)
    }

    /// May another op start? Ops go on while a fault is injected, up to
    /// the mark of the fault after it, so that every planned fault happens
    /// with ops in flight however fast the ops are. True once all ops have
    /// started (the worker then finds none left).
    pub fn may_start_op(&self) -> bool {
        let started = self.ops_started.load(Ordering::SeqCst);
        if started >= self.cfg.ops {
            return true;
        }
        let done = self.faults_done.load(Ordering::SeqCst) as usize;
        let limit = self
            .fault_marks
            .get(done + 1)
            .map_or(self.cfg.ops, |m| (m * self.cfg.ops as f64) as u64);
        started < limit
    }

    /// Past `--seconds` (or told to stop): start no new operation.
    pub fn out_of_time(&self) -> bool {
        STOP.load(Ordering::SeqCst)
            || self.started.elapsed() >= Duration::from_secs(self.cfg.seconds)
    }
}

/// Runs one soak on a fresh cluster of `cfg.mode` and returns its figures
/// (violations among them). Must run on the thread that keeps the cluster
/// (its daemons die with the thread that started them): the fault injector
/// runs here, the workers and the checker on threads of their own.
pub fn run(cfg: Config) -> Figures {
    println!(
        "soak {}: seed {} ({} ops, {} ipamd kills, at most {} s)",
        cfg.mode, cfg.seed, cfg.ops, cfg.faults, cfg.seconds
    );
    let bed = Bed::new(cfg.mode);
    driver::create_pools(&bed);
    let plan = faults::schedule(cfg.mode, cfg.faults, &mut Rng::fork(cfg.seed, 1));
    let shared = Shared {
        started: Instant::now(),
        ops_started: AtomicU64::new(0),
        workers_done: AtomicBool::new(false),
        fault_marks: plan.iter().map(|(at, _)| *at).collect(),
        faults_done: AtomicU64::new(0),
        stop_checker: AtomicBool::new(false),
        abort: AtomicBool::new(false),
        figures: Figures::default(),
        cfg,
    };
    let mut injector = faults::Injector::new(&bed, &shared, plan);
    std::thread::scope(|s| {
        let _abort = AbortOnPanic(&shared);
        let checker = s.spawn(|| checker::run(&bed, &shared));
        let workers = driver::spawn_workers(s, &bed, &shared);
        injector.run_until(|| workers.iter().all(|w| w.is_finished()));
        for w in workers {
            if let Err(panic) = w.join() {
                shared.figures.violation(format!(
                    "a pod worker panicked: {}",
                    figures::panic_text(&panic)
                ));
            }
        }
        shared.workers_done.store(true, Ordering::SeqCst);
        settle::end_checks(&bed, &shared);
        shared.stop_checker.store(true, Ordering::SeqCst);
        if let Err(panic) = checker.join() {
            shared.figures.violation(format!(
                "the checker panicked: {}",
                figures::panic_text(&panic)
            ));
        }
    });
    shared.figures.set_wall(shared.started.elapsed());
    shared.figures
}

/// Tells the workers and the checker to stop when the run's thread
/// panics (an injector step that failed): they would go on against dead
/// daemons, and the scope waits for them.
struct AbortOnPanic<'a>(&'a Shared);

impl Drop for AbortOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.abort.store(true, Ordering::SeqCst);
            self.0.stop_checker.store(true, Ordering::SeqCst);
        }
    }
}
