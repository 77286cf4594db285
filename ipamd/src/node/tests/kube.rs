//! With the Kubernetes API (a `FakeCluster`): the pod's controller, its
//! annotations and its namespace's decide the pool and the stickiness; the
//! node's label gives its ToR; failures become events; an API that does not
//! answer fails the ADD with "try again" and changes nothing.

use std::sync::Arc;

use crate::core::{IpState, OwnerRef, PodFacts, POOL_ANNOTATION};
use crate::error::cni_code;
use crate::ipam::PoolSpec;
use crate::kubernetes::fake::FakeCluster;

use super::*;

fn owner(api_version: &str, kind: &str, name: &str) -> Option<OwnerRef> {
    Some(OwnerRef {
        api_version: api_version.into(),
        kind: kind.into(),
        name: name.into(),
    })
}

/// A pod as the API has it: uid `uid-<name>` (what `Harness::req` sends).
fn facts(name: &str, controller: Option<OwnerRef>) -> PodFacts {
    PodFacts {
        namespace: "default".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        controller,
        ..Default::default()
    }
}

/// A ReplicaSet's pod of Deployment `deploy`.
fn deployment_pod(deploy: &str, name: &str) -> PodFacts {
    let mut p = facts(
        name,
        owner("apps/v1", "ReplicaSet", &format!("{deploy}-5d8f7b9c4")),
    );
    p.labels
        .insert("pod-template-hash".into(), "5d8f7b9c4".into());
    p
}

/// The harness's node with the API; `tor` None: the node has no --tor.
fn with_api(mut h: Harness, tor: Option<&str>) -> (Harness, Arc<FakeCluster>) {
    let api = Arc::new(FakeCluster::new());
    h.node = Node::new(
        NodeConfig {
            name: "n1".into(),
            tor: tor.unwrap_or_default().into(),
            pending_dir: h.dir.0.join("pending"),
            gc_grace: Duration::from_secs(GRACE),
            sticky_kinds: crate::core::pod::default_sticky_kinds(),
        },
        h.ipam.clone(),
        h.dp.clone(),
        None,
        h.clock.clone(),
    )
    .with_cluster(api.clone());
    (h, api)
}

