//! The binary against a fake ipamd serving the real `moor.v1.Cni` service on
//! a unix socket: what the plugin sends, and how it prints what comes back.
//! (End-to-end tests against the real ipamd live elsewhere.)

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::{container_id, moor, temp_dir};
use moor_proto::v1::cni_server::{Cni, CniServer};
use moor_proto::v1::*;
use serde_json::{json, Value};
use tonic::{Request, Response, Status};

#[derive(Debug, Clone)]
enum Seen {
    Add(AddRequest),
    Del(DelRequest),
    Check(CheckRequest),
    Gc(GcRequest),
}

#[derive(Clone, Default)]
struct Fake {
    seen: Arc<Mutex<Vec<Seen>>>,
    not_ready: Option<String>,
}

impl Fake {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

#[tonic::async_trait]
impl Cni for Fake {
    async fn add(&self, req: Request<AddRequest>) -> Result<Response<AddReply>, Status> {
        let req = req.into_inner();
        self.seen.lock().unwrap().push(Seen::Add(req.clone()));
        match req.pool.as_str() {
            "full" => {
                return Err(Status::resource_exhausted(
                    "pool full has no free IP on ToR tor-a (30 of 30 in use)",
                ))
            }
            "elsewhere" => {
                let mut s = Status::failed_precondition(
                    "pod db/mysql-0 is bound to 10.1.0.17 on ToR tor-a, but this node is on ToR tor-b",
                );
                s.metadata_mut()
                    .insert(moor_proto::CNI_CODE_KEY, "107".parse().unwrap());
                return Err(s);
            }
            _ => {}
        }
        Ok(Response::new(AddReply {
            interfaces: vec![
                Interface {
                    name: moor_proto::host_ifname(&req.key.as_ref().unwrap().container_id, "eth0"),
                    mac: "aa:bb:cc:00:11:22".into(),
                    mtu: 1500,
                    sandbox: String::new(),
                },
                Interface {
                    name: req.key.as_ref().unwrap().ifname.clone(),
                    mac: "0a:58:0a:01:00:11".into(),
                    mtu: 1500,
                    sandbox: req.netns.clone(),
                },
            ],
            address: "10.1.0.17/24".into(),
            gateway: "10.1.0.1".into(),
            interface_index: 1,
            routes: vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: "10.1.0.1".into(),
            }],
            pool: req.pool,
            tor: "tor-a".into(),
            sticky: true,
            ..AddReply::default()
        }))
    }

    async fn del(&self, req: Request<DelRequest>) -> Result<Response<DelReply>, Status> {
        let req = req.into_inner();
        self.seen.lock().unwrap().push(Seen::Del(req.clone()));
        match req.network.as_str() {
            "store-down" => return Err(Status::internal("store: etcd unavailable")),
            "gone" => return Err(Status::not_found("no attachment c1/eth0")),
            _ => {}
        }
        Ok(Response::new(DelReply {
            released: true,
            address: "10.1.0.17/24".into(),
            binding_kept: true,
        }))
    }

    async fn check(&self, req: Request<CheckRequest>) -> Result<Response<CheckReply>, Status> {
        let req = req.into_inner();
        self.seen.lock().unwrap().push(Seen::Check(req.clone()));
        if req.address != "10.1.0.17/24" {
            return Err(Status::not_found(format!(
                "attachment has 10.1.0.17/24, not {:?}",
                req.address
            )));
        }
        Ok(Response::new(CheckReply {}))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        Ok(Response::new(StatusReply {
            ready: self.not_ready.is_none(),
            reason: self.not_ready.clone().unwrap_or_default(),
            node: "n1".into(),
            tor: "tor-a".into(),
            free: 12,
        }))
    }

    async fn gc(&self, req: Request<GcRequest>) -> Result<Response<GcReply>, Status> {
        self.seen.lock().unwrap().push(Seen::Gc(req.into_inner()));
        Ok(Response::new(GcReply {
            released: vec!["10.1.0.99".into()],
        }))
    }
}

