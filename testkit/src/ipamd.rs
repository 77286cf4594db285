//! An `ipamd` process: [`IpamdCommand`] builds its command line, starts it
//! with its output in a log and waits until its socket accepts; [`Ipamd`]
//! stops it by pid (SIGTERM, then SIGKILL) on drop.
//!
//! The flags are the caller's: this crate does not depend on moor-ipamd (its
//! tests use this crate), it only runs the binary.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};

use crate::cmd::tail;
use crate::process::{kill9, kill_with_thread, spawn_appending, terminate, STOP_GRACE};

/// How long ipamd may take to open its socket, unless told otherwise.
pub const START_WITHIN: Duration = Duration::from_secs(15);
/// How many lines of ipamd's log an error about its start shows.
const LOG_LINES: usize = 40;

/// The command line of one ipamd run.
pub struct IpamdCommand {
    cmd: Command,
    socket: PathBuf,
    log: PathBuf,
    within: Duration,
}

impl IpamdCommand {
    /// `BIN --socket SOCKET`, its output appended to `log`.
    pub fn new(bin: &Path, socket: &Path, log: &Path) -> IpamdCommand {
        Self::wrapping(Command::new(bin), socket, log)
    }

    /// `ip netns exec NETNS BIN --socket SOCKET`: ipamd inside the named
    /// netns. `ip netns exec` execs ipamd, so the child's pid is ipamd's own.
    pub fn in_netns(netns: &str, bin: &Path, socket: &Path, log: &Path) -> IpamdCommand {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns]).arg(bin);
        Self::wrapping(cmd, socket, log)
    }

    fn wrapping(mut cmd: Command, socket: &Path, log: &Path) -> IpamdCommand {
        cmd.arg("--socket").arg(socket);
        IpamdCommand {
            cmd,
            socket: socket.to_path_buf(),
            log: log.to_path_buf(),
            within: START_WITHIN,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.arg(arg);
        self
    }

    pub fn args<S: AsRef<std::ffi::OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.cmd.args(args);
        self
    }

    /// Sets one of ipamd's environment variables (test hooks such as
    /// `MOOR_TEST_STOP_AFTER_COMMITS`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.cmd.env(key, value);
        self
    }

    /// Only PATH from this process's environment (and MOOR_METRICS_LISTEN,
    /// which .cargo/config.toml sets so that parallel ipamds do not all
    /// want port 9471).
    pub fn env_only_path(mut self) -> Self {
        self.cmd
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        if let Ok(listen) = std::env::var("MOOR_METRICS_LISTEN") {
            self.cmd.env("MOOR_METRICS_LISTEN", listen);
        }
        self
    }

    /// ipamd gets SIGKILL when the thread that starts it dies: start and
    /// restart it from the thread that owns it.
    pub fn kill_with_thread(mut self) -> Self {
        kill_with_thread(&mut self.cmd);
        self
    }

    /// How long it may take to open its socket.
    pub fn within(mut self, within: Duration) -> Self {
        self.within = within;
        self
    }

    /// Starts ipamd without waiting for a socket: `--role controller` opens
    /// none; the caller waits for its own sign (a Lease, a log line).
    pub fn spawn(mut self) -> Result<Ipamd, String> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .and_then(|mut f| writeln!(f, "==== ipamd start ===="))
            .map_err(|e| format!("open ipamd's log {}: {e}", self.log.display()))?;
        let child = spawn_appending(&mut self.cmd, &self.log)
            .map_err(|e| format!("cannot start ipamd ({:?}): {e}", self.cmd))?;
        Ok(Ipamd {
            child: Some(child),
            log: self.log,
        })
    }

    /// Starts ipamd and waits until its socket accepts a connection. If it
    /// exits first or takes longer than allowed (then it is killed), the
    /// error says so with the tail of its log.
    pub fn start(mut self) -> Result<Ipamd, String> {
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
        };
        // One log over restarts: a header tells the runs apart.
        open()
            .and_then(|mut f| writeln!(f, "==== ipamd start ===="))
            .map_err(|e| format!("open ipamd's log {}: {e}", self.log.display()))?;
        let mut child = spawn_appending(&mut self.cmd, &self.log)
            .map_err(|e| format!("cannot start ipamd ({:?}): {e}", self.cmd))?;
        let start = Instant::now();
        while UnixStream::connect(&self.socket).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "ipamd exited ({status}) before opening {}:\n{}",
                    self.socket.display(),
                    tail(&self.log, LOG_LINES)
                ));
            }
            if start.elapsed() > self.within {
                kill9(&mut child);
                return Err(format!(
                    "ipamd did not open {} within {:?}:\n{}",
                    self.socket.display(),
                    self.within,
                    tail(&self.log, LOG_LINES)
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Ipamd {
            child: Some(child),
            log: self.log,
        })
    }
}

/// A running ipamd; SIGTERM (SIGKILL after 3 s) on drop.
pub struct Ipamd {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Ipamd {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether it has not exited.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends `sig` (SIGSTOP/SIGCONT hold a call open).
    pub fn signal(&self, sig: Signal) -> nix::Result<()> {
        let child = self.child.as_ref().expect("ipamd is running");
        kill(crate::process::pid(child), sig)
    }

    /// SIGTERM and wait (SIGKILL after 3 s).
    pub fn stop(mut self) {
        if let Some(child) = self.child.take() {
            terminate(child, STOP_GRACE);
        }
    }

    /// SIGKILL and reap: a crash at whatever point ipamd is at.
    pub fn kill9(mut self) {
        if let Some(mut child) = self.child.take() {
            kill9(&mut child);
        }
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

impl Drop for Ipamd {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child, STOP_GRACE);
        }
    }
}
