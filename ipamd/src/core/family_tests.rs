use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn fam(subnet: &str, gw: &str, ranges: &[(&str, &str)]) -> Family {
    Family {
        subnet: subnet.parse().unwrap(),
        gateway: ip(gw),
        ranges: ranges
            .iter()
            .map(|(a, b)| IpRange {
                first: ip(a),
                last: ip(b),
            })
            .collect(),
    }
}

/// Every pod IP, the slow way: each range walked, the gateway dropped.
fn walk(f: &Family) -> Vec<IpAddr> {
    f.ranges
        .iter()
        .flat_map(|r| (num(r.first)..=num(r.last)).map(move |n| addr_like(r.first, n)))
        .filter(|a| *a != f.gateway)
        .collect()
}

fn small_families() -> Vec<Family> {
    vec![
        fam("10.1.0.0/24", "10.1.0.1", &[("10.1.0.1", "10.1.0.9")]),
        fam(
            "10.1.0.0/24",
            "10.1.0.5",
            &[("10.1.0.2", "10.1.0.4"), ("10.1.0.5", "10.1.0.8")],
        ),
        fam(
            "10.1.0.0/24",
            "10.1.0.8",
            &[("10.1.0.2", "10.1.0.4"), ("10.1.0.6", "10.1.0.8")],
        ),
        fam("10.1.0.0/24", "10.1.0.200", &[("10.1.0.10", "10.1.0.12")]),
        fam("fd00:1::/64", "fd00:1::1", &[("fd00:1::1", "fd00:1::20")]),
        fam(
            "fd00:1::/64",
            "fd00:1::a",
            &[("fd00:1::3", "fd00:1::4"), ("fd00:1::9", "fd00:1::b")],
        ),
    ]
}

#[test]
fn positions_match_a_walk_of_every_small_family() {
    for f in small_families() {
        let all = walk(&f);
        assert_eq!(f.capacity(), all.len() as u128, "{f:?}");
        for (i, a) in all.iter().enumerate() {
            assert_eq!(f.index_of(*a), Some(i as u128), "{a} in {f:?}");
            assert_eq!(f.nth(i as u128), Some(*a), "{i} in {f:?}");
            let from: Vec<IpAddr> = f.pod_ips_from(i as u128).collect();
            assert_eq!(from, all[i..], "from {i} in {f:?}");
        }
        assert_eq!(f.nth(all.len() as u128), None);
        assert_eq!(f.pod_ips_from(all.len() as u128 + 3).count(), 0);
        assert_eq!(f.index_of(f.gateway), None, "the gateway is no pod IP");
    }
}

#[test]
fn a_slash_64_is_counted_and_indexed_not_walked() {
    let f = fam(
        "fd00:1::/64",
        "fd00:1::1",
        &[("fd00:1::1", "fd00:1::ffff:ffff:ffff:ffff")],
    );
    assert_eq!(f.capacity(), (1u128 << 64) - 2);
    assert_eq!(f.capacity_u32(), u32::MAX);
    let last = ip("fd00:1::ffff:ffff:ffff:ffff");
    assert_eq!(f.index_of(last), Some((1u128 << 64) - 3));
    assert_eq!(f.nth((1u128 << 64) - 3), Some(last));
    let tail: Vec<IpAddr> = f.pod_ips_from((1u128 << 64) - 4).collect();
    assert_eq!(tail, vec![ip("fd00:1::ffff:ffff:ffff:fffe"), last]);
    assert_eq!(
        f.pod_ips_from(0).take(2).collect::<Vec<_>>(),
        vec![ip("fd00:1::2"), ip("fd00:1::3")]
    );
}

#[test]
fn the_kth_ipv4_pod_ip_pairs_with_the_kth_ipv6_one() {
    let v4 = fam("10.1.0.0/24", "10.1.0.1", &[("10.1.0.1", "10.1.0.254")]);
    let v6 = fam(
        "fd00:1::/64",
        "fd00:1::1",
        &[("fd00:1::1", "fd00:1::ffff:ffff:ffff:ffff")],
    );
    let pair = |a: &str| partner(&v6, v4.index_of(ip(a)).unwrap()).unwrap();
    // Default ranges and gateways at .1 and ::1: 10.1.0.N goes with fd00:1::N (hex).
    assert_eq!(pair("10.1.0.2"), "fd00:1::2".parse::<Ipv6Addr>().unwrap());
    assert_eq!(pair("10.1.0.17"), "fd00:1::11".parse::<Ipv6Addr>().unwrap());
    assert_eq!(
        pair("10.1.0.254"),
        "fd00:1::fe".parse::<Ipv6Addr>().unwrap()
    );
}

#[test]
fn families_serialize_as_plain_addresses() {
    let f = fam("10.1.0.0/24", "10.1.0.1", &[("10.1.0.2", "10.1.0.9")]);
    let j = serde_json::to_value(&f).unwrap();
    assert_eq!(
        j,
        serde_json::json!({"subnet": "10.1.0.0/24", "gateway": "10.1.0.1",
            "ranges": [{"first": "10.1.0.2", "last": "10.1.0.9"}]})
    );
    for fam in [IpFamily::Ipv4, IpFamily::Ipv6, IpFamily::Dual] {
        assert_eq!(IpFamily::parse(fam.as_str()), Some(fam));
        assert_eq!(serde_json::to_value(fam).unwrap(), fam.as_str());
    }
}
