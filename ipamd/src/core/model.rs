//! The records moor keeps, in the words of BRIEF.md. They are serialized as
//! JSON into the store (redb or etcd), so field names are part of the on-disk
//! format: add fields with `#[serde(default)]`, never rename.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};

use serde::{Deserialize, Serialize};

pub use super::family::{Family, IpFamily, IpRange};
use super::pool_change::PoolOp;
pub use super::tor::{segments_of, Tor};

/// Whether a pod keeps its IP after DEL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Pods with a stable name (StatefulSet ordinal, bare pod) keep their IP;
    /// generated names (Deployment, DaemonSet, Job) give it back.
    #[default]
    Auto,
    /// Every pod keeps its IP until `ipamctl ip release`.
    Sticky,
    /// Every pod gives its IP back on DEL.
    Release,
}

impl Policy {
    pub fn as_str(&self) -> &'static str {
        match self {
            Policy::Auto => "auto",
            Policy::Sticky => "sticky",
            Policy::Release => "release",
        }
    }

    /// Whether a pod of this pool keeps its IP, given what its name says.
    pub fn keeps_ip(&self, stable_name: bool) -> bool {
        match self {
            Policy::Auto => stable_name,
            Policy::Sticky => true,
            Policy::Release => false,
        }
    }
}

pub const DEFAULT_POOL_SIZE: u32 = 30;

/// An app's pool: the IPs its pods may use, carved from one or more ToRs before
/// any pod starts, so they can be put into whitelists first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub name: String,
    pub namespace: String,
    pub app: String,
    pub policy: Policy,
    /// The ToRs the pool was asked to spread over (its IPs may be on fewer when
    /// a ToR was full).
    pub tors: Vec<String>,
    /// The pool's IPs per ToR, ascending. `size` is their total.
    pub ips: BTreeMap<String, Vec<IpAddr>>,
    /// Which families its pods get. `ips` are IPv4 addresses for an IPv4
    /// or dual-stack pool (a pod's IPv6 address is its IPv4 one's partner
    /// on the segment, `Tor::partner`), IPv6 ones for an IPv6-only pool.
    /// Written into every pool by the migration to schema 4.
    #[serde(default)]
    pub family: IpFamily,
    /// Other namespaces whose pods may name this pool by annotation
    /// (`moor.io/pool`); `*`: all. A pod of the pool's own namespace always
    /// may. (Added after schema version 1 without a migration: an absent
    /// field reads as empty.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_namespaces: Vec<String>,
    /// IPs a pod may take only from this time on (unix seconds): carved
    /// with a whitelist delay (`moor.io/whitelist-delay`), so whitelist
    /// syncers push them before any pod uses them. Entries in the past mean
    /// nothing and are dropped by the pool's next change.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub allocatable_after: BTreeMap<IpAddr, u64>,
    /// The workload the pool follows, when the controller made or adopted
    /// it from the workload's annotations; None: made by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<PoolOwner>,
    /// A change too big for one transaction, in progress (create, resize,
    /// delete): what is left to do, so whoever reads the pool next (the
    /// call that began it, or a restarted ipamd) can finish it. Every step
    /// rewrites this record, so its version serializes the steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<PoolOp>,
}

/// The workload a declared pool follows: the controller resizes the pool
/// with it and deletes the pool once it is gone (unless `retain`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolOwner {
    /// `StatefulSet`, `Deployment`, `DaemonSet`, `ReplicaSet`, `Job`.
    pub kind: String,
    /// In the pool's namespace.
    pub name: String,
    pub uid: String,
    /// `moor.io/retain: "true"`: the pool outlives the workload.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retain: bool,
}

impl Pool {
    /// Whether a pod of `namespace` may name this pool.
    pub fn allows(&self, namespace: &str) -> bool {
        self.namespace == namespace
            || self
                .allow_namespaces
                .iter()
                .any(|n| n == namespace || n == "*")
    }

    pub fn size(&self) -> u32 {
        self.ips.values().map(|v| v.len() as u32).sum()
    }

    pub fn tor_of(&self, ip: IpAddr) -> Option<&str> {
        self.ips
            .iter()
            .find(|(_, ips)| ips.binary_search(&ip).is_ok())
            .map(|(t, _)| t.as_str())
    }

    pub fn all_ips(&self) -> Vec<IpAddr> {
        let mut v: Vec<_> = self.ips.values().flatten().copied().collect();
        v.sort();
        v
    }

    /// Whether a pod may take `ip` at `now_unix` (its whitelist delay, if
    /// any, has passed).
    pub fn allocatable(&self, ip: IpAddr, now_unix: u64) -> bool {
        self.allocatable_after
            .get(&ip)
            .is_none_or(|t| *t <= now_unix)
    }
}

/// Which IPs of a ToR segment are carved into which pool, and which cool
/// down: the view of every record under `carved/<tor>/` (schema 2), or the
/// single `carved/<tor>` record of schema 1. Changed only by pool
/// create/resize/delete, so allocation never contends on it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carved {
    pub ips: BTreeMap<IpAddr, String>,
    /// IPs a shrunk or deleted pool gave back, and when (unix seconds) any
    /// pool may carve them again: a database that still trusts such an IP
    /// must not see another app's pod on it before its whitelist is
    /// updated (`--ip-cooldown-seconds`). Entries in the past mean nothing
    /// and are dropped by the record's next change.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cooling: BTreeMap<IpAddr, u64>,
}

/// A pod as kubelet names it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub uid: String,
}

