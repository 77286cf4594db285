//! Which API server: `--kubeconfig` (or `KUBECONFIG`), else the in-cluster
//! service account when ipamd runs in a pod, else none.

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// A client for the API server `kubeconfig` names, or the in-cluster one;
/// `Ok(None)` when there is neither (ipamd then runs without the API).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Option<Client>, String> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?
        }
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => Config::incluster()
            .map_err(|e| format!("in-cluster Kubernetes config (service account): {e}"))?,
        None => return Ok(None),
    };
    Client::try_from(config)
        .map(Some)
        .map_err(|e| format!("Kubernetes client: {e}"))
}
