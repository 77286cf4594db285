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
    assert!(h.attachment("web", a.lease.ip).await.is_some());
    h.node.del("c1", "eth0").await.unwrap();
    h.clean().await;
}

/// A pod whose lease does not decode: its DEL cuts it off and succeeds
/// (the pod must not stay Terminating), the release waits in the pending
/// directory without holding up other recorded DELs, and the IP is never
/// taken for free; once the record is repaired the replay releases it.
#[tokio::test]
async fn del_past_a_record_that_does_not_decode_waits_for_the_repair() {
    use crate::store::{Op, Store, Txn};
    let h = Harness::new().await;
    let a = h.add("c1", WEB_POD).await.unwrap();
    let b = h.add("c2", "web-7d9f8c6b5-b2x9z").await.unwrap();
    let lkey = keys::lease("web", a.lease.ip);
    let good = h.store.get(&lkey).await.unwrap().unwrap();
    let put = |value: Vec<u8>| {
        let mut t = Txn::default();
        t.ops.push(Op::Put {
            key: lkey.clone(),
            value,
        });
        t
    };
    assert!(h.store.commit(put(b"{\"cut\": [".to_vec())).await.unwrap());

    h.node.del("c1", "eth0").await.unwrap();
    assert!(!h.dp.is_wired(&Harness::host("c1")), "cut off at once");
    assert_eq!(h.pending_files(), 1, "the release is recorded");
    h.store.set_down(true);
    h.node.del("c2", "eth0").await.unwrap();
    h.store.set_down(false);
    assert_eq!(h.pending_files(), 2);
    assert_eq!(
        h.node.replay_pending_dels().await.unwrap(),
        1,
        "c2's DEL applied past c1's"
    );
    assert!(h.lease("web", b.lease.ip).await.is_none());
    assert_eq!(h.pending_files(), 1, "c1's waits");
    let e = h.add("c3", "web-7d9f8c6b5-c2x9z").await.unwrap_err();
    assert!(e.to_string().contains(&lkey), "never taken for free: {e}");

    assert!(h.store.commit(put(good.value)).await.unwrap());
    assert_eq!(h.node.replay_pending_dels().await.unwrap(), 1);
    assert!(h.lease("web", a.lease.ip).await.is_none(), "released");
    assert_eq!(h.pending_files(), 0);
    h.clean().await;
}
