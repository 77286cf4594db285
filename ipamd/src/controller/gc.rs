//! Garbage collection by Kubernetes truth: bindings whose pod and
//! StatefulSet are gone for longer than the grace, and attachments whose
//! pod and node are gone (`leftovers.rs` decides; this file gathers the
//! facts and applies the verdicts).
//!
//! Every replica runs a pass every few seconds, leader or not, so that the
//! "first seen absent" clocks of a standby are warm when it takes over;
//! only the leader writes, checking the fence right before each release
//! and cutting the release off when the fence closes (with `--binding-gc
//! manual`, passes only count the grace and wait for `ipamctl gc`). `ipamctl gc
//! [--dry-run]` (the controller's socket) runs the same pass at once: the
//! dry run lists what is due and why; without it, the due releases are
//! done now. Every release is a log line and an Event on its pod.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::clock::Clock;
use crate::core::{Lease, Policy};
use crate::error::{Error, Result};
use crate::ipam::{registry, Ipam};
use crate::kubernetes::cluster::ClusterCache;
use crate::kubernetes::events::{EventType, Events, Involved};
use crate::kubernetes::workloads::Workloads;
use crate::store::StoreError;

use super::leadership::Leadership;
use super::leftovers::{decide, Clocks, NodeHealth, Release, Target, World};

/// How long a pass waits for the caches' first lists.
const CACHE_WAIT: Duration = Duration::from_secs(5);

/// The garbage collector of one controller replica.
pub struct Collector {
    pub ipam: Arc<Ipam>,
    pub cluster: Arc<ClusterCache>,
    pub workloads: Arc<Workloads>,
    pub leadership: Leadership,
    pub clock: Arc<dyn Clock>,
    /// The controller's Events (`kubernetes/events.rs`).
    pub events: Arc<Events>,
    /// `--binding-gc-grace-seconds`.
    pub grace: Duration,
    /// Passes release what is due (`--binding-gc auto`); else they only
    /// count the grace, and `ipamctl gc` releases.
    pub auto: bool,
    /// A pass at least this often.
    pub resync: Duration,
    /// The absence clocks; the lock also keeps passes one at a time.
    pub clocks: Mutex<Clocks>,
}

/// One release, done or (dry run, fence closed) not.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub release: Release,
    /// Why, in words.
    pub why: String,
    pub done: bool,
    /// Why it was not done, when it was tried.
    pub error: Option<String>,
}

/// What one pass found and did.
#[derive(Debug, Clone, Default)]
pub struct Collection {
    pub outcomes: Vec<Outcome>,
    /// Stopped early: the fence closed.
    pub fenced: bool,
}

impl Collector {
    /// How often a pass runs: often enough that a release comes soon after
    /// its grace, at least every `resync`.
    pub fn period(&self) -> Duration {
        (self.grace / 2)
            .max(Duration::from_secs(1))
            .min(self.resync)
    }

    /// What exists: the store's leases and sticky pools, the caches' pods,
    /// StatefulSets and Nodes, the registry's live agents.
    async fn facts(&self) -> Result<(Vec<Lease>, HashSet<String>, World)> {
        let ready = self.cluster.wait_ready(CACHE_WAIT).await
            && self.workloads.wait_ready(CACHE_WAIT).await;
        if !ready {
            // An empty cache would make every pod look gone.
            return Err(Error::unavailable(
                "the controller has not listed every Pod, Node and StatefulSet from the Kubernetes API yet; nothing is released until it has, retry later",
            ));
        }
        let mut leases = Vec::new();
        let mut sticky = HashSet::new();
        // A record that does not decode keeps what it may hold out of the
        // pass (never released as if absent) and stops nothing else: a
        // pool's, its leases; a lease's, its pool's; a node's, the
        // attachments on that node (it may be alive).
        let (pools, _) = self.ipam.pools_readable().await?;
        for p in pools {
            if p.policy == Policy::Sticky {
                sticky.insert(p.name.clone());
            }
            match self.ipam.leases(&p.name).await {
                Ok(l) => leases.extend(l),
                Err(Error::Store(e @ StoreError::Corrupt { .. })) => {
                    warn!(pool = %p.name, error = %e, "GC leaves out a pool with a lease that does not decode");
                }
                Err(e) => return Err(e),
            }
        }
        let (agents, unreadable) = registry::nodes_readable(self.ipam.store().as_ref()).await?;
        leases.retain(|l| {
            !l.attachment
                .as_ref()
                .is_some_and(|a| unreadable.contains(&a.key.node))
        });
        let now = self.clock.now_unix();
        let world = World {
            pods: self
                .cluster
                .pods()
                .into_iter()
                .map(|p| ((p.namespace, p.name), p.uid))
                .collect(),
            statefulsets: self
                .workloads
                .all()
                .into_iter()
                .filter(|w| w.kind == "StatefulSet")
                .map(|w| (w.namespace, w.name))
                .collect(),
            nodes: self
                .cluster
                .nodes()
                .into_iter()
                .map(|n| {
                    let health = if n.ready {
                        NodeHealth::Ready
                    } else {
                        NodeHealth::NotReady {
                            since_unix: n.since_unix,
                        }
                    };
                    (n.name, health)
                })
                .collect(),
            live_agents: agents
                .into_iter()
                .filter(|n| n.alive(now))
                .map(|n| n.name)
                .collect(),
        };
        Ok((leases, sticky, world))
    }

