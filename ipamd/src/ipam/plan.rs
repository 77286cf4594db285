//! ADDs of one pool decided in turn, each seeing the ones before it, into
//! one transaction that applies only if every record the decisions read is
//! unchanged: the pool, each lease taken (or its absence), each pod's
//! binding (or its absence), and, where attachments are indexed
//! (`find.rs`), each index entry's absence. Nothing else
//! is written: no count shared by every ADD of the pool (`core::free_counts`
//! works free counts out when asked). The attachments are recorded ready: a crash before the ADD
//! returns is rolled back by the node (`node::inflight`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::core::allocate::{self, AddDecision, AddInput, Refusal};
use crate::core::{
    Attachment, AttachmentKey, AttachmentRef, AttachmentState, Binding, IpFamily, Lease, Pool, Tor,
};
use crate::error::{Error, Result};
use crate::store::{keys, Entry, Txn};

use super::{AllocRequest, Allocation};

/// What ADDs of one pool decide from: read from the store, or from the view.
pub(super) struct AddRead {
    /// Shared with the view that holds it (not copied per ADD).
    pub pool: (Arc<Pool>, Entry),
    /// Each lease and its version (what the commit checks).
    pub leases: Vec<(Arc<Lease>, u64)>,
}

/// The segment `name` of this node's ToR `tor`.
pub(super) fn segment_named(segments: &[Tor], name: &str, tor: &str) -> Result<Tor> {
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

type PodKey = (String, String);

/// Adds to `txn` the lease `lease` holding attachment `key` and, on a
/// store that keeps one (`find.rs`), the attachment's index entry, which
/// must not exist yet. On etcd nothing but the lease is written: one key
/// per ADD (the node keeps one ADD of a key at a time, `node::inflight`,
/// and finds an earlier one among its pool's leases, `Planner::add`).
pub(super) fn record_attachment(txn: &mut Txn, lease: &Lease, key: &AttachmentKey, indexed: bool) {
    txn.put(&keys::lease(&lease.pool, lease.ip), lease);
    if indexed {
        let att_key = keys::attachment(key);
        txn.expect(&att_key, None).put(
            &att_key,
            &AttachmentRef {
                pool: lease.pool.clone(),
                ip: lease.ip,
            },
        );
    }
}

pub(super) struct Planner {
    pool: Arc<Pool>,
    /// The pool's leases as decided so far.
    leases: BTreeMap<IpAddr, Arc<Lease>>,
    /// The leases' versions as read (what the commit checks).
    versions: BTreeMap<IpAddr, u64>,
    /// Bindings made by ADDs earlier in this batch.
    made: HashMap<PodKey, Binding>,
    keys: HashSet<AttachmentKey>,
    /// Whether the store keeps attachment index entries (`find.rs`).
    indexed: bool,
    txn: Txn,
    /// The leases the transaction puts, shared with `leases`.
    taken: Vec<Arc<Lease>>,
}

impl Planner {
    /// Plans from `read`, taking its records (a pool's leases are many; a
    /// batch decides from them once).
    pub fn new(read: AddRead, indexed: bool) -> Self {
        let (pool, entry) = read.pool;
        let mut txn = Txn::default();
        txn.expect(&keys::pool(&pool.name), Some(&entry));
        let mut leases = BTreeMap::new();
        let mut versions = BTreeMap::new();
        for (l, v) in read.leases {
            versions.insert(l.ip, v);
            leases.insert(l.ip, l);
        }
        Self {
            pool,
            leases,
            versions,
            made: HashMap::new(),
            keys: HashSet::new(),
            indexed,
            txn,
            taken: Vec::new(),
        }
    }

    /// Decides `req` (whose pod's binding, read from the store, is
    /// `binding`) after the ADDs before it. `Ok(Err)`: refused, nothing
    /// of it goes into the transaction.
    pub fn add(
        &mut self,
        req: &AllocRequest,
        segments: &[Tor],
        binding: Option<&(Binding, Entry)>,
    ) -> Result<std::result::Result<Allocation, Refusal>> {
        if !self.keys.insert(req.key.clone()) {
            return Err(Error::Conflict(format!(
                "another ADD of {} is running: the runtime should not ADD one attachment twice at once; retry",
                req.key
            )));
        }
        if !self.indexed {
            // No index entry whose absence the commit checks: an ADD of
            // the key that committed before (its reply lost) is found here.
            let key = &req.key;
            if let Some(l) = self.leases.values().find(|l| l.attached_to(key)) {
                return Ok(Ok(Allocation {
                    tor: segment_named(segments, &l.tor, &req.tor)?,
                    lease: Lease::clone(l),
                    existing: true,
                    after_lost_reply: false,
                }));
            }
        }
        let pool = &self.pool;
        let pod_key = (req.pod.namespace.clone(), req.pod.name.clone());
        let made = self.made.get(&pod_key).cloned();
        let segment_names: Vec<String> = segments.iter().map(|t| t.name.clone()).collect();
        let decision = allocate::decide(&AddInput {
            pool,
            tor: &req.tor,
            segments: &segment_names,
            leases: &self.leases,
            binding: made.as_ref().or(binding.map(|(b, _)| b)),
            key: &req.key,
            keeps_ip: req.pod.is_known() && pool.policy.keeps_ip(req.stable),
            now_unix: req.now_unix,
        });
        let AddDecision::Take {
            ip,
            segment: seg,
            new_binding,
        } = match decision {
            Ok(d) => d,
            Err(r) => {
                self.keys.remove(&req.key);
                return Ok(Err(r));
            }
        };
        let tor = segment_named(segments, &seg, &req.tor)?;
        let old = self.leases.get(&ip);
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
            ipv6: match pool.family {
                IpFamily::Dual => Some(tor.partner(ip).ok_or_else(|| {
                    Error::internal(format!(
                        "IP {ip} of dual-stack pool {} has no IPv6 partner on segment {}",
                        pool.name, tor.name
                    ))
                })?),
                _ => None,
            },
            pool: pool.name.clone(),
            tor: seg.clone(),
            binding: if new_binding {
                Some(req.pod.clone())
            } else {
                old.and_then(|l| l.binding.clone())
            },
            attachment: Some(attachment),
            evict: false,
            quarantine: None,
        };
        self.txn.expect_version(
            &keys::lease(&pool.name, ip),
            self.versions.get(&ip).copied().unwrap_or(0),
        );
        record_attachment(&mut self.txn, &lease, &req.key, self.indexed);
        let binding_key = keys::binding(&req.pod);
        if new_binding {
            let b = Binding {
                pod: req.pod.clone(),
                pool: pool.name.clone(),
                ip,
                tor: seg.clone(),
            };
            self.txn.expect(&binding_key, None).put(&binding_key, &b);
            self.made.insert(pod_key, b);
        } else if made.is_some() {
            // Made by an ADD before this one, in this transaction.
        } else if let Some((_, e)) = binding {
            self.txn.expect(&binding_key, Some(e));
        } else if req.pod.is_known() {
            // Decided as a pod without a binding: one made meanwhile (ipamctl
            // binding add) would have changed the decision.
            self.txn.expect(&binding_key, None);
        }
        let shared = Arc::new(lease.clone());
        self.taken.push(shared.clone());
        self.leases.insert(ip, shared);
        Ok(Ok(Allocation {
            lease,
            tor,
            existing: false,
            after_lost_reply: false,
        }))
    }

    /// The transaction of every ADD decided, the pool they were decided
    /// in, and the leases the transaction puts.
    pub fn finish(self) -> (Txn, Arc<Pool>, Vec<Arc<Lease>>) {
        (self.txn, self.pool, self.taken)
    }
}
