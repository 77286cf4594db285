//! Network namespaces for tests, and the commands run in them.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Fails the test unless it runs as root: `what` says what the tests
/// create, `test` names the test binary for the hint.
pub fn require_root(what: &str, test: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the {test} tests create {what} and must run as root \
         (e.g. sudo -E cargo test -p moor-ipamd --test {test})"
    );
}

/// Runs `program args...`, which must succeed; returns stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
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

/// A named network namespace (`ip netns add`) with `lo` up, deleted on drop.
/// Names hold the pid and a counter, so tests run in parallel.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(role: &str) -> Netns {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("moor-dp-{}-{n}-{role}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let netns = Netns { name };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    /// A namespace as [`Netns::new`] makes it, with IPv6 off: no IPv6
    /// chatter where a test is about IPv4 reachability.
    pub fn ipv4_only(role: &str) -> Netns {
        let netns = Netns::new(role);
        netns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        netns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        netns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
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

    /// The one link called `name`, as `ip -j link show` prints it.
    pub fn link(&self, name: &str) -> Value {
        self.ip_json(&["link", "show", "dev", name])[0].clone()
    }

    pub fn mac_of(&self, name: &str) -> String {
        self.link(name)["address"].as_str().unwrap().to_string()
    }

    /// One ping (1 s timeout); whether it was answered.
    pub fn pings(&self, to: Ipv4Addr) -> bool {
        self.exec(&["ping", "-c1", "-W1", "-q", &to.to_string()])
            .status
            .success()
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
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}
