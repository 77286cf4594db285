//! What garbage collection releases, and why: a pure decision over what the
//! store holds (leases: bindings and attachments) and what Kubernetes says
//! exists (pods, StatefulSets, Nodes) and moor's own node registry, at a
//! given time. No I/O, no clock: `gc.rs` gathers the facts and applies the
//! verdicts.
//!
//! A binding (pod name -> IP) is released only when no pod of that name
//! exists and no StatefulSet that would own it exists (a pod `db-4` and a
//! StatefulSet `db`, whatever its replicas: scale-down keeps bindings; an
//! orphaning delete keeps them while the pods live), continuously for
//! longer than the grace, and while nothing is attached to the IP. Pools
//! with the `sticky` policy keep their bindings until `ipamctl ip release`,
//! as that policy promises.
//!
//! An attachment is released (its binding kept) only when its pod (by uid)
//! no longer exists, moor's agent on its node has stopped reporting (a live
//! agent ends its own attachments: DEL, GC, the sweep), and its Kubernetes
//! Node is deleted or has been NotReady for longer than the grace. Then a
//! StatefulSet pod re-created on another node of its ToR gets its IP back.
//!
//! The grace needs a "first seen absent" time, and no Kubernetes object
//! records when a pod stopped existing: `Clocks` keeps it in memory, in
//! every replica (leader or not: watching is not writing), so a takeover by
//! a replica that was watching keeps the clocks, and a fresh replica starts
//! them anew, which only delays a release.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use crate::core::{Attachment, Lease, PodRef};

/// A Kubernetes Node as GC judges it (by its `Ready` condition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeHealth {
    Ready,
    /// `Ready` is False or Unknown, or not reported yet; `since`: the
    /// condition's lastTransitionTime, if it has one.
    NotReady {
        since_unix: Option<u64>,
    },
}

/// What exists, as the controller's caches and the node registry say.
#[derive(Debug, Clone, Default)]
pub struct World {
    /// (namespace, name) -> uid of every pod.
    pub pods: HashMap<(String, String), String>,
    /// (namespace, name) of every StatefulSet.
    pub statefulsets: HashSet<(String, String)>,
    /// Every Kubernetes Node, by name.
    pub nodes: HashMap<String, NodeHealth>,
    /// Nodes whose moor agent reported within `ALIVE_WITHIN` (the
    /// registry's heartbeats).
    pub live_agents: HashSet<String>,
}

impl World {
    fn pod_uids(&self) -> HashSet<&str> {
        self.pods.values().map(String::as_str).collect()
    }

    fn has_pod(&self, namespace: &str, name: &str) -> bool {
        self.pods
            .contains_key(&(namespace.to_string(), name.to_string()))
    }

    fn has_statefulset(&self, namespace: &str, name: &str) -> bool {
        self.statefulsets
            .contains(&(namespace.to_string(), name.to_string()))
    }
}

/// When each absence was first seen; kept between passes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Clocks {
    /// A bound pod (namespace, name) with neither pod nor StatefulSet.
    pub bindings: HashMap<(String, String), u64>,
    /// A Node NotReady without a lastTransitionTime.
    pub not_ready: HashMap<String, u64>,
}

/// What one release takes back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The live use of the IP on a node that is gone; the binding stays.
    Attachment(Attachment),
    /// The pod's binding; the IP goes back to its pool.
    Binding(PodRef),
}

/// Why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The attachment's pod is gone and so is its node: deleted from
    /// Kubernetes (`since_unix` None) or NotReady since `since_unix`.
    NodeGone {
        node: String,
        not_ready_since: Option<u64>,
    },
    /// No pod of the bound name (nor, for a StatefulSet's name, the
    /// StatefulSet) has existed since `since_unix`.
    PodGone {
        statefulset: Option<String>,
        since_unix: u64,
    },
}

/// One release the collector decided on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub ip: IpAddr,
    pub pool: String,
    pub target: Target,
    pub reason: Reason,
}

impl Release {
    /// The pod the release is about.
    pub fn pod(&self) -> &PodRef {
        match &self.target {
            Target::Attachment(a) => &a.pod,
            Target::Binding(p) => p,
        }
    }

