//! What the ADD/DEL benches (benches/cni_add_del.rs, benches/kube_add_del.rs,
//! benches/ovs_add_del.rs) share: Ctrl-C handling, options, the release
//! binaries, spawning a plugin in the node netns, statistics, process
//! memory, and the machine facts every report starts with. Errors are strings: a bench
//! prints them and exits non-zero. The guards that undo what a bench made
//! (temp dir, netns, ipamd) and its setup commands are moor-testkit's.

use std::collections::HashSet;
use std::io::Write;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use moor_testkit::cmd::{describe_failure, try_ip, try_run};
use moor_testkit::netns::try_links;
use moor_testkit::{Netns, TempDir};
use serde_json::{json, Value};

use crate::bins::Bins;

pub type Res<T> = Result<T, String>;

// ---------------------------------------------------------------- workers

/// What each worker of [`run_workers`] did: its steps' results with when
/// each ended, or the error that stopped it.
pub type WorkerResults<T> = Vec<Res<Vec<(T, Instant)>>>;

/// Runs `workers` threads that start together: each makes its state with
/// `prepare(worker)` (untimed, before the start line), then calls
/// `step(&mut state)` until it returns `Ok(None)`. An error, a panic or
/// Ctrl-C in one worker stops the others at their next step. Returns what
/// every worker did, the start instant, and the wall time from the start to
/// the last worker's end.
pub fn run_workers<C, T, P, S>(
    workers: usize,
    prepare: P,
    step: S,
) -> (WorkerResults<T>, Instant, Duration)
where
    T: Send,
    P: Fn(usize) -> Res<C> + Sync,
    S: Fn(&mut C) -> Res<Option<T>> + Sync,
{
    let stop = AtomicBool::new(false);
    let start_line = Barrier::new(workers + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let (stop, start_line, prepare, step) = (&stop, &start_line, &prepare, &step);
                s.spawn(move || -> Res<Vec<(T, Instant)>> {
                    let state = prepare(w);
                    start_line.wait();
                    let mut state = state?;
                    let mut done = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        match check_interrupted().and_then(|()| step(&mut state)) {
                            Ok(Some(t)) => done.push((t, Instant::now())),
                            Ok(None) => break,
                            Err(e) => {
                                stop.store(true, Ordering::Relaxed);
                                return Err(e);
                            }
                        }
                    }
                    Ok(done)
                })
            })
            .collect();
        start_line.wait();
        let t0 = Instant::now();
        let results = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a worker panicked".into())))
            .collect();
        (results, t0, t0.elapsed())
    })
}

// ---------------------------------------------------------------- Ctrl-C

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns SIGINT, SIGTERM and SIGHUP into [`check_interrupted`] errors, so
/// the guards' drops still remove what the bench made.
pub fn catch_signals() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, handler as libc::sighandler_t) };
    }
}

pub fn check_interrupted() -> Res<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------- options

/// A bench's command line: `--key value` or `--key=value` options.
pub struct Args {
    rest: std::iter::Skip<std::env::Args>,
    usage: &'static str,
}

/// One option: `raw` as given, split into `key` and an inline `=value`.
pub struct Arg {
    pub raw: String,
    pub key: String,
    inline: Option<String>,
}

impl Args {
    /// This process's arguments; `usage` is appended to every error.
    pub fn new(usage: &'static str) -> Self {
        Args {
            rest: std::env::args().skip(1),
            usage,
        }
    }

    /// The next option, skipping `--bench` (cargo bench passes it to
    /// harness = false targets).
    pub fn next_arg(&mut self) -> Option<Arg> {
        loop {
            let raw = self.rest.next()?;
            let (key, inline) = match raw.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (raw.clone(), None),
            };
            if key != "--bench" {
                return Some(Arg { raw, key, inline });
            }
        }
    }

    /// `arg`'s value: inline, or the next argument (`what` it must be).
    pub fn value(&mut self, arg: Arg, what: &str) -> Res<String> {
        match arg.inline {
            Some(v) => Ok(v),
            None => self
                .rest
                .next()
                .ok_or_else(|| format!("{} needs {what}\n\n{}", arg.key, self.usage)),
        }
    }

    /// `arg`'s value as a whole number.
    pub fn number(&mut self, arg: Arg) -> Res<usize> {
        let key = arg.key.clone();
        let v = self.value(arg, "a number")?;
        v.parse()
            .map_err(|_| format!("{key} {v:?}: expected a whole number\n\n{}", self.usage))
    }

    /// The error for an option the bench does not know.
    pub fn unknown(&self, arg: &Arg) -> String {
        format!("unknown argument {:?}\n\n{}", arg.raw, self.usage)
    }
}

