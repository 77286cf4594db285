//! The patch applied (RFC 6902, by the json-patch crate) to pods of every
//! affinity shape: which nodes the patched pod may run on is exactly the
//! nodes the original allowed AND whose ToR is chosen; nothing outside
//! the affinity and the spread constraints changes.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;

const TOR: &str = "moor.io/tor";

fn choice(tors: &[&str], spans: bool) -> TorChoice {
    TorChoice {
        tors: tors.iter().map(|t| t.to_string()).collect(),
        spans,
        warning: None,
    }
}

fn typed(pod: &Value) -> corev1::Pod {
    serde_json::from_value(pod.clone()).unwrap()
}

/// The pod after the patch, as the API server would store it.
fn applied(pod: &Value, p: &Patch) -> Value {
    let ops: json_patch::Patch = serde_json::from_value(Value::Array(p.ops.clone())).unwrap();
    let mut out = pod.clone();
    json_patch::patch(&mut out, &ops).unwrap_or_else(|e| panic!("{e}: {:#?}", p.ops));
    out
}

fn pod(spec_extra: Value, labels: Value, annotations: Value) -> Value {
    let mut spec = json!({"containers": [{"name": "app", "image": "pause"}]});
    for (k, v) in spec_extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "db-1", "namespace": "shop", "labels": labels, "annotations": annotations},
        "spec": spec,
    })
}

fn terms(pod: &Value) -> &Value {
    &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"]
}

#[test]
fn a_pod_without_affinity_gets_one_term() {
    let p = pod(json!({}), json!({"app": "db"}), json!({}));
    let patch = patch(&typed(&p), &choice(&["t1", "t2"], false), TOR);
    let out = applied(&p, &patch);
    assert_eq!(
        terms(&out),
        &json!([{"matchExpressions": [{"key": TOR, "operator": "In", "values": ["t1", "t2"]}]}])
    );
    assert!(out["spec"].get("topologySpreadConstraints").is_none());
    assert!(patch.warnings.is_empty());
}

#[test]
fn the_expression_is_anded_into_every_existing_term() {
    let p = pod(
        json!({"affinity": {
            "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []},
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n9"]}]},
                {},
            ]}}
        }}),
        json!({"app": "db"}),
        json!({}),
    );
    let out = applied(&p, &patch(&typed(&p), &choice(&["t2"], false), TOR));
    let ours = json!({"key": TOR, "operator": "In", "values": ["t2"]});
    assert_eq!(
        terms(&out),
        &json!([
            {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}, ours]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n9"]}],
             "matchExpressions": [ours]},
            // An empty term matches no node, before and after.
            {},
        ])
    );
    assert_eq!(
        out["spec"]["affinity"]["podAntiAffinity"],
        p["spec"]["affinity"]["podAntiAffinity"]
    );
}

#[test]
fn a_pool_on_several_tors_spreads_its_workload_over_tors_and_hosts() {
    let labels = json!({
        "app": "db", "tier": "data",
        "controller-revision-hash": "db-6d4f", "statefulset.kubernetes.io/pod-name": "db-1",
        "apps.kubernetes.io/pod-index": "1",
    });
    let p = pod(json!({}), labels.clone(), json!({}));
    let out = applied(&p, &patch(&typed(&p), &choice(&["t1", "t2"], true), TOR));
    let selector = json!({"matchLabels": {"app": "db", "tier": "data"}});
    assert_eq!(
        out["spec"]["topologySpreadConstraints"],
        json!([
            {"maxSkew": 1, "topologyKey": TOR, "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": selector},
            {"maxSkew": 1, "topologyKey": HOSTNAME_LABEL, "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": selector},
        ])
    );
    // strict: DoNotSchedule; none: no constraints; a typo: none and a warning.
    for (value, expected) in [
        ("strict", Some("DoNotSchedule")),
        ("preferred", Some("ScheduleAnyway")),
        ("none", None),
        ("Strict", None),
    ] {
        let p = pod(json!({}), labels.clone(), json!({SPREAD_ANNOTATION: value}));
        let patch = patch(&typed(&p), &choice(&["t1", "t2"], true), TOR);
        let out = applied(&p, &patch);
        let whens: Vec<&Value> = out["spec"]["topologySpreadConstraints"]
            .as_array()
            .map(|a| a.iter().map(|c| &c["whenUnsatisfiable"]).collect())
            .unwrap_or_default();
        match expected {
            Some(w) => assert_eq!(whens, [w, w], "{value}"),
            None => assert!(whens.is_empty(), "{value}"),
        }
        assert_eq!(
            patch.warnings.len(),
            usize::from(value == "Strict"),
            "{value}"
        );
        if value == "Strict" {
            assert!(
                patch.warnings[0].contains("is not preferred, strict or none"),
                "{:?}",
                patch.warnings
            );
        }
        // The affinity is added whatever the spread says.
        assert!(terms(&out).is_array(), "{value}");
    }
}

