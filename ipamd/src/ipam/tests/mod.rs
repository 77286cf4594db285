//! The allocation service over the in-memory store: stickiness, ToR rules,
//! resize, and random concurrent interleavings checked by the audit.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::audit::audit;
use crate::core::{FreeCount, IpState, Quarantine};
use crate::error::{cni_code, Error};
use crate::store::mem::MemStore;
use crate::store::{keys, StoreExt};

fn range(a: &str, b: &str) -> (String, String) {
    (a.to_string(), b.to_string())
}

/// Two ToRs with 10 pod IPs each, and pool `web` (app default/web) of `size`.
async fn setup(size: u32, policy: Policy) -> (Arc<MemStore>, Ipam) {
    let store = Arc::new(MemStore::new());
    let ipam = Ipam::new(store.clone());
    ipam.add_tor(
        "r1",
        "10.1.0.0/24",
        "10.1.0.1",
        0,
        &[range("10.1.0.10", "10.1.0.19")],
        "",
    )
    .await
    .unwrap();
    ipam.add_tor(
        "r2",
        "10.2.0.0/24",
        "10.2.0.1",
        0,
        &[range("10.2.0.10", "10.2.0.19")],
        "",
    )
    .await
    .unwrap();
    ipam.create_pool(
        &PoolSpec {
            name: "web".into(),
            namespace: "default".into(),
            app: "web".into(),
            size,
            tors: vec![],
            policy,
            allow_namespaces: vec![],
            ..PoolSpec::default()
        },
        0,
    )
    .await
    .unwrap();
    (store, ipam)
}

fn req(node: &str, tor: &str, cid: &str, pod: &str) -> AllocRequest {
    AllocRequest::for_test(node, tor, cid, pod, 1)
}

async fn clean(store: &MemStore) {
    let bad = audit(store).await.unwrap();
    assert!(bad.is_empty(), "{bad:#?}");
}

fn code(e: Error) -> (u32, String) {
    (e.cni_code(), e.to_string())
}

#[tokio::test]
async fn pool_is_spread_and_exported_before_any_pod() {
    let (store, ipam) = setup(8, Policy::Auto).await;
    let (pool, leases) = ipam.pool("web").await.unwrap();
    assert_eq!(pool.ips["r1"].len(), 4);
    assert_eq!(pool.ips["r2"].len(), 4);
    assert!(leases.is_empty());
    assert_eq!(pool.all_ips().len(), 8);
    clean(&store).await;
}

#[tokio::test]
async fn statefulset_pod_keeps_its_ip_and_its_tor() {
    let (store, ipam) = setup(8, Policy::Auto).await;
    let a = ipam
        .allocate(&req("n1", "r1", "c1", "web-0"))
        .await
        .unwrap();
    let ip = a.lease.ip;
    // Same key again: the same attachment (idempotent ADD).
    let again = ipam
        .allocate(&req("n1", "r1", "c1", "web-0"))
        .await
        .unwrap();
    assert!(again.existing);
    assert_eq!(again.lease.ip, ip);
    // Re-created before the old one is gone: a clear "try again".
    let (c, msg) = code(
        ipam.allocate(&req("n2", "r1", "c2", "web-0"))
            .await
            .unwrap_err(),
    );
    assert_eq!(c, cni_code::TRY_AGAIN_LATER, "{msg}");
    assert!(msg.contains("c1") && msg.contains(&ip.to_string()), "{msg}");

    let rel = ipam
        .release(&a.attachment().key, false)
        .await
        .unwrap()
        .unwrap();
    assert!(rel.binding_kept);
    clean(&store).await;
    // Another node of the same ToR: same IP.
    let b = ipam
        .allocate(&req("n2", "r1", "c2", "web-0"))
        .await
        .unwrap();
    assert_eq!(b.lease.ip, ip);
    ipam.release(&b.attachment().key, false).await.unwrap();
    // A node of another ToR: refused, naming both ToRs.
    let (c, msg) = code(
        ipam.allocate(&req("n3", "r2", "c3", "web-0"))
            .await
            .unwrap_err(),
    );
    assert_eq!(c, cni_code::WRONG_TOR);
    assert!(
        msg.contains("r1") && msg.contains("r2") && msg.contains(&ip.to_string()),
        "{msg}"
    );
    // Releasing the binding lets it start anywhere.
    let (_, was_bound) = ipam.release_ip(ip).await.unwrap();
    assert!(was_bound);
    let c = ipam
        .allocate(&req("n3", "r2", "c3", "web-0"))
        .await
        .unwrap();
    assert_eq!(c.lease.tor, "r2");
    clean(&store).await;
}

