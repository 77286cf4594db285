//! Gratuitous ARP: tells the L2 domain "IP x is at MAC y now".
//!
//! A sticky IP comes back on another node, or after a restart, with a veth
//! the switches and peers have never seen; without an announcement they keep
//! the old port or MAC until their caches expire (the anchors' "stale ARP
//! after IP reuse"). Linux peers update an existing neighbour entry on a
//! gratuitous ARP even with the default `arp_accept=0`.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Length of an Ethernet header plus an ARP packet for IPv4 over Ethernet.
pub const GARP_LEN: usize = 14 + 28;

const ETH_P_ARP: u16 = 0x0806;
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

/// A packet socket bound to one interface, ready to send the same
/// announcement again. The socket keeps its netns after the thread that opened
/// it has left, so later announcements need no `setns`.
pub(crate) struct Announcer {
    socket: OwnedFd,
    ifindex: i32,
    frame: [u8; GARP_LEN],
}

impl Announcer {
    /// Opens the socket in the calling thread's netns, for interface `ifindex`.
    pub(crate) fn open(ifindex: u32, mac: [u8; 6], ip: Ipv4Addr) -> io::Result<Self> {
        // Protocol 0: this socket only sends, the kernel hands it no packets.
        // SAFETY: plain syscall with constant arguments; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket() and is owned by nobody else.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let ifindex =
            i32::try_from(ifindex).map_err(|_| io::Error::other("ifindex out of range"))?;
        Ok(Announcer {
            socket,
            ifindex,
            frame: gratuitous_arp(mac, ip),
        })
    }

    /// Sends the announcement once.
    pub(crate) fn send(&self) -> io::Result<()> {
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_protocol = ETH_P_ARP.to_be();
        to.sll_ifindex = self.ifindex;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        // SAFETY: the buffer and address pointers are valid for the lengths
        // given, and the socket is open for the lifetime of `self`.
        let sent = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                self.frame.as_ptr().cast(),
                self.frame.len(),
                0,
                std::ptr::addr_of!(to).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// When the announcements after the first go out, counted from the previous
/// one: a switch or peer that missed the first (port still coming up,
/// packet lost) gets two more chances within about a second.
const LATER_ANNOUNCEMENTS: [std::time::Duration; 2] = [
    std::time::Duration::from_millis(200),
    std::time::Duration::from_millis(800),
];

/// Sends the announcements after the first; spawned by the datapaths once
/// the first went out. Ends early if the pod is gone.
pub(crate) async fn announce_again(announcer: Announcer, link: super::PodLink) {
    for delay in LATER_ANNOUNCEMENTS {
        tokio::time::sleep(delay).await;
        if let Err(e) = announcer.send() {
            // The pod may be gone already; nothing to undo.
            tracing::debug!(ifname = %link.ifname, netns = %link.netns.display(),
                ip = %link.address.ip(), error = %e, "later gratuitous ARP not sent");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
