//! Pools: an app's IPs, carved from its ToRs before the app starts. Create,
//! resize, read, delete; and the per-(pool, ToR) free counts every change of
//! a pool's leases publishes in the same transaction.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;

use crate::core::{
    carve, spread, validate, Carved, FreeCount, Lease, Pool, Tor, DEFAULT_POOL_SIZE,
};
use crate::error::{Error, Result};
use crate::store::retry::{cas, Attempt};
use crate::store::{keys, Entry, StoreExt, Txn};

use super::{Ipam, PoolSpec};

impl Ipam {
    pub async fn create_pool(&self, spec: &PoolSpec) -> Result<Pool> {
        validate::pool_name(&spec.name).map_err(Error::Invalid)?;
        validate::namespace(&spec.namespace).map_err(Error::Invalid)?;
        validate::app(&spec.app).map_err(Error::Invalid)?;
        for ns in spec.allow_namespaces.iter().filter(|n| *n != "*") {
            moor_proto::fields::namespace("allowed namespace", ns)
                .map_err(|e| Error::Invalid(e.to_string()))?;
        }
        let size = if spec.size == 0 {
            DEFAULT_POOL_SIZE
        } else {
            validate::pool_size(spec.size).map_err(Error::Invalid)?
        };
        let lock = self.pool_lock(&spec.name);
        let _guard = lock.lock().await;
        cas(self.store.as_ref(), "pool create", || async move {
            if let Some((p, _)) = self.store.get_json::<Pool>(&keys::pool(&spec.name)).await? {
                return Err(Error::Conflict(format!(
                    "pool {} already exists (app {}/{}): resize it, or pick another name",
                    spec.name, p.namespace, p.app
                )));
            }
            let app_key = keys::app(&spec.namespace, &spec.app);
            if let Some((other, _)) = self.store.get_json::<String>(&app_key).await? {
                return Err(Error::Conflict(format!(
                    "app {}/{} already has pool {other}: one pool per app; resize that one",
                    spec.namespace, spec.app
                )));
            }
            let tors = self.pool_tors(&spec.tors).await?;
            let mut pool = Pool {
                name: spec.name.clone(),
                namespace: spec.namespace.clone(),
                app: spec.app.clone(),
                policy: spec.policy,
                tors: tors.iter().map(|(t, ..)| t.name.clone()).collect(),
                ips: BTreeMap::new(),
                allow_namespaces: spec.allow_namespaces.clone(),
            };
            let mut txn = Txn::default();
            carve_into(&mut pool, &tors, size, &mut txn)?;
            for (tor, ips) in &pool.ips {
                let n = ips.len() as u32;
                txn.put(
                    &keys::free(&pool.name, tor),
                    &FreeCount { total: n, free: n },
                );
            }
            txn.expect(&keys::pool(&pool.name), None)
                .expect(&app_key, None)
                .put(&keys::pool(&pool.name), &pool)
                .put(&app_key, &pool.name);
            Ok(Attempt::Commit(txn, pool))
        })
        .await
    }

    /// The ToRs a pool spreads over, with their carved records.
    async fn pool_tors(&self, names: &[String]) -> Result<Vec<(Tor, Carved, Option<Entry>)>> {
        let mut out = Vec::new();
        if names.is_empty() {
            let (tors, _) = self.store.list_json::<Tor>(keys::TORS).await?;
            if tors.is_empty() {
                return Err(Error::Invalid(
                    "no ToR is defined yet: add one with `ipamctl tor add NAME --subnet CIDR --gateway IP`".into(),
                ));
            }
            // By default a pool spreads over every ToR, on each ToR's own
            // segment; other segments are only used when a pool names them.
            for (t, _) in tors.into_iter().filter(|(t, _)| t.segment_of.is_none()) {
                let (c, e) = self.carved(&t.name).await?;
                out.push((t, c, e));
            }
        } else {
            for name in names {
                let Some(t) = self.tor(name).await? else {
                    return Err(Error::Invalid(format!(
                        "ToR {name} does not exist: add it with `ipamctl tor add {name} ...` or fix --tor"
                    )));
                };
                // One segment per ToR: a pod on a node of that ToR must
                // know which of the pool's subnets (and VLANs) it gets.
                if let Some((o, ..)) = out.iter().find(|(o, ..)| o.switch() == t.switch()) {
                    return Err(Error::Invalid(format!(
                        "--tor names {} and {}, two segments of ToR {}: a pool takes one segment per ToR; name one of them",
                        o.name,
                        t.name,
                        t.switch()
                    )));
                }
                let (c, e) = self.carved(name).await?;
                out.push((t, c, e));
            }
        }
        Ok(out)
    }

