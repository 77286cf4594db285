//! Issue 14's metrics, scraped from a real ipamd (redb) after ADDs and DELs
//! through the real `moor` binary: every request counted by command and
//! code, the pool gauges equal to `ipamctl pool show`, a listener that
//! serves nothing else (and none with `off`), a scrape whose store cost does
//! not grow with the pools, and JSON logs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use moor_e2e::cluster::{Cluster, Layout};
use moor_e2e::names::{container_id, deployment_pod};
use moor_e2e::scrape::{http, logged_addr, scrape, sum, value};
use moor_e2e::testbed::TOR;
use moor_e2e::{Options, Testbed};
use moor_testkit::netns::spawn_in_netns;
use moor_testkit::IpamdCommand;
use serde_json::{json, Value};

fn testbed(metrics: &str, extra: &[&str]) -> Testbed {
    let mut ipamd_args = vec!["--metrics-listen".to_string(), metrics.to_string()];
    ipamd_args.extend(extra.iter().map(|s| s.to_string()));
    Testbed::with(Options {
        ipamd_args,
        ..Options::default()
    })
}

/// The address the testbed's ipamd logged it serves metrics on.
fn metrics_addr(tb: &Testbed) -> String {
    logged_addr(&tb.log)
}

fn scrape_tb(tb: &Testbed, addr: &str) -> BTreeMap<String, f64> {
    scrape(Some(&tb.node_ns), addr)
}

