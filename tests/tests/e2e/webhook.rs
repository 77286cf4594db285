//! Issue 11's "Done when" 3: the admission webhook of two real `ipamd
//! --role controller` replicas (leader and standby) on one etcd and the
//! fake API server, called as the API server calls it: AdmissionReview v1
//! JSON over HTTPS on a kept-alive connection, a certificate made for the
//! test (a CA and a serving certificate, as caBundle and the Secret hold
//! them), and the returned JSON patch applied to the pod.
//!
//! ToRs t1, t2 and t3 (with segment t3-v300); pool `db` (shop/db) of 4 IPs
//! on t1 and t2; pool `edge` (shop/edge, allowing namespace `team`) on
//! segment t3-v300.
//!
//! - An unbound `db-0` gets `moor.io/tor In [t1, t2]` AND-ed into its
//!   existing term and spread constraints on the ToR label and hostname;
//!   once t1's IPs are taken, `In [t2]`.
//! - After `db-1` was bound on t2 (attached there, then released with its
//!   binding kept), a re-created `db-1` gets `In [t2]` only.
//! - Pool `edge` on segment t3-v300 maps to ToR t3, for a pod of its app
//!   and for a pod of namespace `team` whose annotation (read through the
//!   controller's namespaces cache) names it.
//! - A pod outside moor pools gets no patch.
//! - Garbage gets a 4xx, other paths 404, other methods 405, and the
//!   webhook answers as before afterwards (no panic).
//! - Both replicas answer alike: the standby serves too.
//!
//! Plus the flags' refusals.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use moor_e2e::bins::bins;
use moor_e2e::control_plane::ControlPlane;
use moor_e2e::scrape::{logged_addr, scrape, value};
use moor_e2e::webhook::{apply, bind_on, make_certs, review, Certs, Client, ServerName};
use moor_ipamd::core::Policy;
use moor_ipamd::ipam::{Ipam, PoolSpec};
use moor_testkit::cmd::free_port;
use moor_testkit::kubeapi::{objects, FakeApi, Resource};
use moor_testkit::{Ipamd, IpamdCommand, TempDir};
use serde_json::{json, Value};

const TOR: &str = "moor.io/tor";

struct Setup {
    cp: ControlPlane,
    certs: Certs,
}

impl Setup {
    fn new() -> Setup {
        let cp = ControlPlane::new("webhook");
        cp.api.create(objects::namespace("shop"));
        cp.api
            .create(objects::namespace("team").annotation("moor.io/pool", "edge"));
        let certs = make_certs(cp.dir.path());
        let s = Setup { cp, certs };
        s.with_ipam(|ipam| async move {
            for (i, t) in ["t1", "t2", "t3"].iter().enumerate() {
                let n = i + 1;
                let range = [(format!("10.{n}.0.10"), format!("10.{n}.0.13"))];
                ipam.add_tor(
                    t,
                    &format!("10.{n}.0.0/24"),
                    &format!("10.{n}.0.1"),
                    0,
                    &range,
                    "",
                )
                .await
                .unwrap();
            }
            let range = [("10.9.0.10".to_string(), "10.9.0.13".to_string())];
            ipam.add_tor("t3-v300", "10.9.0.0/24", "10.9.0.1", 300, &range, "t3")
                .await
                .unwrap();
            for (name, tors, allow) in [
                ("db", ["t1", "t2"].as_slice(), vec![]),
                ("edge", &["t3-v300"], vec!["team".to_string()]),
            ] {
                ipam.create_pool(
                    &PoolSpec {
                        name: name.into(),
                        namespace: "shop".into(),
                        app: name.into(),
                        size: 4,
                        tors: tors.iter().map(|t| t.to_string()).collect(),
                        policy: Policy::Auto,
                        allow_namespaces: allow,
                        ..Default::default()
                    },
                    0,
                )
                .await
                .unwrap();
            }
        });
        s
    }

    fn with_ipam<T, F: std::future::Future<Output = T>>(&self, f: impl FnOnce(Ipam) -> F) -> T {
        self.cp.with_ipam(f)
    }

    /// Pod shop/`name` (a StatefulSet's, by its name) attached on a node
    /// of `tor`; `release`: then DELed, its binding kept.
    fn attach(&self, tor: &str, name: &str, release: bool) {
        let (tor, name) = (tor.to_string(), name.to_string());
        self.with_ipam(|ipam| async move {
            bind_on(&ipam, "shop", &name, &tor, release).await.unwrap();
        });
    }

