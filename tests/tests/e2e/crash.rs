//! Done-when 4: kill -9 of ipamd in the middle of a burst of ADDs, restart: no
//! IP handed out twice, every completed ADD still recorded, every half-done
//! one rolled back or completed. And the DEL path: a DEL retires the veth
//! and a reaper deletes it later; kill -9 between the two (and in the middle
//! of a burst of DELs) leaves nothing behind after the restart, and the IP
//! is never live on two interfaces meanwhile.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use moor_e2e::names::{container_id, deployment_pod};
use moor_e2e::{CniRun, Counts, Options, Pod, Testbed};
use moor_testkit::cmd::run as run_ok;
use moor_testkit::netns::ping_from;
use serde_json::{json, Value};

use crate::support::{
    assert_host_veth, assert_unwired, check_add_result, check_wired, prev_result, Attached,
};

const ADDS: usize = 40;
const WORKERS: usize = 8;
const KILL_AFTER: usize = 10;
const POOL_SIZE: u64 = 96;
const ROUNDS: usize = 3;

#[test]
fn kill9_mid_burst_loses_nothing() {
    let tb = Testbed::new();
    tb.create_pool("api", "api", POOL_SIZE as u32);
    // Each round kills ipamd at a different moment of its ADDs; what
    // earlier rounds left running must survive the later kills too.
    let mut live: Vec<(Pod, String, Attached)> = Vec::new();
    for round in 0..ROUNDS {
        burst_kill_restart(&tb, round, &mut live);
    }
    for (pod, cid, _) in &live {
        tb.moor("DEL", pod, cid, "1.0.0", &json!({}), None)
            .ok(&format!("DEL {}", pod.name));
    }
    assert!(tb.host_links().is_empty(), "{:?}", tb.host_links());
    assert_eq!(
        tb.pool_counts("api"),
        Counts {
            total: POOL_SIZE,
            bound: 0,
            in_use: 0,
            free: POOL_SIZE
        }
    );
    let problems = tb.audit();
    assert!(problems.is_empty(), "audit: {problems:#?}");
}

