//! `ipamctl ip evict IP --delete-pod`: delete the pod that holds an IP
//! (Mogujie's "delete this instance by its IP"), through the Eviction API
//! so PodDisruptionBudgets are honoured, with the operator's own
//! Kubernetes credentials (`--kubeconfig`, else KUBECONFIG or
//! ~/.kube/config, else the pod's service account): they need `create` on
//! `pods/eviction` in the pod's namespace.
//!
//! ipamd says who holds the IP (GetIp); the eviction names that pod's uid,
//! so a pod re-created under the same name meanwhile is not touched. Once
//! the API accepted the eviction, the IP is marked as `ip evict` marks it:
//! its binding goes with the pod's DEL, which comes after the pod's
//! termination grace period, so the re-created pod gets another IP. A
//! refused eviction (a budget allows no disruption: 429) changes nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, EvictParams, Preconditions};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use moor_proto::v1::admin_client::AdminClient;
use moor_proto::v1::{EvictIpRequest, GetIpRequest, PodRef};
use serde::Serialize;
use tonic::transport::Channel;

use crate::client::ServerError;
use crate::output::{json, EvictView, Format};

/// Bound on the eviction request.
const EVICT_TIMEOUT: Duration = Duration::from_secs(30);

/// A checked `ip evict --delete-pod`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletePod {
    pub address: String,
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct DeletePodView {
    /// `namespace/name` of the evicted pod.
    evicted_pod: String,
    /// Its uid.
    evicted_uid: String,
    #[serde(flatten)]
    evict: EvictView,
}

/// A client for the operator's API server. Eviction refusals (429) are
/// answers, not transient failures: kube's own retries are off.
async fn kube_client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("--kubeconfig {}", path.display()))?
        }
        None => Config::infer().await.context(
            "no Kubernetes API to evict the pod through: pass --kubeconfig PATH, set KUBECONFIG, or run ipamctl in a pod with a service account",
        )?,
    };
    config.default_retry = false;
    Client::try_from(config).context("Kubernetes client")
}

/// Why the API refused, in words, with what to do.
fn refusal(pod: &str, namespace: &str, e: &kube::Error) -> String {
    let kube::Error::Api(s) = e else {
        return format!("evicting pod {pod}: {e}; it may not have happened: check with kubectl get pod -n {namespace}");
    };
    match s.code {
        429 => format!(
            "the eviction of pod {pod} was refused: its PodDisruptionBudget allows no disruption now ({}); nothing changed: retry once the budget allows one",
            s.message
        ),
        403 => format!(
            "not allowed to evict pod {pod} ({}): whoever runs ipamctl ip evict --delete-pod needs create on pods/eviction in namespace {namespace}; nothing changed",
            s.message
        ),
        404 => format!(
            "pod {pod} no longer exists in Kubernetes ({}); nothing changed: once its DEL has come, ipamctl ip evict drops the binding",
            s.message
        ),
        409 => format!(
            "pod {pod} is another pod now (re-created under the same name: {}); nothing changed",
            s.message
        ),
        _ => format!(
            "the eviction of pod {pod} failed: {} (HTTP {}); nothing changed",
            s.message, s.code
        ),
    }
}

async fn evict(client: Client, pod: &PodRef) -> Result<(), String> {
    let name = format!("{}/{}", pod.namespace, pod.name);
    let api: Api<Pod> = Api::namespaced(client, &pod.namespace);
    let params = EvictParams {
        delete_options: (!pod.uid.is_empty()).then(|| DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(pod.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        }),
        ..EvictParams::default()
    };
    match tokio::time::timeout(EVICT_TIMEOUT, api.evict(&pod.name, &params)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(refusal(&name, &pod.namespace, &e)),
        Err(_) => Err(format!(
            "the API server did not answer the eviction of pod {name} within {} s; it may not have happened: check with kubectl get pod -n {}",
            EVICT_TIMEOUT.as_secs(),
            pod.namespace
        )),
    }
}

/// Evicts the pod holding `req.address`, then marks the IP.
pub async fn delete_pod(
    admin: &mut AdminClient<Channel>,
    req: &DeletePod,
    format: Format,
) -> anyhow::Result<String> {
    let ip = admin
        .get_ip(GetIpRequest {
            address: req.address.clone(),
        })
        .await
        .map_err(ServerError)?
        .into_inner();
    let address = &req.address;
    let holder = ip
        .attachment
        .as_ref()
        .and_then(|a| a.pod.clone())
        .filter(|p| !p.namespace.is_empty() && !p.name.is_empty());
    let Some(pod) = holder else {
        match &ip.binding {
            Some(b) if !b.name.is_empty() => bail!(
                "no pod holds {address}: it is kept for pod {}/{}, which is not running; nothing to delete (ipamctl ip evict {address} drops the binding)",
                b.namespace,
                b.name
            ),
            _ if ip.attachment.is_some() => bail!(
                "{address} is held by a container whose pod is unknown (the runtime gave no pod name): nothing to evict through Kubernetes; ipamctl ip show {address} says where it runs"
            ),
            _ => bail!("no pod holds {address} (it is {}); nothing to delete", ip.state),
        }
    };
    let client = kube_client(req.kubeconfig.as_deref()).await?;
    evict(client, &pod).await.map_err(anyhow::Error::msg)?;
    let who = format!("{}/{}", pod.namespace, pod.name);
    let marked = admin
        .evict_ip(EvictIpRequest {
            address: address.clone(),
            force: false,
        })
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "pod {who} was evicted, but ipamd did not mark {address} to go with its DEL ({}): run ipamctl ip evict {address} now, or the re-created pod gets {address} again",
                ServerError(e)
            )
        })?
        .into_inner();
    let view = DeletePodView {
        evicted_pod: who.clone(),
        evicted_uid: pod.uid.clone(),
        evict: EvictView::from(&marked),
    };
    if format == Format::Json {
        return Ok(json(&view));
    }
    Ok(format!(
        "evicted pod {who} (it held {address}) through the Eviction API\n{}",
        crate::output::ip_evict(&marked, format)
    ))
}
