//! The listener and its connections: accepting, serving HTTP/1.1 with
//! hyper, and the two halves of an outage (refuse new connections, reset
//! open ones).

use super::handler;
use super::request::ApiRequest;
use super::store::Store;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// What the server and its test controls share.
pub(crate) struct Shared {
    pub(crate) store: Mutex<Store>,
    /// The newest resourceVersion; watches wait on it.
    pub(crate) changed: watch::Sender<u64>,
    /// Bumped to end every open watch.
    pub(crate) end_watches: watch::Sender<u64>,
    pub(crate) requests: Mutex<Vec<ApiRequest>>,
    pub(crate) bookmark_interval: Duration,
    /// How many of the next watches get a 410 whatever they ask.
    pub(crate) expire_next: AtomicUsize,
    pub(crate) open_watches: AtomicUsize,
    connections: Mutex<HashMap<u64, Connection>>,
    next_connection: AtomicU64,
}

struct Connection {
    task: AbortHandle,
    /// A second descriptor of the socket, to set SO_LINGER on.
    socket: std::net::TcpStream,
}

/// Locks, ignoring poison: a test that panicked holding a lock must not
/// turn every later request into a second panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn new(history: usize, bookmark_interval: Duration) -> Shared {
        Shared {
            store: Mutex::new(Store::new(history)),
            changed: watch::Sender::new(0),
            end_watches: watch::Sender::new(0),
            requests: Mutex::new(Vec::new()),
            bookmark_interval,
            expire_next: AtomicUsize::new(0),
            open_watches: AtomicUsize::new(0),
            connections: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(0),
        }
    }

    /// Runs a write on the store and wakes the watches.
    pub(crate) fn write<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let mut store = lock(&self.store);
        let out = f(&mut store);
        let rv = store.rv();
        drop(store);
        self.changed.send_replace(rv);
        out
    }

    /// Resets every open connection: SO_LINGER 0, then the last descriptor
    /// closes, so the kernel sends RST and the client sees "connection
    /// reset", not a clean end of stream.
    pub(crate) fn reset_connections(&self) {
        let connections: Vec<Connection> =
            lock(&self.connections).drain().map(|(_, c)| c).collect();
        for c in connections {
            let _ = nix::sys::socket::setsockopt(
                &c.socket.as_fd(),
                nix::sys::socket::sockopt::Linger,
                &libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                },
            );
            c.task.abort();
        }
    }
}

/// An open listening socket.
pub(crate) struct Listening {
    accept: AbortHandle,
    socket: std::net::TcpListener,
}

impl Listening {
    /// Binds 127.0.0.1:`port` (0: any) and accepts on `runtime`.
    pub(crate) fn open(
        shared: &Arc<Shared>,
        runtime: &Handle,
        port: u16,
    ) -> std::io::Result<(Listening, u16)> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        listener.set_nonblocking(true)?;
        let socket = listener.try_clone()?;
        let port = listener.local_addr()?.port();
        let shared = shared.clone();
        let accept = runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).expect("register the listener");
            accept_loop(shared, listener).await;
        });
        Ok((
            Listening {
                accept: accept.abort_handle(),
                socket,
            },
            port,
        ))
    }

    /// Stops listening at once: shutdown(2) on a listening socket moves it
    /// to CLOSE, so the next connect is refused even before the accept task
    /// is dropped.
    pub(crate) fn close(self) {
        let _ = nix::sys::socket::shutdown(
            std::os::fd::AsRawFd::as_raw_fd(&self.socket),
            nix::sys::socket::Shutdown::Both,
        );
        self.accept.abort();
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Shut down by `Listening::close`.
            return;
        };
        let Ok((stream, socket)) = split_socket(stream) else {
            continue;
        };
        let id = shared
            .next_connection
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let task_shared = shared.clone();
        let task = tokio::spawn(async move {
            serve(task_shared.clone(), stream).await;
            lock(&task_shared.connections).remove(&id);
        });
        // The runtime is single-threaded: the task cannot run (and remove
        // its entry) before this insert.
        lock(&shared.connections).insert(
            id,
            Connection {
                task: task.abort_handle(),
                socket,
            },
        );
    }
}

fn split_socket(stream: TcpStream) -> std::io::Result<(TcpStream, std::net::TcpStream)> {
    let std = stream.into_std()?;
    let socket = std.try_clone()?;
    Ok((TcpStream::from_std(std)?, socket))
}

async fn serve(shared: Arc<Shared>, stream: TcpStream) {
    let service = service_fn(move |req| handler::handle(shared.clone(), req));
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}
