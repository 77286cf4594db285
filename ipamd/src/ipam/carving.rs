//! Taking IPs from ToR segments for a pool and giving them back, as writes
//! added to a step of a pool change. Everything carved from a segment is
//! under one prefix, `carved/<tor>/`: one record per pool there and one of
//! cooling IPs. A write reads the prefix and commits only if nothing under
//! it was created or changed since (`expect_prefix_unchanged`), so two
//! changes never take one IP; deletions, which that check does not see,
//! only ever free IPs. Given-back IPs cool down; new ones may wait out a
//! whitelist delay (`Pool::allocatable_after`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::core::{carve, spread, validate, Carved, CarvedShare, Cooling, IpFamily, Pool, Tor};
use crate::error::{Error, Result};
use crate::store::{decode, keys, Entry, StoreExt, Txn};

use super::Ipam;

/// A ToR segment as a pool change reads it: the segment, the view of its
/// carved records, the records themselves and the revision of the read.
pub(super) struct TorState {
    pub tor: Tor,
    pub carved: Carved,
    /// Pool -> its record here.
    pub shares: BTreeMap<String, (CarvedShare, Entry)>,
    pub cooling: Option<(Cooling, Entry)>,
    pub rev: u64,
}

type CarvedRecords = (
    Carved,
    BTreeMap<String, (CarvedShare, Entry)>,
    Option<(Cooling, Entry)>,
    u64,
);

/// When a pool change happens and what it waits for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clocked {
    pub now: u64,
    /// New IPs become allocatable this many seconds from `now`.
    pub delay_secs: u64,
    /// Given-back IPs cool down this many seconds from `now`.
    pub cooldown_secs: u64,
}

impl TorState {
    /// The IPs pool `pool` has here.
    pub fn share(&self, pool: &str) -> &[IpAddr] {
        self.shares.get(pool).map_or(&[], |(s, _)| &s.ips)
    }

    /// Adds to `txn`: `pool` takes `ips` here too.
    pub fn take(&self, pool: &str, ips: &[IpAddr], now: u64, txn: &mut Txn) {
        let mut mine = self.share(pool).to_vec();
        mine.extend(ips);
        mine.sort();
        mine.dedup();
        let mut cooling = self.cooling_now(now);
        for ip in ips {
            cooling.remove(ip);
        }
        self.write(pool, mine, cooling, txn);
    }

    /// Adds to `txn`: `pool` gives `ips` back here, cooling until `until`
    /// (not at all when that is not after `now`).
    pub fn give_back(&self, pool: &str, ips: &[IpAddr], now: u64, until: u64, txn: &mut Txn) {
        let mine: Vec<IpAddr> = self
            .share(pool)
            .iter()
            .copied()
            .filter(|ip| !ips.contains(ip))
            .collect();
        let mut cooling = self.cooling_now(now);
        if until > now {
            for ip in ips {
                cooling.insert(*ip, until);
            }
        }
        self.write(pool, mine, cooling, txn);
    }

    /// The cooling entries still running at `now`.
    fn cooling_now(&self, now: u64) -> BTreeMap<IpAddr, u64> {
        let mut c = self.carved.cooling.clone();
        c.retain(|_, t| *t > now);
        c
    }

    fn write(&self, pool: &str, mine: Vec<IpAddr>, cooling: BTreeMap<IpAddr, u64>, txn: &mut Txn) {
        let name = &self.tor.name;
        txn.expect_prefix_unchanged(&keys::carved_prefix(name), self.rev);
        let key = keys::carved(name, pool);
        let old = self.shares.get(pool);
        txn.expect(&key, old.map(|(_, e)| e));
        if mine.is_empty() {
            if old.is_some() {
                txn.delete(&key);
            }
        } else if old.is_none_or(|(s, _)| s.ips != mine) {
            txn.put(&key, &CarvedShare { ips: mine });
        }
        let ckey = keys::cooling(name);
        let old = self.cooling.as_ref();
        if old.map_or(BTreeMap::new(), |(c, _)| c.until.clone()) != cooling {
            txn.expect(&ckey, old.map(|(_, e)| e));
            if cooling.is_empty() {
                txn.delete(&ckey);
            } else {
                txn.put(&ckey, &Cooling { until: cooling });
            }
        }
    }

