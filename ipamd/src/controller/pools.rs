//! The first control loop: a workload that declares a pool
//! (`declared.rs`) gets it created as soon as the workload appears, before
//! any of its pods is scheduled.
//!
//! What it covers: StatefulSets and Deployments with `moor.io/pool-size`
//! (and `moor.io/tors`, `moor.io/policy`, `moor.io/pool`) get a pool of that
//! size for their app, created once through `Ipam::create_pool`. What it
//! does not (yet): other workload kinds, resizing to the annotation or the
//! replicas, deleting the pool with its workload, the whitelist ConfigMap,
//! Events for refusals (they are logged once per distinct error).
//!
//! Every pass checks the fence before each write and cuts the write off
//! when the fence closes. Two replicas that both believed they lead would
//! still not make two pools: the store's compare-and-swap lets one create
//! win and the other find it exists.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::error::Error;
use crate::ipam::Ipam;
use crate::kubernetes::workloads::Workloads;

use super::declared::declared_pool;
use super::leadership::Leadership;

/// Creates the pools workloads declare, while this replica leads.
pub struct DeclaredPools {
    pub ipam: Arc<Ipam>,
    pub workloads: Arc<Workloads>,
    pub leadership: Leadership,
    /// A full pass at least this often (a missed event or a failed create
    /// is retried).
    pub resync: Duration,
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    pub created: Vec<String>,
    pub failed: usize,
    /// Stopped early: the fence closed.
    pub fenced: bool,
}

impl DeclaredPools {
    /// One pass over every cached workload. `errors` remembers the last
    /// error of each workload so it is logged once, not on every pass.
    pub async fn pass(&self, errors: &mut BTreeMap<String, String>) -> Result<Pass, Error> {
        let mut pass = Pass::default();
        if self.leadership.check().is_err() {
            pass.fenced = true;
            return Ok(pass);
        }
        let have: BTreeSet<(String, String)> = self
            .ipam
            .pools()
            .await?
            .into_iter()
            .map(|p| (p.namespace, p.app))
            .collect();
        let mut seen = BTreeSet::new();
        for w in self.workloads.all() {
            let key = format!("{} {}/{}", w.kind, w.namespace, w.name);
            seen.insert(key.clone());
            let spec = match declared_pool(&w) {
                Ok(Some(spec)) => spec,
                Ok(None) => continue,
                Err(e) => {
                    if errors.get(&key) != Some(&e) {
                        warn!("{e}");
                        errors.insert(key, e);
                    }
                    continue;
                }
            };
            if have.contains(&(spec.namespace.clone(), spec.app.clone())) {
                errors.remove(&key);
                continue;
            }
            // The fence, right before the write; the write ends with it.
            let Ok(fence) = self.leadership.check() else {
                pass.fenced = true;
                return Ok(pass);
            };
            let created =
                match tokio::time::timeout(fence.remaining(), self.ipam.create_pool(&spec)).await {
                    Ok(r) => r,
                    Err(_) => {
                        pass.fenced = true;
                        return Ok(pass);
                    }
                };
            match created {
                Ok(pool) => {
                    let ips: usize = pool.ips.values().map(|v| v.len()).sum();
                    info!(pool = %pool.name, app = %format!("{}/{}", pool.namespace, pool.app), ips, tors = ?pool.tors, "created the pool {key} declares");
                    errors.remove(&key);
                    pass.created.push(pool.name);
                }
                Err(e) => {
                    pass.failed += 1;
                    let e = format!("{key}: pool {}: {e}", spec.name);
                    if errors.get(&key) != Some(&e) {
                        warn!("{e}");
                        errors.insert(key, e);
                    }
                }
            }
        }
        errors.retain(|k, _| seen.contains(k));
        Ok(pass)
    }

    /// Runs for as long as ipamd does: a pass at the start of each term, on
    /// every workload change and every `resync`, while leading.
    pub async fn run(self) {
        let mut changes = self.workloads.changes();
        let mut errors = BTreeMap::new();
        loop {
            let fence = self.leadership.acquired().await;
            // Let the caches fill before the first pass of a term.
            let _ = self.workloads.wait_ready(Duration::from_secs(5)).await;
            while self.leadership.check().map(|f| f.term) == Ok(fence.term) {
                if let Err(e) = self.pass(&mut errors).await {
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
