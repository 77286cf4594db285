//! Issue 14, the monitoring moor ships (deploy/monitoring/):
//! - the alert rules pass `promtool check rules`, and their unit tests
//!   (`promtool test rules`) cover every alert firing and not firing;
//! - the dashboard has the shape Grafana imports and the panels asked for;
//! - with three real ipamds on a real etcd (two on one ToR) after real
//!   ADDs, DELs and refusals through the `moor` binary, and etcd killed at
//!   the end: Debian's Prometheus scrapes them, answers PromQL on the ADD
//!   histogram, loads the rules healthy, makes the pool-full alerts active
//!   once for the pool (not once per node) and the store-down alert for the
//!   node, and returns data for every panel and variable; and every metric
//!   name a rule or panel uses is in the ipamds' scrapes.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use moor_e2e::cluster::{Cluster, Layout};
use moor_e2e::names::{container_id, deployment_pod};
use moor_e2e::prometheus::{
    self, dashboard, dashboard_exprs, dashboard_variables, encode, expand_variables, metric_names,
    panels, promtool, rule_exprs, rules_file, wait_for, Prometheus, Scrape,
};
use moor_e2e::scrape::{http, logged_addr};
use moor_e2e::Pod;
use moor_testkit::cmd::free_port;
use serde_json::{json, Value};

/// A bounded wait on something a 1 s scrape and evaluation interval brings
/// within 2-3 s; the rest is margin for a loaded 2-core machine.
const SCRAPED_WITHIN: Duration = Duration::from_secs(30);