#[test]
fn a_scrape_counts_every_cni_request_and_shows_the_pools_as_pool_show_does() {
    let tb = testbed("127.0.0.1:0", &[]);
    tb.create_pool("web", "web", 4);
    tb.create_pool("db", "db", 2);
    let addr = metrics_addr(&tb);
    let before = scrape_tb(&tb, &addr);

    let mut pods = Vec::new();
    for (app, n) in [("web", 3), ("db", 2)] {
        for i in 0..n {
            let pod = tb.pod(&deployment_pod(app, i));
            let cid = container_id();
            tb.moor("ADD", &pod, &cid, "1.0.0", &json!({}), None)
                .ok("ADD");
            pods.push((pod, cid));
        }
    }
    // db is full now: a third db pod is refused with "pool full".
    let refused = tb.pod(&deployment_pod("db", 9));
    let code = tb
        .moor("ADD", &refused, &container_id(), "1.0.0", &json!({}), None)
        .err_code("ADD into a full pool");
    assert_eq!(code, 100);
    for (pod, cid) in pods.iter().take(2) {
        tb.moor("DEL", pod, cid, "1.0.0", &json!({}), None)
            .ok("DEL");
    }
    let after = scrape_tb(&tb, &addr);
    let delta = |s: &str| value(&after, s) - value(&before, s);

    assert_eq!(delta(r#"moor_cni_requests_total{op="ADD",code="0"}"#), 5.0);
    assert_eq!(
        delta(r#"moor_cni_requests_total{op="ADD",code="100"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"moor_cni_request_duration_seconds_count{op="ADD"}"#),
        6.0
    );
    assert_eq!(delta(r#"moor_cni_requests_total{op="DEL",code="0"}"#), 2.0);
    assert_eq!(
        delta(r#"moor_cni_request_duration_seconds_count{op="DEL"}"#),
        2.0
    );
    assert_eq!(
        delta(&format!(r#"moor_pool_full_total{{pool="db",tor="{TOR}"}}"#)),
        1.0
    );
    assert_eq!(value(&after, "moor_node_attachments"), 3.0);
    assert_eq!(value(&after, "moor_pending_dels"), 0.0);
    assert!(
        after.keys().any(|k| k.starts_with("moor_build_info{")),
        "no moor_build_info"
    );
    assert_eq!(value(&after, r#"moor_store_up{backend="redb"}"#), 1.0);

    // moor_pool_ips equals `ipamctl -o json pool show` for every pool and ToR.
    for pool in ["web", "db"] {
        let shown = tb.ipamctl_json(&["pool", "show", pool]);
        let tors = shown["tors"].as_array().expect("pool show has tors");
        assert!(!tors.is_empty(), "{shown}");
        for t in tors {
            let tor = t["tor"].as_str().unwrap();
            for state in ["total", "free", "bound", "in_use"] {
                let series =
                    format!(r#"moor_pool_ips{{pool="{pool}",tor="{tor}",state="{state}"}}"#);
                assert_eq!(
                    after.get(&series).copied(),
                    t[state].as_f64(),
                    "{series} vs pool show {t}"
                );
            }
        }
    }
}

#[test]
fn the_metrics_port_serves_metrics_and_health_only_and_off_opens_none() {
    let tb = testbed("127.0.0.1:0", &[]);
    let addr = metrics_addr(&tb);
    assert_eq!(
        http(Some(&tb.node_ns), &addr, "GET", "/healthz"),
        (200, "ok\n".to_string())
    );
    for path in ["/", "/api/pools", "/metrics/x", "/debug/pprof"] {
        assert_eq!(http(Some(&tb.node_ns), &addr, "GET", path).0, 404, "{path}");
    }
    assert_eq!(http(Some(&tb.node_ns), &addr, "POST", "/metrics").0, 405);
    assert_eq!(http(Some(&tb.node_ns), &addr, "DELETE", "/healthz").0, 405);
    let pid = tb.ipamd_pid().unwrap();
    assert_eq!(tcp_listeners(&tb, pid).len(), 1, "one TCP port: {addr}");

    let off = testbed("off", &[]);
    let pid = off.ipamd_pid().unwrap();
    // Up and serving its socket (the testbed defined its ToR through it),
    // with no TCP port at all.
    assert!(
        tcp_listeners(&off, pid).is_empty(),
        "--metrics-listen off: {:?}",
        tcp_listeners(&off, pid)
    );
    let log = std::fs::read_to_string(&off.log).unwrap();
    assert!(!log.contains("metrics listening"), "{log}");
}

/// The TCP ports process `pid` listens on, in the testbed's node netns.
fn tcp_listeners(tb: &Testbed, pid: u32) -> Vec<String> {
    let out = moor_testkit::cmd::run("ip", &["netns", "exec", &tb.node_ns, "ss", "-Hltnp"]);
    out.lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_bad_metrics_address_is_refused_by_name() {
    let tb = testbed("127.0.0.1:0", &[]);
    // A store ipamd could create: refused before it is opened, it is not.
    let dir = moor_testkit::TempDir::new("bad-metrics-listen");
    let store = dir.path().join("ipamd.redb");
    let socket = dir.path().join("ipamd.sock");
    let out = std::process::Command::new(&tb.bins().ipamd)
        .args(["--metrics-listen", "localhost"])
        .arg("--store")
        .arg(format!("redb:{}", store.display()))
        .arg("--socket")
        .arg(&socket)
        .args(["--bridge", "nosuchbr0", "--tor", TOR])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--metrics-listen") && err.contains("ADDRESS:PORT") && err.contains("off"),
        "{err}"
    );
    assert!(!store.exists(), "a refused start opened its store");
    assert!(!socket.exists(), "a refused start bound its socket");
}

#[test]
fn a_scrape_reads_the_store_a_fixed_number_of_times_whatever_the_pools() {
    // A long heartbeat and no sweep: only scrapes read the store here.
    let tb = testbed("127.0.0.1:0", &["--reconcile-interval-seconds", "0"]);
    for i in 0..40 {
        tb.create_pool(&format!("p{i:02}"), &format!("app{i:02}"), 1);
    }
    let addr = metrics_addr(&tb);
    let requests = |m: &BTreeMap<String, f64>| sum(m, "moor_store_request_duration_seconds_count");
    let first = scrape_tb(&tb, &addr);
    let second = scrape_tb(&tb, &addr);
    let third = scrape_tb(&tb, &addr);
    let per_scrape = [
        requests(&second) - requests(&first),
        requests(&third) - requests(&second),
    ];
    println!("store requests per scrape with 40 pools: {per_scrape:?}");
    // The ToR's segments, every pool, every lease, the node's attachments:
    // 4, and one more for a heartbeat that may fall in between.
    for n in per_scrape {
        assert!(n <= 5.0, "a scrape cost {n} store requests with 40 pools");
    }
    let pools = second
        .keys()
        .filter(|k| k.starts_with("moor_pool_ips{") && k.contains(r#"state="total""#))
        .count();
    assert_eq!(pools, 40, "every pool has its series");
}

#[test]
fn json_logs_are_one_object_a_line_with_the_adds_fields() {
    let tb = testbed("127.0.0.1:0", &["--log-format", "json"]);
    tb.create_pool("web", "web", 2);
    let pod = tb.pod(&deployment_pod("web", 0));
    let cid = container_id();
    let ip = tb
        .moor("ADD", &pod, &cid, "1.0.0", &json!({}), None)
        .ok("ADD")
        .ip();
    let log = std::fs::read_to_string(&tb.log).unwrap();
    let mut add = None;
    for line in log.lines().filter(|l| l.starts_with('{')) {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        if v["message"] == "ADD" {
            add = Some(v);
        }
    }
    let add = add.unwrap_or_else(|| panic!("no ADD line in:\n{log}"));
    assert_eq!(add["ip"], ip.to_string(), "{add}");
    assert_eq!(add["pool"], "web", "{add}");
    assert_eq!(add["tor"], TOR, "{add}");
    assert_eq!(add["container_id"], cid, "{add}");
    assert!(add["pod"].as_str().unwrap().contains(&pod.name), "{add}");
}

#[test]
fn on_etcd_every_node_of_a_tor_exports_its_pools_from_its_view_at_no_store_cost() {
    let mut layout = Layout::standard();
    layout.ipamd_args = vec!["--metrics-listen".into(), "127.0.0.1:0".into()];
    let c = Cluster::new(layout);
    c.create_pool("web", "web", 6, &[]);
    for (node, i) in [("n1", 0), ("n1", 1), ("n3", 2)] {
        let pod = c.pod(&deployment_pod("web", i));
        c.add(node, &pod, &container_id()).ok("ADD");
    }
    let shown = c.pool_show("web");
    let expect = |tor: &str| -> BTreeMap<String, f64> {
        let t = shown["tors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tor"] == tor)
            .unwrap_or_else(|| panic!("no {tor} in {shown}"));
        ["total", "free", "bound", "in_use"]
            .iter()
            .map(|s| {
                let series = format!(r#"moor_pool_ips{{pool="web",tor="{tor}",state="{s}"}}"#);
                (series, t[*s].as_f64().unwrap())
            })
            .collect()
    };
    // Each node exports its own ToR's series only, equal to pool show once
    // its view has the ADDs (bounded wait: watch events, well under 5 s).
    for (node, tor, other) in [
        ("n1", "tor-a", "tor-b"),
        ("n2", "tor-a", "tor-b"),
        ("n3", "tor-b", "tor-a"),
    ] {
        let addr = logged_addr(&c.node(node).log);
        let want = expect(tor);
        let started = Instant::now();
        let got = loop {
            let m = scrape(None, &addr);
            let got: BTreeMap<String, f64> = want
                .keys()
                .filter_map(|k| Some((k.clone(), *m.get(k)?)))
                .collect();
            if got == want || started.elapsed() > Duration::from_secs(5) {
                break (got, m);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(got.0, want, "{node}");
        assert!(
            !got.1.keys().any(|k| k.contains(&format!(r#"tor="{other}""#)) && k.starts_with("moor_pool_ips")),
            "{node} exports another ToR's series"
        );
        assert_eq!(value(&got.1, r#"moor_store_up{backend="etcd"}"#), 1.0);
    }
    // n2 serves from its view: a scrape costs the store nothing.
    let addr = logged_addr(&c.node("n2").log);
    let requests = |m: &BTreeMap<String, f64>| sum(m, "moor_store_request_duration_seconds_count");
    let (a, b) = (scrape(None, &addr), scrape(None, &addr));
    let cost = requests(&b) - requests(&a);
    let ops: Vec<(&String, f64)> = b
        .iter()
        .filter(|(k, _)| k.starts_with("moor_store_request_duration_seconds_count"))
        .map(|(k, v)| (k, v - value(&a, k)))
        .filter(|(_, d)| *d > 0.0)
        .collect();
    println!("store requests of one scrape on etcd: {cost} {ops:?}");
    assert!(
        cost <= 1.0,
        "a scrape cost {cost} etcd requests (a heartbeat may fall in between)"
    );
}

#[test]
fn a_taken_metrics_port_is_logged_and_ipamd_serves_pods_without_it() {
    let tb = testbed("127.0.0.1:0", &[]);
    let taken = metrics_addr(&tb);
    tb.stop_ipamd();
    // Something else takes the port in the node netns; ipamd starts again
    // with that port asked for.
    let node = moor_testkit::netns::path(&tb.node_ns);
    let to = taken.clone();
    let holder = spawn_in_netns(node, move || std::net::TcpListener::bind(&to))
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("take {taken} again: {e}"));
    let store = format!("redb:{}", tb.log.with_extension("redb").display());
    let ipamd = IpamdCommand::in_netns(&tb.node_ns, &tb.bins().ipamd, &tb.socket, &tb.log)
        .args(["--store", &store, "--node", &tb.node, "--tor", TOR])
        .args(["--bridge", &tb.bridge, "--metrics-listen", &taken])
        .start()
        .unwrap_or_else(|e| panic!("ipamd with its metrics port taken did not serve: {e}"));
    let log = std::fs::read_to_string(&tb.log).unwrap();
    let refused = log
        .lines()
        .any(|l| l.contains("cannot listen there") && l.contains(&taken));
    assert!(refused, "{log}");
    // It serves its socket: the CNI path does not wait on metrics.
    let listed = tb.ipamctl(&["tor", "list"]);
    assert!(listed.status.success(), "{listed:?}");
    drop(ipamd);
    drop(holder);
}