/// The checks of `--workers`, `--rounds`, `--cycles` and `--single` that
/// the benches splitting cycles over interleaved rounds share.
pub fn check_rounds(workers: usize, cycles: usize, single: usize, rounds: usize) -> Res<()> {
    if workers == 0 || workers > 200 {
        return Err(format!("--workers {workers}: expected 1 to 200"));
    }
    if rounds == 0 {
        return Err("--rounds 0: expected at least 1".into());
    }
    if cycles < rounds || single < rounds {
        return Err(format!(
            "--cycles {cycles} and --single {single} must each be at least --rounds {rounds} \
             (they are split over the rounds)"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------- start

/// What a bench's `main` does before its setup: its options (`Ok(None)`:
/// print `usage`), root (`why` it needs it, `script` runs it as root),
/// Ctrl-C, the binaries. Err is the exit code, what was wrong printed.
pub fn start<O>(
    bench: &str,
    usage: &str,
    opts: Res<Option<O>>,
    why_root: &str,
    script: &str,
    find_bins: impl FnOnce() -> Res<Bins>,
) -> Result<(O, Bins), ExitCode> {
    let opts = match opts {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{usage}");
            return Err(ExitCode::SUCCESS);
        }
        Err(e) => {
            eprintln!("{bench}: {e}");
            return Err(ExitCode::from(2));
        }
    };
    if !moor_testkit::cmd::is_root() {
        eprintln!("{bench}: must run as root ({why_root}): run `sudo {script}`");
        return Err(ExitCode::from(2));
    }
    catch_signals();
    match find_bins() {
        Ok(bins) => Ok((opts, bins)),
        Err(e) => {
            eprintln!("{bench}: {e}");
            Err(ExitCode::from(2))
        }
    }
}

/// What a bench's `main` does after [`start`]: its testbed from `setup`
/// (an error: `{bench}: setup failed: …`), `body` run on it, then the
/// testbed dropped and the report printed; on an error from `body`,
/// `{bench}: …` and what `logs` prints of the testbed still standing.
pub fn run<B, R>(
    bench: &str,
    setup: Res<B>,
    body: impl FnOnce(&mut B) -> Res<R>,
    print: impl FnOnce(R),
    logs: impl FnOnce(&B),
) -> ExitCode {
    let mut bed = match setup {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{bench}: setup failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    match body(&mut bed) {
        Ok(report) => {
            drop(bed);
            print(report);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{bench}: {e}");
            logs(&bed);
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------- binaries

/// The release binaries next to the bench's executable (or in
/// `MOOR_BIN_DIR`); `script` is the bench's script, which builds them.
/// `MOOR_PLUGIN`, when set, is the plugin instead: the bench scripts set it
/// to the musl build, the plugin as it ships (scripts/musl-plugin).
pub fn release_bins(script: &str) -> Res<Bins> {
    // The bench runs from target/release/deps/; the binaries sit one up.
    let dir = match std::env::var_os("MOOR_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find the bench's own path: {e}"))?
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .ok_or("cannot find the target dir")?,
    };
    let bins = Bins {
        moor: std::env::var_os("MOOR_PLUGIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.join("moor")),
        ipamd: dir.join("ipamd"),
        ipamctl: dir.join("ipamctl"),
    };
    for b in [&bins.moor, &bins.ipamd, &bins.ipamctl] {
        if !b.is_file() {
            return Err(format!(
                "{} is missing: the bench times the release binaries; run \
                 `sudo {script}` (it builds them), or `cargo build --release --bins` first",
                b.display()
            ));
        }
    }
    Ok(bins)
}

// ---------------------------------------------------------------- testbed

/// A fresh temp dir `{prefix}-…` for a run's sockets, stores and logs.
pub fn temp_dir(prefix: &str) -> Res<TempDir> {
    TempDir::create(std::env::temp_dir().join(moor_testkit::unique(prefix)))
}

/// One side of a ToR and a node network namespace: a Linux bridge (MAC
/// pinned, `node_ip`/16) in the node netns, with a veth uplink to the ToR
/// netns, whose end holds `gateway`/16.
pub struct Uplink<'a> {
    pub bridge: &'a str,
    pub mac: &'a str,
    pub node_end: &'a str,
    pub tor_end: &'a str,
    pub gateway: &'a str,
    pub node_ip: &'a str,
}

/// Makes `u` between `tor` and `node`, all up.
pub fn add_uplink(tor: &Netns, node: &Netns, u: &Uplink) -> Res<()> {
    let Uplink {
        bridge: br,
        mac,
        node_end: up,
        tor_end: down,
        gateway: gw,
        node_ip: own,
    } = *u;
    try_ip(&[
        "link", "add", down, "netns", &tor.name, "type", "veth", "peer", "name", up, "netns",
        &node.name,
    ])?;
    try_ip(&[
        "-n",
        &tor.name,
        "addr",
        "add",
        &format!("{gw}/16"),
        "dev",
        down,
    ])?;
    try_ip(&["-n", &tor.name, "link", "set", down, "up"])?;
    try_ip(&[
        "-n", &node.name, "link", "add", br, "address", mac, "type", "bridge",
    ])?;
    try_ip(&["-n", &node.name, "link", "set", up, "master", br, "up"])?;
    try_ip(&[
        "-n",
        &node.name,
        "addr",
        "add",
        &format!("{own}/16"),
        "dev",
        br,
    ])?;
    try_ip(&["-n", &node.name, "link", "set", br, "up"])?;
    Ok(())
}

/// The IPv6 half of a dual-stack [`Uplink`]: `gateway6`/64 on the ToR end,
/// `node_ip6`/64 on the bridge, both without DAD (usable at once, as moor's
/// pod addresses are).
pub struct Uplink6<'a> {
    pub bridge: &'a str,
    pub tor_end: &'a str,
    pub gateway6: &'a str,
    pub node_ip6: &'a str,
}

/// Adds `u`'s IPv6 addresses to an uplink [`add_uplink`] made.
pub fn add_uplink6(tor: &Netns, node: &Netns, u: &Uplink6) -> Res<()> {
    let gw = format!("{}/64", u.gateway6);
    let own = format!("{}/64", u.node_ip6);
    try_ip(&[
        "-n", &tor.name, "addr", "add", &gw, "dev", u.tor_end, "nodad",
    ])?;
    try_ip(&[
        "-n", &node.name, "addr", "add", &own, "dev", u.bridge, "nodad",
    ])?;
    Ok(())
}

/// `ipamctl --socket SOCKET ARGS…`, its output.
pub fn ipamctl(bin: &Path, socket: &Path, args: &[&str]) -> Res<String> {
    try_run(Command::new(bin).arg("--socket").arg(socket).args(args))
}

/// Pushes to `problems` the links left in the node netns but `expected`,
/// and those left in each of `pods` but lo.
pub fn leftover_links<'a>(
    node: &str,
    expected: &HashSet<&str>,
    pods: impl IntoIterator<Item = &'a Netns>,
    problems: &mut Vec<String>,
) -> Res<()> {
    let extra: Vec<String> = try_links(node)?
        .into_iter()
        .filter(|l| !expected.contains(l.as_str()))
        .collect();
    if !extra.is_empty() {
        problems.push(format!("links left in the node netns: {extra:?}"));
    }
    for pod in pods {
        let l = try_links(&pod.name)?;
        if l.iter().any(|n| n != "lo") {
            problems.push(format!("links left in pod netns {}: {l:?}", pod.name));
        }
    }
    Ok(())
}

/// What `ipamctl -o json pool show` printed, as "in_use N, bound M" when
/// the pool has anything in use or bound.
pub fn pool_busy(shown: &str) -> Res<Option<String>> {
    let pool: Value =
        serde_json::from_str(shown).map_err(|e| format!("ipamctl -o json pool show: {e}"))?;
    let (in_use, bound) = (&pool["totals"]["in_use"], &pool["totals"]["bound"]);
    Ok((in_use != &json!(0) || bound != &json!(0))
        .then(|| format!("in_use {in_use}, bound {bound}")))
}

/// Ok without `problems`, else `{what}:` and one problem a line.
pub fn no_problems(problems: Vec<String>, what: &str) -> Res<()> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{what}:\n  {}", problems.join("\n  ")))
    }
}

// ---------------------------------------------------------------- CNI

/// A CNI plugin as a runtime runs it in the node netns.
pub struct CniPlugin {
    pub bin: PathBuf,
    /// CNI_PATH.
    pub cni_path: String,
    /// The network config, its stdin.
    pub config: String,
    pub node_fd: RawFd,
    /// More environment, e.g. `MOOR_TIMING=1`.
    pub env: Vec<(&'static str, &'static str)>,
}

/// The pod of one CNI invocation.
pub struct CniPod<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
    pub cid: &'a str,
    /// Its network namespace.
    pub netns: &'a Netns,
}

