//! Garbage collection's writes (the controller's `gc` loop decides them):
//! a binding whose pod is gone for good goes, but only if the IP is still
//! exactly as the decision saw it; an attachment on a dead node goes
//! through `release` (the DEL path), which keeps its binding.

use std::net::IpAddr;

use crate::core::{Lease, PodRef};
use crate::error::Result;
use crate::store::retry::{cas, Attempt};
use crate::store::{keys, StoreExt, Txn};

use super::Ipam;

impl Ipam {
    /// Drops `pod`'s binding on `ip` of `pool`, the IP going back to the
    /// pool, if the IP is still bound to that pod with nothing attached and
    /// no quarantine. `Ok(false)`: it is not (a pod re-created meanwhile
    /// took it, an operator released it): nothing was written.
    pub async fn release_unused_binding(
        &self,
        ip: IpAddr,
        pool: &str,
        pod: &PodRef,
    ) -> Result<bool> {
        let _turn = self.pool_turn(pool).await;
        let key = keys::lease(pool, ip);
        let key = key.as_str();
        cas(
            self.store.as_ref(),
            "gc: releasing a binding",
            || async move {
                let Some((lease, entry)) = self.store.get_json::<Lease>(key).await? else {
                    return Ok(Attempt::Done(false));
                };
                let same_pod = lease
                    .binding
                    .as_ref()
                    .is_some_and(|b| b.namespace == pod.namespace && b.name == pod.name);
                if !same_pod || lease.attachment.is_some() || lease.quarantine.is_some() {
                    return Ok(Attempt::Done(false));
                }
                let mut txn = Txn::default();
                txn.expect(key, Some(&entry))
                    .delete(key)
                    .delete(&keys::binding(pod));
                Ok(Attempt::Commit(txn, true))
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::ipam::{AllocRequest, Ipam};
    use crate::store::mem::MemStore;

    async fn ipam_with_pool() -> Ipam {
        let ipam = Ipam::new(Arc::new(MemStore::new()));
        let range = [("10.1.0.10".to_string(), "10.1.0.13".to_string())];
        ipam.add_tor("t1", "10.1.0.0/24", "10.1.0.1", 0, &range, "")
            .await
            .unwrap();
        let spec = crate::ipam::PoolSpec {
            name: "db".into(),
            namespace: "default".into(),
            app: "db".into(),
            size: 4,
            ..Default::default()
        };
        ipam.create_pool(&spec, 0).await.unwrap();
        ipam
    }

    async fn free(ipam: &Ipam) -> u32 {
        ipam.free_count("db", "t1").await.free
    }

    #[tokio::test]
    async fn only_an_unused_binding_of_that_pod_goes() {
        let ipam = ipam_with_pool().await;
        let req = AllocRequest::for_test("n1", "t1", "c1", "db-0", 100);
        let lease = ipam.allocate(&req).await.unwrap().lease;
        let pod = lease.binding.clone().expect("a StatefulSet pod is bound");
        assert_eq!(free(&ipam).await, 3);
        // Attached: not released.
        assert!(!ipam
            .release_unused_binding(lease.ip, "db", &pod)
            .await
            .unwrap());
        ipam.release(&req.key, false).await.unwrap();
        // Another pod's name: not released.
        let other = crate::core::PodRef {
            name: "db-1".into(),
            ..pod.clone()
        };
        assert!(!ipam
            .release_unused_binding(lease.ip, "db", &other)
            .await
            .unwrap());
        assert!(ipam
            .release_unused_binding(lease.ip, "db", &pod)
            .await
            .unwrap());
        assert!(ipam.ip(lease.ip).await.unwrap().lease.is_none());
        assert!(ipam.bindings(None).await.unwrap().is_empty());
        assert_eq!(free(&ipam).await, 4);
        // Gone already: nothing to do.
        assert!(!ipam
            .release_unused_binding(lease.ip, "db", &pod)
            .await
            .unwrap());
        assert!(crate::audit::run(ipam.store().as_ref())
            .await
            .unwrap()
            .findings
            .is_empty());
    }
}
