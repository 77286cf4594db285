//! Running `scripts/install-cni`, which puts `moor` and a conflist into a
//! runtime's CNI dirs once ipamd answers.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// scripts/install-cni of this checkout.
pub fn script() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-cni");
    assert!(p.is_file(), "{} is missing", p.display());
    p
}

/// `install-cni ARGS...` with stdin closed; its output (messages on stderr).
pub fn run<S: AsRef<OsStr>>(args: &[S]) -> Output {
    command(args)
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/install-cni")
}

/// The command, for callers that start it in the background.
pub fn command<S: AsRef<OsStr>>(args: &[S]) -> Command {
    let mut cmd = Command::new(script());
    cmd.args(args);
    cmd
}
