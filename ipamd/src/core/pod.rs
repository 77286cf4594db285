//! What the Kubernetes API says about a pod, and what moor makes of it: the
//! workload the pod belongs to (the key of its pool) and whether its IP stays
//! with it under the `auto` policy. Read from the pod's own ownerReferences
//! and labels, never from the workload objects: a node agent does not watch
//! every Deployment of the cluster. Pure; the API edge fills `PodFacts`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use super::workload::Workload;

/// The annotation (on a pod or a namespace) that names a pool.
pub const POOL_ANNOTATION: &str = "moor.io/pool";
/// The label the Deployment controller puts on a ReplicaSet's pods; the
/// ReplicaSet is named `<deployment>-<hash>`.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// An ownerReference, as far as moor reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRef {
    /// `apps/v1`, `batch/v1`, `v1`.
    pub api_version: String,
    pub kind: String,
    pub name: String,
}

impl OwnerRef {
    /// The API group: `apps` of `apps/v1`, empty for the core group (`v1`).
    pub fn group(&self) -> &str {
        self.api_version.split_once('/').map_or("", |(g, _)| g)
    }

    pub(crate) fn is(&self, group: &str, kind: &str) -> bool {
        self.group() == group && self.kind == kind
    }
}

/// What moor needs of a pod: who it is, its labels and annotations, its
/// controller (the ownerReference with `controller: true`), and, when that
/// controller is a Job, the Job's own controller (a CronJob's Jobs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodFacts {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub controller: Option<OwnerRef>,
    pub job_controller: Option<OwnerRef>,
}

impl PodFacts {
    /// The pool the pod's `moor.io/pool` annotation names, if any.
    pub fn pool_annotation(&self) -> Option<&str> {
        self.annotations
            .get(POOL_ANNOTATION)
            .map(String::as_str)
            .filter(|p| !p.is_empty())
    }

    /// Whether the pod belongs to a Job (the Job needs reading to find a
    /// CronJob above it).
    pub fn job(&self) -> Option<&str> {
        self.controller
            .as_ref()
            .filter(|o| o.is("batch", "Job"))
            .map(|o| o.name.as_str())
    }
}

/// An owner kind whose pods keep their IP under the `auto` policy:
/// `apps/StatefulSet`, `apps.kruise.io/StatefulSet`; `/Kind` for the core
/// group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OwnerKind {
    pub group: String,
    pub kind: String,
}

impl FromStr for OwnerKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (group, kind) = s.split_once('/').ok_or_else(|| {
            format!("owner kind {s:?} is not GROUP/Kind: write it like apps/StatefulSet (/Kind for the core group)")
        })?;
        let ok_kind = kind.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            && kind.chars().all(|c| c.is_ascii_alphanumeric());
        let ok_group = group
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
        if !ok_kind || !ok_group || group.starts_with('.') || group.ends_with('.') {
            return Err(format!(
                "owner kind {s:?} is not GROUP/Kind: a lowercase API group (apps, apps.kruise.io) and a Kind in CamelCase, like apps/StatefulSet"
            ));
        }
        Ok(Self {
            group: group.to_string(),
            kind: kind.to_string(),
        })
    }
}

impl fmt::Display for OwnerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.group, self.kind)
    }
}

/// The default sticky owner kinds.
pub fn default_sticky_kinds() -> Vec<OwnerKind> {
    vec![OwnerKind {
        group: "apps".into(),
        kind: "StatefulSet".into(),
    }]
}