fn succeeded(out: &std::process::Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn yaml(path: &PathBuf) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

#[test]
fn shipped_rules_pass_promtool_check_and_unit_tests() {
    let rules = rules_file();
    let out = succeeded(
        &promtool(&[
            OsString::from("check"),
            "rules".into(),
            rules.clone().into(),
        ]),
        "promtool check rules",
    );
    assert!(out.contains("SUCCESS"), "promtool check rules: {out}");

    // Each alert waits (`for`), says how bad (`severity`), and tells the
    // operator what it is about and which ipamctl command looks closer.
    let doc = yaml(&rules);
    let groups = doc["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 1, "one group");
    for rule in groups[0]["rules"].as_array().expect("rules") {
        let Some(alert) = rule["alert"].as_str() else {
            continue;
        };
        assert!(
            rule["for"].as_str().is_some_and(|f| !f.is_empty()),
            "{alert}: no for"
        );
        let severity = rule["labels"]["severity"].as_str();
        assert!(
            matches!(severity, Some("warning" | "critical")),
            "{alert}: severity {severity:?}"
        );
        let text = |k: &str| {
            rule["annotations"][k]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        assert!(!text("summary").is_empty(), "{alert}: no summary");
        assert!(
            text("description").contains("`ipamctl "),
            "{alert}: no ipamctl command"
        );
    }

    let tests = prometheus::rule_tests();
    assert!(
        !tests.is_empty(),
        "no promtool tests in deploy/monitoring/tests"
    );
    let mut args: Vec<OsString> = vec!["test".into(), "rules".into()];
    args.extend(tests.iter().map(|t| t.clone().into_os_string()));
    let out = succeeded(&promtool(&args), "promtool test rules");
    assert!(!out.contains("FAILED"), "promtool test rules: {out}");

    // Every alert is tested firing (expected alerts) and not firing (an
    // evaluation expecting none), and every test file loads the shipped rules.
    let alerts: BTreeSet<String> = rule_exprs()
        .into_iter()
        .map(|(name, _)| name)
        .filter(|n| n.starts_with("Moor"))
        .collect();
    assert!(alerts.len() >= 7, "alerts found: {alerts:?}");
    let (mut firing, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for t in &tests {
        let doc = yaml(t);
        let loads: Vec<&str> = doc["rule_files"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            loads,
            ["../moor-alerts.yaml"],
            "{t:?} loads the shipped rules"
        );
        for case in doc["tests"].as_array().into_iter().flatten() {
            for a in case["alert_rule_test"].as_array().into_iter().flatten() {
                let name = a["alertname"].as_str().unwrap_or_default().to_string();
                let expected = a["exp_alerts"].as_array().is_some_and(|v| !v.is_empty());
                let seen = if expected { &mut firing } else { &mut quiet };
                seen.insert(name);
            }
        }
    }
    for alert in &alerts {
        assert!(
            firing.contains(alert),
            "no promtool test expects {alert} to fire"
        );
        assert!(
            quiet.contains(alert),
            "no promtool test expects {alert} not to fire"
        );
    }
}

#[test]
fn dashboard_is_a_grafana_import_with_the_panels_asked_for() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion"
    );
    let inputs = d["__inputs"]
        .as_array()
        .expect("__inputs: shared for import");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "the datasource is an input: {inputs:?}"
    );
    let ds = json!({"type": "prometheus", "uid": "${DS_PROMETHEUS}"});

    let mut ids = BTreeSet::new();
    let mut cells: Vec<(String, [u64; 4])> = Vec::new();
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap_or_default().to_string();
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "panel id of {title} twice"
        );
        let g = &p["gridPos"];
        let rect = ["x", "y", "w", "h"].map(|k| g[k].as_u64().expect("gridPos"));
        assert!(rect[0] + rect[2] <= 24, "{title} is wider than the grid");
        for (other, r) in &cells {
            let apart = rect[0] + rect[2] <= r[0]
                || r[0] + r[2] <= rect[0]
                || rect[1] + rect[3] <= r[1]
                || r[1] + r[3] <= rect[1];
            assert!(apart, "{title} overlaps {other}");
        }
        cells.push((title.clone(), rect));
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"], ds, "{title}'s datasource");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        let refs: BTreeSet<&str> = targets.iter().filter_map(|t| t["refId"].as_str()).collect();
        assert_eq!(refs.len(), targets.len(), "{title}'s refIds are unique");
        for t in targets {
            assert_eq!(t["datasource"], ds, "{title}'s query datasource");
        }
    }
    for v in d["templating"]["list"].as_array().expect("templating") {
        assert_eq!(v["datasource"], ds, "variable {}", v["name"]);
    }

    // The panels issue 14 names, found by what they query.
    let by_panel: Vec<(String, String, String)> = panels(&d)
        .into_iter()
        .flat_map(|p| {
            let kind = p["type"].as_str().unwrap_or_default().to_string();
            let title = p["title"].as_str().unwrap_or_default().to_string();
            p["targets"].as_array().into_iter().flatten().map(move |t| {
                let expr = t["expr"].as_str().unwrap_or_default().to_string();
                (kind.clone(), title.clone(), expr)
            })
        })
        .collect();
    let has = |what: &str, f: &dyn Fn(&str, &str) -> bool| {
        assert!(
            by_panel.iter().any(|(k, _, e)| f(k, e)),
            "no panel shows {what}"
        );
    };
    has("pool use per ToR", &|_, e| {
        e.contains("sum by (tor) (max by (pool, tor) (moor_pool_ips{")
    });
    for op in ["ADD", "DEL"] {
        has(&format!("a {op} latency heatmap"), &|k, e| {
            k == "heatmap"
                && e.contains("moor_cni_request_duration_seconds_bucket{")
                && e.contains(&format!("op=\"{op}\""))
        });
    }
    has("errors by code", &|_, e| {
        e.contains("by (op, code)") && e.contains("moor_cni_requests_total{code!=\"0\"")
    });
    has("store latency", &|_, e| {
        e.contains("moor_store_request_duration_seconds_bucket")
    });
    has("store up", &|_, e| e.contains("moor_store_up"));
    has("pending DELs", &|_, e| e.contains("moor_pending_dels"));

    // Every ipamd of a ToR exports the same pool series: panels and rules
    // take each pool once per ToR, never a sum over nodes.
    let pool_exprs = by_panel
        .iter()
        .map(|(_, t, e)| (t.clone(), e.clone()))
        .chain(rule_exprs());
    for (name, expr) in pool_exprs {
        // The metric, not a recording rule named after it (`a:moor_pool_ips:b`).
        let uses = expr
            .match_indices("moor_pool_ips")
            .filter(|(i, m)| !expr[..*i].ends_with(':') && !expr[i + m.len()..].starts_with(':'))
            .count();
        let deduplicated = expr.matches("max by (pool, tor) (moor_pool_ips{").count();
        assert_eq!(
            uses, deduplicated,
            "{name}: moor_pool_ips not under max by (pool, tor): {expr}"
        );
    }
}

