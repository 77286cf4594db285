//! The pools loop in process, against testkit's fake API server and the
//! in-memory store, one pass at a time, on a clock that moves when told.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use moor_testkit::kubeapi::{objects, FakeApi, Resource};
use serde_json::Value;
use tokio::time::Instant;

use super::{client, fake_api};
use crate::clock::ManualClock;
use crate::controller::*;
use crate::core::{Cooling, POOL_ANNOTATION};
use crate::ipam::{AllocRequest, Ipam, PoolChoice};
use crate::kubernetes::configmaps::{ConfigMaps, IPS_KEY};
use crate::kubernetes::events::{Events, CONTROLLER_COMPONENT};
use crate::kubernetes::workloads::Workloads;
use crate::store::mem::MemStore;
use crate::store::{keys, StoreExt};

const COOLDOWN: u64 = 600;
const T0: u64 = 1_700_000_000;

struct Loop {
    api: FakeApi,
    store: Arc<MemStore>,
    ipam: Arc<Ipam>,
    clock: Arc<ManualClock>,
    workloads: Arc<Workloads>,
    leadership: Leadership,
    pools: DeclaredPools,
    mem: Memory,
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// ToRs t1 (10.1.0.10-29) and t2 (10.2.0.10-29), namespace shop; this
/// replica leads.
async fn setup() -> Loop {
    let api = fake_api();
    api.create(objects::namespace("shop"));
    let store = Arc::new(MemStore::new());
    let ipam = Arc::new(Ipam::new(store.clone()).with_cooldown(COOLDOWN));
    for (t, net) in [("t1", "10.1.0"), ("t2", "10.2.0")] {
        let range = [(format!("{net}.10"), format!("{net}.29"))];
        ipam.add_tor(
            t,
            &format!("{net}.0/24"),
            &format!("{net}.1"),
            0,
            &range,
            "",
        )
        .await
        .unwrap();
    }
    let c = client(&api).await;
    let clock = Arc::new(ManualClock::new(T0));
    let workloads = Arc::new(Workloads::start(c.clone()));
    let leadership = Leadership::new();
    let events = Events::start(
        c.clone(),
        CONTROLLER_COMPONENT,
        "test".into(),
        clock.clone(),
        Duration::from_secs(1),
    );
    let pools = DeclaredPools {
        ipam: ipam.clone(),
        workloads: workloads.clone(),
        leadership: leadership.clone(),
        configmaps: ConfigMaps::new(c),
        events: Arc::new(events),
        clock: clock.clone(),
        resync: Duration::from_secs(30),
    };
    assert!(workloads.wait_ready(Duration::from_secs(5)).await);
    leadership.extend(Instant::now(), Duration::from_secs(600));
    Loop {
        api,
        store,
        ipam,
        clock,
        workloads,
        leadership,
        pools,
        mem: Memory::default(),
    }
}

impl Loop {
    /// Waits until the caches hold `n` workloads and `check` holds.
    async fn settle(
        &self,
        n: usize,
        check: impl Fn(&[crate::kubernetes::workloads::Workload]) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let all = self.workloads.all();
            if all.len() == n && check(&all) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cache never showed it: {all:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn pass(&mut self) -> Pass {
        self.pools.pass(&mut self.mem).await.unwrap()
    }

    fn configmap(&self, pool: &str) -> Option<Value> {
        self.api
            .get(Resource::ConfigMaps, "shop", &format!("moor-pool-{pool}"))
    }

    fn published(&self, pool: &str) -> Vec<IpAddr> {
        let cm = self.configmap(pool).expect("the ConfigMap exists");
        cm["data"][IPS_KEY]
            .as_str()
            .unwrap()
            .lines()
            .map(ip)
            .collect()
    }

    /// Waits for the Event of `reason` on `name`; returns its message.
    async fn event(&self, name: &str, reason: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found = self
                .api
                .objects(Resource::Events)
                .into_iter()
                .find(|e| e["involvedObject"]["name"] == name && e["reason"] == reason);
            if let Some(e) = found {
                assert_eq!(e["source"]["component"], CONTROLLER_COMPONENT);
                return e["message"].as_str().unwrap().to_string();
            }
            assert!(Instant::now() < deadline, "no {reason} Event on {name}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn cooling(&self, tor: &str) -> Vec<IpAddr> {
        let c = self
            .store
            .get_json::<Cooling>(&keys::cooling(tor))
            .await
            .unwrap()
            .map(|(c, _)| c)
            .unwrap_or_default();
        c.until.keys().copied().collect()
    }

    /// An ADD of pod `name` (StatefulSet-like names keep their IP).
    fn add(&self, cid: &str, name: &str, tor: &str) -> AllocRequest {
        let mut r = AllocRequest::for_test("n1", tor, cid, name, self.clock.now());
        r.pod.namespace = "shop".into();
        let (choice, stable) = PoolChoice::by_name(&r.pod, None);
        r.choice = choice;
        r.stable = stable;
        r
    }
}

trait Now {
    fn now(&self) -> u64;
}

impl Now for ManualClock {
    fn now(&self) -> u64 {
        crate::clock::Clock::now_unix(self)
    }
}

#[tokio::test]
async fn declared_pools_are_created_only_while_leading() {
    let mut l = setup().await;
    l.leadership.end();
    l.api
        .create(objects::statefulset("shop", "db", 3).annotation(POOL_SIZE_ANNOTATION, "5"));
    l.api.create(objects::deployment("shop", "web", 2));
    l.api
        .create(objects::deployment("shop", "bad", 2).annotation(POOL_SIZE_ANNOTATION, "lots"));
    l.settle(3, |_| true).await;

    let pass = l.pass().await;
    assert!(pass.fenced && pass.created.is_empty());
    assert!(
        l.ipam.pools().await.unwrap().is_empty(),
        "no writes unless leading"
    );
    assert!(l.configmap("shop-db").is_none());

    l.leadership.extend(Instant::now(), Duration::from_secs(10));
    let pass = l.pass().await;
    assert_eq!(pass.created, ["shop-db"]);
    assert_eq!(pass.published, ["shop-db"]);
    let (pool, _) = l.ipam.pool("shop-db").await.unwrap();
    assert_eq!((pool.namespace.as_str(), pool.app.as_str()), ("shop", "db"));
    assert_eq!(pool.size(), 5);
    let bad = l.event("bad", "MoorPoolInvalid").await;
    assert!(
        bad.contains("Deployment shop/bad") && bad.contains("lots"),
        "{bad}"
    );
    // Idempotent: the app has its pool, the ConfigMap says it.
    let again = l.pass().await;
    assert!(
        again.created.is_empty() && again.published.is_empty(),
        "{again:?}"
    );

    l.leadership.end();
    l.api
        .create(objects::statefulset("shop", "cache", 1).annotation(POOL_SIZE_ANNOTATION, "2"));
    l.settle(4, |_| true).await;
    assert!(l.pass().await.fenced);
    assert!(l.ipam.pool("shop-cache").await.is_err());
}

#[tokio::test]
async fn the_pool_follows_its_workload_and_publishes_its_ips() {
    let mut l = setup().await;
    let sts = l.api.create(
        objects::statefulset("shop", "db", 3)
            .annotation(POOL_SIZE_ANNOTATION, "5")
            .annotation(TORS_ANNOTATION, "t1,t2"),
    );
    l.settle(1, |_| true).await;
    assert_eq!(l.pass().await.created, ["shop-db"]);
    let (pool, _) = l.ipam.pool("shop-db").await.unwrap();
    assert_eq!(pool.size(), 5, "the annotation, above the 3 replicas");
    assert!(
        !pool.ips["t1"].is_empty() && !pool.ips["t2"].is_empty(),
        "{pool:?}"
    );
    assert_eq!(l.published("shop-db"), pool.all_ips());
    let cm = l.configmap("shop-db").unwrap();
    let owner = &cm["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "StatefulSet");
    assert_eq!(owner["uid"], sts["metadata"]["uid"]);
    assert_eq!(
        cm["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "moor"
    );
    let made = l.event("db", "MoorPoolCreated").await;
    assert!(made.contains("pool shop-db of 5 IPs"), "{made}");

    // More replicas: the pool grows, the ConfigMap follows.
    l.api.modify(Resource::StatefulSets, "shop", "db", |o| {
        o["spec"]["replicas"] = 8.into()
    });
    l.settle(1, |w| {
        w[0].replicas == crate::kubernetes::workloads::Replicas::Fixed(8)
    })
    .await;
    let pass = l.pass().await;
    assert_eq!(
        (pass.resized.as_slice(), pass.published.as_slice()),
        (&["shop-db".to_string()][..], &["shop-db".to_string()][..])
    );
    let (pool, _) = l.ipam.pool("shop-db").await.unwrap();
    assert_eq!(pool.size(), 8);
    assert_eq!(l.published("shop-db"), pool.all_ips());
    assert!(l
        .event("db", "MoorPoolGrown")
        .await
        .contains("from 5 to 8 IPs"));

    // db-0 runs; then both shrink to 2: the pool gives back all it can
    // and those IPs cool down.
    let db0 = l.ipam.allocate(&l.add("c0", "db-0", "t1")).await.unwrap();
    l.api.modify(Resource::StatefulSets, "shop", "db", |o| {
        o["spec"]["replicas"] = 2.into();
        o["metadata"]["annotations"][POOL_SIZE_ANNOTATION] = "2".into();
    });
    l.settle(1, |w| {
        w[0].replicas == crate::kubernetes::workloads::Replicas::Fixed(2)
    })
    .await;
    l.pass().await;
    let (pool, _) = l.ipam.pool("shop-db").await.unwrap();
    assert_eq!(pool.size(), 2);
    assert!(
        pool.all_ips().contains(&db0.lease.ip),
        "the IP in use stays"
    );
    assert_eq!(l.published("shop-db"), pool.all_ips());
    let shrunk = l.event("db", "MoorPoolShrunk").await;
    assert!(
        shrunk.contains("from 8 to 2 IPs") && shrunk.contains("cool down for 600 s"),
        "{shrunk}"
    );
    let mut cooling = l.cooling("t1").await;
    cooling.extend(l.cooling("t2").await);
    assert_eq!(cooling.len(), 6, "{cooling:?}");
    let findings = crate::audit::audit(l.store.as_ref()).await.unwrap();
    assert!(findings.is_empty(), "{findings:#?}");
}

#[tokio::test]
async fn a_gone_workloads_pool_is_deleted_once_its_ips_are_free_and_they_cool_down() {
    let mut l = setup().await;
    // 2 replicas and the default surge of 25%: 3 pods at most.
    l.api
        .create(objects::deployment("shop", "web", 2).annotation(POOL_SIZE_ANNOTATION, "1"));
    l.api.create(
        objects::statefulset("shop", "kept", 1)
            .annotation(POOL_SIZE_ANNOTATION, "1")
            .annotation(RETAIN_ANNOTATION, "true"),
    );
    l.settle(2, |_| true).await;
    l.pass().await;
    let (web, _) = l.ipam.pool("shop-web").await.unwrap();
    assert_eq!(web.size(), 3);
    assert!(l.configmap("shop-web").is_some());
    let pod = l
        .ipam
        .allocate(&l.add(
            "c1",
            "web-5c5b7d9d8f-x2x9z",
            &web.ips.keys().next().unwrap().clone(),
        ))
        .await
        .unwrap();

    l.api.delete(Resource::Deployments, "shop", "web");
    l.api.delete(Resource::StatefulSets, "shop", "kept");
    l.settle(0, |_| true).await;
    // Its pod still holds an IP: the pool waits.
    assert!(l.pass().await.deleted.is_empty());
    assert!(l.ipam.pool("shop-web").await.is_ok());
    l.ipam.release(&pod.attachment().key, false).await.unwrap();
    assert_eq!(l.pass().await.deleted, ["shop-web"]);
    assert!(l.ipam.pool("shop-web").await.is_err());
    // The workloads went without their dependents (as after `kubectl delete
    // --cascade=orphan`): the whitelist goes with the pool all the same,
    // and the retained pool keeps its own.
    assert!(l.configmap("shop-web").is_none());
    assert!(l.configmap("shop-kept").is_some());
    assert!(
        l.ipam.pool("shop-kept").await.is_ok(),
        "moor.io/retain keeps it"
    );
    let gone = l.event("web", "MoorPoolDeleted").await;
    assert!(
        gone.contains("Deployment shop/web is gone") && gone.contains("cool down for 600 s"),
        "{gone}"
    );

    // Its IPs are carved by no pool until the cool-down ends.
    let mut taken = web.all_ips();
    taken.sort();
    let ask = |n: u32| crate::ipam::PoolSpec {
        name: "next".into(),
        namespace: "shop".into(),
        app: "next".into(),
        size: n,
        ..Default::default()
    };
    // 40 IPs: 3 cool down, 1 is kept's, 36 may be carved.
    let at_once = Ipam::new(l.store.clone()).with_cooldown(0);
    let next = at_once.create_pool(&ask(36), l.clock.now()).await.unwrap();
    assert!(
        next.all_ips().iter().all(|ip| !taken.contains(ip)),
        "{next:?}"
    );
    at_once.delete_pool("next", l.clock.now()).await.unwrap();
    l.clock.advance(COOLDOWN - 1);
    let e = at_once
        .create_pool(&ask(39), l.clock.now())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("cool down"), "{e}");
    l.clock.advance(1);
    let next = at_once.create_pool(&ask(39), l.clock.now()).await.unwrap();
    assert!(taken.iter().all(|ip| next.all_ips().contains(ip)));
}

#[tokio::test]
async fn explicit_ips_go_to_the_ordinals_and_bad_ones_are_refused_with_an_event() {
    let mut l = setup().await;
    l.api.create(
        objects::statefulset("shop", "db", 2).annotation(IPS_ANNOTATION, "10.1.0.20,10.1.0.12"),
    );
    l.settle(1, |_| true).await;
    assert_eq!(l.pass().await.created, ["shop-db"]);
    l.api
        .create(objects::statefulset("shop", "far", 1).annotation(IPS_ANNOTATION, "10.1.0.99"));
    l.api.create(
        objects::statefulset("shop", "taken", 1).annotation(IPS_ANNOTATION, "10.1.0.13,10.1.0.20"),
    );
    l.settle(3, |_| true).await;
    let pass = l.pass().await;
    assert!(pass.created.is_empty(), "{pass:?}");
    for (n, want) in [(0, "10.1.0.20"), (1, "10.1.0.12")] {
        let pod = format!("db-{n}");
        let a = l
            .ipam
            .allocate(&l.add(&format!("c{n}"), &pod, "t1"))
            .await
            .unwrap();
        assert_eq!(a.lease.ip, ip(want), "{pod}");
    }
    for (name, refused) in [("far", "10.1.0.99"), ("taken", "10.1.0.20")] {
        let e = l.event(name, "MoorPoolRefused").await;
        assert!(e.contains(refused), "{e}");
        assert!(!e.contains("10.1.0.13 "), "only the refused IP: {e}");
        let e = l.ipam.pool(&format!("shop-{name}")).await.unwrap_err();
        assert!(matches!(e, crate::error::Error::NotFound(_)), "{e}");
    }
    let e = l.ipam.ip(ip("10.1.0.13")).await.unwrap_err();
    assert!(
        matches!(e, crate::error::Error::NotFound(_)),
        "nothing carved: {e}"
    );
}

#[tokio::test]
async fn a_pool_of_the_app_is_adopted_another_apps_refused_and_let_go() {
    let mut l = setup().await;
    let hand = crate::ipam::PoolSpec {
        name: "api-pool".into(),
        namespace: "shop".into(),
        app: "api".into(),
        size: 2,
        ..Default::default()
    };
    l.ipam.create_pool(&hand, T0).await.unwrap();
    l.api
        .create(objects::deployment("shop", "api", 1).annotation(POOL_SIZE_ANNOTATION, "2"));
    l.api.create(
        objects::deployment("shop", "other", 1)
            .annotation(POOL_SIZE_ANNOTATION, "2")
            .annotation(POOL_ANNOTATION, "api-pool"),
    );
    l.settle(2, |_| true).await;
    let pass = l.pass().await;
    assert!(pass.created.is_empty(), "{pass:?}");
    let (p, _) = l.ipam.pool("api-pool").await.unwrap();
    assert_eq!(p.owner.as_ref().unwrap().name, "api");
    assert!(l
        .event("api", "MoorPoolAdopted")
        .await
        .contains("pool api-pool"));
    assert_eq!(l.published("api-pool"), p.all_ips());
    let e = l.event("other", "MoorPoolRefused").await;
    assert!(e.contains("belongs to app shop/api"), "{e}");

    // The annotation goes: the pool stays as one made by hand.
    l.api.modify(Resource::Deployments, "shop", "api", |o| {
        o["metadata"]["annotations"] = serde_json::json!({});
    });
    l.settle(2, |w| {
        w.iter()
            .all(|w| w.name != "api" || w.annotations.is_empty())
    })
    .await;
    l.pass().await;
    let (p, _) = l.ipam.pool("api-pool").await.unwrap();
    assert!(p.owner.is_none());
    assert!(l.configmap("api-pool").is_none());
    assert!(l.event("api", "MoorPoolUnfollowed").await.contains("stays"));
}

/// A declared pool on a dual-stack ToR is dual stack, and its ConfigMap
/// whitelists both families.
#[tokio::test]
async fn a_dual_stack_pool_publishes_both_families() {
    let mut l = setup().await;
    let nets = [
        ("10.3.0.0/24".to_string(), "10.3.0.1".to_string()),
        ("fd00:3::/64".to_string(), "fd00:3::1".to_string()),
    ];
    let ranges = [
        ("10.3.0.10".to_string(), "10.3.0.29".to_string()),
        ("fd00:3::10".to_string(), "fd00:3::ff".to_string()),
    ];
    l.ipam
        .add_tor_families("d3", &nets, 0, &ranges, "")
        .await
        .unwrap();
    l.api.create(
        objects::statefulset("shop", "db", 2)
            .annotation(POOL_SIZE_ANNOTATION, "2")
            .annotation(TORS_ANNOTATION, "d3"),
    );
    l.settle(1, |_| true).await;
    assert_eq!(l.pass().await.created, ["shop-db"]);
    let (pool, _) = l.ipam.pool("shop-db").await.unwrap();
    assert_eq!(pool.family, crate::core::IpFamily::Dual);
    assert_eq!(
        l.published("shop-db"),
        ["10.3.0.10", "10.3.0.11", "fd00:3::10", "fd00:3::11"].map(ip)
    );

    // moor.io/ip-family picks one family of the ToR; a family the ToRs
    // lack is refused; a pool made already keeps its family and says so.
    l.api.create(
        objects::deployment("shop", "web", 1)
            .annotation(POOL_SIZE_ANNOTATION, "1")
            .annotation(TORS_ANNOTATION, "d3")
            .annotation(FAMILY_ANNOTATION, "ipv6"),
    );
    l.api.create(
        objects::deployment("shop", "api", 1)
            .annotation(POOL_SIZE_ANNOTATION, "1")
            .annotation(TORS_ANNOTATION, "t1")
            .annotation(FAMILY_ANNOTATION, "dual"),
    );
    l.api.modify(Resource::StatefulSets, "shop", "db", |o| {
        o["metadata"]["annotations"][FAMILY_ANNOTATION] = "ipv4".into();
    });
    l.settle(3, |w| {
        w.iter()
            .any(|w| w.name == "db" && w.annotations.contains_key(FAMILY_ANNOTATION))
    })
    .await;
    assert_eq!(l.pass().await.created, ["shop-web"]);
    let (web, _) = l.ipam.pool("shop-web").await.unwrap();
    assert_eq!(web.family, crate::core::IpFamily::Ipv6);
    assert!(l.published("shop-web").iter().all(IpAddr::is_ipv6));
    assert!(l.ipam.pool("shop-api").await.is_err(), "no pool for api");
    let refused = l.event("api", "MoorPoolRefused").await;
    assert!(refused.contains("dual"), "{refused}");
    let kept = l.event("db", "MoorPoolFamily").await;
    assert!(
        kept.contains("pool shop-db is dual, moor.io/ip-family asks ipv4"),
        "{kept}"
    );
    let (db, _) = l.ipam.pool("shop-db").await.unwrap();
    assert_eq!(db.family, crate::core::IpFamily::Dual);
}