/// A container id of 64 hex digits: `tag` (one digit), this process,
/// `seq`.
pub fn container_id(tag: usize, seq: u64) -> String {
    format!("{tag:x}{:015x}{seq:048x}", std::process::id())
}

impl CniPlugin {
    /// CNI `command` for `pod`, env and stdin as a runtime passes them; the
    /// wall time spawn to exit and the output. A failure names `who`.
    pub fn invoke(&self, who: &str, command: &str, pod: &CniPod) -> Res<(Duration, Output)> {
        let CniPod {
            namespace,
            name,
            uid,
            cid,
            netns,
        } = *pod;
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};\
             K8S_POD_INFRA_CONTAINER_ID={cid};K8S_POD_UID={uid}"
        );
        let netns_path = netns.path().display().to_string();
        let mut env = vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", cid),
            ("CNI_NETNS", netns_path.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", self.cni_path.as_str()),
            ("CNI_ARGS", args.as_str()),
            ("PATH", PATH_ENV),
        ];
        env.extend(self.env.iter().copied());
        let (took, out) = spawn_in_node(self.node_fd, &self.bin, &env, self.config.as_bytes())?;
        if !out.status.success() {
            check_interrupted()?;
            return Err(describe_failure(
                &format!(
                    "{who} {command} (pod {name}, netns {}, container {cid})",
                    netns.name
                ),
                &out,
            ));
        }
        Ok((took, out))
    }
}