#[tokio::test]
async fn deployment_pod_gives_its_ip_back() {
    let (store, ipam) = setup(2, Policy::Auto).await;
    let pod = "web-7d9f8c6b5-x2x9z";
    let a = ipam.allocate(&req("n1", "r1", "c1", pod)).await.unwrap();
    assert!(a.lease.binding.is_none());
    let rel = ipam
        .release(&a.attachment().key, false)
        .await
        .unwrap()
        .unwrap();
    assert!(!rel.binding_kept);
    assert!(ipam.leases("web").await.unwrap().is_empty());
    // Releasing twice is fine (DEL is idempotent).
    assert!(ipam
        .release(&a.attachment().key, false)
        .await
        .unwrap()
        .is_none());
    clean(&store).await;
}

#[tokio::test]
async fn policy_overrides_the_name() {
    let (_, ipam) = setup(2, Policy::Sticky).await;
    let a = ipam
        .allocate(&req("n1", "r1", "c1", "web-7d9f8c6b5-x2x9z"))
        .await
        .unwrap();
    assert!(a.lease.binding.is_some());
    let (_, ipam) = setup(2, Policy::Release).await;
    let a = ipam
        .allocate(&req("n1", "r1", "c1", "web-0"))
        .await
        .unwrap();
    assert!(a.lease.binding.is_none());
}

#[tokio::test]
async fn rollback_drops_the_binding_it_created() {
    let (store, ipam) = setup(2, Policy::Auto).await;
    let a = ipam
        .allocate(&req("n1", "r1", "c1", "web-0"))
        .await
        .unwrap();
    let rel = ipam
        .release(&a.attachment().key, true)
        .await
        .unwrap()
        .unwrap();
    assert!(!rel.binding_kept);
    assert!(ipam.bindings(None).await.unwrap().is_empty());
    // A rollback of a re-attach keeps the older binding.
    let a = ipam
        .allocate(&req("n1", "r1", "c1", "web-0"))
        .await
        .unwrap();
    ipam.release(&a.attachment().key, false).await.unwrap();
    let b = ipam
        .allocate(&req("n1", "r1", "c2", "web-0"))
        .await
        .unwrap();
    let rel = ipam
        .release(&b.attachment().key, true)
        .await
        .unwrap()
        .unwrap();
    assert!(rel.binding_kept);
    clean(&store).await;
}

#[tokio::test]
async fn full_pool_and_missing_things_say_what_to_do() {
    let (_, ipam) = setup(2, Policy::Auto).await; // one IP per ToR
    ipam.allocate(&req("n1", "r1", "c1", "web-0"))
        .await
        .unwrap();
    let (c, msg) = code(
        ipam.allocate(&req("n1", "r1", "c2", "web-1"))
            .await
            .unwrap_err(),
    );
    assert_eq!(c, cni_code::POOL_FULL);
    for want in [
        "pool web",
        "ToR r1",
        "1 IPs",
        "1 in use",
        "0 free",
        "pool resize web",
    ] {
        assert!(msg.contains(want), "{want:?} missing from {msg}");
    }
    let (c, msg) = code(
        ipam.allocate(&req("n1", "r1", "c3", "db-0"))
            .await
            .unwrap_err(),
    );
    assert_eq!(c, cni_code::NO_POOL);
    assert!(msg.contains("default/db"), "{msg}");
    let (c, msg) = code(
        ipam.allocate(&req("n1", "r9", "c4", "web-2"))
            .await
            .unwrap_err(),
    );
    assert_eq!(c, cni_code::TOR_UNDEFINED);
    assert!(msg.contains("ipamctl tor add r9"), "{msg}");
    let mut r = req("n1", "r1", "c5", "");
    r.pod = PodRef::default();
    let (c, msg) = code(ipam.allocate(&r).await.unwrap_err());
    assert_eq!(c, cni_code::NO_POOL);
    assert!(msg.contains("MOOR_POOL"), "{msg}");
    // With an explicit pool an anonymous container (podman) gets an IP, unbound.
    r.choice.explicit = Some("web".into());
    let (c, _) = code(ipam.allocate(&r).await.unwrap_err());
    assert_eq!(c, cni_code::POOL_FULL, "r1 has one IP, taken");
    r.tor = "r2".into();
    let a = ipam.allocate(&r).await.unwrap();
    assert!(a.lease.binding.is_none());
}