    fn controller(&self, node: &str, listen: SocketAddr) -> Ipamd {
        let listen = listen.to_string();
        let (cert, key) = (
            self.certs.cert.to_str().unwrap(),
            self.certs.key.to_str().unwrap(),
        );
        self.cp.controller(
            node,
            &[
                "--webhook-listen",
                &listen,
                "--webhook-cert",
                cert,
                "--webhook-key",
                key,
                "--log",
                "info,moor_ipamd::controller::webhook=debug",
            ],
        )
    }

    /// A client of the webhook at `addr`, once it accepts (within 10 s).
    fn client(&self, addr: SocketAddr, ipamd: &Ipamd) -> Client {
        let start = Instant::now();
        loop {
            match self
                .cp
                .rt
                .block_on(Client::connect(addr, &self.certs.ca_pem))
            {
                Ok(c) => return c,
                Err(e) if start.elapsed() > Duration::from_secs(10) => {
                    panic!(
                        "the webhook at {addr} does not answer: {e}\n{}",
                        ipamd.log_tail(30)
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

fn statefulset_pod(set: &str, ordinal: u32) -> Value {
    let mut pod = objects::statefulset_pod("shop", set, ordinal)
        .label("app", set)
        .build();
    // Its template's own rule, which ours must be AND-ed into.
    pod["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64", "arm64"]}]}]}}});
    // As the API server passes a pod to admission: no uid, status or
    // resourceVersion yet.
    pod.as_object_mut().unwrap().remove("status");
    pod["metadata"].as_object_mut().unwrap().remove("uid");
    pod
}

