//! `POST /api/v1/namespaces/{ns}/pods/{name}/eviction`: the Eviction API
//! as the real server runs it (pkg/registry/core/pod/storage/eviction.go):
//! the body is a policy/v1 `Eviction` naming the pod (its apiVersion and
//! kind may be left out); a pod that is done
//! or not yet running is deleted without looking at budgets; otherwise the
//! one PodDisruptionBudget selecting the pod must allow a disruption
//! (`status.disruptionsAllowed` > 0, its status observed for its current
//! generation), which the eviction then spends. Refusals use the real
//! codes: 429 TooManyRequests for a budget that allows none, 500 for a pod
//! under several budgets. Success is a 201 `Status`.
//!
//! The fake does not compute budgets from pod health (no controller
//! manager): a test sets `status.disruptionsAllowed` on the budget.

use super::gc::{self, Propagation};
use super::request::Target;
use super::resource::Resource;
use super::selector::LabelSelector;
use super::server::Shared;
use super::status::Status;
use super::store::Store;
use super::write::{json_body, parse_body};
use serde_json::{json, Value};

pub(crate) fn evict(
    shared: &Shared,
    target: &Target,
    content_type: &str,
    body: &[u8],
) -> Result<(u16, Value), Status> {
    json_body(content_type)?;
    let eviction = parse_body(body)?;
    let name = target.name.clone().unwrap_or_default();
    let namespace = target.namespace.clone().unwrap_or_default();
    match (
        eviction["apiVersion"].as_str(),
        eviction["kind"].as_str(),
    ) {
        // A body without apiVersion and kind decodes as the subresource's
        // own type, as kube-rs sends it.
        (None, None) | (Some("policy/v1" | "policy/v1beta1"), Some("Eviction")) => {}
        (v, k) => {
            return Err(Status::bad_request(format!(
                "no kind \"{}\" is registered for version \"{}\": the body must be a policy/v1 Eviction",
                k.unwrap_or_default(),
                v.unwrap_or_default()
            )))
        }
    }
    if eviction.pointer("/metadata/name").and_then(Value::as_str) != Some(name.as_str()) {
        return Err(Status::bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    if eviction.pointer("/deleteOptions/dryRun").is_some() {
        return Err(Status::bad_request(
            "fake API server: dryRun is not implemented",
        ));
    }
    shared.write(|store| {
        let pod = store
            .get(Resource::Pods, &namespace, &name)
            .cloned()
            .ok_or_else(|| Status::not_found(Resource::Pods, &name))?;
        let phase = pod.pointer("/status/phase").and_then(Value::as_str);
        if !matches!(phase, Some("Succeeded" | "Failed" | "Pending")) {
            spend_budget(store, &namespace, &pod)?;
        }
        gc::delete(store, Resource::Pods, &namespace, &name, Propagation::Background)?;
        Ok((
            201,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        ))
    })
}

/// Checks the pod's budget and takes one disruption from it.
fn spend_budget(store: &mut Store, namespace: &str, pod: &Value) -> Result<(), Status> {
    let budgets: Vec<Value> = store
        .all(Resource::PodDisruptionBudgets)
        .into_iter()
        .filter(|b| b.pointer("/metadata/namespace").and_then(Value::as_str) == Some(namespace))
        .filter(|b| selects(b, pod))
        .collect();
    let mut budget = match budgets.as_slice() {
        [] => return Ok(()),
        [one] => one.clone(),
        _ => {
            let mut s = Status::bad_request(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            );
            s.code = 500;
            s.reason = "InternalError";
            return Err(s);
        }
    };
    let budget_name = budget["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let generation = budget
        .pointer("/metadata/generation")
        .and_then(Value::as_i64);
    let observed = budget
        .pointer("/status/observedGeneration")
        .and_then(Value::as_i64);
    if observed < generation {
        return Err(too_many_requests(format!(
            "Cannot evict pod as it would violate the pod's disruption budget. The disruption budget {budget_name} is still being processed by the server."
        )));
    }
    let allowed = budget
        .pointer("/status/disruptionsAllowed")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if allowed <= 0 {
        let healthy = budget
            .pointer("/status/currentHealthy")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let desired = budget
            .pointer("/status/desiredHealthy")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let mut s = too_many_requests(
            "Cannot evict pod as it would violate the pod's disruption budget.".into(),
        );
        s.details = Some(
            json!({"causes": [{"reason": "DisruptionBudget", "message": format!(
                "The disruption budget {budget_name} needs {desired} healthy pods and has {healthy} currently"
            )}]}),
        );
        return Err(s);
    }
    budget["status"]["disruptionsAllowed"] = (allowed - 1).into();
    let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
    budget["status"]["disruptedPods"][pod_name] = super::objects::now_rfc3339().into();
    store.replace(Resource::PodDisruptionBudgets, budget)?;
    Ok(())
}

fn too_many_requests(message: String) -> Status {
    let mut s = Status::bad_request(message);
    s.code = 429;
    s.reason = "TooManyRequests";
    s
}

/// Whether the budget's `spec.selector` (a LabelSelector object) selects
/// the pod. An empty selector selects every pod of the namespace (policy/v1).
fn selects(budget: &Value, pod: &Value) -> bool {
    let selector = budget
        .pointer("/spec/selector")
        .cloned()
        .unwrap_or(Value::Null);
    let mut parts = Vec::new();
    if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in labels {
            parts.push(format!("{k}={}", v.as_str().unwrap_or_default()));
        }
    }
    for e in selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = e["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        parts.push(match e["operator"].as_str() {
            Some("In") => format!("{key} in ({})", values.join(",")),
            Some("NotIn") => format!("{key} notin ({})", values.join(",")),
            Some("Exists") => key.to_string(),
            Some("DoesNotExist") => format!("!{key}"),
            _ => return false,
        });
    }
    LabelSelector::parse(&parts.join(",")).is_ok_and(|s| s.matches(pod))
}
