//! A node whose ipamd reads the Kubernetes API ([`Options::kube`]): the
//! fake API server (moor-testkit's [`FakeApi`]) runs beside containerd and
//! holds this node's Node and the pods, made as kube-controller-manager
//! makes them; kubelet's part (a sandbox whose metadata is the pod's name,
//! namespace and uid) is [`CriNode::run_pod`].

use std::collections::BTreeSet;

use serde_json::Value;
use tonic::Status;

use moor_testkit::kubeapi::objects::{self, ObjectBuilder};
use moor_testkit::kubeapi::{ApiRequest, Resource};
use moor_testkit::FakeApi;

use super::{sandbox_config_in, CriNode, Options, Sandbox, POD_NAMESPACE, TOR};
use crate::cri::v1::PodSandboxConfig;
use crate::deploy::{cluster_role_grants, Grant};

/// The Node label ipamd reads its ToR from (its `--tor-label` default).
pub const NODE_TOR_LABEL: &str = "moor.io/tor";

/// How ipamd meets the API.
#[derive(Debug, Clone)]
pub struct Kube {
    /// The Node carries `moor.io/tor=`[`TOR`] from the start. ipamd never
    /// gets `--tor`: the label is all it has.
    pub label_node: bool,
    /// `ipamd --event-interval-seconds`; None: ipamd's default.
    pub event_interval_seconds: Option<u64>,
}

impl Default for Kube {
    fn default() -> Self {
        Kube {
            label_node: true,
            event_interval_seconds: None,
        }
    }
}

impl Options {
    /// A node with the API and these defaults otherwise.
    pub fn kube() -> Options {
        Options {
            kube: Some(Kube::default()),
            ..Options::default()
        }
    }
}

/// A sandbox config for `pod` (an object as the API holds it): its name,
/// namespace and uid, as kubelet copies them.
pub fn sandbox_config_of(pod: &Value) -> PodSandboxConfig {
    let m = |k: &str| {
        pod["metadata"][k]
            .as_str()
            .unwrap_or_else(|| panic!("pod without metadata.{k}: {pod}"))
    };
    sandbox_config_in(m("namespace"), m("name"), m("uid"))
}

impl CriNode {
    /// With [`Options::kube`]: the fake API with this node's Node (labelled
    /// with its ToR unless told otherwise) and the pods' namespace.
    pub(super) fn start_api(&mut self) {
        let Some(kube) = &self.opts.kube else { return };
        let api = FakeApi::start();
        let mut node = objects::node(&self.id);
        if kube.label_node {
            node = node.label(NODE_TOR_LABEL, TOR);
        }
        api.create(node);
        api.create(objects::namespace(POD_NAMESPACE));
        self.api = Some(api);
    }

    /// ipamd's flags for the API: its kubeconfig, and no `--tor`.
    pub(super) fn kube_args(&self, kube: &Kube) -> Vec<String> {
        let kubeconfig = self.api().write_kubeconfig(&self.dir);
        let mut args = vec!["--kubeconfig".to_string(), kubeconfig.display().to_string()];
        if let Some(s) = kube.event_interval_seconds {
            args.extend(["--event-interval-seconds".to_string(), s.to_string()]);
        }
        args
    }

    /// The fake API server ipamd watches; panics without [`Options::kube`].
    pub fn api(&self) -> &FakeApi {
        self.api
            .as_ref()
            .expect("this node has no Kubernetes API: Options::kube")
    }

    /// Creates `pod` in the API, bound to this node by the scheduler; the
    /// object as stored (with its uid).
    pub fn create_pod(&self, pod: ObjectBuilder) -> Value {
        self.api().create(pod.node(&self.id))
    }

    /// Deletes pod `namespace/name` from the API, as its controller does.
    pub fn delete_pod(&self, namespace: &str, name: &str) {
        self.api().delete(Resource::Pods, namespace, name);
    }

    /// Creates namespace `name`, with `moor.io/pool: POOL` when `pool` is
    /// given.
    pub fn create_namespace(&self, name: &str, pool: Option<&str>) {
        let mut ns = objects::namespace(name);
        if let Some(p) = pool {
            ns = ns.annotation("moor.io/pool", p);
        }
        self.api().create(ns);
    }

    /// Sets (or with None removes) a label of this node's Node.
    pub fn label_node(&self, key: &str, value: Option<&str>) {
        let id = self.id.clone();
        self.api()
            .modify(Resource::Nodes, "", &id, |n| match value {
                Some(v) => n["metadata"]["labels"][key] = v.into(),
                None => {
                    if let Some(l) = n["metadata"]["labels"].as_object_mut() {
                        l.remove(key);
                    }
                }
            });
    }

    /// RunPodSandbox for `pod` (an object from [`CriNode::create_pod`], or
    /// one the API does not know), as kubelet runs it.
    pub fn run_pod(&self, pod: &Value) -> Result<Sandbox, Status> {
        self.run_sandbox(sandbox_config_of(pod))
    }

    /// The last `n` requests the API got, for a failed test's output.
    pub fn api_requests_tail(&self, n: usize) -> String {
        let all = self.api().requests();
        let lines: Vec<String> = all[all.len().saturating_sub(n)..]
            .iter()
            .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
            .collect();
        format!(
            "---- the fake API's last requests ({} in all):\n{}\n----",
            all.len(),
            lines.join("\n")
        )
    }

    /// What each request ipamd sent so far needs of RBAC: the grant, or
    /// why the request maps to none.
    pub fn api_grants_needed(&self) -> Vec<(ApiRequest, Result<Grant, String>)> {
        self.api()
            .requests()
            .into_iter()
            .map(|r| {
                let uri = if r.query.is_empty() {
                    r.path.clone()
                } else {
                    format!("{}?{}", r.path, r.query)
                };
                let g = Grant::of_request(&r.method, &uri);
                (r, g)
            })
            .collect()
    }

    /// Asserts that deploy/'s ClusterRole grants every request ipamd sent
    /// to the API so far; returns the grants they used. Every test of a
    /// node with the API ends with it.
    pub fn assert_api_requests_granted(&self) -> BTreeSet<Grant> {
        let granted = cluster_role_grants();
        let mut used = BTreeSet::new();
        let mut refused = Vec::new();
        for (r, g) in self.api_grants_needed() {
            match g {
                Ok(g) if granted.contains(&g) => {
                    used.insert(g);
                }
                Ok(g) => refused.push(format!("{} {}?{} needs {g}", r.method, r.path, r.query)),
                Err(e) => refused.push(e),
            }
        }
        assert!(
            refused.is_empty(),
            "deploy/'s ClusterRole does not grant what ipamd asked the API for:\n{}\n(granted: {})",
            refused.join("\n"),
            granted
                .iter()
                .map(Grant::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        used
    }
}