// ------------------------------------------------------------ real ipamds

/// The ToR of two nodes ([`Layout::standard`]: n1 and n2 under tor-a, n3
/// under tor-b) and the pools the test fills on it.
const TOR: &str = "tor-a";
/// One IP on [`TOR`]: its second pod is refused (pool full, code 100).
const FULL: &str = "mon";
/// Room on [`TOR`], for an ADD that must reach the store.
const SPARE: &str = "spare";

/// Every `moor_` metric name in the rules, the panels and the dashboard's
/// variables, with where each is used.
fn names_used() -> BTreeMap<String, Vec<String>> {
    let d = dashboard();
    let rules = rule_exprs()
        .into_iter()
        .map(|(n, e)| (format!("rule {n}"), e));
    let panels = dashboard_exprs(&d)
        .into_iter()
        .map(|(t, e)| (format!("panel {t}"), e));
    let vars = dashboard_variables(&d)
        .into_iter()
        .map(|(n, q)| (format!("variable {n}"), q));
    let mut used: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (at, expr) in rules.chain(panels).chain(vars) {
        for name in metric_names(&expr) {
            used.entry(name).or_default().push(at.clone());
        }
    }
    used
}

/// A real pod ADD through the `moor` binary on `node`; the CNI error code
/// (0 on success), the pod and its container id (to retry or DEL).
fn add(c: &Cluster, node: &str, app: &str, seed: u64) -> (u64, Pod, String) {
    let pod = c.pod(&deployment_pod(app, seed));
    let cid = container_id();
    (retry(c, node, &pod, &cid), pod, cid)
}

/// The ADD of `pod` again, as a runtime retries it; the CNI error code.
fn retry(c: &Cluster, node: &str, pod: &Pod, cid: &str) -> u64 {
    let r = c.add(node, pod, cid);
    if r.code == 0 {
        0
    } else {
        r.err_code(&format!("ADD on {node}"))
    }
}

/// A non-empty answer to `promql`, waited for.
fn wait_series(prom: &Prometheus, what: &str, promql: &str) -> Vec<Value> {
    wait_for(what, SCRAPED_WITHIN, || {
        let v = prom.query(promql)?;
        if v.is_empty() {
            Err(format!("nothing for {promql}"))
        } else {
            Ok(v)
        }
    })
}

