//! The ADD path of the allocation service: which IP a pod gets (the core
//! decides) and the attachment recorded in one transaction, before the
//! datapath is wired. The pool comes from `resolve.rs`; the decision's
//! inputs from the store, or from the node's view (`attach_view.rs`).

use std::net::IpAddr;
use std::sync::Arc;

use crate::core::allocate::Refusal;
use crate::core::explain::explain;
use crate::core::{AttachmentKey, AttachmentRef, Binding, Lease, Pool, Tor};
use crate::error::{cni_code, Error, Result};
use crate::store::retry::Attempt;
use crate::store::{decode, keys, StoreError, StoreExt, Txn};
use tracing::warn;

use super::attach_view::{resolve_in_view, FromView};
use super::plan::{record_attachment, segment_named, AddRead, Planner};
use super::tors::Unreadable;
use super::{AllocRequest, Allocation, Ipam};

/// ADDs of one pool decided and committed together at most (the
/// transaction stays within etcd's and our limits on its size).
const MAX_BATCH: usize = 16;

/// What the planner made of one ADD of a batch.
type Decided = Result<std::result::Result<Allocation, Refusal>>;

/// One ADD waiting for its pool's batch, with its ToR's segments.
pub(super) struct Waiting {
    pub req: AllocRequest,
    pub segments: Vec<Tor>,
    /// The store said the key is not attached yet (read before the pool was
    /// resolved): the reading way need not ask again.
    pub not_attached: bool,
}

impl Ipam {
    /// Records the attachment and returns the IP. Repeated for the same
    /// key, returns the same attachment. ADDs of one pool that arrive
    /// together are decided together and committed at once (`batch`). With
    /// a view of the store (etcd) they are decided from it; anything the
    /// view cannot answer, and a commit whose checks fail (the view was
    /// stale), goes the reading way.
    pub async fn allocate(&self, req: &AllocRequest) -> Result<Allocation> {
        let view = self.view_for(&req.tor);
        // (The view has no segments while a ToR record does not decode.)
        let (segments, unreadable) = match view.and_then(|v| v.segments()).filter(|s| !s.is_empty())
        {
            Some(s) => (s, Vec::new()),
            None => self.segments_and_unreadable(&req.tor).await?,
        };
        if segments.is_empty() {
            return Err(Error::refused(
                cni_code::TOR_UNDEFINED,
                format!(
                    "this node's ToR {t} is not defined yet: add it with `ipamctl tor add {t} --subnet CIDR --gateway IP`",
                    t = req.tor
                ),
            ));
        }
        let mut not_attached = false;
        let pool = match view.and_then(|v| resolve_in_view(v, &req.pod, &req.choice)) {
            Some(p) => p,
            None => {
                // A repeated ADD needs no pool (its pool may be gone since).
                if let Some(existing) = self.attached(&req.key).await? {
                    return Ok(Allocation {
                        tor: segment_named(&segments, &existing.tor, &req.tor)?,
                        lease: existing,
                        existing: true,
                        after_lost_reply: false,
                    });
                }
                not_attached = true;
                self.resolve_pool(&req.pod, &req.choice).await?
            }
        };
        if !unreadable.is_empty() {
            self.refuse_unreadable_segment(&pool, &unreadable).await?;
        }
        let waiting = Waiting {
            req: req.clone(),
            segments,
            not_attached,
        };
        let run = |batch: Vec<Waiting>| self.allocate_batch(&pool, batch);
        match self.adds.submit(&pool, waiting, MAX_BATCH, run).await {
            Some(r) => r,
            None => Err(Error::unavailable(format!(
                "the ADD of {} was cut short (the request that ran it went away); retry",
                req.key
            ))),
        }
    }

    /// The error of a ToR record that does not decode when pool `pool`
    /// has IPs on the ToR it names: it may be a segment of this node's
    /// ToR, and which of the pool's IPs are this node's to hand out cannot
    /// be told without it.
    async fn refuse_unreadable_segment(&self, pool: &str, unreadable: &[Unreadable]) -> Result<()> {
        let Some((p, _)) = self.store.get_json::<Pool>(&keys::pool(pool)).await? else {
            return Ok(());
        };
        match unreadable.iter().find(|u| p.ips.contains_key(&u.name)) {
            Some(u) => Err(u.error()),
            None => Ok(()),
        }
    }

    /// ADDs of pool `pool`: from the view, all at once, or the reading way.
    pub(super) async fn allocate_batch(
        &self,
        pool: &str,
        batch: Vec<Waiting>,
    ) -> Vec<Result<Allocation>> {
        let mut lost_reply = false;
        if let Some(view) = self.view_for(&batch[0].req.tor) {
            match self.allocate_from_view(view, pool, &batch).await {
                FromView::Done(done) => return done,
                FromView::Read => {}
                FromView::LostReply => lost_reply = true,
            }
        }
        let mut out = self.allocate_reading(pool, &batch).await;
        if lost_reply {
            // What the reading way finds attached may be what that commit
            // wrote: the node wires it if it is not wired yet, rather than
            // refusing it as a broken earlier ADD of the key.
            for a in out.iter_mut().flatten() {
                a.after_lost_reply = a.existing;
            }
        }
        out
    }

