//! The migration to schema 2 over stores written as schema 1 wrote them.

use std::net::IpAddr;
use std::sync::Arc;

use super::*;
use crate::audit::audit;
use crate::core::{Carved, Pool};
use crate::ipam::{Ipam, PoolSpec};
use crate::store::mem::MemStore;
use crate::store::stop::StopAfter;
use crate::store::{schema, Store, StoreExt};

fn ip(n: u32) -> IpAddr {
    IpAddr::from(std::net::Ipv4Addr::from(0x0a01_0000 + n))
}

async fn put(store: &dyn Store, key: &str, value: &impl serde::Serialize) {
    let mut t = Txn::default();
    t.put(key, value);
    assert!(store.commit(t).await.unwrap());
}

/// A schema 1 store as the old code wrote it: ToR r1 (10.1.0.0/24), 150
/// pools of one IP each on it (more records than one transaction may
/// write), pool `web` of 4 more, two IPs cooling (one of them long over),
/// and an empty carved record of ToR r2 (a pool deleted there, nothing
/// cooling).
async fn v1_store() -> Arc<MemStore> {
    let store = Arc::new(MemStore::new());
    let ipam = Ipam::new(store.clone());
    ipam.add_tor("r1", "10.1.0.0/24", "10.1.0.1", 0, &[], "")
        .await
        .unwrap();
    ipam.add_tor("r2", "10.2.0.0/24", "10.2.0.1", 0, &[], "")
        .await
        .unwrap();
    let mut carved = Carved::default();
    let mut records = Vec::new();
    for n in 0..151u32 {
        let name = if n == 150 {
            "web".to_string()
        } else {
            format!("p{n}")
        };
        let ips: Vec<IpAddr> = if n == 150 {
            (200..204).map(ip).collect()
        } else {
            vec![ip(10 + n)]
        };
        for i in &ips {
            carved.ips.insert(*i, name.clone());
        }
        let pool = serde_json::json!({
            "name": name, "namespace": "default", "app": name, "policy": "auto",
            "tors": ["r1"], "ips": {"r1": ips},
        });
        records.push((keys::pool(&name), pool));
        records.push((keys::app("default", &name), serde_json::json!(name)));
        records.push((
            format!("free/{name}/r1"),
            serde_json::json!({"total": ips.len(), "free": ips.len()}),
        ));
    }
    carved.cooling.insert(ip(220), 5_000);
    carved.cooling.insert(ip(221), 10);
    for chunk in records.chunks(90) {
        let mut t = Txn::default();
        for (k, v) in chunk {
            t.put(k, v);
        }
        assert!(store.commit(t).await.unwrap());
    }
    put(store.as_ref(), &keys::carved_v1("r1"), &carved).await;
    put(store.as_ref(), &keys::carved_v1("r2"), &Carved::default()).await;
    put(
        store.as_ref(),
        schema::KEY,
        &schema::SchemaRecord { version: 1 },
    )
    .await;
    store
}

/// Every key and value of the store, but the schema record.
async fn dump(store: &dyn Store) -> Vec<(String, Vec<u8>)> {
    let (all, _) = store.list("").await.unwrap();
    all.into_iter()
        .filter(|e| e.key != schema::KEY)
        .map(|e| (e.key, e.value))
        .collect()
}

async fn check_migrated(store: Arc<MemStore>) {
    assert_eq!(
        schema::version(store.as_ref()).await.unwrap(),
        schema::CURRENT
    );
    let bad = audit(store.as_ref()).await.unwrap();
    assert!(bad.is_empty(), "{bad:#?}");
    assert!(store.get("carved/r1").await.unwrap().is_none());
    assert!(store.get("carved/r2").await.unwrap().is_none());
    let (web, _) = store
        .get_json::<CarvedShare>("carved/r1/web")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(web.ips, (200..204).map(ip).collect::<Vec<_>>());
    let (cool, _) = store
        .get_json::<Cooling>("carved/r1/_cooling")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cool.until.len(), 2);
    // Carving afterwards behaves as before: the lowest free IP that is not
    // cooling, and a cooled-down one is free again.
    let ipam = Ipam::new(store.clone());
    let spec = |name: &str, size| PoolSpec {
        name: name.into(),
        namespace: "default".into(),
        app: name.into(),
        size,
        tors: vec!["r1".into()],
        ..PoolSpec::default()
    };
    let p = ipam.create_pool(&spec("new", 1), 100).await.unwrap();
    assert_eq!(p.all_ips(), [ip(2)], "10.1.0.1 is the gateway");
    let e = ipam.create_pool(&spec("p0", 1), 100).await.unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    let p = ipam.create_pool(&spec("more", 97), 100).await.unwrap();
    assert!(p.all_ips().contains(&ip(221)), "its cool-down ended at 10");
    assert!(!p.all_ips().contains(&ip(220)), "cools until 5000");
    let bad = audit(store.as_ref()).await.unwrap();
    assert!(bad.is_empty(), "{bad:#?}");
    let (pool, _) = store.get_json::<Pool>("pools/web").await.unwrap().unwrap();
    assert_eq!(pool.size(), 4);
}

#[tokio::test]
async fn old_layout_migrates_and_carves_the_same() {
    let store = v1_store().await;
    let o = schema::ensure(store.as_ref()).await.unwrap();
    assert_eq!(o.migrated, (2..=schema::CURRENT).collect::<Vec<_>>());
    assert!(
        store.list_keys("free/").await.unwrap().is_empty(),
        "3 drops the counts"
    );
    check_migrated(store).await;
}

#[tokio::test]
async fn migration_stopped_at_every_commit_then_run_again_ends_the_same() {
    let reference = v1_store().await;
    schema::ensure(reference.as_ref()).await.unwrap();
    let want = dump(reference.as_ref()).await;
    let mut n = 0;
    loop {
        let store = v1_store().await;
        let stopping = StopAfter::new(store.clone(), n);
        let r = schema::ensure(&stopping).await;
        let finished = r.is_ok();
        // A fresh ipamd on the same store.
        schema::ensure(store.as_ref()).await.unwrap();
        assert_eq!(
            dump(store.as_ref()).await,
            want,
            "stopped after {n} commits"
        );
        if n > 0 {
            // Racing itself: two migrators on one half-migrated store.
            let store = v1_store().await;
            let _ = schema::ensure(&StopAfter::new(store.clone(), n - 1)).await;
            let (a, b) = (store.clone(), store.clone());
            let (ra, rb) = tokio::join!(
                tokio::spawn(async move { schema::ensure(a.as_ref()).await }),
                tokio::spawn(async move { schema::ensure(b.as_ref()).await }),
            );
            ra.unwrap().unwrap();
            rb.unwrap().unwrap();
            assert_eq!(dump(store.as_ref()).await, want, "raced after {n}");
        }
        if finished {
            assert!(
                n >= 3,
                "the migration took {n} commits: more than one for r1"
            );
            break;
        }
        n += 1;
    }
    check_migrated(reference).await;
}
