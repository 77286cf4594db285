//! A node during a store outage. A pod whose binding this node cached (it
//! ran here and its DEL kept its IP) starts again on that IP; the attachment
//! goes to the store when it is back (`sync_offline`). Any other pod gets
//! code 11: a new IP must be taken in one place, the store.

use tracing::{info, warn};

use crate::core::{Attachment, AttachmentKey, AttachmentState, Lease, Tor};
use crate::error::{Error, Result};
use crate::ipam::WriteBack;

use super::mirror::{Mirror, Mirrored};
use super::{link_for, AddRequest, Added, Node};

impl Node {
    /// Copies an attachment into the local mirror (etcd stores only). A
    /// failure is logged: the mirror is a cache, the store the truth.
    pub(super) async fn mirror_put(&self, lease: &Lease, tor: &Tor) {
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
    pub(super) async fn cache_binding(&self, m: &Mirror, c: &Mirrored) {
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

    /// An ADD while the store is out of reach (`why` says so): served from
    /// the pod's cached binding, or refused with `why`.
    pub(super) async fn add_offline(
        &self,
        key: &AttachmentKey,
        req: &AddRequest,
        tor: &str,
        explicit_pool: Option<&str>,
        why: Error,
    ) -> Result<Added> {
        let pod = &req.pod;
        let Some(m) = self.mirror.as_ref().filter(|_| pod.is_known()) else {
            return Err(why);
        };
        let Some(cached) = m.bound(pod).await? else {
            return Err(why.and(&format!(
                " (pod {pod} keeps no IP cached on this node that it could restart with)"
            )));
        };
        // The cached segment must be on this node's ToR (configured by the
        // ToR's name, or by one of its segments' names).
        let here = cached.tor.switch() == tor || cached.tor.name == tor;
        if !here || explicit_pool.is_some_and(|p| p != cached.lease.pool) {
            return Err(why);
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
            return Err(why.and(&format!(
                "; pod {pod} keeps {} but it is still attached to {holder}; retry once that is deleted",
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
            created_unix: self.now(),
            created_binding: false,
        });
        let link = link_for(&cached.tor, &lease, &req.netns)?;
        let wired =
            self.datapath.wire(&link).await.map_err(|e| {
                Error::datapath(format!("wiring {} for pod {pod} failed", lease.ip), e)
            })?;
        let entry = Mirrored {
            lease: lease.clone(),
            tor: cached.tor.clone(),
            offline: true,
        };
        // Durable before the reply, or a restart would forget the pod.
        if let Err(e) = m.put(&entry).await {
            let _ = self.datapath.unwire(&link.host_ifname).await;
            return Err(Error::internal_from(
                format!("{why}; and pod {pod} could not be recorded locally: {e}"),
                e,
            ));
        }
        let _ = m.forget_bound(pod).await;
        warn!(%key, ip = %lease.ip, "store unavailable: pod restarted on its kept IP; it goes to the store when the store is back");
        Ok(Added {
            lease,
            tor: cached.tor,
            link,
            wired: Some(wired),
        })
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
                self.offline_waits.lock().unwrap().remove(&a.key);
                continue;
            }
            let mut done = self.note(self.ipam.attach_bound(&e.lease).await)?;
            if let WriteBack::Held(held) = &done {
                match self.holder(held, &a) {
                    // The pod's previous instance on this node: its DEL,
                    // recorded during the outage, first (the replay task may
                    // not have got it through yet: etcd answering reads
                    // before it has a leader for writes).
                    Holder::PendingHere => match self.replay_pending_del(&held.key).await {
                        Ok(()) => done = self.note(self.ipam.attach_bound(&e.lease).await)?,
                        Err(err) => {
                            warn!(key = %a.key, previous = %held.key, error = %err, "an attachment made during the outage waits for its previous instance's recorded DEL");
                            continue;
                        }
                    },
                    // An earlier instance of the pod elsewhere, whose DEL
                    // that node may not have replayed yet: wait for it a
                    // while (the pod has run on the IP all through the
                    // outage) before giving up the IP.
                    Holder::Earlier if self.still_waiting(&a.key) => {
                        warn!(key = %a.key, previous = %held.key, "an attachment made during the outage waits for its pod's previous instance to be deleted");
                        continue;
                    }
                    _ => {}
                }
            }
            let written = done == WriteBack::Written;
            self.offline_waits.lock().unwrap().remove(&a.key);
            if written {
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
                    .map_err(|e| Error::datapath(format!("removing {host} for {}", a.key), e))?;
                m.remove(&a.key).await?;
            }
        }
        Ok(n)
    }

    /// What `held`, attached in the store to the IP offline attachment `a`
    /// wants, is to `a`.
    fn holder(&self, held: &Attachment, a: &Attachment) -> Holder {
        let record = moor_proto::pending::path_for(
            &self.cfg.pending_dir,
            &held.key.container_id,
            &held.key.ifname,
        );
        if held.key.node == self.cfg.name && record.exists() {
            return Holder::PendingHere;
        }
        let same_pod = held.pod.namespace == a.pod.namespace && held.pod.name == a.pod.name;
        if same_pod && held.created_unix <= a.created_unix {
            return Holder::Earlier;
        }
        Holder::Other
    }

    /// Whether offline attachment `key` may still wait for the IP (first
    /// asked now, or less than `EARLIER_INSTANCE_WAIT_SECS` ago).
    fn still_waiting(&self, key: &AttachmentKey) -> bool {
        let now = self.now();
        let mut waits = self.offline_waits.lock().unwrap();
        let since = *waits.entry(key.clone()).or_insert(now);
        now.saturating_sub(since) < EARLIER_INSTANCE_WAIT_SECS
    }
}

/// How long an attachment made during an outage waits, once the store is
/// back, for an earlier instance of its pod on another node to be deleted
/// (that node replays the DEL it recorded every few seconds).
pub const EARLIER_INSTANCE_WAIT_SECS: u64 = 60;

/// Who holds, in the store, the IP an offline attachment wants written back.
enum Holder {
    /// An attachment of this node whose DEL is recorded, not yet applied.
    PendingHere,
    /// An earlier instance of the same pod (another container).
    Earlier,
    /// Anyone else.
    Other,
}
