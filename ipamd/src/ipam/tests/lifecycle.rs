//! Pools over their life: IPs given back cool down before any pool takes
//! them, new IPs wait out a whitelist delay, explicit IPs (bring your own)
//! are checked and bound to pods in order, a shrink stops at what is
//! bound or in use.

use std::net::IpAddr;
use std::sync::Arc;

use super::{clean, code};
use crate::core::{Binding, FreeCount, PodRef, Policy};
use crate::error::{cni_code, Error};
use crate::ipam::{AllocRequest, Ipam, PoolSpec, Resize};
use crate::store::mem::MemStore;
use crate::store::{keys, StoreExt};

const COOLDOWN: u64 = 600;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// ToR r1 with pod IPs 10.1.0.10-14, ToR r2 with 10.2.0.10-19.
async fn tors() -> (Arc<MemStore>, Ipam) {
    let store = Arc::new(MemStore::new());
    let ipam = Ipam::new(store.clone()).with_cooldown(COOLDOWN);
    let r = |a: &str, b: &str| [(a.to_string(), b.to_string())];
    ipam.add_tor(
        "r1",
        "10.1.0.0/24",
        "10.1.0.1",
        0,
        &r("10.1.0.10", "10.1.0.14"),
        "",
    )
    .await
    .unwrap();
    ipam.add_tor(
        "r2",
        "10.2.0.0/24",
        "10.2.0.1",
        0,
        &r("10.2.0.10", "10.2.0.19"),
        "",
    )
    .await
    .unwrap();
    (store, ipam)
}

fn spec(name: &str, size: u32, tors: &[&str]) -> PoolSpec {
    PoolSpec {
        name: name.into(),
        namespace: "default".into(),
        app: name.into(),
        size,
        tors: tors.iter().map(|t| t.to_string()).collect(),
        policy: Policy::Auto,
        ..PoolSpec::default()
    }
}

fn pod(name: &str) -> PodRef {
    PodRef {
        namespace: "default".into(),
        name: name.into(),
        uid: String::new(),
    }
}

#[tokio::test]
async fn given_back_ips_cool_down_before_any_pool_takes_them() {
    let (store, ipam) = tors().await;
    let a = ipam
        .create_pool(&spec("a", 3, &["r1"]), 1000)
        .await
        .unwrap();
    assert_eq!(
        a.all_ips(),
        [ip("10.1.0.10"), ip("10.1.0.11"), ip("10.1.0.12")]
    );
    let shrunk = Resize {
        size: 1,
        delay_secs: 0,
        as_far_as_possible: false,
    };
    let r = ipam.resize_pool_with("a", &shrunk, 1000).await.unwrap();
    assert_eq!(r.removed, [ip("10.1.0.11"), ip("10.1.0.12")]);
    // .11 and .12 cool down: b gets the two never used, c gets nothing.
    let b = ipam
        .create_pool(&spec("b", 2, &["r1"]), 1100)
        .await
        .unwrap();
    assert_eq!(b.all_ips(), [ip("10.1.0.13"), ip("10.1.0.14")]);
    let e = ipam
        .create_pool(&spec("c", 1, &["r1"]), 1599)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("cool down for 600 s"), "{e}");
    let mut byo = spec("d", 0, &[]);
    byo.ips = vec![ip("10.1.0.12")];
    let e = ipam.create_pool(&byo, 1599).await.unwrap_err().to_string();
    assert!(
        e.contains("10.1.0.12") && e.contains("cools down for 1 s more"),
        "{e}"
    );
    assert!(ipam.pool("c").await.is_err() && ipam.pool("d").await.is_err());
    // Cooling IPs are no leak.
    clean(&store).await;
    // From the end of the cool-down, they are carved again, lowest first.
    let c = ipam
        .create_pool(&spec("c", 1, &["r1"]), 1600)
        .await
        .unwrap();
    assert_eq!(c.all_ips(), [ip("10.1.0.11")]);
    // A deleted pool's IPs cool down too.
    let gone = ipam.delete_pool("a", 1600).await.unwrap();
    assert_eq!(gone.all_ips(), [ip("10.1.0.10")]);
    assert!(
        ipam.resize_pool("c", 3, 2199).await.is_err(),
        ".12 is free, .10 cools until 2200"
    );
    let c = ipam.resize_pool("c", 3, 2200).await.unwrap();
    assert_eq!(
        c.all_ips(),
        [ip("10.1.0.10"), ip("10.1.0.11"), ip("10.1.0.12")]
    );
    clean(&store).await;
    // No cool-down configured: IPs are carvable at once.
    let now = Ipam::new(store.clone()).with_cooldown(0);
    now.delete_pool("c", 3000).await.unwrap();
    assert_eq!(
        now.create_pool(&spec("e", 3, &["r1"]), 3000)
            .await
            .unwrap()
            .size(),
        3
    );
    clean(&store).await;
}

