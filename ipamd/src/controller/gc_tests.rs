//! The collector against testkit's fake API server and an in-memory store,
//! in process, on a manual clock: what a pass releases, only while leading,
//! with an Event per release.

use std::sync::Arc;
use std::time::Duration;

use moor_testkit::kubeapi::{objects, FakeApi, Resource};
use moor_testkit::TempDir;
use tokio::time::Instant;

use super::*;
use crate::clock::ManualClock;
use crate::ipam::registry::NodeRecord;
use crate::ipam::{AllocRequest, PoolSpec};
use crate::kubernetes::events::{Events, CONTROLLER_COMPONENT};
use crate::store::mem::MemStore;

const T0: u64 = 1_700_000_000;
const GRACE: u64 = 2;

/// The collector over `ipam`, reading the fake API `api`; grace `GRACE`.
async fn collector(
    api: &FakeApi,
    ipam: &Arc<Ipam>,
    leadership: &Leadership,
    clock: &Arc<ManualClock>,
) -> Collector {
    let client = client(api).await;
    Collector {
        ipam: ipam.clone(),
        cluster: Arc::new(ClusterCache::start(client.clone())),
        workloads: Arc::new(Workloads::start(client.clone())),
        leadership: leadership.clone(),
        clock: clock.clone(),
        events: Arc::new(Events::start(
            client,
            CONTROLLER_COMPONENT,
            "c1_test".into(),
            clock.clone(),
            Duration::from_secs(1),
        )),
        grace: Duration::from_secs(GRACE),
        auto: true,
        resync: Duration::from_secs(30),
        clocks: Default::default(),
    }
}

async fn client(api: &FakeApi) -> kube::Client {
    let dir = TempDir::new("gc");
    crate::kubernetes::client(Some(&api.write_kubeconfig(dir.path())))
        .await
        .unwrap()
        .unwrap()
}

async fn beat(ipam: &Ipam, node: &str, at: u64) {
    let rec = NodeRecord {
        name: node.into(),
        tor: "t1".into(),
        mode: "physical".into(),
        version: "test".into(),
        started_unix: at,
        heartbeat_unix: at,
    };
    registry::beat(ipam.store().as_ref(), &rec).await.unwrap();
}

/// Waits (bounded) until the caches see `cond`.
async fn settle(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "the caches never saw: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// (kind, IP, done) of each outcome.
fn summary(c: &Collection) -> Vec<(&'static str, String, bool)> {
    c.outcomes
        .iter()
        .map(|o| (o.release.kind(), o.release.ip.to_string(), o.done))
        .collect()
}

#[tokio::test]
async fn releases_what_kubernetes_no_longer_has_only_while_leading() {
    let api = FakeApi::start();
    let ipam = Arc::new(Ipam::new(Arc::new(MemStore::new())));
    let range = [("10.1.0.10".to_string(), "10.1.0.19".to_string())];
    ipam.add_tor("t1", "10.1.0.0/24", "10.1.0.1", 0, &range, "")
        .await
        .unwrap();
    let spec = PoolSpec {
        name: "default-db".into(),
        namespace: "default".into(),
        app: "db".into(),
        size: 4,
        ..Default::default()
    };
    ipam.create_pool(&spec, 0).await.unwrap();
    // db-0 runs on n1; db-1 was scaled away (bound, not attached).
    let mut run0 = AllocRequest::for_test("n1", "t1", "c0", "db-0", T0);
    run0.pod.uid = "u0".into();
    let ip0 = ipam.allocate(&run0).await.unwrap().lease.ip;
    let run1 = AllocRequest::for_test("n1", "t1", "c1", "db-1", T0);
    let ip1 = ipam.allocate(&run1).await.unwrap().lease.ip;
    ipam.release(&run1.key, false).await.unwrap();
    beat(&ipam, "n1", T0).await;
    api.create(objects::node("n1"));
    api.create(objects::statefulset("default", "db", 1));
    api.create(
        objects::statefulset_pod("default", "db", 0)
            .uid("u0")
            .node("n1"),
    );

    let clock = Arc::new(ManualClock::new(T0));
    let leadership = Leadership::new();
    let gc = collector(&api, &ipam, &leadership, &clock).await;
    assert_eq!(gc.period(), Duration::from_secs(1));
    settle("db's pod, StatefulSet and node", || {
        gc.cluster.pods().len() == 1
            && gc.cluster.nodes().len() == 1
            && gc.workloads.all().len() == 1
    })
    .await;

    // Scaled down: nothing to release, however long.
    clock.advance(10 * GRACE);
    beat(&ipam, "n1", clock.now_unix()).await;
    assert!(gc.collect(true, false).await.unwrap().outcomes.is_empty());

    // The StatefulSet goes (orphaning): db-0 lives on, db-1's clock starts.
    api.delete(Resource::StatefulSets, "default", "db");
    settle("the StatefulSet is gone", || gc.workloads.all().is_empty()).await;
    assert!(gc.collect(false, false).await.unwrap().outcomes.is_empty());
    clock.advance(GRACE);
    beat(&ipam, "n1", clock.now_unix()).await;

    // Not leading: `ipamctl gc` is refused; the loop's pass only watches.
    let e = gc.collect(true, true).await.unwrap_err().to_string();
    assert!(e.contains("does not hold the controller Lease"), "{e}");
    let watched = gc.collect(false, false).await.unwrap();
    assert_eq!(summary(&watched), [("binding", ip1.to_string(), false)]);
    assert!(watched.outcomes[0]
        .why
        .contains("no StatefulSet default/db"));
    assert_eq!(ipam.bindings(None).await.unwrap().len(), 2);

    // Leading: the dry run lists it, the real run releases it.
    leadership.extend(Instant::now(), Duration::from_secs(60));
    let dry = gc.collect(true, true).await.unwrap();
    assert_eq!(summary(&dry), [("binding", ip1.to_string(), false)]);
    assert_eq!(ipam.bindings(None).await.unwrap().len(), 2);
    let done = gc.collect(false, true).await.unwrap();
    assert_eq!(summary(&done), [("binding", ip1.to_string(), true)]);
    assert!(ipam.ip(ip1).await.unwrap().lease.is_none(), "{ip1} is free");
    settle("the binding's Event", || {
        api.objects(Resource::Events).iter().any(|e| {
            e["reason"] == "MoorBindingReleased"
                && e["involvedObject"]["name"] == "db-1"
                && e["reportingComponent"] == "moor-controller"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(&ip1.to_string()))
        })
    })
    .await;
    assert!(gc.collect(true, true).await.unwrap().outcomes.is_empty());

    // The StatefulSet is back; n1 dies: its Node is deleted, its pods with
    // it, its agent is silent.
    api.create(objects::statefulset("default", "db", 1));
    api.delete(Resource::Nodes, "", "n1");
    api.delete(Resource::Pods, "default", "db-0");
    settle("n1 and db-0 are gone, db is back", || {
        gc.cluster.nodes().is_empty()
            && gc.cluster.pods().is_empty()
            && gc.workloads.all().len() == 1
    })
    .await;
    let silent = gc.collect(true, true).await.unwrap();
    assert!(
        silent.outcomes.is_empty(),
        "n1's agent still counts as alive"
    );
    clock.advance(registry::ALIVE_WITHIN);
    let done = gc.collect(false, true).await.unwrap();
    assert_eq!(summary(&done), [("attachment", ip0.to_string(), true)]);
    let after = ipam.ip(ip0).await.unwrap().lease.unwrap();
    assert!(after.attachment.is_none() && after.binding.is_some());
    // The StatefulSet goes for good and the fence closes: nothing more is
    // released, though db-0's binding is due.
    api.delete(Resource::StatefulSets, "default", "db");
    settle("the StatefulSet is gone", || gc.workloads.all().is_empty()).await;
    assert!(gc.collect(false, true).await.unwrap().outcomes.is_empty());
    leadership.end();
    clock.advance(GRACE);
    let fenced = gc.collect(false, false).await.unwrap();
    assert_eq!(summary(&fenced), [("binding", ip0.to_string(), false)]);
    assert!(ipam.ip(ip0).await.unwrap().lease.is_some());
}

