//! An in-memory store with the same semantics as the durable ones, for tests
//! of the layers above the store (the allocation service, property tests).
//! It can be told to fail, to test behaviour under store failure.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;

use super::local_watch::Broadcaster;
use super::{
    page_of, page_start, Check, Entry, Op, Page, Store, StoreError, Txn, WatchEvent, WatchStream,
};

#[derive(Default)]
pub struct MemStore {
    inner: Mutex<Inner>,
    down: AtomicBool,
    lose_reply: AtomicBool,
    watchers: Broadcaster,
}

#[derive(Default)]
struct Inner {
    revision: u64,
    kv: BTreeMap<String, (Vec<u8>, u64)>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// While down, every call fails with `Unavailable`.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// The next commit is applied, then the store goes down before it
    /// answers: the caller sees `Unavailable` for a commit that landed (an
    /// etcd leader dying right after committing).
    pub fn lose_next_reply(&self) {
        self.lose_reply.store(true, Ordering::SeqCst);
    }

    fn up(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("memory store switched off".into()))
        } else {
            Ok(())
        }
    }
}

/// Checks and applies a transaction; returns the changes it made.
fn apply(inner: &mut Inner, txn: Txn) -> Option<Vec<WatchEvent>> {
    for c in &txn.checks {
        let ok = match c {
            Check::Version { key, version } => inner.kv.get(key).map_or(0, |(_, v)| *v) == *version,
            Check::PrefixUnchangedSince { prefix, revision } => inner
                .kv
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(prefix.as_str()))
                .all(|(_, (_, v))| v <= revision),
        };
        if !ok {
            return None;
        }
    }
    inner.revision += 1;
    let rev = inner.revision;
    let mut events = Vec::new();
    for op in txn.ops {
        match op {
            Op::Put { key, value } => {
                events.push(WatchEvent {
                    key: key.clone(),
                    value: Some(value.clone()),
                    revision: rev,
                });
                inner.kv.insert(key, (value, rev));
            }
            Op::Delete { key } => {
                if inner.kv.remove(&key).is_some() {
                    events.push(WatchEvent {
                        key,
                        value: None,
                        revision: rev,
                    });
                }
            }
        }
    }
    Some(events)
}

#[async_trait]
impl Store for MemStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.up()?;
        let inner = self.inner.lock().unwrap();
        Ok(inner.kv.get(key).map(|(value, version)| Entry {
            key: key.to_string(),
            value: value.clone(),
            version: *version,
        }))
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<Entry>, u64), StoreError> {
        self.up()?;
        let inner = self.inner.lock().unwrap();
        let entries = inner
            .kv
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (value, version))| Entry {
                key: k.clone(),
                value: value.clone(),
                version: *version,
            })
            .collect();
        Ok((entries, inner.revision))
    }

    async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        _at_revision: Option<u64>,
    ) -> Result<Page, StoreError> {
        self.up()?;
        let inner = self.inner.lock().unwrap();
        let entries = inner
            .kv
            .range(page_start(prefix, start_after).to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (value, version))| {
                Ok(Entry {
                    key: k.clone(),
                    value: value.clone(),
                    version: *version,
                })
            });
        page_of(entries, start_after, limit, inner.revision)
    }

    async fn commit(&self, txn: Txn) -> Result<bool, StoreError> {
        self.up()?;
        // The tests run on this store: a change that would not fit etcd's
        // limits fails here, not first on a real etcd.
        txn.check_limits().map_err(StoreError::Other)?;
        let applied = apply(&mut self.inner.lock().unwrap(), txn);
        let applied = match applied {
            Some(events) => {
                self.watchers.publish(events);
                true
            }
            None => false,
        };
        if self.lose_reply.swap(false, Ordering::SeqCst) {
            self.set_down(true);
            return Err(StoreError::Unavailable(
                "memory store switched off after the commit (its reply lost)".into(),
            ));
        }
        Ok(applied)
    }

    async fn watch(&self, prefix: &str, after_revision: u64) -> Result<WatchStream, StoreError> {
        self.up()?;
        self.watchers.watch(prefix, after_revision, || {
            Ok(self.inner.lock().unwrap().revision)
        })
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn conforms() {
        super::super::conformance::cas_semantics(&super::MemStore::new()).await;
        super::super::conformance::no_history(&super::MemStore::new()).await;
        super::super::conformance::paged_list(&super::MemStore::new()).await;
    }
}
