//! Dual stack and IPv6-only over the in-memory store: a dual-stack pod has
//! both IPs or neither and keeps both when sticky; IPv6-only pools carve
//! past the partners; a family the ToRs lack is refused and changes
//! nothing; either address finds the IP.

use std::net::Ipv6Addr;

use super::{clean, code, range, req};
use crate::core::{IpFamily, Policy};
use crate::error::cni_code;
use crate::ipam::{Ipam, PoolSpec};
use crate::store::mem::MemStore;
use crate::store::{keys, Store, StoreExt};
use std::sync::Arc;

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn net(a: &str, b: &str) -> (String, String) {
    (a.to_string(), b.to_string())
}

/// ToR d1 dual stack (10.1.0.10-19 paired with fd00:1::100-1ff), ToR v4
/// IPv4 only, ToR s6 IPv6 only.
async fn setup() -> (Arc<MemStore>, Ipam) {
    let store = Arc::new(MemStore::new());
    let ipam = Ipam::new(store.clone());
    ipam.add_tor_families(
        "d1",
        &[
            net("10.1.0.0/24", "10.1.0.1"),
            net("fd00:1::/64", "fd00:1::1"),
        ],
        0,
        &[
            range("10.1.0.10", "10.1.0.19"),
            range("fd00:1::100", "fd00:1::1ff"),
        ],
        "",
    )
    .await
    .unwrap();
    ipam.add_tor("v4", "10.2.0.0/24", "10.2.0.1", 0, &[], "")
        .await
        .unwrap();
    ipam.add_tor("s6", "fd00:6::/64", "fd00:6::1", 0, &[], "")
        .await
        .unwrap();
    (store, ipam)
}

fn spec(name: &str, size: u32, tors: &[&str], family: Option<IpFamily>) -> PoolSpec {
    PoolSpec {
        name: name.into(),
        namespace: "default".into(),
        app: name.into(),
        size,
        tors: tors.iter().map(|t| t.to_string()).collect(),
        policy: Policy::Auto,
        family,
        ..PoolSpec::default()
    }
}

#[tokio::test]
async fn a_dual_stack_pod_gets_and_keeps_both_ips() {
    let (store, ipam) = setup().await;
    // Default on a dual-stack ToR: dual.
    let pool = ipam
        .create_pool(&spec("db", 4, &["d1"], None), 0)
        .await
        .unwrap();
    assert_eq!(pool.family, IpFamily::Dual);
    let a = ipam.allocate(&req("n1", "d1", "c1", "db-0")).await.unwrap();
    assert_eq!(a.lease.ip.to_string(), "10.1.0.10");
    assert_eq!(a.lease.ipv6, Some(v6("fd00:1::100")), "its partner");
    // Stored with the lease, so DEL and CHECK have it too.
    let (stored, _) = store
        .get_json::<crate::core::Lease>(&keys::lease("db", a.lease.ip))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.ipv6, a.lease.ipv6);
    // Deleted and re-created on another node of the ToR: both back.
    ipam.release(&a.attachment().key, false).await.unwrap();
    let b = ipam.allocate(&req("n2", "d1", "c2", "db-0")).await.unwrap();
    assert_eq!((b.lease.ip, b.lease.ipv6), (a.lease.ip, a.lease.ipv6));
    // The next pod gets the next pair.
    let c = ipam.allocate(&req("n1", "d1", "c3", "db-1")).await.unwrap();
    assert_eq!(c.lease.ipv6, Some(v6("fd00:1::101")));
    // The audit knows the pairing: a lease with another IPv6 address is
    // a finding.
    let lkey = keys::lease("db", c.lease.ip);
    let (mut l, e) = store
        .get_json::<crate::core::Lease>(&lkey)
        .await
        .unwrap()
        .unwrap();
    l.ipv6 = Some(v6("fd00:1::1fe"));
    let mut t = crate::store::Txn::default();
    t.expect(&lkey, Some(&e)).put(&lkey, &l);
    assert!(store.commit(t).await.unwrap());
    let found = crate::audit::audit(store.as_ref()).await.unwrap();
    assert!(
        found.len() == 1 && found[0].contains("pairs 10.1.0.11 with fd00:1::101"),
        "{found:#?}"
    );
    l.ipv6 = c.lease.ipv6;
    let e = store.get(&lkey).await.unwrap().unwrap();
    let mut t = crate::store::Txn::default();
    t.expect(&lkey, Some(&e)).put(&lkey, &l);
    assert!(store.commit(t).await.unwrap());
    // Either address finds the IP.
    let by6 = ipam.ip("fd00:1::100".parse().unwrap()).await.unwrap();
    assert_eq!(by6.ip, a.lease.ip);
    assert_eq!(by6.ipv6, a.lease.ipv6);
    let by4 = ipam.ip(a.lease.ip).await.unwrap();
    assert_eq!(by4.ipv6, a.lease.ipv6);
    // Listing and export name both.
    let bindings = ipam.bindings(Some("db")).await.unwrap();
    let db0 = bindings
        .iter()
        .find(|(b, _, _)| b.pod.name == "db-0")
        .unwrap();
    assert_eq!((db0.1, db0.2), (true, Some(v6("fd00:1::100"))));
    let partners = ipam.partners(&pool).await.unwrap();
    assert_eq!(partners.len(), 4);
    assert_eq!(partners[&c.lease.ip], v6("fd00:1::101"));
    // Evicted by its IPv6 address: the IPv4 one's binding goes with the
    // holder's DEL.
    let (view, released, holder) = ipam
        .mark_evict("fd00:1::101".parse().unwrap())
        .await
        .unwrap();
    assert_eq!((view.ip, released), (c.lease.ip, false));
    assert_eq!(holder.unwrap().key, c.attachment().key);
    assert!(view.lease.unwrap().evict);
    // Released by its IPv6 address: the binding goes.
    ipam.release(&b.attachment().key, false).await.unwrap();
    let (view, was_bound) = ipam
        .release_ip("fd00:1::100".parse().unwrap())
        .await
        .unwrap();
    assert!(was_bound);
    assert_eq!(view.ip, a.lease.ip);
    clean(&store).await;
}

