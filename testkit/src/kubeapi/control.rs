//! [`FakeApi`]: starting the server and the controls tests drive it with.

use super::objects;
use super::request::ApiRequest;
use super::resource::Resource;
use super::server::{lock, Listening, Shared};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Settings of a [`FakeApi`].
#[derive(Clone, Debug)]
pub struct FakeApiBuilder {
    bookmark_interval: Duration,
    history: usize,
}

impl Default for FakeApiBuilder {
    fn default() -> Self {
        FakeApiBuilder {
            // The real server sends a bookmark about once a minute.
            bookmark_interval: Duration::from_secs(60),
            history: 1000,
        }
    }
}

impl FakeApiBuilder {
    /// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK.
    pub fn bookmark_interval(mut self, interval: Duration) -> Self {
        self.bookmark_interval = interval;
        self
    }

    /// How many changes the history keeps; a watch or continue token older
    /// than that gets 410 Gone.
    pub fn history(mut self, changes: usize) -> Self {
        self.history = changes.max(1);
        self
    }

    /// Starts the server on a free 127.0.0.1 port, on its own thread and
    /// runtime (so sync and async tests alike can use it), seeded with the
    /// namespaces every cluster has.
    pub fn start(self) -> FakeApi {
        let shared = Arc::new(Shared::new(self.history, self.bookmark_interval));
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("fake-kube-api".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("fake API runtime");
                handle_tx
                    .send(runtime.handle().clone())
                    .expect("send handle");
                let _ = runtime.block_on(stop_rx);
            })
            .expect("spawn the fake API thread");
        let runtime = handle_rx.recv().expect("fake API runtime handle");
        let (listening, port) = Listening::open(&shared, &runtime, 0).expect("bind 127.0.0.1:0");
        let api = FakeApi {
            shared,
            port,
            runtime,
            listening: Mutex::new(Some(listening)),
            shutdown: Some(stop_tx),
            thread: Some(thread),
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            api.create(objects::namespace(ns));
        }
        api
    }
}

/// A running fake API server; stopped on drop. See the [module
/// docs](super) for what it serves.
pub struct FakeApi {
    shared: Arc<Shared>,
    port: u16,
    runtime: Handle,
    listening: Mutex<Option<Listening>>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeApi {
    /// Starts a server with the default settings.
    pub fn start() -> FakeApi {
        FakeApiBuilder::default().start()
    }

    /// Settings for [`FakeApiBuilder::start`].
    pub fn builder() -> FakeApiBuilder {
        FakeApiBuilder::default()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port, the same across [`FakeApi::restart`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A kubeconfig for this server: plain HTTP, no credentials, context
    /// `fake`, namespace `default`.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: fake\n  cluster:\n    server: {}\n\
             users:\n\
             - name: fake\n  user: {{}}\n\
             contexts:\n\
             - name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             current-context: fake\n",
            self.url()
        )
    }

    /// Writes [`FakeApi::kubeconfig`] to `dir/kubeconfig`; returns the path.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(&path, self.kubeconfig()).expect("write kubeconfig");
        path
    }

    /// Creates an object (pod, namespace, node, event, job, by its `kind`)
    /// as a controller would, keeping a UID it carries. Writes straight to
    /// the store: no admission (its namespace need not exist). Panics if
    /// the name is taken.
    pub fn create(&self, object: impl Into<Value>) -> Value {
        let object = object.into();
        let resource =
            Resource::of(&object).unwrap_or_else(|| panic!("create: not a served kind: {object}"));
        self.shared
            .write(|s| s.create(resource, object))
            .unwrap_or_else(|e| panic!("create: {}", e.message))
    }

