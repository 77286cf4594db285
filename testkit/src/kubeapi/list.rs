//! LIST: which snapshot (resourceVersion, resourceVersionMatch, continue),
//! which objects (namespace, selectors), which page (limit).

use super::handler::render;
use super::request::{Query, Representation, Target};
use super::selector::{FieldSelector, LabelSelector, Selectors};
use super::server::{lock, Shared};
use super::status::Status;
use super::store::{Key, Store};
use base64::Engine;
use serde_json::{json, Value};

const CONTINUE_EXPIRED: &str = "The provided continue parameter is too old to display a \
    consistent list result. You can start a new list without the continue parameter.";
const LIST_EXPIRED: &str = "The resourceVersion for the provided list is too old.";

/// Both selectors of a list or watch, refused as the real server refuses
/// them.
pub(crate) fn selectors(target: &Target, query: &Query) -> Result<Selectors, Status> {
    Ok(Selectors {
        labels: LabelSelector::parse(query.get("labelSelector").unwrap_or_default())?,
        fields: FieldSelector::parse(
            target.resource,
            query.get("fieldSelector").unwrap_or_default(),
        )?,
    })
}

/// 422 for option combinations the real server's ValidateListOptions
/// refuses.
pub(crate) fn invalid_options(cause: &str) -> Status {
    let mut s = Status::bad_request(format!("ListOptions.meta.k8s.io \"\" is invalid: {cause}"));
    s.code = 422;
    s.reason = "Invalid";
    s
}

/// A resourceVersion parameter: "" and absent are `None`.
pub(crate) fn parse_rv(query: &Query) -> Result<Option<u64>, Status> {
    match query.get("resourceVersion").filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| Status::bad_request(format!("invalid resource version: {v}"))),
    }
}

pub(crate) fn list(
    shared: &Shared,
    target: &Target,
    query: &Query,
    repr: Representation,
) -> Result<Value, Status> {
    let selectors = selectors(target, query)?;
    if query.get("sendInitialEvents").is_some() {
        return Err(invalid_options(
            "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list",
        ));
    }
    let limit: usize = match query.get("limit").filter(|v| !v.is_empty()) {
        None => 0,
        Some(v) => v
            .parse()
            .map_err(|_| Status::bad_request(format!("invalid limit: {v}")))?,
    };
    let store = lock(&shared.store);
    let (at, after) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            if query.get("resourceVersion").is_some_and(|v| !v.is_empty()) {
                return Err(Status::bad_request(
                    "specifying resource version is not allowed when using continue",
                ));
            }
            if query
                .get("resourceVersionMatch")
                .is_some_and(|v| !v.is_empty())
            {
                return Err(invalid_options(
                    "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden when continue is provided",
                ));
            }
            let (rv, after) = decode_continue(token)?;
            if rv < store.floor() {
                return Err(Status::expired(CONTINUE_EXPIRED));
            }
            (rv, Some(after))
        }
        None => (snapshot_rv(&store, query, limit)?, None),
    };
    let snapshot = store
        .snapshot(target.resource, at)
        .ok_or_else(|| Status::expired(LIST_EXPIRED))?;
    drop(store);

    let mut matching = snapshot
        .into_iter()
        .filter(|(key, _)| after.as_ref().is_none_or(|a| key > a))
        .filter(|((ns, _), _)| target.namespace.as_ref().is_none_or(|want| ns == want))
        .filter(|(_, object)| selectors.matches(object));
    let page: Vec<(Key, Value)> = if limit > 0 {
        matching.by_ref().take(limit).collect()
    } else {
        matching.by_ref().collect()
    };
    let remaining = matching.count();

    let mut metadata = json!({"resourceVersion": at.to_string()});
    if remaining > 0 {
        let last = &page.last().expect("a page before the remainder").0;
        metadata["continue"] = encode_continue(at, last).into();
        if selectors.is_empty() {
            metadata["remainingItemCount"] = remaining.into();
        }
    }
    let items: Vec<Value> = page
        .into_iter()
        .map(|(_, object)| match repr {
            Representation::Full => {
                // The real server's list items carry no kind/apiVersion.
                let mut object = object;
                if let Some(map) = object.as_object_mut() {
                    map.remove("kind");
                    map.remove("apiVersion");
                }
                object
            }
            Representation::Metadata => render(&object, repr),
        })
        .collect();
    let (kind, api_version) = match repr {
        Representation::Full => (
            format!("{}List", target.resource.kind()),
            target.resource.api_version(),
        ),
        Representation::Metadata => ("PartialObjectMetadataList".into(), "meta.k8s.io/v1"),
    };
    Ok(json!({
        "kind": kind,
        "apiVersion": api_version,
        "metadata": metadata,
        "items": items,
    }))
}

/// The resourceVersion a list without a continue token reads at
/// (the table in the API concepts docs, "Semantics for get and list").
fn snapshot_rv(store: &Store, query: &Query, limit: usize) -> Result<u64, Status> {
    let rv = parse_rv(query)?;
    let exact = match query.get("resourceVersionMatch").filter(|v| !v.is_empty()) {
        None => false,
        Some(_) if rv.is_none() => {
            return Err(invalid_options(
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
            ))
        }
        Some("NotOlderThan") => false,
        Some("Exact") if rv == Some(0) => {
            return Err(invalid_options(
                "resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
            ))
        }
        Some("Exact") => true,
        Some(other) => {
            return Err(invalid_options(&format!(
                "resourceVersionMatch: Unsupported value: \"{other}\": supported values: \"Exact\", \"NotOlderThan\""
            )))
        }
    };
    let current = store.rv();
    match rv {
        // Unset: a consistent read; "0": any state, the newest here.
        None | Some(0) => Ok(current),
        Some(n) if n > current => Err(Status::too_large_resource_version(n, current)),
        // A paginated list at a set resourceVersion is exact.
        Some(n) if exact || (limit > 0 && query.get("resourceVersionMatch").is_none()) => Ok(n),
        Some(_) => Ok(current),
    }
}

/// The real token: base64url (no padding) of
/// `{"v":"meta.k8s.io/v1","rv":N,"start":"<key>\u0000"}`.
fn encode_continue(rv: u64, last: &Key) -> String {
    let token = json!({
        "v": "meta.k8s.io/v1",
        "rv": rv,
        "start": format!("{}/{}\u{0}", last.0, last.1),
    });
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode_continue(token: &str) -> Result<(u64, Key), Status> {
    let bad = |why: &str| Status::bad_request(format!("invalid continue token: {why}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|e| bad(&e.to_string()))?;
    let token: Value = serde_json::from_slice(&bytes).map_err(|e| bad(&e.to_string()))?;
    if token["v"] != "meta.k8s.io/v1" {
        return Err(bad("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"));
    }
    let rv = token["rv"].as_u64().ok_or_else(|| bad("no rv"))?;
    let start = token["start"].as_str().ok_or_else(|| bad("no start"))?;
    let start = start.strip_suffix('\u{0}').unwrap_or(start);
    let (ns, name) = start
        .split_once('/')
        .ok_or_else(|| bad("continue key is not valid"))?;
    Ok((rv, (ns.to_string(), name.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_refuse_garbage() {
        let key = ("ns".to_string(), "web-1".to_string());
        let token = encode_continue(42, &key);
        assert_eq!(decode_continue(&token).unwrap(), (42, key));
        assert_eq!(decode_continue("nonsense!").unwrap_err().code, 400);
    }
}
