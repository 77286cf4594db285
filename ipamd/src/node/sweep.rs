//! The leak sweep: a periodic pass over this node's attachments that ends
//! the ones whose pod is gone while the runtime never said so (a DEL lost
//! when the runtime was killed, a node rebooted under its sandboxes, a
//! netns removed by hand). CNI GC does the same when a runtime asks for it;
//! containerd 1.6 and podman 4 never do, so ipamd cannot wait for them.
//!
//! Releasing an IP that is still in use would give one address to two pods,
//! so an attachment is released only when
//! - it is older than the grace period,
//! - its host veth is gone: a veth pair dies as a whole, so the pod's
//!   interface, and the IP on it, went with it; and a pod netns that is
//!   destroyed takes its veth along. The netns path is only logged: from a
//!   DaemonSet without `mountPropagation: HostToContainer` (or without
//!   hostPID for /proc/PID/ns/net paths) a live pod's netns looks gone, and
//!   the veth never lies that way, and
//! - the previous pass saw it gone too (a pass that races a runtime's own
//!   teardown or a restart of the datapath does not act alone).

use std::collections::HashMap;
use std::path::Path;

use tracing::{info, warn};

use crate::core::{Attachment, AttachmentKey, AttachmentState};
use crate::error::Result;

use super::Node;

/// What one pass decides for one attachment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Gone for the first time: look again next pass.
    Suspect,
    Release,
}

/// What the sweep saw of one attachment's pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub netns_exists: bool,
    pub host_link_exists: bool,
}

/// The pure decision: no I/O, no clock.
pub fn verdict(
    a: &Attachment,
    seen: Seen,
    now_unix: u64,
    grace_secs: u64,
    suspect: bool,
) -> Verdict {
    if a.state != AttachmentState::Ready || a.created_unix.saturating_add(grace_secs) > now_unix {
        return Verdict::Keep;
    }
    if seen.host_link_exists {
        return Verdict::Keep;
    }
    if suspect {
        Verdict::Release
    } else {
        Verdict::Suspect
    }
}

/// Whether `path` is a network namespace: a bind mount of one (runtimes'
/// /run/netns/...) or a process's /proc/PID/ns/net. A leftover plain file
/// where a bind mount was is not.
pub fn is_netns(path: &str) -> bool {
    if path.is_empty() {
        return false;
    }
    // statfs follows /proc/PID/ns/net's magic link to the namespace itself.
    nix::sys::statfs::statfs(Path::new(path))
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// One attachment's suspicion, remembered between passes. The creation time
/// is part of it: a new attachment under the same key starts clean.
#[derive(Default)]
pub struct Sweep {
    suspects: HashMap<AttachmentKey, u64>,
    /// Switch ports seen without their interface on the last pass.
    orphans: std::collections::HashSet<String>,
}

/// What a pass did, for logs and tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub suspects: usize,
    pub released: Vec<AttachmentKey>,
    /// Switch ports removed because their interface was gone twice.
    pub removed_ports: Vec<String>,
    pub errors: Vec<String>,
}

impl Sweep {
    pub fn new() -> Self {
        Self::default()
    }

    pub async fn pass(&mut self, node: &Node) -> Result<SweepReport> {
        // With a shared store (etcd), the node's local mirror lists its
        // attachments without a store read per attachment on every pass of
        // every node; the release itself goes through the store.
        let mine = match &node.mirror {
            Some(m) => m.readable().await?.0.into_iter().map(|c| c.lease).collect(),
            None => node.my_attachments().await?.0,
        };
        let now = node.clock.now_unix();
        let grace = node.cfg.gc_grace.as_secs();
        let mut report = SweepReport::default();
        let mut next = HashMap::new();
        for lease in &mine {
            let Some(a) = lease
                .attachment
                .as_ref()
                .filter(|a| !node.inflight.contains(&a.key))
            else {
                continue;
            };
            let host = moor_proto::host_ifname(&a.key.container_id, &a.key.ifname);
            let seen = Seen {
                // An empty netns (a runtime that gave none) cannot be
                // judged by its netns; the veth still tells.
                netns_exists: a.netns.is_empty() || is_netns(&a.netns),
                host_link_exists: match node.datapath.host_link_exists(&host).await {
                    Ok(e) => e,
                    Err(e) => {
                        // Not knowing is not "gone".
                        report.errors.push(format!("{}: {e}", a.key));
                        continue;
                    }
                },
            };
            let suspect = self.suspects.get(&a.key) == Some(&a.created_unix);
            match verdict(a, seen, now, grace, suspect) {
                Verdict::Keep => {}
                Verdict::Suspect => {
                    report.suspects += 1;
                    next.insert(a.key.clone(), a.created_unix);
                }
                Verdict::Release => match node.del_key(&a.key, true, false).await {
                    Ok(_) => {
                        warn!(
                            key = %a.key, ip = %lease.ip, pod = %a.pod, netns = %a.netns,
                            netns_exists = seen.netns_exists, host_link_exists = seen.host_link_exists,
                            "released an attachment whose pod is gone (the runtime never sent its DEL)"
                        );
                        report.released.push(a.key.clone());
                        crate::metrics::global().sweep_released(1);
                    }
                    Err(e) => {
                        report.errors.push(format!("{}: {e}", a.key));
                        next.insert(a.key.clone(), a.created_unix);
                    }
                },
            }
        }
        self.suspects = next;
        self.sweep_orphan_ports(node, &mut report).await;
        if report.suspects > 0 || !report.released.is_empty() || !report.removed_ports.is_empty() {
            info!(
                suspects = report.suspects,
                released = report.released.len(),
                removed_ports = report.removed_ports.len(),
                "leak sweep"
            );
        }
        Ok(report)
    }

