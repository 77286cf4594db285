//! WATCH: a chunked stream of newline-delimited events, fed from the
//! store's history as the API server's watch cache feeds it.

use super::handler::{render, status_response, Body};
use super::list::{invalid_options, parse_rv, selectors};
use super::request::{Query, Representation, Target};
use super::selector::Selectors;
use super::server::{lock, Shared};
use super::status::Status;
use super::store::{Change, Entry};
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::Response;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

/// Where a watch starts.
#[derive(Clone, Copy, Debug)]
enum Start {
    /// Synthetic ADDED events for what exists now, then changes.
    Current,
    /// Changes after this resourceVersion.
    After(u64),
}

struct Plan {
    target: Target,
    selectors: Selectors,
    start: Start,
    bookmarks: bool,
    /// `sendInitialEvents=true`: end the initial events with an annotated
    /// BOOKMARK.
    initial_events_end: bool,
    timeout: Option<Duration>,
    repr: Representation,
}

fn plan(
    shared: &Shared,
    target: &Target,
    query: &Query,
    repr: Representation,
) -> Result<Plan, Status> {
    let selectors = selectors(target, query)?;
    let bookmarks = query.flag("allowWatchBookmarks")?;
    let send_initial = match query.get("sendInitialEvents") {
        None => None,
        Some(_) => Some(query.flag("sendInitialEvents")?),
    };
    let rvm = query.get("resourceVersionMatch").filter(|v| !v.is_empty());
    let rv = parse_rv(query)?;
    match (send_initial, rvm) {
        (Some(_), m) if m != Some("NotOlderThan") => {
            return Err(invalid_options(
                "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ))
        }
        (Some(_), _) if !bookmarks => {
            return Err(invalid_options(
                "allowWatchBookmarks: Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true",
            ))
        }
        (None, Some(_)) => {
            return Err(invalid_options(
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            ))
        }
        _ => {}
    }
    let timeout = match query.get("timeoutSeconds").filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => Some(Duration::from_secs(v.parse().map_err(|_| {
            Status::bad_request(format!("invalid timeoutSeconds: {v}"))
        })?)),
    };
    let current = lock(&shared.store).rv();
    let start = match (send_initial, rv) {
        (Some(true), Some(n)) if n > current => {
            return Err(Status::too_large_resource_version(n, current))
        }
        (Some(true), _) => Start::Current,
        (Some(false), None | Some(0)) => Start::After(current),
        (None, None | Some(0)) => Start::Current,
        (_, Some(n)) => Start::After(n),
    };
    Ok(Plan {
        target: target.clone(),
        selectors,
        start,
        bookmarks,
        initial_events_end: send_initial == Some(true),
        timeout,
        repr,
    })
}

/// Answers a watch request: a 200 whose body the watch task feeds, or the
/// refusal.
pub(crate) fn start(
    shared: Arc<Shared>,
    target: &Target,
    query: &Query,
    repr: Representation,
) -> Response<Body> {
    let plan = match plan(&shared, target, query, repr) {
        Ok(p) => p,
        Err(status) => return status_response(&status),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    shared.open_watches.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(async move {
        run(&shared, plan, &tx).await;
        shared.open_watches.fetch_sub(1, Ordering::SeqCst);
    });
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(line)), rx))
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// One event line, `type` first as the Go server writes it.
fn line(kind: &str, object: Value) -> Bytes {
    let mut bytes = format!("{{\"type\":\"{kind}\",\"object\":").into_bytes();
    serde_json::to_writer(&mut bytes, &object).expect("serialize event");
    bytes.extend_from_slice(b"}\n");
    Bytes::from(bytes)
}

fn gone(asked: u64, floor: u64) -> Bytes {
    line(
        "ERROR",
        Status::expired(format!("too old resource version: {asked} ({floor})")).to_json(),
    )
}

impl Plan {
    fn in_scope(&self, object: &Value) -> bool {
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
        self.target
            .namespace
            .as_deref()
            .is_none_or(|ns| ns == namespace)
            && self.selectors.matches(object)
    }

