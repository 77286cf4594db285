//! DEL: unwire then release, idempotent, durable through a store outage.

use crate::core::IpState;
use crate::datapath::fake::{Call, Op};

use super::*;

#[tokio::test]
async fn del_unwires_then_frees_a_deployment_pods_ip_and_is_idempotent() {
    let h = Harness::new().await;
    let a = h.add("c1", WEB_POD).await.unwrap();
    h.dp.clear_calls();
    let d = h.node.del("c1", "eth0").await.unwrap().unwrap();
    assert_eq!(d.ip, a.lease.ip);
    assert!(!d.binding_kept);
    assert_eq!(h.dp.calls(), [Call::Unwire(Harness::host("c1"))]);
    assert!(h.lease("web", a.lease.ip).await.is_none(), "free again");
    // Again, and for a key never seen: nothing to do, no error, and the
    // host end is still removed by name (an ADD rolled back half-way).
    assert_eq!(h.node.del("c1", "eth0").await.unwrap(), None);
    assert_eq!(h.node.del("never", "eth0").await.unwrap(), None);
    assert_eq!(h.dp.ops(), [Op::Unwire, Op::Unwire, Op::Unwire]);
    h.clean().await;
}

#[tokio::test]
async fn del_keeps_a_sticky_pods_ip_bound() {
    let h = Harness::new().await;
    let a = h.add("c1", "db-0").await.unwrap();
    let d = h.node.del("c1", "eth0").await.unwrap().unwrap();
    assert!(d.binding_kept);
    assert_eq!(
        h.lease("db", a.lease.ip).await.unwrap().state(),
        IpState::Bound
    );
    h.clean().await;
}

#[tokio::test]
async fn del_while_the_store_is_down_is_recorded_and_replayed() {
    let h = Harness::new().await;
    let a = h.add("c1", WEB_POD).await.unwrap();
    h.store.set_down(true);
    // The DEL succeeds: the pod's teardown never waits on the store.
    h.node.del("c1", "eth0").await.unwrap();
    assert!(
        !h.dp.is_wired(&Harness::host("c1")),
        "the veth went at once"
    );
    assert_eq!(h.pending_files(), 1, "the release is recorded durably");
    let rec = moor_proto::pending::read_all(&h.dir.0.join("pending")).unwrap();
    assert_eq!(rec[0].1.container_id, "c1");
    assert_eq!(rec[0].1.written_unix, T0);
    h.store.set_down(false);
    assert!(
        h.lease("web", a.lease.ip).await.is_some(),
        "not released yet"
    );
    assert_eq!(h.node.replay_pending_dels().await.unwrap(), 1);
    assert!(h.lease("web", a.lease.ip).await.is_none());
    assert_eq!(h.pending_files(), 0);
    assert_eq!(h.node.replay_pending_dels().await.unwrap(), 0);
    h.clean().await;
}

#[tokio::test]
async fn an_add_first_applies_a_recorded_del_of_the_same_attachment() {
    let h = Harness::new().await;
    let a = h.add("c1", "db-0").await.unwrap();
    // The plugin recorded a DEL while ipamd was down, and the runtime now
    // ADDs the same container again before the replay ran.
    moor_proto::pending::write(
        &h.dir.0.join("pending"),
        &moor_proto::pending::PendingDel {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: "/run/netns/c1".into(),
            pod_namespace: "default".into(),
            pod_name: "db-0".into(),
            network: "moor".into(),
            written_unix: T0,
            rollback: false,
        },
    )
    .unwrap();
    h.dp.clear_calls();
    let b = h.add("c1", "db-0").await.unwrap();
    assert_eq!(b.lease.ip, a.lease.ip, "db-0 keeps its IP");
    assert_eq!(h.dp.ops(), [Op::Unwire, Op::Wire], "old wiring gone first");
    assert!(b.wired.is_some(), "a fresh attachment, not the stale one");
    assert_eq!(h.pending_files(), 0);
    h.clean().await;
}

#[tokio::test]
async fn a_del_whose_unwire_fails_changes_nothing_in_the_store() {
    let h = Harness::new().await;
    let a = h.add("c1", WEB_POD).await.unwrap();
    h.dp.fail_next(
        Op::Unwire,
        crate::datapath::DatapathError::CheckFailed("busy".into()),
    );
    let e = h.node.del("c1", "eth0").await.unwrap_err();
    assert_eq!(e.cni_code(), crate::error::cni_code::DATAPATH);
    assert!(h
        .lease("web", a.lease.ip)
        .await
        .unwrap()
        .attachment
        .is_some());
    h.node.del("c1", "eth0").await.unwrap();
    h.clean().await;
}