async fn pool(h: &Harness, name: &str, namespace: &str, allow: &[&str]) {
    h.ipam
        .create_pool(
            &PoolSpec {
                name: name.into(),
                namespace: namespace.into(),
                app: name.into(),
                size: 2,
                tors: vec![],
                policy: Policy::Auto,
                allow_namespaces: allow.iter().map(|s| s.to_string()).collect(),
                ..PoolSpec::default()
            },
            0,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn the_controller_decides_the_pool_and_the_stickiness_not_the_name() {
    let (h, api) = with_api(Harness::new().await, Some("r1"));
    pool(&h, "cache", "default", &[]).await;
    // Named like a StatefulSet ordinal, but a Deployment's pod: pool `cache`,
    // and its IP goes back on DEL.
    api.put_pod(deployment_pod("cache", "cache-0"));
    let a = h.add("c1", "cache-0").await.unwrap();
    assert_eq!(a.lease.pool, "cache");
    assert!(a.lease.binding.is_none(), "not sticky");
    h.node.del("c1", "eth0").await.unwrap();
    assert!(h.lease("cache", a.lease.ip).await.is_none());
    // A StatefulSet's pod keeps its IP.
    api.put_pod(facts("db-0", owner("apps/v1", "StatefulSet", "db")));
    let d = h.add("c2", "db-0").await.unwrap();
    assert_eq!(d.lease.pool, "db");
    h.node.del("c2", "eth0").await.unwrap();
    assert_eq!(
        h.lease("db", d.lease.ip).await.unwrap().state(),
        IpState::Bound
    );
    // A name no rule parses still finds its Deployment's pool.
    api.put_pod(deployment_pod("web", "web.v2-odd"));
    assert_eq!(h.add("c3", "web.v2-odd").await.unwrap().lease.pool, "web");
    h.clean().await;
}

/// A workload's pods may be scheduled before the controller made the pool
/// the workload declares: their ADD is "try again" (code 11), saying what
/// is missing, and succeeds once the pool exists. A bare pod, which no
/// controller makes a pool for, gets "no pool".
#[tokio::test]
async fn an_add_before_the_declared_pool_exists_is_try_again() {
    let (h, api) = with_api(Harness::new().await, Some("r1"));
    api.put_pod(facts("pg-0", owner("apps/v1", "StatefulSet", "pg")));
    let e = h.add("c1", "pg-0").await.unwrap_err();
    assert_eq!(e.cni_code(), cni_code::TRY_AGAIN_LATER, "{e}");
    let msg = e.to_string();
    for want in ["no pool for app default/pg", "moor.io/pool-size", "retry"] {
        assert!(msg.contains(want), "{want:?} missing from {msg}");
    }
    api.put_pod(facts("lone", None));
    let e = h.add("c2", "lone").await.unwrap_err();
    assert_eq!(e.cni_code(), cni_code::NO_POOL, "{e}");
    pool(&h, "pg", "default", &[]).await;
    assert_eq!(h.add("c1", "pg-0").await.unwrap().lease.pool, "pg");
    h.clean().await;
}

#[tokio::test]
async fn a_cronjobs_pods_draw_from_the_cronjobs_pool() {
    let (h, api) = with_api(Harness::new().await, Some("r1"));
    pool(&h, "report", "default", &[]).await;
    let mut p = facts("report-2891-x7k2p", owner("batch/v1", "Job", "report-2891"));
    p.job_controller = owner("batch/v1", "CronJob", "report");
    api.put_pod(p);
    let a = h.add("c1", "report-2891-x7k2p").await.unwrap();
    assert_eq!(a.lease.pool, "report");
    assert!(a.lease.binding.is_none());
}

#[tokio::test]
async fn pools_are_chosen_in_order_annotation_workload_namespace_default() {
    let (h, api) = with_api(Harness::new().await, Some("r1"));
    pool(&h, "other", "default", &[]).await;
    let req = |cid: &str, pod: &str| {
        let mut r = h.req(cid, pod);
        r.default_pool = Some("db".into());
        r
    };
    // No annotation, no pool for its workload (`lone`): the config default.
    api.put_pod(deployment_pod("lone", "lone-a"));
    let a = h.node.add(&req("c1", "lone-a")).await.unwrap();
    assert_eq!(a.lease.pool, "db", "the config's pool is the last default");
    // The namespace's annotation beats the default.
    api.set_namespace_pool("default", "other");
    let a = h.node.add(&req("c2", "lone-b")).await.unwrap_err();
    assert_eq!(
        a.cni_code(),
        cni_code::TRY_AGAIN_LATER,
        "lone-b is not in the API"
    );
    api.put_pod(deployment_pod("lone", "lone-b"));
    assert_eq!(
        h.node.add(&req("c2", "lone-b")).await.unwrap().lease.pool,
        "other"
    );
    // A workload with a pool of its own beats the namespace's annotation.
    api.put_pod(deployment_pod("web", "web-a"));
    assert_eq!(
        h.node.add(&req("c3", "web-a")).await.unwrap().lease.pool,
        "web"
    );
    // The pod's own annotation beats its workload's pool.
    let mut p = deployment_pod("web", "web-b");
    p.annotations.insert(POOL_ANNOTATION.into(), "other".into());
    api.put_pod(p);
    assert_eq!(
        h.node.add(&req("c4", "web-b")).await.unwrap().lease.pool,
        "other"
    );
    // MOOR_POOL beats them all.
    let mut p = deployment_pod("web", "web-c");
    p.annotations.insert(POOL_ANNOTATION.into(), "other".into());
    api.put_pod(p);
    let mut r = req("c5", "web-c");
    r.pool = Some("db".into());
    assert_eq!(h.node.add(&r).await.unwrap().lease.pool, "db");
    h.clean().await;
}

#[tokio::test]
async fn a_pod_may_name_another_namespaces_pool_only_when_it_allows() {
    let (h, api) = with_api(Harness::new().await, Some("r1"));
    pool(&h, "shared", "infra", &[]).await;
    let mut p = deployment_pod("app", "app-a");
    p.annotations
        .insert(POOL_ANNOTATION.into(), "shared".into());
    api.put_pod(p);
    let e = h.add("c1", "app-a").await.unwrap_err();
    assert_eq!(e.cni_code(), cni_code::POOL_NOT_ALLOWED);
    let msg = e.to_string();
    for want in [
        "pool shared",
        "namespace infra",
        "pods of namespace default",
        "--allow-namespace default",
    ] {
        assert!(msg.contains(want), "{want:?} in {msg}");
    }
    assert!(
        h.ipam.leases("shared").await.unwrap().is_empty(),
        "nothing allocated"
    );
    assert!(h.dp.calls().is_empty(), "nothing wired");
    // The namespace's annotation is held to the same rule.
    api.put_pod(deployment_pod("app", "app-b"));
    api.set_namespace_pool("default", "shared");
    let e = h.add("c2", "app-b").await.unwrap_err();
    assert_eq!(e.cni_code(), cni_code::POOL_NOT_ALLOWED);
    // A pool that allows the namespace (or every one) serves it.
    pool(&h, "open", "infra", &["default"]).await;
    pool(&h, "any", "infra", &["*"]).await;
    for (cid, name, pool) in [("c3", "app-c", "open"), ("c4", "app-d", "any")] {
        let mut p = deployment_pod("app", name);
        p.annotations.insert(POOL_ANNOTATION.into(), pool.into());
        api.put_pod(p);
        assert_eq!(h.add(cid, name).await.unwrap().lease.pool, pool);
    }
    h.clean().await;
}

#[tokio::test]
async fn an_api_that_does_not_answer_fails_the_add_with_try_again_and_changes_nothing() {
    let (h, api) = with_api(Harness::new().await, Some("r1"));
    api.set_down(true);
    let e = h.add("c1", WEB_POD).await.unwrap_err();
    assert_eq!(e.cni_code(), cni_code::TRY_AGAIN_LATER);
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("pod default/{WEB_POD}")),
        "names the pod: {msg}"
    );
    assert!(msg.contains("nothing was allocated"), "{msg}");
    assert!(h.ipam.leases("web").await.unwrap().is_empty());
    assert!(h.dp.calls().is_empty());
    // The failure is an event on the pod.
    let ev = api.events();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(
        (ev[0].0.as_str(), ev[0].1.as_str()),
        (WEB_POD, "MoorTryAgain")
    );
    assert_eq!(ev[0].2, msg);
    // A pod the API has never heard of is "try again" too, not a guess.
    api.set_down(false);
    let e = h.add("c2", "ghost-0").await.unwrap_err();
    assert_eq!(e.cni_code(), cni_code::TRY_AGAIN_LATER);
    assert!(
        e.to_string().contains("not known to the Kubernetes API"),
        "{e}"
    );
    // Another incarnation (uid) of the pod is not this one.
    let mut old = deployment_pod("web", WEB_POD);
    old.uid = "uid-old".into();
    api.put_pod(old);
    assert!(h.add("c3", WEB_POD).await.is_err());
    api.put_pod(deployment_pod("web", WEB_POD));
    h.add("c3", WEB_POD).await.unwrap();
}

