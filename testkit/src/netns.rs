//! Named network namespaces (`ip netns add`, under /run/netns) and what
//! tests do in them: `ip -n`, commands, pings, threads.

use std::fmt::Display;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cmd::{run, try_ip};

/// A named network namespace with `lo` up, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A namespace called `moor-ns-PID-N-ROLE`: unique, so tests run in
    /// parallel.
    pub fn new(role: &str) -> Netns {
        Netns::add(format!("{}-{role}", crate::unique("moor-ns"))).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A namespace as [`Netns::new`] makes it, with IPv6 off: no IPv6
    /// chatter where a test is about IPv4 reachability.
    pub fn ipv4_only(role: &str) -> Netns {
        let netns = Netns::new(role);
        disable_ipv6(&netns.name).unwrap_or_else(|e| panic!("{e}"));
        netns
    }

    /// The namespace `name` with lo up; deleted on drop, also if lo fails.
    pub fn add(name: String) -> Result<Netns, String> {
        try_ip(&["netns", "add", &name])?;
        let netns = Netns { name };
        try_ip(&["-n", &netns.name, "link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// Deletes the namespace now; panics if `ip netns del` fails.
    pub fn delete(mut self) {
        // Drop has nothing left to delete, also if this panics.
        let name = std::mem::take(&mut self.name);
        run("ip", &["netns", "del", &name]);
    }

    /// Its file, /run/netns/NAME (CNI_NETNS).
    pub fn path(&self) -> PathBuf {
        path(&self.name)
    }

    /// `ip -n <netns> args...`, which must succeed; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// `ip -n <netns> args...` without insisting on success.
    pub fn try_ip(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .expect("run ip")
    }

    /// `ip -j -n <netns> args...` parsed.
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["-j"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ip(&all)).expect("ip -j prints JSON")
    }

    /// A command run inside the netns (`ip netns exec`).
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("run ip netns exec")
    }

    pub fn link_exists(&self, name: &str) -> bool {
        link_exists(&self.name, name)
    }

    /// `Some(carrier)` of link `name`, `None` if there is no such link.
    /// One listing of every link, so a link deleted meanwhile (a reaper
    /// at work) reads as gone, never as an error.
    pub fn carrier(&self, name: &str) -> Option<bool> {
        let all = self.ip_json(&["link", "show"]);
        let link = all.as_array()?.iter().find(|l| l["ifname"] == name)?;
        let flags = link["flags"].as_array().cloned().unwrap_or_default();
        Some(flags.iter().any(|f| f == "LOWER_UP") && !flags.iter().any(|f| f == "NO-CARRIER"))
    }

    /// The one link called `name`, as `ip -j link show` prints it.
    pub fn link(&self, name: &str) -> Value {
        self.ip_json(&["link", "show", "dev", name])[0].clone()
    }

    pub fn mac_of(&self, name: &str) -> String {
        self.link(name)["address"].as_str().unwrap().to_string()
    }

    /// Names of its links.
    pub fn links(&self) -> Vec<String> {
        links(&self.name)
    }

    /// One ping (1 s timeout); whether it was answered.
    pub fn pings(&self, to: Ipv4Addr) -> bool {
        pings(&self.name, to)
    }

    /// Whether `to` answers a ping within `within`.
    pub fn reaches(&self, to: Ipv4Addr, within: Duration) -> bool {
        let started = Instant::now();
        loop {
            if self.pings(to) {
                return true;
            }
            if started.elapsed() >= within {
                return false;
            }
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.name.is_empty() {
            return;
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// The file of the namespace called `name`: /run/netns/NAME.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// Whether the netns called `netns` holds a link called `name`.
pub fn link_exists(netns: &str, name: &str) -> bool {
    Command::new("ip")
        .args(["-n", netns, "link", "show", "dev", name])
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("run ip")
        .success()
}

/// Names of the links in `netns`; panics if `ip` fails.
pub fn links(netns: &str) -> Vec<String> {
    try_links(netns).unwrap_or_else(|e| panic!("{e}"))
}

/// Names of the links in `netns`, or what went wrong.
pub fn try_links(netns: &str) -> Result<Vec<String>, String> {
    Ok(link_names(&try_link_json(netns)?))
}

/// `ip -j link show` in `netns`.
fn try_link_json(netns: &str) -> Result<Value, String> {
    let out = try_ip(&["-n", netns, "-j", "link", "show"])?;
    serde_json::from_str(&out).map_err(|e| format!("ip -j link show in {netns}: {e}"))
}

/// Whether a link of `ip -j link show` is retired: in
/// [`moor_proto::GRAVEYARD_GROUP`], waiting for ipamd's reaper (it keeps
/// its name until then).
fn is_retired(link: &Value) -> bool {
    link["group"].as_str() == Some(moor_proto::GRAVEYARD_GROUP.to_string().as_str())
}

/// The names of the links of `v` (`ip -j link show`) that `keep`.
fn names_where(v: &Value, keep: impl Fn(&Value) -> bool) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|l| keep(l))
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .collect()
}

/// The live pod veth host ends among `ip -j link show` output: named
/// [`moor_proto::host_ifname`]-style and not retired.
pub fn live_host_ends(v: &Value) -> Vec<String> {
    names_where(v, |l| {
        !is_retired(l)
            && l["ifname"]
                .as_str()
                .is_some_and(|n| n.starts_with(moor_proto::HOST_IFNAME_PREFIX))
    })
}

/// The retired links in `netns`.
pub fn retired_links(netns: &str) -> Vec<String> {
    names_where(
        &try_link_json(netns).unwrap_or_else(|e| panic!("{e}")),
        is_retired,
    )
}

/// The live pod veth host ends in `netns` ([`live_host_ends`]).
pub fn host_ends(netns: &str) -> Vec<String> {
    live_host_ends(&try_link_json(netns).unwrap_or_else(|e| panic!("{e}")))
}

/// The `ifname`s of `ip -j link show` output.
pub fn link_names(v: &Value) -> Vec<String> {
    names_where(v, |_| true)
}

/// Turns IPv6 off in `netns` (all and default), e.g. so that a pod's
/// neighbour discovery does not teach switches where it moved.
pub fn disable_ipv6(netns: &str) -> Result<(), String> {
    try_ip(&[
        "netns",
        "exec",
        netns,
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1",
    ])
    .map(drop)
}

/// One ping (1 s timeout) from `netns` to `to`; whether it was answered.
pub fn pings(netns: &str, to: impl Display) -> bool {
    Command::new("ip")
        .args(["netns", "exec", netns, "ping", "-c1", "-W1", "-q"])
        .arg(to.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Does one ping from `netns` to `to` get an answer (3 tries)?
pub fn ping_from(netns: &str, to: Ipv4Addr) -> bool {
    (0..3).any(|_| pings(netns, to))
}

/// Pings `to` from `netns` every 100 ms until it answers; an error after
/// `within`.
pub fn wait_ping(netns: &str, to: impl Display, within: Duration) -> Result<(), String> {
    let to = to.to_string();
    let start = Instant::now();
    loop {
        if pings(netns, &to) {
            return Ok(());
        }
        if start.elapsed() > within {
            return Err(format!(
                "{to} does not answer ping from netns {netns} after {within:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `f` on a new thread inside the netns at `netns` (sockets it opens
/// stay there).
pub fn spawn_in_netns<T: Send + 'static>(
    netns: PathBuf,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        enter(&netns);
        f()
    })
}

/// Moves the calling thread into the netns at `netns`; panics if it cannot.
/// Only on a thread of its own: a netlink socket belongs to the netns of the
/// thread that opened it.
pub fn enter(netns: &std::path::Path) {
    let file =
        std::fs::File::open(netns).unwrap_or_else(|e| panic!("open {}: {e}", netns.display()));
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("setns {}: {e}", netns.display()));
}
