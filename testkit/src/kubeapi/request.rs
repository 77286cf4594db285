//! What a request asks for: the resource and object its path names, the
//! verb the API server's authorizer would see, its query parameters and
//! the representation it accepts.

use super::resource::{Resource, ALL};
use super::status::Status;
use std::collections::BTreeMap;

/// One request as the fake saw it, for tests to assert on (what a node
/// agent costs the API server; what its RBAC role must grant).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiRequest {
    /// `GET`, `POST`...
    pub method: String,
    /// The URL path.
    pub path: String,
    /// The raw query string ("" when none).
    pub query: String,
    /// The authorizer's verb: `get`, `list`, `watch`, `create`, `update`,
    /// `patch`, `delete`, `deletecollection`; "" for a path that names no
    /// resource.
    pub verb: String,
    /// The API group ("" for core).
    pub api_group: String,
    /// The resource's plural name ("" for a non-resource path).
    pub resource: String,
    /// The namespace in the path, if any.
    pub namespace: Option<String>,
    /// The object name in the path, if any.
    pub name: Option<String>,
    /// The subresource (`eviction`), "" for none.
    pub subresource: String,
}

impl ApiRequest {
    /// Whether this request opened a watch.
    pub fn is_watch(&self) -> bool {
        self.verb == "watch"
    }
}

/// The resource, namespace and name a path addresses.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) resource: Resource,
    pub(crate) namespace: Option<String>,
    pub(crate) name: Option<String>,
    /// The one subresource served: `eviction` of a pod.
    pub(crate) subresource: Option<&'static str>,
}

/// Resolves a path. `None`: the fake serves nothing there (404).
pub(crate) fn route(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (prefix_len, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => (2, rest),
        ["apis", _, "v1", rest @ ..] => (3, rest),
        _ => return None,
    };
    let prefix = format!("/{}", segments[..prefix_len].join("/"));
    let find = |plural: &str| {
        ALL.into_iter()
            .find(|r| r.prefix() == prefix && r.plural() == plural)
    };
    let target = |resource: Resource, namespace: Option<&str>, name: Option<&str>| Target {
        resource,
        namespace: namespace.map(str::to_string),
        name: name.map(str::to_string),
        subresource: None,
    };
    match rest {
        ["namespaces", ns, plural] => find(plural)
            .filter(|r| r.namespaced())
            .map(|r| target(r, Some(ns), None)),
        ["namespaces", ns, plural, name] => find(plural)
            .filter(|r| r.namespaced())
            .map(|r| target(r, Some(ns), Some(name))),
        [plural] => find(plural).map(|r| target(r, None, None)),
        [plural, name] => find(plural)
            .filter(|r| !r.namespaced())
            .map(|r| target(r, None, Some(name))),
        ["namespaces", ns, "pods", name, "eviction"] if prefix == "/api/v1" => {
            let mut t = target(Resource::Pods, Some(ns), Some(name));
            t.subresource = Some("eviction");
            Some(t)
        }
        // Other subresources (status, log, binding...) are not served.
        _ => None,
    }
}

/// The authorizer's verb for `method` on `target` (k8s.io/apiserver
/// RequestInfoFactory).
pub(crate) fn verb(method: &str, target: &Target, watch: bool) -> &'static str {
    match (method, target.name.is_some()) {
        ("GET" | "HEAD", true) => "get",
        ("GET" | "HEAD", false) if watch => "watch",
        ("GET" | "HEAD", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "",
    }
}

/// Query parameters, decoded. Repeated keys keep the first value.
#[derive(Clone, Debug, Default)]
pub(crate) struct Query(BTreeMap<String, String>);