    /// One pass: moves the clocks on and, unless `dry_run` or not leading,
    /// releases what is due. `leading_only`: refuse when not the leader
    /// (`ipamctl gc`) instead of only watching (the loop of a standby).
    pub async fn collect(&self, dry_run: bool, leading_only: bool) -> Result<Collection> {
        if leading_only && self.leadership.check().is_err() {
            return Err(Error::Conflict(
                "this controller replica does not hold the controller Lease: run ipamctl gc on the leader (kubectl get lease -n NAMESPACE moor-controller shows its holderIdentity, which starts with its pod's name)".into(),
            ));
        }
        let mut clocks = self.clocks.lock().await;
        let (leases, sticky, world) = self.facts().await?;
        let now = self.clock.now_unix();
        let grace = self.grace.as_secs();
        let due = decide(&leases, &sticky, &world, &mut clocks, now, grace);
        let mut pass = Collection::default();
        let act = !dry_run && self.leadership.is_leader();
        for release in due {
            let why = release.why(grace);
            let mut outcome = Outcome {
                release,
                why,
                done: false,
                error: None,
            };
            if act && !pass.fenced {
                match self.apply(&outcome.release).await {
                    Ok(true) => {
                        outcome.done = true;
                        self.report(&outcome);
                    }
                    Ok(false) => {
                        outcome.error = Some("changed since it was decided (a pod took the IP again, or someone released it); left as it is".into());
                    }
                    Err(Fenced) => pass.fenced = true,
                }
            }
            pass.outcomes.push(outcome);
        }
        Ok(pass)
    }

    /// One release, within the fence. `Ok(false)`: the store no longer
    /// holds what was decided on (or the write failed: logged).
    async fn apply(&self, r: &Release) -> std::result::Result<bool, Fenced> {
        let fence = self.leadership.check().map_err(|_| Fenced)?;
        let write = async {
            match &r.target {
                Target::Attachment(a) => self
                    .ipam
                    .release_at(&a.key, false, Some((&r.pool, r.ip)))
                    .await
                    .map(|done| done.is_some()),
                Target::Binding(pod) => self.ipam.release_unused_binding(r.ip, &r.pool, pod).await,
            }
        };
        match tokio::time::timeout(fence.remaining(), write).await {
            Err(_) => Err(Fenced),
            Ok(Ok(done)) => Ok(done),
            Ok(Err(e)) => {
                warn!(ip = %r.ip, pod = %r.pod(), kind = r.kind(), error = %e, "gc: the release failed; the next pass tries again");
                Ok(false)
            }
        }
    }

    /// The log line and the Event of a release.
    fn report(&self, o: &Outcome) {
        let r = &o.release;
        info!(kind = r.kind(), ip = %r.ip, pool = %r.pool, pod = %r.pod(), "gc released {}: {}", r.kind(), o.why);
        let (type_, reason) = match r.target {
            Target::Attachment(_) => (EventType::Warning, "MoorAttachmentReleased"),
            Target::Binding(_) => (EventType::Normal, "MoorBindingReleased"),
        };
        let pod = r.pod();
        let about = Involved {
            api_version: "v1".into(),
            kind: "Pod".into(),
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
        };
        crate::metrics::global().controller_action(reason);
        self.events.report_on(&about, type_, reason, &o.why);
    }

    /// Runs for as long as ipamd does: a pass every `period`, watching
    /// always, releasing while leading (and `auto`).
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.period());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.collect(!self.auto, false).await {
                warn!(error = %e, "gc: pass failed; retrying");
            }
        }
    }
}

/// The fence closed before or during a release.
struct Fenced;

#[cfg(test)]
#[path = "gc_tests.rs"]
mod tests;
