//! Every watch of one `EtcdStore` on one etcd watch stream. A node's view
//! follows the leases of every pool on its ToR (tens to hundreds of
//! prefixes); one gRPC stream per watch would be that many streams (and two
//! goroutines each in etcd) per node, hundreds of thousands on a large
//! cluster. etcd multiplexes watches on a stream by watch id: the id of a new
//! watch comes back in a `created` response, in the order the watches were
//! asked for on that stream, so the asks are queued in that order.
//!
//! A broken stream ends every watch on it with an error (their owners read
//! again and watch again, which opens a new stream). A consumer that falls
//! `BUFFER` events behind has its watch ended (it reads again), so it never
//! holds up the others; one that goes away (its owner dropped it: a view's
//! pool deleted or no longer on its ToR) is cancelled in etcd at its next
//! event or within `SWEEP`, whichever comes first (the next event may never
//! come).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{WatchOptions, WatchRequestSender, WatchResponseStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{watch_events, EtcdStore};
use crate::store::{StoreError, WatchEvent, WatchStream};

/// Events a watch may have waiting before it is ended.
const BUFFER: usize = 4096;

/// How often the watches whose owners are gone are looked for.
const SWEEP: Duration = Duration::from_secs(1);

type Tx = mpsc::Sender<Result<WatchEvent, StoreError>>;

/// The store's shared watch stream, opened on first use and again after it
/// broke.
#[derive(Default)]
pub(super) struct Mux {
    current: tokio::sync::Mutex<Option<Arc<Conn>>>,
}

struct Conn {
    sender: tokio::sync::Mutex<WatchRequestSender>,
    routes: Mutex<Routes>,
}

#[derive(Default)]
struct Routes {
    /// Watches asked for, in order, waiting for their `created`.
    asked: VecDeque<Tx>,
    by_id: HashMap<i64, Tx>,
    /// The stream ended: new watches go on a new one.
    broken: bool,
}

impl Mux {
    /// A watch of the keys from `start` (full key) as `opts` say.
    pub(super) async fn watch(
        &self,
        store: &EtcdStore,
        start: Vec<u8>,
        opts: WatchOptions,
    ) -> Result<WatchStream, StoreError> {
        let (tx, rx) = mpsc::channel(BUFFER);
        // Held until the ask is sent: asks and their queue keep one order.
        let mut current = self.current.lock().await;
        let open = current
            .as_ref()
            .filter(|c| !c.routes.lock().unwrap().broken)
            .cloned();
        match open {
            Some(conn) => {
                // Queued and sent by a task of its own, so a caller dropped
                // in between (a view's follow task replaced) cannot leave
                // the ask queued unsent: every later watch on the stream
                // would get the `created` (and the events) of the one
                // before it. The sender's lock is fair, so asks still go
                // out in the order they were queued.
                let ask = tokio::spawn(async move {
                    conn.routes.lock().unwrap().asked.push_back(tx);
                    let sent = conn.sender.lock().await.watch(start, Some(opts)).await;
                    if sent.is_err() {
                        conn.routes.lock().unwrap().broken = true;
                    }
                    sent.map_err(|e| e.to_string())
                });
                let sent = ask.await.map_err(|e| e.to_string()).and_then(|r| r);
                if let Err(e) = sent {
                    return Err(StoreError::Unavailable(format!(
                        "etcd {}: the watch stream broke: {e}",
                        store.endpoints()
                    )));
                }
            }
            None => {
                let stream = store
                    .call(true, |m| {
                        let (start, opts) = (start.clone(), opts.clone());
                        let mut watch = m.client.watch_client();
                        async move { watch.watch(start, Some(opts)).await }
                    })
                    .await?;
                let (sender, responses) = stream.split();
                let conn = Arc::new(Conn {
                    sender: tokio::sync::Mutex::new(sender),
                    routes: Mutex::new(Routes {
                        asked: VecDeque::from([tx]),
                        ..Routes::default()
                    }),
                });
                tokio::spawn(read(
                    conn.clone(),
                    responses,
                    store.prefix.clone(),
                    store.endpoints(),
                ));
                *current = Some(conn);
            }
        }
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
impl Mux {
    /// Runs `f` while the open stream's sender is held, as a cancel in
    /// flight holds it (tests).
    pub(super) async fn with_sender_held<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        let conn = self.current.lock().await.clone().expect("a stream is open");
        let _held = conn.sender.lock().await;
        f.await
    }
}

/// Cancels watch `id` in etcd.
fn cancel(conn: &Arc<Conn>, id: i64) {
    let conn = conn.clone();
    tokio::spawn(async move {
        let _ = conn.sender.lock().await.cancel(id).await;
    });
}

/// Routes the stream's responses to their watches until it ends.
async fn read(
    conn: Arc<Conn>,
    mut responses: WatchResponseStream,
    prefix: String,
    endpoints: String,
) {
    let mut sweep = tokio::time::interval(SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let why = loop {
        let resp = tokio::select! {
            resp = responses.message() => resp,
            _ = sweep.tick() => {
                let mut routes = conn.routes.lock().unwrap();
                routes.by_id.retain(|id, tx| {
                    let gone = tx.is_closed();
                    if gone {
                        cancel(&conn, *id);
                    }
                    !gone
                });
                continue;
            }
        };
        let resp = match resp {
            Ok(Some(resp)) => resp,
            Ok(None) => break "etcd ended the stream".to_string(),
            Err(e) => break e.to_string(),
        };
        let id = resp.watch_id();
        let mut routes = conn.routes.lock().unwrap();
        if resp.created() {
            if let Some(tx) = routes.asked.pop_front() {
                routes.by_id.insert(id, tx);
            }
        }
        let Some(tx) = routes.by_id.get(&id) else {
            continue;
        };
        let (items, ended) = match watch_events(&prefix, &resp) {
            Ok(evs) => (evs.into_iter().map(Ok).collect::<Vec<_>>(), false),
            // Cancelled by etcd (compacted history): it is gone there.
            Err(e) => (vec![Err(e)], true),
        };
        let mut keep = true;
        for item in items {
            if tx.try_send(item).is_err() {
                // Gone, or too far behind: it reads again if it still wants.
                keep = false;
                break;
            }
        }
        if ended {
            routes.by_id.remove(&id);
        } else if !keep {
            routes.by_id.remove(&id);
            drop(routes);
            cancel(&conn, id);
        }
    };
    let mut routes = conn.routes.lock().unwrap();
    routes.broken = true;
    let Routes { asked, by_id, .. } = &mut *routes;
    for tx in by_id.drain().map(|(_, tx)| tx).chain(asked.drain(..)) {
        let _ = tx.try_send(Err(StoreError::Unavailable(format!(
            "etcd {endpoints}: the watch broke: {why}"
        ))));
    }
}