#[tokio::test]
async fn a_tor_with_two_segments_serves_the_one_the_pool_names() {
    // r1 carries VLAN 100 (its own segment) and VLAN 200 (segment r1-db);
    // r2 carries only its own.
    let (store, ipam) = setup(4, Policy::Auto).await;
    ipam.add_tor("r1-db", "10.5.0.0/24", "10.5.0.1", 200, &[], "r1")
        .await
        .unwrap();
    let (_, msg) = code(
        ipam.add_tor("r1-x", "10.6.0.0/24", "10.6.0.1", 200, &[], "r1")
            .await
            .unwrap_err(),
    );
    assert!(
        msg.contains("already has segment r1-db on VLAN 200"),
        "{msg}"
    );
    let spec = |name: &str, app: &str, tors: &[&str]| PoolSpec {
        name: name.into(),
        namespace: "default".into(),
        app: app.into(),
        size: 2,
        tors: tors.iter().map(|t| t.to_string()).collect(),
        policy: Policy::Auto,
        allow_namespaces: vec![],
        ..PoolSpec::default()
    };
    let (_, msg) = code(
        ipam.create_pool(&spec("both", "both", &["r1", "r1-db"]), 0)
            .await
            .unwrap_err(),
    );
    assert!(msg.contains("two segments of ToR r1"), "{msg}");
    ipam.create_pool(&spec("db", "db", &["r1-db"]), 0)
        .await
        .unwrap();
    // A pool that names no ToR spreads over ToRs' own segments only.
    ipam.create_pool(&spec("any", "any", &[]), 0).await.unwrap();
    let (any, _) = ipam.pool("any").await.unwrap();
    assert_eq!(any.ips.keys().collect::<Vec<_>>(), ["r1", "r2"]);

    // A node of r1 gets the db pool's IP on the segment, with its VLAN and
    // gateway; the web pod on the same node gets ToR r1's own segment.
    let db = ipam.allocate(&req("n1", "r1", "c1", "db-0")).await.unwrap();
    assert_eq!(db.tor.name, "r1-db");
    assert_eq!(db.tor.vlan, Some(200));
    assert!(db.tor.first.subnet.contains(db.lease.ip), "{}", db.lease.ip);
    assert_eq!(db.lease.tor, "r1-db");
    let web = ipam
        .allocate(&req("n1", "r1", "c2", "web-7d9f8c6b5-x2x9z"))
        .await
        .unwrap();
    assert_eq!(web.tor.name, "r1");
    clean(&store).await;

    // db-0 keeps its IP; on a node of r2 it is refused, naming both.
    ipam.release(&db.attachment().key, false).await.unwrap();
    let (c, msg) = code(
        ipam.allocate(&req("n3", "r2", "c3", "db-0"))
            .await
            .unwrap_err(),
    );
    assert_eq!(c, cni_code::WRONG_TOR, "{msg}");
    assert!(
        msg.contains("on ToR r1 (segment r1-db), but this node is on ToR r2"),
        "{msg}"
    );
    // On another node of r1 it gets the same IP back.
    let back = ipam.allocate(&req("n2", "r1", "c4", "db-0")).await.unwrap();
    assert_eq!(back.lease.ip, db.lease.ip);
    // The other IP of the pool on r1: then the pool is full on the segment.
    ipam.allocate(&req("n2", "r1", "c5", "db-1")).await.unwrap();
    let (c, msg) = code(
        ipam.allocate(&req("n2", "r1", "c6", "db-2"))
            .await
            .unwrap_err(),
    );
    assert_eq!(c, cni_code::POOL_FULL, "{msg}");
    assert!(msg.contains("full on ToR r1 (segment r1-db)"), "{msg}");
    clean(&store).await;
}

