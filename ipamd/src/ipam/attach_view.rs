//! The ADD path from the node's view of the store (`view.rs`): the pool
//! resolved, the IP decided and the attachment recorded with one commit and,
//! for a pod that keeps an IP, one read (its binding). Only the way that
//! succeeds is taken here; whatever the view cannot answer (a pool it does
//! not follow, a refusal that needs explaining, a repeated ADD) and a commit
//! whose checks fail go the reading way (`attach.rs`), which is exact.

use crate::core::{Binding, PodRef};
use crate::error::Result;
use crate::store::{keys, StoreExt};

use super::attach::{plan, AddRead};
use super::view::View;
use super::{AllocRequest, Allocation, Ipam, PoolChoice};

impl Ipam {
    /// `None`: go the reading way (nothing was written).
    pub(super) async fn allocate_from_view(
        &self,
        view: &View,
        req: &AllocRequest,
    ) -> Result<Option<Allocation>> {
        let Some(segments) = view.segments().filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        let Some(pool_name) = resolve_in_view(view, &req.pod, &req.choice) else {
            return Ok(None);
        };
        let lock = self.pool_lock(&pool_name);
        let _guard = lock.lock().await;
        let Some(data) = view.pool_data(&pool_name) else {
            return Ok(None);
        };
        // A pod that keeps an IP of this pool: its binding record (in the
        // view only through the lease) is read, for its version. A binding
        // in another pool is not seen here: the commit checks that the pod
        // has none, and fails if it has.
        let bound = req.pod.is_known()
            && data
                .leases
                .iter()
                .any(|(l, _)| l.binding.as_ref().is_some_and(|b| same_pod(b, &req.pod)));
        let binding = if bound {
            self.store
                .get_json::<Binding>(&keys::binding(&req.pod))
                .await?
        } else {
            None
        };
        let read = AddRead {
            pool: data.pool,
            binding,
            counters: data.counters,
            leases: data.leases,
        };
        let Ok((txn, alloc)) = plan(req, &read, &segments)? else {
            return Ok(None);
        };
        let ops = txn.ops.clone();
        match self.store.commit_at(txn).await? {
            Some(rev) => {
                view.committed(&ops, rev);
                Ok(Some(alloc))
            }
            None => Ok(None),
        }
    }
}

fn same_pod(a: &PodRef, b: &PodRef) -> bool {
    a.namespace == b.namespace && a.name == b.name
}

/// `Ipam::resolve_pool` from the view; `None` wherever the store must be
/// asked (or the answer is an error, which the reading way words).
fn resolve_in_view(view: &View, pod: &PodRef, c: &PoolChoice) -> Option<String> {
    let named = |p: &String, ns: Option<&str>| -> Option<String> {
        let pool = view.pool(p)??;
        ns.is_none_or(|ns| pool.allows(ns)).then(|| p.clone())
    };
    if let Some(p) = &c.explicit {
        return named(p, None);
    }
    if let Some(p) = &c.pod_annotation {
        return named(p, Some(&pod.namespace));
    }
    if let Some(app) = c.app.as_ref().filter(|_| !pod.namespace.is_empty()) {
        if let Some(p) = view.app_pool(&pod.namespace, app)? {
            return Some(p);
        }
    }
    if let Some(p) = &c.namespace_annotation {
        return named(p, Some(&pod.namespace));
    }
    if let Some(p) = &c.default {
        return named(p, None);
    }
    None
}
