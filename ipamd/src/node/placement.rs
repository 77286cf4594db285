//! Which pool a pod's ADD draws from and whether its IP stays with it. With
//! the Kubernetes API, the pod's own metadata decides (its controller, its
//! annotation, its namespace's); without it, its name does, as Kubernetes
//! builds names (`web-3`, `web-7d9f8c6b5-x2x9z`).

use moor_proto::cni_code;

use crate::error::{Error, Result};
use crate::ipam::PoolChoice;

use super::{AddRequest, Node};

/// Where an ADD's IP comes from.
#[derive(Default)]
pub(super) struct Placement {
    pub choice: PoolChoice,
    pub stable: bool,
}

impl Node {
    pub(super) async fn placement(&self, req: &AddRequest) -> Result<Placement> {
        let pod = &req.pod;
        let Some(cluster) = self.cluster.as_ref().filter(|_| pod.is_known()) else {
            // Without the API the config's pool is as explicit as MOOR_POOL.
            let explicit = req.pool.clone().or_else(|| req.default_pool.clone());
            let (choice, stable) = PoolChoice::by_name(pod, explicit);
            return Ok(Placement { choice, stable });
        };
        let uid = if pod.uid.is_empty() {
            String::new()
        } else {
            format!(" (uid {})", pod.uid)
        };
        let facts = match cluster.pod(&pod.namespace, &pod.name, &pod.uid).await {
            Ok(Some(f)) => f,
            Ok(None) => {
                return Err(Error::refused(
                    cni_code::TRY_AGAIN_LATER,
                    format!(
                        "pod {pod}{uid} is not known to the Kubernetes API: it may have just been created or deleted; nothing was allocated, retry"
                    ),
                ))
            }
            Err(e) => {
                return Err(Error::refused(
                    cni_code::TRY_AGAIN_LATER,
                    format!(
                        "pod {pod}{uid} is not in ipamd's cache and {e}; nothing was allocated, retry once the API answers"
                    ),
                ))
            }
        };
        let (mut choice, stable) = PoolChoice::from_api(
            &facts,
            cluster.namespace_pool(&pod.namespace),
            req.default_pool.clone(),
            &self.cfg.sticky_kinds,
        );
        choice.explicit = req.pool.clone();
        Ok(Placement { choice, stable })
    }
}