    /// `attachment` or `binding`.
    pub fn kind(&self) -> &'static str {
        match self.target {
            Target::Attachment(_) => "attachment",
            Target::Binding(_) => "binding",
        }
    }

    /// Why, in words, for logs, Events and `ipamctl gc`.
    pub fn why(&self, grace_secs: u64) -> String {
        let pod = self.pod();
        match (&self.target, &self.reason) {
            (
                Target::Attachment(a),
                Reason::NodeGone {
                    node,
                    not_ready_since,
                },
            ) => {
                let node_state = match not_ready_since {
                    None => format!("node {node} was deleted from Kubernetes"),
                    Some(t) => format!(
                        "node {node} has been NotReady since {} (longer than the {grace_secs} s grace)",
                        moor_proto::rfc3339_utc(*t)
                    ),
                };
                let uid = if pod.uid.is_empty() {
                    String::new()
                } else {
                    format!(" (uid {})", pod.uid)
                };
                format!(
                    "{} held by container {} of pod {pod}{uid}: the pod no longer exists, {node_state}, and moor's agent there has stopped reporting; the binding stays, so the pod re-created on another node of its ToR gets {} back",
                    self.ip, a.key.container_id, self.ip
                )
            }
            (
                _,
                Reason::PodGone {
                    statefulset,
                    since_unix,
                },
            ) => {
                let owner = match statefulset {
                    Some(s) => format!(" and no StatefulSet {}/{s}", pod.namespace),
                    None => String::new(),
                };
                format!(
                    "{} kept for pod {pod}: no pod {pod}{owner} has existed since {} (longer than the {grace_secs} s grace); {} goes back to pool {}",
                    self.ip,
                    moor_proto::rfc3339_utc(*since_unix),
                    self.ip,
                    self.pool
                )
            }
            (Target::Binding(_), Reason::NodeGone { .. }) => {
                unreachable!("bindings are released for their pod only")
            }
        }
    }
}

/// The StatefulSet whose pod `name` would be: `<set>-<ordinal>`, the
/// ordinal in decimal as the StatefulSet controller prints it.
pub fn statefulset_of(name: &str) -> Option<&str> {
    let (set, ordinal) = name.rsplit_once('-')?;
    let n: u32 = ordinal.parse().ok()?;
    (!set.is_empty() && n.to_string() == ordinal).then_some(set)
}

/// Whether an attachment's node and pod are gone (see the module docs).
fn gone_node(
    a: &Attachment,
    world: &World,
    uids: &HashSet<&str>,
    clocks: &Clocks,
    now: u64,
    grace: u64,
) -> Option<Reason> {
    let pod_exists = if a.pod.uid.is_empty() {
        // A runtime that did not say which incarnation: any pod of the name.
        world.has_pod(&a.pod.namespace, &a.pod.name)
    } else {
        uids.contains(a.pod.uid.as_str())
    };
    let node = &a.key.node;
    if pod_exists || world.live_agents.contains(node) {
        return None;
    }
    match world.nodes.get(node) {
        None => Some(Reason::NodeGone {
            node: node.clone(),
            not_ready_since: None,
        }),
        Some(NodeHealth::Ready) => None,
        Some(NodeHealth::NotReady { since_unix }) => {
            let since = since_unix.or_else(|| clocks.not_ready.get(node).copied())?;
            (now >= since.saturating_add(grace)).then(|| Reason::NodeGone {
                node: node.clone(),
                not_ready_since: Some(since),
            })
        }
    }
}

/// Decides what to release at `now`, and moves the clocks on: an absence
/// seen for the first time starts its clock, one that ended drops it.
/// `sticky_pools`: pools whose bindings GC never releases. In each lease,
/// an attachment release comes before the binding release it enables.
pub fn decide(
    leases: &[Lease],
    sticky_pools: &HashSet<String>,
    world: &World,
    clocks: &mut Clocks,
    now: u64,
    grace: u64,
) -> Vec<Release> {
    let mut next = Clocks::default();
    for (name, health) in &world.nodes {
        if let NodeHealth::NotReady { since_unix: None } = health {
            let since = clocks.not_ready.get(name).copied().unwrap_or(now);
            next.not_ready.insert(name.clone(), since);
        }
    }
    let uids = world.pod_uids();
    let mut out = Vec::new();
    for lease in leases {
        // A quarantined IP waits for the operator (`ipamctl ip release`).
        if lease.quarantine.is_some() {
            continue;
        }
        let mut detached = lease.attachment.is_none();
        if let Some(a) = &lease.attachment {
            if let Some(reason) = gone_node(a, world, &uids, &next, now, grace) {
                out.push(Release {
                    ip: lease.ip,
                    pool: lease.pool.clone(),
                    target: Target::Attachment(a.clone()),
                    reason,
                });
                // An evicted IP's binding goes with its attachment.
                detached = !lease.evict;
            }
        }
        let Some(pod) = &lease.binding else {
            continue;
        };
        if !pod.is_known() || sticky_pools.contains(&lease.pool) {
            continue;
        }
        let set = statefulset_of(&pod.name);
        if world.has_pod(&pod.namespace, &pod.name)
            || set.is_some_and(|s| world.has_statefulset(&pod.namespace, s))
        {
            continue;
        }
        let key = (pod.namespace.clone(), pod.name.clone());
        let since = clocks.bindings.get(&key).copied().unwrap_or(now);
        next.bindings.insert(key, since);
        if detached && now >= since.saturating_add(grace) {
            out.push(Release {
                ip: lease.ip,
                pool: lease.pool.clone(),
                target: Target::Binding(pod.clone()),
                reason: Reason::PodGone {
                    statefulset: set.map(str::to_string),
                    since_unix: since,
                },
            });
        }
    }
    *clocks = next;
    out
}

#[cfg(test)]
#[path = "leftovers_tests.rs"]
mod tests;
