//! The monitoring moor ships (deploy/monitoring/: alert rules, their promtool
//! tests, a Grafana dashboard) as the e2e tests check it:
//!
//! - [`promtool`]: Debian's promtool, failing loudly when it is missing.
//! - [`rule_exprs`], [`dashboard_exprs`], [`metric_names`]: the PromQL the
//!   rules and panels hold, and the `moor_` metric names in it.
//! - [`Scrape`]: one `/metrics` answer of ipamd (OpenMetrics text): which
//!   metric families it declares and which series names it has samples for.
//! - [`Prometheus`]: the real `prometheus` server, in this process's network
//!   namespace or a node's, stopped by pid.
//! - [`http_get`]: plain HTTP GET that reports, rather than panics on, a
//!   server not up yet (for polling), from a thread inside a network
//!   namespace if asked.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use moor_testkit::cmd::tail;
use moor_testkit::process::{spawn_logged, terminate, STOP_GRACE};
use moor_testkit::TempDir;
use serde_json::Value;

use crate::deploy::repo_root;

/// deploy/monitoring/ of this checkout.
pub fn dir() -> PathBuf {
    repo_root().join("deploy/monitoring")
}

/// The shipped alert rules.
pub fn rules_file() -> PathBuf {
    dir().join("moor-alerts.yaml")
}

/// The shipped Grafana dashboard.
pub fn dashboard_file() -> PathBuf {
    dir().join("moor-dashboard.json")
}

/// The promtool unit tests of the rules (deploy/monitoring/tests/*.yaml),
/// sorted.
pub fn rule_tests() -> Vec<PathBuf> {
    let tests = dir().join("tests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&tests)
        .unwrap_or_else(|e| panic!("{}: {e}", tests.display()))
        .map(|e| e.expect("read deploy/monitoring/tests").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// `program` on PATH; panics with the package to install (never skips).
pub fn require(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{program} is not installed: apt-get install prometheus (Debian's package has \
                 prometheus and promtool; scripts/setup installs it)"
            )
        })
}

/// `promtool args...` (any exit code).
pub fn promtool<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(require("promtool"))
        .args(args)
        .output()
        .expect("run promtool")
}

// ------------------------------------------------------------ PromQL in files

/// (alert or record name, expr) of every rule of the shipped rule file.
pub fn rule_exprs() -> Vec<(String, String)> {
    let path = rules_file();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let doc: Value = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let mut out = Vec::new();
    for group in doc["groups"].as_array().expect("groups: a list") {
        for rule in group["rules"].as_array().expect("rules: a list") {
            let name = rule["alert"].as_str().or(rule["record"].as_str());
            let name = name.expect("a rule has an alert or record name");
            let expr = rule["expr"].as_str().expect("a rule has an expr");
            out.push((name.to_string(), expr.to_string()));
        }
    }
    out
}

/// The shipped dashboard, parsed.
pub fn dashboard() -> Value {
    let path = dashboard_file();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// Every panel of a dashboard, those inside collapsed rows too.
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// (panel title, expr) of every target of every panel.
pub fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                let title = p["title"].as_str().unwrap_or_default();
                out.push((title.to_string(), expr.to_string()));
            }
        }
    }
    out
}

/// (variable name, query) of the dashboard's query variables, e.g.
/// `label_values(moor_pool_ips, tor)`.
pub fn dashboard_variables(dashboard: &Value) -> Vec<(String, String)> {
    let list = dashboard["templating"]["list"].as_array();
    list.into_iter()
        .flatten()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let q = &v["query"];
            let q = q.as_str().or(q["query"].as_str()).unwrap_or_default();
            (
                v["name"].as_str().unwrap_or_default().to_string(),
                q.to_string(),
            )
        })
        .collect()
}

/// A dashboard expr as Grafana sends it with every variable at "All":
/// `$__rate_interval` a minute, `$tor`/`$pool`/`$instance` any value.
pub fn expand_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$tor", ".*")
        .replace("$pool", ".*")
        .replace("$instance", ".*")
}

