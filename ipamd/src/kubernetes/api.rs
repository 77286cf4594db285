//! The node agent's caches: metadata-only watches (a reflector each) of this
//! node's Pods (`spec.nodeName=<node>`), of Namespaces and of this Node. The
//! watcher relists after a 410 Gone, resumes after an API outage with
//! backoff, and the caches keep answering meanwhile: an ADD of a pod the
//! cache holds never waits on the API, and nothing here is on the DEL path.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
// Kubernetes' own v1 modules, renamed so that a bare v1 module in ipamd means
// moor's gRPC types (which stay in api/).
use k8s_openapi::api::batch::v1 as batchv1;
use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;

use batchv1::Job;
use corev1::{Node, Pod};
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use metav1::ObjectMeta;
use serde::de::DeserializeOwned;

use crate::clock::Clock;
use crate::core::{OwnerRef, PodFacts};

use super::events::Events;
use super::namespaces::Namespaces;
use super::{Cluster, Unreachable};

/// Jobs whose controller is remembered at most.
const MAX_JOBS: usize = 4096;

#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// This node's name (the Node object's).
    pub node: String,
    /// The Node label that holds the node's ToR.
    pub tor_label: String,
    /// Bound on one GET on the ADD path (a pod the cache lacks, its Job), so
    /// an ADD against an API that does not answer fails inside the
    /// runtime's patience and is retried.
    pub get_timeout: Duration,
    /// An aggregated Event is written back at most this often.
    pub event_interval: Duration,
}

pub struct ApiCluster {
    client: Client,
    opts: ApiOptions,
    pods: Store<PartialObjectMeta<Pod>>,
    namespaces: Namespaces,
    nodes: Store<PartialObjectMeta<Node>>,
    /// The controller of each Job seen (a Job's owner never changes).
    jobs: Mutex<HashMap<(String, String), Option<OwnerRef>>>,
    events: Events,
}

/// A metadata-only reflector of `api` under `cfg`; `changed` as
/// `reflect::reflect`'s.
pub(super) fn reflect<K>(
    api: Api<PartialObjectMeta<K>>,
    cfg: watcher::Config,
    what: &'static str,
    changed: Option<tokio::sync::watch::Sender<u64>>,
) -> Store<PartialObjectMeta<K>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    super::reflect::reflect(api, cfg, what, |_: &mut PartialObjectMeta<K>| {}, changed)
}

fn controller_of(m: &ObjectMeta) -> Option<OwnerRef> {
    m.owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| OwnerRef {
            api_version: o.api_version.clone(),
            kind: o.kind.clone(),
            name: o.name.clone(),
        })
}

/// What moor reads of a pod: from the cache, a GET, or an admission review.
pub fn pod_facts(m: &ObjectMeta) -> PodFacts {
    PodFacts {
        namespace: m.namespace.clone().unwrap_or_default(),
        name: m.name.clone().unwrap_or_default(),
        uid: m.uid.clone().unwrap_or_default(),
        labels: m.labels.clone().unwrap_or_default(),
        annotations: m.annotations.clone().unwrap_or_default(),
        controller: controller_of(m),
        job_controller: None,
    }
}

impl ApiCluster {
    /// Starts the watches and the event writer; returns at once (the caches
    /// fill as the API answers).
    pub fn start(client: Client, opts: ApiOptions, clock: Arc<dyn Clock>) -> Arc<Self> {
        let on_node = watcher::Config::default().fields(&format!("spec.nodeName={}", opts.node));
        let (changed, pod_changes) = tokio::sync::watch::channel(0);
        let pods = reflect(
            Api::<PartialObjectMeta<Pod>>::all(client.clone()),
            on_node,
            "pods",
            Some(changed),
        );
        let namespaces = Namespaces::start(client.clone());
        let this_node = watcher::Config::default().fields(&format!("metadata.name={}", opts.node));
        let nodes = reflect(
            Api::<PartialObjectMeta<Node>>::all(client.clone()),
            this_node,
            "node",
            None,
        );
        let events = Events::start(
            client.clone(),
            super::events::COMPONENT,
            opts.node.clone(),
            clock,
            opts.event_interval,
        );
        let this = Arc::new(Self {
            client,
            opts,
            pods,
            namespaces,
            nodes,
            jobs: Mutex::new(HashMap::new()),
            events,
        });
        tokio::spawn(learn_jobs(Arc::downgrade(&this), pod_changes));
        this
    }

