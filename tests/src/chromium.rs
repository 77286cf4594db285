//! Debian's headless Chromium, as the tests of `ipamctl ui` drive it:
//!
//! - [`Chromium::screenshot`] and [`Chromium::dump_dom`]: one run each of
//!   `chromium --headless --screenshot` / `--dump-dom`, with a virtual time
//!   budget so the page's script has fetched and drawn its data first.
//! - [`Browser`]: one Chromium that stays open on a page, spoken to over
//!   the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON
//!   messages ended by NUL on fds 3 and 4, as Playwright drives it), to see
//!   a page change by itself without reloading it.
//!
//! Each Chromium has its own `--user-data-dir` and process group; it is
//! killed by that group's id when done, also when a test panics.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use moor_testkit::process::kill_with_thread;
use moor_testkit::TempDir;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

/// The laptop screen the page is made for.
pub const WINDOW: (u32, u32) = (1280, 800);
/// A run of Chromium that takes longer than this is stuck.
const RUN_LIMIT: Duration = Duration::from_secs(90);
/// An answer on the DevTools pipe that takes longer than this: stuck.
const CALL_LIMIT: Duration = Duration::from_secs(30);

/// Fails loudly (never skips) without Chromium.
pub fn require_chromium() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("chromium"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "chromium is not installed, and the tests of ipamctl ui load its page in \
             headless Chromium: apt-get install -y chromium (./scripts/setup does)"
        )
    })
}

/// The flags every run has: headless, as root (no sandbox), no GPU, its own
/// profile, the laptop window.
fn command(profile: &Path) -> Command {
    let mut cmd = Command::new(require_chromium());
    cmd.args(["--headless", "--no-sandbox", "--disable-gpu"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--window-size={},{}", WINDOW.0, WINDOW.1))
        // No first-run work, no updates, no sync: a quiet, quick start.
        .args([
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-sync",
            "--disable-extensions",
        ])
        .stdin(Stdio::null())
        // Its temporary files (the profile's singleton socket dir,
        // /tmp/org.chromium.Chromium.*, which a killed Chromium leaves
        // behind) in the profile's directory, removed with it.
        .env("TMPDIR", profile)
        // Its own process group, so its zygote and renderers go with it.
        .process_group(0);
    kill_with_thread(&mut cmd);
    cmd
}

/// Kills the process group of `child` (Chromium and every helper process
/// it started) and reaps Chromium.
fn kill_group(child: &mut Child) {
    let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    let _ = child.wait();
}

/// One-shot runs of Chromium.
pub struct Chromium {
    dir: TempDir,
}

static RUNS: AtomicU32 = AtomicU32::new(0);

impl Chromium {
    pub fn new() -> Chromium {
        require_chromium();
        Chromium {
            dir: TempDir::new("moor-chromium"),
        }
    }

    /// Runs Chromium with `args` then `url`, a fresh profile, `budget_ms`
    /// of virtual time for the page's scripts; returns its stdout.
    fn run(&self, args: &[String], url: &str, budget_ms: u32) -> String {
        let n = RUNS.fetch_add(1, Ordering::Relaxed);
        let profile = self.dir.join(format!("profile-{n}"));
        let out_path = self.dir.join(format!("out-{n}"));
        let err_path = self.dir.join(format!("err-{n}"));
        let mut child = command(&profile)
            .arg(format!("--virtual-time-budget={budget_ms}"))
            .args(args)
            .arg(url)
            .stdout(File::create(&out_path).expect("chromium's stdout file"))
            .stderr(File::create(&err_path).expect("chromium's stderr file"))
            .spawn()
            .expect("start chromium");
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for chromium") {
                break Some(status);
            }
            if start.elapsed() > RUN_LIMIT {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Whatever it left running in its group goes too.
        kill_group(&mut child);
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        match status {
            Some(s) if s.success() => {}
            Some(s) => panic!("chromium {args:?} {url} exited {s}:\n{stderr}"),
            None => panic!("chromium {args:?} {url} still runs after {RUN_LIMIT:?}:\n{stderr}"),
        }
        std::fs::read_to_string(&out_path).expect("chromium's output")
    }

    /// A PNG of `url` in the laptop window, at `path`, after `budget_ms`.
    pub fn screenshot(&self, url: &str, path: &Path, budget_ms: u32) {
        self.run(
            &[format!("--screenshot={}", path.display())],
            url,
            budget_ms,
        );
    }

    /// The DOM of `url` after its scripts ran for `budget_ms` of virtual
    /// time.
    pub fn dump_dom(&self, url: &str, budget_ms: u32) -> String {
        self.run(&["--dump-dom".to_string()], url, budget_ms)
    }
}

impl Default for Chromium {
    fn default() -> Self {
        Self::new()
    }
}

/// Width and height of a PNG, from its IHDR chunk; None if `bytes` is not
/// a PNG.
pub fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    const MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";
    if bytes.len() < 24 || &bytes[..8] != MAGIC || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(&bytes[16..20]), be(&bytes[20..24])))
}

