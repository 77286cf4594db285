//! Neighbour discovery frames (IPv6, RFC 4861 and 4862): the unsolicited
//! neighbour advertisement that announces a pod's IPv6 address, the
//! duplicate-address-detection solicitation that probes for another owner,
//! and what in a received frame shows one. The IPv6 counterparts of `arp`.
//! Pure: no sockets (see `announce` and `probe`).
//!
//! Linux peers and routers update an existing neighbour entry for the
//! target on an unsolicited advertisement with the Override flag (it does
//! not create one), as they do for a gratuitous ARP.

use std::net::Ipv6Addr;

/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_ICMPV6: u8 = 58;
const NEIGHBOUR_SOLICITATION: u8 = 135;
const NEIGHBOUR_ADVERTISEMENT: u8 = 136;
/// RFC 4861 7.1: receivers drop ND messages with any other hop limit (a
/// sign they came through a router).
const ND_HOP_LIMIT: u8 = 255;
const OPTION_SOURCE_LL: u8 = 1;
const OPTION_TARGET_LL: u8 = 2;
/// The Override flag of an NA (first byte after the checksum: Router 0x80,
/// Solicited 0x40, Override 0x20).
const NA_OVERRIDE: u8 = 0x20;

const ETH_LEN: usize = 14;
const IPV6_LEN: usize = 40;
/// ICMPv6 header (4), flags/reserved (4), target (16).
const ND_LEN: usize = 24;
/// One link-layer address option for Ethernet: type, length in units of 8
/// bytes, MAC.
const LL_OPTION_LEN: usize = 8;

/// Length of an unsolicited neighbour advertisement, Ethernet included.
pub const NA_LEN: usize = ETH_LEN + IPV6_LEN + ND_LEN + LL_OPTION_LEN;
/// Length of a duplicate-address-detection solicitation, Ethernet included.
pub const DAD_NS_LEN: usize = ETH_LEN + IPV6_LEN + ND_LEN;

/// ff02::1, every node on the link.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// The solicited-node multicast group of `ip` (RFC 4291 2.7.1):
/// ff02::1:ffXX:XXXX with the low 24 bits of `ip`, the group its owner
/// listens on for solicitations.
pub fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    let mut g = [0u8; 16];
    g[0] = 0xff;
    g[1] = 0x02;
    g[11] = 0x01;
    g[12] = 0xff;
    g[13..16].copy_from_slice(&o[13..16]);
    Ipv6Addr::from(g)
}

/// The Ethernet address of IPv6 multicast group `group` (RFC 2464 7):
/// 33:33 and its low 32 bits.
pub fn multicast_mac(group: Ipv6Addr) -> [u8; 6] {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// The ICMPv6 checksum of `message` (its checksum field zero) sent from
/// `src` to `dst`: the one's complement sum over the IPv6 pseudo-header
/// (RFC 8200 8.1: addresses, upper-layer length, next header) and the
/// message.
pub fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, message: &[u8]) -> u16 {
    !fold(pseudo_header_sum(src, dst, message.len()) + sum_words(message))
}

fn pseudo_header_sum(src: Ipv6Addr, dst: Ipv6Addr, len: usize) -> u64 {
    let len = u32::try_from(len).expect("ICMPv6 message shorter than 4 GiB");
    sum_words(&src.octets())
        + sum_words(&dst.octets())
        + u64::from(len >> 16)
        + u64::from(len & 0xffff)
        + u64::from(IPPROTO_ICMPV6)
}

