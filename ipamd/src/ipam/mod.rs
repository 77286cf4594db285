//! The allocation service: reads what the core needs from the store, asks the
//! core for a decision and commits it as one compare-and-swap transaction
//! (`store::retry::cas`), reading and deciding again when another writer got
//! there first. Knows nothing of netlink, gRPC or the clock: callers pass the
//! time in.
//!
//! One `impl Ipam`, spread over files by subject:
//! - `tors`: define, list and delete ToRs and their segments;
//! - `pools`: create, list and delete pools; `resize`: grow and shrink
//!   them; `carving`: taking IPs from ToRs and giving them back (cool-down);
//!   `pool_op`: those changes as steps that survive a crash;
//! - `bindings`: a pod's IP kept before the pod exists (bring your own IPs);
//! - `ips`: what an IP is used for; `ip release` / `ip evict`;
//! - `listing`: `ip list`, `pool list`, `binding list` as streams that
//!   read the store a page at a time;
//! - `resolve`: which pool a pod draws from;
//! - `attach`: the ADD path: which IP, recorded in one transaction;
//!   `attach_view` the same from `view`, the node's watch-fed copy of what
//!   its ADDs and DELs read (etcd);
//! - `schedule`: what the admission webhook reads to steer a pod to ToRs;
//!   `free`: free counts, worked out from leases when asked;
//! - `release`: the DEL path: end an attachment, keep or free the IP;
//! - `reclaim`: garbage collection's release of a binding nobody uses;
//! - `watch`: a pool's IP set as a stream (whitelist syncers);
//! - `registry`: the node records (heartbeats) the refusal messages cite.

mod attach;
mod attach_view;
pub mod backup;
mod batch;
mod bindings;
mod carving;
mod find;
mod free;
mod ips;
pub mod listing;
mod plan;
mod pool_op;
mod pools;
mod reclaim;
pub mod registry;
mod release;
mod resize;
mod resolve;
mod schedule;
mod tors;
mod usage;
pub mod view;
mod watch;

#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::Arc;

use crate::core::{
    Attachment, AttachmentKey, IpFamily, Lease, OwnerKind, PodFacts, PodRef, Policy, PoolOwner, Tor,
};
use crate::store::Store;

pub use attach::WriteBack;
pub use resize::{Resize, Resized};
pub use usage::PoolUsage;
pub use watch::PoolChange;

/// How long an IP a pool gave back (shrink, delete) cools down before any
/// pool may carve it again, unless `Ipam::with_cooldown` says otherwise
/// (ipamd's `--ip-cooldown-seconds`).
pub const DEFAULT_IP_COOLDOWN_SECS: u64 = 600;

pub struct Ipam {
    store: Arc<dyn Store>,
    /// Set when ipamd stops: open watches end, so shutdown does not wait on
    /// streams that never finish by themselves.
    shutdown: tokio::sync::watch::Sender<bool>,
    /// Seconds a given-back IP cools down.
    cooldown_secs: u64,
    /// The node's view of the store (`start_view`), for its ToR.
    view: std::sync::OnceLock<view::View>,
    /// The node this daemon serves (`serve_node`): the view answers for
    /// its attachments only (`find.rs`).
    node: std::sync::OnceLock<String>,
    /// Per pool, this daemon's turn to write: ADDs go in batches
    /// (`batch.rs`), every other change of the pool takes the turn alone
    /// (`pool_turn`), so the daemon's own writes never make each other
    /// retry; other daemons are kept apart by the CAS checks.
    adds: batch::Batcher<attach::Waiting, crate::error::Result<Allocation>>,
}