/// One burst of ADDs with a kill -9 in the middle, the restart, and the checks;
/// the runtime's DELs of the failed ADDs. `live` gains the successful ADDs.
fn burst_kill_restart(tb: &Testbed, round: usize, live: &mut Vec<(Pod, String, Attached)>) {
    let pods: Vec<(Pod, String)> = (0..ADDS)
        .map(|i| {
            (
                tb.pod(&deployment_pod("api", (round * ADDS + i) as u64)),
                container_id(),
            )
        })
        .collect();
    let next = AtomicUsize::new(0);
    let succeeded = AtomicUsize::new(0);
    let runs: Mutex<BTreeMap<usize, CniRun>> = Mutex::new(BTreeMap::new());
    let start = Instant::now();
    let mut killed_at = None;
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some((pod, cid)) = pods.get(i) else { break };
                let r = tb.moor("ADD", pod, cid, "1.0.0", &json!({}), None);
                if r.code == 0 {
                    succeeded.fetch_add(1, Ordering::SeqCst);
                }
                runs.lock().unwrap().insert(i, r);
            });
        }
        // The killer: as soon as KILL_AFTER ADDs have succeeded, with the
        // other workers' ADDs in flight.
        while succeeded.load(Ordering::SeqCst) < KILL_AFTER {
            assert!(
                runs.lock().unwrap().len() < ADDS,
                "the burst ended before {KILL_AFTER} ADDs succeeded"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        tb.kill9_ipamd();
        killed_at = Some((start.elapsed(), next.load(Ordering::SeqCst).min(ADDS)));
    });
    let runs = runs.into_inner().unwrap();
    let (killed_after, started) = killed_at.unwrap();
    let ok: Vec<usize> = (0..ADDS).filter(|i| runs[i].code == 0).collect();
    let failed: Vec<usize> = (0..ADDS).filter(|i| runs[i].code != 0).collect();
    println!(
        "round {round}: kill -9 at {killed_after:.2?} with {started} ADDs started; {} succeeded, {} failed; burst {:.2?}",
        ok.len(),
        failed.len(),
        start.elapsed()
    );
    assert!(ok.len() >= KILL_AFTER, "{} ADDs succeeded", ok.len());
    assert!(!failed.is_empty(), "no ADD failed: the kill came too late");
    for &i in &failed {
        let r = &runs[&i];
        assert_eq!(
            r.err_code(&format!("ADD {i} while ipamd died")),
            11,
            "ADD {i}: a dead ipamd means \"try again later\": {}",
            r.stdout
        );
    }

    tb.start_ipamd();
    let ips = tb.ip_list();
    let by_cid: BTreeMap<&str, &Value> = ips
        .iter()
        .filter_map(|ip| ip["attachment"]["container_id"].as_str().map(|c| (c, ip)))
        .collect();
    let host_links = tb.host_links();
    // Who holds each IP: earlier rounds' pods, then this round's.
    let mut holder: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    for (pod, cid, got) in live.iter() {
        let e = by_cid
            .get(cid.as_str())
            .unwrap_or_else(|| panic!("{} of an earlier round was lost", pod.name));
        assert_eq!(e["address"], got.ip.to_string().as_str());
        assert_eq!(e["attachment"]["state"], "ready", "{e}");
        check_wired(tb, pod, got);
        assert!(
            holder.insert(got.ip, pod.name.clone()).is_none(),
            "{} twice",
            got.ip
        );
    }

    // Every ADD that returned success is still recorded and wired.
    for &i in &ok {
        let (pod, cid) = &pods[i];
        let got = check_add_result(tb, pod, cid, &runs[&i].json, "1.0.0");
        let e = by_cid
            .get(cid.as_str())
            .unwrap_or_else(|| panic!("ADD {i} succeeded but ipamd lost it"));
        assert_eq!(e["address"], got.ip.to_string().as_str(), "ADD {i}");
        assert_eq!(e["attachment"]["state"], "ready", "ADD {i}: {e}");
        check_wired(tb, pod, &got);
        assert_host_veth(&host_links, cid, &format!("ADD {i}"));
        assert!(
            holder.insert(got.ip, pod.name.clone()).is_none(),
            "{} handed out twice",
            got.ip
        );
        live.push((pod.clone(), cid.clone(), got));
    }

    // Every failed ADD is rolled back entirely, or complete.
    let mut completed = 0;
    for &i in &failed {
        let (pod, cid) = &pods[i];
        match by_cid.get(cid.as_str()) {
            None => assert_unwired(
                &host_links,
                cid,
                &tb.pod_links(pod),
                &format!("failed ADD {i}"),
            ),
            Some(e) => {
                completed += 1;
                assert_eq!(e["attachment"]["state"], "ready", "failed ADD {i}: {e}");
                let ip: Ipv4Addr = e["address"].as_str().unwrap().parse().unwrap();
                tb.moor(
                    "CHECK",
                    pod,
                    cid,
                    "1.0.0",
                    &json!({"prevResult": prev_result(pod, "1.0.0", ip)}),
                    None,
                )
                .ok(&format!("CHECK of the completed ADD {i}"));
                assert!(
                    holder.insert(ip, pod.name.clone()).is_none(),
                    "{ip} handed out twice"
                );
            }
        }
    }
    let recovered = tb
        .log_tail(200)
        .lines()
        .rfind(|l| l.contains("recovered"))
        .map(|l| l.split("recovered").nth(1).unwrap_or("").trim().to_string())
        .unwrap_or_default();
    println!(
        "round {round}: {completed} of the failed ADDs had completed inside ipamd; restart: {recovered}"
    );
    let in_pods: Vec<Ipv4Addr> = pods
        .iter()
        .filter_map(|(p, _)| tb.pod_addr(p, "eth0").map(|a| a.ip))
        .collect();
    let this_round = holder.len() - (live.len() - ok.len());
    assert_eq!(
        in_pods.len(),
        this_round,
        "this round's pods with eth0 = its live attachments"
    );
    assert!(in_pods.iter().all(|ip| holder.contains_key(ip)));

    // The runtime DELs every failed ADD: their IPs are free again.
    for &i in &failed {
        let (pod, cid) = &pods[i];
        tb.moor("DEL", pod, cid, "1.0.0", &json!({}), None)
            .ok(&format!("DEL of failed ADD {i}"));
        assert!(
            tb.pod_links(pod).is_empty(),
            "DEL of failed ADD {i}: pod links left"
        );
    }
    let n_ok = live.len() as u64;
    assert_eq!(
        tb.pool_counts("api"),
        Counts {
            total: POOL_SIZE,
            bound: 0,
            in_use: n_ok,
            free: POOL_SIZE - n_ok
        }
    );
    let live_ips: Vec<Ipv4Addr> = live.iter().map(|(_, _, a)| a.ip).collect();
    for ip in tb.ip_list() {
        let addr: Ipv4Addr = ip["address"].as_str().unwrap().parse().unwrap();
        let want = if live_ips.contains(&addr) {
            "in-use"
        } else {
            "free"
        };
        assert_eq!(ip["state"], want, "{ip}");
    }
}

