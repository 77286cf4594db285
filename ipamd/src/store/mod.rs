//! Where ipamd keeps its state: one small key-value `Store` trait with
//! compare-and-swap transactions, and its backends. The same trait fits redb
//! (one node, embedded) and etcd (many nodes): every change is one
//! transaction that applies only if what it read is unchanged, so two writers
//! can never both take one IP.

pub mod etcd;
pub mod keys;
mod limits;
mod local_watch;
pub mod mem;
pub mod metered;
mod migrate_v2;
mod migrate_v3;
mod migrate_v4;
mod migrate_v5;
pub mod redb;
pub mod retry;
pub mod schema;
pub mod stop;

use async_trait::async_trait;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A value and the store revision that last changed it (etcd's mod_revision).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    pub version: u64,
}

/// A condition a transaction depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The key's version is exactly this; 0 means the key must not exist.
    Version { key: String, version: u64 },
    /// No key under the prefix was created or changed after `revision` (the
    /// revision a `list` returned). Deletions are not seen; callers use it to
    /// guard against new leases appearing.
    PrefixUnchangedSince { prefix: String, revision: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

#[derive(Debug, Default, Clone)]
pub struct Txn {
    pub checks: Vec<Check>,
    pub ops: Vec<Op>,
}

impl Txn {
    /// Requires `key` to still have the version of `entry` (or to be absent).
    pub fn expect(&mut self, key: &str, entry: Option<&Entry>) -> &mut Self {
        self.expect_version(key, entry.map_or(0, |e| e.version))
    }

    /// Requires `key` to still have `version` (0: to be absent).
    pub fn expect_version(&mut self, key: &str, version: u64) -> &mut Self {
        self.checks.push(Check::Version {
            key: key.to_string(),
            version,
        });
        self
    }

    pub fn expect_prefix_unchanged(&mut self, prefix: &str, revision: u64) -> &mut Self {
        self.checks.push(Check::PrefixUnchangedSince {
            prefix: prefix.to_string(),
            revision,
        });
        self
    }

    pub fn put<T: Serialize>(&mut self, key: &str, value: &T) -> &mut Self {
        self.ops.push(Op::Put {
            key: key.to_string(),
            value: serde_json::to_vec(value).expect("records serialize"),
        });
        self
    }

    pub fn delete(&mut self, key: &str) -> &mut Self {
        self.ops.push(Op::Delete {
            key: key.to_string(),
        });
        self
    }
}

/// One change seen by a watch: a put (`value` Some) or a delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub key: String,
    pub value: Option<Vec<u8>>,
    pub revision: u64,
}

/// One page of a paged read ([`Store::list_page`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// At most `limit` entries, in key order.
    pub entries: Vec<Entry>,
    /// The revision the page was read at: pass it as `at_revision` for the
    /// next page.
    pub revision: u64,
    /// More entries follow the last one.
    pub more: bool,
}

/// What an operator does about a record that does not decode (the error
/// and `ipamctl audit` say it).
pub const CORRUPT_FIX: &str = "restore the record from a backup (ipamctl restore), or, after checking what it held, delete it (etcdctl del under moor's --etcd-prefix; on redb, ipamd stopped); ipamctl audit lists every such record";

pub type WatchStream = futures::stream::BoxStream<'static, Result<WatchEvent, StoreError>>;

/// Pages of a [`Store::snapshot`], each with the index of its prefix.
pub type PageStream = futures::stream::BoxStream<'static, Result<(usize, Page), StoreError>>;

