//! Done-when 3: 200 concurrent ADD/DEL from 16 parallel invocations of the
//! real binary: no duplicate IP, no leaked IP, no leftover link, pool counts
//! exact afterwards.
//!
//! 16 workers run in waves: all ADD at once, every pod's IP is read from its
//! netns while all are live and must be unique, then all DEL at once. Each
//! worker alternates between its own StatefulSet pod (`web-W`, which must get
//! the same IP every time) and a fresh Deployment pod.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use moor_e2e::names::{container_id, deployment_pod, statefulset_pod};
use moor_e2e::{Counts, Pod, Testbed};
use serde_json::json;

use crate::support::check_add_result;

const WORKERS: usize = 16;
const PAIRS: usize = 200;
const POOL_SIZE: u64 = 64;

/// One ADD/DEL pair as it happened.
struct Pair {
    pod: String,
    sticky: bool,
    ip: Ipv4Addr,
    /// The pod is certainly live from ADD's return to DEL's start.
    live: (Instant, Instant),
    add_took: Duration,
    del_took: Duration,
}

#[test]
fn concurrent_add_del_200_from_16_workers() {
    let tb = Testbed::new();
    tb.create_pool("web", "web", POOL_SIZE as u32);
    // One netns per worker, reused by its pods one after the other.
    let sandboxes: Vec<Pod> = (0..WORKERS)
        .map(|w| tb.pod(&format!("sandbox-{w}")))
        .collect();
    let rounds = PAIRS.div_ceil(WORKERS);
    let barrier = Barrier::new(WORKERS);
    let wave_ips: Mutex<Vec<Vec<(String, Ipv4Addr)>>> = Mutex::new(vec![Vec::new(); rounds]);
    let pairs: Mutex<Vec<Pair>> = Mutex::new(Vec::new());

    // A worker never panics between barriers (the others would wait forever):
    // each step's panic becomes a failure, reported after the burst.
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let attempt = |what: String, f: &mut dyn FnMut()| {
        if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.lock().unwrap().push(format!("{what}: {msg}"));
        }
    };

    let start = Instant::now();
    std::thread::scope(|s| {
        for (w, sandbox) in sandboxes.iter().enumerate() {
            let (tb, barrier, wave_ips, pairs, attempt) =
                (&tb, &barrier, &wave_ips, &pairs, &attempt);
            s.spawn(move || {
                for round in 0..rounds {
                    let active = round * WORKERS + w < PAIRS;
                    let sticky = round % 2 == 0;
                    let name = if sticky {
                        statefulset_pod("web", w as u32)
                    } else {
                        deployment_pod("web", (round * WORKERS + w) as u64)
                    };
                    let pod = Pod {
                        name,
                        ..sandbox.clone()
                    };
                    let cid = container_id();
                    let mut added = None;
                    if active {
                        attempt(format!("ADD {} (round {round})", pod.name), &mut || {
                            let r = tb.moor("ADD", &pod, &cid, "1.0.0", &json!({}), None);
                            r.ok("ADD");
                            let got = check_add_result(tb, &pod, &cid, &r.json, "1.0.0");
                            added = Some((got.ip, Instant::now(), r.took));
                        });
                    }
                    barrier.wait();
                    // Everyone's ADD is done: read what the kernel has.
                    if let Some((ip, ..)) = added {
                        attempt(format!("eth0 of {} (round {round})", pod.name), &mut || {
                            let a = tb
                                .pod_addr(&pod, "eth0")
                                .unwrap_or_else(|| panic!("no IPv4 on eth0"));
                            assert_eq!(a.ip, ip, "eth0 has the IP of the result");
                            wave_ips.lock().unwrap()[round].push((pod.name.clone(), a.ip));
                        });
                    }
                    barrier.wait();
                    if let Some((ip, live_from, add_took)) = added {
                        attempt(format!("DEL {} (round {round})", pod.name), &mut || {
                            let del_start = Instant::now();
                            let r = tb.moor("DEL", &pod, &cid, "1.0.0", &json!({}), None);
                            r.ok("DEL");
                            assert!(tb.pod_links(&pod).is_empty(), "eth0 is gone after DEL");
                            pairs.lock().unwrap().push(Pair {
                                pod: pod.name.clone(),
                                sticky,
                                ip,
                                live: (live_from, del_start),
                                add_took,
                                del_took: r.took,
                            });
                        });
                    }
                    barrier.wait();
                }
            });
        }
    });
    let wall = start.elapsed();
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let pairs = pairs.into_inner().unwrap();
    assert_eq!(pairs.len(), PAIRS, "every ADD and DEL succeeded");

    // No two live pods ever had one IP: per wave, read from the pods...
    for (round, ips) in wave_ips.into_inner().unwrap().iter().enumerate() {
        let distinct: BTreeSet<_> = ips.iter().map(|(_, ip)| ip).collect();
        assert_eq!(
            distinct.len(),
            ips.len(),
            "round {round}: duplicate IP among {ips:?}"
        );
    }
    // ...and over the recorded live intervals.
    for (i, a) in pairs.iter().enumerate() {
        for b in &pairs[i + 1..] {
            let overlap = a.live.0 < b.live.1 && b.live.0 < a.live.1;
            assert!(
                !(overlap && a.ip == b.ip),
                "{} and {} both held {} at once",
                a.pod,
                b.pod,
                a.ip
            );
        }
    }
    // StatefulSet pods got their IP back every time.
    let mut sticky_ips: BTreeMap<&str, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    for p in pairs.iter().filter(|p| p.sticky) {
        sticky_ips.entry(&p.pod).or_default().insert(p.ip);
    }
    for (pod, ips) in &sticky_ips {
        assert_eq!(ips.len(), 1, "{pod} got different IPs: {ips:?}");
    }
    let bound = sticky_ips.len() as u64;

    let mut adds: Vec<Duration> = pairs.iter().map(|p| p.add_took).collect();
    let mut dels: Vec<Duration> = pairs.iter().map(|p| p.del_took).collect();
    adds.sort();
    dels.sort();
    println!(
        "{PAIRS} ADD/DEL pairs from {WORKERS} workers in {wall:.2?} ({:.1} pairs/s); \
         ADD p50 {:?} p99 {:?}; DEL p50 {:?} p99 {:?}",
        PAIRS as f64 / wall.as_secs_f64(),
        adds[adds.len() / 2],
        adds[adds.len() * 99 / 100],
        dels[dels.len() / 2],
        dels[dels.len() * 99 / 100],
    );

    // Nothing leaked.
    assert!(
        tb.host_links().is_empty(),
        "leftover host links: {:?}",
        tb.host_links()
    );
    assert_eq!(
        tb.pool_counts("web"),
        Counts {
            total: POOL_SIZE,
            bound,
            in_use: 0,
            free: POOL_SIZE - bound
        }
    );
    let ips = tb.ip_list();
    assert_eq!(ips.len() as u64, POOL_SIZE, "ip list shows the whole pool");
    let by_state = |s: &str| ips.iter().filter(|ip| ip["state"] == s).count() as u64;
    assert_eq!(
        (by_state("bound"), by_state("in-use"), by_state("free")),
        (bound, 0, POOL_SIZE - bound),
        "ip list agrees with the counts"
    );
    for ip in ips.iter().filter(|ip| ip["state"] == "bound") {
        let name = ip["binding"]["name"].as_str().unwrap_or_default();
        let addr: Ipv4Addr = ip["address"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            sticky_ips.get(name).map(|s| s.contains(&addr)),
            Some(true),
            "bound IP {addr} is the one its StatefulSet pod {name} had"
        );
        assert!(ip["attachment"].is_null(), "{ip}");
    }
    let problems = tb.audit();
    assert!(problems.is_empty(), "audit: {problems:#?}");
}
