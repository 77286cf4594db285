//! The fake's etcd: objects, one global resourceVersion counter, and a
//! bounded log of changes that watches replay and old list snapshots are
//! rebuilt from.

use super::objects::{new_uid, now_rfc3339};
use super::resource::Resource;
use super::status::Status;
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};

/// What a change did, as a watch names it before selectors apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Added,
    Modified,
    Deleted,
}

/// One change in the log.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) rv: u64,
    pub(crate) change: Change,
    pub(crate) resource: Resource,
    /// The object after the change (for a deletion: the last state, carrying
    /// the deletion's resourceVersion, as the real server sends it).
    pub(crate) object: Value,
    /// The object before the change; `None` for an addition.
    pub(crate) prev: Option<Value>,
}

/// (namespace, name): the order the real server lists objects in.
pub(crate) type Key = (String, String);

/// The data and its history.
pub(crate) struct Store {
    rv: u64,
    objects: BTreeMap<(Resource, String, String), Value>,
    log: VecDeque<Entry>,
    /// Every change with a resourceVersion <= `floor` is forgotten.
    floor: u64,
    history: usize,
}

/// The namespace and name an object's metadata gives.
pub(crate) fn key_of(object: &Value) -> Key {
    let meta = |f: &str| {
        object
            .pointer(&format!("/metadata/{f}"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    (meta("namespace"), meta("name"))
}

fn set_rv(object: &mut Value, rv: u64) {
    object["metadata"]["resourceVersion"] = rv.to_string().into();
}

impl Store {
    pub(crate) fn new(history: usize) -> Store {
        Store {
            rv: 0,
            objects: BTreeMap::new(),
            log: VecDeque::new(),
            floor: 0,
            history,
        }
    }

    /// The newest resourceVersion.
    pub(crate) fn rv(&self) -> u64 {
        self.rv
    }

    /// The oldest resourceVersion a watch may start from.
    pub(crate) fn floor(&self) -> u64 {
        self.floor
    }

    fn record(&mut self, entry: Entry) {
        self.log.push_back(entry);
        while self.log.len() > self.history {
            let gone = self.log.pop_front().expect("log longer than history");
            self.floor = gone.rv;
        }
    }

    /// Forgets all history: older resourceVersions and continue tokens
    /// expire, as after an etcd compaction or an API server restart.
    pub(crate) fn compact(&mut self) {
        self.log.clear();
        self.floor = self.rv;
    }

    pub(crate) fn get(&self, resource: Resource, namespace: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&(resource, namespace.to_string(), name.to_string()))
    }

    /// Stores a new object with what the server sets: uid,
    /// creationTimestamp, resourceVersion, generation, kind and apiVersion.
    pub(crate) fn create(
        &mut self,
        resource: Resource,
        mut object: Value,
    ) -> Result<Value, Status> {
        let (namespace, name) = key_of(&object);
        let id = (resource, namespace, name.clone());
        if self.objects.contains_key(&id) {
            return Err(Status::already_exists(resource, &name));
        }
        object["kind"] = resource.kind().into();
        object["apiVersion"] = resource.api_version().into();
        let meta = object["metadata"]
            .as_object_mut()
            .expect("create: metadata is an object");
        meta.entry("uid").or_insert_with(|| new_uid().into());
        meta.entry("creationTimestamp")
            .or_insert_with(|| now_rfc3339().into());
        if !resource.namespaced() {
            meta.remove("namespace");
        }
        if resource.has_generation() {
            meta.insert("generation".into(), 1.into());
        } else {
            meta.remove("generation");
        }
        if resource == Resource::Namespaces {
            // The API server's own label on every namespace.
            let labels = meta.entry("labels").or_insert_with(|| json!({}));
            labels["kubernetes.io/metadata.name"] = name.into();
        }
        self.rv += 1;
        set_rv(&mut object, self.rv);
        self.objects.insert(id, object.clone());
        self.record(Entry {
            rv: self.rv,
            change: Change::Added,
            resource,
            object: object.clone(),
            prev: None,
        });
        Ok(object)
    }

    /// Replaces an object, keeping what the server owns (uid,
    /// creationTimestamp, generation unless the spec changed).
    pub(crate) fn replace(
        &mut self,
        resource: Resource,
        mut object: Value,
    ) -> Result<Value, Status> {
        let (namespace, name) = key_of(&object);
        let id = (resource, namespace, name.clone());
        let Some(old) = self.objects.get(&id).cloned() else {
            return Err(Status::not_found(resource, &name));
        };
        if let Some(rv) = object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
        {
            if !rv.is_empty() && Some(rv) != old["metadata"]["resourceVersion"].as_str() {
                return Err(Status::conflict(resource, &name));
            }
        }
        if let Some(uid) = object.pointer("/metadata/uid").and_then(Value::as_str) {
            if Some(uid) != old["metadata"]["uid"].as_str() {
                return Err(Status::conflict(resource, &name));
            }
        }
        object["kind"] = resource.kind().into();
        object["apiVersion"] = resource.api_version().into();
        for owned in ["uid", "creationTimestamp", "generation", "namespace"] {
            match old["metadata"].get(owned) {
                Some(v) => object["metadata"][owned] = v.clone(),
                None => {
                    if let Some(meta) = object["metadata"].as_object_mut() {
                        meta.remove(owned);
                    }
                }
            }
        }
        if resource.has_generation() && object.get("spec") != old.get("spec") {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            object["metadata"]["generation"] = generation.into();
        }
        self.rv += 1;
        set_rv(&mut object, self.rv);
        self.objects.insert(id, object.clone());
        self.record(Entry {
            rv: self.rv,
            change: Change::Modified,
            resource,
            object: object.clone(),
            prev: Some(old),
        });
        Ok(object)
    }

    /// Removes an object; returns it with the deletion's resourceVersion.
    pub(crate) fn delete(
        &mut self,
        resource: Resource,
        namespace: &str,
        name: &str,
    ) -> Result<Value, Status> {
        let id = (resource, namespace.to_string(), name.to_string());
        let Some(old) = self.objects.remove(&id) else {
            return Err(Status::not_found(resource, name));
        };
        self.rv += 1;
        let mut object = old.clone();
        set_rv(&mut object, self.rv);
        self.record(Entry {
            rv: self.rv,
            change: Change::Deleted,
            resource,
            object: object.clone(),
            prev: Some(old),
        });
        Ok(object)
    }

    /// The objects of `resource` as they were at resourceVersion `at`, or
    /// `None` when the history no longer reaches back that far.
    pub(crate) fn snapshot(&self, resource: Resource, at: u64) -> Option<BTreeMap<Key, Value>> {
        if at < self.floor {
            return None;
        }
        let mut objects: BTreeMap<Key, Value> = self
            .objects
            .range((resource, String::new(), String::new())..)
            .take_while(|((r, _, _), _)| *r == resource)
            .map(|((_, ns, name), v)| ((ns.clone(), name.clone()), v.clone()))
            .collect();
        for entry in self.log.iter().rev().take_while(|e| e.rv > at) {
            if entry.resource != resource {
                continue;
            }
            let key = key_of(&entry.object);
            match (&entry.change, &entry.prev) {
                (Change::Added, _) => {
                    objects.remove(&key);
                }
                (_, Some(prev)) => {
                    objects.insert(key, prev.clone());
                }
                (_, None) => unreachable!("a modification or deletion keeps the previous object"),
            }
        }
        Some(objects)
    }

    /// The changes of `resource` after resourceVersion `after`, or `None`
    /// when some of them are forgotten.
    pub(crate) fn changes_after(&self, resource: Resource, after: u64) -> Option<Vec<Entry>> {
        if after < self.floor {
            return None;
        }
        let start = self.log.partition_point(|e| e.rv <= after);
        Some(
            self.log
                .range(start..)
                .filter(|e| e.resource == resource)
                .cloned()
                .collect(),
        )
    }

    /// All current objects of `resource`.
    pub(crate) fn all(&self, resource: Resource) -> Vec<Value> {
        self.snapshot(resource, self.rv)
            .map(|m| m.into_values().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, app: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns", "labels": {"app": app}}, "spec": {}})
    }

    #[test]
    fn snapshots_roll_back_later_changes() {
        let mut s = Store::new(100);
        s.create(Resource::Pods, pod("a", "1")).unwrap();
        let at = s.rv();
        s.create(Resource::Pods, pod("b", "1")).unwrap();
        s.replace(Resource::Pods, pod("a", "2")).unwrap();
        s.delete(Resource::Pods, "ns", "a").unwrap();
        let then = s.snapshot(Resource::Pods, at).unwrap();
        assert_eq!(then.len(), 1);
        assert_eq!(
            then[&("ns".into(), "a".into())]["metadata"]["labels"]["app"],
            "1"
        );
        let now = s.snapshot(Resource::Pods, s.rv()).unwrap();
        assert_eq!(now.keys().map(|k| k.1.as_str()).collect::<Vec<_>>(), ["b"]);
        assert_eq!(s.changes_after(Resource::Pods, at).unwrap().len(), 3);
        s.compact();
        assert!(s.snapshot(Resource::Pods, at).is_none());
        assert!(s.changes_after(Resource::Pods, at).is_none());
        assert_eq!(s.changes_after(Resource::Pods, s.rv()).unwrap().len(), 0);
    }

    #[test]
    fn bounded_history_moves_the_floor() {
        let mut s = Store::new(2);
        for n in 0..5 {
            s.create(Resource::Pods, pod(&format!("p{n}"), "x"))
                .unwrap();
        }
        assert_eq!(s.floor(), 3);
        assert!(s.changes_after(Resource::Pods, 2).is_none());
        assert_eq!(s.changes_after(Resource::Pods, 3).unwrap().len(), 2);
    }

    #[test]
    fn server_owned_fields() {
        let mut s = Store::new(10);
        let a = s.create(Resource::Pods, pod("a", "1")).unwrap();
        assert_eq!(a["metadata"]["generation"], 1);
        assert_eq!(a["kind"], "Pod");
        let mut changed = pod("a", "1");
        changed["spec"] = json!({"nodeName": "n1"});
        changed["metadata"]["resourceVersion"] = "999".into();
        assert_eq!(
            s.replace(Resource::Pods, changed.clone()).unwrap_err().code,
            409
        );
        changed["metadata"]["resourceVersion"] = a["metadata"]["resourceVersion"].clone();
        let b = s.replace(Resource::Pods, changed).unwrap();
        assert_eq!(b["metadata"]["generation"], 2);
        assert_eq!(b["metadata"]["uid"], a["metadata"]["uid"]);
        assert_eq!(
            s.create(Resource::Pods, pod("a", "1")).unwrap_err().code,
            409
        );
        let ns = s
            .create(Resource::Namespaces, json!({"metadata": {"name": "x"}}))
            .unwrap();
        assert_eq!(ns["metadata"]["labels"]["kubernetes.io/metadata.name"], "x");
        assert!(ns["metadata"].get("generation").is_none());
    }
}
