//! The node's record in the registry (`nodes/<name>`), refreshed every
//! `HEARTBEAT` so other nodes and `ipamctl node list` see it alive.

use std::sync::Arc;

use tracing::warn;

use crate::ipam::registry::{beat, NodeRecord, HEARTBEAT};

use super::Node;

/// Refreshes the node's record forever (its ToR too: with the Kubernetes
/// API it comes from the node's label, which may change); store outages are
/// logged and skipped.
pub fn spawn_heartbeat(node: Arc<Node>, mut rec: NodeRecord) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT);
        loop {
            tick.tick().await;
            rec.heartbeat_unix = node.clock.now_unix();
            rec.tor = node.tor().unwrap_or_default();
            if let Err(e) = beat(node.ipam.store().as_ref(), &rec).await {
                warn!(error = %e, "node heartbeat failed");
            }
        }
    });
}
