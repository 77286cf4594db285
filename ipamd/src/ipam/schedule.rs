//! What the admission webhook reads to steer a pod to ToRs: the pod's pool
//! (decided by `resolve_pool`, as its ADD will decide it), every ToR
//! record, the pool's lease keys (its free counts) and the pod's binding.
//! Reads only; the decision is `core::schedule`'s.

use crate::core::schedule::{self, ScheduleInput, TorChoice};
use crate::core::{Binding, PodRef, Tor};
use crate::error::{Error, Result};
use crate::store::{keys, StoreExt};

use super::{Ipam, PoolChoice};

impl Ipam {
    /// The ToRs a pod may be scheduled to, and the pool it draws from; None
    /// when that pool lies on no known ToR. An error when no pool can be
    /// decided (nothing names one; a named pool is missing or does not
    /// allow the pod's namespace) or the store fails. `pod` without a name
    /// (a generateName at admission) has no binding to look up.
    pub async fn tors_for(
        &self,
        pod: &PodRef,
        choice: &PoolChoice,
    ) -> Result<(String, Option<TorChoice>)> {
        let pool_name = self.resolve_pool(pod, choice).await?;
        // One round trip's worth of latency for the four reads on etcd.
        let binding = async {
            if !pod.is_known() {
                return Ok(None);
            }
            let b = self.store.get_json::<Binding>(&keys::binding(pod)).await?;
            Ok::<_, Error>(b.map(|(b, _)| b))
        };
        let tors = async { Ok::<_, Error>(self.store.list_json::<Tor>(keys::TORS).await?.0) };
        let leased =
            async { Ok::<_, Error>(self.store.list_keys(&keys::leases(&pool_name)).await?) };
        let ((pool, _), binding, tors, leased) =
            tokio::try_join!(self.pool_entry(&pool_name), binding, tors, leased)?;
        let free = super::free::from_lease_keys(&pool, &leased);
        let tors: Vec<Tor> = tors.into_iter().map(|(t, _)| t).collect();
        let choice = schedule::tors_for(&ScheduleInput {
            pool: &pool,
            tors: &tors,
            free: &free,
            binding: binding.as_ref(),
        });
        Ok((pool_name, choice))
    }
}
