//! The audit over stores written by the allocation service, with one
//! planted inconsistency of each kind.

use std::net::IpAddr;
use std::sync::Arc;

use super::*;
use crate::core::{CarvedShare, PodRef, Policy};
use crate::ipam::{AllocRequest, Ipam, PoolSpec};
use crate::store::mem::MemStore;
use crate::store::{StoreExt, Txn};

fn req(cid: &str, pod: &str) -> AllocRequest {
    AllocRequest::for_test("n1", "r1", cid, pod, 1)
}

/// ToR r1 (10 pod IPs), pool web of 4, a sticky pod web-0 attached (c1)
/// and a Deployment pod attached (c2); returns web-0's IP.
async fn busy_store() -> (Arc<MemStore>, IpAddr) {
    let store = Arc::new(MemStore::new());
    let ipam = Ipam::new(store.clone());
    ipam.add_tor(
        "r1",
        "10.1.0.0/24",
        "10.1.0.1",
        0,
        &[("10.1.0.10".into(), "10.1.0.19".into())],
        "",
    )
    .await
    .unwrap();
    ipam.create_pool(
        &PoolSpec {
            name: "web".into(),
            namespace: "default".into(),
            app: "web".into(),
            size: 4,
            tors: vec![],
            policy: Policy::Auto,
            allow_namespaces: vec![],
            ..PoolSpec::default()
        },
        0,
    )
    .await
    .unwrap();
    let a = ipam.allocate(&req("c1", "web-0")).await.unwrap();
    ipam.allocate(&req("c2", "web-5d8f7c9b4-x2x7q"))
        .await
        .unwrap();
    crate::store::schema::ensure(store.as_ref()).await.unwrap();
    (store, a.lease.ip)
}

async fn put(store: &MemStore, key: &str, value: &impl Serialize) {
    let mut t = Txn::default();
    t.put(key, value);
    assert!(store.commit(t).await.unwrap());
}

async fn put_raw(store: &MemStore, key: &str, raw: &[u8]) {
    let mut t = Txn::default();
    t.ops.push(crate::store::Op::Put {
        key: key.into(),
        value: raw.to_vec(),
    });
    assert!(store.commit(t).await.unwrap());
}

async fn delete(store: &MemStore, key: &str) {
    let mut t = Txn::default();
    t.delete(key);
    assert!(store.commit(t).await.unwrap());
}

/// The findings' keys, and every finding names its key and a fix.
async fn keys_found(store: &MemStore) -> Vec<String> {
    let found = findings(store).await.unwrap();
    for f in &found {
        assert!(!f.problem.is_empty() && !f.fix.is_empty(), "{f:?}");
        assert!(f.to_string().starts_with(&f.key), "{f}");
    }
    found.into_iter().map(|f| f.key).collect()
}

#[tokio::test]
async fn a_store_written_by_ipam_is_clean() {
    let (store, _) = busy_store().await;
    let r = run(store.as_ref()).await.unwrap();
    assert_eq!(r.findings, vec![], "{:#?}", r.findings);
    assert_eq!(
        (r.schema_version, r.schema_recorded),
        (schema::CURRENT, true)
    );
    assert!(r.records > 5, "{r:?}");
    assert_eq!(audit(store.as_ref()).await.unwrap(), Vec::<String>::new());
}

#[tokio::test]
async fn a_store_without_schema_record_is_version_one_and_clean() {
    let (store, _) = busy_store().await;
    delete(&store, schema::KEY).await;
    let r = run(store.as_ref()).await.unwrap();
    assert_eq!((r.schema_version, r.schema_recorded), (1, false));
    assert!(r.findings.is_empty(), "{:#?}", r.findings);
}

#[tokio::test]
async fn binding_without_its_lease_is_found() {
    let (store, ip) = busy_store().await;
    let stray = Binding {
        pod: PodRef {
            namespace: "default".into(),
            name: "ghost-0".into(),
            uid: String::new(),
        },
        pool: "web".into(),
        ip,
        tor: "r1".into(),
    };
    put(&store, "bindings/default/ghost-0", &stray).await;
    assert_eq!(keys_found(&store).await, ["bindings/default/ghost-0"]);
}

#[tokio::test]
async fn binding_of_a_missing_pool_is_found() {
    let (store, ip) = busy_store().await;
    let (mut b, _) = store
        .get_json::<Binding>("bindings/default/web-0")
        .await
        .unwrap()
        .unwrap();
    b.pool = "gone".into();
    put(&store, "bindings/default/web-0", &b).await;
    let found = findings(store.as_ref()).await.unwrap();
    let keys: Vec<_> = found.iter().map(|f| f.key.as_str()).collect();
    let lease = format!("leases/web/{ip}");
    assert_eq!(
        keys,
        [lease.as_str(), "bindings/default/web-0"],
        "{found:#?}"
    );
    assert!(found[1].problem.contains("gone"), "{}", found[1]);
}