/// The pod's workload and whether its name (and so its IP) survives it
/// being re-created:
/// - no controller: a bare pod is its own workload, and keeps its IP;
/// - a ReplicaSet: the Deployment, named by the ReplicaSet's name minus
///   `-<pod-template-hash>` (a ReplicaSet without the label, or whose name
///   does not end with it, is its own workload);
/// - a Job: the CronJob that controls it, else the Job;
/// - any other controller (StatefulSet, DaemonSet, a CRD's): the owner.
///
/// Stickiness comes from the owner's kind: those in `sticky` keep their IP.
pub fn workload(p: &PodFacts, sticky: &[OwnerKind]) -> Workload {
    let Some(o) = &p.controller else {
        return Workload {
            app: p.name.clone(),
            stable_name: true,
        };
    };
    let app = if o.is("apps", "ReplicaSet") {
        match p.labels.get(POD_TEMPLATE_HASH) {
            Some(h)
                if !h.is_empty()
                    && o.name.len() > h.len() + 1
                    && o.name.ends_with(h.as_str())
                    && o.name[..o.name.len() - h.len()].ends_with('-') =>
            {
                o.name[..o.name.len() - h.len() - 1].to_string()
            }
            _ => o.name.clone(),
        }
    } else if o.is("batch", "Job") {
        match &p.job_controller {
            Some(c) if c.is("batch", "CronJob") => c.name.clone(),
            _ => o.name.clone(),
        }
    } else {
        o.name.clone()
    };
    let stable_name = sticky
        .iter()
        .any(|k| k.group == o.group() && k.kind == o.kind);
    Workload { app, stable_name }
}

