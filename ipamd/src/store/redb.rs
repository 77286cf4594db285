//! The embedded store: one redb file. redb commits are ACID and durable
//! (fsync) before `commit` returns, so a kill -9 at any point leaves either the
//! whole transaction or none of it. (sled, the first sketch's choice, is
//! unmaintained and has open corruption-after-crash issues.)
//!
//! Values are stored as 8 bytes of version (little endian) followed by the
//! record; a `meta` table holds the store revision, bumped by every commit,
//! which becomes the version of every key the commit writes (as etcd's
//! mod_revision), so `PrefixUnchangedSince` means the same on both backends.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::local_watch::Broadcaster;
use super::{Check, Entry, Op, Page, Store, StoreError, Txn, WatchEvent, WatchStream};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";

pub struct RedbStore {
    db: Arc<Database>,
    path: String,
    watchers: Broadcaster,
}

fn other(e: impl std::fmt::Display) -> StoreError {
    StoreError::Other(e.to_string())
}

fn split(key: &str, raw: &[u8]) -> Result<Entry, StoreError> {
    if raw.len() < 8 {
        return Err(StoreError::Corrupt {
            key: key.to_string(),
            reason: "shorter than its version header".into(),
        });
    }
    Ok(Entry {
        key: key.to_string(),
        version: u64::from_le_bytes(raw[..8].try_into().unwrap()),
        value: raw[8..].to_vec(),
    })
}

impl RedbStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| other(format!("cannot create {}: {e}", dir.display())))?;
        }
        let db = Database::create(path)
            .map_err(|e| other(format!("cannot open redb store {}: {e}", path.display())))?;
        // Create the tables once so readers never see them missing.
        let w = db.begin_write().map_err(other)?;
        {
            w.open_table(KV).map_err(other)?;
            w.open_table(META).map_err(other)?;
        }
        w.commit().map_err(other)?;
        Ok(Self {
            db: Arc::new(db),
            path: path.display().to_string(),
            watchers: Broadcaster::default(),
        })
    }

    /// redb calls block (commit fsyncs): keep them off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(other)?
    }
}

fn revision(db: &Database) -> Result<u64, StoreError> {
    let r = db.begin_read().map_err(other)?;
    let meta = r.open_table(META).map_err(other)?;
    Ok(meta.get(REVISION).map_err(other)?.map_or(0, |v| v.value()))
}

/// Applies the transaction if its checks hold; returns the changes made.
fn commit_blocking(db: &Database, txn: Txn) -> Result<Option<Vec<WatchEvent>>, StoreError> {
    let mut events = Vec::new();
    let w = db.begin_write().map_err(other)?;
    {
        let mut kv = w.open_table(KV).map_err(other)?;
        let mut meta = w.open_table(META).map_err(other)?;
        for c in &txn.checks {
            let ok = match c {
                Check::Version { key, version } => {
                    let have = match kv.get(key.as_str()).map_err(other)? {
                        Some(v) => split(key, v.value())?.version,
                        None => 0,
                    };
                    have == *version
                }
                Check::PrefixUnchangedSince { prefix, revision } => {
                    let mut ok = true;
                    for item in kv.range(prefix.as_str()..).map_err(other)? {
                        let (k, v) = item.map_err(other)?;
                        if !k.value().starts_with(prefix.as_str()) {
                            break;
                        }
                        if split(k.value(), v.value())?.version > *revision {
                            ok = false;
                            break;
                        }
                    }
                    ok
                }
            };
            if !ok {
                // Dropping the write transaction aborts it.
                return Ok(None);
            }
        }
        let rev = meta.get(REVISION).map_err(other)?.map_or(0, |v| v.value()) + 1;
        meta.insert(REVISION, rev).map_err(other)?;
        let mut buf = Vec::new();
        for op in &txn.ops {
            match op {
                Op::Put { key, value } => {
                    buf.clear();
                    buf.extend_from_slice(&rev.to_le_bytes());
                    buf.extend_from_slice(value);
                    kv.insert(key.as_str(), buf.as_slice()).map_err(other)?;
                    events.push(WatchEvent {
                        key: key.clone(),
                        value: Some(value.clone()),
                        revision: rev,
                    });
                }
                Op::Delete { key } => {
                    if kv.remove(key.as_str()).map_err(other)?.is_some() {
                        events.push(WatchEvent {
                            key: key.clone(),
                            value: None,
                            revision: rev,
                        });
                    }
                }
            }
        }
    }
    w.commit().map_err(other)?;
    Ok(Some(events))
}