    /// About what a take or give-back here adds to a transaction, in
    /// bytes (its records, rewritten).
    pub fn write_bytes(&self, extra_ips: usize) -> usize {
        let records: usize = self
            .shares
            .values()
            .map(|(_, e)| e.value.len())
            .max()
            .unwrap_or(0)
            + self.cooling.as_ref().map_or(0, |(_, e)| e.value.len());
        records + 30 * extra_ips + 256
    }
}

impl Ipam {
    /// Reads ToR segment `tor`: every record under its prefix, in one list.
    pub(super) async fn tor_state(&self, tor: Tor) -> Result<TorState> {
        let (carved, shares, cooling, rev) = self.carved_records(&tor.name).await?;
        Ok(TorState {
            tor,
            carved,
            shares,
            cooling,
            rev,
        })
    }

    /// Which IPs of ToR segment `tor` are carved into which pool and which
    /// cool down (empty for a segment nothing was carved from).
    pub(super) async fn carved(&self, tor: &str) -> Result<Carved> {
        Ok(self.carved_records(tor).await?.0)
    }

    async fn carved_records(&self, tor: &str) -> Result<CarvedRecords> {
        let (entries, rev) = self.store.list(&keys::carved_prefix(tor)).await?;
        let mut shares = BTreeMap::new();
        let mut cooling = None;
        for e in entries {
            let Some((_, Some(name))) = keys::parse_carved(&e.key) else {
                continue;
            };
            if name == keys::COOLING {
                cooling = Some((decode::<Cooling>(&e)?, e));
            } else {
                shares.insert(name.to_string(), (decode::<CarvedShare>(&e)?, e));
            }
        }
        let carved = Carved::from_records(
            shares
                .iter()
                .map(|(p, (s, _))| (p.as_str(), s.ips.as_slice())),
            cooling.as_ref().map(|(c, _)| c),
        );
        Ok((carved, shares, cooling, rev))
    }

    /// The segment named `name`, or an error saying it is gone.
    pub(super) async fn tor_named(&self, name: &str) -> Result<Tor> {
        self.tor(name).await?.ok_or_else(|| {
            Error::Invalid(format!(
                "ToR {name} does not exist: add it with `ipamctl tor add {name} ...` or fix --tor"
            ))
        })
    }

    /// The ToR segments a pool's explicit IPs may lie in: those named, or
    /// every segment of every ToR.
    pub(super) async fn explicit_tors(&self, names: &[String]) -> Result<Vec<TorState>> {
        let (tors, _) = self.store.list_json::<Tor>(keys::TORS).await?;
        if let Some(missing) = names
            .iter()
            .find(|n| !tors.iter().any(|(t, _)| &t.name == *n))
        {
            return Err(Error::Invalid(format!(
                "ToR {missing} does not exist: add it with `ipamctl tor add {missing} ...` or fix --tor"
            )));
        }
        let mut out = Vec::new();
        for (t, _) in tors {
            if names.is_empty() || names.contains(&t.name) {
                out.push(self.tor_state(t).await?);
            }
        }
        if out.is_empty() {
            return Err(Error::Invalid(
                "no ToR is defined yet: add one with `ipamctl tor add NAME --subnet CIDR --gateway IP`".into(),
            ));
        }
        Ok(out)
    }

    /// The ToRs a pool spreads over, read.
    pub(super) async fn pool_tors(&self, names: &[String]) -> Result<Vec<TorState>> {
        let mut out: Vec<TorState> = Vec::new();
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
                out.push(self.tor_state(t).await?);
            }
        } else {
            for name in names {
                let t = self.tor_named(name).await?;
                // One segment per ToR: a pod on a node of that ToR must
                // know which of the pool's subnets (and VLANs) it gets.
                if let Some(o) = out.iter().find(|o| o.tor.switch() == t.switch()) {
                    return Err(Error::Invalid(format!(
                        "--tor names {} and {}, two segments of ToR {}: a pool takes one segment per ToR; name one of them",
                        o.tor.name,
                        t.name,
                        t.switch()
                    )));
                }
                out.push(self.tor_state(t).await?);
            }
        }
        Ok(out)
    }
}