impl PodRef {
    pub fn is_known(&self) -> bool {
        !self.namespace.is_empty() && !self.name.is_empty()
    }
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The CNI attachment key: one container interface on one node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttachmentKey {
    pub node: String,
    pub container_id: String,
    pub ifname: String,
}

impl std::fmt::Display for AttachmentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} on {}", self.container_id, self.ifname, self.node)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachmentState {
    /// Recorded before the datapath is wired. Found at start-up, it means ipamd
    /// died mid-ADD: the runtime got no result, so it is rolled back.
    Pending,
    /// Wired and reported to the runtime.
    Ready,
}

/// The live use of an IP by one container interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub key: AttachmentKey,
    pub pod: PodRef,
    pub netns: String,
    pub network: String,
    pub state: AttachmentState,
    pub created_unix: u64,
    /// This ADD created the pod's binding; rolling the ADD back drops it too.
    #[serde(default)]
    pub created_binding: bool,
}

/// What is known of one IP of a pool that is not free. A free IP has no lease
/// record at all; the record exists while the IP is bound, attached or both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub ip: IpAddr,
    /// A dual-stack pod's IPv6 address (the partner of `ip` on its
    /// segment), set by the ADD that attaches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    pub pool: String,
    pub tor: String,
    /// The pod this IP is kept for (sticky).
    pub binding: Option<PodRef>,
    pub attachment: Option<Attachment>,
    /// `ipamctl ip evict`: the binding goes with the holder's DEL.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub evict: bool,
    /// Another interface answered for this IP (the duplicate-address probe):
    /// no pod gets it until `ipamctl ip release`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<Quarantine>,
}

/// Why an IP is out of use: who else was heard using it, where and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantine {
    /// The MAC that answered for the IP.
    pub mac: String,
    /// The node whose probe heard it.
    pub node: String,
    pub since_unix: u64,
}

impl Lease {
    /// Whether the IP is attached to the container interface `key`.
    pub fn attached_to(&self, key: &AttachmentKey) -> bool {
        self.attachment.as_ref().is_some_and(|a| &a.key == key)
    }

    pub fn state(&self) -> IpState {
        match (&self.binding, &self.attachment, &self.quarantine) {
            (_, Some(_), _) => IpState::InUse,
            (_, None, Some(_)) => IpState::Quarantined,
            (Some(_), None, None) => IpState::Bound,
            (None, None, None) => IpState::Free,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpState {
    Free,
    Bound,
    InUse,
    Quarantined,
}

impl IpState {
    pub fn as_str(&self) -> &'static str {
        match self {
            IpState::Free => "free",
            IpState::Bound => "bound",
            IpState::InUse => "in-use",
            IpState::Quarantined => "quarantined",
        }
    }
}

/// A pod's binding: where its IP is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub pod: PodRef,
    pub pool: String,
    pub ip: IpAddr,
    pub tor: String,
}

/// Index entry from an attachment key to its IP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentRef {
    pub pool: String,
    pub ip: IpAddr,
}

/// How many of a pool's IPs on one ToR segment are free: worked out from
/// the pool and its leases when asked (`free_counts`), never stored, so no
/// ADD or DEL has a shared counter to write (they would all conflict on it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreeCount {
    /// IPs of the pool on the ToR.
    pub total: u32,
    /// Of those, neither bound nor in use.
    pub free: u32,
}

/// Per-ToR counts of a pool, as `ipamctl pool show` prints them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolCounts {
    pub total: u32,
    pub bound: u32,
    pub in_use: u32,
    pub free: u32,
}

/// The pool's free counts per segment, from the IPs that have a lease (a
/// lease exists while its IP is bound, in use or quarantined). Leases of IPs
/// the pool no longer holds count nowhere.
pub fn free_counts(
    pool: &Pool,
    leased: impl IntoIterator<Item = IpAddr>,
) -> BTreeMap<String, FreeCount> {
    let mut out: BTreeMap<String, FreeCount> = pool
        .ips
        .iter()
        .map(|(tor, ips)| {
            let total = ips.len() as u32;
            (tor.clone(), FreeCount { total, free: total })
        })
        .collect();
    for ip in leased {
        if let Some(c) = pool.tor_of(ip).and_then(|t| out.get_mut(t)) {
            c.free = c.free.saturating_sub(1);
        }
    }
    out
}

/// Counts the pool's IPs on each ToR from its leases.
pub fn pool_counts<'a>(
    pool: &Pool,
    leases: impl IntoIterator<Item = &'a Lease>,
) -> BTreeMap<String, PoolCounts> {
    let mut out: BTreeMap<String, PoolCounts> = BTreeMap::new();
    for (tor, ips) in &pool.ips {
        let c = out.entry(tor.clone()).or_default();
        c.total = ips.len() as u32;
        c.free = c.total;
    }
    for lease in leases.into_iter().filter(|l| l.pool == pool.name) {
        let Some(tor) = pool.tor_of(lease.ip) else {
            continue;
        };
        let c = out.entry(tor.to_string()).or_default();
        match lease.state() {
            IpState::InUse => c.in_use += 1,
            // Kept from pods either way: for one that is not running, or
            // from all of them until an operator clears the conflict.
            IpState::Bound | IpState::Quarantined => c.bound += 1,
            IpState::Free => continue,
        }
        c.free -= 1;
    }
    out
}

/// A node whose heartbeat is older than this is not alive (three missed beats).
pub const ALIVE_WITHIN: u64 = 30;

/// A node as the registry (`nodes/<name>`) records it; refreshed by its
/// heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub tor: String,
    pub mode: String,
    pub version: String,
    pub started_unix: u64,
    pub heartbeat_unix: u64,
}

impl NodeRecord {
    pub fn alive(&self, now_unix: u64) -> bool {
        now_unix.saturating_sub(self.heartbeat_unix) < ALIVE_WITHIN
    }
}