    /// Ports a DEL could not remove (OVS database out of reach): removed
    /// when seen without their interface on two passes in a row. The veth
    /// exists before its port is written, so a port in the middle of an
    /// ADD never looks orphaned.
    async fn sweep_orphan_ports(&mut self, node: &Node, report: &mut SweepReport) {
        let now = match node.datapath.orphan_ports().await {
            Ok(v) => v,
            Err(e) => {
                report.errors.push(format!("listing switch ports: {e}"));
                return;
            }
        };
        let mut next = std::collections::HashSet::new();
        for port in now {
            if !self.orphans.contains(&port) {
                next.insert(port);
                continue;
            }
            match node.datapath.remove_orphan_port(&port).await {
                Ok(true) => {
                    warn!(%port, "removed a switch port whose pod interface is gone");
                    report.removed_ports.push(port);
                }
                Ok(false) => {}
                Err(e) => {
                    report.errors.push(format!("{port}: {e}"));
                    next.insert(port);
                }
            }
        }
        self.orphans = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::PodRef;

    fn att(created: u64, state: AttachmentState) -> Attachment {
        Attachment {
            key: AttachmentKey {
                node: "n1".into(),
                container_id: "c1".into(),
                ifname: "eth0".into(),
            },
            pod: PodRef::default(),
            netns: "/run/netns/x".into(),
            network: "moor".into(),
            state,
            created_unix: created,
            created_binding: false,
        }
    }

    const ALIVE: Seen = Seen {
        netns_exists: true,
        host_link_exists: true,
    };
    const NO_NETNS: Seen = Seen {
        netns_exists: false,
        host_link_exists: true,
    };
    const NO_VETH: Seen = Seen {
        netns_exists: true,
        host_link_exists: false,
    };

    const GONE: Seen = Seen {
        netns_exists: false,
        host_link_exists: false,
    };

    #[test]
    fn veth_gone_twice_after_the_grace_period_is_released() {
        let a = att(100, AttachmentState::Ready);
        for seen in [NO_VETH, GONE] {
            assert_eq!(verdict(&a, seen, 200, 60, false), Verdict::Suspect);
            assert_eq!(verdict(&a, seen, 205, 60, true), Verdict::Release);
        }
    }

    #[test]
    fn alive_young_half_added_or_netns_hidden_is_kept() {
        let a = att(100, AttachmentState::Ready);
        assert_eq!(verdict(&a, ALIVE, 1000, 60, true), Verdict::Keep);
        // A netns path ipamd cannot see (mount propagation) with the veth
        // still there: the pod is alive.
        assert_eq!(verdict(&a, NO_NETNS, 1000, 60, true), Verdict::Keep);
        // Within the grace period, even gone and suspected.
        assert_eq!(verdict(&a, GONE, 159, 60, true), Verdict::Keep);
        assert_eq!(verdict(&a, GONE, 160, 60, false), Verdict::Suspect);
        // A pending ADD is the start-up recovery's, never the sweep's.
        let p = att(100, AttachmentState::Pending);
        assert_eq!(verdict(&p, GONE, 1000, 60, true), Verdict::Keep);
    }

    #[test]
    fn netns_paths_are_told_from_plain_files() {
        assert!(is_netns("/proc/self/ns/net"));
        assert!(is_netns(&format!("/proc/{}/ns/net", std::process::id())));
        assert!(!is_netns("/etc/hostname"));
        assert!(!is_netns("/nonexistent/netns"));
        assert!(!is_netns(""));
    }
}
