//! ADDs of one pool that arrive together are decided together and
//! committed at once: each gets its own IP, the free count is exact, and a
//! burst costs fewer commits than pods.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::store::{Entry, Store, StoreError, Txn, WatchStream};

/// A store whose commits take as long as a durable write on a disk.
struct Slow {
    inner: Arc<MemStore>,
    commits: AtomicUsize,
}

#[async_trait]
impl Store for Slow {
    async fn get(&self, key: &str) -> std::result::Result<Option<Entry>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> std::result::Result<(Vec<Entry>, u64), StoreError> {
        self.inner.list(prefix).await
    }
    async fn commit(&self, txn: Txn) -> std::result::Result<bool, StoreError> {
        self.commits.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(3)).await;
        self.inner.commit(txn).await
    }
    async fn watch(&self, p: &str, after: u64) -> std::result::Result<WatchStream, StoreError> {
        self.inner.watch(p, after).await
    }
    fn describe(&self) -> String {
        "slow memory".into()
    }
}

fn deployment_pod(i: usize) -> String {
    let c = |n: usize| b"bcdfghjklmnpqrstvwxz2456789"[n % 27] as char;
    format!("web-7d9f8c6b5-{}{}x9z", c(i), c(i / 27))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_on_one_pool_goes_in_batches_each_pod_its_own_ip() {
    let (mem, _) = setup(20, Policy::Auto).await;
    let slow = Arc::new(Slow {
        inner: mem.clone(),
        commits: AtomicUsize::new(0),
    });
    let ipam = Arc::new(Ipam::new(slow.clone()));
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let ipam = ipam.clone();
            tokio::spawn(async move {
                ipam.allocate(&req("n1", "r1", &format!("c{i}"), &deployment_pod(i)))
                    .await
            })
        })
        .collect();
    let mut ips = BTreeSet::new();
    for t in tasks {
        let a = t.await.unwrap().unwrap();
        assert_eq!(a.lease.tor, "r1");
        assert!(ips.insert(a.lease.ip), "{} twice", a.lease.ip);
    }
    let commits = slow.commits.load(Ordering::SeqCst);
    assert!(
        commits < 10,
        "10 ADDs, {commits} commits: none went together"
    );
    // web has 10 IPs on r1, all taken now: the next is refused, worded.
    let e = ipam
        .allocate(&req("n1", "r1", "c10", &deployment_pod(10)))
        .await
        .unwrap_err();
    assert_eq!(code(e).0, cni_code::POOL_FULL);
    let c = ipam.free_count("web", "r1").await;
    assert_eq!((c.total, c.free), (10, 0));
    clean(&mem).await;
}

/// In one batch: a second ADD of the same attachment is refused (the
/// runtime retries it), and a refused ADD leaves the others' commit alone.
#[tokio::test]
async fn one_batch_refuses_a_duplicate_and_keeps_the_rest() {
    let (mem, ipam) = setup(4, Policy::Auto).await;
    let a = req("n1", "r1", "c1", &deployment_pod(1));
    let b = req("n1", "r1", "c2", "db-0");
    let segments = ipam.segments_of("r1").await.unwrap();
    let batch: Vec<attach::Waiting> = [a.clone(), a, b.clone()]
        .into_iter()
        .map(|req| attach::Waiting {
            req,
            segments: segments.clone(),
            not_attached: false,
        })
        .collect();
    let out = ipam.allocate_batch("web", batch).await;
    assert!(out[0].is_ok(), "{:?}", out[0]);
    assert!(
        matches!(&out[1], Err(Error::Conflict(m)) if m.contains("another ADD of")),
        "{:?}",
        out[1]
    );
    let db = out[2].as_ref().unwrap();
    assert_ne!(db.lease.ip, out[0].as_ref().unwrap().lease.ip);
    assert!(db.lease.binding.is_some(), "db-0 keeps its IP");
    // Both decided ADDs were committed, the duplicate left nothing.
    let held: BTreeSet<_> = ipam
        .leases("web")
        .await
        .unwrap()
        .iter()
        .map(|l| l.ip)
        .collect();
    let decided: BTreeSet<_> = [&out[0], &out[2]]
        .iter()
        .map(|r| r.as_ref().unwrap().lease.ip)
        .collect();
    assert_eq!(held, decided);
    let (binding, _) = mem
        .get_json::<crate::core::Binding>(&keys::binding(&b.pod))
        .await
        .unwrap()
        .expect("db-0's binding is in the store");
    assert_eq!(binding.ip, db.lease.ip);
    clean(&mem).await;
}
