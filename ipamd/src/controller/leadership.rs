//! Whether this replica may act now: the fence every control loop checks
//! before each write.
//!
//! A leader acts only while `now < sent + lease duration - margin`, where
//! `sent` is when it sent its last successful renewal (or acquisition),
//! measured on the monotonic clock (`tokio::time::Instant`, CLOCK_MONOTONIC:
//! wall-clock steps do not move it; a process stopped by SIGSTOP finds it
//! moved on when it resumes). Other candidates start timing the lease only
//! when they see that renewal, which is after it was sent, so the leader's
//! window always closes before any candidate can think the lease expired;
//! the margin covers a write begun just before the window closes (writes
//! are also cut off at the window's end) and a slow clock. A leader that
//! cannot renew — API down, partitioned, paused — thus stops acting on its
//! own, before anyone else may start.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// The right to write, until `until`; `term` counts acquisitions (a new
/// term starts each time this replica becomes leader).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub term: u64,
    pub until: Instant,
}

impl Fence {
    /// How long the right lasts from now (bound a write with it).
    pub fn remaining(&self) -> Duration {
        self.until.saturating_duration_since(Instant::now())
    }
}

/// This replica is not the leader (or its lease may have run out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not the leader: this replica does not hold the controller Lease (or could not renew it in time)")]
pub struct NotLeader;

#[derive(Debug, Default)]
struct State {
    until: Option<Instant>,
    term: u64,
}

/// Shared by the elector (which extends or ends it) and the loops (which
/// check it). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Leadership {
    state: Arc<Mutex<State>>,
    terms: watch::Sender<u64>,
}

impl Default for Leadership {
    fn default() -> Self {
        Self::new()
    }
}

impl Leadership {
    pub fn new() -> Self {
        Self {
            state: Arc::default(),
            terms: watch::channel(0).0,
        }
    }

    /// The right to write now, or `NotLeader`.
    pub fn check(&self) -> Result<Fence, NotLeader> {
        let s = self.state.lock().unwrap();
        match s.until {
            Some(until) if Instant::now() < until => Ok(Fence {
                term: s.term,
                until,
            }),
            _ => Err(NotLeader),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.check().is_ok()
    }

    /// A write of the Lease sent at `sent` succeeded: act until
    /// `sent + valid_for`. Starts a new term unless this replica was
    /// already leading without a gap.
    pub fn extend(&self, sent: Instant, valid_for: Duration) {
        let mut s = self.state.lock().unwrap();
        let leading = s.until.is_some_and(|u| Instant::now() < u);
        s.until = Some(sent + valid_for);
        if !leading {
            s.term += 1;
            self.terms.send_replace(s.term);
        }
    }

    /// Stops acting at once (lost the Lease, releasing it, shutting down).
    pub fn end(&self) {
        self.state.lock().unwrap().until = None;
    }

    /// Waits until this replica leads; returns the fence of that term.
    pub async fn acquired(&self) -> Fence {
        let mut terms = self.terms.subscribe();
        loop {
            if let Ok(f) = self.check() {
                return f;
            }
            // A term that started and already ended is no use: wait for
            // the next one (the elector signals every new term).
            if terms.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_fence_closes_on_its_own() {
        let l = Leadership::new();
        assert_eq!(l.check(), Err(NotLeader));
        l.extend(Instant::now(), Duration::from_secs(10));
        let f = l.check().unwrap();
        assert_eq!(f.term, 1);
        assert_eq!(f.remaining(), Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(6)).await;
        // A renewal while leading keeps the term.
        l.extend(Instant::now(), Duration::from_secs(10));
        assert_eq!(l.check().unwrap().term, 1);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(l.check(), Err(NotLeader), "no renewal: the fence closed");
        // Leading again after a gap is a new term.
        l.extend(Instant::now(), Duration::from_secs(10));
        assert_eq!(l.check().unwrap().term, 2);
        l.end();
        assert!(!l.is_leader());
    }

    #[tokio::test(start_paused = true)]
    async fn acquired_waits_for_a_term() {
        let l = Leadership::new();
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { l.acquired().await.term }
        });
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished());
        l.extend(Instant::now(), Duration::from_secs(5));
        assert_eq!(waiter.await.unwrap(), 1);
    }
}
