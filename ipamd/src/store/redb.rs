//! The embedded store: one redb file. redb commits are ACID and durable
//! (fsync) before `commit` returns, so a kill -9 at any point leaves either the
//! whole transaction or none of it. (sled, the first sketch's choice, is
//! unmaintained and has open corruption-after-crash issues.)
//!
//! Values are stored as 8 bytes of version (little endian) followed by the
//! record; a `meta` table holds the store revision, bumped by every commit,
//! which becomes the version of every key the commit writes (as etcd's
//! mod_revision), so `PrefixUnchangedSince` means the same on both backends.
//!
//! Group commit: transactions that arrive while one is being written wait
//! and then go together, each with its own checks and revision, in one redb
//! write transaction and one fsync. Each is still all or nothing (its checks
//! are evaluated against the batch so far; a failed check skips it alone),
//! and none is acknowledged before the batch is durable, so eight concurrent
//! ADDs cost about one fsync instead of eight.

use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::local_watch::Broadcaster;
use super::{
    page_of, page_start, Check, Entry, Op, Page, PageStream, Store, StoreError, Txn, WatchEvent,
    WatchStream, SNAPSHOT_PAGE,
};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";

pub struct RedbStore {
    db: Arc<Database>,
    path: String,
    watchers: Arc<Broadcaster>,
    queue: Arc<Mutex<Queue>>,
}

/// A transaction's outcome: applied, or not (a check failed).
type Outcome = Result<bool, StoreError>;

/// Transactions waiting for the committer, and whether it runs.
#[derive(Default)]
struct Queue {
    waiting: Vec<(Txn, oneshot::Sender<Outcome>)>,
    running: bool,
}

fn other(e: impl std::fmt::Display) -> StoreError {
    StoreError::Other(e.to_string())
}

/// The entries of `kv` from key `from` on, while their keys start with
/// `prefix`.
fn under<'a>(
    kv: &'a redb::ReadOnlyTable<&'static str, &'static [u8]>,
    from: &str,
    prefix: &'a str,
) -> Result<impl Iterator<Item = Result<Entry, StoreError>> + 'a, StoreError> {
    let items = kv.range(from..).map_err(other)?.map(|item| {
        let (k, v) = item.map_err(other)?;
        split(k.value(), v.value())
    });
    Ok(items.take_while(move |e| e.as_ref().map_or(true, |e| e.key.starts_with(prefix))))
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
            watchers: Arc::default(),
            queue: Arc::default(),
        })
    }

    /// Reads run on the caller's thread: a read transaction of this small,
    /// cached file takes microseconds, less than the hop to the blocking
    /// pool and back, which under load cost more than the read itself, six
    /// times per ADD. Commits, which fsync, go to the committer thread.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        f(&self.db)
    }
}

fn revision(db: &Database) -> Result<u64, StoreError> {
    let r = db.begin_read().map_err(other)?;
    let meta = r.open_table(META).map_err(other)?;
    Ok(meta.get(REVISION).map_err(other)?.map_or(0, |v| v.value()))
}

/// Applies each transaction whose checks hold, in order, in one write
/// transaction and one fsync; returns each one's changes (None: a check
/// failed, it wrote nothing). An error fails the whole batch.
fn commit_batch(db: &Database, txns: Vec<Txn>) -> Result<Vec<Option<Vec<WatchEvent>>>, StoreError> {
    let mut out = Vec::with_capacity(txns.len());
    let w = db.begin_write().map_err(other)?;
    {
        let mut kv = w.open_table(KV).map_err(other)?;
        let mut meta = w.open_table(META).map_err(other)?;
        let mut rev = meta.get(REVISION).map_err(other)?.map_or(0, |v| v.value());
        for txn in txns {
            if !checks_hold(&kv, &txn)? {
                out.push(None);
                continue;
            }
            rev += 1;
            let mut events = Vec::new();
            let mut buf = Vec::new();
            for op in txn.ops {
                match op {
                    Op::Put { key, value } => {
                        buf.clear();
                        buf.extend_from_slice(&rev.to_le_bytes());
                        buf.extend_from_slice(&value);
                        kv.insert(key.as_str(), buf.as_slice()).map_err(other)?;
                        events.push(WatchEvent {
                            key,
                            value: Some(value),
                            revision: rev,
                        });
                    }
                    Op::Delete { key } => {
                        if kv.remove(key.as_str()).map_err(other)?.is_some() {
                            events.push(WatchEvent {
                                key,
                                value: None,
                                revision: rev,
                            });
                        }
                    }
                }
            }
            out.push(Some(events));
        }
        meta.insert(REVISION, rev).map_err(other)?;
    }
    w.commit().map_err(other)?;
    Ok(out)
}

fn checks_hold(kv: &redb::Table<&str, &[u8]>, txn: &Txn) -> Result<bool, StoreError> {
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
            return Ok(false);
        }
    }
    Ok(true)
}

/// The committer: writes what is waiting, batch after batch, until nothing
/// is. Changes are published to watchers once durable, so a watcher never
/// sees what a crash could take back. It lets go of the database before it
/// answers its last batch: a caller that then drops the store and opens the
/// file again must not find it still open.
fn run_committer(db: Arc<Database>, queue: &Mutex<Queue>, watchers: &Broadcaster) {
    let mut batch = std::mem::take(&mut queue.lock().unwrap().waiting);
    let mut db = Some(db);
    while !batch.is_empty() {
        let (txns, replies): (Vec<Txn>, Vec<_>) = batch.into_iter().unzip();
        // Published in revision order, before a next committer can start.
        let result =
            commit_batch(db.as_ref().expect("held while batches come"), txns).map(|outcomes| {
                outcomes
                    .into_iter()
                    .map(|events| match events {
                        Some(events) => {
                            watchers.publish(events);
                            true
                        }
                        None => false,
                    })
                    .collect::<Vec<bool>>()
            });
        batch = {
            let mut q = queue.lock().unwrap();
            if q.waiting.is_empty() {
                q.running = false;
                db = None;
            }
            std::mem::take(&mut q.waiting)
        };
        match result {
            Ok(outcomes) => {
                for (outcome, reply) in outcomes.into_iter().zip(replies) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Other(e.to_string())));
                }
            }
        }
    }
}

