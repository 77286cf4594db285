//! The controller's view of workloads: watches (a reflector each) of every
//! StatefulSet, Deployment, DaemonSet, ReplicaSet and Job, the kinds whose
//! pods the node agent maps to an app of the workload's name
//! (`core/pod.rs`). Kept: what sizes a pool (replicas, a Deployment's
//! surge, a Job's parallelism, the nodes a DaemonSet runs on) and what an
//! ownerReference needs (uid); the pod templates are dropped as they
//! arrive. Every replica of the controller keeps the caches warm, leader or
//! not, so a replica that takes over reconciles at once from a full cache.
//! A counter bumps on every watch event, for the loops to wake on.

use std::collections::BTreeMap;
use std::fmt::Debug;

use k8s_openapi::api::apps::v1 as appsv1;
use k8s_openapi::api::batch::v1 as batchv1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

/// How many pods a workload runs at once, as its spec says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replicas {
    /// StatefulSet, ReplicaSet: `spec.replicas` (default 1).
    Fixed(u32),
    /// Deployment: `spec.replicas` and how far a rollout may go above it.
    Rolling { replicas: u32, surge: Surge },
    /// DaemonSet: one pod per node it runs on; `status.desiredNumberScheduled`
    /// once its controller reported it.
    PerNode(Option<u32>),
    /// Job: `spec.parallelism` (default 1), capped by `spec.completions`.
    Job {
        parallelism: u32,
        completions: Option<u32>,
    },
}

/// A Deployment's `maxSurge`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surge {
    /// Strategy `Recreate`: old pods go before new ones start.
    None,
    Pods(u32),
    /// A percentage of the replicas, rounded up (as the Deployment
    /// controller rounds maxSurge).
    Percent(u32),
}

/// A workload as the controller reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// `StatefulSet`, `Deployment`, `DaemonSet`, `ReplicaSet`, `Job`.
    pub kind: &'static str,
    /// `apps/v1`, `batch/v1`.
    pub api_version: &'static str,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub annotations: BTreeMap<String, String>,
    pub replicas: Replicas,
}

impl Workload {
    /// `StatefulSet shop/db`, for logs and messages.
    pub fn describe(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// What each watched kind contributes.
trait Kind:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    const KIND: &'static str;
    const API_VERSION: &'static str;
    fn replicas(&self) -> Replicas;
    /// Drops what the controller never reads (pod templates are most of
    /// a workload object).
    fn slim(&mut self);
    /// Whether another workload manages this one (a Deployment's
    /// ReplicaSet, a CronJob's Job): its pool is not declared on it.
    fn managed(&self) -> bool {
        false
    }
}

fn count(n: Option<i32>, default: u32) -> u32 {
    n.map_or(default, |n| n.max(0) as u32)
}

fn controlled_by(meta: &metav1::ObjectMeta, kind: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.kind == kind)
}

impl Kind for appsv1::StatefulSet {
    const KIND: &'static str = "StatefulSet";
    const API_VERSION: &'static str = "apps/v1";
    fn replicas(&self) -> Replicas {
        Replicas::Fixed(count(self.spec.replicas, 1))
    }
    fn slim(&mut self) {
        self.spec.template = Default::default();
        self.spec.volume_claim_templates = None;
        self.status = None;
    }
}

impl Kind for appsv1::Deployment {
    const KIND: &'static str = "Deployment";
    const API_VERSION: &'static str = "apps/v1";
    fn replicas(&self) -> Replicas {
        let replicas = count(self.spec.replicas, 1);
        let strategy = self.spec.strategy.as_ref();
        let surge = if strategy.and_then(|s| s.type_.as_deref()) == Some("Recreate") {
            Surge::None
        } else {
            match strategy
                .and_then(|s| s.rolling_update.as_ref())
                .and_then(|r| r.max_surge.as_ref())
            {
                None => Surge::Percent(25),
                Some(IntOrString::Int(n)) => Surge::Pods((*n).max(0) as u32),
                Some(IntOrString::String(s)) => {
                    parse_percent(s).map_or(Surge::Percent(25), Surge::Percent)
                }
            }
        };
        Replicas::Rolling { replicas, surge }
    }
    fn slim(&mut self) {
        self.spec.template = Default::default();
        self.status = None;
    }
}

impl Kind for appsv1::DaemonSet {
    const KIND: &'static str = "DaemonSet";
    const API_VERSION: &'static str = "apps/v1";
    fn replicas(&self) -> Replicas {
        Replicas::PerNode(
            self.status
                .as_ref()
                .map(|s| s.desired_number_scheduled.max(0) as u32),
        )
    }
    fn slim(&mut self) {
        self.spec.template = Default::default();
    }
}

impl Kind for appsv1::ReplicaSet {
    const KIND: &'static str = "ReplicaSet";
    const API_VERSION: &'static str = "apps/v1";
    fn replicas(&self) -> Replicas {
        Replicas::Fixed(count(self.spec.replicas, 1))
    }
    fn slim(&mut self) {
        self.spec.template = None;
        self.status = None;
    }
    fn managed(&self) -> bool {
        controlled_by(&self.metadata, "Deployment")
    }
}

