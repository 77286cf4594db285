//! The Kubernetes API, as the node agent reads it: this node's Pods, the
//! Namespaces (their `moor.io/pool` annotations) and this Node (its ToR
//! label), each a metadata-only watch kept in a local cache that the ADD path
//! reads without a request; Events on pods whose ADD failed. An edge like
//! the store and the datapath: `ApiCluster` talks to a real API server,
//! `fake::FakeCluster` answers from a table for in-process tests.
//!
//! Without an API (podman, plain containerd) ipamd has no `Cluster` and
//! reads workloads from pod names, as before.
//!
//! For the controller role: `lease` (one Lease, written with optimistic
//! concurrency, for leader election), `workloads` (watches of the workload
//! kinds that declare pools), `configmaps` (the pools' whitelist
//! ConfigMaps), `events` (Events on workloads and on the pods whose IPs
//! garbage collection releases), `cluster` (watches of every Pod and Node,
//! for garbage collection) and `namespaces` (shared with the node agent)
//! for the admission webhook.

mod api;
mod client;
pub mod cluster;
pub mod configmaps;
pub mod events;
pub mod fake;
pub mod lease;
mod namespaces;
mod reflect;
pub mod workloads;

use async_trait::async_trait;

use crate::core::PodFacts;

pub use api::{pod_facts, ApiCluster, ApiOptions};
pub use client::client;
pub use events::reason_for;
pub use namespaces::Namespaces;

/// The API could not answer (down, refused, too slow).
#[derive(Debug, thiserror::Error)]
#[error("the Kubernetes API did not answer: {0}")]
pub struct Unreachable(pub String);

#[async_trait]
pub trait Cluster: Send + Sync + 'static {
    /// The pod `namespace/name` whose uid is `uid` (empty: any): from the
    /// cache, or with one GET when the cache lacks it or holds another
    /// incarnation. `Ok(None)`: the API has no such pod.
    async fn pod(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Result<Option<PodFacts>, Unreachable>;
    /// The `moor.io/pool` annotation of a namespace, from the cache.
    fn namespace_pool(&self, namespace: &str) -> Option<String>;
    /// This node's ToR, from its label; None while the label is missing.
    fn node_tor(&self) -> Option<String>;
    /// The label key `node_tor` reads, for messages.
    fn tor_label(&self) -> &str;
    /// Reports a failed ADD as an Event on the pod. Never waits: events are
    /// aggregated and written by a task of their own.
    fn pod_event(&self, pod: &PodFacts, reason: &str, message: &str);
}
