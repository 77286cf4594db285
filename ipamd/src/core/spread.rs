//! Spreading a pool over ToRs. Didi's rule: carve each ToR's share in
//! proportion to its free container IPs, so busy racks are not drained first.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// Splits `n` IPs over ToRs in proportion to their free IPs (largest-remainder
/// rounding, ties to the name that sorts first). No ToR gets more than it has
/// free. Errors with the total free when `n` does not fit.
pub fn by_free(n: u32, free: &BTreeMap<String, u32>) -> Result<BTreeMap<String, u32>, u32> {
    let total: u64 = free.values().map(|&f| u64::from(f)).sum();
    if u64::from(n) > total {
        return Err(total as u32);
    }
    let mut out = BTreeMap::new();
    if n == 0 {
        return Ok(free.keys().map(|k| (k.clone(), 0)).collect());
    }
    let mut given = 0u64;
    let mut remainders = Vec::new();
    for (tor, &f) in free {
        let share = u64::from(n) * u64::from(f);
        let whole = share / total;
        given += whole;
        out.insert(tor.clone(), whole as u32);
        remainders.push((share % total, tor.clone()));
    }
    // Largest remainder first; BTreeMap order breaks ties deterministically.
    remainders.sort_by_key(|r| std::cmp::Reverse(r.0));
    for (_, tor) in remainders.into_iter().take((u64::from(n) - given) as usize) {
        *out.get_mut(&tor).expect("tor from the same map") += 1;
    }
    Ok(out)
}

/// Picks `k` IPs to drop from a pool, never one in `busy` (bound or in use),
/// always from the ToR that has the most IPs left (so the spread holds), the
/// highest IP first. Errors with the number that could be dropped.
pub fn shrink(
    ips: &BTreeMap<String, Vec<IpAddr>>,
    busy: &dyn Fn(IpAddr) -> bool,
    k: u32,
) -> Result<Vec<IpAddr>, u32> {
    let mut left: BTreeMap<&str, u32> = ips
        .iter()
        .map(|(t, v)| (t.as_str(), v.len() as u32))
        .collect();
    let mut droppable: BTreeMap<&str, Vec<IpAddr>> = ips
        .iter()
        .map(|(t, v)| {
            (
                t.as_str(),
                v.iter().copied().filter(|ip| !busy(*ip)).collect(),
            )
        })
        .collect();
    let can = droppable.values().map(|v| v.len() as u32).sum::<u32>();
    if k > can {
        return Err(can);
    }
    let mut out = Vec::new();
    for _ in 0..k {
        let tor = *left
            .iter()
            .filter(|(t, _)| !droppable[*t].is_empty())
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .expect("k <= droppable")
            .0;
        out.push(droppable.get_mut(tor).unwrap().pop().unwrap());
        *left.get_mut(tor).unwrap() -= 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(v: &[(&str, u32)]) -> BTreeMap<String, u32> {
        v.iter().map(|(k, n)| (k.to_string(), *n)).collect()
    }

    #[test]
    fn weighted_by_free() {
        let got = by_free(30, &m(&[("a", 100), ("b", 100), ("c", 100)])).unwrap();
        assert_eq!(got, m(&[("a", 10), ("b", 10), ("c", 10)]));
        let got = by_free(30, &m(&[("a", 200), ("b", 100)])).unwrap();
        assert_eq!(got, m(&[("a", 20), ("b", 10)]));
        let got = by_free(31, &m(&[("a", 100), ("b", 100), ("c", 100)])).unwrap();
        assert_eq!(got.values().sum::<u32>(), 31);
        assert_eq!(by_free(31, &m(&[("a", 10), ("b", 20)])), Err(30));
        assert_eq!(
            by_free(5, &m(&[("a", 0), ("b", 20)])).unwrap(),
            m(&[("a", 0), ("b", 5)])
        );
    }

    #[test]
    fn shrink_keeps_the_spread_and_spares_busy_ips() {
        let ip = |n: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
        let ips: BTreeMap<String, Vec<IpAddr>> = [
            ("a".to_string(), (1..=6).map(ip).collect()),
            ("b".to_string(), (11..=12).map(ip).collect()),
        ]
        .into();
        let busy = |x: IpAddr| x == ip(6);
        let drop = shrink(&ips, &busy, 4).unwrap();
        // a goes 6 -> 2 to meet b at 2; the busy .6 stays.
        assert_eq!(drop, vec![ip(5), ip(4), ip(3), ip(2)]);
        let drop = shrink(&ips, &busy, 5).unwrap();
        assert_eq!(drop[4], ip(1), "on a tie the ToR whose name sorts first");
        assert_eq!(shrink(&ips, &busy, 8), Err(7));
    }

    proptest! {
        #[test]
        fn by_free_is_exact_capped_and_fair(free in proptest::collection::btree_map("[a-e]", 0u32..500, 1..5), n in 0u32..2000) {
            let total: u32 = free.values().sum();
            match by_free(n, &free) {
                Err(t) => prop_assert!(n > total && t == total),
                Ok(got) => {
                    prop_assert_eq!(got.values().sum::<u32>(), n);
                    for (tor, &g) in &got {
                        let f = free[tor];
                        prop_assert!(g <= f);
                        let exact = f64::from(n) * f64::from(f) / f64::from(total.max(1));
                        prop_assert!((f64::from(g) - exact).abs() < 1.0, "{tor}: {g} vs {exact}");
                    }
                }
            }
        }

        #[test]
        fn shrink_never_drops_busy(sizes in proptest::collection::vec(0u32..20, 1..4), busy_mod in 2u32..5, k in 0u32..40) {
            let mut ips = BTreeMap::new();
            let mut next = 1u32;
            for (i, s) in sizes.iter().enumerate() {
                let v: Vec<IpAddr> = (next..next + s)
                    .map(|n| IpAddr::from(std::net::Ipv4Addr::from(n)))
                    .collect();
                next += s;
                ips.insert(format!("t{i}"), v);
            }
            let busy =
                |x: IpAddr| crate::core::family::num(x).is_multiple_of(u128::from(busy_mod));
            if let Ok(drop) = shrink(&ips, &busy, k) {
                prop_assert_eq!(drop.len() as u32, k);
                prop_assert!(drop.iter().all(|x| !busy(*x)));
                let mut d = drop.clone();
                d.sort();
                d.dedup();
                prop_assert_eq!(d.len(), drop.len());
            }
        }
    }
}
