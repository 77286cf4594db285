//! What moor's tests and benches share, in one place: each test binary used
//! to carry its own copy.
//!
//! - [`cmd`]: running `ip` and friends, root, log tails, free ports.
//! - [`netns`]: [`Netns`], a named network namespace deleted on drop, and
//!   pings and threads in one.
//! - [`TempDir`]: a directory removed on drop.
//! - [`process`]: spawning with PDEATHSIG, stopping by pid.
//! - [`ipamd`]: [`IpamdCommand`] starts an ipamd binary and waits for its
//!   socket; [`Ipamd`] stops it on drop.
//! - [`etcd`]: [`EtcdCluster`], real etcd members on free 127.0.0.1 ports.
//! - [`ovs`]: [`Ovs`], a private ovsdb-server + ovs-vswitchd per test.
//! - [`tcp_echo`]: TCP across two namespaces.
//! - [`kubeapi`]: [`FakeApi`], a loopback Kubernetes API server that
//!   kube-rs talks to unmodified, with objects shaped as the controllers
//!   make them.
//!
//! Everything it makes has a name holding the process id and a counter, so
//! tests run in parallel, and is removed by its guard (processes by pid,
//! never by name), also when a test panics. Panicking functions are for
//! tests; the `try_` and `Result` ones are for benches, which print the
//! error and exit.

pub mod cmd;
pub mod etcd;
pub mod ipamd;
pub mod kubeapi;
pub mod netns;
pub mod ovs;
pub mod process;
pub mod tcp_echo;
mod temp;

pub use etcd::EtcdCluster;
pub use ipamd::{Ipamd, IpamdCommand};
pub use kubeapi::FakeApi;
pub use netns::Netns;
pub use ovs::Ovs;
pub use temp::TempDir;

/// `PREFIX-PID-N`: unique in this process (N counts up) and beside other
/// processes (the pid).
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}
