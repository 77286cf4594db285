//! Pool changes too big for one transaction (a pool over hundreds of ToRs,
//! a pool with a thousand bindings), done in steps that survive kill -9 at
//! any point. The pool record carries the change in progress (`Pool::op`);
//! every step is one compare-and-swap transaction of at most etcd's limits
//! (`store/limits.rs`) that also rewrites the pool record, so the record's
//! version serializes the steps and records their progress. A step reads
//! what it needs afresh, so it is idempotent: two finishers (the call that
//! began the change and a restarted ipamd, or another ipamd on the same
//! etcd) may race, and one of them simply loses each step's commit.
//!
//! Create and grow go forward, and back when a ToR no longer has room (a
//! concurrent change took it): what was carved is given back, without a
//! cool-down (no pod ever had it). Shrink and delete only go forward.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use tracing::{info, warn};

use crate::core::{carve, AttachmentRef, Binding, Family, Lease, Pool, PoolOp, PoolStep, Tor};
use crate::error::{Error, Result};
use crate::store::retry::{Contended, MAX_ATTEMPTS};
use crate::store::{keys, Entry, StoreExt, Txn};

use super::carving::{prune_delays, TorState};
use super::Ipam;

/// How a driven change ended.
#[derive(Debug)]
pub(super) enum Finished {
    /// The pool as it is now, no change in progress.
    Done(Box<Pool>),
    /// The pool is gone: deleted, or its create undone.
    Gone,
}

/// What one step decided.
enum Step {
    Commit(Txn),
    /// The change cannot go on: undo it, for this reason.
    Fail(String),
}

/// Most bindings written or leases dropped per step (2-3 writes each).
const RECORDS_PER_STEP: usize = 30;

impl Ipam {
    /// Finishes every pool change in progress: ipamd runs it at start, so a
    /// change its previous run was killed in the middle of is finished (or
    /// undone) before anything else. Returns the pools it finished.
    pub async fn finish_pool_ops(&self, now_unix: u64) -> Result<Vec<String>> {
        let mut done = Vec::new();
        for p in self.pools().await?.into_iter().filter(|p| p.op.is_some()) {
            let _turn = self.pool_turn(&p.name).await;
            let what = p.op.as_ref().map_or("", |o| o.step.what());
            match self.drive(&p.name, now_unix).await? {
                (_, Some(why)) => {
                    warn!(pool = %p.name, %why, "undid a pool change begun before: {what}")
                }
                (Finished::Gone, None) => info!(pool = %p.name, "finished deleting the pool"),
                (Finished::Done(_), None) => {
                    info!(pool = %p.name, "finished a pool change: {what}")
                }
            }
            done.push(p.name);
        }
        Ok(done)
    }

    /// Drives pool `name`'s change in progress to its end (nothing to do
    /// without one). Returns how it ended and, when it was undone, why.
    /// The caller holds the pool's lock.
    pub(super) async fn drive(&self, name: &str, now: u64) -> Result<(Finished, Option<String>)> {
        let mut why = None;
        let mut lost = 0u32;
        loop {
            let Some((pool, entry)) = self.store.get_json::<Pool>(&keys::pool(name)).await? else {
                return Ok((Finished::Gone, why));
            };
            let Some(op) = pool.op.clone() else {
                return Ok((Finished::Done(Box::new(pool)), why));
            };
            if op.why.is_some() {
                why.clone_from(&op.why);
            }
            let now = now.max(op.since_unix);
            let txn = match self.step(&pool, &entry, &op, now).await? {
                Step::Commit(txn) => txn,
                Step::Fail(reason) => fail(&pool, &entry, &op, reason)?,
            };
            txn.check_limits().map_err(Error::internal)?;
            if self.store.commit(txn).await? {
                lost = 0;
                continue;
            }
            // Another finisher (or an ADD) changed the pool: read again.
            lost += 1;
            if lost >= MAX_ATTEMPTS {
                return Err(Contended {
                    what: format!("pool {name} change"),
                    attempts: lost,
                }
                .into());
            }
            tokio::time::sleep(Duration::from_millis(u64::from(lost.min(20)))).await;
        }
    }

