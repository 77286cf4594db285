//! Optimistic concurrency, written once: read what a change depends on,
//! decide, commit the decision as one compare-and-swap transaction, and when
//! another writer got there first (a check failed, nothing was written), read
//! and decide again after a short jittered pause. Every write of the
//! allocation service goes through `cas`.

use std::future::Future;
use std::time::Duration;

use super::{Op, Store, StoreError, Txn};

/// How often a change is tried before giving up. Other writers change the
/// same records for a while at most (a burst of ADDs on one pool); a store
/// that refuses every commit for 32 rounds is contended beyond reason.
pub const MAX_ATTEMPTS: u32 = 32;

/// What one attempt decided.
pub enum Attempt<T> {
    /// Commit `txn`; if its checks hold, the change is done and yields `T`.
    Commit(Txn, T),
    /// Nothing to write: done, with `T`.
    Done(T),
}

/// Gave up after `MAX_ATTEMPTS`: other writers kept changing what `what`
/// read. Nothing was written.
#[derive(Debug, thiserror::Error)]
#[error("{what}: gave up after {attempts} attempts because other writers kept changing the same records; retry")]
pub struct Contended {
    pub what: String,
    pub attempts: u32,
}

/// Runs `attempt` until its decision commits or needs no commit. Errors of an
/// attempt (including a store that does not answer) end the loop at once.
pub async fn cas<T, E, F, Fut>(store: &dyn Store, what: &str, attempt: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Attempt<T>, E>>,
    E: From<StoreError> + From<Contended>,
{
    Ok(cas_at(store, what, false, attempt).await?.0)
}

/// `cas`, and what the commit wrote (`keep_ops`; else no ops) with the
/// revision it got (None: the decision needed no commit), for a cache of
/// the store that applies its owner's writes at once (`ipam::view`).
pub async fn cas_at<T, E, F, Fut>(
    store: &dyn Store,
    what: &str,
    keep_ops: bool,
    mut attempt: F,
) -> Result<(T, Option<(Vec<Op>, u64)>), E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Attempt<T>, E>>,
    E: From<StoreError> + From<Contended>,
{
    for n in 0..MAX_ATTEMPTS {
        match attempt().await? {
            Attempt::Done(v) => return Ok((v, None)),
            Attempt::Commit(txn, v) => {
                // Copied only for a caller that applies them (the writes
                // of a redb node's every ADD go through here).
                let ops = if keep_ops {
                    txn.ops.clone()
                } else {
                    Vec::new()
                };
                if let Some(rev) = store.commit_at(txn).await? {
                    return Ok((v, Some((ops, rev))));
                }
            }
        }
        backoff(n).await;
    }
    Err(Contended {
        what: what.to_string(),
        attempts: MAX_ATTEMPTS,
    }
    .into())
}

/// Small jittered backoff without a clock or rand dependency: the attempt
/// number and the address of a stack value are jitter enough to keep two
/// writers from retrying in lockstep.
async fn backoff(attempt: u32) {
    let seed = (&attempt as *const u32 as usize as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let base = 1u64 << attempt.min(6);
    let jitter = seed % (base * 500 + 1);
    tokio::time::sleep(Duration::from_micros(base * 500 + jitter)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::mem::MemStore;
    use crate::store::StoreExt;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug)]
    enum E {
        Store,
        Contended(String),
    }
    impl From<StoreError> for E {
        fn from(_: StoreError) -> Self {
            E::Store
        }
    }
    impl From<Contended> for E {
        fn from(c: Contended) -> Self {
            E::Contended(c.to_string())
        }
    }

    #[tokio::test]
    async fn a_lost_race_reads_and_decides_again() {
        let s = MemStore::new();
        let tries = AtomicU32::new(0);
        let got: Result<u32, E> = cas(&s, "bump", || async {
            let n = tries.fetch_add(1, Ordering::SeqCst);
            let cur = s.get_json::<u32>("k").await?;
            if n == 0 {
                // Another writer commits between our read and our commit.
                let mut t = Txn::default();
                t.put("k", &7u32);
                s.commit(t).await?;
            }
            let mut t = Txn::default();
            t.expect("k", cur.as_ref().map(|(_, e)| e))
                .put("k", &(n + 100));
            Ok(Attempt::Commit(t, n))
        })
        .await;
        assert_eq!(got.unwrap(), 1, "the second attempt committed");
        assert_eq!(s.get_json::<u32>("k").await.unwrap().unwrap().0, 101);
    }

    #[tokio::test]
    async fn done_writes_nothing_and_errors_end_the_loop() {
        let s = MemStore::new();
        let r: Result<&str, E> = cas(&s, "noop", || async { Ok(Attempt::Done("x")) }).await;
        assert_eq!(r.unwrap(), "x");
        assert!(s.list("").await.unwrap().0.is_empty());
        s.set_down(true);
        let tries = AtomicU32::new(0);
        let r: Result<(), E> = cas(&s, "down", || async {
            tries.fetch_add(1, Ordering::SeqCst);
            s.get("k").await?;
            Ok(Attempt::Done(()))
        })
        .await;
        assert!(matches!(r, Err(E::Store)));
        assert_eq!(tries.load(Ordering::SeqCst), 1, "no retry of an outage");
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_attempts_naming_the_change() {
        let s = MemStore::new();
        let tries = AtomicU32::new(0);
        let r: Result<(), E> = cas(&s, "pool resize", || async {
            tries.fetch_add(1, Ordering::SeqCst);
            let mut t = Txn::default();
            t.expect(
                "never",
                Some(&crate::store::Entry {
                    key: "never".into(),
                    value: vec![],
                    version: 99,
                }),
            );
            Ok(Attempt::Commit(t, ()))
        })
        .await;
        assert_eq!(tries.load(Ordering::SeqCst), MAX_ATTEMPTS);
        match r {
            Err(E::Contended(m)) => assert!(
                m.starts_with("pool resize: gave up after 32 attempts"),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
    }
}
