//! Attachments found by their key on a real etcd, where ADDs write no index
//! entry (schema 5, `find.rs`): from the node's view, by walking the leases
//! (an Ipam without a view), where the node's mirror says (a node moved to
//! another ToR), and the index entries an ipamd of schema 4 left.

use crate::audit::audit;
use crate::core::AttachmentRef;
use crate::store::Txn;

use super::view::{add_r2, req, setup};
use super::*;

/// Every key under `prefix` in the store.
async fn keys_under(ipam: &Ipam, prefix: &str) -> Vec<String> {
    ipam.store().list_keys(prefix).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_writes_its_lease_alone_and_every_way_finds_it() {
    let s = setup("find-ways").await;
    let mine: Vec<Allocation> = {
        let mut v = Vec::new();
        for (cid, pod) in [("c1", "web-7d9f8c6b5-b2x9z"), ("c2", "db-0")] {
            v.push(s.ipam.allocate(&req(cid, pod)).await.unwrap());
        }
        v
    };
    // Another node's ADD, without a view: the reading way.
    let theirs = s
        .other
        .allocate(&AllocRequest::for_test(
            "n2",
            "r1",
            "o1",
            "web-7d9f8c6b5-q2x9z",
            100,
        ))
        .await
        .unwrap();
    assert!(
        keys_under(&s.ipam, keys::ATTACHMENTS).await.is_empty(),
        "no index entry on etcd"
    );
    assert!(audit(s.ipam.store().as_ref()).await.unwrap().is_empty());
    s.counting.take();

    // A repeated ADD: found in the view, read once to be sure, no commit.
    let again = s
        .ipam
        .allocate(&req("c1", "web-7d9f8c6b5-b2x9z"))
        .await
        .unwrap();
    assert!(again.existing, "{again:?}");
    assert_eq!(again.lease.ip, mine[0].lease.ip);
    assert_eq!(
        s.counting.take(),
        (1, 0),
        "a repeated ADD: one read (the lease the view named), no commit"
    );

    // The node's attachments: from the view, and by walking the leases.
    let ips = |v: Vec<Lease>| v.into_iter().map(|l| l.ip).collect::<BTreeSet<_>>();
    let want: BTreeSet<_> = mine.iter().map(|a| a.lease.ip).collect();
    let (viewed, corrupt) = s.ipam.node_attachments("n1").await.unwrap();
    assert!(corrupt.is_empty());
    assert_eq!(ips(viewed), want);
    assert_eq!(s.counting.take(), (0, 0), "from the view: nothing read");
    let (walked, _) = s.other.node_attachments("n1").await.unwrap();
    assert_eq!(ips(walked), want);
    let (n2, _) = s.other.node_attachments("n2").await.unwrap();
    assert_eq!(ips(n2), BTreeSet::from([theirs.lease.ip]));

    // Found and released by walking (no view), and through the view.
    let key = &mine[1].attachment().key;
    let found = s.other.attached(key).await.unwrap().unwrap();
    assert_eq!(found.ip, mine[1].lease.ip);
    // Another node's attachment, released here (as the controller's GC
    // does): not taken from the view, which answers for n1 only; an index
    // entry schema 4 left for it goes with it.
    let theirs_key = &theirs.attachment().key;
    let mut t = Txn::default();
    t.put(
        &keys::attachment(theirs_key),
        &AttachmentRef {
            pool: theirs.lease.pool.clone(),
            ip: theirs.lease.ip,
        },
    );
    assert!(s.ipam.store().commit(t).await.unwrap());
    let r = s.ipam.release(theirs_key, false).await.unwrap();
    assert_eq!(r.unwrap().ip, theirs.lease.ip);
    assert!(keys_under(&s.ipam, keys::ATTACHMENTS).await.is_empty());
    let r = s.ipam.release(key, false).await.unwrap().unwrap();
    assert!(r.binding_kept, "db-0 keeps its IP");
    assert!(s.ipam.attached(key).await.unwrap().is_none());
    assert!(s.other.release(key, false).await.unwrap().is_none());
    assert!(audit(s.ipam.store().as_ref()).await.unwrap().is_empty());
}

/// A node moved to another ToR (its label changed while its pods ran)
/// follows the new ToR's leases: its old attachments are found where its
/// mirror says they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_outside_the_view_are_found_where_the_mirror_says() {
    let s = setup("find-moved").await;
    add_r2(&s.other).await;
    let spec = PoolSpec {
        name: "far".into(),
        namespace: "default".into(),
        app: "far".into(),
        size: 4,
        tors: vec!["r2".into()],
        ..PoolSpec::default()
    };
    s.other.create_pool(&spec, 0).await.unwrap();
    // Attached on r2 for node n1, whose view now follows r1.
    let old = s
        .other
        .allocate(&AllocRequest::for_test(
            "n1",
            "r2",
            "c9",
            "far-7d9f8c6b5-f2x9z",
            100,
        ))
        .await
        .unwrap();
    let key = &old.attachment().key;
    let hint = Some((old.lease.pool.as_str(), old.lease.ip));
    assert!(s.ipam.attached(key).await.unwrap().is_none(), "not on r1");
    let found = s.ipam.attached_at(key, hint).await.unwrap().unwrap();
    assert_eq!(found.ip, old.lease.ip);
    let r = s.ipam.release_at(key, false, hint).await.unwrap().unwrap();
    assert_eq!(r.ip, old.lease.ip);
    assert!(s.other.attached(key).await.unwrap().is_none());
    // A hint that no longer holds: nothing released, nothing walked.
    s.counting.take();
    assert!(s.ipam.release_at(key, false, hint).await.unwrap().is_none());
    assert_eq!(s.counting.take(), (1, 0), "the hint read, no commit");
    assert!(audit(s.ipam.store().as_ref()).await.unwrap().is_empty());
}

