//! Carving a ToR's pod ranges into pools, and giving IPs back: an IP a pool
//! gave back cools down before any pool may carve it again. Time is passed
//! in (unix seconds).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::model::{Carved, IpFamily, Tor};
use super::pool_change::Cooling;

impl Carved {
    /// The view of a segment's schema 2 records: each pool's IPs there and
    /// the cooling record.
    pub fn from_records<'a>(
        shares: impl IntoIterator<Item = (&'a str, &'a [IpAddr])>,
        cooling: Option<&Cooling>,
    ) -> Self {
        let mut c = Carved::default();
        for (pool, ips) in shares {
            for ip in ips {
                c.ips.insert(*ip, pool.to_string());
            }
        }
        if let Some(cool) = cooling {
            c.cooling = cool.until.clone();
        }
        c
    }

    /// Whether `ip` is cooling down at `now`: given back by a pool less than
    /// the cool-down ago. Returns when it may be carved again.
    pub fn cooling_until(&self, ip: IpAddr, now: u64) -> Option<u64> {
        self.cooling.get(&ip).copied().filter(|t| *t > now)
    }

    /// Gives `ips` back to the ToR: no pool has them any more, and none may
    /// carve them before `until`. Forgets cool-downs that ended by `now`.
    pub fn give_back(&mut self, ips: &[IpAddr], now: u64, until: u64) {
        self.cooling.retain(|_, t| *t > now);
        for ip in ips {
            self.ips.remove(ip);
            if until > now {
                self.cooling.insert(*ip, until);
            }
        }
    }

    /// Records `ips` as `pool`'s; forgets cool-downs that ended by `now`.
    pub fn take(&mut self, pool: &str, ips: &[IpAddr], now: u64) {
        self.cooling.retain(|_, t| *t > now);
        for ip in ips {
            self.cooling.remove(ip);
            self.ips.insert(*ip, pool.to_string());
        }
    }
}

/// The lowest `n` IPs of the ToR for a pool of family `family` that no
/// pool has and that are not cooling down at `now`. Fewer when the ToR runs
/// out; callers check the length.
pub fn lowest_free(tor: &Tor, family: IpFamily, carved: &Carved, n: u32, now: u64) -> Vec<IpAddr> {
    tor.pod_ips(family)
        .filter(|ip| !carved.ips.contains_key(ip) && carved.cooling_until(*ip, now).is_none())
        .take(n as usize)
        .collect()
}

/// IPs of the ToR a pool of family `family` may carve at `now`: neither in
/// a pool nor cooling.
pub fn free_count(tor: &Tor, family: IpFamily, carved: &Carved, now: u64) -> u32 {
    let in_tor = |ip: &IpAddr| tor.carves_ip(family, *ip);
    let taken = carved.ips.keys().filter(|ip| in_tor(ip)).count();
    let cooling = carved
        .cooling
        .iter()
        .filter(|(ip, t)| **t > now && in_tor(ip) && !carved.ips.contains_key(ip))
        .count();
    tor.capacity(family)
        .saturating_sub((taken + cooling) as u32)
}

