//! Backup and restore over the in-memory store and redb: restore order,
//! the empty-store rule, schema versions, and a restore killed midway.

use futures::TryStreamExt;

use super::*;
use crate::ipam::backup::{Part, RestoreHeader, Summary, MARKER};
use crate::store::redb::RedbStore;
use crate::store::schema::{self, SchemaRecord};
use crate::store::{Entry, Txn};

/// Every record a backup streams, and its summary.
async fn take(ipam: &Ipam) -> (Vec<Entry>, Summary) {
    let parts: Vec<Part> = ipam.backup().try_collect().await.unwrap();
    let mut records = Vec::new();
    let mut summary = None;
    for p in parts {
        match p {
            Part::Records(r) => records.extend(r),
            Part::End(s) => summary = Some(s),
        }
    }
    (records, summary.expect("a summary last"))
}

fn header(records: &[Entry], schema_version: u32) -> RestoreHeader {
    RestoreHeader {
        backup_id: format!("test-{}", records.len()),
        schema_version,
        records: records.len() as u64,
    }
}

fn pairs(records: &[Entry]) -> Vec<(String, Vec<u8>)> {
    records
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect()
}

/// A store with a sticky pod's binding and lease, and its schema record.
async fn source() -> (Arc<MemStore>, Ipam, IpAddr) {
    let (store, ipam) = setup(8, Policy::Auto).await;
    schema::ensure(store.as_ref()).await.unwrap();
    let a = ipam
        .allocate(&req("n1", "r1", "c1", "web-0"))
        .await
        .unwrap();
    (store, ipam, a.lease.ip)
}

async fn everything(s: &dyn Store) -> Vec<(String, Vec<u8>)> {
    let (all, _) = s.list("").await.unwrap();
    all.into_iter().map(|e| (e.key, e.value)).collect()
}

#[tokio::test]
async fn backup_is_every_record_pools_and_apps_last_and_restores_whole() {
    let (store, ipam, ip) = source().await;
    let (records, sum) = take(&ipam).await;
    let (all, _) = store.list("").await.unwrap();
    assert_eq!(records.len(), all.len(), "every record once");
    assert_eq!(sum.records, all.len() as u64);
    assert_eq!(sum.schema_version, schema::CURRENT);
    let first_last = records
        .iter()
        .position(|e| e.key.starts_with(keys::APPS) || e.key.starts_with(keys::POOLS))
        .unwrap();
    assert!(
        records[first_last..]
            .iter()
            .all(|e| e.key.starts_with(keys::APPS) || e.key.starts_with(keys::POOLS)),
        "apps/ and pools/ come last: {:?}",
        records.iter().map(|e| &e.key).collect::<Vec<_>>()
    );
    assert!(records.iter().any(|e| e.key == schema::KEY));

    // Into a fresh store that ipamd opened (it holds the schema record and
    // a node's registration only).
    let target = Arc::new(MemStore::new());
    schema::ensure(target.as_ref()).await.unwrap();
    let n9 = crate::core::NodeRecord {
        name: "n9".into(),
        tor: "r1".into(),
        mode: "physical".into(),
        version: "0.1.0".into(),
        started_unix: 5,
        heartbeat_unix: 5,
    };
    registry::beat(target.as_ref(), &n9).await.unwrap();
    let restored_ipam = Ipam::new(target.clone());
    let mut r = restored_ipam
        .restore_begin(header(&records, sum.schema_version), 7)
        .await
        .unwrap();
    r.records(pairs(&records)).await.unwrap();
    let done = r.finish().await.unwrap();
    assert_eq!((done.records, done.resumed), (records.len() as u64, false));
    assert!(target.get(MARKER).await.unwrap().is_none(), "marker gone");
    let mut want = everything(store.as_ref()).await;
    want.push((keys::node("n9"), serde_json::to_vec(&n9).unwrap()));
    want.sort();
    assert_eq!(everything(target.as_ref()).await, want);
    clean(&target).await;

    // The sticky pod, its old attachment released, gets its IP back.
    let old = AttachmentKey {
        node: "n1".into(),
        container_id: "c1".into(),
        ifname: "eth0".into(),
    };
    restored_ipam.release(&old, false).await.unwrap();
    let a = restored_ipam
        .allocate(&req("n2", "r1", "c2", "web-0"))
        .await
        .unwrap();
    assert_eq!(a.lease.ip, ip);
    clean(&target).await;
}