#[tokio::test]
async fn the_nodes_label_gives_its_tor_and_status_says_how_to_fix_a_missing_one() {
    let (h, api) = with_api(Harness::new().await, None);
    api.put_pod(facts("db-0", owner("apps/v1", "StatefulSet", "db")));
    let s = h.node.status().await;
    assert!(!s.ready);
    assert!(
        s.reason.contains("kubectl label node n1 moor.io/tor="),
        "{}",
        s.reason
    );
    let e = h.add("c1", "db-0").await.unwrap_err();
    assert_eq!(e.cni_code(), cni_code::TOR_UNDEFINED);
    assert!(
        e.to_string().contains("kubectl label node n1 moor.io/tor="),
        "{e}"
    );
    assert!(h.ipam.leases("db").await.unwrap().is_empty());
    api.set_tor(Some("r1"));
    let s = h.node.status().await;
    assert!(s.ready, "{s:?}");
    assert_eq!(s.tor, "r1");
    assert_eq!(h.add("c1", "db-0").await.unwrap().tor.name, "r1");
}

#[tokio::test]
async fn a_full_pool_is_an_event_with_moors_message() {
    let (h, api) = with_api(Harness::new().await, Some("r1"));
    pool(&h, "tiny", "default", &[]).await;
    for (cid, name) in [("c1", "tiny-a"), ("c2", "tiny-b"), ("c3", "tiny-c")] {
        api.put_pod(deployment_pod("tiny", name));
        let r = h.add(cid, name).await;
        if cid == "c3" {
            let e = r.unwrap_err();
            assert_eq!(e.cni_code(), cni_code::POOL_FULL);
            let ev = api.events();
            assert_eq!(ev.len(), 1, "{ev:?}");
            assert_eq!(
                ev[0],
                (
                    "tiny-c".to_string(),
                    "MoorPoolFull".to_string(),
                    e.to_string()
                )
            );
        } else {
            r.unwrap();
        }
    }
}

