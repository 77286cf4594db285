//! `tor add` input: every bad value names its flag, quotes the value and
//! says the fix, and nothing is sent (an error is all there is); good input
//! becomes the request ipamd expects.

use super::*;
use crate::validate::err;

const NET: &str = "10.1.0.0/24";
const GW: &str = "10.1.0.1";
const NET6: &str = "fd00:1::/64";
const GW6: &str = "fd00:1::1";

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `tor add NAME --subnet S --gateway G [--vlan V] [--range R ...]`.
fn tor(
    name: &str,
    subnet: &str,
    gateway: &str,
    vlan: Option<&str>,
    ranges: &[&str],
) -> Result<AddTorRequest, InputError> {
    tor_add(&TorAdd {
        name,
        subnets: &strings(&[subnet]),
        gateways: &strings(&[gateway]),
        vlan,
        ranges: &strings(ranges),
        segment_of: None,
    })
}

/// `tor add r1` with the `--subnet`s, `--gateway`s and `--range`s given,
/// in order.
fn segment(
    subnets: &[&str],
    gateways: &[&str],
    ranges: &[&str],
) -> Result<AddTorRequest, InputError> {
    tor_add(&TorAdd {
        name: "r1",
        subnets: &strings(subnets),
        gateways: &strings(gateways),
        vlan: None,
        ranges: &strings(ranges),
        segment_of: None,
    })
}