/// A Chromium that stays on one page, spoken to over the DevTools pipe.
pub struct Browser {
    child: Child,
    to: std::io::PipeWriter,
    from: Receiver<Value>,
    next_id: u64,
    session: String,
    _dir: TempDir,
}

impl Browser {
    /// Opens `url` in a new headless Chromium.
    pub fn open(url: &str) -> Browser {
        let dir = TempDir::new("moor-browser");
        let (to_read, to_write) = std::io::pipe().expect("a pipe to chromium");
        let (from_read, from_write) = std::io::pipe().expect("a pipe from chromium");
        let mut cmd = command(&dir.join("profile"));
        cmd.arg("--remote-debugging-pipe")
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(File::create(dir.join("stderr")).expect("chromium's stderr file"));
        let (r, w) = (to_read.as_raw_fd(), from_write.as_raw_fd());
        // SAFETY: only fcntl and dup2, async-signal-safe, between fork and
        // exec.
        unsafe {
            cmd.pre_exec(move || pipe_fds(r, w));
        }
        let child = cmd.spawn().expect("start chromium");
        // Chromium holds its ends now; ours of them must close, or a dead
        // Chromium would never read as end of file.
        drop((to_read, from_write));
        let (tx, from) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(from_read);
            let mut message = Vec::new();
            while reader.read_until(0, &mut message).is_ok_and(|n| n > 0) {
                if message.last() == Some(&0) {
                    message.pop();
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&message) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
                message.clear();
            }
        });
        let mut b = Browser {
            child,
            to: to_write,
            from,
            next_id: 0,
            session: String::new(),
            _dir: dir,
        };
        let target = b.call("Target.createTarget", json!({ "url": url }));
        let target = target["targetId"]
            .as_str()
            .expect("a target id")
            .to_string();
        let attached = b.call(
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        );
        b.session = attached["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        b
    }

    /// A DevTools call (to the page once attached), its `result`.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.to
            .write_all(&bytes)
            .unwrap_or_else(|e| panic!("{method}: writing to chromium: {e}"));
        let deadline = Instant::now() + CALL_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.from.recv_timeout(left) {
                // Events and other answers are not waited for.
                Ok(v) if v["id"] != id => continue,
                Ok(v) if v.get("error").is_some() => panic!("{method}: {}", v["error"]),
                Ok(mut v) => return v["result"].take(),
                Err(RecvTimeoutError::Timeout) => panic!("{method}: no answer in {CALL_LIMIT:?}"),
                Err(RecvTimeoutError::Disconnected) => panic!("{method}: chromium is gone"),
            }
        }
    }

    /// The value of JavaScript `expression` in the page.
    pub fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expression}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// The page's DOM as it is now; empty while a navigation has replaced
    /// the document and the new one has no root element yet (pollers then
    /// look again).
    pub fn dom(&mut self) -> String {
        let v = self.eval("document.documentElement ? document.documentElement.outerHTML : ''");
        v.as_str().expect("outerHTML is a string").to_string()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// In the child: `read` becomes fd 3 (the commands Chromium reads) and
/// `write` fd 4 (its answers), open across exec. Both go up out of the way
/// first: one of them may be 3 or 4 already.
fn pipe_fds(read: RawFd, write: RawFd) -> std::io::Result<()> {
    let high = |fd: RawFd| -> std::io::Result<RawFd> {
        // SAFETY: fcntl on an fd this process owns.
        let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n)
    };
    let (read, write) = (high(read)?, high(write)?);
    for (from, to) in [(read, 3), (write, 4)] {
        // SAFETY: dup2 onto 3 and 4, which the child means to replace;
        // the copy does not inherit close-on-exec.
        if unsafe { libc::dup2(from, to) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
