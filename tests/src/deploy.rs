//! deploy/, moor's Kubernetes packaging, read as Kubernetes types
//! (k8s-openapi): what the tests below hold the manifests and the
//! Containerfile to, and the ClusterRole's grants, which the e2e tests compare
//! with the requests ipamd sends to the fake API server
//! ([`cluster_role_grants`], [`Grant::of_request`]).

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

/// deploy/ of this checkout.
pub fn dir() -> PathBuf {
    repo_root().join("deploy")
}

/// The root of this checkout.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The objects of deploy/'s manifests, by kind.
#[derive(Debug, Default)]
pub struct Manifests {
    pub namespaces: Vec<Namespace>,
    pub service_accounts: Vec<ServiceAccount>,
    pub cluster_roles: Vec<ClusterRole>,
    pub cluster_role_bindings: Vec<ClusterRoleBinding>,
    pub config_maps: Vec<ConfigMap>,
    pub daemon_sets: Vec<DaemonSet>,
    pub roles: Vec<Role>,
    pub role_bindings: Vec<RoleBinding>,
    pub deployments: Vec<Deployment>,
    pub services: Vec<Service>,
    pub mutating_webhooks: Vec<MutatingWebhookConfiguration>,
}

impl Manifests {
    /// Every document of deploy/'s `*.yaml`, `*.yml` and `*.json` files: what
    /// `kubectl apply -f deploy/` reads.
    pub fn load() -> Result<Self, String> {
        Self::load_dir(&dir())
    }

    /// Like [`Manifests::load`], from another directory.
    pub fn load_dir(dir: &Path) -> Result<Self, String> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        files.retain(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
        });
        files.sort();
        let mut manifests = Manifests::default();
        for file in files {
            let text =
                std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let name = file.file_name().unwrap_or_default().to_string_lossy();
            manifests.add_yaml(&format!("deploy/{name}"), &text)?;
        }
        Ok(manifests)
    }

    /// Adds every document of one file's text; `origin` names the file in
    /// errors. A kind deploy/ is not expected to hold, a field its type does
    /// not have (a typo) and a value that does not parse are errors.
    pub fn add_yaml(&mut self, origin: &str, text: &str) -> Result<(), String> {
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(text).map_err(|e| format!("{origin}: {e}"))?;
        for (i, doc) in docs.into_iter().enumerate() {
            self.add(&format!("{origin} document {}", i + 1), doc)?;
        }
        Ok(())
    }

    fn add(&mut self, at: &str, doc: Value) -> Result<(), String> {
        let field = |name: &str| {
            doc.get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("{at}: no {name}"))
        };
        let (api_version, kind) = (field("apiVersion")?, field("kind")?);
        let name = doc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{at}: {kind} without metadata.name"))?;
        let at = format!("{at} ({kind} {name})");
        match (api_version.as_str(), kind.as_str()) {
            ("v1", "Namespace") => self.namespaces.push(typed(&at, &doc)?),
            ("v1", "ServiceAccount") => self.service_accounts.push(typed(&at, &doc)?),
            ("v1", "ConfigMap") => self.config_maps.push(typed(&at, &doc)?),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                self.cluster_roles.push(typed(&at, &doc)?)
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                self.cluster_role_bindings.push(typed(&at, &doc)?)
            }
            ("apps/v1", "DaemonSet") => self.daemon_sets.push(typed(&at, &doc)?),
            ("apps/v1", "Deployment") => self.deployments.push(typed(&at, &doc)?),
            ("v1", "Service") => self.services.push(typed(&at, &doc)?),
            ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
                self.mutating_webhooks.push(typed(&at, &doc)?)
            }
            ("rbac.authorization.k8s.io/v1", "Role") => self.roles.push(typed(&at, &doc)?),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                self.role_bindings.push(typed(&at, &doc)?)
            }
            _ => {
                return Err(format!(
                    "{at}: {api_version} {kind} is not a kind deploy/ holds (v1 Namespace, \
                     ServiceAccount, ConfigMap, Service; rbac.authorization.k8s.io/v1 \
                     ClusterRole, ClusterRoleBinding, Role, RoleBinding; apps/v1 DaemonSet, \
                     Deployment; admissionregistration.k8s.io/v1 \
                     MutatingWebhookConfiguration): add it to tests/src/deploy.rs with its \
                     checks"
                ))
            }
        }
        Ok(())
    }

    /// What the node agent's ClusterRole (`moor`) grants, one (group,
    /// resource, verb) each. A wildcard, `resourceNames` or
    /// `nonResourceURLs` is an error: the grants are compared one by one
    /// with what ipamd asks for.
    pub fn grants(&self) -> Result<BTreeSet<Grant>, String> {
        self.role_grants("moor")
    }

    /// What the ClusterRole and the Role named `name` grant together.
    pub fn role_grants(&self, name: &str) -> Result<BTreeSet<Grant>, String> {
        let mut grants = BTreeSet::new();
        let rules = self
            .cluster_roles
            .iter()
            .filter(|r| r.metadata.name.as_deref() == Some(name))
            .map(|r| ("ClusterRole", &r.rules))
            .chain(
                self.roles
                    .iter()
                    .filter(|r| r.metadata.name.as_deref() == Some(name))
                    .map(|r| ("Role", &r.rules)),
            );
        for (kind, role_rules) in rules {
            for (i, rule) in role_rules.iter().flatten().enumerate() {
                let at = format!("{kind} {name} rule {}", i + 1);
                add_rule(&at, rule, &mut grants)?;
            }
        }
        Ok(grants)
    }
}

