//! Events on pods whose ADD failed, so `kubectl describe pod` says why the
//! sandbox does not start ("pool web is full on ToR rack1 ..."), and the
//! controller's Events on workloads (their pool made, resized, refused,
//! deleted, and why). A runtime
//! retries a failed sandbox every few seconds for as long as the cause
//! lasts; like kubelet, moor aggregates: the first failure of a (pod,
//! reason) creates the Event, later ones only raise its count, written back
//! at most once per interval. A pod that fails 100 times costs a handful of
//! writes, and none of them is on the ADD's path: failures go through a
//! bounded channel to a task of their own (a flood beyond it is dropped,
//! not waited for).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

// Renamed: in ipamd a bare v1 module is moor's gRPC contract.
use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;

use corev1::{Event, EventSource, ObjectReference};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use metav1::{ObjectMeta, Time};
use moor_proto::cni_code;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::clock::Clock;
use crate::core::PodFacts;

/// Failures waiting to be written beyond this are dropped.
const BACKLOG: usize = 1024;
/// A series nobody added to for this long is forgotten (the next failure
/// starts a new Event).
const FORGET_AFTER_SECS: u64 = 600;
/// Who writes the node agent's events.
pub const COMPONENT: &str = "moor-ipamd";
/// Who writes the controller's events.
pub const CONTROLLER_COMPONENT: &str = "moor-controller";

/// The object an Event is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Involved {
    /// `v1`, `apps/v1`, `batch/v1`.
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// Empty when unknown.
    pub uid: String,
}

impl Involved {
    fn pod(pod: &PodFacts) -> Self {
        Self {
            api_version: "v1".into(),
            kind: "Pod".into(),
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
        }
    }
}

/// An Event's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Something was done as asked (a pool made, resized, deleted).
    Normal,
    /// Something could not be done.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// The Event reason of a failed ADD, by its CNI error code.
pub fn reason_for(code: u32) -> &'static str {
    match code {
        cni_code::POOL_FULL => "MoorPoolFull",
        cni_code::WRONG_TOR => "MoorWrongToR",
        cni_code::NO_POOL => "MoorNoPool",
        cni_code::TOR_UNDEFINED => "MoorToRUndefined",
        cni_code::DATAPATH => "MoorDatapathFailed",
        cni_code::OTHER_POOL => "MoorOtherPool",
        cni_code::ADDRESS_CONFLICT => "MoorAddressConflict",
        cni_code::POOL_NOT_ALLOWED => "MoorPoolNotAllowed",
        cni_code::TRY_AGAIN_LATER => "MoorTryAgain",
        cni_code::INVALID_CONFIG => "MoorInvalidRequest",
        _ => "MoorAddFailed",
    }
}

/// One occurrence to report.
struct Failure {
    involved: Involved,
    type_: EventType,
    reason: String,
    message: String,
}

/// One Event being aggregated.
struct Series {
    namespace: String,
    name: String,
    count: i32,
    written: i32,
    message: String,
    last_seen: u64,
    last_write: u64,
}

/// Writes Events from a task of its own; reporting never waits.
pub struct Events {
    tx: mpsc::Sender<Failure>,
}

impl Events {
    /// `component` signs the Events (`COMPONENT`, `CONTROLLER_COMPONENT`),
    /// `host` says which node or replica wrote them.
    pub fn start(
        client: Client,
        component: &'static str,
        host: String,
        clock: Arc<dyn Clock>,
        interval: Duration,
    ) -> Self {
        let (tx, rx) = mpsc::channel(BACKLOG);
        let writer = Writer {
            client,
            component,
            node: host,
            clock,
            interval: interval.as_secs().max(1),
            series: HashMap::new(),
            made: 0,
        };
        tokio::spawn(writer.run(rx, interval));
        Self { tx }
    }

    /// A failed ADD of `pod`.
    pub fn report(&self, pod: &PodFacts, reason: &str, message: &str) {
        self.report_on(&Involved::pod(pod), EventType::Warning, reason, message);
    }

    /// Something that happened to `obj`; repeats of one (object, reason)
    /// are counted on one Event.
    pub fn report_on(&self, obj: &Involved, type_: EventType, reason: &str, message: &str) {
        let f = Failure {
            involved: obj.clone(),
            type_,
            reason: reason.to_string(),
            message: message.to_string(),
        };
        if self.tx.try_send(f).is_err() {
            debug!(object = %obj.name, "event backlog full; an event goes unreported");
        }
    }
}

