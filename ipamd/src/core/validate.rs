//! Validation of what operators ask for. Each error names the field, the bad
//! value and the fix; nothing is written when validation fails.

use moor_proto::fields::{self, FieldError};

use super::model::PodRef;
pub use super::validate_tor::{tor, tor_families};

pub use moor_proto::fields::MAX_POOL_SIZE;

// The field rules themselves live in moor_proto::fields, shared with the
// plugin and ipamctl; these name the fields as ipamd's messages do.

pub(super) fn text<T>(r: Result<T, FieldError>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

pub fn pool_name(value: &str) -> Result<(), String> {
    text(fields::pool_name("pool name", value))
}

/// A Kubernetes namespace: a DNS label.
pub fn namespace(value: &str) -> Result<(), String> {
    text(fields::namespace("namespace", value))
}

/// An app: a workload name, so a Kubernetes object name (DNS subdomain).
pub fn app(value: &str) -> Result<(), String> {
    text(fields::app("app", value))
}

/// The pod, the named pool and the network of an ADD. The pod identity is
/// checked when both parts are given, which is when moor keys a binding and
/// the app's pool on it; podman passes only a name (its container name,
/// which may hold capitals and '_'), and ipamd does not use it. An empty
/// pool means "the app's pool"; an empty network, a plugin that sends none.
pub fn add_input(pod: &PodRef, pool: &str, network: &str) -> Result<(), String> {
    if pod.is_known() {
        text(fields::namespace("pod namespace", &pod.namespace))?;
        text(fields::pod_name("pod name", &pod.name))?;
    }
    if !pool.is_empty() {
        text(fields::pool_name("pool", pool))?;
    }
    if !network.is_empty() {
        text(fields::network_name("network", network))?;
    }
    Ok(())
}

pub fn pool_size(size: u32) -> Result<u32, String> {
    text(fields::pool_size("size", size))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The field rules are moor_proto::fields'; here only that ipamd names
    /// its fields and applies each rule where it belongs.
    #[test]
    fn pool_and_add_fields_name_the_field() {
        let pod = |namespace: &str, name: &str| PodRef {
            namespace: namespace.into(),
            name: name.into(),
            uid: String::new(),
        };
        let bad = [
            (app("My_App"), "invalid app \"My_App\""),
            (app(""), "invalid app"),
            // Namespaces are DNS labels in Kubernetes: no dots.
            (namespace("a.b"), "invalid namespace"),
            (pool_name("my.pool"), "e.g. my-pool"),
            (pool_size(0).map(drop), "invalid size 0:"),
            (
                add_input(&pod("Shop", "web-0"), "", "n"),
                "invalid pod namespace",
            ),
            (
                add_input(&pod("shop", "Web_0"), "", "n"),
                "invalid pod name",
            ),
            (
                add_input(&pod("", ""), "Pool_1", "n"),
                "invalid pool \"Pool_1\"",
            ),
            (
                add_input(&pod("", ""), "", "a/b"),
                "invalid network \"a/b\"",
            ),
        ];
        for (got, want) in bad {
            let err = got.unwrap_err();
            assert!(err.contains(want), "want {want:?} in {err}");
        }
        app("mysql.v8").unwrap();
        namespace("kube-system").unwrap();
        pool_size(MAX_POOL_SIZE).unwrap();
        add_input(&pod("shop", "web.v2-0"), "web", "moor-e2e").unwrap();
        // podman: a container name and no namespace is no pod identity.
        add_input(&pod("", "My_Box"), "", "").unwrap();
    }
}