    async fn step(&self, pool: &Pool, entry: &Entry, op: &PoolOp, now: u64) -> Result<Step> {
        match &op.step {
            PoolStep::Carving { .. } => self.carving_step(pool, entry, op, now).await,
            PoolStep::GivingBack { ips, cooling_until } => {
                self.giving_back_step(pool, entry, op, ips, *cooling_until, now)
                    .await
            }
            PoolStep::Counting { .. } => Ok(self.counting_step(pool, entry)),
            PoolStep::Deleting {
                cooling_until,
                leases_done,
            } => {
                self.deleting_step(pool, entry, op, *cooling_until, *leases_done, now)
                    .await
            }
        }
    }

    async fn carving_step(
        &self,
        pool: &Pool,
        entry: &Entry,
        op: &PoolOp,
        now: u64,
    ) -> Result<Step> {
        let PoolStep::Carving {
            creating,
            mut todo,
            mut explicit,
            mut carved,
            mut bind,
            allocatable_after,
        } = op.step.clone()
        else {
            unreachable!("a carving step");
        };
        let mut next = pool.clone();
        let mut txn = Txn::default();
        let room = entry.value.len() + 512;
        if !todo.is_empty() || !explicit.is_empty() {
            let names: Vec<String> = todo.keys().chain(explicit.keys()).cloned().collect();
            for (i, name) in names.into_iter().enumerate() {
                let Some(tor) = self.tor(&name).await? else {
                    return Ok(Step::Fail(format!(
                        "pool {}: ToR {name} was deleted meanwhile; nothing was changed",
                        pool.name
                    )));
                };
                let st = self.tor_state(tor).await?;
                let ips = if let Some(n) = todo.get(&name) {
                    let ips = carve::lowest_free(&st.tor, pool.family, &st.carved, *n, now);
                    if ips.len() < *n as usize {
                        return Ok(Step::Fail(format!(
                            "pool {}: ToR {name} no longer has {n} free IPs (another pool took them meanwhile); nothing was changed, run the command again",
                            pool.name
                        )));
                    }
                    ips
                } else {
                    let want = &explicit[&name];
                    let plain = [(st.tor.clone(), st.carved.clone())];
                    if let Err(why) = carve::explicit(&plain, pool.family, want, now) {
                        return Ok(Step::Fail(format!(
                            "pool {}: {}; nothing was created",
                            pool.name,
                            why.replace('\n', "; ")
                        )));
                    }
                    want.clone()
                };
                if i > 0 && !txn.has_room(3, 4, st.write_bytes(ips.len()) + room) {
                    break;
                }
                st.take(&pool.name, &ips, now, &mut txn);
                let list = carved.entry(name.clone()).or_default();
                list.extend(ips);
                list.sort();
                todo.remove(&name);
                explicit.remove(&name);
            }
        } else if !bind.is_empty() {
            let rest = bind.split_off(bind.len().min(RECORDS_PER_STEP));
            for (pod, ip) in std::mem::replace(&mut bind, rest) {
                let bkey = keys::binding(&pod);
                if let Some((b, _)) = self.store.get_json::<Binding>(&bkey).await? {
                    return Ok(Step::Fail(format!(
                        "pod {pod} already keeps IP {} of pool {}, so it cannot be given {ip}: release it first (ipamctl ip release {}); nothing was created",
                        b.ip, b.pool, b.ip
                    )));
                }
                let Some(tor) = carved
                    .iter()
                    .find(|(_, ips)| ips.contains(&ip))
                    .map(|(t, _)| t.clone())
                else {
                    return Err(Error::internal(format!(
                        "pool {}: {ip} to bind was not carved",
                        pool.name
                    )));
                };
                let lease = Lease {
                    ip,
                    ipv6: None,
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
                    ip,
                    tor,
                };
                let lkey = keys::lease(&pool.name, ip);
                txn.expect(&bkey, None)
                    .put(&bkey, &binding)
                    .expect(&lkey, None)
                    .put(&lkey, &lease);
            }
        } else {
            // Every IP is carved and bound: they become the pool's.
            for (tor, ips) in &carved {
                let list = next.ips.entry(tor.clone()).or_default();
                list.extend(ips);
                list.sort();
                if allocatable_after > now {
                    for ip in ips {
                        next.allocatable_after.insert(*ip, allocatable_after);
                    }
                }
            }
            prune_delays(&mut next, now);
            next.op = None;
            return Ok(Step::Commit(rewrite(txn, entry, &next)));
        }
        next.op = Some(PoolOp {
            step: PoolStep::Carving {
                creating,
                todo,
                explicit,
                carved,
                bind,
                allocatable_after,
            },
            ..op.clone()
        });
        Ok(Step::Commit(rewrite(txn, entry, &next)))
    }