/// Entries one page of a [`Store::snapshot`] holds at most.
pub const SNAPSHOT_PAGE: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The changes after the revision a watch asked for can no longer be
    /// replayed (etcd compacted them, or a watcher fell behind): re-read and
    /// watch from the new revision.
    #[error("store history before revision {0} is gone: re-read and watch again")]
    Compacted(u64),
    /// The store cannot be reached or did not answer in time; the operation
    /// may be retried later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A record could not be decoded: a bug, a hand edit or a damaged
    /// disk. Only the operations that need this record fail (never as if
    /// it were absent: that could hand its IP out twice), so the message
    /// names the key and the repair.
    #[error("store record {key} is corrupt ({reason}): {CORRUPT_FIX}")]
    Corrupt { key: String, reason: String },
    #[error("store error: {0}")]
    Other(String),
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError>;
    /// Every entry under `prefix`, in key order, and the store revision the
    /// read saw (for `Check::PrefixUnchangedSince`).
    async fn list(&self, prefix: &str) -> Result<(Vec<Entry>, u64), StoreError>;
    /// The keys under `prefix`, in key order, without their values (what a
    /// count needs: etcd then sends no values).
    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .list(prefix)
            .await?
            .0
            .into_iter()
            .map(|e| e.key)
            .collect())
    }
    /// At most `limit` (at least 1) entries under `prefix` whose key comes
    /// after `start_after` (a key the previous page ended with; None: from
    /// the start), in key order. Reads that walk a prefix page by page hold
    /// one page at a time, whatever the store's size (`ipamctl ip list`).
    ///
    /// `at_revision` (the `revision` of the first page) makes every page
    /// part of one snapshot on a store with history (etcd); `Compacted` when
    /// that revision is gone, and the caller starts over or says so. Stores
    /// without history (redb, memory) read their current state: each key
    /// that exists throughout the walk is seen exactly once, and a key
    /// written during it may or may not be.
    ///
    /// The default reads the whole prefix and keeps one page: correct, not
    /// bounded; every backend of ipamd overrides it.
    async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        at_revision: Option<u64>,
    ) -> Result<Page, StoreError> {
        let (entries, revision) = self.list(prefix).await?;
        page_of(
            entries.into_iter().map(Ok),
            start_after,
            limit,
            at_revision.unwrap_or(revision),
        )
    }
    /// Applies every op if every check holds, atomically and durably.
    /// `Ok(false)`: a check failed and nothing was written.
    async fn commit(&self, txn: Txn) -> Result<bool, StoreError>;
    /// `commit`, and the store revision the change got (`None`: a check
    /// failed, nothing was written). The revision is every written key's new
    /// version, so a cache of the store (`ipam::view`) can apply its own
    /// change at once instead of waiting for the watch. 0: this backend
    /// does not say.
    async fn commit_at(&self, txn: Txn) -> Result<Option<u64>, StoreError> {
        Ok(self.commit(txn).await?.then_some(0))
    }
    /// Whether `watch` replays changes after an older revision (etcd keeps
    /// history; the stores in ipamd's own process do not, so a watch from a
    /// list's revision fails whenever a commit came in between). Only a
    /// store with history can feed a cache that stays useful under load.
    fn keeps_history(&self) -> bool {
        false
    }
    /// Every change under `prefix` after `after_revision` (a revision a
    /// `list` returned), in commit order. Fails with `Compacted` when those
    /// changes cannot be replayed; the stream may also end or fail later
    /// (connection lost). Either way the caller re-reads and watches again,
    /// so it never misses a change.
    async fn watch(&self, prefix: &str, after_revision: u64) -> Result<WatchStream, StoreError> {
        let _ = (prefix, after_revision);
        Err(StoreError::Other(format!(
            "{} cannot watch yet",
            self.describe()
        )))
    }
    /// Every entry under each of `prefixes` in turn (each in key order),
    /// all of one snapshot, in pages of at most [`SNAPSHOT_PAGE`], each
    /// with the index of its prefix in `prefixes`: what a
    /// backup reads. The default walks `list_page` at the first page's
    /// revision (one snapshot on etcd; `Compacted` if etcd compacts it
    /// during the walk); redb overrides it with one read transaction.
    fn snapshot(self: std::sync::Arc<Self>, prefixes: Vec<String>) -> PageStream {
        let walk = (self, prefixes, 0usize, None::<String>, None::<u64>);
        futures::stream::try_unfold(
            walk,
            |(store, prefixes, mut i, mut after, mut at)| async move {
                // Pages that are empty are skipped, but the last one, which
                // says the revision when the store holds nothing.
                while let Some(prefix) = prefixes.get(i) {
                    let page = store
                        .list_page(prefix, after.as_deref(), SNAPSHOT_PAGE, at)
                        .await?;
                    at = Some(page.revision);
                    let of = i;
                    if page.more {
                        after = page.entries.last().map(|e| e.key.clone());
                    } else {
                        after = None;
                        i += 1;
                    }
                    if !page.entries.is_empty() || i == prefixes.len() {
                        return Ok(Some(((of, page), (store, prefixes, i, after, at))));
                    }
                }
                Ok(None)
            },
        )
        .boxed()
    }
    /// What the store is, for logs and `ipamctl`.
    fn describe(&self) -> String;
}

/// Where a walk of `prefix` resumes after `start_after`.
pub(crate) fn page_start<'a>(prefix: &'a str, start_after: Option<&'a str>) -> &'a str {
    start_after.filter(|a| *a > prefix).unwrap_or(prefix)
}

/// The page of `entries` (in key order, all under the prefix, each read or
/// failed) after `start_after`: what the backends without history return.
pub(crate) fn page_of(
    entries: impl Iterator<Item = Result<Entry, StoreError>>,
    start_after: Option<&str>,
    limit: usize,
    revision: u64,
) -> Result<Page, StoreError> {
    let limit = limit.max(1);
    let mut rest = entries.skip_while(|e| {
        e.as_ref()
            .is_ok_and(|e| start_after.is_some_and(|a| e.key.as_str() <= a))
    });
    let entries = rest
        .by_ref()
        .take(limit)
        .collect::<Result<Vec<Entry>, _>>()?;
    let more = entries.len() == limit && rest.next().transpose()?.is_some();
    Ok(Page {
        entries,
        revision,
        more,
    })
}