// ------------------------------------------------ DEL: retire, then reap

/// ipamd's reaper held off for the whole test: whatever a DEL retired is
/// still parked when ipamd is killed.
fn reaper_held_off() -> Testbed {
    Testbed::with(Options {
        ipamd_args: ["--reap-quiet-ms", "600000", "--reap-max-wait-ms", "600000"]
            .map(String::from)
            .to_vec(),
        ..Options::default()
    })
}

/// Every interface of `netns` but lo: (name, up with carrier, IPv4s), read
/// at once (the testbed's `Pod::links` waits for retired interfaces to go).
fn interfaces(netns: &str) -> Vec<(String, bool, Vec<Ipv4Addr>)> {
    let out = run_ok("ip", &["-n", netns, "-j", "addr", "show"]);
    let v: Value = serde_json::from_str(&out).expect("ip -j addr show is JSON");
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["ifname"] != "lo")
        .map(|l| {
            let flags = l["flags"].as_array().cloned().unwrap_or_default();
            let live = flags.iter().any(|f| f == "UP") && flags.iter().any(|f| f == "LOWER_UP");
            let ips = l["addr_info"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["family"] == "inet")
                .filter_map(|a| a["local"].as_str()?.parse().ok())
                .collect();
            (l["ifname"].as_str().unwrap_or("").to_string(), live, ips)
        })
        .collect()
}

/// Retired host ends in the node netns.
fn graves(tb: &Testbed) -> Vec<String> {
    moor_testkit::netns::retired_links(&tb.node_ns)
}

