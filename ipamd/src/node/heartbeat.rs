//! The node's record in the registry (`nodes/<name>`), refreshed every
//! `HEARTBEAT` so other nodes and `ipamctl node list` see it alive.

use std::sync::Arc;

use tracing::warn;

use crate::clock::Clock;
use crate::ipam::registry::{beat, NodeRecord, HEARTBEAT};
use crate::store::Store;

/// Refreshes the node's record forever; store outages are logged and skipped.
pub fn spawn_heartbeat(store: Arc<dyn Store>, mut rec: NodeRecord, clock: Arc<dyn Clock>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT);
        loop {
            tick.tick().await;
            rec.heartbeat_unix = clock.now_unix();
            if let Err(e) = beat(store.as_ref(), &rec).await {
                warn!(error = %e, "node heartbeat failed");
            }
        }
    });
}
