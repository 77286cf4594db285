//! An in-memory store with the same semantics as the durable ones, for tests
//! of the layers above the store (the allocation service, property tests).
//! It can be told to fail, to test behaviour under store failure.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{Check, Entry, Op, Store, StoreError, Txn};

#[derive(Default)]
pub struct MemStore {
    inner: Mutex<Inner>,
    down: AtomicBool,
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

    fn up(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("memory store switched off".into()))
        } else {
            Ok(())
        }
    }
}

/// Checks and applies a transaction to a sorted map; shared with tests.
fn apply(inner: &mut Inner, txn: Txn) -> bool {
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
            return false;
        }
    }
    inner.revision += 1;
    let rev = inner.revision;
    for op in txn.ops {
        match op {
            Op::Put { key, value } => {
                inner.kv.insert(key, (value, rev));
            }
            Op::Delete { key } => {
                inner.kv.remove(&key);
            }
        }
    }
    true
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

    async fn commit(&self, txn: Txn) -> Result<bool, StoreError> {
        self.up()?;
        Ok(apply(&mut self.inner.lock().unwrap(), txn))
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
    }
}
