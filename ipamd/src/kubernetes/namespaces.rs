//! Namespaces, metadata only, for their `moor.io/pool` annotation: a
//! reflector kept warm for as long as ipamd runs. The node agent reads it on
//! the ADD path, the controller's admission webhook on the review path;
//! neither asks the API per pod.

use k8s_openapi::api::core::v1 as corev1;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client};

use crate::core::POOL_ANNOTATION;

use super::api::reflect;

pub struct Namespaces(Store<PartialObjectMeta<corev1::Namespace>>);

impl Namespaces {
    /// Starts the watch; returns at once (the cache fills as the API
    /// answers).
    pub fn start(client: Client) -> Self {
        Self(reflect(
            Api::all(client),
            watcher::Config::default(),
            "namespaces",
            None,
        ))
    }

    /// Waits for the first list.
    pub async fn wait_until_ready(&self) {
        let _ = self.0.wait_until_ready().await;
    }

    /// The `moor.io/pool` annotation of `namespace`, from the cache.
    pub fn pool(&self, namespace: &str) -> Option<String> {
        let ns = self.0.get(&ObjectRef::new(namespace))?;
        ns.metadata
            .annotations
            .as_ref()?
            .get(POOL_ANNOTATION)
            .filter(|p| !p.is_empty())
            .cloned()
    }
}