    pub async fn resize_pool(&self, name: &str, size: u32) -> Result<Pool> {
        let size = validate::pool_size(size).map_err(Error::Invalid)?;
        let lock = self.pool_lock(name);
        let _guard = lock.lock().await;
        cas(self.store.as_ref(), "pool resize", || async move {
            let (mut pool, pool_entry) = self.pool_entry(name).await?;
            let current = pool.size();
            // Read before the leases: a lease change after this read also
            // changes a counter, and the counters' versions are checked.
            let (counters, _) = self.store.list(&keys::frees(name)).await?;
            let mut txn = Txn::default();
            if size > current {
                let tors = self.pool_tors(&pool.tors).await?;
                carve_into(&mut pool, &tors, size - current, &mut txn)?;
            } else if size < current {
                let (leases, rev) = self.store.list_json::<Lease>(&keys::leases(name)).await?;
                let busy: HashSet<Ipv4Addr> = leases.iter().map(|(l, _)| l.ip).collect();
                let drop = spread::shrink(&pool.ips, &|ip| busy.contains(&ip), current - size)
                    .map_err(|can| {
                        Error::Conflict(format!(
                            "pool {name} cannot shrink from {current} to {size}: {} of its IPs are bound or in use, so it can shrink to {} at the least; release bindings first (ipamctl binding list --pool {name})",
                            busy.len(),
                            current - can
                        ))
                    })?;
                // Give the dropped IPs back to their ToRs.
                let mut by_tor: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
                for ip in drop {
                    let tor = pool
                        .tor_of(ip)
                        .expect("dropped IPs are the pool's")
                        .to_string();
                    by_tor.entry(tor).or_default().push(ip);
                }
                for (tor, ips) in by_tor {
                    let (mut carved, entry) = self.carved(&tor).await?;
                    for ip in &ips {
                        carved.ips.remove(ip);
                    }
                    let list = pool.ips.get_mut(&tor).expect("tor of the pool");
                    list.retain(|ip| !ips.contains(ip));
                    if list.is_empty() {
                        pool.ips.remove(&tor);
                    }
                    txn.expect(&keys::carved(&tor), entry.as_ref())
                        .put(&keys::carved(&tor), &carved);
                }
                // No lease appeared on an IP we drop since we read them.
                txn.expect_prefix_unchanged(&keys::leases(name), rev);
            } else {
                return Ok(Attempt::Done(pool));
            }
            let leases = self.leases(name).await?;
            publish_counts(&mut txn, &pool, &leases, &counters);
            txn.expect(&keys::pool(name), Some(&pool_entry))
                .put(&keys::pool(name), &pool);
            Ok(Attempt::Commit(txn, pool))
        })
        .await
    }

