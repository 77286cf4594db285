//! The node registry: each ipamd writes `nodes/<name>` at start and refreshes
//! it every few seconds, so `ipamctl node list`, the ToR rule's error ("it can
//! run on nodes ...") and `ip evict --force` know which nodes exist and which
//! are alive. A heartbeat timestamp (not a store lease) keeps it one plain
//! record on every backend; a node is alive while its heartbeat is younger
//! than `ALIVE_WITHIN`.

use std::time::Duration;

use crate::store::{decode, keys, Store, StoreError, StoreExt, Txn};

pub use crate::core::{NodeRecord, ALIVE_WITHIN};

/// How often a node refreshes its record.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

pub async fn beat(store: &dyn Store, rec: &NodeRecord) -> Result<(), StoreError> {
    let mut txn = Txn::default();
    txn.put(&keys::node(&rec.name), rec);
    store.commit(txn).await.map(|_| ())
}

/// Every node record that decodes, and the names (from their keys) of
/// those that do not: a node whose record cannot be read may be alive, so
/// the controller's GC leaves its attachments alone.
pub async fn nodes_readable(
    store: &dyn Store,
) -> Result<(Vec<NodeRecord>, Vec<String>), StoreError> {
    let (entries, _) = store.list(keys::NODES).await?;
    let (mut ok, mut unreadable) = (Vec::new(), Vec::new());
    for e in entries {
        match decode::<NodeRecord>(&e) {
            Ok(n) => ok.push(n),
            Err(err) => {
                tracing::warn!(error = %err, "a node record does not decode; that node's attachments are left alone");
                unreadable.push(
                    e.key
                        .strip_prefix(keys::NODES)
                        .unwrap_or(&e.key)
                        .to_string(),
                );
            }
        }
    }
    Ok((ok, unreadable))
}

pub async fn nodes(store: &dyn Store) -> Result<Vec<NodeRecord>, StoreError> {
    let (nodes, _) = store.list_json::<NodeRecord>(keys::NODES).await?;
    Ok(nodes.into_iter().map(|(n, _)| n).collect())
}

impl super::Ipam {
    /// Names of the alive nodes of a ToR, for error messages; empty when the
    /// registry cannot be read.
    pub(crate) async fn alive_nodes_of(&self, tor: &str, now_unix: u64) -> Vec<String> {
        match nodes(self.store.as_ref()).await {
            Ok(nodes) => nodes
                .into_iter()
                .filter(|n| n.tor == tor && n.alive(now_unix))
                .map(|n| n.name)
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::mem::MemStore;

    #[tokio::test]
    async fn alive_follows_the_heartbeat() {
        let s = MemStore::new();
        let mut rec = NodeRecord {
            name: "n1".into(),
            tor: "r1".into(),
            mode: "physical".into(),
            version: "0.1.0".into(),
            started_unix: 100,
            heartbeat_unix: 100,
        };
        beat(&s, &rec).await.unwrap();
        rec.heartbeat_unix = 120;
        beat(&s, &rec).await.unwrap();
        let got = nodes(&s).await.unwrap();
        assert_eq!(got, vec![rec.clone()]);
        assert!(got[0].alive(120 + ALIVE_WITHIN - 1));
        assert!(!got[0].alive(120 + ALIVE_WITHIN));
    }
}
