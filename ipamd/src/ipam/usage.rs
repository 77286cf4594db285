//! How full the pools on a ToR are, for metrics (`moor_pool_ips`): worked
//! out from the pools and their leases as `ipamctl pool show` does
//! (`core::pool_counts`), never stored (the store has no shared counter for
//! ADDs to conflict on), and never one read per pool.

use std::collections::{BTreeMap, HashMap};

use crate::core::{self, Lease, PoolCounts};
use crate::error::{Error, Result};
use crate::store::{keys, StoreExt};

use super::Ipam;

/// One pool's counts on one ToR segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUsage {
    pub pool: String,
    pub segment: String,
    pub counts: PoolCounts,
}

impl Ipam {
    /// The counts of every pool with IPs on ToR `tor` (its segments), per
    /// segment. On etcd from the node's view (no store request), and not at
    /// all while the view catches up: the fallback would read every lease
    /// of the cluster, on every node, at every scrape, just when etcd is
    /// already in trouble. On the embedded store (no view) from three reads:
    /// the ToRs, every pool and every lease.
    pub async fn usage_on(&self, tor: &str) -> Result<Vec<PoolUsage>> {
        self.start_view(tor);
        let view = self.view_for(tor);
        let viewed = view.and_then(|v| v.pool_counts());
        if viewed.is_none() && self.store.keeps_history() {
            return Err(Error::Unavailable {
                msg: format!("the view of ToR {tor} is catching up with the store"),
                source: None,
            });
        }
        let segments: Vec<String> = match view.and_then(|v| v.segments()) {
            Some(s) => s,
            None => self.segments_of(tor).await?,
        }
        .into_iter()
        .map(|t| t.name)
        .collect();
        let segments = &segments[..];
        let counts = match viewed {
            Some(c) => c,
            None => {
                let (leases, _) = self.store.list_json::<Lease>(keys::LEASES).await?;
                let mut by_pool: HashMap<String, Vec<Lease>> = HashMap::new();
                for (lease, entry) in leases {
                    if let Some(pool) = keys::lease_pool(&entry.key) {
                        by_pool.entry(pool.to_string()).or_default().push(lease);
                    }
                }
                self.pools()
                    .await?
                    .iter()
                    .filter(|p| p.ips.keys().any(|t| segments.contains(t)))
                    .map(|p| {
                        let leases = by_pool.get(&p.name).map_or(&[][..], Vec::as_slice);
                        (p.name.clone(), core::pool_counts(p, leases))
                    })
                    .collect()
            }
        };
        Ok(on_segments(counts, segments))
    }
}

/// The counts of `segments` only, sorted by pool then segment.
fn on_segments(
    counts: Vec<(String, BTreeMap<String, PoolCounts>)>,
    segments: &[String],
) -> Vec<PoolUsage> {
    let mut out: Vec<PoolUsage> = counts
        .into_iter()
        .flat_map(|(pool, per_segment)| {
            per_segment
                .into_iter()
                .filter(|(s, _)| segments.contains(s))
                .map(move |(segment, counts)| PoolUsage {
                    pool: pool.clone(),
                    segment,
                    counts,
                })
        })
        .collect();
    out.sort_by(|a, b| (&a.pool, &a.segment).cmp(&(&b.pool, &b.segment)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_keys_name_their_pool() {
        assert_eq!(keys::lease_pool("leases/web/10.0.0.1"), Some("web"));
        assert_eq!(keys::lease_pool("leases/web"), None);
        assert_eq!(keys::lease_pool("pools/web"), None);
    }

    #[test]
    fn only_this_tors_segments_are_kept_in_order() {
        let c = |total| PoolCounts {
            total,
            ..Default::default()
        };
        let counts = vec![
            (
                "web".to_string(),
                BTreeMap::from([("t1".into(), c(4)), ("t2".into(), c(6))]),
            ),
            ("db".to_string(), BTreeMap::from([("t1a".into(), c(2))])),
        ];
        let got = on_segments(counts, &["t1".into(), "t1a".into()]);
        let names: Vec<(&str, &str, u32)> = got
            .iter()
            .map(|u| (u.pool.as_str(), u.segment.as_str(), u.counts.total))
            .collect();
        assert_eq!(names, [("db", "t1a", 2), ("web", "t1", 4)]);
    }
}
