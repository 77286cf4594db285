//! The ADD path of the allocation service: which IP a pod gets (the core
//! decides) and the attachment recorded in one transaction, before the
//! datapath is wired. The pool comes from `resolve.rs`; the decision's
//! inputs from the store, or from the node's view (`attach_view.rs`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::core::allocate::{self, AddDecision, AddInput, Refusal};
use crate::core::explain::explain;
use crate::core::{
    Attachment, AttachmentKey, AttachmentRef, AttachmentState, Binding, FreeCount, Lease, Pool, Tor,
};
use crate::error::{cni_code, Error, Result};
use crate::store::retry::{cas, Attempt};
use crate::store::{keys, Entry, StoreExt, Txn};

use super::{AllocRequest, Allocation, Ipam};

impl Ipam {
    /// Records the attachment and returns the IP. Repeated for the same
    /// key, returns the same attachment. With a view of the store (etcd),
    /// decides from it and commits once; anything the view cannot answer,
    /// and a commit whose checks fail (the view was stale), goes the
    /// reading way.
    pub async fn allocate(&self, req: &AllocRequest) -> Result<Allocation> {
        if let Some(view) = self.view_for(&req.tor) {
            if let Some(a) = self.allocate_from_view(view, req).await? {
                return Ok(a);
            }
        }
        self.allocate_reading(req).await
    }

    /// `allocate`, reading everything it decides from in the store.
    async fn allocate_reading(&self, req: &AllocRequest) -> Result<Allocation> {
        let segments = self.segments_of(&req.tor).await?;
        if segments.is_empty() {
            return Err(Error::refused(
                cni_code::TOR_UNDEFINED,
                format!(
                    "this node's ToR {t} is not defined yet: add it with `ipamctl tor add {t} --subnet CIDR --gateway IP`",
                    t = req.tor
                ),
            ));
        }
        if let Some(existing) = self.attached(&req.key).await? {
            return Ok(Allocation {
                tor: segment_named(&segments, &existing.tor, &req.tor)?,
                lease: existing,
                existing: true,
            });
        }
        let pool_name = self.resolve_pool(&req.pod, &req.choice).await?;
        let lock = self.pool_lock(&pool_name);
        let _guard = lock.lock().await;
        let what = format!("allocating in pool {pool_name}");
        let (pool_name, segments) = (&pool_name, &segments);
        cas(self.store.as_ref(), &what, || async move {
            let (pool, pool_entry) = self.pool_entry(pool_name).await?;
            let binding = if req.pod.is_known() {
                self.store
                    .get_json::<Binding>(&keys::binding(&req.pod))
                    .await?
            } else {
                None
            };
            // Read before the leases: a lease change after this read also moves
            // the counters, whose versions the commit checks.
            let (counters, _) = self
                .store
                .list_json::<FreeCount>(&keys::frees(pool_name))
                .await?;
            let (leases, _) = self
                .store
                .list_json::<Lease>(&keys::leases(&pool.name))
                .await?;
            let read = AddRead {
                pool: (pool, pool_entry),
                binding,
                counters,
                leases,
            };
            match plan(req, &read, segments)? {
                Ok((txn, a)) => Ok(Attempt::Commit(txn, a)),
                Err(r) => Err(self.refusal(r, &read.pool.0, req).await),
            }
        })
        .await
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
        let r = explain(r, pool, &req.pod, bound_tor.as_deref(), &nodes);
        Error::refused(r.code, r.msg)
    }

    /// The lease of an attachment, if this key is attached.
    pub async fn attached(&self, key: &AttachmentKey) -> Result<Option<Lease>> {
        let Some((r, _)) = self
            .store
            .get_json::<AttachmentRef>(&keys::attachment(key))
            .await?
        else {
            return Ok(None);
        };
        Ok(self
            .store
            .get_json::<Lease>(&keys::lease(&r.pool, r.ip))
            .await?
            .map(|(l, _)| l)
            .filter(|l| l.attachment.as_ref().is_some_and(|a| &a.key == key)))
    }