#[async_trait]
impl Store for RedbStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let key = key.to_string();
        self.blocking(move |db| {
            let r = db.begin_read().map_err(other)?;
            let kv = r.open_table(KV).map_err(other)?;
            match kv.get(key.as_str()).map_err(other)? {
                Some(v) => Ok(Some(split(&key, v.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<Entry>, u64), StoreError> {
        let prefix = prefix.to_string();
        self.blocking(move |db| {
            let r = db.begin_read().map_err(other)?;
            let kv = r.open_table(KV).map_err(other)?;
            let meta = r.open_table(META).map_err(other)?;
            let rev = meta.get(REVISION).map_err(other)?.map_or(0, |v| v.value());
            let mut out = Vec::new();
            for item in kv.range(prefix.as_str()..).map_err(other)? {
                let (k, v) = item.map_err(other)?;
                if !k.value().starts_with(prefix.as_str()) {
                    break;
                }
                out.push(split(k.value(), v.value())?);
            }
            Ok((out, rev))
        })
        .await
    }

    async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        _at_revision: Option<u64>,
    ) -> Result<Page, StoreError> {
        let prefix = prefix.to_string();
        let start_after = start_after.map(str::to_string);
        let limit = limit.max(1);
        self.blocking(move |db| {
            let r = db.begin_read().map_err(other)?;
            let kv = r.open_table(KV).map_err(other)?;
            let meta = r.open_table(META).map_err(other)?;
            let revision = meta.get(REVISION).map_err(other)?.map_or(0, |v| v.value());
            let from = match &start_after {
                Some(a) if a.as_str() > prefix.as_str() => a.as_str(),
                _ => prefix.as_str(),
            };
            let mut entries = Vec::new();
            let mut more = false;
            for item in kv.range(from..).map_err(other)? {
                let (k, v) = item.map_err(other)?;
                let key = k.value();
                if !key.starts_with(prefix.as_str()) {
                    break;
                }
                if start_after.as_deref().is_some_and(|a| key <= a) {
                    continue;
                }
                if entries.len() == limit {
                    more = true;
                    break;
                }
                entries.push(split(key, v.value())?);
            }
            Ok(Page {
                entries,
                revision,
                more,
            })
        })
        .await
    }

    async fn commit(&self, txn: Txn) -> Result<bool, StoreError> {
        match self.blocking(move |db| commit_blocking(db, txn)).await? {
            Some(events) => {
                // Published after the commit is durable: a watcher never sees
                // a change that a crash could take back.
                self.watchers.publish(events);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn watch(&self, prefix: &str, after_revision: u64) -> Result<WatchStream, StoreError> {
        let db = self.db.clone();
        self.watchers
            .watch(prefix, after_revision, move || revision(&db))
    }

    fn describe(&self) -> String {
        format!("redb:{}", self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("moor-redb-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d.join("s.redb")
    }

    #[tokio::test]
    async fn conforms() {
        let p = tmp("conf");
        super::super::conformance::cas_semantics(&RedbStore::open(&p).unwrap()).await;
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
        super::super::conformance::no_history(&RedbStore::open(&p).unwrap()).await;
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
        super::super::conformance::paged_list(&RedbStore::open(&p).unwrap()).await;
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }

    #[tokio::test]
    async fn survives_reopen() {
        let p = tmp("reopen");
        {
            let s = RedbStore::open(&p).unwrap();
            let mut t = Txn::default();
            t.put("k", &42);
            assert!(s.commit(t).await.unwrap());
        }
        let s = RedbStore::open(&p).unwrap();
        let e = s.get("k").await.unwrap().unwrap();
        assert_eq!(e.value, b"42");
        let mut t = Txn::default();
        t.put("j", &1);
        s.commit(t).await.unwrap();
        assert!(
            s.get("j").await.unwrap().unwrap().version > e.version,
            "revision persists"
        );
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }
}
