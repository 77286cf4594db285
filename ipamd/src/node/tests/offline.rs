//! A node on a remote store (mirror) during an outage: DEL, CHECK and a
//! sticky pod's restart keep working; other ADDs are told to retry.

use crate::core::AttachmentState;
use crate::error::cni_code;

use super::*;

/// db-0 (container c1) deleted, then restarted as c2 during a store outage
/// on the IP this node cached; the store answers again. c1's allocation.
async fn restarted_during_an_outage(h: &Harness) -> Added {
    let first = h.add("c1", "db-0").await.unwrap();
    h.node.del("c1", "eth0").await.unwrap();
    h.store.set_down(true);
    h.add("c2", "db-0").await.unwrap();
    h.store.set_down(false);
    first
}

#[tokio::test]
async fn a_sticky_pod_restarts_on_its_cached_ip_during_an_outage_and_is_written_back() {
    let h = Harness::mirrored().await;
    let first = h.add("c1", "db-0").await.unwrap();
    h.node.del("c1", "eth0").await.unwrap();
    h.store.set_down(true);
    let again = h.add("c2", "db-0").await.unwrap();
    assert_eq!(again.lease.ip, first.lease.ip, "same IP from the mirror");
    assert!(h.dp.is_wired(&Harness::host("c2")));
    // CHECK works from the mirror too.
    h.node
        .check(&crate::node::CheckRequest {
            container_id: "c2".into(),
            ifname: "eth0".into(),
            netns: String::new(),
            address: Some(first.lease.ip),
        })
        .await
        .unwrap();
    // A pod with nothing cached gets "try again", and nothing is wired.
    let e = h.add("c3", WEB_POD).await.unwrap_err();
    assert_eq!(e.cni_code(), cni_code::TRY_AGAIN_LATER);
    assert!(!h.dp.is_wired(&Harness::host("c3")));
    h.store.set_down(false);
    assert_eq!(h.node.sync_offline().await.unwrap(), 1);
    let l = h.lease("db", first.lease.ip).await.unwrap();
    let a = l.attachment.unwrap();
    assert_eq!(a.key, h.key("c2"));
    assert_eq!(a.state, AttachmentState::Ready);
    assert_eq!(h.node.sync_offline().await.unwrap(), 0, "written once");
    h.clean().await;
}

#[tokio::test]
async fn an_outage_restart_the_store_no_longer_allows_loses_its_interface() {
    let h = Harness::mirrored().await;
    let first = restarted_during_an_outage(&h).await;
    // Meanwhile an operator released db-0's IP.
    h.ipam.release_ip(first.lease.ip).await.unwrap();
    assert_eq!(h.node.sync_offline().await.unwrap(), 0);
    assert!(
        !h.dp.is_wired(&Harness::host("c2")),
        "never two owners of one IP: the offline attachment is taken down"
    );
    h.clean().await;
}

#[tokio::test]
async fn without_a_mirror_an_add_during_an_outage_is_try_again_and_changes_nothing() {
    let h = Harness::new().await;
    h.store.set_down(true);
    let e = h.add("c1", "db-0").await.unwrap_err();
    assert_eq!(e.cni_code(), cni_code::TRY_AGAIN_LATER);
    assert!(e.to_string().contains("store is unavailable"), "{e}");
    assert!(h.dp.calls().is_empty());
}

#[tokio::test]
async fn a_sticky_pod_deleted_and_restarted_within_one_outage_keeps_its_ip() {
    let h = Harness::mirrored().await;
    let first = h.add("c1", "db-0").await.unwrap();
    h.store.set_down(true);
    let d = h.node.del("c1", "eth0").await.unwrap().unwrap();
    assert!(d.binding_kept, "{d:?}");
    // The DEL recorded in the outage cached the binding: the pod's next
    // instance starts on the same IP.
    let again = h.add("c2", "db-0").await.unwrap();
    assert_eq!(again.lease.ip, first.lease.ip);
    assert!(h.dp.is_wired(&Harness::host("c2")));
    h.store.set_down(false);
    // The recorded DEL first, then the write-back (the order of `recover`
    // and of the replay task).
    assert_eq!(h.node.replay_pending_dels().await.unwrap(), 1);
    assert_eq!(h.node.sync_offline().await.unwrap(), 1);
    let a = h.attachment("db", first.lease.ip).await.unwrap();
    assert_eq!(a.key, h.key("c2"));
    assert!(h.dp.is_wired(&Harness::host("c2")));
    h.clean().await;
}

