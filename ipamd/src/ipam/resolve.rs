//! Which pool a pod draws from: the call's explicit pool, the pod's
//! annotation, its workload's registered pool, its namespace's annotation,
//! the network's default. Read from the store; `attach_view.rs` answers the
//! same questions from the node's view when it can.

use crate::core::{PodRef, Pool, POOL_ANNOTATION};
use crate::error::{cni_code, Error, Result};
use crate::store::{keys, StoreExt};

use super::{Ipam, PoolChoice};

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
}