#[test]
fn bad_input_names_the_flag_the_value_and_the_fix() {
    // (what, error, flag it must name, words of the fix)
    let cases: Vec<(&str, Option<InputError>, &str, &str)> = vec![
            (
                "tor name with capitals",
                err(tor("Rack1", NET, GW, None, &[])),
                "NAME",
                "e.g. rack1",
            ),
            (
                "tor name with underscore",
                err(tor("rack_1", NET, GW, None, &[])),
                "NAME",
                "e.g. rack-1",
            ),
            (
                "tor name ending in '-'",
                err(tor("rack-", NET, GW, None, &[])),
                "NAME",
                "starting and ending",
            ),
            (
                "empty tor name",
                err(tor("", NET, GW, None, &[])),
                "NAME",
                "must not be empty",
            ),
            (
                "64-char tor name",
                err(tor(&"a".repeat(64), NET, GW, None, &[])),
                "NAME",
                "at most 63",
            ),
            (
                "subnet with host bits",
                err(tor("r1", "10.1.0.5/24", GW, None, &[])),
                "--subnet",
                "use 10.1.0.0/24, not 10.1.0.5/24",
            ),
            (
                "subnet without prefix",
                err(tor("r1", "10.1.0.0", GW, None, &[])),
                "--subnet",
                "e.g. 10.1.0.0/24",
            ),
            (
                "subnet garbage",
                err(tor("r1", "10.1.0/24", GW, None, &[])),
                "--subnet",
                "not an IP address",
            ),
            (
                "subnet prefix 33",
                err(tor("r1", "10.1.0.0/33", GW, None, &[])),
                "--subnet",
                "not 0-32",
            ),
            (
                "/31 subnet",
                err(tor("r1", "10.1.0.0/31", "10.1.0.1", None, &[])),
                "--subnet",
                "/30 or wider",
            ),
            (
                "gateway outside subnet",
                err(tor("r1", NET, "10.2.0.1", None, &[])),
                "--gateway",
                "outside --subnet 10.1.0.0/24",
            ),
            (
                "gateway is network address",
                err(tor("r1", NET, "10.1.0.0", None, &[])),
                "--gateway",
                "network address of 10.1.0.0/24; use a host address such as 10.1.0.1",
            ),
            (
                "gateway is broadcast address",
                err(tor("r1", NET, "10.1.0.255", None, &[])),
                "--gateway",
                "such as 10.1.0.254",
            ),
            (
                "gateway not an IP",
                err(tor("r1", NET, "router", None, &[])),
                "--gateway",
                "not an IP address",
            ),
            (
                "VLAN 0",
                err(tor("r1", NET, GW, Some("0"), &[])),
                "--vlan",
                "omit --vlan for untagged",
            ),
            (
                "VLAN 4095",
                err(tor("r1", NET, GW, Some("4095"), &[])),
                "--vlan",
                "1-4094",
            ),
            (
                "VLAN not a number",
                err(tor("r1", NET, GW, Some("ten"), &[])),
                "--vlan",
                "not a number",
            ),
            (
                "range without dash",
                err(tor("r1", NET, GW, None, &["10.1.0.10"])),
                "--range",
                "FIRST-LAST, e.g. 10.1.0.10-10.1.0.99 or fd00:1::10-fd00:1::ff",
            ),
            (
                "range reversed",
                err(tor("r1", NET, GW, None, &["10.1.0.20-10.1.0.10"])),
                "--range",
                "low-high: 10.1.0.10-10.1.0.20",
            ),
            (
                "range leaving the subnet",
                err(tor("r1", NET, GW, None, &["10.1.0.200-10.1.1.10"])),
                "--range",
                "10.1.1.10 is outside --subnet 10.1.0.0/24",
            ),
            (
                "range end not an IP",
                err(tor("r1", NET, GW, None, &["10.1.0.10-x"])),
                "--range",
                "\"x\" is not an IP address",
            ),
            (
                "overlapping ranges",
                err(tor(
                    "r1",
                    NET,
                    GW,
                    None,
                    &["10.1.0.10-10.1.0.20", "10.1.0.20-10.1.0.30"],
                )),
                "--range",
                "overlaps --range 10.1.0.10-10.1.0.20",
            ),
        // IPv6 and dual stack: ipamd's rules (core/validate_tor.rs).
        (
            "IPv6 subnet wider than a /64",
            err(segment(&["fd00:1::/48"], &[GW6], &[])),
            "--subnet",
            "one /64 of it, e.g. fd00:1::/64",
        ),
        (
            "IPv6 subnet too narrow for pods",
            err(segment(&["fd00:1::/127"], &["fd00:1::1"], &[])),
            "--subnet",
            "/126 or wider",
        ),
        (
            "IPv6 subnet with host bits",
            err(segment(&["fd00:1::5/64"], &[GW6], &[])),
            "--subnet",
            "use fd00:1::/64, not fd00:1::5/64",
        ),
        (
            "IPv6 prefix 129",
            err(segment(&["fd00:1::/129"], &[GW6], &[])),
            "--subnet",
            "not 0-128",
        ),
        (
            "IPv6 gateway outside its subnet",
            err(segment(&[NET6], &["fd00:2::1"], &[])),
            "--gateway",
            "outside --subnet fd00:1::/64",
        ),
        (
            "IPv6 gateway is the network address",
            err(segment(&[NET6], &["fd00:1::"], &[])),
            "--gateway",
            "network address of fd00:1::/64; use a host address such as fd00:1::1",
        ),
        (
            "gateways in the wrong order",
            err(segment(&[NET, NET6], &[GW6, GW], &[])),
            "--gateway",
            "give each --subnet its --gateway, in the same order",
        ),
        (
            "a --subnet without its --gateway",
            err(segment(&[NET, NET6], &[GW], &[])),
            "--subnet",
            "has no --gateway; give each --subnet its --gateway",
        ),
        (
            "a --gateway without its --subnet",
            err(segment(&[NET6], &[GW6, GW], &[])),
            "--gateway",
            "has no --subnet",
        ),
        (
            "two IPv4 subnets",
            err(segment(&[NET, "10.2.0.0/24"], &[GW, "10.2.0.1"], &[])),
            "--subnet",
            "at most one subnet per family",
        ),
        (
            "two IPv6 subnets",
            err(segment(&[NET6, "fd00:2::/64"], &[GW6, "fd00:2::1"], &[])),
            "--subnet",
            "as is --subnet fd00:1::/64",
        ),
        (
            "three subnets",
            err(segment(
                &[NET, NET6, "10.2.0.0/24"],
                &[GW, GW6, "10.2.0.1"],
                &[],
            )),
            "--subnet",
            "one IPv4 and one IPv6",
        ),
        (
            "an IPv6 range on an IPv4 segment",
            err(segment(&[NET], &[GW], &["fd00:1::10-fd00:1::20"])),
            "--range",
            "no IPv6 --subnet is given; add --subnet and --gateway of that family, or drop the range",
        ),
        (
            "an IPv4 range on an IPv6 segment",
            err(segment(&[NET6], &[GW6], &["10.1.0.10-10.1.0.20"])),
            "--range",
            "no IPv4 --subnet",
        ),
        (
            "a range mixing families",
            err(segment(&[NET, NET6], &[GW, GW6], &["10.1.0.10-fd00:1::20"])),
            "--range",
            "mixes IPv4 and IPv6; give one --range per family",
        ),
        (
            "an IPv6 range backwards",
            err(segment(&[NET6], &[GW6], &["fd00:1::20-fd00:1::10"])),
            "--range",
            "low-high: fd00:1::10-fd00:1::20",
        ),
        (
            "an IPv6 range outside its subnet",
            err(segment(&[NET, NET6], &[GW, GW6], &["fd00:2::10-fd00:2::20"])),
            "--range",
            "fd00:2::10 is outside --subnet fd00:1::/64",
        ),
        (
            "an IPv6 range from the network address",
            err(segment(&[NET6], &[GW6], &["fd00:1::-fd00:1::20"])),
            "--range",
            "fd00:1:: is the network address of --subnet fd00:1::/64",
        ),
        (
            "an IPv4 range to the broadcast address",
            err(tor("r1", NET, GW, None, &["10.1.0.200-10.1.0.255"])),
            "--range",
            "10.1.0.255 is the broadcast address of --subnet 10.1.0.0/24",
        ),
        (
            "overlapping IPv6 ranges",
            err(segment(
                &[NET6],
                &[GW6],
                &["fd00:1::10-fd00:1::20", "fd00:1::1f-fd00:1::30"],
            )),
            "--range",
            "overlaps --range fd00:1::10-fd00:1::20",
        ),
        (
            "a range that is only the gateway",
            err(segment(&[NET6], &[GW6], &["fd00:1::1-fd00:1::1"])),
            "--range",
            "holds only the gateway fd00:1::1",
        ),
        (
            "IPv6 ranges smaller than the IPv4 ones",
            err(segment(&[NET, NET6], &[GW, GW6], &["fd00:1::10-fd00:1::1f"])),
            "--range",
            "holds 16 pod IPs, fewer than the 253 of --subnet 10.1.0.0/24",
        ),
        (
            "an IPv6 subnet smaller than the IPv4 one",
            err(segment(&[NET, "fd00:1::/126"], &[GW, GW6], &[])),
            "--subnet",
            "use a wider IPv6 subnet (a /64)",
        ),
    ];
    assert!(cases.len() >= 40);
    super::super::assert_refusals(cases);
}

