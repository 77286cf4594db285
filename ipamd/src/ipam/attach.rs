//! The ADD path of the allocation service: which pool a pod draws from,
//! which IP it gets (the core decides), and the attachment recorded as
//! pending before the datapath is wired, then marked ready.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::core::allocate::{self, AddDecision, AddInput, Refusal};
use crate::core::explain::explain;
use crate::core::{
    Attachment, AttachmentKey, AttachmentRef, AttachmentState, Binding, FreeCount, Lease, PodRef,
    Pool, POOL_ANNOTATION,
};
use crate::error::{cni_code, Error, Result};
use crate::store::retry::{cas, Attempt};
use crate::store::{keys, Entry, StoreExt, Txn};

use super::{AllocRequest, Allocation, Ipam, PoolChoice};

impl Ipam {
    /// The pool a pod draws from, the first of: the call's explicit pool,
    /// the pod's annotation, the pool registered for its workload, its
    /// namespace's annotation, the network's default. A pool named by an
    /// annotation must belong to the pod's namespace or allow it. `pod` may
    /// lack a name (the admission webhook's pod with a generateName): the
    /// workload's pool needs only the namespace.
    pub async fn resolve_pool(&self, pod: &PodRef, c: &PoolChoice) -> Result<String> {
        if let Some(p) = &c.explicit {
            self.named_pool(p, "named by MOOR_POOL or the network config", None)
                .await?;
            return Ok(p.clone());
        }
        if let Some(p) = &c.pod_annotation {
            let why = format!("named by pod {pod}'s annotation {POOL_ANNOTATION}");
            self.named_pool(p, &why, Some(&pod.namespace)).await?;
            return Ok(p.clone());
        }
        if let Some(app) = c.app.as_ref().filter(|_| !pod.namespace.is_empty()) {
            if let Some((p, _)) = self
                .store
                .get_json::<String>(&keys::app(&pod.namespace, app))
                .await?
            {
                return Ok(p);
            }
        }
        if let Some(p) = &c.namespace_annotation {
            let why = format!(
                "named by namespace {}'s annotation {POOL_ANNOTATION}",
                pod.namespace
            );
            self.named_pool(p, &why, Some(&pod.namespace)).await?;
            return Ok(p.clone());
        }
        if let Some(p) = &c.default {
            self.named_pool(p, "the network config's default pool", None)
                .await?;
            return Ok(p.clone());
        }
        if !pod.is_known() {
            return Err(Error::refused(
                cni_code::NO_POOL,
                "no pool for this container: the runtime passed no K8S_POD_NAMESPACE/K8S_POD_NAME, so set MOOR_POOL in CNI_ARGS or \"pool\" in the network config",
            ));
        }
        let ns = &pod.namespace;
        let app = c.app.as_deref().unwrap_or(&pod.name);
        if c.from_api && c.declarable {
            // The pod's workload may declare its pool (moor.io/pool-size)
            // and the controller not have made it yet: the pod's ADD can
            // come first. The runtime retries code 11.
            return Err(Error::refused(
                cni_code::TRY_AGAIN_LATER,
                format!(
                    "no pool for app {ns}/{app} (pod {pod}) yet: if its workload declares moor.io/pool-size, moor's controller is making it (nothing was allocated, retry); if not, create one with `ipamctl pool create {app} --namespace {ns} --app {app}` or name a pool with the annotation {POOL_ANNOTATION} on the pod or its namespace"
                ),
            ));
        }
        let annotation = if c.from_api {
            format!(" or the annotation {POOL_ANNOTATION} on the pod or its namespace")
        } else {
            String::new()
        };
        Err(Error::refused(
            cni_code::NO_POOL,
            format!(
                "no pool for app {ns}/{app} (pod {pod}): create one with `ipamctl pool create {app} --namespace {ns} --app {app}` so its IPs are known before it starts, or name a pool with MOOR_POOL{annotation}"
            ),
        ))
    }

    /// Checks that pool `name` exists and, when `namespace` is given (a
    /// pool named by an annotation), that its pods may use it.
    async fn named_pool(&self, name: &str, why: &str, namespace: Option<&str>) -> Result<()> {
        let Some((pool, _)) = self.store.get_json::<Pool>(&keys::pool(name)).await? else {
            return Err(Error::refused(
                cni_code::NO_POOL,
                format!("pool {name} ({why}) does not exist: create it with `ipamctl pool create {name} --namespace NS --app APP`"),
            ));
        };
        if let Some(ns) = namespace.filter(|ns| !pool.allows(ns)) {
            return Err(Error::refused(
                cni_code::POOL_NOT_ALLOWED,
                format!(
                    "pool {name} ({why}) belongs to namespace {} and does not allow pods of namespace {ns}: name a pool of namespace {ns}, or have pool {name} made with `--allow-namespace {ns}`; nothing was allocated",
                    pool.namespace
                ),
            ));
        }
        Ok(())
    }

