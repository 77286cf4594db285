//! Announcements: tell the L2 domain "IP x is at MAC y now", with a
//! gratuitous ARP for the pod's IPv4 address (`arp`) and an unsolicited
//! neighbour advertisement for its IPv6 one (`ndp`), sent from the pod's
//! interface on one schedule: the first before ADD returns, two more at
//! +200 ms and +1 s. The duplicate-address probe (`probe`) uses the same
//! sockets.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::arp::{gratuitous_arp, ETH_P_ARP};
use super::ndp::{unsolicited_na, ETH_P_IPV6};

/// Packet sockets bound to one interface, ready to send the same
/// announcements again. A socket keeps its netns after the thread that
/// opened it has left, so later announcements need no `setns`.
pub(crate) struct Announcer {
    socket: OwnedFd,
    pub(super) ifindex: i32,
    pub(super) mac: [u8; 6],
    /// The pod's addresses, announced (and probed) in this order.
    pub(super) ips: Vec<IpAddr>,
    /// With a duplicate-address probe: sockets that receive the interface's
    /// ARP frames (if the pod has an IPv4 address) and IPv6 frames (if it
    /// has an IPv6 one), opened (in the pod's netns) with the other.
    pub(super) listeners: Vec<OwnedFd>,
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

fn link_addr(ifindex: i32, protocol: u16) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut a: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    a.sll_family = libc::AF_PACKET as u16;
    a.sll_protocol = protocol.to_be();
    a.sll_ifindex = ifindex;
    a
}

/// A packet socket receiving the `protocol` frames of interface `ifindex`.
fn listener(ifindex: i32, protocol: u16) -> io::Result<OwnedFd> {
    let l = packet_socket(protocol)?;
    let addr = link_addr(ifindex, protocol);
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
    Ok(l)
}

impl Announcer {
    /// Opens the sockets in the calling thread's netns, for interface
    /// `ifindex` and the pod's addresses `ips`; with `probe`, also the ones
    /// [`Announcer::probe`] listens on.
    pub(crate) fn open(
        ifindex: u32,
        mac: [u8; 6],
        ips: Vec<IpAddr>,
        probe: bool,
    ) -> io::Result<Self> {
        // Protocol 0: this socket only sends, the kernel hands it no packets.
        let socket = packet_socket(0)?;
        let ifindex =
            i32::try_from(ifindex).map_err(|_| io::Error::other("ifindex out of range"))?;
        let mut listeners = Vec::new();
        if probe {
            if ips.iter().any(IpAddr::is_ipv4) {
                listeners.push(listener(ifindex, ETH_P_ARP)?);
            }
            if ips.iter().any(IpAddr::is_ipv6) {
                listeners.push(listener(ifindex, ETH_P_IPV6)?);
            }
        }
        Ok(Announcer {
            socket,
            ifindex,
            mac,
            ips,
            listeners,
        })
    }

    /// Sends the announcements once: a gratuitous ARP for the IPv4 address,
    /// an unsolicited neighbour advertisement for the IPv6 one. On an error,
    /// the address it was about.
    pub(crate) fn send(&self) -> Result<(), (IpAddr, io::Error)> {
        for &ip in &self.ips {
            let sent = match ip {
                IpAddr::V4(v4) => self.send_frame(&gratuitous_arp(self.mac, v4)),
                IpAddr::V6(v6) => self.send_frame(&unsolicited_na(self.mac, v6)),
            };
            sent.map_err(|e| (ip, e))?;
            crate::metrics::global().announcement(if ip.is_ipv4() { "ipv4" } else { "ipv6" });
        }
        Ok(())
    }

    /// Sends one whole Ethernet frame (header included) out of the
    /// interface.
    pub(super) fn send_frame(&self, frame: &[u8]) -> io::Result<()> {
        let protocol = u16::from_be_bytes([frame[12], frame[13]]);
        let mut to = link_addr(self.ifindex, protocol);
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&frame[..6]);
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
}

/// Sends the first announcements; `Announce` names the address that failed.
pub(crate) fn announce_first(
    announcer: &Announcer,
    link: &super::PodLink,
) -> Result<(), super::DatapathError> {
    announcer
        .send()
        .map_err(|(ip, source)| super::DatapathError::Announce {
            ip,
            ifname: link.ifname.clone(),
            source,
        })
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
        if let Err((ip, e)) = announcer.send() {
            // The pod may be gone already; nothing to undo.
            tracing::debug!(ifname = %link.ifname, netns = %link.netns.display(),
                %ip, error = %e, "later announcement not sent");
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