    async fn giving_back_step(
        &self,
        pool: &Pool,
        entry: &Entry,
        op: &PoolOp,
        ips: &BTreeMap<String, Vec<IpAddr>>,
        cooling_until: u64,
        now: u64,
    ) -> Result<Step> {
        let mut next = pool.clone();
        let mut txn = Txn::default();
        let mut left = ips.clone();
        for (i, (tor, give)) in ips.iter().enumerate() {
            let st = self.segment_state(tor).await?;
            if i > 0 && !txn.has_room(3, 4, st.write_bytes(give.len()) + entry.value.len() + 512) {
                break;
            }
            st.give_back(&pool.name, give, now, cooling_until, &mut txn);
            drop_ips(&mut next, tor, give);
            left.remove(tor);
        }
        next.op = if left.is_empty() {
            None
        } else {
            Some(PoolOp {
                step: PoolStep::GivingBack {
                    ips: left,
                    cooling_until,
                },
                ..op.clone()
            })
        };
        Ok(Step::Commit(rewrite(txn, entry, &next)))
    }

    /// A change schema 2 left at its last step (publishing free counts,
    /// which schema 3 no longer keeps): it is done.
    fn counting_step(&self, pool: &Pool, entry: &Entry) -> Step {
        let mut next = pool.clone();
        next.op = None;
        Step::Commit(rewrite(Txn::default(), entry, &next))
    }

