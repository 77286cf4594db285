//! CNI DEL: unwire, then release. A DEL never fails a pod's teardown for a
//! missing thing, nor for a store outage, nor for a record of the pod that
//! does not decode: the release is then recorded as a pending-DEL file and
//! applied when the store answers or the record is repaired (`pending`).

use std::net::IpAddr;

use tracing::{info, warn};

use crate::core::AttachmentKey;
use crate::error::{Error, Result};

use super::mirror::Mirrored;
use super::timing::Timing;
use super::Node;

/// What a DEL released: the IP, and whether the pod keeps it (binding).
/// None: nothing was attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deleted {
    pub ip: IpAddr,
    pub binding_kept: bool,
}

impl Node {
    pub async fn del(&self, container_id: &str, ifname: &str) -> Result<Option<Deleted>> {
        let key = self.key(container_id, ifname)?;
        self.del_key(&key, true, false).await
    }

    /// Tears an attachment down: the veth, then the release. A DEL record
    /// the plugin (or we) left for this key is settled by it. When the store
    /// is unavailable and `defer` is set, the release is written to the
    /// pending-DEL directory (durably) and applied when the store is back, so
    /// a DEL never fails because of an outage. `rollback`: the release of a
    /// half-done ADD (drops a binding it created).
    pub(crate) async fn del_key(
        &self,
        key: &AttachmentKey,
        defer: bool,
        rollback: bool,
    ) -> Result<Option<Deleted>> {
        // The host end is named after the key, so it goes even when no
        // attachment was recorded (an ADD rolled back half-way).
        let mut timing = Timing::start();
        let host = moor_proto::host_ifname(&key.container_id, &key.ifname);
        self.datapath
            .unwire(&host)
            .await
            .map_err(|e| Error::datapath(format!("removing {host} for {key}"), e))?;
        timing.step("unwire");
        let record =
            moor_proto::pending::path_for(&self.cfg.pending_dir, &key.container_id, &key.ifname);
        let cached = match &self.mirror {
            Some(m) => m.get(key).await.ok().flatten(),
            None => None,
        };
        let hint = cached.as_ref().map(|c| (c.lease.pool.as_str(), c.lease.ip));
        match self.note(self.ipam.release_at(key, rollback, hint).await) {
            Ok(released) => {
                timing.step("release");
                if let Some(m) = &self.mirror {
                    if let (Some(r), Some(c)) = (&released, &cached) {
                        if r.binding_kept {
                            self.cache_binding(m, c).await;
                        }
                    }
                    if let Err(e) = m.remove(key).await {
                        warn!(%key, error = %e, "could not drop an attachment from the local mirror");
                    }
                }
                let _ = moor_proto::pending::remove(&record);
                self.inflight.settled(key);
                if let Some(r) = &released {
                    info!(%key, ip = %r.ip, binding_kept = r.binding_kept, "DEL");
                }
                timing.step("mirror");
                timing.log("DEL", key);
                Ok(released.map(|r| Deleted {
                    ip: r.ip,
                    binding_kept: r.binding_kept,
                }))
            }
            // The pod is cut off already; a damaged record must not keep
            // it Terminating (nor be taken for absent: the IP stays its
            // until the repair lets the recorded DEL release it).
            Err(why) if defer && (why.is_unavailable() || why.is_corrupt()) => {
                let pod = cached.as_ref().and_then(|c| c.lease.attachment.as_ref());
                let rec = moor_proto::pending::PendingDel {
                    container_id: key.container_id.clone(),
                    ifname: key.ifname.clone(),
                    netns: pod.map(|a| a.netns.clone()).unwrap_or_default(),
                    pod_namespace: pod.map(|a| a.pod.namespace.clone()).unwrap_or_default(),
                    pod_name: pod.map(|a| a.pod.name.clone()).unwrap_or_default(),
                    network: pod.map(|a| a.network.clone()).unwrap_or_default(),
                    written_unix: self.now(),
                    rollback,
                };
                moor_proto::pending::write(&self.cfg.pending_dir, &rec).map_err(|e| {
                    Error::internal_from(
                        format!(
                            "{why}; and the DEL of {key} could not be recorded in {}: {e}",
                            self.cfg.pending_dir.display()
                        ),
                        e,
                    )
                })?;
                if let Some(m) = &self.mirror {
                    let keeps =
                        |c: &&Mirrored| !rollback && c.lease.binding.is_some() && !c.lease.evict;
                    if let Some(c) = cached.as_ref().filter(keeps) {
                        self.cache_binding(m, c).await;
                    }
                    let _ = m.remove(key).await;
                }
                if why.is_corrupt() {
                    warn!(%key, error = %why, "DEL recorded: applied once the record is repaired (ipamctl audit lists it)");
                } else {
                    warn!(%key, "store unavailable: DEL recorded, applied when the store is back");
                }
                Ok(cached.map(|c| Deleted {
                    ip: c.lease.ip,
                    binding_kept: c.lease.binding.is_some() && !c.lease.evict,
                }))
            }
            Err(e) => Err(e),
        }
    }
}
