//! Issue 11's "Done when" 4 and 7: garbage collection by Kubernetes truth
//! and eviction by IP, with the real binaries: two node agents (n1, n2,
//! one ToR, see `moor_e2e::cluster`) and a real `ipamd --role controller`
//! (grace 2 s) on one etcd, all reading the fake API server, pods ADDed and
//! DELeted by the real `moor` in network namespaces, `ipamctl` as the
//! operator runs it.
//!
//! - `gc_keeps_statefulset_bindings_and_releases_deleted_ones` (`--binding-gc
//!   manual`, so what is due waits for the operator): scale 3 -> 1 -> 3
//!   keeps db-1's and db-2's IPs (db-1 comes back on the other node); an
//!   orphaning delete of the StatefulSet keeps every binding while the pods
//!   live; `ip evict IP --delete-pod` is refused by a PodDisruptionBudget
//!   (nothing changes), then evicts the pod and the IP goes with its DEL;
//!   the other pods deleted, `gc --dry-run` lists exactly their bindings
//!   after the grace, and `gc` releases them, each with an Event.
//! - `a_dead_nodes_pod_gets_its_ip_back_on_another_node` (`--binding-gc
//!   auto`): db-0's node n1 dies (ipamd killed, Node and pod deleted); db-0
//!   re-created on n2 gets its IP back without an operator.
//!
//! The grace is a flag (2 s); the "first seen absent" clocks run in the
//! controller. Waits for what the controller does are bounded polls; the
//! only sleeps are past the grace, to show what must not happen then.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use moor_e2e::bins::bins;
use moor_e2e::cluster::{Cluster, Layout};
use moor_e2e::deploy::{cluster_role_grants, Grant, Manifests};
use moor_e2e::ipamctl::Ipamctl;
use moor_e2e::names::container_id;
use moor_e2e::Pod;
use moor_ipamd::ipam::registry;
use moor_testkit::kubeapi::{objects, FakeApi, Propagation, Resource};
use moor_testkit::{Ipamd, IpamdCommand, TempDir};
use serde_json::Value;

const NS: &str = "shop";
const LEASE_NS: &str = "moor-system";
const GRACE: Duration = Duration::from_secs(2);
/// Longer than the grace plus two of the controller's passes (1 s apart):
/// whatever the controller would do by itself, it has done by then.
const PAST_GRACE: Duration = Duration::from_secs(5);

/// A pod running on a node: its netns and sandbox, its IP.
struct Running {
    pod: Pod,
    cid: String,
    node: String,
    ip: Ipv4Addr,
}

struct Setup {
    c: Cluster,
    api: FakeApi,
    kubeconfig: PathBuf,
    controller: Option<Ipamd>,
    controller_socket: PathBuf,
    _dir: TempDir,
}

impl Setup {
    /// n1 and n2 under ToR t1, pool shop-db (app db) on it, the controller
    /// with `--binding-gc MODE` holding the Lease.
    fn new(mode: &str) -> Setup {
        let dir = TempDir::new("gc");
        let api = FakeApi::start();
        for ns in [NS, LEASE_NS] {
            api.create(objects::namespace(ns));
        }
        for n in ["n1", "n2"] {
            api.create(objects::node(n));
        }
        let kubeconfig = api.write_kubeconfig(dir.path());
        let mut layout = Layout::new()
            .tor("t1", 16)
            .node("n1", "t1")
            .node("n2", "t1");
        layout.ipamd_args = vec!["--kubeconfig".into(), kubeconfig.display().to_string()];
        let c = Cluster::new(layout);
        let controller_socket = dir.path().join("controller.sock");
        let controller = IpamdCommand::new(
            &bins().ipamd,
            &controller_socket,
            &dir.path().join("controller.log"),
        )
        .args(["--role", "controller", "--node", "ctl"])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--store", &c.store_spec(), "--etcd-prefix", &c.prefix])
        .args([
            "--lease-namespace",
            LEASE_NS,
            "--lease-name",
            "moor-controller",
        ])
        .args([
            "--lease-duration-seconds",
            "3",
            "--lease-renew-seconds",
            "1",
        ])
        .args(["--binding-gc-grace-seconds", &GRACE.as_secs().to_string()])
        .args(["--binding-gc", mode, "--log", "info"])
        .kill_with_thread()
        .start()
        .unwrap_or_else(|e| panic!("the controller: {e}"));
        let s = Setup {
            c,
            api,
            kubeconfig,
            controller: Some(controller),
            controller_socket,
            _dir: dir,
        };
        s.wait(
            "the controller holds the Lease",
            Duration::from_secs(15),
            || {
                s.api
                    .get(Resource::Leases, LEASE_NS, "moor-controller")
                    .is_some_and(|l| {
                        l["spec"]["holderIdentity"]
                            .as_str()
                            .is_some_and(|h| h.starts_with("ctl_"))
                    })
            },
        );
        s.c.create_pool("shop-db", "db", 8, &[]);
        s
    }

