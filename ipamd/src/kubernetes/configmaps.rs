//! The whitelist a declared pool publishes: ConfigMap `moor-pool-<pool>` in
//! the workload's namespace, key `ips`, one IP per line (sorted), owned by
//! the workload so Kubernetes deletes it with the workload. Whitelist
//! syncers (or a database's sidecar) read it with their own RBAC; moor
//! never patches the workload itself (GitOps tools own it).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;

use corev1::ConfigMap;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use metav1::{ObjectMeta, OwnerReference};

/// `moor-pool-<pool>`.
pub const NAME_PREFIX: &str = "moor-pool-";
/// The key holding the IPs.
pub const IPS_KEY: &str = "ips";
/// The label that says moor writes the ConfigMap.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "moor");
/// The label naming the pool.
pub const POOL_LABEL: &str = "moor.io/pool";

/// The workload a ConfigMap belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
}

/// What a pool's whitelist ConfigMap says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Whitelist {
    pub namespace: String,
    pub pool: String,
    pub ips: Vec<IpAddr>,
    pub owner: Owner,
}

/// The ConfigMap's name for `pool` (a pool name is a DNS label, so this
/// is a valid object name).
pub fn name(pool: &str) -> String {
    format!("{NAME_PREFIX}{pool}")
}

/// The `ips` value: sorted, one per line, a newline after the last.
pub fn ips_text(ips: &[IpAddr]) -> String {
    let mut ips = ips.to_vec();
    ips.sort();
    ips.iter().map(|ip| format!("{ip}\n")).collect()
}

fn owner_ref(o: &Owner) -> OwnerReference {
    OwnerReference {
        api_version: o.api_version.clone(),
        kind: o.kind.clone(),
        name: o.name.clone(),
        uid: o.uid.clone(),
        // Not the ConfigMap's controller, and never in the way of the
        // workload's deletion.
        controller: Some(false),
        block_owner_deletion: Some(false),
    }
}

/// Sets `cm` to say `w`, keeping owners that are not the workload (or an
/// earlier incarnation of it). Returns whether anything changed.
fn conform(cm: &mut ConfigMap, w: &Whitelist) -> bool {
    let before = (
        cm.data.clone(),
        cm.metadata.owner_references.clone(),
        cm.metadata.labels.clone(),
    );
    let data = cm.data.get_or_insert_with(BTreeMap::new);
    data.insert(IPS_KEY.into(), ips_text(&w.ips));
    let labels = cm.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
    labels.insert(POOL_LABEL.into(), w.pool.clone());
    let owners = cm.metadata.owner_references.get_or_insert_with(Vec::new);
    owners.retain(|o| !(o.kind == w.owner.kind && o.name == w.owner.name));
    owners.push(owner_ref(&w.owner));
    before
        != (
            cm.data.clone(),
            cm.metadata.owner_references.clone(),
            cm.metadata.labels.clone(),
        )
}

/// A ConfigMap of the same name that moor did not write: left alone.
#[derive(Debug, thiserror::Error)]
pub enum ConfigMapError {
    #[error("ConfigMap {namespace}/{name} exists and is not moor's (no label {}={}): rename or delete it, moor does not overwrite it", MANAGED_BY.0, MANAGED_BY.1)]
    NotOurs { namespace: String, name: String },
    #[error("{0}")]
    Api(#[from] kube::Error),
}

/// Writes whitelist ConfigMaps.
#[derive(Clone)]
pub struct ConfigMaps {
    client: Client,
}

impl ConfigMaps {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// Makes the ConfigMap say `w`: creates it, or replaces it (guarded by
    /// its resourceVersion) when it says something else. Returns whether it
    /// wrote.
    pub async fn apply(&self, w: &Whitelist) -> Result<bool, ConfigMapError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &w.namespace);
        let cm_name = name(&w.pool);
        match api.get_opt(&cm_name).await? {
            None => {
                let mut cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(cm_name),
                        namespace: Some(w.namespace.clone()),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                conform(&mut cm, w);
                api.create(&PostParams::default(), &cm).await?;
                Ok(true)
            }
            Some(mut cm) => {
                if !managed_by_moor(&cm) {
                    return Err(ConfigMapError::NotOurs {
                        namespace: w.namespace.clone(),
                        name: cm_name,
                    });
                }
                if !conform(&mut cm, w) {
                    return Ok(false);
                }
                cm.metadata.managed_fields = None;
                api.replace(&cm_name, &PostParams::default(), &cm).await?;
                Ok(true)
            }
        }
    }

    /// Deletes the pool's ConfigMap if moor wrote it (the pool no longer
    /// follows the workload). Returns whether it deleted one.
    pub async fn delete(&self, namespace: &str, pool: &str) -> Result<bool, ConfigMapError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        let cm_name = name(pool);
        let Some(cm) = api.get_opt(&cm_name).await? else {
            return Ok(false);
        };
        if !managed_by_moor(&cm) {
            return Ok(false);
        }
        match api.delete(&cm_name, &DeleteParams::default()).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// Whether moor wrote this ConfigMap (its label says so): one of the same
/// name made by someone else is never overwritten or deleted.
fn managed_by_moor(cm: &ConfigMap) -> bool {
    cm.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY.0))
        .is_some_and(|v| v == MANAGED_BY.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whitelist(ips: &[&str], uid: &str) -> Whitelist {
        Whitelist {
            namespace: "shop".into(),
            pool: "shop-db".into(),
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            owner: Owner {
                api_version: "apps/v1".into(),
                kind: "StatefulSet".into(),
                name: "db".into(),
                uid: uid.into(),
            },
        }
    }

    #[test]
    fn the_configmap_lists_the_ips_sorted_and_names_its_owner() {
        let mut cm = ConfigMap::default();
        assert!(conform(
            &mut cm,
            &whitelist(&["10.0.0.9", "10.0.0.10"], "u1")
        ));
        assert_eq!(cm.data.as_ref().unwrap()[IPS_KEY], "10.0.0.9\n10.0.0.10\n");
        let owners = cm.metadata.owner_references.clone().unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(
            (owners[0].kind.as_str(), owners[0].uid.as_str()),
            ("StatefulSet", "u1")
        );
        assert_eq!(owners[0].controller, Some(false));
        assert_eq!(owners[0].block_owner_deletion, Some(false));
        assert_eq!(
            cm.metadata.labels.as_ref().unwrap()[MANAGED_BY.0],
            MANAGED_BY.1
        );
        // Nothing to change: no write.
        assert!(!conform(
            &mut cm,
            &whitelist(&["10.0.0.10", "10.0.0.9"], "u1")
        ));
        // A re-created workload (new uid) replaces its old self as owner;
        // other owners stay.
        cm.metadata
            .owner_references
            .as_mut()
            .unwrap()
            .push(OwnerReference {
                kind: "Other".into(),
                name: "x".into(),
                ..Default::default()
            });
        assert!(conform(&mut cm, &whitelist(&["10.0.0.9"], "u2")));
        let owners = cm.metadata.owner_references.unwrap();
        assert_eq!(owners.len(), 2);
        assert!(owners.iter().any(|o| o.uid == "u2"));
        assert_eq!(cm.data.unwrap()[IPS_KEY], "10.0.0.9\n");
    }
}
