//! DEL without waiting for the kernel: a pod's veth is retired at once and
//! deleted later, in batches, by a reaper of its own.
//!
//! Deleting a veth costs ~14 ms of kernel time: unregistering a device waits
//! for an RCU grace period with the rtnl lock held, and every plugin pays it
//! inside the runtime's DEL. Setting the host end down, out of its bridge
//! and into a device group is one RTM_SETLINK of ~0.3 ms, and it cuts the
//! pod off for good: a veth whose host end is down has no carrier on either
//! end, so the pod's address is no longer live (BRIEF's definition:
//! configured on an interface that is up with carrier), and a down port is
//! no bridge port at all once it left the bridge. The IP can be released
//! right away.
//!
//! A retired host end is told by its group (`retired::is_retired`): whatever looks
//! host ends up by name (the leak sweep, reconcile, CHECK, a second DEL)
//! goes through `veth::host_end`, which takes a retired one for none. On a
//! Linux bridge it keeps its name (`moor_proto::host_ifname`, derived from
//! the attachment key); a re-ADD of the same container id and ifname, which
//! needs that name, gives it its grave name ([`grave_name`]: `mgone` + its
//! ifindex, unique in its netns) first (`retired::free_retired_name`). An OVS port
//! is renamed at DEL ([`PortKind`] says why).
//!
//! The [`Reaper`] runs on a thread and netlink socket of its own (in the
//! netns of the host ends) and deletes the whole device group in one
//! request: the kernel unregisters every member under one grace period (10
//! links in ~26 ms, 200 in ~65 ms here, against ~14 ms for one). It reaps
//! when the datapath has been quiet for [`ReapPolicy::quiet`] or, on a busy
//! node, [`ReapPolicy::max_wait`] after the first link of the batch was
//! parked, so it takes the rtnl lock at most about once per `max_wait` while
//! ADDs are coming. Nothing on the DEL path waits for it.
//!
//! Until it is reaped, the pod end keeps CNI_IFNAME in the pod's netns,
//! without carrier (its IP configured but not live). A re-ADD into that same
//! netns (a runtime that reuses it, or the benchmark) looks CNI_IFNAME up
//! from the pod's thread before it creates the pair; when the name is held
//! by such a retired end, it sets that one down and gives it its grave name
//! (`pod_end::move_aside`), without waiting for the reaper, and the new pod end
//! is created under CNI_IFNAME. A runtime that deletes the pod's netns after DEL
//! (all of them) makes the kernel unregister the pair with the netns; the
//! group delete then finds nothing, which is fine.
//!
//! A crash between retire and reap leaves links in the group; the next
//! start deletes them before serving ([`Graveyard::start`]'s first flush).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use nix::sched::{setns, CloneFlags};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec};
use tokio::sync::{mpsc, oneshot};

use super::netlinksafe::{self, errno, to_io};
use super::netns::{open_netns, LinkDeleter};
use super::{veth, DatapathError};

pub use moor_proto::GRAVEYARD_GROUP;

use super::retired::{grave_name, park, PortKind, GRAVE_PREFIX, RETIRED_ALIAS};

/// When the reaper deletes the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReapPolicy {
    /// Reap once no wire or unwire has run for this long.
    pub quiet: Duration,
    /// Reap at the latest this long after the first link of a batch was
    /// parked, quiet or not.
    pub max_wait: Duration,
}

impl Default for ReapPolicy {
    /// 50 ms of quiet: longer than the gap between one pod's DEL and the
    /// next ADD of a busy runtime (a process spawn, a few ms), so a reap
    /// rarely holds the rtnl lock under an ADD; 1 s at most: a busy node
    /// pays one grace period a second, and a DEL'd pod's interface is gone
    /// from its netns within about a second.
    fn default() -> Self {
        ReapPolicy {
            quiet: Duration::from_millis(50),
            max_wait: Duration::from_secs(1),
        }
    }
}

