//! A start after kill -9: half-done ADDs rolled back, finished ones kept.

use crate::core::AttachmentState;
use crate::datapath::fake::{Call, Op};
use crate::datapath::Datapath;
use crate::ipam::AllocRequest;

use super::*;

/// An ADD that got as far as its commit and wiring, then ipamd died before
/// it replied: the runtime never got a result, and its in-flight mark stays.
async fn crashed_mid_add(h: &Harness, cid: &str, pod: &str) -> std::net::IpAddr {
    std::mem::forget(h.node.inflight.begin(&h.key(cid)).unwrap().unwrap());
    let alloc = h
        .ipam
        .allocate(&AllocRequest::for_test("n1", "r1", cid, pod, T0))
        .await
        .unwrap();
    let link = crate::datapath::PodLink {
        netns: format!("/run/netns/{cid}").into(),
        ifname: "eth0".into(),
        host_ifname: Harness::host(cid),
        address: format!("{}/24", alloc.lease.ip).parse().unwrap(),
        gateway: "10.1.0.1".parse().unwrap(),
        ipv6: None,
        mac: moor_proto::mac_for_ip(alloc.lease.ip),
        vlan: None,
        pod_namespace: "default".into(),
        pod_name: pod.into(),
        container_id: cid.into(),
    };
    h.dp.wire(&link).await.unwrap();
    alloc.lease.ip
}

#[tokio::test]
async fn a_crash_between_commit_and_reply_is_rolled_back_on_start() {
    let h = Harness::new().await;
    let done = h.add("c1", WEB_POD).await.unwrap();
    let half = crashed_mid_add(&h, "c2", "db-0").await;
    assert!(h.lease("db", half).await.unwrap().attachment.is_some());
    let h = h.restart();
    h.dp.clear_calls();
    assert!(h.node.recover().await.unwrap(), "the store answered");
    // The half-done ADD is gone: its veth, its lease and the binding it
    // made; the finished one is untouched.
    assert!(h.lease("db", half).await.is_none());
    assert!(!h.binding("db-0").await);
    assert!(!h.dp.is_wired(&Harness::host("c2")));
    assert!(h.dp.calls().contains(&Call::Unwire(Harness::host("c2"))));
    let kept = h.lease("web", done.lease.ip).await.unwrap();
    assert_eq!(kept.attachment.unwrap().state, AttachmentState::Ready);
    assert!(h.dp.is_wired(&Harness::host("c1")));
    // The datapath was reconciled once with the live attachment.
    let reconciles: Vec<_> =
        h.dp.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Reconcile(live) => Some(live),
                _ => None,
            })
            .collect();
    assert_eq!(reconciles.len(), 1);
    assert_eq!(reconciles[0].len(), 1);
    assert_eq!(reconciles[0][0].host_ifname, Harness::host("c1"));
    h.clean().await;
    // A second recover (the store came back later) does not reconcile again.
    h.node.recover().await.unwrap();
    assert_eq!(
        h.dp.ops().iter().filter(|o| **o == Op::Reconcile).count(),
        1
    );
}

#[tokio::test]
async fn a_start_during_a_store_outage_recovers_once_the_store_answers() {
    let h = Harness::new().await;
    let half = crashed_mid_add(&h, "c2", WEB_POD).await;
    let h = h.restart();
    h.store.set_down(true);
    assert!(
        h.node.recover().await.is_err(),
        "no mirror: nothing to serve from"
    );
    h.store.set_down(false);
    assert!(h.node.recover().await.unwrap());
    assert!(h.lease("web", half).await.is_none());
    h.clean().await;
}

#[tokio::test]
async fn recover_applies_dels_recorded_while_ipamd_was_down() {
    let h = Harness::new().await;
    let a = h.add("c1", WEB_POD).await.unwrap();
    moor_proto::pending::write(
        &h.dir.0.join("pending"),
        &moor_proto::pending::PendingDel {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: String::new(),
            pod_namespace: String::new(),
            pod_name: String::new(),
            network: "moor".into(),
            written_unix: T0,
            rollback: false,
        },
    )
    .unwrap();
    let h = h.restart();
    h.node.recover().await.unwrap();
    assert!(h.lease("web", a.lease.ip).await.is_none());
    assert_eq!(h.pending_files(), 0);
    h.clean().await;
}

