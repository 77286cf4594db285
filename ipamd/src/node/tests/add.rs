//! ADD: happy path, ordering, rollback, quarantine, idempotence, fail-fast.

use crate::node::inflight::InFlight;
use std::sync::{Arc, Mutex};

use crate::core::{AttachmentState, IpState};
use crate::datapath::fake::{Call, Op, RecordingDatapath, MTU};
use crate::datapath::{Datapath, DatapathError, PodLink, Wired};
use crate::error::{cni_code, Error};
use crate::ipam::Ipam;

use super::*;

#[tokio::test]
async fn add_wires_the_pods_ip_and_records_it_ready() {
    let h = Harness::new().await;
    let a = h.add("c1", WEB_POD).await.unwrap();
    assert_eq!(a.lease.pool, "web");
    assert_eq!(a.tor.name, "r1");
    let w = a.wired.expect("a first ADD wires");
    assert_eq!(w.mtu, MTU);
    // The datapath got exactly one wire, of the pod's IP with the ToR's
    // prefix, gateway and the MAC derived from the IP.
    let calls = h.dp.calls();
    let [Call::Wire(link)] = calls.as_slice() else {
        panic!("{calls:?}")
    };
    assert_eq!(link.address.ip(), a.lease.ip);
    assert_eq!(link.address.prefix(), 24);
    assert_eq!(link.gateway.to_string(), "10.1.0.1");
    assert_eq!(link.mac, moor_proto::mac_for_ip(a.lease.ip));
    assert_eq!(link.host_ifname, Harness::host("c1"));
    assert_eq!(link.netns.to_str(), Some("/run/netns/c1"));
    let stored = h.lease("web", a.lease.ip).await.unwrap();
    let att = stored.attachment.unwrap();
    assert_eq!(att.state, AttachmentState::Ready);
    assert_eq!(att.created_unix, T0, "stamped by the node's clock");
    assert!(stored.binding.is_none(), "a Deployment pod is not sticky");
    h.clean().await;
}

/// Wraps the recording datapath and looks at the store while `wire` runs.
struct Spy {
    dp: RecordingDatapath,
    ipam: Arc<Ipam>,
    seen: Mutex<Vec<Option<AttachmentState>>>,
    /// The in-flight marks' directory, read as a restart would.
    marks: Option<InFlight>,
    marked: Mutex<bool>,
}

#[async_trait::async_trait]
impl Datapath for Spy {
    async fn wire(&self, link: &PodLink) -> Result<Wired, DatapathError> {
        let key = crate::core::AttachmentKey {
            node: "n1".into(),
            container_id: link.container_id.clone(),
            ifname: link.ifname.clone(),
        };
        let state = self
            .ipam
            .attached(&key)
            .await
            .unwrap()
            .and_then(|l| l.attachment.map(|a| a.state));
        self.seen.lock().unwrap().push(state);
        let marks = self.marks.as_ref().map(|m| m.leftovers("n1"));
        *self.marked.lock().unwrap() = marks.is_some_and(|m| m.contains(&key));
        self.dp.wire(link).await
    }
    async fn unwire(&self, h: &str) -> Result<(), DatapathError> {
        self.dp.unwire(h).await
    }
    async fn check(&self, link: &PodLink) -> Result<(), DatapathError> {
        self.dp.check(link).await
    }
    async fn host_link_exists(&self, h: &str) -> Result<bool, DatapathError> {
        self.dp.host_link_exists(h).await
    }
}

