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

/// A packet socket bound to one interface, ready to send the same
/// announcement again. The socket keeps its netns after the thread that opened
/// it has left, so later announcements need no `setns`.
pub(crate) struct Announcer {
    socket: OwnedFd,
    ifindex: i32,
    mac: [u8; 6],
    ip: Ipv4Addr,
    frame: [u8; GARP_LEN],
    /// With a duplicate-address probe: a socket that receives the
    /// interface's ARP frames, opened (in the pod's netns) with the other.
    listener: Option<OwnedFd>,
}

fn packet_socket(protocol: u16) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(protocol.to_be()),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket() and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn link_addr(ifindex: i32) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut a: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    a.sll_family = libc::AF_PACKET as u16;
    a.sll_protocol = ETH_P_ARP.to_be();
    a.sll_ifindex = ifindex;
    a
}

impl Announcer {
    /// Opens the socket in the calling thread's netns, for interface
    /// `ifindex`; with `probe`, also the one [`Announcer::probe`] listens on.
    pub(crate) fn open(ifindex: u32, mac: [u8; 6], ip: Ipv4Addr, probe: bool) -> io::Result<Self> {
        // Protocol 0: this socket only sends, the kernel hands it no packets.
        let socket = packet_socket(0)?;
        let ifindex =
            i32::try_from(ifindex).map_err(|_| io::Error::other("ifindex out of range"))?;
        let listener = if probe {
            let l = packet_socket(ETH_P_ARP)?;
            let addr = link_addr(ifindex);
            // SAFETY: `addr` is a valid sockaddr_ll for the length given.
            let rc = unsafe {
                libc::bind(
                    l.as_raw_fd(),
                    std::ptr::addr_of!(addr).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            Some(l)
        } else {
            None
        };
        Ok(Announcer {
            socket,
            ifindex,
            mac,
            ip,
            frame: gratuitous_arp(mac, ip),
            listener,
        })
    }

    /// Sends the announcement once.
    pub(crate) fn send(&self) -> io::Result<()> {
        self.send_frame(&self.frame)?;
        crate::metrics::global().announcement("ipv4");
        Ok(())
    }

    fn send_frame(&self, frame: &[u8; GARP_LEN]) -> io::Result<()> {
        let mut to = link_addr(self.ifindex);
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        // SAFETY: the buffer and address pointers are valid for the lengths
        // given, and the socket is open for the lifetime of `self`.
        let sent = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
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

    /// The duplicate-address probe (RFC 5227, compressed into `window`):
    /// three ARP probes spread over the window, listening all along for a
    /// frame that shows another owner of the IP. Returns that owner's MAC.
    /// Blocking: run it off the async runtime. Opened without `probe`, it
    /// finds nothing.
    pub(crate) fn probe(&self, window: std::time::Duration) -> io::Result<Option<[u8; 6]>> {
        let Some(listener) = &self.listener else {
            return Ok(None);
        };
        let probe = arp_probe(self.mac, self.ip);
        let start = std::time::Instant::now();
        let sends = [std::time::Duration::ZERO, window / 3, window * 2 / 3];
        let mut sent = 0;
        let mut buf = [0u8; 1514];
        loop {
            let elapsed = start.elapsed();
            if sent < sends.len() && elapsed >= sends[sent] {
                self.send_frame(&probe)?;
                sent += 1;
                continue;
            }
            if elapsed >= window {
                return Ok(None);
            }
            let until = if sent < sends.len() {
                sends[sent]
            } else {
                window
            };
            let wait_ms = (until - elapsed).as_millis().clamp(1, i32::MAX as u128) as i32;
            let mut pfd = libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let n = unsafe { libc::poll(&mut pfd, 1, wait_ms) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                continue;
            }
            // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `buf` and `from` are valid for the lengths given;
            // MSG_DONTWAIT keeps the call from blocking after poll said
            // there is a frame.
            let got = unsafe {
                libc::recvfrom(
                    listener.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    std::ptr::addr_of_mut!(from).cast(),
                    &mut from_len,
                )
            };
            if got < 0 {
                let e = io::Error::last_os_error();
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) {
                    continue;
                }
                return Err(e);
            }
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                // Our own probes, seen on their way out.
                continue;
            }
            if let Some(mac) = conflict_in(&buf[..got as usize], self.ip, self.mac) {
                return Ok(Some(mac));
            }
        }
    }
}

/// Runs the duplicate-address probe (when `window` is set) off the async
/// runtime; a frame of another owner of the pod's IP fails the wiring with
/// [`super::DatapathError::AddressConflict`]. Gives the announcer back for
/// the announcements.
pub(crate) async fn probe_for_owner(
    announcer: Announcer,
    window: Option<std::time::Duration>,
    link: &super::PodLink,
) -> Result<Announcer, super::DatapathError> {
    let Some(window) = window else {
        return Ok(announcer);
    };
    let ip = link.address.ip();
    let started = std::time::Instant::now();
    let (announcer, found) = tokio::task::spawn_blocking(move || {
        let found = announcer.probe(window);
        (announcer, found)
    })
    .await
    .map_err(|e| super::DatapathError::Worker {
        netns: link.netns.clone(),
        reason: format!("duplicate-address probe task failed: {e}"),
    })?;
    match found {
        Ok(None) => {
            tracing::debug!(%ip, took = ?started.elapsed(), "duplicate-address probe: no other owner");
            Ok(announcer)
        }
        Ok(Some(mac)) => {
            crate::metrics::global().dad_conflict();
            close_off_runtime(announcer);
            Err(super::DatapathError::AddressConflict {
                ip,
                mac: moor_proto::format_mac(&mac),
            })
        }
        Err(source) => {
            close_off_runtime(announcer);
            Err(super::DatapathError::Announce {
                ip,
                ifname: link.ifname.clone(),
                source,
            })
        }
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
            break;
        }
    }
    close_off_runtime(announcer);
}

/// Closes the announcer's packet sockets on a blocking thread: closing a
/// packet socket waits in the kernel (about 10 ms, for an RCU grace period),
/// and done on one of ipamd's two async workers it stalled every request
/// behind it (8 concurrent DELs' p99 went from about 60 ms to 650 ms in the
/// OVS benchmark).
pub(crate) fn close_off_runtime(announcer: Announcer) {
    tokio::task::spawn_blocking(move || drop(announcer));
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