/// What the graveyard did since its datapath started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GraveyardStats {
    /// Host ends retired (parked) by DELs.
    pub parked: u64,
    /// Group delete requests sent (the first, at start, included).
    pub requests: u64,
    /// Of those, the ones that found members and deleted them.
    pub reaps: u64,
}

enum Msg {
    Parked,
    Flush(oneshot::Sender<io::Result<()>>),
}

/// What the datapath and the reaper share.
struct Shared {
    base: Instant,
    /// Wires and unwires running now.
    in_flight: AtomicUsize,
    /// When one last started or ended, in ns since `base`.
    last_activity: AtomicU64,
    policy: Mutex<ReapPolicy>,
    parked: AtomicU64,
    requests: AtomicU64,
    reaps: AtomicU64,
}

impl Shared {
    fn stamp(&self) {
        let ns = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_activity.store(ns, Ordering::Relaxed);
    }

    /// When the batch begun at `since` is to be reaped (or looked at again,
    /// if the datapath is busy then).
    fn due(&self, since: Instant) -> Instant {
        let policy = *self.policy.lock().unwrap_or_else(|p| p.into_inner());
        let latest = since + policy.max_wait;
        let quiet_at = if self.in_flight.load(Ordering::Relaxed) > 0 {
            Instant::now() + policy.quiet
        } else {
            self.base
                + Duration::from_nanos(self.last_activity.load(Ordering::Relaxed))
                + policy.quiet
        };
        latest.min(quiet_at)
    }
}

/// The datapath's side of the graveyard: retires host ends, tells the
/// reaper, and marks wires and unwires as activity. Cloned with the
/// datapath; when the last clone is dropped the reaper thread ends without
/// reaping (as a crash would: the next start deletes what is left).
#[derive(Clone)]
pub(crate) struct Graveyard {
    tx: mpsc::UnboundedSender<Msg>,
    shared: Arc<Shared>,
}

/// A wire or unwire in progress; see [`Graveyard::busy`].
pub(crate) struct Busy(Arc<Shared>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.stamp();
    }
}

