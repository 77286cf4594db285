//! Pools too big for one transaction: over 200 ToRs, with 1,000 bindings.
//! Helpers shared with `stopped.rs` (the same changes, stopped at every
//! transaction boundary).

use std::net::IpAddr;
use std::sync::Arc;

use super::{clean, code};
use crate::core::{PodRef, Pool, PoolOp, PoolStep};
use crate::error::cni_code;
use crate::ipam::{AllocRequest, Ipam, PoolSpec};
use crate::store::mem::MemStore;
use crate::store::{keys, Store, StoreExt, Txn};

pub(super) const COOLDOWN: u64 = 600;
pub(super) const TORS: u32 = 200;

/// `TORS` ToRs t000.. with 8 pod IPs each (10.<i/250>.<i%250>.10-17).
pub(super) async fn many_tors() -> Arc<MemStore> {
    let store = Arc::new(MemStore::new());
    let mut t = Txn::default();
    for i in 0..TORS {
        let (a, b) = (i / 250, i % 250);
        let tor = crate::core::validate::tor(
            &format!("t{i:03}"),
            &format!("10.{a}.{b}.0/24"),
            &format!("10.{a}.{b}.1"),
            0,
            &[(format!("10.{a}.{b}.10"), format!("10.{a}.{b}.17"))],
            "",
            &[],
        )
        .unwrap();
        t.put(&keys::tor(&tor.name), &tor);
        if t.ops.len() == 90 {
            assert!(store.commit(std::mem::take(&mut t)).await.unwrap());
        }
    }
    assert!(store.commit(t).await.unwrap());
    store
}

/// ToR big (10.9.0.0/22) and pool `bound` of its 1,000 lowest pod IPs,
/// each kept for pod default/bound-<n>.
pub(super) async fn bound_pool() -> Arc<MemStore> {
    let store = Arc::new(MemStore::new());
    let ipam = Ipam::new(store.clone()).with_cooldown(COOLDOWN);
    ipam.add_tor("big", "10.9.0.0/22", "10.9.0.1", 0, &[], "")
        .await
        .unwrap();
    let ips: Vec<IpAddr> = (0..1000u32)
        .map(|n| IpAddr::from(std::net::Ipv4Addr::from(0x0a09_0002 + n)))
        .collect();
    let bind = (0..1000).map(|n| pod(&format!("bound-{n}"))).collect();
    let p = ipam
        .create_pool(
            &PoolSpec {
                name: "bound".into(),
                namespace: "default".into(),
                app: "bound".into(),
                ips,
                bind,
                ..PoolSpec::default()
            },
            0,
        )
        .await
        .unwrap();
    assert_eq!(p.size(), 1000);
    assert_eq!(ipam.bindings(Some("bound")).await.unwrap().len(), 1000);
    clean(&store).await;
    store
}

pub(super) fn pod(name: &str) -> PodRef {
    PodRef {
        namespace: "default".into(),
        name: name.into(),
        uid: String::new(),
    }
}

pub(super) fn spec(name: &str, size: u32) -> PoolSpec {
    PoolSpec {
        name: name.into(),
        namespace: "default".into(),
        app: name.into(),
        size,
        ..PoolSpec::default()
    }
}

/// A copy of every record of `from`, in a new store.
pub(super) async fn copy(from: &MemStore) -> Arc<MemStore> {
    let to = Arc::new(MemStore::new());
    let (all, _) = from.list("").await.unwrap();
    for chunk in all.chunks(90) {
        let mut t = Txn::default();
        for e in chunk {
            t.ops.push(crate::store::Op::Put {
                key: e.key.clone(),
                value: e.value.clone(),
            });
        }
        assert!(to.commit(t).await.unwrap());
    }
    to
}

/// Whether the pool is as `want` says: its size (None: absent), no change
/// in progress, and no carved record, lease or binding left when absent.
pub(super) async fn assert_pool(store: &MemStore, name: &str, want: Option<u32>, why: &str) {
    let got = store.get_json::<Pool>(&keys::pool(name)).await.unwrap();
    match (want, got) {
        (None, None) => {
            let (all, _) = store.list("").await.unwrap();
            let left: Vec<&str> = all
                .iter()
                .map(|e| e.key.as_str())
                .filter(|k| k.contains(&format!("/{name}")) || k.starts_with("bindings/"))
                .collect();
            assert!(left.is_empty(), "{why}: pool {name} left {left:?}");
        }
        (Some(size), Some((p, _))) => {
            assert_eq!(p.op, None, "{why}");
            assert_eq!(p.size(), size, "{why}");
        }
        (want, got) => panic!("{why}: want {want:?}, got {:?}", got.map(|(p, _)| p.size())),
    }
    clean(store).await;
}

