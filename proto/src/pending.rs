//! Pending DELs: what the plugin leaves behind when it tears a pod down while
//! ipamd is not running, so ipamd releases the IP when it starts again.
//!
//! The plugin writes one JSON file per attachment into a directory beside
//! ipamd's socket; ipamd replays every record on start and removes each one
//! once its DEL has been applied. A DEL must never fail a pod's teardown just
//! because the daemon is down (the AWS VPC CNI anchor gets stuck there), and
//! it must not leak the IP either: this record is the bridge.
//!
//! Crash safety: a record is written to a dot-prefixed temp file in the same
//! directory, fsynced, renamed over the final name and the directory fsynced.
//! A reader therefore sees either no record or a whole one; a writer killed
//! half-way leaves only a temp file, which readers skip. Repeated DELs of one
//! attachment overwrite one file, whose name is derived from the attachment
//! key.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Suffix of a complete record.
const RECORD_SUFFIX: &str = ".json";

/// A DEL the plugin could not hand to ipamd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingDel {
    pub container_id: String,
    pub ifname: String,
    /// CNI_NETNS as given to DEL; may be empty.
    #[serde(default)]
    pub netns: String,
    #[serde(default)]
    pub pod_namespace: String,
    #[serde(default)]
    pub pod_name: String,
    /// The network config's `name`.
    #[serde(default)]
    pub network: String,
    /// When the plugin wrote the record, seconds since the Unix epoch.
    #[serde(default)]
    pub written_unix: u64,
    /// Written by ipamd for an ADD it rolled back during a store outage: the
    /// release also drops a binding that ADD created.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rollback: bool,
}

/// A file in the pending directory that is not a readable record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// Everything found in a pending directory.
#[derive(Debug, Default)]
pub struct Scan {
    pub records: Vec<(PathBuf, PendingDel)>,
    pub skipped: Vec<Skipped>,
}

/// Whether a file of the pending-DEL directory named `name` is a record (not
/// a temporary file of a write under way, nor anything else).
pub fn is_record_name(name: &str) -> bool {
    !name.starts_with('.') && name.ends_with(RECORD_SUFFIX)
}

/// The file holding the record of attachment (`container_id`, `ifname`).
pub fn path_for(dir: &Path, container_id: &str, ifname: &str) -> PathBuf {
    dir.join(format!(
        "{}{RECORD_SUFFIX}",
        crate::host_ifname(container_id, ifname)
    ))
}

/// Writes `rec` durably; returns the record's path. Creates `dir` (mode 0700)
/// if missing. Writing the same attachment again replaces the old record.
pub fn write(dir: &Path, rec: &PendingDel) -> io::Result<PathBuf> {
    if rec.container_id.is_empty() || rec.ifname.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "pending DEL record needs a container id and an ifname",
        ));
    }
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let path = path_for(dir, &rec.container_id, &rec.ifname);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    // Dot-prefixed so readers skip it; the pid and a count keep two
    // concurrent writers of the same record (runtimes retry a DEL that timed
    // out while ipamd still works on it) off each other's temp file.
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    ));
    let body = serde_json::to_vec_pretty(rec).map_err(io::Error::other)?;
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&body)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &path)?;
        // The rename is only durable once the directory entry is.
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| path)
}

/// Reads every record in `dir`, in file-name order (records are independent
/// of each other). Files that are not whole records (temp files of
/// an interrupted or concurrent writer, garbage) are skipped and returned in
/// [`Scan::skipped`], never an error. A missing directory holds no records.
pub fn scan(dir: &Path) -> io::Result<Scan> {
    let mut out = Scan::default();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    let mut paths = Vec::new();
    for entry in entries {
        paths.push(entry?.path());
    }
    paths.sort();
    for path in paths {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let skip = |reason: String| Skipped {
            path: path.clone(),
            reason,
        };
        if name.starts_with('.') {
            out.skipped.push(skip(
                "temporary file of an interrupted or in-progress write".into(),
            ));
            continue;
        }
        if !name.ends_with(RECORD_SUFFIX) {
            out.skipped
                .push(skip(format!("not a record (no {RECORD_SUFFIX} suffix)")));
            continue;
        }
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                out.skipped.push(skip(format!("cannot read: {e}")));
                continue;
            }
        };
        match serde_json::from_slice::<PendingDel>(&bytes) {
            Ok(rec) if rec.container_id.is_empty() || rec.ifname.is_empty() => {
                out.skipped
                    .push(skip("record lacks container_id or ifname".into()));
            }
            Ok(rec) => out.records.push((path, rec)),
            Err(e) => out
                .skipped
                .push(skip(format!("not a pending DEL record: {e}"))),
        }
    }
    Ok(out)
}

/// [`scan`], logging each skipped file as a warning.
pub fn read_all(dir: &Path) -> io::Result<Vec<(PathBuf, PendingDel)>> {
    let scan = scan(dir)?;
    for s in &scan.skipped {
        tracing::warn!(path = %s.path.display(), reason = %s.reason, "skipping file in pending DEL directory");
    }
    Ok(scan.records)
}

