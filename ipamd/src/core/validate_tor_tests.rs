use super::*;
use crate::core::IpFamily;

fn t(subnet: &str, gw: &str, vlan: u32, ranges: &[(&str, &str)]) -> Result<Tor, String> {
    t2(&[(subnet, gw)], vlan, ranges)
}

/// A segment with the given (subnet, gateway) pairs, beside ToR `other`
/// (10.9.0.0/16 and fd00:9::/64).
fn t2(nets: &[(&str, &str)], vlan: u32, ranges: &[(&str, &str)]) -> Result<Tor, String> {
    let r: Vec<_> = ranges
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let nets: Vec<_> = nets
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let other = [
        ("10.9.0.0/16".to_string(), "10.9.0.1".to_string()),
        ("fd00:9::/64".to_string(), "fd00:9::1".to_string()),
    ];
    let existing = [tor_families("other", &other, 0, &[], "", &[]).unwrap()];
    tor_families("rack-1", &nets, vlan, &r, "", &existing)
}

#[test]
fn good_tor() {
    let tor = t(
        "10.1.0.0/24",
        "10.1.0.1",
        100,
        &[("10.1.0.100", "10.1.0.199")],
    )
    .unwrap();
    assert_eq!(tor.capacity(IpFamily::Ipv4), 100);
    assert_eq!(tor.vlan, Some(100));
    let whole = t("10.1.0.0/24", "10.1.0.1", 0, &[]).unwrap();
    assert_eq!(
        whole.capacity(IpFamily::Ipv4),
        253,
        "254 hosts but the gateway"
    );
    assert_eq!(whole.vlan, None);
    assert!(whole
        .pod_ips(IpFamily::Ipv4)
        .all(|ip| ip != whole.first.gateway));
}

#[test]
fn bad_tors_name_the_field() {
    type Case<'a> = (&'a str, &'a str, u32, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("10.1.0.0/33", "10.1.0.1", 0, &[], "subnet"),
        ("10.1.0.5/24", "10.1.0.1", 0, &[], "use 10.1.0.0/24"),
        ("fd00::/64", "10.1.0.1", 0, &[], "subnet"),
        ("10.1.0.0/31", "10.1.0.0", 0, &[], "too small"),
        ("10.1.0.0/24", "10.2.0.1", 0, &[], "gateway"),
        ("10.1.0.0/24", "10.1.0.0", 0, &[], "gateway"),
        ("10.1.0.0/24", "10.1.0.255", 0, &[], "gateway"),
        ("10.1.0.0/24", "gw", 0, &[], "gateway"),
        ("10.1.0.0/24", "10.1.0.1", 4095, &[], "vlan"),
        (
            "10.1.0.0/24",
            "10.1.0.1",
            0,
            &[("10.1.0.9", "10.1.0.2")],
            "backwards",
        ),
        (
            "10.1.0.0/24",
            "10.1.0.1",
            0,
            &[("10.1.0.9", "10.1.1.2")],
            "range",
        ),
        (
            "10.1.0.0/24",
            "10.1.0.1",
            0,
            &[("10.1.0.2", "10.1.0.9"), ("10.1.0.5", "10.1.0.20")],
            "overlaps",
        ),
        (
            "10.1.0.0/24",
            "10.1.0.1",
            0,
            &[("10.1.0.1", "10.1.0.1")],
            "no IP left",
        ),
        (
            "10.9.4.0/24",
            "10.9.4.1",
            0,
            &[],
            "overlaps subnet 10.9.0.0/16",
        ),
    ];
    for (subnet, gw, vlan, ranges, want) in cases {
        let err = t(subnet, gw, *vlan, ranges).unwrap_err();
        assert!(err.contains(want), "{subnet} {gw} {vlan} {ranges:?}: {err}");
    }
    assert!(tor("Rack_1", "10.1.0.0/24", "10.1.0.1", 0, &[], "", &[])
        .unwrap_err()
        .contains("ToR name"));
}