/// Serves `fake` on `<dir>/ipamd.sock` from a background thread. Plain
/// hyper-util HTTP/2, as the workspace's tonic has no router feature.
fn serve(dir: &Path, fake: Fake) -> PathBuf {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let sock = dir.join("ipamd.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::UnixListener::from_std(listener).unwrap();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let svc = TowerToHyperService::new(CniServer::new(fake.clone()));
                tokio::spawn(async move {
                    let _ = Builder::new(TokioExecutor::new())
                        .http2_only()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    sock
}

fn conf(version: &str, sock: &Path, extra: Value) -> String {
    let mut c = json!({"cniVersion": version, "name": "moor-test", "type": "moor", "socket": sock});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c.to_string()
}

fn attachment_env<'a>(cmd: &'a str, cid: &'a str, args: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", cid),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", "/var/run/netns/p1"),
        ("CNI_ARGS", args),
    ]
}

#[test]
fn add_prints_the_result_in_the_config_version() {
    let dir = temp_dir("fake-add");
    let fake = Fake::default();
    let sock = serve(&dir, fake.clone());
    let cid = container_id("fakeadd");
    let args =
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=db;K8S_POD_NAME=mysql-0;K8S_POD_UID=u-1;MOOR_POOL=mysql";
    for (version, ip_version, mtu) in [
        ("0.3.1", true, false),
        ("0.4.0", true, false),
        ("1.0.0", false, false),
        ("1.1.0", false, true),
    ] {
        let r = moor(
            &attachment_env("ADD", &cid, args),
            &conf(version, &sock, json!({"pool": "ignored"})),
        );
        assert_eq!(r.code, 0, "{version}: {} {}", r.stdout, r.stderr);
        let res = r.json();
        assert_eq!(res["cniVersion"], version);
        assert_eq!(res["ips"][0]["address"], "10.1.0.17/24");
        assert_eq!(res["ips"][0]["gateway"], "10.1.0.1");
        assert_eq!(res["ips"][0]["interface"], 1);
        assert_eq!(
            res["ips"][0].get("version").is_some(),
            ip_version,
            "{version}: {res}"
        );
        assert_eq!(
            res["interfaces"][1]["mtu"].is_u64(),
            mtu,
            "{version}: {res}"
        );
        assert_eq!(res["interfaces"][1]["sandbox"], "/var/run/netns/p1");
        assert!(res["interfaces"][0].get("sandbox").is_none());
        assert_eq!(
            res["routes"],
            json!([{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}])
        );
        assert_eq!(res["dns"], json!({}));
    }
    let Seen::Add(req) = &fake.seen()[0] else {
        panic!("{:?}", fake.seen())
    };
    let key = req.key.as_ref().unwrap();
    assert_eq!(
        (key.container_id.as_str(), key.ifname.as_str()),
        (cid.as_str(), "eth0")
    );
    let pod = req.pod.as_ref().unwrap();
    assert_eq!(
        (pod.namespace.as_str(), pod.name.as_str(), pod.uid.as_str()),
        ("db", "mysql-0", "u-1")
    );
    assert_eq!(req.netns, "/var/run/netns/p1");
    assert_eq!(req.pool, "mysql", "MOOR_POOL is the pool");
    assert_eq!(
        req.default_pool, "ignored",
        "the config's pool goes as the default"
    );
    assert_eq!(req.network, "moor-test");

    // Without MOOR_POOL only the config's pool is sent, as the default.
    moor(
        &attachment_env("ADD", &cid, ""),
        &conf("1.0.0", &sock, json!({"pool": "from-config"})),
    );
    let Some(Seen::Add(req)) = fake.seen().pop() else {
        panic!()
    };
    assert_eq!(
        (req.pool.as_str(), req.default_pool.as_str()),
        ("", "from-config")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn add_after_another_plugin_merges_into_prev_result() {
    let dir = temp_dir("fake-prev");
    let sock = serve(&dir, Fake::default());
    let cid = container_id("fakeprev");
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/p1"}],
        "ips": [{"address": "192.168.9.2/24", "interface": 0}],
        "dns": {"nameservers": ["192.168.9.1"]},
    });
    let r = moor(
        &attachment_env("ADD", &cid, ""),
        &conf("1.0.0", &sock, json!({"prevResult": prev})),
    );
    assert_eq!(r.code, 0, "{}", r.stdout);
    let res = r.json();
    assert_eq!(res["interfaces"].as_array().unwrap().len(), 3);
    assert_eq!(res["ips"][0]["address"], "192.168.9.2/24");
    assert_eq!(res["ips"][1]["address"], "10.1.0.17/24");
    assert_eq!(res["ips"][1]["interface"], 2);
    assert_eq!(res["dns"]["nameservers"][0], "192.168.9.1");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ipamd_refusals_keep_ipamd_s_words() {
    let dir = temp_dir("fake-refuse");
    let sock = serve(&dir, Fake::default());
    let cid = container_id("fakerefuse");
    let r = moor(
        &attachment_env("ADD", &cid, "MOOR_POOL=full"),
        &conf("1.0.0", &sock, json!({})),
    );
    assert_ne!(r.code, 0);
    let e = r.json();
    assert_eq!(e["code"], 110);
    assert_eq!(e["msg"], "moor: allocation refused");
    assert_eq!(
        e["details"],
        "pool full has no free IP on ToR tor-a (30 of 30 in use)"
    );

    let r = moor(
        &attachment_env("ADD", &cid, "MOOR_POOL=elsewhere"),
        &conf("1.0.0", &sock, json!({})),
    );
    let e = r.json();
    assert_eq!(e["code"], 107, "ipamd's moor-cni-code wins: {e}");
    assert!(e["details"].as_str().unwrap().contains("tor-b"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn del_goes_through_ipamd_and_passes_its_errors_on() {
    let dir = temp_dir("fake-del");
    let fake = Fake::default();
    let sock = serve(&dir, fake.clone());
    let cid = container_id("fakedel");
    let mut env = attachment_env("DEL", &cid, "K8S_POD_NAMESPACE=db;K8S_POD_NAME=mysql-0");
    env[3] = ("CNI_NETNS", "");
    let r = moor(&env, &conf("1.0.0", &sock, json!({})));
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(r.stdout.is_empty());
    let Seen::Del(req) = &fake.seen()[0] else {
        panic!()
    };
    assert_eq!(req.netns, "");
    assert_eq!(req.pod.as_ref().unwrap().name, "mysql-0");
    // Reachable ipamd: no pending record.
    assert!(!dir.join("ipamd.sock.pending").exists());

    // An error from ipamd itself fails the DEL, so the runtime retries it.
    let c = json!({"cniVersion": "1.0.0", "name": "store-down", "socket": sock}).to_string();
    let r = moor(&env, &c);
    assert_ne!(r.code, 0);
    assert_eq!(r.json()["code"], 112);
    assert!(!dir.join("ipamd.sock.pending").exists());

    // ...but "already gone" is success.
    let c = json!({"cniVersion": "1.0.0", "name": "gone", "socket": sock}).to_string();
    let r = moor(&env, &c);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(r.stdout.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_sends_the_address_from_prev_result() {
    let dir = temp_dir("fake-check");
    let fake = Fake::default();
    let sock = serve(&dir, fake.clone());
    let cid = container_id("fakecheck");
    let prev = |addr: &str| {
        json!({"prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "mrx"}, {"name": "eth0", "sandbox": "/var/run/netns/p1"}],
            "ips": [{"address": addr, "interface": 1}],
        }})
    };
    let r = moor(
        &attachment_env("CHECK", &cid, ""),
        &conf("1.0.0", &sock, prev("10.1.0.17/24")),
    );
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(r.stdout.is_empty());
    let r = moor(
        &attachment_env("CHECK", &cid, ""),
        &conf("1.0.0", &sock, prev("10.1.0.18/24")),
    );
    assert_eq!(r.json()["code"], 110);
    let Seen::Check(req) = &fake.seen()[1] else {
        panic!()
    };
    assert_eq!(req.address, "10.1.0.18/24");
    // CHECK without prevResult is an invalid config.
    let r = moor(
        &attachment_env("CHECK", &cid, ""),
        &conf("1.0.0", &sock, json!({})),
    );
    assert_eq!(r.json()["code"], 7);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn status_and_gc() {
    let dir = temp_dir("fake-status");
    let fake = Fake::default();
    let sock = serve(&dir, fake.clone());
    let r = moor(
        &[("CNI_COMMAND", "STATUS")],
        &conf("1.1.0", &sock, json!({})),
    );
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(r.stdout.is_empty());

    let valid = json!({"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]});
    let r = moor(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")],
        &conf("1.1.0", &sock, valid),
    );
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(r.stdout.is_empty());
    let Seen::Gc(req) = &fake.seen()[0] else {
        panic!()
    };
    assert_eq!(req.network, "moor-test");
    assert_eq!(req.valid.len(), 1);
    assert_eq!(req.valid[0].container_id, "c1");

    let dir2 = temp_dir("fake-notready");
    let sock2 = serve(
        &dir2,
        Fake {
            not_ready: Some("store unreachable: etcd 127.0.0.1:2379 refused".into()),
            ..Fake::default()
        },
    );
    let r = moor(
        &[("CNI_COMMAND", "STATUS")],
        &conf("1.1.0", &sock2, json!({})),
    );
    let e = r.json();
    assert_eq!(e["code"], 50);
    assert!(
        e["details"]
            .as_str()
            .unwrap()
            .contains("etcd 127.0.0.1:2379"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&dir2).unwrap();
}