fn add_rule(at: &str, rule: &PolicyRule, grants: &mut BTreeSet<Grant>) -> Result<(), String> {
    if rule.resource_names.is_some() || rule.non_resource_urls.is_some() {
        return Err(format!(
            "{at}: resourceNames/nonResourceURLs are not (group, resource, verb) grants"
        ));
    }
    for group in rule.api_groups.iter().flatten() {
        for resource in rule.resources.iter().flatten() {
            for verb in &rule.verbs {
                if [group, resource, verb].iter().any(|s| s.contains('*')) {
                    return Err(format!(
                        "{at}: wildcard in {group:?} {resource:?} {verb:?}: name what ipamd uses"
                    ));
                }
                grants.insert(Grant::new(group, resource, verb));
            }
        }
    }
    Ok(())
}

/// Deserializes `doc` as `T` and refuses what `T` would silently drop:
/// k8s-openapi's types skip fields they do not know, so a misspelled
/// `mountPropogation` would parse. Serializing the value back must give
/// every field and value of the document.
fn typed<T: DeserializeOwned + Serialize>(at: &str, doc: &Value) -> Result<T, String> {
    let object: T = serde_json::from_value(doc.clone()).map_err(|e| format!("{at}: {e}"))?;
    let back = serde_json::to_value(&object).map_err(|e| format!("{at}: {e}"))?;
    match lost(doc, &back, "") {
        Some(path) => Err(format!(
            "{at}: {path} is not a field of its type, or its value does not parse as one"
        )),
        None => Ok(object),
    }
}

/// The first path of `original` that `back` does not hold as it is there.
fn lost(original: &Value, back: &Value, path: &str) -> Option<String> {
    match (original, back) {
        (Value::Object(o), Value::Object(b)) => o.iter().find_map(|(k, v)| {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            match b.get(k) {
                Some(bv) => lost(v, bv, &p),
                None => Some(p),
            }
        }),
        (Value::Array(o), Value::Array(b)) if o.len() == b.len() => o
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, bv))| lost(v, bv, &format!("{path}[{i}]"))),
        _ if original == back => None,
        _ => Some(if path.is_empty() {
            "the document".into()
        } else {
            path.into()
        }),
    }
}

