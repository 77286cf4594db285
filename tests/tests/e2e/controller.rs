//! Issue 11's "Done when" 2: two real `ipamd --role controller` processes
//! against the fake API server and one etcd, a Lease of 3 s renewed every
//! 1 s.
//!
//! - One holds the Lease; a StatefulSet with `moor.io/pool-size` gets its
//!   pool.
//! - kill -9 the holder: the other takes the Lease and creates the pool of
//!   a StatefulSet made right after the kill within 3 s + 5 s.
//! - SIGSTOP the holder: it writes nothing more (no renewal, no pool); the
//!   standby takes over only once the Lease ran out and creates the pool
//!   of the workload made during the pause. SIGCONT: the old holder sees
//!   it lost and writes nothing.
//!
//! Plus the role's refusals (no API, a datapath flag).

use std::time::{Duration, Instant};

use moor_e2e::bins::bins;
use moor_e2e::control_plane::{ControlPlane, LEASE_NAME, LEASE_NAMESPACE};
use moor_testkit::kubeapi::{objects, FakeApi, Resource};
use moor_testkit::{Ipamd, TempDir};
use nix::sys::signal::Signal;
use serde_json::Value;

const NS: &str = LEASE_NAMESPACE;
const LEASE: &str = LEASE_NAME;
const DURATION: Duration = Duration::from_secs(3);

struct Setup {
    cp: ControlPlane,
}

impl Setup {
    fn new() -> Setup {
        let cp = ControlPlane::new("controller");
        cp.api.create(objects::namespace("shop"));
        cp.with_ipam(|ipam| async move {
            let range = [("10.1.0.10".to_string(), "10.1.0.99".to_string())];
            ipam.add_tor("t1", "10.1.0.0/24", "10.1.0.1", 0, &range, "")
                .await
                .unwrap();
        });
        Setup { cp }
    }

    fn pool_exists(&self, name: &str) -> bool {
        let name = name.to_string();
        self.cp
            .with_ipam(|ipam| async move { ipam.pool(&name).await.is_ok() })
    }

    fn controller(&self, node: &str) -> Ipamd {
        self.cp.controller(node, &["--log", "info"])
    }

    fn lease(&self) -> Option<Value> {
        self.cp.api.get(Resource::Leases, NS, LEASE)
    }