struct Writer {
    client: Client,
    component: &'static str,
    node: String,
    clock: Arc<dyn Clock>,
    interval: u64,
    /// By (pod namespace/name/uid, reason).
    series: HashMap<(String, String), Series>,
    /// Events made, for unique names.
    made: u64,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Failure>, every: Duration) {
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                f = rx.recv() => match f {
                    Some(f) => self.failed(f).await,
                    None => return,
                },
                _ = tick.tick() => self.flush().await,
            }
        }
    }

    fn time(&self, secs: u64) -> Option<Time> {
        k8s_openapi::jiff::Timestamp::from_second(secs as i64)
            .ok()
            .map(Time)
    }

    async fn failed(&mut self, f: Failure) {
        let now = self.clock.now_unix();
        // The object by name too: without K8S_POD_UID the uid is empty, and
        // pods without one must not share a series.
        let o = &f.involved;
        let object = format!("{}/{}/{}/{}", o.kind, o.namespace, o.name, o.uid);
        let key = (object, f.reason.clone());
        if let Some(s) = self.series.get_mut(&key) {
            s.count += 1;
            s.message = f.message;
            s.last_seen = now;
            if now.saturating_sub(s.last_write) >= self.interval {
                let key = key.clone();
                self.write_back(&key).await;
            }
            return;
        }
        self.made += 1;
        // As kubelet names them: the object's name, a dot, something unique,
        // also across processes: node agents and the controller post Events
        // about the same pod, each with a counter of its own (seen: the
        // controller's release Event refused, 409, because a node agent's
        // ADD failure had taken the name in the same second).
        let prefix: String = o.name.chars().take(200).collect();
        let name = format!("{prefix}.moor{:x}{:x}{:08x}", now, self.made, random_u32());
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(o.namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some(o.api_version.clone()),
                kind: Some(o.kind.clone()),
                namespace: Some(o.namespace.clone()),
                name: Some(o.name.clone()),
                uid: (!o.uid.is_empty()).then(|| o.uid.clone()),
                ..Default::default()
            },
            reason: Some(f.reason.clone()),
            message: Some(f.message.clone()),
            type_: Some(f.type_.as_str().into()),
            count: Some(1),
            first_timestamp: self.time(now),
            last_timestamp: self.time(now),
            source: Some(EventSource {
                component: Some(self.component.into()),
                host: Some(self.node.clone()),
            }),
            reporting_component: Some(self.component.into()),
            reporting_instance: Some(self.node.clone()),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &o.namespace);
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => {
                self.series.insert(
                    key,
                    Series {
                        namespace: f.involved.namespace,
                        name,
                        count: 1,
                        written: 1,
                        message: f.message,
                        last_seen: now,
                        last_write: now,
                    },
                );
            }
            // Not remembered: the next failure tries again.
            Err(e) => {
                warn!(object = %format!("{} {}/{}", o.kind, o.namespace, o.name), reason = %f.reason, error = %e, "could not post an Event")
            }
        }
    }

    /// Writes back the series' count and last message.
    async fn write_back(&mut self, key: &(String, String)) {
        let now = self.clock.now_unix();
        let Some(s) = self.series.get(key) else {
            return;
        };
        let patch = serde_json::json!({
            "count": s.count,
            "message": s.message,
            "lastTimestamp": self.time(s.last_seen),
        });
        let api: Api<Event> = Api::namespaced(self.client.clone(), &s.namespace);
        let name = s.name.clone();
        let count = s.count;
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                if let Some(s) = self.series.get_mut(key) {
                    s.written = count;
                    s.last_write = now;
                }
            }
            Err(e) => {
                warn!(event = %name, error = %e, "could not update an Event");
                // Gone (deleted, expired): the next failure starts anew.
                if matches!(&e, kube::Error::Api(s) if s.code == 404) {
                    self.series.remove(key);
                }
            }
        }
    }

    /// Writes back the counts whose interval has passed; forgets series
    /// that have been quiet for a while, written back or not: an API that
    /// keeps refusing the write-back (no `patch` right, a rejected body)
    /// must not make ipamd keep, and PATCH every interval, every pod that
    /// ever failed. The count is best effort; the next failure starts anew.
    async fn flush(&mut self) {
        let now = self.clock.now_unix();
        let due: Vec<(String, String)> = self
            .series
            .iter()
            .filter(|(_, s)| {
                s.count > s.written && now.saturating_sub(s.last_write) >= self.interval
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.write_back(&key).await;
        }
        self.series
            .retain(|_, s| now.saturating_sub(s.last_seen) < FORGET_AFTER_SECS);
    }
}