/// What `pool create` asks for.
#[derive(Debug, Clone, Default)]
pub struct PoolSpec {
    pub name: String,
    pub namespace: String,
    pub app: String,
    /// 0 = the default (30).
    pub size: u32,
    /// Empty = every ToR.
    pub tors: Vec<String>,
    pub policy: Policy,
    /// Other namespaces whose pods may name the pool; `*` = all.
    pub allow_namespaces: Vec<String>,
    /// Bring your own: exactly these IPs, instead of `size` carved ones
    /// (`size` is then 0 or their number).
    pub ips: Vec<IpAddr>,
    /// Pods may take the new IPs only this many seconds after they are
    /// carved (whitelist syncers push them first).
    pub delay_secs: u64,
    /// The workload the pool follows (the controller's pools).
    pub owner: Option<PoolOwner>,
    /// Pods that keep `ips` in order from the start (a StatefulSet's
    /// ordinals: db-0 the first IP), bound in the creating transaction so
    /// no pod can take another's IP in between.
    pub bind: Vec<PodRef>,
    /// Which families its pods get; None: every family all its ToRs have.
    pub family: Option<IpFamily>,
}

/// Where a pod's pool may come from, in the order they are tried. Without
/// the Kubernetes API only `explicit` (MOOR_POOL or the config's pool) and
/// `app` (read from the pod's name) are known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolChoice {
    /// Named by the call itself (MOOR_POOL in CNI_ARGS): used as is.
    pub explicit: Option<String>,
    /// The pod's `moor.io/pool` annotation.
    pub pod_annotation: Option<String>,
    /// The pod's workload: the pool registered for (namespace, app).
    pub app: Option<String>,
    /// The namespace's `moor.io/pool` annotation.
    pub namespace_annotation: Option<String>,
    /// The network config's pool, the last default.
    pub default: Option<String>,
    /// The choice was read from the Kubernetes API (annotations apply).
    pub from_api: bool,
    /// The pod's controller is a workload kind whose pool moor's
    /// controller makes from its `moor.io/pool-size` (StatefulSet,
    /// ReplicaSet, DaemonSet, Job): a missing pool may be on its way.
    pub declarable: bool,
}

impl PoolChoice {
    /// Without the Kubernetes API: `explicit` (MOOR_POOL, else the network
    /// config's pool) or the app read from the pod's name, as Kubernetes
    /// builds names (`web-3` is StatefulSet `web`'s, and stable;
    /// `web-7d9f8c6b5-x2x9z` Deployment `web`'s). Returns the choice and
    /// whether the pod's name is stable.
    pub fn by_name(pod: &PodRef, explicit: Option<String>) -> (Self, bool) {
        let w = pod
            .is_known()
            .then(|| crate::core::workload::workload_of(&pod.name));
        let stable = w.as_ref().is_some_and(|w| w.stable_name);
        let choice = PoolChoice {
            explicit,
            app: w.map(|w| w.app),
            ..Default::default()
        };
        (choice, stable)
    }

    /// With the Kubernetes API: the pod's annotation, then its workload's
    /// pool (the app its controller names), its namespace's annotation
    /// (`namespace_annotation`, read by the caller), then `default`. The
    /// node agent's ADD and the controller's admission webhook both decide
    /// so, and must agree: the webhook steers a pod to the ToRs of the pool
    /// its ADD will draw from. Returns the choice and whether the pod's
    /// name is stable (by `sticky`).
    pub fn from_api(
        pod: &PodFacts,
        namespace_annotation: Option<String>,
        default: Option<String>,
        sticky: &[OwnerKind],
    ) -> (Self, bool) {
        let w = crate::core::pod::workload(pod, sticky);
        let choice = PoolChoice {
            explicit: None,
            pod_annotation: pod.pool_annotation().map(str::to_string),
            from_api: true,
            // A bare pod created with only a generateName has no app yet.
            app: Some(w.app).filter(|a| !a.is_empty()),
            namespace_annotation,
            default,
            declarable: crate::core::pod::declarable(pod),
        };
        (choice, w.stable_name)
    }
}

/// One ADD as the allocation service sees it.
#[derive(Debug, Clone)]
pub struct AllocRequest {
    pub key: AttachmentKey,
    pub pod: PodRef,
    /// Where the pod's pool comes from.
    pub choice: PoolChoice,
    /// The pod's name (and so its IP) survives its re-creation: a
    /// StatefulSet's pod, a bare pod. The `auto` policy keeps its IP.
    pub stable: bool,
    pub netns: String,
    pub network: String,
    /// The ToR of this node.
    pub tor: String,
    pub now_unix: u64,
}

