//! ADDs in flight: one small file each, in a directory next to the
//! pending-DEL one (under /run by default), made before the ADD's commit and
//! removed once the pod is wired and the reply is on its way, or once a
//! failed ADD is rolled back. A file found at start is an ADD that a crash
//! cut short; `recover` rolls it back (the runtime never got a result, and
//! retries after a DEL). That is what lets an ADD record its attachment
//! ready in its one commit, with no second commit after the wiring.
//!
//! The files are not synced: they need to outlive ipamd's process, not the
//! machine. A reboot ends every pod anyway; what their attachments held is
//! released by the runtime's DELs, GC and the sweep.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::core::AttachmentKey;
use crate::error::{Error, Result};

const SUFFIX: &str = ".adding";

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    container_id: String,
    ifname: String,
}

pub struct InFlight {
    dir: PathBuf,
    /// ADDs running now.
    keys: Mutex<HashSet<AttachmentKey>>,
    /// Marks on disk that no running ADD owns: a crash's leftovers, and
    /// ADDs that failed without a rollback. Only their keys' DELs touch the
    /// directory.
    left: Mutex<HashSet<AttachmentKey>>,
    dir_made: AtomicBool,
}

/// One ADD's mark. `done` removes it; dropped without `done` (the ADD
/// failed and could not be rolled back, or its request was cancelled half
/// way) the file stays, as after a crash, and the next start rolls it back
/// unless a DEL of the key settles it first.
pub struct Mark<'a> {
    set: &'a InFlight,
    key: AttachmentKey,
    done: bool,
}

impl Mark<'_> {
    pub fn done(mut self) {
        self.done = true;
        self.set.end(&self.key);
    }
}

impl Drop for Mark<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.set.keys.lock().unwrap().remove(&self.key);
            self.set.left.lock().unwrap().insert(self.key.clone());
        }
    }
}

impl InFlight {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            keys: Mutex::default(),
            left: Mutex::default(),
            dir_made: AtomicBool::new(false),
        }
    }

    /// The directory of the marks beside the pending-DEL directory `pending`.
    pub fn dir_beside(pending: &Path) -> PathBuf {
        let mut name = pending.file_name().unwrap_or_default().to_os_string();
        name.push(SUFFIX);
        pending.with_file_name(name)
    }

    fn path(&self, key: &AttachmentKey) -> PathBuf {
        self.dir.join(format!(
            "{}{SUFFIX}",
            moor_proto::host_ifname(&key.container_id, &key.ifname)
        ))
    }

    /// Marks `key` in flight. `None`: another ADD of the same key is (a
    /// runtime retrying while the first still runs); it owns the mark.
    pub fn begin(&self, key: &AttachmentKey) -> Result<Option<Mark<'_>>> {
        if !self.keys.lock().unwrap().insert(key.clone()) {
            return Ok(None);
        }
        let rec = Record {
            container_id: key.container_id.clone(),
            ifname: key.ifname.clone(),
        };
        // Made by the first ADD (there may be none before it is needed).
        let made = || {
            if self.dir_made.load(Ordering::Relaxed) {
                return Ok(());
            }
            std::fs::create_dir_all(&self.dir)?;
            self.dir_made.store(true, Ordering::Relaxed);
            Ok(())
        };
        let written = made().and_then(|_| {
            std::fs::write(
                self.path(key),
                serde_json::to_vec(&rec).expect("records serialize"),
            )
        });
        if let Err(e) = written {
            self.keys.lock().unwrap().remove(key);
            return Err(Error::internal_from(
                format!(
                    "cannot mark the ADD of {key} in flight in {} (check that the directory is writable)",
                    self.dir.display()
                ),
                e,
            ));
        }
        Ok(Some(Mark {
            set: self,
            key: key.clone(),
            done: false,
        }))
    }

    fn end(&self, key: &AttachmentKey) {
        if let Err(e) = std::fs::remove_file(self.path(key)) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(%key, error = %e, "could not remove an ADD's in-flight mark");
            }
        }
        self.keys.lock().unwrap().remove(key);
        self.left.lock().unwrap().remove(key);
    }

    /// Whether an earlier ADD of `key` ended without knowing whether its
    /// allocation was committed (its mark is left): a Ready attachment of
    /// the key may then be unwired.
    pub fn unfinished(&self, key: &AttachmentKey) -> bool {
        self.left.lock().unwrap().contains(key)
    }

    /// Whether an ADD of `key` is running now (GC and the sweep leave it).
    pub fn contains(&self, key: &AttachmentKey) -> bool {
        self.keys.lock().unwrap().contains(key)
    }

    /// The ADDs a crash cut short (marks left by an earlier process).
    pub fn leftovers(&self, node: &str) -> Vec<AttachmentKey> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in dir.flatten() {
            let path = e.path();
            if !path.to_string_lossy().ends_with(SUFFIX) {
                continue;
            }
            let rec = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Record>(&b).ok());
            match rec {
                Some(r) => out.push(AttachmentKey {
                    node: node.to_string(),
                    container_id: r.container_id,
                    ifname: r.ifname,
                }),
                None => {
                    // Cut short while being written: nothing was committed.
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        self.left.lock().unwrap().extend(out.iter().cloned());
        out
    }

    /// Forgets the mark of `key` once its attachment is released (rolled
    /// back, or DELed by the runtime), unless an ADD of it is running.
    pub fn settled(&self, key: &AttachmentKey) {
        if !self.contains(key) && self.left.lock().unwrap().remove(key) {
            let _ = std::fs::remove_file(self.path(key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(cid: &str) -> AttachmentKey {
        AttachmentKey {
            node: "n1".into(),
            container_id: cid.into(),
            ifname: "eth0".into(),
        }
    }

    #[test]
    fn marks_outlive_the_process_unless_ended() {
        let dir = std::env::temp_dir().join(format!("moor-inflight-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let set = InFlight::new(dir.join("p.adding"));
        {
            let a = set.begin(&key("a")).unwrap().expect("first");
            assert!(set.begin(&key("a")).unwrap().is_none(), "one owner");
            assert!(set.contains(&key("a")));
            let b = set.begin(&key("b")).unwrap().unwrap();
            a.done();
            // "b" failed and was not rolled back: dropped, it stays.
            drop(b);
            assert!(!set.contains(&key("b")), "not running any more");
            // "c" is in flight when the process dies: nothing removes it.
            std::mem::forget(set.begin(&key("c")).unwrap().unwrap());
        }
        assert!(!set.contains(&key("a")));
        let restarted = InFlight::new(dir.join("p.adding"));
        let mut left = restarted.leftovers("n1");
        left.sort();
        assert_eq!(left, [key("b"), key("c")]);
        for k in &left {
            restarted.settled(k);
        }
        assert!(restarted.leftovers("n1").is_empty());
        assert_eq!(
            InFlight::dir_beside(Path::new("/run/moor/ipamd.sock.pending")),
            Path::new("/run/moor/ipamd.sock.pending.adding")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
