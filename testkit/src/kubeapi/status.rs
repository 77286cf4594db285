//! The API server's `Status` objects: every refusal the fake makes is one of
//! these, with the code, reason and message the real server uses
//! (k8s.io/apimachinery/pkg/api/errors).

use super::resource::Resource;
use serde_json::{json, Value};

/// A failure the fake answers with: HTTP code plus a `Status` body.
#[derive(Clone, Debug, PartialEq)]
pub struct Status {
    /// HTTP status code, also the Status's `code`.
    pub code: u16,
    /// `reason`: `NotFound`, `Expired`, `BadRequest`...
    pub reason: &'static str,
    /// `message`, as the real server words it.
    pub message: String,
    /// `details` (name, group, kind), or `None` for `{}`-less statuses.
    pub details: Option<Value>,
    /// `metadata.continue`, only for an expired continue token.
    pub continue_token: Option<String>,
}

impl Status {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Status {
        Status {
            code,
            reason,
            message: message.into(),
            details: None,
            continue_token: None,
        }
    }

    /// The `Status` object as JSON.
    pub fn to_json(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        if let Some(token) = &self.continue_token {
            status["metadata"]["continue"] = token.clone().into();
        }
        status
    }

    fn with_details(mut self, resource: Resource, name: &str) -> Status {
        let mut details = json!({"name": name, "kind": resource.plural()});
        if !resource.group().is_empty() {
            details["group"] = resource.group().into();
        }
        self.details = Some(details);
        self
    }

    /// 404 for a path the server does not serve.
    pub fn no_such_path() -> Status {
        let mut s = Status::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
        s.details = Some(json!({}));
        s
    }

    /// 405 for a verb the path does not take.
    pub fn method_not_allowed() -> Status {
        let mut s = Status::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        );
        s.details = Some(json!({}));
        s
    }

    /// 404 for an object that does not exist.
    pub fn not_found(resource: Resource, name: &str) -> Status {
        Status::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(resource)),
        )
        .with_details(resource, name)
    }

    /// 409 for a create whose name is taken.
    pub fn already_exists(resource: Resource, name: &str) -> Status {
        Status::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", qualified(resource)),
        )
        .with_details(resource, name)
    }

    /// 409 for a write whose resourceVersion precondition failed.
    pub fn conflict(resource: Resource, name: &str) -> Status {
        Status::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                qualified(resource)
            ),
        )
        .with_details(resource, name)
    }

    /// 422 for an object the server's validation refuses.
    pub fn invalid(resource: Resource, name: &str, cause: &str) -> Status {
        Status::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {cause}", resource.kind()),
        )
        .with_details(resource, name)
    }

    /// 400 with the server's message.
    pub fn bad_request(message: impl Into<String>) -> Status {
        Status::new(400, "BadRequest", message)
    }

    /// 410 `Expired`: a resourceVersion or continue token older than the
    /// history the server keeps.
    pub fn expired(message: impl Into<String>) -> Status {
        Status::new(410, "Expired", message)
    }

    /// 504 for a resourceVersion newer than the server has seen.
    pub fn too_large_resource_version(asked: u64, current: u64) -> Status {
        let mut s = Status::new(
            504,
            "Timeout",
            format!("Too large resource version: {asked}, current: {current}"),
        );
        s.details = Some(json!({"causes": [{
            "reason": "ResourceVersionTooLarge",
            "message": "Too large resource version"
        }], "retryAfterSeconds": 1}));
        s
    }

    /// 415 for a body or patch type the fake does not implement.
    pub fn unsupported_media_type(what: &str) -> Status {
        Status::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types \
                 include: application/json, application/merge-patch+json, \
                 application/strategic-merge-patch+json (fake API server: {what} is not \
                 implemented)"
            ),
        )
    }

    /// 406 when the client accepts no representation the fake makes.
    pub fn not_acceptable() -> Status {
        Status::new(
            406,
            "NotAcceptable",
            "only the following media types are accepted: application/json, \
             application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1, \
             application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
        )
    }
}

/// `pods`, `jobs.batch`: how messages name a resource.
fn qualified(resource: Resource) -> String {
    match resource.group() {
        "" => resource.plural().to_string(),
        group => format!("{}.{group}", resource.plural()),
    }
}
