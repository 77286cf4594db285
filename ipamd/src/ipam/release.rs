//! The DEL path of the allocation service: an attachment ends; its IP stays
//! with the pod (binding) or goes back to the pool. Also the rollback of a
//! half-done ADD and the quarantine of an IP another host answered for.

use std::net::IpAddr;

use crate::core::{AttachmentKey, Quarantine};
use crate::error::Result;
use crate::store::retry::Attempt;
use crate::store::{keys, Txn};

use super::find::Found;
use super::{Ipam, Released};

impl Ipam {
    /// Ends an attachment. The IP stays with the pod if it has a binding,
    /// else goes back to the pool. `rollback` (a failed or half-done ADD) also
    /// drops a binding that ADD created. `Ok(None)`: nothing was attached.
    pub async fn release(&self, key: &AttachmentKey, rollback: bool) -> Result<Option<Released>> {
        self.release_as(key, rollback, None, None).await
    }

    /// `release`, with where the node's mirror says the attachment is
    /// (pool, IP): found there even when the node's view does not follow
    /// it (the node moved to another ToR).
    pub async fn release_at(
        &self,
        key: &AttachmentKey,
        rollback: bool,
        hint: Option<(&str, IpAddr)>,
    ) -> Result<Option<Released>> {
        self.release_as(key, rollback, None, hint).await
    }

    /// Rolls back an ADD whose duplicate-address probe heard another owner
    /// of the IP, and quarantines the IP: it stays out of use (a binding
    /// that this ADD did not create stays too, so the pod is refused rather
    /// than given another IP) until `ipamctl ip release`.
    /// `at`: where the ADD put it (pool, IP), as for `release_at`.
    pub async fn quarantine(
        &self,
        key: &AttachmentKey,
        q: Quarantine,
        at: Option<(&str, IpAddr)>,
    ) -> Result<Option<Released>> {
        self.release_as(key, true, Some(q), at).await
    }

    async fn release_as(
        &self,
        key: &AttachmentKey,
        rollback: bool,
        quarantine: Option<Quarantine>,
        hint: Option<(&str, IpAddr)>,
    ) -> Result<Option<Released>> {
        let how = How {
            key,
            rollback,
            quarantine: &quarantine,
        };
        // From the view: the lease; one commit whose checks cover it, else
        // the reading way below.
        let viewed = self.viewed_attachment(key);
        let view_cannot_say = viewed.is_none();
        let mut lagged = None;
        match viewed {
            Some(Some(lease)) => {
                let found = Found {
                    index: None,
                    lease: Some(lease),
                };
                let (txn, released) = plan(&how, &found);
                let ops = txn.ops.clone();
                if let Some(rev) = self.store.commit_at(txn).await? {
                    if let Some(view) = self.view.get() {
                        view.committed(&ops, rev, &[]);
                    }
                    return Ok(released);
                }
                // The view lagged behind a change of the lease.
                lagged = found.lease;
            }
            Some(None) if hint.is_none() => return Ok(None),
            _ => {}
        }
        // Where the reading way looks: where the view (or else the node's
        // mirror) says; the whole store only where the view cannot say.
        let at = match &lagged {
            Some((l, _)) => Some((l.pool.as_str(), l.ip)),
            None => hint,
        };
        // Another node's, found where the caller says (GC, evict): not
        // there, released meanwhile by that node's own DEL.
        let walk = view_cannot_say && !(self.foreign(key) && at.is_some());
        let how = &how;
        self.cas_seen("releasing an attachment", || async move {
            let Some(found) = self.find_attached(key, at, walk).await? else {
                return Ok(Attempt::Done(None));
            };
            let (mut txn, released) = plan(how, &found);
            if found.index.is_none() {
                self.drop_foreign_index(key, &mut txn);
            }
            Ok(Attempt::Commit(txn, released))
        })
        .await
    }
}

/// What a release is.
struct How<'a> {
    key: &'a AttachmentKey,
    /// Of a half-done ADD: a binding it created goes too.
    rollback: bool,
    quarantine: &'a Option<Quarantine>,
}

/// The release of `key`'s attachment, `found`, as one transaction that
/// applies only if the lease (and its index entry) are unchanged. No lease:
/// a dangling index entry, dropped.
fn plan(how: &How, found: &Found) -> (Txn, Option<Released>) {
    let mut txn = Txn::default();
    if let Some((_, e)) = &found.index {
        txn.expect(&e.key, Some(e)).delete(&e.key);
    }
    let (mut lease, lease_entry) = match &found.lease {
        Some((l, e)) => (l.clone(), e),
        None => {
            if let Some((r, _)) = &found.index {
                txn.expect(&keys::lease(&r.pool, r.ip), None);
            }
            return (txn, None);
        }
    };
    let lease_key = keys::lease(&lease.pool, lease.ip);
    txn.expect(&lease_key, Some(lease_entry));
    let attachment = match lease.attachment.take() {
        Some(a) if &a.key == how.key => a,
        // The IP moved on; only the index entry is ours.
        _ => return (txn, None),
    };
    if (how.rollback && attachment.created_binding) || lease.evict {
        if let Some(pod) = lease.binding.take() {
            txn.delete(&keys::binding(&pod));
        }
    }
    let binding_kept = lease.binding.is_some();
    if how.quarantine.is_some() {
        lease.quarantine = how.quarantine.clone();
    }
    if binding_kept || lease.quarantine.is_some() {
        txn.put(&lease_key, &lease);
    } else {
        txn.delete(&lease_key);
    }
    let released = Released {
        ip: lease.ip,
        pool: lease.pool.clone(),
        binding_kept,
        attachment,
    };
    (txn, Some(released))
}