/// The `moor_` metric names a PromQL expression uses: identifiers (outside
/// quoted strings) that start with `moor_` and are followed by `{`, `[`,
/// `)`, `,`, white space or the end. Recording-rule names
/// (`pool_tor:moor_pool_ips:used_ratio`, `moor:threshold:...`) are one
/// identifier with colons and do not count.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                // A backslash escapes the next character, except in raw `...`.
                i += if chars[i] == '\\' && c != '`' { 2 } else { 1 };
            }
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let ident: String = chars[start..i].iter().collect();
            let ends_a_name = chars
                .get(i)
                .is_none_or(|n| "{[),".contains(*n) || n.is_whitespace());
            if ident.starts_with("moor_") && ends_a_name {
                names.insert(ident);
            }
        } else {
            i += 1;
        }
    }
    names
}

// ------------------------------------------------------------ a scrape

/// One answer of ipamd's `/metrics` (OpenMetrics text).
#[derive(Debug, Default)]
pub struct Scrape {
    /// `# TYPE NAME TYPE` lines: family name -> type.
    pub families: BTreeMap<String, String>,
    /// Names of the samples (series) it holds.
    pub samples: BTreeSet<String>,
    pub text: String,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let mut s = Scrape {
            text: text.to_string(),
            ..Scrape::default()
        };
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut f = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (f.next(), f.next()) {
                    s.families.insert(name.to_string(), kind.to_string());
                }
            } else if !line.starts_with('#') && !line.is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                s.samples.insert(line[..end].to_string());
            }
        }
        s
    }

    /// Whether a PromQL selector of `name` can match what this ipamd
    /// exports: a series it has, or a series of a family it declares that
    /// has no samples yet (a labelled counter nothing has counted, such as
    /// store errors on a healthy store): a counter's `_total`, a
    /// histogram's `_bucket`, `_sum` and `_count`, a gauge's own name.
    pub fn exports(&self, name: &str) -> bool {
        if self.samples.contains(name) {
            return true;
        }
        let family = |suffixes: &[&str], kinds: &[&str]| {
            suffixes.iter().any(|s| {
                name.strip_suffix(s).is_some_and(|base| {
                    self.families
                        .get(base)
                        .is_some_and(|k| kinds.contains(&k.as_str()))
                })
            })
        };
        family(&["_total"], &["counter"])
            || family(&["_bucket", "_sum", "_count"], &["histogram"])
            || family(&[""], &["gauge", "unknown"])
    }
}

// ------------------------------------------------------------ HTTP in a netns

/// `GET path` (with its query) from `addr`; with `netns`, from inside the
/// network namespace at that path ([`crate::scrape::request`]).
pub fn http_get(
    netns: Option<&Path>,
    addr: SocketAddr,
    path: &str,
) -> Result<(u16, String), String> {
    crate::scrape::request(netns, &addr.to_string(), "GET", path)
}