    fn controller_log(&self) -> String {
        let log = &self.controller.as_ref().expect("running").log;
        std::fs::read_to_string(log).unwrap_or_default()
    }

    /// Polls `cond` every 100 ms; panics with the controller's log after
    /// `within`.
    fn wait(&self, what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            if start.elapsed() > within {
                let log = self.controller_log();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!(
                    "not within {within:?}: {what}\ncontroller log (last lines first):\n{}",
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ipamctl` against the controller's socket.
    fn controller_ctl(&self) -> Ipamctl<'_> {
        Ipamctl {
            bin: &bins().ipamctl,
            socket: &self.controller_socket,
        }
    }

    /// StatefulSet db's pod `ordinal`, created in the API as the
    /// StatefulSet controller and the scheduler would (on `node`), then
    /// started there by the runtime (ADD with the pod's uid).
    fn run(&self, ordinal: u32, node: &str) -> Running {
        let created = self.api.create(
            objects::statefulset_pod(NS, "db", ordinal)
                .label("app", "db")
                .phase("Running")
                .node(node),
        );
        let mut pod = self.c.pod(&format!("db-{ordinal}"));
        pod.uid = created["metadata"]["uid"].as_str().unwrap().to_string();
        let cid = container_id();
        let r = self.c.add(node, &pod, &cid);
        r.ok(&format!("ADD db-{ordinal} on {node}"));
        Running {
            ip: r.ip(),
            pod,
            cid,
            node: node.to_string(),
        }
    }

    /// The runtime's teardown of a pod the API deleted: DEL, then the
    /// sandbox's netns goes.
    fn torn_down(&self, r: &Running) {
        self.c
            .del(&r.node, &r.pod, &r.cid)
            .ok(&format!("DEL {}", r.pod.name));
        self.c.remove_pod(&r.pod);
    }

    /// Deletes the pod from the API and tears it down.
    fn stop(&self, r: &Running) {
        self.api.delete(Resource::Pods, NS, &r.pod.name);
        self.torn_down(r);
    }

    /// (pod name, IP) of every binding (asked of n2, which never dies).
    fn bindings(&self) -> BTreeSet<(String, String)> {
        self.c
            .ctl("n2")
            .json(&["binding", "list"])
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["pod"]["name"].as_str().unwrap().to_string(),
                    b["address"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn ip_state(&self, ip: Ipv4Addr) -> String {
        self.c.ctl("n2").json(&["ip", "show", &ip.to_string()])["state"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// `ipamctl -o json gc [--dry-run]` on the controller's socket.
    fn gc(&self, dry_run: bool) -> Value {
        let mut args = vec!["gc"];
        if dry_run {
            args.push("--dry-run");
        }
        self.controller_ctl().json(&args)
    }

    /// The Events the controller posted on pod `pod` with `reason`.
    fn events(&self, pod: &str, reason: &str) -> Vec<Value> {
        self.api
            .objects(Resource::Events)
            .into_iter()
            .filter(|e| {
                e["involvedObject"]["name"] == pod
                    && e["reason"] == reason
                    && e["reportingComponent"] == "moor-controller"
            })
            .collect()
    }

    /// Every request the controller and the node agents made is one
    /// deploy/'s RBAC grants them (the eviction is the operator's).
    fn assert_requests_granted(&self) {
        let mut granted = Manifests::load()
            .unwrap()
            .role_grants("moor-controller")
            .unwrap();
        granted.extend(cluster_role_grants());
        for r in self
            .api
            .requests()
            .iter()
            .filter(|r| !r.resource.is_empty())
        {
            if r.subresource == "eviction" {
                continue;
            }
            let g = Grant::new(&r.api_group, &r.resource, &r.verb);
            assert!(
                granted.contains(&g),
                "{} {} needs {g}, not granted",
                r.method,
                r.path
            );
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(c) = self.controller.take() {
            c.stop();
        }
    }
}

/// (kind, IP, pod name) of each release a `gc` reply lists.
fn listed(reply: &Value) -> BTreeSet<(String, String, String)> {
    reply["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_string(),
                r["address"].as_str().unwrap().to_string(),
                r["pod"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn binding(pod: &str, ip: Ipv4Addr) -> (String, String, String) {
    ("binding".into(), ip.to_string(), format!("{NS}/{pod}"))
}

#[test]
fn gc_keeps_statefulset_bindings_and_releases_deleted_ones() {
    let s = Setup::new("manual");
    s.api.create(objects::statefulset(NS, "db", 3));
    let db: Vec<Running> = (0..3).map(|i| s.run(i, "n1")).collect();
    let ips: Vec<Ipv4Addr> = db.iter().map(|r| r.ip).collect();
    let all_bound: BTreeSet<(String, String)> = (0..3)
        .map(|i| (format!("db-{i}"), ips[i].to_string()))
        .collect();

    // Scale 3 -> 1: db-1 and db-2 go; past the grace, nothing is due.
    s.api.modify(Resource::StatefulSets, NS, "db", |o| {
        o["spec"]["replicas"] = 1.into()
    });
    s.stop(&db[1]);
    s.stop(&db[2]);
    std::thread::sleep(PAST_GRACE);
    assert_eq!(listed(&s.gc(true)), BTreeSet::new());
    assert_eq!(listed(&s.gc(false)), BTreeSet::new());
    assert_eq!(s.bindings(), all_bound);

    // 1 -> 3: db-1 comes back on n2, db-2 on n1, each with its IP.
    s.api.modify(Resource::StatefulSets, NS, "db", |o| {
        o["spec"]["replicas"] = 3.into()
    });
    let db1 = s.run(1, "n2");
    let db2 = s.run(2, "n1");
    assert_eq!(
        (db1.ip, db2.ip),
        (ips[1], ips[2]),
        "scale-up gets the same IPs"
    );

    // `kubectl delete sts db --cascade=orphan`: the pods live on, and so do
    // their bindings, past the grace.
    s.api
        .delete_propagating(Resource::StatefulSets, NS, "db", Propagation::Orphan);
    assert!(
        s.api.get(Resource::Pods, NS, "db-1").is_some(),
        "orphaned, not deleted"
    );
    std::thread::sleep(PAST_GRACE);
    assert_eq!(listed(&s.gc(true)), BTreeSet::new());
    assert_eq!(s.bindings(), all_bound);

    // `ip evict IP --delete-pod`: a budget that allows no disruption
    // refuses, and nothing changes.
    s.api
        .create(objects::pod_disruption_budget(NS, "db", "db", 0));
    let evict = |ip: Ipv4Addr| {
        s.c.ctl("n1").run(&[
            "ip",
            "evict",
            &ip.to_string(),
            "--delete-pod",
            "--kubeconfig",
            s.kubeconfig.to_str().unwrap(),
        ])
    };
    let out = evict(ips[0]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("PodDisruptionBudget allows no disruption"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing changed"), "{stderr}");
    assert!(s.api.get(Resource::Pods, NS, "db-0").is_some());
    assert_eq!(s.ip_state(ips[0]), "in-use");
    // The budget allows one: the pod is evicted, and its IP goes with the
    // DEL of its teardown.
    s.api.modify(Resource::PodDisruptionBudgets, NS, "db", |b| {
        b["status"]["disruptionsAllowed"] = 1.into()
    });
    let out = evict(ips[0]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("evicted pod shop/db-0"), "{stdout}");
    assert!(s.api.get(Resource::Pods, NS, "db-0").is_none(), "evicted");
    let evictions: Vec<_> = s
        .api
        .requests()
        .into_iter()
        .filter(|r| r.subresource == "eviction" && r.verb == "create")
        .collect();
    assert_eq!(evictions.len(), 2, "{evictions:?}");
    s.torn_down(&db[0]);
    assert_eq!(s.ip_state(ips[0]), "free");

    // The orphans are deleted too: no pod, no StatefulSet. After the grace
    // the dry run lists exactly their bindings, and releases nothing.
    s.stop(&db1);
    s.stop(&db2);
    let due: BTreeSet<_> = [binding("db-1", ips[1]), binding("db-2", ips[2])].into();
    let mut dry = Value::Null;
    s.wait(
        "the dry run lists both bindings",
        GRACE + PAST_GRACE,
        || {
            dry = s.gc(true);
            listed(&dry).len() >= 2
        },
    );
    assert_eq!(listed(&dry), due, "{dry:#}");
    for r in dry["releases"].as_array().unwrap() {
        assert_eq!(r["reason"], "pod-gone", "{r}");
        assert_eq!(r["done"], false, "{r}");
        let m = r["message"].as_str().unwrap();
        assert!(
            m.contains("and no StatefulSet shop/db has existed since"),
            "{m}"
        );
    }
    assert_eq!(s.bindings().len(), 2, "a dry run releases nothing");

    // `ipamctl gc` releases exactly those, now, each with an Event.
    let done = s.gc(false);
    assert_eq!(listed(&done), due, "{done:#}");
    assert!(
        done["releases"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["done"] == true),
        "{done:#}"
    );
    assert_eq!(s.bindings(), BTreeSet::new());
    for (i, ip) in ips.iter().enumerate() {
        assert_eq!(s.ip_state(*ip), "free", "db-{i}'s {ip}");
    }
    for pod in ["db-1", "db-2"] {
        s.wait("the release's Event", Duration::from_secs(5), || {
            !s.events(pod, "MoorBindingReleased").is_empty()
        });
    }
    let log = s.controller_log();
    assert!(log.contains("gc released binding"), "{log}");
    assert_eq!(listed(&s.gc(true)), BTreeSet::new());
    assert!(s.c.audit().is_empty(), "{:#?}", s.c.audit());
    s.assert_requests_granted();

    // A node agent's socket has no controller: said so, with where to go.
    let out = s.c.ctl("n1").run(&["gc", "--dry-run"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("does not run the controller"), "{stderr}");
}

#[test]
fn a_zero_grace_is_refused() {
    let dir = TempDir::new("gc-refusals");
    let api = FakeApi::start();
    let kc = api.write_kubeconfig(dir.path());
    let out = std::process::Command::new(&bins().ipamd)
        .args(["--role", "controller", "--binding-gc-grace-seconds", "0"])
        .arg("--kubeconfig")
        .arg(&kc)
        .arg("--socket")
        .arg(dir.path().join("s"))
        .arg("--store")
        .arg(format!("redb:{}", dir.path().join("s.redb").display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--binding-gc-grace-seconds must be more than 0"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("s.redb").exists(),
        "refused before opening anything"
    );
}

#[test]
fn a_dead_nodes_pod_gets_its_ip_back_on_another_node() {
    let s = Setup::new("auto");
    s.api.create(objects::statefulset(NS, "db", 1));
    let db0 = s.run(0, "n1");

    // n1 dies: its ipamd and its pods with it. Kubernetes deletes the Node
    // and the pod (pod GC); the StatefulSet re-creates db-0 on n2.
    s.c.kill9_ipamd("n1");
    s.c.remove_pod(&db0.pod);
    s.api.delete(Resource::Nodes, "", "n1");
    s.api.delete(Resource::Pods, NS, "db-0");
    // n1's last heartbeat as a machine that died a minute ago left it
    // (rather than waiting the registry's 30 s).
    s.c.with_store(|store| async move {
        let mut rec = registry::nodes(&store)
            .await
            .unwrap()
            .into_iter()
            .find(|n| n.name == "n1")
            .expect("n1 registered");
        rec.heartbeat_unix -= 60;
        registry::beat(&store, &rec).await.unwrap();
    });

    // The runtime retries the new sandbox until its ADD succeeds, as
    // kubelet does; it gets db-0's IP back.
    let created = s.api.create(
        objects::statefulset_pod(NS, "db", 0)
            .label("app", "db")
            .phase("Running")
            .node("n2"),
    );
    let mut pod = s.c.pod("db-0");
    pod.uid = created["metadata"]["uid"].as_str().unwrap().to_string();
    let cid = container_id();
    let mut first_error = None;
    let mut ip = None;
    s.wait("db-0's ADD on n2 succeeds", Duration::from_secs(15), || {
        let r = s.c.add("n2", &pod, &cid);
        if r.code == 0 {
            ip = Some(r.ip());
            return true;
        }
        first_error.get_or_insert(r.stdout.clone());
        false
    });
    eprintln!("first ADD on n2 before the release: {first_error:?}");
    assert_eq!(ip, Some(db0.ip), "the re-created pod gets its IP back");
    if let Some(e) = first_error {
        assert!(
            e.contains("still attached"),
            "a clear refusal meanwhile: {e}"
        );
    }

    // Said in the log and as an Event; the binding stays with the pod.
    let events = s.events("db-0", "MoorAttachmentReleased");
    assert_eq!(events.len(), 1, "{events:#?}");
    let m = events[0]["message"].as_str().unwrap();
    assert!(m.contains("node n1 was deleted from Kubernetes"), "{m}");
    assert!(s.controller_log().contains("gc released attachment"));
    assert_eq!(
        s.bindings(),
        [("db-0".to_string(), db0.ip.to_string())].into()
    );
    assert!(s.c.audit().is_empty(), "{:#?}", s.c.audit());
    s.assert_requests_granted();
}
