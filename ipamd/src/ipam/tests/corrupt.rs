//! Records that do not decode (issue 15): only what needs one fails, with
//! the key named; nothing takes one for absent.

use super::*;
use crate::store::{Op, Store, StoreError, Txn};

async fn put_raw(store: &MemStore, key: &str) {
    let mut t = Txn::default();
    t.ops.push(Op::Put {
        key: key.into(),
        value: b"{\"cut\": [".to_vec(),
    });
    assert!(store.commit(t).await.unwrap());
}

/// The key of the corrupt record an error names, if that is what it is.
fn corrupt_key(e: &Error) -> Option<&str> {
    match e {
        Error::Store(StoreError::Corrupt { key, .. }) => Some(key),
        _ => None,
    }
}

/// `setup`'s pool web (on r1 and r2), and pool api (app api) on r1 only.
async fn two_pools() -> (Arc<MemStore>, Ipam) {
    let (store, ipam) = setup(4, Policy::Auto).await;
    ipam.create_pool(
        &PoolSpec {
            name: "api".into(),
            namespace: "default".into(),
            app: "api".into(),
            size: 2,
            tors: vec!["r1".into()],
            ..PoolSpec::default()
        },
        0,
    )
    .await
    .unwrap();
    (store, ipam)
}

#[tokio::test]
async fn a_pool_or_lease_that_does_not_decode_refuses_only_its_pool() {
    let (store, ipam) = two_pools().await;
    let web0 = ipam
        .allocate(&req("n1", "r1", "c0", "web-0"))
        .await
        .unwrap();
    for key in [
        "pools/web".to_string(),
        keys::lease("web", web0.lease.ip),
        "apps/default/web".to_string(),
    ] {
        let before = store.get(&key).await.unwrap().unwrap();
        put_raw(&store, &key).await;
        let e = ipam
            .allocate(&req("n1", "r1", "c1", "web-1"))
            .await
            .unwrap_err();
        assert_eq!(corrupt_key(&e), Some(key.as_str()), "{e}");
        assert_eq!(e.cni_code(), cni_code::IPAMD_FAILED);
        let msg = e.to_string();
        assert!(
            msg.contains(&key) && msg.contains("ipamctl restore"),
            "{msg}"
        );
        // The other pool's pods come and go.
        let a = ipam
            .allocate(&req("n1", "r1", "c2", "api-0"))
            .await
            .unwrap();
        ipam.release(&a.lease.attachment.unwrap().key, false)
            .await
            .unwrap();
        let mut t = Txn::default();
        t.ops.push(Op::Put {
            key: key.clone(),
            value: before.value,
        });
        assert!(store.commit(t).await.unwrap());
    }
    clean(&store).await;
}

#[tokio::test]
async fn a_tor_record_that_does_not_decode_refuses_the_pools_with_ips_on_it() {
    let (store, ipam) = two_pools().await;
    // r2 may be a segment of r1 (its record would say): pool web has IPs
    // on it, so its ADDs on r1 are refused; api, only on r1, is served.
    put_raw(&store, "tors/r2").await;
    let e = ipam
        .allocate(&req("n1", "r1", "c1", "web-0"))
        .await
        .unwrap_err();
    assert_eq!(corrupt_key(&e), Some("tors/r2"), "{e}");
    ipam.allocate(&req("n1", "r1", "c2", "api-0"))
        .await
        .unwrap();
    let (segs, unreadable) = ipam.segments_and_unreadable("r1").await.unwrap();
    assert_eq!(
        segs.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["r1"]
    );
    assert_eq!(unreadable[0].name, "r2");
    // A node's own ToR record must decode.
    let e = ipam.segments_of("r2").await.unwrap_err();
    assert_eq!(corrupt_key(&e), Some("tors/r2"), "{e}");
}

#[tokio::test]
async fn node_attachments_leave_out_and_name_what_does_not_decode() {
    let (store, ipam) = two_pools().await;
    let a = ipam
        .allocate(&req("n1", "r1", "c1", "web-0"))
        .await
        .unwrap();
    let b = ipam
        .allocate(&req("n1", "r1", "c2", "api-0"))
        .await
        .unwrap();
    let c = ipam
        .allocate(&req("n1", "r1", "c3", "api-1"))
        .await
        .unwrap();
    let a_ref = keys::attachment(&a.lease.attachment.as_ref().unwrap().key);
    let b_lease = keys::lease("api", b.lease.ip);
    put_raw(&store, &a_ref).await;
    put_raw(&store, &b_lease).await;
    let (mine, corrupt) = ipam.node_attachments("n1").await.unwrap();
    assert_eq!(mine.iter().map(|l| l.ip).collect::<Vec<_>>(), [c.lease.ip]);
    assert_eq!(corrupt, [a_ref, b_lease]);
}

#[tokio::test]
async fn status_counts_past_a_pool_that_does_not_decode() {
    let (store, ipam) = two_pools().await;
    let segs = vec!["r1".to_string()];
    let before = ipam.free_on("r1", &segs).await.unwrap();
    assert_eq!(before, (4, 2), "web's 2 and api's 2 on r1");
    put_raw(&store, "pools/web").await;
    assert_eq!(ipam.free_on("r1", &segs).await.unwrap(), (2, 1));
}
