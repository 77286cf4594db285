//! The sandbox ("pause") image, built here: there is no registry.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::json;

use moor_testkit::cmd::run as run_ok;

/// Builds a docker-archive image `tar` whose one layer holds /bin/busybox
/// and whose entrypoint sleeps forever. `work` is scratch space.
pub(super) fn build_sandbox_image(tag: &str, work: &Path, tar: &Path) {
    let rootfs = work.join("rootfs");
    fs::create_dir_all(rootfs.join("bin")).expect("create the image rootfs");
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("copy /bin/busybox");
    let layer = work.join("layer.tar");
    run_ok(
        "tar",
        &[
            "-C",
            &rootfs.display().to_string(),
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "-cf",
            &layer.display().to_string(),
            "bin",
        ],
    );
    let bytes = fs::read(&layer).expect("read the layer");
    let diff_id = sha256_hex(&bytes).expect("sha256sum");
    // containerd checks the layer against diff_ids when it unpacks.
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/bin/busybox", "sleep", "2147483647"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
    });
    fs::write(work.join("config.json"), config.to_string()).expect("write the image config");
    let manifest = json!([{"Config": "config.json", "RepoTags": [tag], "Layers": ["layer.tar"]}]);
    fs::write(work.join("manifest.json"), manifest.to_string()).expect("write the manifest");
    run_ok(
        "tar",
        &[
            "-C",
            &work.display().to_string(),
            "-cf",
            &tar.display().to_string(),
            "manifest.json",
            "config.json",
            "layer.tar",
        ],
    );
}

/// sha256 in hex, by coreutils' sha256sum (no hashing crate for one use).
fn sha256_hex(data: &[u8]) -> Option<String> {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(data).ok()?;
    let out = child.wait_with_output().ok()?;
    String::from_utf8(out.stdout)
        .ok()?
        .split_whitespace()
        .next()
        .map(str::to_owned)
}
