//! The fault injector: at random points of the run (by progress: ops
//! started or time spent), one fault at a time, each repaired after a
//! random delay before the next: kill -9 of an ipamd, of one etcd member,
//! of every etcd member (a full outage), and in OVS mode of a node's
//! ovsdb-server and ovs-vswitchd. Everything by pid (the cluster's
//! handles), never by name.
//!
//! It runs on the thread that keeps the cluster: the daemons it restarts
//! die with the thread that started them.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Bed, Mode, Net, Rng, Shared};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// kill -9 of one node's ipamd, restarted after 0.1-2 s.
    IpamdKill,
    /// kill -9 of one etcd member, restarted after 0.5-3 s.
    EtcdMemberKill,
    /// kill -9 of every etcd member, restarted after 1-4 s.
    EtcdOutage,
    /// kill -9 of one node's ovsdb-server and ovs-vswitchd, restarted
    /// after 0.2-1.5 s (OVS mode).
    OvsRestart,
    /// The API server refuses and resets connections for 1-4 s (physical
    /// mode, with the API).
    ApiOutage,
    /// kill -9 of the controller holding the Lease; the other must take
    /// over within 15 s; restarted after 0.5-2 s.
    ControllerFailover,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::IpamdKill => "ipamd kill -9 + restart",
            Fault::EtcdMemberKill => "etcd member kill -9 + restart",
            Fault::EtcdOutage => "etcd outage (all members kill -9)",
            Fault::OvsRestart => "ovsdb-server+ovs-vswitchd kill -9 + restart",
            Fault::ApiOutage => "API server outage",
            Fault::ControllerFailover => "controller failover (leader kill -9)",
        }
    }

    /// The kinds a run of `mode` injects.
    pub fn kinds(mode: Mode) -> Vec<Fault> {
        let mut v = vec![Fault::IpamdKill, Fault::EtcdMemberKill, Fault::EtcdOutage];
        match mode {
            Mode::Ovs => v.push(Fault::OvsRestart),
            Mode::Physical => v.extend([Fault::ApiOutage, Fault::ControllerFailover]),
        }
        v
    }
}

/// The faults of a run, in order, each with the progress (0..1) at which
/// it comes: `ipamd_kills` ipamd kills, a quarter as many etcd member
/// kills, a tenth as many etcd outages, (OVS) OVS restarts, (physical)
/// API outages and controller failovers, at least one of each, shuffled.
pub fn schedule(mode: Mode, ipamd_kills: u64, rng: &mut Rng) -> Vec<(f64, Fault)> {
    let mut faults = Vec::new();
    for kind in Fault::kinds(mode) {
        let n = match kind {
            Fault::IpamdKill => ipamd_kills,
            Fault::EtcdMemberKill => ipamd_kills.div_ceil(4),
            Fault::EtcdOutage
            | Fault::OvsRestart
            | Fault::ApiOutage
            | Fault::ControllerFailover => ipamd_kills.div_ceil(10),
        };
        faults.extend((0..n.max(1)).map(|_| kind));
    }
    // Fisher-Yates with the run's generator.
    for i in (1..faults.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        faults.swap(i, j);
    }
    let mut at: Vec<f64> = (0..faults.len())
        .map(|_| 0.02 + 0.88 * (rng.below(1_000_000) as f64 / 1_000_000.0))
        .collect();
    at.sort_by(f64::total_cmp);
    at.into_iter().zip(faults).collect()
}

pub struct Injector<'a> {
    bed: &'a Bed,
    shared: &'a Shared,
    rng: Rng,
    plan: Vec<(f64, Fault)>,
}

