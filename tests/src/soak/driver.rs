//! The pod workers: each runs the real `moor` binary in a node's netns as
//! a container runtime does for kubelet, choosing its next operation from
//! its own seeded generator.
//!
//! The runtime's rules they follow (what kubelet + containerd do):
//! - ADD of a new sandbox: a fresh netns and container id. A failed ADD is
//!   allowed (ipamd or etcd down: "try again later"); the runtime then
//!   DELs that sandbox and removes its netns, and kubelet makes a new
//!   sandbox later (here: a later ADD of the same pod name).
//! - DEL is retried until it succeeds (backing off, 100 ms to 1 s); the
//!   netns is removed only after it succeeded. A DEL that has not
//!   succeeded after [`DEL_PATIENCE`] is a violation.
//! - CHECK with the ADD's result as `prevResult`, as containerd keeps it.
//!   It may say "try again later" (code 11: ipamd or the store down);
//!   any other failure of a running pod's CHECK is a violation.
//! - A StatefulSet pod (`db-N`) that moves is DELeted on its node and
//!   ADDed as a new sandbox on another node of the same ToR; it must get
//!   the IP it had (its binding) or fail, never get another one.
//!
//! Each worker owns its pods (its StatefulSet ordinals are its own), so no
//! two workers ever run one pod.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{Bed, Rng, Shared};
use crate::names::{container_id, deployment_pod, statefulset_pod};
use crate::{CniRun, Pod};

/// The app of the Deployment pods (IP back to the pool on DEL).
pub const DEPLOYMENT_APP: &str = "web";
/// The app of the StatefulSet pods (sticky IPs).
pub const STATEFULSET_APP: &str = "db";
/// StatefulSet ordinals per worker.
pub const ORDINALS: u32 = 3;
/// A worker keeps between these many pods running.
const MIN_LIVE: usize = 2;
const MAX_LIVE: usize = 6;
/// How long the runtime retries a DEL before the soak calls it a failure.
pub const DEL_PATIENCE: Duration = Duration::from_secs(120);

/// The pools: big enough that no ADD fails for want of an IP.
pub fn create_pools(bed: &Bed) {
    let c = bed.cluster();
    c.create_pool(DEPLOYMENT_APP, DEPLOYMENT_APP, 100, &[]);
    c.create_pool(STATEFULSET_APP, STATEFULSET_APP, 60, &[]);
}

/// A pod a worker has running (its ADD succeeded).
struct Live {
    pod: Pod,
    cid: String,
    node: String,
    /// The StatefulSet ordinal, for `db-N`.
    ordinal: Option<u32>,
    /// The ADD's result, the runtime's prevResult.
    result: Value,
}

struct Worker<'a> {
    id: usize,
    bed: &'a Bed,
    shared: &'a Shared,
    rng: Rng,
    /// The nodes of this worker's ToR; the first is its home.
    nodes: Vec<String>,
    live: Vec<Live>,
    /// The IPv4 address each of its StatefulSet pods was given first.
    sticky: BTreeMap<u32, Ipv4Addr>,
    deployments: u64,
}

/// Starts `workers_per_node` workers per node.
pub fn spawn_workers<'s, 'e>(
    s: &'s Scope<'s, 'e>,
    bed: &'e Bed,
    shared: &'e Shared,
) -> Vec<ScopedJoinHandle<'s, ()>> {
    let c = bed.cluster();
    let mut handles = Vec::new();
    let per_node = shared.cfg.workers_per_node;
    for (n, node) in c.nodes.iter().enumerate() {
        for k in 0..per_node {
            let id = n * per_node + k;
            let mut nodes = vec![node.name.clone()];
            nodes.extend(
                c.nodes
                    .iter()
                    .filter(|o| o.tor == node.tor && o.name != node.name)
                    .map(|o| o.name.clone()),
            );
            let w = Worker {
                id,
                bed,
                shared,
                rng: Rng::fork(shared.cfg.seed, 1000 + id as u64),
                nodes,
                live: Vec::new(),
                sticky: BTreeMap::new(),
                deployments: 0,
            };
            handles.push(
                std::thread::Builder::new()
                    .name(format!("soak-worker-{id}"))
                    .spawn_scoped(s, move || w.run())
                    .expect("spawn a pod worker"),
            );
        }
    }
    handles
}

