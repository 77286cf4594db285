//! Reviews in, responses out, over the in-memory store: the pool decided
//! as the node agent decides it, the ToRs from the store, the patch
//! applied to the pod; and bodies that are not reviews.

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::{json, Value};

use super::*;
use crate::core::{AttachmentKey, Policy};
use crate::ipam::{AllocRequest, PoolSpec};
use crate::store::mem::MemStore;

const TOR: &str = "moor.io/tor";

/// ToRs t1, t2 (4 pod IPs each) and t3 with segment t3-v300; pool `db`
/// (app shop/db) of 4 on t1 and t2, pool `edge` on segment t3-v300 only.
async fn admission(namespaces: &[(&str, &str)], default_pool: Option<&str>) -> Admission {
    admission_on(Arc::new(MemStore::new()), namespaces, default_pool).await
}

async fn admission_on(
    store: Arc<MemStore>,
    namespaces: &[(&str, &str)],
    default_pool: Option<&str>,
) -> Admission {
    let ipam = Arc::new(Ipam::new(store));
    for (i, t) in ["t1", "t2", "t3"].iter().enumerate() {
        let range = [(format!("10.{i}.0.10"), format!("10.{i}.0.13"))];
        ipam.add_tor(
            t,
            &format!("10.{i}.0.0/24"),
            &format!("10.{i}.0.1"),
            0,
            &range,
            "",
        )
        .await
        .unwrap();
    }
    let range = [("10.9.0.10".to_string(), "10.9.0.13".to_string())];
    ipam.add_tor("t3-v300", "10.9.0.0/24", "10.9.0.1", 300, &range, "t3")
        .await
        .unwrap();
    for (name, app, tors) in [
        ("db", "db", vec!["t1", "t2"]),
        ("edge", "edge", vec!["t3-v300"]),
    ] {
        ipam.create_pool(
            &PoolSpec {
                name: name.into(),
                namespace: "shop".into(),
                app: app.into(),
                size: 4,
                tors: tors.into_iter().map(str::to_string).collect(),
                policy: Policy::Auto,
                allow_namespaces: vec![],
                ..Default::default()
            },
            0,
        )
        .await
        .unwrap();
    }
    let namespaces: BTreeMap<String, String> = namespaces
        .iter()
        .map(|(n, p)| (n.to_string(), p.to_string()))
        .collect();
    Admission {
        ipam,
        namespace_pool: Box::new(move |ns| namespaces.get(ns).cloned()),
        tor_label: TOR.into(),
        default_pool: default_pool.map(str::to_string),
    }
}

/// Attaches pod shop/`name` of StatefulSet `set` on `tor` (its binding
/// stays after `release`).
async fn attach(a: &Admission, tor: &str, name: &str, cid: &str) -> AttachmentKey {
    let pod = PodRef {
        namespace: "shop".into(),
        name: name.into(),
        uid: String::new(),
    };
    let (choice, stable) = PoolChoice::by_name(&pod, None);
    let key = AttachmentKey {
        node: format!("node-{tor}"),
        container_id: cid.into(),
        ifname: "eth0".into(),
    };
    a.ipam
        .allocate(&AllocRequest {
            key: key.clone(),
            pod,
            choice,
            stable,
            netns: format!("/run/netns/{cid}"),
            network: "moor".into(),
            tor: tor.into(),
            now_unix: 1,
        })
        .await
        .unwrap();
    key
}

fn sts_pod(set: &str, ordinal: u32) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("{set}-{ordinal}"), "namespace": "shop",
            "labels": {"app": set, "controller-revision-hash": format!("{set}-7b9c"),
                       "statefulset.kubernetes.io/pod-name": format!("{set}-{ordinal}")},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": set,
                                 "uid": "u-1", "controller": true, "blockOwnerDeletion": true}],
        },
        "spec": {"containers": [{"name": "app", "image": "pause"}],
                 "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                     "nodeSelectorTerms": [{"matchExpressions": [
                         {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]}]}}}},
    })
}

fn review(pod: &Value, operation: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod["metadata"]["name"], "namespace": "shop",
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:statefulset-controller",
                         "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": pod, "oldObject": null, "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        }
    }))
    .unwrap()
}

