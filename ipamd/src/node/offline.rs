//! A node during a store outage. A pod whose binding this node cached (it
//! ran here and its DEL kept its IP) starts again on that IP; the attachment
//! goes to the store when it is back (`sync_offline`). Any other pod gets
//! code 11: a new IP must be taken in one place, the store.

use tracing::{info, warn};

use crate::core::{Attachment, AttachmentKey, AttachmentState, Lease, Tor};
use crate::error::{Error, Result};
use crate::store::StoreExt;

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
                continue;
            }
            let mut written = self.note(self.ipam.attach_bound(&e.lease).await)?;
            if !written {
                // The pod's previous instance on this node may still hold the
                // IP: its DEL, recorded during the outage, first (the replay
                // task may not have got it through yet: etcd answering reads
                // before it has a leader for writes).
                if let Some(prev) = self.pending_holder(&e.lease).await {
                    match self.replay_pending_del(&prev).await {
                        Ok(()) => written = self.note(self.ipam.attach_bound(&e.lease).await)?,
                        // Not through yet either: the next round tries again.
                        Err(err) => {
                            warn!(key = %a.key, previous = %prev, error = %err, "an attachment made during the outage waits for its previous instance's recorded DEL");
                            continue;
                        }
                    }
                }
            }
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

    /// The attachment of this node holding `lease`'s IP in the store whose
    /// DEL is recorded in the pending-DEL directory, if there is one.
    async fn pending_holder(&self, lease: &Lease) -> Option<AttachmentKey> {
        let key = crate::store::keys::lease(&lease.pool, lease.ip);
        let (now, _) = self.ipam.store().get_json::<Lease>(&key).await.ok()??;
        let holder = now.attachment?.key;
        let record = moor_proto::pending::path_for(
            &self.cfg.pending_dir,
            &holder.container_id,
            &holder.ifname,
        );
        (holder.node == self.cfg.name && record.exists()).then_some(holder)
    }
}
