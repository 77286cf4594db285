//! Whether the store answers, as the node's operations have seen it. After a
//! failure, ADDs fail at once for a few seconds instead of each waiting for
//! the store's timeout: a long outage costs one probe per window, not one
//! per ADD, and the runtime's retry comes back soon enough.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::Result;

use super::Node;

/// How long after a store failure ADDs fail fast without trying the store.
pub(super) const FAIL_FAST_SECS: u64 = 3;

#[derive(Default)]
pub(super) struct StoreHealth {
    /// When the store began failing to answer (unix seconds, 0 = it
    /// answers), for messages.
    down_since: AtomicU64,
    /// When the store last failed to answer (unix seconds, 0 = it answers).
    /// Renewed by every failure.
    failed_at: AtomicU64,
}

impl Node {
    /// Remembers whether the store answered; returns the result unchanged.
    pub(super) fn note<T>(&self, r: Result<T>) -> Result<T> {
        let h = &self.health;
        match &r {
            Err(e) if e.is_unavailable() => {
                let now = self.now().max(1);
                let _ = h
                    .down_since
                    .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
                h.failed_at.store(now, Ordering::Relaxed);
            }
            Ok(_) => {
                h.down_since.store(0, Ordering::Relaxed);
                h.failed_at.store(0, Ordering::Relaxed);
            }
            Err(_) => {}
        }
        r
    }

    /// Since when the store has been failing, if it failed within the
    /// fail-fast window.
    pub(super) fn store_down_recently(&self) -> Option<u64> {
        let last = self.health.failed_at.load(Ordering::Relaxed);
        let since = self.health.down_since.load(Ordering::Relaxed);
        (last != 0 && self.now().saturating_sub(last) < FAIL_FAST_SECS).then_some(since.max(1))
    }
}
