//! Taking IPs from ToRs for a pool and giving them back, as writes added to
//! a pool change's transaction: each ToR's carved record is guarded by its
//! version, so two changes never take one IP. Given-back IPs cool down
//! (`Carved::give_back`); new ones may wait out a whitelist delay
//! (`Pool::allocatable_after`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::core::{carve, spread, Carved, FreeCount, Lease, Pool, Tor};
use crate::error::{Error, Result};
use crate::store::{keys, Entry, StoreExt, Txn};

use super::Ipam;

/// A ToR segment a pool change reads: its record, its carved record and
/// that record's entry (None: nothing carved on it yet).
pub(super) type TorState = (Tor, Carved, Option<Entry>);

/// When a pool change happens and what it waits for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clocked {
    pub now: u64,
    /// New IPs become allocatable this many seconds from `now`.
    pub delay_secs: u64,
    /// Given-back IPs cool down this many seconds from `now`.
    pub cooldown_secs: u64,
}

/// Carves `n` more IPs for `pool` over `tors`, weighted by each ToR's
/// carvable IPs, and adds the carved-record writes to `txn`. Returns them.
pub(super) fn carve_into(
    pool: &mut Pool,
    tors: &[TorState],
    n: u32,
    at: Clocked,
    txn: &mut Txn,
) -> Result<Vec<Ipv4Addr>> {
    let free: BTreeMap<String, u32> = tors
        .iter()
        .map(|(t, c, _)| (t.name.clone(), carve::free_count(t, c, at.now)))
        .collect();
    let shares = spread::by_free(n, &free).map_err(|total| {
        Error::Invalid(format!(
            "pool {} needs {n} more IPs but ToRs {} have only {total} free (IPs given back by pools cool down for {} s first): add ranges, add ToRs or ask for fewer",
            pool.name,
            free.keys().cloned().collect::<Vec<_>>().join(", "),
            at.cooldown_secs
        ))
    })?;
    let mut added = Vec::new();
    for (tor, carved, entry) in tors {
        let share = shares[&tor.name];
        if share == 0 {
            continue;
        }
        let ips = carve::lowest_free(tor, carved, share, at.now);
        add_ips(pool, tor, carved, entry, &ips, at, txn);
        added.extend(ips);
    }
    added.sort();
    Ok(added)
}

/// Gives `pool` exactly `ips` (bring your own), each checked against
/// `tors` (in a pod range, in no pool, not cooling down).
pub(super) fn carve_explicit(
    pool: &mut Pool,
    tors: &[TorState],
    ips: &[Ipv4Addr],
    at: Clocked,
    txn: &mut Txn,
) -> Result<()> {
    let plain: Vec<(Tor, Carved)> = tors
        .iter()
        .map(|(t, c, _)| (t.clone(), c.clone()))
        .collect();
    let by_tor = carve::explicit(&plain, ips, at.now).map_err(|why| {
        Error::Invalid(format!(
            "pool {}: {}; nothing was created",
            pool.name,
            why.replace('\n', "; ")
        ))
    })?;
    for (tor, carved, entry) in tors {
        if let Some(ips) = by_tor.get(&tor.name) {
            add_ips(pool, tor, carved, entry, ips, at, txn);
        }
    }
    Ok(())
}

fn add_ips(
    pool: &mut Pool,
    tor: &Tor,
    carved: &Carved,
    entry: &Option<Entry>,
    ips: &[Ipv4Addr],
    at: Clocked,
    txn: &mut Txn,
) {
    let mut carved = carved.clone();
    carved.take(&pool.name, ips, at.now);
    let list = pool.ips.entry(tor.name.clone()).or_default();
    list.extend(ips);
    list.sort();
    if at.delay_secs > 0 {
        for ip in ips {
            pool.allocatable_after.insert(*ip, at.now + at.delay_secs);
        }
    }
    txn.expect(&keys::carved(&tor.name), entry.as_ref())
        .put(&keys::carved(&tor.name), &carved);
}

impl Ipam {
    /// Takes `ips` out of `pool` and gives them back to their ToRs, to cool
    /// down; adds the carved-record writes to `txn`.
    pub(super) async fn give_back(
        &self,
        pool: &mut Pool,
        ips: &[Ipv4Addr],
        at: Clocked,
        txn: &mut Txn,
    ) -> Result<()> {
        let mut by_tor: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
        for ip in ips {
            let tor = pool
                .tor_of(*ip)
                .ok_or_else(|| Error::internal(format!("{ip} is not in pool {}", pool.name)))?;
            by_tor.entry(tor.to_string()).or_default().push(*ip);
        }
        for (tor, ips) in by_tor {
            let (mut carved, entry) = self.carved(&tor).await?;
            carved.give_back(&ips, at.now, at.now + at.cooldown_secs);
            let list = pool.ips.get_mut(&tor).expect("tor of the pool");
            list.retain(|ip| !ips.contains(ip));
            if list.is_empty() {
                pool.ips.remove(&tor);
            }
            for ip in &ips {
                pool.allocatable_after.remove(ip);
            }
            txn.expect(&keys::carved(&tor), entry.as_ref())
                .put(&keys::carved(&tor), &carved);
        }
        Ok(())
    }

    /// The ToR segments a pool's explicit IPs may lie in: those named, or
    /// every segment of every ToR.
    pub(super) async fn explicit_tors(&self, names: &[String]) -> Result<Vec<TorState>> {
        let (tors, _) = self.store.list_json::<Tor>(keys::TORS).await?;
        let mut out = Vec::new();
        for (t, _) in tors {
            if names.is_empty() || names.contains(&t.name) {
                let (c, e) = self.carved(&t.name).await?;
                out.push((t, c, e));
            }
        }
        if let Some(missing) = names
            .iter()
            .find(|n| !out.iter().any(|(t, ..)| &t.name == *n))
        {
            return Err(Error::Invalid(format!(
                "ToR {missing} does not exist: add it with `ipamctl tor add {missing} ...` or fix --tor"
            )));
        }
        if out.is_empty() {
            return Err(Error::Invalid(
                "no ToR is defined yet: add one with `ipamctl tor add NAME --subnet CIDR --gateway IP`".into(),
            ));
        }
        Ok(out)
    }
}

/// Forgets whitelist delays that ended by `now`.
pub(super) fn prune_delays(pool: &mut Pool, now: u64) {
    pool.allocatable_after.retain(|_, t| *t > now);
}

/// Adds to `txn` the pool's published free counts, recomputed from `leases`,
/// guarded by the versions of the counters read before them (`old`): any
/// lease change since then also moved a counter, and fails the commit.
pub(super) fn publish_counts(txn: &mut Txn, pool: &Pool, leases: &[Lease], old: &[Entry]) {
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