#[tokio::test]
async fn pool_over_200_tors_is_created_resized_and_deleted() {
    let store = many_tors().await;
    let ipam = Ipam::new(store.clone()).with_cooldown(COOLDOWN);
    let p = ipam.create_pool(&spec("wide", 400), 10).await.unwrap();
    assert_eq!(p.ips.len(), TORS as usize);
    assert!(p.ips.values().all(|v| v.len() == 2), "spread evenly");
    assert_pool(&store, "wide", Some(400), "created").await;
    let r = ipam.resize_pool("wide", 1000, 20).await.unwrap();
    assert_eq!(r.size(), 1000);
    let r = ipam.resize_pool("wide", 200, 30).await.unwrap();
    assert!(r.ips.values().all(|v| v.len() == 1), "shrunk evenly");
    assert_pool(&store, "wide", Some(200), "shrunk").await;
    // The 800 given back cool down: only 1,400 of 1,600 minus 200 are free.
    let e = ipam
        .create_pool(&spec("other", 1300), 40)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("only 600 free"), "{e}");
    ipam.delete_pool("wide", 50).await.unwrap();
    assert_pool(&store, "wide", None, "deleted").await;
    let tors = ipam.tors().await.unwrap();
    assert!(tors.iter().all(|(_, carved)| *carved == 0));
}

#[tokio::test]
async fn pool_with_1000_bindings_is_deleted() {
    let store = bound_pool().await;
    let ipam = Ipam::new(store.clone()).with_cooldown(COOLDOWN);
    ipam.delete_pool("bound", 100).await.unwrap();
    assert_pool(&store, "bound", None, "deleted").await;
    // Its IPs cool down.
    let e = ipam
        .create_pool(
            &PoolSpec {
                ips: vec![IpAddr::from([10, 9, 0, 2])],
                ..spec("again", 0)
            },
            200,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("cools down for 500 s more"), "{e}");
}

/// A pool record with a change in progress written by hand.
pub(super) async fn set_op(store: &MemStore, name: &str, op: PoolOp) {
    let (mut p, e) = store
        .get_json::<Pool>(&keys::pool(name))
        .await
        .unwrap()
        .unwrap();
    p.op = Some(op);
    let mut t = Txn::default();
    t.expect(&e.key, Some(&e)).put(&e.key, &p);
    assert!(store.commit(t).await.unwrap());
}

fn one_each() -> std::collections::BTreeMap<String, u32> {
    (0..TORS).map(|i| (format!("t{i:03}"), 1)).collect()
}

pub(super) fn carving(creating: bool) -> PoolOp {
    PoolOp {
        since_unix: 5,
        why: None,
        step: PoolStep::Carving {
            creating,
            todo: one_each(),
            explicit: Default::default(),
            carved: Default::default(),
            bind: vec![],
            allocatable_after: 0,
        },
    }
}

#[tokio::test]
async fn a_grow_or_create_that_finds_no_room_any_more_is_undone() {
    let store = many_tors().await;
    let ipam = Ipam::new(store.clone()).with_cooldown(COOLDOWN);
    ipam.create_pool(&spec("web", 2), 0).await.unwrap();
    let web = ipam.pool("web").await.unwrap().0;
    // Another pool took all of t150 between a grow's plan (one more IP on
    // every ToR) and its carving, which gets there after several steps.
    let full = PoolSpec {
        tors: vec!["t150".into()],
        ..spec("full", 8)
    };
    ipam.create_pool(&full, 1).await.unwrap();
    set_op(&store, "web", carving(false)).await;
    let done = Ipam::new(store.clone()).finish_pool_ops(6).await.unwrap();
    assert_eq!(done, ["web"]);
    assert_pool(&store, "web", Some(2), "grow undone").await;
    assert_eq!(ipam.pool("web").await.unwrap().0.ips, web.ips);
    // No cool-down for IPs the pool never had.
    let (all, _) = store.list(keys::CARVED).await.unwrap();
    assert!(all.iter().all(|e| !e.key.ends_with(keys::COOLING)));

    // A create undone the same way: nothing of it is left.
    let mut t = Txn::default();
    let new = Pool {
        name: "new".into(),
        app: "new".into(),
        ips: Default::default(),
        tors: vec![],
        allocatable_after: Default::default(),
        op: Some(carving(true)),
        ..web.clone()
    };
    t.put("pools/new", &new).put("apps/default/new", &"new");
    assert!(store.commit(t).await.unwrap());
    let e = ipam.create_pool(&spec("new", 3), 7).await;
    assert!(
        e.is_ok(),
        "the old create was undone, this one made it: {e:?}"
    );
    ipam.delete_pool("new", 8).await.unwrap();
    set_op(&store, "web", carving(false)).await;
    let mut t = Txn::default();
    t.put("pools/new", &new).put("apps/default/new", &"new");
    assert!(store.commit(t).await.unwrap());
    let done = Ipam::new(store.clone()).finish_pool_ops(9).await.unwrap();
    assert_eq!(done, ["new", "web"]);
    assert_pool(&store, "new", None, "create undone").await;
    assert_pool(&store, "web", Some(2), "grow undone").await;
}