#[test]
fn keys_the_pod_constrains_already_are_left_alone() {
    let own = json!({"maxSkew": 2, "topologyKey": HOSTNAME_LABEL, "whenUnsatisfiable": "DoNotSchedule",
                     "labelSelector": {"matchLabels": {"app": "db"}}});
    let p = pod(
        json!({"topologySpreadConstraints": [own.clone()]}),
        json!({"app": "db"}),
        json!({}),
    );
    let out = applied(&p, &patch(&typed(&p), &choice(&["t1", "t2"], true), TOR));
    let c = out["spec"]["topologySpreadConstraints"].as_array().unwrap();
    assert_eq!(c.len(), 2);
    assert_eq!(c[0], own);
    assert_eq!(c[1]["topologyKey"], TOR);
    // Both keys taken: no spread operation at all.
    let both =
        json!([own, {"maxSkew": 1, "topologyKey": TOR, "whenUnsatisfiable": "ScheduleAnyway"}]);
    let p = pod(
        json!({"topologySpreadConstraints": both}),
        json!({"app": "db"}),
        json!({}),
    );
    let patch = patch(&typed(&p), &choice(&["t1", "t2"], true), TOR);
    assert!(patch
        .ops
        .iter()
        .all(|o| !o["path"].as_str().unwrap().contains("topologySpread")));
}

#[test]
fn a_pod_without_workload_labels_is_not_spread() {
    let p = pod(json!({}), json!({"pod-template-hash": "abc"}), json!({}));
    let patch = patch(&typed(&p), &choice(&["t1", "t2"], true), TOR);
    let out = applied(&p, &patch);
    assert!(out["spec"].get("topologySpreadConstraints").is_none());
    assert!(
        patch.warnings[0].contains("no labels"),
        "{:?}",
        patch.warnings
    );
}

#[test]
fn a_custom_tor_label_is_used_for_affinity_and_spread() {
    let p = pod(json!({}), json!({"app": "db"}), json!({}));
    let out = applied(
        &p,
        &patch(&typed(&p), &choice(&["r1", "r2"], true), "example.com/rack"),
    );
    assert_eq!(
        terms(&out)[0]["matchExpressions"][0]["key"],
        "example.com/rack"
    );
    assert_eq!(
        out["spec"]["topologySpreadConstraints"][0]["topologyKey"],
        "example.com/rack"
    );
}

// ---- the property: the patched affinity allows exactly (original AND ToR).

/// A node: its labels and its name (for matchFields).
#[derive(Debug, Clone)]
struct Node {
    name: String,
    labels: BTreeMap<String, String>,
}

/// Kubernetes' node selector requirement, for the operators generated.
fn requirement_matches(r: &Value, get: impl Fn(&str) -> Option<String>) -> bool {
    let value = get(r["key"].as_str().unwrap());
    let values: Vec<&str> = r["values"]
        .as_array()
        .map(|v| v.iter().map(|s| s.as_str().unwrap()).collect())
        .unwrap_or_default();
    match r["operator"].as_str().unwrap() {
        "In" => value.is_some_and(|v| values.contains(&v.as_str())),
        "NotIn" => value.is_none_or(|v| !values.contains(&v.as_str())),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        op => panic!("operator {op}"),
    }
}

/// Whether the pod's required node affinity lets it run on `node`: no
/// requirement matches every node; terms are OR-ed; an empty term matches
/// none; the requirements of a term are AND-ed.
fn allows(pod: &Value, node: &Node) -> bool {
    let required =
        &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
    if required.is_null() {
        return true;
    }
    let list = |t: &Value, k: &str| t[k].as_array().cloned().unwrap_or_default();
    required["nodeSelectorTerms"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| {
            let exprs = list(t, "matchExpressions");
            let fields = list(t, "matchFields");
            !(exprs.is_empty() && fields.is_empty())
                && exprs
                    .iter()
                    .all(|r| requirement_matches(r, |k| node.labels.get(k).cloned()))
                && fields.iter().all(|r| {
                    requirement_matches(r, |k| (k == "metadata.name").then(|| node.name.clone()))
                })
        })
}

fn requirement(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    (
        proptest::sample::select(keys),
        prop_oneof![
            Just("In"),
            Just("NotIn"),
            Just("Exists"),
            Just("DoesNotExist")
        ],
        proptest::collection::vec(
            proptest::sample::select(&["a", "b", "t1", "t2", "n1"][..]),
            1..3,
        ),
    )
        .prop_map(|(key, op, values)| match op {
            "Exists" | "DoesNotExist" => json!({"key": key, "operator": op}),
            _ => json!({"key": key, "operator": op, "values": values}),
        })
}

