//! Pools: an app's IPs, carved from its ToRs before the app starts. Create,
//! read, adopt, delete; resizing is `resize.rs`, the carving `carving.rs`.

use std::collections::BTreeMap;

use crate::core::{validate, Binding, FreeCount, Lease, Pool, PoolOwner, DEFAULT_POOL_SIZE};
use crate::error::{Error, Result};
use crate::store::retry::{cas, Attempt};
use crate::store::{keys, Entry, StoreExt, Txn};

use super::carving::{carve_explicit, carve_into, Clocked, TorState};
use super::{Ipam, PoolSpec};

impl Ipam {
    /// Creates a pool: `spec.size` IPs carved over its ToRs, or exactly
    /// `spec.ips`. `now_unix` starts the whitelist delay and tells which
    /// given-back IPs are still cooling down.
    pub async fn create_pool(&self, spec: &PoolSpec, now_unix: u64) -> Result<Pool> {
        validate::pool_name(&spec.name).map_err(Error::Invalid)?;
        validate::namespace(&spec.namespace).map_err(Error::Invalid)?;
        validate::app(&spec.app).map_err(Error::Invalid)?;
        for ns in spec.allow_namespaces.iter().filter(|n| *n != "*") {
            moor_proto::fields::namespace("allowed namespace", ns)
                .map_err(|e| Error::Invalid(e.to_string()))?;
        }
        let size = if !spec.ips.is_empty() {
            let n = spec.ips.len() as u32;
            if spec.size != 0 && spec.size != n {
                return Err(Error::Invalid(format!(
                    "pool {}: size {} but {n} IPs given: give the IPs (--ip) or a size, not both",
                    spec.name, spec.size
                )));
            }
            validate::pool_size(n).map_err(Error::Invalid)?
        } else if spec.size == 0 {
            DEFAULT_POOL_SIZE
        } else {
            validate::pool_size(spec.size).map_err(Error::Invalid)?
        };
        let at = Clocked {
            now: now_unix,
            delay_secs: spec.delay_secs,
            cooldown_secs: self.cooldown_secs,
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
            let tors = if spec.ips.is_empty() {
                self.pool_tors(&spec.tors).await?
            } else {
                self.explicit_tors(&spec.tors).await?
            };
            let mut pool = Pool {
                name: spec.name.clone(),
                namespace: spec.namespace.clone(),
                app: spec.app.clone(),
                policy: spec.policy,
                tors: tors.iter().map(|(t, ..)| t.name.clone()).collect(),
                ips: BTreeMap::new(),
                allow_namespaces: spec.allow_namespaces.clone(),
                allocatable_after: BTreeMap::new(),
                owner: spec.owner.clone(),
            };
            let mut txn = Txn::default();
            if spec.ips.is_empty() {
                carve_into(&mut pool, &tors, size, at, &mut txn)?;
            } else {
                carve_explicit(&mut pool, &tors, &spec.ips, at, &mut txn)?;
                // The segments it has IPs on are the ones it grows on.
                pool.tors = pool.ips.keys().cloned().collect();
            }
            let bound = self.bind_at_create(&pool, spec, &mut txn).await?;
            publish_created(&mut txn, &pool, &bound);
            txn.expect(&keys::pool(&pool.name), None)
                .expect(&app_key, None)
                .put(&keys::pool(&pool.name), &pool)
                .put(&app_key, &pool.name);
            Ok(Attempt::Commit(txn, pool))
        })
        .await
    }

    /// Adds to `txn` the bindings of `spec.bind` (the i-th pod keeps the
    /// i-th explicit IP); returns their leases.
    async fn bind_at_create(
        &self,
        pool: &Pool,
        spec: &PoolSpec,
        txn: &mut Txn,
    ) -> Result<Vec<Lease>> {
        if spec.bind.len() > spec.ips.len() {
            return Err(Error::Invalid(format!(
                "pool {}: {} pods to bind but {} IPs",
                spec.name,
                spec.bind.len(),
                spec.ips.len()
            )));
        }
        let mut leases = Vec::new();
        for (pod, ip) in spec.bind.iter().zip(&spec.ips) {
            let key = keys::binding(pod);
            if let Some((b, _)) = self.store.get_json::<Binding>(&key).await? {
                return Err(Error::Conflict(format!(
                    "pod {pod} already keeps IP {} of pool {}, so it cannot be given {ip}: release it first (ipamctl ip release {})",
                    b.ip, b.pool, b.ip
                )));
            }
            let tor = pool
                .tor_of(*ip)
                .expect("explicit IPs are the pool's")
                .to_string();
            let lease = Lease {
                ip: *ip,
                pool: pool.name.clone(),
                tor: tor.clone(),
                binding: Some(pod.clone()),
                attachment: None,
                evict: false,
                quarantine: None,
            };
            let binding = Binding {
                pod: pod.clone(),
                pool: pool.name.clone(),
                ip: *ip,
                tor,
            };
            let lkey = keys::lease(&pool.name, *ip);
            txn.expect(&key, None)
                .put(&key, &binding)
                .expect(&lkey, None)
                .put(&lkey, &lease);
            leases.push(lease);
        }
        Ok(leases)
    }

    /// The ToRs a pool spreads over, with their carved records.
    pub(super) async fn pool_tors(&self, names: &[String]) -> Result<Vec<TorState>> {
        let mut out = Vec::new();
        if names.is_empty() {
            let (tors, _) = self.store.list_json::<crate::core::Tor>(keys::TORS).await?;
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

    /// Deletes a pool none of whose IPs is in use; its bindings go with it
    /// and its IPs cool down on their ToRs.
    pub async fn delete_pool(&self, name: &str, now_unix: u64) -> Result<Pool> {
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
        // A quarantined IP is one another host answered for: deleting the
        // pool would forget that and, after the cool-down, carve it for
        // another app while that host may still hold it.
        let quarantined: Vec<String> = leases
            .iter()
            .filter_map(|(l, _)| {
                l.quarantine
                    .as_ref()
                    .map(|q| format!("{} (MAC {} answered for it)", l.ip, q.mac))
            })
            .collect();
        if !quarantined.is_empty() {
            return Err(Error::Conflict(format!(
                "pool {name} has {} quarantined IPs: {}; once no other host uses them, release them with `ipamctl ip release IP`, then delete the pool",
                quarantined.len(),
                quarantined.join(", ")
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
        let at = Clocked {
            now: now_unix,
            delay_secs: 0,
            cooldown_secs: self.cooldown_secs,
        };
        let mut emptied = pool.clone();
        self.give_back(&mut emptied, &pool.all_ips(), at, &mut txn)
            .await?;
        for e in self.store.list(&keys::frees(name)).await?.0 {
            txn.delete(&e.key);
        }
        if self.store.commit(txn).await? {
            Ok(pool)
        } else {
            Err(Error::Conflict(format!(
                "pool {name} changed while deleting it; run the command again"
            )))
        }
    }

    /// Makes the pool follow `owner` (the controller adopting it, or the
    /// workload's `moor.io/retain` or uid changing). Refuses a pool of
    /// another app.
    pub async fn set_pool_owner(
        &self,
        name: &str,
        namespace: &str,
        app: &str,
        owner: Option<PoolOwner>,
    ) -> Result<Pool> {
        let lock = self.pool_lock(name);
        let _guard = lock.lock().await;
        let owner = &owner;
        cas(self.store.as_ref(), "pool adopt", || async move {
            let (mut pool, entry) = self.pool_entry(name).await?;
            if pool.namespace != namespace || pool.app != app {
                return Err(Error::Conflict(format!(
                    "pool {name} belongs to app {}/{}, not {namespace}/{app}: name another pool, or leave moor.io/pool out to get one of its own",
                    pool.namespace, pool.app
                )));
            }
            if &pool.owner == owner {
                return Ok(Attempt::Done(pool));
            }
            pool.owner = owner.clone();
            let mut txn = Txn::default();
            txn.expect(&keys::pool(name), Some(&entry))
                .put(&keys::pool(name), &pool);
            Ok(Attempt::Commit(txn, pool))
        })
        .await
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

/// Adds to `txn` a new pool's free counts: all free but what `bound` holds.
fn publish_created(txn: &mut Txn, pool: &Pool, bound: &[Lease]) {
    for (tor, ips) in &pool.ips {
        let total = ips.len() as u32;
        let held = bound.iter().filter(|l| &l.tor == tor).count() as u32;
        txn.put(
            &keys::free(&pool.name, tor),
            &FreeCount {
                total,
                free: total - held,
            },
        );
    }
}