    async fn deleting_step(
        &self,
        pool: &Pool,
        entry: &Entry,
        op: &PoolOp,
        cooling_until: u64,
        leases_done: bool,
        now: u64,
    ) -> Result<Step> {
        let name = &pool.name;
        let mut next = pool.clone();
        let mut txn = Txn::default();
        if !leases_done {
            let (leases, _) = self.store.list_json::<Lease>(&keys::leases(name)).await?;
            if leases.is_empty() {
                next.op = Some(PoolOp {
                    step: PoolStep::Deleting {
                        cooling_until,
                        leases_done: true,
                    },
                    ..op.clone()
                });
            }
            for (lease, e) in leases.iter().take(RECORDS_PER_STEP) {
                txn.expect(&e.key, Some(e)).delete(&e.key);
                if let Some(pod) = &lease.binding {
                    let bkey = keys::binding(pod);
                    if let Some((b, be)) = self.store.get_json::<Binding>(&bkey).await? {
                        if b.pool == *name && b.ip == lease.ip {
                            txn.expect(&bkey, Some(&be)).delete(&bkey);
                        }
                    }
                }
                // None is attached (the delete began only then, and no
                // ADD takes an IP of a pool being deleted); should one be
                // written from a node's outage cache meanwhile, its index
                // entry goes with the lease.
                if let Some(a) = &lease.attachment {
                    let akey = keys::attachment(&a.key);
                    if let Some((r, ae)) = self.store.get_json::<AttachmentRef>(&akey).await? {
                        if r.pool == *name && r.ip == lease.ip {
                            warn!(pool = %name, ip = %lease.ip, attachment = %a.key, "dropping an attachment written while its pool was being deleted");
                            txn.expect(&akey, Some(&ae)).delete(&akey);
                        }
                    }
                }
            }
            return Ok(Step::Commit(rewrite(txn, entry, &next)));
        }
        if !pool.ips.is_empty() {
            for (i, (tor, give)) in pool.ips.iter().enumerate() {
                let st = self.segment_state(tor).await?;
                if i > 0
                    && !txn.has_room(4, 4, st.write_bytes(give.len()) + entry.value.len() + 512)
                {
                    break;
                }
                st.give_back(name, give, now, cooling_until, &mut txn);
                drop_ips(&mut next, tor, give);
            }
            return Ok(Step::Commit(rewrite(txn, entry, &next)));
        }
        // Last: the app's record, the pool's.
        let app = keys::app(&pool.namespace, &pool.app);
        if let Some((p, e)) = self.store.get_json::<String>(&app).await? {
            if p == *name {
                txn.expect(&app, Some(&e)).delete(&app);
            }
        }
        txn.expect(&keys::pool(name), Some(entry))
            .delete(&keys::pool(name));
        Ok(Step::Commit(txn))
    }

    /// A segment's carved records, for a give-back: the segment record is
    /// not needed (and cannot be deleted while a pool has IPs on it).
    async fn segment_state(&self, name: &str) -> Result<TorState> {
        let tor = match self.tor(name).await? {
            Some(t) => t,
            None => Tor {
                name: name.to_string(),
                first: Family {
                    subnet: "0.0.0.0/32".parse().expect("a network"),
                    gateway: IpAddr::from([0, 0, 0, 0]),
                    ranges: Vec::new(),
                },
                vlan: None,
                segment_of: None,
                ipv6: None,
            },
        };
        self.tor_state(tor).await
    }
}

/// Undoes a change that cannot go on: a create becomes the delete of what
/// it made (no cool-down: no pod ever had those IPs), a grow gives back
/// what it carved. Other changes never fail.
fn fail(pool: &Pool, entry: &Entry, op: &PoolOp, why: String) -> Result<Txn> {
    let PoolStep::Carving {
        creating, carved, ..
    } = &op.step
    else {
        return Err(Error::internal(format!(
            "pool {}: a {} step failed: {why}",
            pool.name,
            op.step.what()
        )));
    };
    let mut next = pool.clone();
    let step = if *creating {
        for (tor, ips) in carved {
            let list = next.ips.entry(tor.clone()).or_default();
            list.extend(ips);
            list.sort();
        }
        PoolStep::Deleting {
            cooling_until: 0,
            leases_done: false,
        }
    } else {
        PoolStep::GivingBack {
            ips: carved.clone(),
            cooling_until: 0,
        }
    };
    next.op = Some(PoolOp {
        since_unix: op.since_unix,
        why: Some(why),
        step,
    });
    Ok(rewrite(Txn::default(), entry, &next))
}

/// `txn` plus the pool record's rewrite, guarded by its version.
fn rewrite(mut txn: Txn, entry: &Entry, next: &Pool) -> Txn {
    txn.expect(&entry.key, Some(entry)).put(&entry.key, next);
    txn
}

/// Takes `ips` of segment `tor` out of the pool record.
fn drop_ips(pool: &mut Pool, tor: &str, ips: &[IpAddr]) {
    if let Some(list) = pool.ips.get_mut(tor) {
        list.retain(|ip| !ips.contains(ip));
        if list.is_empty() {
            pool.ips.remove(tor);
        }
    }
    for ip in ips {
        pool.allocatable_after.remove(ip);
    }
}
