//! The fault-injecting soak (issue 15; `sudo ./scripts/soak`): 3 nodes on a
//! 3-member etcd, pod workers driving the real `moor` binary, a fault
//! injector and an independent checker (see `moor_e2e::soak`). Prints the
//! seed first and a figures table per mode at the end; exits 1 on any
//! violation. Ctrl-C (SIGINT, SIGTERM) ends the run early: the last DELs,
//! the end checks, then everything it started is removed.

use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use moor_e2e::soak::{self, Config, Mode};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Modes {
    Physical,
    Ovs,
    /// Both at once, each on its own cluster.
    Both,
}

/// The fault-injecting soak of moor: ADD/DEL/CHECK and moves of pods
/// through the real `moor` binary while ipamds, etcd members, the whole
/// etcd and Open vSwitch are killed; an IP live twice, a DEL that never
/// succeeds or anything left over at the end is a violation.
#[derive(Debug, Parser)]
struct Args {
    /// CNI operations per mode (retries not counted).
    #[arg(long, default_value_t = 10_000)]
    ops: u64,
    /// ipamd kills per mode; a quarter as many etcd member kills, a tenth
    /// as many etcd outages and (OVS) Open vSwitch restarts come with them.
    #[arg(long, default_value_t = 100)]
    faults: u64,
    /// Stop starting operations after this many seconds.
    #[arg(long, default_value_t = 840)]
    seconds: u64,
    #[arg(long, value_enum, default_value_t = Modes::Both)]
    mode: Modes,
    /// The seed of every choice the run makes (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Pod workers per node.
    #[arg(long, default_value_t = 3)]
    workers_per_node: usize,
}

extern "C" fn stop(_: libc::c_int) {
    soak::request_stop();
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    println!("soak: seed {seed} (repeat its choices with --seed {seed})");
    let handler = SigAction::new(SigHandler::Handler(stop), SaFlags::empty(), SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(sig, &handler) }.expect("install a signal handler");
    }
    let modes = match args.mode {
        Modes::Physical => vec![Mode::Physical],
        Modes::Ovs => vec![Mode::Ovs],
        Modes::Both => vec![Mode::Physical, Mode::Ovs],
    };
    let cfg = |mode| Config {
        mode,
        ops: args.ops,
        faults: args.faults,
        seconds: args.seconds,
        seed,
        workers_per_node: args.workers_per_node,
    };
    // Each mode on a thread of its own, which keeps its cluster.
    let runs: Vec<(Mode, soak::Figures)> = std::thread::scope(|s| {
        let handles: Vec<_> = modes
            .iter()
            .map(|&m| (m, s.spawn(move || soak::run(cfg(m)))))
            .collect();
        handles
            .into_iter()
            .map(|(m, h)| (m, h.join().expect("a soak run panicked")))
            .collect()
    });
    let mut violations = 0;
    for (mode, figures) in &runs {
        println!("==== soak {mode}, seed {seed}\n{figures}");
        violations += figures.violations().len();
    }
    println!("soak: {violations} violation(s) in all (seed {seed})");
    if violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