#[tokio::test]
async fn a_non_empty_store_or_a_newer_schema_is_refused_and_unchanged() {
    let (_, ipam, _) = source().await;
    let (records, sum) = take(&ipam).await;
    let (target, _) = setup(1, Policy::Auto).await;
    let before = everything(target.as_ref()).await;
    let e = Ipam::new(target.clone())
        .restore_begin(header(&records, sum.schema_version), 0)
        .await
        .err()
        .unwrap();
    let text = e.to_string();
    assert!(matches!(e, Error::Conflict(_)), "{e:?}");
    assert!(
        text.contains("not empty")
            && text.contains("fresh etcd")
            && text.contains("nothing was changed"),
        "{text}"
    );
    assert_eq!(everything(target.as_ref()).await, before);

    let empty = Arc::new(MemStore::new());
    let e = Ipam::new(empty.clone())
        .restore_begin(header(&records, schema::CURRENT + 1), 0)
        .await
        .err()
        .unwrap();
    assert!(matches!(e, Error::Invalid(_)), "{e:?}");
    assert!(e.to_string().contains("newer than this ipamd"), "{e}");
    assert!(everything(empty.as_ref()).await.is_empty());
}

#[tokio::test]
async fn a_restore_killed_midway_is_finished_by_the_same_backup_only() {
    let (store, ipam, _) = source().await;
    let (records, sum) = take(&ipam).await;
    let dir = std::env::temp_dir().join(format!("moor-restore-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("ipamd.redb");
    {
        let target: Arc<dyn Store> = Arc::new(RedbStore::open(&path).unwrap());
        let mut r = Ipam::new(target.clone())
            .restore_begin(header(&records, sum.schema_version), 0)
            .await
            .unwrap();
        // Half the records, then the stream ends without `done` (killed).
        r.records(pairs(&records[..records.len() / 2]))
            .await
            .unwrap();
        drop(r);
    }
    let target: Arc<dyn Store> = Arc::new(RedbStore::open(&path).unwrap());
    let restored = Ipam::new(target.clone());
    // A backup of a half-restored store is refused.
    let e = restored
        .backup()
        .try_collect::<Vec<_>>()
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("restore that did not finish"), "{e}");
    // Another backup: refused, naming the one under way.
    let mut other = header(&records, sum.schema_version);
    other.backup_id = "another".into();
    let e = restored.restore_begin(other, 0).await.err().unwrap();
    assert!(
        e.to_string()
            .contains("unfinished restore of another backup"),
        "{e}"
    );
    // The same: resumes and finishes.
    let mut r = restored
        .restore_begin(header(&records, sum.schema_version), 0)
        .await
        .unwrap();
    r.records(pairs(&records)).await.unwrap();
    let done = r.finish().await.unwrap();
    assert!(done.resumed);
    let got: Vec<_> = everything(target.as_ref()).await;
    assert_eq!(got, everything(store.as_ref()).await);
    drop((target, restored));
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn an_older_schema_is_restored_then_migrated() {
    // A schema 3 store: pools without their family (migrate_v4 adds it).
    let old = Arc::new(MemStore::new());
    let mut t = Txn::default();
    t.put(schema::KEY, &SchemaRecord { version: 3 })
        .put("pools/old", &serde_json::json!({"name": "old", "namespace": "default", "app": "old", "size": 0, "ips": {}}));
    assert!(old.commit(t).await.unwrap());
    let (records, sum) = take(&Ipam::new(old.clone())).await;
    assert_eq!(sum.schema_version, 3);
    let target = Arc::new(MemStore::new());
    schema::ensure(target.as_ref()).await.unwrap();
    let ipam = Ipam::new(target.clone());
    let mut r = ipam.restore_begin(header(&records, 3), 0).await.unwrap();
    r.records(pairs(&records)).await.unwrap();
    let done = r.finish().await.unwrap();
    assert_eq!(done.schema_version, schema::CURRENT);
    assert_eq!(
        schema::version(target.as_ref()).await.unwrap(),
        schema::CURRENT
    );
}

#[tokio::test]
async fn bad_records_and_counts_are_refused() {
    let target = Arc::new(MemStore::new());
    let ipam = Ipam::new(target.clone());
    let h = RestoreHeader {
        backup_id: "x".into(),
        schema_version: schema::CURRENT,
        records: 1,
    };
    let mut r = ipam.restore_begin(h.clone(), 0).await.unwrap();
    let e = r
        .records(vec![("pools/a".into(), b"{not json".to_vec())])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("pools/a is not JSON"), "{e}");
    let mut r = ipam.restore_begin(h.clone(), 0).await.unwrap();
    let e = r
        .records(vec![(schema::KEY.into(), br#"{"version":1}"#.to_vec())])
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("another version than the header"),
        "{e}"
    );
    let r = ipam.restore_begin(h, 0).await.unwrap();
    let e = r.finish().await.unwrap_err();
    assert!(
        e.to_string()
            .contains("sent 0 records and its header says 1"),
        "{e}"
    );
    assert!(
        target.get(MARKER).await.unwrap().is_some(),
        "the marker stays"
    );
}

#[tokio::test]
async fn a_big_restore_goes_in_transactions_within_etcds_limits() {
    let target = Arc::new(Limited(MemStore::new()));
    let ipam = Ipam::new(target.clone());
    let records: Vec<(String, Vec<u8>)> = (0..450)
        .map(|i| {
            (
                format!("leases/p/{i:04}"),
                format!("{{\"pad\":\"{}\"}}", "x".repeat(5000)).into_bytes(),
            )
        })
        .collect();
    let h = RestoreHeader {
        backup_id: "big".into(),
        schema_version: schema::CURRENT,
        records: records.len() as u64,
    };
    let mut r = ipam.restore_begin(h, 0).await.unwrap();
    r.records(records).await.unwrap();
    r.finish().await.unwrap();
    assert_eq!(target.list("leases/").await.unwrap().0.len(), 450);
}

/// A memory store that fails any transaction over etcd's limits (as a
/// real etcd would), so a test of many big records proves the split.
struct Limited(MemStore);

#[async_trait::async_trait]
impl Store for Limited {
    async fn get(&self, key: &str) -> Result<Option<Entry>, crate::store::StoreError> {
        self.0.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<(Vec<Entry>, u64), crate::store::StoreError> {
        self.0.list(prefix).await
    }
    async fn commit(&self, txn: Txn) -> Result<bool, crate::store::StoreError> {
        txn.check_limits().expect("within etcd's limits");
        self.0.commit(txn).await
    }
    fn describe(&self) -> String {
        "limited".into()
    }
}

/// redb's snapshot is one read transaction: a commit during the walk (a
/// key added, one deleted) is not seen, across pages.
#[tokio::test]
async fn redb_snapshot_is_one_read_transaction() {
    use futures::StreamExt;
    let dir = std::env::temp_dir().join(format!("moor-snap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Arc::new(RedbStore::open(&dir.join("s.redb")).unwrap());
    for chunk in 0..12 {
        let mut t = Txn::default();
        for i in 0..100 {
            t.put(&format!("k/{:04}", chunk * 100 + i), &i);
        }
        assert!(store.commit(t).await.unwrap());
    }
    let mut pages = store.clone().snapshot(vec!["k/".into(), "z/".into()]);
    let (walk, first) = pages.next().await.unwrap().unwrap();
    assert_eq!(
        (walk, first.entries.len()),
        (0, crate::store::SNAPSHOT_PAGE)
    );
    let mut t = Txn::default();
    t.delete("k/1199").put("k/1200", &1).put("z/1", &1);
    assert!(store.commit(t).await.unwrap());
    let mut keys: Vec<String> = first.entries.into_iter().map(|e| e.key).collect();
    while let Some(page) = pages.next().await {
        let (_, page) = page.unwrap();
        assert_eq!(page.revision, first.revision, "one snapshot");
        keys.extend(page.entries.into_iter().map(|e| e.key));
    }
    assert_eq!(keys.len(), 1200);
    assert_eq!(
        keys.last().unwrap(),
        "k/1199",
        "the deleted key is still seen"
    );
    drop(pages);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A backup of etcd (schema 5) holds no attachment index entries; restored
/// into a store that keeps them (redb, here in memory), each attached
/// lease gets its entry, so DEL finds the attachment there.
#[tokio::test]
async fn a_backup_without_index_entries_gets_them_in_a_store_that_keeps_them() {
    let (_, ipam, ip) = source().await;
    let (mut records, sum) = take(&ipam).await;
    let before = records.len();
    records.retain(|e| !e.key.starts_with(keys::ATTACHMENTS));
    assert_eq!(records.len(), before - 1, "the one index entry left out");
    let target = Arc::new(MemStore::new());
    let restored = Ipam::new(target.clone());
    let mut r = restored
        .restore_begin(header(&records, sum.schema_version), 7)
        .await
        .unwrap();
    r.records(pairs(&records)).await.unwrap();
    r.finish().await.unwrap();
    clean(&target).await;
    let key = AttachmentKey {
        node: "n1".into(),
        container_id: "c1".into(),
        ifname: "eth0".into(),
    };
    assert_eq!(restored.attached(&key).await.unwrap().unwrap().ip, ip);
    let rel = restored.release(&key, false).await.unwrap().unwrap();
    assert!(rel.binding_kept);
    clean(&target).await;
}
