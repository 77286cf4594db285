//! Finishing pool changes a previous run left half done (killed between
//! two of their transactions): at start, before serving; in the background
//! when the store cannot be reached yet (DEL and CHECK must work
//! meanwhile, and an admin call on such a pool finishes it first anyway).

use std::sync::Arc;
use std::time::Duration;

use moor_ipamd::clock::{Clock, SystemClock};
use moor_ipamd::ipam::Ipam;
use tracing::{info, warn};

/// How long the start waits for it; a longer one (a slow store) goes on in
/// the background, which is as safe as a kill between two steps.
const AT_START: Duration = Duration::from_secs(10);

pub async fn finish_at_start(ipam: Arc<Ipam>) {
    if tokio::time::timeout(AT_START, try_once(&ipam))
        .await
        .unwrap_or(false)
    {
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if try_once(&ipam).await {
                return;
            }
        }
    });
}

/// Whether the store answered (so there is nothing left to retry).
async fn try_once(ipam: &Ipam) -> bool {
    match ipam.finish_pool_ops(SystemClock.now_unix()).await {
        Ok(done) => {
            if !done.is_empty() {
                info!(pools = ?done, "finished pool changes begun before this start");
            }
            true
        }
        Err(e) => {
            warn!(error = %e, "could not finish pool changes begun before this start yet; retrying");
            false
        }
    }
}