/// During a store outage a pod restarts on its cached binding only if the
/// store would give it that IP: a pod whose annotation now names another
/// pool is refused online (its binding is in another pool), so it is
/// refused offline too, not silently given the other pool's IP.
#[tokio::test]
async fn an_outage_restart_honours_the_pods_pool_annotation() {
    let (mut h, api) = with_api(Harness::new().await, Some("r1"));
    let mirror = Mirror::open(&h.dir.0.join("api-mirror.redb")).unwrap();
    h.node.mirror = Some(mirror);
    api.put_pod(facts("db-0", owner("apps/v1", "StatefulSet", "db")));
    let first = h.add("c1", "db-0").await.unwrap();
    assert_eq!(first.lease.pool, "db");
    h.node.del("c1", "eth0").await.unwrap();
    // The pod comes back naming pool web.
    let mut p = facts("db-0", owner("apps/v1", "StatefulSet", "db"));
    p.annotations.insert(POOL_ANNOTATION.into(), "web".into());
    api.put_pod(p);
    let online = h.add("c2", "db-0").await.unwrap_err();
    assert_eq!(online.cni_code(), cni_code::OTHER_POOL, "{online}");
    h.store.set_down(true);
    let offline = h.add("c3", "db-0").await;
    assert!(
        offline.is_err(),
        "served pool db's {} offline though the pod names pool web",
        first.lease.ip
    );
    assert_eq!(offline.unwrap_err().cni_code(), cni_code::TRY_AGAIN_LATER);
    assert!(!h.dp.is_wired(&Harness::host("c3")));
}

#[tokio::test]
async fn a_repeated_add_needs_no_api() {
    let (h, api) = with_api(Harness::new().await, Some("r1"));
    api.put_pod(facts("db-0", owner("apps/v1", "StatefulSet", "db")));
    let first = h.add("c1", "db-0").await.unwrap();
    api.set_down(true);
    let again = h.add("c1", "db-0").await.unwrap();
    assert_eq!(again.lease.ip, first.lease.ip);
    assert!(again.wired.is_none(), "the same attachment, checked");
    // A new pod still needs the API.
    let e = h.add("c2", "db-1").await.unwrap_err();
    assert_eq!(e.cni_code(), cni_code::TRY_AGAIN_LATER);
}
