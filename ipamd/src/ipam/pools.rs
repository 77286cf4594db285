//! Pools: an app's IPs, carved from its ToRs before the app starts. Create,
//! read, adopt, delete; resizing is `resize.rs`, the carving `carving.rs`.

use std::collections::BTreeMap;

use std::net::IpAddr;

use crate::core::{
    validate, Binding, Lease, PodRef, Pool, PoolOp, PoolOwner, PoolStep, DEFAULT_POOL_SIZE,
};
use crate::error::{Error, Result};
use crate::store::retry::{cas, Attempt};
use crate::store::{decode, keys, Entry, StoreExt, Txn};

use super::carving::{choose_family, plan_counts, plan_explicit, Clocked};
use super::pool_op::Finished;
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
        let _turn = self.pool_turn(&spec.name).await;
        // A change left half done on a pool of this name is finished first.
        self.drive(&spec.name, now_unix).await?;
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
            let mut tors = if spec.ips.is_empty() {
                self.pool_tors(&spec.tors).await?
            } else {
                self.explicit_tors(&spec.tors).await?
            };
            let family = choose_family(&spec.name, spec.family, &mut tors, !spec.tors.is_empty())?;
            let mut pool = Pool {
                name: spec.name.clone(),
                namespace: spec.namespace.clone(),
                app: spec.app.clone(),
                policy: spec.policy,
                tors: tors.iter().map(|t| t.tor.name.clone()).collect(),
                ips: BTreeMap::new(),
                family,
                allow_namespaces: spec.allow_namespaces.clone(),
                allocatable_after: BTreeMap::new(),
                owner: spec.owner.clone(),
                op: None,
            };
            let (todo, explicit) = if spec.ips.is_empty() {
                (
                    plan_counts(&pool.name, family, &tors, size, at)?,
                    BTreeMap::new(),
                )
            } else {
                let by_tor = plan_explicit(&pool.name, family, &tors, &spec.ips, at.now)?;
                // The segments it has IPs on are the ones it grows on.
                pool.tors = by_tor.keys().cloned().collect();
                (BTreeMap::new(), by_tor)
            };
            let bind = self.check_bind(spec).await?;
            pool.op = Some(PoolOp {
                since_unix: at.now,
                why: None,
                step: PoolStep::Carving {
                    creating: true,
                    todo,
                    explicit,
                    carved: BTreeMap::new(),
                    bind,
                    allocatable_after: if at.delay_secs > 0 {
                        at.now + at.delay_secs
                    } else {
                        0
                    },
                },
            });
            // The pool and app records first: the name and the app are
            // taken, and the record carries the rest of the create.
            let mut txn = Txn::default();
            txn.expect(&keys::pool(&pool.name), None)
                .expect(&app_key, None)
                .put(&keys::pool(&pool.name), &pool)
                .put(&app_key, &pool.name);
            Ok(Attempt::Commit(txn, ()))
        })
        .await?;
        match self.drive(&spec.name, now_unix).await? {
            (Finished::Done(pool), None) => Ok(*pool),
            (_, Some(why)) => Err(Error::Conflict(why)),
            (Finished::Gone, None) => Err(Error::Conflict(format!(
                "pool {} was deleted while it was being created",
                spec.name
            ))),
        }
    }

    /// The pods of `spec.bind` with the IPs they keep (the i-th pod the
    /// i-th explicit IP), each checked to keep no IP yet.
    async fn check_bind(&self, spec: &PoolSpec) -> Result<Vec<(PodRef, IpAddr)>> {
        if spec.bind.len() > spec.ips.len() {
            return Err(Error::Invalid(format!(
                "pool {}: {} pods to bind but {} IPs",
                spec.name,
                spec.bind.len(),
                spec.ips.len()
            )));
        }
        let mut out = Vec::new();
        for (pod, ip) in spec.bind.iter().zip(&spec.ips) {
            if let Some((b, _)) = self.store.get_json::<Binding>(&keys::binding(pod)).await? {
                return Err(Error::Conflict(format!(
                    "pod {pod} already keeps IP {} of pool {}, so it cannot be given {ip}: release it first (ipamctl ip release {})",
                    b.ip, b.pool, b.ip
                )));
            }
            out.push((pod.clone(), *ip));
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

    /// Every pool whose record decodes, and the keys of those that do not
    /// (logged): for what goes on without them (the controller's GC).
    pub async fn pools_readable(&self) -> Result<(Vec<Pool>, Vec<String>)> {
        let (entries, _) = self.store.list(keys::POOLS).await?;
        let (mut ok, mut corrupt) = (Vec::new(), Vec::new());
        for e in entries {
            match decode::<Pool>(&e) {
                Ok(p) => ok.push(p),
                Err(err) => {
                    tracing::warn!(error = %err, "a pool record does not decode; it is left out");
                    corrupt.push(e.key);
                }
            }
        }
        Ok((ok, corrupt))
    }

    /// A pool and its leases; a change in progress on it is finished first.
    pub async fn pool(&self, name: &str) -> Result<(Pool, Vec<Lease>)> {
        let (mut pool, _) = self.pool_entry(name).await?;
        if let Some(op) = &pool.op {
            let _turn = self.pool_turn(name).await;
            pool = match self.drive(name, op.since_unix).await? {
                (Finished::Done(p), _) => *p,
                (Finished::Gone, _) => {
                    return Err(Error::NotFound(format!(
                        "pool {name} does not exist (ipamctl pool list)"
                    )))
                }
            };
        }
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
        let _turn = self.pool_turn(name).await;
        let before = self.pool_entry(name).await?.0;
        match self.drive(name, now_unix).await? {
            // It was being deleted (or created and undone): now it is gone.
            (Finished::Gone, _) => return Ok(before),
            (Finished::Done(_), _) => {}
        }
        let cooling_until = now_unix + self.cooldown_secs;
        let pool = cas(self.store.as_ref(), "pool delete", || async move {
            let (mut pool, pool_entry) = self.pool_entry(name).await?;
            let (leases, rev) = self.store.list_json::<Lease>(&keys::leases(name)).await?;
            refuse_busy(name, &leases)?;
            let before = pool.clone();
            pool.op = Some(PoolOp {
                since_unix: now_unix,
                why: None,
                step: PoolStep::Deleting {
                    cooling_until,
                    leases_done: false,
                },
            });
            // From this commit on no ADD takes an IP of the pool; none was
            // attached when it was read.
            let mut txn = Txn::default();
            txn.expect(&keys::pool(name), Some(&pool_entry))
                .expect_prefix_unchanged(&keys::leases(name), rev)
                .put(&keys::pool(name), &pool);
            Ok::<_, Error>(Attempt::Commit(txn, before))
        })
        .await?;
        match self.drive(name, now_unix).await? {
            (Finished::Gone, _) => Ok(pool),
            (Finished::Done(_), _) => Err(Error::internal(format!(
                "pool {name} is still there after its delete"
            ))),
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
        let _turn = self.pool_turn(name).await;
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
}

/// Refuses to delete a pool with IPs in use or quarantined.
fn refuse_busy(name: &str, leases: &[(Lease, Entry)]) -> Result<()> {
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
    Ok(())
}