/// How many IPs each segment gives to `n` more for pool `pool`, weighted
/// by each segment's carvable IPs (only those with a share > 0).
pub(super) fn plan_counts(
    pool: &str,
    family: IpFamily,
    tors: &[TorState],
    n: u32,
    at: Clocked,
) -> Result<BTreeMap<String, u32>> {
    let free: BTreeMap<String, u32> = tors
        .iter()
        .map(|t| {
            (
                t.tor.name.clone(),
                // An IPv6 /64 has more free IPs than any pool takes:
                // beyond the largest pool, free IPs weigh nothing, so two
                // /64s share evenly instead of by their astronomic counts.
                carve::free_count(&t.tor, family, &t.carved, at.now).min(validate::MAX_POOL_SIZE),
            )
        })
        .collect();
    let shares = spread::by_free(n, &free).map_err(|total| {
        Error::Invalid(format!(
            "pool {pool} needs {n} more IPs but ToRs {} have only {total} free (IPs given back by pools cool down for {} s first): add ranges, add ToRs or ask for fewer",
            free.keys().cloned().collect::<Vec<_>>().join(", "),
            at.cooldown_secs
        ))
    })?;
    Ok(shares.into_iter().filter(|(_, k)| *k > 0).collect())
}

/// Where explicit IPs go (bring your own), each checked against `tors`
/// (in a pod range, in no pool, not cooling down).
pub(super) fn plan_explicit(
    pool: &str,
    family: IpFamily,
    tors: &[TorState],
    ips: &[IpAddr],
    now: u64,
) -> Result<BTreeMap<String, Vec<IpAddr>>> {
    let plain: Vec<(Tor, Carved)> = tors
        .iter()
        .map(|t| (t.tor.clone(), t.carved.clone()))
        .collect();
    carve::explicit(&plain, family, ips, now).map_err(|why| {
        Error::Invalid(format!(
            "pool {pool}: {}; nothing was created",
            why.replace('\n', "; ")
        ))
    })
}

/// The family of a new pool over `tors`: `asked`, which every segment
/// named must have (segments picked by default that lack it are left
/// out), or else every family all the segments have.
pub(super) fn choose_family(
    pool: &str,
    asked: Option<IpFamily>,
    tors: &mut Vec<TorState>,
    named: bool,
) -> Result<IpFamily> {
    let describe = |t: &Tor| {
        let fams: Vec<&str> = [(IpFamily::Ipv4, "IPv4"), (IpFamily::Ipv6, "IPv6")]
            .iter()
            .filter(|(f, _)| t.offers(*f))
            .map(|(_, n)| *n)
            .collect();
        format!("{} ({})", t.name, fams.join(" and "))
    };
    if let Some(f) = asked {
        if named {
            if let Some(t) = tors.iter().find(|t| !t.tor.offers(f)) {
                return Err(Error::Invalid(format!(
                    "pool {pool}: family {f} needs {} on every ToR, but ToR {} has no {}: add that subnet to the ToR (ipamctl tor add ... --subnet), name other ToRs, or pick another --family",
                    if f == IpFamily::Dual { "an IPv4 and an IPv6 subnet" } else { "that family" },
                    describe(&t.tor),
                    if t.tor.v4().is_none() { "IPv4 subnet" } else { "IPv6 subnet" },
                )));
            }
        } else {
            tors.retain(|t| t.tor.offers(f));
            if tors.is_empty() {
                return Err(Error::Invalid(format!(
                    "pool {pool}: no ToR offers family {f}: add a ToR with such subnets (ipamctl tor add ... --subnet) or pick another --family"
                )));
            }
        }
        return Ok(f);
    }
    for f in [IpFamily::Dual, IpFamily::Ipv4, IpFamily::Ipv6] {
        if tors.iter().all(|t| t.tor.offers(f)) {
            return Ok(f);
        }
    }
    Err(Error::Invalid(format!(
        "pool {pool}: ToRs {} have no address family in common: name ToRs of one family (--tor) or pick a --family",
        tors.iter().map(|t| describe(&t.tor)).collect::<Vec<_>>().join(", ")
    )))
}

/// Forgets whitelist delays that ended by `now`.
pub(super) fn prune_delays(pool: &mut Pool, now: u64) {
    pool.allocatable_after.retain(|_, t| *t > now);
}
