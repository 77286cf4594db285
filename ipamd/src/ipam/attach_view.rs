//! The ADD path from the node's view of the store (`view.rs`): the pool
//! resolved, the IPs of a batch of ADDs decided and their attachments
//! recorded with one commit and, for a pod that keeps an IP, one read (its
//! binding). Only the way that
//! succeeds is taken here; whatever the view cannot answer (a pool it does
//! not follow, a refusal that needs explaining, a repeated ADD) and a commit
//! whose checks fail go the reading way (`attach.rs`), which is exact.

use crate::core::{Binding, PodRef};
use crate::error::Result;
use crate::store::{keys, StoreExt};

use super::attach::Waiting;
use super::plan::Planner;
use super::view::View;
use super::{Allocation, Ipam, PoolChoice};

impl Ipam {
    /// The ADDs of `batch` (pool `pool`) decided from the view and
    /// committed at once, or the reading way to go: nothing was written
    /// (the view does not follow the pool live, an ADD was refused: the
    /// reading way words the refusal, or the commit's checks failed), or
    /// the commit went unanswered and may have been applied.
    pub(super) async fn allocate_from_view(
        &self,
        view: &View,
        pool: &str,
        batch: &[Waiting],
    ) -> FromView {
        let Some(read) = view.pool_data(pool) else {
            return FromView::Read;
        };
        // A pod that keeps an IP of this pool: its binding record (in the
        // view only through the lease) is read, for its version. A binding
        // in another pool is not seen here: the commit checks that the pod
        // has none, and fails if it has.
        let mut bindings = Vec::new();
        for w in batch {
            let pod = &w.req.pod;
            let bound = pod.is_known()
                && read
                    .leases
                    .iter()
                    .any(|(l, _)| l.binding.as_ref().is_some_and(|b| same_pod(b, pod)));
            bindings.push(if bound {
                match self.store.get_json::<Binding>(&keys::binding(pod)).await {
                    Ok(b) => b,
                    Err(_) => return FromView::Read,
                }
            } else {
                None
            });
        }
        let mut planner = Planner::new(read, self.indexed());
        let mut done = Vec::new();
        for (w, b) in batch.iter().zip(&bindings) {
            match planner.add(&w.req, &w.segments, b.as_ref()) {
                // Attached already (per the view, which may lag behind a
                // release): the reading way answers from the store.
                Ok(Ok(a)) if !a.existing => done.push(Ok(a)),
                _ => return FromView::Read,
            }
        }
        let (txn, _, leases) = planner.finish();
        let ops = txn.ops.clone();
        let rev = match self.store.commit_at(txn).await {
            Ok(Some(rev)) => rev,
            Ok(None) => return FromView::Read,
            // The store may have applied it (etcd's answer was lost when
            // its leader died): the reading way finds out.
            Err(_) => return FromView::LostReply,
        };
        view.committed(&ops, rev, &leases);
        FromView::Done(done)
    }
}

/// How an ADD batch went on the view's way.
pub(super) enum FromView {
    Done(Vec<Result<Allocation>>),
    /// Nothing was written: the reading way decides.
    Read,
    /// The commit went unanswered: the reading way decides, and what it
    /// finds attached may be this batch's.
    LostReply,
}

fn same_pod(a: &PodRef, b: &PodRef) -> bool {
    a.namespace == b.namespace && a.name == b.name
}

/// `Ipam::resolve_pool` from the view; `None` wherever the store must be
/// asked (or the answer is an error, which the reading way words).
pub(super) fn resolve_in_view(view: &View, pod: &PodRef, c: &PoolChoice) -> Option<String> {
    let named = |p: &String, ns: Option<&str>| -> Option<String> {
        view.pool_allows(p, ns)??.then(|| p.clone())
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