/// The IPs handed out and not given back yet.
pub type Live = Mutex<HashSet<String>>;

/// One ADD+DEL cycle's latencies.
pub struct Cycle {
    pub add: Duration,
    pub del: Duration,
}

/// One ADD then DEL by `invoke` on an IPv4 network: [`add_del_families`]
/// wanting one IPv4 address.
pub fn add_del(
    who: &str,
    key: &str,
    live: &Live,
    invoke: impl Fn(&str) -> Res<(Duration, Output)>,
) -> Res<Cycle> {
    add_del_families(who, key, false, live, invoke)
}

/// One ADD then DEL by `invoke`. The ADD's result must hold one IPv4
/// address and, with `dual`, one IPv6 address (else none); each is checked
/// against `live`. Errors name `who` (the plugin) and `key` (the side).
pub fn add_del_families(
    who: &str,
    key: &str,
    dual: bool,
    live: &Live,
    invoke: impl Fn(&str) -> Res<(Duration, Output)>,
) -> Res<Cycle> {
    let (add, out) = invoke("ADD")?;
    let result: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        describe_failure(&format!("{who} ADD printed no JSON result ({e}); it"), &out)
    })?;
    let addrs = result_ips(&result, dual).map_err(|e| format!("{who} ADD result {e}"))?;
    {
        let mut held = live.lock().unwrap();
        for addr in &addrs {
            if !held.insert(addr.clone()) {
                return Err(format!(
                    "{key}: {addr} handed out while another pod still holds it"
                ));
            }
        }
        // The IPs may go to another pod as soon as ipamd released them,
        // inside this DEL, before the plugin exits: they stop counting as
        // held here.
        for addr in &addrs {
            held.remove(addr);
        }
    }
    let (del, _) = invoke("DEL")?;
    Ok(Cycle { add, del })
}