#[tokio::test]
async fn ipv4_and_ipv6_only_pools_on_a_dual_stack_tor() {
    let (store, ipam) = setup().await;
    let v4 = ipam
        .create_pool(&spec("web", 3, &["d1"], Some(IpFamily::Ipv4)), 0)
        .await
        .unwrap();
    let a = ipam
        .allocate(&req("n1", "d1", "c1", "web-0"))
        .await
        .unwrap();
    assert!(a.lease.ip.is_ipv4() && a.lease.ipv6.is_none());
    assert!(ipam.partners(&v4).await.unwrap().is_empty());
    // The partner of an IPv4 pool's IP is no pod's address.
    let partner = "fd00:1::100".parse().unwrap();
    let e = ipam.ip(partner).await.unwrap_err();
    assert!(matches!(e, crate::error::Error::NotFound(_)), "{e}");

    // IPv6-only: carved past the 10 partners, so never one of them.
    let p6 = ipam
        .create_pool(&spec("api", 3, &["d1"], Some(IpFamily::Ipv6)), 0)
        .await
        .unwrap();
    assert_eq!(
        p6.ips["d1"],
        ["fd00:1::10a", "fd00:1::10b", "fd00:1::10c"]
            .map(|s| s.parse::<std::net::IpAddr>().unwrap())
    );
    let b = ipam
        .allocate(&req("n1", "d1", "c2", "api-0"))
        .await
        .unwrap();
    assert_eq!(b.lease.ip.to_string(), "fd00:1::10a");
    assert_eq!(b.lease.ipv6, None);
    // And a dual pool after them takes the pairs left.
    let d = ipam
        .create_pool(&spec("db", 7, &["d1"], Some(IpFamily::Dual)), 0)
        .await
        .unwrap();
    assert_eq!(d.size(), 7);
    assert!(
        ipam.create_pool(&spec("more", 1, &["d1"], Some(IpFamily::Dual)), 0)
            .await
            .is_err(),
        "the 10 pairs are gone"
    );
    clean(&store).await;
}

#[tokio::test]
async fn ipv6_only_tor_and_default_families() {
    let (store, ipam) = setup().await;
    let p = ipam
        .create_pool(&spec("api", 2, &["s6"], None), 0)
        .await
        .unwrap();
    assert_eq!(p.family, IpFamily::Ipv6);
    assert_eq!(p.ips["s6"][0].to_string(), "fd00:6::2");
    let a = ipam
        .allocate(&req("n1", "s6", "c1", "api-0"))
        .await
        .unwrap();
    assert_eq!(a.lease.ip.to_string(), "fd00:6::2");
    // A dual-stack and an IPv4 ToR have IPv4 in common.
    let mixed = ipam
        .create_pool(&spec("mix", 2, &["d1", "v4"], None), 0)
        .await
        .unwrap();
    assert_eq!(mixed.family, IpFamily::Ipv4);
    // No ToR named: IPv6 spreads over the ToRs that have it, two /64s
    // evenly (d1's 245 IPv6-only IPs weigh little beside them).
    ipam.add_tor("s7", "fd00:7::/64", "fd00:7::1", 0, &[], "")
        .await
        .unwrap();
    let all6 = ipam
        .create_pool(&spec("all6", 4, &[], Some(IpFamily::Ipv6)), 0)
        .await
        .unwrap();
    assert_eq!(all6.tors, ["d1", "s6", "s7"], "not v4");
    assert_eq!((all6.ips["s6"].len(), all6.ips["s7"].len()), (2, 2));
    clean(&store).await;
}