/// One permission of Kubernetes RBAC: `verb` on `resource` (with its
/// subresource, `pods/status`) of API group `api_group` ("" is the core
/// group).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Grant {
    pub api_group: String,
    pub resource: String,
    pub verb: String,
}

impl Grant {
    pub fn new(api_group: &str, resource: &str, verb: &str) -> Self {
        Grant {
            api_group: api_group.into(),
            resource: resource.into(),
            verb: verb.into(),
        }
    }

    /// The grant an API server's authorizer checks for a request, as its
    /// RequestInfo resolver derives it (k8s.io/apiserver
    /// pkg/endpoints/request/requestinfo.go): `/api/v1/...` is the core
    /// group, `/apis/GROUP/VERSION/...` a named one; `namespaces/NS/` before
    /// a resource is its namespace; GET is `get` with a name, `list`
    /// without, `watch` with `watch=true` (or the old `/watch/` prefix);
    /// POST `create`, PUT `update`, PATCH `patch`, DELETE `delete` or
    /// `deletecollection`. `uri` is the path with its query, if any.
    pub fn of_request(method: &str, uri: &str) -> Result<Grant, String> {
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        let bad = |why: &str| format!("{method} {uri}: {why}");
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, mut rest) = match parts.as_slice() {
            ["api", _version, rest @ ..] => ("", rest),
            ["apis", group, _version, rest @ ..] => (*group, rest),
            _ => {
                return Err(bad(
                    "not a resource path (/api/v1/... or /apis/GROUP/VERSION/...)",
                ))
            }
        };
        let mut watch = query
            .split('&')
            .any(|kv| matches!(kv, "watch=true" | "watch=1"));
        if rest.first() == Some(&"watch") {
            watch = true;
            rest = &rest[1..];
        }
        // namespaces/NS/RESOURCE...; but namespaces/NS itself, and its
        // status and finalize subresources, are the Namespace object.
        if rest.len() > 2 && rest[0] == "namespaces" && !matches!(rest[2], "status" | "finalize") {
            rest = &rest[2..];
        }
        let (resource, name) = match rest {
            [resource] => (resource.to_string(), None),
            [resource, name] => (resource.to_string(), Some(name)),
            [resource, name, sub] => (format!("{resource}/{sub}"), Some(name)),
            _ => return Err(bad("no resource in the path")),
        };
        if resource.is_empty() || name.is_some_and(|n| n.is_empty()) {
            return Err(bad("empty path segment"));
        }
        let verb = match (method.to_ascii_uppercase().as_str(), name.is_some()) {
            ("GET" | "HEAD", _) if watch => "watch",
            ("GET" | "HEAD", true) => "get",
            ("GET" | "HEAD", false) => "list",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", true) => "delete",
            ("DELETE", false) => "deletecollection",
            _ => return Err(bad("not a method the API server maps to a verb")),
        };
        Ok(Grant::new(group, &resource, verb))
    }
}

impl fmt::Display for Grant {
    /// `kubectl auth can-i` spelling: `pods get`, `jobs.batch get`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.api_group.is_empty() {
            write!(f, "{} {}", self.resource, self.verb)
        } else {
            write!(f, "{}.{} {}", self.resource, self.api_group, self.verb)
        }
    }
}

/// What deploy/'s ClusterRole lets ipamd do. The e2e tests check that ipamd
/// asked the fake API server for every one of these and nothing else.
/// Panics when deploy/ does not parse or grants more than plain
/// (group, resource, verb) triples (see [`Manifests::grants`]).
pub fn cluster_role_grants() -> BTreeSet<Grant> {
    let manifests = Manifests::load().unwrap_or_else(|e| panic!("deploy/: {e}"));
    manifests
        .grants()
        .unwrap_or_else(|e| panic!("deploy/: {e}"))
}

#[cfg(test)]
mod tests;