/// `s` percent-encoded for a URL's query (RFC 3986 unreserved kept).
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Polls `f` every 200 ms until it returns Some, or panics after `within`
/// saying what was waited for and what `f` last saw.
pub fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let started = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if started.elapsed() > within => {
                panic!("{what}: not within {within:?}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

// ------------------------------------------------------------ prometheus

/// A real `prometheus` server with its own TSDB in a temp dir, scraping its
/// targets every second and evaluating the rule files it was given every
/// second. SIGTERM by pid on drop.
pub struct Prometheus {
    child: Option<Child>,
    /// The network namespace it runs in; None: this process's.
    pub netns: Option<PathBuf>,
    pub addr: SocketAddr,
    pub log: PathBuf,
    _dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus listening on `addr` (inside the netns at `netns`,
    /// if given), scraping `targets` (HOST:PORT, job `moor`) and loading
    /// `rule_files`; waits until it is ready (`/-/ready`).
    pub fn start(
        netns: Option<&Path>,
        addr: SocketAddr,
        targets: &[String],
        rule_files: &[PathBuf],
    ) -> Self {
        let dir = TempDir::new("moor-prometheus");
        let rules: Vec<String> = rule_files
            .iter()
            .map(|p| format!("  - {}\n", p.display()))
            .collect();
        // 1 s: the test waits on scrapes and rule evaluations; a scrape's
        // timeout may not exceed its interval.
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n{}\
             scrape_configs:\n  - job_name: moor\n    static_configs:\n      - targets: [{}]\n",
            rules.concat(),
            targets
                .iter()
                .map(|t| format!("'{t}'"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).expect("write prometheus.yml");
        let log = dir.join("prometheus.log");
        let mut cmd = Command::new(require("prometheus"));
        cmd.arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"));
        let ns = netns.map(|n| std::fs::File::open(n).unwrap_or_else(|e| panic!("{n:?}: {e}")));
        if let Some(ns) = &ns {
            // SAFETY: setns is async-signal-safe; `ns` stays open in the
            // parent (and so in the child) until spawn returns.
            unsafe {
                use std::os::fd::AsRawFd;
                let fd = ns.as_raw_fd();
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = spawn_logged(&mut cmd, &log).expect("spawn prometheus");
        drop(ns);
        let p = Prometheus {
            child: Some(child),
            netns: netns.map(Path::to_path_buf),
            addr,
            log,
            _dir: dir,
        };
        // It opens its TSDB and web listener in about a second here; 30 s
        // is the margin for a loaded 2-core machine.
        wait_for("prometheus ready", Duration::from_secs(30), || {
            match p.get("/-/ready") {
                Ok((200, _)) => Ok(()),
                Ok((code, body)) => Err(format!("{code} {body}")),
                Err(e) => Err(format!("{e}\nlog:\n{}", p.log_tail(20))),
            }
        });
        p
    }

    /// `GET path` against its web API.
    pub fn get(&self, path: &str) -> Result<(u16, String), String> {
        http_get(self.netns.as_deref(), self.addr, path)
    }

    /// `GET path` answered 200 with JSON `{"status":"success","data":...}`:
    /// the data, or what came instead.
    pub fn api(&self, path: &str) -> Result<Value, String> {
        let (code, body) = self.get(path)?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{code} {body}: {e}"))?;
        if code != 200 || v["status"] != "success" {
            return Err(format!("{path}: {code} {body}"));
        }
        Ok(v["data"].clone())
    }

    /// An instant query: `data.result` (a vector for a vector expression).
    pub fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(promql)))?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The last lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- prometheus log:\n{}\n----", self.log_tail(30));
        }
        if let Some(child) = self.child.take() {
            terminate(child, STOP_GRACE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<String> {
        metric_names(expr).into_iter().collect()
    }

    #[test]
    fn metric_names_are_the_moor_selectors_of_an_expression() {
        assert_eq!(
            names(
                r#"1 - max by (pool, tor) (moor_pool_ips{state="free"}) / sum(rate(moor_x_total[5m])) > moor_up"#
            ),
            ["moor_pool_ips", "moor_up", "moor_x_total"]
        );
        assert_eq!(
            names("histogram_quantile(0.99, sum by (le) (rate(moor_a_bucket[1m])))"),
            ["moor_a_bucket"]
        );
        // Quoted label values, recording rules and functions are not metrics.
        assert_eq!(
            names(
                r#"pool_tor:moor_pool_ips:used_ratio > scalar(moor:threshold:x) and moor_b{l="moor_c"}"#
            ),
            ["moor_b"]
        );
        assert_eq!(names("label_values(moor_pool_ips, tor)"), ["moor_pool_ips"]);
        assert_eq!(
            names("moor_pending_dels\n  and deriv(moor_pending_dels[10m])"),
            ["moor_pending_dels"]
        );
    }

    #[test]
    fn a_scrape_exports_series_and_declared_families() {
        let s = Scrape::parse(
            "# HELP moor_cni_requests CNI requests.\n# TYPE moor_cni_requests counter\n\
             moor_cni_requests_total{op=\"ADD\",code=\"0\"} 3\n\
             # TYPE moor_store_errors counter\n\
             # TYPE moor_d histogram\nmoor_d_bucket{le=\"0.1\"} 1\nmoor_d_sum 0.05\nmoor_d_count 1\n\
             # TYPE moor_up gauge\nmoor_up 1\n# EOF\n",
        );
        for ok in [
            "moor_cni_requests_total",
            "moor_store_errors_total",
            "moor_d_bucket",
            "moor_d_count",
            "moor_up",
        ] {
            assert!(s.exports(ok), "{ok}");
        }
        for missing in [
            "moor_cni_requests",
            "moor_store_errors",
            "moor_d",
            "moor_up_total",
            "moor_nope",
        ] {
            assert!(!s.exports(missing), "{missing}");
        }
    }

    #[test]
    fn encode_keeps_unreserved_only() {
        assert_eq!(
            encode(r#"a{b="c"}[1m] / 2"#),
            "a%7Bb%3D%22c%22%7D%5B1m%5D%20%2F%202"
        );
    }
}