/// A term: matchExpressions absent, empty or some; matchFields likewise.
fn term() -> impl Strategy<Value = Value> {
    let exprs = proptest::option::of(proptest::collection::vec(
        requirement(&["disk", "zone", TOR]),
        0..3,
    ));
    let fields = proptest::option::of(proptest::collection::vec(
        requirement(&["metadata.name"]),
        0..2,
    ));
    (exprs, fields).prop_map(|(e, f)| {
        let mut t = json!({});
        if let Some(e) = e {
            t["matchExpressions"] = e.into();
        }
        if let Some(f) = f {
            t["matchFields"] = f.into();
        }
        t
    })
}

/// The spec's affinity, from none at all to several terms.
fn affinity() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({})),
        Just(json!({"affinity": null})),
        Just(json!({"affinity": {}})),
        Just(json!({"affinity": {"nodeAffinity": {}}})),
        Just(
            json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 1, "preference": {"matchExpressions": [{"key": "disk", "operator": "Exists"}]}}]}}})
        ),
        proptest::collection::vec(term(), 0..4).prop_map(|t| json!({"affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": t}}}})),
    ]
}

fn node() -> impl Strategy<Value = Node> {
    let label = |k: &'static str| {
        proptest::option::of(proptest::sample::select(&["a", "b", "t1", "t2", "t3"][..]))
            .prop_map(move |v| (k, v))
    };
    (
        proptest::sample::select(&["n1", "n2"][..]),
        label("disk"),
        label("zone"),
        label(TOR),
    )
        .prop_map(|(name, d, z, t)| Node {
            name: name.into(),
            labels: [d, z, t]
                .into_iter()
                .filter_map(|(k, v)| Some((k.to_string(), v?.to_string())))
                .collect(),
        })
}

/// The pod without what the patch may touch (an affinity or node
/// affinity left empty, or null, counts as none).
fn untouchable(pod: &Value) -> Value {
    let mut p = pod.clone();
    let spec = p["spec"].as_object_mut().unwrap();
    spec.remove("topologySpreadConstraints");
    if let Some(a) = spec.get_mut("affinity").and_then(Value::as_object_mut) {
        if let Some(na) = a.get_mut("nodeAffinity").and_then(Value::as_object_mut) {
            na.remove("requiredDuringSchedulingIgnoredDuringExecution");
        }
        if a.get("nodeAffinity").is_some_and(|n| n == &json!({})) {
            a.remove("nodeAffinity");
        }
    }
    if spec
        .get("affinity")
        .is_some_and(|a| a.is_null() || a == &json!({}))
    {
        spec.remove("affinity");
    }
    p
}

proptest! {
    #[test]
    fn the_patched_pod_runs_where_it_could_and_its_tor_allows(
        spec in affinity(),
        tors in proptest::sample::subsequence(vec!["t1", "t2", "t3"], 1..=3),
        spans in any::<bool>(),
        nodes in proptest::collection::vec(node(), 1..8),
        existing_spread in proptest::option::of(proptest::sample::subsequence(vec![TOR, HOSTNAME_LABEL, "zone"], 0..=3)),
    ) {
        let mut spec = spec;
        if let Some(keys) = &existing_spread {
            spec["topologySpreadConstraints"] = keys.iter()
                .map(|k| json!({"maxSkew": 3, "topologyKey": k, "whenUnsatisfiable": "DoNotSchedule"}))
                .collect();
        }
        let original = pod(spec, json!({"app": "db", "pod-template-hash": "x"}), json!({}));
        let c = choice(&tors, spans);
        let p = patch(&typed(&original), &c, TOR);
        let out = applied(&original, &p);
        // It still parses as a Pod.
        let _ = typed(&out);
        for n in &nodes {
            let on_tor = n.labels.get(TOR).is_some_and(|t| c.tors.contains(t));
            prop_assert_eq!(allows(&out, n), allows(&original, n) && on_tor, "{:?}\n{:#}", n, out);
        }
        prop_assert_eq!(untouchable(&out), untouchable(&original));
        for op in &p.ops {
            prop_assert_eq!(&op["op"], "add");
        }
        // Spread: the pod's own constraints first and unchanged, then ours
        // for the keys it left free, only for a pool on several ToRs.
        let before: Vec<Value> = original["spec"]["topologySpreadConstraints"].as_array().cloned().unwrap_or_default();
        let after: Vec<Value> = out["spec"]["topologySpreadConstraints"].as_array().cloned().unwrap_or_default();
        prop_assert_eq!(&after[..before.len()], &before[..]);
        let taken: Vec<&str> = existing_spread.iter().flatten().copied().collect();
        let ours: Vec<&str> = after[before.len()..].iter().map(|c| c["topologyKey"].as_str().unwrap()).collect();
        let expected: Vec<&str> = if spans {
            [TOR, HOSTNAME_LABEL].into_iter().filter(|k| !taken.contains(k)).collect()
        } else {
            Vec::new()
        };
        prop_assert_eq!(ours, expected);
        for c in &after[before.len()..] {
            prop_assert_eq!(&c["labelSelector"], &json!({"matchLabels": {"app": "db"}}));
        }
    }
}
