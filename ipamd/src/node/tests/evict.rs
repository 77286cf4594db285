//! `ip evict`: a bound IP, a live one, forced on this node, and forced on
//! another node that is alive (refused) or dead (released).

use crate::core::{AttachmentState, IpState};
use crate::error::Error;
use crate::ipam::registry::{beat, NodeRecord, ALIVE_WITHIN};
use crate::ipam::AllocRequest;

use super::*;

#[tokio::test]
async fn evict_of_a_bound_ip_frees_it_now() {
    let h = Harness::new().await;
    let a = h.add("c1", "db-0").await.unwrap();
    h.node.del("c1", "eth0").await.unwrap();
    let e = h.node.evict(a.lease.ip, false).await.unwrap();
    assert!(e.released && !e.pending && e.holder.is_none(), "{e:?}");
    assert!(e.message.contains("it is free now"), "{}", e.message);
    assert!(h.lease("db", a.lease.ip).await.is_none());
    assert!(!h.binding("db-0").await);
    h.clean().await;
}

#[tokio::test]
async fn evict_of_a_live_ip_lets_the_binding_go_with_the_pods_del() {
    let h = Harness::new().await;
    let a = h.add("c1", "db-0").await.unwrap();
    let e = h.node.evict(a.lease.ip, false).await.unwrap();
    assert!(!e.released && e.pending, "{e:?}");
    assert_eq!(e.holder.as_ref().unwrap().key, h.key("c1"));
    assert!(h.dp.is_wired(&Harness::host("c1")), "the pod keeps running");
    assert!(h.binding("db-0").await);
    let d = h.node.del("c1", "eth0").await.unwrap().unwrap();
    assert!(!d.binding_kept, "the DEL took the binding");
    assert!(h.lease("db", a.lease.ip).await.is_none());
    h.clean().await;
}

#[tokio::test]
async fn forced_evict_on_this_node_ends_the_attachment() {
    let h = Harness::new().await;
    let a = h.add("c1", "db-0").await.unwrap();
    let e = h.node.evict(a.lease.ip, true).await.unwrap();
    assert!(e.released && !e.pending);
    assert!(
        !h.dp.is_wired(&Harness::host("c1")),
        "the pod lost its interface"
    );
    assert!(h.lease("db", a.lease.ip).await.is_none());
    assert!(!h.binding("db-0").await);
    h.clean().await;
}

/// db-0 attached on node `n2` (its own ipamd), whose last heartbeat was
/// `beat_at`.
async fn held_on_n2(h: &Harness, beat_at: u64) -> std::net::IpAddr {
    let req = AllocRequest::for_test("n2", "r1", "c9", "db-0", beat_at);
    let alloc = h.ipam.allocate(&req).await.unwrap();
    beat(
        h.store.as_ref(),
        &NodeRecord {
            name: "n2".into(),
            tor: "r1".into(),
            mode: "physical".into(),
            version: "test".into(),
            started_unix: beat_at,
            heartbeat_unix: beat_at,
        },
    )
    .await
    .unwrap();
    alloc.lease.ip
}

#[tokio::test]
async fn forced_evict_of_an_ip_held_on_an_alive_node_is_refused_and_changes_nothing() {
    let h = Harness::new().await;
    let ip = held_on_n2(&h, T0).await;
    h.clock.advance(ALIVE_WITHIN - 1);
    let e = h.node.evict(ip, true).await.unwrap_err();
    assert!(matches!(e, Error::Conflict(_)), "{e:?}");
    assert!(e.to_string().contains("node n2 is alive"), "{e}");
    let l = h.lease("db", ip).await.unwrap();
    assert!(!l.evict, "not even marked");
    assert_eq!(l.attachment.unwrap().state, AttachmentState::Ready);
    h.clean().await;
}

#[tokio::test]
async fn forced_evict_of_an_ip_held_on_a_dead_node_releases_it() {
    let h = Harness::new().await;
    let ip = held_on_n2(&h, T0).await;
    h.clock.advance(ALIVE_WITHIN);
    let e = h.node.evict(ip, true).await.unwrap();
    assert!(e.released, "{e:?}");
    assert_eq!(e.ip.lease.as_ref().map(|l| l.state()), None);
    assert!(h.lease("db", ip).await.is_none());
    assert!(
        h.dp.calls().is_empty(),
        "n2's datapath is not ours to touch"
    );
    h.clean().await;
}

#[tokio::test]
async fn evict_of_a_quarantined_ip_is_refused() {
    let h = Harness::new().await;
    let a = h.add("c1", "db-0").await.unwrap();
    h.node.del("c1", "eth0").await.unwrap();
    // The next start of db-0 hears another host answer for its IP.
    h.dp.fail_next(
        crate::datapath::fake::Op::Wire,
        crate::datapath::DatapathError::AddressConflict {
            ip: a.lease.ip,
            mac: "52:54:00:00:00:02".into(),
        },
    );
    h.add("c2", "db-0").await.unwrap_err();
    assert_eq!(
        h.lease("db", a.lease.ip).await.unwrap().state(),
        IpState::Quarantined
    );
    let e = h.node.evict(a.lease.ip, false).await.unwrap_err();
    assert!(e.to_string().contains("ipamctl ip release"), "{e}");
}