/// Index entries an ipamd of schema 4 wrote: audit takes a matching one as
/// sound and names one that points at a lease not attached to it; the
/// node's start drops its own (stale or not: a DEL replayed at the start,
/// before the drop, leaves its entry behind), and DELs go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_entries_from_schema_4_are_checked_then_dropped() {
    let s = setup("find-v4").await;
    let a = s
        .ipam
        .allocate(&req("c1", "web-7d9f8c6b5-v2x9z"))
        .await
        .unwrap();
    let b = s
        .ipam
        .allocate(&req("c2", "web-7d9f8c6b5-w2x9z"))
        .await
        .unwrap();
    let put = |key: String, r: AttachmentRef| {
        let mut t = Txn::default();
        t.put(&key, &r);
        t
    };
    let store = s.ipam.store().clone();
    let entry = |a: &Allocation| {
        (
            keys::attachment(&a.attachment().key),
            AttachmentRef {
                pool: a.lease.pool.clone(),
                ip: a.lease.ip,
            },
        )
    };
    let (ka, ra) = entry(&a);
    assert!(store.commit(put(ka.clone(), ra)).await.unwrap());
    assert!(
        audit(store.as_ref()).await.unwrap().is_empty(),
        "a matching entry is sound"
    );
    // One that points at the other attachment's lease.
    let (kb, _) = entry(&b);
    let (_, ra) = entry(&a);
    assert!(store.commit(put(kb.clone(), ra)).await.unwrap());
    // Named from both ends: the entry, and the lease whose entry it is not.
    let found = audit(store.as_ref()).await.unwrap();
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found.iter().all(|f| f.contains(&kb)), "{found:?}");

    assert_eq!(s.ipam.drop_index_of("n1").await.unwrap(), 2);
    assert!(keys_under(&s.ipam, keys::ATTACHMENTS).await.is_empty());
    assert_eq!(s.ipam.drop_index_of("n1").await.unwrap(), 0, "idempotent");
    assert!(audit(store.as_ref()).await.unwrap().is_empty());
    for x in [&a, &b] {
        let r = s.ipam.release(&x.attachment().key, false).await.unwrap();
        assert_eq!(r.unwrap().ip, x.lease.ip);
    }
    assert!(audit(store.as_ref()).await.unwrap().is_empty());
}

/// A lease this node wrote that its view could not take in (here: of a pool
/// whose record the view has not seen) makes the view answer "cannot say"
/// until it has seen the write's revision: meanwhile the store is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_the_view_did_not_take_in_sends_lookups_to_the_store() {
    let s = setup("find-unseen").await;
    let view = s.ipam.view_for("r1").unwrap();
    let r = req("g1", "ghost-7d9f8c6b5-g2x9z");
    let ip: std::net::IpAddr = "10.1.0.200".parse().unwrap();
    let lease = Lease {
        ip,
        ipv6: None,
        pool: "ghost".into(),
        tor: "r1".into(),
        binding: None,
        attachment: Some(Attachment {
            key: r.key.clone(),
            pod: r.pod.clone(),
            netns: r.netns.clone(),
            network: r.network.clone(),
            state: crate::core::AttachmentState::Ready,
            created_unix: 100,
            created_binding: false,
        }),
        evict: false,
        quarantine: None,
    };
    let mut txn = Txn::default();
    txn.put(&keys::lease("ghost", ip), &lease);
    let ops = txn.ops.clone();
    let rev = s.ipam.store().commit_at(txn).await.unwrap().unwrap();
    view.committed(&ops, rev, &[]);
    assert!(view.attached(&r.key).is_none(), "the view cannot say");
    s.counting.take();
    let found = s.ipam.attached(&r.key).await.unwrap().unwrap();
    assert_eq!(found.ip, ip);
    assert!(s.counting.take().0 >= 1, "found by reading the store");
    // The view sees a revision past the write (another pool's record) and
    // ghost has no record: it answers again.
    let spec = PoolSpec {
        name: "later".into(),
        namespace: "default".into(),
        app: "later".into(),
        size: 2,
        ..PoolSpec::default()
    };
    s.other.create_pool(&spec, 0).await.unwrap();
    super::view::eventually("the view has seen past the write", || {
        view.attached(&r.key).is_some()
    })
    .await;
    let mut txn = Txn::default();
    txn.delete(&keys::lease("ghost", ip));
    assert!(s.ipam.store().commit(txn).await.unwrap());
}
