//! The DEL path of the allocation service: an attachment ends; its IP stays
//! with the pod (binding) or goes back to the pool. Also the rollback of a
//! half-done ADD and the quarantine of an IP another host answered for.

use crate::core::{AttachmentKey, AttachmentRef, Lease, Quarantine};
use crate::error::Result;
use crate::store::retry::{cas, Attempt};
use crate::store::{keys, Entry, StoreExt, Txn};

use super::{Ipam, Released};

impl Ipam {
    /// Ends an attachment. The IP stays with the pod if it has a binding,
    /// else goes back to the pool. `rollback` (a failed or half-done ADD) also
    /// drops a binding that ADD created. `Ok(None)`: nothing was attached.
    pub async fn release(&self, key: &AttachmentKey, rollback: bool) -> Result<Option<Released>> {
        self.release_as(key, rollback, None).await
    }

    /// Rolls back an ADD whose duplicate-address probe heard another owner
    /// of the IP, and quarantines the IP: it stays out of use (a binding
    /// that this ADD did not create stays too, so the pod is refused rather
    /// than given another IP) until `ipamctl ip release`.
    pub async fn quarantine(&self, key: &AttachmentKey, q: Quarantine) -> Result<Option<Released>> {
        self.release_as(key, true, Some(q)).await
    }

    async fn release_as(
        &self,
        key: &AttachmentKey,
        rollback: bool,
        quarantine: Option<Quarantine>,
    ) -> Result<Option<Released>> {
        let att_key = keys::attachment(key);
        let Some((first, first_entry)) = self.store.get_json::<AttachmentRef>(&att_key).await?
        else {
            return Ok(None);
        };
        let how = How {
            key,
            rollback,
            quarantine: &quarantine,
        };
        // From the view: the lease; one commit whose checks cover it, else
        // the reading way below.
        if let Some(view) = self.view.get() {
            if let Some(lease) = view.lease(&first.pool, first.ip) {
                let (txn, released) = plan(&how, &first, &first_entry, lease);
                let ops = txn.ops.clone();
                if let Some(rev) = self.store.commit_at(txn).await? {
                    view.committed(&ops, rev, &[]);
                    return Ok(released);
                }
            }
        }
        let (att_key, how) = (att_key.as_str(), &how);
        cas(
            self.store.as_ref(),
            "releasing an attachment",
            || async move {
                let Some((r, att_entry)) = self.store.get_json::<AttachmentRef>(att_key).await?
                else {
                    return Ok(Attempt::Done(None));
                };
                let lease = self
                    .store
                    .get_json::<Lease>(&keys::lease(&r.pool, r.ip))
                    .await?;
                let (txn, released) = plan(how, &r, &att_entry, lease);
                Ok(Attempt::Commit(txn, released))
            },
        )
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

/// The release of `key`'s attachment, recorded at `r` (`att_entry`), as one
/// transaction that applies only if the lease is unchanged. `lease` None:
/// a dangling index entry, dropped.
fn plan(
    how: &How,
    r: &AttachmentRef,
    att_entry: &Entry,
    lease: Option<(Lease, Entry)>,
) -> (Txn, Option<Released>) {
    let lease_key = keys::lease(&r.pool, r.ip);
    let mut txn = Txn::default();
    txn.expect(&att_entry.key, Some(att_entry))
        .delete(&att_entry.key);
    let Some((mut lease, lease_entry)) = lease else {
        txn.expect(&lease_key, None);
        return (txn, None);
    };
    txn.expect(&lease_key, Some(&lease_entry));
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
        ip: r.ip,
        pool: r.pool.clone(),
        binding_kept,
        attachment,
    };
    (txn, Some(released))
}
