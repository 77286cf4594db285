//! The controller's view of workloads: metadata-only watches (a reflector
//! each) of every StatefulSet and Deployment, the kinds whose pods the node
//! agent maps to an app of the same name (`core/pod.rs`). Every replica of
//! the controller keeps them warm, leader or not, so a replica that takes
//! over reconciles at once from a full cache. A counter bumps on every
//! watch event, for the loops to wake on.

use std::collections::BTreeMap;
use std::fmt::Debug;

use futures::StreamExt;
use k8s_openapi::api::apps::v1 as appsv1;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::warn;

/// A workload as the controller reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// `StatefulSet`, `Deployment`.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub annotations: BTreeMap<String, String>,
}

pub struct Workloads {
    statefulsets: Store<PartialObjectMeta<appsv1::StatefulSet>>,
    deployments: Store<PartialObjectMeta<appsv1::Deployment>>,
    changes: watch::Receiver<u64>,
}

fn reflect<K>(
    api: Api<PartialObjectMeta<K>>,
    what: &'static str,
    changed: watch::Sender<u64>,
) -> Store<PartialObjectMeta<K>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|o: &mut PartialObjectMeta<K>| o.metadata.managed_fields = None)
        .reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => {
                    changed.send_modify(|n| *n += 1);
                }
                Err(e) => {
                    warn!(what, error = %e, "Kubernetes watch failed; retrying with backoff (the cache keeps serving)")
                }
            }
        }
    });
    reader
}

fn workloads<K>(kind: &'static str, store: &Store<PartialObjectMeta<K>>) -> Vec<Workload>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    store
        .state()
        .iter()
        .map(|o| Workload {
            kind,
            namespace: o.metadata.namespace.clone().unwrap_or_default(),
            name: o.metadata.name.clone().unwrap_or_default(),
            annotations: o.metadata.annotations.clone().unwrap_or_default(),
        })
        .collect()
}

impl Workloads {
    /// Starts the watches; returns at once (the caches fill as the API
    /// answers).
    pub fn start(client: Client) -> Self {
        let (tx, changes) = watch::channel(0);
        Self {
            statefulsets: reflect(Api::all(client.clone()), "statefulsets", tx.clone()),
            deployments: reflect(Api::all(client), "deployments", tx),
            changes,
        }
    }

    /// Waits until both first lists arrived (or `within` passed).
    pub async fn wait_ready(&self, within: std::time::Duration) -> bool {
        let all = async {
            let _ = self.statefulsets.wait_until_ready().await;
            let _ = self.deployments.wait_until_ready().await;
        };
        tokio::time::timeout(within, all).await.is_ok()
    }

    /// Every workload in the caches.
    pub fn all(&self) -> Vec<Workload> {
        let mut all = workloads("StatefulSet", &self.statefulsets);
        all.extend(workloads("Deployment", &self.deployments));
        all
    }

    /// A receiver whose value changes on every watch event.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }
}
