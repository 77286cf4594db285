//! Schema 2 -> 3: the published free counts (`free/<pool>/<tor>`) go. Every
//! ADD and DEL rewrote its pool's count, so ADDs of one pool from many nodes
//! all wrote one record (and conflicted on it); schema 3 works counts out
//! from the leases when asked (`ipam/free.rs`).
//!
//! Deletes in transactions well within etcd's limits. Killed at any point, a
//! re-run lists what is left and deletes that; two migrators at once delete
//! the same keys (deleting a missing key is no error).

use futures::future::BoxFuture;

use super::{keys, Store, StoreError, Txn};

/// Deletes per transaction (etcd allows 128 ops).
const CHUNK: usize = 90;

/// The migration, as `schema::MIGRATIONS` runs it.
pub fn run(store: &dyn Store) -> BoxFuture<'_, Result<(), StoreError>> {
    Box::pin(migrate(store))
}

async fn migrate(store: &dyn Store) -> Result<(), StoreError> {
    let counts = store.list_keys(keys::FREE).await?;
    for chunk in counts.chunks(CHUNK) {
        let mut txn = Txn::default();
        for key in chunk {
            txn.delete(key);
        }
        store.commit(txn).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::core::FreeCount;
    use crate::store::mem::MemStore;
    use crate::store::stop::StopAfter;

    async fn store_with_counts(n: usize) -> Arc<MemStore> {
        let store = Arc::new(MemStore::new());
        for i in 0..n {
            let mut txn = Txn::default();
            txn.put(
                &format!("free/pool-{i:03}/r1"),
                &FreeCount { total: 4, free: 1 },
            )
            .put(&format!("leases/pool-{i:03}/10.0.0.{}", i % 250), &i);
            assert!(store.commit(txn).await.unwrap());
        }
        store
    }

    #[tokio::test]
    async fn counts_go_and_nothing_else_even_when_stopped_midway() {
        let store = store_with_counts(200).await;
        // Stopped after the first transaction, as kill -9 would: a re-run
        // finishes it.
        let stopped = StopAfter::new(store.clone(), 1);
        assert!(migrate(&stopped).await.is_err());
        let left = store.list_keys(keys::FREE).await.unwrap().len();
        assert_eq!(left, 200 - CHUNK, "one transaction went through");
        migrate(store.as_ref()).await.unwrap();
        assert!(store.list_keys(keys::FREE).await.unwrap().is_empty());
        assert_eq!(store.list_keys("leases/").await.unwrap().len(), 200);
        // Run again (a second migrator, or a restart before the bump).
        migrate(store.as_ref()).await.unwrap();
    }
}
