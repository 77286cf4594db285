//! The metrics listener (`--metrics-listen`): `GET /metrics` (OpenMetrics
//! text) and `GET /healthz`, nothing else. It is plain TCP, reachable from
//! the node's network, so no admin operation is ever served here: those
//! stay on the unix socket, whose peers are checked (`socket`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::debug;

use crate::metrics;
use crate::node::Node;

/// How long a client may take to send its request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Connections served at once; more wait in the kernel's backlog. A
/// scraper needs one; the rest would only take CPU from the CNI requests.
const MAX_CONNECTIONS: usize = 8;

/// Where `--metrics-listen` points: `off`, or an address and port. An IPv6
/// address may come bare (`fd00::1:9471`, what `$(NODE_IP):9471` makes of a
/// node's IPv6 address) or in brackets.
pub fn parse_listen(flag: &str) -> Result<Option<SocketAddr>, String> {
    if flag == "off" {
        return Ok(None);
    }
    let bare_v6 = || {
        let (ip, port) = flag.rsplit_once(':')?;
        Some(SocketAddr::new(ip.parse().ok()?, port.parse().ok()?))
    };
    match flag.parse() {
        Ok(a) => Ok(Some(a)),
        Err(_) => bare_v6().map(Some).ok_or_else(|| {
            format!(
                "--metrics-listen {flag:?} is not ADDRESS:PORT: give e.g. 127.0.0.1:9471 (this node only), 0.0.0.0:9471 (every address), or off"
            )
        }),
    }
}

/// What a scrape reports: counters only until the node is up (a scrape
/// during start-up gets an answer), then the node's gauges too.
pub type NodeCell = Arc<std::sync::OnceLock<Arc<Node>>>;

/// Serves the metrics (with those of the node in `node`, once set) on
/// `listener` until `shutdown` completes.
pub async fn serve(node: NodeCell, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    debug!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let node = node.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| handle(node.get().cloned(), req));
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                debug!(%peer, error = %e, "metrics connection ended");
            }
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn handle(
    node: Option<Arc<Node>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = "text/plain; charset=utf-8";
    let path = req.uri().path();
    if path != "/metrics" && path != "/healthz" {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            text,
            "not found: this port serves /metrics and /healthz only\n".into(),
        ));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            text,
            "only GET and HEAD\n".into(),
        ));
    }
    if path == "/healthz" {
        return Ok(reply(StatusCode::OK, text, "ok\n".into()));
    }
    let body = metrics::global()
        .scrape(async {
            match &node {
                Some(n) => n.metrics_snapshot().await,
                None => metrics::Snapshot::default(),
            }
        })
        .await;
    Ok(reply(StatusCode::OK, OPENMETRICS, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_take_v4_v6_bare_or_bracketed_and_off() {
        let a = |s: &str| parse_listen(s).unwrap().map(|a| a.to_string());
        assert_eq!(a("off"), None);
        assert_eq!(a("127.0.0.1:9471").as_deref(), Some("127.0.0.1:9471"));
        assert_eq!(a("[fd00::5]:9471").as_deref(), Some("[fd00::5]:9471"));
        // What `$(NODE_IP):9471` makes of an IPv6 node address.
        assert_eq!(a("fd00::5:9471").as_deref(), Some("[fd00::5]:9471"));
        for bad in ["localhost:9471", "9471", "127.0.0.1", "", "on"] {
            let e = parse_listen(bad).unwrap_err();
            assert!(
                e.contains("--metrics-listen") && e.contains("off"),
                "{bad}: {e}"
            );
        }
    }
}