    /// The ADDs of `batch`, reading everything they decide from in the
    /// store: one commit for all that are not refused.
    async fn allocate_reading(&self, pool: &str, batch: &[Waiting]) -> Vec<Result<Allocation>> {
        let mut out: Vec<Option<Result<Allocation>>> = batch.iter().map(|_| None).collect();
        for (i, w) in batch.iter().enumerate().filter(|(_, w)| !w.not_attached) {
            match self.attached(&w.req.key).await {
                Ok(None) => {}
                Ok(Some(existing)) => {
                    out[i] = Some(segment_named(&w.segments, &existing.tor, &w.req.tor).map(
                        |tor| Allocation {
                            tor,
                            lease: existing,
                            existing: true,
                            after_lost_reply: false,
                        },
                    ))
                }
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        let todo: Vec<usize> = (0..batch.len()).filter(|&i| out[i].is_none()).collect();
        if todo.is_empty() {
            return out.into_iter().flatten().collect();
        }
        let what = format!("allocating in pool {pool}");
        let todo_ref = &todo;
        let decided: Result<(Vec<Decided>, Arc<Pool>)> = self
            .cas_seen(&what, || async move {
                let pool_read = self.pool_entry(pool).await?;
                let (leases, _) = self.store.list_json::<Lease>(&keys::leases(pool)).await?;
                let leases = leases
                    .into_iter()
                    .map(|(l, e)| (Arc::new(l), e.version))
                    .collect();
                let mut bindings = Vec::new();
                for &i in todo_ref {
                    let pod = &batch[i].req.pod;
                    bindings.push(if pod.is_known() {
                        self.store.get_json::<Binding>(&keys::binding(pod)).await?
                    } else {
                        None
                    });
                }
                let read = AddRead {
                    pool: (Arc::new(pool_read.0), pool_read.1),
                    leases,
                };
                let mut planner = Planner::new(read, self.indexed());
                let mut results = Vec::new();
                for (&i, b) in todo_ref.iter().zip(&bindings) {
                    results.push(planner.add(&batch[i].req, &batch[i].segments, b.as_ref()));
                }
                let (txn, pool, _) = planner.finish();
                // Only ADDs that take an IP write (one found attached does not).
                if results
                    .iter()
                    .all(|r| !matches!(r, Ok(Ok(a)) if !a.existing))
                {
                    Ok(Attempt::Done((results, pool)))
                } else {
                    Ok(Attempt::Commit(txn, (results, pool)))
                }
            })
            .await;
        match decided {
            Ok((results, pool)) => {
                for (&i, r) in todo.iter().zip(results) {
                    out[i] = Some(match r {
                        Ok(Ok(a)) => Ok(a),
                        Ok(Err(refusal)) => Err(self.refusal(refusal, &pool, &batch[i].req).await),
                        Err(e) => Err(e),
                    });
                }
            }
            Err(e) => {
                for &i in &todo {
                    out[i] = Some(Err(e.again()));
                }
            }
        }
        out.into_iter().flatten().collect()
    }

    /// The error of a refused ADD, with what the operator needs to fix it.
    async fn refusal(&self, r: Refusal, pool: &Pool, req: &AllocRequest) -> Error {
        let bound_tor = match &r {
            Refusal::WrongTor { bound_segment, .. } => match self.tor(bound_segment).await {
                Ok(t) => Some(t.map_or(bound_segment.clone(), |t| t.switch().to_string())),
                Err(e) => return e,
            },
            _ => None,
        };
        let nodes = match &bound_tor {
            Some(t) => self.alive_nodes_of(t, req.now_unix).await,
            None => Vec::new(),
        };
        if let Refusal::Full { tor, .. } = &r {
            crate::metrics::global().pool_full(&pool.name, tor);
        }
        let r = explain(r, pool, &req.pod, bound_tor.as_deref(), &nodes);
        Error::refused(r.code, r.msg)
    }

    /// The lease of an attachment, if this key is attached.
    pub async fn attached(&self, key: &AttachmentKey) -> Result<Option<Lease>> {
        self.attached_at(key, None).await
    }

    /// `attached`, with where the node's mirror says it is (pool, IP): see
    /// `release_at`.
    pub async fn attached_at(
        &self,
        key: &AttachmentKey,
        hint: Option<(&str, IpAddr)>,
    ) -> Result<Option<Lease>> {
        let viewed = self.viewed_attachment(key);
        match &viewed {
            // Read again: the view may lag behind a change by another
            // writer (the controller releasing it), and what this answers
            // is not checked by a commit. Only this node attaches its keys:
            // not there, not attached.
            Some(Some((l, _))) => return self.attached_there(key, &l.pool, l.ip).await,
            Some(None) if hint.is_none() => return Ok(None),
            _ => {}
        }
        let walk = viewed.is_none();
        Ok(self
            .find_attached(key, hint, walk)
            .await?
            .and_then(|f| f.lease_of(key)))
    }

    /// Every attachment recorded for a node, and the keys of the records
    /// (attachment index entries or leases) that do not decode. Those
    /// are left out, not taken for absent: the node's start, GC and sweep
    /// go on for the other pods, release nothing of them, and callers that
    /// would undo what is missing (the datapath reconcile) hold back. On
    /// etcd a lease that does not decode may be any node's: every one the
    /// node's view follows is named.
    pub async fn node_attachments(&self, node: &str) -> Result<(Vec<Lease>, Vec<String>)> {
        if !self.indexed() {
            return self.attached_on(node).await;
        }
        let (refs, _) = self.store.list(&keys::node_attachments(node)).await?;
        let mut out = Vec::new();
        let mut corrupt = Vec::new();
        for e in refs {
            let r = match decode::<AttachmentRef>(&e) {
                Ok(r) => r,
                Err(err) => {
                    warn!(error = %err, "an attachment of this node does not decode; its pod is left as it is");
                    corrupt.push(e.key);
                    continue;
                }
            };
            let lease_key = keys::lease(&r.pool, r.ip);
            match self.store.get_json::<Lease>(&lease_key).await {
                Ok(Some((l, _))) => {
                    if l.attachment
                        .as_ref()
                        .is_some_and(|a| keys::attachment(&a.key) == e.key)
                    {
                        out.push(l);
                    }
                }
                Ok(None) => {}
                Err(err @ StoreError::Corrupt { .. }) => {
                    warn!(error = %err, "the lease of an attachment of this node does not decode; its pod is left as it is");
                    corrupt.push(lease_key);
                }
                Err(err) => return Err(err.into()),
            }
        }
        Ok((out, corrupt))
    }

    /// Writes an attachment made during a store outage from the pod's cached
    /// binding (`lease` carries it, ready). Applies only if the store still
    /// keeps that IP for that pod and nothing else is attached to it;
    /// otherwise says why, and the caller takes the pod's interface down
    /// (or, for [`WriteBack::Held`], may wait for the holder to go).
    pub async fn attach_bound(&self, lease: &Lease) -> Result<WriteBack> {
        let a = lease
            .attachment
            .as_ref()
            .expect("attach_bound needs an attachment");
        let _turn = self.pool_turn(&lease.pool).await;
        let what = "writing an attachment made during an outage";
        self.cas_seen(what, || async move {
            let key = keys::lease(&lease.pool, lease.ip);
            let Some((now, entry)) = self.store.get_json::<Lease>(&key).await? else {
                return Ok(Attempt::Done(WriteBack::Refused));
            };
            // The same pod by name: a re-created pod has a new UID.
            let same_pod = now
                .binding
                .as_ref()
                .is_some_and(|b| b.namespace == a.pod.namespace && b.name == a.pod.name);
            // A quarantined IP is in use by someone else on the network: the
            // pod's offline restart loses it (its interface is taken down).
            if !same_pod || now.evict || now.quarantine.is_some() {
                return Ok(Attempt::Done(WriteBack::Refused));
            }
            // A pool being deleted (or created) takes no attachment: its
            // delete would drop this one.
            let pool = self
                .store
                .get_json::<Pool>(&keys::pool(&lease.pool))
                .await?;
            let Some((pool, pool_entry)) = pool.filter(|(p, _)| p.closed().is_none()) else {
                return Ok(Attempt::Done(WriteBack::Refused));
            };
            match &now.attachment {
                Some(other) if other.key == a.key => return Ok(Attempt::Done(WriteBack::Written)),
                Some(other) => return Ok(Attempt::Done(WriteBack::Held(Box::new(other.clone())))),
                None => {}
            }
            let mut merged = now.clone();
            merged.attachment = Some(a.clone());
            let mut txn = Txn::default();
            txn.expect(&key, Some(&entry))
                .expect(&keys::pool(&pool.name), Some(&pool_entry));
            record_attachment(&mut txn, &merged, &a.key, self.indexed());
            Ok(Attempt::Commit(txn, WriteBack::Written))
        })
        .await
    }
}

/// How writing back an attachment made during an outage went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteBack {
    Written,
    /// The IP is attached to another container (`Attachment`) in the store.
    Held(Box<crate::core::Attachment>),
    /// The store no longer keeps the IP for the pod (released, evicted,
    /// quarantined, its pool closed).
    Refused,
}
