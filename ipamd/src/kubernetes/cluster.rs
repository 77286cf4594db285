//! The controller's view of what runs in the cluster, for garbage
//! collection: every Pod (metadata only: namespace, name, uid) and every
//! Node (its `Ready` condition, which only the full object carries; the
//! rest is stripped before it is cached: a Node's status lists its images
//! and is most of its size). Like `workloads`, every replica keeps them
//! warm, leader or not, and a counter bumps on every watch event.

// Kubernetes' own v1 modules, renamed: a bare v1 module in ipamd means
// moor's gRPC types (which stay in api/).
use k8s_openapi::api::core::v1 as corev1;

use corev1::{Node, NodeCondition, NodeStatus, Pod};
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::Store;
use kube::runtime::watcher::Config;
use kube::{Api, Client};
use tokio::sync::watch;

use super::reflect::reflect;

/// A pod as garbage collection reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSeen {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// A Node's `Ready` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSeen {
    pub name: String,
    /// `Ready` is `True`.
    pub ready: bool,
    /// When `Ready` last changed (lastTransitionTime), if reported.
    pub since_unix: Option<u64>,
}

pub struct ClusterCache {
    pods: Store<PartialObjectMeta<Pod>>,
    nodes: Store<Node>,
    changes: watch::Receiver<u64>,
}

/// Keeps what identifies the pod (namespace, name, uid).
fn trim_pod(p: &mut PartialObjectMeta<Pod>) {
    let m = &mut p.metadata;
    m.annotations = None;
    m.labels = None;
    m.owner_references = None;
    m.finalizers = None;
}

/// Keeps the name and the `Ready` condition.
fn trim_node(n: &mut Node) {
    n.metadata.annotations = None;
    n.metadata.labels = None;
    n.spec = None;
    let ready: Option<Vec<NodeCondition>> = n.status.as_ref().and_then(|s| {
        s.conditions
            .as_ref()
            .map(|c| c.iter().filter(|c| c.type_ == "Ready").cloned().collect())
    });
    n.status = Some(NodeStatus {
        conditions: ready,
        ..Default::default()
    });
}

impl ClusterCache {
    /// Starts the watches; returns at once (the caches fill as the API
    /// answers).
    pub fn start(client: Client) -> Self {
        let (tx, changes) = watch::channel(0);
        Self {
            pods: reflect(
                Api::all(client.clone()),
                Config::default(),
                "pods",
                trim_pod,
                Some(tx.clone()),
            ),
            nodes: reflect(
                Api::all(client),
                Config::default(),
                "nodes",
                trim_node,
                Some(tx),
            ),
            changes,
        }
    }

    /// Waits until both first lists arrived (or `within` passed).
    pub async fn wait_ready(&self, within: std::time::Duration) -> bool {
        let all = async {
            let _ = self.pods.wait_until_ready().await;
            let _ = self.nodes.wait_until_ready().await;
        };
        tokio::time::timeout(within, all).await.is_ok()
    }

    pub fn pods(&self) -> Vec<PodSeen> {
        self.pods
            .state()
            .iter()
            .map(|p| PodSeen {
                namespace: p.metadata.namespace.clone().unwrap_or_default(),
                name: p.metadata.name.clone().unwrap_or_default(),
                uid: p.metadata.uid.clone().unwrap_or_default(),
            })
            .collect()
    }

    pub fn nodes(&self) -> Vec<NodeSeen> {
        self.nodes.state().iter().map(|n| node_seen(n)).collect()
    }

    /// A receiver whose value changes on every watch event.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }
}

fn node_seen(n: &Node) -> NodeSeen {
    let ready = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    NodeSeen {
        name: n.metadata.name.clone().unwrap_or_default(),
        ready: ready.is_some_and(|c| c.status == "True"),
        since_unix: ready
            .and_then(|c| c.last_transition_time.as_ref())
            .and_then(|t| u64::try_from(t.0.as_second()).ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_read_by_its_ready_condition() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "labels": {"a": "b"}},
            "spec": {"podCIDR": "10.0.0.0/24"},
            "status": {
                "conditions": [
                    {"type": "MemoryPressure", "status": "False"},
                    {"type": "Ready", "status": "Unknown",
                     "lastTransitionTime": "2024-01-02T03:04:05Z"},
                ],
                "images": [{"names": ["x"], "sizeBytes": 1}],
            },
        }))
        .unwrap();
        let mut trimmed = node.clone();
        trim_node(&mut trimmed);
        let conditions = trimmed.status.as_ref().unwrap().conditions.as_ref();
        assert_eq!(conditions.map(|c| c.len()), Some(1));
        assert!(trimmed.spec.is_none() && trimmed.metadata.labels.is_none());
        assert!(trimmed.status.as_ref().unwrap().images.is_none());
        for n in [&node, &trimmed] {
            assert_eq!(
                node_seen(n),
                NodeSeen {
                    name: "n1".into(),
                    ready: false,
                    since_unix: Some(1_704_164_645),
                }
            );
        }
        let fresh: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n2"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap();
        assert!(node_seen(&fresh).ready);
    }
}
