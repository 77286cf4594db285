//! A pool's IP set as a stream, for whitelist syncers (`ipamctl pool export
//! --watch`): a snapshot, then every change, and a new snapshot whenever the
//! store's history cannot be replayed, so no change is ever missed. A
//! dual-stack pool's set holds both families: each IP and its IPv6 partner.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use crate::core::Pool;
use crate::error::{Error, Result};
use crate::store::{keys, StoreError};

use super::Ipam;

impl Ipam {
    /// The pool's IP set as a stream: a snapshot, then every change; after a
    /// store error or compaction, a new snapshot (so nothing is missed).
    pub fn watch_pool(
        self: Arc<Self>,
        name: String,
    ) -> impl futures::Stream<Item = Result<PoolChange>> + Send + 'static {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let mut stop = self.shutdown.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                _ = feed_pool_changes(self, name, tx) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

/// One change of a pool's IP set, as `WatchPool` streams it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolChange {
    Snapshot { ips: Vec<IpAddr>, revision: u64 },
    Add { ips: Vec<IpAddr>, revision: u64 },
    Remove { ips: Vec<IpAddr>, revision: u64 },
    Deleted { revision: u64 },
}

/// Every address of the pool a whitelist must hold: its IPs and, for a
/// dual-stack pool, their IPv6 partners (which come and go with them).
async fn addresses(ipam: &Ipam, pool: &Pool) -> Result<BTreeSet<IpAddr>> {
    let mut all: BTreeSet<IpAddr> = pool.all_ips().into_iter().collect();
    all.extend(ipam.partners(pool).await?.into_values().map(IpAddr::V6));
    Ok(all)
}

/// Feeds `tx` until the client goes away or the pool is deleted.
async fn feed_pool_changes(
    ipam: Arc<Ipam>,
    name: String,
    tx: tokio::sync::mpsc::Sender<Result<PoolChange>>,
) {
    let key = keys::pool(&name);
    let mut first = true;
    let mut failures = 0u64;
    'snapshot: loop {
        if failures > 0 {
            let pause = Duration::from_millis(200 * failures.min(10));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = tx.closed() => return,
            }
        }
        // Read the pool and the revision it was read at, then watch from
        // exactly there: every later change arrives, none is missed.
        let (entries, rev) = match ipam.store.list(&key).await {
            Ok(r) => r,
            Err(e) if first => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
            Err(_) => {
                failures += 1;
                continue;
            }
        };
        let Some(entry) = entries.iter().find(|e| e.key == key) else {
            let end = if first {
                Err(Error::NotFound(format!(
                    "pool {name} does not exist (ipamctl pool list)"
                )))
            } else {
                Ok(PoolChange::Deleted { revision: rev })
            };
            let _ = tx.send(end).await;
            return;
        };
        let pool: Pool = match crate::store::decode(entry) {
            Ok(p) => p,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        let mut watch = match ipam.store.watch(&key, rev).await {
            Ok(w) => w,
            // A commit landed between the read and the watch: read again.
            Err(StoreError::Compacted(_)) => continue,
            Err(e) if first => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
            Err(_) => {
                failures += 1;
                continue;
            }
        };
        let mut have = match addresses(&ipam, &pool).await {
            Ok(a) => a,
            Err(e) if first => {
                let _ = tx.send(Err(e)).await;
                return;
            }
            Err(_) => {
                failures += 1;
                continue;
            }
        };
        first = false;
        failures = 0;
        let snap = PoolChange::Snapshot {
            ips: have.iter().copied().collect(),
            revision: rev,
        };
        if tx.send(Ok(snap)).await.is_err() {
            return;
        }
        loop {
            let ev = tokio::select! {
                ev = watch.next() => ev,
                _ = tx.closed() => return,
            };
            let ev = match ev {
                Some(Ok(ev)) => ev,
                // Connection lost or history compacted: a new snapshot.
                Some(Err(_)) | None => {
                    failures = 1;
                    continue 'snapshot;
                }
            };
            if ev.key != key {
                continue;
            }
            let Some(value) = ev.value else {
                let _ = tx
                    .send(Ok(PoolChange::Deleted {
                        revision: ev.revision,
                    }))
                    .await;
                return;
            };
            let Ok(pool) = serde_json::from_slice::<Pool>(&value) else {
                continue 'snapshot;
            };
            let Ok(now) = addresses(&ipam, &pool).await else {
                failures = 1;
                continue 'snapshot;
            };
            let removed: Vec<IpAddr> = have.difference(&now).copied().collect();
            let added: Vec<IpAddr> = now.difference(&have).copied().collect();
            have = now;
            for change in [
                (!removed.is_empty()).then_some(PoolChange::Remove {
                    ips: removed,
                    revision: ev.revision,
                }),
                (!added.is_empty()).then_some(PoolChange::Add {
                    ips: added,
                    revision: ev.revision,
                }),
            ]
            .into_iter()
            .flatten()
            {
                if tx.send(Ok(change)).await.is_err() {
                    return;
                }
            }
        }
    }
}