/// The ToR values of the pod's one nodeSelectorTerm, and the rest of it.
fn term(pod: &Value) -> (Vec<String>, Vec<Value>) {
    let terms = pod["spec"]["affinity"]["nodeAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        .as_array()
        .unwrap_or_else(|| panic!("no nodeSelectorTerms: {pod:#}"));
    assert_eq!(terms.len(), 1, "{pod:#}");
    let (ours, others): (Vec<Value>, Vec<Value>) = terms[0]["matchExpressions"]
        .as_array()
        .unwrap()
        .iter()
        .cloned()
        .partition(|e| e["key"] == TOR);
    assert_eq!(ours.len(), 1, "{pod:#}");
    assert_eq!(ours[0]["operator"], "In");
    (
        serde_json::from_value(ours[0]["values"].clone()).unwrap(),
        others,
    )
}

#[test]
fn the_webhook_steers_pods_to_the_tors_of_their_ip() {
    let s = Setup::new();
    let (addr_a, addr_b): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
    );
    let a = s.controller("wa", addr_a);
    let b = s.controller("wb", addr_b);
    let mut ca = s.client(addr_a, &a);
    let mut cb = s.client(addr_b, &b);
    let mut n = 0;
    let mut admit = |c: &mut Client, pod: &Value, namespace: &str| -> (Value, Value) {
        n += 1;
        let uid = format!("0c9a8d74-9cb7-44dd-b98e-{n:012}");
        let answer =
            s.cp.rt
                .block_on(c.review(&review(pod, namespace, &uid)))
                .unwrap_or_else(|e| panic!("{e}\n{}\n{}", a.log_tail(20), b.log_tail(20)));
        let patched = apply(pod, &answer, &uid).unwrap();
        (answer["response"].clone(), patched)
    };

    // An unbound pod of pool db: both ToRs have free IPs.
    let db0 = statefulset_pod("db", 0);
    for c in [&mut ca, &mut cb] {
        let (r, pod) = admit(c, &db0, "shop");
        let (tors, others) = term(&pod);
        assert_eq!(tors, ["t1", "t2"]);
        assert_eq!(others, term_rest(&db0), "the pod's own expression stays");
        let spread = pod["spec"]["topologySpreadConstraints"].as_array().unwrap();
        let keys: Vec<&str> = spread
            .iter()
            .map(|c| c["topologyKey"].as_str().unwrap())
            .collect();
        assert_eq!(keys, [TOR, "kubernetes.io/hostname"]);
        for c in spread {
            assert_eq!(c["maxSkew"], 1);
            assert_eq!(c["whenUnsatisfiable"], "ScheduleAnyway");
            assert_eq!(c["labelSelector"], json!({"matchLabels": {"app": "db"}}));
        }
        assert!(r.get("warnings").is_none(), "{r}");
        // Nothing else in the pod changed.
        let mut rest = pod.clone();
        rest["spec"]
            .as_object_mut()
            .unwrap()
            .remove("topologySpreadConstraints");
        rest["spec"]["affinity"] = db0["spec"]["affinity"].clone();
        assert_eq!(rest, db0);
    }

    // db-1 bound on t2, then re-created: t2 only.
    s.attach("t2", "db-1", true);
    let db1 = statefulset_pod("db", 1);
    for c in [&mut ca, &mut cb] {
        let (_, pod) = admit(c, &db1, "shop");
        assert_eq!(term(&pod).0, ["t2"]);
    }

    // t1's two IPs in use: an unbound pod goes to t2 only.
    s.attach("t1", "db-7", false);
    s.attach("t1", "db-8", false);
    let (_, pod) = admit(&mut ca, &db0, "shop");
    assert_eq!(term(&pod).0, ["t2"]);

    // A pool on a segment of t3: ToR t3, nothing to spread over; also for
    // a Deployment pod (generateName only) of namespace team, whose
    // annotation names pool edge.
    let edge = statefulset_pod("edge", 0);
    let (_, pod) = admit(&mut cb, &edge, "shop");
    assert_eq!(term(&pod).0, ["t3"]);
    assert!(pod["spec"].get("topologySpreadConstraints").is_none());
    let mut team = objects::deployment_pod("team", "api", "7d9f8c6b5").build();
    team["metadata"].as_object_mut().unwrap().remove("name");
    let (_, pod) = admit(&mut ca, &team, "team");
    assert_eq!(
        pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"],
        json!({"nodeSelectorTerms": [{"matchExpressions": [{"key": TOR, "operator": "In", "values": ["t3"]}]}]})
    );

    // Outside moor pools: allowed, no patch.
    let other = statefulset_pod("cache", 0);
    for c in [&mut ca, &mut cb] {
        let (r, pod) = admit(c, &other, "shop");
        assert_eq!(pod, other);
        assert!(
            r.get("patch").is_none() && r.get("warnings").is_none(),
            "{r}"
        );
    }

    // Garbage: a 4xx with the reason; nothing panics, the webhook goes on.
    let send = |c: &mut Client, method: &str, path: &str, body: &[u8]| {
        s.cp.rt
            .block_on(c.send(method, path, body.to_vec()))
            .unwrap()
    };
    let valid = serde_json::to_vec(&review(&db0, "shop", "u")).unwrap();
    let cases: [(&str, &str, &[u8], u16, &str); 6] = [
        ("POST", "/mutate-pods", b"", 400, "not an AdmissionReview"),
        ("POST", "/mutate-pods", b"\x00\xffgarbage{{", 400, "not an AdmissionReview"),
        ("POST", "/mutate-pods", br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{}}"#, 400, "admission.k8s.io/v1 only"),
        ("POST", "/mutate-pods", br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE","namespace":"shop","object":{"spec":7}}}"#, 400, "not a v1 Pod"),
        ("POST", "/validate", &valid, 404, "serves POST /mutate-pods"),
        ("GET", "/mutate-pods", b"", 405, "takes POST"),
    ];
    for (method, path, body, status, message) in cases {
        let (got, text) = send(&mut ca, method, path, body);
        let text = String::from_utf8_lossy(&text);
        assert_eq!(got, status, "{method} {path}: {text}");
        assert!(text.contains(message), "{method} {path}: {text}");
    }
    let huge = vec![b' '; 4 << 20];
    let mut fresh = s.client(addr_a, &a);
    let (got, _) = send(&mut fresh, "POST", "/mutate-pods", &huge);
    assert_eq!(got, 413);
    // A client that speaks no TLS, and one that hangs up mid-handshake.
    {
        use std::io::Write;
        let mut plain = std::net::TcpStream::connect(addr_a).unwrap();
        let _ = plain.write_all(b"POST /mutate-pods HTTP/1.1\r\nHost: x\r\n\r\n");
        let _ = std::net::TcpStream::connect(addr_a)
            .unwrap()
            .write_all(b"\x16\x03\x01");
    }
    let mut again = s.client(addr_a, &a);
    let (_, pod) = admit(&mut again, &db1, "shop");
    assert_eq!(term(&pod).0, ["t2"]);
    let (_, pod) = admit(&mut ca, &db1, "shop");
    assert_eq!(term(&pod).0, ["t2"], "the same connection still serves");
    let mut a = a;
    assert!(a.alive(), "{}", a.log_tail(30));

    // Issue 14: the controllers' metrics. Reviews timed by outcome, one
    // leader between the two, their Kubernetes caches whole.
    let (ma, mb) = (
        scrape(None, &logged_addr(&a.log)),
        scrape(None, &logged_addr(&b.log)),
    );
    let patched = r#"moor_webhook_request_duration_seconds_count{outcome="patched"}"#;
    assert!(
        value(&ma, patched) >= 1.0 && value(&mb, patched) >= 1.0,
        "{ma:?}"
    );
    let bad = r#"moor_webhook_request_duration_seconds_count{outcome="bad_request"}"#;
    assert!(value(&ma, bad) >= 1.0, "the bad bodies above: {ma:?}");
    assert_eq!(
        value(&ma, "moor_controller_leader") + value(&mb, "moor_controller_leader"),
        1.0,
        "one leader"
    );
    let caches: Vec<(&String, &f64)> = ma
        .iter()
        .filter(|(k, _)| k.starts_with("moor_kube_cache_ready{"))
        .collect();
    assert!(!caches.is_empty(), "no cache series: {ma:?}");
    assert!(caches.iter().all(|(_, v)| **v == 1.0), "{caches:?}");

    // Every request the controllers made is one deploy/'s RBAC grants them
    // (the namespaces cache's list and watch included).
    let granted = moor_e2e::deploy::Manifests::load()
        .unwrap()
        .role_grants("moor-controller")
        .unwrap();
    let requests = s.cp.api.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.resource == "namespaces" && r.verb == "watch"),
        "the controller watches namespaces"
    );
    for r in requests.iter().filter(|r| !r.resource.is_empty()) {
        let g = moor_e2e::deploy::Grant::new(&r.api_group, &r.resource, &r.verb);
        assert!(
            granted.contains(&g),
            "{} {} needs {g}, not granted",
            r.method,
            r.path
        );
    }
}

