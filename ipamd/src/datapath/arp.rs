//! ARP frames (IPv4): the gratuitous ARP that announces a pod's IPv4
//! address, the RFC 5227 probe, and what in a received ARP frame shows
//! another owner of the address. Pure: no sockets (see `announce`).
//!
//! A sticky IP comes back on another node, or after a restart, with a veth
//! the switches and peers have never seen; without an announcement they keep
//! the old port or MAC until their caches expire (the anchors' "stale ARP
//! after IP reuse"). Linux peers update an existing neighbour entry on a
//! gratuitous ARP even with the default `arp_accept=0`.

use std::net::Ipv4Addr;

/// Length of an Ethernet header plus an ARP packet for IPv4 over Ethernet.
pub const GARP_LEN: usize = 14 + 28;

pub(crate) const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ARPHRD_ETHER: u16 = 1;
const ARPOP_REQUEST: u16 = 1;

/// A gratuitous ARP request (RFC 5227 "ARP announcement"), Ethernet header
/// included: broadcast, sender and target IP both `ip`, sender MAC `mac`,
/// target MAC zero. A request rather than a reply because every stack
/// processes broadcast requests, and switches learn `mac` from the source.
/// Not padded to 60 bytes: the NIC that puts it on a wire pads it.
pub fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr) -> [u8; GARP_LEN] {
    let mut frame = [0u8; GARP_LEN];
    // Ethernet: destination, source, EtherType.
    frame[0..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&mac);
    frame[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // ARP: hardware type, protocol type, lengths, operation.
    frame[14..16].copy_from_slice(&ARPHRD_ETHER.to_be_bytes());
    frame[16..18].copy_from_slice(&ETH_P_IP.to_be_bytes());
    frame[18] = 6;
    frame[19] = 4;
    frame[20..22].copy_from_slice(&ARPOP_REQUEST.to_be_bytes());
    // Sender MAC and IP, target MAC (zero) and IP.
    frame[22..28].copy_from_slice(&mac);
    frame[28..32].copy_from_slice(&ip.octets());
    frame[38..42].copy_from_slice(&ip.octets());
    frame
}

/// An RFC 5227 ARP probe for `ip`: like the announcement, but with sender
/// IP 0.0.0.0, so that no peer learns anything from it and the owner of
/// `ip`, if there is one, answers.
pub fn arp_probe(mac: [u8; 6], ip: Ipv4Addr) -> [u8; GARP_LEN] {
    let mut frame = gratuitous_arp(mac, ip);
    frame[28..32].copy_from_slice(&[0; 4]);
    frame
}

/// Whether an ARP frame that came in from the network shows that another
/// interface uses (or is probing for) `ip`: its sender IP is `ip` (an
/// answer to our probe, or any traffic of the owner), or it is a probe for
/// `ip` itself (RFC 5227 2.1.1: two hosts probing at once both back off).
/// Returns that interface's MAC. A sender IP of `ip` conflicts whatever the
/// MAC: another moor pod with the same IP (two stores disagreeing) has the
/// same MAC as ours; our own frames are told apart by the socket
/// (`PACKET_OUTGOING`). A probe from our own MAC is ours reflected back (a
/// hairpin, a switch echoing it), not a rival.
pub fn conflict_in(frame: &[u8], ip: Ipv4Addr, own_mac: [u8; 6]) -> Option<[u8; 6]> {
    if frame.len() < GARP_LEN
        || frame[12..14] != ETH_P_ARP.to_be_bytes()
        || frame[16..18] != ETH_P_IP.to_be_bytes()
        || frame[18] != 6
        || frame[19] != 4
    {
        return None;
    }
    let sender_mac: [u8; 6] = frame[22..28].try_into().expect("6 bytes");
    let sender_ip = Ipv4Addr::from(<[u8; 4]>::try_from(&frame[28..32]).expect("4 bytes"));
    let target_ip = Ipv4Addr::from(<[u8; 4]>::try_from(&frame[38..42]).expect("4 bytes"));
    let is_request = frame[20..22] == ARPOP_REQUEST.to_be_bytes();
    let probing_too =
        is_request && sender_ip.is_unspecified() && target_ip == ip && sender_mac != own_mac;
    (sender_ip == ip || probing_too).then_some(sender_mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: [u8; 6] = [0x0a, 0x58, 0x0a, 0x01, 0x00, 0x11];
    const OTHER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
    const IP: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 17);

    #[test]
    fn probe_has_no_sender_ip() {
        let p = arp_probe(OWN, IP);
        assert_eq!(p[28..32], [0, 0, 0, 0]);
        assert_eq!(p[38..42], IP.octets());
        assert_eq!(p[22..28], OWN);
    }

    #[test]
    fn conflicts_are_frames_of_another_owner_or_prober() {
        // The owner's answer (or any of its ARP traffic) names it.
        let mut answer = gratuitous_arp(OTHER, IP);
        answer[20..22].copy_from_slice(&2u16.to_be_bytes());
        assert_eq!(conflict_in(&answer, IP, OWN), Some(OTHER));
        assert_eq!(
            conflict_in(&gratuitous_arp(OTHER, IP), IP, OWN),
            Some(OTHER)
        );
        // Someone probing for the same IP at the same time.
        assert_eq!(conflict_in(&arp_probe(OTHER, IP), IP, OWN), Some(OTHER));
        // Another moor pod with the same IP has the same MAC as ours.
        assert_eq!(conflict_in(&gratuitous_arp(OWN, IP), IP, OWN), Some(OWN));
        // Not conflicts: our own probe reflected back, other IPs, other
        // protocols, runts.
        assert_eq!(conflict_in(&arp_probe(OWN, IP), IP, OWN), None);
        let elsewhere = Ipv4Addr::new(10, 1, 0, 18);
        assert_eq!(
            conflict_in(&gratuitous_arp(OTHER, elsewhere), IP, OWN),
            None
        );
        assert_eq!(conflict_in(&arp_probe(OTHER, elsewhere), IP, OWN), None);
        let mut ipv4 = gratuitous_arp(OTHER, IP);
        ipv4[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        assert_eq!(conflict_in(&ipv4, IP, OWN), None);
        assert_eq!(conflict_in(&answer[..30], IP, OWN), None);
    }

    #[test]
    fn gratuitous_arp_bytes() {
        let frame = gratuitous_arp(
            [0x0a, 0x58, 0x0a, 0x01, 0x00, 0x11],
            Ipv4Addr::new(10, 1, 0, 17),
        );
        #[rustfmt::skip]
        let expected: [u8; GARP_LEN] = [
            // Ethernet: broadcast <- pod MAC, ARP
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x0a, 0x58, 0x0a, 0x01, 0x00, 0x11,
            0x08, 0x06,
            // Ethernet/IPv4, hlen 6, plen 4, request
            0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01,
            // sender MAC, sender IP
            0x0a, 0x58, 0x0a, 0x01, 0x00, 0x11, 10, 1, 0, 17,
            // target MAC (zero), target IP = sender IP
            0, 0, 0, 0, 0, 0, 10, 1, 0, 17,
        ];
        assert_eq!(frame, expected);
    }
}