/// Where explicit IPs (bring your own: `moor.io/ips`, `pool create --ip`)
/// go: each must lie in a pod range of one of `tors` (the ToR segments the
/// pool may use), belong to no pool and not be cooling down. Returns the
/// IPs by segment, or every refused IP with the reason, one per line.
pub fn explicit(
    tors: &[(Tor, Carved)],
    family: IpFamily,
    ips: &[IpAddr],
    now: u64,
) -> Result<BTreeMap<String, Vec<IpAddr>>, String> {
    let mut out: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let mut refused = Vec::new();
    let names = || {
        tors.iter()
            .map(|(t, _)| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for ip in ips {
        if !seen.insert(*ip) {
            refused.push(format!("IP {ip} is listed twice"));
            continue;
        }
        let home = tors.iter().find(|(t, _)| t.carves_ip(family, *ip));
        let Some((tor, carved)) = home else {
            if let Some(v4) = tors.iter().find_map(|(t, _)| t.partner_of(*ip)) {
                refused.push(format!(
                    "IP {ip} is the IPv6 partner of {v4}: a {family} pool lists its IPv4 addresses (each brings its partner), so name {v4}"
                ));
                continue;
            }
            refused.push(format!(
                "IP {ip} is in no pod range of ToR segments {}: define a segment whose range holds it (ipamctl tor add) or name the right one",
                names()
            ));
            continue;
        };
        if let Some(pool) = carved.ips.get(ip) {
            refused.push(format!(
                "IP {ip} (ToR {}) is already in pool {pool}",
                tor.name
            ));
        } else if let Some(until) = carved.cooling_until(*ip, now) {
            refused.push(format!(
                "IP {ip} (ToR {}) was given back by a pool and cools down for {} s more (--ip-cooldown-seconds), so peers that still trust it are updated first",
                tor.name,
                until - now
            ));
        } else {
            out.entry(tor.name.clone()).or_default().push(*ip);
        }
    }
    if refused.is_empty() {
        for v in out.values_mut() {
            v.sort();
        }
        Ok(out)
    } else {
        Err(refused.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::validate;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn carves_lowest_uncarved_skipping_gateway() {
        let tor = validate::tor("r1", "10.0.0.0/29", "10.0.0.3", 0, &[], "", &[]).unwrap();
        let mut carved = Carved::default();
        carved.ips.insert(ip("10.0.0.2"), "p".into());
        let got = lowest_free(&tor, IpFamily::Ipv4, &carved, 3, 0);
        assert_eq!(got, [ip("10.0.0.1"), ip("10.0.0.4"), ip("10.0.0.5")]);
        assert_eq!(free_count(&tor, IpFamily::Ipv4, &carved, 0), 4); // .1 .4 .5 .6
        assert_eq!(lowest_free(&tor, IpFamily::Ipv4, &carved, 10, 0).len(), 4);
    }

    #[test]
    fn given_back_ips_cool_down_before_any_pool_takes_them() {
        let tor = validate::tor("r1", "10.0.0.0/29", "10.0.0.3", 0, &[], "", &[]).unwrap();
        let mut carved = Carved::default();
        carved.take("db", &[ip("10.0.0.1"), ip("10.0.0.2")], 100);
        carved.give_back(&[ip("10.0.0.1")], 100, 700);
        assert!(!carved.ips.contains_key(&ip("10.0.0.1")));
        assert_eq!(carved.cooling_until(ip("10.0.0.1"), 100), Some(700));
        // Not carved while cooling: .4 .5 .6 are free, .1 waits.
        assert_eq!(free_count(&tor, IpFamily::Ipv4, &carved, 699), 3);
        assert_eq!(
            lowest_free(&tor, IpFamily::Ipv4, &carved, 2, 699),
            [ip("10.0.0.4"), ip("10.0.0.5")]
        );
        // From the end of the cool-down on, it is the lowest free again.
        assert_eq!(carved.cooling_until(ip("10.0.0.1"), 700), None);
        assert_eq!(free_count(&tor, IpFamily::Ipv4, &carved, 700), 4);
        assert_eq!(
            lowest_free(&tor, IpFamily::Ipv4, &carved, 1, 700),
            [ip("10.0.0.1")]
        );
        // The next change forgets ended cool-downs; a take ends one.
        carved.give_back(&[ip("10.0.0.2")], 800, 1400);
        assert_eq!(carved.cooling.keys().collect::<Vec<_>>(), [&ip("10.0.0.2")]);
        carved.take("web", &[ip("10.0.0.2")], 800);
        assert!(carved.cooling.is_empty());
        // No cool-down configured: nothing is recorded.
        carved.give_back(&[ip("10.0.0.2")], 900, 900);
        assert!(carved.cooling.is_empty() && carved.ips.is_empty());
    }

    #[test]
    fn explicit_ips_must_be_in_a_range_free_and_not_cooling() {
        let ranges = [("10.0.0.10".to_string(), "10.0.0.20".to_string())];
        let t1 = validate::tor("t1", "10.0.0.0/24", "10.0.0.1", 0, &ranges, "", &[]).unwrap();
        let t2 = validate::tor("t2", "10.2.0.0/24", "10.2.0.1", 0, &[], "", &[]).unwrap();
        let mut c1 = Carved::default();
        c1.take("other", &[ip("10.0.0.12")], 0);
        c1.cooling.insert(ip("10.0.0.13"), 500);
        let tors = [(t1, c1), (t2, Carved::default())];
        let got = explicit(
            &tors,
            IpFamily::Ipv4,
            &[ip("10.2.0.7"), ip("10.0.0.11"), ip("10.0.0.10")],
            100,
        )
        .unwrap();
        assert_eq!(got["t1"], [ip("10.0.0.10"), ip("10.0.0.11")]);
        assert_eq!(got["t2"], [ip("10.2.0.7")]);
        for (bad, why) in [
            ("10.0.0.30", "no pod range of ToR segments t1, t2"),
            ("10.9.0.1", "no pod range"),
            ("10.2.0.1", "no pod range"),
            ("10.0.0.12", "already in pool other"),
            ("10.0.0.13", "cools down for 400 s more"),
        ] {
            let e = explicit(&tors, IpFamily::Ipv4, &[ip("10.0.0.10"), ip(bad)], 100).unwrap_err();
            assert!(e.contains(bad) && e.contains(why), "{bad}: {e}");
            assert!(
                !e.contains("10.0.0.10 "),
                "only the refused IP is named: {e}"
            );
        }
        let e = explicit(
            &tors,
            IpFamily::Ipv4,
            &[ip("10.0.0.10"), ip("10.0.0.10")],
            100,
        )
        .unwrap_err();
        assert!(e.contains("listed twice"), "{e}");
        // After its cool-down the IP may be taken.
        assert!(explicit(&tors, IpFamily::Ipv4, &[ip("10.0.0.13")], 500).is_ok());
    }

    proptest! {
        /// Whatever was given back and when: nothing cooling is carved,
        /// and the free count is what lowest_free can take.
        #[test]
        fn cooling_ips_are_never_carved(
            back in proptest::collection::btree_map(1u32..15, 0u64..20, 0..10),
            taken in proptest::collection::btree_set(1u32..15, 0..5),
            now in 0u64..20,
        ) {
            let tor = validate::tor("r", "10.0.0.0/27", "10.0.0.30", 0, &[], "", &[]).unwrap();
            let mut carved = Carved::default();
            let at = |n: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            for (n, until) in &back {
                carved.cooling.insert(at(*n), *until);
            }
            let taken: Vec<IpAddr> = taken.iter().map(|n| at(*n)).collect();
            carved.take("p", &taken, 0);
            let free = lowest_free(&tor, IpFamily::Ipv4, &carved, 100, now);
            prop_assert_eq!(free.len() as u32, free_count(&tor, IpFamily::Ipv4, &carved, now));
            for ip in free {
                prop_assert!(!carved.ips.contains_key(&ip));
                prop_assert!(carved.cooling_until(ip, now).is_none());
            }
        }
    }
}
