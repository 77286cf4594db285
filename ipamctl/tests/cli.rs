//! Drives the built `ipamctl` binary: bad input, an unreachable ipamd, and a
//! fake Admin server standing in for ipamd (the real one is not needed here).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use moor_proto::v1::admin_server::{Admin, AdminServer};
use moor_proto::v1::*;
use tonic::{Request, Response, Status};

fn ipamctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ipamctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("MOOR_SOCKET")
        .output()
        .expect("run ipamctl")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A fresh directory per test, so parallel tests never share a socket.
fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ipamctl-cli-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn bad_input_exits_2_names_the_flag_and_prints_nothing_on_stdout() {
    // Nothing listens here: the input must be refused before any connect.
    let socket = temp_dir("bad-input").join("ipamd.sock");
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &[
                "tor",
                "add",
                "r1",
                "--subnet",
                "10.1.0.5/24",
                "--gateway",
                "10.1.0.1",
            ],
            "--subnet",
            "use 10.1.0.0/24, not 10.1.0.5/24",
        ),
        (
            &[
                "tor",
                "add",
                "r1",
                "--subnet",
                "10.1.0.0/24",
                "--gateway",
                "10.2.0.1",
            ],
            "--gateway",
            "outside --subnet 10.1.0.0/24",
        ),
        (
            &[
                "tor",
                "add",
                "r1",
                "--subnet",
                "10.1.0.0/24",
                "--gateway",
                "10.1.0.1",
                "--vlan",
                "5000",
            ],
            "--vlan",
            "1-4094",
        ),
        (
            &[
                "tor",
                "add",
                "r1",
                "--subnet",
                "10.1.0.0/24",
                "--gateway",
                "10.1.0.1",
                "--range",
                "10.1.0.50-10.1.0.40",
            ],
            "--range",
            "10.1.0.40-10.1.0.50",
        ),
        (&["tor", "show", "Rack_1"], "NAME", "e.g. rack-1"),
        (
            &[
                "pool",
                "create",
                "web",
                "--namespace",
                "default",
                "--app",
                "web",
                "--size",
                "0",
            ],
            "--size",
            "1-65535",
        ),
        (
            &[
                "pool",
                "create",
                "web",
                "--namespace",
                "default",
                "--app",
                "web",
                "--policy",
                "keep",
            ],
            "--policy",
            "sticky",
        ),
        (
            &["pool", "resize", "web", "--size", "-5"],
            "--size",
            "1-65535",
        ),
        (&["ip", "release", "10.1.0.256"], "IP", "10.1.0.17"),
        (&["ip", "list", "--pool", "Web"], "--pool", "e.g. web"),
        // clap's own usage errors: also 2, also naming the flag.
        (
            &["tor", "add", "r1", "--subnet", "10.1.0.0/24"],
            "--gateway",
            "required",
        ),
        (&["-o", "yaml", "tor", "list"], "--output", "json"),
        (
            &["pool", "export", "web", "--format", "xml"],
            "--format",
            "csv",
        ),
    ];
    for (args, flag, fix) in cases {
        let out = ipamctl(&socket, args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(flag),
            "{args:?}: stderr does not name {flag}: {stderr}"
        );
        assert!(
            stderr.contains(fix),
            "{args:?}: stderr lacks {fix:?}: {stderr}"
        );
        assert!(
            out.stdout.is_empty(),
            "{args:?}: stdout: {}",
            text(&out.stdout)
        );
    }
}

#[test]
fn unreachable_socket_exits_1_and_names_the_socket() {
    let dir = temp_dir("unreachable");
    let missing = dir.join("missing.sock");
    let stale = dir.join("stale.sock");
    // Bound then closed: the file is left, nothing listens (a dead ipamd).
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());

    for (socket, why) in [(&missing, "no such socket"), (&stale, "connection refused")] {
        for args in [&["tor", "list"][..], &["-o", "json", "ip", "list"][..]] {
            let out = ipamctl(socket, args);
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
            assert!(stderr.starts_with("ipamctl: "), "{stderr}");
            assert!(stderr.contains(&socket.display().to_string()), "{stderr}");
            assert!(stderr.contains(why), "{stderr}");
            assert!(stderr.contains("--socket"), "{stderr}");
            assert!(out.stdout.is_empty(), "stdout: {}", text(&out.stdout));
        }
    }

    // MOOR_SOCKET is honoured when --socket is not given.
    let out = Command::new(env!("CARGO_BIN_EXE_ipamctl"))
        .args(["pool", "list"])
        .env("MOOR_SOCKET", &missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(&missing.display().to_string()));
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------
// A fake ipamd.
// ---------------------------------------------------------------------------

