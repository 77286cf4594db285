//! The CNI operations of one node: ADD, DEL, CHECK, STATUS, GC, and the
//! recovery after a crash. Joins the allocation service (which IP) and the
//! datapath (the veth), in the order that survives kill -9 at any point:
//!
//! ADD: record the attachment as pending -> wire -> mark it ready -> reply.
//!   A restart rolls back whatever is still pending: the runtime never got a
//!   result for it, and it retries ADD after a DEL.
//! DEL: unwire -> release. A crash in between leaves an attachment whose
//!   link is gone; the runtime's retried DEL (or GC) finishes it.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnetwork::Ipv4Network;
use moor_proto::{fields, v1};
use tracing::{info, warn};

use crate::core::{
    Attachment, AttachmentKey, AttachmentState, FreeCount, Lease, PodRef, Quarantine, Tor,
};
use crate::datapath::{Datapath, DatapathError, PodLink};
use crate::error::{cni_code, Error, Result};
use crate::ipam::{AllocRequest, Ipam};
use crate::mirror::{Mirror, Mirrored};
use crate::store::{keys, StoreExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub struct NodeConfig {
    pub name: String,
    pub tor: String,
    /// Where the plugin leaves DELs it could not hand to ipamd.
    pub pending_dir: PathBuf,
    /// GC leaves attachments younger than this alone: the runtime's list of
    /// valid attachments may predate an ADD that just finished.
    pub gc_grace: Duration,
}

pub struct Node {
    pub cfg: NodeConfig,
    pub ipam: Arc<Ipam>,
    pub datapath: Arc<dyn Datapath>,
    /// This node's attachments in a local file, when the shared store is
    /// remote (etcd): DEL, CHECK, GC and restarts keep working in an outage.
    pub mirror: Option<Mirror>,
    /// When the store began failing to answer (unix seconds, 0 = it
    /// answers), for messages.
    store_down_since: AtomicU64,
    /// When the store last failed to answer (unix seconds, 0 = it answers);
    /// ADDs fail at once for a few seconds after, instead of each waiting
    /// for the store's timeout. Renewed by every failure, so a long outage
    /// costs one probe per window, not one per ADD.
    store_failed_at: AtomicU64,
    /// The datapath was reconciled with this node's attachments (once, at
    /// the first `recover`, before ADDs are served).
    reconciled: AtomicBool,
}

/// How long after a store failure ADDs fail fast without trying the store.
const FAIL_FAST_SECS: u64 = 3;

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Checks the attachment key of an RPC (the plugin checks too, but the socket
/// is an API of its own).
fn key_of(node: &str, key: Option<&v1::AttachmentKey>) -> Result<AttachmentKey> {
    let key = key.ok_or_else(|| Error::Invalid("request has no attachment key".into()))?;
    fields::container_id("container id", &key.container_id)
        .and_then(|()| fields::ifname("interface name", &key.ifname))
        .map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(AttachmentKey {
        node: node.to_string(),
        container_id: key.container_id.clone(),
        ifname: key.ifname.clone(),
    })
}

fn pod_of(p: Option<&v1::PodRef>) -> PodRef {
    p.map(|p| PodRef {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        uid: p.uid.clone(),
    })
    .unwrap_or_default()
}

fn link_for(tor: &Tor, lease: &Lease, netns: &str) -> Result<PodLink> {
    let a = lease.attachment.as_ref().expect("attached lease");
    Ok(PodLink {
        netns: PathBuf::from(netns),
        ifname: a.key.ifname.clone(),
        host_ifname: moor_proto::host_ifname(&a.key.container_id, &a.key.ifname),
        address: Ipv4Network::new(lease.ip, tor.subnet.prefix())
            .map_err(|e| Error::Internal(e.to_string()))?,
        gateway: tor.gateway,
        mac: moor_proto::mac_for_ipv4(lease.ip),
        vlan: tor.vlan,
        pod_namespace: a.pod.namespace.clone(),
        pod_name: a.pod.name.clone(),
        container_id: a.key.container_id.clone(),
    })
}

impl Node {
    pub fn new(
        cfg: NodeConfig,
        ipam: Arc<Ipam>,
        datapath: Arc<dyn Datapath>,
        mirror: Option<Mirror>,
    ) -> Self {
        Self {
            cfg,
            ipam,
            datapath,
            mirror,
            store_down_since: AtomicU64::new(0),
            store_failed_at: AtomicU64::new(0),
            reconciled: AtomicBool::new(false),
        }
    }

    /// Remembers whether the store answered; returns the result unchanged.
    fn note<T>(&self, r: Result<T>) -> Result<T> {
        match &r {
            Err(Error::Unavailable(_)) => {
                let now = now_unix().max(1);
                let _ = self.store_down_since.compare_exchange(
                    0,
                    now,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                self.store_failed_at.store(now, Ordering::Relaxed);
            }
            Ok(_) => {
                self.store_down_since.store(0, Ordering::Relaxed);
                self.store_failed_at.store(0, Ordering::Relaxed);
            }
            Err(_) => {}
        }
        r
    }

    fn store_down_recently(&self) -> Option<u64> {
        let last = self.store_failed_at.load(Ordering::Relaxed);
        let since = self.store_down_since.load(Ordering::Relaxed);
        (last != 0 && now_unix().saturating_sub(last) < FAIL_FAST_SECS).then_some(since.max(1))
    }

    async fn mirror_put(&self, lease: &Lease, tor: &Tor) {
        if let Some(m) = &self.mirror {
            let entry = Mirrored {
                lease: lease.clone(),
                tor: tor.clone(),
                offline: false,
            };
            if let Err(e) = m.put(&entry).await {
                warn!(error = %e, ip = %lease.ip, "could not copy an attachment into the local mirror");
            }
            if let Some(pod) = &lease.binding {
                let _ = m.forget_bound(pod).await;
            }
        }
    }

    /// Keeps the binding of a pod whose DEL kept its IP, for `add_offline`.
    async fn cache_binding(&self, m: &Mirror, c: &Mirrored) {
        let Some(pod) = c.lease.binding.clone() else {
            return;
        };
        let mut lease = c.lease.clone();
        lease.attachment = None;
        let entry = Mirrored {
            lease,
            tor: c.tor.clone(),
            offline: false,
        };
        if let Err(e) = m.put_bound(&pod, &entry).await {
            warn!(%pod, error = %e, "could not cache a binding in the local mirror");
        }
    }

    /// An ADD while the store is out of reach: a pod whose binding this node
    /// cached (it ran here and its DEL kept its IP) starts again on that IP;
    /// the attachment goes to the store when it is back (`sync_offline`).
    /// Any other pod gets code 11: a new IP must be taken in one place.
    async fn add_offline(
        &self,
        key: &AttachmentKey,
        pod: &PodRef,
        req: &v1::AddRequest,
        why: String,
    ) -> Result<v1::AddReply> {
        let Some(m) = self.mirror.as_ref().filter(|_| pod.is_known()) else {
            return Err(Error::Unavailable(why));
        };
        let Some(cached) = m.bound(pod).await? else {
            return Err(Error::Unavailable(format!(
                "{why} (pod {pod} keeps no IP cached on this node that it could restart with)"
            )));
        };
        // The cached segment must be on this node's ToR (configured by the
        // ToR's name, or by one of its segments' names).
        let here = cached.tor.switch() == self.cfg.tor || cached.tor.name == self.cfg.tor;
        if !here || (!req.pool.is_empty() && req.pool != cached.lease.pool) {
            return Err(Error::Unavailable(why));
        }
        // Its previous instance may still be attached here (DEL not run yet).
        if let Some(old) = m
            .all()
            .await?
            .into_iter()
            .find(|e| e.lease.ip == cached.lease.ip)
        {
            let holder = old
                .lease
                .attachment
                .map(|a| a.key.to_string())
                .unwrap_or_default();
            return Err(Error::Unavailable(format!(
                "{why}; pod {pod} keeps {} but it is still attached to {holder}; retry once that is deleted",
                cached.lease.ip
            )));
        }
        let mut lease = cached.lease.clone();
        lease.attachment = Some(Attachment {
            key: key.clone(),
            pod: pod.clone(),
            netns: req.netns.clone(),
            network: req.network.clone(),
            state: AttachmentState::Ready,
            created_unix: now_unix(),
            created_binding: false,
        });
        let link = link_for(&cached.tor, &lease, &req.netns)?;
        let wired = self.datapath.wire(&link).await.map_err(|e| {
            Error::Datapath(format!("wiring {} for pod {pod} failed: {e}", lease.ip))
        })?;
        let entry = Mirrored {
            lease: lease.clone(),
            tor: cached.tor.clone(),
            offline: true,
        };
        // Durable before the reply, or a restart would forget the pod.
        if let Err(e) = m.put(&entry).await {
            let _ = self.datapath.unwire(&link.host_ifname).await;
            return Err(Error::Internal(format!(
                "{why}; and pod {pod} could not be recorded locally: {e}"
            )));
        }
        let _ = m.forget_bound(pod).await;
        warn!(%key, ip = %lease.ip, "store unavailable: pod restarted on its kept IP; it goes to the store when the store is back");
        Ok(reply(&cached.tor, &lease, &link, wired.mtu, wired.host_mac))
    }

    /// Writes the attachments made during an outage into the store. One the
    /// store no longer allows (its binding was released, or the IP attached
    /// elsewhere meanwhile) loses its interface here: two live attachments of
    /// one IP must never exist.
    pub async fn sync_offline(&self) -> Result<usize> {
        let Some(m) = &self.mirror else {
            return Ok(0);
        };
        let mut n = 0;
        for e in m.all().await? {
            let Some(a) = e.lease.attachment.clone().filter(|_| e.offline) else {
                continue;
            };
            // A DEL may have taken it away since the list was read.
            if !m.get(&a.key).await?.is_some_and(|x| x.offline) {
                continue;
            }
            if self.note(self.ipam.attach_bound(&e.lease).await)? {
                m.put(&Mirrored {
                    offline: false,
                    ..e.clone()
                })
                .await?;
                info!(key = %a.key, ip = %e.lease.ip, "wrote an attachment made during the store outage");
                n += 1;
            } else {
                tracing::error!(
                    key = %a.key,
                    pod = %a.pod,
                    ip = %e.lease.ip,
                    "pod restarted on its kept IP during the store outage, but the store no longer keeps that IP for it (released or taken meanwhile): taking its interface down"
                );
                let host = moor_proto::host_ifname(&a.key.container_id, &a.key.ifname);
                self.datapath
                    .unwire(&host)
                    .await
                    .map_err(|e| Error::Datapath(e.to_string()))?;
                m.remove(&a.key).await?;
            }
        }
        Ok(n)
    }

    pub async fn add(&self, req: &v1::AddRequest) -> Result<v1::AddReply> {
        let key = key_of(&self.cfg.name, req.key.as_ref())?;
        if !req.netns.starts_with('/') {
            return Err(Error::Invalid(format!(
                "netns {:?} is not a path: CNI_NETNS must name the pod's network namespace, e.g. /run/netns/NAME",
                req.netns
            )));
        }
        let pod = pod_of(req.pod.as_ref());
        crate::core::validate::add_input(&pod, &req.pool, &req.network).map_err(Error::Invalid)?;
        // A DEL of this attachment that ipamd missed while down comes first.
        self.replay_pending_del(&key).await?;
        let alloc = match self.store_down_recently() {
            Some(since) => Err(Error::Unavailable(format!(
                "the store ({}) has not answered since {}s ago; no IP can be allocated until it does, retry later",
                self.ipam.store().describe(),
                now_unix().saturating_sub(since)
            ))),
            None => self.note(
                self.ipam
                    .allocate(&AllocRequest {
                        key: key.clone(),
                        pod: pod.clone(),
                        pool: (!req.pool.is_empty()).then(|| req.pool.clone()),
                        netns: req.netns.clone(),
                        network: req.network.clone(),
                        tor: self.cfg.tor.clone(),
                        now_unix: now_unix(),
                    })
                    .await,
            ),
        };
        let alloc = match alloc {
            Ok(a) => a,
            Err(Error::Unavailable(why)) => return self.add_offline(&key, &pod, req, why).await,
            Err(e) => return Err(e),
        };
        let link = link_for(&alloc.tor, &alloc.lease, &req.netns)?;
        if !alloc.existing {
            // Copied before wiring: a restart during an outage rolls it back.
            self.mirror_put(&alloc.lease, &alloc.tor).await;
        }
        let ready = alloc.existing && alloc.attachment().state == AttachmentState::Ready;
        let mtu;
        let host_mac;
        if ready {
            // A repeated ADD: fine if what we built is still intact.
            self.datapath.check(&link).await.map_err(|e| {
                Error::Conflict(format!(
                    "{key} is already attached with {} but its wiring is broken ({e}): DEL it first",
                    alloc.lease.ip
                ))
            })?;
            mtu = 0;
            host_mac = [0u8; 6];
        } else {
            match self.datapath.wire(&link).await {
                Ok(w) => {
                    mtu = w.mtu;
                    host_mac = w.host_mac;
                }
                Err(DatapathError::AddressConflict { ip, mac }) if !alloc.existing => {
                    let q = Quarantine {
                        mac: mac.clone(),
                        node: self.cfg.name.clone(),
                        since_unix: now_unix(),
                    };
                    let pod = &alloc.attachment().pod;
                    if let Err(re) = self.ipam.quarantine(&key, q).await {
                        // Not quarantined: at least give the IP back (the
                        // next ADD probes again), or a restart rolls it back.
                        warn!(%key, %ip, other_mac = %mac, error = %re, "duplicate address, and the IP could not be quarantined");
                        if let Err(re) = self.ipam.release(&key, true).await {
                            warn!(%key, error = %re, "could not roll back the allocation of a failed ADD");
                        }
                        return Err(Error::Refused {
                            code: cni_code::ADDRESS_CONFLICT,
                            msg: format!(
                                "IP {ip} of pod {pod} is already used on the network by MAC {mac} (moor's duplicate-address probe), and it could not be quarantined ({re}): find that host; the IP was given back and the next ADD probes again"
                            ),
                        });
                    }
                    warn!(%key, %ip, other_mac = %mac, "duplicate address: IP quarantined");
                    return Err(Error::Refused {
                        code: cni_code::ADDRESS_CONFLICT,
                        msg: crate::ipam::quarantine_message(ip, &mac, Some(pod)),
                    });
                }
                Err(e) => {
                    // A pending attachment found here belongs to an ADD that
                    // may still be running; only roll back what this call made.
                    let rollback = if alloc.existing {
                        Ok(None)
                    } else {
                        self.ipam.release(&key, true).await
                    };
                    if let Err(re) = rollback {
                        // The pending attachment stays; the next start rolls it back.
                        warn!(%key, error = %re, "could not roll back the allocation of a failed ADD");
                    }
                    return Err(Error::Datapath(format!(
                        "wiring {} for pod {} failed, the IP was given back: {e}",
                        alloc.lease.ip,
                        alloc.attachment().pod
                    )));
                }
            }
            if let Err(e) = self.note(self.ipam.mark_ready(&key).await) {
                // The runtime gets an error; undo, deferring the release if
                // the store is gone (a restart would roll it back anyway).
                let _ = self.del_key(&key, true, true).await;
                return Err(e);
            }
            let mut lease = alloc.lease.clone();
            if let Some(a) = lease.attachment.as_mut() {
                a.state = AttachmentState::Ready;
            }
            self.mirror_put(&lease, &alloc.tor).await;
        }
        info!(%key, ip = %alloc.lease.ip, pool = %alloc.lease.pool, "ADD");
        Ok(reply(&alloc.tor, &alloc.lease, &link, mtu, host_mac))
    }

    pub async fn del(&self, req: &v1::DelRequest) -> Result<v1::DelReply> {
        let key = key_of(&self.cfg.name, req.key.as_ref())?;
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
    ) -> Result<v1::DelReply> {
        // The host end is named after the key, so it goes even when no
        // attachment was recorded (an ADD rolled back half-way).
        let host = moor_proto::host_ifname(&key.container_id, &key.ifname);
        self.datapath
            .unwire(&host)
            .await
            .map_err(|e| Error::Datapath(format!("removing {host} for {key}: {e}")))?;
        let record =
            moor_proto::pending::path_for(&self.cfg.pending_dir, &key.container_id, &key.ifname);
        let cached = match &self.mirror {
            Some(m) => m.get(key).await.ok().flatten(),
            None => None,
        };
        match self.note(self.ipam.release(key, rollback).await) {
            Ok(released) => {
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
                if let Some(r) = &released {
                    info!(%key, ip = %r.ip, binding_kept = r.binding_kept, "DEL");
                }
                Ok(match released {
                    Some(r) => v1::DelReply {
                        released: true,
                        address: r.ip.to_string(),
                        binding_kept: r.binding_kept,
                    },
                    None => v1::DelReply::default(),
                })
            }
            Err(Error::Unavailable(why)) if defer => {
                let pod = cached.as_ref().and_then(|c| c.lease.attachment.as_ref());
                let rec = moor_proto::pending::PendingDel {
                    container_id: key.container_id.clone(),
                    ifname: key.ifname.clone(),
                    netns: pod.map(|a| a.netns.clone()).unwrap_or_default(),
                    pod_namespace: pod.map(|a| a.pod.namespace.clone()).unwrap_or_default(),
                    pod_name: pod.map(|a| a.pod.name.clone()).unwrap_or_default(),
                    network: pod.map(|a| a.network.clone()).unwrap_or_default(),
                    written_unix: now_unix(),
                    rollback,
                };
                moor_proto::pending::write(&self.cfg.pending_dir, &rec).map_err(|e| {
                    Error::Internal(format!(
                        "{why}; and the DEL of {key} could not be recorded in {}: {e}",
                        self.cfg.pending_dir.display()
                    ))
                })?;
                if let Some(m) = &self.mirror {
                    let keeps =
                        |c: &&Mirrored| !rollback && c.lease.binding.is_some() && !c.lease.evict;
                    if let Some(c) = cached.as_ref().filter(keeps) {
                        self.cache_binding(m, c).await;
                    }
                    let _ = m.remove(key).await;
                }
                warn!(%key, "store unavailable: DEL recorded, applied when the store is back");
                Ok(match cached {
                    Some(c) => v1::DelReply {
                        released: true,
                        address: c.lease.ip.to_string(),
                        binding_kept: c.lease.binding.is_some() && !c.lease.evict,
                    },
                    None => v1::DelReply::default(),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// The attachment of `key`, from the store or, when it is out of reach,
    /// from the local mirror.
    async fn attachment_of(&self, key: &AttachmentKey) -> Result<Option<(Lease, Tor)>> {
        match self.note(self.ipam.attached(key).await) {
            Ok(None) => Ok(None),
            Ok(Some(lease)) => {
                let tor = self.ipam.tor(&lease.tor).await?.ok_or_else(|| {
                    Error::Internal(format!("ToR {} of {} is gone", lease.tor, lease.ip))
                })?;
                Ok(Some((lease, tor)))
            }
            Err(Error::Unavailable(why)) => match &self.mirror {
                Some(m) => Ok(m.get(key).await?.map(|c| (c.lease, c.tor))),
                None => Err(Error::Unavailable(why)),
            },
            Err(e) => Err(e),
        }
    }

    /// This node's attachments, from the store or, in an outage, the mirror.
    pub(crate) async fn my_attachments(&self) -> Result<(Vec<Lease>, bool)> {
        match self.note(self.ipam.node_attachments(&self.cfg.name).await) {
            Ok(all) => Ok((all, true)),
            Err(Error::Unavailable(why)) => match &self.mirror {
                Some(m) => Ok((m.all().await?.into_iter().map(|c| c.lease).collect(), false)),
                None => Err(Error::Unavailable(why)),
            },
            Err(e) => Err(e),
        }
    }

    pub async fn check(&self, req: &v1::CheckRequest) -> Result<()> {
        let key = key_of(&self.cfg.name, req.key.as_ref())?;
        let Some((lease, tor)) = self.attachment_of(&key).await? else {
            return Err(Error::Refused {
                code: cni_code::NOT_ATTACHED,
                msg: format!("{key} has no attachment on this node: ADD it first"),
            });
        };
        if !req.address.is_empty() {
            let want: Ipv4Addr = req
                .address
                .split('/')
                .next()
                .unwrap_or_default()
                .parse()
                .map_err(|_| {
                    Error::Invalid(format!(
                        "prevResult address {:?} is not an IPv4 CIDR",
                        req.address
                    ))
                })?;
            if want != lease.ip {
                return Err(Error::Conflict(format!(
                    "{key} holds {} but prevResult says {want}",
                    lease.ip
                )));
            }
        }
        let netns = if req.netns.is_empty() {
            lease
                .attachment
                .as_ref()
                .map(|a| a.netns.clone())
                .unwrap_or_default()
        } else {
            req.netns.clone()
        };
        let link = link_for(&tor, &lease, &netns)?;
        self.datapath
            .check(&link)
            .await
            .map_err(|e| Error::Datapath(format!("{key} ({}): {e}", lease.ip)))
    }

    pub async fn status(&self) -> v1::StatusReply {
        let mut reply = v1::StatusReply {
            node: self.cfg.name.clone(),
            tor: self.cfg.tor.clone(),
            ..Default::default()
        };
        match self.free_on_tor().await {
            Err(e) => reply.reason = e.to_string(),
            Ok(None) => {
                reply.reason = format!(
                    "this node's ToR {t} is not defined: add it with `ipamctl tor add {t} ...`",
                    t = self.cfg.tor
                )
            }
            Ok(Some((0, pools))) => {
                reply.reason = if pools == 0 {
                    format!(
                        "no pool has IPs on ToR {}: create one with `ipamctl pool create`",
                        self.cfg.tor
                    )
                } else {
                    format!("all {pools} pools with IPs on ToR {} are full: grow them with `ipamctl pool resize`", self.cfg.tor)
                }
            }
            Ok(Some((free, _))) => {
                reply.ready = true;
                reply.free = free;
            }
        }
        reply
    }

    /// Free IPs over all pools on this node's ToR (all its segments), and how
    /// many pools have IPs there; None when the ToR is not defined. Read from
    /// the published free counts (`free/<pool>/<segment>`, exact: every
    /// lease change updates them in its own transaction): one list, however
    /// many pools there are.
    async fn free_on_tor(&self) -> Result<Option<(u32, u32)>> {
        let segments: Vec<String> = self
            .ipam
            .segments_of(&self.cfg.tor)
            .await?
            .into_iter()
            .map(|t| t.name)
            .collect();
        if segments.is_empty() {
            return Ok(None);
        }
        let (counts, _) = self.ipam.store().list_json::<FreeCount>(keys::FREE).await?;
        let mut free = 0;
        let mut pools = std::collections::BTreeSet::new();
        for (c, entry) in counts {
            let Some((pool, segment)) = entry.key[keys::FREE.len()..].split_once('/') else {
                continue;
            };
            if c.total > 0 && segments.iter().any(|s| s == segment) {
                pools.insert(pool.to_string());
                free += c.free;
            }
        }
        Ok(Some((free, pools.len() as u32)))
    }

    /// Releases this node's attachments of `network` that the runtime no
    /// longer knows. Errors are collected, not fatal: GC removes what it can.
    pub async fn gc(&self, req: &v1::GcRequest) -> Result<v1::GcReply> {
        let valid: std::collections::HashSet<(String, String)> = req
            .valid
            .iter()
            .map(|k| (k.container_id.clone(), k.ifname.clone()))
            .collect();
        let cutoff = now_unix().saturating_sub(self.cfg.gc_grace.as_secs());
        let mut released = Vec::new();
        let mut errors = Vec::new();
        let (mine, _) = self.my_attachments().await?;
        for lease in mine {
            let a = lease
                .attachment
                .as_ref()
                .expect("node attachments are attached");
            if a.network != req.network
                || a.state != AttachmentState::Ready
                || a.created_unix > cutoff
                || valid.contains(&(a.key.container_id.clone(), a.key.ifname.clone()))
            {
                continue;
            }
            match self.del_key(&a.key, true, false).await {
                Ok(_) => {
                    info!(key = %a.key, ip = %lease.ip, "GC released a stale attachment");
                    released.push(lease.ip.to_string());
                }
                Err(e) => errors.push(format!("{}: {e}", a.key)),
            }
        }
        if errors.is_empty() {
            Ok(v1::GcReply { released })
        } else {
            Err(Error::Internal(format!(
                "GC released {} attachments but failed on {}: {}",
                released.len(),
                errors.len(),
                errors.join("; ")
            )))
        }
    }

    /// `ipamctl ip evict`: frees a bound IP, or marks a held one so its
    /// binding goes with the pod; with `force`, also ends the attachment when
    /// it is on this node (the pod loses its interface) or on a node that is
    /// not alive (its DEL will never come).
    pub async fn evict(&self, ip: Ipv4Addr, force: bool) -> Result<v1::EvictIpReply> {
        // A forced evict that will be refused must change nothing: check the
        // holder's node before marking anything.
        if force {
            let now = self.ipam.ip(ip).await?;
            if let Some(h) = now.lease.as_ref().and_then(|l| l.attachment.as_ref()) {
                if h.key.node != self.cfg.name && self.node_alive(&h.key.node).await? {
                    return Err(Error::Conflict(format!(
                        "{ip} is held by pod {} (container {} on node {}) and node {} is alive: delete the pod (kubectl delete pod -n {} {}) or run the evict on that node",
                        h.pod, h.key.container_id, h.key.node, h.key.node, h.pod.namespace, h.pod.name
                    )));
                }
            }
        }
        let (view, released, holder) = self.ipam.mark_evict(ip).await?;
        let mut reply = v1::EvictIpReply {
            released,
            pending: holder.is_some(),
            holder: holder
                .as_ref()
                .map(|a| crate::server::attachment_msg(a, ip)),
            ..Default::default()
        };
        let Some(h) = holder else {
            reply.message = if released {
                format!("{ip} was kept for a pod that is not running; it is free now")
            } else {
                format!("{ip} is free; nothing to evict")
            };
            reply.ip = Some(crate::server::ip_msg(&view));
            return Ok(reply);
        };
        let who = format!(
            "pod {} (container {} on node {})",
            h.pod, h.key.container_id, h.key.node
        );
        if !force {
            reply.message = format!(
                "{ip} is held by {who}; its binding goes when that pod is deleted (kubectl delete pod -n {} {}); --force ends the attachment now if node {} is this node or not alive",
                h.pod.namespace, h.pod.name, h.key.node
            );
            reply.ip = Some(crate::server::ip_msg(&view));
            return Ok(reply);
        }
        if h.key.node == self.cfg.name {
            self.del_key(&h.key, false, false).await?;
        } else {
            // Checked above; a node that came alive since is only a race
            // with its own DEL, which releases the same attachment.
            self.ipam.release(&h.key, false).await?;
        }
        warn!(%ip, holder = %h.key, "evicted by force");
        reply.released = true;
        reply.pending = false;
        reply.message =
            format!("{ip} was held by {who}; the attachment and the binding are released");
        reply.ip = Some(crate::server::ip_msg(&self.ipam.ip(ip).await?));
        Ok(reply)
    }

    async fn node_alive(&self, node: &str) -> Result<bool> {
        let now = now_unix();
        Ok(crate::registry::nodes(self.ipam.store().as_ref())
            .await?
            .iter()
            .any(|n| n.name == node && n.alive(now)))
    }

    /// After a start: rolls back ADDs a crash left half-done, applies the
    /// DELs recorded while ipamd or the store was out of reach, and makes the
    /// local mirror match the store. `Ok(false)`: the store was unavailable,
    /// the mirror's pending ADDs were rolled back locally (their releases are
    /// recorded), and `recover` must run again once the store answers.
    pub async fn recover(&self) -> Result<bool> {
        let (mine, online) = self.my_attachments().await?;
        let mut rolled_back = 0;
        for lease in &mine {
            let a = lease.attachment.as_ref().expect("attached");
            if a.state == AttachmentState::Pending {
                self.del_key(&a.key, true, true).await?;
                warn!(key = %a.key, ip = %lease.ip, "rolled back an ADD that a crash left half-done");
                rolled_back += 1;
            }
        }
        if !online {
            warn!(
                rolled_back,
                "store unavailable at start: serving from the local mirror until it answers"
            );
            self.reconcile_datapath(false).await?;
            return Ok(false);
        }
        let replayed = self.replay_pending_dels().await?;
        let synced = self.sync_offline().await?;
        if synced > 0 {
            info!(
                synced,
                "attachments made during the store outage are in the store"
            );
        }
        if let Some(m) = &self.mirror {
            let (now, _) = self.my_attachments().await?;
            let mut tors: std::collections::HashMap<String, Tor> = Default::default();
            let mut copy = Vec::new();
            for lease in now {
                if !tors.contains_key(&lease.tor) {
                    if let Some(t) = self.ipam.tor(&lease.tor).await? {
                        tors.insert(lease.tor.clone(), t);
                    }
                }
                if let Some(tor) = tors.get(&lease.tor) {
                    copy.push(Mirrored {
                        lease,
                        tor: tor.clone(),
                        offline: false,
                    });
                }
            }
            m.replace_all(&copy).await?;
        }
        self.reconcile_datapath(true).await?;
        info!(rolled_back, replayed, "recovered");
        Ok(true)
    }

    /// Makes the datapath (OVS ports) match this node's attachments, from the
    /// store or, `online` false, the mirror. Only the first call does it:
    /// `recover` runs again later (store back) while ADDs are served, and a
    /// port wired by an ADD whose attachment the list predates would be taken
    /// for a stale one. A datapath failure is logged, not fatal: DELs must be
    /// served; the next start reconciles again.
    async fn reconcile_datapath(&self, online: bool) -> Result<()> {
        if self.reconciled.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        let pairs: Vec<(Lease, Tor)> = if online {
            let mut tors: std::collections::HashMap<String, Option<Tor>> = Default::default();
            let mut pairs = Vec::new();
            for lease in self.ipam.node_attachments(&self.cfg.name).await? {
                if !tors.contains_key(&lease.tor) {
                    tors.insert(lease.tor.clone(), self.ipam.tor(&lease.tor).await?);
                }
                match tors.get(&lease.tor).cloned().flatten() {
                    Some(tor) => pairs.push((lease, tor)),
                    None => {
                        warn!(ip = %lease.ip, tor = %lease.tor, "an attachment's ToR is gone; its port is not reconciled")
                    }
                }
            }
            pairs
        } else {
            match &self.mirror {
                Some(m) => m
                    .all()
                    .await?
                    .into_iter()
                    .map(|c| (c.lease, c.tor))
                    .collect(),
                None => return Ok(()),
            }
        };
        let mut live = Vec::new();
        for (lease, tor) in &pairs {
            let netns = lease
                .attachment
                .as_ref()
                .map(|a| a.netns.as_str())
                .unwrap_or("");
            live.push(link_for(tor, lease, netns)?);
        }
        match self.datapath.reconcile(&live).await {
            Ok(r) => {
                for l in &r.host_gone {
                    warn!(
                        pod = %format!("{}/{}", l.pod_namespace, l.pod_name),
                        container = %l.container_id, ifname = %l.ifname, ip = %l.address.ip(),
                        host_ifname = %l.host_ifname,
                        "reconcile: the pod's host interface is gone, so is its network (its network \
                         namespace was deleted?); the attachment stays until the runtime's DEL or GC"
                    );
                }
                info!(
                    live = live.len(),
                    kept = r.kept,
                    removed = r.removed.len(),
                    readded = r.readded.len(),
                    repaired = r.repaired.len(),
                    host_gone = r.host_gone.len(),
                    "datapath reconciled with this node's attachments"
                );
            }
            Err(e) => tracing::error!(
                error = %e,
                "could not reconcile the datapath with this node's attachments; \
                 ports stay as they are until the next start"
            ),
        }
        Ok(())
    }

    /// Applies every DEL the plugin recorded while ipamd was unreachable.
    pub async fn replay_pending_dels(&self) -> Result<usize> {
        let scan = match moor_proto::pending::scan(&self.cfg.pending_dir) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => {
                return Err(Error::Internal(format!(
                    "reading pending DELs in {}: {e}",
                    self.cfg.pending_dir.display()
                )))
            }
        };
        for s in &scan.skipped {
            warn!(path = %s.path.display(), reason = %s.reason, "skipping a file in the pending-DEL directory");
        }
        let mut n = 0;
        for (path, rec) in scan.records {
            let key = AttachmentKey {
                node: self.cfg.name.clone(),
                container_id: rec.container_id.clone(),
                ifname: rec.ifname.clone(),
            };
            // Not deferred again: on failure the record stays for the next try.
            self.del_key(&key, false, rec.rollback).await?;
            let _ = moor_proto::pending::remove(&path);
            info!(%key, "applied a DEL recorded while ipamd or the store was out of reach");
            n += 1;
        }
        Ok(n)
    }

    async fn replay_pending_del(&self, key: &AttachmentKey) -> Result<()> {
        let path =
            moor_proto::pending::path_for(&self.cfg.pending_dir, &key.container_id, &key.ifname);
        if let Ok(raw) = std::fs::read(&path) {
            let rollback = serde_json::from_slice::<moor_proto::pending::PendingDel>(&raw)
                .map(|r| r.rollback)
                .unwrap_or(false);
            self.del_key(key, false, rollback).await?;
            let _ = moor_proto::pending::remove(&path);
        }
        Ok(())
    }
}

fn reply(tor: &Tor, lease: &Lease, link: &PodLink, mtu: u32, host_mac: [u8; 6]) -> v1::AddReply {
    let mut interfaces = vec![];
    if host_mac != [0; 6] {
        interfaces.push(v1::Interface {
            name: link.host_ifname.clone(),
            mac: moor_proto::format_mac(&host_mac),
            mtu,
            sandbox: String::new(),
        });
    }
    interfaces.push(v1::Interface {
        name: link.ifname.clone(),
        mac: moor_proto::format_mac(&link.mac),
        mtu,
        sandbox: link.netns.display().to_string(),
    });
    v1::AddReply {
        interface_index: interfaces.len() as u32 - 1,
        interfaces,
        address: link.address.to_string(),
        gateway: tor.gateway.to_string(),
        routes: vec![v1::Route {
            dst: "0.0.0.0/0".into(),
            gw: tor.gateway.to_string(),
        }],
        pool: lease.pool.clone(),
        tor: tor.name.clone(),
        sticky: lease.binding.is_some(),
    }
}
