//! Objects shaped as the kube-controller-manager, the scheduler and the API
//! server make them: the names, labels and controller ownerReferences a node
//! agent reads to find a pod's workload.
//!
//! Each function returns an [`ObjectBuilder`]; adjust it (`.node("n1")`,
//! `.label(..)`, `.name(..)`) and hand [`ObjectBuilder::build`] to
//! [`FakeApi::create`](super::FakeApi::create). An owner's UID is a function
//! of its kind, namespace and name ([`owner_uid`]), so every pod of one
//! ReplicaSet names the same owner, and a Job's pods name the Job that
//! [`job`] builds.

use serde_json::{json, Value};
use std::hash::{BuildHasher, Hash, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

/// The alphabet of the API server's `generateName` suffixes and of
/// `pod-template-hash` (k8s.io/apimachinery/pkg/util/rand: no vowels, no
/// digits that look like letters).
pub const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// An object under construction.
#[derive(Clone, Debug)]
pub struct ObjectBuilder(Value);

impl ObjectBuilder {
    /// Sets `metadata.name`.
    pub fn name(mut self, name: &str) -> Self {
        self.0["metadata"]["name"] = name.into();
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.0["metadata"]["labels"][key] = value.into();
        self
    }

    /// Adds an annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.0["metadata"]["annotations"][key] = value.into();
        self
    }

    /// Sets `metadata.uid` (otherwise the fake assigns a fresh one).
    pub fn uid(mut self, uid: &str) -> Self {
        self.0["metadata"]["uid"] = uid.into();
        self
    }

    /// A pod bound to `node` by the scheduler: `spec.nodeName` and
    /// `status.hostIP` stay unset until a pod is bound.
    pub fn node(mut self, node: &str) -> Self {
        self.0["spec"]["nodeName"] = node.into();
        self
    }

    /// Sets `status.phase` (a new pod is `Pending`).
    pub fn phase(mut self, phase: &str) -> Self {
        self.0["status"]["phase"] = phase.into();
        self
    }

    /// The object.
    pub fn build(self) -> Value {
        self.0
    }
}

impl From<ObjectBuilder> for Value {
    fn from(b: ObjectBuilder) -> Value {
        b.0
    }
}

/// A random UID, formatted as the API server's (a version 4 UUID).
pub fn new_uid() -> String {
    uuid_from(random_u64(), random_u64())
}

/// The UID of the owner `kind` `namespace/name`: the same for every call,
/// so pods built separately share their owner.
pub fn owner_uid(kind: &str, namespace: &str, name: &str) -> String {
    let hash = |salt: u8| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (salt, kind, namespace, name).hash(&mut h);
        h.finish()
    };
    uuid_from(hash(1), hash(2))
}

fn uuid_from(a: u64, b: u64) -> String {
    let a = (a & !0xf000) | 0x4000; // version 4
    let b = (b & !(0xc << 60)) | (0x8 << 60); // RFC 4122 variant
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

fn random_u64() -> u64 {
    // std's RandomState is seeded randomly per thread and changes per call.
    std::collections::hash_map::RandomState::new().hash_one(SystemTime::now())
}

/// `n` random characters of [`NAME_ALPHABET`], as `generateName` appends.
pub fn random_suffix(n: usize) -> String {
    (0..n)
        .map(|_| NAME_ALPHABET[(random_u64() % NAME_ALPHABET.len() as u64) as usize] as char)
        .collect()
}

/// Now, as `creationTimestamp`: RFC 3339 in UTC, whole seconds.
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    moor_proto::rfc3339_utc(secs)
}

fn owner(api_version: &str, kind: &str, namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": owner_uid(kind, namespace, name),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

fn pod(
    namespace: &str,
    name: &str,
    generate_name: Option<&str>,
    owner: Option<Value>,
) -> ObjectBuilder {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {}},
        "spec": {
            "containers": [{
                "name": "app",
                "image": "registry.k8s.io/pause:3.9",
                "imagePullPolicy": "IfNotPresent",
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
            }],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "schedulerName": "default-scheduler",
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority",
            "priority": 0,
        },
        "status": {"phase": "Pending", "qosClass": "BestEffort"},
    });
    if let Some(g) = generate_name {
        pod["metadata"]["generateName"] = g.into();
    }
    if let Some(o) = owner {
        pod["metadata"]["ownerReferences"] = json!([o]);
    }
    ObjectBuilder(pod)
}

/// A pod nobody controls: no ownerReferences, no generated name.
pub fn bare_pod(namespace: &str, name: &str) -> ObjectBuilder {
    pod(namespace, name, None, None)
}