impl AllocRequest {
    /// An ADD as the tests of several layers build it: pod `default/<pod>`
    /// (workload read from its name), netns `/run/netns/<cid>`, ifname eth0,
    /// network `moor`.
    #[cfg(test)]
    pub(crate) fn for_test(node: &str, tor: &str, cid: &str, pod: &str, now_unix: u64) -> Self {
        let pod = PodRef {
            namespace: "default".into(),
            name: pod.into(),
            uid: String::new(),
        };
        let (choice, stable) = PoolChoice::by_name(&pod, None);
        AllocRequest {
            key: AttachmentKey {
                node: node.into(),
                container_id: cid.into(),
                ifname: "eth0".into(),
            },
            pod,
            choice,
            stable,
            netns: format!("/run/netns/{cid}"),
            network: "moor".into(),
            tor: tor.into(),
            now_unix,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Allocation {
    pub lease: Lease,
    pub tor: Tor,
    /// The attachment existed before this call (a repeated ADD).
    pub existing: bool,
    /// Found existing only after this call's own commit went unanswered
    /// (the store may have applied it): it may be the attachment this call
    /// made, not yet wired.
    pub after_lost_reply: bool,
}

impl Allocation {
    pub fn attachment(&self) -> &Attachment {
        self.lease
            .attachment
            .as_ref()
            .expect("allocations are attached")
    }

    /// Where it is, (pool, IP): what `release_at` reads first.
    pub fn at(&self) -> Option<(&str, IpAddr)> {
        Some((self.lease.pool.as_str(), self.lease.ip))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    pub ip: IpAddr,
    pub pool: String,
    pub binding_kept: bool,
    pub attachment: Attachment,
}

/// An IP of a pool as `ipamctl ip` shows it.
#[derive(Debug, Clone)]
pub struct IpView {
    pub ip: IpAddr,
    /// A dual-stack pool's IPv6 partner of `ip`.
    pub ipv6: Option<std::net::Ipv6Addr>,
    pub pool: String,
    pub tor: String,
    pub lease: Option<Lease>,
}

impl Ipam {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            shutdown: tokio::sync::watch::channel(false).0,
            cooldown_secs: DEFAULT_IP_COOLDOWN_SECS,
            view: std::sync::OnceLock::new(),
            node: std::sync::OnceLock::new(),
            adds: batch::Batcher::default(),
        }
    }

    /// Keeps a watch-fed view of what ADDs and DELs on ToR `tor` read, when
    /// the store can feed one (etcd): an ADD then costs one commit (and a
    /// returning pod one read), a DEL one read and one commit. Without it,
    /// or while it catches up, they read the store. Once per Ipam.
    pub fn start_view(&self, tor: &str) -> bool {
        if !self.store.keeps_history() || self.view.get().is_some() {
            return false;
        }
        let v = view::View::start(self.store.clone(), tor, self.shutdown.subscribe());
        self.view.set(v).is_ok()
    }

    /// The view, if there is one for ToR `tor`.
    pub fn view_for(&self, tor: &str) -> Option<&view::View> {
        self.view.get().filter(|v| v.tor() == tor)
    }

    /// IPs pools give back cool down for `secs` before any pool may carve
    /// them again (0: none).
    pub fn with_cooldown(mut self, secs: u64) -> Self {
        self.cooldown_secs = secs;
        self
    }

    pub fn cooldown_secs(&self) -> u64 {
        self.cooldown_secs
    }

    /// Ends every open watch (ipamd is stopping).
    pub fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// This daemon's turn to change pool `pool`, alone (see `adds`).
    async fn pool_turn(&self, pool: &str) -> tokio::sync::OwnedMutexGuard<()> {
        self.adds.turn(pool).await
    }
}
