//! ADD and DEL through the node's view of a real etcd: what each costs in
//! store calls, and that a stale view costs a second try, never a wrong IP.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use moor_testkit::EtcdCluster;

use super::*;
use crate::store::etcd::{EtcdOptions, EtcdStore};
use crate::store::{Entry, Store, StoreError, Txn, WatchStream};

/// Counts the calls of one store, by kind.
pub(super) struct Counting {
    inner: Arc<dyn Store>,
    reads: AtomicUsize,
    commits: AtomicUsize,
    /// The next commit is applied, then answered with `Unavailable` (an
    /// etcd leader dying right after committing).
    lose_reply: AtomicBool,
    /// The prefixes watched, in order.
    watched: std::sync::Mutex<Vec<String>>,
}

impl Counting {
    pub(super) fn take(&self) -> (usize, usize) {
        (
            self.reads.swap(0, Ordering::SeqCst),
            self.commits.swap(0, Ordering::SeqCst),
        )
    }

    /// The keys of `pool`'s leases watched last.
    fn lease_range(&self, pool: &str) -> Option<String> {
        let watched = self.watched.lock().unwrap();
        watched
            .iter()
            .rev()
            .find(|p| p.starts_with(&keys::leases(pool)))
            .cloned()
    }
}

#[async_trait]
impl Store for Counting {
    async fn get(&self, key: &str) -> std::result::Result<Option<Entry>, StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> std::result::Result<(Vec<Entry>, u64), StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.list(prefix).await
    }
    async fn list_keys(&self, prefix: &str) -> std::result::Result<Vec<String>, StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.list_keys(prefix).await
    }
    async fn commit(&self, txn: Txn) -> std::result::Result<bool, StoreError> {
        self.commits.fetch_add(1, Ordering::SeqCst);
        self.inner.commit(txn).await
    }
    async fn commit_at(&self, txn: Txn) -> std::result::Result<Option<u64>, StoreError> {
        self.commits.fetch_add(1, Ordering::SeqCst);
        let done = self.inner.commit_at(txn).await;
        if self.lose_reply.swap(false, Ordering::SeqCst) {
            assert!(matches!(done, Ok(Some(_))), "the lost commit applied");
            return Err(StoreError::Unavailable("the answer was lost".into()));
        }
        done
    }
    async fn watch(
        &self,
        prefix: &str,
        after: u64,
    ) -> std::result::Result<WatchStream, StoreError> {
        self.watched.lock().unwrap().push(prefix.to_string());
        self.inner.watch(prefix, after).await
    }
    fn keeps_history(&self) -> bool {
        self.inner.keeps_history()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

pub(super) struct Setup {
    pub(super) _etcd: EtcdCluster,
    pub(super) counting: Arc<Counting>,
    /// Node n1's: counted, with a view of ToR r1.
    pub(super) ipam: Ipam,
    /// Another node's, on the same etcd, without a view.
    pub(super) other: Ipam,
}

pub(super) async fn setup(test: &str) -> Setup {
    let dir = std::env::temp_dir().join(moor_testkit::unique(&format!("moor-view-{test}")));
    let etcd = EtcdCluster::start(&dir, 1, &format!("moor-view-{test}"), &[])
        .unwrap_or_else(|e| panic!("these tests need a real etcd: {e}"));
    etcd.wait_ready_async(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let open = || async {
        let s = EtcdStore::open(EtcdOptions::new(etcd.endpoints()))
            .await
            .unwrap();
        Arc::new(s) as Arc<dyn Store>
    };
    let other = Ipam::new(open().await);
    other
        .add_tor(
            "r1",
            "10.1.0.0/24",
            "10.1.0.1",
            0,
            &[range("10.1.0.10", "10.1.0.99")],
            "",
        )
        .await
        .unwrap();
    for (name, policy) in [("web", Policy::Auto), ("db", Policy::Auto)] {
        other
            .create_pool(
                &PoolSpec {
                    name: name.into(),
                    namespace: "default".into(),
                    app: name.into(),
                    size: 20,
                    policy,
                    ..PoolSpec::default()
                },
                0,
            )
            .await
            .unwrap();
    }
    let counting = Arc::new(Counting {
        inner: open().await,
        reads: AtomicUsize::new(0),
        commits: AtomicUsize::new(0),
        lose_reply: AtomicBool::new(false),
        watched: Default::default(),
    });
    let ipam = Ipam::new(counting.clone());
    ipam.serve_node("n1");
    assert!(ipam.start_view("r1"));
    let view = ipam.view_for("r1").unwrap();
    eventually("the view catches up", || {
        view.ready() && view.pool_data("web").is_some() && view.pool_data("db").is_some()
    })
    .await;
    counting.take();
    Setup {
        _etcd: etcd,
        counting,
        ipam,
        other,
    }
}

/// A second ToR, r2, that node n1's view does not follow.
pub(super) async fn add_r2(ipam: &Ipam) {
    ipam.add_tor(
        "r2",
        "10.2.0.0/24",
        "10.2.0.1",
        0,
        &[range("10.2.0.10", "10.2.0.99")],
        "",
    )
    .await
    .unwrap();
}

pub(super) fn req(cid: &str, pod: &str) -> AllocRequest {
    AllocRequest::for_test("n1", "r1", cid, pod, 100)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_is_one_commit_and_del_one_commit() {
    let s = setup("cost").await;
    // Back to back in one pool: each decided from the view, which holds
    // the previous ADD's own commit at once.
    let mut ips = BTreeSet::new();
    for i in 0..5 {
        let a = s
            .ipam
            .allocate(&req(
                &format!("c{i}"),
                &format!("web-7d9f8c6b5-x2x9{}", b"bcdfg"[i] as char),
            ))
            .await
            .unwrap();
        assert!(ips.insert(a.lease.ip), "{} twice", a.lease.ip);
        assert_eq!(s.counting.take(), (0, 1), "ADD {i}: no read, one commit");
    }
    // A StatefulSet pod's first ADD makes its binding; its DEL keeps it.
    let first = s.ipam.allocate(&req("s1", "db-0")).await.unwrap();
    assert_eq!(s.counting.take(), (0, 1));
    let r = s
        .ipam
        .release(&first.attachment().key, false)
        .await
        .unwrap();
    assert!(r.unwrap().binding_kept);
    // The attachment found in the view (no index entry to read, schema 5).
    assert_eq!(s.counting.take(), (0, 1), "DEL: no read, one commit");
    // Returning: its binding read once (for its version), one commit, the
    // same IP.
    let back = s.ipam.allocate(&req("s2", "db-0")).await.unwrap();
    assert_eq!(back.lease.ip, first.lease.ip);
    assert_eq!(
        s.counting.take(),
        (1, 1),
        "returning pod: one read, one commit"
    );
    // A Deployment pod's DEL frees its IP.
    s.ipam.release(&req("c0", "x").key, false).await.unwrap();
    assert_eq!(s.counting.take(), (0, 1));
    // A DEL of a key never attached: the view says so, nothing is asked.
    assert!(s
        .ipam
        .release(&req("nope", "x").key, false)
        .await
        .unwrap()
        .is_none());
    assert_eq!(s.counting.take(), (0, 0));
    let c = s.ipam.free_count("web", "r1").await;
    assert_eq!((c.total, c.free), (20, 16), "4 of web's IPs in use");
    assert!(audit(s.ipam.store().as_ref()).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_view_costs_a_second_try_never_a_taken_ip() {
    let s = setup("stale").await;
    let view = s.ipam.view_for("r1").unwrap();
    // Another node takes web's lowest free IP; this node's view is made to
    // miss it (as a view whose watch lags does).
    let theirs = s
        .other
        .allocate(&AllocRequest::for_test(
            "n2",
            "r1",
            "o1",
            "web-7d9f8c6b5-d2x9z",
            100,
        ))
        .await
        .unwrap();
    eventually("their lease reaches the view", || {
        !view.pool_data("web").unwrap().leases.is_empty()
    })
    .await;
    view.forget(&keys::lease("web", theirs.lease.ip));
    let mine = s
        .ipam
        .allocate(&req("c1", "web-7d9f8c6b5-m2x9z"))
        .await
        .unwrap();
    assert_ne!(mine.lease.ip, theirs.lease.ip, "never the taken IP");
    let (reads, commits) = s.counting.take();
    assert_eq!(commits, 2, "the view's commit failed, the reading one held");
    // Pool, leases, binding (that the key is not attached yet: the view).
    assert_eq!(reads, 3, "the second try read the store");
    // DEL from a view that lags behind another writer's change of the
    // lease: the view's commit fails, and the reading way reads the lease
    // where the view had it and releases it.
    let ip = mine.lease.ip;
    let lease_key = keys::lease("web", ip);
    eventually("my lease reaches the view", || {
        matches!(view.lease("web", ip), Some(Some(_)))
    })
    .await;
    let (old, old_entry) = view.lease("web", ip).unwrap().unwrap();
    let store = s.other.store();
    let now = store.get(&lease_key).await.unwrap().unwrap();
    let mut txn = Txn::default();
    txn.expect(&lease_key, Some(&now))
        .ops
        .push(crate::store::Op::Put {
            key: lease_key.clone(),
            value: now.value.clone(),
        });
    assert!(store.commit(txn).await.unwrap());
    eventually("their rewrite reaches the view", || {
        view.lease("web", ip)
            .unwrap()
            .is_some_and(|(_, e)| e.version > old_entry.version)
    })
    .await;
    view.rewind(&lease_key, old, old_entry.version);
    s.counting.take();
    let r = s.ipam.release(&mine.attachment().key, false).await.unwrap();
    assert_eq!(r.unwrap().ip, ip);
    // The view's commit failed; the lease read again; the reading commit
    // held.
    assert_eq!(s.counting.take(), (1, 2));
    assert!(s
        .ipam
        .leases("web")
        .await
        .unwrap()
        .iter()
        .all(|l| l.ip != mine.lease.ip));
    assert!(audit(s.ipam.store().as_ref()).await.unwrap().is_empty());
}

/// The view's commit applied but its answer was lost: the reading way finds
/// the attachment and says it may be this ADD's own (so the node wires it
/// instead of refusing it as an earlier ADD's broken wiring).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_whose_commit_answer_was_lost_finds_its_own_attachment() {
    let s = setup("lost").await;
    s.counting.lose_reply.store(true, Ordering::SeqCst);
    let a = s
        .ipam
        .allocate(&req("c1", "web-7d9f8c6b5-l2x9z"))
        .await
        .unwrap();
    assert!(a.existing && a.after_lost_reply, "{a:?}");
    assert_eq!(s.counting.take().1, 1, "one commit: the lost one");
    // A repeated ADD of a key attached before is existing, not "lost".
    let again = s
        .ipam
        .allocate(&req("c1", "web-7d9f8c6b5-l2x9z"))
        .await
        .unwrap();
    assert_eq!(again.lease.ip, a.lease.ip);
    assert!(again.existing && !again.after_lost_reply, "{again:?}");
    s.ipam.release(&a.attachment().key, false).await.unwrap();
    assert!(audit(s.ipam.store().as_ref()).await.unwrap().is_empty());
}

/// Waits up to 10 s for `what` to hold.
pub(super) async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A pool over two ToRs: this node follows only the keys of its ToR's
/// IPs, so the ADDs of another ToR send it nothing; when the pool grows,
/// it follows the keys of its new IPs. ADDs still cost one commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_over_two_tors_is_followed_on_this_tor_only() {
    let s = setup("range").await;
    add_r2(&s.other).await;
    let spec = PoolSpec {
        name: "spread".into(),
        namespace: "default".into(),
        app: "spread".into(),
        size: 20,
        policy: Policy::Auto,
        tors: vec!["r1".into(), "r2".into()],
        ..PoolSpec::default()
    };
    s.other.create_pool(&spec, 0).await.unwrap();
    let view = s.ipam.view_for("r1").unwrap();
    eventually("the view follows spread", || {
        view.ready() && view.pool_data("spread").is_some()
    })
    .await;
    // The keys followed: every IP of r1, none of r2.
    let covers = |range: &str, pool: &crate::core::Pool| {
        assert!(
            !pool.ips["r1"].is_empty() && !pool.ips["r2"].is_empty(),
            "{:?}",
            pool.ips
        );
        let on = |tor: &str| {
            pool.ips[tor]
                .iter()
                .map(|ip| keys::lease("spread", *ip).starts_with(range))
                .collect::<Vec<_>>()
        };
        assert!(on("r1").iter().all(|b| *b), "{range} misses r1's IPs");
        assert!(on("r2").iter().all(|b| !*b), "{range} covers r2's IPs");
    };
    let first = s.counting.lease_range("spread").unwrap();
    covers(&first, &s.other.pool("spread").await.unwrap().0);

    // Another node of r2 takes an IP, then one of r1: the view gets r1's
    // lease, never r2's.
    let at = |node: &str, tor: &str, cid: &str, pod: &str| {
        AllocRequest::for_test(node, tor, cid, pod, 100)
    };
    let there = s
        .other
        .allocate(&at("n3", "r2", "o2", "spread-7d9f8c6b5-t2x9z"))
        .await
        .unwrap();
    let here = s
        .other
        .allocate(&at("n2", "r1", "o1", "spread-7d9f8c6b5-h2x9z"))
        .await
        .unwrap();
    let held = || -> Vec<IpAddr> {
        let read = view.pool_data("spread").unwrap();
        read.leases.iter().map(|(l, _)| l.ip).collect()
    };
    eventually("r1's lease reaches the view", || {
        held().contains(&here.lease.ip)
    })
    .await;
    assert!(
        !held().contains(&there.lease.ip),
        "r2's lease reached r1's view"
    );
    // Asked for a lease it does not follow, the view cannot say (a DEL
    // then reads the store); one it follows, it has.
    assert!(view.lease("spread", there.lease.ip).is_none());
    assert!(matches!(view.lease("spread", here.lease.ip), Some(Some(_))));
    s.counting.take();
    let mine = s
        .ipam
        .allocate(&req("c1", "spread-7d9f8c6b5-m2x9z"))
        .await
        .unwrap();
    assert_ne!(mine.lease.ip, here.lease.ip);
    assert_eq!(s.counting.take(), (0, 1), "from the view: one commit");
    // The view's counts are of r1 only (it has no r2 lease to count), and
    // r1's are the store's.
    let counts = view.pool_counts().unwrap();
    assert!(
        counts.iter().all(|(_, c)| c.keys().all(|seg| seg == "r1")),
        "{counts:?}"
    );
    let spread = counts.iter().find(|(p, _)| p == "spread").unwrap();
    let c = s.ipam.free_count("spread", "r1").await;
    assert_eq!((spread.1["r1"].in_use, c.free), (2, spread.1["r1"].free));

    // Grown: more IPs on r1, under other keys; the view follows them.
    s.other.resize_pool("spread", 60, 0).await.unwrap();
    let grown = s.other.pool("spread").await.unwrap().0;
    eventually("the view follows spread's new IPs", || {
        s.counting.lease_range("spread").as_ref() != Some(&first)
            && view.ready()
            && view.pool_data("spread").is_some()
    })
    .await;
    covers(&s.counting.lease_range("spread").unwrap(), &grown);
    assert!(held().contains(&mine.lease.ip) && held().contains(&here.lease.ip));
    // Every r1 IP but the two held, through the view, one commit each.
    let suffix = |i: usize| {
        let a = b"bcdfghjklmnpqrstvwxz2456789";
        format!("g{}{}x9", a[i % 27] as char, a[i / 27 % 27] as char)
    };
    s.counting.take();
    let free = grown.ips["r1"].len() - 2;
    let mut got = BTreeSet::new();
    for i in 0..free {
        let a = s
            .ipam
            .allocate(&req(
                &format!("g{i}"),
                &format!("spread-7d9f8c6b5-{}", suffix(i)),
            ))
            .await
            .unwrap();
        assert!(got.insert(a.lease.ip) && grown.ips["r1"].contains(&a.lease.ip));
    }
    assert_eq!(s.counting.take(), (0, free), "{free} ADDs from the view");
    assert!(audit(s.ipam.store().as_ref()).await.unwrap().is_empty());
}
