//! POST, PUT, PATCH and DELETE of one object.

use super::gc::{self, Propagation};
use super::objects::random_suffix;
use super::request::{Query, Target};
use super::resource::Resource;
use super::server::Shared;
use super::status::Status;
use super::store::Store;
use serde_json::Value;

type Answer = Result<(u16, Value), Status>;

fn refuse_dry_run(query: &Query) -> Result<(), Status> {
    match query.get("dryRun") {
        Some(_) => Err(Status::bad_request(
            "fake API server: dryRun is not implemented",
        )),
        None => Ok(()),
    }
}

/// POST and PUT bodies: JSON only (the real server also takes YAML and
/// protobuf).
pub(crate) fn json_body(content_type: &str) -> Result<(), Status> {
    match content_type.split(';').next().unwrap_or_default().trim() {
        "" | "application/json" => Ok(()),
        other => Err(Status::unsupported_media_type(other)),
    }
}

pub(crate) fn parse_body(body: &[u8]) -> Result<Value, Status> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        Status::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
    })?;
    if !value.is_object() {
        return Err(Status::bad_request(
            "couldn't get version/kind; json parse error: not an object",
        ));
    }
    Ok(value)
}

/// The checks the real decoder and REST layer make on a body for `target`:
/// kind, apiVersion, namespace, name.
fn check_body(target: &Target, object: &mut Value) -> Result<(), Status> {
    let resource = target.resource;
    if let Some(v) = object.get("apiVersion").and_then(Value::as_str) {
        if v != resource.api_version() {
            return Err(Status::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({})",
                resource.api_version()
            )));
        }
    }
    if let Some(k) = object.get("kind").and_then(Value::as_str) {
        if k != resource.kind() {
            return Err(Status::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                resource.kind()
            )));
        }
    }
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = serde_json::json!({});
    }
    if resource.namespaced() {
        let path_ns = target.namespace.clone().unwrap_or_default();
        match object["metadata"]["namespace"].as_str() {
            Some(ns) if !ns.is_empty() && ns != path_ns => {
                return Err(Status::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ))
            }
            _ => object["metadata"]["namespace"] = path_ns.into(),
        }
    }
    if let Some(url_name) = &target.name {
        if object["metadata"]["name"].as_str() != Some(url_name) {
            return Err(Status::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({url_name})",
                object["metadata"]["name"].as_str().unwrap_or_default()
            )));
        }
    }
    Ok(())
}

/// The validation the real server runs on a Lease's spec
/// (pkg/apis/coordination/validation): durations and transitions are not
/// negative, a duration is more than 0.
fn validate(resource: Resource, object: &Value) -> Result<(), Status> {
    if resource != Resource::Leases {
        return Ok(());
    }
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let spec = &object["spec"];
    for (field, min, words) in [
        ("leaseDurationSeconds", 1, "must be greater than 0"),
        ("leaseTransitions", 0, "must be greater than or equal to 0"),
    ] {
        if let Some(n) = spec.get(field).and_then(Value::as_i64) {
            if n < min {
                return Err(Status::invalid(
                    resource,
                    name,
                    &format!("spec.{field}: Invalid value: {n}: {words}"),
                ));
            }
        }
    }
    Ok(())
}

fn namespace_exists(store: &Store, resource: Resource, object: &Value) -> Result<(), Status> {
    if !resource.namespaced() {
        return Ok(());
    }
    let ns = object["metadata"]["namespace"].as_str().unwrap_or_default();
    match store.get(Resource::Namespaces, "", ns) {
        Some(_) => Ok(()),
        None => Err(Status::not_found(Resource::Namespaces, ns)),
    }
}

pub(crate) fn create(
    shared: &Shared,
    target: &Target,
    query: &Query,
    content_type: &str,
    body: &[u8],
) -> Answer {
    refuse_dry_run(query)?;
    json_body(content_type)?;
    let resource = target.resource;
    let mut object = parse_body(body)?;
    check_body(target, &mut object)?;
    let meta = &mut object["metadata"];
    if meta["name"].as_str().is_none_or(str::is_empty) {
        match meta["generateName"].as_str() {
            Some(prefix) if !prefix.is_empty() => {
                meta["name"] = format!("{prefix}{}", random_suffix(5)).into();
            }
            _ => {
                return Err(Status::invalid(
                    resource,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ))
            }
        }
    }
    if meta["resourceVersion"]
        .as_str()
        .is_some_and(|v| !v.is_empty())
    {
        let mut s = Status::bad_request(
            "Internal error occurred: resourceVersion should not be set on objects to be created",
        );
        s.code = 500;
        s.reason = "InternalError";
        return Err(s);
    }
    // The server assigns these, whatever the client sent.
    if let Some(m) = meta.as_object_mut() {
        for owned in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "generation",
        ] {
            m.remove(owned);
        }
    }
    validate(resource, &object)?;
    shared
        .write(|store| {
            namespace_exists(store, resource, &object)?;
            store.create(resource, object)
        })
        .map(|o| (201, o))
}