/// The response, and the pod with its patch applied.
async fn admit(a: &Admission, pod: &Value) -> (Value, Value) {
    let out: Value =
        serde_json::from_slice(&a.review(&review(pod, "CREATE")).await.unwrap()).unwrap();
    let r = &out["response"];
    assert_eq!(out["apiVersion"], API_VERSION);
    assert_eq!(out["kind"], "AdmissionReview");
    assert_eq!(r["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(r["allowed"], true);
    let mut patched = pod.clone();
    if let Some(p) = r["patch"].as_str() {
        assert_eq!(r["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
        let ops: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        json_patch::patch(&mut patched, &ops).unwrap();
    } else {
        assert!(r.get("patchType").is_none(), "{r}");
    }
    (r.clone(), patched)
}

/// The values of the ToR expression of each term.
fn tor_values(pod: &Value) -> Vec<Vec<String>> {
    pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let e = t["matchExpressions"].as_array().unwrap();
            let ours: Vec<&Value> = e.iter().filter(|e| e["key"] == TOR).collect();
            assert_eq!(ours.len(), 1, "{t}");
            serde_json::from_value(ours[0]["values"].clone()).unwrap()
        })
        .collect()
}

fn spread_keys(pod: &Value) -> Vec<String> {
    pod["spec"]["topologySpreadConstraints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["topologyKey"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn an_unbound_pod_goes_to_tors_with_free_ips_and_spreads() {
    let a = admission(&[], None).await;
    let (r, pod) = admit(&a, &sts_pod("db", 1)).await;
    assert_eq!(tor_values(&pod), [["t1", "t2"]]);
    // AND-ed into the existing term.
    assert_eq!(
        pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0]["matchExpressions"][0]["key"],
        "kubernetes.io/os"
    );
    assert_eq!(spread_keys(&pod), [TOR, HOSTNAME_LABEL]);
    let c = &pod["spec"]["topologySpreadConstraints"][0];
    assert_eq!(c["labelSelector"], json!({"matchLabels": {"app": "db"}}));
    assert_eq!(c["whenUnsatisfiable"], "ScheduleAnyway");
    assert!(r.get("warnings").is_none(), "{r}");

    // t1's two IPs taken: t2 only. Both taken: both, with a warning.
    let pool = a.ipam.pool("db").await.unwrap().0;
    assert_eq!(pool.ips["t1"].len(), 2, "{pool:?}");
    attach(&a, "t1", "db-7", "c7").await;
    attach(&a, "t1", "db-8", "c8").await;
    let (_, pod) = admit(&a, &sts_pod("db", 1)).await;
    assert_eq!(tor_values(&pod), [["t2"]]);
    attach(&a, "t2", "db-5", "c5").await;
    attach(&a, "t2", "db-6", "c6").await;
    let (r, pod) = admit(&a, &sts_pod("db", 1)).await;
    assert_eq!(tor_values(&pod), [["t1", "t2"]]);
    let w = r["warnings"][0].as_str().unwrap();
    assert!(
        w.contains("pool db has no free IP on its ToRs (t1, t2)"),
        "{w}"
    );
}

#[tokio::test]
async fn a_bound_pod_goes_back_to_its_tor_only() {
    let a = admission(&[], None).await;
    let key = attach(&a, "t2", "db-1", "c1").await;
    let released = a.ipam.release(&key, false).await.unwrap().unwrap();
    assert!(released.binding_kept);
    let (_, pod) = admit(&a, &sts_pod("db", 1)).await;
    assert_eq!(tor_values(&pod), [["t2"]]);
    // Another ordinal has no binding.
    let (_, pod) = admit(&a, &sts_pod("db", 2)).await;
    assert_eq!(tor_values(&pod), [["t1", "t2"]]);
}

#[tokio::test]
async fn a_pool_on_a_segment_maps_to_its_tor() {
    let a = admission(&[], None).await;
    let (_, pod) = admit(&a, &sts_pod("edge", 0)).await;
    assert_eq!(tor_values(&pod), [["t3"]]);
    // One ToR: nothing to spread over.
    assert!(spread_keys(&pod).is_empty());
}

#[tokio::test]
async fn pods_outside_moor_pools_pass_untouched() {
    let a = admission(&[], None).await;
    let (r, pod) = admit(&a, &sts_pod("other", 0)).await;
    assert_eq!(pod, sts_pod("other", 0));
    assert!(r.get("warnings").is_none(), "{r}");
    // Not a CREATE, not a Pod: allowed as they are.
    for op in ["UPDATE", "DELETE", "CONNECT"] {
        let out: Value =
            serde_json::from_slice(&a.review(&review(&sts_pod("db", 0), op)).await.unwrap())
                .unwrap();
        assert_eq!(
            out["response"],
            json!({"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": true}),
            "{op}"
        );
    }
    let mut body: Value = serde_json::from_slice(&review(&sts_pod("db", 0), "CREATE")).unwrap();
    body["request"]["kind"]["kind"] = "Binding".into();
    let out: Value =
        serde_json::from_slice(&a.review(&serde_json::to_vec(&body).unwrap()).await.unwrap())
            .unwrap();
    assert!(out["response"].get("patch").is_none());
    // A Job's pod without its own annotation: its CronJob is not known here.
    let mut job_pod = sts_pod("db", 0);
    job_pod["metadata"]["ownerReferences"][0]["kind"] = "Job".into();
    job_pod["metadata"]["ownerReferences"][0]["apiVersion"] = "batch/v1".into();
    job_pod["metadata"]["ownerReferences"][0]["name"] = "db".into();
    let (_, pod) = admit(&a, &job_pod).await;
    assert_eq!(pod, job_pod);
    // A DaemonSet's pod of pool db (its node is chosen already) and a pod
    // with spec.nodeName: no affinity could move them.
    let mut daemon = sts_pod("db", 0);
    daemon["metadata"]["ownerReferences"][0]["kind"] = "DaemonSet".into();
    daemon["metadata"]["annotations"] = json!({"moor.io/pool": "db"});
    let (_, pod) = admit(&a, &daemon).await;
    assert_eq!(pod, daemon);
    let mut placed = sts_pod("db", 0);
    placed["spec"]["nodeName"] = "n1".into();
    let (_, pod) = admit(&a, &placed).await;
    assert_eq!(pod, placed);
    let (_, pod) = admit(&a, &sts_pod("db", 0)).await;
    assert_ne!(pod, sts_pod("db", 0), "the same pod unplaced is steered");
}

#[tokio::test]
async fn the_pool_is_decided_as_the_node_agent_decides_it() {
    // A Deployment's pod (generateName only) of app `web`, which has no
    // pool: namespace shop's annotation names `edge`.
    let a = admission(&[("shop", "edge")], None).await;
    let web = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "web-5d8f7b9c4-", "namespace": "shop",
                     "labels": {"app": "web", "pod-template-hash": "5d8f7b9c4"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                        "name": "web-5d8f7b9c4", "uid": "u", "controller": true}]},
        "spec": {"containers": [{"name": "app", "image": "pause"}]},
    });
    let (_, pod) = admit(&a, &web).await;
    assert_eq!(tor_values(&pod), [["t3"]]);
    // Its workload's pool beats the namespace's: Deployment `db`'s pod.
    let mut db = web.clone();
    db["metadata"]["generateName"] = "db-5d8f7b9c4-".into();
    db["metadata"]["ownerReferences"][0]["name"] = "db-5d8f7b9c4".into();
    let (_, pod) = admit(&a, &db).await;
    assert_eq!(tor_values(&pod), [["t1", "t2"]]);
    // The pod's annotation beats both.
    db["metadata"]["annotations"] = json!({"moor.io/pool": "edge"});
    let (_, pod) = admit(&a, &db).await;
    assert_eq!(tor_values(&pod), [["t3"]]);
    // The default comes last.
    let a = admission(&[], Some("edge")).await;
    let (_, pod) = admit(&a, &web).await;
    assert_eq!(tor_values(&pod), [["t3"]]);
    let (_, pod) = admit(&a, &sts_pod("db", 0)).await;
    assert_eq!(tor_values(&pod), [["t1", "t2"]]);
}