impl Graveyard {
    /// Starts the reaper on a thread of its own in `netns` (`None`: the
    /// calling thread's) and deletes what an earlier run left in the group.
    pub(crate) async fn start(netns: Option<&Path>) -> Result<Self, DatapathError> {
        let shared = Arc::new(Shared {
            base: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_activity: AtomicU64::new(0),
            policy: Mutex::new(ReapPolicy::default()),
            parked: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            reaps: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let file = netns.map(open_netns).transpose()?;
        let path = netns.map(Path::to_path_buf);
        let reaper = Reaper {
            shared: shared.clone(),
            group: GRAVEYARD_GROUP,
        };
        std::thread::Builder::new()
            .name("moor-reaper".to_string())
            .spawn(move || reaper.run(file, path, rx))
            .map_err(|e| DatapathError::Worker {
                netns: netns.map(Path::to_path_buf).unwrap_or_default(),
                reason: format!("cannot start the veth reaper thread: {e}"),
            })?;
        let graveyard = Graveyard { tx, shared };
        match graveyard.flush().await {
            Ok(()) => {}
            Err(e) => tracing::error!(error = %e,
                "could not delete the host veths an earlier run retired; the reaper tries again \
                 with the next DEL's batch"),
        }
        Ok(graveyard)
    }

    pub(crate) fn set_policy(&self, policy: ReapPolicy) {
        *self.shared.policy.lock().unwrap_or_else(|p| p.into_inner()) = policy;
    }

    pub(crate) fn stats(&self) -> GraveyardStats {
        GraveyardStats {
            parked: self.shared.parked.load(Ordering::Relaxed),
            requests: self.shared.requests.load(Ordering::Relaxed),
            reaps: self.shared.reaps.load(Ordering::Relaxed),
        }
    }

    /// Marks a wire or unwire as running until the guard is dropped: the
    /// reaper waits for quiet.
    pub(crate) fn busy(&self) -> Busy {
        self.shared.in_flight.fetch_add(1, Ordering::Relaxed);
        self.shared.stamp();
        Busy(self.shared.clone())
    }

    /// Deletes the group now and waits for it.
    pub(crate) async fn flush(&self) -> Result<(), DatapathError> {
        let (tx, rx) = oneshot::channel();
        let gone = || DatapathError::Worker {
            netns: PathBuf::new(),
            reason: "the veth reaper thread is gone".into(),
        };
        self.tx.send(Msg::Flush(tx)).map_err(|_| gone())?;
        rx.await
            .map_err(|_| gone())?
            .map_err(|source| DatapathError::Netlink {
                op: format!("delete device group {GRAVEYARD_GROUP} (retired pod veths)"),
                source,
            })
    }

    /// Retires the host end `host_ifname`: down and into the group, in one
    /// request, and as `port` says. `Ok(false)`: there was no such link.
    ///
    /// If the kernel refuses, the link is deleted here and now, the old way:
    /// a DEL never leaves a live name or a live pod behind.
    pub(crate) async fn retire(
        &self,
        handle: &Handle,
        deleter: &LinkDeleter,
        host_ifname: &str,
        port: PortKind,
    ) -> Result<bool, DatapathError> {
        let Some(link) = veth::host_end(handle, host_ifname).await? else {
            return Ok(false);
        };
        let index = link.header.index;
        let grave = grave_name(index);
        let parked = match port {
            PortKind::Bridge => {
                let down = LinkUnspec::new_with_index(index)
                    .down()
                    .nocontroller()
                    .link_group(GRAVEYARD_GROUP)
                    .alias(RETIRED_ALIAS.to_string());
                handle.link().set(down.build()).execute().await
            }
            PortKind::Ovs => {
                let extra = |b: LinkMessageBuilder<LinkUnspec>| {
                    b.link_group(GRAVEYARD_GROUP)
                        .alias(RETIRED_ALIAS.to_string())
                };
                park(handle, index, &grave, extra).await
            }
        };
        let name = match port {
            PortKind::Bridge => host_ifname,
            PortKind::Ovs => &grave,
        };
        match parked {
            Ok(()) => {}
            // Gone meanwhile (its pod's netns was deleted): nothing to do.
            Err(e) if errno(&e) == Some(libc::ENODEV) => return Ok(true),
            Err(e) => {
                tracing::warn!(host_ifname, error = %to_io(e),
                    "could not retire the host veth; deleting it now instead");
                if !deleter.delete(host_ifname).await? {
                    deleter.delete(&grave).await?;
                }
                return Ok(true);
            }
        }
        self.shared.parked.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(Msg::Parked).is_err() {
            // No reaper (its thread failed to start in the netns).
            deleter.delete(name).await?;
        }
        Ok(true)
    }
}

/// The reaper thread's state.
struct Reaper {
    shared: Arc<Shared>,
    group: u32,
}

impl Reaper {
    fn run(self, netns: Option<File>, path: Option<PathBuf>, rx: mpsc::UnboundedReceiver<Msg>) {
        let entered = match &netns {
            Some(f) => setns(f, CloneFlags::CLONE_NEWNET).map_err(io::Error::from),
            None => Ok(()),
        };
        let runtime = entered.and_then(|()| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        });
        let runtime = match runtime {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(netns = ?path, error = %e,
                    "veth reaper cannot start; DELs delete host veths inline");
                return;
            }
        };
        runtime.block_on(async move {
            // Opened after setns: the socket lives in the host ends' netns.
            let handle = match rtnetlink::new_connection() {
                Ok((connection, handle, _)) => {
                    tokio::spawn(connection);
                    handle
                }
                Err(e) => {
                    tracing::error!(error = %e,
                        "veth reaper cannot open a netlink socket; DELs delete host veths inline");
                    return;
                }
            };
            self.serve(handle, rx).await;
        });
    }

