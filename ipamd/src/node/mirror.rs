//! This node's own attachments, copied into a local redb file when the shared
//! store is etcd, so DEL, CHECK, GC and a restart keep working while etcd is
//! unreachable. The shared store stays the truth: the mirror is rebuilt from
//! it whenever it can be read, and what a node does during an outage goes to
//! the shared store through durable pending-DEL records when it is back.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::core::{AttachmentKey, Lease, PodRef, Tor};
use crate::store::redb::RedbStore;
use crate::store::{decode, Store, StoreError, StoreExt, Txn};

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

    /// Every mirrored attachment; fails, naming it, on one that does not
    /// decode: for what must see them all (an offline ADD looking for its
    /// IP's holder, the sync of offline attachments to the store).
    pub async fn all(&self) -> Result<Vec<Mirrored>, StoreError> {
        let (all, _) = self.store.list_json::<Mirrored>(PREFIX).await?;
        Ok(all.into_iter().map(|(m, _)| m).collect())
    }

    /// Every mirrored attachment that decodes, and the keys of those that
    /// do not (logged): for what leaves those pods alone (the sweep, GC in
    /// an outage, metrics). The next start rewrites the mirror from the
    /// store (`replace_all`), which repairs it.
    pub async fn readable(&self) -> Result<(Vec<Mirrored>, Vec<String>), StoreError> {
        let (entries, _) = self.store.list(PREFIX).await?;
        let (mut out, mut corrupt) = (Vec::new(), Vec::new());
        for e in entries {
            match decode::<Mirrored>(&e) {
                Ok(m) => out.push(m),
                Err(err) => {
                    tracing::warn!(error = %err, "a record of the local mirror does not decode; its pod is left as it is");
                    corrupt.push(e.key);
                }
            }
        }
        Ok((out, corrupt))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::{AllocRequest, Ipam, PoolSpec};
    use crate::store::mem::MemStore;
    use crate::store::Op;

    #[tokio::test]
    async fn a_record_that_does_not_decode_is_named_and_the_rest_read() {
        let ipam = Ipam::new(std::sync::Arc::new(MemStore::new()));
        let range = [("10.1.0.10".to_string(), "10.1.0.19".to_string())];
        ipam.add_tor("r1", "10.1.0.0/24", "10.1.0.1", 0, &range, "")
            .await
            .unwrap();
        let spec = PoolSpec {
            name: "web".into(),
            namespace: "default".into(),
            app: "web".into(),
            size: 2,
            ..PoolSpec::default()
        };
        ipam.create_pool(&spec, 0).await.unwrap();
        let dir = moor_testkit::TempDir::new("mirror-corrupt");
        let m = Mirror::open(&dir.path().join("mirror.redb")).unwrap();
        let mut keys_of = Vec::new();
        for (cid, pod) in [("c1", "web-0"), ("c2", "web-1")] {
            let a = ipam
                .allocate(&AllocRequest::for_test("n1", "r1", cid, pod, 1))
                .await
                .unwrap();
            keys_of.push(key(&a.lease.attachment.as_ref().unwrap().key));
            m.put(&Mirrored {
                lease: a.lease,
                tor: a.tor,
                offline: false,
            })
            .await
            .unwrap();
        }
        let mut t = Txn::default();
        t.ops.push(Op::Put {
            key: keys_of[0].clone(),
            value: b"{".to_vec(),
        });
        m.store.commit(t).await.unwrap();
        let e = m.all().await.unwrap_err();
        assert!(e.to_string().contains(&keys_of[0]), "{e}");
        let (ok, corrupt) = m.readable().await.unwrap();
        assert_eq!(ok.len(), 1);
        assert_eq!(corrupt, [keys_of[0].clone()]);
    }
}