/// What a failed moor run says, as a short cause: the CNI code and what
/// it is about.
pub fn cause(r: &CniRun) -> String {
    let code = r.json.get("code").and_then(Value::as_u64);
    let msg = r.message().to_lowercase();
    let about = [
        ("connect", "ipamd unreachable"),
        ("socket", "ipamd unreachable"),
        ("etcd", "store unavailable"),
        ("store", "store unavailable"),
        ("ovs", "ovs"),
        ("timed out", "timeout"),
        ("deadline", "timeout"),
    ]
    .iter()
    .find(|(k, _)| msg.contains(k))
    .map_or("other", |(_, a)| a);
    match code {
        Some(c) => format!("code {c}, {about}"),
        None => format!("exit {} without a CNI error", r.code),
    }
}

/// The addresses of an ADD result.
fn result_ips(result: &Value) -> Vec<IpAddr> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["address"].as_str()?.split('/').next()?.parse().ok())
        .collect()
}

impl Worker<'_> {
    fn run(mut self) {
        loop {
            while !self.shared.may_start_op() && !self.shared.out_of_time() {
                std::thread::sleep(Duration::from_millis(20));
            }
            if self.shared.out_of_time()
                || self.shared.ops_started.fetch_add(1, Ordering::SeqCst) >= self.shared.cfg.ops
            {
                break;
            }
            let roll = self.rng.below(100);
            if self.live.len() < MIN_LIVE || (self.live.len() < MAX_LIVE && roll < 40) {
                self.add_new();
            } else if self.live.len() >= MAX_LIVE || roll < 75 {
                let i = self.rng.below(self.live.len() as u64) as usize;
                let l = self.live.swap_remove(i);
                self.shared.figures.bump("ops: DEL");
                self.del(&l.node, &l.pod, &l.cid);
            } else if roll < 90 || !self.move_sticky() {
                self.check();
            }
        }
        // The run is over: the runtime tears down what is left.
        for l in std::mem::take(&mut self.live) {
            self.shared.figures.bump("ops: DEL at the end");
            self.del(&l.node, &l.pod, &l.cid);
        }
    }

    /// ADD of a new pod: a StatefulSet pod whose ordinal is not running
    /// (on any node of the ToR), or a Deployment pod on the home node.
    fn add_new(&mut self) {
        let free: Vec<u32> = (0..ORDINALS)
            .filter(|o| !self.live.iter().any(|l| l.ordinal == Some(*o)))
            .collect();
        if !free.is_empty() && self.rng.chance(40) {
            let ordinal = free[self.rng.below(free.len() as u64) as usize];
            let node = self.nodes[self.rng.below(self.nodes.len() as u64) as usize].clone();
            self.shared.figures.bump("ops: ADD StatefulSet pod");
            self.add(&node, Some(ordinal));
        } else {
            let node = self.nodes[0].clone();
            self.shared.figures.bump("ops: ADD Deployment pod");
            self.add(&node, None);
        }
    }

    /// ADD of a new sandbox of pod `ordinal` (None: a new Deployment pod)
    /// on `node`. A failure is followed by the runtime's DEL.
    fn add(&mut self, node: &str, ordinal: Option<u32>) {
        let name = match ordinal {
            Some(o) => statefulset_pod(STATEFULSET_APP, self.id as u32 * ORDINALS + o),
            None => {
                self.deployments += 1;
                deployment_pod(
                    DEPLOYMENT_APP,
                    ((self.id as u64) << 16) | (self.deployments & 0xffff),
                )
            }
        };
        let c = self.bed.cluster();
        let pod = self.bed.pod(&name);
        if let Some(kube) = &self.bed.kube {
            // Scheduled onto `node`: kubelet there runs it.
            let global = ordinal.map(|o| self.id as u32 * ORDINALS + o);
            kube.create_pod(&pod, node, STATEFULSET_APP, DEPLOYMENT_APP, global);
        }
        let cid = container_id();
        let r = c.moor(node, "ADD", &pod, &cid, &json!({}));
        if r.code != 0 {
            self.shared
                .figures
                .failure(&format!("ADD failed: {}", cause(&r)), &r.message());
            self.del(node, &pod, &cid);
            return;
        }
        self.shared.figures.bump("ADD: succeeded");
        let ips = result_ips(&r.json);
        if ips.is_empty() {
            self.shared.figures.violation(format!(
                "ADD of {name} on {node} succeeded without an IP: {}",
                r.stdout
            ));
        }
        if ips.iter().any(IpAddr::is_ipv4) && ips.iter().any(IpAddr::is_ipv6) {
            self.shared.figures.bump("ADD: dual-stack results");
        }
        // What ADD said is what the pod has: eth0 up with carrier and
        // every address of the result.
        let live = super::checker::live_addresses(&pod.netns).unwrap_or_default();
        for ip in &ips {
            if !live.iter().any(|(i, a)| i == "eth0" && a == ip) {
                self.shared.figures.violation(format!(
                    "ADD of {name} on {node} returned {ip}, but it is not live on the pod's eth0: {live:?}"
                ));
            }
        }
        if let Some(o) = ordinal {
            let v4 = ips.iter().find_map(|ip| match ip {
                IpAddr::V4(a) => Some(*a),
                IpAddr::V6(_) => None,
            });
            if let Some(v4) = v4 {
                let first = *self.sticky.entry(o).or_insert(v4);
                if first != v4 {
                    self.shared.figures.violation(format!(
                        "StatefulSet pod {name} got {v4} on {node}; its binding is {first}"
                    ));
                }
            }
        }
        self.live.push(Live {
            pod,
            cid,
            node: node.to_string(),
            ordinal,
            result: r.json,
        });
    }

    /// DEL until it succeeds (the runtime retries), then the netns goes.
    fn del(&self, node: &str, pod: &Pod, cid: &str) {
        let c = self.bed.cluster();
        let start = Instant::now();
        let mut tries = 0u64;
        loop {
            tries += 1;
            let r = c.moor(node, "DEL", pod, cid, &json!({}));
            if r.code == 0 {
                self.shared.figures.bump("DEL: succeeded");
                self.shared.figures.add("DEL: retries", tries - 1);
                break;
            }
            self.shared
                .figures
                .failure(&format!("DEL failed, retried: {}", cause(&r)), &r.message());
            if self.shared.abort.load(Ordering::SeqCst) {
                break;
            }
            if start.elapsed() > DEL_PATIENCE {
                self.shared.figures.violation(format!(
                    "DEL of {} ({cid}) on {node} never succeeded in {tries} tries over {:?}: {}",
                    pod.name,
                    DEL_PATIENCE,
                    r.message()
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis((100 * tries).min(1000)));
        }
        c.remove_pod(pod);
        if let Some(kube) = &self.bed.kube {
            // The sandbox is gone: the pod object goes (kubelet's order).
            kube.delete_pod(pod);
        }
    }

    /// CHECK of a running pod against its ADD's result.
    fn check(&mut self) {
        let i = self.rng.below(self.live.len() as u64) as usize;
        let l = &self.live[i];
        self.shared.figures.bump("ops: CHECK");
        let r = self.bed.cluster().moor(
            &l.node,
            "CHECK",
            &l.pod,
            &l.cid,
            &json!({ "prevResult": l.result }),
        );
        if r.code != 0 {
            let cause = cause(&r);
            let mut message = r.message();
            if !cause.starts_with("code 11,") {
                // Not "try again later": what did ipamd do with this pod?
                let short = &l.cid[..12];
                let log = std::fs::read_to_string(&self.bed.cluster().node(&l.node).log)
                    .unwrap_or_default();
                let lines: Vec<&str> = log
                    .lines()
                    .filter(|x| x.contains(short) || x.contains(&l.cid) || x.contains(&l.pod.name))
                    .collect();
                message += &format!(
                    "\n    {}'s ipamd log on {}:\n    {}",
                    l.pod.name,
                    l.node,
                    lines.join("\n    ")
                );
                // A running pod whose ADD succeeded: its network is intact
                // and recorded, whatever was killed meanwhile.
                self.shared.figures.violation(format!(
                    "CHECK of running pod {} on {} failed ({cause}): {message}",
                    l.pod.name, l.node
                ));
            }
            self.shared
                .figures
                .failure(&format!("CHECK failed: {cause}"), &message);
        }
    }

    /// Moves one of its running StatefulSet pods to another node of its
    /// ToR (DEL there, ADD of a new sandbox here). False if it has none to
    /// move.
    fn move_sticky(&mut self) -> bool {
        let sticky: Vec<usize> = (0..self.live.len())
            .filter(|i| self.live[*i].ordinal.is_some())
            .collect();
        if sticky.is_empty() || self.nodes.len() < 2 {
            return false;
        }
        let i = sticky[self.rng.below(sticky.len() as u64) as usize];
        let l = self.live.swap_remove(i);
        let to = self
            .nodes
            .iter()
            .find(|n| **n != l.node)
            .expect("two nodes")
            .clone();
        self.shared.figures.bump("ops: move StatefulSet pod");
        self.del(&l.node, &l.pod, &l.cid);
        self.add(&to, l.ordinal);
        true
    }
}