/// The addresses (`ips[].address`, prefix length kept) of a CNI ADD
/// result, checked: one IPv4 and, with `dual`, one IPv6; none else.
pub fn result_ips(result: &Value, dual: bool) -> Res<Vec<String>> {
    let addrs: Vec<String> = result["ips"]
        .as_array()
        .map(|ips| {
            ips.iter()
                .filter_map(|i| i["address"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let v6 = addrs.iter().filter(|a| a.contains(':')).count();
    let v4 = addrs.len() - v6;
    if v4 != 1 || v6 != usize::from(dual) {
        let want = if dual {
            "one IPv4 and one IPv6 address"
        } else {
            "one IPv4 address"
        };
        return Err(format!(
            "has {v4} IPv4 and {v6} IPv6 addresses, want {want}: {result}"
        ));
    }
    Ok(addrs)
}

/// `workers` threads, each doing `cycles` ADD+DEL cycles in its own pod
/// netns (`pods[worker]`), started together; wall time from start to the
/// last one's end. `key` names the side in an error.
pub fn batch(
    key: &str,
    pods: &[Netns],
    workers: usize,
    cycles: usize,
    cycle: impl Fn(&Netns, &Live) -> Res<Cycle> + Sync,
) -> Res<Samples> {
    let live = Mutex::new(HashSet::new());
    let (results, _, wall) = run_workers(
        workers,
        |w| Ok((&pods[w], cycles)),
        |(pod, left): &mut (&Netns, usize)| {
            if *left == 0 {
                return Ok(None);
            }
            *left -= 1;
            cycle(pod, &live).map(Some)
        },
    );
    let mut s = Samples {
        wall,
        ..Samples::default()
    };
    for r in results {
        for (c, _) in r? {
            s.add.push(c.add);
            s.del.push(c.del);
            s.cycles += 1;
        }
    }
    if !live.lock().unwrap().is_empty() {
        return Err(format!("{key}: IPs still live after a batch"));
    }
    Ok(s)
}

// ---------------------------------------------------------------- spawning

/// The PATH a runtime gives a plugin.
pub const PATH_ENV: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Spawns `prog` inside the node's network namespace the way `ip netns exec`
/// does (setns, private mount namespace, /sys remounted so it shows this
/// namespace's devices), but in the forked child itself: no `ip` process in
/// between. Returns the wall time from spawn to exit and the output.
pub fn spawn_in_node(
    node_fd: RawFd,
    prog: &Path,
    env: &[(&str, &str)],
    stdin: &[u8],
) -> Res<(Duration, Output)> {
    let mut cmd = Command::new(prog);
    cmd.env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure only makes raw syscalls (async-signal-safe), and
    // node_fd stays open for the whole run.
    unsafe {
        cmd.pre_exec(move || enter_netns(node_fd));
    }
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot spawn {}: {e}", prog.display()))?;
    let mut pipe = child.stdin.take().expect("stdin is piped");
    let written = pipe.write_all(stdin);
    drop(pipe);
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for {}: {e}", prog.display()))?;
    let took = start.elapsed();
    // A child that exits without reading all of its stdin (the reference
    // plugins' VERSION may) closes the pipe under our write: not an error.
    let written = written.or_else(|e| match e.kind() {
        std::io::ErrorKind::BrokenPipe => Ok(()),
        _ => Err(e),
    });
    if let Err(e) = written {
        return Err(format!(
            "writing stdin of {}: {e}; it printed: {}{}",
            prog.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok((took, out))
}

/// In the forked child: what `ip netns exec` does before exec.
fn enter_netns(fd: RawFd) -> std::io::Result<()> {
    let err = std::io::Error::last_os_error;
    // SAFETY: raw syscalls with valid, NUL-terminated static strings.
    unsafe {
        if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
            return Err(err());
        }
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(err());
        }
        if libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_SLAVE | libc::MS_REC,
            std::ptr::null(),
        ) != 0
        {
            return Err(err());
        }
        libc::umount2(c"/sys".as_ptr(), libc::MNT_DETACH);
        if libc::mount(
            c"sysfs".as_ptr(),
            c"/sys".as_ptr(),
            c"sysfs".as_ptr(),
            0,
            std::ptr::null(),
        ) != 0
        {
            return Err(err());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- statistics

/// The percentiles every latency row and JSON object shows, by name.
pub const PERCENTILES: [(&str, f64); 4] =
    [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("max", 100.0)];

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Nearest-rank percentile of sorted samples.
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    pct(&s, 50.0)
}

/// Sorted latencies as JSON: [`PERCENTILES`] in ms, and how many.
pub fn lat_json(sorted: &[Duration]) -> Value {
    json!({
        "p50": round3(ms(pct(sorted, 50.0))),
        "p90": round3(ms(pct(sorted, 90.0))),
        "p99": round3(ms(pct(sorted, 99.0))),
        "max": round3(ms(pct(sorted, 100.0))),
        "n": sorted.len(),
    })
}

/// `total` split over `rounds` as evenly as possible.
pub fn share(total: usize, rounds: usize, round: usize) -> usize {
    total / rounds + usize::from(round < total % rounds)
}

/// ADD and DEL latencies of a plugin's batches, and their throughput.
#[derive(Default)]
pub struct Samples {
    pub add: Vec<Duration>,
    pub del: Vec<Duration>,
    pub cycles: usize,
    pub wall: Duration,
    /// cycles/s of each batch, in order.
    pub per_batch: Vec<f64>,
}

impl Samples {
    pub fn absorb(&mut self, b: Samples) {
        self.per_batch.push(b.cycles as f64 / b.wall.as_secs_f64());
        self.add.extend(b.add);
        self.del.extend(b.del);
        self.cycles += b.cycles;
        self.wall += b.wall;
    }

    pub fn rate(&self) -> f64 {
        self.cycles as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    pub fn sort(&mut self) {
        self.add.sort();
        self.del.sort();
    }

    pub fn to_json(&self) -> Value {
        json!({
            "add_ms": lat_json(&self.add),
            "del_ms": lat_json(&self.del),
            "cycles": self.cycles,
            "cycles_per_s": round3(self.rate()),
            "batch_cycles_per_s": self.per_batch.iter().map(|r| round3(*r)).collect::<Vec<_>>(),
        })
    }
}

/// Pod name suffix the way Kubernetes generates them (5 chars of this set).
pub fn suffix(mut n: u64) -> String {
    const SET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| {
            let c = SET[(n % SET.len() as u64) as usize] as char;
            n /= SET.len() as u64;
            c
        })
        .collect()
}

// ---------------------------------------------------------------- machine

/// VmRSS and VmHWM of `pid`, in KiB.
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// The 1-minute load average.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// The source the binaries were (presumably) built from.
pub fn commit() -> String {
    let head =
        try_run(Command::new("git").args(["rev-parse", "--short", "HEAD"])).unwrap_or_default();
    let dirty =
        try_run(Command::new("git").args(["status", "--porcelain", "--untracked-files=no"]))
            .map(|s| !s.trim().is_empty())
            .unwrap_or(false);
    match head.trim() {
        "" => "unknown (not a git checkout)".into(),
        h => format!("{h}{}", if dirty { "-dirty" } else { "" }),
    }
}

pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_add_result_holds_one_ip_of_each_family_it_should() {
        let v4 = json!({"ips": [{"address": "10.1.1.5/16"}]});
        let dual = json!({"ips": [{"address": "10.1.1.5/16"}, {"address": "fd00:1::1005/64"}]});
        assert_eq!(result_ips(&v4, false).unwrap(), ["10.1.1.5/16"]);
        assert_eq!(
            result_ips(&dual, true).unwrap(),
            ["10.1.1.5/16", "fd00:1::1005/64"]
        );
        // A missing family, an extra one, two of one, none at all.
        let e = result_ips(&v4, true).unwrap_err();
        assert!(
            e.contains("1 IPv4 and 0 IPv6") && e.contains("one IPv6"),
            "{e}"
        );
        assert!(result_ips(&dual, false).is_err());
        let two = json!({"ips": [{"address": "10.1.1.5/16"}, {"address": "10.1.1.6/16"}]});
        assert!(result_ips(&two, false).is_err());
        assert!(result_ips(&json!({}), false).is_err());
    }
}