#[tokio::test]
async fn new_ips_wait_out_the_whitelist_delay() {
    let (store, ipam) = tors().await;
    ipam.create_pool(&spec("web", 1, &["r1"]), 1000)
        .await
        .unwrap();
    let grow = Resize {
        size: 2,
        delay_secs: 30,
        as_far_as_possible: false,
    };
    let r = ipam.resize_pool_with("web", &grow, 1000).await.unwrap();
    assert_eq!(r.added, [ip("10.1.0.11")]);
    let add = |cid: &str, pod: &str, now| AllocRequest::for_test("n1", "r1", cid, pod, now);
    // The old IP is taken at once; the new one only after the delay.
    let first = ipam.allocate(&add("c1", "web-0", 1010)).await.unwrap();
    assert_eq!(first.lease.ip, ip("10.1.0.10"));
    let (c, msg) = code(ipam.allocate(&add("c2", "web-1", 1029)).await.unwrap_err());
    assert_eq!(c, cni_code::TRY_AGAIN_LATER, "{msg}");
    assert!(
        msg.contains("whitelist") && msg.contains("1 free IPs"),
        "{msg}"
    );
    let second = ipam.allocate(&add("c2", "web-1", 1030)).await.unwrap();
    assert_eq!(second.lease.ip, ip("10.1.0.11"));
    // A pool created with a delay: every IP waits.
    let mut late = spec("late", 1, &["r2"]);
    late.delay_secs = 60;
    ipam.create_pool(&late, 1000).await.unwrap();
    let (p, _) = ipam.pool("late").await.unwrap();
    assert_eq!(p.allocatable_after.values().collect::<Vec<_>>(), [&1060]);
    // The next change forgets delays that ended.
    ipam.resize_pool("late", 2, 1060).await.unwrap();
    assert!(ipam
        .pool("late")
        .await
        .unwrap()
        .0
        .allocatable_after
        .is_empty());
    clean(&store).await;
}

#[tokio::test]
async fn explicit_ips_are_checked_and_bound_to_pods_in_order() {
    let (store, ipam) = tors().await;
    let mut db = spec("db", 0, &[]);
    db.ips = vec![ip("10.2.0.15"), ip("10.1.0.11")];
    db.bind = vec![pod("db-0"), pod("db-1")];
    let p = ipam.create_pool(&db, 1000).await.unwrap();
    assert_eq!(p.ips["r1"], [ip("10.1.0.11")]);
    assert_eq!(p.ips["r2"], [ip("10.2.0.15")]);
    assert_eq!(p.tors, ["r1", "r2"]);
    let bound = |name: &'static str| {
        let store = store.clone();
        async move {
            store
                .get_json::<Binding>(&keys::binding(&pod(name)))
                .await
                .unwrap()
                .unwrap()
                .0
        }
    };
    assert_eq!(bound("db-0").await.ip, ip("10.2.0.15"));
    assert_eq!(bound("db-1").await.ip, ip("10.1.0.11"));
    let count = ipam.free_count("db", "r1").await;
    assert_eq!(count, FreeCount { total: 1, free: 0 });
    clean(&store).await;
    // db-0 starts on a node of r2 and gets its IP.
    let mut r = AllocRequest::for_test("n2", "r2", "c0", "db-0", 1000);
    r.pod = pod("db-0");
    assert_eq!(ipam.allocate(&r).await.unwrap().lease.ip, ip("10.2.0.15"));

    // Refused, nothing made: outside every range (in r1's subnet, not its
    // pod range), already in a pool, a size that disagrees, a pod that
    // keeps another IP.
    for (ips, bind, why) in [
        (vec!["10.1.0.50"], vec![], "10.1.0.50 is in no pod range"),
        (vec!["10.9.0.1"], vec![], "10.9.0.1 is in no pod range"),
        (
            vec!["10.1.0.12", "10.1.0.11"],
            vec![],
            "10.1.0.11 (ToR r1) is already in pool db",
        ),
        (
            vec!["10.1.0.12"],
            vec!["db-1"],
            "pod default/db-1 already keeps IP 10.1.0.11",
        ),
    ] {
        let mut other = spec("other", 0, &[]);
        other.ips = ips.iter().map(|s| ip(s)).collect();
        other.bind = bind.iter().map(|s| pod(s)).collect();
        let e = ipam.create_pool(&other, 1000).await.unwrap_err();
        assert!(e.to_string().contains(why), "{why}: {e}");
        assert!(ipam.pool("other").await.is_err());
    }
    let mut sized = spec("other", 3, &[]);
    sized.ips = vec![ip("10.1.0.12")];
    let e = ipam
        .create_pool(&sized, 1000)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("size 3 but 1 IPs given"), "{e}");
    clean(&store).await;
}

