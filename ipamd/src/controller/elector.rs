//! Leader election over one `coordination.k8s.io/v1` Lease, the way
//! client-go's leaderelection does it:
//!
//! - A candidate reads the Lease every `poll`. It never compares the
//!   holder's `renewTime` with its own wall clock (clocks differ): it
//!   notes, on its monotonic clock, when it first saw the Lease at its
//!   current resourceVersion, and thinks it expired only once the Lease
//!   stayed at that version for `leaseDurationSeconds`. A Lease nobody
//!   holds (released) or that does not exist is taken at once.
//! - Taking or renewing is a PUT naming the resourceVersion read; of two
//!   candidates that read the same version, one gets 409 Conflict.
//!   Taking sets `holderIdentity`, `acquireTime`, `renewTime`,
//!   `leaseDurationSeconds` and bumps `leaseTransitions`.
//! - The leader renews every `renew_every` (retrying every `poll` after a
//!   failure) and may act only inside the fence `Leadership` keeps: until
//!   its last successful renewal was sent plus the lease duration minus
//!   the margin.
//! - On shutdown the leader stops acting, then releases the Lease (holder
//!   cleared), so another replica takes over at its next read instead of
//!   after a lease duration.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use crate::clock::Clock;
use crate::kubernetes::lease::{LeaseApi, LeaseError, LeaseRecord};

use super::leadership::Leadership;
use super::LeaseConfig;

/// One candidate.
pub struct Elector {
    cfg: LeaseConfig,
    api: LeaseApi,
    clock: std::sync::Arc<dyn Clock>,
    leadership: Leadership,
    /// The Lease as this replica last wrote it while holding it.
    mine: Option<LeaseRecord>,
    /// The version last seen held by someone else, and since when.
    observed: Option<(String, Instant)>,
}

/// What one step did, for the caller's pacing and for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Took the Lease (created it, or replaced a released or expired one).
    Acquired,
    /// Renewed the Lease this replica holds.
    Renewed,
    /// Someone else holds it and it has not expired.
    Following,
    /// Another replica wrote the Lease first.
    Lost,
    /// The API did not answer; nothing is known to have changed.
    Failed,
}

impl Elector {
    pub fn new(
        cfg: LeaseConfig,
        api: LeaseApi,
        clock: std::sync::Arc<dyn Clock>,
        leadership: Leadership,
    ) -> Self {
        Self {
            cfg,
            api,
            clock,
            leadership,
            mine: None,
            observed: None,
        }
    }

    pub fn leadership(&self) -> &Leadership {
        &self.leadership
    }

    /// The fence after a write sent at `sent` succeeded.
    fn held(&mut self, sent: Instant, record: LeaseRecord) {
        self.leadership
            .extend(sent, self.cfg.duration - self.cfg.margin());
        self.mine = Some(record);
        self.observed = None;
    }

    fn taken_by_me(&self, read: Option<&LeaseRecord>) -> LeaseRecord {
        let now = self.clock.now_unix();
        let (transitions, version) = match read {
            None => (0, String::new()),
            Some(r) if r.holder == self.cfg.identity => (r.transitions, r.resource_version.clone()),
            Some(r) => (r.transitions + 1, r.resource_version.clone()),
        };
        LeaseRecord {
            holder: self.cfg.identity.clone(),
            duration_seconds: self.cfg.duration.as_secs() as i32,
            acquired_unix: now,
            renewed_unix: now,
            transitions,
            resource_version: version,
        }
    }

    /// One read or write of the Lease.
    pub async fn step(&mut self) -> Step {
        let sent = Instant::now();
        if let Some(mine) = self.mine.clone() {
            let renewal = LeaseRecord {
                renewed_unix: self.clock.now_unix(),
                ..mine
            };
            return match self.api.replace(&renewal).await {
                Ok(written) => {
                    self.held(sent, written);
                    Step::Renewed
                }
                Err(LeaseError::Conflict) => {
                    // Our own earlier renewal may have landed after its
                    // answer was lost: read and decide again.
                    self.mine = None;
                    self.leadership.end();
                    match self.read_and_decide().await {
                        Step::Acquired | Step::Renewed => Step::Renewed,
                        other => {
                            warn!(lease = %self.cfg.name, identity = %self.cfg.identity, "lost the controller Lease: stopped acting");
                            if other == Step::Following {
                                Step::Lost
                            } else {
                                other
                            }
                        }
                    }
                }
                Err(LeaseError::Failed(e)) => {
                    // Keep trying; the fence closes by itself if this lasts.
                    warn!(error = %e, "could not renew the controller Lease");
                    Step::Failed
                }
            };
        }
        self.read_and_decide().await
    }

    async fn read_and_decide(&mut self) -> Step {
        let sent = Instant::now();
        let read = match self.api.get().await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "could not read the controller Lease");
                return Step::Failed;
            }
        };
        let take = match &read {
            None => true,
            Some(r) if r.holder.is_empty() || r.holder == self.cfg.identity => true,
            Some(r) => {
                let since = match &self.observed {
                    Some((version, since)) if *version == r.resource_version => *since,
                    _ => {
                        self.observed = Some((r.resource_version.clone(), sent));
                        sent
                    }
                };
                let duration = Duration::from_secs(r.duration_seconds.max(0) as u64);
                since.elapsed() >= duration
            }
        };
        if !take {
            return Step::Following;
        }
        let record = self.taken_by_me(read.as_ref());
        let sent = Instant::now();
        let wrote = match read {
            None => self.api.create(&record).await,
            Some(_) => self.api.replace(&record).await,
        };
        match wrote {
            Ok(written) => {
                info!(
                    lease = %self.cfg.name,
                    identity = %self.cfg.identity,
                    transitions = written.transitions,
                    "acquired the controller Lease: this replica leads"
                );
                self.held(sent, written);
                Step::Acquired
            }
            Err(LeaseError::Conflict) => Step::Lost,
            Err(LeaseError::Failed(e)) => {
                warn!(error = %e, "could not take the controller Lease");
                Step::Failed
            }
        }
    }

    /// Steps until `stop` completes, then releases the Lease if held.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        loop {
            let pause = match self.step().await {
                Step::Acquired | Step::Renewed => self.cfg.renew_every,
                _ => self.cfg.poll(),
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = &mut stop => break,
            }
        }
        self.release().await;
    }

    /// Stops acting, then clears the holder so another replica takes over
    /// at its next read (client-go's ReleaseOnCancel).
    pub async fn release(&mut self) {
        self.leadership.end();
        let Some(mine) = self.mine.take() else {
            return;
        };
        let now = self.clock.now_unix();
        let released = LeaseRecord {
            holder: String::new(),
            duration_seconds: 1,
            acquired_unix: now,
            renewed_unix: now,
            ..mine
        };
        match self.api.replace(&released).await {
            Ok(_) => info!(lease = %self.cfg.name, "released the controller Lease"),
            Err(e) => {
                warn!(error = %e, "could not release the controller Lease; it expires by itself")
            }
        }
    }
}
