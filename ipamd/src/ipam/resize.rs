//! Growing and shrinking a pool. Growing carves more IPs (optionally
//! allocatable only after a whitelist delay); shrinking gives back IPs no
//! pod is bound to or uses, which then cool down before any pool may carve
//! them again.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use crate::core::{spread, validate, Lease, Pool};
use crate::error::{Error, Result};
use crate::store::retry::{cas, Attempt};
use crate::store::{keys, StoreExt, Txn};

use super::carving::{carve_into, prune_delays, publish_counts, Clocked};
use super::Ipam;

/// What a resize asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resize {
    pub size: u32,
    /// New IPs become allocatable this many seconds after they are carved.
    pub delay_secs: u64,
    /// Shrink as far as bound and in-use IPs allow, instead of refusing a
    /// shrink that cannot be done whole (the controller follows a workload
    /// this way; an operator's `pool resize` is refused).
    pub as_far_as_possible: bool,
}

/// What a resize did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resized {
    pub pool: Pool,
    pub added: Vec<Ipv4Addr>,
    /// Given back to their ToRs (cooling down).
    pub removed: Vec<Ipv4Addr>,
}

impl Ipam {
    /// `ipamctl pool resize`: exactly `size` IPs, or an error saying why not.
    pub async fn resize_pool(&self, name: &str, size: u32, now_unix: u64) -> Result<Pool> {
        let r = Resize {
            size,
            delay_secs: 0,
            as_far_as_possible: false,
        };
        Ok(self.resize_pool_with(name, &r, now_unix).await?.pool)
    }

    pub async fn resize_pool_with(&self, name: &str, r: &Resize, now_unix: u64) -> Result<Resized> {
        let size = validate::pool_size(r.size).map_err(Error::Invalid)?;
        let at = Clocked {
            now: now_unix,
            delay_secs: r.delay_secs,
            cooldown_secs: self.cooldown_secs,
        };
        let lock = self.pool_lock(name);
        let _guard = lock.lock().await;
        cas(self.store.as_ref(), "pool resize", || async move {
            let (mut pool, pool_entry) = self.pool_entry(name).await?;
            let current = pool.size();
            // Read before the leases: a lease change after this read also
            // changes a counter, and the counters' versions are checked.
            let (counters, _) = self.store.list(&keys::frees(name)).await?;
            let mut txn = Txn::default();
            let mut done = Resized {
                pool: pool.clone(),
                added: Vec::new(),
                removed: Vec::new(),
            };
            if size > current {
                let tors = self.pool_tors(&pool.tors).await?;
                prune_delays(&mut pool, at.now);
                done.added = carve_into(&mut pool, &tors, size - current, at, &mut txn)?;
            } else if size < current {
                let (leases, rev) = self.store.list_json::<Lease>(&keys::leases(name)).await?;
                let busy: HashSet<Ipv4Addr> = leases.iter().map(|(l, _)| l.ip).collect();
                let is_busy = |ip| busy.contains(&ip);
                let drop = match spread::shrink(&pool.ips, &is_busy, current - size) {
                    Ok(d) => d,
                    Err(0) if r.as_far_as_possible => return Ok(Attempt::Done(done)),
                    Err(can) if r.as_far_as_possible => {
                        spread::shrink(&pool.ips, &is_busy, can).expect("can drop that many")
                    }
                    Err(can) => return Err(Error::Conflict(format!(
                        "pool {name} cannot shrink from {current} to {size}: {} of its IPs are bound or in use, so it can shrink to {} at the least; release bindings first (ipamctl binding list --pool {name})",
                        busy.len(),
                        current - can
                    ))),
                };
                prune_delays(&mut pool, at.now);
                self.give_back(&mut pool, &drop, at, &mut txn).await?;
                // No lease appeared on an IP we drop since we read them.
                txn.expect_prefix_unchanged(&keys::leases(name), rev);
                done.removed = drop;
                done.removed.sort();
            } else {
                return Ok(Attempt::Done(done));
            }
            let leases = self.leases(name).await?;
            publish_counts(&mut txn, &pool, &leases, &counters);
            txn.expect(&keys::pool(name), Some(&pool_entry))
                .put(&keys::pool(name), &pool);
            done.pool = pool;
            Ok(Attempt::Commit(txn, done))
        })
        .await
    }
}
