//! Work inside another network namespace.
//!
//! `setns(CLONE_NEWNET)` changes the namespace of the calling *thread*, and a
//! netlink or packet socket belongs to the namespace of the thread that opened
//! it. So pod-side work runs on a dedicated OS thread that enters the pod's
//! netns, opens its own rtnetlink connection there, drives it with a
//! current_thread runtime and then exits. Such a thread is never handed back to
//! a pool and no async task ever calls `setns`: a tokio worker that did would
//! silently run every later task in the pod's namespace.

use std::fs::File;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::FutureExt;
use nix::sched::{setns, CloneFlags};
use rtnetlink::Handle;
use tokio::sync::{mpsc, oneshot};

use super::netns_pool::{self, Job, Session};
use super::DatapathError;

/// Opens a netns file such as `/run/netns/pod-a` or `/proc/<pid>/ns/net`.
pub(crate) fn open_netns(path: &Path) -> Result<File, DatapathError> {
    File::open(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => DatapathError::NetnsNotFound {
            netns: path.to_path_buf(),
        },
        _ => DatapathError::Netns {
            netns: path.to_path_buf(),
            source,
        },
    })
}

/// An rtnetlink connection in `netns` (`None`: the calling thread's),
/// driven on a thread of its own for as long as this value lives.
///
/// Not on the daemon's runtime: the kernel runs a route-netlink request in
/// the context of the `sendmsg` that carries it, rtnl lock wait included, so
/// a connection polled by a runtime worker held that worker for every
/// request's kernel time. With two workers (one per CPU), two creations
/// waiting for the rtnl lock stopped every gRPC request and store commit on
/// the node. The socket belongs to the netns of the thread that opens it,
/// hence the thread opens it, after entering `netns`.
#[derive(Clone)]
pub(crate) struct Netlink {
    handle: Handle,
    /// Dropping the last clone ends the connection's thread (a connection
    /// whose handles are all gone does not end by itself).
    _stop: std::sync::Arc<oneshot::Sender<()>>,
}

impl std::ops::Deref for Netlink {
    type Target = Handle;

    fn deref(&self) -> &Handle {
        &self.handle
    }
}

pub(crate) fn netlink_in(netns: Option<&Path>) -> Result<Netlink, DatapathError> {
    let file = netns.map(open_netns).transpose()?;
    let path = netns.map(Path::to_path_buf);
    let (opened_tx, opened) = std::sync::mpsc::sync_channel(1);
    let (stop_tx, stop) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("moor-netlink".into())
        .spawn(move || {
            let open = || -> Result<_, DatapathError> {
                if let (Some(file), Some(path)) = (&file, &path) {
                    setns(file, CloneFlags::CLONE_NEWNET).map_err(|e| DatapathError::Netns {
                        netns: path.clone(),
                        source: io::Error::from(e),
                    })?;
                }
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                    .map_err(|source| DatapathError::Netlink {
                        op: "start the netlink thread's runtime".to_string(),
                        source,
                    })?;
                let (connection, handle, _) = {
                    let _in_rt = runtime.enter();
                    rtnetlink::new_connection().map_err(|source| DatapathError::Netlink {
                        op: "open a netlink socket".to_string(),
                        source,
                    })?
                };
                Ok((runtime, connection, handle))
            };
            match open() {
                Ok((runtime, connection, handle)) => {
                    let _ = opened_tx.send(Ok(handle));
                    runtime.block_on(async {
                        tokio::select! {
                            () = connection => {}
                            _ = stop => {}
                        }
                    });
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                }
            }
        })
        .map_err(|source| DatapathError::Netlink {
            op: "start a netlink thread".to_string(),
            source,
        })?;
    let handle = opened.recv().map_err(|_| DatapathError::Worker {
        netns: netns.map(Path::to_path_buf).unwrap_or_default(),
        reason: "the thread opening its netlink socket panicked".into(),
    })??;
    Ok(Netlink {
        handle,
        _stop: std::sync::Arc::new(stop_tx),
    })
}

/// Runs `work` with an rtnetlink handle inside the netns `netns` (opened from
/// `path`, which is only used in errors), on a thread of its own.
pub(crate) async fn run_in_netns<F, Fut, T>(
    netns: File,
    path: PathBuf,
    work: F,
) -> Result<T, DatapathError>
where
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, DatapathError>> + 'static,
    T: Send + 'static,
{
    NetnsThread::spawn(netns, path)?.run(work).await
}

/// A thread that has entered a netns (or is doing so) and runs the jobs it
/// is given, one after another, until it is dropped.
///
/// Started before its first job is known so that entering the netns and
/// opening a netlink socket overlap with the caller's own work, such as
/// reading the bridge while the pod's thread clears CNI_IFNAME. The thread
/// comes from a pool (`netns_pool`) and goes back to it when this is
/// dropped.
pub(crate) struct NetnsThread {
    jobs: mpsc::UnboundedSender<Job>,
    path: PathBuf,
}

