//! The JSON Patch (RFC 6902) a pod gets at admission, from the ToRs it may
//! use (`core::schedule`). Pure: a pod and a decision in, operations out.
//!
//! - A required node affinity `<tor label> In [ToRs]`, AND-ed into every
//!   nodeSelectorTerm the pod has (the terms are OR-ed, so each must carry
//!   it), or the whole affinity when it has none. An empty term matches no
//!   node and stays so.
//! - For a pool on several ToRs: topologySpreadConstraints over the ToR
//!   label and `kubernetes.io/hostname` (maxSkew 1, the pod's workload
//!   selected by its labels), unless the pod constrains that key already
//!   or its `moor.io/spread` annotation says `none`.
//!
//! Nothing else in the pod changes: every operation is an `add` under
//! `/spec/affinity` or `/spec/topologySpreadConstraints`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use serde_json::{json, Value};

use crate::core::schedule::TorChoice;

/// The pod annotation that chooses how its pods spread over ToRs and hosts.
pub const SPREAD_ANNOTATION: &str = "moor.io/spread";
/// The node label every kubelet sets to its node's name.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// Labels that differ between pods of one workload (per pod, per revision
/// or per index): a selector with them would count one pod, or one
/// revision, instead of the workload.
const PER_POD_LABELS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "pod-template-generation",
    "batch.kubernetes.io/job-completion-index",
];

const REQUIRED: &str = "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution";

/// What `moor.io/spread` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spread {
    /// `whenUnsatisfiable: ScheduleAnyway` (no annotation, or `preferred`).
    Preferred,
    /// `DoNotSchedule` (`strict`): a pod waits rather than skew.
    Strict,
    /// No spread constraints (`none`).
    Off,
}

impl Spread {
    fn of(pod: &corev1::Pod) -> Result<Spread, String> {
        let value = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SPREAD_ANNOTATION));
        match value.map(String::as_str) {
            None | Some("") | Some("preferred") => Ok(Spread::Preferred),
            Some("strict") => Ok(Spread::Strict),
            Some("none") => Ok(Spread::Off),
            Some(other) => Err(format!(
                "moor: annotation {SPREAD_ANNOTATION}: {other:?} is not preferred, strict or none; no spread constraints were added"
            )),
        }
    }
}

/// The operations and what to tell the pod's creator.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Patch {
    pub ops: Vec<Value>,
    pub warnings: Vec<String>,
}

fn add(path: &str, value: Value) -> Value {
    json!({"op": "add", "path": path, "value": value})
}

/// The patch for `pod`, to land on `choice.tors` (values of node label
/// `tor_label`).
pub fn patch(pod: &corev1::Pod, choice: &TorChoice, tor_label: &str) -> Patch {
    let mut out = Patch::default();
    out.warnings.extend(choice.warning.clone());
    let Some(spec) = &pod.spec else {
        return out;
    };
    let expression = corev1::NodeSelectorRequirement {
        key: tor_label.to_string(),
        operator: "In".into(),
        values: Some(choice.tors.clone()),
    };
    out.ops = affinity(spec, to_value(&expression));
    if choice.spans {
        match Spread::of(pod) {
            Ok(Spread::Off) => {}
            Ok(mode) => out
                .ops
                .extend(spread(pod, spec, tor_label, mode, &mut out.warnings)),
            Err(w) => out.warnings.push(w),
        }
    }
    out
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("Kubernetes types serialize")
}

/// `expression` AND-ed into the pod's required node affinity.
fn affinity(spec: &corev1::PodSpec, expression: Value) -> Vec<Value> {
    let required = json!({"nodeSelectorTerms": [{"matchExpressions": [expression]}]});
    let Some(a) = &spec.affinity else {
        let value =
            json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}});
        return vec![add("/spec/affinity", value)];
    };
    let Some(na) = &a.node_affinity else {
        let value = json!({"requiredDuringSchedulingIgnoredDuringExecution": required});
        return vec![add("/spec/affinity/nodeAffinity", value)];
    };
    let Some(r) = &na.required_during_scheduling_ignored_during_execution else {
        return vec![add(REQUIRED, required)];
    };
    let empty = |v: &Option<Vec<_>>| v.as_ref().is_none_or(Vec::is_empty);
    r.node_selector_terms
        .iter()
        .enumerate()
        // An empty term matches no node; with the expression it would
        // match some.
        .filter(|(_, t)| !(empty(&t.match_expressions) && empty(&t.match_fields)))
        .map(|(i, t)| {
            let path = format!("{REQUIRED}/nodeSelectorTerms/{i}/matchExpressions");
            match &t.match_expressions {
                Some(_) => add(&format!("{path}/-"), expression.clone()),
                None => add(&path, json!([expression])),
            }
        })
        .collect()
}

/// Spread constraints on the ToR label and the hostname, for the keys the
/// pod leaves unconstrained.
fn spread(
    pod: &corev1::Pod,
    spec: &corev1::PodSpec,
    tor_label: &str,
    mode: Spread,
    warnings: &mut Vec<String>,
) -> Vec<Value> {
    let existing = spec.topology_spread_constraints.as_deref().unwrap_or(&[]);
    let keys: Vec<&str> = [tor_label, HOSTNAME_LABEL]
        .into_iter()
        .filter(|k| existing.iter().all(|c| c.topology_key != *k))
        .collect();
    if keys.is_empty() {
        return Vec::new();
    }
    let labels: BTreeMap<String, String> = pod
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| !PER_POD_LABELS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if labels.is_empty() {
        // An empty selector would count every pod of the namespace.
        warnings.push(
            "moor: the pod has no labels that select its workload; no spread constraints were added"
                .into(),
        );
        return Vec::new();
    }
    let when = match mode {
        Spread::Strict => "DoNotSchedule",
        _ => "ScheduleAnyway",
    };
    let constraints: Vec<Value> = keys
        .into_iter()
        .map(|key| {
            to_value(&corev1::TopologySpreadConstraint {
                max_skew: 1,
                topology_key: key.to_string(),
                when_unsatisfiable: when.into(),
                label_selector: Some(metav1::LabelSelector {
                    match_labels: Some(labels.clone()),
                    match_expressions: None,
                }),
                ..Default::default()
            })
        })
        .collect();
    match spec.topology_spread_constraints {
        None => vec![add(
            "/spec/topologySpreadConstraints",
            Value::Array(constraints),
        )],
        Some(_) => constraints
            .into_iter()
            .map(|c| add("/spec/topologySpreadConstraints/-", c))
            .collect(),
    }
}

#[cfg(test)]
#[path = "patch_tests.rs"]
mod tests;
