//! `--timing`: where the time of each moor ADD and DEL goes. The plugin runs
//! with `MOOR_TIMING=1` and prints CLOCK_MONOTONIC stamps of its steps on
//! stderr; ipamd logs one line per ADD and DEL with its own steps
//! (`moor_ipamd::node::timing`, same clock); the bench stamps the spawn and
//! the reaping of the process. Joined by container id, they give one row per
//! step, from the fork to the plugin's exit.

use std::collections::HashMap;
use std::time::Duration;

use moor_e2e::bench::{ms, pct};
use serde_json::{json, Value};

pub use moor_proto::monotonic_ns;

/// One timed invocation of the plugin.
pub struct Invocation {
    /// 0: the W-worker batches, 1: the 1-worker batches.
    pub phase: usize,
    pub cmd: &'static str,
    pub cid: String,
    pub spawned: u64,
    pub reaped: u64,
    /// The plugin's `moor timing` line, by stamp name.
    pub stamps: HashMap<String, u64>,
}

/// The plugin's stamps from its stderr (empty if it printed none).
pub fn plugin_stamps(stderr: &[u8]) -> HashMap<String, u64> {
    let text = String::from_utf8_lossy(stderr);
    let Some(line) = text.lines().find(|l| l.starts_with("moor timing ")) else {
        return HashMap::new();
    };
    line.split(' ')
        .skip(2)
        .filter_map(|f| {
            let (k, v) = f.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// One ipamd timing line: when it started, its total, its steps in order.
pub struct IpamdSteps {
    start_ns: u64,
    total: Duration,
    steps: Vec<(String, Duration)>,
}

/// ipamd's timing lines in its log, by (ADD|DEL, container id).
pub fn ipamd_lines(log: &str) -> HashMap<(String, String), IpamdSteps> {
    let mut out = HashMap::new();
    for line in log.lines() {
        let Some(at) = line.find(" timing cid=") else {
            continue;
        };
        let op = line[..at]
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_string();
        let mut cid = String::new();
        let mut s = IpamdSteps {
            start_ns: 0,
            total: Duration::ZERO,
            steps: Vec::new(),
        };
        for field in line[at + " timing ".len()..].split(' ') {
            let Some((k, v)) = field.split_once('=') else {
                continue;
            };
            let us = || Duration::from_micros(v.parse().unwrap_or(0));
            match k {
                "cid" => cid = v.to_string(),
                "ifname" => {}
                "start_ns" => s.start_ns = v.parse().unwrap_or(0),
                "total_us" => s.total = us(),
                _ => s.steps.push((k.to_string(), us())),
            }
        }
        out.insert((op, cid), s);
    }
    out
}

/// Per step, every sample, in the order the steps first appeared.
#[derive(Default)]
pub struct Table {
    order: Vec<String>,
    samples: HashMap<String, Vec<Duration>>,
    /// Invocations without a complete set of stamps.
    pub incomplete: usize,
}

impl Table {
    fn add(&mut self, row: &str, d: Duration) {
        if !self.samples.contains_key(row) {
            self.order.push(row.to_string());
        }
        self.samples.entry(row.to_string()).or_default().push(d);
    }

    /// Adds `inv`'s rows, with ipamd's line for it if there is one.
    pub fn absorb(&mut self, inv: &Invocation, ipamd: Option<&IpamdSteps>) {
        let st = |k: &str| inv.stamps.get(k).copied().filter(|v| *v > 0);
        let gap = |a: u64, b: u64| Duration::from_nanos(b.saturating_sub(a));
        let (Some(main), Some(config), Some(runtime), Some(connected), Some(replied), Some(done)) = (
            st("main"),
            st("config"),
            st("runtime"),
            st("connected"),
            st("replied"),
            st("done"),
        ) else {
            self.incomplete += 1;
            return;
        };
        let Some(d) = ipamd else {
            self.incomplete += 1;
            return;
        };
        self.add("total, spawn to reaped", gap(inv.spawned, inv.reaped));
        self.add(
            "plugin: spawn to main (fork, exec, loader)",
            gap(inv.spawned, main),
        );
        self.add("plugin: stdin, config, logging", gap(main, config));
        self.add("plugin: runtime", gap(config, runtime));
        self.add("plugin: connect (socket, HTTP/2)", gap(runtime, connected));
        self.add("request to ipamd's handler", gap(connected, d.start_ns));
        for (name, took) in &d.steps {
            self.add(&format!("ipamd: {name}"), *took);
        }
        self.add("ipamd: total", d.total);
        let ipamd_end = d.start_ns + d.total.as_nanos() as u64;
        self.add("reply to the plugin", gap(ipamd_end, replied));
        self.add("plugin: result to stdout", gap(replied, done));
        self.add("plugin: exit, reaped", gap(done, inv.reaped));
    }

    pub fn rows(&self) -> &[String] {
        &self.order
    }

    /// (p50, mean) of `row` in ms; None if no sample.
    pub fn stat(&self, row: &str) -> Option<(f64, f64)> {
        let v = self.samples.get(row)?;
        let mut s = v.clone();
        s.sort();
        let mean = s.iter().sum::<Duration>() / s.len().max(1) as u32;
        Some((ms(pct(&s, 50.0)), ms(mean)))
    }

    pub fn n(&self) -> usize {
        self.samples.values().map(Vec::len).max().unwrap_or(0)
    }

    pub fn to_json(&self) -> Value {
        let rows: Vec<Value> = self
            .order
            .iter()
            .filter_map(|r| {
                let (p50, mean) = self.stat(r)?;
                Some(json!({"step": r, "p50_ms": (p50 * 1e3).round() / 1e3,
                            "mean_ms": (mean * 1e3).round() / 1e3}))
            })
            .collect();
        json!({"n": self.n(), "incomplete": self.incomplete, "rows": rows})
    }
}

/// Prints `tables` (one per phase label) side by side: p50 and mean.
pub fn print(title: &str, tables: &[(String, &Table)]) {
    println!("-- {title}");
    print!("{:<46}", "step (ms)");
    for (label, t) in tables {
        print!("{:>22}", format!("{label} (n={})", t.n()));
    }
    println!();
    print!("{:<46}", "");
    for _ in tables {
        print!("{:>11}{:>11}", "p50", "mean");
    }
    println!();
    let mut rows: Vec<&String> = Vec::new();
    for (_, t) in tables {
        for r in t.rows() {
            if !rows.contains(&r) {
                rows.push(r);
            }
        }
    }
    for r in rows {
        let indent = if r.starts_with("ipamd: wire.") {
            "    "
        } else {
            "  "
        };
        print!(
            "{:<46}",
            format!("{indent}{}", r.replace("ipamd: wire.", ""))
        );
        for (_, t) in tables {
            match t.stat(r) {
                Some((p50, mean)) => print!("{p50:>11.3}{mean:>11.3}"),
                None => print!("{:>22}", "-"),
            }
        }
        println!();
    }
    for (label, t) in tables {
        if t.incomplete > 0 {
            println!(
                "  ({label}: {} invocations without every stamp left out)",
                t.incomplete
            );
        }
    }
}
