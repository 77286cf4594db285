//! The store's schema version: one record, `schema` (under the etcd prefix
//! like every key), `{"version": N}`. Version 1 is the layout of
//! docs/architecture.md as it was when the record was introduced; a store
//! without the record was written before then and is version 1. Version 2
//! keeps carved IPs per (pool, ToR segment) (`migrate_v2.rs`); version 3
//! keeps no published free counts (`migrate_v3.rs`); version 4 may hold
//! IPv6 addresses and records each pool's address family
//! (`migrate_v4.rs`); version 5 writes no attachment index entries on etcd
//! (`migrate_v5.rs`).
//!
//! ipamd calls [`check_at_open`] when it opens its store: an older store is
//! migrated, one numbered migration at a time, and a newer one is refused,
//! so an old ipamd never writes records a newer one has changed the meaning
//! of.
//!
//! Crash safety: a migration is idempotent (re-run after a kill -9 before
//! the version bump, it finds its work done) and safe to run concurrently
//! with itself (it rewrites each record with a CAS on that record). The bump
//! from N-1 to N is a CAS on the version record, so of several ipamds on one
//! etcd racing to migrate, exactly one bumps each version and all end at
//! the same one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use super::{Entry, Page, PageStream, Store, StoreError, Txn, WatchStream};

/// The key of the version record.
pub const KEY: &str = "schema";

/// The schema version this ipamd reads and writes.
pub const CURRENT: u32 = 5;

/// The value of [`KEY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaRecord {
    pub version: u32,
}

/// Rewrites a store of version `to - 1` into version `to`. Must be
/// idempotent and safe to run concurrently with itself: see the module doc.
pub type MigrateFn = for<'a> fn(&'a dyn Store) -> BoxFuture<'a, Result<(), StoreError>>;

pub struct Migration {
    /// The version the store has after this migration.
    pub to: u32,
    /// What it changes, for the log.
    pub what: &'static str,
    pub run: MigrateFn,
}

/// Every migration, in order: `MIGRATIONS[i].to == i + 2`. Version 1 needs
/// none; a change to the records adds one here and bumps [`CURRENT`].
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        to: 2,
        what: "carved IPs: one record per (pool, ToR segment) instead of one per segment",
        run: super::migrate_v2::run,
    },
    Migration {
        to: 3,
        what: "free counts: worked out from leases, no longer stored",
        run: super::migrate_v3::run,
    },
    Migration {
        to: 4,
        what: "dual stack: every pool records its address family (ipv4 for pools made before)",
        run: super::migrate_v4::run,
    },
    Migration {
        to: 5,
        what: "attachments on etcd: found from the leases, no index entry written",
        run: super::migrate_v5::run,
    },
];

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "the store's schema version is {found}, newer than this ipamd {ipamd} knows ({known}): a newer ipamd has migrated it. Upgrade ipamd to a version that knows schema {found} (a migrated store cannot be used by an older ipamd)",
        ipamd = env!("CARGO_PKG_VERSION")
    )]
    Newer { found: u32, known: u32 },
    #[error("store record {KEY} is corrupt: {0}; report a bug (keep a copy of the store)")]
    Corrupt(String),
    #[error("no migration to schema version {0}: this ipamd is broken, report a bug")]
    NoMigration(u32),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What [`ensure`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The version the store has now.
    pub version: u32,
    /// The version record found; None: the store had none (version 1).
    pub found: Option<u32>,
    /// The migrations this call committed the version bump of.
    pub migrated: Vec<u32>,
}

/// The version a record holds.
pub fn parse(e: &Entry) -> Result<u32, String> {
    match serde_json::from_slice::<SchemaRecord>(&e.value) {
        Ok(r) if r.version >= 1 => Ok(r.version),
        Ok(r) => Err(format!("schema version {} is not a version", r.version)),
        Err(err) => Err(format!("does not decode as a schema record: {err}")),
    }
}

/// The store's version: its record's, or 1 without one.
pub async fn version(store: &dyn Store) -> Result<u32, SchemaError> {
    match store.get(KEY).await? {
        None => Ok(1),
        Some(e) => parse(&e).map_err(SchemaError::Corrupt),
    }
}

/// Brings the store to [`CURRENT`]: writes the record into a store without
/// one, runs the migrations it lacks, refuses a newer one.
pub async fn ensure(store: &dyn Store) -> Result<Opened, SchemaError> {
    ensure_with(store, MIGRATIONS, CURRENT).await
}

