//! GC and the leak sweep, judged by the node's clock.

use std::collections::HashSet;

use crate::node::sweep::Sweep;

use super::*;

#[tokio::test]
async fn gc_releases_only_unlisted_attachments_older_than_the_grace() {
    let h = Harness::new().await;
    let old = h.add("c1", WEB_POD).await.unwrap();
    let kept = h.add("c2", WEB_POD).await.unwrap();
    h.clock.advance(GRACE - 10);
    let young = h.add("c3", WEB_POD).await.unwrap();
    let valid: HashSet<(String, String)> = [("c2".to_string(), "eth0".to_string())].into();
    // c1 is GRACE-10 s old: too young for the cut-off yet.
    assert!(h.node.gc("moor", &valid).await.unwrap().is_empty());
    h.clock.advance(10);
    let released = h.node.gc("moor", &valid).await.unwrap();
    assert_eq!(released, [old.lease.ip], "c2 is listed, c3 is young");
    assert!(h.ipam.attached(&h.key("c2")).await.unwrap().is_some());
    assert!(h.ipam.attached(&h.key("c3")).await.unwrap().is_some());
    assert!(!h.dp.is_wired(&Harness::host("c1")));
    // Another network's GC never touches ours.
    h.clock.advance(GRACE);
    assert!(h
        .node
        .gc("other", &HashSet::new())
        .await
        .unwrap()
        .is_empty());
    let all = h.node.gc("moor", &HashSet::new()).await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.contains(&kept.lease.ip) && all.contains(&young.lease.ip));
    h.clean().await;
}

#[tokio::test]
async fn the_sweep_releases_a_pod_whose_veth_is_gone_on_two_passes_after_the_grace() {
    let h = Harness::new().await;
    let gone = h.add("c1", "db-0").await.unwrap();
    let alive = h.add("c2", WEB_POD).await.unwrap();
    h.dp.lose_link(&Harness::host("c1"));
    let mut sweep = Sweep::new();
    // Within the grace period: kept, not even suspected.
    let r = sweep.pass(&h.node).await.unwrap();
    assert_eq!((r.suspects, r.released.len()), (0, 0), "{r:?}");
    h.clock.advance(GRACE + 1);
    let r = sweep.pass(&h.node).await.unwrap();
    assert_eq!((r.suspects, r.released.len()), (1, 0), "first sighting");
    let r = sweep.pass(&h.node).await.unwrap();
    assert_eq!(r.released, [h.key("c1")]);
    let l = h.lease("db", gone.lease.ip).await.unwrap();
    assert!(
        l.attachment.is_none() && l.binding.is_some(),
        "sticky pod keeps its IP"
    );
    assert!(h.attachment("web", alive.lease.ip).await.is_some());
    h.clean().await;
}

#[tokio::test]
async fn the_sweep_removes_a_switch_port_orphaned_twice() {
    let h = Harness::new().await;
    h.dp.add_orphan_port("mrdeadbeef0001");
    let mut sweep = Sweep::new();
    assert!(sweep.pass(&h.node).await.unwrap().removed_ports.is_empty());
    let r = sweep.pass(&h.node).await.unwrap();
    assert_eq!(r.removed_ports, ["mrdeadbeef0001"]);
    assert!(h.dp.orphans().is_empty());
}