#[tokio::test]
async fn add_records_the_attachment_and_its_mark_before_it_wires() {
    let h = Harness::new().await;
    let spy = Arc::new(Spy {
        dp: RecordingDatapath::new(),
        ipam: h.ipam.clone(),
        seen: Mutex::new(Vec::new()),
        marks: Some(InFlight::new(InFlight::dir_beside(
            &h.dir.0.join("pending"),
        ))),
        marked: Mutex::new(false),
    });
    let node = Node::new(
        NodeConfig {
            name: "n1".into(),
            tor: "r1".into(),
            pending_dir: h.dir.0.join("pending"),
            gc_grace: Duration::from_secs(GRACE),
            sticky_kinds: crate::core::pod::default_sticky_kinds(),
        },
        h.ipam.clone(),
        spy.clone(),
        None,
        h.clock.clone(),
    );
    let a = node.add(&h.req("c1", "db-0")).await.unwrap();
    // Recorded before the wiring, and marked in flight: a crash while
    // wiring leaves a record and a mark that the next start rolls back,
    // never a wired pod unknown to the store.
    assert_eq!(*spy.seen.lock().unwrap(), [Some(AttachmentState::Ready)]);
    assert!(*spy.marked.lock().unwrap(), "marked while wiring");
    assert!(!node
        .inflight
        .contains(&a.lease.attachment.as_ref().unwrap().key));
    assert!(
        node.inflight.leftovers("n1").is_empty(),
        "unmarked once wired"
    );
    let after = h.lease("db", a.lease.ip).await.unwrap();
    assert_eq!(after.attachment.unwrap().state, AttachmentState::Ready);
}

#[tokio::test]
async fn add_whose_wiring_fails_gives_back_the_ip_and_the_new_binding() {
    let h = Harness::new().await;
    h.dp.fail_next(Op::Wire, DatapathError::CheckFailed("no bridge".into()));
    let e = h.add("c1", "db-0").await.unwrap_err();
    assert_eq!(e.cni_code(), cni_code::DATAPATH);
    let msg = e.to_string();
    assert!(msg.contains("the IP was given back"), "{msg}");
    assert!(msg.contains("no bridge"), "the cause is kept: {msg}");
    assert!(std::error::Error::source(&e).is_some());
    // Nothing left: no lease, no binding, no attachment, counts restored.
    assert!(h.ipam.leases("db").await.unwrap().is_empty());
    assert!(
        !h.binding("db-0").await,
        "the binding this ADD made goes too"
    );
    assert!(h.ipam.attached(&h.key("c1")).await.unwrap().is_none());
    h.clean().await;
    // The runtime's retry gets an IP.
    h.add("c1", "db-0").await.unwrap();
}

#[tokio::test]
async fn a_failed_re_add_keeps_the_binding_it_did_not_make() {
    let h = Harness::new().await;
    let first = h.add("c1", "db-0").await.unwrap();
    h.node.del("c1", "eth0").await.unwrap();
    h.dp.fail_next(Op::Wire, DatapathError::CheckFailed("boom".into()));
    h.add("c2", "db-0").await.unwrap_err();
    let l = h.lease("db", first.lease.ip).await.unwrap();
    assert_eq!(l.state(), IpState::Bound, "db-0 still keeps its IP");
    assert!(h.binding("db-0").await);
    let again = h.add("c3", "db-0").await.unwrap();
    assert_eq!(again.lease.ip, first.lease.ip);
    h.clean().await;
}

#[tokio::test]
async fn a_repeated_add_returns_the_same_attachment_without_wiring_again() {
    let h = Harness::new().await;
    let a = h.add("c1", WEB_POD).await.unwrap();
    let b = h.add("c1", WEB_POD).await.unwrap();
    assert_eq!(a.lease.ip, b.lease.ip);
    assert!(b.wired.is_none(), "nothing new was created");
    assert_eq!(
        h.dp.ops(),
        [Op::Wire, Op::Check],
        "checked, not wired twice"
    );
    assert_eq!(h.ipam.leases("web").await.unwrap().len(), 1);
    h.clean().await;
}

#[tokio::test]
async fn a_repeated_add_over_broken_wiring_is_refused() {
    let h = Harness::new().await;
    h.add("c1", WEB_POD).await.unwrap();
    h.dp.lose_link(&Harness::host("c1"));
    let e = h.add("c1", WEB_POD).await.unwrap_err();
    assert!(matches!(e, Error::Conflict(_)), "{e:?}");
    assert!(e.to_string().contains("DEL it first"), "{e}");
}

