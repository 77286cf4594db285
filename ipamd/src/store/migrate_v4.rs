//! Schema 3 -> 4: dual stack. Addresses in records may now be IPv6, ToR
//! records may carry an IPv6 family (`ipv6`), leases a dual-stack pod's
//! IPv6 address, and every pool says which families its pods get
//! (`family`). Pools made before have IPv4 pods only: this migration
//! writes `"family": "ipv4"` into each, so no record leaves its family to
//! a default. The version bump is what keeps an ipamd of schema 3 (which
//! would fail on the first IPv6 address it decodes) off a store that may
//! hold them.
//!
//! Each pool is rewritten with a CAS on its own record, as it was read, so
//! a pool changed meanwhile (a resize stepping it) is read again. Killed at
//! any point, a re-run finds the pools done so far already have a family
//! and rewrites the rest; two migrators at once write the same value.

use futures::future::BoxFuture;
use serde_json::Value;

use super::{keys, Store, StoreError, Txn};

/// Passes over the pools: each either rewrites every pool still without a
/// family or loses CASes to pools that changed meanwhile.
const PASSES: usize = 8;

/// The migration, as `schema::MIGRATIONS` runs it.
pub fn run(store: &dyn Store) -> BoxFuture<'_, Result<(), StoreError>> {
    Box::pin(migrate(store))
}

async fn migrate(store: &dyn Store) -> Result<(), StoreError> {
    for _ in 0..PASSES {
        let (pools, _) = store.list(keys::POOLS).await?;
        let mut left = 0;
        for e in pools {
            let mut v: Value = serde_json::from_slice(&e.value).map_err(|err| {
                StoreError::Other(format!(
                    "pool record {} does not decode ({err}): report a bug (keep a copy of the store)",
                    e.key
                ))
            })?;
            let Some(obj) = v.as_object_mut() else {
                return Err(StoreError::Other(format!(
                    "pool record {} is not an object: report a bug (keep a copy of the store)",
                    e.key
                )));
            };
            if obj.contains_key("family") {
                continue;
            }
            obj.insert("family".into(), Value::from("ipv4"));
            let mut txn = Txn::default();
            txn.expect(&e.key, Some(&e)).put(&e.key, &v);
            if !store.commit(txn).await? {
                left += 1;
            }
        }
        if left == 0 {
            return Ok(());
        }
    }
    Err(StoreError::Other(format!(
        "pool records kept changing while the store was migrated to schema 4 ({PASSES} passes): start ipamd again"
    )))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::core::{IpFamily, Pool};
    use crate::store::mem::MemStore;
    use crate::store::stop::StopAfter;
    use crate::store::StoreExt;

    /// A pool record as schema 3 wrote it: no family.
    fn v3_pool(name: &str) -> Value {
        serde_json::json!({
            "name": name, "namespace": "default", "app": name, "policy": "auto",
            "tors": ["r1"], "ips": {"r1": ["10.0.0.2", "10.0.0.3"]},
            "allow_namespaces": ["team-b"],
        })
    }

    #[tokio::test]
    async fn every_pool_gets_family_ipv4_and_keeps_the_rest_even_when_stopped_midway() {
        let store = Arc::new(MemStore::new());
        for i in 0..10 {
            let mut t = Txn::default();
            t.put(&keys::pool(&format!("p{i}")), &v3_pool(&format!("p{i}")));
            assert!(store.commit(t).await.unwrap());
        }
        // A pool written by schema 4 already (dual stack) is left alone.
        let mut dual = v3_pool("d");
        dual["family"] = "dual".into();
        let mut t = Txn::default();
        t.put(&keys::pool("d"), &dual);
        assert!(store.commit(t).await.unwrap());

        // Stopped after three rewrites, as kill -9 would: a re-run
        // finishes.
        let stopped = StopAfter::new(store.clone(), 3);
        assert!(migrate(&stopped).await.is_err());
        let raw = |e: &crate::store::Entry| serde_json::from_slice::<Value>(&e.value).unwrap();
        let (all, _) = store.list(keys::POOLS).await.unwrap();
        let done = all
            .iter()
            .filter(|e| raw(e).get("family").is_some())
            .count();
        assert_eq!(done, 3 + 1, "three rewritten before the stop, plus d");
        migrate(store.as_ref()).await.unwrap();
        migrate(store.as_ref()).await.unwrap();
        let (pools, _) = store.list_json::<Pool>(keys::POOLS).await.unwrap();
        assert_eq!(pools.len(), 11);
        for (p, e) in &pools {
            let want = if p.name == "d" {
                IpFamily::Dual
            } else {
                IpFamily::Ipv4
            };
            assert_eq!(p.family, want, "{}", p.name);
            assert_eq!(raw(e)["family"], want.as_str(), "written, not defaulted");
            assert_eq!(p.allow_namespaces, ["team-b"], "the rest kept");
            assert_eq!(p.size(), 2);
        }
    }
}
