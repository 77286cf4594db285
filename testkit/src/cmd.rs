//! Running commands (`ip`, `ovs-vsctl`, ...) that must succeed, and the
//! small facts tests ask of the machine.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Runs `program args...` (stdin from /dev/null), which must succeed;
/// returns its stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` (stdin from /dev/null); its stdout, or what went wrong.
pub fn try_run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(describe_failure(&format!("{cmd:?}"), &out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip args...`; its stdout, or what went wrong.
pub fn try_ip(args: &[&str]) -> Result<String, String> {
    try_run(Command::new("ip").args(args))
}

/// What a failed command printed, for an error message.
pub fn describe_failure(what: &str, out: &Output) -> String {
    format!(
        "{what} exited with {}\n  stdout: {}\n  stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

/// Panics with stdout and stderr unless the command exited 0.
pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Fails the test loudly (never skips it) unless it runs as root; `why`
/// says what the test makes and how to run it.
pub fn require_root(why: &str) {
    assert!(is_root(), "needs root: {why}");
}

/// The last `lines` lines of the file at `path` (empty if unreadable).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A TCP port on 127.0.0.1 that was free a moment ago, below the kernel's
/// ephemeral range (32768 and up by default): a port the kernel handed out
/// for `bind(0)` can be taken by any process's next outgoing connection
/// before the server it was meant for binds it (seen: etcd's "bind: address
/// already in use" under a parallel test run). Ports are walked from a
/// start that differs per process, so parallel tests and test binaries do
/// not try the same ones.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 12_000;
    const SPAN: u32 = 20_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7919)) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}