#[derive(Clone, Default)]
struct FakeAdmin {
    /// Every request received, in Debug form.
    seen: Arc<Mutex<Vec<String>>>,
}

impl FakeAdmin {
    fn saw(&self, r: &impl std::fmt::Debug) {
        self.seen.lock().unwrap().push(format!("{r:?}"));
    }
}

fn tor(name: &str) -> Tor {
    Tor {
        name: name.into(),
        subnet: "10.1.0.0/24".into(),
        gateway: "10.1.0.1".into(),
        vlan: 0,
        ranges: vec![IpRange {
            first: "10.1.0.10".into(),
            last: "10.1.0.99".into(),
        }],
        capacity: 90,
        carved: 30,
    }
}

fn pool(name: &str) -> Pool {
    Pool {
        name: name.into(),
        namespace: "db".into(),
        app: "mysql".into(),
        size: 30,
        policy: ReleasePolicy::Sticky.into(),
        tors: vec![PoolTor {
            tor: "rack-1".into(),
            total: 30,
            bound: 2,
            in_use: 5,
            free: 23,
        }],
    }
}

fn not_found(what: &str, name: &str) -> Status {
    Status::not_found(format!("{what} {name} not found"))
}

#[tonic::async_trait]
impl Admin for FakeAdmin {
    async fn add_tor(&self, r: Request<AddTorRequest>) -> Result<Response<Tor>, Status> {
        let r = r.into_inner();
        self.saw(&r);
        Ok(Response::new(Tor {
            name: r.name,
            subnet: r.subnet,
            gateway: r.gateway,
            vlan: r.vlan,
            ranges: r.ranges,
            capacity: 90,
            carved: 0,
        }))
    }
    async fn list_tors(
        &self,
        _: Request<ListTorsRequest>,
    ) -> Result<Response<ListTorsReply>, Status> {
        Ok(Response::new(ListTorsReply {
            tors: vec![tor("rack-2"), tor("rack-1")],
        }))
    }
    async fn get_tor(&self, r: Request<GetTorRequest>) -> Result<Response<Tor>, Status> {
        Err(not_found("tor", &r.into_inner().name))
    }
    async fn delete_tor(
        &self,
        r: Request<DeleteTorRequest>,
    ) -> Result<Response<DeleteTorReply>, Status> {
        Err(Status::failed_precondition(format!(
            "tor {} still has 30 IPs carved into pools (web); delete or shrink them first",
            r.into_inner().name
        )))
    }
    async fn create_pool(&self, r: Request<CreatePoolRequest>) -> Result<Response<Pool>, Status> {
        let r = r.into_inner();
        self.saw(&r);
        Ok(Response::new(pool(&r.name)))
    }
    async fn resize_pool(&self, r: Request<ResizePoolRequest>) -> Result<Response<Pool>, Status> {
        Ok(Response::new(pool(&r.into_inner().name)))
    }
    async fn list_pools(
        &self,
        _: Request<ListPoolsRequest>,
    ) -> Result<Response<ListPoolsReply>, Status> {
        Ok(Response::new(ListPoolsReply {
            pools: vec![pool("mysql")],
        }))
    }
    async fn get_pool(&self, r: Request<GetPoolRequest>) -> Result<Response<Pool>, Status> {
        let name = r.into_inner().name;
        if name == "mysql" {
            Ok(Response::new(pool(&name)))
        } else {
            Err(not_found("pool", &name))
        }
    }
    async fn delete_pool(
        &self,
        _: Request<DeletePoolRequest>,
    ) -> Result<Response<DeletePoolReply>, Status> {
        Ok(Response::new(DeletePoolReply {}))
    }
    async fn export_pool(
        &self,
        r: Request<ExportPoolRequest>,
    ) -> Result<Response<ExportPoolReply>, Status> {
        Ok(Response::new(ExportPoolReply {
            pool: r.into_inner().name,
            ips: vec!["10.1.0.10".into(), "10.1.0.11".into()],
        }))
    }
    async fn list_ips(&self, r: Request<ListIpsRequest>) -> Result<Response<ListIpsReply>, Status> {
        self.saw(r.get_ref());
        Ok(Response::new(ListIpsReply {
            ips: vec![Ip {
                address: "10.1.0.10".into(),
                pool: "mysql".into(),
                tor: "rack-1".into(),
                state: "bound".into(),
                binding: Some(PodRef {
                    namespace: "db".into(),
                    name: "mysql-0".into(),
                    uid: String::new(),
                }),
                attachment: None,
            }],
        }))
    }
    async fn get_ip(&self, r: Request<GetIpRequest>) -> Result<Response<Ip>, Status> {
        Err(Status::not_found(format!(
            "{} is in no pool",
            r.into_inner().address
        )))
    }
    async fn release_ip(
        &self,
        r: Request<ReleaseIpRequest>,
    ) -> Result<Response<ReleaseIpReply>, Status> {
        Ok(Response::new(ReleaseIpReply {
            ip: Some(Ip {
                address: r.into_inner().address,
                pool: "mysql".into(),
                tor: "rack-1".into(),
                state: "free".into(),
                binding: None,
                attachment: None,
            }),
            was_bound: true,
        }))
    }
    async fn list_bindings(
        &self,
        _: Request<ListBindingsRequest>,
    ) -> Result<Response<ListBindingsReply>, Status> {
        Ok(Response::new(ListBindingsReply { bindings: vec![] }))
    }
}

