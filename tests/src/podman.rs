//! podman 4.3 as a real CNI client, private to one test: its own
//! containers.conf (CNI backend, runc, cgroupfs, explicit ulimits, our CNI
//! bin and conf dirs, its own tmp dir), its own storage (overlay under a temp
//! dir), and a busybox image imported from Debian's busybox-static. The
//! machine's podman setup is neither read nor changed. The one shared place
//! is libcni's result cache, /var/lib/cni/results (fixed in libcni), whose
//! entries are named after the network: every [`Podman`] names its networks
//! uniquely and Drop removes their entries.
//!
//! Drop removes every container of this podman's store (`podman rm -af`, which
//! runs the CNI DELs while ipamd is still up when the Podman is dropped before
//! its Testbed), unmounts whatever podman left mounted under the private root
//! (overlay mounts, the shm of containers, the storage's own bind mount) and
//! deletes the root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use serde_json::Value;

use crate::testbed::{assert_ok, require_root};

/// Where libcni caches ADD results: `<network>-<container id>-<ifname>`.
pub const CNI_RESULTS: &str = "/var/lib/cni/results";
/// Debian's reference plugins (containernetworking-plugins).
const DEBIAN_PLUGINS: &str = "/usr/lib/cni";
/// Debian's busybox-static: one static binary, so a rootfs needs nothing else.
const BUSYBOX: &str = "/bin/busybox";
/// The image every [`Podman`] imports into its own storage.
pub const IMAGE: &str = "localhost/moor-e2e-busybox:latest";

pub struct Podman {
    /// Everything private lives under here.
    pub root: PathBuf,
    /// `cni_plugin_dirs`: Debian's plugins (symlinked) and, once installed,
    /// moor.
    pub bin_dir: PathBuf,
    /// `network_config_dir`.
    pub conf_dir: PathBuf,
    conf: PathBuf,
    storage_conf: PathBuf,
    /// Names given out by [`Podman::network_name`]: their result cache
    /// entries go on drop.
    networks: Mutex<Vec<String>>,
    counter: AtomicU32,
}

