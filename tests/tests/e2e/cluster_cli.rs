//! Issue 3's CLI parts against the real ipamd (embedded store):
//! - `pool export NAME --watch`: a whitelist syncer that applies the feed
//!   (`=` replaces, `+` adds, `-` removes) ends with exactly the pool's IP set
//!   through resizes, pod churn and an ipamd restart, and stops on `! deleted`.
//! - `ip evict IP [--force]`: deleting a pod by its IP.
//! - `node list`: this node is registered and alive.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moor_e2e::names::{container_id, deployment_pod, statefulset_pod};
use moor_e2e::testbed::{POD_NAMESPACE, TOR};
use moor_e2e::Testbed;
use moor_proto::host_ifname;
use moor_testkit::process::Reaped;
use serde_json::{json, Value};

use crate::support::Feed;

// ------------------------------------------------------------ the syncer

/// `ipamctl pool export NAME --watch`, its stdout applied on a thread. Drop
/// kills it, so a failing test leaves no process behind.
struct Watcher {
    /// Killed by pid when the watch is dropped.
    child: Reaped,
    feed: Arc<Mutex<Feed>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Watcher {
    fn start(tb: &Testbed, pool: &str) -> Watcher {
        let mut child = Command::new(&tb.bins().ipamctl)
            .arg("--socket")
            .arg(&tb.socket)
            .args(["pool", "export", pool, "--watch"])
            .env_remove("MOOR_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ipamctl pool export --watch");
        let feed = Arc::new(Mutex::new(Feed::default()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let f = feed.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                f.lock().unwrap().apply(&line);
            }
        });
        let e = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                e.lock().unwrap().push(line);
            }
        });
        Watcher {
            child: Reaped::new(child),
            feed,
            stderr,
        }
    }

    fn lines(&self) -> usize {
        self.feed.lock().unwrap().lines.len()
    }

    /// The lines from `from` on.
    fn since(&self, from: usize) -> Vec<String> {
        self.feed.lock().unwrap().lines[from..].to_vec()
    }

    fn notes(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Fails on any protocol error so far.
    fn check(&self) {
        let f = self.feed.lock().unwrap();
        assert!(
            f.errors.is_empty(),
            "the feed breaks the protocol: {:#?}\nall lines: {:#?}",
            f.errors,
            f.lines
        );
    }

    /// Waits (up to 5 s) until the syncer's set is exactly the pool's, as
    /// `ipamctl -o json pool export` prints it.
    fn wait_synced(&self, tb: &Testbed, pool: &str, what: &str) -> BTreeSet<String> {
        let start = Instant::now();
        loop {
            let want = export(tb, pool);
            let have = self.feed.lock().unwrap().set();
            if have.as_ref() == Some(&want) {
                self.check();
                return want;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{what}: after 5 s the syncer has {have:?}, the pool is {want:?}\n\
                 feed: {:#?}\nstderr: {:#?}",
                self.feed.lock().unwrap().lines,
                self.notes()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (up to `limit`) for the watcher to exit.
    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(
                start.elapsed() < limit,
                "the watcher still runs after {limit:?}; feed: {:#?}",
                self.feed.lock().unwrap().lines
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn export(tb: &Testbed, pool: &str) -> BTreeSet<String> {
    let v = tb.ipamctl_json(&["pool", "export", pool]);
    v["ips"]
        .as_array()
        .unwrap_or_else(|| panic!("pool export {pool}: no ips in {v}"))
        .iter()
        .map(|ip| ip.as_str().expect("an IP is a string").to_string())
        .collect()
}

fn resize(tb: &Testbed, pool: &str, size: u32) {
    let out = tb.ipamctl(&["pool", "resize", pool, "--size", &size.to_string()]);
    assert_ok(&out, &format!("pool resize {pool} --size {size}"));
}

fn assert_ok(out: &Output, what: &str) {
    moor_e2e::testbed::assert_ok(out, what);
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Every line of `lines` starts with `sign`, and there are `n`.
fn assert_all(lines: &[String], sign: &str, n: usize, what: &str) {
    assert_eq!(lines.len(), n, "{what}: {lines:#?}");
    assert!(
        lines.iter().all(|l| l.starts_with(sign)),
        "{what}: {lines:#?}"
    );
}

#[test]
fn pool_export_watch_follows_resize_and_restart() {
    let started = Instant::now();
    let tb = Testbed::new();
    const POOL: &str = "feed";
    tb.create_pool(POOL, POOL, 10);
    let mut w = Watcher::start(&tb, POOL);
    let first = w.wait_synced(&tb, POOL, "first snapshot");
    assert_eq!(first.len(), 10);
    assert_eq!(w.since(0)[0], "= 10");

    // Grow and shrink: one `+`/`-` line per IP that joined or left.
    let mark = w.lines();
    resize(&tb, POOL, 30);
    w.wait_synced(&tb, POOL, "resize to 30");
    assert_all(&w.since(mark), "+ ", 20, "resize 10 -> 30");
    let mark = w.lines();
    resize(&tb, POOL, 24);
    w.wait_synced(&tb, POOL, "resize to 24");
    assert_all(&w.since(mark), "- ", 6, "resize 30 -> 24");

    // Pod churn does not change the pool's IP set: no lines at all.
    let mark = w.lines();
    let churn = Instant::now();
    let pods: Vec<_> = (0..20)
        .map(|i| (tb.pod(&deployment_pod(POOL, i)), container_id()))
        .collect();
    for (pod, cid) in &pods {
        tb.moor("ADD", pod, cid, "1.0.0", &json!({}), None)
            .ok(&format!("ADD {}", pod.name));
    }
    assert_eq!(tb.pool_counts(POOL).in_use, 20);
    for (pod, cid) in &pods {
        tb.moor("DEL", pod, cid, "1.0.0", &json!({}), None)
            .ok(&format!("DEL {}", pod.name));
        tb.remove_pod(pod);
    }
    println!("20 pods ADD+DEL took {:.2?}", churn.elapsed());
    assert_eq!(tb.pool_counts(POOL).free, 24);
    // Give a stray line the time to arrive.
    std::thread::sleep(Duration::from_millis(300));
    w.wait_synced(&tb, POOL, "after pod churn");
    assert_eq!(
        w.since(mark),
        Vec::<String>::new(),
        "pod churn printed lines"
    );

    // ipamd restarts: the watcher says so on stderr, reconnects, and the
    // feed starts again with a full snapshot.
    let mark = w.lines();
    let stop = Instant::now();
    tb.stop_ipamd();
    println!("ipamd stopped in {:.2?} with a watch open", stop.elapsed());
    std::thread::sleep(Duration::from_millis(700));
    tb.start_ipamd();
    let restart = Instant::now();
    while w.feed.lock().unwrap().snapshots < 2 {
        assert!(
            restart.elapsed() < Duration::from_secs(10),
            "no new snapshot 10 s after ipamd restarted; stderr: {:#?}",
            w.notes()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "new snapshot {:.2?} after ipamd was back",
        restart.elapsed()
    );
    let after = w.wait_synced(&tb, POOL, "after the restart");
    let lines = w.since(mark);
    assert_eq!(lines[0], "= 24", "{lines:#?}");
    assert_all(&lines[1..], "+ ", 24, "the new snapshot");
    assert_eq!(after.len(), 24);
    let notes = w.notes();
    println!("the watcher's notes: {notes:#?}");
    assert!(
        !notes.is_empty() && notes.iter().all(|n| n.contains("reconnecting in")),
        "a note on stderr per reconnect: {notes:#?}"
    );
    assert!(
        notes[0].starts_with("ipamctl: watch of pool feed: "),
        "{notes:#?}"
    );

    // And it keeps following.
    let mark = w.lines();
    resize(&tb, POOL, 12);
    let end = w.wait_synced(&tb, POOL, "resize to 12 after the restart");
    assert_all(&w.since(mark), "- ", 12, "resize 24 -> 12");
    assert_eq!(end.len(), 12);

    // The pool goes: `! deleted`, exit 0.
    let out = tb.ipamctl(&["pool", "delete", POOL]);
    assert_ok(&out, "pool delete");
    let status = w.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "stderr: {:#?}", w.notes());
    // The reader thread may still hold the last line for a moment.
    let start = Instant::now();
    while !w.feed.lock().unwrap().deleted {
        assert!(start.elapsed() < Duration::from_secs(2), "no ! deleted");
        std::thread::sleep(Duration::from_millis(10));
    }
    w.check();
    assert_eq!(
        w.feed.lock().unwrap().lines.last().map(String::as_str),
        Some("! deleted")
    );
    let problems = tb.audit();
    assert!(problems.is_empty(), "audit: {problems:#?}");
    println!(
        "pool_export_watch_follows_resize_and_restart: {:.2?}",
        started.elapsed()
    );
}

// ------------------------------------------------------------ evict

fn evict(tb: &Testbed, ip: Ipv4Addr, force: bool) -> Value {
    let ip = ip.to_string();
    let mut args = vec!["ip", "evict", &ip];
    if force {
        args.push("--force");
    }
    tb.ipamctl_json(&args)
}

fn bindings(tb: &Testbed) -> Vec<Value> {
    match tb.ipamctl_json(&["binding", "list"]) {
        Value::Array(a) => a,
        other => panic!("binding list is not an array: {other}"),
    }
}

fn state_of(tb: &Testbed, ip: Ipv4Addr) -> String {
    let v = tb.ipamctl_json(&["ip", "show", &ip.to_string()]);
    v["state"].as_str().unwrap_or_default().to_string()
}

#[test]
fn evict_by_ip() {
    let tb = Testbed::new();
    tb.create_pool("web", "web", 6);
    let who = format!("{POD_NAMESPACE}/web-0");

    // web-0 runs: evict only marks, and says who holds the IP and where.
    let web0 = tb.pod(&statefulset_pod("web", 0));
    let c0 = container_id();
    let add = tb.moor("ADD", &web0, &c0, "1.0.0", &json!({}), None);
    add.ok("ADD web-0");
    let ip0 = add.ip();
    let out = tb.ipamctl(&["ip", "evict", &ip0.to_string()]);
    assert_ok(&out, "ip evict (held)");
    let table = text(&out.stdout);
    let first = table.lines().next().unwrap_or_default();
    assert!(
        first.contains(&who) && first.contains(&format!("node {}", tb.node)),
        "the first line names the pod and node: {table}"
    );
    assert!(table.contains("Address:"), "then the IP: {table}");
    let v = evict(&tb, ip0, false);
    assert_eq!(v["pending"], true, "{v}");
    assert_eq!(v["released"], false, "{v}");
    assert_eq!(v["holder"]["node"], tb.node.as_str(), "{v}");
    assert_eq!(v["holder"]["container_id"], c0.as_str(), "{v}");
    assert!(v["message"].as_str().unwrap().contains(&who), "{v}");
    let b = bindings(&tb);
    assert!(
        b.len() == 1 && b[0]["address"] == ip0.to_string().as_str() && b[0]["attached"] == true,
        "the binding stays while the pod runs: {b:#?}"
    );
    assert_eq!(state_of(&tb, ip0), "in-use");
    // The pod's DEL takes the binding with it.
    tb.moor("DEL", &web0, &c0, "1.0.0", &json!({}), None)
        .ok("DEL web-0");
    tb.remove_pod(&web0);
    assert_eq!(bindings(&tb), Vec::<Value>::new(), "binding gone with DEL");
    assert_eq!(state_of(&tb, ip0), "free");

    // web-1 was deleted (bound, not running): freed at once.
    let web1 = tb.pod(&statefulset_pod("web", 1));
    let c1 = container_id();
    let add = tb.moor("ADD", &web1, &c1, "1.0.0", &json!({}), None);
    add.ok("ADD web-1");
    let ip1 = add.ip();
    tb.moor("DEL", &web1, &c1, "1.0.0", &json!({}), None)
        .ok("DEL web-1");
    tb.remove_pod(&web1);
    assert_eq!(state_of(&tb, ip1), "bound");
    let v = evict(&tb, ip1, false);
    assert_eq!(v["released"], true, "{v}");
    assert_eq!(v["pending"], false, "{v}");
    assert!(v["holder"].is_null(), "{v}");
    assert_eq!(v["ip"]["state"], "free", "{v}");
    assert_eq!(bindings(&tb), Vec::<Value>::new());
    assert_eq!(state_of(&tb, ip1), "free");
    // Evicting a free IP: nothing to do, not an error.
    let v = evict(&tb, ip1, false);
    assert_eq!(
        (v["released"].clone(), v["pending"].clone()),
        (json!(false), json!(false)),
        "{v}"
    );

    // --force on a pod of this node: its interface goes now, and the IP.
    let web2 = tb.pod(&statefulset_pod("web", 2));
    let c2 = container_id();
    let add = tb.moor("ADD", &web2, &c2, "1.0.0", &json!({}), None);
    add.ok("ADD web-2");
    let ip2 = add.ip();
    assert_eq!(tb.host_links(), vec![host_ifname(&c2, "eth0")]);
    let v = evict(&tb, ip2, true);
    assert_eq!(v["released"], true, "{v}");
    assert_eq!(v["pending"], false, "{v}");
    assert_eq!(v["ip"]["state"], "free", "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains(&format!("{POD_NAMESPACE}/web-2")),
        "{v}"
    );
    assert_eq!(tb.host_links(), Vec::<String>::new(), "host veth gone");
    assert_eq!(state_of(&tb, ip2), "free");
    assert_eq!(bindings(&tb), Vec::<Value>::new());
    // The runtime's DEL that follows is fine (DEL never fails for a missing
    // thing).
    tb.moor("DEL", &web2, &c2, "1.0.0", &json!({}), None)
        .ok("DEL web-2 after the forced evict");
    tb.remove_pod(&web2);

    // An IP of no pool: exit 1, naming the IP, nothing on stdout.
    for ip in [tb.gateway.to_string(), "192.0.2.77".to_string()] {
        let out = tb.ipamctl(&["ip", "evict", &ip]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "evict {ip}: {stderr}");
        assert!(
            stderr.starts_with("ipamctl: ") && stderr.contains(&ip),
            "{stderr}"
        );
        assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    }
    let c = tb.pool_counts("web");
    assert_eq!((c.total, c.free), (6, 6), "{c:?}");
    let problems = tb.audit();
    assert!(problems.is_empty(), "audit: {problems:#?}");
}

// ------------------------------------------------------------ nodes

#[test]
fn node_list_shows_this_node_alive() {
    let tb = Testbed::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let v = tb.ipamctl_json(&["node", "list"]);
    let me = v
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == tb.node.as_str()))
        .unwrap_or_else(|| panic!("{} is not in node list: {v}", tb.node));
    assert_eq!(me["tor"], TOR, "{me}");
    assert_eq!(me["alive"], true, "{me}");
    assert!(
        me["version"].as_str().is_some_and(|s| !s.is_empty()),
        "{me}"
    );
    let heartbeat = me["heartbeat_unix"].as_u64().expect("heartbeat_unix");
    let started = me["started_unix"].as_u64().expect("started_unix");
    assert!(started <= heartbeat, "{me}");
    assert!(
        now.abs_diff(heartbeat) < 30,
        "heartbeat {heartbeat}, now {now}"
    );

    let out = tb.ipamctl(&["node", "list"]);
    assert_ok(&out, "node list");
    let table = text(&out.stdout);
    let row = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(tb.node.as_str()))
        .unwrap_or_else(|| panic!("no row for {}: {table}", tb.node));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1], TOR, "{table}");
    assert_eq!(cells[4], "yes", "{table}");
    assert!(row.ends_with("s ago"), "{table}");
}