/// Serves `fake` on a unix socket in `dir` from a background thread that
/// lives as long as the test process.
fn serve(dir: &Path, fake: FakeAdmin) -> PathBuf {
    let socket = dir.join("ipamd.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::UnixListener::from_std(listener).unwrap();
            tonic::transport::Server::builder()
                .add_service(AdminServer::new(fake))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                .await
                .unwrap();
        });
    });
    socket
}

fn ok(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "stderr: {}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn talks_to_ipamd_over_the_socket() {
    let dir = temp_dir("fake");
    let fake = FakeAdmin::default();
    let socket = serve(&dir, fake.clone());

    // JSON lists are arrays, sorted.
    let out = ok(&ipamctl(&socket, &["-o", "json", "tor", "list"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["name"], "rack-1");
    assert_eq!(v[1]["name"], "rack-2");
    assert_eq!(v[0]["vlan"], serde_json::Value::Null);

    let table = ok(&ipamctl(&socket, &["tor", "list"]));
    assert!(
        table.starts_with("NAME    SUBNET       GATEWAY   VLAN  RANGES"),
        "{table}"
    );

    // The checked values reach ipamd.
    let out = ok(&ipamctl(
        &socket,
        &[
            "tor",
            "add",
            "rack-3",
            "--subnet",
            "10.3.0.0/24",
            "--gateway",
            "10.3.0.1",
            "--vlan",
            "30",
            "--range",
            "10.3.0.10-10.3.0.20",
        ],
    ));
    assert!(out.contains("VLAN:      30\n"), "{out}");
    ok(&ipamctl(
        &socket,
        &[
            "pool",
            "create",
            "web",
            "--namespace",
            "default",
            "--app",
            "web",
            "--tor",
            "rack-1",
            "--policy",
            "release",
        ],
    ));
    ok(&ipamctl(&socket, &["ip", "list", "--pool", "mysql"]));
    let seen = fake.seen.lock().unwrap().clone();
    assert!(
        seen[0].contains("vlan: 30") && seen[0].contains("first: \"10.3.0.10\""),
        "{seen:?}"
    );
    assert!(
        seen[1].contains("size: 0") && seen[1].contains("policy: Release"),
        "{seen:?}"
    );
    assert!(seen[2].contains("pool: \"mysql\""), "{seen:?}");

    let show = ok(&ipamctl(&socket, &["pool", "show", "mysql"]));
    assert!(show.contains("total   30     2      5       23"), "{show}");

    let csv = ok(&ipamctl(
        &socket,
        &["pool", "export", "mysql", "--format", "csv"],
    ));
    assert_eq!(csv, "ip,pool\n10.1.0.10,mysql\n10.1.0.11,mysql\n");
    let json = ok(&ipamctl(
        &socket,
        &["-o", "json", "pool", "export", "mysql"],
    ));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["ips"][1], "10.1.0.11");

    let released = ok(&ipamctl(
        &socket,
        &["-o", "json", "ip", "release", "10.1.0.10"],
    ));
    let v: serde_json::Value = serde_json::from_str(&released).unwrap();
    assert_eq!(v["was_bound"], true);

    assert_eq!(
        ok(&ipamctl(&socket, &["-o", "json", "binding", "list"])),
        "[]\n"
    );

    // ipamd's refusals: exit 1, its message as is, nothing on stdout.
    for (args, message) in [
        (&["pool", "show", "nosuch"][..], "pool nosuch not found"),
        (&["ip", "show", "10.9.9.9"][..], "10.9.9.9 is in no pool"),
        (
            &["tor", "delete", "rack-1"][..],
            "tor rack-1 still has 30 IPs carved into pools (web); delete or shrink them first",
        ),
    ] {
        let out = ipamctl(&socket, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(text(&out.stderr), format!("ipamctl: {message}\n"));
        assert!(out.stdout.is_empty(), "{args:?}: {}", text(&out.stdout));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