impl NetnsThread {
    pub(crate) fn spawn(netns: File, path: PathBuf) -> Result<Self, DatapathError> {
        let (jobs, queue) = mpsc::unbounded_channel::<Job>();
        netns_pool::submit(Session {
            netns,
            path: path.clone(),
            jobs: queue,
        })?;
        Ok(NetnsThread { jobs, path })
    }

    /// Runs `work` on the thread and returns its result.
    pub(crate) async fn run<F, Fut, T>(&self, work: F) -> Result<T, DatapathError>
    where
        F: FnOnce(Handle) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, DatapathError>> + 'static,
        T: Send + 'static,
    {
        self.run_timed(work).await.map(|(t, _)| t)
    }

    /// [`NetnsThread::run`], and how long the work waited for the thread
    /// to take it (the first job: to be in the netns, its netlink socket
    /// open).
    pub(crate) async fn run_timed<F, Fut, T>(&self, work: F) -> Result<(T, Duration), DatapathError>
    where
        F: FnOnce(Handle) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, DatapathError>> + 'static,
        T: Send + 'static,
    {
        self.start(work).outcome().await
    }

    /// Queues `work` on the thread without waiting for it: the caller
    /// collects the result later ([`Started::outcome`]).
    pub(crate) fn start<F, Fut, T>(&self, work: F) -> Started<T>
    where
        F: FnOnce(Handle) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, DatapathError>> + 'static,
        T: Send + 'static,
    {
        let (result_tx, result) = oneshot::channel();
        let sent = Instant::now();
        let job: Job = Box::new(move |handle: Result<Handle, DatapathError>| {
            let waited = sent.elapsed();
            async move {
                let outcome = match handle {
                    Ok(handle) => work(handle).await.map(|t| (t, waited)),
                    Err(e) => Err(e),
                };
                // The receiver is gone only if the caller was cancelled.
                let _ = result_tx.send(outcome);
            }
            .boxed_local()
        });
        // A send that fails drops the job and with it `result_tx`: the
        // outcome then says the thread is gone.
        let _ = self.jobs.send(job);
        Started {
            result,
            path: self.path.clone(),
        }
    }
}

/// A job queued on a [`NetnsThread`].
pub(crate) struct Started<T> {
    result: oneshot::Receiver<Result<(T, Duration), DatapathError>>,
    path: PathBuf,
}

impl<T> Started<T> {
    /// The job's result, and how long it waited for the thread.
    pub(crate) async fn outcome(self) -> Result<(T, Duration), DatapathError> {
        self.result.await.map_err(|_| DatapathError::Worker {
            netns: self.path,
            reason: "the thread ended without an answer (it panicked)".to_string(),
        })?
    }
}

/// Deletes links on threads and netlink sockets of their own, in the netns
/// the datapath's host ends live in.
///
/// A veth delete takes ~17 ms in the kernel, during which `sendto` blocks.
/// Sent over the daemon's one shared socket, concurrent DELs ran strictly one
/// after another and every ADD queued behind them (8 workers: 39 ADD+DEL
/// cycles/s against the reference plugins' 66-102); each blocked send also
/// held a runtime worker. On separate sockets the kernel overlaps the slow
/// part of the deletes.
#[derive(Clone)]
pub(crate) struct LinkDeleter {
    netns: Option<std::sync::Arc<File>>,
    path: Option<PathBuf>,
}

impl LinkDeleter {
    pub(crate) fn new(netns: Option<&Path>) -> Result<Self, DatapathError> {
        Ok(Self {
            netns: netns.map(open_netns).transpose()?.map(std::sync::Arc::new),
            path: netns.map(Path::to_path_buf),
        })
    }

    /// `Ok(true)`: deleted; `Ok(false)`: there was no such link.
    pub(crate) async fn delete(&self, name: &str) -> Result<bool, DatapathError> {
        let (tx, rx) = oneshot::channel();
        let netns = self.netns.clone();
        let owned = name.to_string();
        std::thread::Builder::new()
            .name("moor-unwire".to_string())
            .spawn(move || {
                let result = match &netns {
                    Some(f) => setns(f.as_ref(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from),
                    None => Ok(()),
                }
                .and_then(|()| super::delete_link_now(&owned));
                let _ = tx.send(result);
            })
            .map_err(|e| DatapathError::Worker {
                netns: self.path.clone().unwrap_or_default(),
                reason: format!("cannot start a thread: {e}"),
            })?;
        rx.await
            .map_err(|_| DatapathError::Worker {
                netns: self.path.clone().unwrap_or_default(),
                reason: "the thread deleting a link died".into(),
            })?
            .map_err(|source| DatapathError::Netlink {
                op: format!("delete host interface {name}"),
                source,
            })
    }
}