/// The same crash on a node with a local mirror (etcd), started again while
/// the store is out of reach: the half-done ADD is rolled back from the
/// mirror at once (its release recorded), the finished one is kept, and the
/// rollback reaches the store, binding and all, once it answers.
#[tokio::test]
async fn a_crash_mid_add_is_rolled_back_from_the_mirror_when_the_store_is_down_at_start() {
    let h = Harness::mirrored().await;
    let done = h.add("c1", WEB_POD).await.unwrap();
    let crashed = Arc::new(tokio::sync::Notify::new());
    let dp = Interrupting::new(&h.dp, AfterWire::Crash(crashed.clone()));
    let h = h.restart_with(dp);
    let req = h.req("c2", "db-0");
    tokio::select! {
        r = h.node.add(&req) => panic!("the ADD was to die once wired: {r:?}"),
        _ = crashed.notified() => {}
    }
    let half = h.ipam.attached(&h.key("c2")).await.unwrap().unwrap();
    assert!(half.attachment.is_some());
    assert!(h.dp.is_wired(&Harness::host("c2")));

    let h = h.restart();
    h.store.set_down(true);
    assert!(
        !h.node.recover().await.unwrap(),
        "served from the mirror until the store answers"
    );
    assert!(!h.dp.is_wired(&Harness::host("c2")), "rolled back");
    assert!(
        h.dp.is_wired(&Harness::host("c1")),
        "the finished ADD stays"
    );
    let rec = moor_proto::pending::read_all(&h.dir.0.join("pending")).unwrap();
    let [(_, rec)] = rec.as_slice() else {
        panic!("{rec:?}")
    };
    assert_eq!(rec.container_id, "c2");
    assert!(rec.rollback);

    h.store.set_down(false);
    assert!(h.node.recover().await.unwrap());
    assert!(h.lease("db", half.ip).await.is_none());
    assert!(
        !h.binding("db-0").await,
        "the binding the ADD made went too"
    );
    assert_eq!(h.pending_files(), 0);
    let kept = h.lease("web", done.lease.ip).await.unwrap();
    assert_eq!(kept.attachment.unwrap().state, AttachmentState::Ready);
    assert!(h.dp.is_wired(&Harness::host("c1")));
    h.clean().await;
}

/// An ADD of a StatefulSet pod and its DEL, with ipamd stopped (as kill -9
/// would stop it, the store's test hook) after each commit they make: after
/// a restart the store is whole (audit clean) and the pod is fully attached
/// or fully gone, its binding kept once its ADD committed.
#[tokio::test]
async fn add_and_del_stopped_after_every_commit_are_whole_after_a_restart() {
    use crate::store::stop::StopAfter;
    for n in 0..=2u64 {
        let h = Harness::new().await;
        let stopping = Arc::new(StopAfter::new(h.store.clone(), n));
        let ipam = Arc::new(crate::ipam::Ipam::new(stopping.clone()));
        let node = Harness::node_on(&ipam, h.dp.clone(), &h.clock, &h.dir, false);
        let added = node.add(&h.req("c1", "db-0")).await;
        assert_eq!(added.is_ok(), n >= 1, "n={n}: {added:?}");
        if added.is_ok() {
            // The DEL's release meets the stopped store when n is 1: it is
            // recorded (pending DEL) and applied at the restart.
            node.del("c1", "eth0").await.unwrap();
        }
        drop(node);
        let h = h.restart();
        assert!(h.node.recover().await.unwrap(), "n={n}");
        assert!(
            h.ipam.attached(&h.key("c1")).await.unwrap().is_none(),
            "n={n}"
        );
        assert!(!h.dp.is_wired(&Harness::host("c1")), "n={n}");
        assert_eq!(
            h.binding("db-0").await,
            n >= 1,
            "n={n}: kept once committed"
        );
        assert!(h.node.inflight.leftovers("n1").is_empty(), "n={n}");
        assert_eq!(h.pending_files(), 0, "n={n}");
        h.clean().await;
    }
}