    pub(super) async fn pool_entry(&self, name: &str) -> Result<(Pool, Entry)> {
        self.store
            .get_json::<Pool>(&keys::pool(name))
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!("pool {name} does not exist (ipamctl pool list)"))
            })
    }

    pub async fn pools(&self) -> Result<Vec<Pool>> {
        let (pools, _) = self.store.list_json::<Pool>(keys::POOLS).await?;
        Ok(pools.into_iter().map(|(p, _)| p).collect())
    }

    pub async fn pool(&self, name: &str) -> Result<(Pool, Vec<Lease>)> {
        let (pool, _) = self.pool_entry(name).await?;
        let leases = self.leases(name).await?;
        Ok((pool, leases))
    }

    pub async fn leases(&self, pool: &str) -> Result<Vec<Lease>> {
        let (leases, _) = self.store.list_json::<Lease>(&keys::leases(pool)).await?;
        Ok(leases.into_iter().map(|(l, _)| l).collect())
    }

    pub async fn delete_pool(&self, name: &str) -> Result<()> {
        let lock = self.pool_lock(name);
        let _guard = lock.lock().await;
        let (pool, pool_entry) = self.pool_entry(name).await?;
        let (leases, rev) = self.store.list_json::<Lease>(&keys::leases(name)).await?;
        let attached: Vec<String> = leases
            .iter()
            .filter_map(|(l, _)| {
                l.attachment
                    .as_ref()
                    .map(|a| format!("{} ({})", l.ip, a.pod))
            })
            .collect();
        if !attached.is_empty() {
            return Err(Error::Conflict(format!(
                "pool {name} has {} IPs in use: {}; delete those pods first",
                attached.len(),
                attached.join(", ")
            )));
        }
        let mut txn = Txn::default();
        txn.expect(&keys::pool(name), Some(&pool_entry))
            .expect_prefix_unchanged(&keys::leases(name), rev)
            .delete(&keys::pool(name))
            .delete(&keys::app(&pool.namespace, &pool.app));
        for (lease, _) in &leases {
            txn.delete(&keys::lease(name, lease.ip));
            if let Some(pod) = &lease.binding {
                txn.delete(&keys::binding(pod));
            }
        }
        for (tor, ips) in &pool.ips {
            let (mut carved, entry) = self.carved(tor).await?;
            for ip in ips {
                carved.ips.remove(ip);
            }
            txn.expect(&keys::carved(tor), entry.as_ref())
                .put(&keys::carved(tor), &carved);
        }
        for e in self.store.list(&keys::frees(name)).await?.0 {
            txn.delete(&e.key);
        }
        if self.store.commit(txn).await? {
            Ok(())
        } else {
            Err(Error::Conflict(format!(
                "pool {name} changed while deleting it; run the command again"
            )))
        }
    }

    /// Adds to `txn` the published free count of (pool, tor) moved by
    /// `delta` (+1: a lease went away), guarded by the counter's version.
    pub(super) async fn bump_free(
        &self,
        txn: &mut Txn,
        pool: &str,
        tor: &str,
        delta: i64,
    ) -> Result<()> {
        let key = keys::free(pool, tor);
        if let Some((mut c, e)) = self.store.get_json::<FreeCount>(&key).await? {
            c.free = (i64::from(c.free) + delta).clamp(0, i64::from(c.total)) as u32;
            txn.expect(&key, Some(&e)).put(&key, &c);
        }
        Ok(())
    }
}

/// Carves `n` more IPs for `pool` over `tors`, weighted by each ToR's free
/// IPs, and adds the carved-record writes to `txn`.
fn carve_into(
    pool: &mut Pool,
    tors: &[(Tor, Carved, Option<Entry>)],
    n: u32,
    txn: &mut Txn,
) -> Result<()> {
    let free: BTreeMap<String, u32> = tors
        .iter()
        .map(|(t, c, _)| (t.name.clone(), carve::free_count(t, c)))
        .collect();
    let shares = spread::by_free(n, &free).map_err(|total| {
        Error::Invalid(format!(
            "pool {} needs {n} more IPs but ToRs {} have only {total} free: add ranges, add ToRs or ask for fewer",
            pool.name,
            free.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })?;
    for (tor, carved, entry) in tors {
        let share = shares[&tor.name];
        if share == 0 {
            continue;
        }
        let ips = carve::lowest_free(tor, carved, share);
        let mut carved = carved.clone();
        for ip in &ips {
            carved.ips.insert(*ip, pool.name.clone());
        }
        let list = pool.ips.entry(tor.name.clone()).or_default();
        list.extend(ips);
        list.sort();
        txn.expect(&keys::carved(&tor.name), entry.as_ref())
            .put(&keys::carved(&tor.name), &carved);
    }
    Ok(())
}

/// Adds to `txn` the pool's published free counts, recomputed from `leases`,
/// guarded by the versions of the counters read before them (`old`): any
/// lease change since then also moved a counter, and fails the commit.
fn publish_counts(txn: &mut Txn, pool: &Pool, leases: &[Lease], old: &[Entry]) {
    for e in old {
        txn.expect(&e.key, Some(e));
        if !pool.ips.keys().any(|t| keys::free(&pool.name, t) == e.key) {
            txn.delete(&e.key);
        }
    }
    for (tor, ips) in &pool.ips {
        let key = keys::free(&pool.name, tor);
        if !old.iter().any(|e| e.key == key) {
            txn.expect(&key, None);
        }
        let used = leases.iter().filter(|l| &l.tor == tor).count() as u32;
        let total = ips.len() as u32;
        txn.put(
            &key,
            &FreeCount {
                total,
                free: total.saturating_sub(used),
            },
        );
    }
}
