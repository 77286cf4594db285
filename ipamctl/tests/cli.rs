//! Drives the built `ipamctl` binary: bad input, an unreachable ipamd, and a
//! fake Admin server standing in for ipamd (the real one is not needed here).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moor_proto::v1::admin_server::{Admin, AdminServer};
use moor_proto::v1::*;
use moor_testkit::process::Reaped;
use moor_testkit::TempDir;
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

/// A fresh directory per test, so parallel tests never share a socket;
/// removed when the test ends.
fn temp_dir(test: &str) -> TempDir {
    TempDir::new(&format!("ipamctl-cli-{test}"))
}

#[test]
fn bad_input_exits_2_names_the_flag_and_prints_nothing_on_stdout() {
    // Nothing listens here: the input must be refused before any connect.
    let dir = temp_dir("bad-input");
    let socket = dir.join("ipamd.sock");
    // Each command line is split at spaces (no argument here has one).
    let cases: &[(&str, &str, &str)] = &[
        ("tor add r1 --subnet 10.1.0.5/24 --gateway 10.1.0.1", "--subnet", "use 10.1.0.0/24, not 10.1.0.5/24"),
        ("tor add r1 --subnet 10.1.0.0/24 --gateway 10.2.0.1", "--gateway", "outside --subnet 10.1.0.0/24"),
        ("tor add r1 --subnet 10.1.0.0/24 --gateway 10.1.0.1 --vlan 5000", "--vlan", "1-4094"),
        ("tor add r1 --subnet 10.1.0.0/24 --gateway 10.1.0.1 --range 10.1.0.50-10.1.0.40", "--range", "10.1.0.40-10.1.0.50"),
        ("tor show Rack_1", "NAME", "e.g. rack-1"),
        ("pool create web --namespace default --app web --size 0", "--size", "1-65535"),
        ("pool create web --namespace default --app web --policy keep", "--policy", "sticky"),
        ("pool resize web --size -5", "--size", "1-65535"),
        // An app is a Kubernetes object name (issue 9): refused here, not
        // by ipamd.
        ("pool create x --namespace default --app My_App", "--app", "e.g. my-app"),
        ("ip release 10.1.0.256", "IP", "10.1.0.17"),
        ("ip list --pool Web", "--pool", "e.g. web"),
        // clap's own usage errors: also 2, also naming the flag.
        ("tor add r1 --subnet 10.1.0.0/24", "--gateway", "required"),
        ("-o yaml tor list", "--output", "json"),
        ("pool export web --format xml", "--format", "csv"),
        ("ip evict 10.1.0.256", "IP", "10.1.0.17"),
        ("ip evict --force 10.1.0.17/24", "IP", "no /prefix"),
        ("ip evict", "<IP>", "required"),
        ("ip evict 10.1.0.17 --now", "--now", "unexpected"),
        ("pool export web --watch --format csv", "--format", "cannot be used with --watch"),
        ("-o json pool export web --format csv --watch", "--format", "--format json"),
        ("pool export Web_1 --watch", "NAME", "e.g. web-1"),
        ("node list node-1", "node-1", "unexpected"),
        ("node show", "show", "unrecognized subcommand"),
        // Bring your own IPs.
        ("pool create db --namespace shop --app db --ip 10.1.0.5/24", "--ip", "no /prefix"),
        ("pool create db --namespace shop --app db --ip 10.1.0.5 --ip 10.1.0.5", "--ip", "given twice"),
        ("pool create db --namespace shop --app db --size 3 --ip 10.1.0.5", "--size", "the IPs make the pool"),
        ("binding add db-0 10.1.0.5", "NS/POD", "shop/db-0"),
        ("binding add shop/Db_0 10.1.0.5", "NS/POD", "db-0"),
        ("binding add shop/db-0 10.1.0", "IP", "10.1.0.17"),
        // IPv6 and dual stack.
        ("tor add r1 --subnet fd00:1::/48 --gateway fd00:1::1", "--subnet", "give the ToR one /64 of it, e.g. fd00:1::/64"),
        ("tor add r1 --subnet 10.1.0.0/24 --gateway fd00:1::1 --subnet fd00:1::/64 --gateway 10.1.0.1", "--gateway", "give each --subnet its --gateway, in the same order"),
        ("tor add r1 --subnet 10.1.0.0/24 --gateway 10.1.0.1 --subnet fd00:1::/64", "--subnet", "has no --gateway"),
        ("tor add r1 --subnet 10.1.0.0/24 --gateway 10.1.0.1 --subnet 10.2.0.0/24 --gateway 10.2.0.1", "--subnet", "at most one subnet per family"),
        ("tor add r1 --subnet 10.1.0.0/24 --gateway 10.1.0.1 --range fd00:1::10-fd00:1::20", "--range", "no IPv6 --subnet is given"),
        ("tor add r1 --subnet 10.1.0.0/24 --gateway 10.1.0.1 --subnet fd00:1::/64 --gateway fd00:1::1 --range 10.1.0.10-fd00:1::20", "--range", "mixes IPv4 and IPv6"),
        ("tor add r1 --subnet 10.1.0.0/24 --gateway 10.1.0.1 --subnet fd00:1::/64 --gateway fd00:1::1 --range fd00:1::10-fd00:1::1f", "--range", "fewer than the 253 of --subnet 10.1.0.0/24"),
        ("pool create db --namespace shop --app db --family ipv5", "--family", "dual"),
        ("pool create db --namespace shop --app db --family dual --ip fd00:1::5", "--ip", "name the IPv4 address it pairs with"),
        ("ip show fd00:1::5/64", "IP", "fd00:1::17 (no /prefix)"),
    ];
    for (line, flag, fix) in cases {
        let args: Vec<&str> = line.split_whitespace().collect();
        let out = ipamctl(&socket, &args);
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
    /// WatchPool calls so far, per pool.
    watches: Arc<Mutex<HashMap<String, u32>>>,
    /// What Audit answers.
    findings: Arc<Mutex<Vec<AuditFinding>>>,
}

type Replies<T> = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

fn replies<T: Send + 'static>(items: Vec<Result<T, Status>>) -> Response<Replies<T>> {
    Response::new(Box::pin(tokio_stream::iter(items)))
}