/// Removes a record once its DEL has been applied. An already removed record
/// is fine. Not fsynced: a record that reappears after a crash is replayed
/// again, and DEL is idempotent.
pub fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir(test: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let d = std::env::temp_dir().join(format!(
            "moor-pending-{test}-{}-{nanos}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn rec(cid: &str, ifname: &str) -> PendingDel {
        PendingDel {
            container_id: cid.into(),
            ifname: ifname.into(),
            netns: "/run/netns/p1".into(),
            pod_namespace: "default".into(),
            pod_name: "db-0".into(),
            network: "moor".into(),
            written_unix: 1_700_000_000,
            rollback: false,
        }
    }

    #[test]
    fn write_then_read_round_trips_and_creates_private_dir() {
        let root = temp_dir("roundtrip");
        let dir = root.join("a/b.pending");
        let p = write(&dir, &rec("c1", "eth0")).unwrap();
        assert_eq!(p, path_for(&dir, "c1", "eth0"));
        assert_eq!(p.file_name().unwrap(), "mrf53f02b3bfe9.json");
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let all = read_all(&dir).unwrap();
        assert_eq!(all, vec![(p.clone(), rec("c1", "eth0"))]);
        // No temp file is left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn repeated_del_overwrites_one_record() {
        let dir = temp_dir("overwrite");
        write(&dir, &rec("c1", "eth0")).unwrap();
        let mut second = rec("c1", "eth0");
        second.netns = String::new();
        second.written_unix += 5;
        write(&dir, &second).unwrap();
        write(&dir, &rec("c1", "eth1")).unwrap();
        let all = read_all(&dir).unwrap();
        assert_eq!(all.len(), 2);
        assert!(all.iter().any(|(_, r)| *r == second));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn concurrent_writers_of_one_record_in_one_process_all_succeed() {
        let dir = temp_dir("concurrent");
        fs::create_dir_all(&dir).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    let mut r = rec("c1", "eth0");
                    r.written_unix += i;
                    (0..50)
                        .map(|_| write(&dir, &r).map(|_| ()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for t in threads {
            for r in t.join().unwrap() {
                r.expect("every write lands");
            }
        }
        assert_eq!(
            read_all(&dir).unwrap().len(),
            1,
            "one record, no temp files read"
        );
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no temp file left");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn leftover_temp_file_of_a_killed_writer_is_ignored() {
        let dir = temp_dir("killed");
        write(&dir, &rec("c1", "eth0")).unwrap();
        // A writer killed before its rename leaves a partial temp file.
        let tmp = dir.join(".mr0123456789ab.json.4242.tmp");
        fs::write(&tmp, b"{\"container_id\": \"c2\", \"ifn").unwrap();
        let s = scan(&dir).unwrap();
        assert_eq!(s.records.len(), 1);
        assert_eq!(s.skipped.len(), 1);
        assert_eq!(s.skipped[0].path, tmp);
        assert!(s.skipped[0].reason.contains("temporary"));
        // The same writer's pid may come back: its write still succeeds.
        write(&dir, &rec("c2", "eth0")).unwrap();
        assert_eq!(read_all(&dir).unwrap().len(), 2);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn garbage_does_not_stop_the_rest() {
        let dir = temp_dir("garbage");
        write(&dir, &rec("c1", "eth0")).unwrap();
        write(&dir, &rec("c3", "eth0")).unwrap();
        fs::write(dir.join("aaaa.json"), b"not json").unwrap();
        fs::write(dir.join("empty.json"), b"").unwrap();
        fs::write(
            dir.join("nokey.json"),
            b"{\"container_id\":\"\",\"ifname\":\"eth0\"}",
        )
        .unwrap();
        fs::write(dir.join("README"), b"hello").unwrap();
        fs::create_dir(dir.join("sub.json")).unwrap();
        let s = scan(&dir).unwrap();
        let cids: Vec<_> = s
            .records
            .iter()
            .map(|(_, r)| r.container_id.as_str())
            .collect();
        assert_eq!(cids.len(), 2);
        assert!(cids.contains(&"c1") && cids.contains(&"c3"));
        assert_eq!(s.skipped.len(), 5, "{:?}", s.skipped);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tolerates_unknown_and_missing_optional_fields() {
        let dir = temp_dir("compat");
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("x.json"),
            br#"{"container_id":"c9","ifname":"eth0","from_the_future":1}"#,
        )
        .unwrap();
        let all = read_all(&dir).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].1.container_id, "c9");
        assert_eq!(all[0].1.written_unix, 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_dir_has_no_records_and_remove_is_idempotent() {
        let dir = temp_dir("missing");
        assert!(read_all(&dir).unwrap().is_empty());
        let p = write(&dir, &rec("c1", "eth0")).unwrap();
        remove(&p).unwrap();
        remove(&p).unwrap();
        assert!(read_all(&dir).unwrap().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_a_record_without_key() {
        let dir = temp_dir("nokey");
        let err = write(&dir, &rec("", "eth0")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let _ = fs::remove_dir_all(&dir);
    }
}
