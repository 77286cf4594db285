//! Growing and shrinking a pool. Growing carves more IPs (optionally
//! allocatable only after a whitelist delay); shrinking gives back IPs no
//! pod is bound to or uses, which then cool down before any pool may carve
//! them again.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;

use crate::core::{spread, validate, Lease, Pool, PoolOp, PoolStep};
use crate::error::{Error, Result};
use crate::store::retry::{cas, Attempt};
use crate::store::{keys, StoreExt, Txn};

use super::carving::{plan_counts, prune_delays, Clocked};
use super::pool_op::Finished;
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
    pub added: Vec<IpAddr>,
    /// Given back to their ToRs (cooling down).
    pub removed: Vec<IpAddr>,
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
        let _turn = self.pool_turn(name).await;
        // A change left half done is finished first.
        let before = match self.drive(name, now_unix).await? {
            (Finished::Done(p), _) => *p,
            (Finished::Gone, _) => {
                return Err(Error::NotFound(format!(
                    "pool {name} does not exist (ipamctl pool list)"
                )))
            }
        };
        let started = cas(self.store.as_ref(), "pool resize", || async move {
            let (mut pool, pool_entry) = self.pool_entry(name).await?;
            let current = pool.size();
            let mut txn = Txn::default();
            let step = if size > current {
                let tors = self.pool_tors(&pool.tors).await?;
                prune_delays(&mut pool, at.now);
                PoolStep::Carving {
                    creating: false,
                    todo: plan_counts(name, pool.family, &tors, size - current, at)?,
                    explicit: BTreeMap::new(),
                    carved: BTreeMap::new(),
                    bind: Vec::new(),
                    allocatable_after: if at.delay_secs > 0 {
                        at.now + at.delay_secs
                    } else {
                        0
                    },
                }
            } else if size < current {
                let (leases, rev) = self.store.list_json::<Lease>(&keys::leases(name)).await?;
                let busy: HashSet<IpAddr> = leases.iter().map(|(l, _)| l.ip).collect();
                let is_busy = |ip| busy.contains(&ip);
                let drop = match spread::shrink(&pool.ips, &is_busy, current - size) {
                    Ok(d) => d,
                    Err(0) if r.as_far_as_possible => return Ok(Attempt::Done(false)),
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
                let mut by_tor: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
                for ip in drop {
                    let tor = pool.tor_of(ip).expect("IPs of the pool").to_string();
                    by_tor.entry(tor).or_default().push(ip);
                }
                for ips in by_tor.values_mut() {
                    ips.sort();
                }
                // No lease appeared on an IP we drop since we read them;
                // from this commit on no ADD takes one.
                txn.expect_prefix_unchanged(&keys::leases(name), rev);
                PoolStep::GivingBack {
                    ips: by_tor,
                    cooling_until: at.now + at.cooldown_secs,
                }
            } else {
                return Ok(Attempt::Done(false));
            };
            pool.op = Some(PoolOp {
                since_unix: at.now,
                why: None,
                step,
            });
            txn.expect(&keys::pool(name), Some(&pool_entry))
                .put(&keys::pool(name), &pool);
            Ok(Attempt::Commit(txn, true))
        })
        .await?;
        if !started {
            return Ok(Resized {
                pool: before,
                added: Vec::new(),
                removed: Vec::new(),
            });
        }
        let pool = match self.drive(name, now_unix).await? {
            (Finished::Done(p), None) => *p,
            (_, Some(why)) => return Err(Error::Conflict(why)),
            (Finished::Gone, None) => {
                return Err(Error::NotFound(format!(
                    "pool {name} was deleted while it was being resized"
                )))
            }
        };
        let (old, new): (BTreeSet<IpAddr>, BTreeSet<IpAddr>) = (
            before.all_ips().into_iter().collect(),
            pool.all_ips().into_iter().collect(),
        );
        Ok(Resized {
            added: new.difference(&old).copied().collect(),
            removed: old.difference(&new).copied().collect(),
            pool,
        })
    }
}