#[async_trait]
impl Store for RedbStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let key = key.to_string();
        self.read(move |db| {
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
        self.read(move |db| {
            let r = db.begin_read().map_err(other)?;
            let kv = r.open_table(KV).map_err(other)?;
            let meta = r.open_table(META).map_err(other)?;
            let rev = meta.get(REVISION).map_err(other)?.map_or(0, |v| v.value());
            let out = under(&kv, &prefix, &prefix)?.collect::<Result<_, _>>()?;
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
        self.read(move |db| {
            let r = db.begin_read().map_err(other)?;
            let kv = r.open_table(KV).map_err(other)?;
            let meta = r.open_table(META).map_err(other)?;
            let revision = meta.get(REVISION).map_err(other)?.map_or(0, |v| v.value());
            let from = page_start(&prefix, start_after.as_deref());
            let entries = under(&kv, from, &prefix)?;
            page_of(entries, start_after.as_deref(), limit, revision)
        })
        .await
    }

    async fn commit(&self, txn: Txn) -> Result<bool, StoreError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut q = self.queue.lock().unwrap();
            q.waiting.push((txn, tx));
            !std::mem::replace(&mut q.running, true)
        };
        if start {
            let (db, queue, watchers) =
                (self.db.clone(), self.queue.clone(), self.watchers.clone());
            tokio::task::spawn_blocking(move || run_committer(db, &queue, &watchers));
        }
        let applied = rx
            .await
            .map_err(|_| other("the redb committer stopped"))??;
        Ok(applied)
    }

    async fn watch(&self, prefix: &str, after_revision: u64) -> Result<WatchStream, StoreError> {
        let db = self.db.clone();
        self.watchers
            .watch(prefix, after_revision, move || revision(&db))
    }

    /// One read transaction for the whole walk (redb keeps what it sees
    /// while commits go on), on a blocking thread that hands pages over a
    /// channel of two: the reader's pace bounds what is held.
    fn snapshot(self: Arc<Self>, prefixes: Vec<String>) -> PageStream {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = snapshot_pages(&db, &prefixes, &tx) {
                let _ = tx.blocking_send(Err(e));
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    fn describe(&self) -> String {
        format!("redb:{}", self.path)
    }
}

/// Sends the entries under each of `prefixes` in pages, from one read
/// transaction; stops when the receiver is gone.
fn snapshot_pages(
    db: &Database,
    prefixes: &[String],
    tx: &tokio::sync::mpsc::Sender<Result<(usize, Page), StoreError>>,
) -> Result<(), StoreError> {
    let r = db.begin_read().map_err(other)?;
    let kv = r.open_table(KV).map_err(other)?;
    let meta = r.open_table(META).map_err(other)?;
    let revision = meta.get(REVISION).map_err(other)?.map_or(0, |v| v.value());
    let last = prefixes.len().saturating_sub(1);
    for (i, prefix) in prefixes.iter().enumerate() {
        let mut entries = Vec::new();
        let mut items = under(&kv, prefix, prefix)?.peekable();
        while let Some(e) = items.next() {
            entries.push(e?);
            let more = items.peek().is_some();
            if entries.len() == SNAPSHOT_PAGE || !more {
                let page = Page {
                    entries: std::mem::take(&mut entries),
                    revision,
                    more,
                };
                if tx.blocking_send(Ok((i, page))).is_err() {
                    return Ok(());
                }
            }
        }
        if i == last && entries.is_empty() {
            // The last page says the revision even when it is empty.
            let page = Page {
                entries,
                revision,
                more: false,
            };
            let _ = tx.blocking_send(Ok((i, page)));
        }
    }
    Ok(())
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

    /// Concurrent commits go in batches, and each stays all or nothing:
    /// of many create-only writes of one key exactly one applies; writes of
    /// distinct keys all apply, each with a revision of its own; a failed
    /// check in a batch skips its transaction alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn batched_commits_stay_one_transaction_each() {
        let p = tmp("batch");
        let s = Arc::new(RedbStore::open(&p).unwrap());
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    let mut same = Txn::default();
                    same.expect("one", None)
                        .put("one", &i)
                        .put(&format!("by/{i}"), &i);
                    let mut own = Txn::default();
                    own.expect(&format!("k/{i:02}"), None)
                        .put(&format!("k/{i:02}"), &i);
                    let (a, b) = tokio::join!(s.commit(same), s.commit(own));
                    (a.unwrap(), b.unwrap())
                })
            })
            .collect();
        let mut won = 0;
        for t in tasks {
            let (same, own) = t.await.unwrap();
            won += usize::from(same);
            assert!(own, "a key of its own always applies");
        }
        assert_eq!(won, 1, "exactly one create of `one`");
        let winner: u32 =
            serde_json::from_slice(&s.get("one").await.unwrap().unwrap().value).unwrap();
        let (by, _) = s.list("by/").await.unwrap();
        assert_eq!(by.len(), 1, "the losers' other writes did not apply");
        assert_eq!(by[0].key, format!("by/{winner}"));
        let (ks, _) = s.list("k/").await.unwrap();
        let revs: std::collections::BTreeSet<u64> = ks.iter().map(|e| e.version).collect();
        assert_eq!((ks.len(), revs.len()), (64, 64), "one revision each");
        drop(s);
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