impl Podman {
    /// Sets up the private podman and imports [`IMAGE`]. Panics naming what
    /// is missing (podman, runc, busybox-static, the reference plugins).
    // No Default: this writes files and runs podman.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Podman {
        require_root();
        for (path, pkg) in [
            ("/usr/bin/podman", "podman"),
            ("/usr/sbin/runc", "runc"),
            (BUSYBOX, "busybox-static"),
            (DEBIAN_PLUGINS, "containernetworking-plugins"),
        ] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: install {pkg} (./scripts/setup does)"
            );
        }
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("moor-podman-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mk = |sub: &str| {
            let d = root.join(sub);
            std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
            d
        };
        let (bin_dir, conf_dir, tmp_dir) = (mk("cni-bin"), mk("cni-conf"), mk("libpod-tmp"));
        let (graph, run) = (root.join("graph"), root.join("run"));
        for entry in std::fs::read_dir(DEBIAN_PLUGINS).expect("read /usr/lib/cni") {
            let entry = entry.expect("read /usr/lib/cni");
            std::os::unix::fs::symlink(entry.path(), bin_dir.join(entry.file_name()))
                .expect("link a reference plugin into the private bin dir");
        }
        let conf = root.join("containers.conf");
        // default_ulimits: this sandbox lacks CAP_SYS_RESOURCE, and runc fails
        // to raise the limits podman asks for by default. tmp_dir: the default
        // /run/libpod is shared by every podman on the machine.
        let text = format!(
            r#"[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[network]
network_backend = "cni"
cni_plugin_dirs = ["{bin}"]
network_config_dir = "{netconf}"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "{tmp}"
"#,
            bin = bin_dir.display(),
            netconf = conf_dir.display(),
            tmp = tmp_dir.display(),
        );
        std::fs::write(&conf, text).expect("write containers.conf");
        let storage_conf = root.join("storage.conf");
        let text = format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            graph.display(),
            run.display()
        );
        std::fs::write(&storage_conf, text).expect("write storage.conf");
        let p = Podman {
            root,
            bin_dir,
            conf_dir,
            conf,
            storage_conf,
            networks: Mutex::new(Vec::new()),
            counter: AtomicU32::new(0),
        };
        let backend = p.ok(&["info", "--format", "{{.Host.NetworkBackend}}"]);
        assert_eq!(
            backend.trim(),
            "cni",
            "podman ignores network_backend = \"cni\" in {}",
            p.conf.display()
        );
        p.import_busybox();
        p
    }

    /// A rootfs of busybox and its applets as symlinks, in a tar, imported.
    fn import_busybox(&self) {
        let rootfs = self.root.join("busybox-rootfs");
        let bin = rootfs.join("bin");
        std::fs::create_dir_all(&bin).expect("create the rootfs");
        std::fs::copy(BUSYBOX, bin.join("busybox")).expect("copy busybox");
        let list = moor_testkit::cmd::run(BUSYBOX, &["--list"]);
        for applet in list.lines().filter(|a| !a.is_empty() && *a != "busybox") {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("link an applet");
        }
        let tar = self.root.join("busybox.tar");
        let (tar_s, rootfs_s) = (tar.display().to_string(), rootfs.display().to_string());
        moor_testkit::cmd::run("tar", &["-C", &rootfs_s, "-cf", &tar_s, "."]);
        self.ok(&["import", "--quiet", &tar_s, IMAGE]);
    }

    /// A network name no other test (in this process or another) uses.
    pub fn network_name(&self) -> String {
        let k = self.counter.fetch_add(1, Ordering::Relaxed);
        let root = self.root.file_name().expect("root has a name");
        // moor-podman-PID-N -> mp-PID-N-K
        let name = format!(
            "mp{}-{k}",
            root.to_string_lossy().trim_start_matches("moor-podman")
        );
        self.networks.lock().unwrap().push(name.clone());
        name
    }

    /// `podman ARGS...` with this podman's config and a minimal environment
    /// (podman passes its own environment on to the CNI plugins).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("podman");
        cmd.env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("CONTAINERS_CONF", &self.conf)
            .env("CONTAINERS_STORAGE_CONF", &self.storage_conf)
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run podman")
    }

    /// `podman ARGS...`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_ok(&out, &format!("podman {}", args.join(" ")));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `podman inspect` of one container.
    pub fn inspect(&self, container: &str) -> Value {
        let out = self.ok(&["container", "inspect", container]);
        let v: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("podman inspect {container} is not JSON ({e}): {out}"));
        v[0].clone()
    }

    /// libcni's cached results for `network`.
    pub fn cached_results(network: &str) -> Vec<PathBuf> {
        let prefix = format!("{network}-");
        std::fs::read_dir(CNI_RESULTS)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Mount points at or under the private root, deepest first.
    fn mounts(&self) -> Vec<String> {
        let root = self.root.display().to_string();
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<String> = text
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| *m == root || m.starts_with(&format!("{root}/")))
            .map(str::to_owned)
            .collect();
        points.sort_by_key(|m| std::cmp::Reverse(m.len()));
        points.dedup();
        points
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Only this store's containers: the config names our graph root.
        let rm = self.run(&["rm", "--all", "--force", "--time", "0"]);
        if !rm.status.success() {
            eprintln!(
                "podman rm --all in {} failed: {}",
                self.root.display(),
                String::from_utf8_lossy(&rm.stderr)
            );
        }
        for m in self.mounts() {
            let _ = Command::new("umount")
                .args(["-l", &m])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.root);
        let networks = std::mem::take(self.networks.get_mut().unwrap_or_else(|e| e.into_inner()));
        for net in networks {
            for f in Self::cached_results(&net) {
                let _ = std::fs::remove_file(f);
            }
        }
    }
}