/// [`ensure`] with a given list of migrations and current version (tests).
pub async fn ensure_with(
    store: &dyn Store,
    migrations: &[Migration],
    current: u32,
) -> Result<Opened, SchemaError> {
    let mut first_found = None;
    let mut migrated = Vec::new();
    // Each pass either commits a step or sees another writer's; more passes
    // than steps mean something keeps rewriting the record.
    for pass in 0..=(2 * current + 8) {
        let entry = store.get(KEY).await?;
        let found = match &entry {
            None => None,
            Some(e) => Some(parse(e).map_err(SchemaError::Corrupt)?),
        };
        if pass == 0 {
            first_found = found;
        }
        let have = found.unwrap_or(1);
        if have > current {
            return Err(SchemaError::Newer {
                found: have,
                known: current,
            });
        }
        if found == Some(current) {
            return Ok(Opened {
                version: current,
                found: first_found,
                migrated,
            });
        }
        let next = if have < current {
            let m = migrations
                .iter()
                .find(|m| m.to == have + 1)
                .ok_or(SchemaError::NoMigration(have + 1))?;
            info!(from = have, to = m.to, what = m.what, "migrating the store");
            (m.run)(store).await?;
            m.to
        } else {
            // No record, and version 1 is current: just record it.
            have
        };
        let mut txn = Txn::default();
        txn.expect(KEY, entry.as_ref())
            .put(KEY, &SchemaRecord { version: next });
        if store.commit(txn).await? && next > have {
            info!(version = next, "store migrated");
            migrated.push(next);
        }
    }
    Err(SchemaError::Store(StoreError::Other(format!(
        "store record {KEY} kept changing while ipamd migrated the store: is another writer rewriting it?"
    ))))
}

/// What ipamd runs on the store it opened: [`ensure`], logged. When the
/// store cannot be reached (etcd down: ipamd must still start and serve
/// DEL and CHECK from its local mirror), the check is deferred to the
/// store's first write, which it guards.
pub async fn check_at_open(store: Arc<dyn Store>) -> Result<Arc<dyn Store>, SchemaError> {
    match ensure(store.as_ref()).await {
        Ok(o) => {
            info!(
                version = o.version,
                found = ?o.found,
                "store schema version {}",
                o.version
            );
            Ok(store)
        }
        Err(SchemaError::Store(StoreError::Unavailable(why))) => {
            warn!(
                error = %why,
                "store schema version not checked yet (store unavailable): checked before the first write"
            );
            Ok(Arc::new(Unchecked {
                inner: store,
                checked: AtomicBool::new(false),
            }))
        }
        Err(e) => Err(e),
    }
}

/// A store whose schema was not checked at open: its first commit checks
/// (and migrates) first, so nothing is written into a layout this ipamd
/// does not know. Reads and watches go straight through.
struct Unchecked {
    inner: Arc<dyn Store>,
    checked: AtomicBool,
}

impl Unchecked {
    /// Checks (and migrates) the schema before the first write.
    async fn ensure_checked(&self) -> Result<(), StoreError> {
        if !self.checked.load(Ordering::Acquire) {
            match ensure(self.inner.as_ref()).await {
                Ok(o) => {
                    info!(version = o.version, "store schema version {}", o.version);
                    self.checked.store(true, Ordering::Release);
                }
                Err(SchemaError::Store(e)) => return Err(e),
                Err(e) => {
                    error!(error = %e, "refusing to write to the store");
                    return Err(StoreError::Other(e.to_string()));
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Store for Unchecked {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<Entry>, u64), StoreError> {
        self.inner.list(prefix).await
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.inner.list_keys(prefix).await
    }

    async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        at_revision: Option<u64>,
    ) -> Result<Page, StoreError> {
        self.inner
            .list_page(prefix, start_after, limit, at_revision)
            .await
    }

    async fn commit(&self, txn: Txn) -> Result<bool, StoreError> {
        self.ensure_checked().await?;
        self.inner.commit(txn).await
    }

    async fn commit_at(&self, txn: Txn) -> Result<Option<u64>, StoreError> {
        self.ensure_checked().await?;
        self.inner.commit_at(txn).await
    }

    async fn watch(&self, prefix: &str, after_revision: u64) -> Result<WatchStream, StoreError> {
        self.inner.watch(prefix, after_revision).await
    }

    fn keeps_history(&self) -> bool {
        self.inner.keeps_history()
    }

    fn snapshot(self: Arc<Self>, prefixes: Vec<String>) -> PageStream {
        self.inner.clone().snapshot(prefixes)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::store::mem::MemStore;
    use crate::store::redb::RedbStore;
    use crate::store::StoreExt;

    static RUNS: AtomicUsize = AtomicUsize::new(0);

    /// A test migration to version 2: every `old/<k>` becomes `new/<k>`
    /// with its number doubled, one CAS per record; done records are gone
    /// from `old/`, so a re-run does nothing more.
    fn double(store: &dyn Store) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            RUNS.fetch_add(1, Ordering::SeqCst);
            let (olds, _) = store.list_json::<u64>("old/").await?;
            for (n, e) in olds {
                let mut t = Txn::default();
                t.expect(&e.key, Some(&e))
                    .delete(&e.key)
                    .put(&e.key.replacen("old/", "new/", 1), &(n * 2));
                // Lost the CAS: another migrator moved it.
                store.commit(t).await?;
            }
            Ok(())
        })
    }

    const TEST_MIGRATIONS: &[Migration] = &[Migration {
        to: 2,
        what: "old/ -> new/, doubled",
        run: double,
    }];

    async fn put(store: &dyn Store, key: &str, value: &impl Serialize) {
        let mut t = Txn::default();
        t.put(key, value);
        assert!(store.commit(t).await.unwrap());
    }

    async fn record(store: &dyn Store) -> Option<u32> {
        store
            .get_json::<SchemaRecord>(KEY)
            .await
            .unwrap()
            .map(|(r, _)| r.version)
    }

    fn temp_redb(name: &str) -> (std::path::PathBuf, RedbStore) {
        let dir = std::env::temp_dir().join(format!("moor-schema-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("ipamd.redb");
        let s = RedbStore::open(&path).unwrap();
        (dir, s)
    }

    #[test]
    fn migrations_are_numbered_from_two_to_current() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.to as usize, i + 2, "{}", m.what);
        }
        assert_eq!(MIGRATIONS.len() as u32 + 1, CURRENT);
    }

