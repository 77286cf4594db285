//! The pools loop: pools follow the workloads that declare them
//! (`declared.rs`). A workload's pool is made as soon as the workload
//! appears, before any of its pods is scheduled; it grows and shrinks with
//! the workload (`follow.rs`), its IPs are published in a ConfigMap, and it
//! is deleted once the workload is gone and none of its IPs is in use
//! (`retire.rs`). Every change is logged and reported as an Event on the
//! workload, with why.
//!
//! Every write (store or API) is preceded by a check of the fence and cut
//! off when the fence closes. Two replicas that both believed they lead
//! would still not make two pools: the store's compare-and-swap lets one
//! create win and the other find it exists.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use crate::clock::Clock;
use crate::core::Pool;
use crate::error::Error;
use crate::ipam::Ipam;
use crate::kubernetes::configmaps::ConfigMaps;
use crate::kubernetes::events::{EventType, Events, Involved};
use crate::kubernetes::workloads::{Workload, Workloads};

use super::declared::declared_pool;
use super::leadership::Leadership;
use super::retire::WorkloadKey;

/// Makes, resizes, publishes and deletes the pools workloads declare,
/// while this replica leads.
pub struct DeclaredPools {
    pub ipam: Arc<Ipam>,
    pub workloads: Arc<Workloads>,
    pub leadership: Leadership,
    pub configmaps: ConfigMaps,
    pub events: Arc<Events>,
    pub clock: Arc<dyn Clock>,
    /// A full pass at least this often (a missed event, a failed write, a
    /// pool waiting for its last IP to be released).
    pub resync: Duration,
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    pub created: Vec<String>,
    pub resized: Vec<String>,
    pub deleted: Vec<String>,
    /// Pools whose ConfigMap was written.
    pub published: Vec<String>,
    /// Stopped early: the fence closed.
    pub fenced: bool,
}

/// What the loop remembers between passes of one term.
#[derive(Debug, Default)]
pub struct Memory {
    /// The last message of each (object, kind of problem), so a problem is
    /// logged and reported once, not on every pass.
    pub(super) said: BTreeMap<String, String>,
    /// What each pool's ConfigMap was last written with (pool -> IPs and
    /// owner uid), so an unchanged pool costs no API request.
    pub(super) published: HashMap<String, (Vec<IpAddr>, String)>,
}

/// The fence closed during a pass: stop writing.
#[derive(Debug)]
pub(super) struct Fenced;

/// The pools as one pass sees them, kept current as it changes them.
pub(super) struct Pools {
    pub by_name: BTreeMap<String, Pool>,
    /// Every workload of the caches: (kind, namespace, name).
    pub present: HashSet<WorkloadKey>,
}

impl Pools {
    pub fn of_app(&self, namespace: &str, app: &str) -> Option<&Pool> {
        self.by_name
            .values()
            .find(|p| p.namespace == namespace && p.app == app)
    }
}

impl DeclaredPools {
    /// One pass over every cached workload and every pool.
    pub async fn pass(&self, mem: &mut Memory) -> Result<Pass, Error> {
        let mut pass = Pass::default();
        if self.leadership.check().is_err() {
            pass.fenced = true;
            return Ok(pass);
        }
        let workloads = self.workloads.all();
        let mut pools = Pools {
            by_name: self
                .ipam
                .pools()
                .await?
                .into_iter()
                .map(|p| (p.name.clone(), p))
                .collect(),
            present: workloads
                .iter()
                .map(|w| (w.kind.to_string(), w.namespace.clone(), w.name.clone()))
                .collect(),
        };
        let mut seen = BTreeSet::new();
        // What each workload follows now: Some(pool), or None when it
        // declares nothing; absent when its annotations are wrong.
        let mut following: HashMap<WorkloadKey, Option<String>> = HashMap::new();
        for w in &workloads {
            seen.insert(w.describe());
            let key = (w.kind.to_string(), w.namespace.clone(), w.name.clone());
            let d = match declared_pool(w) {
                Ok(Some(d)) => d,
                Ok(None) => {
                    following.insert(key, None);
                    continue;
                }
                Err(e) => {
                    self.say(mem, w, EventType::Warning, "MoorPoolInvalid", &e);
                    continue;
                }
            };
            match self.follow(w, &d, &mut pools, mem, &mut pass).await {
                Ok(Some(pool)) => {
                    following.insert(key, Some(pool));
                }
                // Refused: its pool (if any) is left as it is.
                Ok(None) => {}
                Err(Fenced) => {
                    pass.fenced = true;
                    return Ok(pass);
                }
            }
        }
        if self
            .retire(&following, &pools, mem, &mut pass)
            .await
            .is_err()
        {
            pass.fenced = true;
        }
        // Forget what was said about workloads that are gone (keys are
        // "<workload> <reason>"; a reason has no space).
        mem.said.retain(|k, _| {
            k.starts_with("pool ") || k.rsplit_once(' ').is_some_and(|(w, _)| seen.contains(w))
        });
        Ok(pass)
    }

    /// Runs `write` if this replica leads, cut off when its fence closes.
    pub(super) async fn fenced<T>(&self, write: impl Future<Output = T>) -> Result<T, Fenced> {
        // The fence, right before the write; the write ends with it.
        let fence = self.leadership.check().map_err(|_| Fenced)?;
        tokio::time::timeout(fence.remaining(), write)
            .await
            .map_err(|_| Fenced)
    }

    /// Logs `message` and reports it as an Event on `w`, once per distinct
    /// message of that reason.
    pub(super) fn say(
        &self,
        mem: &mut Memory,
        w: &Workload,
        type_: EventType,
        reason: &str,
        message: &str,
    ) {
        let key = format!("{} {reason}", w.describe());
        if mem.said.get(&key).map(String::as_str) == Some(message) {
            return;
        }
        match type_ {
            EventType::Warning => warn!(workload = %w.describe(), reason, "{message}"),
            EventType::Normal => tracing::info!(workload = %w.describe(), reason, "{message}"),
        }
        self.event(&involved(w), type_, reason, message);
        mem.said.insert(key, message.to_string());
    }

    /// Reports an Event (only while leading: a deposed leader says
    /// nothing).
    pub(super) fn event(&self, obj: &Involved, type_: EventType, reason: &str, message: &str) {
        if self.leadership.is_leader() {
            crate::metrics::global().controller_action(reason);
            self.events.report_on(obj, type_, reason, message);
        }
    }

    /// Runs for as long as ipamd does: a pass at the start of each term, on
    /// every workload change and every `resync`, while leading.
    pub async fn run(self) {
        let mut changes = self.workloads.changes();
        loop {
            let fence = self.leadership.acquired().await;
            // A new term starts from what the store and the API say now.
            let mut mem = Memory::default();
            // Let the caches fill before the first pass of a term.
            let _ = self.workloads.wait_ready(Duration::from_secs(5)).await;
            while self.leadership.check().map(|f| f.term) == Ok(fence.term) {
                if let Err(e) = self.pass(&mut mem).await {
                    warn!(error = %e, "declared pools: pass failed; retrying");
                }
                if let Ok(Err(_)) = tokio::time::timeout(self.resync, changes.changed()).await {
                    // The watches ended (ipamd is stopping): resync only.
                    tokio::time::sleep(self.resync).await;
                }
            }
        }
    }
}

/// The Event subject for a workload.
pub(super) fn involved(w: &Workload) -> Involved {
    Involved {
        api_version: w.api_version.to_string(),
        kind: w.kind.to_string(),
        namespace: w.namespace.clone(),
        name: w.name.clone(),
        uid: w.uid.clone(),
    }
}
