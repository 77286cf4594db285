//! The JSON spelling of OVSDB values (RFC 7047 section 5.1), both ways.
//!
//! A set is `["set", [atom, ...]]`, a map `["map", [[key, value], ...]]`, a row
//! reference `["uuid", "..."]`, a row inserted earlier in the same transaction
//! `["named-uuid", "..."]`. ovsdb-server writes a set of exactly one element as
//! the bare atom (`"tag": 100`, `"interfaces": ["uuid", "..."]`), so the readers
//! here accept both forms. We always write the explicit `["set", ...]` form,
//! which is valid for any number of elements.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct DatumError(pub String);

fn bad(what: &str, v: &Value) -> DatumError {
    DatumError(format!("expected {what}, got {v}"))
}

pub(crate) fn uuid(u: &str) -> Value {
    json!(["uuid", u])
}

pub(crate) fn named_uuid(name: &str) -> Value {
    json!(["named-uuid", name])
}

pub(crate) fn set<I: IntoIterator<Item = Value>>(atoms: I) -> Value {
    json!(["set", atoms.into_iter().collect::<Vec<_>>()])
}

pub(crate) fn map(m: &BTreeMap<String, String>) -> Value {
    let pairs: Vec<Value> = m.iter().map(|(k, v)| json!([k, v])).collect();
    json!(["map", pairs])
}

/// The elements of a set, whether written `["set", [...]]` or as one bare atom.
pub(crate) fn set_elements(v: &Value) -> Result<Vec<&Value>, DatumError> {
    match v {
        Value::Array(a) => match (a.first().and_then(Value::as_str), a.get(1), a.len()) {
            (Some("set"), Some(Value::Array(elems)), 2) => Ok(elems.iter().collect()),
            (Some("uuid" | "named-uuid"), Some(Value::String(_)), 2) => Ok(vec![v]),
            _ => Err(bad("a set or an atom", v)),
        },
        Value::Object(_) | Value::Null => Err(bad("a set or an atom", v)),
        _ => Ok(vec![v]),
    }
}

pub(crate) fn as_uuid(v: &Value) -> Result<&str, DatumError> {
    match v.as_array().map(Vec::as_slice) {
        Some([Value::String(tag), Value::String(u)]) if tag == "uuid" => Ok(u),
        _ => Err(bad("[\"uuid\", ...]", v)),
    }
}

pub(crate) fn as_int(v: &Value) -> Result<i64, DatumError> {
    v.as_i64().ok_or_else(|| bad("an integer", v))
}

pub(crate) fn as_str(v: &Value) -> Result<&str, DatumError> {
    v.as_str().ok_or_else(|| bad("a string", v))
}

/// A column of type `{"min": 0, "max": 1}`: the empty set or one atom.
fn optional<'a, T>(
    v: &'a Value,
    atom: impl Fn(&'a Value) -> Result<T, DatumError>,
) -> Result<Option<T>, DatumError> {
    match set_elements(v)?.as_slice() {
        [] => Ok(None),
        [one] => atom(one).map(Some),
        _ => Err(bad("at most one element", v)),
    }
}

pub(crate) fn as_string_map(v: &Value) -> Result<BTreeMap<String, String>, DatumError> {
    let pairs = match v.as_array().map(Vec::as_slice) {
        Some([Value::String(tag), Value::Array(pairs)]) if tag == "map" => pairs,
        _ => return Err(bad("[\"map\", [...]]", v)),
    };
    pairs
        .iter()
        .map(|pair| match pair.as_array().map(Vec::as_slice) {
            Some([Value::String(k), Value::String(v)]) => Ok((k.clone(), v.clone())),
            _ => Err(bad("a [string, string] pair", pair)),
        })
        .collect()
}

/// One row of a `select` result, with typed column readers whose errors name
/// the column.
pub(crate) struct Row<'a>(pub &'a Map<String, Value>);

