//! A store that times every request it forwards and counts its failures
//! (`moor_store_*`, see `metrics`). ipamd wraps its store in it once, at
//! start, so every layer's requests are counted the same way.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::{Entry, Page, PageStream, Store, StoreError, Txn, WatchStream};
use crate::metrics;

pub struct Metered {
    inner: Arc<dyn Store>,
    backend: &'static str,
}

impl Metered {
    /// `backend`: the label of its series ("redb", "etcd").
    pub fn new(inner: Arc<dyn Store>, backend: &'static str) -> Self {
        metrics::global().store_backend(backend);
        Self { inner, backend }
    }

    fn record<T>(&self, op: &'static str, started: Instant, r: &Result<T, StoreError>) {
        let kind = r.as_ref().err().map(kind);
        metrics::global().store_request(self.backend, op, started.elapsed(), kind);
    }
}

/// The `kind` label of a failed request.
fn kind(e: &StoreError) -> &'static str {
    match e {
        StoreError::Unavailable(_) => "unavailable",
        StoreError::Corrupt { .. } => "corrupt",
        StoreError::Compacted(_) => "compacted",
        StoreError::Other(_) => "other",
    }
}

/// Runs one forwarded request and records it.
macro_rules! timed {
    ($self:ident, $op:literal, $call:expr) => {{
        let started = Instant::now();
        let r = $call.await;
        $self.record($op, started, &r);
        r
    }};
}

#[async_trait]
impl Store for Metered {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        timed!(self, "get", self.inner.get(key))
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<Entry>, u64), StoreError> {
        timed!(self, "list", self.inner.list(prefix))
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        timed!(self, "list_keys", self.inner.list_keys(prefix))
    }

    async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        at_revision: Option<u64>,
    ) -> Result<Page, StoreError> {
        timed!(
            self,
            "list_page",
            self.inner
                .list_page(prefix, start_after, limit, at_revision)
        )
    }

    async fn commit(&self, txn: Txn) -> Result<bool, StoreError> {
        timed!(self, "commit", self.inner.commit(txn))
    }

    async fn commit_at(&self, txn: Txn) -> Result<Option<u64>, StoreError> {
        timed!(self, "commit", self.inner.commit_at(txn))
    }

    fn keeps_history(&self) -> bool {
        self.inner.keeps_history()
    }

    async fn watch(&self, prefix: &str, after_revision: u64) -> Result<WatchStream, StoreError> {
        timed!(self, "watch", self.inner.watch(prefix, after_revision))
    }

    fn snapshot(self: Arc<Self>, prefixes: Vec<String>) -> PageStream {
        self.inner.clone().snapshot(prefixes)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}
