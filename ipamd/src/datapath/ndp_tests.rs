//! The bytes of moor's ND frames, and what counts as a conflict. The
//! checksums were computed apart (a Python one's-complement sum over the
//! pseudo-header) and the frames read back by `tcpdump -vv` ("icmp6 sum ok").

use super::*;

const OWN: [u8; 6] = [0x0a, 0x59, 0, 0, 0, 0x11];
const OTHER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
const IP: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x11);

#[test]
fn unsolicited_na_bytes() {
    #[rustfmt::skip]
    let expected: [u8; NA_LEN] = [
        // Ethernet: all-nodes multicast <- pod MAC, IPv6
        0x33, 0x33, 0, 0, 0, 1,
        0x0a, 0x59, 0, 0, 0, 0x11,
        0x86, 0xdd,
        // IPv6: version 6, payload 32, ICMPv6, hop limit 255
        0x60, 0, 0, 0, 0, 32, 58, 255,
        // source: the address itself
        0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11,
        // destination: ff02::1
        0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
        // NA, code 0, checksum; Override only (not Solicited, not Router)
        136, 0, 0x52, 0x10, 0x20, 0, 0, 0,
        // target
        0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11,
        // Target Link-Layer Address option, 1 x 8 bytes: the pod's MAC
        2, 1, 0x0a, 0x59, 0, 0, 0, 0x11,
    ];
    assert_eq!(unsolicited_na(OWN, IP), expected);
}

#[test]
fn dad_ns_bytes() {
    #[rustfmt::skip]
    let expected: [u8; DAD_NS_LEN] = [
        // Ethernet: the solicited-node group's MAC <- pod MAC, IPv6
        0x33, 0x33, 0xff, 0, 0, 0x11,
        0x0a, 0x59, 0, 0, 0, 0x11,
        0x86, 0xdd,
        // IPv6: version 6, payload 24, ICMPv6, hop limit 255
        0x60, 0, 0, 0, 0, 24, 58, 255,
        // source: unspecified
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        // destination: ff02::1:ff00:11
        0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0x11,
        // NS, code 0, checksum, reserved
        135, 0, 0x7d, 0x84, 0, 0, 0, 0,
        // target; no options
        0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11,
    ];
    assert_eq!(dad_ns(OWN, IP), expected);
}

#[test]
fn solicited_node_group_and_multicast_macs() {
    let ip: Ipv6Addr = "2001:db8::1234:5678".parse().unwrap();
    assert_eq!(
        solicited_node(ip),
        "ff02::1:ff34:5678".parse::<Ipv6Addr>().unwrap()
    );
    assert_eq!(
        multicast_mac(solicited_node(ip)),
        [0x33, 0x33, 0xff, 0x34, 0x56, 0x78]
    );
    assert_eq!(multicast_mac(ALL_NODES), [0x33, 0x33, 0, 0, 0, 1]);
}

#[test]
fn checksum_sums_the_pseudo_header_and_pads_odd_lengths() {
    // ::1 to ::1 (1 + 1), length 3, next header 58; the message's words
    // 0x0102 and 0x0300 (the odd last byte is the high byte of a word).
    let one = Ipv6Addr::LOCALHOST;
    assert_eq!(
        icmpv6_checksum(one, one, &[1, 2, 3]),
        !(2 + 3 + 58 + 0x0102 + 0x0300u16)
    );
    // Carries fold back in: 0xffff + 0xffff + 4 + 58 = 0x2003c, folded
    // 0x003c + 0x2.
    let z = Ipv6Addr::UNSPECIFIED;
    assert_eq!(icmpv6_checksum(z, z, &[0xff, 0xff, 0xff, 0xff]), !0x003eu16);
}

/// `frame` with its ICMPv6 checksum recomputed after an edit.
fn resum(mut frame: Vec<u8>) -> Vec<u8> {
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&frame[22..38]).unwrap());
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&frame[38..54]).unwrap());
    frame[56..58].copy_from_slice(&[0, 0]);
    let sum = icmpv6_checksum(src, dst, &frame[54..]);
    frame[56..58].copy_from_slice(&sum.to_be_bytes());
    frame
}