/// The write-back before the replay got the previous instance's recorded
/// DEL through (etcd answering reads before it has a leader for writes):
/// the write-back applies that DEL first and keeps the pod, instead of
/// taking down a pod whose IP only its own previous instance held.
#[tokio::test]
async fn the_write_back_applies_the_previous_instances_recorded_del_first() {
    let h = Harness::mirrored().await;
    let first = h.add("c1", "db-0").await.unwrap();
    h.store.set_down(true);
    h.node.del("c1", "eth0").await.unwrap();
    let again = h.add("c2", "db-0").await.unwrap();
    h.store.set_down(false);
    assert_eq!(h.pending_files(), 1);
    assert_eq!(h.node.sync_offline().await.unwrap(), 1);
    assert_eq!(h.pending_files(), 0, "c1's DEL applied");
    let a = h.attachment("db", again.lease.ip).await.unwrap();
    assert_eq!((a.key, again.lease.ip), (h.key("c2"), first.lease.ip));
    assert!(h.dp.is_wired(&Harness::host("c2")), "kept");
    h.clean().await;
}

#[tokio::test]
async fn an_outage_restart_is_refused_while_a_previous_instance_holds_the_ip() {
    let h = Harness::mirrored().await;
    let first = h.add("c1", "db-0").await.unwrap();
    // db-0's binding is cached while c1, whose DEL has not run, still
    // holds the IP (set up directly: the mirror drops the cache whenever
    // it records an attachment of the pod, so only a failed write leaves
    // both).
    let m = h.node.mirror.as_ref().unwrap();
    let mut cached = m.get(&h.key("c1")).await.unwrap().unwrap();
    cached.lease.attachment = None;
    m.put_bound(&pod_ref("db-0"), &cached).await.unwrap();
    h.store.set_down(true);
    let e = h.add("c2", "db-0").await.unwrap_err();
    assert_eq!(e.cni_code(), cni_code::TRY_AGAIN_LATER);
    let msg = e.to_string();
    assert!(msg.contains(&format!("keeps {}", first.lease.ip)), "{msg}");
    assert!(msg.contains("still attached to"), "{msg}");
    assert!(!h.dp.is_wired(&Harness::host("c2")), "never two owners");
    assert!(h.dp.is_wired(&Harness::host("c1")));
}

#[tokio::test]
async fn an_outage_restart_needs_the_cached_ip_on_this_tor_and_in_the_asked_pool() {
    let h = Harness::mirrored().await;
    h.add("c1", "db-0").await.unwrap();
    h.node.del("c1", "eth0").await.unwrap();
    let m = h.node.mirror.as_ref().unwrap();
    let pod = pod_ref("db-0");
    let cached = m.bound(&pod).await.unwrap().unwrap();
    h.store.set_down(true);
    // Another pool asked for.
    let mut req = h.req("c2", "db-0");
    req.pool = Some("web".into());
    let e = h.node.add(&req).await.unwrap_err();
    assert_eq!(e.cni_code(), cni_code::TRY_AGAIN_LATER);
    // Cached on another ToR (this node's ToR changed since).
    let mut elsewhere = cached.clone();
    elsewhere.tor.name = "r2".into();
    m.put_bound(&pod, &elsewhere).await.unwrap();
    let e = h.add("c3", "db-0").await.unwrap_err();
    assert_eq!(e.cni_code(), cni_code::TRY_AGAIN_LATER);
    assert!(!h.dp.is_wired(&Harness::host("c2")));
    assert!(!h.dp.is_wired(&Harness::host("c3")));
    // A segment of this ToR will do.
    let mut segment = cached.clone();
    segment.tor.name = "r1-b".into();
    segment.tor.segment_of = Some("r1".into());
    m.put_bound(&pod, &segment).await.unwrap();
    let a = h.add("c4", "db-0").await.unwrap();
    assert_eq!(a.lease.ip, cached.lease.ip);
}