#[tokio::test]
async fn a_quarantined_ip_is_given_to_no_pod_until_released() {
    // Two IPs of pool web on r1.
    let (store, ipam) = setup(4, Policy::Auto).await;
    let q = |mac: &str| Quarantine {
        mac: mac.into(),
        node: "n1".into(),
        since_unix: 5,
    };
    // A Deployment pod's ADD hears another owner: its IP is quarantined.
    let first = ipam
        .allocate(&req("n1", "r1", "c1", "web-7d9f8c6b5-x2x9z"))
        .await
        .unwrap();
    let bad_ip = first.lease.ip;
    ipam.quarantine(&first.attachment().key, q("02:00:00:00:00:99"), None)
        .await
        .unwrap();
    let view = ipam.ip(bad_ip).await.unwrap();
    let lease = view.lease.expect("the quarantined IP keeps its lease");
    assert_eq!(lease.state(), IpState::Quarantined);
    assert!(lease.attachment.is_none());
    clean(&store).await;
    // The next pod on r1 gets the other IP, never the quarantined one; then
    // the pool is full there and says so.
    let next = ipam
        .allocate(&req("n1", "r1", "c2", "web-7d9f8c6b5-x2x9b"))
        .await
        .unwrap();
    assert_ne!(next.lease.ip, bad_ip);
    let (c, _) = code(
        ipam.allocate(&req("n1", "r1", "c3", "web-7d9f8c6b5-x2x9c"))
            .await
            .unwrap_err(),
    );
    assert_eq!(c, cni_code::POOL_FULL);
    clean(&store).await;

    // A StatefulSet pod keeps its binding through a quarantine of its IP
    // (it must not silently get another), and is told why and what to do.
    ipam.release(&next.attachment().key, false).await.unwrap();
    let web0 = ipam
        .allocate(&req("n1", "r1", "c4", "web-0"))
        .await
        .unwrap();
    ipam.release(&web0.attachment().key, false).await.unwrap();
    let again = ipam
        .allocate(&req("n1", "r1", "c5", "web-0"))
        .await
        .unwrap();
    assert_eq!(again.lease.ip, web0.lease.ip);
    ipam.quarantine(&again.attachment().key, q("02:00:00:00:00:98"), None)
        .await
        .unwrap();
    let (c, msg) = code(
        ipam.allocate(&req("n1", "r1", "c6", "web-0"))
            .await
            .unwrap_err(),
    );
    assert_eq!(c, cni_code::ADDRESS_CONFLICT, "{msg}");
    assert!(
        msg.contains(&web0.lease.ip.to_string())
            && msg.contains("02:00:00:00:00:98")
            && msg.contains("ipamctl ip release"),
        "{msg}"
    );
    clean(&store).await;

    // `ip evict` does not lift a quarantine; it points to `ip release`.
    let (c, msg) = code(ipam.mark_evict(web0.lease.ip).await.unwrap_err());
    assert_eq!(c, Error::Conflict(String::new()).cni_code(), "{msg}");
    assert!(msg.contains("ipamctl ip release"), "{msg}");
    // A restart of web-0 during a store outage (on the node that cached its
    // binding) is not written back onto the quarantined IP.
    let mut offline = again.lease.clone();
    offline.attachment.as_mut().unwrap().key.container_id = "c-offline".into();
    assert_eq!(
        ipam.attach_bound(&offline).await.unwrap(),
        crate::ipam::WriteBack::Refused
    );
    clean(&store).await;

    // Deleting the pool would forget the quarantine: refused, naming the
    // IPs and the way out; nothing changes.
    let before = store.list("").await.unwrap().0;
    let e = ipam.delete_pool("web", 0).await.unwrap_err();
    assert!(matches!(e, Error::Conflict(_)), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&bad_ip.to_string()) && msg.contains("ipamctl ip release"),
        "{msg}"
    );
    assert_eq!(store.list("").await.unwrap().0, before);

    // `ip release` lifts a quarantine: the IP and its binding go back.
    for ip in [bad_ip, web0.lease.ip] {
        let (view, dropped) = ipam.release_ip(ip).await.unwrap();
        assert!(dropped && view.lease.is_none(), "{ip}");
    }
    clean(&store).await;
    let back = ipam
        .allocate(&req("n1", "r1", "c7", "web-0"))
        .await
        .unwrap();
    assert!([bad_ip, web0.lease.ip].contains(&back.lease.ip));
    clean(&store).await;
}

#[tokio::test]
async fn resize_keeps_spread_and_never_takes_a_used_ip() {
    let (store, ipam) = setup(4, Policy::Auto).await;
    let mut held = Vec::new();
    for i in 0..2 {
        let a = ipam
            .allocate(&req("n1", "r1", &format!("c{i}"), &format!("web-{i}")))
            .await
            .unwrap();
        held.push(a.lease.ip);
    }
    let p = ipam.resize_pool("web", 10, 0).await.unwrap();
    assert_eq!((p.ips["r1"].len(), p.ips["r2"].len()), (5, 5));
    clean(&store).await;
    let p = ipam.resize_pool("web", 3, 0).await.unwrap();
    assert_eq!(p.size(), 3);
    for ip in &held {
        assert!(p.all_ips().contains(ip), "{ip} in use was dropped");
    }
    let err = ipam.resize_pool("web", 1, 0).await.unwrap_err().to_string();
    assert!(
        err.contains("bound or in use") && err.contains("2 at the least"),
        "{err}"
    );
    assert_eq!(
        ipam.pool("web").await.unwrap().0.size(),
        3,
        "refused resize changed nothing"
    );
    let err = ipam.resize_pool("web", 0, 0).await.unwrap_err().to_string();
    assert!(err.contains("size 0"), "{err}");
    clean(&store).await;
    // Freed IPs go back to the ToR for other pools.
    let tors = ipam.tors().await.unwrap();
    assert_eq!(tors.iter().map(|(_, c)| c).sum::<u32>(), 3);
}

