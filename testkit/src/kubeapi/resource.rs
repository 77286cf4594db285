//! The resources the fake serves: where they live in the URL space, their
//! kinds, and the field labels the real API server lets a selector use.

use serde_json::Value;

/// A resource the fake API server stores and serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// core/v1 `pods`.
    Pods,
    /// core/v1 `namespaces` (cluster-scoped).
    Namespaces,
    /// core/v1 `nodes` (cluster-scoped).
    Nodes,
    /// core/v1 `events`.
    Events,
    /// events.k8s.io/v1 `events`, what kube-runtime's `Recorder` writes. The
    /// real server keeps both event APIs in one table; the fake keeps two.
    EventsV1,
    /// batch/v1 `jobs`.
    Jobs,
    /// apps/v1 `statefulsets`.
    StatefulSets,
    /// apps/v1 `deployments`.
    Deployments,
    /// coordination.k8s.io/v1 `leases` (leader election).
    Leases,
    /// core/v1 `configmaps`.
    ConfigMaps,
    /// apps/v1 `daemonsets`.
    DaemonSets,
    /// apps/v1 `replicasets`.
    ReplicaSets,
    /// policy/v1 `poddisruptionbudgets` (read by the Eviction API).
    PodDisruptionBudgets,
}

/// Every resource, for routing.
pub(crate) const ALL: [Resource; 13] = [
    Resource::Pods,
    Resource::Namespaces,
    Resource::Nodes,
    Resource::Events,
    Resource::EventsV1,
    Resource::Jobs,
    Resource::StatefulSets,
    Resource::Deployments,
    Resource::Leases,
    Resource::ConfigMaps,
    Resource::DaemonSets,
    Resource::ReplicaSets,
    Resource::PodDisruptionBudgets,
];