/// The labels of each `ALERTS{alertname=...}` series written by a rule
/// evaluation after `after` (Prometheus time, seconds), once there is one.
fn active_after(prom: &Prometheus, alert: &str, after: f64) -> Vec<Value> {
    let alerts = format!(r#"ALERTS{{alertname="{alert}"}}"#);
    let promql = format!("{alerts} and timestamp({alerts}) > {after}");
    let v = wait_series(prom, &format!("{alert} active"), &promql);
    v.into_iter().map(|s| s["metric"].clone()).collect()
}

/// Waits until Prometheus has loaded and evaluated every shipped rule, each
/// with health "ok".
fn wait_rules_healthy(prom: &Prometheus) {
    let shipped: BTreeSet<String> = rule_exprs().into_iter().map(|(n, _)| n).collect();
    wait_for(
        "every shipped rule evaluated healthy",
        SCRAPED_WITHIN,
        || {
            let data = prom.api("/api/v1/rules")?;
            let mut seen = BTreeSet::new();
            for g in data["groups"].as_array().into_iter().flatten() {
                for r in g["rules"].as_array().into_iter().flatten() {
                    if r["health"] != "ok" {
                        return Err(format!(
                            "{} is {}: {}",
                            r["name"], r["health"], r["lastError"]
                        ));
                    }
                    seen.insert(r["name"].as_str().unwrap_or_default().to_string());
                }
            }
            if seen == shipped {
                Ok(())
            } else {
                Err(format!("rules loaded: {seen:?}"))
            }
        },
    );
}

/// Every `moor_` metric name the rules, panels and variables use is one the
/// ipamds at `targets` export (their `/metrics` now).
fn assert_used_names_exported(targets: &[String]) {
    let texts: Vec<String> = targets
        .iter()
        .map(|t| {
            let (code, body) = http(None, t, "GET", "/metrics");
            assert_eq!(code, 200, "GET {t}/metrics: {body}");
            body
        })
        .collect();
    let scrape = Scrape::parse(&texts.join("\n"));
    let used = names_used();
    // A tokenizer that finds nothing would pass the check below.
    for name in [
        "moor_pool_ips",
        "moor_pool_full_total",
        "moor_cni_request_duration_seconds_bucket",
    ] {
        assert!(
            used.contains_key(name),
            "the tokenizer found no {name}: {used:?}"
        );
    }
    let missing: Vec<String> = used
        .iter()
        .filter(|(name, _)| !scrape.exports(name))
        .map(|(name, at)| format!("{name} (used by {})", at.join(", ")))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics used but not exported by ipamd:\n{}\nthe scrapes:\n{}",
        missing.join("\n"),
        scrape.text
    );
}

/// Every panel's query (variables at "All") returns series, and every
/// variable's `label_values(SELECTOR, LABEL)` finds values.
fn assert_panels_show_data(prom: &Prometheus) {
    let d = dashboard();
    for (title, expr) in dashboard_exprs(&d) {
        wait_series(prom, &format!("panel {title}"), &expand_variables(&expr));
    }
    for (name, query) in dashboard_variables(&d) {
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {name}: {query}"));
        let (selector, label) = inner
            .rsplit_once(',')
            .expect("label_values(SELECTOR, LABEL)");
        let path = format!(
            "/api/v1/label/{}/values?match[]={}",
            label.trim(),
            encode(&expand_variables(selector))
        );
        let values = prom
            .api(&path)
            .unwrap_or_else(|e| panic!("variable {name}: {e}"));
        assert!(
            values.as_array().is_some_and(|v| !v.is_empty()),
            "variable {name} has no values: {query}"
        );
    }
}