#[tokio::test]
async fn a_restart_after_an_outage_writes_back_what_was_attached_during_it() {
    let h = Harness::mirrored().await;
    let first = restarted_during_an_outage(&h).await;
    let h = h.restart();
    assert!(h.node.recover().await.unwrap());
    let a = h.attachment("db", first.lease.ip).await.unwrap();
    assert_eq!(a.key, h.key("c2"));
    assert_eq!(a.state, AttachmentState::Ready);
    assert!(h.dp.is_wired(&Harness::host("c2")), "kept by the reconcile");
    assert_eq!(h.node.sync_offline().await.unwrap(), 0, "written once");
    h.clean().await;
}

/// Found by the soak (issue 15): once the store answers again, a pod
/// restarted during the outage is in the store only after the next
/// write-back (up to 5 s later); a CHECK in between must still find it in
/// the mirror, not say "ADD it first".
#[tokio::test]
async fn check_finds_an_outage_restart_before_it_is_written_back() {
    let h = Harness::mirrored().await;
    let first = restarted_during_an_outage(&h).await;
    let check = crate::node::CheckRequest {
        container_id: "c2".into(),
        ifname: "eth0".into(),
        netns: String::new(),
        address: Some(first.lease.ip),
    };
    h.node.check(&check).await.unwrap();
    assert_eq!(h.node.sync_offline().await.unwrap(), 1);
    h.node.check(&check).await.unwrap();
    h.clean().await;
}

/// An outage restart whose IP the store still shows on an earlier instance
/// of the pod on another node (that node has not replayed the DEL it
/// recorded yet) waits for it instead of losing its interface at once; it
/// is written back once that instance lets go, and gives the IP up if it
/// does not within `EARLIER_INSTANCE_WAIT_SECS`.
#[tokio::test]
async fn an_outage_restart_waits_a_while_for_an_earlier_instance_elsewhere() {
    use crate::ipam::AllocRequest;
    use crate::node::offline::EARLIER_INSTANCE_WAIT_SECS;
    for lets_go in [true, false] {
        let h = Harness::mirrored().await;
        h.add("c1", "db-0").await.unwrap();
        h.node.del("c1", "eth0").await.unwrap();
        // The pod moved to n2 (n1's mirror still caches its binding).
        let n2 = AllocRequest::for_test("n2", "r1", "o1", "db-0", T0);
        let there = h.ipam.allocate(&n2).await.unwrap();
        h.store.set_down(true);
        let back = h.add("c2", "db-0").await.unwrap();
        assert_eq!(back.lease.ip, there.lease.ip);
        h.store.set_down(false);
        assert_eq!(h.node.sync_offline().await.unwrap(), 0, "waits");
        assert!(h.dp.is_wired(&Harness::host("c2")), "not taken down yet");
        h.clock.advance(EARLIER_INSTANCE_WAIT_SECS - 1);
        assert_eq!(h.node.sync_offline().await.unwrap(), 0, "still waits");
        if lets_go {
            // n2 replays the DEL it recorded.
            h.ipam.release(&n2.key, false).await.unwrap();
            assert_eq!(h.node.sync_offline().await.unwrap(), 1);
            let a = h.lease("db", back.lease.ip).await.unwrap().attachment;
            assert_eq!(a.unwrap().key, h.key("c2"));
            assert!(h.dp.is_wired(&Harness::host("c2")));
        } else {
            h.clock.advance(1);
            assert_eq!(h.node.sync_offline().await.unwrap(), 0);
            assert!(!h.dp.is_wired(&Harness::host("c2")), "gave the IP up");
            let a = h.lease("db", back.lease.ip).await.unwrap().attachment;
            assert_eq!(a.unwrap().key, n2.key, "n2's instance keeps it");
        }
    }
}
