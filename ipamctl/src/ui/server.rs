//! The HTTP side of `ipamctl ui`: hyper 1 over TCP, read-only.
//!
//! Routes: `/` the page; `/api/overview`, `/api/pools?q=&page=&per_page=`,
//! `/api/pools/NAME/ips?page=&per_page=` its JSON. GET and HEAD only (405
//! otherwise: there is nothing to change here), 404 for any other path,
//! 502 with ipamd's message when ipamd cannot answer.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::ui::fetch::{FetchError, Ipamd};
use crate::ui::query::{self, page_of};
use crate::ui::views::{ErrorBody, IpsPage, PoolsPage};
use crate::validate;

/// Rows of IPs a page shows unless asked: a default pool (30) fits.
const IPS_PER_PAGE: usize = 100;

/// What every request is served from.
#[derive(Debug)]
pub struct State {
    pub ipamd: Ipamd,
    /// The page, with its refresh interval filled in.
    pub page: String,
    /// Serve requests whose Host is not a loopback name (`--allow-remote`).
    pub allow_remote: bool,
}

/// A request's path, routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Page,
    Overview,
    Pools,
    /// The pool's name as given in the path (checked by the handler).
    PoolIps(String),
    NotFound,
}

pub fn route(path: &str) -> Route {
    match path {
        "/" | "/index.html" => Route::Page,
        "/api/overview" => Route::Overview,
        "/api/pools" => Route::Pools,
        _ => match path
            .strip_prefix("/api/pools/")
            .and_then(|rest| rest.strip_suffix("/ips"))
        {
            Some(name) if !name.is_empty() && !name.contains('/') => {
                Route::PoolIps(name.to_string())
            }
            _ => Route::NotFound,
        },
    }
}

/// Is `host` (a Host header) this machine? Without `--allow-remote` only
/// those are served: a web page elsewhere that rebinds its own DNS name to
/// 127.0.0.1 would otherwise read the pods and IPs through the visitor's
/// browser. No Host at all is not a browser, and is served.
pub fn host_is_local(host: Option<&str>) -> bool {
    let Some(host) = host else {
        return true;
    };
    let name = match host.strip_prefix('[') {
        // [::1]:9472
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Accepts connections until the process ends. An accept error (out of file
/// descriptors) is reported and retried: one bad moment must not end the
/// page for everyone.
pub async fn serve(listener: TcpListener, state: Arc<State>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                eprintln!("ipamctl ui: accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(state.clone(), req));
            // A browser that goes away mid-request is not worth a word.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let head = req.method() == Method::HEAD;
    let reply = answer(&state, &req).await;
    Ok(reply.into_response(head))
}

/// A response before it is made into HTTP: HEAD gets the same, bodiless.
struct Reply {
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
    allow: bool,
}

impl Reply {
    fn json<T: Serialize>(status: StatusCode, value: &T) -> Reply {
        // Our views always serialize; a failure would be a bug worth a 500.
        match serde_json::to_vec(value) {
            Ok(body) => Reply {
                status,
                content_type: "application/json",
                body: body.into(),
                allow: false,
            },
            Err(e) => Reply::error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }

    fn error(status: StatusCode, message: &str) -> Reply {
        let body = serde_json::to_vec(&ErrorBody { error: message })
            .unwrap_or_else(|_| b"{\"error\":\"?\"}".to_vec());
        Reply {
            status,
            content_type: "application/json",
            body: body.into(),
            allow: false,
        }
    }

    fn fetch_error(e: &FetchError) -> Reply {
        let status = if e.is_not_found() {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::BAD_GATEWAY
        };
        Reply::error(status, &e.to_string())
    }

    fn into_response(self, head: bool) -> Response<Full<Bytes>> {
        let length = self.body.len();
        let body = if head { Bytes::new() } else { self.body };
        let mut r = Response::new(Full::new(body));
        *r.status_mut() = self.status;
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        // Live data: never from a cache.
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        // The page's own inline script and style, its own JSON, nothing
        // else: no CDN, no fonts, no frames.
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; \
                 frame-ancestors 'none'",
            ),
        );
        if self.allow {
            h.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        r
    }
}

async fn answer(state: &State, req: &Request<Incoming>) -> Reply {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = Reply::error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!(
                "{} is not allowed: the page is read-only (GET and HEAD); change pools with \
                 ipamctl's commands",
                req.method()
            ),
        );
        r.allow = true;
        return r;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("?"));
    if !state.allow_remote && !host_is_local(host) {
        return Reply::error(
            StatusCode::FORBIDDEN,
            &format!(
                "Host {:?} is not this machine: ipamctl ui serves loopback names only \
                 (127.0.0.1, localhost), so no other web site can read it through your \
                 browser; open it by one of those, or start ipamctl ui with --allow-remote",
                host.unwrap_or_default()
            ),
        );
    }
    let query = req.uri().query().unwrap_or("");
    match route(req.uri().path()) {
        Route::Page => Reply {
            status: StatusCode::OK,
            content_type: "text/html; charset=utf-8",
            body: Bytes::from(state.page.clone()),
            allow: false,
        },
        Route::Overview => match state.ipamd.overview().await {
            Ok(o) => Reply::json(StatusCode::OK, &o),
            Err(e) => Reply::fetch_error(&e),
        },
        Route::Pools => {
            let q = match query::parse(query, query::DEFAULT_PER_PAGE) {
                Ok(q) => q,
                Err(e) => return Reply::error(StatusCode::BAD_REQUEST, &e.to_string()),
            };
            let pools = match state.ipamd.pools().await {
                Ok(p) => p,
                Err(e) => return Reply::fetch_error(&e),
            };
            let total = pools.len();
            let matching = pools
                .into_iter()
                .filter(|p| query::matches(p, &q.q))
                .collect();
            let (page, pools) = page_of(matching, q.page, q.per_page);
            Reply::json(
                StatusCode::OK,
                &PoolsPage {
                    q: q.q,
                    total,
                    page,
                    pools,
                },
            )
        }
        Route::PoolIps(name) => {
            if let Err(e) = validate::pool_name("pool name in the path", &name) {
                return Reply::error(StatusCode::BAD_REQUEST, &e.to_string());
            }
            let q = match query::parse(query, IPS_PER_PAGE) {
                Ok(q) => q,
                Err(e) => return Reply::error(StatusCode::BAD_REQUEST, &e.to_string()),
            };
            match state.ipamd.ips(&name).await {
                Ok(ips) => {
                    let (page, ips) = page_of(ips, q.page, q.per_page);
                    Reply::json(
                        StatusCode::OK,
                        &IpsPage {
                            pool: name,
                            page,
                            ips,
                        },
                    )
                }
                Err(e) => Reply::fetch_error(&e),
            }
        }
        Route::NotFound => Reply::error(
            StatusCode::NOT_FOUND,
            &format!(
                "no such page: {}; the page is at /, its data under /api/overview, \
                 /api/pools and /api/pools/NAME/ips",
                req.uri().path()
            ),
        ),
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