/// The interfaces (of every pod in `pods`) on which `ip` is live.
fn live_with(pods: &[&Pod], ip: Ipv4Addr) -> Vec<String> {
    pods.iter()
        .flat_map(|p| {
            interfaces(&p.netns)
                .into_iter()
                .filter(|(_, live, ips)| *live && ips.contains(&ip))
                .map(|(name, _, _)| format!("{}:{name}", p.netns))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn audit_clean(tb: &Testbed, when: &str) {
    let out = tb.ipamctl(&["audit"]);
    assert!(
        out.status.success(),
        "ipamctl audit {when}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A pool of one IP, so every ADD reuses the IP the last DEL retired with
/// its veth: kill -9 after DELs returned and before the reaper ran, restart:
/// the start deletes every retired veth, the IP was never live twice, the
/// store is consistent; and a re-ADD of the same container id and ifname
/// into a netns whose old pod end is still parked works meanwhile.
#[test]
fn kill9_between_retire_and_reap_leaves_nothing() {
    let tb = reaper_held_off();
    tb.create_pool("web", "web", 1);
    let a = tb.pod(&deployment_pod("web", 1));
    let c = tb.pod(&deployment_pod("web", 2));
    let (cid_a, cid_c) = (container_id(), container_id());
    let add = |pod: &Pod, cid: &str, what: &str| {
        tb.moor("ADD", pod, cid, "1.0.0", &json!({}), None)
            .ok(what)
            .ip()
    };
    let del = |pod: &Pod, cid: &str, what: &str| {
        tb.moor("DEL", pod, cid, "1.0.0", &json!({}), None).ok(what);
    };

    let ip = add(&a, &cid_a, "ADD a");
    del(&a, &cid_a, "DEL a");
    assert_eq!(graves(&tb).len(), 1, "DEL retired the host end");
    assert!(
        live_with(&[&a], ip).is_empty(),
        "retired: {:?}",
        interfaces(&a.netns)
    );
    assert_eq!(
        interfaces(&a.netns).len(),
        1,
        "the pod end is parked, not deleted yet"
    );

    // The runtime retries the sandbox with the same container id and ifname
    // in the same netns, the old pair still parked.
    assert_eq!(add(&a, &cid_a, "re-ADD a while parked"), ip, "the only IP");
    assert!(
        ping_from(&a.netns, tb.gateway),
        "re-ADDed pod reaches its gateway"
    );
    assert_eq!(live_with(&[&a], ip), [format!("{}:eth0", a.netns)]);
    assert_eq!(interfaces(&a.netns).len(), 2, "the old pod end moved aside");
    del(&a, &cid_a, "DEL a again");

    // Another pod gets the IP while a's two pod ends, retired, still hold it.
    assert_eq!(add(&c, &cid_c, "ADD c"), ip);
    assert!(ping_from(&c.netns, tb.gateway), "c reaches its gateway");
    assert_eq!(
        live_with(&[&a, &c], ip),
        [format!("{}:eth0", c.netns)],
        "{ip} live on c only; a: {:?}",
        interfaces(&a.netns)
    );
    assert!(interfaces(&a.netns).iter().all(|(_, _, ips)| ips == &[ip]));
    assert_eq!(graves(&tb).len(), 2, "nothing reaped yet");

    tb.kill9_ipamd();
    tb.start_ipamd();
    // ipamd serves only after its start deleted what was retired.
    assert!(
        graves(&tb).is_empty(),
        "graves after restart: {:?}",
        graves(&tb)
    );
    assert!(
        interfaces(&a.netns).is_empty(),
        "a's retired pod ends went with their host ends: {:?}",
        interfaces(&a.netns)
    );
    assert_eq!(live_with(&[&a, &c], ip), [format!("{}:eth0", c.netns)]);
    assert!(
        ping_from(&c.netns, tb.gateway),
        "c untouched by the restart"
    );
    let e = tb.ip_of_container(&cid_c).expect("c's attachment survived");
    assert_eq!(e["attachment"]["state"], "ready", "{e}");
    assert_eq!(tb.host_links(), [moor_proto::host_ifname(&cid_c, "eth0")]);
    audit_clean(&tb, "after the restart");

    del(&c, &cid_c, "DEL c");
    assert_eq!(
        tb.pool_counts("web"),
        Counts {
            total: 1,
            bound: 0,
            in_use: 0,
            free: 1
        }
    );
    let problems = tb.audit();
    assert!(problems.is_empty(), "audit: {problems:#?}");
}

const DEL_PODS: usize = 24;
const DEL_KILL_AFTER: usize = 8;

/// kill -9 in the middle of a burst of DELs, the reaper held off: the DELs
/// that returned left parked veths, the ones in flight met a dead ipamd (the
/// plugin deletes the veth itself and records the DEL). After the restart
/// nothing is left: no retired or live veth, no pod interface, every IP
/// free, the store consistent.
#[test]
fn kill9_mid_del_burst_leaves_nothing() {
    let tb = reaper_held_off();
    tb.create_pool("api", "api", DEL_PODS as u32);
    let pods: Vec<(Pod, String)> = (0..DEL_PODS)
        .map(|i| {
            (
                tb.pod(&deployment_pod("api", 1000 + i as u64)),
                container_id(),
            )
        })
        .collect();
    for (pod, cid) in &pods {
        tb.moor("ADD", pod, cid, "1.0.0", &json!({}), None)
            .ok(&format!("ADD {}", pod.name));
    }
    let next = AtomicUsize::new(0);
    let returned = AtomicUsize::new(0);
    let runs: Mutex<Vec<CniRun>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some((pod, cid)) = pods.get(i) else { break };
                let r = tb.moor("DEL", pod, cid, "1.0.0", &json!({}), None);
                returned.fetch_add(1, Ordering::SeqCst);
                runs.lock().unwrap().push(r);
            });
        }
        while returned.load(Ordering::SeqCst) < DEL_KILL_AFTER {
            std::thread::sleep(Duration::from_millis(1));
        }
        tb.kill9_ipamd();
    });
    let runs = runs.into_inner().unwrap();
    let parked = graves(&tb).len();
    println!("kill -9 after {DEL_KILL_AFTER} of {DEL_PODS} DELs returned; {parked} veths parked");
    for r in &runs {
        r.ok("DEL, with ipamd killed meanwhile");
    }
    assert!(
        parked >= DEL_KILL_AFTER,
        "only {parked} DELs retired a veth"
    );
    let recorded = pods
        .iter()
        .filter(|(_, cid)| tb.pending_record(cid).exists())
        .count();
    println!("{recorded} DELs met the dead ipamd and were recorded by the plugin");
    assert!(
        recorded > 0,
        "no DEL met the dead ipamd: the kill came too late"
    );

    tb.start_ipamd();
    assert!(
        graves(&tb).is_empty(),
        "graves after restart: {:?}",
        graves(&tb)
    );
    assert!(tb.host_links().is_empty(), "{:?}", tb.host_links());
    for (pod, _) in &pods {
        assert!(
            interfaces(&pod.netns).is_empty(),
            "{}: {:?}",
            pod.name,
            interfaces(&pod.netns)
        );
    }
    // The DELs the plugin recorded while ipamd was dead are applied at the
    // start or by the replay task within seconds.
    let free = Counts {
        total: DEL_PODS as u64,
        bound: 0,
        in_use: 0,
        free: DEL_PODS as u64,
    };
    let started = Instant::now();
    while tb.pool_counts("api") != free && started.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(tb.pool_counts("api"), free);
    audit_clean(&tb, "after the restart");
    let problems = tb.audit();
    assert!(problems.is_empty(), "audit: {problems:#?}");
}
