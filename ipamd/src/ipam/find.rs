//! Where an attachment is, by its key (node, container, ifname).
//!
//! A store without history (redb: one node) keeps an index entry per
//! attachment, `attachments/<node>/<container>/<ifname>` -> (pool, IP),
//! written in the ADD's transaction: a local write, cheap. On etcd (schema
//! 5) no index is written: a second key (and its compare) in every
//! ADD's transaction held the ADD at 0.60-0.73 of etcd's single-CAS rate
//! at 64 allocators, 0.74-0.82 without (docs/benchmarks.md, "Eighth
//! round"). A node's attachments are on its own ToR's segments, whose
//! leases its view follows (each lease names its attachment), so the node
//! finds them there; while the view is not live, by reading the leases a
//! page at a time. Index entries an ipamd of schema 4 wrote stay valid
//! until the node's ipamd starts on schema 5, which drops them
//! (`drop_index_of`), or a release of the attachment by another node (the
//! controller's GC, a forced evict) deletes one (`drop_foreign_index`).

use std::future::Future;
use std::net::IpAddr;

use tracing::warn;

use crate::core::{AttachmentKey, AttachmentRef, Lease};
use crate::error::Result;
use crate::store::retry::{cas_at, Attempt};
use crate::store::{decode, keys, Entry, StoreExt, Txn};

use super::listing::Walk;
use super::Ipam;

/// Index entries deleted per transaction (etcd allows 128 ops).
const DROP_BATCH: usize = 100;

/// An attachment found by its key.
pub(super) struct Found {
    /// Its index entry, on a store that keeps one (None on etcd).
    pub index: Option<(AttachmentRef, Entry)>,
    /// The lease the index entry names, or the one found attached to the
    /// key, and its entry (None: a dangling index entry).
    pub lease: Option<(Lease, Entry)>,
}

impl Found {
    /// The lease, if it is still attached to `key` (an index entry may
    /// outlive it: the IP moved on).
    pub fn lease_of(self, key: &AttachmentKey) -> Option<Lease> {
        self.lease.map(|(l, _)| l).filter(|l| l.attached_to(key))
    }
}

impl Ipam {
    /// Whether attachments have index entries in this store.
    pub(super) fn indexed(&self) -> bool {
        !self.store.keeps_history()
    }

    /// The attachment of `key`, from the store (the index, or the leases
    /// read a page at a time). `hint`: where the node's mirror says it is
    /// (pool, IP), read first: a node moved to another ToR keeps
    /// attachments outside the leases its view follows. `walk` false: the
    /// view said none is attached where it looks, so only the hint is read.
    pub(super) async fn find_attached(
        &self,
        key: &AttachmentKey,
        hint: Option<(&str, IpAddr)>,
        walk: bool,
    ) -> Result<Option<Found>> {
        if self.indexed() {
            let Some((r, e)) = self
                .store
                .get_json::<AttachmentRef>(&keys::attachment(key))
                .await?
            else {
                return Ok(None);
            };
            let lease = self
                .store
                .get_json::<Lease>(&keys::lease(&r.pool, r.ip))
                .await?;
            return Ok(Some(Found {
                index: Some((r, e)),
                lease,
            }));
        }
        let lease = match hint {
            Some((pool, ip)) => self.lease_attached(key, pool, ip).await?,
            None => None,
        };
        let lease = match lease {
            Some(l) => Some(l),
            None if walk => self.walk_leases(|l| l.attached_to(key)).await?.0.pop(),
            None => None,
        };
        Ok(lease.map(|l| Found {
            index: None,
            lease: Some(l),
        }))
    }