    /// (holderIdentity, leaseTransitions, resourceVersion).
    fn holder(&self) -> (String, i64, String) {
        let l = self.lease().unwrap_or_default();
        (
            l["spec"]["holderIdentity"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            l["spec"]["leaseTransitions"].as_i64().unwrap_or(-1),
            l["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        )
    }

    fn sts(&self, name: &str) {
        self.cp
            .api
            .create(objects::statefulset("shop", name, 1).annotation("moor.io/pool-size", "3"));
    }
}

/// Polls `cond` every 20 ms until it holds; returns how long that took.
fn wait(what: &str, within: Duration, logs: &[&Ipamd], mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > within {
            let tails: Vec<String> = logs.iter().map(|i| i.log_tail(30)).collect();
            panic!("not within {within:?}: {what}\n{}", tails.join("\n----\n"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

fn log_of(i: &Ipamd) -> String {
    std::fs::read_to_string(&i.log).unwrap_or_default()
}

#[test]
fn one_leader_takes_over_from_a_killed_or_paused_one() {
    let s = Setup::new();
    let a = s.controller("ca");
    let b = s.controller("cb");
    wait("a Lease holder", Duration::from_secs(15), &[&a, &b], || {
        !s.holder().0.is_empty()
    });
    let lease = s.lease().unwrap();
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 3, "{lease}");
    assert!(lease["spec"]["acquireTime"].is_string(), "{lease}");
    assert!(lease["spec"]["renewTime"].is_string(), "{lease}");
    let (first, transitions, _) = s.holder();
    let (leader, standby) = if first.starts_with("ca_") {
        (a, b)
    } else {
        (b, a)
    };
    s.sts("db");
    let took = wait(
        "pool shop-db",
        Duration::from_secs(5),
        &[&leader, &standby],
        || s.pool_exists("shop-db"),
    );
    eprintln!("shop-db's pool {took:?} after its StatefulSet");
    // One holder: it stays with the first while both run.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(s.holder().0, first);

    // kill -9 the holder; a new workload right after.
    let killed = Instant::now();
    leader.kill9();
    s.sts("db2");
    wait(
        "pool shop-db2",
        DURATION + Duration::from_secs(5),
        &[&standby],
        || s.pool_exists("shop-db2"),
    );
    let took = killed.elapsed();
    eprintln!("after kill -9: shop-db2's pool {took:?} after the kill");
    let (second, t2, _) = s.holder();
    assert_ne!(second, first);
    assert_eq!(t2, transitions + 1);
    let leader = standby;

    // A new standby, then SIGSTOP the holder.
    let standby = s.controller("cc");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(s.holder().0, second, "the new replica follows");
    leader.signal(Signal::SIGSTOP).unwrap();
    let at_pause = s.holder();
    s.sts("db3");
    // Every change of the Lease from now on is the standby's: the paused
    // holder neither renews nor writes anything else.
    let mut seen = vec![at_pause.clone()];
    let took = wait(
        "the standby holds the Lease",
        DURATION + Duration::from_secs(5),
        &[&standby],
        || {
            let h = s.holder();
            if seen.last() != Some(&h) {
                seen.push(h.clone());
            }
            let taken = h.0.starts_with("cc_");
            assert!(
                taken || !s.pool_exists("shop-db3"),
                "a pool was created while the only leader was paused"
            );
            taken
        },
    );
    eprintln!(
        "after SIGSTOP: the standby took the Lease {took:?} after the pause; changes: {seen:?}"
    );
    // The Lease changed exactly once: the takeover. The paused holder's
    // last renewal was at most 1 s before the pause, so the Lease could not
    // expire for the standby before 2 s.
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(took >= Duration::from_secs(2), "taken over after {took:?}");
    wait("pool shop-db3", Duration::from_secs(5), &[&standby], || {
        s.pool_exists("shop-db3")
    });
    assert!(
        !log_of(&leader).contains("shop/db3"),
        "{}",
        leader.log_tail(20)
    );

    // SIGCONT: the old holder finds its fence closed, its renewal refused
    // (stale resourceVersion), and stays out.
    let (third, t3, _) = s.holder();
    leader.signal(Signal::SIGCONT).unwrap();
    wait(
        "the old holder sees it lost",
        Duration::from_secs(5),
        &[&leader],
        || log_of(&leader).contains("lost the controller Lease"),
    );
    s.sts("db4");
    wait("pool shop-db4", Duration::from_secs(5), &[&standby], || {
        s.pool_exists("shop-db4")
    });
    std::thread::sleep(Duration::from_secs(2));
    let (now, t4, _) = s.holder();
    assert_eq!((now, t4), (third, t3), "the old holder wrote no Lease");
    let old = log_of(&leader);
    let after_resume = old.rsplit("lost the controller Lease").next().unwrap();
    assert!(!after_resume.contains("created the pool"), "{old}");
    assert!(log_of(&standby).contains("StatefulSet shop/db4"));

    // Every request the controllers made is one deploy/'s RBAC grants them.
    let granted = moor_e2e::deploy::Manifests::load()
        .unwrap()
        .role_grants("moor-controller")
        .unwrap();
    for r in
        s.cp.api
            .requests()
            .iter()
            .filter(|r| !r.resource.is_empty())
    {
        let g = moor_e2e::deploy::Grant::new(&r.api_group, &r.resource, &r.verb);
        assert!(
            granted.contains(&g),
            "{} {} needs {g}, not granted",
            r.method,
            r.path
        );
    }

    // A graceful stop releases the Lease for the other at once.
    standby.stop();
    let l = s.lease().unwrap();
    assert!(l["spec"]["holderIdentity"].is_null(), "{l}");
    wait(
        "the old holder takes the released Lease",
        Duration::from_secs(4),
        &[&leader],
        || s.holder().0 == second,
    );
}

#[test]
fn the_controller_role_refuses_what_it_cannot_run() {
    let dir = TempDir::new("controller-refusals");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&bins().ipamd)
            .args(["--socket", dir.path().join("s").to_str().unwrap()])
            .args(args)
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let store = format!("redb:{}", dir.path().join("s.redb").display());
    let e = run(&["--role", "controller", "--store", &store]);
    assert!(e.contains("the controller needs the Kubernetes API"), "{e}");
    let api = FakeApi::start();
    let kc = api.write_kubeconfig(dir.path());
    let kc = kc.to_str().unwrap();
    let e = run(&[
        "--role",
        "controller",
        "--kubeconfig",
        kc,
        "--store",
        &store,
        "--bridge",
        "br0",
    ]);
    assert!(e.contains("--bridge is for --role node or both"), "{e}");
    let e = run(&[
        "--role",
        "controller",
        "--kubeconfig",
        kc,
        "--store",
        &store,
        "--lease-duration-seconds",
        "6",
        "--lease-renew-seconds",
        "3",
    ]);
    assert!(e.contains("--lease-renew-seconds 3 is too long"), "{e}");
    let e = run(&["--role", "node", "--store", &store, "--tor", "t1"]);
    assert!(e.contains("--bridge is missing"), "{e}");
}