/// What ipamd answers to the unary listings the streams replaced.
fn replaced() -> Status {
    Status::failed_precondition("this ipamd streams listings")
}

type ChangeStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<PoolChange, Status>> + Send>>;

fn pool_change(kind: pool_change::Kind, ips: &[&str], revision: u64) -> Result<PoolChange, Status> {
    Ok(PoolChange {
        kind: kind.into(),
        pool: "web".into(),
        ips: ips.iter().map(|s| s.to_string()).collect(),
        revision,
    })
}

/// What the fake's WatchPool does, per pool and call: a script that breaks
/// the stream and restarts "ipamd" in between, as a real outage would.
fn watch_script(pool: &str, call: u32) -> Result<ChangeStream, Status> {
    use pool_change::Kind::*;
    let script = |changes: Vec<Result<PoolChange, Status>>| -> Result<ChangeStream, Status> {
        Ok(Box::pin(tokio_stream::iter(changes)))
    };
    match (pool, call) {
        // A snapshot, two changes, then the stream breaks.
        ("web" | "web-json", 1) => script(vec![
            pool_change(Snapshot, &["10.1.0.11", "10.1.0.10"], 5),
            pool_change(Add, &["10.1.0.12"], 6),
            pool_change(Remove, &["10.1.0.10"], 7),
            Err(Status::internal("store lost")),
        ]),
        // ipamd is starting: its store is not open yet.
        ("web" | "web-json", 2) => Err(Status::unavailable("store not ready")),
        // Back: a new snapshot, one change, then the pool is deleted.
        ("web" | "web-json", _) => script(vec![
            pool_change(Snapshot, &["10.1.0.11", "10.1.0.12", "10.1.0.13"], 9),
            pool_change(Deleted, &[], 10),
        ]),
        // The stream ends; by the time ipamctl is back the pool is gone.
        ("gone", 1) => script(vec![pool_change(Snapshot, &["10.1.0.10"], 3)]),
        ("gone", _) => Err(Status::not_found(
            "pool gone does not exist (ipamctl pool list)",
        )),
        // An IP added every 20 ms, forever.
        ("endless", _) => {
            use tokio_stream::StreamExt;
            let first = tokio_stream::iter(vec![pool_change(Snapshot, &[], 1)]);
            let mut n = 0u64;
            let ticks = tokio_stream::wrappers::IntervalStream::new(tokio::time::interval(
                Duration::from_millis(20),
            ))
            .map(move |_| {
                n += 1;
                pool_change(Add, &[&format!("10.2.{}.{}", n / 250, n % 250 + 1)], n + 1)
            });
            Ok(Box::pin(first.chain(ticks)))
        }
        (other, _) => Err(Status::not_found(format!(
            "pool {other} does not exist (ipamctl pool list)"
        ))),
    }
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
        segment_of: String::new(),
        ..Default::default()
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
        allow_namespaces: vec![],
        ..Default::default()
    }
}

