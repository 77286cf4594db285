//! The garbage collector's part of a DELETE: what kube-controller-manager
//! does to an object's dependents (objects whose `ownerReferences` name its
//! UID) once the object is gone. The fake does it at once, inside the same
//! write, so a test sees the end state without waiting: each dependent
//! change still gets its own resourceVersion and watch event.
//!
//! `propagationPolicy`: `Background` (the default for every resource the
//! fake serves) and `Foreground` delete dependents that have no other owner
//! left, recursively; `Orphan` (`kubectl delete --cascade=orphan`) only
//! strips the ownerReference. A dependent that still has another owner
//! loses the dead reference and lives, as with the real collector.

use super::resource::{Resource, ALL};
use super::status::Status;
use super::store::Store;
use serde_json::Value;

/// How a delete treats the object's dependents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// Delete them (recursively) once the owner is gone.
    Background,
    /// Keep them; strip their reference to the owner.
    Orphan,
}

impl Propagation {
    /// From DeleteOptions' `propagationPolicy` (body) or the query's.
    pub(crate) fn parse(policy: Option<&str>) -> Result<Propagation, Status> {
        match policy {
            None | Some("") | Some("Background") | Some("Foreground") => {
                Ok(Propagation::Background)
            }
            Some("Orphan") => Ok(Propagation::Orphan),
            Some(other) => Err(Status::bad_request(format!(
                "DeleteOptions.propagationPolicy: Unsupported value: \"{other}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
            ))),
        }
    }
}

/// Deletes one object, then collects its dependents as `policy` says.
/// Returns the deleted object.
pub(crate) fn delete(
    store: &mut Store,
    resource: Resource,
    namespace: &str,
    name: &str,
    policy: Propagation,
) -> Result<Value, Status> {
    let deleted = store.delete(resource, namespace, name)?;
    let mut gone = vec![deleted.clone()];
    while let Some(owner) = gone.pop() {
        let Some(uid) = owner.pointer("/metadata/uid").and_then(Value::as_str) else {
            continue;
        };
        for (dep_resource, dependent) in dependents(store, uid) {
            let (ns, dep_name) = super::store::key_of(&dependent);
            let remaining: Vec<Value> = refs(&dependent)
                .into_iter()
                .filter(|r| r["uid"].as_str() != Some(uid))
                .collect();
            if policy == Propagation::Background && !has_live_owner(store, &ns, &remaining) {
                gone.push(store.delete(dep_resource, &ns, &dep_name)?);
            } else {
                let mut changed = dependent.clone();
                let meta = changed["metadata"]
                    .as_object_mut()
                    .expect("stored objects have metadata");
                match remaining.is_empty() {
                    true => meta.remove("ownerReferences"),
                    false => meta.insert("ownerReferences".into(), remaining.into()),
                };
                store.replace(dep_resource, changed)?;
            }
        }
    }
    Ok(deleted)
}

fn refs(object: &Value) -> Vec<Value> {
    object
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Every object (of any resource) that names `uid` as an owner.
fn dependents(store: &Store, uid: &str) -> Vec<(Resource, Value)> {
    ALL.into_iter()
        .flat_map(|r| store.all(r).into_iter().map(move |o| (r, o)))
        .filter(|(_, o)| refs(o).iter().any(|r| r["uid"].as_str() == Some(uid)))
        .collect()
}

/// Whether any of `owners` still exists (an owner is in the dependent's
/// namespace or cluster-scoped, and must match by UID, not only by name).
fn has_live_owner(store: &Store, namespace: &str, owners: &[Value]) -> bool {
    owners.iter().any(|r| {
        let (Some(api_version), Some(kind), Some(name), Some(uid)) = (
            r["apiVersion"].as_str(),
            r["kind"].as_str(),
            r["name"].as_str(),
            r["uid"].as_str(),
        ) else {
            return false;
        };
        ALL.into_iter()
            .filter(|res| res.api_version() == api_version && res.kind() == kind)
            .any(|res| {
                let ns = if res.namespaced() { namespace } else { "" };
                store.get(res, ns, name).is_some_and(|o| {
                    o.pointer("/metadata/uid").and_then(Value::as_str) == Some(uid)
                })
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubeapi::objects::{statefulset, statefulset_pod};
    use serde_json::json;

    fn seeded() -> Store {
        let mut store = Store::new(100);
        store
            .create(Resource::StatefulSets, statefulset("ns", "db", 2).build())
            .unwrap();
        for i in 0..2 {
            store
                .create(Resource::Pods, statefulset_pod("ns", "db", i).build())
                .unwrap();
        }
        // A ConfigMap owned by the StatefulSet and by another, live object.
        let sts_uid =
            store.get(Resource::StatefulSets, "ns", "db").unwrap()["metadata"]["uid"].clone();
        store
            .create(
                Resource::ConfigMaps,
                json!({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "only-db", "namespace": "ns",
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": sts_uid}]}}),
            )
            .unwrap();
        store
            .create(
                Resource::StatefulSets,
                statefulset("ns", "other", 0).build(),
            )
            .unwrap();
        let other_uid =
            store.get(Resource::StatefulSets, "ns", "other").unwrap()["metadata"]["uid"].clone();
        store
            .create(
                Resource::ConfigMaps,
                json!({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "shared", "namespace": "ns",
                         "ownerReferences": [
                           {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": sts_uid},
                           {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "other", "uid": other_uid}]}}),
            )
            .unwrap();
        store
    }

    #[test]
    fn background_deletes_dependents_without_another_owner() {
        let mut store = seeded();
        delete(
            &mut store,
            Resource::StatefulSets,
            "ns",
            "db",
            Propagation::Background,
        )
        .unwrap();
        assert!(
            store.all(Resource::Pods).is_empty(),
            "the set's pods go with it"
        );
        assert!(store.get(Resource::ConfigMaps, "ns", "only-db").is_none());
        let shared = store.get(Resource::ConfigMaps, "ns", "shared").unwrap();
        assert_eq!(
            refs(shared).len(),
            1,
            "the dead reference is stripped: {shared}"
        );
        assert_eq!(refs(shared)[0]["name"], "other");
    }

    #[test]
    fn orphan_keeps_dependents_and_strips_the_reference() {
        let mut store = seeded();
        delete(
            &mut store,
            Resource::StatefulSets,
            "ns",
            "db",
            Propagation::Orphan,
        )
        .unwrap();
        let pods = store.all(Resource::Pods);
        assert_eq!(pods.len(), 2);
        assert!(pods
            .iter()
            .all(|p| p.pointer("/metadata/ownerReferences").is_none()));
        assert!(store.get(Resource::ConfigMaps, "ns", "only-db").is_some());
        assert_eq!(
            refs(store.get(Resource::ConfigMaps, "ns", "shared").unwrap()).len(),
            1
        );
    }

    #[test]
    fn policies_parse_as_the_server_names_them() {
        assert_eq!(Propagation::parse(None).unwrap(), Propagation::Background);
        assert_eq!(
            Propagation::parse(Some("Foreground")).unwrap(),
            Propagation::Background
        );
        assert_eq!(
            Propagation::parse(Some("Orphan")).unwrap(),
            Propagation::Orphan
        );
        let e = Propagation::parse(Some("orphan")).unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.message.contains("propagationPolicy"), "{}", e.message);
    }
}
