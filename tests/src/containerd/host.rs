//! What a containerd leaves on the host outside its own dirs, and how to
//! find it by this containerd's private names: shims (by their `-address`),
//! mounts under its dirs, sandbox cgroups.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use super::K8S_NS;

/// Where containerd 1.6 shims put their sockets, whatever containerd's state
/// dir.
pub(super) const SHIM_SOCKETS: &str = "/run/containerd/s";

/// Pids of the containerd-shim-runc-v2 processes serving the containerd
/// at `socket` (their `-address` argument: exact match, and private to one
/// node).
pub(super) fn shim_pids(socket: &Path) -> Vec<i32> {
    let want = socket.as_os_str().as_encoded_bytes();
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            argv.first()
                .is_some_and(|a0| a0.ends_with(b"containerd-shim-runc-v2"))
                && argv.windows(2).any(|w| w[0] == b"-address" && w[1] == want)
        })
        .collect()
}

/// Unmounts every mount at or under `dir` (deepest first, lazily).
pub(super) fn unmount_under(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let dir = dir.display().to_string();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|p| p == &dir || p.starts_with(&format!("{dir}/")))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape_mountinfo(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let oct: String = chars.by_ref().take(3).collect();
            if let Ok(b) = u8::from_str_radix(&oct, 8) {
                out.push(b as char);
                continue;
            }
            out.push(c);
            out.push_str(&oct);
        } else {
            out.push(c);
        }
    }
    out
}

/// runc (cgroupfs) puts a sandbox in /k8s.io/ID of every v1 hierarchy and
/// of the unified one; a killed sandbox leaves those dirs behind.
pub(super) fn remove_cgroups(ids: &BTreeSet<String>) {
    let Ok(rd) = fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let hierarchies: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    for h in hierarchies {
        for id in ids {
            let d = h.join(K8S_NS).join(id);
            if d.is_dir() {
                let _ = fs::remove_dir(&d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo("/run/netns/cni-1"), "/run/netns/cni-1");
    }
}
