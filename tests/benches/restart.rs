//! Benchmark: restart to ready (issue 15). ipamd on a node with `--pods`
//! live attachments (default 500) is killed (kill -9, or SIGTERM with
//! `--term`) and started again, `--rounds` times; each round times, from
//! the new ipamd's spawn:
//!
//! - `socket`: its unix socket accepting a connection;
//! - `first ADD`: the first CNI ADD of a new pod through the real `moor`
//!   binary that succeeds (tried again at once while ipamd is not there:
//!   moor fails fast with code 11 then, as a runtime sees it).
//!
//! The probe pod is DELeted before the next round. At the end every pod is
//! DELeted, and the pool must show nothing in use or bound.
//!
//! Run it with `sudo ./scripts/bench-restart [OPTIONS]` (it builds the
//! release binaries first); `--help` lists the options. Topology: a ToR
//! netns with the gateway, a node netns with a Linux bridge and ipamd on
//! its redb store in a temp dir; one netns per pod. Everything is removed
//! by Drop guards, also on error or Ctrl-C.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use moor_e2e::bench::{
    add_uplink, check_interrupted, commit, container_id, cpus, ipamctl, kernel, loadavg, ms,
    pool_busy, release_bins, start, temp_dir, Args, CniPlugin, CniPod, Res, Uplink,
};
use moor_e2e::bins::Bins;
use moor_e2e::names::deployment_pod;
use moor_testkit::netns::wait_ping;
use moor_testkit::{Ipamd, IpamdCommand, Netns, TempDir};
use serde_json::json;

const USAGE: &str = "\
restart: times ipamd's restart to ready with live attachments on its node.

Usage: sudo ./scripts/bench-restart [OPTIONS]

Options:
  --pods N     live attachments on the node            [default: 500]
  --rounds R   restarts                                [default: 5]
  --term       stop ipamd with SIGTERM (default: kill -9)
";

const POOL: &str = "bench";
/// Gives up on a restart that is not serving ADDs after this.
const READY_WITHIN: Duration = Duration::from_secs(60);

struct Opts {
    pods: usize,
    rounds: usize,
    term: bool,
}

fn parse_opts() -> Res<Option<Opts>> {
    let mut o = Opts {
        pods: 500,
        rounds: 5,
        term: false,
    };
    let mut args = Args::new(USAGE);
    while let Some(a) = args.next_arg() {
        match a.key.as_str() {
            "-h" | "--help" => return Ok(None),
            "--pods" => o.pods = args.number(a)?,
            "--rounds" => o.rounds = args.number(a)?,
            "--term" => o.term = true,
            _ => return Err(args.unknown(&a)),
        }
    }
    if o.rounds == 0 || o.pods + o.rounds > 4000 {
        return Err("--rounds must be at least 1, and --pods + --rounds at most 4000".into());
    }
    Ok(Some(o))
}

/// Field order is drop order: ipamd, the pods, the node, the ToR, the dir.
struct Bed {
    ipamd: Option<Ipamd>,
    pods: Vec<Netns>,
    cni: CniPlugin,
    _node_fd: File,
    node: Netns,
    _tor: Netns,
    tmp: TempDir,
    socket: PathBuf,
    bins: Bins,
}

impl Bed {
    fn new(bins: Bins, opts: &Opts) -> Res<Self> {
        let tmp = temp_dir("moor-bench-restart")?;
        let id = format!("mrst{}", std::process::id());
        let tor = Netns::add(format!("{id}-tor"))?;
        let node = Netns::add(format!("{id}-node"))?;
        add_uplink(
            &tor,
            &node,
            &Uplink {
                bridge: "br-rst",
                mac: "02:00:00:00:2e:01",
                node_end: "up-rst",
                tor_end: "tor-rst",
                gateway: "10.230.0.1",
                node_ip: "10.230.0.2",
            },
        )?;
        wait_ping(&node.name, "10.230.0.1", Duration::from_secs(5))?;
        let node_fd =
            File::open(node.path()).map_err(|e| format!("open {}: {e}", node.path().display()))?;
        let socket = tmp.join("ipamd.sock");
        let cni = CniPlugin {
            cni_path: bins.moor.parent().unwrap().display().to_string(),
            bin: bins.moor.clone(),
            config: json!({
                "cniVersion": "1.0.0", "name": "moor", "type": "moor",
                "socket": socket, "pool": POOL,
            })
            .to_string(),
            node_fd: node_fd.as_raw_fd(),
            env: Vec::new(),
        };
        let mut bed = Bed {
            ipamd: None,
            pods: Vec::new(),
            cni,
            _node_fd: node_fd,
            node,
            _tor: tor,
            tmp,
            socket,
            bins,
        };
        bed.ipamd = Some(bed.ipamd_command().start()?);
        bed.ctl(&[
            "tor",
            "add",
            "bench-rack",
            "--subnet",
            "10.230.0.0/16",
            "--gateway",
            "10.230.0.1",
            "--range",
            "10.230.1.0-10.230.16.255",
        ])?;
        let size = (opts.pods + opts.rounds + 1).to_string();
        bed.ctl(&[
            "pool",
            "create",
            POOL,
            "--namespace",
            "bench",
            "--app",
            "bench",
            "--size",
            &size,
        ])?;
        for n in 0..opts.pods + 1 {
            bed.pods.push(Netns::add(format!("{id}-p{n}"))?);
        }
        Ok(bed)
    }

    fn ipamd_command(&self) -> IpamdCommand {
        let log = self.tmp.join("ipamd.log");
        IpamdCommand::in_netns(&self.node.name, &self.bins.ipamd, &self.socket, &log)
            .env_only_path()
            .arg("--store")
            .arg(format!("redb:{}", self.tmp.join("ipamd.redb").display()))
            .args(["--node", "bench-node", "--tor", "bench-rack"])
            .args(["--bridge", "br-rst", "--log", "warn"])
            .within(Duration::from_secs(30))
    }