    async fn serve(&self, handle: Handle, mut rx: mpsc::UnboundedReceiver<Msg>) {
        // When the first link of the batch not yet reaped was parked.
        let mut batch: Option<Instant> = None;
        loop {
            let msg = match batch.map(|since| self.shared.due(since)) {
                None => rx.recv().await,
                Some(at) if at <= Instant::now() => {
                    self.reap(&handle, &mut rx, Vec::new()).await;
                    batch = None;
                    continue;
                }
                Some(at) => tokio::select! {
                    m = rx.recv() => m,
                    () = tokio::time::sleep_until(at.into()) => continue,
                },
            };
            match msg {
                None => return,
                Some(Msg::Parked) => {
                    batch.get_or_insert_with(Instant::now);
                }
                Some(Msg::Flush(waiter)) => {
                    self.reap(&handle, &mut rx, vec![waiter]).await;
                    batch = None;
                }
            }
        }
    }

    /// One group delete for everything parked so far; answers `waiters`
    /// and any flush that queued meanwhile.
    async fn reap(
        &self,
        handle: &Handle,
        rx: &mut mpsc::UnboundedReceiver<Msg>,
        mut waiters: Vec<oneshot::Sender<io::Result<()>>>,
    ) {
        // Whatever was parked before this point is in the group now.
        while let Ok(msg) = rx.try_recv() {
            if let Msg::Flush(w) = msg {
                waiters.push(w);
            }
        }
        let started = Instant::now();
        let result = self.delete_group(handle).await;
        match &result {
            Ok(true) => tracing::debug!(group = self.group, took = ?started.elapsed(),
                "reaped retired pod veths"),
            Ok(false) => {}
            Err(e) => tracing::error!(group = self.group, error = %e,
                "could not delete retired pod veths; trying again with the next batch"),
        }
        for w in waiters {
            let _ = w.send(match &result {
                Ok(_) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            });
        }
    }

    /// `Ok(true)`: deleted members; `Ok(false)`: the group was empty.
    async fn delete_group(&self, handle: &Handle) -> io::Result<bool> {
        self.shared.requests.fetch_add(1, Ordering::Relaxed);
        let mut message = LinkMessage::default();
        message.attributes.push(LinkAttribute::Group(self.group));
        match handle.link().del_with_message(message).execute().await {
            Ok(()) => {
                self.shared.reaps.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
            // A member that cannot be deleted (not ours: someone put a
            // device in our group) fails the whole request; delete ours
            // one by one.
            Err(e) if errno(&e) == Some(libc::EOPNOTSUPP) => self.delete_ours(handle).await,
            Err(e) => Err(to_io(e)),
        }
    }

    async fn delete_ours(&self, handle: &Handle) -> io::Result<bool> {
        let links =
            netlinksafe::dump(handle, RouteNetlinkMessage::GetLink(LinkMessage::default())).await?;
        let mut deleted = false;
        for m in links {
            let RouteNetlinkMessage::NewLink(link) = m else {
                continue;
            };
            let in_group = link.attributes.contains(&LinkAttribute::Group(self.group));
            let name = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            });
            let Some(name) = name.filter(|_| in_group) else {
                continue;
            };
            if !name.starts_with(GRAVE_PREFIX) && !name.starts_with(moor_proto::HOST_IFNAME_PREFIX)
            {
                tracing::warn!(link = %name, group = self.group,
                    "a device that is not a retired pod veth is in moor's device group; \
                     move it to another group (ip link set {name} group default)");
                continue;
            }
            self.shared.requests.fetch_add(1, Ordering::Relaxed);
            // By index: a same-key re-ADD may have moved this retired end
            // aside and created a live one under its name since the dump.
            deleted |= netlinksafe::delete_link_by_index(handle, link.header.index).await?;
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grave_names_fit_and_never_look_like_host_ends() {
        assert_eq!(grave_name(42), "mgone42");
        let longest = grave_name(u32::MAX);
        assert!(super::super::validate_ifname(&longest).is_ok(), "{longest}");
        let host = moor_proto::host_ifname("c1", "eth0");
        assert!(!host.starts_with(GRAVE_PREFIX) && !longest.starts_with("mr"));
        assert_ne!(GRAVEYARD_GROUP, 0);
    }
}