pub fn decode<T: DeserializeOwned>(e: &Entry) -> Result<T, StoreError> {
    serde_json::from_slice(&e.value).map_err(|err| StoreError::Corrupt {
        key: e.key.clone(),
        reason: err.to_string(),
    })
}

/// Typed reads over any store.
#[async_trait]
pub trait StoreExt: Store {
    async fn get_json<T: DeserializeOwned + Send>(
        &self,
        key: &str,
    ) -> Result<Option<(T, Entry)>, StoreError> {
        match self.get(key).await? {
            None => Ok(None),
            Some(e) => Ok(Some((decode(&e)?, e))),
        }
    }

    async fn list_json<T: DeserializeOwned + Send>(
        &self,
        prefix: &str,
    ) -> Result<(Vec<(T, Entry)>, u64), StoreError> {
        let (entries, rev) = self.list(prefix).await?;
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            out.push((decode(&e)?, e));
        }
        Ok((out, rev))
    }
}

impl<S: Store + ?Sized> StoreExt for S {}

/// What `open` needs besides the store's name: ipamd's `--etcd-*` flags.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub etcd_ca: Option<std::path::PathBuf>,
    pub etcd_cert: Option<std::path::PathBuf>,
    pub etcd_key: Option<std::path::PathBuf>,
    pub etcd_prefix: String,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            etcd_ca: None,
            etcd_cert: None,
            etcd_key: None,
            etcd_prefix: etcd::DEFAULT_PREFIX.to_string(),
        }
    }
}

/// Opens the store named on the command line: `redb:PATH`, or
/// `etcd:URL[,URL...]` (the members' client URLs), and checks its schema
/// version (`schema::check_at_open`: migrates an older store, refuses a
/// newer one). An etcd store connects lazily: it opens while etcd is down,
/// and its schema is then checked before its first write.
pub async fn open(spec: &str, opts: &StoreOptions) -> Result<std::sync::Arc<dyn Store>, String> {
    let store = open_unchecked(spec, opts).await?;
    schema::check_at_open(store)
        .await
        .map_err(|e| format!("--store {spec}: {e}"))
}

async fn open_unchecked(
    spec: &str,
    opts: &StoreOptions,
) -> Result<std::sync::Arc<dyn Store>, String> {
    let tls_flags = opts.etcd_ca.is_some() || opts.etcd_cert.is_some() || opts.etcd_key.is_some();
    match spec.split_once(':') {
        Some(("redb", path)) if !path.is_empty() => {
            if tls_flags {
                return Err(format!(
                    "--etcd-ca/--etcd-cert/--etcd-key are for an etcd: store, and --store is {spec:?}"
                ));
            }
            Ok(std::sync::Arc::new(
                redb::RedbStore::open(std::path::Path::new(path)).map_err(|e| e.to_string())?,
            ))
        }
        Some(("etcd", endpoints)) if !endpoints.trim().is_empty() => {
            let o = etcd::EtcdOptions {
                endpoints: endpoints.split(',').map(str::to_string).collect(),
                ca: opts.etcd_ca.clone(),
                cert: opts.etcd_cert.clone(),
                key: opts.etcd_key.clone(),
                prefix: opts.etcd_prefix.clone(),
                ..etcd::EtcdOptions::default()
            };
            Ok(std::sync::Arc::new(
                etcd::EtcdStore::open(o)
                    .await
                    .map_err(|e| format!("--store {spec}: {e}"))?,
            ))
        }
        _ => Err(format!(
            "--store {spec:?} is not a store this ipamd knows: use redb:/var/lib/moor/ipamd.redb (one node) or etcd:http://127.0.0.1:2379[,http://HOST:2379...] (shared)"
        )),
    }
}

#[cfg(test)]
pub(crate) mod conformance {
    //! Behaviour every backend must have; each backend's tests call these.
    use super::*;

    /// Stores without history (redb, memory) refuse to replay old changes.
    pub async fn no_history(s: &dyn Store) {
        let (_, rev) = s.list("h/").await.unwrap();
        let mut t = Txn::default();
        t.put("h/1", &1);
        assert!(s.commit(t).await.unwrap());
        assert!(matches!(
            s.watch("h/", rev).await,
            Err(StoreError::Compacted(_))
        ));
    }

