//! IPv6 off on the host ends of pod veths.
//!
//! A host end is an L2 port (of the bridge, or of OVS); it has no address
//! of its own to use. With IPv6 on, as the kernel leaves a new link, it
//! makes itself a link-local address when it gets carrier and sends MLD
//! reports, a DAD solicitation and router solicitations for it, into the
//! pod, on every ADD. `disable_ipv6=1` before the pod end comes up (which
//! is what gives the host end carrier) keeps it silent.
//!
//! Sysctls are per netns and `/proc/sys/net` shows the one of the thread
//! that opens the file, so the write is done by a thread that lives in the
//! host ends' netns (ipamd's own, or its `--netns`), started once.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use nix::sched::{setns, CloneFlags};
use tokio::sync::oneshot;

use super::netns::open_netns;
use super::DatapathError;

struct Write {
    ifname: String,
    done: oneshot::Sender<io::Result<()>>,
}

/// The thread writing host ends' sysctls; it ends with the last clone.
#[derive(Clone)]
pub(crate) struct HostSysctl {
    writes: mpsc::Sender<Write>,
}

impl HostSysctl {
    /// Starts the thread in `netns` (`None`: the calling thread's).
    pub(crate) fn start(netns: Option<&Path>) -> Result<Self, DatapathError> {
        let file = netns.map(open_netns).transpose()?;
        let path: PathBuf = netns.map(Path::to_path_buf).unwrap_or_default();
        let (writes, queue) = mpsc::channel::<Write>();
        let (entered_tx, entered) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("moor-sysctl".into())
            .spawn(move || {
                if let Some(file) = &file {
                    if let Err(e) = setns(file, CloneFlags::CLONE_NEWNET) {
                        let _ = entered_tx.send(Err(io::Error::from(e)));
                        return;
                    }
                }
                let _ = entered_tx.send(Ok(()));
                for w in queue {
                    let _ = w.done.send(disable_ipv6_here(&w.ifname));
                }
            })
            .map_err(|source| DatapathError::Netns {
                netns: path.clone(),
                source,
            })?;
        match entered.recv() {
            Ok(Ok(())) => Ok(HostSysctl { writes }),
            Ok(Err(source)) => Err(DatapathError::Netns {
                netns: path,
                source,
            }),
            Err(_) => Err(DatapathError::Worker {
                netns: path,
                reason: "the sysctl thread panicked".into(),
            }),
        }
    }

    /// `net.ipv6.conf.<host_ifname>.disable_ipv6 = 1`. Not fatal to an ADD
    /// (the pod works either way, the host end is only noisier): a failure
    /// is logged.
    pub(crate) async fn disable_ipv6(&self, host_ifname: &str) {
        let (done, result) = oneshot::channel();
        let sent = self.writes.send(Write {
            ifname: host_ifname.to_string(),
            done,
        });
        let outcome = match sent {
            Ok(()) => result
                .await
                .unwrap_or_else(|_| Err(io::Error::other("the sysctl thread is gone"))),
            Err(_) => Err(io::Error::other("the sysctl thread is gone")),
        };
        if let Err(error) = outcome {
            tracing::warn!(host_ifname, %error,
                "could not turn IPv6 off on the host end of a pod's veth; it will send MLD/DAD/RS into the pod");
        }
    }
}

/// The write, in the calling thread's netns. A kernel without IPv6 (booted
/// with `ipv6.disable=1`) has no `/proc/sys/net/ipv6`: nothing to silence.
fn disable_ipv6_here(ifname: &str) -> io::Result<()> {
    let conf = Path::new("/proc/sys/net/ipv6/conf");
    match std::fs::write(conf.join(ifname).join("disable_ipv6"), "1") {
        Err(e) if e.kind() == io::ErrorKind::NotFound && !conf.exists() => Ok(()),
        other => other,
    }
}