#[tokio::test]
async fn a_pool_that_cannot_be_used_is_a_warning_not_a_patch() {
    let a = admission(&[], None).await;
    let mut p = sts_pod("db", 0);
    p["metadata"]["annotations"] = json!({"moor.io/pool": "nope"});
    let (r, pod) = admit(&a, &p).await;
    assert_eq!(pod, p);
    let w = r["warnings"][0].as_str().unwrap();
    assert!(
        w.starts_with("moor: no ToR affinity added: pool nope"),
        "{w}"
    );
    // A pool of another namespace that does not allow this one.
    let mut p = sts_pod("db", 0);
    p["metadata"]["namespace"] = "other".into();
    p["metadata"]["annotations"] = json!({"moor.io/pool": "db"});
    let mut body: Value = serde_json::from_slice(&review(&p, "CREATE")).unwrap();
    body["request"]["namespace"] = "other".into();
    let out: Value =
        serde_json::from_slice(&a.review(&serde_json::to_vec(&body).unwrap()).await.unwrap())
            .unwrap();
    assert!(out["response"].get("patch").is_none());
    let w = out["response"]["warnings"][0].as_str().unwrap();
    assert!(w.contains("does not allow pods of namespace other"), "{w}");
}

#[tokio::test]
async fn a_store_that_does_not_answer_is_a_warning_not_a_patch() {
    let store = Arc::new(MemStore::new());
    let a = admission_on(store.clone(), &[], None).await;
    store.set_down(true);
    let (r, pod) = admit(&a, &sts_pod("db", 0)).await;
    assert_eq!(pod, sts_pod("db", 0));
    let w = r["warnings"][0].as_str().unwrap();
    assert!(w.starts_with("moor: no ToR affinity added: "), "{w}");
    store.set_down(false);
    let (_, pod) = admit(&a, &sts_pod("db", 0)).await;
    assert_eq!(tor_values(&pod), [["t1", "t2"]]);
}