    /// The Jobs of this node's cached pods whose controller is not known
    /// yet, each once.
    fn unknown_jobs(&self) -> Vec<(String, String)> {
        let known = self.jobs.lock().unwrap();
        let mut out: Vec<(String, String)> = self
            .pods
            .state()
            .iter()
            .filter_map(|p| {
                // The controller only (not every label and annotation, as
                // pod_facts copies): this runs on every pod event.
                let job = controller_of(&p.metadata).filter(|o| o.is("batch", "Job"))?;
                let key = (p.metadata.namespace.clone()?, job.name);
                (!known.contains_key(&key)).then_some(key)
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Waits until the first list of pods, namespaces and the node arrived
    /// (or `within` passed): a start that serves ADDs at once would GET
    /// every pod it is asked about.
    pub async fn wait_ready(&self, within: Duration) -> bool {
        let all = async {
            let _ = self.pods.wait_until_ready().await;
            self.namespaces.wait_until_ready().await;
            let _ = self.nodes.wait_until_ready().await;
        };
        tokio::time::timeout(within, all).await.is_ok()
    }

    /// How many pods the cache holds (for logs and the memory benchmark).
    pub fn cached_pods(&self) -> usize {
        self.pods.state().len()
    }

    /// GETs object `name` of `api` (namespaced by `api` itself); `what`
    /// names it in errors ("pod shop/web-0").
    async fn get<K>(
        &self,
        api: Api<PartialObjectMeta<K>>,
        what: &str,
        name: &str,
    ) -> Result<Option<PartialObjectMeta<K>>, Unreachable>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        match tokio::time::timeout(self.opts.get_timeout, api.get_opt(name)).await {
            Ok(Ok(found)) => Ok(found),
            Ok(Err(e)) => Err(Unreachable(format!("GET {what}: {e}"))),
            Err(_) => Err(Unreachable(format!(
                "GET {what}: no answer within {} ms",
                self.opts.get_timeout.as_millis()
            ))),
        }
    }

    /// The controller of Job `namespace/job`, read once per Job.
    async fn job_controller(
        &self,
        namespace: &str,
        job: &str,
    ) -> Result<Option<OwnerRef>, Unreachable> {
        let key = (namespace.to_string(), job.to_string());
        if let Some(c) = self.jobs.lock().unwrap().get(&key) {
            return Ok(c.clone());
        }
        let api = Api::<PartialObjectMeta<Job>>::namespaced(self.client.clone(), namespace);
        let owner = self
            .get(api, &format!("job {namespace}/{job}"), job)
            .await?
            .and_then(|j| controller_of(&j.metadata));
        let mut jobs = self.jobs.lock().unwrap();
        // Jobs come and go (a CronJob makes one per run): keep the map
        // bounded; a forgotten Job costs one more GET.
        if jobs.len() >= MAX_JOBS {
            jobs.clear();
        }
        jobs.insert(key, owner.clone());
        Ok(owner)
    }
}

/// Looks up the controller of every Job whose pod arrives in the cache, as
/// it arrives: the ADD of a CronJob's pod then finds its Job's controller
/// remembered (its pool follows the CronJob), and needs no request to the
/// API server, which may be unreachable by the time the ADD comes. A
/// lookup that fails is retried on the next change; the ADD would make it
/// itself.
async fn learn_jobs(
    cluster: std::sync::Weak<ApiCluster>,
    mut changes: tokio::sync::watch::Receiver<u64>,
) {
    while changes.changed().await.is_ok() {
        let Some(c) = cluster.upgrade() else { return };
        for (namespace, job) in c.unknown_jobs() {
            let _ = c.job_controller(&namespace, &job).await;
        }
    }
}

#[async_trait]
impl Cluster for ApiCluster {
    async fn pod(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Result<Option<PodFacts>, Unreachable> {
        let same = |m: &ObjectMeta| uid.is_empty() || m.uid.as_deref() == Some(uid);
        let cached = self
            .pods
            .get(&ObjectRef::new(name).within(namespace))
            .filter(|p| same(&p.metadata));
        let meta = match cached {
            Some(p) => p.metadata.clone(),
            None => {
                let api = Api::<PartialObjectMeta<Pod>>::namespaced(self.client.clone(), namespace);
                // The API takes the name alone: the namespace is in `api`.
                let what = format!("pod {namespace}/{name}");
                match self.get(api, &what, name).await? {
                    Some(p) if same(&p.metadata) => p.metadata,
                    _ => return Ok(None),
                }
            }
        };
        let mut f = pod_facts(&meta);
        if let Some(job) = f.job().map(str::to_string) {
            f.job_controller = self.job_controller(namespace, &job).await?;
        }
        Ok(Some(f))
    }

    fn namespace_pool(&self, namespace: &str) -> Option<String> {
        self.namespaces.pool(namespace)
    }

    fn node_tor(&self) -> Option<String> {
        let node = self.nodes.get(&ObjectRef::new(&self.opts.node))?;
        node.metadata
            .labels
            .as_ref()?
            .get(&self.opts.tor_label)
            .filter(|t| !t.is_empty())
            .cloned()
    }

    fn tor_label(&self) -> &str {
        &self.opts.tor_label
    }

    fn pod_event(&self, pod: &PodFacts, reason: &str, message: &str) {
        self.events.report(pod, reason, message);
    }
}
