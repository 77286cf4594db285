//! After a start: roll back ADDs a crash left half-done, apply the DELs
//! recorded while ipamd or the store was out of reach, write back what was
//! attached during an outage, rebuild the local mirror, and make the
//! datapath (OVS ports) match this node's attachments.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{info, warn};

use crate::core::{AttachmentKey, AttachmentState, Lease, Tor};
use crate::error::Result;
use crate::store::keys;

use super::mirror::Mirrored;
use super::{link_for, Node};

/// How long a start waits for the view (`wait_for_view`).
const VIEW_WAIT: Duration = Duration::from_secs(5);

impl Node {
    /// `Ok(false)`: the store was unavailable, the mirror's pending ADDs
    /// were rolled back locally (their releases are recorded), and `recover`
    /// must run again once the store answers.
    pub async fn recover(&self) -> Result<bool> {
        // The ToR from --tor or the node's label (the Kubernetes API's
        // first lists come before this); without it, no view yet, and this
        // node's attachments are found by walking the leases.
        if let Ok(tor) = self.tor() {
            self.ipam.start_view(&tor);
            self.wait_for_view().await;
        }
        let mut rolled_back = 0;
        // ADDs a crash cut short: marked in flight, attached or not.
        for key in self.inflight.leftovers(&self.cfg.name) {
            self.del_key(&key, true, true).await?;
            self.inflight.settled(&key);
            warn!(%key, "rolled back an ADD that a crash left half-done");
            rolled_back += 1;
        }
        let (mine, online) = self.my_attachments().await?;
        for lease in &mine {
            let a = lease.attachment.as_ref().expect("attached");
            // Recorded pending by an ipamd from before ADDs record their
            // attachment ready in one commit.
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
        let dropped = self.ipam.drop_index_of(&self.cfg.name).await?;
        if dropped > 0 {
            info!(
                dropped,
                "dropped this node's attachment index entries, which ipamd no longer writes on etcd (schema 5)"
            );
        }
        let synced = self.sync_offline().await?;
        if synced > 0 {
            info!(
                synced,
                "attachments made during the store outage are in the store"
            );
        }
        if let Some(m) = &self.mirror {
            let (now, _) = self.my_attachments().await?;
            let mut tors: HashMap<String, Tor> = HashMap::new();
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

    /// On etcd, this node finds its attachments among the leases its view
    /// follows (`ipam::find`): the start waits for the view's first lists
    /// (what the store would otherwise be walked for, lease by lease), for
    /// at most [`VIEW_WAIT`], and no longer once a list fails (the store
    /// does not answer: the mirror serves).
    async fn wait_for_view(&self) {
        let until = tokio::time::Instant::now() + VIEW_WAIT;
        while self.ipam.view_settled() == Some(false) && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// This node's attachments, from the store or, in an outage, the mirror;
    /// and whether they came from the store.
    pub(crate) async fn my_attachments(&self) -> Result<(Vec<Lease>, bool)> {
        match self.note(self.attached_here().await) {
            // The ones that do not decode were logged; what uses this list
            // (GC, sweep, the start's roll-back) leaves their pods alone.
            Ok((all, _corrupt)) => Ok((all, true)),
            Err(why) if why.is_unavailable() => match &self.mirror {
                Some(m) => Ok((
                    m.readable().await?.0.into_iter().map(|c| c.lease).collect(),
                    false,
                )),
                None => Err(why),
            },
            Err(e) => Err(e),
        }
    }

    /// This node's attachments in the store, and the keys of records that
    /// do not decode. On etcd they are found among the leases of this
    /// node's ToR; what the mirror holds outside them (the node was moved
    /// to another ToR) is read where the mirror says it is.
    async fn attached_here(&self) -> Result<(Vec<Lease>, Vec<String>)> {
        let (mut all, mut corrupt) = self.ipam.node_attachments(&self.cfg.name).await?;
        let Some(m) = &self.mirror else {
            return Ok((all, corrupt));
        };
        let known: HashSet<AttachmentKey> = all
            .iter()
            .filter_map(|l| l.attachment.as_ref().map(|a| a.key.clone()))
            .collect();
        let (mirrored, _) = m.readable().await?;
        for c in mirrored.iter().filter(|c| !c.offline) {
            let Some(a) = c
                .lease
                .attachment
                .as_ref()
                .filter(|a| !known.contains(&a.key))
            else {
                continue;
            };
            match self
                .ipam
                .attached_there(&a.key, &c.lease.pool, c.lease.ip)
                .await
            {
                Ok(Some(l)) => all.push(l),
                Ok(None) => {}
                Err(e) if e.is_corrupt() => corrupt.push(keys::lease(&c.lease.pool, c.lease.ip)),
                Err(e) => return Err(e),
            }
        }
        Ok((all, corrupt))
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
            let mut tors: HashMap<String, Option<Tor>> = HashMap::new();
            let mut pairs = Vec::new();
            let (mine, corrupt) = self.attached_here().await?;
            if !corrupt.is_empty() {
                // The reconcile removes every port the list lacks: it would
                // cut off the pods whose records do not decode.
                tracing::error!(
                    corrupt = ?corrupt,
                    "the datapath is not reconciled: records of this node's attachments do not \
                     decode (ipamctl audit lists them); ports stay as they are until a start \
                     after the repair"
                );
                return Ok(());
            }
            for lease in mine {
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
                // All or nothing: a pod left out would have its port removed.
                Some(m) => match m.all().await {
                    Ok(all) => all.into_iter().map(|c| (c.lease, c.tor)).collect(),
                    Err(e @ crate::store::StoreError::Corrupt { .. }) => {
                        tracing::error!(error = %e, "the datapath is not reconciled: a record of the local mirror does not decode; ports stay as they are until a start with the store");
                        return Ok(());
                    }
                    Err(e) => return Err(e.into()),
                },
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
}