/// A family the pool's ToRs lack: a clear error, and nothing written.
#[tokio::test]
async fn a_family_the_tors_lack_is_refused_and_changes_nothing() {
    let (store, ipam) = setup().await;
    let before = store.list("").await.unwrap().0;
    for (tors, family, want) in [
        (
            &["v4"][..],
            Some(IpFamily::Dual),
            "ToR v4 (IPv4) has no IPv6 subnet",
        ),
        (
            &["s6"][..],
            Some(IpFamily::Ipv4),
            "ToR s6 (IPv6) has no IPv4 subnet",
        ),
        (
            &["d1", "v4"][..],
            Some(IpFamily::Ipv6),
            "ToR v4 (IPv4) has no IPv6 subnet",
        ),
        (&["v4", "s6"][..], None, "no address family in common"),
    ] {
        let e = ipam
            .create_pool(&spec("bad", 2, tors, family), 0)
            .await
            .unwrap_err();
        let (c, msg) = code(e);
        assert_eq!(c, cni_code::INVALID_CONFIG, "{msg}");
        assert!(
            msg.contains(want),
            "{tors:?} {family:?}: want {want:?} in {msg}"
        );
    }
    // Explicit IPs: the IPv6 partner of a dual pool's IP is named by its
    // IPv4 address.
    let mut s = spec("own", 0, &["d1"], Some(IpFamily::Dual));
    s.ips = vec!["fd00:1::105".parse().unwrap()];
    let (_, msg) = code(ipam.create_pool(&s, 0).await.unwrap_err());
    assert!(
        msg.contains("IPv6 partner of 10.1.0.15") && msg.contains("name 10.1.0.15"),
        "{msg}"
    );
    assert_eq!(store.list("").await.unwrap().0, before, "nothing written");
}

/// A whitelist syncer watching a dual-stack pool gets both families: the
/// snapshot and every change carry each IP with its IPv6 partner.
#[tokio::test]
async fn the_watch_feed_of_a_dual_stack_pool_carries_both_families() {
    use crate::ipam::PoolChange;
    use futures::StreamExt;
    let (_store, ipam) = setup().await;
    let ipam = Arc::new(ipam);
    ipam.create_pool(&spec("db", 2, &["d1"], None), 0)
        .await
        .unwrap();
    let mut feed = Box::pin(ipam.clone().watch_pool("db".into()));
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    match feed.next().await.unwrap().unwrap() {
        PoolChange::Snapshot { ips, .. } => assert_eq!(
            ips,
            ["10.1.0.10", "10.1.0.11", "fd00:1::100", "fd00:1::101"].map(ip)
        ),
        other => panic!("{other:?}"),
    }
    ipam.resize_pool("db", 3, 0).await.unwrap();
    match feed.next().await.unwrap().unwrap() {
        PoolChange::Add { ips, .. } => assert_eq!(ips, ["10.1.0.12", "fd00:1::102"].map(ip)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn binding_a_pods_ipv6_address_binds_the_pair() {
    let (store, ipam) = setup().await;
    ipam.create_pool(&spec("db", 4, &["d1"], None), 0)
        .await
        .unwrap();
    let pod = super::big_pools::pod("db-3");
    // The IPv6 address names the pair; the binding is keyed by its IPv4 half.
    let (b, partner) = ipam
        .bind(&pod, "fd00:1::103".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(b.ip.to_string(), "10.1.0.13");
    assert_eq!(partner, Some(v6("fd00:1::103")));
    // Bound again by either address: nothing changes.
    assert_eq!(ipam.bind(&pod, b.ip).await.unwrap(), (b.clone(), partner));
    let a = ipam.allocate(&req("n1", "d1", "c1", "db-3")).await.unwrap();
    assert_eq!((a.lease.ip, a.lease.ipv6), (b.ip, Some(v6("fd00:1::103"))));
    clean(&store).await;
}
