//! Issue 3's "Done when" 1-5: cluster mode on a real 3-member etcd cluster,
//! three ipamds (three node namespaces under two ToRs), the real `moor`
//! binary run inside each node namespace (see `moor_e2e::cluster`).
//!
//! 1. `thousand_concurrent_add_del_across_three_nodes`: 1,000 ADD/DEL pairs
//!    from 12 workers over three nodes: no duplicate IP, no leak, exact counts.
//! 2. `sticky_pod_moves_within_its_tor_only`: same IP and MAC on another node
//!    of its ToR; a clear error and no IP on a node of another ToR.
//! 3. `etcd_outages`: a member SIGKILLed mid-burst; the whole cluster down
//!    (ADD fails fast with 11, DEL and CHECK work, ipamd restarts); etcd back:
//!    every DEL made meanwhile lands, nothing is duplicated.
//! 4. `kill9_ipamd_mid_burst_matches_etcd`: after kill -9 and restart, the
//!    node's attachments in etcd are exactly the ADDs that succeeded.
//! 5. `pool_export_watch_survives_etcd_restart`: a whitelist syncer fed by
//!    `ipamctl pool export --watch` ends with exactly the pool's IP set.
//!
//! Timings are printed, never asserted, except issue 3's "ADD fails with code
//! 11 within 2 s" during a full outage.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use moor_e2e::cluster::{Cluster, Layout};
use moor_e2e::names::{container_id, deployment_pod, statefulset_pod};
use moor_e2e::{CniRun, Counts, Pod};
use moor_proto::{format_mac, host_ifname, mac_for_ipv4};
use moor_testkit::process::Reaped;
use serde_json::Value;

use crate::support::{assert_host_veth, assert_unwired, Feed};

const NODES: [&str; 3] = ["n1", "n2", "n3"];
const TRY_AGAIN_LATER: u64 = 11;
const WRONG_TOR: u64 = 101;

// ------------------------------------------------------------ helpers

/// Checks a successful ADD on `node` against its ToR and the pod's eth0:
/// the IP is in the ToR's pod range with its prefix and gateway, the MAC is
/// the one derived from the IP, and eth0 really has both. Returns (IP, MAC).
fn check_added(c: &Cluster, node: &str, pod: &Pod, r: &CniRun) -> (Ipv4Addr, String) {
    r.ok(&format!("ADD {} on {node}", pod.name));
    let tor = c.tor_of(node);
    let ip = r.ip();
    assert!(
        tor.in_range(ip),
        "ADD {} on {node}: {ip} is not in {}'s pod range {:?}",
        pod.name,
        tor.name,
        tor.range
    );
    assert_eq!(r.json["ips"][0]["address"], format!("{ip}/24").as_str());
    assert_eq!(
        r.json["ips"][0]["gateway"],
        tor.gateway.to_string().as_str(),
        "gateway of {}",
        pod.name
    );
    let mac = format_mac(&mac_for_ipv4(ip));
    let iface = r.json["interfaces"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["sandbox"] == pod.netns_path().as_str()))
        .unwrap_or_else(|| panic!("no interface in the pod's sandbox: {}", r.stdout));
    assert_eq!(iface["name"], "eth0");
    assert_eq!(iface["mac"], mac.as_str());
    let a = c
        .pod_addr(pod)
        .unwrap_or_else(|| panic!("{} on {node}: no IPv4 on eth0 after ADD", pod.name));
    assert_eq!((a.ip, a.prefix, a.mac.as_str()), (ip, 24, mac.as_str()));
    (ip, mac)
}

/// Step failures of worker threads, which must not panic between barriers.
#[derive(Default)]
struct Failures(Mutex<Vec<String>>);

impl Failures {
    fn attempt<T>(&self, what: &str, f: impl FnOnce() -> T) -> Option<T> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(v) => Some(v),
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                self.0.lock().unwrap().push(format!("{what}: {msg}"));
                None
            }
        }
    }

    fn assert_none(self) {
        let f = self.0.into_inner().unwrap();
        assert!(f.is_empty(), "{} failures:\n{}", f.len(), f.join("\n"));
    }
}

fn percentile(v: &mut [Duration], p: usize) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[(v.len() * p / 100).min(v.len() - 1)]
}

/// Polls `f` every 200 ms until it returns Some, for at most `limit`;
/// returns the value and how long it took.
fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> (T, Duration) {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return (v, start.elapsed());
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?} (a hang, not a slow run)"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `ip list` entries keyed by address.
fn ips_by_addr(c: &Cluster) -> BTreeMap<Ipv4Addr, Value> {
    c.ip_list()
        .into_iter()
        .map(|e| (e["address"].as_str().unwrap().parse().unwrap(), e))
        .collect()
}

fn counts(total: u64, bound: u64, in_use: u64) -> Counts {
    Counts {
        total,
        bound,
        in_use,
        free: total - bound - in_use,
    }
}

fn assert_audit_clean(c: &Cluster) {
    let problems = c.audit();
    assert!(problems.is_empty(), "audit of etcd: {problems:#?}");
}

/// Attached container ids per IP in `ip list`: none twice, no IP twice.
fn attachments(c: &Cluster) -> BTreeMap<String, (Ipv4Addr, String)> {
    let mut out = BTreeMap::new();
    for e in c.ip_list() {
        let Some(cid) = e["attachment"]["container_id"].as_str() else {
            continue;
        };
        let ip: Ipv4Addr = e["address"].as_str().unwrap().parse().unwrap();
        let node = e["attachment"]["node"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            out.insert(cid.to_string(), (ip, node)).is_none(),
            "container {cid} holds two IPs"
        );
    }
    out
}