fn sum_words(bytes: &[u8]) -> u64 {
    bytes
        .chunks(2)
        .map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Writes the Ethernet and IPv6 headers of an ICMPv6 message of
/// `payload_len` bytes and the message's checksum (the message itself
/// already in place after the headers).
fn finish(frame: &mut [u8], dst_mac: [u8; 6], src_mac: [u8; 6], src: Ipv6Addr, dst: Ipv6Addr) {
    let payload_len = frame.len() - ETH_LEN - IPV6_LEN;
    frame[0..6].copy_from_slice(&dst_mac);
    frame[6..12].copy_from_slice(&src_mac);
    frame[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
    let ip = &mut frame[ETH_LEN..ETH_LEN + IPV6_LEN];
    // Version 6, traffic class and flow label 0.
    ip[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
    ip[4..6].copy_from_slice(&(payload_len as u16).to_be_bytes());
    ip[6] = IPPROTO_ICMPV6;
    ip[7] = ND_HOP_LIMIT;
    ip[8..24].copy_from_slice(&src.octets());
    ip[24..40].copy_from_slice(&dst.octets());
    let message = &mut frame[ETH_LEN + IPV6_LEN..];
    message[2..4].copy_from_slice(&[0, 0]);
    let checksum = icmpv6_checksum(src, dst, message);
    message[2..4].copy_from_slice(&checksum.to_be_bytes());
}

/// An unsolicited neighbour advertisement (RFC 4861 4.4, 7.2.6) for `ip` at
/// `mac`, Ethernet header included: from `ip` itself to all nodes (ff02::1,
/// 33:33:00:00:00:01), hop limit 255, Override set and Solicited clear (so
/// that receivers replace the MAC they have for `ip`), a Target Link-Layer
/// Address option with `mac`. Not padded: the NIC that puts it on a wire
/// pads it.
pub fn unsolicited_na(mac: [u8; 6], ip: Ipv6Addr) -> [u8; NA_LEN] {
    let mut frame = [0u8; NA_LEN];
    let m = &mut frame[ETH_LEN + IPV6_LEN..];
    m[0] = NEIGHBOUR_ADVERTISEMENT;
    m[4] = NA_OVERRIDE;
    m[8..24].copy_from_slice(&ip.octets());
    m[24] = OPTION_TARGET_LL;
    m[25] = 1;
    m[26..32].copy_from_slice(&mac);
    finish(&mut frame, multicast_mac(ALL_NODES), mac, ip, ALL_NODES);
    frame
}

/// A duplicate-address-detection solicitation for `ip` (RFC 4862 5.4.2),
/// Ethernet header included: from the unspecified address `::` (so that no
/// receiver learns anything from it, and the owner of `ip`, if any, answers
/// to all nodes), to the solicited-node group of `ip`, hop limit 255, no
/// source link-layer address option (RFC 4861 7.2.2 forbids one with `::`).
/// `mac` is only the Ethernet source.
pub fn dad_ns(mac: [u8; 6], ip: Ipv6Addr) -> [u8; DAD_NS_LEN] {
    let mut frame = [0u8; DAD_NS_LEN];
    let m = &mut frame[ETH_LEN + IPV6_LEN..];
    m[0] = NEIGHBOUR_SOLICITATION;
    m[8..24].copy_from_slice(&ip.octets());
    let group = solicited_node(ip);
    finish(
        &mut frame,
        multicast_mac(group),
        mac,
        Ipv6Addr::UNSPECIFIED,
        group,
    );
    frame
}

/// Whether an IPv6 frame that came in from the network shows that another
/// interface uses (or is probing for) `ip`; returns that interface's MAC
/// (the message's link-layer address option, else the Ethernet source):
/// - an advertisement for `ip`, whatever the MAC: the owner answering our
///   probe, or announcing itself. As with ARP, another moor pod with `ip`
///   has our very MAC (it is derived from the IP), and our own frames are
///   told apart by the socket (`PACKET_OUTGOING`);
/// - a solicitation from `ip` (the owner resolving a neighbour);
/// - a solicitation from `::` for `ip` from another MAC: someone probing
///   for it at the same time (RFC 4862 5.4.3: both back off). From our own
///   MAC it is our probe reflected back (a hairpin, a switch echoing it).
///
/// Anything not a well-formed ND message (hop limit 255, code 0, right
/// checksum) is not evidence.
pub fn conflict_in(frame: &[u8], ip: Ipv6Addr, own_mac: [u8; 6]) -> Option<[u8; 6]> {
    let message = nd_message(frame)?;
    let eth_source: [u8; 6] = frame[6..12].try_into().expect("6 bytes");
    let source = Ipv6Addr::from(<[u8; 16]>::try_from(&frame[22..38]).expect("16 bytes"));
    let target = Ipv6Addr::from(<[u8; 16]>::try_from(&message[8..24]).expect("16 bytes"));
    match message[0] {
        NEIGHBOUR_ADVERTISEMENT if target == ip => {
            Some(ll_option(message, OPTION_TARGET_LL).unwrap_or(eth_source))
        }
        NEIGHBOUR_SOLICITATION if source == ip => {
            Some(ll_option(message, OPTION_SOURCE_LL).unwrap_or(eth_source))
        }
        NEIGHBOUR_SOLICITATION
            if source.is_unspecified() && target == ip && eth_source != own_mac =>
        {
            Some(eth_source)
        }
        _ => None,
    }
}

/// The ICMPv6 message of `frame` if it is a neighbour solicitation or
/// advertisement that a host would accept (RFC 4861 7.1.1, 7.1.2).
fn nd_message(frame: &[u8]) -> Option<&[u8]> {
    if frame.len() < ETH_LEN + IPV6_LEN + ND_LEN
        || frame[12..14] != ETH_P_IPV6.to_be_bytes()
        || frame[ETH_LEN] >> 4 != 6
        || frame[ETH_LEN + 6] != IPPROTO_ICMPV6
        || frame[ETH_LEN + 7] != ND_HOP_LIMIT
    {
        return None;
    }
    let payload_len = usize::from(u16::from_be_bytes([frame[18], frame[19]]));
    let message = frame.get(ETH_LEN + IPV6_LEN..ETH_LEN + IPV6_LEN + payload_len)?;
    if message.len() < ND_LEN
        || !matches!(message[0], NEIGHBOUR_SOLICITATION | NEIGHBOUR_ADVERTISEMENT)
        || message[1] != 0
    {
        return None;
    }
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&frame[22..38]).expect("16 bytes"));
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&frame[38..54]).expect("16 bytes"));
    // Summed with its own checksum in place, a good message sums to 0xffff.
    (fold(pseudo_header_sum(src, dst, message.len()) + sum_words(message)) == 0xffff)
        .then_some(message)
}

/// The MAC in the first link-layer address option of `kind`, if any.
fn ll_option(message: &[u8], kind: u8) -> Option<[u8; 6]> {
    let mut options = &message[ND_LEN..];
    while options.len() >= 2 {
        let len = usize::from(options[1]) * 8;
        if len == 0 || len > options.len() {
            return None;
        }
        if options[0] == kind && len >= LL_OPTION_LEN {
            return options[2..8].try_into().ok();
        }
        options = &options[len..];
    }
    None
}

#[cfg(test)]
#[path = "ndp_tests.rs"]
mod tests;
