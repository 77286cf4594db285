//! The `ipamctl` admin CLI as the harnesses drive it: one binary, one ipamd
//! socket. [`Testbed`](crate::Testbed), [`Cluster`](crate::cluster::Cluster)
//! and [`CriNode`](crate::containerd::CriNode) each hand one out for their
//! ipamd (or the node's) and keep their own methods as thin calls to it.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::testbed::{assert_ok, POD_NAMESPACE};

/// The counts of a pool (`ipamctl -o json pool show`'s `totals`, or one of
/// its `tors`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub total: u64,
    pub bound: u64,
    pub in_use: u64,
    pub free: u64,
}

impl Counts {
    /// The counts in `c`, a part of pool `pool`'s `pool show` JSON `v`.
    fn of(c: &Value, pool: &str, v: &Value) -> Counts {
        let n = |k: &str| {
            c[k].as_u64()
                .unwrap_or_else(|| panic!("pool show {pool}: no {k} in {v}"))
        };
        Counts {
            total: n("total"),
            bound: n("bound"),
            in_use: n("in_use"),
            free: n("free"),
        }
    }
}

/// `ipamctl --socket SOCKET ...` with the built binary `bin`.
#[derive(Debug, Clone, Copy)]
pub struct Ipamctl<'a> {
    pub bin: &'a Path,
    pub socket: &'a Path,
}

impl Ipamctl<'_> {
    /// `ipamctl --socket SOCKET args...` (MOOR_SOCKET removed, so the
    /// socket is only ever the one given).
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(self.bin)
            .arg("--socket")
            .arg(self.socket)
            .args(args)
            .env_remove("MOOR_SOCKET")
            .stdin(Stdio::null())
            .output()
            .expect("run ipamctl")
    }

    /// `ipamctl args...`, which must succeed.
    pub fn ok(&self, args: &[&str]) {
        let out = self.run(args);
        assert_ok(
            &out,
            &format!(
                "ipamctl {} (socket {})",
                args.join(" "),
                self.socket.display()
            ),
        );
    }

    /// `ipamctl -o json args...`, which must succeed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert_ok(
            &out,
            &format!(
                "ipamctl {} (socket {})",
                all.join(" "),
                self.socket.display()
            ),
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "ipamctl {} printed no JSON ({e}): {}",
                all.join(" "),
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `ipamctl tor add NAME --subnet S --gateway G --range A-B extra...`.
    pub fn tor_add(
        &self,
        name: &str,
        subnet: &str,
        gateway: Ipv4Addr,
        range: (Ipv4Addr, Ipv4Addr),
        extra: &[&str],
    ) {
        let gw = gateway.to_string();
        let range = format!("{}-{}", range.0, range.1);
        let mut args = vec![
            "tor",
            "add",
            name,
            "--subnet",
            subnet,
            "--gateway",
            &gw,
            "--range",
            &range,
        ];
        args.extend_from_slice(extra);
        self.ok(&args);
    }

    /// `ipamctl pool create NAME --namespace shop --app APP --size N [--tor T...]`
    /// (all ToRs when `tors` is empty).
    pub fn create_pool(&self, name: &str, app: &str, size: u32, tors: &[&str]) {
        let size = size.to_string();
        let mut args = vec![
            "pool",
            "create",
            name,
            "--namespace",
            POD_NAMESPACE,
            "--app",
            app,
            "--size",
            &size,
        ];
        for t in tors {
            args.extend(["--tor", t]);
        }
        self.ok(&args);
    }

    /// `ipamctl pool resize NAME --size N`.
    pub fn resize_pool(&self, name: &str, size: u32) {
        self.ok(&["pool", "resize", name, "--size", &size.to_string()]);
    }

    /// `ipamctl -o json pool show NAME`.
    pub fn pool_show(&self, pool: &str) -> Value {
        self.json(&["pool", "show", pool])
    }

    /// The pool's totals.
    pub fn pool_counts(&self, pool: &str) -> Counts {
        let v = self.pool_show(pool);
        Counts::of(&v["totals"], pool, &v)
    }

    /// The pool's totals, and its counts per ToR.
    pub fn pool_counts_per_tor(&self, pool: &str) -> (Counts, Vec<(String, Counts)>) {
        let v = self.pool_show(pool);
        let per_tor = v["tors"]
            .as_array()
            .unwrap_or_else(|| panic!("pool show {pool}: no tors in {v}"))
            .iter()
            .map(|t| {
                let tor = t["tor"].as_str().unwrap_or_default().to_string();
                (tor, Counts::of(t, pool, &v))
            })
            .collect();
        (Counts::of(&v["totals"], pool, &v), per_tor)
    }

    /// `ipamctl -o json ip list` (every IP of every pool).
    pub fn ip_list(&self) -> Vec<Value> {
        match self.json(&["ip", "list"]) {
            Value::Array(a) => a,
            other => panic!("ip list is not an array: {other}"),
        }
    }

    /// The pool's IPs as `ipamctl -o json pool export NAME` prints them.
    pub fn pool_export(&self, pool: &str) -> Vec<String> {
        let v = self.json(&["pool", "export", pool]);
        v["ips"]
            .as_array()
            .unwrap_or_else(|| panic!("pool export {pool}: no ips in {v}"))
            .iter()
            .map(|ip| ip.as_str().expect("IPs are strings").to_string())
            .collect()
    }
}
