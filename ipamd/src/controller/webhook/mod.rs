//! The admission webhook (`--webhook-listen`): a mutating webhook for Pod
//! CREATE that keeps a pod on the ToRs its IP can come from. The pod's
//! pool is decided as its ADD will decide it (`PoolChoice::from_api`,
//! `Ipam::resolve_pool`); the ToRs come from the store (`Ipam::tors_for`,
//! `core::schedule`); the patch is `patch.rs`'s. One store read per review
//! (a few ms on etcd) and the namespaces cache: no Kubernetes request on
//! the review path.
//!
//! Every controller replica serves it, leader or not: it only reads. The
//! shipped configuration has failurePolicy Ignore, so an unreachable
//! webhook costs pods their ToR affinity, never their creation.
//!
//! HTTPS (`tls.rs`) with hyper's HTTP/1.1 server: POST /mutate-pods, JSON
//! in and out. A body that is not a review is a 400 with the reason, any
//! other path a 404, any other method a 405; nothing a client sends panics.

mod flags;
mod patch;
mod review;
mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use k8s_openapi::api::core::v1 as corev1;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::core::PodRef;
use crate::error::cni_code;
use crate::ipam::{Ipam, PoolChoice};
use crate::kubernetes::{pod_facts, Namespaces};

pub use flags::WebhookFlags;
pub use patch::{Patch, Spread, HOSTNAME_LABEL, SPREAD_ANNOTATION};
pub use review::{BadReview, API_VERSION};
pub use tls::acceptor;

/// The one path served.
pub const PATH: &str = "/mutate-pods";
/// Largest review body read: the API server caps a request at 3 MiB.
const MAX_BODY: usize = 3 << 20;
/// A client that has not finished its TLS handshake or its request
/// headers by then is dropped.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Longest wait for the namespaces' first list before serving.
const NAMESPACES_WAIT: Duration = Duration::from_secs(5);

/// A namespace's `moor.io/pool` annotation, by namespace name.
pub type NamespacePool = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// What a review is decided with.
pub struct Admission {
    pub ipam: Arc<Ipam>,
    /// A namespace's `moor.io/pool` annotation (the namespaces cache).
    pub namespace_pool: NamespacePool,
    /// The node label that names a node's ToR (`--tor-label`).
    pub tor_label: String,
    /// The conflist's pool, the last default (`--webhook-default-pool`).
    pub default_pool: Option<String>,
}

impl Admission {
    /// The response body to one review body, or why it is not a review.
    pub async fn review(&self, body: &[u8]) -> Result<Vec<u8>, BadReview> {
        let started = std::time::Instant::now();
        let r = match review::parse(body) {
            Ok(r) => r,
            Err(e) => {
                crate::metrics::global().webhook_review("bad_request", started.elapsed());
                return Err(e);
            }
        };
        let patch = match &r.pod {
            Some(pod) => self.decide(&r.namespace, pod).await,
            None => Patch::default(),
        };
        let outcome = if patch.ops.is_empty() {
            "unchanged"
        } else {
            "patched"
        };
        crate::metrics::global().webhook_review(outcome, started.elapsed());
        Ok(review::answer(&r.uid, &patch.ops, &patch.warnings))
    }