    /// Every attachment recorded for a node.
    pub async fn node_attachments(&self, node: &str) -> Result<Vec<Lease>> {
        let (refs, _) = self
            .store
            .list_json::<AttachmentRef>(&keys::node_attachments(node))
            .await?;
        let mut out = Vec::new();
        for (r, e) in refs {
            if let Some((l, _)) = self
                .store
                .get_json::<Lease>(&keys::lease(&r.pool, r.ip))
                .await?
            {
                if l.attachment
                    .as_ref()
                    .is_some_and(|a| keys::attachment(&a.key) == e.key)
                {
                    out.push(l);
                }
            }
        }
        Ok(out)
    }

    /// Writes an attachment made during a store outage from the pod's cached
    /// binding (`lease` carries it, ready). Applies only if the store still
    /// keeps that IP for that pod and nothing is attached to it: `Ok(false)`
    /// means it does not, and the caller must take the pod's interface down.
    pub async fn attach_bound(&self, lease: &Lease) -> Result<bool> {
        let a = lease
            .attachment
            .as_ref()
            .expect("attach_bound needs an attachment");
        let lock = self.pool_lock(&lease.pool);
        let _guard = lock.lock().await;
        let what = "writing an attachment made during an outage";
        cas(self.store.as_ref(), what, || async move {
            let key = keys::lease(&lease.pool, lease.ip);
            let att_key = keys::attachment(&a.key);
            let Some((now, entry)) = self.store.get_json::<Lease>(&key).await? else {
                return Ok(Attempt::Done(false));
            };
            // The same pod by name: a re-created pod has a new UID.
            let same_pod = now
                .binding
                .as_ref()
                .is_some_and(|b| b.namespace == a.pod.namespace && b.name == a.pod.name);
            // A quarantined IP is in use by someone else on the network: the
            // pod's offline restart loses it (its interface is taken down).
            if !same_pod || now.evict || now.quarantine.is_some() {
                return Ok(Attempt::Done(false));
            }
            // A pool being deleted (or created) takes no attachment: its
            // delete would drop this one.
            let pool = self
                .store
                .get_json::<Pool>(&keys::pool(&lease.pool))
                .await?;
            let Some((pool, pool_entry)) = pool.filter(|(p, _)| p.closed().is_none()) else {
                return Ok(Attempt::Done(false));
            };
            match &now.attachment {
                Some(other) if other.key == a.key => return Ok(Attempt::Done(true)),
                Some(_) => return Ok(Attempt::Done(false)),
                None => {}
            }
            let mut merged = now.clone();
            merged.attachment = Some(a.clone());
            let mut txn = Txn::default();
            txn.expect(&key, Some(&entry))
                .expect(&keys::pool(&pool.name), Some(&pool_entry))
                .expect(&att_key, None)
                .put(&key, &merged)
                .put(
                    &att_key,
                    &AttachmentRef {
                        pool: lease.pool.clone(),
                        ip: lease.ip,
                    },
                );
            Ok(Attempt::Commit(txn, true))
        })
        .await
    }
}

/// What an ADD decides from: read from the store, or from the view.
pub(super) struct AddRead {
    pub pool: (Pool, Entry),
    /// The pod's binding (any pool).
    pub binding: Option<(Binding, Entry)>,
    pub counters: Vec<(FreeCount, Entry)>,
    pub leases: Vec<(Lease, Entry)>,
}

/// The segment `name` of this node's ToR `tor`.
fn segment_named(segments: &[Tor], name: &str, tor: &str) -> Result<Tor> {
    segments
        .iter()
        .find(|t| t.name == name)
        .cloned()
        .ok_or_else(|| {
            Error::internal(format!(
                "segment {name} is not on ToR {tor}; it was deleted or moved"
            ))
        })
}

