//! The DEL path of the allocation service: an attachment ends; its IP stays
//! with the pod (binding) or goes back to the pool. Also the rollback of a
//! half-done ADD and the quarantine of an IP another host answered for.

use crate::core::{AttachmentKey, AttachmentRef, Lease, Quarantine};
use crate::error::Result;
use crate::store::retry::{cas, Attempt};
use crate::store::{keys, StoreExt, Txn};

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
        let Some((first, _)) = self.store.get_json::<AttachmentRef>(&att_key).await? else {
            return Ok(None);
        };
        let lock = self.pool_lock(&first.pool);
        let _guard = lock.lock().await;
        let (att_key, quarantine) = (att_key.as_str(), &quarantine);
        cas(
            self.store.as_ref(),
            "releasing an attachment",
            || async move {
                let Some((r, att_entry)) = self.store.get_json::<AttachmentRef>(att_key).await?
                else {
                    return Ok(Attempt::Done(None));
                };
                let lease_key = keys::lease(&r.pool, r.ip);
                let mut txn = Txn::default();
                txn.expect(att_key, Some(&att_entry)).delete(att_key);
                let lease = self.store.get_json::<Lease>(&lease_key).await?;
                let Some((mut lease, lease_entry)) = lease else {
                    // A dangling index entry: drop it.
                    return Ok(Attempt::Commit(txn, None));
                };
                let attachment = match lease.attachment.take() {
                    Some(a) if &a.key == key => a,
                    // The IP moved on; only the index entry is ours.
                    _ => return Ok(Attempt::Commit(txn, None)),
                };
                txn.expect(&lease_key, Some(&lease_entry));
                if (rollback && attachment.created_binding) || lease.evict {
                    if let Some(pod) = lease.binding.take() {
                        txn.delete(&keys::binding(&pod));
                    }
                }
                let binding_kept = lease.binding.is_some();
                if quarantine.is_some() {
                    lease.quarantine = quarantine.clone();
                }
                if binding_kept || lease.quarantine.is_some() {
                    txn.put(&lease_key, &lease);
                } else {
                    txn.delete(&lease_key);
                    self.bump_free(&mut txn, &r.pool, &lease.tor, 1).await?;
                }
                Ok(Attempt::Commit(
                    txn,
                    Some(Released {
                        ip: r.ip,
                        pool: r.pool,
                        binding_kept,
                        attachment,
                    }),
                ))
            },
        )
        .await
    }
}