#[test]
fn good_tor_becomes_the_request() {
    let req = tor(
        "rack-1",
        "10.1.0.0/24",
        "10.1.0.1",
        Some("100"),
        &["10.1.0.10-10.1.0.99", "10.1.0.200 - 10.1.0.200"],
    )
    .unwrap();
    assert_eq!(req.name, "rack-1");
    assert_eq!(req.subnet, "10.1.0.0/24");
    assert_eq!(req.gateway, "10.1.0.1");
    assert_eq!((req.subnet6.as_str(), req.gateway6.as_str()), ("", ""));
    assert_eq!(req.vlan, 100);
    assert_eq!(req.ranges.len(), 2);
    assert_eq!(req.ranges[1].first, "10.1.0.200");
    assert_eq!(req.ranges[1].last, "10.1.0.200");

    let untagged = tor("r2", "192.168.0.0/30", "192.168.0.2", None, &[]).unwrap();
    assert_eq!(untagged.vlan, 0);
    assert!(untagged.ranges.is_empty());
}

#[test]
fn dual_stack_puts_ipv4_in_subnet_and_ipv6_in_subnet6_whatever_the_order() {
    let ranges = ["FD00:1::100-fd00:1::1ff", "10.1.0.10-10.1.0.99"];
    for (subnets, gateways) in [
        ([NET, "FD00:1:0::/64"], [GW, "fd00:1:0::1"]),
        (["FD00:1:0::/64", NET], ["fd00:1:0::1", GW]),
    ] {
        let req = segment(&subnets, &gateways, &ranges).unwrap();
        assert_eq!(
            (req.subnet.as_str(), req.gateway.as_str()),
            (NET, GW),
            "{subnets:?}"
        );
        assert_eq!(
            (req.subnet6.as_str(), req.gateway6.as_str()),
            (NET6, GW6),
            "{subnets:?}"
        );
        let sent: Vec<(&str, &str)> = req
            .ranges
            .iter()
            .map(|r| (r.first.as_str(), r.last.as_str()))
            .collect();
        assert_eq!(
            sent,
            [("fd00:1::100", "fd00:1::1ff"), ("10.1.0.10", "10.1.0.99")],
            "in the order given, canonical"
        );
    }
}

#[test]
fn ipv6_only_goes_in_subnet_and_a_64_is_never_walked() {
    // A whole /64 (2^64 - 1 host addresses): counted, not enumerated, or
    // this test would not end.
    let req = segment(&[NET6], &[GW6], &[]).unwrap();
    assert_eq!((req.subnet.as_str(), req.gateway.as_str()), (NET6, GW6));
    assert_eq!(req.subnet6, "");
    let wide = segment(
        &[NET6],
        &["fd00:1::ffff:ffff:ffff:ffff"],
        &["fd00:1::1-fd00:1::ffff:ffff:ffff:fffe"],
    )
    .unwrap();
    assert_eq!(wide.ranges[0].last, "fd00:1::ffff:ffff:ffff:fffe");
    // A dual-stack /24 with a /64 and no ranges: the /64 has room for every
    // IPv4 pod's partner.
    assert!(segment(&[NET, NET6], &[GW, GW6], &[]).is_ok());
    // The smallest IPv6 subnet: /126, network address excluded, the last
    // address usable (no broadcast in IPv6).
    let small = segment(&["fd00:1::/126"], &["fd00:1::3"], &["fd00:1::1-fd00:1::3"]);
    assert!(small.is_ok(), "{small:?}");
    // Exactly as many IPv6 pod IPs as IPv4 ones: enough.
    let paired = segment(
        &[NET, NET6],
        &[GW, GW6],
        &["10.1.0.10-10.1.0.19", "fd00:1::10-fd00:1::19"],
    );
    assert!(paired.is_ok(), "{paired:?}");
}
