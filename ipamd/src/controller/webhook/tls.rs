//! The webhook's serving certificate: PEM files (a Secret mounted by the
//! Deployment), read at start, where a missing or bad file is a clear error,
//! and read again when they change on disk. cert-manager renews its
//! certificates into the same Secret and the kubelet swaps the mounted
//! files; without the reload the API server would reject the expired one
//! and, with failurePolicy Ignore, pods would quietly lose their ToR
//! affinity until someone restarted the controller.
//!
//! rustls with the ring provider, as ipamd's Kubernetes client uses.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

/// How often a handshake may look at the files' modification times (two
/// stats; the API server keeps its connections, so handshakes are rare).
const RECHECK: Duration = Duration::from_secs(2);

/// What identifies one version of the files on disk.
type Stamp = (Option<SystemTime>, Option<SystemTime>);

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (m(cert), m(key))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// Reads and checks a certificate chain and its key. Errors name the flag,
/// the file and the fix.
fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let read = |flag: &str, p: &Path| {
        std::fs::read(p).map_err(|e| {
            format!(
                "{flag} {}: {e}: make the webhook's certificate (docs/install-kubernetes.md, \"How scheduling keeps sticky pods on their ToR\")",
                p.display()
            )
        })
    };
    let cert_pem = read("--webhook-cert", cert)?;
    let key_pem = read("--webhook-key", key)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--webhook-cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "--webhook-cert {}: no PEM CERTIFICATE in it: give the serving certificate (tls.crt of the Secret), then its CA chain",
            cert.display()
        ));
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        format!(
            "--webhook-key {}: {e}: give the certificate's private key in PEM (tls.key of the Secret)",
            key.display()
        )
    })?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|e| {
        format!(
            "--webhook-key {} does not go with --webhook-cert {}: {e}",
            key.display(),
            cert.display()
        )
    })
}

/// The certificate in use, swapped when the files change and still load.
#[derive(Debug)]
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<(Arc<CertifiedKey>, Stamp, Instant)>,
}

impl Reloading {
    fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self.state.lock().unwrap();
        if state.2.elapsed() >= RECHECK {
            state.2 = Instant::now();
            let now = stamp(&self.cert, &self.key);
            if now != state.1 {
                match load(&self.cert, &self.key) {
                    Ok(k) => {
                        info!(cert = %self.cert.display(), "the webhook's certificate changed on disk: serving the new one");
                        *state = (Arc::new(k), now, Instant::now());
                    }
                    // Half-written (the key before the cert): the next
                    // check retries; the old one serves meanwhile.
                    Err(e) => {
                        warn!(error = %e, "the webhook's certificate changed on disk but does not load; still serving the previous one")
                    }
                }
            }
        }
        state.0.clone()
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A TLS acceptor serving `cert` and `key`, HTTP/1.1 only.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let first = load(cert, key)?;
    let resolver = Reloading {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        state: Mutex::new((Arc::new(first), stamp(cert, key), Instant::now())),
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
