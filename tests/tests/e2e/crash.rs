//! Done-when 4: kill -9 of ipamd in the middle of a burst of ADDs, restart: no
//! IP handed out twice, every completed ADD still recorded, every half-done
//! one rolled back or completed.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use moor_e2e::names::{container_id, deployment_pod};
use moor_e2e::{CniRun, Counts, Pod, Testbed};
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
