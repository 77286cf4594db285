//! Requests of one pool that arrive together go together: whoever holds the
//! pool's turn takes everything waiting (up to a limit) and runs it as one
//! batch, one decision over all of them and one commit. A burst of ADDs on
//! one pool (a Deployment scaling up on a node) then costs one durable
//! commit per batch instead of one per pod queued behind each other's
//! fsync, and their free-count update is one write instead of a conflict per
//! pod. A request alone is a batch of one: no waiting for company.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

struct Slot<Q, R> {
    waiting: Mutex<Vec<(Q, oneshot::Sender<R>)>>,
    turn: Arc<tokio::sync::Mutex<()>>,
}

pub(super) struct Batcher<Q, R> {
    slots: Mutex<HashMap<String, Arc<Slot<Q, R>>>>,
}

impl<Q, R> Default for Batcher<Q, R> {
    fn default() -> Self {
        Self {
            slots: Mutex::default(),
        }
    }
}

impl<Q, R> Batcher<Q, R> {
    fn slot(&self, pool: &str) -> Arc<Slot<Q, R>> {
        self.slots
            .lock()
            .unwrap()
            .entry(pool.to_string())
            .or_insert_with(|| {
                Arc::new(Slot {
                    waiting: Mutex::default(),
                    turn: Arc::default(),
                })
            })
            .clone()
    }

    /// Waits for pool `pool`'s turn and keeps it until the guard drops: a
    /// change that must not interleave with the pool's batches (a DEL, whose
    /// free-count update would otherwise conflict with theirs).
    pub async fn turn(&self, pool: &str) -> tokio::sync::OwnedMutexGuard<()> {
        self.slot(pool).turn.clone().lock_owned().await
    }

    /// Runs `q` in a batch of pool `pool`: queued, then run by this call
    /// (with whatever else is waiting, `max` at most) or by the call that
    /// holds the turn. None: the call running it went away before it
    /// answered (its request was cancelled); whether `q` took effect is not
    /// known, as with a lost reply.
    pub async fn submit<F, Fut>(&self, pool: &str, q: Q, max: usize, run: F) -> Option<R>
    where
        F: Fn(Vec<Q>) -> Fut,
        Fut: Future<Output = Vec<R>>,
    {
        let slot = self.slot(pool);
        let (tx, mut rx) = oneshot::channel();
        slot.waiting.lock().unwrap().push((q, tx));
        loop {
            let _turn = slot.turn.lock().await;
            // An earlier turn may have run ours (its answers are sent
            // before its turn ends).
            match rx.try_recv() {
                Ok(r) => return Some(r),
                Err(oneshot::error::TryRecvError::Closed) => return None,
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let batch: Vec<(Q, oneshot::Sender<R>)> = {
                let mut w = slot.waiting.lock().unwrap();
                let n = w.len().min(max.max(1));
                w.drain(..n).collect()
            };
            if batch.is_empty() {
                // Taken by a turn that went away before it answered.
                return None;
            }
            let (qs, txs): (Vec<Q>, Vec<_>) = batch.into_iter().unzip();
            for (tx, r) in txs.into_iter().zip(run(qs).await) {
                let _ = tx.send(r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Requests that wait while a batch runs go together in the next one,
    /// each gets its own answer, and a batch never exceeds `max`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn waiting_requests_go_together_and_each_gets_its_answer() {
        let b: Arc<Batcher<u32, u32>> = Arc::default();
        let batches = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let runs = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..40u32)
            .map(|i| {
                let (b, batches, runs) = (b.clone(), batches.clone(), runs.clone());
                tokio::spawn(async move {
                    b.submit("p", i, 16, |qs: Vec<u32>| {
                        let (batches, runs) = (batches.clone(), runs.clone());
                        async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            // Slow, like a durable commit: others queue.
                            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                            batches.lock().unwrap().push(qs.clone());
                            qs.iter().map(|q| q * 10).collect()
                        }
                    })
                    .await
                })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap(), Some(i as u32 * 10));
        }
        let batches = batches.lock().unwrap();
        let mut all: Vec<u32> = batches.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..40).collect::<Vec<_>>(), "each request run once");
        assert!(batches.iter().all(|b| b.len() <= 16), "{batches:?}");
        assert!(
            runs.load(Ordering::SeqCst) < 40,
            "some went together: {batches:?}"
        );
    }
}