/// Whether the pod's workload is of a kind moor's controller makes pools
/// for from `moor.io/pool-size` (its app is then the workload's name): a
/// StatefulSet, DaemonSet, ReplicaSet (a Deployment's or its own) or Job
/// (not a CronJob's) of the built-in API groups.
pub fn declarable(p: &PodFacts) -> bool {
    let Some(o) = &p.controller else {
        return false;
    };
    let cronjob = p
        .job_controller
        .as_ref()
        .is_some_and(|c| c.is("batch", "CronJob"));
    o.is("apps", "StatefulSet")
        || o.is("apps", "DaemonSet")
        || o.is("apps", "ReplicaSet")
        || (o.is("batch", "Job") && !cronjob)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(api_version: &str, kind: &str, name: &str) -> Option<OwnerRef> {
        Some(OwnerRef {
            api_version: api_version.into(),
            kind: kind.into(),
            name: name.into(),
        })
    }

    fn pod(name: &str, controller: Option<OwnerRef>) -> PodFacts {
        PodFacts {
            namespace: "shop".into(),
            name: name.into(),
            uid: "u".into(),
            controller,
            ..Default::default()
        }
    }

    fn w(app: &str, stable_name: bool) -> Workload {
        Workload {
            app: app.into(),
            stable_name,
        }
    }

    #[test]
    fn the_controller_names_the_workload_not_the_pod_name() {
        let sticky = default_sticky_kinds();
        // A StatefulSet pod keeps its IP.
        let db = pod("db-0", owner("apps/v1", "StatefulSet", "db"));
        assert_eq!(workload(&db, &sticky), w("db", true));
        // A ReplicaSet pod named like an ordinal is still a Deployment's.
        let mut cache = pod("cache-0", owner("apps/v1", "ReplicaSet", "cache-5d8f7b9c4"));
        cache
            .labels
            .insert(POD_TEMPLATE_HASH.into(), "5d8f7b9c4".into());
        assert_eq!(workload(&cache, &sticky), w("cache", false));
        // A name no rule could parse: the owner tells.
        let mut odd = pod("Frontend_X", owner("apps/v1", "ReplicaSet", "frontend-abc"));
        odd.labels.insert(POD_TEMPLATE_HASH.into(), "abc".into());
        assert_eq!(workload(&odd, &sticky), w("frontend", false));
        // A ReplicaSet of its own (no hash label, or a name that does not end
        // with it) is the workload.
        let bare_rs = pod("x", owner("apps/v1", "ReplicaSet", "legacy"));
        assert_eq!(workload(&bare_rs, &sticky), w("legacy", false));
        let mut wrong = pod("x", owner("apps/v1", "ReplicaSet", "web-123"));
        wrong.labels.insert(POD_TEMPLATE_HASH.into(), "999".into());
        assert_eq!(workload(&wrong, &sticky), w("web-123", false));
        let mut glued = pod("x", owner("apps/v1", "ReplicaSet", "web123"));
        glued.labels.insert(POD_TEMPLATE_HASH.into(), "123".into());
        assert_eq!(workload(&glued, &sticky), w("web123", false));
        // DaemonSet: the owner, not sticky.
        let ds = pod("agent-x2x9z", owner("apps/v1", "DaemonSet", "agent"));
        assert_eq!(workload(&ds, &sticky), w("agent", false));
        // A bare pod is its own workload and keeps its IP.
        assert_eq!(workload(&pod("toolbox", None), &sticky), w("toolbox", true));
    }

    #[test]
    fn pods_of_workload_kinds_may_have_a_declared_pool() {
        let kinds = [
            ("apps/v1", "StatefulSet", true),
            ("apps/v1", "DaemonSet", true),
            ("apps/v1", "ReplicaSet", true),
            ("batch/v1", "Job", true),
            ("apps.kruise.io/v1beta1", "StatefulSet", false),
            ("v1", "ReplicationController", false),
        ];
        for (api, kind, want) in kinds {
            assert_eq!(declarable(&pod("x", owner(api, kind, "x"))), want, "{kind}");
        }
        assert!(!declarable(&pod("bare", None)));
        let mut cron = pod("r-1-x", owner("batch/v1", "Job", "r-1"));
        cron.job_controller = owner("batch/v1", "CronJob", "r");
        assert!(!declarable(&cron), "a CronJob declares no pool");
    }

    #[test]
    fn a_cronjobs_pods_belong_to_the_cronjob() {
        let sticky = default_sticky_kinds();
        let mut p = pod(
            "report-28911-abcde",
            owner("batch/v1", "Job", "report-28911"),
        );
        assert_eq!(p.job(), Some("report-28911"));
        assert_eq!(workload(&p, &sticky), w("report-28911", false));
        p.job_controller = owner("batch/v1", "CronJob", "report");
        assert_eq!(workload(&p, &sticky), w("report", false));
        // Only a CronJob counts as the Job's workload.
        p.job_controller = owner("example.com/v1", "Pipeline", "ci");
        assert_eq!(workload(&p, &sticky), w("report-28911", false));
    }

    #[test]
    fn sticky_kinds_are_configurable_by_group_and_kind() {
        let kruise = pod("db-1", owner("apps.kruise.io/v1beta1", "StatefulSet", "db"));
        assert_eq!(workload(&kruise, &default_sticky_kinds()), w("db", false));
        let kinds: Vec<OwnerKind> = ["apps/StatefulSet", "apps.kruise.io/StatefulSet"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(workload(&kruise, &kinds), w("db", true));
        assert_eq!(kinds[1].to_string(), "apps.kruise.io/StatefulSet");
        let core: OwnerKind = "/ReplicationController".parse().unwrap();
        let rc = pod("x-abcde", owner("v1", "ReplicationController", "x"));
        assert_eq!(workload(&rc, &[core]), w("x", true));
        for bad in [
            "StatefulSet",
            "apps/statefulSet",
            "Apps/StatefulSet",
            "apps/",
            "/",
            ".apps/X",
        ] {
            let e = bad.parse::<OwnerKind>().unwrap_err();
            assert!(e.contains("apps/StatefulSet"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_pool_annotation_is_read_when_set() {
        let mut p = pod("a", None);
        assert_eq!(p.pool_annotation(), None);
        p.annotations.insert(POOL_ANNOTATION.into(), String::new());
        assert_eq!(p.pool_annotation(), None);
        p.annotations.insert(POOL_ANNOTATION.into(), "web".into());
        assert_eq!(p.pool_annotation(), Some("web"));
    }
}
