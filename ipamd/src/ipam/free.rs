//! Free counts, worked out when asked from a pool and the keys of its
//! leases (`core::free_counts`). No ADD or DEL writes a count: a count every
//! ADD of a pool rewrote was a record ADDs from many nodes conflicted on, and
//! a write and a watch event more per ADD. Readers: the admission webhook
//! (`schedule`), CNI STATUS, tests.

use std::collections::BTreeMap;

use crate::core::{self, FreeCount, Pool};
use crate::error::Result;
use crate::store::keys;

use super::Ipam;

impl Ipam {
    /// The free counts of `pool` on each segment it has IPs on: one read of
    /// its lease keys (no values).
    pub async fn free_counts(&self, pool: &Pool) -> Result<BTreeMap<String, FreeCount>> {
        let leased = self.store.list_keys(&keys::leases(&pool.name)).await?;
        Ok(from_lease_keys(pool, &leased))
    }

    /// Free IPs over every pool with IPs on `segments` (those of this node's
    /// ToR `tor`), and how many such pools. From the node's view when it
    /// follows them all, else one read of the pools and one per pool there.
    pub async fn free_on(&self, tor: &str, segments: &[String]) -> Result<(u32, u32)> {
        let counts = match self.view_for(tor).and_then(|v| v.free_counts()) {
            Some(counts) => counts,
            None => {
                let mut counts = Vec::new();
                // A pool record that does not decode fails the ADDs of its
                // pool, naming it; the node stays ready for the others (its
                // IPs are left out of the count).
                for pool in self.pools_readable().await?.0 {
                    if pool.ips.keys().any(|t| segments.contains(t)) {
                        counts.push(self.free_counts(&pool).await?);
                    }
                }
                counts
            }
        };
        let (mut free, mut pools) = (0, 0);
        for pool in counts {
            let here: Vec<&FreeCount> = pool
                .iter()
                .filter(|(seg, c)| c.total > 0 && segments.contains(seg))
                .map(|(_, c)| c)
                .collect();
            if !here.is_empty() {
                pools += 1;
                free += here.iter().map(|c| c.free).sum::<u32>();
            }
        }
        Ok((free, pools))
    }
}

/// `pool`'s free counts from the keys under its `leases/<pool>/` prefix.
pub(super) fn from_lease_keys(pool: &Pool, leased: &[String]) -> BTreeMap<String, FreeCount> {
    let prefix = keys::leases(&pool.name);
    core::free_counts(
        pool,
        leased
            .iter()
            .filter_map(|k| k.get(prefix.len()..)?.parse().ok()),
    )
}

#[cfg(test)]
impl Ipam {
    /// Pool `name`'s free count on segment `seg` (tests).
    pub(crate) async fn free_count(&self, name: &str, seg: &str) -> FreeCount {
        let (pool, _) = self.pool_entry(name).await.unwrap();
        let counts = self.free_counts(&pool).await.unwrap();
        counts.get(seg).copied().unwrap_or_default()
    }
}