/// The leases in etcd, read raw, attached on `node` (None: on any node).
fn raw_attached(c: &Cluster, node: Option<&str>) -> usize {
    c.etcd_list("leases/")
        .iter()
        .filter(|(_, l)| {
            let n = &l["attachment"]["key"]["node"];
            n.is_string() && node.is_none_or(|node| n == node)
        })
        .count()
}

// ------------------------------------------------------------ 1

const WORKERS: usize = 12;
const PAIRS: usize = 1000;
/// StatefulSet pods `web-0` .. `web-23`: even ordinals live on tor-a (moving
/// between n1 and n2), odd ones on tor-b (n3).
const STICKY: usize = 24;

/// One ADD/DEL pair as it happened.
struct Pair {
    pod: String,
    sticky: bool,
    node: &'static str,
    ip: Ipv4Addr,
    add_took: Duration,
    del_took: Duration,
}

/// Who worker `w` runs in wave `wave`: (pod name, sticky, node). Half the
/// workers run a StatefulSet pod each wave; a name runs in two consecutive
/// waves on two different workers (and, on tor-a, nodes), so its new
/// instance's ADD races the old one's DEL.
fn plan(w: usize, wave: usize) -> (String, bool, &'static str) {
    if (w + wave).is_multiple_of(2) {
        let ordinal = (3 * wave + w / 2) % STICKY;
        let node = if !ordinal.is_multiple_of(2) {
            "n3"
        } else if wave.is_multiple_of(2) {
            "n1"
        } else {
            "n2"
        };
        (statefulset_pod("web", ordinal as u32), true, node)
    } else {
        let seed = (wave * WORKERS + w) as u64;
        (deployment_pod("web", seed), false, NODES[(w + wave) % 3])
    }
}

