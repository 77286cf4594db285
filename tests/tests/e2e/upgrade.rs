//! Issue 15's done-when 4: an upgrade from the previous release to this one
//! with live pods, on redb and on etcd. The previous release is the commit
//! `tests/upgrade-from` names (store schema 3, so ipamd's 3 -> 4 and 4 -> 5
//! migrations run for real); `scripts/build-upgrade-from` builds its three binaries
//! into `target/upgrade-from/bin/` (scripts/test runs it). Without them the
//! tests fail, naming the script; they never skip.
//!
//! An upgrade is what a DaemonSet's rolling update does on a node: the old
//! ipamd is stopped (SIGTERM; or it dies, kill -9), the new one starts on the
//! same store, local state and pending-DEL directory, and the new `moor`
//! replaces the old in the CNI bin dir, while the pods stay. What must hold:
//! every pod keeps its IP (CHECK through the new moor passes, eth0 unchanged),
//! DEL of pods ADDed by the old release works, a DEL the old moor queued
//! while ipamd was down is replayed by the new ipamd, a sticky pod re-created
//! gets its IP, new ADDs work, the store is at schema 5 and `ipamctl audit`
//! finds nothing.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use moor_e2e::bins::{bins, previous_release};
use moor_e2e::cluster::{Cluster, Layout};
use moor_e2e::names::{container_id, deployment_pod, statefulset_pod};
use moor_e2e::prometheus::wait_for;
use moor_e2e::{Options, Pod, Testbed};
use serde_json::{json, Value};

use crate::support::prev_result;

/// The store schema of this release (the previous one's is 3).
const SCHEMA: u64 = 5;

/// A pod the test keeps up: its sandbox, container id, node and IP.
struct Live {
    pod: Pod,
    cid: String,
    node: &'static str,
    ip: Ipv4Addr,
}

/// How the old ipamd goes.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// SIGTERM, as the DaemonSet's rolling update stops it.
    Term,
    /// kill -9: it died (or was killed) at whatever point it was at.
    Kill9,
}

/// How long the waits below may take.
const WAIT: Duration = Duration::from_secs(10);

/// `Ok` once `done`, else what was seen (for `wait_for`'s panic).
fn settled(done: bool, seen: impl std::fmt::Debug) -> Result<(), String> {
    if done {
        Ok(())
    } else {
        Err(format!("{seen:?}"))
    }
}

/// The `ip list` entry of `ip`.
fn entry(list: &[Value], ip: Ipv4Addr) -> Option<&Value> {
    list.iter()
        .find(|e| e["address"] == ip.to_string().as_str())
}

/// `ip list` shows `l`'s IP attached to `l`'s container.
fn assert_attached(list: &[Value], l: &Live, when: &str) {
    let e = entry(list, l.ip).unwrap_or_else(|| panic!("{when}: {} not listed", l.ip));
    assert_eq!(
        e["attachment"]["container_id"],
        l.cid.as_str(),
        "{when}: {} of {} is attached to its container: {e}",
        l.ip,
        l.pod.name
    );
}

/// Asserts that `log` (every run of one node's ipamd, appended) says the
/// old release opened a schema 3 store and, after `from` bytes, that the new
/// one found it at `found` and runs on this release's schema; returns the
/// log's length.
/// Takes one of `node`'s Deployment (web-) pods out of `live`.
fn take_web_pod(live: &mut Vec<Live>, node: &str) -> Live {
    let at = live
        .iter()
        .position(|l| l.node == node && l.pod.name.starts_with("web-"))
        .unwrap_or_else(|| panic!("no web pod left on {node}"));
    live.remove(at)
}

