//! A test hook: a store that stops after a number of commits, as if ipamd
//! were killed (kill -9) right after one of them. Pool changes and the
//! schema migration are tested stopped at every transaction boundary: a
//! fresh ipamd on the same store must then finish or undo what was begun.
//!
//! In-process (library tests) every call after the N-th commit fails with
//! `Unavailable`, as calls to a dead process would. For the real binary,
//! ipamd wraps its store in one that aborts the process right after the
//! N-th commit when `MOOR_TEST_STOP_AFTER_COMMITS=N` is set (a test hook,
//! never for production).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use super::{Entry, Store, StoreError, Txn, WatchStream};

/// The environment variable of the hook for the ipamd binary.
pub const ENV: &str = "MOOR_TEST_STOP_AFTER_COMMITS";

pub struct StopAfter {
    inner: Arc<dyn Store>,
    /// Commits left before the stop.
    left: AtomicU64,
    /// Abort the process at the stop (the binary), instead of failing
    /// every later call (tests).
    abort: bool,
}

impl StopAfter {
    /// Fails every call after `commits` successful commits.
    pub fn new(inner: Arc<dyn Store>, commits: u64) -> Self {
        Self {
            inner,
            left: AtomicU64::new(commits),
            abort: false,
        }
    }

    /// Aborts the process right after `commits` successful commits.
    pub fn aborting(inner: Arc<dyn Store>, commits: u64) -> Self {
        Self {
            abort: true,
            ..Self::new(inner, commits)
        }
    }

    /// Whether the stop has come.
    pub fn stopped(&self) -> bool {
        self.left.load(Ordering::SeqCst) == 0
    }

    fn alive(&self) -> Result<(), StoreError> {
        if self.stopped() {
            Err(StoreError::Unavailable(
                "stopped by the test hook (as if ipamd were killed)".into(),
            ))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Store for StopAfter {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.alive()?;
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<Entry>, u64), StoreError> {
        self.alive()?;
        self.inner.list(prefix).await
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.alive()?;
        self.inner.list_keys(prefix).await
    }

    async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        at_revision: Option<u64>,
    ) -> Result<super::Page, StoreError> {
        self.alive()?;
        self.inner
            .list_page(prefix, start_after, limit, at_revision)
            .await
    }

    async fn commit(&self, txn: Txn) -> Result<bool, StoreError> {
        Ok(self.commit_at(txn).await?.is_some())
    }

    async fn commit_at(&self, txn: Txn) -> Result<Option<u64>, StoreError> {
        self.alive()?;
        let done = self.inner.commit_at(txn).await?;
        if done.is_some() {
            let left = self.left.fetch_sub(1, Ordering::SeqCst) - 1;
            if left == 0 && self.abort {
                eprintln!("{ENV}: stopping after this commit (test hook)");
                std::process::abort();
            }
        }
        Ok(done)
    }

    fn keeps_history(&self) -> bool {
        self.inner.keeps_history()
    }

    async fn watch(&self, prefix: &str, after_revision: u64) -> Result<WatchStream, StoreError> {
        self.alive()?;
        self.inner.watch(prefix, after_revision).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::mem::MemStore;

    #[tokio::test]
    async fn every_call_fails_after_the_nth_commit() {
        let mem = Arc::new(MemStore::new());
        let s = StopAfter::new(mem.clone(), 2);
        let mut t = Txn::default();
        t.put("a", &1);
        assert!(s.commit(t.clone()).await.unwrap());
        // A failed compare is not a commit.
        let mut lost = Txn::default();
        lost.expect("a", None).put("a", &2);
        assert!(!s.commit(lost).await.unwrap());
        assert!(!s.stopped());
        assert!(s.commit(t.clone()).await.unwrap());
        assert!(s.stopped());
        assert!(matches!(s.get("a").await, Err(StoreError::Unavailable(_))));
        assert!(matches!(s.commit(t).await, Err(StoreError::Unavailable(_))));
        assert!(mem.get("a").await.unwrap().is_some());
        let s = StopAfter::new(mem, 0);
        assert!(s.list("").await.is_err(), "0: stopped from the start");
    }
}