#[tokio::test]
async fn bodies_that_are_not_reviews_are_refused_with_the_reason() {
    let a = admission(&[], None).await;
    let good: Value = serde_json::from_slice(&review(&sts_pod("db", 0), "CREATE")).unwrap();
    let with = |path: &str, v: Value| {
        let mut b = good.clone();
        *b.pointer_mut(path).unwrap() = v;
        serde_json::to_vec(&b).unwrap()
    };
    let without = |key: &str| {
        let mut b = good.clone();
        b["request"].as_object_mut().unwrap().remove(key);
        serde_json::to_vec(&b).unwrap()
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"".to_vec(), "not an AdmissionReview in JSON"),
        (
            b"{\"apiVersion\": ".to_vec(),
            "not an AdmissionReview in JSON",
        ),
        (
            b"\xff\xfe garbage".to_vec(),
            "not an AdmissionReview in JSON",
        ),
        (b"[1, 2, 3]".to_vec(), "not an AdmissionReview in JSON"),
        (
            with("/apiVersion", "admission.k8s.io/v1beta1".into()),
            "admission.k8s.io/v1 only",
        ),
        (with("/kind", "Pod".into()), "admission.k8s.io/v1 only"),
        (with("/request", Value::Null), "has no request"),
        (with("/request/uid", "".into()), "request.uid is empty"),
        (
            with("/request/uid", 7.into()),
            "request is not an AdmissionRequest v1",
        ),
        (
            with("/request/kind", "Pod".into()),
            "request is not an AdmissionRequest v1",
        ),
        (
            with(
                "/request",
                json!(["uid-1", {"group": "", "version": "v1", "kind": "Pod"}]),
            ),
            "request and request.kind must be JSON objects",
        ),
        (
            with("/request/kind", json!(["", "v1", "Pod"])),
            "request and request.kind must be JSON objects",
        ),
        (
            without("kind"),
            "request and request.kind must be JSON objects",
        ),
        (without("object"), "request.object is missing"),
        (
            with("/request/object", json!("pod")),
            "request.object is not a v1 Pod",
        ),
        (
            with("/request/object/spec", json!({"containers": "x"})),
            "request.object is not a v1 Pod",
        ),
        (
            with("/request/object/metadata/labels", json!([1])),
            "request.object is not a v1 Pod",
        ),
    ];
    let mut nowhere = good.clone();
    nowhere["request"]["namespace"] = "".into();
    nowhere["request"]["object"]["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("namespace");
    let mut cases = cases;
    cases.push((
        serde_json::to_vec(&nowhere).unwrap(),
        "request.namespace is empty",
    ));
    for (body, expected) in cases {
        let e = a.review(&body).await.expect_err(expected);
        assert!(e.0.contains(expected), "{e} (wanted {expected})");
    }
}
