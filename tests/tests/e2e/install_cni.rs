//! scripts/install-cni against a real ipamd: it installs nothing while ipamd
//! is down (and says so when it gives up), installs the binary and the
//! conflist once ipamd answers (ready or not), and a bad conflist changes
//! nothing.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use moor_e2e::{install_cni, Options, Testbed};
use moor_testkit::process::Reaped;
use serde_json::{json, Value};

/// A bin dir, a conf dir and a place for conflists to install, under the
/// testbed's temp dir (which the testbed removes).
struct Dirs {
    bin: PathBuf,
    conf: PathBuf,
    src: PathBuf,
}

impl Dirs {
    fn new(tb: &Testbed) -> Dirs {
        let d = Dirs {
            bin: tb.dir.join("cni-bin"),
            conf: tb.dir.join("cni-conf"),
            src: tb.dir.join("src"),
        };
        for p in [&d.bin, &d.conf, &d.src] {
            std::fs::create_dir_all(p).expect("create a test dir");
        }
        d
    }

    /// Writes `content` as src/NAME; returns its path.
    fn conflist(&self, name: &str, content: &str) -> PathBuf {
        let p = self.src.join(name);
        std::fs::write(&p, content).expect("write a conflist");
        p
    }

    /// The install-cni arguments for `conflist`, waiting up to `timeout` s.
    fn args(&self, tb: &Testbed, conflist: &Path, timeout: u32) -> Vec<String> {
        let s = |p: &Path| p.display().to_string();
        vec![
            "--bin-dir".into(),
            s(&self.bin),
            "--conf-dir".into(),
            s(&self.conf),
            "--conflist".into(),
            s(conflist),
            "--moor".into(),
            s(&tb.bins().moor),
            "--socket".into(),
            s(&tb.socket),
            "--timeout".into(),
            timeout.to_string(),
        ]
    }

    /// Every file in both dirs with its bytes and mode: what "nothing
    /// changed" compares.
    fn snapshot(&self) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
        let mut out = BTreeMap::new();
        for dir in [&self.bin, &self.conf] {
            for e in std::fs::read_dir(dir).expect("read a test dir") {
                let p = e.expect("dir entry").path();
                let mode = std::fs::metadata(&p).expect("stat").permissions().mode();
                out.insert(p.clone(), (std::fs::read(&p).expect("read"), mode));
            }
        }
        out
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("read a test dir")
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        v.sort();
        v
    }
}

fn good_conflist(name: &str) -> String {
    json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {"type": "moor", "pool": "web"},
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
    .to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What a good install leaves: exactly `moor` (the source's bytes, mode
/// 0755) and the conflist (its JSON with ipamd's socket written in), no
/// temp files.
fn assert_installed(tb: &Testbed, dirs: &Dirs, name: &str, source: &str) {
    assert_eq!(Dirs::names(&dirs.bin), ["moor"], "bin dir holds moor only");
    assert_eq!(
        Dirs::names(&dirs.conf),
        [name],
        "conf dir holds the conflist only"
    );
    let moor = dirs.bin.join("moor");
    assert!(
        std::fs::read(&moor).unwrap() == std::fs::read(&tb.bins().moor).unwrap(),
        "the installed moor is the built one"
    );
    let mode = std::fs::metadata(&moor).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755, "moor's mode");
    let got: Value =
        serde_json::from_slice(&std::fs::read(dirs.conf.join(name)).unwrap()).expect("JSON");
    let mut want: Value = serde_json::from_str(source).unwrap();
    want["plugins"][0]["socket"] = json!(tb.socket);
    assert_eq!(got, want, "installed conflist");
}

#[test]
fn waits_for_ipamd_then_installs_atomically() {
    let tb = Testbed::new();
    tb.create_pool("web", "web", 2);
    let dirs = Dirs::new(&tb);
    let source = good_conflist("moor-e2e");
    let conflist = dirs.conflist("10-moor.conflist", &source);
    tb.stop_ipamd();

    // ipamd down: gives up after --timeout, exit 2, nothing installed.
    let out = install_cni::run(&dirs.args(&tb, &conflist, 1));
    assert_eq!(out.status.code(), Some(2), "ipamd down: {}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&tb.socket.display().to_string()) && err.contains("not reachable"),
        "the give-up message names the socket: {err}"
    );
    assert!(err.contains("nothing was changed"), "{err}");
    assert!(
        dirs.snapshot().is_empty(),
        "nothing installed while ipamd is down"
    );

    // Started while ipamd is down, it waits; ipamd comes up; it installs.
    let child = install_cni::command(&dirs.args(&tb, &conflist, 60))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start install-cni");
    // Killed by pid if the test panics first.
    let mut running = Reaped::new(child);
    std::thread::sleep(Duration::from_millis(1500));
    let child = &mut *running;
    assert!(
        child.try_wait().unwrap().is_none(),
        "install-cni must keep waiting while ipamd is down"
    );
    assert!(
        dirs.snapshot().is_empty(),
        "nothing installed while waiting"
    );
    tb.start_ipamd();
    let start = Instant::now();
    while running.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "install-cni still waits 30 s after ipamd came up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = running.into_inner().wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "install: {}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("waiting for ipamd"), "it said it waits: {err}");
    assert!(err.contains("is ready"), "it said ipamd is ready: {err}");
    assert_installed(&tb, &dirs, "10-moor.conflist", &source);

    // Again: nothing to do, the files (inodes included) stay.
    let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let before = (
        ino(&dirs.bin.join("moor")),
        ino(&dirs.conf.join("10-moor.conflist")),
    );
    let out = install_cni::run(&dirs.args(&tb, &conflist, 10));
    assert_eq!(out.status.code(), Some(0), "reinstall: {}", stderr(&out));
    assert!(stderr(&out).contains("up to date"), "{}", stderr(&out));
    let after = (
        ino(&dirs.bin.join("moor")),
        ino(&dirs.conf.join("10-moor.conflist")),
    );
    assert_eq!(before, after, "identical files are not rewritten");

    // A changed conflist replaces the old one by rename (a new inode).
    let source2 = source.replace("\"web\"", "\"api\"");
    let conflist2 = dirs.conflist("10-moor.conflist", &source2);
    let out = install_cni::run(&dirs.args(&tb, &conflist2, 10));
    assert_eq!(out.status.code(), Some(0), "update: {}", stderr(&out));
    assert_installed(&tb, &dirs, "10-moor.conflist", &source2);
    assert_ne!(
        ino(&dirs.conf.join("10-moor.conflist")),
        before.1,
        "the new conflist was renamed into place, not written over the old"
    );
}

