//! AdmissionReview `admission.k8s.io/v1`, in and out, as the API server
//! sends and reads it. Our own serde types rather than kube's admission
//! module: its response serializes the patch as an array of numbers
//! (kube-rs issue 1781) where the API server reads a base64 string (a Go
//! `[]byte`).

use base64::Engine;
use k8s_openapi::api::core::v1 as corev1;
use serde::Deserialize;
use serde_json::{json, Value};

pub const API_VERSION: &str = "admission.k8s.io/v1";
const KIND: &str = "AdmissionReview";

/// A review that cannot be answered: the HTTP answer is 400 with this
/// message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadReview(pub String);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    /// Read once the version is known to be v1.
    request: Option<Value>,
}

#[derive(Deserialize)]
struct Gvk {
    #[serde(default)]
    group: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    kind: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestIn {
    #[serde(default)]
    uid: String,
    kind: Gvk,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    operation: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    object: Option<Value>,
}

/// One review to answer.
#[derive(Debug)]
pub struct Review {
    /// `request.uid`, echoed in the response.
    pub uid: String,
    /// The pod's namespace (`request.namespace`: a pod created in a
    /// namespace often has none in its own metadata yet).
    pub namespace: String,
    /// The pod, for a CREATE of a v1 Pod; None for anything else, which
    /// is allowed unchanged (the webhook is registered for pod CREATE only,
    /// so that is a configuration that asks for more).
    pub pod: Option<corev1::Pod>,
}

fn bad(msg: impl Into<String>) -> BadReview {
    BadReview(msg.into())
}

/// Reads a review body.
pub fn parse(body: &[u8]) -> Result<Review, BadReview> {
    let r: ReviewIn = serde_json::from_slice(body)
        .map_err(|e| bad(format!("the body is not an AdmissionReview in JSON: {e}")))?;
    if r.api_version != API_VERSION || r.kind != KIND {
        return Err(bad(format!(
            "apiVersion {:?} kind {:?}: moor's webhook answers {KIND} {API_VERSION} only (admissionReviewVersions: [v1])",
            r.api_version, r.kind
        )));
    }
    let req = r
        .request
        .filter(|r| !r.is_null())
        .ok_or_else(|| bad("the AdmissionReview has no request"))?;
    // serde reads a struct from an array of its fields too; the API server
    // sends objects only, so anything else is not a review we understand.
    if !req.is_object() || !req.get("kind").is_some_and(Value::is_object) {
        return Err(bad(
            "request is not an AdmissionRequest v1: request and request.kind must be JSON objects",
        ));
    }
    let req: RequestIn = serde_json::from_value(req)
        .map_err(|e| bad(format!("request is not an AdmissionRequest v1: {e}")))?;
    if req.uid.is_empty() {
        return Err(bad("request.uid is empty: the response must echo it"));
    }
    let is_pod = req.kind.group.is_empty() && req.kind.version == "v1" && req.kind.kind == "Pod";
    if !is_pod || req.sub_resource.is_some() || req.operation != "CREATE" {
        return Ok(Review {
            uid: req.uid,
            namespace: String::new(),
            pod: None,
        });
    }
    let object = req
        .object
        .ok_or_else(|| bad("request.object is missing from a CREATE of a Pod"))?;
    let pod: corev1::Pod = serde_json::from_value(object)
        .map_err(|e| bad(format!("request.object is not a v1 Pod: {e}")))?;
    let namespace = req
        .namespace
        .filter(|n| !n.is_empty())
        .or_else(|| pod.metadata.namespace.clone().filter(|n| !n.is_empty()))
        .ok_or_else(|| bad("request.namespace is empty: a Pod is created in a namespace"))?;
    Ok(Review {
        uid: req.uid,
        namespace,
        pod: Some(pod),
    })
}

/// The response: allowed, with the JSON Patch `ops` (base64, when there
/// are any) and `warnings` for the client.
pub fn answer(uid: &str, ops: &[Value], warnings: &[String]) -> Vec<u8> {
    let mut response = json!({"uid": uid, "allowed": true});
    if !ops.is_empty() {
        let patch = serde_json::to_vec(ops).expect("JSON values serialize");
        response["patchType"] = "JSONPatch".into();
        response["patch"] = base64::engine::general_purpose::STANDARD
            .encode(patch)
            .into();
    }
    if !warnings.is_empty() {
        response["warnings"] = warnings.into();
    }
    let review = json!({"apiVersion": API_VERSION, "kind": KIND, "response": response});
    serde_json::to_vec(&review).expect("JSON values serialize")
}
