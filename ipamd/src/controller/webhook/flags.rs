//! The webhook's flags on `ipamd` (flattened into its arguments), checked:
//! for the controller only, and all of them or none.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{Bound, WebhookConfig};

#[derive(Debug, Clone, clap::Args)]
pub struct WebhookFlags {
    /// Controller: serve the admission webhook (HTTPS, POST /mutate-pods)
    /// on ADDR:PORT, on every replica; it adds a ToR node affinity to pods
    /// of moor's pools. Off when absent.
    #[arg(long, value_name = "ADDR:PORT")]
    pub webhook_listen: Option<SocketAddr>,
    /// Controller: the webhook's serving certificate (PEM, its chain after
    /// it); read again when the file changes.
    #[arg(long, value_name = "PATH")]
    pub webhook_cert: Option<PathBuf>,
    /// Controller: the private key (PEM) of --webhook-cert.
    #[arg(long, value_name = "PATH")]
    pub webhook_key: Option<PathBuf>,
    /// Controller: the conflist's `pool`, if it names one (the last default
    /// of a pod's pool on the nodes), so the webhook decides alike.
    #[arg(long, value_name = "POOL")]
    pub webhook_default_pool: Option<String>,
}

impl WebhookFlags {
    /// The webhook, its certificate loaded and its port bound, if the
    /// flags ask for one.
    pub async fn bind(&self, controller: bool, tor_label: &str) -> Result<Option<Bound>, String> {
        match self.config(controller, tor_label)? {
            Some(cfg) => cfg.bind().await.map(Some),
            None => Ok(None),
        }
    }

    /// The webhook to run, if any. `controller`: ipamd runs the controller
    /// role; `tor_label`: `--tor-label`.
    pub fn config(
        &self,
        controller: bool,
        tor_label: &str,
    ) -> Result<Option<WebhookConfig>, String> {
        let Some(listen) = self.webhook_listen else {
            let given = self.webhook_cert.is_some()
                || self.webhook_key.is_some()
                || self.webhook_default_pool.is_some();
            return match given {
                true => Err("--webhook-cert, --webhook-key and --webhook-default-pool go with --webhook-listen ADDR:PORT".into()),
                false => Ok(None),
            };
        };
        if !controller {
            return Err("--webhook-listen is for --role controller or both: the webhook is the controller's".into());
        }
        let (Some(cert), Some(key)) = (&self.webhook_cert, &self.webhook_key) else {
            return Err("--webhook-listen needs --webhook-cert and --webhook-key: the PEM certificate and key it serves HTTPS with (the API server calls webhooks over HTTPS only)".into());
        };
        if let Some(p) = &self.webhook_default_pool {
            moor_proto::fields::pool_name("--webhook-default-pool", p)
                .map_err(|e| e.to_string())?;
        }
        Ok(Some(WebhookConfig {
            listen,
            cert: cert.clone(),
            key: key.clone(),
            tor_label: tor_label.to_string(),
            default_pool: self.webhook_default_pool.clone(),
        }))
    }
}
