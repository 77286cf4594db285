//! A `Cluster` answered from a table, for in-process tests of the node: the
//! pods the API knows, namespace annotations, the node's ToR label, an
//! outage switch, and the events reported.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::core::PodFacts;

use super::{Cluster, Unreachable};

/// The label key the fake reports.
pub const TOR_LABEL: &str = "moor.io/tor";

#[derive(Default)]
pub struct FakeCluster {
    pods: Mutex<HashMap<(String, String), PodFacts>>,
    namespace_pools: Mutex<HashMap<String, String>>,
    tor: Mutex<Option<String>>,
    down: AtomicBool,
    events: Mutex<Vec<(String, String, String)>>,
}

impl FakeCluster {
    pub fn new() -> Self {
        Self::default()
    }

    /// The API knows `pod` (replacing an earlier one of the same name).
    pub fn put_pod(&self, pod: PodFacts) {
        let key = (pod.namespace.clone(), pod.name.clone());
        self.pods.lock().unwrap().insert(key, pod);
    }

    pub fn set_namespace_pool(&self, namespace: &str, pool: &str) {
        self.namespace_pools
            .lock()
            .unwrap()
            .insert(namespace.into(), pool.into());
    }

    pub fn set_tor(&self, tor: Option<&str>) {
        *self.tor.lock().unwrap() = tor.map(str::to_string);
    }

    /// While down, pod lookups fail as an unreachable API does.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// (pod, reason, message) of every event reported.
    pub fn events(&self) -> Vec<(String, String, String)> {
        self.events.lock().unwrap().clone()
    }
}

#[async_trait]
impl Cluster for FakeCluster {
    async fn pod(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Result<Option<PodFacts>, Unreachable> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Unreachable("connection refused (fake outage)".into()));
        }
        Ok(self
            .pods
            .lock()
            .unwrap()
            .get(&(namespace.to_string(), name.to_string()))
            .filter(|p| uid.is_empty() || p.uid == uid)
            .cloned())
    }

    fn namespace_pool(&self, namespace: &str) -> Option<String> {
        self.namespace_pools.lock().unwrap().get(namespace).cloned()
    }

    fn node_tor(&self) -> Option<String> {
        self.tor.lock().unwrap().clone()
    }

    fn tor_label(&self) -> &str {
        TOR_LABEL
    }

    fn pod_event(&self, pod: &PodFacts, reason: &str, message: &str) {
        self.events
            .lock()
            .unwrap()
            .push((pod.name.clone(), reason.into(), message.into()));
    }
}