#[tokio::test]
async fn lease_whose_binding_is_gone_names_ip_release() {
    let (store, ip) = busy_store().await;
    delete(&store, "bindings/default/web-0").await;
    let found = findings(store.as_ref()).await.unwrap();
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].key, format!("leases/web/{ip}"));
    assert_eq!(found[0].fix, format!("ipamctl ip release {ip}"));
}

#[tokio::test]
async fn a_stored_free_count_is_found() {
    let (store, _) = busy_store().await;
    put(
        &store,
        "free/web/r1",
        &serde_json::json!({"total": 4, "free": 4}),
    )
    .await;
    let found = findings(store.as_ref()).await.unwrap();
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].key, "free/web/r1");
    assert!(
        found[0].problem.contains("no longer stores"),
        "{}",
        found[0]
    );
    assert!(found[0].fix.starts_with("delete it"), "{}", found[0]);
}

#[tokio::test]
async fn missing_app_index_is_found() {
    let (store, _) = busy_store().await;
    delete(&store, "apps/default/web").await;
    assert_eq!(keys_found(&store).await, ["apps/default/web"]);
}

#[tokio::test]
async fn undecodable_record_is_a_finding_not_an_error() {
    let (store, ip) = busy_store().await;
    let key = format!("leases/web/{ip}");
    put_raw(&store, &key, b"{not json").await;
    let keys = keys_found(&store).await;
    // The lease does not decode; its binding and index entry then point
    // at nothing.
    assert!(keys.contains(&key), "{keys:?}");
    assert!(
        keys.contains(&"bindings/default/web-0".to_string()),
        "{keys:?}"
    );
    let r = run(store.as_ref()).await.unwrap();
    let f = r.findings.iter().find(|f| f.key == key).unwrap();
    assert!(
        f.problem.starts_with("corrupt: does not decode as a lease"),
        "{f}"
    );
    assert_eq!(
        f.fix,
        crate::store::CORRUPT_FIX,
        "damage to repair, not a bug"
    );
    // The binding that now points at nothing waits for the repair: its
    // fix must not be acted on first.
    let b = r
        .findings
        .iter()
        .find(|f| f.key == "bindings/default/web-0")
        .unwrap();
    assert!(b.fix.starts_with(super::DEFER_TO_CORRUPT), "{b}");
}

#[tokio::test]
async fn attachment_index_under_another_node_is_found() {
    let (store, _) = busy_store().await;
    let (r, _) = store
        .get_json::<AttachmentRef>("attachments/n1/c1/eth0")
        .await
        .unwrap()
        .unwrap();
    delete(&store, "attachments/n1/c1/eth0").await;
    put(&store, "attachments/n2/c1/eth0", &r).await;
    let mut keys = keys_found(&store).await;
    keys.sort();
    let lease = format!("leases/web/{}", r.ip);
    assert_eq!(keys, ["attachments/n2/c1/eth0".to_string(), lease]);
}

#[tokio::test]
async fn lease_holding_nothing_and_carved_mismatch_are_found() {
    let (store, _) = busy_store().await;
    let ip: IpAddr = "10.1.0.19".parse().unwrap();
    let (pool, _) = store.get_json::<Pool>("pools/web").await.unwrap().unwrap();
    assert!(!pool.all_ips().contains(&ip), "10.1.0.19 is not web's");
    let (mut carved, _) = store
        .get_json::<CarvedShare>("carved/r1/web")
        .await
        .unwrap()
        .unwrap();
    carved.ips.push(ip);
    put(&store, "carved/r1/web", &carved).await;
    let empty = Lease {
        ipv6: None,
        ip: pool.all_ips()[3],
        pool: "web".into(),
        tor: "r1".into(),
        binding: None,
        attachment: None,
        evict: false,
        quarantine: None,
    };
    let lease = format!("leases/web/{}", empty.ip);
    put(&store, &lease, &empty).await;
    let keys = keys_found(&store).await;
    assert!(keys.contains(&lease), "{keys:?}");
    assert!(keys.contains(&"carved/r1/web".to_string()), "{keys:?}");
}

#[tokio::test]
async fn unknown_keys_and_newer_schema_are_found() {
    let (store, _) = busy_store().await;
    put(&store, "stray", &1).await;
    let newer = schema::CURRENT + 1;
    put(
        &store,
        schema::KEY,
        &serde_json::json!({ "version": newer }),
    )
    .await;
    let r = run(store.as_ref()).await.unwrap();
    let keys: Vec<_> = r.findings.iter().map(|f| f.key.as_str()).collect();
    assert_eq!(keys, [schema::KEY, "stray"], "{:#?}", r.findings);
    assert_eq!(r.schema_version, newer);
}