/// The expressions of the pod's own first term.
fn term_rest(pod: &Value) -> Vec<Value> {
    pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"][0]["matchExpressions"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn the_webhook_flags_refuse_what_cannot_work() {
    let dir = TempDir::new("webhook-refusals");
    let certs = make_certs(dir.path());
    let api = FakeApi::start();
    let kc = api.write_kubeconfig(dir.path());
    let store = format!("redb:{}", dir.path().join("s.redb").display());
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&bins().ipamd)
            .args(["--socket", dir.path().join("s").to_str().unwrap()])
            .args(["--kubeconfig", kc.to_str().unwrap(), "--store", &store])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let cert = certs.cert.to_str().unwrap();
    let key = certs.key.to_str().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let controller = ["--role", "controller", "--webhook-listen", &listen];
    let e = run(&[
        "--role",
        "node",
        "--tor",
        "t1",
        "--bridge",
        "br0",
        "--webhook-listen",
        &listen,
        "--webhook-cert",
        cert,
        "--webhook-key",
        key,
    ]);
    assert!(
        e.contains("--webhook-listen is for --role controller or both"),
        "{e}"
    );
    let e = run(&controller);
    assert!(
        e.contains("--webhook-listen needs --webhook-cert and --webhook-key"),
        "{e}"
    );
    let e = run(&[
        "--role",
        "controller",
        "--webhook-cert",
        cert,
        "--webhook-key",
        key,
    ]);
    assert!(e.contains("go with --webhook-listen"), "{e}");
    let missing = dir.path().join("nope.crt");
    let e = run(&[
        &controller[..],
        &[
            "--webhook-cert",
            missing.to_str().unwrap(),
            "--webhook-key",
            key,
        ],
    ]
    .concat());
    assert!(
        e.contains("--webhook-cert")
            && e.contains("nope.crt")
            && e.contains("make the webhook's certificate"),
        "{e}"
    );
    // The key as the certificate, the certificate as the key, another key.
    let e = run(&[
        &controller[..],
        &["--webhook-cert", key, "--webhook-key", key],
    ]
    .concat());
    assert!(e.contains("no PEM CERTIFICATE"), "{e}");
    let e = run(&[
        &controller[..],
        &["--webhook-cert", cert, "--webhook-key", cert],
    ]
    .concat());
    assert!(
        e.contains("--webhook-key") && e.contains("private key"),
        "{e}"
    );
    let other = TempDir::new("webhook-other-cert");
    let other = make_certs(other.path());
    let e = run(&[
        &controller[..],
        &[
            "--webhook-cert",
            cert,
            "--webhook-key",
            other.key.to_str().unwrap(),
        ],
    ]
    .concat());
    assert!(e.contains("does not go with --webhook-cert"), "{e}");
    let e = run(&["--role", "controller", "--webhook-listen", "nowhere:1"]);
    assert!(e.contains("--webhook-listen"), "{e}");
    let e = run(&[
        &controller[..],
        &[
            "--webhook-cert",
            cert,
            "--webhook-key",
            key,
            "--webhook-default-pool",
            "../x",
        ],
    ]
    .concat());
    assert!(e.contains("--webhook-default-pool"), "{e}");
    // A port in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let e = run(&[
        "--role",
        "controller",
        "--webhook-listen",
        &busy,
        "--webhook-cert",
        cert,
        "--webhook-key",
        key,
    ]);
    assert!(e.contains(&format!("--webhook-listen {busy}")), "{e}");
}

