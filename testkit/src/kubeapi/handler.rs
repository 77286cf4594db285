//! One HTTP request: log it, route it, answer it.

use super::eviction;
use super::list;
use super::request::{negotiate, route, verb, ApiRequest, Query, Representation, Target};
use super::server::{lock, Shared};
use super::status::Status;
use super::watch;
use super::write;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;

pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// A JSON response.
pub(crate) fn json_response(code: u16, body: &Value) -> Response<Body> {
    let mut bytes = serde_json::to_vec(body).expect("serialize JSON");
    bytes.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(bytes)).boxed());
    *response.status_mut() = StatusCode::from_u16(code).expect("valid status code");
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub(crate) fn status_response(status: &Status) -> Response<Body> {
    json_response(status.code, &status.to_json())
}

pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let raw_query = req.uri().query().unwrap_or_default().to_string();
    let query = Query::parse(&raw_query);
    let target = route(&path);
    let watching = query.flag("watch");
    let mut record = ApiRequest {
        method: method.clone(),
        path: path.clone(),
        query: raw_query,
        verb: String::new(),
        api_group: String::new(),
        resource: String::new(),
        namespace: None,
        name: None,
        subresource: String::new(),
    };
    if let Some(t) = &target {
        record.verb = verb(&method, t, *watching.as_ref().unwrap_or(&false)).to_string();
        record.api_group = t.resource.group().to_string();
        record.resource = t.resource.plural().to_string();
        record.namespace = t.namespace.clone();
        record.name = t.name.clone();
        record.subresource = t.subresource.unwrap_or_default().to_string();
    }
    lock(&shared.requests).push(record);

    if path == "/version" {
        return Ok(match method.as_str() {
            "GET" => json_response(200, &version()),
            _ => status_response(&Status::method_not_allowed()),
        });
    }
    let Some(target) = target else {
        return Ok(status_response(&Status::no_such_path()));
    };
    let watching = match watching {
        Ok(w) => w,
        Err(status) => return Ok(status_response(&status)),
    };
    let accept = req
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let list_like = target.name.is_none() && method == "GET" && !watching;
    let repr = match negotiate(accept.as_deref(), list_like) {
        Ok(r) => r,
        Err(status) => return Ok(status_response(&status)),
    };
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(status_response(&Status::bad_request(
                "unreadable request body",
            )))
        }
    };
    if target.subresource.is_some() {
        return Ok(match method.as_str() {
            "POST" => match eviction::evict(&shared, &target, &content_type, &body) {
                Ok((code, object)) => json_response(code, &object),
                Err(status) => status_response(&status),
            },
            _ => status_response(&Status::method_not_allowed()),
        });
    }
    let answer = match (method.as_str(), target.name.is_some()) {
        ("GET", true) => get(&shared, &target, repr),
        ("GET", false) if watching => return Ok(watch::start(shared, &target, &query, repr)),
        ("GET", false) => list::list(&shared, &target, &query, repr).map(|v| (200, v)),
        ("POST", false) => write::create(&shared, &target, &query, &content_type, &body),
        ("PUT", true) => write::update(&shared, &target, &query, &content_type, &body),
        ("PATCH", true) => write::patch(&shared, &target, &query, &content_type, &body),
        ("DELETE", true) => write::delete(&shared, &target, &query, &body),
        _ => Err(Status::method_not_allowed()),
    };
    Ok(match answer {
        Ok((code, object)) => json_response(code, &object),
        Err(status) => status_response(&status),
    })
}

fn get(shared: &Shared, target: &Target, repr: Representation) -> Result<(u16, Value), Status> {
    let name = target.name.as_deref().unwrap_or_default();
    let store = lock(&shared.store);
    let object = store
        .get(
            target.resource,
            target.namespace.as_deref().unwrap_or_default(),
            name,
        )
        .ok_or_else(|| Status::not_found(target.resource, name))?;
    Ok((200, render(object, repr)))
}

/// One object as the representation asks: whole, or
/// `PartialObjectMetadata`.
pub(crate) fn render(object: &Value, repr: Representation) -> Value {
    match repr {
        Representation::Full => object.clone(),
        Representation::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": object["metadata"],
        }),
    }
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "35",
        "gitVersion": "v1.35.0-moor-fake",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-12-17T00:00:00Z",
        "goVersion": "go1.25.5",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}