#[tokio::test]
async fn bad_admin_input_changes_nothing() {
    let (store, ipam) = setup(4, Policy::Auto).await;
    let before = store.list("").await.unwrap().0;
    let spec = |name: &str, ns: &str, app: &str, size: u32, tors: &[&str]| PoolSpec {
        name: name.into(),
        namespace: ns.into(),
        app: app.into(),
        size,
        tors: tors.iter().map(|s| s.to_string()).collect(),
        policy: Policy::Auto,
        allow_namespaces: vec![],
        ..PoolSpec::default()
    };
    let cases = [
        spec("web", "default", "other", 1, &[]),
        spec("web2", "default", "web", 1, &[]),
        spec("Bad_Name", "default", "x", 1, &[]),
        spec("x", "Default", "x", 1, &[]),
        spec("x", "default", "x", 100, &[]),
        spec("x", "default", "x", 70_000, &[]),
        spec("x", "default", "x", 1, &["r9"]),
    ];
    for c in cases {
        assert!(ipam.create_pool(&c, 0).await.is_err(), "{c:?}");
    }
    assert!(ipam
        .add_tor("r3", "10.1.0.0/16", "10.1.0.1", 0, &[], "")
        .await
        .is_err());
    assert!(ipam.delete_tor("r1").await.is_err(), "ToR with pool IPs");
    assert!(ipam.delete_pool("nope", 0).await.is_err());
    assert!(ipam
        .release_ip("192.168.9.9".parse().unwrap())
        .await
        .is_err());
    assert_eq!(store.list("").await.unwrap().0, before);
}

#[tokio::test]
async fn store_down_fails_cleanly_and_recovers() {
    let (store, ipam) = setup(4, Policy::Auto).await;
    store.set_down(true);
    let e = ipam
        .allocate(&req("n1", "r1", "c1", "web-0"))
        .await
        .unwrap_err();
    assert_eq!(e.cni_code(), cni_code::TRY_AGAIN_LATER);
    store.set_down(false);
    ipam.allocate(&req("n1", "r1", "c1", "web-0"))
        .await
        .unwrap();
    clean(&store).await;
}

#[tokio::test]
async fn free_counts_follow_leases_per_pool_and_tor() {
    let (store, ipam) = setup(8, Policy::Auto).await;
    let count = |tor: &'static str| ipam.free_count("web", tor);
    assert_eq!(count("r1").await, FreeCount { total: 4, free: 4 });
    let sts = ipam
        .allocate(&req("n1", "r1", "c1", "web-0"))
        .await
        .unwrap();
    let dep = ipam
        .allocate(&req("n1", "r1", "c2", "web-5c5b7d9d8f-x2x9z"))
        .await
        .unwrap();
    assert_eq!(count("r1").await, FreeCount { total: 4, free: 2 });
    assert_eq!(count("r2").await, FreeCount { total: 4, free: 4 });
    ipam.release(&dep.attachment().key, false).await.unwrap();
    ipam.release(&sts.attachment().key, false).await.unwrap();
    assert_eq!(
        count("r1").await,
        FreeCount { total: 4, free: 3 },
        "web-0 keeps its IP"
    );
    ipam.release_ip(sts.lease.ip).await.unwrap();
    assert_eq!(count("r1").await, FreeCount { total: 4, free: 4 });
    ipam.resize_pool("web", 12, 0).await.unwrap();
    assert_eq!(count("r1").await.total + count("r2").await.total, 12);
    clean(&store).await;
    ipam.delete_pool("web", 0).await.unwrap();
    // Worked out when asked, never stored.
    assert!(store.list(keys::FREE).await.unwrap().0.is_empty());
    clean(&store).await;
}

mod backup;
mod batch;
mod big_pools;
mod corrupt;
mod dual;
mod find;
mod lifecycle;
mod model;
mod stopped;
mod view;