    /// Changes an object in place, as a controller or the kubelet would
    /// (labels, `status`, `deletionTimestamp`...). Panics if it is missing.
    pub fn modify(
        &self,
        resource: Resource,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value),
    ) -> Value {
        self.shared
            .write(|s| {
                let mut object = s
                    .get(resource, namespace, name)
                    .cloned()
                    .ok_or_else(|| super::Status::not_found(resource, name))?;
                change(&mut object);
                s.replace(resource, object)
            })
            .unwrap_or_else(|e| panic!("modify: {}", e.message))
    }

    /// Deletes an object; returns its last state. Panics if it is missing.
    pub fn delete(&self, resource: Resource, namespace: &str, name: &str) -> Value {
        self.shared
            .write(|s| s.delete(resource, namespace, name))
            .unwrap_or_else(|e| panic!("delete: {}", e.message))
    }

    /// Deletes an object as `kubectl delete` would, with the garbage
    /// collector's treatment of its dependents (`Propagation::Orphan` is
    /// `--cascade=orphan`); returns its last state. Panics if it is missing.
    pub fn delete_propagating(
        &self,
        resource: Resource,
        namespace: &str,
        name: &str,
        policy: super::Propagation,
    ) -> Value {
        self.shared
            .write(|s| super::gc::delete(s, resource, namespace, name, policy))
            .unwrap_or_else(|e| panic!("delete: {}", e.message))
    }

    /// An object as stored now.
    pub fn get(&self, resource: Resource, namespace: &str, name: &str) -> Option<Value> {
        lock(&self.shared.store)
            .get(resource, namespace, name)
            .cloned()
    }

    /// Every object of `resource`, ordered by namespace and name.
    pub fn objects(&self, resource: Resource) -> Vec<Value> {
        lock(&self.shared.store).all(resource)
    }

    /// The newest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared.store).rv()
    }

    /// Every request served so far, oldest first.
    pub fn requests(&self) -> Vec<ApiRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Forgets the request log (watches already open are not logged again).
    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    /// How many watch streams are open.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` watches are open; false on timeout.
    pub fn wait_open_watches(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.open_watches() < n {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// The next `n` watch requests get an ERROR event with 410 Gone
    /// whatever resourceVersion they name.
    pub fn expire_next_watches(&self, n: usize) {
        self.shared.expire_next.fetch_add(n, Ordering::SeqCst);
    }

    /// Ends every open watch stream cleanly, as the server does when a
    /// watch's timeout passes; clients re-watch from their resourceVersion.
    pub fn end_watches(&self) {
        self.shared.end_watches.send_modify(|n| *n += 1);
    }

    /// Forgets the history: a watch or continue token naming an older
    /// resourceVersion now gets 410 Gone (the client must relist).
    pub fn compact(&self) {
        self.shared.write(|s| s.compact());
    }

    /// Resets every open connection (RST), leaving the listener up.
    pub fn reset_connections(&self) {
        self.shared.reset_connections();
    }

    /// An outage: connections are refused from now on and open ones reset.
    pub fn stop(&self) {
        if let Some(listening) = lock(&self.listening).take() {
            listening.close();
        }
        self.shared.reset_connections();
    }

    /// Listens again on the same port after [`FakeApi::stop`], with the
    /// same objects and history.
    pub fn restart(&self) {
        let mut listening = lock(&self.listening);
        if listening.is_some() {
            return;
        }
        // The stopped socket may hold the port until its accept task is
        // dropped, a moment later.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match Listening::open(&self.shared, &self.runtime, self.port) {
                Ok((l, _)) => {
                    *listening = Some(l);
                    return;
                }
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("restart on port {}: {e}", self.port),
            }
        }
    }

    /// Whether the server accepts connections (not stopped).
    pub fn is_up(&self) -> bool {
        lock(&self.listening).is_some()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop();
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    /// Reads from `stream` until `needle` shows up; returns all read.
    fn read_until(stream: &mut TcpStream, needle: &str) -> String {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains(needle) {
            let n = stream.read(&mut buf).expect("read within 5 s");
            assert!(
                n > 0,
                "closed before {needle:?}: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&seen).into_owned()
    }

    /// The wire format, from a plain sync test (no runtime of its own):
    /// a chunked watch of newline-delimited events, Status bodies, and
    /// stop/restart on the same port.
    #[test]
    fn chunked_watch_on_the_wire_and_restart_from_sync_code() {
        let api = FakeApi::start();
        let mut watch = TcpStream::connect(("127.0.0.1", api.port())).unwrap();
        watch
            .write_all(
                b"GET /api/v1/namespaces/default/pods?watch=1 HTTP/1.1\r\nHost: fake\r\n\r\n",
            )
            .unwrap();
        let head = read_until(&mut watch, "\r\n\r\n").to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        api.create(objects::bare_pod("default", "p").node("n1"));
        let body = read_until(&mut watch, "}}\n");
        assert!(body.contains(r#"{"type":"ADDED","object":{"#), "{body}");
        assert!(api
            .requests()
            .iter()
            .any(|r| r.verb == "watch" && r.resource == "pods"));

        let mut get = TcpStream::connect(("127.0.0.1", api.port())).unwrap();
        get.write_all(b"GET /api/v1/namespaces/default/services HTTP/1.1\r\nHost: fake\r\n\r\n")
            .unwrap();
        let answer = read_until(&mut get, "\"code\":404");
        assert!(answer.contains(r#""kind":"Status""#), "{answer}");

        api.stop();
        assert!(TcpStream::connect(("127.0.0.1", api.port())).is_err());
        let mut rest = Vec::new();
        let _ = watch.read_to_end(&mut rest);
        api.restart();
        assert!(TcpStream::connect(("127.0.0.1", api.port())).is_ok());
        assert_eq!(api.objects(Resource::Pods).len(), 1);
    }
}