#[test]
fn thousand_concurrent_add_del_across_three_nodes() {
    let c = Cluster::new(Layout::standard());
    // Another app's pool on tor-a first, so the ToRs' free IPs are 170 and
    // 100, not their sizes: 90 IPs spread 56.7 : 33.3 -> 57 : 33.
    c.create_pool("db", "db", 30, &["tor-a"]);
    c.create_pool("web", "web", 90, &[]);
    let (total, per_tor) = c.pool_counts("web");
    assert_eq!(total, counts(90, 0, 0));
    assert_eq!(
        per_tor,
        vec![
            ("tor-a".to_string(), counts(57, 0, 0)),
            ("tor-b".to_string(), counts(33, 0, 0))
        ],
        "pool web's IPs follow the ToRs' free IPs (170 : 100)"
    );
    let web_ips = ips_by_addr(&c);
    for (ip, e) in web_ips.iter().filter(|(_, e)| e["pool"] == "web") {
        let tor = e["tor"].as_str().unwrap();
        assert!(c.tor(tor).in_range(*ip), "{ip} of ToR {tor}");
    }

    let sandboxes: Vec<Pod> = (0..WORKERS)
        .map(|w| c.pod(&format!("sandbox-{w}")))
        .collect();
    let waves = PAIRS.div_ceil(WORKERS);
    let barrier = Barrier::new(WORKERS);
    let wave_ips: Mutex<Vec<Vec<(String, Ipv4Addr)>>> = Mutex::new(vec![Vec::new(); waves]);
    let pairs: Mutex<Vec<Pair>> = Mutex::new(Vec::new());
    let retries = AtomicUsize::new(0);
    let retry_wait: Mutex<Vec<Duration>> = Mutex::new(Vec::new());
    let failures = Failures::default();

    let start = Instant::now();
    std::thread::scope(|s| {
        for (w, sandbox) in sandboxes.iter().enumerate() {
            let (c, barrier, wave_ips, pairs, failures) =
                (&c, &barrier, &wave_ips, &pairs, &failures);
            let (retries, retry_wait) = (&retries, &retry_wait);
            s.spawn(move || {
                // The pod this worker has up: (pod, cid, node, sticky, ip, add_took).
                type Live = (Pod, String, &'static str, bool, Ipv4Addr, Duration);
                let mut live: Option<Live> = None;
                let del = |l: Live| {
                    let (pod, cid, node, sticky, ip, add_took) = l;
                    failures.attempt(&format!("DEL {} on {node}", pod.name), || {
                        let r = c.del(node, &pod, &cid);
                        r.ok("DEL");
                        assert!(c.pod_links(&pod).is_empty(), "eth0 is gone after DEL");
                        pairs.lock().unwrap().push(Pair {
                            pod: pod.name.clone(),
                            sticky,
                            node,
                            ip,
                            add_took,
                            del_took: r.took,
                        });
                    });
                };
                for wave in 0..waves {
                    // The runtime tears down this worker's previous pod while
                    // the other workers' ADDs of this wave run.
                    if let Some(l) = live.take() {
                        del(l);
                    }
                    if wave * WORKERS + w < PAIRS {
                        let (name, sticky, node) = plan(w, wave);
                        let pod = Pod {
                            name,
                            uid: format!("uid-{wave}-{w}"),
                            ..sandbox.clone()
                        };
                        let what = format!("ADD {} on {node} (wave {wave})", pod.name);
                        live = failures.attempt(&what, || {
                            let cid = container_id();
                            let t0 = Instant::now();
                            let mut r = c.add(node, &pod, &cid);
                            let mut tries = 0;
                            // Only a StatefulSet pod whose previous instance
                            // is still attached may be told to retry.
                            while sticky
                                && r.code != 0
                                && r.err_code("ADD") == TRY_AGAIN_LATER
                                && t0.elapsed() < Duration::from_secs(20)
                            {
                                assert!(
                                    r.message().contains("still attached"),
                                    "11 for another reason: {}",
                                    r.message()
                                );
                                retries.fetch_add(1, Ordering::Relaxed);
                                tries += 1;
                                std::thread::sleep(Duration::from_millis(50));
                                r = c.add(node, &pod, &cid);
                            }
                            if tries > 0 {
                                retry_wait.lock().unwrap().push(t0.elapsed());
                            }
                            let (ip, _) = check_added(c, node, &pod, &r);
                            wave_ips.lock().unwrap()[wave].push((pod.name.clone(), ip));
                            (pod, cid, node, sticky, ip, t0.elapsed())
                        });
                    }
                    barrier.wait();
                }
                if let Some(l) = live.take() {
                    del(l);
                }
            });
        }
    });
    let wall = start.elapsed();
    failures.assert_none();
    let pairs = pairs.into_inner().unwrap();
    assert_eq!(pairs.len(), PAIRS, "every ADD and DEL succeeded");

    // No two live pods had one IP: every wave's pods were all up at once.
    for (wave, ips) in wave_ips.into_inner().unwrap().iter().enumerate() {
        let distinct: BTreeSet<_> = ips.iter().map(|(_, ip)| ip).collect();
        assert_eq!(
            distinct.len(),
            ips.len(),
            "wave {wave}: duplicate IP among {ips:?}"
        );
    }
    // StatefulSet pods got their IP back every time, on their own ToR.
    let mut sticky_ips: BTreeMap<&str, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    let mut nodes_of: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for p in pairs.iter().filter(|p| p.sticky) {
        sticky_ips.entry(&p.pod).or_default().insert(p.ip);
        nodes_of.entry(&p.pod).or_default().insert(p.node);
    }
    assert_eq!(sticky_ips.len(), STICKY);
    for (pod, ips) in &sticky_ips {
        assert_eq!(ips.len(), 1, "{pod} got different IPs: {ips:?}");
    }
    let moved = nodes_of.values().filter(|n| n.len() > 1).count();
    let bound = STICKY as u64;

    let mut adds: Vec<Duration> = pairs.iter().map(|p| p.add_took).collect();
    let mut dels: Vec<Duration> = pairs.iter().map(|p| p.del_took).collect();
    let retried = retry_wait.into_inner().unwrap();
    let per_node: BTreeMap<&str, usize> = pairs.iter().fold(BTreeMap::new(), |mut m, p| {
        *m.entry(p.node).or_default() += 1;
        m
    });
    println!(
        "cluster: {PAIRS} ADD/DEL pairs from {WORKERS} workers over 3 nodes in {wall:.2?} ({:.1} pairs/s; per node {per_node:?}); \
         ADD p50 {:?} p99 {:?}; DEL p50 {:?} p99 {:?}; {} ADD retries (code 11, previous instance still attached) \
         in {} ADDs, longest {:?}; {moved} of {STICKY} StatefulSet pods moved between nodes",
        PAIRS as f64 / wall.as_secs_f64(),
        percentile(&mut adds, 50),
        percentile(&mut adds, 99),
        percentile(&mut dels, 50),
        percentile(&mut dels, 99),
        retries.load(Ordering::Relaxed),
        retried.len(),
        retried.iter().max().copied().unwrap_or_default(),
    );

    // Nothing leaked.
    assert!(
        c.all_host_links().is_empty(),
        "leftover host veths: {:?}",
        c.all_host_links()
    );
    for n in &c.nodes {
        assert!(n.pending().is_empty(), "{}: pending DELs left", n.name);
    }
    let (total, per_tor) = c.pool_counts("web");
    assert_eq!(total, counts(90, bound, 0));
    assert_eq!(
        per_tor,
        vec![
            ("tor-a".to_string(), counts(57, bound / 2, 0)),
            ("tor-b".to_string(), counts(33, bound / 2, 0))
        ]
    );
    let web: Vec<Value> = c
        .ip_list()
        .into_iter()
        .filter(|e| e["pool"] == "web")
        .collect();
    assert_eq!(web.len(), 90);
    for e in &web {
        assert!(e["attachment"].is_null(), "still attached: {e}");
        if e["state"] == "bound" {
            let name = e["binding"]["name"].as_str().unwrap();
            let ip: Ipv4Addr = e["address"].as_str().unwrap().parse().unwrap();
            assert_eq!(
                sticky_ips.get(name).map(|s| s.contains(&ip)),
                Some(true),
                "bound {ip} is the one its StatefulSet pod {name} had"
            );
        } else {
            assert_eq!(e["state"], "free", "{e}");
        }
    }
    assert_eq!(c.etcd_list("bindings/").len(), STICKY);
    assert!(c.etcd_list("attachments/").is_empty());
    assert_audit_clean(&c);
}

// ------------------------------------------------------------ 2

#[test]
fn sticky_pod_moves_within_its_tor_only() {
    let c = Cluster::new(Layout::standard());
    c.create_pool("web", "web", 30, &[]);
    let alive: BTreeSet<String> = c
        .ipamctl_json("n3", &["node", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["alive"] == true)
        .map(|n| {
            format!(
                "{}@{}",
                n["name"].as_str().unwrap(),
                n["tor"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        alive,
        ["n1@tor-a", "n2@tor-a", "n3@tor-b"]
            .map(String::from)
            .into(),
        "every ipamd registered its node"
    );

    // A Deployment pod on n1 to talk to.
    let peer = c.pod(&deployment_pod("web", 1));
    let peer_cid = container_id();
    let (peer_ip, _) = check_added(&c, "n1", &peer, &c.add("n1", &peer, &peer_cid));

    // web-0 on n1.
    let p1 = c.pod(&statefulset_pod("web", 0));
    let cid1 = container_id();
    let (x, mac) = check_added(&c, "n1", &p1, &c.add("n1", &p1, &cid1));
    assert!(
        c.ping(&p1, c.tor("tor-a").gateway),
        "web-0 on n1 reaches the gateway"
    );
    c.del("n1", &p1, &cid1).ok("DEL web-0 on n1");
    c.remove_pod(&p1);
    let e = &ips_by_addr(&c)[&x];
    assert_eq!(e["state"], "bound", "{e}");
    assert_eq!(e["binding"]["name"], "web-0");

    // Re-created on n2 (same ToR): a new sandbox, the same IP and MAC.
    let p2 = c.pod(&statefulset_pod("web", 0));
    let cid2 = container_id();
    let (x2, mac2) = check_added(&c, "n2", &p2, &c.add("n2", &p2, &cid2));
    assert_eq!((x2, &mac2), (x, &mac), "web-0 keeps its IP and MAC on n2");
    assert!(
        c.ping(&p2, c.tor("tor-a").gateway),
        "web-0 on n2 reaches the gateway"
    );
    assert!(c.ping(&p2, peer_ip), "web-0 on n2 reaches {peer_ip} on n1");
    assert!(c.ping(&peer, x), "the pod on n1 reaches web-0 on n2");
    let e = &ips_by_addr(&c)[&x];
    assert_eq!(
        (e["state"].as_str(), e["attachment"]["node"].as_str()),
        (Some("in-use"), Some("n2"))
    );
    c.del("n2", &p2, &cid2).ok("DEL web-0 on n2");
    c.remove_pod(&p2);

    // Scheduled onto n3 (tor-b): a clear error, no IP.
    let p3 = c.pod(&statefulset_pod("web", 0));
    let cid3 = container_id();
    let r = c.add("n3", &p3, &cid3);
    assert_eq!(r.err_code("ADD web-0 on n3"), WRONG_TOR, "{}", r.stdout);
    let msg = r.message();
    println!("cluster: web-0 on tor-b: {msg}");
    for want in ["tor-a", "tor-b", &x.to_string(), "web-0"] {
        assert!(msg.contains(want), "the error names {want}: {msg}");
    }
    let can_run: BTreeSet<&str> = msg
        .split("it can run on ")
        .nth(1)
        .and_then(|rest| rest.split([';', ')']).next())
        .unwrap_or_else(|| panic!("the error says where the pod can run: {msg}"))
        .split(", ")
        .map(str::trim)
        .collect();
    assert_eq!(can_run, ["n1", "n2"].into(), "{msg}");
    assert!(c.pod_links(&p3).is_empty(), "{:?}", c.pod_links(&p3));
    assert!(c.host_links("n3").is_empty(), "{:?}", c.host_links("n3"));
    let e = &ips_by_addr(&c)[&x];
    assert_eq!(e["state"], "bound", "{e}");
    assert!(e["attachment"].is_null(), "{e}");
    assert!(attachments(&c).values().all(|(_, node)| node != "n3"));
    // The runtime's DEL after the failed ADD changes nothing.
    c.del("n3", &p3, &cid3).ok("DEL after the refused ADD");
    c.del("n1", &peer, &peer_cid).ok("DEL peer");
    let (total, per_tor) = c.pool_counts("web");
    assert_eq!(total, counts(30, 1, 0));
    assert_eq!(per_tor[0], ("tor-a".to_string(), counts(20, 1, 0)));
    assert!(c.all_host_links().is_empty());
    assert_audit_clean(&c);
}

// ------------------------------------------------------------ 3

#[test]
fn etcd_outages() {
    let c = Cluster::new(Layout::standard());
    c.create_pool("api", "api", 60, &[]);
    let killed = burst_with_a_member_killed(&c);
    // The killed member rejoins.
    let t = Instant::now();
    c.etcd_start(killed);
    c.etcd_wait_ready();
    println!(
        "cluster: etcd member m{killed} back in the cluster in {:.2?}",
        t.elapsed()
    );
    whole_cluster_down_and_back(&c);
}

const BURST_WORKERS: usize = 8;
const BURST_PAIRS: usize = 15;
const KILL_AFTER: usize = 30;

/// (a): 8 workers on n1 and n2, 120 ADD/DEL pairs; the etcd leader gets
/// SIGKILL after 30. Returns the killed member.
fn burst_with_a_member_killed(c: &Cluster) -> usize {
    let done = AtomicUsize::new(0);
    let tries_11 = AtomicUsize::new(0);
    let add_times: Mutex<Vec<Duration>> = Mutex::new(Vec::new());
    let failures = Failures::default();
    let sandboxes: Vec<Pod> = (0..BURST_WORKERS)
        .map(|w| c.pod(&format!("burst-{w}")))
        .collect();
    let mut killed = None;
    let start = Instant::now();
    std::thread::scope(|s| {
        for (w, sandbox) in sandboxes.iter().enumerate() {
            let (done, tries_11, add_times, failures) = (&done, &tries_11, &add_times, &failures);
            s.spawn(move || {
                let node = NODES[w % 2];
                for i in 0..BURST_PAIRS {
                    let name = if i.is_multiple_of(2) {
                        statefulset_pod("api", w as u32)
                    } else {
                        deployment_pod("api", (w * BURST_PAIRS + i) as u64)
                    };
                    let pod = Pod {
                        name,
                        ..sandbox.clone()
                    };
                    failures.attempt(&format!("pair {i} of {} on {node}", pod.name), || {
                        // Like a runtime: a failed ADD is torn down (DEL) and
                        // retried in a new sandbox (a new container id).
                        let t0 = Instant::now();
                        let (cid, r) = loop {
                            let cid = container_id();
                            let r = c.add(node, &pod, &cid);
                            if r.code == 0 || t0.elapsed() > Duration::from_secs(30) {
                                break (cid, r);
                            }
                            assert_eq!(r.err_code("ADD"), TRY_AGAIN_LATER, "{}", r.stdout);
                            tries_11.fetch_add(1, Ordering::Relaxed);
                            c.del(node, &pod, &cid).ok("DEL after a failed ADD");
                            std::thread::sleep(Duration::from_millis(100));
                        };
                        check_added(c, node, &pod, &r);
                        add_times.lock().unwrap().push(t0.elapsed());
                        c.del(node, &pod, &cid).ok("DEL");
                        assert!(c.pod_links(&pod).is_empty());
                        done.fetch_add(1, Ordering::SeqCst);
                    });
                }
            });
        }
        while done.load(Ordering::SeqCst) < KILL_AFTER {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "the burst is stuck"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let leader = c.etcd_leader().unwrap_or(0);
        c.etcd_kill9(leader);
        killed = Some((leader, start.elapsed(), done.load(Ordering::SeqCst)));
    });
    let wall = start.elapsed();
    failures.assert_none();
    let (leader, at, done_at) = killed.unwrap();
    let mut adds = add_times.into_inner().unwrap();
    println!(
        "cluster: burst of {} ADD/DEL pairs on n1+n2 in {wall:.2?}; etcd leader m{leader} SIGKILLed at {at:.2?} \
         after {done_at} pairs; {} ADDs answered 11 and were retried; ADD (with retries) p50 {:?} p99 {:?} max {:?}",
        BURST_WORKERS * BURST_PAIRS,
        tries_11.load(Ordering::Relaxed),
        percentile(&mut adds, 50),
        percentile(&mut adds, 99),
        adds.iter().max().copied().unwrap_or_default(),
    );
    // DELs deferred during the election land within a few replay ticks.
    let (_, took) = wait_for(Duration::from_secs(60), "pending DELs applied", || {
        c.nodes.iter().all(|n| n.pending().is_empty()).then_some(())
    });
    println!("cluster: pending DELs after the burst applied in {took:.2?}");
    assert!(c.all_host_links().is_empty(), "{:?}", c.all_host_links());
    let (total, _) = c.pool_counts("api");
    assert_eq!(total, counts(60, BURST_WORKERS as u64, 0));
    assert!(c.etcd_list("attachments/").is_empty());
    assert_audit_clean(c);
    leader
}

/// A pod that is up on a node.
struct Up {
    node: &'static str,
    pod: Pod,
    cid: String,
    ip: Ipv4Addr,
}

fn up(c: &Cluster, node: &'static str, name: &str) -> Up {
    let pod = c.pod(name);
    let cid = container_id();
    let (ip, _) = check_added(c, node, &pod, &c.add(node, &pod, &cid));
    Up { node, pod, cid, ip }
}

/// (b) and (c).
fn whole_cluster_down_and_back(c: &Cluster) {
    // api-0 is bound on tor-a since the burst; api-50 gets bound on tor-b.
    let s1 = up(c, "n1", &statefulset_pod("api", 0));
    let d1 = up(c, "n1", &deployment_pod("api", 1001));
    let d2 = up(c, "n2", &deployment_pod("api", 1002));
    let d3 = up(c, "n2", &deployment_pod("api", 1003));
    let s3 = up(c, "n3", &statefulset_pod("api", 50));
    let d4 = up(c, "n3", &deployment_pod("api", 1004));
    // api-0 .. api-7 from the burst, and api-50.
    let bound_after = BURST_WORKERS as u64 + 1;

    // (b) The whole cluster stops.
    c.etcd_kill9_all();
    let down = Instant::now();
    let mut failed_adds: Vec<(&'static str, Pod, String)> = Vec::new();
    let mut add_fail_times = Vec::new();
    let mut try_add = |node: &'static str, what: &str| {
        let pod = c.pod(&deployment_pod("api", 2000 + failed_adds.len() as u64));
        let cid = container_id();
        let r = c.add(node, &pod, &cid);
        assert_eq!(r.err_code(what), TRY_AGAIN_LATER, "{what}: {}", r.stdout);
        assert!(
            r.message().contains("etcd") || r.message().contains("store"),
            "{what}: the error says the store is out of reach: {}",
            r.message()
        );
        assert!(
            r.took < Duration::from_secs(2),
            "{what}: ADD took {:?}, issue 3 says within 2 s",
            r.took
        );
        assert!(c.pod_links(&pod).is_empty());
        add_fail_times.push((what.to_string(), r.took));
        failed_adds.push((node, pod, cid));
        r
    };
    let first = try_add("n1", "first ADD on n1 after the outage began");
    println!("cluster: ADD during the outage: {}", first.message());
    try_add("n1", "second ADD on n1");
    try_add("n3", "first ADD on n3");

    let mut del_times = Vec::new();
    let mut del_during = |u: &Up, what: &str| {
        let r = c.del(u.node, &u.pod, &u.cid);
        r.ok(what);
        del_times.push(r.took);
        assert!(c.pod_links(&u.pod).is_empty(), "{what}: eth0 left");
        let host = host_ifname(&u.cid, "eth0");
        assert!(
            !c.host_links(u.node).contains(&host),
            "{what}: host veth {host} left"
        );
        let pending: Vec<String> = c
            .node(u.node)
            .pending()
            .into_iter()
            .map(|p| p.container_id)
            .collect();
        assert!(
            pending.contains(&u.cid),
            "{what}: no pending record in {} ({pending:?})",
            c.node(u.node).pending_dir.display()
        );
    };
    del_during(&d1, "DEL of a Deployment pod on n1 during the outage");
    del_during(&s1, "DEL of StatefulSet pod api-0 on n1 during the outage");
    // CHECK is served from the local mirror.
    c.check("n3", &d4.pod, &d4.cid, d4.ip)
        .ok("CHECK on n3 during the outage");
    c.check("n3", &s3.pod, &s3.cid, s3.ip)
        .ok("CHECK of api-50 on n3 during the outage");

    // ipamd restarts while etcd is down: it starts, and DEL and CHECK work.
    let t = Instant::now();
    c.stop_ipamd("n2");
    c.start_ipamd("n2");
    println!(
        "cluster: ipamd of n2 restarted during the outage in {:.2?}",
        t.elapsed()
    );
    c.check("n2", &d3.pod, &d3.cid, d3.ip)
        .ok("CHECK on n2 after its restart during the outage");
    del_during(&d2, "DEL on n2 after its restart during the outage");
    del_during(&s3, "DEL of StatefulSet pod api-50 on n3 during the outage");
    // api-50 starts again on n3 while etcd is still down: n3 cached its
    // binding at the DEL, so it gets its own IP back at once (issue 3: "ADD
    // during an outage fails ... unless the pod re-uses its own binding
    // already cached on this node"), and it reaches its gateway.
    let s3b = {
        let pod = c.pod(&statefulset_pod("api", 50));
        let cid = container_id();
        let r = c.add("n3", &pod, &cid);
        let (ip, _) = check_added(c, "n3", &pod, &r);
        assert_eq!(
            ip, s3.ip,
            "api-50 restarted on its own IP during the outage"
        );
        assert!(
            c.ping(&pod, c.tor_of("n3").gateway),
            "api-50 reaches its gateway"
        );
        Up {
            node: "n3",
            pod,
            cid,
            ip,
        }
    };
    // api-0's binding was cached on n1, not n3: no IP for it on n3.
    {
        let pod = c.pod(&statefulset_pod("api", 0));
        let r = c.add("n3", &pod, &container_id());
        assert_eq!(
            r.err_code("ADD of api-0 on n3 during the outage"),
            TRY_AGAIN_LATER
        );
        assert!(c.pod_links(&pod).is_empty());
    }
    // Past the fail-fast window: ADDs still fail fast.
    std::thread::sleep(Duration::from_secs(4).saturating_sub(down.elapsed()));
    try_add("n2", "ADD on n2 (restarted) 4 s into the outage");
    try_add("n1", "ADD on n1 4 s into the outage");
    println!(
        "cluster: outage: ADDs failed with 11 in {add_fail_times:?}; DELs took {del_times:?}; outage lasted {:.2?}",
        down.elapsed()
    );

    // (c) etcd back on the same data directories.
    let t = Instant::now();
    c.etcd_start_all();
    let etcd_ready = t.elapsed();
    let gone = [d1.ip, d2.ip];
    wait_for(Duration::from_secs(60), "outage DELs applied", || {
        if c.nodes.iter().any(|n| !n.pending().is_empty()) {
            return None;
        }
        let ips = ips_by_addr(c);
        let state = |ip: &Ipv4Addr| ips[ip]["state"].as_str().unwrap_or("").to_string();
        let done = gone.iter().all(|ip| state(ip) == "free")
            && state(&s1.ip) == "bound"
            && [&d3, &d4, &s3b]
                .iter()
                .all(|u| ips[&u.ip]["attachment"]["container_id"] == u.cid.as_str());
        done.then_some(())
    });
    println!(
        "cluster: etcd back: members ready in {etcd_ready:.2?}; every DEL of the outage in etcd {:.2?} after the restart",
        t.elapsed()
    );
    // Nothing duplicated: exactly d3 and d4 attached, each once; the two
    // StatefulSet pods keep their bindings; no pending record left.
    let att = attachments(c);
    let want: BTreeMap<String, (Ipv4Addr, String)> = [&d3, &d4, &s3b]
        .iter()
        .map(|u| (u.cid.clone(), (u.ip, u.node.to_string())))
        .collect();
    assert_eq!(att, want, "attachments after the outage");
    assert_eq!(raw_attached(c, None), 3);
    assert!(
        c.etcd_list("attachments/").is_empty(),
        "no index entries on etcd (schema 5)"
    );
    let bindings = c.etcd_list("bindings/");
    let bound_ips: BTreeSet<&str> = bindings
        .iter()
        .map(|(_, b)| b["ip"].as_str().unwrap())
        .collect();
    assert_eq!(bound_ips.len(), bindings.len(), "one IP per binding");
    for u in [&s1, &s3] {
        assert!(bound_ips.contains(u.ip.to_string().as_str()));
    }
    let (total, _) = c.pool_counts("api");
    assert_eq!(total, counts(60, bound_after - 1, 3));
    for u in [&d3, &d4, &s3b] {
        assert_eq!(c.pod_addr(&u.pod).map(|a| a.ip), Some(u.ip));
        c.check(u.node, &u.pod, &u.cid, u.ip)
            .ok("CHECK after the outage");
    }
    for n in &c.nodes {
        assert!(n.pending().is_empty(), "{}", n.name);
    }
    assert_audit_clean(c);

    // The runtime tears down the failed ADDs' sandboxes; ADD works again.
    for (node, pod, cid) in &failed_adds {
        c.del(node, pod, cid)
            .ok("DEL of an ADD that failed in the outage");
    }
    let t0 = Instant::now();
    let fresh = c.pod(&deployment_pod("api", 3000));
    let (cid, r) = loop {
        let cid = container_id();
        let r = c.add("n1", &fresh, &cid);
        if r.code == 0 || t0.elapsed() > Duration::from_secs(30) {
            break (cid, r);
        }
        assert_eq!(r.err_code("ADD after the outage"), TRY_AGAIN_LATER);
        c.del("n1", &fresh, &cid).ok("DEL after a failed ADD");
        std::thread::sleep(Duration::from_millis(200));
    };
    check_added(c, "n1", &fresh, &r);
    println!(
        "cluster: first ADD after the outage succeeded {:.2?} after the first try",
        t0.elapsed()
    );
    c.del("n1", &fresh, &cid).ok("DEL");
    for u in [&d3, &d4, &s3b] {
        c.del(u.node, &u.pod, &u.cid).ok("DEL");
    }
    assert!(c.all_host_links().is_empty(), "{:?}", c.all_host_links());
    assert_eq!(c.pool_counts("api").0, counts(60, bound_after, 0));
    assert_audit_clean(c);
}

// ------------------------------------------------------------ 4

const CRASH_ADDS: usize = 40;
const CRASH_WORKERS: usize = 8;
const CRASH_KILL_AFTER: usize = 10;

#[test]
fn kill9_ipamd_mid_burst_matches_etcd() {
    let c = Cluster::new(Layout::standard());
    c.create_pool("api", "api", 120, &[]);
    // A pod on n2 that must not notice n1's crash.
    let other = up(&c, "n2", &deployment_pod("api", 9999));

    let pods: Vec<(Pod, String)> = (0..CRASH_ADDS)
        .map(|i| (c.pod(&deployment_pod("api", i as u64)), container_id()))
        .collect();
    let next = AtomicUsize::new(0);
    let succeeded = AtomicUsize::new(0);
    let runs: Mutex<BTreeMap<usize, CniRun>> = Mutex::new(BTreeMap::new());
    let start = Instant::now();
    let mut killed_at = None;
    std::thread::scope(|s| {
        for _ in 0..CRASH_WORKERS {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some((pod, cid)) = pods.get(i) else { break };
                let r = c.add("n1", pod, cid);
                if r.code == 0 {
                    succeeded.fetch_add(1, Ordering::SeqCst);
                }
                runs.lock().unwrap().insert(i, r);
            });
        }
        while succeeded.load(Ordering::SeqCst) < CRASH_KILL_AFTER {
            assert!(
                runs.lock().unwrap().len() < CRASH_ADDS,
                "the burst ended before {CRASH_KILL_AFTER} ADDs succeeded"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        c.kill9_ipamd("n1");
        killed_at = Some((start.elapsed(), next.load(Ordering::SeqCst).min(CRASH_ADDS)));
    });
    let runs = runs.into_inner().unwrap();
    let (at, started) = killed_at.unwrap();
    let ok: Vec<usize> = (0..CRASH_ADDS).filter(|i| runs[i].code == 0).collect();
    let failed: Vec<usize> = (0..CRASH_ADDS).filter(|i| runs[i].code != 0).collect();
    assert!(ok.len() >= CRASH_KILL_AFTER);
    assert!(!failed.is_empty(), "no ADD failed: the kill came too late");
    for &i in &failed {
        assert_eq!(
            runs[&i].err_code(&format!("ADD {i} while ipamd died")),
            TRY_AGAIN_LATER,
            "ADD {i}: {}",
            runs[&i].stdout
        );
    }

    // What the crash left in etcd: the finished ADDs and those in flight.
    let left = raw_attached(&c, Some("n1"));
    let t = Instant::now();
    c.start_ipamd("n1");
    let restart = t.elapsed();
    // n1's attachments in etcd, through ipamctl and raw.
    let att = attachments(&c);
    let on_n1: BTreeMap<&str, Ipv4Addr> = att
        .iter()
        .filter(|(_, (_, node))| node == "n1")
        .map(|(cid, (ip, _))| (cid.as_str(), *ip))
        .collect();
    let raw_n1 = raw_attached(&c, Some("n1"));
    assert_eq!(
        raw_n1,
        on_n1.len(),
        "etcd's leases attached on n1 agree with ip list"
    );
    assert!(
        c.etcd_list("attachments/").is_empty(),
        "no index entries on etcd (schema 5)"
    );
    assert_eq!(
        att.get(&other.cid).map(|(ip, n)| (*ip, n.as_str())),
        Some((other.ip, "n2")),
        "n2's pod is untouched"
    );
    let host = c.host_links("n1");
    let mut holders: BTreeSet<Ipv4Addr> = BTreeSet::new();
    // Every ADD that returned success is in etcd and wired.
    for &i in &ok {
        let (pod, cid) = &pods[i];
        let (ip, _) = check_added(&c, "n1", pod, &runs[&i]);
        assert_eq!(
            on_n1.get(cid.as_str()),
            Some(&ip),
            "ADD {i} succeeded: in etcd with {ip}"
        );
        assert_host_veth(&host, cid, &format!("ADD {i}"));
        assert!(holders.insert(ip), "{ip} twice");
    }
    // Every failed ADD: absent and unwired, or complete (its reply was lost)
    // and then wired and passing CHECK.
    let mut completed = 0;
    for &i in &failed {
        let (pod, cid) = &pods[i];
        match on_n1.get(cid.as_str()) {
            None => assert_unwired(&host, cid, &c.pod_links(pod), &format!("failed ADD {i}")),
            Some(ip) => {
                completed += 1;
                assert_eq!(c.pod_addr(pod).map(|a| a.ip), Some(*ip), "failed ADD {i}");
                c.check("n1", pod, cid, *ip)
                    .ok(&format!("CHECK of the completed ADD {i}"));
                assert!(holders.insert(*ip), "{ip} twice");
            }
        }
    }
    assert_eq!(
        on_n1.len(),
        ok.len() + completed,
        "n1's attachments in etcd are exactly the ADDs that succeeded (+ completed ones): {on_n1:?}"
    );
    println!(
        "cluster: kill -9 of n1's ipamd at {at:.2?} with {started} of {CRASH_ADDS} ADDs started: {} succeeded, \
         {} failed ({completed} of them complete inside ipamd); etcd had {left} attachments of n1 after the kill, {} after the restart ({restart:.2?})",
        ok.len(),
        failed.len(),
        on_n1.len()
    );

    for (pod, cid) in &pods {
        c.del("n1", pod, cid).ok(&format!("DEL {}", pod.name));
    }
    c.del("n2", &other.pod, &other.cid).ok("DEL");
    assert!(c.all_host_links().is_empty(), "{:?}", c.all_host_links());
    assert_eq!(c.pool_counts("api").0, counts(120, 0, 0));
    assert!(c.etcd_list("attachments/").is_empty());
    assert_audit_clean(&c);
}

// ------------------------------------------------------------ 5

/// `ipamctl pool export NAME --watch`, killed (by pid) on drop.
struct Watch {
    /// Killed by pid when the watch is dropped.
    child: Reaped,
    feed: Arc<Mutex<Feed>>,
    stderr: std::path::PathBuf,
}

impl Watch {
    fn start(c: &Cluster, node: &str, pool: &str) -> Watch {
        let bins = moor_e2e::bins::bins();
        let stderr = c.dir.join(format!("watch-{pool}.err"));
        let mut child = Command::new(&bins.ipamctl)
            .arg("--socket")
            .arg(&c.node(node).socket)
            .args(["pool", "export", pool, "--watch"])
            .env_remove("MOOR_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("watch stderr"))
            .spawn()
            .expect("run ipamctl pool export --watch");
        let out = child.stdout.take().expect("stdout");
        let feed = Arc::new(Mutex::new(Feed::default()));
        let f = feed.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                f.lock().unwrap().apply(&line);
            }
        });
        Watch {
            child: Reaped::new(child),
            feed,
            stderr,
        }
    }

    /// Waits until the feed's set is exactly the pool's (`pool export`).
    fn wait_equal(&mut self, c: &Cluster, pool: &str, what: &str) -> Duration {
        let (_, took) = wait_for(Duration::from_secs(60), what, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the watch exited ({status}): {}",
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            let have = self.feed.lock().unwrap().set()?;
            let want: BTreeSet<String> = c.pool_export(pool).into_iter().collect();
            (have == want).then_some(())
        });
        took
    }
}

/// `ipamctl pool resize`, retried while ipamd's store is coming back.
fn resize_retrying(c: &Cluster, pool: &str, size: u32) -> Duration {
    let s = size.to_string();
    let (_, took) = wait_for(Duration::from_secs(30), "pool resize", || {
        let out = c.ipamctl("n2", &["pool", "resize", pool, "--size", &s]);
        out.status.success().then_some(())
    });
    took
}

#[test]
fn pool_export_watch_survives_etcd_restart() {
    let c = Cluster::new(Layout::standard());
    let help = c.ipamctl("n1", &["pool", "export", "--help"]);
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("--watch"),
        "ipamctl pool export has no --watch yet"
    );
    c.create_pool("wl", "wl", 20, &[]);
    let mut w = Watch::start(&c, "n1", "wl");
    let first = w.wait_equal(&c, "wl", "the first snapshot");

    c.resize_pool("wl", 40);
    let up = w.wait_equal(&c, "wl", "the feed after resize 20 -> 40");
    assert_eq!(w.feed.lock().unwrap().set.len(), 40);

    // 100 ADD/DEL pairs over the three nodes.
    let failures = Failures::default();
    std::thread::scope(|s| {
        for k in 0..4usize {
            let (c, failures) = (&c, &failures);
            s.spawn(move || {
                let sandbox = c.pod(&format!("wl-sandbox-{k}"));
                for i in 0..25usize {
                    let (name, node) = if i.is_multiple_of(5) {
                        (statefulset_pod("wl", k as u32), NODES[k % 3])
                    } else {
                        (
                            deployment_pod("wl", (k * 25 + i) as u64),
                            NODES[(k + i) % 3],
                        )
                    };
                    let pod = Pod {
                        name,
                        ..sandbox.clone()
                    };
                    failures.attempt(&format!("pair {i} of {} on {node}", pod.name), || {
                        let cid = container_id();
                        check_added(c, node, &pod, &c.add(node, &pod, &cid));
                        c.del(node, &pod, &cid).ok("DEL");
                    });
                }
            });
        }
    });
    failures.assert_none();
    let churn = w.wait_equal(&c, "wl", "the feed after 100 ADD/DEL");

    // A full etcd restart, then a shrink as soon as it answers.
    let snapshots_before = w.feed.lock().unwrap().snapshots;
    let t = Instant::now();
    for i in 0..c.etcd_members() {
        c.etcd_stop(i);
    }
    std::thread::sleep(Duration::from_secs(2));
    c.etcd_start_all();
    let back = t.elapsed();
    let resize_took = resize_retrying(&c, "wl", 25);
    let down = w.wait_equal(
        &c,
        "wl",
        "the feed after the etcd restart and resize 40 -> 25",
    );
    let feed = w.feed.lock().unwrap();
    assert!(
        feed.errors.is_empty() && !feed.deleted,
        "protocol errors: {:#?} (pool deleted: {})",
        feed.errors,
        feed.deleted
    );
    let want: BTreeSet<String> = c.pool_export("wl").into_iter().collect();
    assert_eq!(want.len(), 25);
    assert_eq!(feed.set, want, "the syncer's set is exactly the pool's");
    let notes = std::fs::read_to_string(&w.stderr).unwrap_or_default();
    println!(
        "cluster: pool export --watch: first snapshot in {first:.2?}; resize up seen in {up:.2?}; \
         after 100 ADD/DEL in sync ({churn:.2?}); etcd stopped and back in {back:.2?}, resize down accepted after {resize_took:.2?}, \
         feed in sync {down:.2?} later; {} lines, {} snapshots ({} after the restart), {} reconnect notes on stderr",
        feed.lines.len(),
        feed.snapshots,
        feed.snapshots - snapshots_before,
        notes.lines().count()
    );
    drop(feed);
    assert_audit_clean(&c);
}