/// Records that do not decode (issue 15) keep what they may hold out of
/// the pass and stop nothing else.
#[tokio::test]
async fn records_that_do_not_decode_hold_back_only_what_they_may_hold() {
    use crate::store::{Op, Store, Txn};
    let api = FakeApi::start();
    let store = Arc::new(MemStore::new());
    let ipam = Arc::new(Ipam::new(store.clone()));
    let range = [("10.1.0.10".to_string(), "10.1.0.19".to_string())];
    ipam.add_tor("t1", "10.1.0.0/24", "10.1.0.1", 0, &range, "")
        .await
        .unwrap();
    for (name, app) in [("default-db", "db"), ("default-web", "web")] {
        let spec = PoolSpec {
            name: name.into(),
            namespace: "default".into(),
            app: app.into(),
            size: 2,
            ..Default::default()
        };
        ipam.create_pool(&spec, 0).await.unwrap();
    }
    // db-0 is attached on n2, whose record is damaged; db-1 is bound only;
    // web-0 is bound in pool web, whose record is damaged. No StatefulSet,
    // pod or node exists in Kubernetes: all three are due.
    let ip0 = ipam
        .allocate(&AllocRequest::for_test("n2", "t1", "c0", "db-0", T0))
        .await
        .unwrap()
        .lease
        .ip;
    let run1 = AllocRequest::for_test("n1", "t1", "c1", "db-1", T0);
    let ip1 = ipam.allocate(&run1).await.unwrap().lease.ip;
    ipam.release(&run1.key, false).await.unwrap();
    let web = AllocRequest::for_test("n1", "t1", "c2", "web-0", T0);
    let ipw = ipam.allocate(&web).await.unwrap().lease.ip;
    ipam.release(&web.key, false).await.unwrap();
    beat(&ipam, "n2", T0).await;
    let mut t = Txn::default();
    for key in ["nodes/n2", "pools/default-web"] {
        t.ops.push(Op::Put {
            key: key.into(),
            value: b"{\"cut".to_vec(),
        });
    }
    assert!(store.commit(t).await.unwrap());

    let clock = Arc::new(ManualClock::new(T0));
    let leadership = Leadership::new();
    leadership.extend(Instant::now(), Duration::from_secs(60));
    let gc = collector(&api, &ipam, &leadership, &clock).await;
    gc.collect(false, true).await.unwrap();
    clock.advance(registry::ALIVE_WITHIN + GRACE);
    let done = gc.collect(false, true).await.unwrap();
    assert_eq!(summary(&done), [("binding", ip1.to_string(), true)]);
    assert!(
        ipam.ip(ip0).await.unwrap().lease.is_some(),
        "db-0 on n2 kept"
    );
    let web_binding = store.get("bindings/default/web-0").await.unwrap();
    assert!(web_binding.is_some(), "web-0's binding ({ipw}) kept");
}
