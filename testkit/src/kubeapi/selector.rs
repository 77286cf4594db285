//! Label and field selectors, parsed with the real server's grammar
//! (k8s.io/apimachinery/pkg/labels and pkg/fields) and refused with its
//! messages; never ignored.

use super::resource::{field_value, Resource};
use super::status::Status;
use serde_json::Value;
use std::collections::BTreeMap;

/// A parsed `labelSelector`: every requirement must hold.
#[derive(Clone, Debug, Default)]
pub(crate) struct LabelSelector(Vec<Requirement>);

#[derive(Clone, Debug)]
enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
    Gt(String, i64),
    Lt(String, i64),
}

impl LabelSelector {
    pub(crate) fn parse(text: &str) -> Result<LabelSelector, Status> {
        let mut requirements = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                if text.trim().is_empty() {
                    continue;
                }
                return Err(unparsable("found ',', expected: identifier"));
            }
            requirements.push(parse_requirement(part)?);
        }
        Ok(LabelSelector(requirements))
    }

    pub(crate) fn matches(&self, object: &Value) -> bool {
        let labels = labels_of(object);
        self.0.iter().all(|r| match r {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            // The real server: `notin` and `!=` hold for objects without the key.
            Requirement::NotIn(k, vs) => !labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
            Requirement::Gt(k, n) => label_int(&labels, k).is_some_and(|v| v > *n),
            Requirement::Lt(k, n) => label_int(&labels, k).is_some_and(|v| v < *n),
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn labels_of(object: &Value) -> BTreeMap<String, String> {
    object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn label_int(labels: &BTreeMap<String, String>, key: &str) -> Option<i64> {
    labels.get(key)?.parse().ok()
}

fn unparsable(why: &str) -> Status {
    Status::bad_request(format!("unable to parse requirement: {why}"))
}

/// Splits at commas outside parentheses: `a in (x,y),b` -> `a in (x,y)`, `b`.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_requirement(part: &str) -> Result<Requirement, Status> {
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(label_key(key.trim())?));
    }
    for (op, len) in [("==", 2), ("!=", 2), ("=", 1), (">", 1), ("<", 1)] {
        if let Some(at) = part.find(op) {
            // "!=" also contains "=": take the operator that starts first.
            if op == "=" && part[..at].ends_with('!') {
                continue;
            }
            let key = label_key(part[..at].trim())?;
            let value = part[at + len..].trim();
            return match op {
                "!=" => Ok(Requirement::NotIn(key, vec![label_value(value)?])),
                ">" | "<" => {
                    let n: i64 = value.parse().map_err(|_| {
                        unparsable(&format!(
                            "for 'Gt', 'Lt' operators, the value must be an integer: {value}"
                        ))
                    })?;
                    Ok(if op == ">" {
                        Requirement::Gt(key, n)
                    } else {
                        Requirement::Lt(key, n)
                    })
                }
                _ => Ok(Requirement::In(key, vec![label_value(value)?])),
            };
        }
    }
    let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
    match words.as_slice() {
        [key] => Ok(Requirement::Exists(label_key(key)?)),
        [key, rest] => {
            let rest = rest.trim();
            let (set_op, values) = if let Some(v) = rest.strip_prefix("notin") {
                ("notin", v)
            } else if let Some(v) = rest.strip_prefix("in") {
                ("in", v)
            } else {
                return Err(unparsable(&format!(
                    "found '{rest}', expected: in, notin, =, ==, !=, gt, lt"
                )));
            };
            let values = values.trim();
            let inner = values
                .strip_prefix('(')
                .and_then(|v| v.strip_suffix(')'))
                .ok_or_else(|| unparsable(&format!("found '{values}', expected: '('")))?;
            let values = inner
                .split(',')
                .map(|v| label_value(v.trim()))
                .collect::<Result<Vec<_>, _>>()?;
            let key = label_key(key)?;
            Ok(if set_op == "in" {
                Requirement::In(key, values)
            } else {
                Requirement::NotIn(key, values)
            })
        }
        _ => Err(unparsable("found '', expected: identifier")),
    }
}

/// A label key: optional DNS prefix and a name of at most 63 characters.
fn label_key(key: &str) -> Result<String, Status> {
    let name = key.rsplit('/').next().unwrap_or(key);
    if name.is_empty() || name.len() > 63 || !qualified_chars(name) {
        return Err(unparsable(&format!(
            "key: Invalid value: \"{key}\": name part must consist of alphanumeric \
             characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        )));
    }
    Ok(key.to_string())
}

fn label_value(value: &str) -> Result<String, Status> {
    if value.len() > 63 || (!value.is_empty() && !qualified_chars(value)) {
        return Err(unparsable(&format!(
            "values[0]: Invalid value: \"{value}\": a valid label must be an empty string or \
             consist of alphanumeric characters, '-', '_' or '.', and must start and end with \
             an alphanumeric character"
        )));
    }
    Ok(value.to_string())
}

fn qualified_chars(s: &str) -> bool {
    let bytes = s.as_bytes();
    bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A parsed `fieldSelector` over one resource's supported field labels.
#[derive(Clone, Debug, Default)]
pub(crate) struct FieldSelector(Vec<FieldTerm>);

#[derive(Clone, Debug)]
struct FieldTerm {
    pointer: &'static str,
    value: String,
    equal: bool,
}

impl FieldSelector {
    pub(crate) fn parse(resource: Resource, text: &str) -> Result<FieldSelector, Status> {
        let mut terms = Vec::new();
        if text.trim().is_empty() {
            return Ok(FieldSelector(terms));
        }
        for part in split_unescaped(text, ',') {
            let (label, value, equal) = if let Some((l, v)) = part.split_once("!=") {
                (l, v, false)
            } else if let Some((l, v)) = part.split_once("==") {
                (l, v, true)
            } else if let Some((l, v)) = part.split_once('=') {
                (l, v, true)
            } else {
                return Err(Status::bad_request(format!(
                    "invalid selector: '{text}'; can't understand '{part}'"
                )));
            };
            let label = label.trim();
            let pointer = resource.field_pointer(label).ok_or_else(|| {
                Status::bad_request(format!("field label not supported: {label}"))
            })?;
            terms.push(FieldTerm {
                pointer,
                value: unescape(value),
                equal,
            });
        }
        Ok(FieldSelector(terms))
    }

    pub(crate) fn matches(&self, object: &Value) -> bool {
        self.0
            .iter()
            .all(|t| (field_value(object, t.pointer) == t.value) == t.equal)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Splits at `sep` not preceded by a backslash (the field selector escape).
fn split_unescaped(text: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut escaped = false;
    for c in text.chars() {
        if escaped {
            parts.last_mut().expect("one part").extend(['\\', c]);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(String::new());
        } else {
            parts.last_mut().expect("one part").push(c);
        }
    }
    parts
}

fn unescape(value: &str) -> String {
    value
        .replace("\\,", ",")
        .replace("\\=", "=")
        .replace("\\\\", "\\")
}

/// Both selectors of one request.
#[derive(Clone, Debug, Default)]
pub(crate) struct Selectors {
    pub(crate) labels: LabelSelector,
    pub(crate) fields: FieldSelector,
}

impl Selectors {
    pub(crate) fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "labels": labels},
               "spec": {"nodeName": "n1"}})
    }

    #[test]
    fn label_selector_grammar() {
        let p = pod(json!({"app": "web", "tier": "front", "rank": "3"}));
        for (sel, want) in [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app!=db", true),
            ("app in (db, web)", true),
            ("app notin (db,web)", false),
            ("missing notin (x)", true),
            ("missing!=x", true),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("rank>2,rank<4", true),
            ("rank>3", false),
            ("app=web,tier in (back)", false),
            ("", true),
        ] {
            let s = LabelSelector::parse(sel).unwrap();
            assert_eq!(s.matches(&p), want, "{sel}");
        }
        for bad in ["app in web", "app=we b", "a,,b", "rank>x", "-app=x"] {
            let e = LabelSelector::parse(bad).unwrap_err();
            assert_eq!(e.code, 400, "{bad}");
            assert!(
                e.message.starts_with("unable to parse requirement"),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn field_selector_grammar_and_refusals() {
        let p = pod(json!({}));
        let s = FieldSelector::parse(Resource::Pods, "spec.nodeName=n1,metadata.name!=q").unwrap();
        assert!(s.matches(&p));
        let s = FieldSelector::parse(Resource::Pods, "spec.nodeName==n2").unwrap();
        assert!(!s.matches(&p));
        let e = FieldSelector::parse(Resource::Pods, "spec.foo=x").unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (400, "field label not supported: spec.foo")
        );
        let e = FieldSelector::parse(Resource::Nodes, "metadata.namespace=x").unwrap_err();
        assert_eq!(e.message, "field label not supported: metadata.namespace");
        let e = FieldSelector::parse(Resource::Pods, "spec.nodeName").unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.message.contains("can't understand"), "{e:?}");
    }
}