impl Resource {
    /// The API group, "" for core.
    pub fn group(self) -> &'static str {
        match self {
            Resource::Jobs => "batch",
            Resource::EventsV1 => "events.k8s.io",
            Resource::StatefulSets
            | Resource::Deployments
            | Resource::DaemonSets
            | Resource::ReplicaSets => "apps",
            Resource::Leases => "coordination.k8s.io",
            Resource::PodDisruptionBudgets => "policy",
            _ => "",
        }
    }

    /// `apiVersion` of its objects: `v1`, `batch/v1`.
    pub fn api_version(self) -> &'static str {
        match self {
            Resource::Jobs => "batch/v1",
            Resource::EventsV1 => "events.k8s.io/v1",
            Resource::StatefulSets
            | Resource::Deployments
            | Resource::DaemonSets
            | Resource::ReplicaSets => "apps/v1",
            Resource::Leases => "coordination.k8s.io/v1",
            Resource::PodDisruptionBudgets => "policy/v1",
            _ => "v1",
        }
    }

    /// The plural name in URLs and RBAC rules.
    pub fn plural(self) -> &'static str {
        match self {
            Resource::Pods => "pods",
            Resource::Namespaces => "namespaces",
            Resource::Nodes => "nodes",
            Resource::Events | Resource::EventsV1 => "events",
            Resource::Jobs => "jobs",
            Resource::StatefulSets => "statefulsets",
            Resource::Deployments => "deployments",
            Resource::Leases => "leases",
            Resource::ConfigMaps => "configmaps",
            Resource::DaemonSets => "daemonsets",
            Resource::ReplicaSets => "replicasets",
            Resource::PodDisruptionBudgets => "poddisruptionbudgets",
        }
    }

    /// The `kind` of one object.
    pub fn kind(self) -> &'static str {
        match self {
            Resource::Pods => "Pod",
            Resource::Namespaces => "Namespace",
            Resource::Nodes => "Node",
            Resource::Events | Resource::EventsV1 => "Event",
            Resource::Jobs => "Job",
            Resource::StatefulSets => "StatefulSet",
            Resource::Deployments => "Deployment",
            Resource::Leases => "Lease",
            Resource::ConfigMaps => "ConfigMap",
            Resource::DaemonSets => "DaemonSet",
            Resource::ReplicaSets => "ReplicaSet",
            Resource::PodDisruptionBudgets => "PodDisruptionBudget",
        }
    }

    /// Whether objects live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Resource::Namespaces | Resource::Nodes)
    }

    /// The URL prefix of its API group version: `/api/v1`, `/apis/batch/v1`.
    pub(crate) fn prefix(self) -> &'static str {
        match self {
            Resource::Jobs => "/apis/batch/v1",
            Resource::EventsV1 => "/apis/events.k8s.io/v1",
            Resource::StatefulSets
            | Resource::Deployments
            | Resource::DaemonSets
            | Resource::ReplicaSets => "/apis/apps/v1",
            Resource::Leases => "/apis/coordination.k8s.io/v1",
            Resource::PodDisruptionBudgets => "/apis/policy/v1",
            _ => "/api/v1",
        }
    }

    /// Whether the real server sets and bumps `metadata.generation`.
    pub(crate) fn has_generation(self) -> bool {
        matches!(
            self,
            Resource::Pods
                | Resource::Jobs
                | Resource::StatefulSets
                | Resource::Deployments
                | Resource::DaemonSets
                | Resource::ReplicaSets
                | Resource::PodDisruptionBudgets
        )
    }

    /// Which resource a stored object is, from its `apiVersion` and `kind`.
    pub fn of(object: &Value) -> Option<Resource> {
        let api_version = object.get("apiVersion")?.as_str()?;
        let kind = object.get("kind")?.as_str()?;
        ALL.into_iter()
            .find(|r| r.api_version() == api_version && r.kind() == kind)
    }

    /// The field labels a field selector may name, each with where the value
    /// sits in the object. These are the conversions the real API server
    /// registers (pkg/apis/*/v1/conversion.go); others answer
    /// `field label not supported`.
    fn field_labels(self) -> &'static [(&'static str, &'static str)] {
        const META: [(&str, &str); 2] = [
            ("metadata.name", "/metadata/name"),
            ("metadata.namespace", "/metadata/namespace"),
        ];
        match self {
            Resource::Pods => &[
                META[0],
                META[1],
                ("spec.nodeName", "/spec/nodeName"),
                ("spec.restartPolicy", "/spec/restartPolicy"),
                ("spec.schedulerName", "/spec/schedulerName"),
                ("spec.serviceAccountName", "/spec/serviceAccountName"),
                ("spec.hostNetwork", "/spec/hostNetwork"),
                ("status.phase", "/status/phase"),
                ("status.podIP", "/status/podIP"),
                ("status.nominatedNodeName", "/status/nominatedNodeName"),
            ],
            Resource::Namespaces => &[META[0], ("status.phase", "/status/phase")],
            Resource::Nodes => &[META[0], ("spec.unschedulable", "/spec/unschedulable")],
            Resource::Events => &[
                META[0],
                META[1],
                ("involvedObject.kind", "/involvedObject/kind"),
                ("involvedObject.namespace", "/involvedObject/namespace"),
                ("involvedObject.name", "/involvedObject/name"),
                ("involvedObject.uid", "/involvedObject/uid"),
                ("involvedObject.apiVersion", "/involvedObject/apiVersion"),
                (
                    "involvedObject.resourceVersion",
                    "/involvedObject/resourceVersion",
                ),
                ("involvedObject.fieldPath", "/involvedObject/fieldPath"),
                ("reason", "/reason"),
                ("reportingComponent", "/reportingComponent"),
                ("source", "/source/component"),
                ("type", "/type"),
            ],
            Resource::EventsV1 => &[
                META[0],
                META[1],
                ("regarding.kind", "/regarding/kind"),
                ("regarding.namespace", "/regarding/namespace"),
                ("regarding.name", "/regarding/name"),
                ("regarding.uid", "/regarding/uid"),
                ("reason", "/reason"),
                ("reportingController", "/reportingController"),
                ("type", "/type"),
            ],
            Resource::Jobs => &[META[0], META[1], ("status.successful", "/status/succeeded")],
            // apps/v1 registers no field labels of its own; Leases,
            // ConfigMaps and PodDisruptionBudgets neither.
            Resource::StatefulSets
            | Resource::Deployments
            | Resource::DaemonSets
            | Resource::ReplicaSets
            | Resource::Leases
            | Resource::ConfigMaps
            | Resource::PodDisruptionBudgets => &META,
        }
    }

    /// Where field label `label` sits in an object, or `None` when the real
    /// server does not support it for this resource.
    pub(crate) fn field_pointer(self, label: &str) -> Option<&'static str> {
        self.field_labels()
            .iter()
            .find(|(l, _)| *l == label)
            .map(|(_, p)| *p)
    }
}

/// A field's value as a field selector compares it: strings as they are,
/// booleans and numbers printed, a missing field as "".
pub(crate) fn field_value(object: &Value, pointer: &str) -> String {
    match object.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        // The real server reads an unset boolean as its zero value.
        None if pointer == "/spec/hostNetwork" || pointer == "/spec/unschedulable" => {
            "false".into()
        }
        _ => String::new(),
    }
}