impl<'a> Row<'a> {
    pub fn get(&self, col: &str) -> Result<&'a Value, DatumError> {
        self.0
            .get(col)
            .ok_or_else(|| DatumError(format!("column {col} missing from the reply")))
    }

    fn with<T>(
        &self,
        col: &str,
        read: impl FnOnce(&'a Value) -> Result<T, DatumError>,
    ) -> Result<T, DatumError> {
        read(self.get(col)?).map_err(|DatumError(e)| DatumError(format!("column {col}: {e}")))
    }

    pub fn uuid(&self, col: &str) -> Result<&'a str, DatumError> {
        self.with(col, as_uuid)
    }

    pub fn str(&self, col: &str) -> Result<&'a str, DatumError> {
        self.with(col, as_str)
    }

    pub fn int(&self, col: &str) -> Result<i64, DatumError> {
        self.with(col, as_int)
    }

    pub fn opt_int(&self, col: &str) -> Result<Option<i64>, DatumError> {
        self.with(col, |v| optional(v, as_int))
    }

    pub fn opt_str(&self, col: &str) -> Result<Option<&'a str>, DatumError> {
        self.with(col, |v| optional(v, as_str))
    }

    pub fn ints(&self, col: &str) -> Result<Vec<i64>, DatumError> {
        self.with(col, |v| set_elements(v)?.into_iter().map(as_int).collect())
    }

    pub fn uuids(&self, col: &str) -> Result<Vec<&'a str>, DatumError> {
        self.with(col, |v| set_elements(v)?.into_iter().map(as_uuid).collect())
    }

    pub fn string_map(&self, col: &str) -> Result<BTreeMap<String, String>, DatumError> {
        self.with(col, as_string_map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn writes_the_rfc_spelling() {
        assert_eq!(uuid("u1"), json!(["uuid", "u1"]));
        assert_eq!(named_uuid("port"), json!(["named-uuid", "port"]));
        assert_eq!(set([]), json!(["set", []]));
        assert_eq!(set([json!(100), json!(200)]), json!(["set", [100, 200]]));
        assert_eq!(
            set([named_uuid("p")]),
            json!(["set", [["named-uuid", "p"]]])
        );
        let m = BTreeMap::from([("b".into(), "2".into()), ("a".into(), "1".into())]);
        assert_eq!(map(&m), json!(["map", [["a", "1"], ["b", "2"]]]));
        assert_eq!(map(&BTreeMap::new()), json!(["map", []]));
    }

    #[test]
    fn reads_sets_in_both_spellings() {
        let r = row(json!({
            "tag": 100,
            "no_tag": ["set", []],
            "trunks": ["set", [100, 200]],
            "one_trunk": 300,
            "interfaces": ["uuid", "u1"],
            "ports": ["set", [["uuid", "u1"], ["uuid", "u2"]]],
            "error": ["set", []],
            "type": "internal",
        }));
        let r = Row(&r);
        assert_eq!(r.opt_int("tag").unwrap(), Some(100));
        assert_eq!(r.opt_int("no_tag").unwrap(), None);
        assert_eq!(r.ints("trunks").unwrap(), vec![100, 200]);
        assert_eq!(r.ints("one_trunk").unwrap(), vec![300]);
        assert_eq!(r.ints("no_tag").unwrap(), Vec::<i64>::new());
        assert_eq!(r.uuids("interfaces").unwrap(), vec!["u1"]);
        assert_eq!(r.uuids("ports").unwrap(), vec!["u1", "u2"]);
        assert_eq!(r.opt_str("error").unwrap(), None);
        assert_eq!(r.str("type").unwrap(), "internal");
    }

    #[test]
    fn reads_maps() {
        let r = row(json!({
            "external_ids": ["map", [["moor/pod", "ns/a"], ["owner", "moor"]]],
            "empty": ["map", []],
        }));
        let m = Row(&r).string_map("external_ids").unwrap();
        assert_eq!(m.get("moor/pod").unwrap(), "ns/a");
        assert_eq!(m.get("owner").unwrap(), "moor");
        assert!(Row(&r).string_map("empty").unwrap().is_empty());
    }

    #[test]
    fn errors_name_the_column() {
        let r = row(json!({"tag": ["set", [1, 2]], "ports": ["map", []], "name": 3}));
        let r = Row(&r);
        let e = r.opt_int("tag").unwrap_err().to_string();
        assert!(e.starts_with("column tag:"), "{e}");
        assert!(r.uuids("ports").unwrap_err().to_string().contains("ports"));
        assert!(r.str("name").unwrap_err().to_string().contains("name"));
        assert!(r
            .int("missing")
            .unwrap_err()
            .to_string()
            .contains("missing"));
    }

    #[test]
    fn round_trips_what_it_writes() {
        let m = BTreeMap::from([("k".into(), "v".into())]);
        assert_eq!(as_string_map(&map(&m)).unwrap(), m);
        let s = set([json!(1), json!(2)]);
        let got: Vec<i64> = set_elements(&s)
            .unwrap()
            .into_iter()
            .map(|v| as_int(v).unwrap())
            .collect();
        assert_eq!(got, vec![1, 2]);
        assert_eq!(as_uuid(&uuid("u")).unwrap(), "u");
    }
}
