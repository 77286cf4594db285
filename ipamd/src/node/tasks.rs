//! The node's background work while ipamd serves: finish a recovery the
//! store's outage interrupted, apply DELs the plugin recorded while ipamd
//! could not be reached (it may have raced our start), write back what was
//! attached during an outage, and the periodic leak sweep.

use std::sync::Arc;
use std::time::Duration;

use tracing::error;

use super::sweep::Sweep;
use super::Node;

/// How often recorded DELs and outage attachments are looked for.
const REPLAY_EVERY: Duration = Duration::from_secs(5);

/// `recovered`: whether the start-up `recover` reached the store.
pub fn spawn_replay(node: Arc<Node>, recovered: bool) {
    tokio::spawn(async move {
        let mut recovered = recovered;
        let mut tick = tokio::time::interval(REPLAY_EVERY);
        loop {
            tick.tick().await;
            if !recovered {
                match node.recover().await {
                    Ok(done) => recovered = done,
                    Err(e) => error!(error = %e, "recovering"),
                }
                continue;
            }
            if let Err(e) = node.replay_pending_dels().await {
                error!(error = %e, "replaying pending DELs");
            }
            if let Err(e) = node.sync_offline().await {
                error!(error = %e, "writing attachments made during a store outage");
            }
        }
    });
}

/// The leak sweep every `every`; the first pass one period after start.
pub fn spawn_sweep(node: Arc<Node>, every: Duration) {
    tokio::spawn(async move {
        let mut sweep = Sweep::new();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match sweep.pass(&node).await {
                Ok(r) => {
                    for e in r.errors {
                        error!(error = %e, "leak sweep");
                    }
                }
                Err(e) => error!(error = %e, "leak sweep"),
            }
        }
    });
}