#[tokio::test]
async fn add_refuses_a_pool_being_deleted_and_ips_being_given_back() {
    let store = many_tors().await;
    let ipam = Ipam::new(store.clone()).with_cooldown(COOLDOWN);
    let p = ipam
        .create_pool(
            &PoolSpec {
                tors: vec!["t000".into()],
                ..spec("web", 4)
            },
            0,
        )
        .await
        .unwrap();
    let ips = p.ips["t000"].clone();
    // A shrink of 3 stopped after its first step: those 3 are no one's.
    set_op(
        &store,
        "web",
        PoolOp {
            since_unix: 1,
            why: None,
            step: PoolStep::GivingBack {
                ips: [("t000".to_string(), ips[1..].to_vec())].into(),
                cooling_until: 601,
            },
        },
    )
    .await;
    let add = |cid: &str, pod: &str| {
        let mut r = AllocRequest::for_test("n1", "t000", cid, pod, 2);
        r.choice.explicit = Some("web".into());
        r
    };
    let a = ipam.allocate(&add("c1", "web-0")).await.unwrap();
    assert_eq!(a.lease.ip, ips[0]);
    let (c, msg) = code(ipam.allocate(&add("c2", "web-1")).await.unwrap_err());
    assert_eq!(c, cni_code::POOL_FULL, "{msg}");
    let e = ipam.bind(&pod("web-1"), ips[1]).await.unwrap_err();
    assert!(e.to_string().contains("left pool web"), "{e}");
    ipam.release(&a.attachment().key, false).await.unwrap();
    // Being deleted: refused, try again later (or name another pool).
    set_op(
        &store,
        "web",
        PoolOp {
            since_unix: 3,
            why: None,
            step: PoolStep::Deleting {
                cooling_until: 603,
                leases_done: false,
            },
        },
    )
    .await;
    let (c, msg) = code(ipam.allocate(&add("c3", "web-2")).await.unwrap_err());
    assert_eq!(c, cni_code::TRY_AGAIN_LATER, "{msg}");
    assert!(msg.contains("pool web is being deleted"), "{msg}");
    let e = ipam.bind(&pod("web-2"), ips[0]).await.unwrap_err();
    assert!(e.to_string().contains("pool web is being deleted"), "{e}");
    // An admin call on it finishes the delete first.
    let e = ipam.resize_pool("web", 8, 4).await.unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    assert_pool(&store, "web", None, "deleted by the next admin call").await;
}

#[tokio::test]
async fn racing_finishers_end_in_one_state() {
    let base = many_tors().await;
    for n in [2u64, 4, 6] {
        let store = copy(&base).await;
        let stopping = Arc::new(crate::store::stop::StopAfter::new(store.clone(), n));
        let first = Ipam::new(stopping.clone()).with_cooldown(COOLDOWN);
        let _ = first.create_pool(&spec("wide", 400), 10).await;
        assert!(
            stopping.stopped(),
            "n={n}: the create ended before the stop"
        );
        // The original call and a restarted ipamd both finish it.
        let (a, b) = (
            Arc::new(Ipam::new(store.clone()).with_cooldown(COOLDOWN)),
            Arc::new(Ipam::new(store.clone() as Arc<dyn Store>).with_cooldown(COOLDOWN)),
        );
        let (ra, rb) = tokio::join!(
            tokio::spawn(async move { a.finish_pool_ops(11).await }),
            tokio::spawn(async move { b.delete_pool("wide", 11).await }),
        );
        ra.unwrap().unwrap();
        rb.unwrap().unwrap();
        assert_pool(
            &store,
            "wide",
            None,
            &format!("create stopped after {n}, then deleted"),
        )
        .await;
    }
}
