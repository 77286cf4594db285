//! Pool changes stopped (as by kill -9) after every one of their commits:
//! a fresh ipamd on the same store finishes or undoes each one, and the
//! store is sound. `StopAfter` fails every store call after N commits.

use std::sync::Arc;

use super::big_pools::{assert_pool, bound_pool, copy, many_tors, spec, COOLDOWN};
use crate::error::Result;
use crate::ipam::Ipam;
use crate::store::mem::MemStore;
use crate::store::stop::StopAfter;

/// Runs `op` on a copy of `base` stopped after N commits, for N = 0, 1, ...
/// until it completes; after each stop a fresh Ipam finishes the store,
/// which must then hold `done` (N > 0: a change that began is finished)
/// or `undone` (N = 0). Returns the commits the whole change took.
async fn stop_everywhere<F, Fut>(
    base: &MemStore,
    pool: &str,
    undone: Option<u32>,
    done: Option<u32>,
    op: F,
) -> u64
where
    F: Fn(Arc<Ipam>) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut n = 0;
    loop {
        let store = copy(base).await;
        let stopping = Arc::new(StopAfter::new(store.clone(), n));
        let ipam = Arc::new(Ipam::new(stopping.clone()).with_cooldown(COOLDOWN));
        let r = op(ipam).await;
        let completed = !stopping.stopped() || r.is_ok();
        if completed {
            r.unwrap();
        }
        let fresh =
            Ipam::new(store.clone() as Arc<dyn crate::store::Store>).with_cooldown(COOLDOWN);
        fresh.finish_pool_ops(1_000).await.unwrap();
        let want = if n == 0 && !completed { undone } else { done };
        assert_pool(&store, pool, want, &format!("stopped after {n} commits")).await;
        if completed {
            return n;
        }
        n += 1;
    }
}

async fn with_wide(base: &MemStore, size: u32) -> Arc<MemStore> {
    let store = copy(base).await;
    Ipam::new(store.clone())
        .with_cooldown(COOLDOWN)
        .create_pool(&spec("wide", size), 0)
        .await
        .unwrap();
    store
}

#[tokio::test]
async fn pool_over_200_tors_stopped_at_every_step() {
    let base = many_tors().await;
    let n = stop_everywhere(&base, "wide", None, Some(400), |ipam| async move {
        ipam.create_pool(&spec("wide", 400), 10).await.map(drop)
    })
    .await;
    assert!(n > 5, "create took {n} commits");
    let wide = with_wide(&base, 400).await;
    let n = stop_everywhere(&wide, "wide", Some(400), Some(1000), |ipam| async move {
        ipam.resize_pool("wide", 1000, 20).await.map(drop)
    })
    .await;
    assert!(n > 3, "grow took {n} commits");
    let n = stop_everywhere(&wide, "wide", Some(400), Some(200), |ipam| async move {
        ipam.resize_pool("wide", 200, 20).await.map(drop)
    })
    .await;
    assert!(n > 3, "shrink took {n} commits");
    let n = stop_everywhere(&wide, "wide", Some(400), None, |ipam| async move {
        ipam.delete_pool("wide", 20).await.map(drop)
    })
    .await;
    assert!(n > 3, "delete took {n} commits");
}

#[tokio::test]
async fn pool_with_1000_bindings_deleted_and_stopped_at_every_step() {
    let base = bound_pool().await;
    let n = stop_everywhere(&base, "bound", Some(1000), None, |ipam| async move {
        ipam.delete_pool("bound", 20).await.map(drop)
    })
    .await;
    assert!(n > 30, "delete took {n} commits: 1,000 bindings in chunks");
}

#[tokio::test]
async fn create_with_bindings_stopped_at_every_step() {
    let base = Arc::new(MemStore::new());
    Ipam::new(base.clone())
        .add_tor("big", "10.9.0.0/24", "10.9.0.1", 0, &[], "")
        .await
        .unwrap();
    let n = stop_everywhere(&base, "kept", None, Some(100), |ipam| async move {
        let spec = crate::ipam::PoolSpec {
            ips: (0..100u32)
                .map(|n| std::net::IpAddr::from(std::net::Ipv4Addr::from(0x0a09_0002 + n)))
                .collect(),
            bind: (0..100)
                .map(|n| super::big_pools::pod(&format!("kept-{n}")))
                .collect(),
            ..spec("kept", 0)
        };
        ipam.create_pool(&spec, 10).await.map(drop)
    })
    .await;
    assert!(n > 4, "create took {n} commits: bindings in chunks");
}

#[tokio::test]
async fn grow_undone_stopped_at_every_step() {
    use super::big_pools::{carving, set_op};
    let base = many_tors().await;
    let ipam = Ipam::new(base.clone()).with_cooldown(COOLDOWN);
    ipam.create_pool(&spec("web", 2), 0).await.unwrap();
    let full = crate::ipam::PoolSpec {
        tors: vec!["t150".into()],
        ..spec("full", 8)
    };
    ipam.create_pool(&full, 1).await.unwrap();
    // A grow by one IP on every ToR, begun before t150 filled up: it
    // carves for several steps, fails at t150, then gives all back.
    set_op(&base, "web", carving(false)).await;
    let n = stop_everywhere(&base, "web", Some(2), Some(2), |ipam| async move {
        ipam.finish_pool_ops(6).await.map(drop)
    })
    .await;
    assert!(n > 5, "the undone grow took {n} commits");
}