/// StatefulSet `set`'s pod `ordinal`, named `set-ordinal`, as the
/// StatefulSet controller makes it from [`statefulset`]'s template
/// (`app: set`).
pub fn statefulset_pod(namespace: &str, set: &str, ordinal: u32) -> ObjectBuilder {
    let name = format!("{set}-{ordinal}");
    let revision = format!("{set}-{}", template_hash(set));
    pod(
        namespace,
        &name,
        None,
        Some(owner("apps/v1", "StatefulSet", namespace, set)),
    )
    .label("app", set)
    .label("controller-revision-hash", &revision)
    .label("statefulset.kubernetes.io/pod-name", &name)
    .label("apps.kubernetes.io/pod-index", &ordinal.to_string())
}

/// A pod of Deployment `deployment` through its ReplicaSet
/// `deployment-hash`: name `deployment-hash-xxxxx`, label
/// `pod-template-hash: hash`, owner the ReplicaSet.
pub fn deployment_pod(namespace: &str, deployment: &str, hash: &str) -> ObjectBuilder {
    let replicaset = format!("{deployment}-{hash}");
    let generate = format!("{replicaset}-");
    let name = format!("{generate}{}", random_suffix(5));
    pod(
        namespace,
        &name,
        Some(&generate),
        Some(owner("apps/v1", "ReplicaSet", namespace, &replicaset)),
    )
    .label("app", deployment)
    .label("pod-template-hash", hash)
}

/// A pod of DaemonSet `set`: name `set-xxxxx`, the DaemonSet controller's
/// labels, owner the DaemonSet.
pub fn daemonset_pod(namespace: &str, set: &str) -> ObjectBuilder {
    let generate = format!("{set}-");
    let name = format!("{generate}{}", random_suffix(5));
    pod(
        namespace,
        &name,
        Some(&generate),
        Some(owner("apps/v1", "DaemonSet", namespace, set)),
    )
    .label("app", set)
    .label("controller-revision-hash", &template_hash(set))
    .label("pod-template-generation", "1")
}

/// Job `name` as a user (or [`cronjob_job`]) creates it. Its UID is
/// [`owner_uid`]`("Job", ..)` so [`job_pod`] can name it.
pub fn job(namespace: &str, name: &str) -> ObjectBuilder {
    let uid = owner_uid("Job", namespace, name);
    ObjectBuilder(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "labels": {}},
        "spec": {
            "backoffLimit": 6,
            "completions": 1,
            "parallelism": 1,
            "completionMode": "NonIndexed",
            "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}},
            "template": {
                "metadata": {"labels": {
                    "batch.kubernetes.io/controller-uid": uid,
                    "batch.kubernetes.io/job-name": name,
                    "controller-uid": uid,
                    "job-name": name,
                }},
                "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.9"}],
                         "restartPolicy": "Never"},
            },
        },
        "status": {},
    }))
}

/// The Job the CronJob controller makes for `cronjob`'s run scheduled at
/// `scheduled_unix` seconds: named `cronjob-<minutes>`, owned by the
/// CronJob, with its scheduled-timestamp annotation.
pub fn cronjob_job(namespace: &str, cronjob: &str, scheduled_unix: u64) -> ObjectBuilder {
    let name = format!("{cronjob}-{}", scheduled_unix / 60);
    let mut job = job(namespace, &name);
    job.0["metadata"]["ownerReferences"] =
        json!([owner("batch/v1", "CronJob", namespace, cronjob)]);
    job.annotation(
        "batch.kubernetes.io/cronjob-scheduled-timestamp",
        &format!("{scheduled_unix}"),
    )
}

/// A pod of `job` (a Job object as [`job`] or [`cronjob_job`] build it):
/// name `job-xxxxx`, the Job controller's four labels, owner the Job.
pub fn job_pod(job: &Value) -> ObjectBuilder {
    let namespace = job["metadata"]["namespace"]
        .as_str()
        .expect("job namespace");
    let name = job["metadata"]["name"].as_str().expect("job name");
    let uid = job["metadata"]["uid"].as_str().expect("job uid");
    let generate = format!("{name}-");
    let pod_name = format!("{generate}{}", random_suffix(5));
    let mut owner = owner("batch/v1", "Job", namespace, name);
    owner["uid"] = uid.into();
    pod(namespace, &pod_name, Some(&generate), Some(owner))
        .label("batch.kubernetes.io/controller-uid", uid)
        .label("batch.kubernetes.io/job-name", name)
        .label("controller-uid", uid)
        .label("job-name", name)
        .phase("Pending")
}

/// A workload's spec: `replicas` pods of one pause container, selected by
/// `app: name`.
fn workload_spec(name: &str, replicas: u32) -> Value {
    json!({
        "replicas": replicas,
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.9"}]},
        },
    })
}

/// StatefulSet `name` as a user applies it, with `replicas` pods. Its UID
/// is [`owner_uid`]`("StatefulSet", ..)`, the one [`statefulset_pod`]
/// names.
pub fn statefulset(namespace: &str, name: &str, replicas: u32) -> ObjectBuilder {
    let mut spec = workload_spec(name, replicas);
    spec["serviceName"] = name.into();
    spec["podManagementPolicy"] = "OrderedReady".into();
    ObjectBuilder(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": namespace,
                     "uid": owner_uid("StatefulSet", namespace, name)},
        "spec": spec,
        "status": {"replicas": 0},
    }))
}

