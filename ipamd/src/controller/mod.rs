//! The controller role (`ipamd --role controller|both`): the cluster-wide
//! control loops, run by exactly one replica at a time. Replicas elect a
//! leader through a `coordination.k8s.io/v1` Lease (`elector`); the loops
//! check the leader's fence (`leadership`) before every write, so a leader
//! that cannot renew stops acting before its Lease can expire. No datapath,
//! nothing on the pod path: a pod's ADD never waits for the controller.
//!
//! Loops so far: `pools` (pools follow the workloads that declare them:
//! `declared.rs` reads the annotations, `size.rs` counts the pods,
//! `follow.rs` makes, resizes and publishes a pool, `retire.rs` deletes it
//! after its workload); `gc` (bindings and attachments Kubernetes says
//! nobody uses any more, `leftovers.rs`).
//!
//! Not a loop and not the leader's alone: `webhook`, the admission webhook
//! that keeps pods on the ToRs their pool can serve, answered by every
//! replica from the store.

mod declared;
mod elector;
mod follow;
mod gc;
mod leadership;
mod leftovers;
mod pools;
mod retire;
mod size;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::ipam::Ipam;
use crate::kubernetes::cluster::ClusterCache;
use crate::kubernetes::configmaps::ConfigMaps;
use crate::kubernetes::events::{Events, CONTROLLER_COMPONENT};
use crate::kubernetes::lease::LeaseApi;
use crate::kubernetes::workloads::Workloads;

pub use declared::{
    declared_pool, derived_pool_name, Declared, FAMILY_ANNOTATION, IPS_ANNOTATION,
    POLICY_ANNOTATION, POOL_SIZE_ANNOTATION, RETAIN_ANNOTATION, TORS_ANNOTATION,
    WHITELIST_DELAY_ANNOTATION,
};
pub use elector::{Elector, Step};
pub use gc::{Collection, Collector, Outcome};
pub use leadership::{Fence, Leadership, NotLeader};
pub use leftovers::{Reason, Release, Target};
pub use pools::{DeclaredPools, Memory, Pass};

/// Longest pause between a candidate's reads of the Lease.
const MAX_POLL: Duration = Duration::from_secs(2);

/// The Lease and its timing.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// `holderIdentity` of this replica: unique per process.
    pub identity: String,
    /// `leaseDurationSeconds`: a holder that has not renewed for this long
    /// may be replaced.
    pub duration: Duration,
    /// How often the leader renews.
    pub renew_every: Duration,
}

impl LeaseConfig {
    /// Checks the timing: the leader gets at least two renewals inside its
    /// fence (one may fail), and the fence keeps a margin.
    pub fn validate(&self) -> Result<(), String> {
        if self.namespace.is_empty() || self.name.is_empty() {
            return Err("--lease-namespace and --lease-name must not be empty".into());
        }
        if self.renew_every.is_zero() || self.duration.as_secs() == 0 {
            return Err(
                "--lease-duration-seconds and --lease-renew-seconds must be more than 0".into(),
            );
        }
        if self.renew_every * 3 > self.duration {
            return Err(format!(
                "--lease-renew-seconds {} is too long for --lease-duration-seconds {}: the leader acts for two thirds of the duration after each renewal and must get two tries inside it; use at most a third of the duration",
                self.renew_every.as_secs(),
                self.duration.as_secs()
            ));
        }
        if self.duration.as_secs() > i32::MAX as u64 {
            return Err("--lease-duration-seconds is too large".into());
        }
        Ok(())
    }

    /// How long before the Lease could expire the leader stops acting: a
    /// third of the duration (5 s of the default 15 s, as client-go's
    /// renewDeadline of 10 s), which covers a write begun just before the
    /// fence closes (store requests are bounded at 1.5 s) and slow clocks.
    pub fn margin(&self) -> Duration {
        self.duration / 3
    }

    /// How often a candidate reads the Lease: the renew period, at most 2 s,
    /// so a dead leader is replaced within the duration plus two reads.
    pub fn poll(&self) -> Duration {
        self.renew_every.min(MAX_POLL)
    }

    /// Bound on one Lease request.
    pub fn request_timeout(&self) -> Duration {
        self.poll()
    }
}

/// A unique `holderIdentity`: the node (pod) name and a random suffix, so a
/// restarted process never mistakes its predecessor's Lease for its own.
pub fn identity(node: &str) -> String {
    let random = std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|u| u.trim().chars().filter(|c| *c != '-').take(8).collect())
        .unwrap_or_else(|_| format!("{:x}", std::process::id()));
    format!("{node}_{random}")
}

/// Everything the controller role runs with.
pub struct Controller {
    pub client: kube::Client,
    pub lease: LeaseConfig,
    pub ipam: Arc<Ipam>,
    pub clock: Arc<dyn Clock>,
    /// Full pass of each loop at least this often.
    pub resync: Duration,
    /// `--binding-gc-grace-seconds`: how long a pod (and its StatefulSet)
    /// must stay gone before its binding is released, and a Node NotReady
    /// before its attachments are.
    pub gc_grace: Duration,
    /// Garbage collection releases what is due by itself (else only on
    /// `ipamctl gc`).
    pub gc_auto: bool,
    /// Repeats of an Event are written back at most this often.
    pub event_interval: Duration,
}

/// A started controller.
pub struct Running {
    pub leadership: Leadership,
    /// The elector: ends (releasing the Lease) once `stop` completes.
    pub elector: tokio::task::JoinHandle<()>,
    /// Garbage collection, for `ipamctl gc`.
    pub collector: Arc<Collector>,
}

impl Controller {
    /// Starts the watches and the loops; the elector runs until `stop`
    /// completes, then releases the Lease.
    pub fn start(self, stop: impl std::future::Future<Output = ()> + Send + 'static) -> Running {
        let leadership = Leadership::new();
        crate::metrics::global().leader_from({
            let l = leadership.clone();
            move || l.is_leader()
        });
        let workloads = Arc::new(Workloads::start(self.client.clone()));
        let events = Arc::new(Events::start(
            self.client.clone(),
            CONTROLLER_COMPONENT,
            self.lease.identity.clone(),
            self.clock.clone(),
            self.event_interval,
        ));
        let pools = DeclaredPools {
            ipam: self.ipam.clone(),
            workloads: workloads.clone(),
            leadership: leadership.clone(),
            configmaps: ConfigMaps::new(self.client.clone()),
            events: events.clone(),
            clock: self.clock.clone(),
            resync: self.resync,
        };
        tokio::spawn(pools.run());
        let collector = Arc::new(Collector {
            ipam: self.ipam.clone(),
            cluster: Arc::new(ClusterCache::start(self.client.clone())),
            workloads,
            leadership: leadership.clone(),
            clock: self.clock.clone(),
            events,
            grace: self.gc_grace,
            auto: self.gc_auto,
            resync: self.resync,
            clocks: Default::default(),
        });
        tokio::spawn(collector.clone().run());
        let api = LeaseApi::new(
            self.client,
            &self.lease.namespace,
            &self.lease.name,
            self.lease.request_timeout(),
        );
        let elector = Elector::new(self.lease, api, self.clock, leadership.clone());
        Running {
            leadership,
            elector: tokio::spawn(elector.run(stop)),
            collector,
        }
    }
}

#[cfg(test)]
mod tests;