/// A dual-stack pod's IP: its IPv4 address and the IPv6 partner.
fn dual_ip() -> Ip {
    Ip {
        address: "10.1.0.10".into(),
        address6: "fd00:1::a".into(),
        pool: "dual".into(),
        tor: "rack-6".into(),
        state: "bound".into(),
        binding: Some(PodRef {
            namespace: "shop".into(),
            name: "db-0".into(),
            uid: String::new(),
        }),
        ..Default::default()
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
            segment_of: r.segment_of,
            capacity6: if r.subnet6.is_empty() { 0 } else { u32::MAX },
            subnet6: r.subnet6,
            gateway6: r.gateway6,
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
        Err(replaced())
    }
    type StreamPoolsStream = Replies<ListPoolsReply>;
    async fn stream_pools(
        &self,
        _: Request<ListPoolsRequest>,
    ) -> Result<Response<Replies<ListPoolsReply>>, Status> {
        Ok(replies(vec![Ok(ListPoolsReply {
            pools: vec![pool("mysql")],
        })]))
    }
    async fn get_pool(&self, r: Request<GetPoolRequest>) -> Result<Response<Pool>, Status> {
        let name = r.into_inner().name;
        if name == "mysql" {
            Ok(Response::new(pool(&name)))
        } else if name == "dual" {
            Ok(Response::new(Pool {
                family: "dual".into(),
                ..pool(&name)
            }))
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
        let pool = r.into_inner().name;
        let ips6 = if pool == "dual" {
            vec!["fd00:1::a".into(), "fd00:1::b".into()]
        } else {
            vec![]
        };
        Ok(Response::new(ExportPoolReply {
            pool,
            ips: vec!["10.1.0.10".into(), "10.1.0.11".into()],
            ips6,
        }))
    }
    async fn list_ips(&self, _: Request<ListIpsRequest>) -> Result<Response<ListIpsReply>, Status> {
        Err(replaced())
    }
    type StreamIpsStream = Replies<ListIpsReply>;
    async fn stream_ips(
        &self,
        r: Request<ListIpsRequest>,
    ) -> Result<Response<Replies<ListIpsReply>>, Status> {
        self.saw(r.get_ref());
        let bound = Ip {
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
            quarantine: None,
            ..Default::default()
        };
        let free = |address: &str| Ip {
            address: address.into(),
            state: "free".into(),
            binding: None,
            ..bound.clone()
        };
        Ok(replies(match r.into_inner().pool.as_str() {
            // Two messages, then ipamd fails part way.
            "broken" => vec![
                Ok(ListIpsReply {
                    ips: vec![bound.clone(), free("10.1.0.11")],
                }),
                Ok(ListIpsReply {
                    ips: vec![free("10.1.0.12")],
                }),
                Err(Status::unavailable(
                    "the store compacted revision 7 while this listing read it: run the listing again",
                )),
            ],
            // Two messages.
            "two" => vec![
                Ok(ListIpsReply {
                    ips: vec![bound.clone(), free("10.1.0.11")],
                }),
                Ok(ListIpsReply {
                    ips: vec![free("10.1.0.12")],
                }),
            ],
            "dual" => vec![Ok(ListIpsReply {
                ips: vec![
                    dual_ip(),
                    Ip {
                        address: "10.1.0.11".into(),
                        address6: "fd00:1::b".into(),
                        state: "free".into(),
                        binding: None,
                        ..dual_ip()
                    },
                ],
            })],
            _ => vec![Ok(ListIpsReply { ips: vec![bound] })],
        }))
    }
    async fn get_ip(&self, r: Request<GetIpRequest>) -> Result<Response<Ip>, Status> {
        let address = r.into_inner().address;
        self.saw(&address);
        // ipamd finds a dual-stack pod by either address.
        if address == "10.1.0.10" || address == "fd00:1::a" {
            return Ok(Response::new(dual_ip()));
        }
        Err(Status::not_found(format!("{address} is in no pool")))
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
                quarantine: None,
                ..Default::default()
            }),
            was_bound: true,
        }))
    }
    async fn list_bindings(
        &self,
        _: Request<ListBindingsRequest>,
    ) -> Result<Response<ListBindingsReply>, Status> {
        Err(replaced())
    }
    type StreamBindingsStream = Replies<ListBindingsReply>;
    async fn stream_bindings(
        &self,
        r: Request<ListBindingsRequest>,
    ) -> Result<Response<Replies<ListBindingsReply>>, Status> {
        if r.get_ref().pool == "old" {
            // What an ipamd without the method answers.
            return Err(Status::unimplemented(""));
        }
        Ok(replies(vec![]))
    }
    async fn add_binding(
        &self,
        r: Request<AddBindingRequest>,
    ) -> Result<Response<Binding>, Status> {
        let r = r.into_inner();
        self.saw(&r);
        Ok(Response::new(Binding {
            pod: r.pod,
            pool: "db".into(),
            address: r.address,
            tor: "rack-1".into(),
            attached: false,
            ..Default::default()
        }))
    }
    async fn evict_ip(&self, r: Request<EvictIpRequest>) -> Result<Response<EvictIpReply>, Status> {
        let r = r.into_inner();
        self.saw(&r);
        let pod = PodRef {
            namespace: "db".into(),
            name: "mysql-0".into(),
            uid: String::new(),
        };
        let holder = Attachment {
            container_id: "c0ffee".into(),
            ifname: "eth0".into(),
            node: "node-b".into(),
            pod: Some(pod.clone()),
            state: "ready".into(),
            ..Default::default()
        };
        if r.force {
            return Err(Status::failed_precondition(format!(
                "{} is held by pod db/mysql-0 (container c0ffee on node node-b) and node node-b \
                 is alive: delete the pod (kubectl delete pod -n db mysql-0) or run the evict on \
                 that node",
                r.address
            )));
        }
        Ok(Response::new(EvictIpReply {
            ip: Some(Ip {
                address: r.address.clone(),
                pool: "mysql".into(),
                tor: "rack-1".into(),
                state: "in-use".into(),
                binding: Some(pod),
                attachment: Some(holder.clone()),
                quarantine: None,
                ..Default::default()
            }),
            released: false,
            pending: true,
            holder: Some(holder),
            message: format!(
                "{} is held by pod db/mysql-0 (container c0ffee on node node-b); its binding \
                 goes when that pod is deleted",
                r.address
            ),
        }))
    }
    async fn list_nodes(
        &self,
        _: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesReply>, Status> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let node = |name: &str, alive: bool, heartbeat: u64| Node {
            name: name.into(),
            tor: "rack-1".into(),
            mode: "physical".into(),
            version: "0.1.0".into(),
            alive,
            started_unix: now - 600,
            heartbeat_unix: heartbeat,
        };
        Ok(Response::new(ListNodesReply {
            nodes: vec![
                node("node-b", false, now - 90),
                node("node-a", true, now - 3),
            ],
        }))
    }
    async fn audit(&self, _: Request<AuditRequest>) -> Result<Response<AuditReply>, Status> {
        Ok(Response::new(AuditReply {
            schema_version: 1,
            schema_recorded: true,
            schema_known: 1,
            records: 42,
            revision: 7,
            findings: self.findings.lock().unwrap().clone(),
        }))
    }
    // Backup and restore are tested against a real ipamd (tests/tests/e2e/backup.rs).
    type BackupStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<BackupChunk, Status>> + Send + 'static>,
    >;
    async fn backup(
        &self,
        _: Request<BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        Err(Status::unimplemented("the fake has no store"))
    }
    async fn restore(
        &self,
        _: Request<tonic::Streaming<RestoreChunk>>,
    ) -> Result<Response<RestoreReply>, Status> {
        Err(Status::unimplemented("the fake has no store"))
    }
    type WatchPoolStream = ChangeStream;
    async fn watch_pool(
        &self,
        r: Request<WatchPoolRequest>,
    ) -> Result<Response<ChangeStream>, Status> {
        let name = r.into_inner().name;
        let call = {
            let mut w = self.watches.lock().unwrap();
            let n = w.entry(name.clone()).or_default();
            *n += 1;
            *n
        };
        watch_script(&name, call).map(Response::new)
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
        table.starts_with("NAME    TOR     SUBNET       GATEWAY   VLAN  RANGES"),
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
    ok(&ipamctl(
        &socket,
        &[
            "pool",
            "create",
            "db",
            "--namespace",
            "shop",
            "--app",
            "db",
            "--ip",
            "10.1.0.6",
            "--ip",
            "10.1.0.5",
        ],
    ));
    let bound = ok(&ipamctl(
        &socket,
        &["binding", "add", "shop/db-0", "10.1.0.6"],
    ));
    assert!(
        bound.contains("shop/db-0") && bound.contains("10.1.0.6"),
        "{bound}"
    );
    let seen = fake.seen.lock().unwrap().clone();
    assert!(
        seen[3].contains(r#"ips: ["10.1.0.6", "10.1.0.5"]"#) && seen[3].contains("size: 0"),
        "the IPs in the order given: {seen:?}"
    );
    assert!(
        seen[4].contains(r#"namespace: "shop", name: "db-0""#)
            && seen[4].contains(r#"address: "10.1.0.6""#),
        "{seen:?}"
    );
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

    // A listing in several messages is one list.
    let two = ok(&ipamctl(
        &socket,
        &["-o", "json", "ip", "list", "--pool", "two"],
    ));
    let v: serde_json::Value = serde_json::from_str(&two).unwrap();
    let addresses: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|ip| ip["address"].as_str().unwrap())
        .collect();
    assert_eq!(addresses, ["10.1.0.10", "10.1.0.11", "10.1.0.12"]);
    let table = ok(&ipamctl(&socket, &["ip", "list", "--pool", "two"]));
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(
        table
            .lines()
            .nth(3)
            .unwrap()
            .starts_with("10.1.0.12  mysql  rack-1  free"),
        "{table}"
    );

    // A listing that fails part way: what came is printed, the JSON is
    // left open (no script takes it for the whole list), exit 1, the error
    // on stderr.
    let out = ipamctl(&socket, &["-o", "json", "ip", "list", "--pool", "broken"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "ipamctl: the store compacted revision 7 while this listing read it: run the listing again\n"
    );
    let partial = text(&out.stdout);
    assert!(partial.contains("10.1.0.12"), "{partial}");
    assert!(
        serde_json::from_str::<serde_json::Value>(&partial).is_err(),
        "{partial}"
    );

    // An ipamd older than this ipamctl, without the stream.
    let out = ipamctl(&socket, &["binding", "list", "--pool", "old"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "ipamctl: this ipamd is older than ipamctl: it cannot stream `binding list`; use the ipamctl of ipamd's release\n"
    );
    assert!(out.stdout.is_empty());

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

#[test]
fn dual_stack_requests_and_replies() {
    let dir = temp_dir("dual");
    let fake = FakeAdmin::default();
    let socket = serve(&dir, fake.clone());

    // tor add: IPv6 given first; IPv4 goes in `subnet`, IPv6 in `subnet6`.
    let show = ok(&ipamctl(
        &socket,
        &[
            "tor",
            "add",
            "rack-6",
            "--subnet",
            "fd00:1::/64",
            "--gateway",
            "fd00:1::1",
            "--subnet",
            "10.6.0.0/24",
            "--gateway",
            "10.6.0.1",
            "--range",
            "10.6.0.10-10.6.0.99",
            "--range",
            "fd00:1::10-fd00:1::ffff",
        ],
    ));
    assert!(
        show.contains("Subnet:     10.6.0.0/24\nGateway:    10.6.0.1\nSubnet6:    fd00:1::/64\nGateway6:   fd00:1::1\n"),
        "{show}"
    );
    assert!(show.contains("Capacity6:  4294967295\n"), "{show}");
    let v: serde_json::Value = serde_json::from_str(&ok(&ipamctl(
        &socket,
        &[
            "-o",
            "json",
            "tor",
            "add",
            "rack-7",
            "--subnet",
            "fd00:7::/64",
            "--gateway",
            "fd00:7::1",
        ],
    )))
    .unwrap();
    assert_eq!(
        (&v["subnet"], &v["subnet6"]),
        (&"fd00:7::/64".into(), &serde_json::Value::Null),
        "{v}"
    );

    // pool create --family, and an IPv6-only pool's own IPs.
    for args in [
        &[
            "pool",
            "create",
            "db",
            "--namespace",
            "shop",
            "--app",
            "db",
            "--family",
            "dual",
        ][..],
        &[
            "pool",
            "create",
            "web",
            "--namespace",
            "shop",
            "--app",
            "web",
        ][..],
        &[
            "pool",
            "create",
            "v6",
            "--namespace",
            "shop",
            "--app",
            "v6",
            "--family",
            "ipv6",
            "--ip",
            "fd00:1::21",
            "--ip",
            "FD00:1::20",
        ][..],
    ] {
        ok(&ipamctl(&socket, args));
    }
    let seen = fake.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 5, "{seen:?}");
    for want in [
        r#"name: "rack-6", subnet: "10.6.0.0/24", gateway: "10.6.0.1""#,
        r#"subnet6: "fd00:1::/64", gateway6: "fd00:1::1""#,
        r#"ranges: [IpRange { first: "10.6.0.10", last: "10.6.0.99" }, IpRange { first: "fd00:1::10", last: "fd00:1::ffff" }]"#,
    ] {
        assert!(seen[0].contains(want), "{want} in {}", seen[0]);
    }
    assert!(
        seen[1].contains(r#"subnet: "fd00:7::/64", gateway: "fd00:7::1""#)
            && seen[1].contains(r#"subnet6: """#),
        "an IPv6-only segment: {}",
        seen[1]
    );
    assert!(seen[2].contains(r#"family: "dual""#), "{}", seen[2]);
    assert!(
        seen[3].contains(r#"family: """#),
        "absent = every family: {}",
        seen[3]
    );
    assert!(
        seen[4].contains(r#"ips: ["fd00:1::21", "fd00:1::20"], family: "ipv6""#),
        "{}",
        seen[4]
    );

    // pool show/list: the family.
    let show = ok(&ipamctl(&socket, &["pool", "show", "dual"]));
    assert!(show.contains("Family:     dual\n"), "{show}");
    let v: serde_json::Value = serde_json::from_str(&ok(&ipamctl(
        &socket,
        &["-o", "json", "pool", "show", "dual"],
    )))
    .unwrap();
    assert_eq!(v["family"], "dual");
    let list = ok(&ipamctl(&socket, &["pool", "list"]));
    assert!(
        list.starts_with("NAME   NAMESPACE  APP    SIZE  POLICY  FAMILY  TORS    FREE\n"),
        "{list}"
    );

    // pool export: both families, in each format.
    assert_eq!(
        ok(&ipamctl(&socket, &["pool", "export", "dual"])),
        "10.1.0.10\n10.1.0.11\nfd00:1::a\nfd00:1::b\n"
    );
    assert_eq!(
        ok(&ipamctl(
            &socket,
            &["pool", "export", "dual", "--format", "csv"]
        )),
        "ip,pool,ip6\n10.1.0.10,dual,fd00:1::a\n10.1.0.11,dual,fd00:1::b\n"
    );
    let v: serde_json::Value = serde_json::from_str(&ok(&ipamctl(
        &socket,
        &["-o", "json", "pool", "export", "dual"],
    )))
    .unwrap();
    assert_eq!(
        v,
        serde_json::json!({"pool": "dual", "ips": ["10.1.0.10", "10.1.0.11"], "ips6": ["fd00:1::a", "fd00:1::b"]})
    );

    // ip list/show: the IPv6 partner.
    let table = ok(&ipamctl(&socket, &["ip", "list", "--pool", "dual"]));
    assert_eq!(
        table,
        "IP                   POOL  TOR     STATE  POD        NODE  CONTAINER\n\
         10.1.0.10,fd00:1::a  dual  rack-6  bound  shop/db-0  -     -\n\
         10.1.0.11,fd00:1::b  dual  rack-6  free   -          -     -\n"
    );
    let v: serde_json::Value = serde_json::from_str(&ok(&ipamctl(
        &socket,
        &["-o", "json", "ip", "list", "--pool", "dual"],
    )))
    .unwrap();
    assert_eq!(
        (&v[0]["address6"], &v[1]["address6"]),
        (&"fd00:1::a".into(), &"fd00:1::b".into())
    );
    // A single-family pool's IPs: no partner.
    let v: serde_json::Value = serde_json::from_str(&ok(&ipamctl(
        &socket,
        &["-o", "json", "ip", "list", "--pool", "mysql"],
    )))
    .unwrap();
    assert_eq!(v[0]["address6"], serde_json::Value::Null, "{v}");
    // Either address finds the pod.
    for address in ["fd00:1::a", "10.1.0.10"] {
        let show = ok(&ipamctl(&socket, &["ip", "show", address]));
        assert!(
            show.starts_with("Address:     10.1.0.10\nAddress6:    fd00:1::a\n"),
            "{show}"
        );
        let v: serde_json::Value = serde_json::from_str(&ok(&ipamctl(
            &socket,
            &["-o", "json", "ip", "show", address],
        )))
        .unwrap();
        assert_eq!(v["address6"], "fd00:1::a");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn audit_exits_0_when_clean_and_1_with_findings_on_stdout() {
    let dir = temp_dir("audit");
    let fake = FakeAdmin::default();
    let socket = serve(&dir, fake.clone());
    assert_eq!(
        ok(&ipamctl(&socket, &["audit"])),
        "schema version 1\nclean: 42 records checked at store revision 7\n"
    );
    fake.findings.lock().unwrap().push(AuditFinding {
        key: "free/web/rack-1".into(),
        problem: "says 4 free of 4; the pool and its leases say 3 free of 4".into(),
        fix: "report a bug".into(),
    });
    let out = ipamctl(&socket, &["audit"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "schema version 1\n1 finding in 42 records at store revision 7:\n\
         free/web/rack-1: says 4 free of 4; the pool and its leases say 3 free of 4\n  \
         fix: report a bug\n"
    );
    let out = ipamctl(&socket, &["-o", "json", "audit"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["clean"], false, "{v}");
    assert_eq!(v["findings"][0]["key"], "free/web/rack-1", "{v}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn evict_and_node_list() {
    let dir = temp_dir("evict");
    let fake = FakeAdmin::default();
    let socket = serve(&dir, fake.clone());

    // Accepted, only marked: exit 0, ipamd's message first, then the IP.
    let out = ok(&ipamctl(&socket, &["ip", "evict", "10.1.0.17"]));
    let (first, rest) = out.split_once('\n').unwrap();
    assert!(
        first.starts_with("10.1.0.17 is held by pod db/mysql-0 (container c0ffee on node node-b)"),
        "{out}"
    );
    assert!(rest.starts_with("Address:"), "{out}");
    assert!(rest.contains("  Node:"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&ok(&ipamctl(
        &socket,
        &["-o", "json", "ip", "evict", "10.1.0.17"],
    )))
    .unwrap();
    assert_eq!(v["pending"], true, "{v}");
    assert_eq!(v["released"], false, "{v}");
    assert_eq!(v["holder"]["node"], "node-b", "{v}");
    assert_eq!(v["ip"]["address"], "10.1.0.17", "{v}");
    assert!(v["message"].as_str().unwrap().contains("db/mysql-0"), "{v}");

    // Refused (--force while the holder's node is alive): exit 1, the
    // message as is, nothing on stdout.
    let out = ipamctl(&socket, &["ip", "evict", "--force", "10.1.0.17"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("ipamctl: 10.1.0.17 is held by pod db/mysql-0"),
        "{stderr}"
    );
    assert!(stderr.contains("node node-b is alive"), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let seen = fake.seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|s| s.contains("force: true") && s.contains("10.1.0.17")),
        "{seen:?}"
    );

    let table = ok(&ipamctl(&socket, &["node", "list"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0],
        "NAME    TOR     MODE      VERSION  ALIVE  STARTED  HEARTBEAT"
    );
    assert!(
        lines[1].starts_with("node-a  rack-1  physical  0.1.0    yes    10m ago  "),
        "{table}"
    );
    assert!(lines[1].ends_with("s ago"), "{table}");
    assert!(
        lines[2].starts_with("node-b  rack-1  physical  0.1.0    no     10m ago  "),
        "{table}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&ok(&ipamctl(&socket, &["-o", "json", "node", "list"]))).unwrap();
    assert_eq!(v[0]["name"], "node-a");
    assert_eq!(v[0]["alive"], true);
    assert!(
        v[0]["heartbeat_unix"].as_u64().unwrap() > 1_700_000_000,
        "{v}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn watch_prints_the_feed_and_resumes_after_breaks() {
    let dir = temp_dir("watch");
    let socket = serve(&dir, FakeAdmin::default());

    // Breaks twice (the stream, then the reconnect), resumes with a new
    // snapshot, ends with the pool.
    let start = Instant::now();
    let out = ipamctl(&socket, &["pool", "export", "web", "--watch"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        text(&out.stdout),
        "= 2\n+ 10.1.0.10\n+ 10.1.0.11\n+ 10.1.0.12\n- 10.1.0.10\n\
         = 3\n+ 10.1.0.11\n+ 10.1.0.12\n+ 10.1.0.13\n! deleted\n"
    );
    let notes: Vec<&str> = stderr.lines().collect();
    assert_eq!(notes.len(), 2, "one note per reconnect: {stderr}");
    assert!(
        notes[0].starts_with("ipamctl: watch of pool web: store lost; reconnecting in 200ms"),
        "{stderr}"
    );
    assert!(
        notes[1].starts_with("ipamctl: watch of pool web: store not ready; reconnecting in 400ms"),
        "{stderr}"
    );
    assert!(start.elapsed() >= Duration::from_millis(600), "backed off");

    // JSON lines, the same feed.
    let out = ipamctl(
        &socket,
        &["-o", "json", "pool", "export", "web-json", "--watch"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let kinds: Vec<&str> = lines.iter().map(|v| v["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["snapshot", "add", "remove", "snapshot", "deleted"]);
    assert_eq!(
        lines[0],
        serde_json::json!({"kind": "snapshot", "pool": "web", "ips": ["10.1.0.10", "10.1.0.11"], "revision": 5})
    );
    assert_eq!(lines[4]["revision"], 10);

    // Deleted while ipamctl was reconnecting: NotFound after a snapshot.
    let out = ipamctl(&socket, &["pool", "export", "gone", "--watch"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "= 1\n+ 10.1.0.10\n! deleted\n");
    assert!(text(&out.stderr).contains("was deleted while the watch was reconnecting"));

    // No such pool at the start: exit 1, ipamd's message, nothing on stdout.
    let out = ipamctl(&socket, &["pool", "export", "nosuch", "--watch"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "ipamctl: pool nosuch does not exist (ipamctl pool list)\n"
    );
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Kills the child when the test ends, passed or not.
fn spawn_watch(socket: &Path, pool: &str) -> Reaped {
    Reaped::new(
        Command::new(env!("CARGO_BIN_EXE_ipamctl"))
            .arg("--socket")
            .arg(socket)
            .args(["pool", "export", pool, "--watch"])
            .env_remove("MOOR_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ipamctl"),
    )
}

#[test]
fn watch_keeps_trying_while_ipamd_is_unreachable() {
    let dir = temp_dir("watch-down");
    let socket = dir.join("ipamd.sock");
    let mut child = spawn_watch(&socket, "web");
    let stderr = child.stderr.take().unwrap();
    let mut notes = BufReader::new(stderr).lines();
    let a = notes.next().unwrap().unwrap();
    let b = notes.next().unwrap().unwrap();
    let c = notes.next().unwrap().unwrap();
    assert!(a.contains(&socket.display().to_string()), "{a}");
    assert!(
        a.contains("no such socket") && a.ends_with("reconnecting in 200ms"),
        "{a}"
    );
    assert!(b.ends_with("reconnecting in 400ms"), "{b}");
    assert!(c.ends_with("reconnecting in 800ms"), "{c}");
    assert_eq!(child.try_wait().unwrap(), None, "still trying");

    // ipamd comes up: the feed starts with a snapshot.
    let _ = serve(&dir, FakeAdmin::default());
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "= 2");
    drop(child);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn watch_exits_0_when_its_reader_goes_away() {
    let dir = temp_dir("watch-pipe");
    let socket = serve(&dir, FakeAdmin::default());
    let mut child = spawn_watch(&socket, "endless");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "= 0\n");
    line.clear();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "+ 10.2.0.2\n", "each change is flushed as it comes");
    drop(stdout);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "still running");
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