/// Deployment `name` as a user applies it, with `replicas` pods.
pub fn deployment(namespace: &str, name: &str, replicas: u32) -> ObjectBuilder {
    let mut spec = workload_spec(name, replicas);
    spec["strategy"] = json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}});
    ObjectBuilder(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace,
                     "uid": owner_uid("Deployment", namespace, name)},
        "spec": spec,
        "status": {},
    }))
}

/// Namespace `name` (the API server adds `kubernetes.io/metadata.name`).
pub fn namespace(name: &str) -> ObjectBuilder {
    ObjectBuilder(json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }))
}

/// Node `name` with the labels the kubelet sets on itself.
pub fn node(name: &str) -> ObjectBuilder {
    ObjectBuilder(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": "amd64",
        }},
        "spec": {},
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            "addresses": [{"type": "Hostname", "address": name}],
        },
    }))
}

/// DaemonSet `name` as a user applies it, selecting `app: name`.
pub fn daemonset(namespace: &str, name: &str) -> ObjectBuilder {
    let mut spec = workload_spec(name, 0);
    if let Some(s) = spec.as_object_mut() {
        s.remove("replicas");
    }
    spec["updateStrategy"] =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}});
    ObjectBuilder(json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": namespace,
                     "uid": owner_uid("DaemonSet", namespace, name)},
        "spec": spec,
        "status": {"currentNumberScheduled": 0, "desiredNumberScheduled": 0, "numberMisscheduled": 0, "numberReady": 0},
    }))
}

/// ReplicaSet `name` with `replicas` pods, as a user applies one without
/// a Deployment (a Deployment's own ReplicaSets: add its ownerReference).
pub fn replicaset(namespace: &str, name: &str, replicas: u32) -> ObjectBuilder {
    ObjectBuilder(json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": name, "namespace": namespace,
                     "uid": owner_uid("ReplicaSet", namespace, name)},
        "spec": workload_spec(name, replicas),
        "status": {"replicas": 0},
    }))
}

/// PodDisruptionBudget `name` over the pods labelled `app: app`, with the
/// status the disruption controller would have computed: `allowed`
/// disruptions.
pub fn pod_disruption_budget(
    namespace: &str,
    name: &str,
    app: &str,
    allowed: u32,
) -> ObjectBuilder {
    ObjectBuilder(json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": app}}},
        "status": {"observedGeneration": 1, "disruptionsAllowed": allowed,
                   "currentHealthy": allowed + 1, "desiredHealthy": 1, "expectedPods": allowed + 1},
    }))
}

/// ConfigMap `name` holding `data`.
pub fn config_map(namespace: &str, name: &str, data: &[(&str, &str)]) -> ObjectBuilder {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(*v)))
        .collect();
    ObjectBuilder(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": data,
    }))
}

/// A stable stand-in for a pod template hash: 10 alphabet characters
/// derived from `seed`.
fn template_hash(seed: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    seed.hash(&mut h);
    let mut n = h.finish();
    (0..10)
        .map(|_| {
            let c = NAME_ALPHABET[(n % NAME_ALPHABET.len() as u64) as usize] as char;
            n /= NAME_ALPHABET.len() as u64;
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_shapes() {
        let p = deployment_pod("ns", "web", "7d9f8c6b5").node("n1").build();
        let name = p["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("web-7d9f8c6b5-") && name.len() == "web-7d9f8c6b5-".len() + 5);
        let o = &p["metadata"]["ownerReferences"][0];
        assert_eq!(
            (o["kind"].as_str(), o["name"].as_str()),
            (Some("ReplicaSet"), Some("web-7d9f8c6b5"))
        );
        assert_eq!(o["controller"], true);
        assert_eq!(o["uid"], owner_uid("ReplicaSet", "ns", "web-7d9f8c6b5"));
        assert_eq!(p["metadata"]["labels"]["pod-template-hash"], "7d9f8c6b5");

        let j = cronjob_job("ns", "nightly", 1_700_000_040).build();
        assert_eq!(j["metadata"]["name"], "nightly-28333334");
        assert_eq!(j["metadata"]["ownerReferences"][0]["kind"], "CronJob");
        let jp = job_pod(&j).build();
        assert_eq!(
            jp["metadata"]["ownerReferences"][0]["uid"],
            j["metadata"]["uid"]
        );
        assert_eq!(
            jp["metadata"]["labels"]["controller-uid"],
            j["metadata"]["uid"]
        );
    }

    #[test]
    fn uids_and_times_have_the_api_shape() {
        let u = new_uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, new_uid());
        let t = now_rfc3339();
        assert!(
            t.len() == 20 && t.ends_with('Z') && t.starts_with("20"),
            "{t}"
        );
    }
}