/// The core's decision on `read`, as the transaction that records it: it
/// applies only if every record the decision read is unchanged (the pool,
/// the lease taken, the pod's binding or its absence, the counter) and the
/// attachment does not exist yet. The attachment is recorded ready: a crash
/// before the ADD returns is rolled back by the node (`node::inflight`).
pub(super) fn plan(
    req: &AllocRequest,
    read: &AddRead,
    segments: &[Tor],
) -> Result<std::result::Result<(Txn, Allocation), Refusal>> {
    let (pool, pool_entry) = &read.pool;
    let leases: BTreeMap<Ipv4Addr, &(Lease, Entry)> =
        read.leases.iter().map(|le| (le.0.ip, le)).collect();
    let plain: BTreeMap<Ipv4Addr, Lease> =
        leases.iter().map(|(ip, (l, _))| (*ip, l.clone())).collect();
    let segment_names: Vec<String> = segments.iter().map(|t| t.name.clone()).collect();
    let keeps_ip = req.pod.is_known() && pool.policy.keeps_ip(req.stable);
    let decision = allocate::decide(&AddInput {
        pool,
        tor: &req.tor,
        segments: &segment_names,
        leases: &plain,
        binding: read.binding.as_ref().map(|(b, _)| b),
        key: &req.key,
        keeps_ip,
        now_unix: req.now_unix,
    });
    let AddDecision::Take {
        ip,
        segment: seg,
        new_binding,
    } = match decision {
        Ok(d) => d,
        Err(r) => return Ok(Err(r)),
    };
    let tor = segment_named(segments, &seg, &req.tor)?;
    let old = leases.get(&ip);
    let attachment = Attachment {
        key: req.key.clone(),
        pod: req.pod.clone(),
        netns: req.netns.clone(),
        network: req.network.clone(),
        state: AttachmentState::Ready,
        created_unix: req.now_unix,
        created_binding: new_binding,
    };
    let lease = Lease {
        ip,
        pool: pool.name.clone(),
        tor: seg.clone(),
        binding: if new_binding {
            Some(req.pod.clone())
        } else {
            old.and_then(|(l, _)| l.binding.clone())
        },
        attachment: Some(attachment),
        evict: false,
        quarantine: None,
    };
    let lease_key = keys::lease(&pool.name, ip);
    let att_key = keys::attachment(&req.key);
    let mut txn = Txn::default();
    txn.expect(&keys::pool(&pool.name), Some(pool_entry))
        .expect(&lease_key, old.map(|(_, e)| e))
        .expect(&att_key, None)
        .put(&lease_key, &lease)
        .put(
            &att_key,
            &AttachmentRef {
                pool: pool.name.clone(),
                ip,
            },
        );
    let binding_key = keys::binding(&req.pod);
    if new_binding {
        let b = Binding {
            pod: req.pod.clone(),
            pool: pool.name.clone(),
            ip,
            tor: seg.clone(),
        };
        txn.expect(&binding_key, None).put(&binding_key, &b);
    } else if let Some((_, e)) = &read.binding {
        txn.expect(&binding_key, Some(e));
    } else if req.pod.is_known() {
        // Decided as a pod without a binding: one made meanwhile (ipamctl
        // binding add) would have changed the decision.
        txn.expect(&binding_key, None);
    }
    if old.is_none() {
        // A free IP became leased: publish the pool's free count on
        // this segment, recomputed (so it also heals a stale one).
        let key = keys::free(&pool.name, &seg);
        let counter = read.counters.iter().find(|(_, e)| e.key == key);
        let total = pool.ips.get(&seg).map_or(0, |v| v.len() as u32);
        let used = 1 + plain.values().filter(|l| l.tor == seg).count() as u32;
        txn.expect(&key, counter.map(|(_, e)| e)).put(
            &key,
            &FreeCount {
                total,
                free: total.saturating_sub(used),
            },
        );
    }
    Ok(Ok((
        txn,
        Allocation {
            lease,
            tor,
            existing: false,
        },
    )))
}