/// A solicited NA from `mac` for `target`, as the owner answers a probe
/// (to all nodes, Solicited clear as RFC 4861 7.2.4 says for a DAD NS).
fn answer(mac: [u8; 6], target: Ipv6Addr) -> Vec<u8> {
    unsolicited_na(mac, target).to_vec()
}

#[test]
fn conflicts_are_frames_of_another_owner_or_prober() {
    // The owner's advertisement names its MAC (the option's, which may
    // differ from the Ethernet source behind a proxy).
    assert_eq!(conflict_in(&answer(OTHER, IP), IP, OWN), Some(OTHER));
    let mut proxied = answer(OTHER, IP);
    proxied[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0x42]);
    assert_eq!(conflict_in(&proxied, IP, OWN), Some(OTHER));
    // Without the option: the Ethernet source.
    let mut bare = answer(OTHER, IP);
    bare.truncate(NA_LEN - LL_OPTION_LEN);
    bare[19] = (ND_LEN) as u8;
    assert_eq!(conflict_in(&resum(bare), IP, OWN), Some(OTHER));
    // Someone probing for the same address at the same time.
    assert_eq!(conflict_in(&dad_ns(OTHER, IP), IP, OWN), Some(OTHER));
    // Another moor pod with the same IP has the same MAC as ours.
    assert_eq!(conflict_in(&answer(OWN, IP), IP, OWN), Some(OWN));
    // The owner resolving a neighbour: an NS from the address itself.
    let mut resolving = dad_ns(OTHER, "fd00:1::1".parse().unwrap()).to_vec();
    resolving[22..38].copy_from_slice(&IP.octets());
    assert_eq!(conflict_in(&resum(resolving), IP, OWN), Some(OTHER));

    // Not conflicts: our own probe reflected back, other addresses.
    assert_eq!(conflict_in(&dad_ns(OWN, IP), IP, OWN), None);
    let elsewhere: Ipv6Addr = "fd00:1::12".parse().unwrap();
    assert_eq!(conflict_in(&answer(OTHER, elsewhere), IP, OWN), None);
    assert_eq!(conflict_in(&dad_ns(OTHER, elsewhere), IP, OWN), None);
}

#[test]
fn malformed_or_routed_frames_are_no_evidence() {
    let good = answer(OTHER, IP);
    let spoiled = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut f = good.clone();
        edit(&mut f);
        conflict_in(&f, IP, OWN)
    };
    assert_eq!(spoiled(&|_| {}), Some(OTHER));
    // A hop limit below 255: it came through a router (RFC 4861 7.1.2).
    assert_eq!(spoiled(&|f| f[21] = 254), None);
    // A wrong checksum.
    assert_eq!(spoiled(&|f| f[57] ^= 1), None);
    // Not IPv6, not ICMPv6, not code 0, not ND (an echo request).
    assert_eq!(spoiled(&|f| f[12..14].copy_from_slice(&[0x08, 0])), None);
    assert_eq!(spoiled(&|f| f[20] = 17), None);
    assert_eq!(
        spoiled(&|f| *f = resum({
            let mut g = f.clone();
            g[55] = 1;
            g
        })),
        None
    );
    assert_eq!(
        spoiled(&|f| *f = resum({
            let mut g = f.clone();
            g[54] = 128;
            g
        })),
        None
    );
    // Runts, and a payload length past the frame.
    assert_eq!(conflict_in(&good[..60], IP, OWN), None);
    assert_eq!(spoiled(&|f| f[19] = 200), None);
    // A zero-length option ends the walk (RFC 4861 4.6: discard), so the
    // MAC falls back to the Ethernet source.
    let mut zero_option = good.clone();
    zero_option[79] = 0;
    assert_eq!(conflict_in(&resum(zero_option), IP, OWN), Some(OTHER));
}
