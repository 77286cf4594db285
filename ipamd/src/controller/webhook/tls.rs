//! The webhook's serving certificate: PEM files (a Secret mounted by the
//! Deployment), read at start, where a bad file is a clear error, and read
//! again when they change on disk. Files that do not exist yet (the Secret
//! is made after the Deployment, by a script or cert-manager, and mounted
//! as optional) are not an error: the controller's loops must not wait for
//! the webhook, so handshakes fail (the API server then applies the
//! webhook's failurePolicy) until the files appear, checked as often as a
//! renewal. cert-manager renews its
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
    /// The certificate served (none until the files first exist), the
    /// files' stamp it was read at, and when the stamp was last looked at.
    state: Mutex<(Option<Arc<CertifiedKey>>, Stamp, Instant)>,
}

impl Reloading {
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        let mut state = self.state.lock().unwrap();
        if state.2.elapsed() >= RECHECK {
            state.2 = Instant::now();
            let now = stamp(&self.cert, &self.key);
            if now != state.1 {
                match load(&self.cert, &self.key) {
                    Ok(k) => {
                        info!(cert = %self.cert.display(), "the webhook's certificate changed on disk: serving the new one");
                        *state = (Some(Arc::new(k)), now, Instant::now());
                    }
                    Err(e) if state.0.is_none() => {
                        warn!(error = %e, "the webhook's certificate does not load yet; the webhook refuses handshakes meanwhile")
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
        self.current()
    }
}

/// A TLS acceptor serving `cert` and `key`, HTTP/1.1 only. Neither file
/// there yet: it waits for them (a warning); a file that is there but does
/// not load: an error.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let first = if !cert.exists() && !key.exists() {
        warn!(cert = %cert.display(), key = %key.display(), "the webhook's certificate is not there yet (its Secret not made?): the webhook refuses handshakes until it appears; the controller's loops run meanwhile");
        None
    } else {
        Some(Arc::new(load(cert, key)?))
    };
    let resolver = Reloading {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        state: Mutex::new((first, stamp(cert, key), Instant::now())),
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