    /// Records the attachment (state pending) and returns the IP. Repeated
    /// for the same key, returns the same attachment.
    pub async fn allocate(&self, req: &AllocRequest) -> Result<Allocation> {
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
        let segment = |name: &str| {
            segments
                .iter()
                .find(|t| t.name == name)
                .cloned()
                .ok_or_else(|| {
                    Error::internal(format!(
                        "segment {name} is not on ToR {}; it was deleted or moved",
                        req.tor
                    ))
                })
        };
        let segment_names: Vec<String> = segments.iter().map(|t| t.name.clone()).collect();
        if let Some(existing) = self.attached(&req.key).await? {
            return Ok(Allocation {
                tor: segment(&existing.tor)?,
                lease: existing,
                existing: true,
            });
        }
        let pool_name = self.resolve_pool(&req.pod, &req.choice).await?;
        let stable_name = req.stable;
        let lock = self.pool_lock(&pool_name);
        let _guard = lock.lock().await;
        let what = format!("allocating in pool {pool_name}");
        let (pool_name, segment_names, segment) = (&pool_name, &segment_names, &segment);
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
            let (lease_list, _) = self
                .store
                .list_json::<Lease>(&keys::leases(&pool.name))
                .await?;
            let leases: BTreeMap<Ipv4Addr, (Lease, Entry)> = lease_list
                .into_iter()
                .map(|(l, e)| (l.ip, (l, e)))
                .collect();
            let plain: BTreeMap<Ipv4Addr, Lease> =
                leases.iter().map(|(ip, (l, _))| (*ip, l.clone())).collect();
            let keeps_ip = req.pod.is_known() && pool.policy.keeps_ip(stable_name);
            let decision = allocate::decide(&AddInput {
                pool: &pool,
                tor: &req.tor,
                segments: segment_names,
                leases: &plain,
                binding: binding.as_ref().map(|(b, _)| b),
                key: &req.key,
                keeps_ip,
                now_unix: req.now_unix,
            });
            let decision = match decision {
                Ok(d) => d,
                Err(r) => {
                    let bound_tor = match &r {
                        Refusal::WrongTor { bound_segment, .. } => {
                            let t = self.tor(bound_segment).await?;
                            Some(t.map_or(bound_segment.clone(), |t| t.switch().to_string()))
                        }
                        _ => None,
                    };
                    let nodes = match &bound_tor {
                        Some(t) => self.alive_nodes_of(t, req.now_unix).await,
                        None => Vec::new(),
                    };
                    let r = explain(r, &pool, &req.pod, bound_tor.as_deref(), &nodes);
                    return Err(Error::refused(r.code, r.msg));
                }
            };
            let AddDecision::Take {
                ip,
                segment: seg,
                new_binding,
            } = decision;
            let tor = segment(&seg)?;
            let old = leases.get(&ip);
            let attachment = Attachment {
                key: req.key.clone(),
                pod: req.pod.clone(),
                netns: req.netns.clone(),
                network: req.network.clone(),
                state: AttachmentState::Pending,
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
            txn.expect(&keys::pool(&pool.name), Some(&pool_entry))
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
            if new_binding {
                let b = Binding {
                    pod: req.pod.clone(),
                    pool: pool.name.clone(),
                    ip,
                    tor: seg.clone(),
                };
                txn.expect(&keys::binding(&req.pod), None)
                    .put(&keys::binding(&req.pod), &b);
            } else if let Some((_, e)) = &binding {
                txn.expect(&keys::binding(&req.pod), Some(e));
            }
            if old.is_none() {
                // A free IP became leased: publish the pool's free count on
                // this segment, recomputed (so it also heals a stale one).
                let key = keys::free(&pool.name, &seg);
                let counter = counters.iter().find(|(_, e)| e.key == key);
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
            Ok(Attempt::Commit(
                txn,
                Allocation {
                    lease,
                    tor,
                    existing: false,
                },
            ))
        })
        .await
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
            match &now.attachment {
                Some(other) if other.key == a.key => return Ok(Attempt::Done(true)),
                Some(_) => return Ok(Attempt::Done(false)),
                None => {}
            }
            let mut merged = now.clone();
            merged.attachment = Some(a.clone());
            let mut txn = Txn::default();
            txn.expect(&key, Some(&entry))
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

    /// Marks an attachment wired: from now on a restart keeps it.
    pub async fn mark_ready(&self, key: &AttachmentKey) -> Result<()> {
        cas(
            self.store.as_ref(),
            "marking an attachment ready",
            || async move {
                let Some((r, _)) = self
                    .store
                    .get_json::<AttachmentRef>(&keys::attachment(key))
                    .await?
                else {
                    return Err(Error::internal(format!(
                        "attachment {key} vanished before it was wired"
                    )));
                };
                let lease_key = keys::lease(&r.pool, r.ip);
                let Some((mut lease, entry)) = self.store.get_json::<Lease>(&lease_key).await?
                else {
                    return Err(Error::internal(format!(
                        "lease of {key} vanished before it was wired"
                    )));
                };
                match lease.attachment.as_mut() {
                    Some(a) if &a.key == key => a.state = AttachmentState::Ready,
                    _ => {
                        return Err(Error::internal(format!(
                            "{} is no longer attached to {key}",
                            r.ip
                        )))
                    }
                }
                let mut txn = Txn::default();
                txn.expect(&lease_key, Some(&entry)).put(&lease_key, &lease);
                Ok(Attempt::Commit(txn, ()))
            },
        )
        .await
    }
}
