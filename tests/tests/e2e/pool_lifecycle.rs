//! Issue 11's "Done when" 1, 5 and 6: pools follow the workloads that
//! declare them. One real `ipamd --role both` per test (node agent and
//! controller in one process, on the embedded store) against the fake API
//! server, the real `moor` plugin for pods' ADD/DEL and the real `ipamctl`.
//! The durations tests wait on are flags set short: a Lease of 3 s, a full
//! pass every second, a cool-down of 5 s.
//!
//! 1. A StatefulSet with `moor.io/pool-size: "5"` and `moor.io/tors:
//!    "t1,t2"` has its pool (5 IPs over t1 and t2) and its ConfigMap within
//!    5 s of its creation, with no pod yet; replicas raised to 8, the pool
//!    grows to 8, the ConfigMap and `pool export --watch` follow.
//! 5. A Deployment's pool is deleted once it and its pods are gone, and its
//!    IPs are carved again only after the cool-down.
//! 6. `moor.io/ips` gives db-0 and db-1 the listed IPs in order; an IP
//!    outside every ToR range or in use is refused with an Event naming it.

use moor_e2e::scrape::{logged_addr, scrape, value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use moor_e2e::deploy::{Grant, Manifests};
use moor_e2e::names::container_id;
use moor_e2e::{Options, Pod, Testbed};
use moor_proto::cni_code;
use moor_testkit::kubeapi::{objects, FakeApi, Propagation, Resource};
use moor_testkit::TempDir;
use serde_json::{json, Value};

const NS: &str = "shop";
/// `--ip-cooldown-seconds`.
const COOLDOWN: Duration = Duration::from_secs(5);

struct Setup {
    api: FakeApi,
    tb: Testbed,
    _dir: TempDir,
}

impl Setup {
    /// ipamd with the API as node agent and controller; `define_tor`: the
    /// testbed's ToR rack-1 (pod IPs .10-.249 of its /24) is defined.
    fn new(define_tor: bool) -> Setup {
        let api = FakeApi::start();
        api.create(objects::namespace("moor-system"));
        api.create(objects::namespace(NS));
        let dir = TempDir::new("pool-lifecycle");
        let kubeconfig = api.write_kubeconfig(dir.path());
        let args = [
            "--role",
            "both",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--lease-duration-seconds",
            "3",
            "--lease-renew-seconds",
            "1",
            "--controller-resync-seconds",
            "1",
            "--event-interval-seconds",
            "1",
            "--ip-cooldown-seconds",
            &COOLDOWN.as_secs().to_string(),
        ];
        // The root netns: ipamd reaches the fake API on 127.0.0.1.
        let tb = Testbed::with(Options {
            root_netns: true,
            define_tor,
            ipamd_args: args.iter().map(|s| s.to_string()).collect(),
            ..Options::default()
        });
        let s = Setup { api, tb, _dir: dir };
        s.wait("the controller leads", Duration::from_secs(10), || {
            s.api
                .get(Resource::Leases, "moor-system", "moor-controller")
                .is_some_and(|l| l["spec"]["holderIdentity"].is_string())
        });
        s
    }

    /// Polls `cond` every 20 ms until it holds; returns how long it took.
    fn wait(&self, what: &str, within: Duration, mut cond: impl FnMut() -> bool) -> Duration {
        let start = Instant::now();
        while !cond() {
            if start.elapsed() > within {
                panic!("not within {within:?}: {what}\n{}", self.tb.log_tail(40));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        start.elapsed()
    }

    /// The pool's IPs (`ipamctl pool export`), None while it does not exist.
    fn pool(&self, name: &str) -> Option<Vec<String>> {
        let out = self.tb.ipamctl(&["-o", "json", "pool", "export", name]);
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        Some(
            v["ips"]
                .as_array()
                .unwrap()
                .iter()
                .map(|ip| ip.as_str().unwrap().to_string())
                .collect(),
        )
    }

    /// The IPs ConfigMap `moor-pool-<pool>` publishes, None while it does
    /// not exist.
    fn published(&self, pool: &str) -> Option<Vec<String>> {
        let cm = self
            .api
            .get(Resource::ConfigMaps, NS, &format!("moor-pool-{pool}"))?;
        Some(
            cm["data"]["ips"]
                .as_str()
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect(),
        )
    }

    /// The message of the Event `reason` on `name`, once it exists.
    fn event(&self, name: &str, reason: &str) -> String {
        let mut msg = String::new();
        self.wait(
            &format!("Event {reason} on {name}"),
            Duration::from_secs(5),
            || {
                let found = self
                    .api
                    .objects(Resource::Events)
                    .into_iter()
                    .find(|e| e["involvedObject"]["name"] == name && e["reason"] == reason);
                if let Some(e) = found {
                    msg = e["message"].as_str().unwrap_or_default().to_string();
                }
                !msg.is_empty()
            },
        );
        eprintln!("Event {reason} on {name}: {msg}");
        msg
    }

    /// A pod object on this node, and the testbed pod (netns, CNI_ARGS)
    /// the runtime would start for it.
    fn pod(&self, object: objects::ObjectBuilder) -> (Value, Pod) {
        let o = object.node(&self.tb.node).build();
        let name = o["metadata"]["name"].as_str().unwrap().to_string();
        let pod = self.tb.pod_in(NS, &name);
        let mut o = o;
        o["metadata"]["uid"] = pod.uid.clone().into();
        (self.api.create(o), pod)
    }

    fn add(&self, pod: &Pod, cid: &str) -> moor_e2e::CniRun {
        self.tb.moor("ADD", pod, cid, "1.0.0", &json!({}), None)
    }

    /// Every request ipamd made is one deploy/'s RBAC grants its two roles.
    fn assert_requests_granted(&self) {
        let m = Manifests::load().unwrap();
        let mut granted = m.role_grants("moor-controller").unwrap();
        granted.extend(m.grants().unwrap());
        for r in self
            .api
            .requests()
            .iter()
            .filter(|r| !r.resource.is_empty())
        {
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

/// `ipamctl pool export NAME --watch`, its lines as they come.
struct Watch {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Watch {
    fn start(tb: &Testbed, pool: &str) -> Watch {
        let mut child = Command::new(&tb.bins().ipamctl)
            .arg("--socket")
            .arg(&tb.socket)
            .args(["pool", "export", pool, "--watch"])
            .env_remove("MOOR_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run ipamctl pool export --watch");
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Watch { child, lines }
    }

    /// The next `n` lines, each within 5 s.
    fn next(&self, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                self.lines
                    .recv_timeout(Duration::from_secs(5))
                    .expect("a line of pool export --watch")
            })
            .collect()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort_by_key(|ip| ip.parse::<std::net::Ipv4Addr>().unwrap());
    v
}

#[test]
fn a_statefulsets_pool_and_whitelist_come_before_its_pods_and_follow_its_replicas() {
    let s = Setup::new(false);
    let ctl = s.tb.ctl();
    let gw = |n: u8| format!("172.31.{n}.1").parse().unwrap();
    let range = |n: u8| {
        (
            format!("172.31.{n}.10").parse().unwrap(),
            format!("172.31.{n}.29").parse().unwrap(),
        )
    };
    for (t, n) in [("t1", 1u8), ("t2", 2u8), ("t3", 3u8)] {
        ctl.tor_add(t, &format!("172.31.{n}.0/24"), gw(n), range(n), &[]);
    }

    let created = Instant::now();
    let sts = s.api.create(
        objects::statefulset(NS, "db", 1)
            .annotation("moor.io/pool-size", "5")
            .annotation("moor.io/tors", "t1,t2"),
    );
    // The deadline is behaviour (a pool before the pods start): 5 s from
    // the StatefulSet's creation; it takes well under a second here.
    let mut ips = Vec::new();
    let took = s.wait(
        "pool shop-db and its ConfigMap",
        Duration::from_secs(5),
        || {
            ips = s.pool("shop-db").unwrap_or_default();
            ips.len() == 5 && s.published("shop-db") == Some(ips.clone())
        },
    );
    assert!(created.elapsed() < Duration::from_secs(5));
    eprintln!("pool and ConfigMap of 5 IPs {took:?} after the StatefulSet");
    // No pod exists (the fake API server runs no controllers): the pool
    // came from the StatefulSet alone, before any pod of it could start.
    let on = |ips: &[String], net: &str| ips.iter().filter(|ip| ip.starts_with(net)).count();
    assert_eq!(on(&ips, "172.31.1.") + on(&ips, "172.31.2."), 5, "{ips:?}");
    assert!(
        on(&ips, "172.31.1.") > 0 && on(&ips, "172.31.2.") > 0,
        "spread: {ips:?}"
    );
    let cm = s
        .api
        .get(Resource::ConfigMaps, NS, "moor-pool-shop-db")
        .unwrap();
    let owner = &cm["metadata"]["ownerReferences"][0];
    assert_eq!(
        (&owner["kind"], &owner["name"], &owner["uid"]),
        (&json!("StatefulSet"), &json!("db"), &sts["metadata"]["uid"])
    );
    assert!(s
        .event("db", "MoorPoolCreated")
        .contains("pool shop-db of 5 IPs"));

    // A whitelist syncer follows the pool.
    let watch = Watch::start(&s.tb, "shop-db");
    let snapshot = watch.next(6);
    assert_eq!(snapshot[0], "= 5", "{snapshot:?}");
    // Replicas raised to 8: the pool grows to 8, the ConfigMap follows.
    s.api.modify(Resource::StatefulSets, NS, "db", |o| {
        o["spec"]["replicas"] = 8.into()
    });
    s.wait("pool shop-db grows to 8", Duration::from_secs(5), || {
        ips = s.pool("shop-db").unwrap_or_default();
        ips.len() == 8 && s.published("shop-db") == Some(ips.clone())
    });
    assert_eq!(on(&ips, "172.31.3."), 0, "only t1 and t2: {ips:?}");
    let lines: Vec<String> = snapshot[1..].iter().cloned().chain(watch.next(3)).collect();
    let seen: Vec<String> = lines
        .iter()
        .map(|l| {
            l.strip_prefix("+ ")
                .unwrap_or_else(|| panic!("not an added IP: {l:?} in {lines:?}"))
                .to_string()
        })
        .collect();
    assert_eq!(sorted(seen), ips, "pool export --watch saw every IP");
    assert!(s.event("db", "MoorPoolGrown").contains("from 5 to 8 IPs"));
    s.assert_requests_granted();

    // Issue 14: what the controller did is counted by its Events' reasons;
    // it leads; the node agent's pod cache is whole.
    let m = scrape(None, &logged_addr(&s.tb.log));
    let acted = |reason: &str| {
        value(
            &m,
            &format!(r#"moor_controller_actions_total{{reason="{reason}"}}"#),
        )
    };
    assert!(acted("MoorPoolCreated") >= 1.0, "{m:?}");
    assert!(acted("MoorPoolGrown") >= 1.0, "{m:?}");
    assert_eq!(value(&m, "moor_controller_leader"), 1.0);
    assert_eq!(
        value(&m, r#"moor_kube_cache_ready{resource="pods"}"#),
        1.0,
        "{m:?}"
    );
}

#[test]
fn a_deployments_pool_goes_with_it_and_its_ips_cool_down_before_reuse() {
    let s = Setup::new(true);
    let dep_uid = objects::owner_uid("Deployment", NS, "web");
    let dep = s.api.create(
        objects::deployment(NS, "web", 1)
            .annotation("moor.io/pool-size", "2")
            .annotation("moor.io/tors", "rack-1"),
    );
    assert_eq!(dep["metadata"]["uid"], dep_uid.as_str());
    // Its ReplicaSet, owned by it (no pool of its own).
    let mut rs = objects::replicaset(NS, "web-7d9f8c6b5", 1).build();
    rs["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
        "uid": dep_uid, "controller": true, "blockOwnerDeletion": true,
    }]);
    s.api.create(rs);
    let mut old = Vec::new();
    s.wait("pool shop-web", Duration::from_secs(5), || {
        old = s.pool("shop-web").unwrap_or_default();
        old.len() == 2
    });
    s.wait("its ConfigMap", Duration::from_secs(5), || {
        s.published("shop-web") == Some(old.clone())
    });
    assert!(
        s.pool("shop-web-7d9f8c6b5").is_none(),
        "a Deployment's ReplicaSet declares nothing"
    );

    // Its pod runs on an IP of the pool.
    let (_, pod) = s.pod(objects::deployment_pod(NS, "web", "7d9f8c6b5"));
    let cid = container_id();
    let ip = s.add(&pod, &cid).ok("ADD web's pod").ip().to_string();
    assert!(old.contains(&ip), "{ip} of {old:?}");

    // The Deployment goes (its ConfigMap with it), its pod not yet: the
    // pool stays while an IP is in use.
    s.api
        .delete_propagating(Resource::Deployments, NS, "web", Propagation::Background);
    assert!(
        s.published("shop-web").is_none(),
        "the ConfigMap went with its owner"
    );
    // The controller has seen the Deployment gone and kept the pool for the
    // IP in use (its log says so), and the pool is there after that pass.
    s.wait(
        "the controller to keep pool shop-web for its IP in use",
        Duration::from_secs(5),
        || {
            s.tb.log_tail(200).contains(&format!(
                "pool shop-web is deleted once none of its IPs is in use: {ip} ("
            ))
        },
    );
    assert_eq!(
        s.pool("shop-web"),
        Some(old.clone()),
        "{}",
        s.tb.log_tail(20)
    );

    // The pod goes: the pool is deleted (a pass a second; 5 s is the
    // margin).
    s.tb.moor("DEL", &pod, &cid, "1.0.0", &json!({}), None)
        .ok("DEL web's pod");
    s.tb.remove_pod(&pod);
    s.wait("pool shop-web deleted", Duration::from_secs(5), || {
        s.pool("shop-web").is_none()
    });
    let deleted = Instant::now();
    let why = s.event("web", "MoorPoolDeleted");
    assert!(
        why.contains("Deployment shop/web is gone") && why.contains("cool down for 5 s"),
        "{why}"
    );

    // Within the cool-down a new pool does not get them, though they are
    // the lowest IPs of the ToR...
    s.api.create(
        objects::deployment(NS, "next", 1)
            .annotation("moor.io/pool-size", "2")
            .annotation("moor.io/tors", "rack-1"),
    );
    let mut next = Vec::new();
    s.wait("pool shop-next", Duration::from_secs(5), || {
        next = s.pool("shop-next").unwrap_or_default();
        next.len() == 2
    });
    let early = deleted.elapsed();
    assert!(
        early < COOLDOWN - Duration::from_secs(1),
        "too slow to tell: the cool-down nearly ended ({early:?})"
    );
    assert!(
        next.iter().all(|ip| !old.contains(ip)),
        "{next:?} reuses {old:?}"
    );
    // ... after it, the next one does.
    std::thread::sleep(COOLDOWN.saturating_sub(deleted.elapsed()));
    s.api.create(
        objects::deployment(NS, "later", 1)
            .annotation("moor.io/pool-size", "2")
            .annotation("moor.io/tors", "rack-1"),
    );
    let mut later = Vec::new();
    s.wait("pool shop-later", Duration::from_secs(5), || {
        later = s.pool("shop-later").unwrap_or_default();
        later.len() == 2
    });
    assert_eq!(later, old, "carved again after the cool-down, lowest first");
    let findings = s.tb.audit();
    assert!(findings.is_empty(), "{findings:#?}");
    s.assert_requests_granted();
}

#[test]
fn explicit_ips_go_to_the_ordinals_in_order_and_bad_ones_are_refused_with_an_event() {
    let s = Setup::new(true);
    let net = |last: u8| {
        let b = s.tb.subnet_base;
        format!("{}.{}.{}.{last}", b[0], b[1], b[2])
    };
    let (first, second) = (net(40), net(30));
    s.api.create(
        objects::statefulset(NS, "db", 2).annotation("moor.io/ips", &format!("{first},{second}")),
    );
    s.wait("pool shop-db", Duration::from_secs(5), || {
        s.pool("shop-db").is_some()
    });
    assert_eq!(
        s.pool("shop-db").unwrap(),
        sorted(vec![first.clone(), second.clone()])
    );
    // db-1 starts first and still gets the second IP; db-0 the first.
    let (_, db1) = s.pod(objects::statefulset_pod(NS, "db", 1));
    let (_, db0) = s.pod(objects::statefulset_pod(NS, "db", 0));
    assert_eq!(
        s.add(&db1, &container_id()).ok("ADD db-1").ip().to_string(),
        second
    );
    assert_eq!(
        s.add(&db0, &container_id()).ok("ADD db-0").ip().to_string(),
        first
    );

    // Refused, with an Event naming the IP, nothing carved: outside the
    // ToR's pod range (.250 of its /24), outside every ToR, in use.
    for (name, ips, refused, why) in [
        ("edge", net(250), net(250), "in no pod range"),
        (
            "far",
            "10.254.9.9".to_string(),
            "10.254.9.9".to_string(),
            "in no pod range",
        ),
        (
            "busy",
            format!("{},{first}", net(50)),
            first.clone(),
            "already in pool shop-db",
        ),
    ] {
        s.api
            .create(objects::statefulset(NS, name, 1).annotation("moor.io/ips", &ips));
        let e = s.event(name, "MoorPoolRefused");
        assert!(e.contains(&refused) && e.contains(why), "{e}");
        assert!(s.pool(&format!("shop-{name}")).is_none());
    }
    assert!(
        !s.tb.ipamctl(&["ip", "show", &net(50)]).status.success(),
        "{} was not carved",
        net(50)
    );
    // A pod of a workload whose pool is not there (yet): try again.
    let (_, orphan) = s.pod(objects::statefulset_pod(NS, "busy", 0));
    let r = s.add(&orphan, &container_id());
    assert_eq!(
        r.err_code("no pool yet"),
        u64::from(cni_code::TRY_AGAIN_LATER),
        "{}",
        r.message()
    );

    // By hand: a pool of exactly two IPs, one kept for a pod before it runs.
    let (a, b) = (net(60), net(61));
    s.tb.ctl().ok(&[
        "pool",
        "create",
        "byo",
        "--namespace",
        NS,
        "--app",
        "byo",
        "--ip",
        &a,
        "--ip",
        &b,
    ]);
    assert_eq!(s.pool("byo").unwrap(), vec![a.clone(), b.clone()]);
    s.tb.ctl().ok(&["binding", "add", "shop/byo-0", &b]);
    let (_, byo0) = s.pod(objects::statefulset_pod(NS, "byo", 0));
    assert_eq!(
        s.add(&byo0, &container_id())
            .ok("ADD byo-0")
            .ip()
            .to_string(),
        b
    );
    let out = s.tb.ipamctl(&["binding", "add", "shop/byo-1", &b]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by pod shop/byo-0"));
    let findings = s.tb.audit();
    assert!(findings.is_empty(), "{findings:#?}");
    s.assert_requests_granted();
}
