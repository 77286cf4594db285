//! The controller's admission webhook as the API server calls it: a
//! certificate made at test time (rcgen: a CA and a serving certificate
//! for 127.0.0.1 and localhost, as `caBundle` and the Secret would hold
//! them), an HTTPS client that keeps its HTTP/1.1 connection open as the
//! API server's webhook client does, AdmissionReview v1 bodies as the API
//! server sends them, and the returned JSON patch applied to the pod.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::{json, Value};
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;
pub use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// A CA and a serving certificate it signed, written to `dir`.
pub struct Certs {
    /// The CA in PEM: what the MutatingWebhookConfiguration's `caBundle`
    /// holds.
    pub ca_pem: String,
    /// `tls.crt` and `tls.key` of the Secret.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes a CA (`ca.crt`) and a certificate for 127.0.0.1 and localhost
/// signed by it (`tls.crt`, `tls.key`) in `dir`.
pub fn make_certs(dir: &Path) -> Certs {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "moor webhook test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("self-signed CA");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("serving key");
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("serving params");
    params
        .distinguished_name
        .push(DnType::CommonName, "moor-webhook");
    let cert = params
        .signed_by(&key, &issuer)
        .expect("signed serving cert");
    let certs = Certs {
        ca_pem: ca_cert.pem(),
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    };
    std::fs::write(dir.join("ca.crt"), &certs.ca_pem).unwrap();
    std::fs::write(&certs.cert, cert.pem()).unwrap();
    std::fs::write(&certs.key, key.serialize_pem()).unwrap();
    certs
}

/// One kept-alive HTTPS connection to the webhook.
pub struct Client {
    sender: SendRequest<Full<Bytes>>,
}

impl Client {
    /// Connects to `addr`, trusting only `ca_pem`, checking the name
    /// 127.0.0.1 against the certificate.
    pub async fn connect(addr: SocketAddr, ca_pem: &str) -> Result<Client, String> {
        Self::connect_as(addr, ca_pem, ServerName::IpAddress(addr.ip().into())).await
    }

    /// Connects to `addr` as to `name` (the Service's DNS name, as the API
    /// server checks it), trusting only `ca_pem`.
    pub async fn connect_as(
        addr: SocketAddr,
        ca_pem: &str,
        name: ServerName<'static>,
    ) -> Result<Client, String> {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots
                .add(c.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS to {addr}: {e}"))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP/1.1 to {addr}: {e}"))?;
        tokio::spawn(conn);
        Ok(Client { sender })
    }

    /// One request; the status and the body.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>), String> {
        self.sender
            .ready()
            .await
            .map_err(|e| format!("connection: {e}"))?;
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "moor-webhook.moor-system.svc")
            .header("content-type", "application/json")
            .header("accept", "application/json, */*")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{method} {path}: reading the body: {e}"))?
            .to_bytes();
        Ok((status, body.to_vec()))
    }

    /// POSTs a review to /mutate-pods; the response review, or the status
    /// and body of anything else.
    pub async fn review(&mut self, review: &Value) -> Result<Value, String> {
        let body = serde_json::to_vec(review).unwrap();
        let (status, body) = self.send("POST", "/mutate-pods", body).await?;
        if status != 200 {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
        }
        serde_json::from_slice(&body).map_err(|e| format!("the answer is not JSON: {e}"))
    }
}

/// The AdmissionReview v1 the API server sends for `operation` (CREATE) of
/// `pod` in `namespace`, as a controller's service account creates it.
pub fn review(pod: &Value, namespace: &str, uid: &str) -> Value {
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod["metadata"]["name"].as_str().unwrap_or(""),
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:statefulset-controller",
                "uid": "1b5e1e0e-0a7a-4f5e-9d7e-2b1d2f0c7a11",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system",
                           "system:authenticated"],
            },
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        }
    })
}

/// `pod` with the response's JSON patch applied (unchanged without one),
/// after checking the response answers `uid` and allows the pod.
pub fn apply(pod: &Value, answer: &Value, uid: &str) -> Result<Value, String> {
    let r = &answer["response"];
    if answer["apiVersion"] != "admission.k8s.io/v1" || answer["kind"] != "AdmissionReview" {
        return Err(format!("not an AdmissionReview v1: {answer}"));
    }
    if r["uid"] != uid || r["allowed"] != true {
        return Err(format!("not an allowing answer to {uid}: {r}"));
    }
    let Some(patch) = r.get("patch") else {
        return Ok(pod.clone());
    };
    if r["patchType"] != "JSONPatch" {
        return Err(format!("patchType {}", r["patchType"]));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch.as_str().ok_or("the patch is not a string")?)
        .map_err(|e| format!("the patch is not base64: {e}"))?;
    let ops: json_patch::Patch =
        serde_json::from_slice(&bytes).map_err(|e| format!("not a JSON patch: {e}"))?;
    let mut out = pod.clone();
    json_patch::patch(&mut out, &ops).map_err(|e| format!("the patch does not apply: {e}"))?;
    Ok(out)
}

/// Gives pod `namespace/name` an IP on `tor` through `ipam`, as its ADD on
/// a node of that ToR would (the pool from its name), then, with
/// `release`, DELs it: a StatefulSet-style name keeps its binding, which
/// is what the webhook reads. Returns the attachment's key.
pub async fn bind_on(
    ipam: &moor_ipamd::ipam::Ipam,
    namespace: &str,
    name: &str,
    tor: &str,
    release: bool,
) -> Result<moor_ipamd::core::AttachmentKey, String> {
    use moor_ipamd::core::{AttachmentKey, PodRef};
    use moor_ipamd::ipam::{AllocRequest, PoolChoice};
    let pod = PodRef {
        namespace: namespace.into(),
        name: name.into(),
        uid: String::new(),
    };
    let (choice, stable) = PoolChoice::by_name(&pod, None);
    let key = AttachmentKey {
        node: format!("node-{tor}"),
        container_id: format!("c-{name}"),
        ifname: "eth0".into(),
    };
    ipam.allocate(&AllocRequest {
        key: key.clone(),
        pod,
        choice,
        stable,
        netns: format!("/run/netns/c-{name}"),
        network: "moor".into(),
        tor: tor.into(),
        now_unix: 1,
    })
    .await
    .map_err(|e| format!("binding {namespace}/{name}: {e}"))?;
    if release {
        let r = ipam
            .release(&key, false)
            .await
            .map_err(|e| format!("releasing {namespace}/{name}: {e}"))?;
        if !r.is_some_and(|r| r.binding_kept) {
            return Err(format!("{namespace}/{name} did not keep its binding"));
        }
    }
    Ok(key)
}