#[test]
fn segments_hang_off_one_tor_each_on_its_own_vlan() {
    let rack = tor("rack-1", "10.1.0.0/24", "10.1.0.1", 100, &[], "", &[]).unwrap();
    let seg = |name: &str, subnet: &str, vlan: u32, of: &str, existing: &[Tor]| {
        let gw = subnet.replace(".0/24", ".1");
        tor(name, subnet, &gw, vlan, &[], of, existing)
    };
    let db = seg(
        "rack-1-db",
        "10.2.0.0/24",
        200,
        "rack-1",
        std::slice::from_ref(&rack),
    )
    .unwrap();
    assert_eq!(db.switch(), "rack-1");
    assert_eq!(rack.switch(), "rack-1");
    // The ToR need not be defined first: nodes name it with --tor.
    let lone = seg("rack-9-db", "10.9.0.0/24", 200, "rack-9", &[]).unwrap();
    assert_eq!(lone.switch(), "rack-9");

    let existing = [rack.clone(), db.clone()];
    let cases = [
        (
            seg("x", "10.3.0.0/24", 200, "rack-1", &existing),
            "already has segment rack-1-db on VLAN 200",
        ),
        (
            seg("x", "10.3.0.0/24", 100, "rack-1", &existing),
            "already has segment rack-1 on VLAN 100",
        ),
        (
            seg("x", "10.3.0.0/24", 300, "rack-1-db", &existing),
            "use --segment-of rack-1",
        ),
        (seg("x", "10.3.0.0/24", 300, "x", &existing), "itself"),
        (
            seg("x", "10.3.0.0/24", 300, "Rack", &existing),
            "segment-of",
        ),
        (
            seg(
                "rack-1",
                "10.3.0.0/24",
                300,
                "rack-2",
                std::slice::from_ref(&db),
            ),
            "is the ToR of segment rack-1-db",
        ),
    ];
    for (got, want) in cases {
        let err = got.unwrap_err();
        assert!(err.contains(want), "want {want:?} in {err}");
    }
    // Another VLAN on the same ToR is fine, and VLAN 200 on another ToR.
    seg("rack-1-web", "10.3.0.0/24", 300, "rack-1", &existing).unwrap();
    seg("rack-2-db", "10.4.0.0/24", 200, "rack-2", &existing).unwrap();
}

#[test]
fn dual_stack_and_ipv6_only_segments() {
    // Either order of --subnet: IPv4 is the first family.
    let dual = t2(
        &[("fd00:1::/64", "fd00:1::1"), ("10.1.0.0/24", "10.1.0.1")],
        0,
        &[("fd00:1::100", "fd00:1::1ff"), ("10.1.0.10", "10.1.0.20")],
    )
    .unwrap();
    assert_eq!(dual.first.subnet.to_string(), "10.1.0.0/24");
    let v6 = dual.ipv6.as_ref().unwrap();
    assert_eq!(v6.gateway.to_string(), "fd00:1::1");
    assert_eq!(dual.default_family(), IpFamily::Dual);
    assert_eq!(dual.capacity(IpFamily::Dual), 11);
    // IPv6-only pools carve past the 11 partners.
    assert_eq!(dual.capacity(IpFamily::Ipv6), 256 - 11);
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(
        dual.partner(ip("10.1.0.10")),
        Some("fd00:1::100".parse().unwrap())
    );
    assert_eq!(
        dual.partner(ip("10.1.0.20")),
        Some("fd00:1::10a".parse().unwrap())
    );
    assert_eq!(dual.partner_of(ip("fd00:1::10a")), Some(ip("10.1.0.20")));
    assert_eq!(
        dual.partner_of(ip("fd00:1::10b")),
        None,
        "past the partners"
    );
    assert_eq!(dual.pod_ips(IpFamily::Ipv6).next(), Some(ip("fd00:1::10b")));
    assert!(dual.carves_ip(IpFamily::Ipv6, ip("fd00:1::10b")));
    assert!(!dual.carves_ip(IpFamily::Ipv6, ip("fd00:1::10a")));

    // No IPv6 range: the whole /64 (never walked).
    let whole = t2(
        &[("10.1.0.0/24", "10.1.0.1"), ("fd00:1::/64", "fd00:1::1")],
        0,
        &[],
    )
    .unwrap();
    assert_eq!(whole.capacity(IpFamily::Ipv6), u32::MAX);
    assert_eq!(
        whole.partner(ip("10.1.0.17")),
        Some("fd00:1::11".parse().unwrap())
    );

    let only = t("fd00:1::/64", "fd00:1::1", 0, &[]).unwrap();
    assert_eq!(only.default_family(), IpFamily::Ipv6);
    assert!(only.v4().is_none() && only.ipv6.is_none());
    assert_eq!(only.pod_ips(IpFamily::Ipv6).next(), Some(ip("fd00:1::2")));
    assert!(!only.offers(IpFamily::Dual) && !only.offers(IpFamily::Ipv4));
    let j = serde_json::to_value(&only).unwrap();
    assert_eq!(
        j["subnet"], "fd00:1::/64",
        "the first family sits at the top: {j}"
    );
}