#[tokio::test]
async fn binding_add_keeps_a_free_ip_for_a_pod_that_does_not_exist_yet() {
    let (store, ipam) = tors().await;
    let mut web = spec("web", 0, &[]);
    web.ips = vec![ip("10.1.0.10"), ip("10.1.0.11")];
    ipam.create_pool(&web, 0).await.unwrap();
    let (b, partner) = ipam.bind(&pod("web-3"), ip("10.1.0.11")).await.unwrap();
    assert_eq!(partner, None, "an IPv4 pool");
    assert_eq!((b.pool.as_str(), b.tor.as_str()), ("web", "r1"));
    // Again: nothing changes.
    assert_eq!(
        ipam.bind(&pod("web-3"), ip("10.1.0.11")).await.unwrap().0,
        b
    );
    let refusals = [
        (pod("web-4"), "10.1.0.11", "kept for pod default/web-3"),
        (pod("web-3"), "10.1.0.10", "already keeps IP 10.1.0.11"),
        (pod("web-4"), "10.1.0.13", "in no pool"),
        (
            PodRef {
                namespace: "other".into(),
                ..pod("web-4")
            },
            "10.1.0.10",
            "does not allow pods of namespace other",
        ),
    ];
    for (p, a, why) in refusals {
        let e = ipam.bind(&p, ip(a)).await.unwrap_err();
        assert!(e.to_string().contains(why), "{why}: {e}");
        assert!(!matches!(e, Error::Internal { .. }));
    }
    let count = ipam.free_count("web", "r1").await;
    assert_eq!(count, FreeCount { total: 2, free: 1 });
    clean(&store).await;
    // The pod's first ADD takes it, whatever the lowest free IP is.
    let r = AllocRequest::for_test("n1", "r1", "c3", "web-3", 1);
    assert_eq!(ipam.allocate(&r).await.unwrap().lease.ip, ip("10.1.0.11"));
    clean(&store).await;
}

#[tokio::test]
async fn a_shrink_as_far_as_possible_stops_at_bound_and_used_ips() {
    let (store, ipam) = tors().await;
    ipam.create_pool(&spec("web", 4, &["r1"]), 0).await.unwrap();
    for (cid, name) in [("c0", "web-0"), ("c1", "web-1")] {
        ipam.allocate(&AllocRequest::for_test("n1", "r1", cid, name, 1))
            .await
            .unwrap();
    }
    let e = ipam
        .resize_pool("web", 1, 10)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("can shrink to 2 at the least"), "{e}");
    let all = Resize {
        size: 1,
        delay_secs: 0,
        as_far_as_possible: true,
    };
    let r = ipam.resize_pool_with("web", &all, 10).await.unwrap();
    assert_eq!(r.removed.len(), 2);
    assert_eq!(r.pool.size(), 2);
    // Nothing more to give: a no-op, not an error.
    let r = ipam.resize_pool_with("web", &all, 10).await.unwrap();
    assert!(r.removed.is_empty() && r.pool.size() == 2);
    clean(&store).await;
}
