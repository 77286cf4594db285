//! The duplicate-address probe (`--dad-probe-ms`, opt-in): before a pod's
//! addresses are announced, ask the segment whether anyone else holds
//! them, ARP probes (RFC 5227) for the IPv4 address and DAD neighbour
//! solicitations (RFC 4862) for the IPv6 one, and listen for an answer.
//!
//! The pod's own kernel does no DAD of its own: its IPv6 address is added
//! with IFA_F_NODAD (usable when ADD returns; `pod_end`), so this probe is
//! the only check, and only when asked for.

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::announce::{close_off_runtime, Announcer};
use super::{arp, ndp, DatapathError, PodLink};

impl Announcer {
    /// The probe, compressed into `window`: three rounds of probes (one per
    /// address) spread over the window, listening all along for a frame
    /// that shows another owner of one of the addresses. Returns that
    /// address and the owner's MAC. Blocking: run it off the async runtime.
    /// Opened without `probe`, it finds nothing.
    pub(crate) fn probe(&self, window: Duration) -> io::Result<Option<(IpAddr, [u8; 6])>> {
        if self.listeners.is_empty() {
            return Ok(None);
        }
        let start = Instant::now();
        let sends = [Duration::ZERO, window / 3, window * 2 / 3];
        let mut sent = 0;
        loop {
            let elapsed = start.elapsed();
            if sent < sends.len() && elapsed >= sends[sent] {
                for &ip in &self.ips {
                    match ip {
                        IpAddr::V4(v4) => self.send_frame(&arp::arp_probe(self.mac, v4))?,
                        IpAddr::V6(v6) => self.send_frame(&ndp::dad_ns(self.mac, v6))?,
                    }
                }
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
            if let Some(found) = self.listen(wait_ms)? {
                return Ok(Some(found));
            }
        }
    }

    /// Waits up to `wait_ms` for frames on the listeners and reads the
    /// ready ones; returns the first conflict they show.
    fn listen(&self, wait_ms: i32) -> io::Result<Option<(IpAddr, [u8; 6])>> {
        let mut fds: Vec<libc::pollfd> = self
            .listeners
            .iter()
            .map(|l| libc::pollfd {
                fd: l.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of pollfd for the length given.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(None)
            } else {
                Err(e)
            };
        }
        let mut buf = [0u8; 1514];
        for fd in fds.iter().filter(|p| p.revents & libc::POLLIN != 0) {
            let Some(frame) = self.receive(fd.fd, &mut buf)? else {
                continue;
            };
            if let Some(found) = self.conflict_in(frame) {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// One frame that came in on the pod's interface from the network, if
    /// there is one.
    fn receive<'b>(&self, fd: i32, buf: &'b mut [u8]) -> io::Result<Option<&'b [u8]>> {
        // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `buf` and `from` are valid for the lengths given;
        // MSG_DONTWAIT keeps the call from blocking after poll said there is
        // a frame.
        let got = unsafe {
            libc::recvfrom(
                fd,
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
                return Ok(None);
            }
            return Err(e);
        }
        // Our own probes, seen on their way out; and frames of another
        // interface queued between the socket's creation and its bind.
        if from.sll_pkttype == libc::PACKET_OUTGOING || from.sll_ifindex != self.ifindex {
            return Ok(None);
        }
        Ok(Some(&buf[..got as usize]))
    }

    fn conflict_in(&self, frame: &[u8]) -> Option<(IpAddr, [u8; 6])> {
        self.ips.iter().find_map(|&ip| {
            let mac = match ip {
                IpAddr::V4(v4) => arp::conflict_in(frame, v4, self.mac),
                IpAddr::V6(v6) => ndp::conflict_in(frame, v6, self.mac),
            };
            mac.map(|mac| (ip, mac))
        })
    }
}

/// Runs the duplicate-address probe (when `window` is set) off the async
/// runtime; a frame of another owner of one of the pod's addresses fails
/// the wiring with [`DatapathError::AddressConflict`]. Gives the announcer
/// back for the announcements.
pub(crate) async fn probe_for_owner(
    announcer: Announcer,
    window: Option<Duration>,
    link: &PodLink,
) -> Result<Announcer, DatapathError> {
    let Some(window) = window else {
        return Ok(announcer);
    };
    let started = Instant::now();
    let (announcer, found) = tokio::task::spawn_blocking(move || {
        let found = announcer.probe(window);
        (announcer, found)
    })
    .await
    .map_err(|e| DatapathError::Worker {
        netns: link.netns.clone(),
        reason: format!("duplicate-address probe task failed: {e}"),
    })?;
    match found {
        Ok(None) => {
            tracing::debug!(ip = %link.address.ip(), took = ?started.elapsed(),
                "duplicate-address probe: no other owner");
            Ok(announcer)
        }
        Ok(Some((ip, mac))) => {
            crate::metrics::global().dad_conflict();
            close_off_runtime(announcer);
            Err(DatapathError::AddressConflict {
                ip,
                mac: moor_proto::format_mac(&mac),
            })
        }
        Err(source) => {
            close_off_runtime(announcer);
            Err(DatapathError::Announce {
                ip: link.address.ip(),
                ifname: link.ifname.clone(),
                source,
            })
        }
    }
}