impl Kind for batchv1::Job {
    const KIND: &'static str = "Job";
    const API_VERSION: &'static str = "batch/v1";
    fn replicas(&self) -> Replicas {
        let spec = self.spec.as_ref();
        Replicas::Job {
            parallelism: count(spec.and_then(|s| s.parallelism), 1),
            completions: spec.and_then(|s| s.completions).map(|c| c.max(0) as u32),
        }
    }
    fn slim(&mut self) {
        if let Some(s) = self.spec.as_mut() {
            s.template = Default::default();
        }
        self.status = None;
    }
    fn managed(&self) -> bool {
        controlled_by(&self.metadata, "CronJob")
    }
}

/// `25%` -> 25.
fn parse_percent(s: &str) -> Option<u32> {
    s.trim().strip_suffix('%')?.trim().parse().ok()
}

pub struct Workloads {
    statefulsets: Store<appsv1::StatefulSet>,
    deployments: Store<appsv1::Deployment>,
    daemonsets: Store<appsv1::DaemonSet>,
    replicasets: Store<appsv1::ReplicaSet>,
    jobs: Store<batchv1::Job>,
    changes: watch::Receiver<u64>,
}

fn reflect<K: Kind>(client: &Client, changed: watch::Sender<u64>) -> Store<K> {
    super::reflect::reflect(
        Api::<K>::all(client.clone()),
        watcher::Config::default(),
        K::KIND,
        |o: &mut K| o.slim(),
        Some(changed),
    )
}

fn workloads<K: Kind>(store: &Store<K>, out: &mut Vec<Workload>) {
    for o in store.state().iter().filter(|o| !o.managed()) {
        let m = o.meta();
        out.push(Workload {
            kind: K::KIND,
            api_version: K::API_VERSION,
            namespace: m.namespace.clone().unwrap_or_default(),
            name: m.name.clone().unwrap_or_default(),
            uid: m.uid.clone().unwrap_or_default(),
            annotations: m.annotations.clone().unwrap_or_default(),
            replicas: o.replicas(),
        });
    }
}

impl Workloads {
    /// Starts the watches; returns at once (the caches fill as the API
    /// answers).
    pub fn start(client: Client) -> Self {
        let (tx, changes) = watch::channel(0);
        Self {
            statefulsets: reflect(&client, tx.clone()),
            deployments: reflect(&client, tx.clone()),
            daemonsets: reflect(&client, tx.clone()),
            replicasets: reflect(&client, tx.clone()),
            jobs: reflect(&client, tx),
            changes,
        }
    }

    /// Waits until every first list arrived (or `within` passed).
    pub async fn wait_ready(&self, within: std::time::Duration) -> bool {
        let all = async {
            let _ = self.statefulsets.wait_until_ready().await;
            let _ = self.deployments.wait_until_ready().await;
            let _ = self.daemonsets.wait_until_ready().await;
            let _ = self.replicasets.wait_until_ready().await;
            let _ = self.jobs.wait_until_ready().await;
        };
        tokio::time::timeout(within, all).await.is_ok()
    }

    /// Whether the cache of `kind` holds its first full list (a workload
    /// missing from it is then gone, not yet to be listed).
    pub fn ready(&self, kind: &str) -> bool {
        use futures::FutureExt;
        let ready = match kind {
            "StatefulSet" => self.statefulsets.wait_until_ready().now_or_never(),
            "Deployment" => self.deployments.wait_until_ready().now_or_never(),
            "DaemonSet" => self.daemonsets.wait_until_ready().now_or_never(),
            "ReplicaSet" => self.replicasets.wait_until_ready().now_or_never(),
            "Job" => self.jobs.wait_until_ready().now_or_never(),
            _ => None,
        };
        matches!(ready, Some(Ok(())))
    }

    /// Every workload in the caches (a Deployment's ReplicaSets and a
    /// CronJob's Jobs left out: their pools are their owner's business).
    pub fn all(&self) -> Vec<Workload> {
        let mut all = Vec::new();
        workloads(&self.statefulsets, &mut all);
        workloads(&self.deployments, &mut all);
        workloads(&self.daemonsets, &mut all);
        workloads(&self.replicasets, &mut all);
        workloads(&self.jobs, &mut all);
        all
    }

    /// A receiver whose value changes on every watch event.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deployments_surge_is_read_as_the_deployment_controller_reads_it() {
        let d = |strategy: serde_json::Value| -> appsv1::Deployment {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "web"},
                "spec": {"replicas": 4, "selector": {}, "template": {}, "strategy": strategy},
            }))
            .unwrap()
        };
        let rolling = |surge: Surge| Replicas::Rolling { replicas: 4, surge };
        assert_eq!(
            d(serde_json::json!({})).replicas(),
            rolling(Surge::Percent(25))
        );
        assert_eq!(
            d(serde_json::json!({"type": "Recreate"})).replicas(),
            rolling(Surge::None)
        );
        assert_eq!(
            d(serde_json::json!({"rollingUpdate": {"maxSurge": 2}})).replicas(),
            rolling(Surge::Pods(2))
        );
        assert_eq!(
            d(serde_json::json!({"rollingUpdate": {"maxSurge": "50%"}})).replicas(),
            rolling(Surge::Percent(50))
        );
        let job: batchv1::Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "j", "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": "CronJob", "name": "c", "uid": "u", "controller": true}
            ]},
            "spec": {"parallelism": 3, "template": {}},
        }))
        .unwrap();
        assert_eq!(
            job.replicas(),
            Replicas::Job {
                parallelism: 3,
                completions: None
            }
        );
        assert!(job.managed(), "a CronJob's Job declares no pool of its own");
    }
}