    /// What the watch cache sends for one change, seen through this
    /// watch's namespace and selectors (cacher.go, convertToWatchEvent).
    fn event(&self, entry: &Entry) -> Option<Bytes> {
        let now = entry.change != Change::Deleted && self.in_scope(&entry.object);
        let before = entry.prev.as_ref().is_some_and(|p| self.in_scope(p));
        let (kind, object) = match (now, before) {
            (true, false) => ("ADDED", entry.object.clone()),
            (true, true) => ("MODIFIED", entry.object.clone()),
            (false, true) => {
                let mut last = entry.prev.clone().expect("a previous object");
                last["metadata"]["resourceVersion"] = entry.rv.to_string().into();
                ("DELETED", last)
            }
            (false, false) => return None,
        };
        Some(line(kind, render(&object, self.repr)))
    }

    fn bookmark(&self, rv: u64, initial_events_end: bool) -> Bytes {
        let (kind, api_version) = match self.repr {
            Representation::Full => (
                self.target.resource.kind(),
                self.target.resource.api_version(),
            ),
            Representation::Metadata => ("PartialObjectMetadata", "meta.k8s.io/v1"),
        };
        let mut object = json!({
            "kind": kind,
            "apiVersion": api_version,
            "metadata": {"resourceVersion": rv.to_string(), "creationTimestamp": null},
        });
        if initial_events_end {
            object["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line("BOOKMARK", object)
    }
}

async fn run(shared: &Shared, plan: Plan, tx: &mpsc::Sender<Bytes>) {
    let mut changed = shared.changed.subscribe();
    let mut ended = shared.end_watches.subscribe();
    let deadline = plan.timeout.map(|t| Instant::now() + t);
    changed.borrow_and_update();
    ended.borrow_and_update();

    let (first, cursor) = {
        let store = lock(&shared.store);
        let asked = match plan.start {
            Start::After(n) => n,
            Start::Current => store.rv(),
        };
        let forced = shared
            .expire_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if forced || asked < store.floor() {
            (vec![gone(asked, store.floor().max(asked + 1))], None)
        } else {
            let mut first = Vec::new();
            if let Start::Current = plan.start {
                for object in store.all(plan.target.resource) {
                    if plan.in_scope(&object) {
                        first.push(line("ADDED", render(&object, plan.repr)));
                    }
                }
                if plan.initial_events_end {
                    first.push(plan.bookmark(asked, true));
                }
            }
            (first, Some(asked))
        }
    };
    for l in first {
        if tx.send(l).await.is_err() {
            return;
        }
    }
    // After a 410 the stream ends: the client relists.
    let Some(mut cursor) = cursor else {
        return;
    };

    let mut tick = tokio::time::interval_at(
        Instant::now() + shared.bookmark_interval,
        shared.bookmark_interval,
    );
    loop {
        let batch = {
            changed.borrow_and_update();
            let store = lock(&shared.store);
            match store.changes_after(plan.target.resource, cursor) {
                None => Err(gone(cursor, store.floor())),
                Some(entries) => {
                    cursor = cursor.max(store.rv());
                    Ok(entries
                        .iter()
                        .filter_map(|e| plan.event(e))
                        .collect::<Vec<_>>())
                }
            }
        };
        match batch {
            Err(error) => {
                let _ = tx.send(error).await;
                return;
            }
            Ok(lines) => {
                for l in lines {
                    if tx.send(l).await.is_err() {
                        return;
                    }
                }
            }
        }
        let timeout = async {
            match deadline {
                Some(d) => sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tx.closed() => return,
            _ = ended.changed() => return,
            _ = timeout => return,
            r = changed.changed() => if r.is_err() { return },
            _ = tick.tick(), if plan.bookmarks => {
                if tx.send(plan.bookmark(cursor, false)).await.is_err() {
                    return;
                }
            }
        }
    }
}