    async fn old_store_gets_the_record(store: &dyn Store) {
        put(store, "pools/web", &serde_json::json!({"any": "thing"})).await;
        assert_eq!(version(store).await.unwrap(), 1, "no record = version 1");
        let o = ensure(store).await.unwrap();
        assert_eq!(
            o,
            Opened {
                version: CURRENT,
                found: None,
                migrated: (2..=CURRENT).collect()
            }
        );
        assert_eq!(record(store).await, Some(CURRENT));
        // Again: unchanged, nothing written.
        let before = store.get(KEY).await.unwrap().unwrap();
        let o = ensure(store).await.unwrap();
        assert_eq!(o.found, Some(CURRENT));
        assert_eq!(store.get(KEY).await.unwrap().unwrap(), before);
    }

    #[tokio::test]
    async fn old_store_gets_the_record_mem() {
        old_store_gets_the_record(&MemStore::new()).await;
    }

    #[tokio::test]
    async fn old_store_gets_the_record_redb() {
        let (dir, s) = temp_redb("old");
        old_store_gets_the_record(&s).await;
        drop(s);
        // And the record is durable.
        let s = RedbStore::open(&dir.join("ipamd.redb")).unwrap();
        assert_eq!(version(&s).await.unwrap(), CURRENT);
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn empty_store_gets_the_record() {
        let s = MemStore::new();
        ensure(&s).await.unwrap();
        assert_eq!(record(&s).await, Some(CURRENT));
    }

    async fn newer_store_is_refused(store: &dyn Store) {
        let newer = CURRENT + 1;
        put(store, KEY, &SchemaRecord { version: newer }).await;
        let e = ensure(store).await.unwrap_err();
        assert!(
            matches!(e, SchemaError::Newer { found, known } if found == newer && known == CURRENT),
            "{e:?}"
        );
        let text = e.to_string();
        let (is, knows) = (
            format!("schema version is {newer}"),
            format!("knows ({CURRENT})"),
        );
        for want in [is.as_str(), knows.as_str(), "Upgrade ipamd"] {
            assert!(text.contains(want), "{want:?} in {text}");
        }
        assert_eq!(record(store).await, Some(newer), "left as it was");
    }

    #[tokio::test]
    async fn newer_store_is_refused_mem() {
        newer_store_is_refused(&MemStore::new()).await;
    }

    #[tokio::test]
    async fn newer_store_is_refused_redb() {
        let (dir, s) = temp_redb("newer");
        newer_store_is_refused(&s).await;
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn corrupt_record_is_refused() {
        let s = MemStore::new();
        put(&s, KEY, &"one").await;
        let e = ensure(&s).await.unwrap_err();
        assert!(matches!(e, SchemaError::Corrupt(_)), "{e:?}");
        assert!(e.to_string().contains("store record schema"), "{e}");
    }

    #[tokio::test]
    async fn migration_without_code_is_an_error() {
        let s = MemStore::new();
        let e = ensure_with(&s, &[], 2).await.unwrap_err();
        assert!(matches!(e, SchemaError::NoMigration(2)), "{e:?}");
        assert_eq!(record(&s).await, None, "nothing written");
    }

    // The tests below share RUNS: one test function runs them in turn.
    #[tokio::test]
    async fn test_migration_runs_once_across_crash_and_race() {
        // A store from before the record: migrated to 2, the values once.
        let s = MemStore::new();
        put(&s, "old/a", &1u64).await;
        put(&s, "old/b", &5u64).await;
        let o = ensure_with(&s, TEST_MIGRATIONS, 2).await.unwrap();
        assert_eq!((o.version, o.found, o.migrated), (2, None, vec![2]));
        assert_eq!(record(&s).await, Some(2));
        assert_eq!(s.get_json::<u64>("new/a").await.unwrap().unwrap().0, 2);
        assert_eq!(s.get_json::<u64>("new/b").await.unwrap().unwrap().0, 10);
        assert!(s.list("old/").await.unwrap().0.is_empty());
        let runs = RUNS.load(Ordering::SeqCst);
        // Current: nothing runs again.
        ensure_with(&s, TEST_MIGRATIONS, 2).await.unwrap();
        assert_eq!(RUNS.load(Ordering::SeqCst), runs);
        // An ipamd that knows 1 only refuses it.
        assert!(matches!(
            ensure_with(&s, &[], 1).await,
            Err(SchemaError::Newer { found: 2, known: 1 })
        ));

        // Killed after the migration, before the bump: the next start runs
        // it again, which finds its work done, then bumps.
        let (dir, s) = temp_redb("crash");
        put(&s, KEY, &SchemaRecord { version: 1 }).await;
        put(&s, "old/a", &3u64).await;
        double(&s).await.unwrap();
        assert_eq!(record(&s).await, Some(1), "the crash came before the bump");
        drop(s);
        let s = RedbStore::open(&dir.join("ipamd.redb")).unwrap();
        let o = ensure_with(&s, TEST_MIGRATIONS, 2).await.unwrap();
        assert_eq!((o.found, o.migrated), (Some(1), vec![2]));
        assert_eq!(s.get_json::<u64>("new/a").await.unwrap().unwrap().0, 6);
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();

        // Two ipamds on one store race to migrate: one bumps, both end at 2,
        // each record moved once.
        let s = Arc::new(MemStore::new());
        for i in 0..50u64 {
            put(s.as_ref(), &format!("old/{i:02}"), &i).await;
        }
        let (a, b) = (s.clone(), s.clone());
        let (ra, rb) = tokio::join!(
            tokio::spawn(async move { ensure_with(a.as_ref(), TEST_MIGRATIONS, 2).await }),
            tokio::spawn(async move { ensure_with(b.as_ref(), TEST_MIGRATIONS, 2).await }),
        );
        let (ra, rb) = (ra.unwrap().unwrap(), rb.unwrap().unwrap());
        assert_eq!((ra.version, rb.version), (2, 2));
        assert_eq!(
            ra.migrated.len() + rb.migrated.len(),
            1,
            "exactly one bumped: {ra:?} {rb:?}"
        );
        assert_eq!(record(s.as_ref()).await, Some(2));
        let (news, _) = s.list_json::<u64>("new/").await.unwrap();
        assert_eq!(news.len(), 50);
        for (n, e) in news {
            let i: u64 = e.key["new/".len()..].parse().unwrap();
            assert_eq!(n, i * 2, "{} doubled once", e.key);
        }
        assert!(s.list("old/").await.unwrap().0.is_empty());
    }

    #[tokio::test]
    async fn unavailable_store_is_checked_at_its_first_write() {
        let mem = Arc::new(MemStore::new());
        put(
            mem.as_ref(),
            KEY,
            &SchemaRecord {
                version: CURRENT + 1,
            },
        )
        .await;
        mem.set_down(true);
        let store = check_at_open(mem.clone()).await.expect("opens while down");
        mem.set_down(false);
        assert!(store.get(KEY).await.unwrap().is_some(), "reads go through");
        let mut t = Txn::default();
        t.put("pools/x", &1);
        let e = store.commit(t).await.unwrap_err();
        assert!(e.to_string().contains("newer than this ipamd"), "{e}");
        assert!(
            mem.get("pools/x").await.unwrap().is_none(),
            "nothing written"
        );

        // An old store opened while down gets its record before the write.
        let mem = Arc::new(MemStore::new());
        mem.set_down(true);
        let store = check_at_open(mem.clone()).await.unwrap();
        let mut t = Txn::default();
        t.put("pools/x", &1);
        assert!(matches!(
            store.commit(t.clone()).await,
            Err(StoreError::Unavailable(_))
        ));
        mem.set_down(false);
        assert!(store.commit(t).await.unwrap());
        assert_eq!(record(mem.as_ref()).await, Some(CURRENT));
    }

    #[tokio::test]
    async fn newer_store_fails_at_open() {
        let mem = Arc::new(MemStore::new());
        put(mem.as_ref(), KEY, &SchemaRecord { version: 7 }).await;
        let e = check_at_open(mem).await.err().expect("refused");
        assert!(e.to_string().contains("schema version is 7"), "{e}");
    }
}