#[test]
fn a_daemon_that_answers_not_ready_is_up() {
    // No ToR defined: STATUS answers "not ready", which still means ipamd
    // runs; ADDs get a clear error until an admin defines the ToR.
    let tb = Testbed::with(Options {
        define_tor: false,
        ..Options::default()
    });
    let dirs = Dirs::new(&tb);
    let source = good_conflist("moor-e2e");
    let conflist = dirs.conflist("10-moor.conflist", &source);
    let out = install_cni::run(&dirs.args(&tb, &conflist, 10));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("up but not ready") && err.contains("not defined"),
        "the warning says why ipamd is not ready: {err}"
    );
    assert_installed(&tb, &dirs, "10-moor.conflist", &source);
}

#[test]
fn a_bad_conflist_changes_nothing() {
    let tb = Testbed::new();
    let dirs = Dirs::new(&tb);
    let source = good_conflist("moor-e2e");
    let good = dirs.conflist("10-moor.conflist", &source);
    let out = install_cni::run(&dirs.args(&tb, &good, 10));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let installed = dirs.snapshot();
    assert_eq!(installed.len(), 2);

    let with_first = |plugin: Value| {
        json!({"cniVersion": "1.0.0", "name": "moor-e2e", "plugins": [plugin]}).to_string()
    };
    // (file name, content, words the error must contain)
    let cases: Vec<(&str, String, &[&str])> = vec![
        ("10-moor.conflist", "".into(), &["is empty"]),
        (
            "10-moor.conflist",
            "{\"name\": ".into(),
            &["not valid JSON"],
        ),
        ("10-moor.conflist", "{} {}".into(), &["2 JSON values"]),
        ("10-moor.conflist", "[]".into(), &["top level", "a list"]),
        (
            "10-moor.conflist",
            json!({"name": "n", "plugins": [{"type": "moor"}]}).to_string(),
            &["cniVersion", "1.0.0"],
        ),
        (
            "10-moor.conflist",
            json!({"cniVersion": "1.0.0", "plugins": [{"type": "moor"}]}).to_string(),
            &["name:", "missing"],
        ),
        (
            "10-moor.conflist",
            json!({"cniVersion": "1.0.0", "name": "a b", "plugins": [{"type": "moor"}]})
                .to_string(),
            &["name:", "\"a b\""],
        ),
        (
            "10-moor.conflist",
            json!({"cniVersion": "1.0.0", "name": "n", "type": "moor"}).to_string(),
            &["plugins:", "not a list"],
        ),
        (
            "10-moor.conflist",
            json!({"cniVersion": "1.0.0", "name": "n", "plugins": []}).to_string(),
            &["plugins:", "empty"],
        ),
        (
            "10-moor.conflist",
            with_first(json!({"type": "bridge"})),
            &["plugins[0].type", "\"bridge\"", "\"moor\""],
        ),
        (
            "10-moor.conflist",
            json!({"cniVersion": "1.0.0", "name": "n",
                   "plugins": [{"type": "moor"}, {"capabilities": {}}]})
            .to_string(),
            &["plugins[1]", "\"type\""],
        ),
        (
            "10-moor.conflist",
            with_first(json!({"type": "moor", "socket": "run/ipamd.sock"})),
            &["plugins[0].socket", "absolute"],
        ),
        ("10-moor.conf", source.clone(), &[".conflist"]),
    ];
    for (file, content, words) in &cases {
        let p = dirs.conflist(file, content);
        let out = install_cni::run(&dirs.args(&tb, &p, 10));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{file} {content:?}: {err}");
        for w in *words {
            assert!(err.contains(w), "{content:?}: the error names {w:?}: {err}");
        }
        assert!(err.contains("nothing was changed"), "{content:?}: {err}");
        assert_eq!(dirs.snapshot(), installed, "{content:?} changed the dirs");
        std::fs::remove_file(&p).unwrap();
    }

    // Bad arguments: the same, exit 1, nothing changed.
    let missing_moor = tb.dir.join("no-such-moor");
    let mut no_moor = dirs.args(&tb, &good, 10);
    no_moor[7] = missing_moor.display().to_string();
    let mut relative_socket = dirs.args(&tb, &good, 10);
    relative_socket[9] = "ipamd.sock".into();
    let mut bad_timeout = dirs.args(&tb, &good, 10);
    bad_timeout[11] = "soon".into();
    let no_conf_dir: Vec<String> = dirs.args(&tb, &good, 10)[..2]
        .iter()
        .chain(&dirs.args(&tb, &good, 10)[4..])
        .cloned()
        .collect();
    for (args, word) in [
        (no_moor, "--moor"),
        (relative_socket, "--socket"),
        (bad_timeout, "--timeout"),
        (no_conf_dir, "--conf-dir"),
    ] {
        let out = install_cni::run(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(word), "the error names {word}: {err}");
        assert_eq!(dirs.snapshot(), installed, "{args:?} changed the dirs");
    }
}