impl<'a> Injector<'a> {
    /// `plan`: the [`schedule`] made with `Rng::fork(seed, 1)`; the
    /// injector's delays come from the next stream.
    pub fn new(bed: &'a Bed, shared: &'a Shared, plan: Vec<(f64, Fault)>) -> Injector<'a> {
        let rng = Rng::fork(shared.cfg.seed, 2);
        Injector {
            bed,
            shared,
            rng,
            plan,
        }
    }

    /// Injects the planned faults as the run gets to them, until `done`.
    /// Faults the run ended before are counted as skipped.
    pub fn run_until(&mut self, done: impl Fn() -> bool) {
        let plan = std::mem::take(&mut self.plan);
        let total = plan.len();
        let mut next = plan.into_iter().peekable();
        let mut report = Instant::now();
        while !done() {
            if report.elapsed() >= Duration::from_secs(10) {
                report = Instant::now();
                println!(
                    "soak {}: {:.0?}: {} of {} ops started, {} of {total} faults injected",
                    self.bed.mode(),
                    self.shared.started.elapsed(),
                    self.shared.ops_started.load(Ordering::SeqCst),
                    self.shared.cfg.ops,
                    self.shared.faults_done.load(Ordering::SeqCst),
                );
            }
            match next.peek() {
                Some((at, fault)) if self.shared.progress() >= *at => {
                    self.inject(*fault);
                    next.next();
                    self.shared.faults_done.fetch_add(1, Ordering::SeqCst);
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        for (_, fault) in next {
            self.shared
                .figures
                .bump(&format!("faults skipped (run ended): {}", fault.name()));
        }
    }

    /// One of the cluster's nodes, by the run's seed.
    fn random_node(&mut self) -> String {
        let nodes = &self.bed.cluster().nodes;
        nodes[self.rng.below(nodes.len() as u64) as usize]
            .name
            .clone()
    }

    fn inject(&mut self, fault: Fault) {
        let c = self.bed.cluster();
        let t = Instant::now();
        match fault {
            Fault::IpamdKill => {
                let node = self.random_node();
                c.kill9_ipamd(&node);
                std::thread::sleep(self.rng.millis(100, 2000));
                c.start_ipamd(&node);
            }
            Fault::EtcdMemberKill => {
                let m = self.rng.below(c.etcd_members() as u64) as usize;
                c.etcd_kill9(m);
                std::thread::sleep(self.rng.millis(500, 3000));
                c.etcd_start(m);
                c.etcd_wait_ready();
            }
            Fault::EtcdOutage => {
                c.etcd_kill9_all();
                std::thread::sleep(self.rng.millis(1000, 4000));
                c.etcd_start_all();
                c.etcd_wait_ready();
            }
            Fault::OvsRestart => {
                let Net::Ovs(ovs) = &self.bed.net else {
                    unreachable!("OVS restarts are planned in OVS mode only")
                };
                let node = self.random_node();
                ovs.kill9_ovs(&node);
                std::thread::sleep(self.rng.millis(200, 1500));
                ovs.start_ovs(&node);
            }
            Fault::ApiOutage => {
                let kube = self.bed.kube.as_ref().expect("API faults need the API");
                kube.api.stop();
                std::thread::sleep(self.rng.millis(1000, 4000));
                kube.api.restart();
            }
            Fault::ControllerFailover => {
                let kube = self.bed.kube.as_ref().expect("controllers need the API");
                let Some(leader) = kube.wait_leader(None, Duration::from_secs(15)) else {
                    self.shared.figures.violation(format!(
                        "no controller holds the Lease\n{}",
                        kube.log_tails(20)
                    ));
                    return;
                };
                kube.kill9_controller(leader);
                let taken = kube.wait_leader(Some(leader), Duration::from_secs(15));
                if taken.is_none() {
                    self.shared.figures.violation(format!(
                        "controller {} was killed and the other has not taken the Lease in 15 s\n{}",
                        super::kube::CONTROLLERS[leader],
                        kube.log_tails(20)
                    ));
                }
                std::thread::sleep(self.rng.millis(500, 2000));
                kube.start_controller(c, leader);
            }
        }
        self.shared
            .figures
            .bump(&format!("faults: {}", fault.name()));
        self.shared.figures.add(
            &format!("fault downtime ms: {}", fault.name()),
            t.elapsed().as_millis() as u64,
        );
    }
}