#[tokio::test]
async fn a_duplicate_address_quarantines_the_ip_and_the_next_pod_gets_another() {
    let h = Harness::new().await;
    h.clock.set(T0 + 42);
    h.dp.fail_next(
        Op::Wire,
        DatapathError::AddressConflict {
            ip: "10.1.0.10".parse().unwrap(),
            mac: "52:54:00:aa:bb:cc".into(),
        },
    );
    let e = h.add("c1", WEB_POD).await.unwrap_err();
    assert_eq!(e.cni_code(), cni_code::ADDRESS_CONFLICT);
    assert!(e.to_string().contains("is quarantined"), "{e}");
    let quarantined = h.ipam.leases("web").await.unwrap();
    let [q] = quarantined.as_slice() else {
        panic!("{quarantined:?}")
    };
    assert_eq!(q.state(), IpState::Quarantined);
    let stamp = q.quarantine.as_ref().unwrap();
    assert_eq!(stamp.mac, "52:54:00:aa:bb:cc");
    assert_eq!(stamp.node, "n1");
    assert_eq!(stamp.since_unix, T0 + 42);
    let next = h.add("c2", WEB_POD).await.unwrap();
    assert_ne!(next.lease.ip, q.ip, "a quarantined IP is handed to no one");
    h.clean().await;
}

#[tokio::test]
async fn a_sticky_pod_whose_ip_is_quarantined_is_refused_not_moved() {
    let h = Harness::new().await;
    let first = h.add("c1", "db-0").await.unwrap();
    h.node.del("c1", "eth0").await.unwrap();
    h.dp.fail_next(
        Op::Wire,
        DatapathError::AddressConflict {
            ip: first.lease.ip,
            mac: "52:54:00:00:00:01".into(),
        },
    );
    h.add("c2", "db-0").await.unwrap_err();
    let e = h.add("c3", "db-0").await.unwrap_err();
    assert_eq!(e.cni_code(), cni_code::ADDRESS_CONFLICT);
    assert!(e.to_string().contains(&first.lease.ip.to_string()), "{e}");
    assert!(h.binding("db-0").await, "the binding stays with its IP");
    h.clean().await;
}

#[tokio::test]
async fn after_a_store_failure_adds_fail_fast_until_the_window_passes() {
    let h = Harness::new().await;
    h.store.set_down(true);
    let e = h.add("c1", WEB_POD).await.unwrap_err();
    assert_eq!(e.cni_code(), cni_code::TRY_AGAIN_LATER);
    h.store.set_down(false);
    // Within the window the store is not even tried.
    h.clock.advance(super::super::health::FAIL_FAST_SECS - 1);
    let e = h.add("c2", WEB_POD).await.unwrap_err();
    assert!(
        e.to_string().contains("has not answered since 2s ago"),
        "{e}"
    );
    assert!(h.ipam.leases("web").await.unwrap().is_empty());
    h.clock.advance(1);
    h.add("c3", WEB_POD).await.unwrap();
}

#[tokio::test]
async fn bad_keys_and_netns_are_refused_before_anything_is_done() {
    let h = Harness::new().await;
    for (cid, ifname) in [("-bad", "eth0"), ("c1", "a/b"), ("c1", ""), ("", "eth0")] {
        let mut r = h.req(cid, WEB_POD);
        r.ifname = ifname.into();
        let e = h.node.add(&r).await.unwrap_err();
        assert!(matches!(e, Error::Invalid(_)), "{cid:?} {ifname:?}: {e:?}");
    }
    let mut r = h.req("c1", WEB_POD);
    r.default_pool = Some("../web".into());
    let e = h.node.add(&r).await.unwrap_err();
    assert!(e.to_string().contains("the network config's pool"), "{e}");
    let mut r = h.req("c1", WEB_POD);
    r.netns = "relative/ns".into();
    let e = h.node.add(&r).await.unwrap_err();
    assert!(e.to_string().contains("is not a path"), "{e}");
    assert!(h.dp.calls().is_empty());
    assert!(h.ipam.leases("web").await.unwrap().is_empty());
}

