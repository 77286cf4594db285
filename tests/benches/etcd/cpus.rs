//! `--split-cpus`: etcd on CPUs of its own, the bench (its allocators, the
//! floor's clients, the real ipamd) on the others. On a cluster etcd has
//! machines of its own and each ipamd runs on its node; on one machine the
//! allocators' CPU is otherwise taken from etcd's, and the ratio to the
//! floor then measures the clients as much as etcd.
//!
//! Affinity is inherited by the threads and processes a thread starts, so
//! the main thread, while it is the process's only thread, takes etcd's
//! CPUs to start etcd (Go sizes GOMAXPROCS from them) and then the bench's
//! before the runtime's threads exist.

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// Which CPUs go to whom.
#[derive(Debug, Clone)]
pub struct Split {
    pub etcd: Vec<usize>,
    pub bench: Vec<usize>,
}

/// The CPUs this process may run on, in order.
fn allowed() -> Result<Vec<usize>, String> {
    let set = sched_getaffinity(Pid::from_raw(0)).map_err(|e| format!("sched_getaffinity: {e}"))?;
    Ok((0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect())
}

/// The first half of the allowed CPUs for etcd (at least one), the rest
/// for the bench.
pub fn split() -> Result<Split, String> {
    let cpus = allowed()?;
    if cpus.len() < 2 {
        return Err(format!(
            "--split-cpus needs at least 2 CPUs; this process may use {} ({cpus:?}): run without --split-cpus",
            cpus.len()
        ));
    }
    let (etcd, bench) = cpus.split_at(cpus.len() / 2);
    Ok(Split {
        etcd: etcd.to_vec(),
        bench: bench.to_vec(),
    })
}

/// Binds the calling thread (and what it starts from now on) to `cpus`.
pub fn bind_this_thread(cpus: &[usize]) -> Result<(), String> {
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c).map_err(|e| format!("CPU {c}: {e}"))?;
    }
    sched_setaffinity(Pid::from_raw(0), &set)
        .map_err(|e| format!("sched_setaffinity {cpus:?}: {e}"))
}

/// "0,1": the CPUs as the table shows them.
pub fn describe(cpus: &[usize]) -> String {
    cpus.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}
