//! Watches for the stores that live in ipamd's own process (redb, memory):
//! every commit is broadcast to the watchers. These stores keep no history, so
//! a watch that asks for changes after an older revision than the current one
//! gets `Compacted` and re-reads, the same contract etcd gives after a
//! compaction.

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::broadcast;
use tokio_stream::wrappers::{errors::BroadcastStreamRecvError, BroadcastStream};

use super::{StoreError, WatchEvent, WatchStream};

/// Commits a watcher may fall behind by before it must re-read.
const BACKLOG: usize = 4096;

pub struct Broadcaster {
    tx: broadcast::Sender<Arc<Vec<WatchEvent>>>,
}

impl Default for Broadcaster {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(BACKLOG).0,
        }
    }
}

impl Broadcaster {
    /// Sends one commit's changes; nobody listening is fine.
    pub fn publish(&self, events: Vec<WatchEvent>) {
        if !events.is_empty() {
            let _ = self.tx.send(Arc::new(events));
        }
    }

    /// Subscribes first, then asks `current` for the store's revision, so no
    /// commit falls between the two unseen: one that did shows up as a newer
    /// revision and the caller re-reads.
    pub fn watch(
        &self,
        prefix: &str,
        after_revision: u64,
        current: impl FnOnce() -> Result<u64, StoreError>,
    ) -> Result<WatchStream, StoreError> {
        let rx = self.tx.subscribe();
        let now = current()?;
        if now > after_revision {
            return Err(StoreError::Compacted(now));
        }
        let prefix = prefix.to_string();
        let stream = BroadcastStream::new(rx).flat_map(move |batch| {
            let items: Vec<Result<WatchEvent, StoreError>> = match batch {
                Ok(events) => events
                    .iter()
                    .filter(|e| e.key.starts_with(&prefix))
                    .cloned()
                    .map(Ok)
                    .collect(),
                Err(BroadcastStreamRecvError::Lagged(_)) => vec![Err(StoreError::Compacted(0))],
            };
            futures::stream::iter(items)
        });
        Ok(stream.boxed())
    }
}
