//! Child processes of tests: started with their output in a log, stopped by
//! their pid (never by name, so parallel tests leave each other alone).

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long [`terminate`] usually waits after SIGTERM.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// Spawns `cmd` with stdin from /dev/null and stdout and stderr appended to
/// `log`; SIGKILL when the spawning thread dies (`PR_SET_PDEATHSIG`), so
/// nothing outlives a test or bench that died without running Drop.
pub fn spawn_logged(cmd: &mut Command, log: &Path) -> std::io::Result<Child> {
    kill_with_thread(cmd);
    spawn_appending(cmd, log)
}

/// Spawns `cmd` with stdin from /dev/null and stdout and stderr appended to
/// `log`.
pub fn spawn_appending(cmd: &mut Command, log: &Path) -> std::io::Result<Child> {
    let log = OpenOptions::new().create(true).append(true).open(log)?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
}

/// Makes the child of `cmd` get SIGKILL when the thread that spawns it dies.
pub fn kill_with_thread(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs here.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

pub fn pid(child: &Child) -> Pid {
    Pid::from_raw(child.id() as i32)
}

/// SIGKILL and reap.
pub fn kill9(child: &mut Child) {
    let _ = kill(pid(child), Signal::SIGKILL);
    let _ = child.wait();
}

/// SIGTERM, wait up to `grace`, then SIGKILL (said on stderr); always reaps.
/// A no-op for a child that has exited.
pub fn terminate(mut child: Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = pid(&child);
    let _ = kill(pid, Signal::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("pid {pid} ignored SIGTERM for {grace:?}: SIGKILL");
    kill9(&mut child);
}

/// A child that gets SIGKILL and is reaped on drop, e.g. when the test
/// panics first. Derefs to the [`Child`].
#[derive(Debug)]
pub struct Reaped(Option<Child>);

impl Reaped {
    pub fn new(child: Child) -> Reaped {
        Reaped(Some(child))
    }

    /// The child, no longer killed on drop (e.g. to `wait_with_output`).
    pub fn into_inner(mut self) -> Child {
        self.0.take().expect("the child is there until dropped")
    }
}

impl std::ops::Deref for Reaped {
    type Target = Child;

    fn deref(&self) -> &Child {
        self.0.as_ref().expect("the child is there until dropped")
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("the child is there until dropped")
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