/// Issue 14, done when 2 and 6, against real parts: three ipamds on a real
/// etcd (two of them on one ToR), real ADDs and DELs through the `moor`
/// binary, and Debian's Prometheus scraping them with the shipped rules.
#[test]
fn prometheus_scrapes_two_nodes_of_a_tor_and_the_shipped_monitoring_holds() {
    let mut layout = Layout::standard();
    layout.ipamd_args = vec!["--metrics-listen".into(), "127.0.0.1:0".into()];
    let c = Cluster::new(layout);
    c.create_pool(FULL, FULL, 1, &[TOR]);
    c.create_pool(SPARE, SPARE, 4, &[TOR]);
    // An ADD and its DEL, an ADD that stays; then both nodes of the ToR
    // refuse a pod of the full pool.
    let (code, pod, cid) = add(&c, "n1", FULL, 1);
    assert_eq!(code, 0, "first ADD");
    c.del("n1", &pod, &cid).ok("DEL");
    assert_eq!(add(&c, "n1", FULL, 2).0, 0, "second ADD");
    let refused: Vec<(&str, Pod, String)> = [("n1", 3), ("n2", 4)]
        .into_iter()
        .map(|(node, seed)| {
            let (code, pod, cid) = add(&c, node, FULL, seed);
            assert_eq!(code, 100, "ADD into the full pool on {node}");
            (node, pod, cid)
        })
        .collect();

    let nodes = ["n1", "n2", "n3"];
    let targets: Vec<String> = nodes.iter().map(|n| logged_addr(&c.node(n).log)).collect();
    let instance = |node: &str| targets[nodes.iter().position(|n| *n == node).unwrap()].clone();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let prom = Prometheus::start(None, addr, &targets, &[rules_file()]);

    // PromQL on the ADD histogram, from the real scrape.
    let buckets = wait_series(
        &prom,
        "the ADD histogram in Prometheus",
        &format!(
            r#"moor_cni_request_duration_seconds_bucket{{job="moor", op="ADD", le="+Inf", instance="{}"}}"#,
            instance("n1")
        ),
    );
    assert_eq!(buckets[0]["value"][1], "3", "n1's three ADDs: {buckets:?}");

    // The shipped rules, loaded and evaluated without error.
    wait_rules_healthy(&prom);

    // Both nodes of the ToR export the full pool. Once Prometheus has their
    // refusal counters, the pods' retries make them rise, and the pool-full
    // alerts go active (pending: their `for` is minutes) once for the pool.
    let free = format!(r#"moor_pool_ips{{pool="{FULL}", tor="{TOR}", state="free"}}"#);
    let refusals = format!(r#"moor_pool_full_total{{pool="{FULL}", tor="{TOR}"}}"#);
    wait_for(
        "both nodes' pool and refusals in Prometheus",
        SCRAPED_WITHIN,
        || {
            let (f, r) = (prom.query(&free)?, prom.query(&refusals)?);
            if f.len() == 2 && r.len() == 2 {
                Ok(())
            } else {
                Err(format!("{f:?} {r:?}"))
            }
        },
    );
    for (node, pod, cid) in &refused {
        assert_eq!(retry(&c, node, pod, cid), 100, "retried ADD on {node}");
    }
    // Counted only once Prometheus holds both nodes' rises (at its time
    // `seen`), from evaluations after that: an alert per node would be
    // there by then.
    let rising = format!("increase({refusals}[10m]) > 0");
    let seen = wait_for("both nodes' retries in Prometheus", SCRAPED_WITHIN, || {
        let v = prom.query(&rising)?;
        match v[..] {
            [ref a, _] => Ok(a["value"][0].as_f64().unwrap_or_default()),
            _ => Err(format!("{v:?}")),
        }
    });
    for alert in ["MoorPoolExhausted", "MoorPoolAlmostFull"] {
        let alerts = active_after(&prom, alert, seen);
        assert_eq!(alerts.len(), 1, "{alert} once for two nodes: {alerts:?}");
        let l = &alerts[0];
        assert_eq!(
            (&l["pool"], &l["tor"], &l["alertstate"]),
            (&json!(FULL), &json!(TOR), &json!("pending")),
            "{alert}: {l}"
        );
    }

    // etcd goes away: an ADD that must commit fails (code 11), the store
    // errors are counted and the node's store-down alert goes active.
    c.etcd_kill9_all();
    assert_eq!(add(&c, "n1", SPARE, 5).0, 11, "ADD with etcd down");
    // The error series exist at 0 from the start: wait for n1's to count.
    let n1 = instance("n1");
    wait_series(
        &prom,
        "n1's store errors in Prometheus",
        &format!(
            r#"moor_store_errors_total{{backend="etcd",kind="unavailable",instance="{n1}"}} > 0"#
        ),
    );
    let down = wait_series(
        &prom,
        "MoorStoreDown active for n1",
        &format!(r#"ALERTS{{alertname="MoorStoreDown",instance="{n1}"}}"#),
    );
    assert!(
        down.iter()
            .any(|s| s["metric"]["backend"] == "etcd" && s["metric"]["severity"] == "critical"),
        "n1's store is down: {down:?}"
    );

    // Every metric name a rule, panel or variable uses is in a real scrape
    // of these ipamds.
    assert_used_names_exported(&targets);

    // Every panel's query runs and shows this traffic; every variable finds
    // values.
    assert_panels_show_data(&prom);
}