    fn ctl(&self, args: &[&str]) -> Res<String> {
        ipamctl(&self.bins.ipamctl, &self.socket, args)
    }

    /// CNI `command` of pod `n` (netns `pods[n]`) as container `seq`.
    fn cni(&self, command: &str, n: usize, seq: u64) -> Res<Duration> {
        // Deployment pods: their IPs go back on DEL, so the end check
        // finds the pool empty.
        let (name, cid) = (deployment_pod("bench", n as u64), container_id(0xe, seq));
        let pod = CniPod {
            namespace: "bench",
            name: &name,
            uid: "",
            cid: &cid,
            netns: &self.pods[n],
        };
        self.cni.invoke("moor", command, &pod).map(|(took, _)| took)
    }
}

struct Round {
    socket: Duration,
    first_add: Duration,
    tries: usize,
}

fn bench(opts: &Opts, bed: &mut Bed) -> Res<Vec<Round>> {
    let started = Instant::now();
    for n in 0..opts.pods {
        bed.cni("ADD", n, n as u64)?;
        check_interrupted()?;
    }
    eprintln!(
        "bench: {} pods attached in {:.1} s; {} restarts ({})",
        opts.pods,
        started.elapsed().as_secs_f64(),
        opts.rounds,
        if opts.term { "SIGTERM" } else { "kill -9" }
    );
    let probe = opts.pods;
    let mut rounds = Vec::new();
    for r in 0..opts.rounds {
        let old = bed.ipamd.take().expect("ipamd runs");
        if opts.term {
            old.stop();
        } else {
            old.kill9();
        }
        let spawned = Instant::now();
        bed.ipamd = Some(bed.ipamd_command().spawn()?);
        let mut socket = None;
        let mut tries = 0;
        let seq = 1_000_000 + r as u64;
        let first_add = loop {
            if socket.is_none() && UnixStream::connect(&bed.socket).is_ok() {
                socket = Some(spawned.elapsed());
            }
            tries += 1;
            match bed.cni("ADD", probe, seq) {
                Ok(_) => break spawned.elapsed(),
                Err(e) if spawned.elapsed() > READY_WITHIN => {
                    return Err(format!(
                        "round {r}: no ADD succeeded within {READY_WITHIN:?} of the restart: {e}"
                    ))
                }
                Err(_) => check_interrupted()?,
            }
        };
        let socket = socket.unwrap_or(first_add);
        bed.cni("DEL", probe, seq)?;
        eprintln!(
            "bench: round {r}: socket {:.1} ms, first ADD {:.1} ms ({tries} tries)",
            ms(socket),
            ms(first_add)
        );
        rounds.push(Round {
            socket,
            first_add,
            tries,
        });
    }
    for n in 0..opts.pods {
        bed.cni("DEL", n, n as u64)?;
    }
    let shown = bed.ctl(&["-o", "json", "pool", "show", POOL])?;
    if let Some(busy) = pool_busy(&shown)? {
        return Err(format!("after every DEL, pool {POOL} still has {busy}"));
    }
    Ok(rounds)
}

fn print(opts: &Opts, rounds: &[Round]) {
    let stat = |f: fn(&Round) -> Duration| {
        let mut v: Vec<Duration> = rounds.iter().map(f).collect();
        v.sort();
        (v[v.len() / 2], v[v.len() - 1])
    };
    let (sock_p50, sock_max) = stat(|r| r.socket);
    let (add_p50, add_max) = stat(|r| r.first_add);
    println!(
        "\nrestart to ready: {} live attachments, {} restarts by {}",
        opts.pods,
        rounds.len(),
        if opts.term { "SIGTERM" } else { "kill -9" }
    );
    println!("  {:<28} {:>10} {:>10}", "from spawn to", "median", "max");
    println!(
        "  {:<28} {:>8.1}ms {:>8.1}ms",
        "socket accepting",
        ms(sock_p50),
        ms(sock_max)
    );
    println!(
        "  {:<28} {:>8.1}ms {:>8.1}ms",
        "first ADD served (moor)",
        ms(add_p50),
        ms(add_max)
    );
    println!(
        "  machine: {} CPUs, load {}, kernel {}, commit {}",
        cpus(),
        loadavg(),
        kernel(),
        commit()
    );
    let j = json!({
        "bench": "restart", "pods": opts.pods, "rounds": rounds.len(),
        "signal": if opts.term { "TERM" } else { "KILL" },
        "socket_ms": rounds.iter().map(|r| ms(r.socket)).collect::<Vec<_>>(),
        "first_add_ms": rounds.iter().map(|r| ms(r.first_add)).collect::<Vec<_>>(),
        "tries": rounds.iter().map(|r| r.tries).collect::<Vec<_>>(),
        "commit": commit(), "load": loadavg(),
    });
    println!("{j}");
}

fn main() -> ExitCode {
    let (opts, bins) = match start(
        "restart",
        USAGE,
        parse_opts(),
        "it creates network namespaces, bridges and veths",
        "./scripts/bench-restart",
        || release_bins("./scripts/bench-restart"),
    ) {
        Ok(started) => started,
        Err(code) => return code,
    };
    eprintln!("bench: setting up {} pods", opts.pods);
    moor_e2e::bench::run(
        "restart",
        Bed::new(bins, &opts),
        |bed| bench(&opts, bed),
        |rounds| print(&opts, &rounds),
        |bed| {
            if let Some(i) = &bed.ipamd {
                eprintln!("{}", i.log_tail(40));
            }
        },
    )
}