pub(crate) fn update(
    shared: &Shared,
    target: &Target,
    query: &Query,
    content_type: &str,
    body: &[u8],
) -> Answer {
    refuse_dry_run(query)?;
    json_body(content_type)?;
    let mut object = parse_body(body)?;
    check_body(target, &mut object)?;
    validate(target.resource, &object)?;
    shared
        .write(|store| store.replace(target.resource, object))
        .map(|o| (200, o))
}

pub(crate) fn patch(
    shared: &Shared,
    target: &Target,
    query: &Query,
    content_type: &str,
    body: &[u8],
) -> Answer {
    refuse_dry_run(query)?;
    let media = content_type.split(';').next().unwrap_or_default().trim();
    let strategic = match media {
        "application/merge-patch+json" => false,
        "application/strategic-merge-patch+json" => true,
        "" => {
            return Err(Status::unsupported_media_type(
                "a patch without Content-Type",
            ))
        }
        other => return Err(Status::unsupported_media_type(other)),
    };
    let patch = parse_body(body)?;
    if strategic {
        refuse_strategic_lists(&patch, "")?;
    }
    let resource = target.resource;
    let name = target.name.clone().unwrap_or_default();
    let namespace = target.namespace.clone().unwrap_or_default();
    shared
        .write(|store| {
            let mut object = store
                .get(resource, &namespace, &name)
                .cloned()
                .ok_or_else(|| Status::not_found(resource, &name))?;
            let current_rv = object["metadata"]["resourceVersion"].clone();
            merge(&mut object, &patch);
            // A resourceVersion in the patch is a precondition; without
            // one the patch applies to the newest object.
            if patch.pointer("/metadata/resourceVersion").is_none() {
                object["metadata"]["resourceVersion"] = current_rv;
            }
            check_body(target, &mut object)?;
            store.replace(resource, object)
        })
        .map(|o| (200, o))
}

pub(crate) fn delete(shared: &Shared, target: &Target, query: &Query, body: &[u8]) -> Answer {
    refuse_dry_run(query)?;
    let options = match body.iter().all(u8::is_ascii_whitespace) {
        true => Value::Null,
        false => parse_body(body)?,
    };
    if options.get("dryRun").is_some() {
        return Err(Status::bad_request(
            "fake API server: dryRun is not implemented",
        ));
    }
    let policy = Propagation::parse(
        options
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .or(query.get("propagationPolicy")),
    )?;
    let resource = target.resource;
    let name = target.name.clone().unwrap_or_default();
    let namespace = target.namespace.clone().unwrap_or_default();
    shared
        .write(|store| {
            let current = store
                .get(resource, &namespace, &name)
                .ok_or_else(|| Status::not_found(resource, &name))?;
            for (field, have) in [
                ("uid", &current["metadata"]["uid"]),
                ("resourceVersion", &current["metadata"]["resourceVersion"]),
            ] {
                if let Some(want) = options.pointer(&format!("/preconditions/{field}")).and_then(Value::as_str) {
                    if Some(want) != have.as_str() {
                        let mut s = Status::conflict(resource, &name);
                        s.message = format!(
                            "Precondition failed: {field} in precondition: {want}, {field} in object meta: {}",
                            have.as_str().unwrap_or_default()
                        );
                        return Err(s);
                    }
                }
            }
            gc::delete(store, resource, &namespace, &name, policy)
        })
        .map(|o| (200, o))
}

/// RFC 7386 JSON merge patch.
pub(crate) fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let map = target.as_object_mut().expect("an object");
    for (key, value) in fields {
        if value.is_null() {
            map.remove(key);
        } else {
            merge(map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// A strategic merge patch equals a merge patch for maps and scalars; for
/// lists it merges by key or follows `$` directives, which the fake does
/// not implement: refuse rather than apply something else.
fn refuse_strategic_lists(patch: &Value, path: &str) -> Result<(), Status> {
    match patch {
        Value::Array(_) => Err(Status::bad_request(format!(
            "fake API server: strategic merge of lists is not implemented (at {path}); \
             send application/merge-patch+json"
        ))),
        Value::Object(fields) => {
            for (key, value) in fields {
                let here = format!("{path}/{key}");
                if key.starts_with('$') {
                    return Err(Status::bad_request(format!(
                        "fake API server: strategic merge directive {key} is not implemented (at {here})"
                    )));
                }
                refuse_strategic_lists(value, &here)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge(&mut doc, &json!({"a": "z", "c": {"f": null}, "l": [3]}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}, "l": [3]}));
    }

    #[test]
    fn strategic_patches_with_lists_or_directives_are_refused() {
        assert!(refuse_strategic_lists(&json!({"metadata": {"labels": {"a": "b"}}}), "").is_ok());
        let e = refuse_strategic_lists(&json!({"spec": {"containers": [{"name": "x"}]}}), "")
            .unwrap_err();
        assert!(e.message.contains("/spec/containers"), "{e:?}");
        let e =
            refuse_strategic_lists(&json!({"metadata": {"$patch": "replace"}}), "").unwrap_err();
        assert!(e.message.contains("$patch"), "{e:?}");
    }
}
