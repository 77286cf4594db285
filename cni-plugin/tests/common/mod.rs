//! Running the built `moor` binary the way a container runtime does.

#![allow(dead_code)] // each test file uses a different part

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Run {
    /// stdout as JSON; stdout must hold exactly one JSON document.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON document ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Runs moor with exactly `env` (nothing inherited) and `stdin`.
pub fn moor(env: &[(&str, &str)], stdin: &str) -> Run {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_moor"))
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn moor");
    // moor may exit before reading stdin (e.g. no CNI_COMMAND): runtimes
    // ignore the broken pipe, so does this.
    let written = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    if let Err(e) = written {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
        took: start.elapsed(),
    }
}

/// A fresh directory for one test, removed when it ends.
pub fn temp_dir(test: &str) -> moor_testkit::TempDir {
    moor_testkit::TempDir::new(&format!("moor-cni-{test}"))
}

/// A container id no real link on this machine derives from (tests may run
/// as root in the host netns, where DEL deletes `host_ifname(cid, ifname)`).
pub fn container_id(test: &str) -> String {
    format!("moortest{test}{}", std::process::id())
}

pub fn config(version: &str, socket: &Path) -> String {
    serde_json::json!({
        "cniVersion": version,
        "name": "moor-test",
        "type": "moor",
        "socket": socket,
    })
    .to_string()
}
