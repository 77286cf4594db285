//! A pool change in progress, as the pool record carries it (too big for
//! one transaction: see `ipam/pool_op.rs`), and the schema 2 records of
//! what is carved from a ToR segment. Serialized into the store like the
//! rest of `model.rs`: add fields with `#[serde(default)]`, never rename.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::model::{PodRef, Pool};

/// A pool change in progress, as the pool record carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolOp {
    /// When the change began (unix seconds). A finisher never uses an
    /// earlier time: cool-downs are then judged no later than they were.
    pub since_unix: u64,
    /// Set when the change failed and is being undone: why (the error the
    /// call that began it returns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    pub step: PoolStep,
}

/// What a pool change has left to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum PoolStep {
    /// Create or grow: carve `todo` more IPs (or exactly `explicit`) per
    /// ToR segment, then bind `bind`; the IPs carved so far (`carved`) are
    /// not the pool's (no pod gets them) until the last step moves them in.
    Carving {
        creating: bool,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        todo: BTreeMap<String, u32>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        explicit: BTreeMap<String, Vec<IpAddr>>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        carved: BTreeMap<String, Vec<IpAddr>>,
        /// Pods that keep an IP from the start (`pool create --bind`), not
        /// bound yet.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        bind: Vec<(PodRef, IpAddr)>,
        /// The new IPs are allocatable from then on (0: at once).
        #[serde(default)]
        allocatable_after: u64,
    },
    /// Shrink (or undo a grow): give `ips` back to their ToR segments,
    /// cooling down until `cooling_until`. No pod gets them meanwhile.
    GivingBack {
        ips: BTreeMap<String, Vec<IpAddr>>,
        cooling_until: u64,
    },
    /// Schema 2's last step, publishing free counts (schema 3 keeps none):
    /// a store migrated mid-change may hold it; finishing it ends the change.
    Counting { tors: Vec<String> },
    /// Delete (or undo a create): leases and bindings first, then the IPs
    /// go back per segment, then the pool and app records.
    Deleting {
        cooling_until: u64,
        #[serde(default)]
        leases_done: bool,
    },
}

impl PoolStep {
    /// The change in words, for messages.
    pub fn what(&self) -> &'static str {
        match self {
            PoolStep::Carving { creating: true, .. } => "being created",
            PoolStep::Carving { .. } => "growing",
            PoolStep::GivingBack { .. } => "giving IPs back",
            PoolStep::Counting { .. } => "finishing a change",
            PoolStep::Deleting { .. } => "being deleted",
        }
    }
}

/// A pool's IPs on one ToR segment (`carved/<tor>/<pool>`), ascending.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarvedShare {
    pub ips: Vec<IpAddr>,
}

/// IPs of a ToR segment that pools gave back and when (unix seconds) any
/// pool may carve them again (`carved/<tor>/_cooling`). Entries in the past
/// are dropped by the next write under the segment's prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cooling {
    pub until: BTreeMap<IpAddr, u64>,
}

impl Pool {
    /// Whether `ip` is on its way out of the pool (a shrink in progress):
    /// no pod may take it.
    pub fn leaving(&self, ip: IpAddr) -> bool {
        matches!(&self.op, Some(PoolOp { step: PoolStep::GivingBack { ips, .. }, .. })
            if ips.values().any(|v| v.contains(&ip)))
    }

    /// Whether no pod may take any IP of the pool now: it is being
    /// created or deleted. Says which.
    pub fn closed(&self) -> Option<&'static str> {
        match &self.op {
            Some(PoolOp {
                step: s @ (PoolStep::Carving { creating: true, .. } | PoolStep::Deleting { .. }),
                ..
            }) => Some(s.what()),
            _ => None,
        }
    }
}