/// Random bits for Event names; the process id if the kernel has none.
fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    // SAFETY: the buffer is valid for writes of its length.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n == bytes.len() as isize {
        u32::from_ne_bytes(bytes)
    } else {
        std::process::id()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Mutex;

    use hyper::{Request, Response, StatusCode};
    use kube::client::Body;

    use super::*;
    use crate::clock::ManualClock;

    /// What the scripted API server was asked: (method, path, body).
    type Seen = Arc<Mutex<Vec<(String, String, serde_json::Value)>>>;

    /// A kube Client whose API server records every request and answers
    /// POST with 201 and PATCH with `patch_status`.
    fn scripted(patch_status: StatusCode) -> (Client, Seen) {
        let seen: Seen = Arc::default();
        let log = seen.clone();
        let svc = tower::service_fn(move |req: Request<Body>| {
            let log = log.clone();
            async move {
                let method = req.method().to_string();
                let path = req.uri().path().to_string();
                let body = req.into_body().collect_bytes().await.unwrap();
                let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                log.lock()
                    .unwrap()
                    .push((method.clone(), path, json.clone()));
                let (status, reply) = match method.as_str() {
                    "POST" => (StatusCode::CREATED, json),
                    _ if patch_status.is_success() => (patch_status, json),
                    _ => (
                        patch_status,
                        serde_json::json!({
                            "kind": "Status", "apiVersion": "v1", "status": "Failure",
                            "message": "scripted refusal", "reason": "Forbidden",
                            "code": patch_status.as_u16(),
                        }),
                    ),
                };
                let resp = Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap();
                Ok::<_, Infallible>(resp)
            }
        });
        (Client::new(svc, "default"), seen)
    }

    fn writer(client: Client, clock: Arc<ManualClock>) -> Writer {
        Writer {
            client,
            component: COMPONENT,
            node: "n1".into(),
            clock,
            interval: 30,
            series: HashMap::new(),
            made: 0,
        }
    }

    fn failure(pod: &str, uid: &str) -> Failure {
        let facts = PodFacts {
            namespace: "shop".into(),
            name: pod.into(),
            uid: uid.into(),
            ..Default::default()
        };
        Failure {
            involved: Involved::pod(&facts),
            type_: EventType::Warning,
            reason: "MoorPoolFull".into(),
            message: format!("pool web is full (pod shop/{pod})"),
        }
    }

    /// A runtime that passes no K8S_POD_UID (ipamd takes any incarnation
    /// then): each pod's failures are still its own Event, never counted
    /// on another pod's.
    #[tokio::test]
    async fn pods_without_a_uid_get_events_of_their_own() {
        let (client, seen) = scripted(StatusCode::OK);
        let mut w = writer(client, Arc::new(ManualClock::new(1_000)));
        w.failed(failure("web-0", "")).await;
        w.failed(failure("web-1", "")).await;
        let seen = seen.lock().unwrap();
        let posted: Vec<&str> = seen
            .iter()
            .filter(|(m, ..)| m == "POST")
            .map(|(.., b)| b["involvedObject"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(posted, ["web-0", "web-1"], "{seen:#?}");
    }

    /// An API that keeps refusing the count's write-back (RBAC without
    /// `patch`, say) must not make ipamd keep every pod that ever failed,
    /// nor PATCH each of them again every interval forever.
    #[tokio::test]
    async fn series_whose_write_back_keeps_failing_are_forgotten() {
        let (client, seen) = scripted(StatusCode::FORBIDDEN);
        let clock = Arc::new(ManualClock::new(1_000));
        let mut w = writer(client, clock.clone());
        w.failed(failure("web-0", "uid-0")).await;
        w.failed(failure("web-0", "uid-0")).await;
        assert_eq!(w.series.len(), 1);
        // Quiet for longer than FORGET_AFTER_SECS, flushed every interval.
        for _ in 0..(FORGET_AFTER_SECS / 30 + 2) {
            clock.advance(30);
            w.flush().await;
        }
        assert!(w.series.is_empty(), "the series is kept forever");
        let patches = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, ..)| m == "PATCH")
            .count();
        assert!(
            patches <= (FORGET_AFTER_SECS / 30) as usize + 1,
            "{patches} PATCHes"
        );
    }
}