    /// The patch for a pod being created in `namespace`.
    async fn decide(&self, namespace: &str, pod: &corev1::Pod) -> Patch {
        let mut facts = pod_facts(&pod.metadata);
        facts.namespace = namespace.to_string();
        let who = match facts.name.as_str() {
            "" => format!(
                "{namespace}/{}*",
                pod.metadata.generate_name.as_deref().unwrap_or("")
            ),
            name => format!("{namespace}/{name}"),
        };
        // A DaemonSet's pod is made for one node (a matchFields term on its
        // name) and a pod with spec.nodeName is already placed: a ToR
        // affinity cannot move either, only make it unschedulable (or
        // rejected by its kubelet) when that node's ToR has no free IP,
        // where its ADD would retry until one frees.
        let daemon = facts
            .controller
            .as_ref()
            .is_some_and(|o| o.is("apps", "DaemonSet"));
        let placed = pod.spec.as_ref().is_some_and(|s| s.node_name.is_some());
        if daemon || placed {
            debug!(pod = %who, "a DaemonSet's or already placed pod: unchanged");
            return Patch::default();
        }
        // A Job's pods draw from the pool of the CronJob above the Job,
        // which only a request for the Job would tell: without their own
        // annotation they pass unchanged rather than steered by a guess.
        if facts.job().is_some() && facts.pool_annotation().is_none() {
            debug!(pod = %who, "a Job's pod without moor.io/pool: unchanged");
            return Patch::default();
        }
        // Stickiness (the last argument's use) does not matter here.
        let (mut choice, _) = PoolChoice::from_api(
            &facts,
            (self.namespace_pool)(namespace),
            self.default_pool.clone(),
            &[],
        );
        // A pool its workload declares but the controller has not made yet
        // is no pool here (an ADD would retry): the pod passes unchanged.
        choice.declarable = false;
        let named = choice.pod_annotation.is_some()
            || choice.namespace_annotation.is_some()
            || choice.default.is_some();
        let pod_ref = PodRef {
            namespace: namespace.to_string(),
            name: facts.name.clone(),
            uid: String::new(),
        };
        match self.ipam.tors_for(&pod_ref, &choice).await {
            Ok((pool, Some(tors))) => {
                debug!(pod = %who, %pool, tors = ?tors.tors, "ToR affinity");
                patch::patch(pod, &tors, &self.tor_label)
            }
            Ok((pool, None)) => {
                debug!(pod = %who, %pool, "the pool is on no known ToR: unchanged");
                Patch::default()
            }
            // Nothing names a pool: not a moor pod.
            Err(e) if e.cni_code() == cni_code::NO_POOL && !named => Patch::default(),
            Err(e) => {
                warn!(pod = %who, error = %e, "no ToR affinity for this pod");
                Patch {
                    ops: Vec::new(),
                    warnings: vec![format!("moor: no ToR affinity added: {e}")],
                }
            }
        }
    }
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(msg.into() + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn handle(
    admission: Arc<Admission>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != PATH {
        let msg = format!("no such path: moor's webhook serves POST {PATH}");
        return Ok(text(StatusCode::NOT_FOUND, msg));
    }
    if req.method() != Method::POST {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, format!("{PATH} takes POST"));
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("POST"),
        );
        return Ok(r);
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            let msg = format!("the review is larger than {MAX_BODY} bytes");
            return Ok(text(StatusCode::PAYLOAD_TOO_LARGE, msg));
        }
        Err(e) => {
            return Ok(text(
                StatusCode::BAD_REQUEST,
                format!("reading the body: {e}"),
            ))
        }
    };
    Ok(match admission.review(&body).await {
        Ok(json) => {
            let mut r = Response::new(Full::new(Bytes::from(json)));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => {
            debug!(error = %e, "a body that is not an AdmissionReview");
            text(StatusCode::BAD_REQUEST, e.0)
        }
    })
}

/// The webhook's flags.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub tor_label: String,
    pub default_pool: Option<String>,
}

/// A webhook with its certificate loaded and its port bound, not serving
/// yet: what can fail at start has.
pub struct Bound {
    listener: TcpListener,
    tls: TlsAcceptor,
    cfg: WebhookConfig,
}

impl WebhookConfig {
    /// Loads the certificate and binds the port. Errors name the flag.
    pub async fn bind(self) -> Result<Bound, String> {
        let tls = acceptor(&self.cert, &self.key)?;
        let listener = TcpListener::bind(self.listen)
            .await
            .map_err(|e| format!("--webhook-listen {}: {e}", self.listen))?;
        Ok(Bound {
            listener,
            tls,
            cfg: self,
        })
    }
}

impl Bound {
    /// Serves until `stop` completes, with a namespaces cache of its own.
    pub fn start(
        self,
        client: kube::Client,
        ipam: Arc<Ipam>,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let namespaces = Arc::new(Namespaces::start(client));
        let cache = namespaces.clone();
        let admission = Arc::new(Admission {
            ipam,
            namespace_pool: Box::new(move |ns| cache.pool(ns)),
            tor_label: self.cfg.tor_label,
            default_pool: self.cfg.default_pool,
        });
        tokio::spawn(async move {
            // Answers before the first list would miss namespaces' pools.
            // Meanwhile connections wait in the backlog; past its timeout
            // the API server goes on without us (failurePolicy Ignore).
            let listed = namespaces.wait_until_ready();
            if tokio::time::timeout(NAMESPACES_WAIT, listed).await.is_err() {
                warn!("the namespaces are not listed yet; serving meanwhile (a namespace's moor.io/pool counts once they are)");
            }
            info!(listen = %self.cfg.listen, path = PATH, "admission webhook serving");
            serve(self.listener, self.tls, admission, stop).await
        })
    }
}

/// Serves `listener` until `stop` completes: each connection on a task of
/// its own, TLS first.
pub async fn serve(
    listener: TcpListener,
    tls: TlsAcceptor,
    admission: Arc<Admission>,
    stop: impl Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    warn!(error = %e, "the webhook could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (tls, admission) = (tls.clone(), admission.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE, tls.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return debug!(%peer, "TLS handshake timed out"),
            };
            let service = hyper::service::service_fn(move |req| handle(admission.clone(), req));
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HANDSHAKE)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                debug!(%peer, error = %e, "webhook connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests;
