//! A node on a remote store (mirror) during an outage: DEL, CHECK and a
//! sticky pod's restart keep working; other ADDs are told to retry.

use crate::core::AttachmentState;
use crate::error::cni_code;

use super::*;

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
    let first = h.add("c1", "db-0").await.unwrap();
    h.node.del("c1", "eth0").await.unwrap();
    h.store.set_down(true);
    h.add("c2", "db-0").await.unwrap();
    h.store.set_down(false);
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