#[tokio::test]
async fn check_and_status_read_what_add_made() {
    let h = Harness::new().await;
    let s = h.node.status().await;
    assert!(s.ready, "{s:?}");
    assert_eq!(s.free, 8);
    let a = h.add("c1", WEB_POD).await.unwrap();
    assert_eq!(h.node.status().await.free, 7);
    let mut req = crate::node::CheckRequest {
        container_id: "c1".into(),
        ifname: "eth0".into(),
        netns: String::new(),
        address: Some(a.lease.ip),
    };
    h.node.check(&req).await.unwrap();
    req.address = Some("10.1.0.250".parse().unwrap());
    assert!(matches!(h.node.check(&req).await, Err(Error::Conflict(_))));
    req.container_id = "other".into();
    let e = h.node.check(&req).await.unwrap_err();
    assert_eq!(e.cni_code(), cni_code::NOT_ATTACHED);
    h.dp.lose_link(&Harness::host("c1"));
    req.container_id = "c1".into();
    req.address = None;
    assert_eq!(
        h.node.check(&req).await.unwrap_err().cni_code(),
        cni_code::DATAPATH
    );
}

#[tokio::test]
async fn a_store_that_answers_again_ends_the_fail_fast_window_at_once() {
    let h = Harness::new().await;
    h.store.set_down(true);
    h.add("c1", WEB_POD).await.unwrap_err();
    h.store.set_down(false);
    // Any answer of the store (here to a DEL) shows it is back: the next
    // ADD, in the same second, is served.
    assert_eq!(h.node.del("c0", "eth0").await.unwrap(), None);
    h.add("c2", WEB_POD).await.unwrap();
}

/// An ADD commits once, before it wires: a store that goes away while the
/// pod is being wired does not fail it (before, a second commit marked the
/// attachment ready after the wiring, and an outage then undid the ADD).
#[tokio::test]
async fn an_outage_after_the_commit_does_not_fail_the_add() {
    let h = Harness::new().await;
    let dp = Interrupting::new(&h.dp, AfterWire::StoreDown(h.store.clone()));
    let h = h.restart_with(dp);
    let a = h.add("c1", "db-0").await.unwrap();
    assert!(h.dp.is_wired(&Harness::host("c1")));
    assert!(
        h.node.inflight.leftovers("n1").is_empty(),
        "the mark is gone"
    );
    h.store.set_down(false);
    let held = h.ipam.attached(&h.key("c1")).await.unwrap().unwrap();
    assert_eq!(held.ip, a.lease.ip);
    assert_eq!(held.attachment.unwrap().state, AttachmentState::Ready);
    assert!(h.binding("db-0").await);
    assert_eq!(h.pending_files(), 0);
    h.clean().await;
}

/// The store committed an ADD's allocation and went away before it
/// answered (an etcd leader dying right after the commit): the ADD fails
/// without knowing. The runtime's retry of the same attachment finds it
/// Ready but unwired, and wires it (one IP, no "DEL it first"); a key with
/// no such lost reply is still refused (the test above).
#[tokio::test]
async fn a_retried_add_wires_what_a_lost_commit_reply_left() {
    let h = Harness::new().await;
    h.store.lose_next_reply();
    let e = h.add("c1", "db-0").await.unwrap_err();
    assert_eq!(e.cni_code(), cni_code::TRY_AGAIN_LATER, "{e}");
    assert!(!h.dp.is_wired(&Harness::host("c1")));
    h.store.set_down(false);
    h.clock.advance(super::super::health::FAIL_FAST_SECS);
    let landed = h.ipam.attached(&h.key("c1")).await.unwrap().unwrap();
    assert_eq!(
        landed.attachment.as_ref().unwrap().state,
        AttachmentState::Ready
    );

    let a = h.add("c1", "db-0").await.unwrap();
    assert_eq!(a.lease.ip, landed.ip, "the IP the lost commit took");
    assert!(h.dp.is_wired(&Harness::host("c1")));
    assert!(
        h.node.inflight.leftovers("n1").is_empty(),
        "the mark is gone once wired"
    );
    h.node.del("c1", "eth0").await.unwrap();
    h.clean().await;
}