/// IPv6 cases of the bad-input table: each names the field and the fix.
#[test]
fn bad_ipv6_tors_name_the_field_and_the_fix() {
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [(&'a str, &'a str)], &'a str);
    let v4 = ("10.1.0.0/24", "10.1.0.1");
    let cases: &[Case] = &[
        (
            &[v4, ("fd00:1::/64", "fd00:2::1")],
            &[],
            "gateway fd00:2::1 is not a host address of subnet fd00:1::/64",
        ),
        (
            &[v4, ("fd00:1::/64", "fd00:1::")],
            &[],
            "not a host address",
        ),
        (
            &[v4, ("fd00:1::/64", "10.1.0.1")],
            &[],
            "is IPv4 but subnet fd00:1::/64 is IPv6",
        ),
        (&[v4, ("fd00:1::5/64", "fd00:1::1")], &[], "use fd00:1::/64"),
        (&[v4, ("fd00:1::/48", "fd00:1::1")], &[], "wider than a /64"),
        (&[v4, ("fd00:1::/127", "fd00:1::1")], &[], "too small"),
        // Overlaps ToR other's fd00:9::/64.
        (
            &[v4, ("fd00:9::/64", "fd00:9::1")],
            &[],
            "overlaps subnet fd00:9::/64 of ToR other",
        ),
        (
            &[v4, ("fd00:9:0:0:8000::/65", "fd00:9::8000:0:0:1")],
            &[],
            "overlaps subnet fd00:9::/64",
        ),
        (&[v4, ("10.2.0.0/24", "10.2.0.1")], &[], "both IPv4"),
        (
            &[
                v4,
                ("fd00:1::/64", "fd00:1::1"),
                ("fd00:2::/64", "fd00:2::1"),
            ],
            &[],
            "3 subnets",
        ),
        (&[], &[], "no subnet"),
        // A range across prefixes, a range of both families.
        (
            &[v4, ("fd00:1::/64", "fd00:1::1")],
            &[("fd00:1::10", "fd00:2::10")],
            "not inside the host addresses of subnet fd00:1::/64",
        ),
        (
            &[v4, ("fd00:1::/64", "fd00:1::1")],
            &[("10.1.0.5", "fd00:1::10")],
            "mixes IPv4 and IPv6",
        ),
        (
            &[v4, ("fd00:1::/64", "fd00:1::1")],
            &[("fd00:1::1:0", "fd00:1::10")],
            "backwards",
        ),
        (
            &[v4, ("fd00:1::/64", "fd00:1::1")],
            &[("fd00:1::10", "fd00:1::20"), ("fd00:1::18", "fd00:1::30")],
            "overlaps range",
        ),
        // A range of a family the segment lacks.
        (&[v4], &[("fd00:1::10", "fd00:1::20")], "has no IPv6 subnet"),
        (
            &[("fd00:1::/64", "fd00:1::1")],
            &[("10.1.0.5", "10.1.0.9")],
            "has no IPv4 subnet",
        ),
        // Too few IPv6 pod IPs to pair every IPv4 one.
        (
            &[v4, ("fd00:1::/64", "fd00:1::1")],
            &[("fd00:1::10", "fd00:1::1f")],
            "hold 16 pod IPs, fewer than the 253",
        ),
    ];
    for (nets, ranges, want) in cases {
        let err = t2(nets, 0, ranges).unwrap_err();
        assert!(
            err.contains(want),
            "{nets:?} {ranges:?}: want {want:?} in {err}"
        );
    }
}
