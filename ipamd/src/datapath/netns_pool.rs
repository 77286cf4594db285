//! The threads pod-netns work runs on, kept between pods.
//!
//! Each ADD works inside its pod's netns on a thread of its own (see
//! `netns`). Starting an OS thread for it, building it a tokio runtime and
//! tearing both down again (its stack unmapped, which interrupts the other
//! CPUs to flush their TLBs) was 15-20 % of those threads' CPU in `perf`
//! of an 8-worker batch, next to their netlink work. So a thread that
//! finished a pod's work goes back to its own netns (`home`: ipamd's, so
//! that it keeps no pod's netns alive) and waits for the next pod, with its
//! runtime; after [`IDLE`] without work it ends.
//!
//! A thread enters the pod's netns at the start of every session, so where
//! it was before never matters; if it cannot go home it ends instead of
//! waiting in a pod's netns.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use futures::future::LocalBoxFuture;
use nix::sched::{setns, CloneFlags};
use rtnetlink::Handle;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

use super::DatapathError;

/// How long an idle thread waits for the next pod before it ends.
const IDLE: Duration = Duration::from_secs(10);

/// A job run in a pod's netns: given the session's rtnetlink handle (or the
/// reason it has none), do the work and send the result back itself.
pub(crate) type Job =
    Box<dyn FnOnce(Result<Handle, DatapathError>) -> LocalBoxFuture<'static, ()> + Send>;

/// One pod's work: its netns and the jobs to run there, in order, until the
/// sender side is dropped.
pub(crate) struct Session {
    pub(crate) netns: File,
    pub(crate) path: PathBuf,
    pub(crate) jobs: mpsc::UnboundedReceiver<Job>,
}

struct Pool {
    /// ipamd's own netns, where idle threads wait; `None` if it could not
    /// be opened (threads then end after each session, as before the pool).
    home: Option<File>,
    /// Idle threads, each waiting on the other end.
    idle: Mutex<Vec<Sender<Session>>>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        home: File::open("/proc/self/ns/net").ok(),
        idle: Mutex::new(Vec::new()),
    })
}

/// Runs `session` on an idle thread, or on a new one if none is idle.
pub(crate) fn submit(mut session: Session) -> Result<(), DatapathError> {
    let pool = pool();
    loop {
        let waiting = pool.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let Some(thread) = waiting else { break };
        match thread.send(session) {
            Ok(()) => return Ok(()),
            // That thread ended (idle too long) as it was picked.
            Err(back) => session = back.0,
        }
    }
    let path = session.path.clone();
    std::thread::Builder::new()
        .name("moor-netns".to_string())
        .spawn(move || serve(pool, session))
        .map(|_| ())
        .map_err(|e| DatapathError::Worker {
            netns: path,
            reason: format!("cannot start a thread: {e}"),
        })
}

fn serve(pool: &'static Pool, first: Session) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build();
    let mut session = first;
    loop {
        let entered = run_session(runtime.as_ref(), session);
        let home = match &pool.home {
            Some(home) if entered => setns(home, CloneFlags::CLONE_NEWNET).is_ok(),
            // Never left home (setns failed), or no home known.
            Some(_) => true,
            None => false,
        };
        if !home || runtime.is_err() {
            return;
        }
        let (tx, rx) = channel();
        pool.idle.lock().unwrap_or_else(|p| p.into_inner()).push(tx);
        session = match rx.recv_timeout(IDLE) {
            Ok(next) => next,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return,
        };
    }
}

/// Enters the session's netns, opens a netlink socket there and runs its
/// jobs; the socket is closed when the last job is done. Returns whether
/// the thread entered the netns.
fn run_session(runtime: Result<&Runtime, &io::Error>, session: Session) -> bool {
    let Session {
        netns,
        path,
        mut jobs,
    } = session;
    let netns_error = |source: &io::Error| DatapathError::Netns {
        netns: path.clone(),
        source: io::Error::new(source.kind(), source.to_string()),
    };
    let entered = setns(&netns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from);
    drop(netns);
    let runtime = match (runtime, &entered) {
        (Ok(runtime), Ok(())) => runtime,
        (Err(e), _) | (_, Err(e)) => {
            while let Some(job) = jobs.blocking_recv() {
                futures::executor::block_on(job(Err(netns_error(e))));
            }
            return entered.is_ok();
        }
    };
    runtime.block_on(async {
        // Opened after setns, so the socket lives in the session's netns.
        match rtnetlink::new_connection() {
            Ok((connection, handle, _)) => {
                let work = async {
                    while let Some(job) = jobs.recv().await {
                        job(Ok(handle.clone())).await;
                    }
                };
                // The connection is dropped (its socket closed) with the
                // last job; it only ends by itself on a socket error.
                tokio::select! {
                    () = work => {}
                    () = connection => {}
                }
            }
            Err(e) => {
                while let Some(job) = jobs.recv().await {
                    job(Err(netns_error(&e))).await;
                }
            }
        }
    });
    true
}
