//! What the ADD/DEL benches (benches/cni_add_del.rs, benches/ovs_add_del.rs)
//! share: Ctrl-C handling, setup commands, guards that undo what they made
//! (temp dir, netns, ipamd), statistics, and the machine facts every report
//! starts with. Errors are strings: a bench prints them and exits non-zero.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

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
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
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

// ---------------------------------------------------------------- commands

/// Runs a setup or check command (not timed); its stdout, or an error.
pub fn run(cmd: &mut Command) -> Res<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(describe_failure(&format!("{cmd:?}"), &out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn ip(args: &[&str]) -> Res<String> {
    run(Command::new("ip").args(args))
}

pub fn describe_failure(what: &str, out: &Output) -> String {
    format!(
        "{what} exited with {}\n  stdout: {}\n  stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

/// The interface names in netns `ns`.
pub fn links(ns: &str) -> Res<Vec<String>> {
    let v: Value = serde_json::from_str(&ip(&["-j", "-n", ns, "link", "show"])?)
        .map_err(|e| format!("ip -j link show in {ns}: {e}"))?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .collect())
}

/// Pings `addr` from netns `ns` until it answers (10 s at most).
pub fn wait_ping(ns: &str, addr: impl Display) -> Res<()> {
    let addr = addr.to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = Command::new("ip")
            .args(["netns", "exec", ns, "ping", "-c1", "-W1", "-q", &addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(());
        }
        check_interrupted()?;
        if Instant::now() > deadline {
            return Err(format!(
                "{addr} does not answer ping from netns {ns} after 10 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The release binaries next to the bench's executable (or in
/// `MOOR_BIN_DIR`); `script` is the bench's script, which builds them.
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
        moor: dir.join("moor"),
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

// ---------------------------------------------------------------- guards

/// A directory, removed with all it holds on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `path` afresh (a leftover of an earlier run is removed first).
    pub fn create(path: PathBuf) -> Res<Self> {
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A named network namespace with lo up, deleted on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn add(name: String) -> Res<Self> {
        ip(&["netns", "add", &name])?;
        let ns = Self(name);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// ipamd, stopped by its pid (SIGTERM, then SIGKILL after 3 s) on drop.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    /// Spawns `cmd` (ipamd, or something that execs it), its stderr to
    /// `log`, and waits up to `within` for it to open `socket`.
    pub fn start(cmd: &mut Command, log: PathBuf, socket: &Path, within: Duration) -> Res<Daemon> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(&log)
                    .map_err(|e| format!("create {}: {e}", log.display()))?,
            )
            .spawn()
            .map_err(|e| format!("cannot start ipamd: {e}"))?;
        let mut ipamd = Daemon { child, log };
        let deadline = Instant::now() + within;
        while !socket.exists() {
            if !ipamd.alive() || Instant::now() > deadline {
                return Err(format!(
                    "ipamd did not come up on {}; its log:\n{}",
                    socket.display(),
                    ipamd.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(ipamd)
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last 30 lines of its log.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let Ok(pid) = i32::try_from(self.child.id()) else {
            return;
        };
        if self.alive() {
            // SAFETY: plain kill(2) of our own child, which we have not reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(3);
            while self.alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if self.alive() {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
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
    let head = run(Command::new("git").args(["rev-parse", "--short", "HEAD"])).unwrap_or_default();
    let dirty = run(Command::new("git").args(["status", "--porcelain", "--untracked-files=no"]))
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