/// The certificate docs/install-kubernetes.md makes with
/// scripts/webhook-cert serves the webhook, checked as the API server
/// checks it (the Service's DNS name, the CA as caBundle), here on the
/// embedded store; a controller started before its certificate exists runs
/// its loops and serves the webhook once the files appear; and a
/// certificate swapped on disk (a renewal) is served without a restart.
#[test]
fn the_documented_certificate_serves_and_renews_in_place() {
    let dir = TempDir::new("webhook-openssl");
    let certs = dir.path().join("certs");
    let script = moor_e2e::deploy::repo_root().join("scripts/webhook-cert");
    let made = |days: &str| {
        let out = std::process::Command::new(&script)
            .args(["--out", certs.to_str().unwrap(), "--days", days])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            printed.contains("create secret tls moor-webhook-tls"),
            "{printed}"
        );
        assert!(
            printed.contains("mutatingwebhookconfiguration moor"),
            "{printed}"
        );
        std::fs::read_to_string(certs.join("ca.crt")).unwrap()
    };
    let api = FakeApi::start();
    api.create(objects::namespace("shop"));
    api.create(objects::namespace("moor-system"));
    let kc = api.write_kubeconfig(dir.path());
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let ipamd = IpamdCommand::new(
        &bins().ipamd,
        &dir.path().join("s"),
        &dir.path().join("log"),
    )
    .args(["--role", "controller", "--node", "c1"])
    .arg("--kubeconfig")
    .arg(&kc)
    .arg("--store")
    .arg(format!("redb:{}", dir.path().join("s.redb").display()))
    .args(["--webhook-listen", &listen.to_string()])
    .arg("--webhook-cert")
    .arg(certs.join("tls.crt"))
    .arg("--webhook-key")
    .arg(certs.join("tls.key"))
    .kill_with_thread()
    .spawn()
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let name = ServerName::try_from("moor-webhook.moor-system.svc").unwrap();
    let connect = |ca: &str| rt.block_on(Client::connect_as(listen, ca, name.clone()));

    // No Secret yet: the controller elects itself and runs its loops (its
    // Lease is written); the webhook refuses handshakes.
    let start = Instant::now();
    while api
        .get(Resource::Leases, "moor-system", "moor-controller")
        .is_none()
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "a controller without its webhook certificate must still run\n{}",
            ipamd.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ipamd.log_tail(50).contains("is not there yet"));
    let ca = made("365");
    let start = Instant::now();
    let mut client = loop {
        match connect(&ca) {
            Ok(c) => break c,
            Err(e) if start.elapsed() > Duration::from_secs(10) => {
                panic!("{e}\n{}", ipamd.log_tail(20))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let pod = statefulset_pod("db", 0);
    let answer = rt
        .block_on(client.review(&review(&pod, "shop", "u-1")))
        .unwrap();
    assert_eq!(
        apply(&pod, &answer, "u-1").unwrap(),
        pod,
        "no pool: no patch"
    );

    // A renewal (a new CA too): within the reload period (2 s) plus a
    // margin the new certificate is served, to new connections.
    let renewed = made("30");
    assert_ne!(renewed, ca);
    let start = Instant::now();
    while connect(&renewed).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(2 + 5),
            "the renewed certificate is not served\n{}",
            ipamd.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(connect(&ca).is_err(), "the old CA no longer verifies it");
    assert!(ipamd.log_tail(50).contains("serving the new one"));
}