fn assert_schema_log(log: &std::path::Path, from: usize, found: u32) -> usize {
    let text = std::fs::read_to_string(log).unwrap();
    assert!(
        text[..from].contains("store schema version 3"),
        "the previous release ran on schema 3: {}",
        log.display()
    );
    let new = &text[from..];
    let migrated = new.contains("migrating the store from=3 to=4")
        && new.contains("migrating the store from=4 to=5");
    assert_eq!(
        migrated,
        found == 3,
        "the new ipamd migrates a schema 3 store, not a migrated one:\n{new}"
    );
    assert!(
        new.contains(&format!("store schema version {SCHEMA}")),
        "the new ipamd says the store's schema version:\n{new}"
    );
    text.len()
}

/// `ipamctl -o json audit` through the new ipamctl: clean, this schema.
fn assert_audit_clean(audit: &Value) {
    assert_eq!(audit["clean"], json!(true), "{audit:#}");
    assert_eq!(audit["findings"], json!([]), "{audit:#}");
    assert_eq!(audit["schema_version"], json!(SCHEMA), "{audit:#}");
}

#[test]
fn upgrade_on_redb_after_sigterm() {
    upgrade_on_redb(Stop::Term);
}

#[test]
fn upgrade_on_redb_after_kill9() {
    upgrade_on_redb(Stop::Kill9);
}

fn upgrade_on_redb(stop: Stop) {
    let mut tb = Testbed::with(Options {
        bins: Some(previous_release()),
        ..Options::default()
    });
    tb.create_pool("db", "db", 4);
    tb.create_pool("web", "web", 4);
    let add = |tb: &Testbed, name: &str| {
        let pod = tb.pod(name);
        let cid = container_id();
        let r = tb.moor("ADD", &pod, &cid, "1.0.0", &json!({}), None);
        r.ok(&format!("ADD {name}"));
        Live {
            ip: r.ip(),
            pod,
            cid,
            node: "node",
        }
    };
    // Through the old moor and ipamd: StatefulSet pods (sticky) and
    // Deployment pods.
    let mut live: Vec<Live> = [
        statefulset_pod("db", 0),
        statefulset_pod("db", 1),
        deployment_pod("web", 1),
        deployment_pod("web", 2),
    ]
    .iter()
    .map(|n| add(&tb, n))
    .collect();

    match stop {
        Stop::Term => tb.stop_ipamd(),
        Stop::Kill9 => tb.kill9_ipamd(),
    }
    // Between the two ipamds the kubelet deletes a pod: the old moor
    // tears its veth down and queues the DEL for ipamd.
    let gone = live.pop().expect("four pods");
    tb.moor("DEL", &gone.pod, &gone.cid, "1.0.0", &json!({}), None)
        .ok("DEL with no ipamd (old moor)");
    let record = tb.pending_record(&gone.cid);
    assert!(record.is_file(), "old moor queued the DEL");
    tb.remove_pod(&gone.pod);

    let old_log = std::fs::metadata(&tb.log).unwrap().len() as usize;
    tb.set_bins(bins());
    tb.start_ipamd();
    assert_schema_log(&tb.log, old_log, 3);
    wait_for("the queued DEL replayed", WAIT, || {
        let e = tb.ipamctl_json(&["ip", "show", &gone.ip.to_string()]);
        settled(e["state"] == "free" && !record.exists(), e)
    });

    let list = tb.ip_list();
    for l in &live {
        assert_attached(&list, l, "after the upgrade");
        let prev = prev_result(&l.pod, "1.0.0", l.ip);
        tb.moor(
            "CHECK",
            &l.pod,
            &l.cid,
            "1.0.0",
            &json!({ "prevResult": prev }),
            None,
        )
        .ok(&format!("CHECK {} through the new moor", l.pod.name));
        let a = tb.pod_addr(&l.pod, "eth0").expect("eth0 stays");
        assert_eq!(a.ip, l.ip, "{} keeps its IP on eth0", l.pod.name);
    }
    assert_audit_clean(&tb.ipamctl_json(&["audit"]));

    // DEL of pods the old release ADDed; db-1 re-created gets its IP.
    let web = live.pop().expect("web pod");
    tb.moor("DEL", &web.pod, &web.cid, "1.0.0", &json!({}), None)
        .ok("DEL of an old Deployment pod");
    assert!(tb.pod_links(&web.pod).is_empty(), "its eth0 is gone");
    let e = tb.ipamctl_json(&["ip", "show", &web.ip.to_string()]);
    assert_eq!(e["state"], "free", "{e}");
    let db1 = live.pop().expect("db-1");
    tb.moor("DEL", &db1.pod, &db1.cid, "1.0.0", &json!({}), None)
        .ok("DEL of an old StatefulSet pod");
    tb.remove_pod(&db1.pod);
    let again = add(&tb, &db1.pod.name);
    assert_eq!(again.ip, db1.ip, "the re-created db-1 keeps its IP");
    live.push(again);
    live.push(add(&tb, &deployment_pod("web", 3)));
    assert_eq!(tb.pool_counts("web").in_use, 1, "one web pod up");

    assert_audit_clean(&tb.ipamctl_json(&["audit"]));
    let problems = tb.audit();
    assert!(problems.is_empty(), "audit: {problems:#?}");
}