    /// Paged reads: every key once, in order, in pages of at most `limit`,
    /// nothing from outside the prefix; a key written during the walk does
    /// not disturb the keys that were there throughout.
    pub async fn paged_list(s: &dyn Store) {
        let mut t = Txn::default();
        for i in 0..7 {
            t.put(&format!("p/{i}"), &i);
        }
        t.put("o", &0).put("p", &0).put("q/1", &1);
        assert!(s.commit(t).await.unwrap());
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        let mut at = None;
        let mut pages = 0;
        loop {
            let page = s.list_page("p/", after.as_deref(), 3, at).await.unwrap();
            pages += 1;
            assert!(page.entries.len() <= 3, "a page holds at most the limit");
            at = Some(page.revision);
            seen.extend(page.entries.iter().map(|e| e.key.clone()));
            after = page.entries.last().map(|e| e.key.clone());
            if pages == 1 {
                // A key written between pages, before the walk's position.
                let mut t = Txn::default();
                t.put("p/00", &0);
                assert!(s.commit(t).await.unwrap());
            }
            if !page.more {
                break;
            }
        }
        assert_eq!(pages, 3, "7 keys in pages of 3");
        assert_eq!(seen, (0..7).map(|i| format!("p/{i}")).collect::<Vec<_>>());

        let empty = s.list_page("none/", None, 3, None).await.unwrap();
        assert!(empty.entries.is_empty() && !empty.more);
        let exact = s.list_page("p/", Some("p/4"), 2, None).await.unwrap();
        assert_eq!(
            exact
                .entries
                .iter()
                .map(|e| e.key.as_str())
                .collect::<Vec<_>>(),
            ["p/5", "p/6"]
        );
        assert!(!exact.more, "the last key ends the walk");
        let (all, _) = s.list("p/").await.unwrap();
        let first = s.list_page("p/", None, 100, None).await.unwrap();
        assert_eq!(first.entries, all, "a page is what list reads");
    }

    pub async fn cas_semantics(s: &dyn Store) {
        let mut t = Txn::default();
        t.expect("a/1", None).put("a/1", &"one");
        assert!(s.commit(t).await.unwrap(), "create-only on an absent key");
        let e1 = s.get("a/1").await.unwrap().unwrap();
        assert!(e1.version > 0);

        let mut again = Txn::default();
        again.expect("a/1", None).put("a/1", &"dup");
        assert!(
            !s.commit(again).await.unwrap(),
            "create-only on a present key fails"
        );
        assert_eq!(s.get("a/1").await.unwrap().unwrap().value, b"\"one\"");

        let mut upd = Txn::default();
        upd.expect("a/1", Some(&e1))
            .put("a/1", &"uno")
            .put("a/2", &"two");
        assert!(s.commit(upd).await.unwrap());
        let e2 = s.get("a/1").await.unwrap().unwrap();
        assert!(e2.version > e1.version);

        let mut stale = Txn::default();
        stale.expect("a/1", Some(&e1)).delete("a/1");
        assert!(!s.commit(stale).await.unwrap(), "stale version fails");
        assert!(s.get("a/1").await.unwrap().is_some(), "and changes nothing");

        let (list, rev) = s.list("a/").await.unwrap();
        assert_eq!(
            list.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
            ["a/1", "a/2"]
        );
        let (none, _) = s.list("b/").await.unwrap();
        assert!(none.is_empty());

        let mut guarded = Txn::default();
        guarded.expect_prefix_unchanged("a/", rev).put("b/1", &1);
        assert!(s.commit(guarded).await.unwrap(), "nothing changed under a/");
        let mut other = Txn::default();
        other.put("a/3", &3);
        assert!(s.commit(other).await.unwrap());
        let mut guarded = Txn::default();
        guarded.expect_prefix_unchanged("a/", rev).put("b/2", &2);
        assert!(
            !s.commit(guarded).await.unwrap(),
            "a/3 appeared after the read"
        );
        assert!(s.get("b/2").await.unwrap().is_none());

        let (_, rev) = s.list("w/").await.unwrap();
        let mut w = s.watch("w/", rev).await.unwrap();
        let mut t = Txn::default();
        t.put("w/1", &1).put("x/1", &1);
        assert!(s.commit(t).await.unwrap());
        let mut t = Txn::default();
        t.delete("w/1");
        assert!(s.commit(t).await.unwrap());
        use futures::StreamExt;
        let put = w.next().await.unwrap().unwrap();
        assert_eq!(
            (put.key.as_str(), put.value.as_deref()),
            ("w/1", Some(&b"1"[..]))
        );
        assert!(put.revision > rev);
        let del = w.next().await.unwrap().unwrap();
        assert_eq!((del.key.as_str(), del.value), ("w/1", None));
        assert!(
            del.revision > put.revision,
            "x/1 is not under w/ and not seen"
        );

        let mut del = Txn::default();
        del.delete("a/1").delete("a/missing");
        assert!(
            s.commit(del).await.unwrap(),
            "deleting a missing key is fine"
        );
        assert!(s.get("a/1").await.unwrap().is_none());
    }
}