    /// `store::retry::cas`, its commit applied to the node's view at once:
    /// what finds this node's attachments there must see the ones the
    /// reading way writes, not wait for the watch.
    pub(super) async fn cas_seen<T, F, Fut>(&self, what: &str, attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Attempt<T>>>,
    {
        let view = self.view.get();
        let (v, committed) = cas_at(self.store.as_ref(), what, view.is_some(), attempt).await?;
        if let (Some((ops, rev)), Some(view)) = (committed, view) {
            view.committed(&ops, rev, &[]);
        }
        Ok(v)
    }

    /// Whether the node's view is live or its lists fail (`View::settled`);
    /// None: there is no view (a store without history, or no ToR).
    pub fn view_settled(&self) -> Option<bool> {
        self.view.get().map(|v| v.settled())
    }

    /// The lease of `ip` in `pool` if it is attached to `key`: one read,
    /// where the node's mirror says an attachment is.
    pub async fn attached_there(
        &self,
        key: &AttachmentKey,
        pool: &str,
        ip: IpAddr,
    ) -> Result<Option<Lease>> {
        Ok(self.lease_attached(key, pool, ip).await?.map(|(l, _)| l))
    }

    /// The lease of `ip` in `pool` and its entry, if attached to `key`.
    async fn lease_attached(
        &self,
        key: &AttachmentKey,
        pool: &str,
        ip: IpAddr,
    ) -> Result<Option<(Lease, Entry)>> {
        let lease = self.store.get_json::<Lease>(&keys::lease(pool, ip)).await?;
        Ok(lease.filter(|(l, _)| l.attached_to(key)))
    }

    /// Says which node this daemon serves: the view then answers only for
    /// that node's attachments. Another node's (the controller's GC, a
    /// forced evict) may be on a ToR the view does not follow. Once.
    pub fn serve_node(&self, name: &str) {
        let _ = self.node.set(name.to_string());
    }

    /// Whether `key` is attached on another node than the one this daemon
    /// serves (unknown: not another, for the view).
    pub(super) fn foreign(&self, key: &AttachmentKey) -> bool {
        self.node.get().is_some_and(|n| *n != key.node)
    }

    /// The attachment of `key` as the view has it, if the view can say
    /// (etcd only, and the node's own keys): `Some(None)` none. Not checked
    /// against the store: a commit that relies on it checks the lease's
    /// version.
    pub(super) fn viewed_attachment(&self, key: &AttachmentKey) -> Option<Option<(Lease, Entry)>> {
        if self.indexed() || self.foreign(key) {
            return None;
        }
        self.view.get()?.attached(key)
    }

    /// On etcd, the index entry an ipamd of schema 4 may have left for
    /// an attachment this daemon releases for another node (the
    /// controller's GC, a forced evict; that node's ipamd drops its own when
    /// it starts on schema 5, a dead node's never does): deleted with the
    /// release, whether there or not.
    pub(super) fn drop_foreign_index(&self, key: &AttachmentKey, txn: &mut Txn) {
        let own = self.node.get().is_some_and(|n| *n == key.node);
        if !self.indexed() && !own {
            txn.delete(&keys::attachment(key));
        }
    }

    /// Every lease matching `keep` and the keys of the leases that do not
    /// decode, read a page at a time (memory stays one page whatever the
    /// store's size).
    async fn walk_leases(
        &self,
        keep: impl Fn(&Lease) -> bool,
    ) -> Result<(Vec<(Lease, Entry)>, Vec<String>)> {
        let (mut out, mut corrupt) = (Vec::new(), Vec::new());
        let mut walk = Walk::new(self.store.clone(), keys::LEASES).current();
        while let Some(e) = walk.next().await? {
            match decode::<Lease>(&e) {
                Ok(l) if keep(&l) => out.push((l, e)),
                Ok(_) => {}
                Err(err) => {
                    warn!(error = %err, "a lease does not decode; if it is this node's, its pod is left as it is");
                    corrupt.push(e.key);
                }
            }
        }
        Ok((out, corrupt))
    }

    /// Every attachment on node `node` and the keys of the records that do
    /// not decode and may be one (etcd: any lease the node's view follows,
    /// or any lease at all while the view is not live).
    pub(super) async fn attached_on(&self, node: &str) -> Result<(Vec<Lease>, Vec<String>)> {
        if let Some(found) = self.view.get().and_then(|v| v.attached_on(node)) {
            return Ok(found);
        }
        let on = |l: &Lease| l.attachment.as_ref().is_some_and(|a| a.key.node == node);
        let (found, corrupt) = self.walk_leases(on).await?;
        Ok((found.into_iter().map(|(l, _)| l).collect(), corrupt))
    }

    /// Deletes the index entries of node `node`'s attachments that an ipamd
    /// of schema 4 wrote (etcd): nothing reads them since schema 5, and an
    /// entry would outlive its attachment, which `ipamctl audit` reports.
    /// Each delete checks the entry unchanged; a crash part way leaves the
    /// rest for the next start. Returns how many went.
    pub async fn drop_index_of(&self, node: &str) -> Result<usize> {
        if self.indexed() {
            return Ok(0);
        }
        let (entries, _) = self.store.list(&keys::node_attachments(node)).await?;
        let mut dropped = 0;
        for chunk in entries.chunks(DROP_BATCH) {
            let mut txn = Txn::default();
            for e in chunk {
                txn.expect(&e.key, Some(e)).delete(&e.key);
            }
            if self.store.commit(txn).await? {
                dropped += chunk.len();
            }
        }
        Ok(dropped)
    }
}
