//! This node's own attachments, copied into a local redb file when the shared
//! store is etcd, so DEL, CHECK, GC and a restart keep working while etcd is
//! unreachable. The shared store stays the truth: the mirror is rebuilt from
//! it whenever it can be read, and what a node does during an outage goes to
//! the shared store through durable pending-DEL records when it is back.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::core::{AttachmentKey, Lease, PodRef, Tor};
use crate::store::redb::RedbStore;
use crate::store::{Store, StoreError, StoreExt, Txn};

const PREFIX: &str = "mirror/";
/// Bindings of pods that ran on this node (`bound/<ns>/<pod>`), kept after
/// their DEL so a pod can start again here on its own IP while the store is
/// out of reach.
fn bound_key(pod: &PodRef) -> String {
    format!("bound/{}/{}", pod.namespace, pod.name)
}

fn key(k: &AttachmentKey) -> String {
    format!("mirror/{}/{}", k.container_id, k.ifname)
}

/// One attachment of this node with the ToR it is wired for (CHECK needs the
/// prefix and gateway while the shared store is out of reach).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mirrored {
    pub lease: Lease,
    pub tor: Tor,
    /// Attached during a store outage from a cached binding: not yet in the
    /// store; `Node::sync_offline` writes it there when the store is back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub offline: bool,
}

pub struct Mirror {
    store: RedbStore,
}

impl Mirror {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            store: RedbStore::open(path)?,
        })
    }

    pub async fn put(&self, m: &Mirrored) -> Result<(), StoreError> {
        let a = m
            .lease
            .attachment
            .as_ref()
            .expect("mirrored leases are attached");
        let mut txn = Txn::default();
        txn.put(&key(&a.key), m);
        self.store.commit(txn).await.map(|_| ())
    }

    pub async fn remove(&self, k: &AttachmentKey) -> Result<(), StoreError> {
        let mut txn = Txn::default();
        txn.delete(&key(k));
        self.store.commit(txn).await.map(|_| ())
    }

    pub async fn get(&self, k: &AttachmentKey) -> Result<Option<Mirrored>, StoreError> {
        Ok(self
            .store
            .get_json::<Mirrored>(&key(k))
            .await?
            .map(|(m, _)| m))
    }

    pub async fn all(&self) -> Result<Vec<Mirrored>, StoreError> {
        let (all, _) = self.store.list_json::<Mirrored>(PREFIX).await?;
        Ok(all.into_iter().map(|(m, _)| m).collect())
    }

    /// Remembers that `pod` keeps `m.lease.ip` (its DEL kept the binding).
    pub async fn put_bound(&self, pod: &PodRef, m: &Mirrored) -> Result<(), StoreError> {
        let mut txn = Txn::default();
        txn.put(&bound_key(pod), m);
        self.store.commit(txn).await.map(|_| ())
    }

    pub async fn bound(&self, pod: &PodRef) -> Result<Option<Mirrored>, StoreError> {
        Ok(self
            .store
            .get_json::<Mirrored>(&bound_key(pod))
            .await?
            .map(|(m, _)| m))
    }

    pub async fn forget_bound(&self, pod: &PodRef) -> Result<(), StoreError> {
        let mut txn = Txn::default();
        txn.delete(&bound_key(pod));
        self.store.commit(txn).await.map(|_| ())
    }

    /// Makes the mirror exactly `leases` (what the shared store says), in one
    /// transaction.
    pub async fn replace_all(&self, all: &[Mirrored]) -> Result<(), StoreError> {
        let (old, _) = self.store.list(PREFIX).await?;
        let mut txn = Txn::default();
        for e in old {
            txn.delete(&e.key);
        }
        for m in all {
            let a = m
                .lease
                .attachment
                .as_ref()
                .expect("node attachments are attached");
            txn.put(&key(&a.key), m);
        }
        self.store.commit(txn).await.map(|_| ())
    }
}