/// Sets its flag when dropped: the churn thread stops also when the test
/// panics (a scope waits for its threads).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// ADD+DEL cycles of Deployment pods of pool `bg` on `nodes`, in turn,
/// until `stop`; counts the cycles in `done`, every failure in `failures`.
fn churn(
    c: &Cluster,
    nodes: &[&'static str],
    stop: &AtomicBool,
    done: &AtomicU64,
    failures: &Mutex<Vec<String>>,
) {
    static SEED: AtomicU64 = AtomicU64::new(0);
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let node = nodes[i % nodes.len()];
        i += 1;
        let pod = c.pod(&deployment_pod("bg", SEED.fetch_add(1, Ordering::Relaxed)));
        let cid = container_id();
        for (op, out) in [
            ("ADD", c.add(node, &pod, &cid)),
            ("DEL", c.del(node, &pod, &cid)),
        ] {
            if out.code != 0 {
                failures
                    .lock()
                    .unwrap()
                    .push(format!("{op} {} on {node}: {}", pod.name, out.stdout));
            }
        }
        c.remove_pod(&pod);
        done.fetch_add(1, Ordering::Relaxed);
    }
}

const NODES: [&str; 3] = ["n1", "n2", "n3"];

#[test]
fn rolling_update_on_etcd_while_add_and_del_go_on() {
    // n1, n2 under tor-a; n3 under tor-b; one 3-member etcd.
    let c = Cluster::new(Layout {
        bins: Some(previous_release()),
        ..Layout::standard()
    });
    c.create_pool("db", "db", 6, &[]);
    c.create_pool("web", "web", 12, &[]);
    c.create_pool("bg", "bg", 8, &[]);
    let mut live = Vec::new();
    for (i, node) in NODES.iter().enumerate() {
        let names = [
            statefulset_pod("db", i as u32),
            deployment_pod("web", 2 * i as u64),
            deployment_pod("web", 2 * i as u64 + 1),
        ];
        for name in names {
            let pod = c.pod(&name);
            let cid = container_id();
            let r = c.add(node, &pod, &cid);
            r.ok(&format!("ADD {name} on {node} (old release)"));
            live.push(Live {
                ip: r.ip(),
                pod,
                cid,
                node,
            });
        }
    }

    let mut cycles = Vec::new();
    for node in NODES {
        let others: Vec<&'static str> = NODES.into_iter().filter(|n| *n != node).collect();
        let (stop, done, failures) = (AtomicBool::new(false), AtomicU64::new(0), Mutex::default());
        let gone = std::thread::scope(|s| {
            let _stop = StopOnDrop(&stop);
            s.spawn(|| churn(&c, &others, &stop, &done, &failures));
            // Two cycles before: the others serve while this node's ipamd
            // goes.
            wait_for("churn before the update", WAIT, || {
                let n = done.load(Ordering::Relaxed);
                settled(n >= 2, n)
            });
            c.stop_ipamd(node);
            // The kubelet deletes one of the node's Deployment pods
            // meanwhile: the old moor queues the DEL.
            let gone = take_web_pod(&mut live, node);
            c.del(node, &gone.pod, &gone.cid)
                .ok("DEL with no ipamd (old moor)");
            assert_eq!(c.node(node).pending().len(), 1, "old moor queued the DEL");
            c.remove_pod(&gone.pod);
            let old_log = std::fs::metadata(&c.node(node).log).unwrap().len() as usize;
            c.set_bins(node, bins());
            c.start_ipamd(node);
            // The first new ipamd migrates; the others find it migrated.
            let found = if node == "n1" { 3 } else { SCHEMA as u32 };
            assert_schema_log(&c.node(node).log, old_log, found);
            // Mixed versions: two cycles more with the new ipamd up.
            let after = done.load(Ordering::Relaxed) + 2;
            wait_for("churn after the update", WAIT, || {
                let n = done.load(Ordering::Relaxed);
                settled(n >= after, n)
            });
            gone
        });
        let failures = failures.into_inner().unwrap();
        assert!(
            failures.is_empty(),
            "ADD/DEL on {others:?} while {node} was updated: {failures:#?}"
        );
        cycles.push((node, done.into_inner()));
        let schema = c.etcd_list("schema");
        assert_eq!(schema[0].1["version"], json!(SCHEMA), "{schema:?}");

        wait_for("the queued DEL replayed", WAIT, || {
            let e = c.ipamctl_json(node, &["ip", "show", &gone.ip.to_string()]);
            settled(e["state"] == "free" && c.node(node).pending().is_empty(), e)
        });
        let list = c.ip_list();
        for l in live.iter().filter(|l| l.node == node) {
            assert_attached(&list, l, &format!("after {node}'s update"));
            c.check(node, &l.pod, &l.cid, l.ip)
                .ok(&format!("CHECK {} through the new moor", l.pod.name));
            assert_eq!(c.pod_addr(&l.pod).map(|a| a.ip), Some(l.ip));
        }
        // DEL of a pod the old release ADDed, on the updated node.
        let web = take_web_pod(&mut live, node);
        c.del(node, &web.pod, &web.cid)
            .ok("DEL of an old pod after the update");
        assert!(c.pod_links(&web.pod).is_empty(), "its eth0 is gone");
        c.remove_pod(&web.pod);
        let e = c.ipamctl_json(node, &["ip", "show", &web.ip.to_string()]);
        assert_eq!(e["state"], "free", "{e}");
    }
    println!("ADD+DEL cycles on the other nodes during each node's update: {cycles:?}");

    // db-0 moves from n1 to n2 (same ToR) and keeps its IP.
    let at = live.iter().position(|l| l.pod.name == "db-0").unwrap();
    let db0 = live.remove(at);
    c.del("n1", &db0.pod, &db0.cid).ok("DEL db-0 on n1");
    c.remove_pod(&db0.pod);
    let pod = c.pod("db-0");
    let cid = container_id();
    let r = c.add("n2", &pod, &cid);
    r.ok("ADD db-0 on n2");
    assert_eq!(r.ip(), db0.ip, "db-0 keeps its IP on another node of tor-a");
    live.push(Live {
        ip: r.ip(),
        pod,
        cid,
        node: "n2",
    });

    // Nothing leaked: every attached IP is a live pod's; the churn's pool
    // is all free again.
    let list = c.ip_list();
    let attached: Vec<&Value> = list.iter().filter(|e| !e["attachment"].is_null()).collect();
    assert_eq!(attached.len(), live.len(), "{attached:#?}");
    for l in &live {
        assert_attached(&list, l, "at the end");
    }
    let (bg, _) = c.pool_counts("bg");
    assert_eq!((bg.in_use, bg.bound), (0, 0), "{bg:?}");
    assert_audit_clean(&c.ipamctl_json("n1", &["audit"]));
    let problems = c.audit();
    assert!(problems.is_empty(), "audit: {problems:#?}");
}