impl Query {
    pub(crate) fn parse(query: &str) -> Query {
        let mut map = BTreeMap::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            map.entry(decode(k)).or_insert_with(|| decode(v));
        }
        Query(map)
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// A boolean parameter as the server parses it (`1`, `true`).
    pub(crate) fn flag(&self, key: &str) -> Result<bool, Status> {
        match self.get(key) {
            None | Some("") | Some("0") | Some("false") | Some("False") => Ok(false),
            Some("1") | Some("true") | Some("True") => Ok(true),
            Some(other) => Err(Status::bad_request(format!(
                "strconv.ParseBool: parsing \"{other}\": invalid syntax"
            ))),
        }
    }
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The representation a request accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Representation {
    /// The object as stored.
    Full,
    /// `PartialObjectMetadata(List)` of meta.k8s.io/v1: what
    /// kube's `metadata_watcher` and `get_metadata` ask for.
    Metadata,
}

/// Picks the first media range of `accept` the fake can make; `list`
/// selects which `as=` the metadata form must name.
pub(crate) fn negotiate(accept: Option<&str>, list: bool) -> Result<Representation, Status> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Ok(Representation::Full);
    };
    let wanted_as = if list {
        "PartialObjectMetadataList"
    } else {
        "PartialObjectMetadata"
    };
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        if !matches!(media, "application/json" | "application/*" | "*/*") {
            continue;
        }
        let params: BTreeMap<&str, &str> = parts.filter_map(|p| p.split_once('=')).collect();
        match params.get("as") {
            None => return Ok(Representation::Full),
            Some(a)
                if *a == wanted_as
                    && params.get("g") == Some(&"meta.k8s.io")
                    && params.get("v") == Some(&"v1") =>
            {
                return Ok(Representation::Metadata)
            }
            _ => continue,
        }
    }
    Err(Status::not_acceptable())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_verbs() {
        let t = route("/api/v1/namespaces/ns/pods").unwrap();
        assert_eq!(
            (t.resource, t.namespace.as_deref(), t.name.as_deref()),
            (Resource::Pods, Some("ns"), None)
        );
        assert_eq!(verb("GET", &t, true), "watch");
        assert_eq!(verb("GET", &t, false), "list");
        let t = route("/api/v1/namespaces/ns").unwrap();
        assert_eq!(
            (t.resource, t.name.as_deref()),
            (Resource::Namespaces, Some("ns"))
        );
        let t = route("/apis/batch/v1/namespaces/ns/jobs/j").unwrap();
        assert_eq!(
            (t.resource, verb("GET", &t, false)),
            (Resource::Jobs, "get")
        );
        let t = route("/apis/events.k8s.io/v1/namespaces/ns/events").unwrap();
        assert_eq!(
            (t.resource, verb("POST", &t, false)),
            (Resource::EventsV1, "create")
        );
        assert!(route("/api/v1/pods/x").is_none(), "pods are namespaced");
        assert!(route("/api/v1/nodes/n1/status").is_none());
        assert!(route("/api/v1/namespaces/ns/services").is_none());
        let t = route("/apis/apps/v1/namespaces/ns/statefulsets/db").unwrap();
        assert_eq!(
            (t.resource, verb("GET", &t, false)),
            (Resource::StatefulSets, "get")
        );
        let t = route("/apis/coordination.k8s.io/v1/namespaces/moor/leases/c").unwrap();
        assert_eq!(
            (t.resource, verb("PUT", &t, false)),
            (Resource::Leases, "update")
        );
        let t = route("/apis/apps/v1/namespaces/ns/daemonsets").unwrap();
        assert_eq!(
            (t.resource, verb("GET", &t, false)),
            (Resource::DaemonSets, "list")
        );
        let t = route("/api/v1/namespaces/ns/pods/db-0/eviction").unwrap();
        assert_eq!(
            (t.resource, t.subresource, verb("POST", &t, false)),
            (Resource::Pods, Some("eviction"), "create")
        );
        assert!(route("/api/v1/namespaces/ns/pods/db-0/status").is_none());
        assert!(route("/api/v1/namespaces/ns/configmaps/db/eviction").is_none());
    }

    #[test]
    fn queries_and_media() {
        let q = Query::parse("&fieldSelector=spec.nodeName%3Dn1&watch=1&labelSelector=a+in+(b)");
        assert_eq!(q.get("fieldSelector"), Some("spec.nodeName=n1"));
        assert_eq!(q.get("labelSelector"), Some("a in (b)"));
        assert!(q.flag("watch").unwrap());
        assert!(Query::parse("watch=yes").flag("watch").is_err());
        let meta = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";
        assert_eq!(
            negotiate(Some(meta), true).unwrap(),
            Representation::Metadata
        );
        assert_eq!(negotiate(None, true).unwrap(), Representation::Full);
        assert_eq!(
            negotiate(Some("application/vnd.kubernetes.protobuf"), false)
                .err()
                .map(|s| s.code),
            Some(406)
        );
    }
}
