//! Issue 15's done-when 5: `ipamctl backup` on etcd, `ipamctl restore` into
//! a fresh store, `ipamctl audit` clean, a sticky pod gets its IP back; and
//! the refusals that change nothing (a non-empty store, a damaged file, a
//! missing one). Then the same round trip on redb.
//!
//! The fresh etcd is a new 3-member cluster in place of the old one (whose
//! members are killed and their data removed), with node n1's ipamd
//! restarted on it.

use std::path::Path;
use std::process::Output;

use moor_e2e::cluster::{Cluster, Layout};
use moor_e2e::names::{container_id, deployment_pod, statefulset_pod};
use moor_e2e::Testbed;
use moor_ipamd::store::schema;
use serde_json::{json, Value};

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The store's state records (node registrations, which heartbeats
/// rewrite, left out).
fn state(c: &Cluster) -> Vec<(String, Value)> {
    let mut all = c.etcd_list("");
    all.retain(|(k, _)| !k.starts_with("nodes/"));
    all
}

/// Copies of `file`: one record edited, one cut short.
fn damaged(file: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let body = std::fs::read_to_string(file).unwrap();
    let edited = file.with_extension("edited");
    // A pool's IP count changed by hand, in a record line.
    let at = body.find("\"key\":\"pools/").expect("a pool record");
    let mut bytes = body.into_bytes();
    let digit = (at..bytes.len())
        .find(|&i| bytes[i].is_ascii_digit())
        .unwrap();
    bytes[digit] = if bytes[digit] == b'9' { b'8' } else { b'9' };
    std::fs::write(&edited, &bytes).unwrap();
    let cut = file.with_extension("cut");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    (edited, cut)
}

/// Every refusal of a bad FILE: exit 2, the reason named, nothing sent.
fn bad_files_refused(run: impl Fn(&[&str]) -> Output, file: &Path) {
    let (edited, cut) = damaged(file);
    for (f, why) in [
        (edited.as_path(), "fails its checksum"),
        (cut.as_path(), "truncated"),
        (
            Path::new("/nonexistent/moor.backup"),
            "cannot read backup file",
        ),
    ] {
        let o = run(&["restore", f.to_str().unwrap()]);
        assert_eq!(
            o.status.code(),
            Some(2),
            "restore {}: {}",
            f.display(),
            text(&o)
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(why),
            "restore {}: {why:?} in {err}",
            f.display()
        );
    }
}

#[test]
fn backup_on_etcd_restores_into_a_fresh_store_and_the_sticky_pod_keeps_its_ip() {
    let mut c = Cluster::new(Layout::new().tor("tor-a", 20).node("n1", "tor-a"));
    c.create_pool("db", "db", 4, &[]);
    c.create_pool("web", "web", 4, &[]);
    let db0 = c.pod(&statefulset_pod("db", 0));
    let cid0 = container_id();
    let r = c.add("n1", &db0, &cid0);
    r.ok("ADD db-0");
    let ip = r.ip();
    let web = c.pod(&deployment_pod("web", 1));
    let cidw = container_id();
    c.add("n1", &web, &cidw).ok("ADD a web pod");

    let file = c.dir.join("moor.backup");
    let f = file.to_str().unwrap();
    let made = c.ipamctl_json("n1", &["backup", f]);
    let before = state(&c);
    // Every record, node registrations too.
    assert_eq!(
        made["records"].as_u64().unwrap(),
        c.etcd_list("").len() as u64,
        "{made}"
    );
    assert_eq!(made["schema_version"], schema::CURRENT, "{made}");
    assert!(
        made["store"].as_str().unwrap().starts_with("etcd:"),
        "{made}"
    );
    let body = std::fs::read_to_string(&file).unwrap();
    let binding = format!("\"key\":\"bindings/{}/{}\"", db0.namespace, db0.name);
    assert!(body.contains(&binding), "{binding} in the file");
    assert!(
        !c.dir.read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".tmp-")),
        "no temporary file left"
    );

    // Into the store it came from (not empty): refused, nothing changed.
    let o = c.ipamctl("n1", &["restore", f]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("not empty") && err.contains("fresh etcd"),
        "{err}"
    );
    bad_files_refused(|a| c.ipamctl("n1", a), &file);
    assert_eq!(state(&c), before, "refusals change nothing");

    // A fresh etcd (empty but for what ipamd writes at start: the schema
    // record and its registration).
    c.stop_ipamd("n1");
    let old = c.etcd_endpoints();
    c.replace_etcd();
    assert!(
        c.etcd_endpoints().iter().all(|e| !old.contains(e)),
        "other members"
    );
    c.start_ipamd("n1");
    assert!(
        state(&c).iter().all(|(k, _)| k == "schema"),
        "{:?}",
        state(&c)
    );
    bad_files_refused(|a| c.ipamctl("n1", a), &file);
    assert!(state(&c).iter().all(|(k, _)| k == "schema"), "still empty");

    let done = c.ipamctl_json("n1", &["restore", f]);
    assert_eq!(done["records"], made["records"], "{done}");
    assert_eq!(done["resumed"], false, "{done}");
    assert_eq!(state(&c), before, "the store is what was backed up");
    assert!(c.audit().is_empty(), "{:?}", c.audit());
    let audit = c.ipamctl("n1", &["audit"]);
    assert!(audit.status.success(), "ipamctl audit: {}", text(&audit));

    // Restore again: the store is not empty any more.
    let o = c.ipamctl("n1", &["restore", f]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    // The restored cluster serves: db-0's old sandbox goes (the kubelet's
    // DEL), the re-created db-0 gets its IP.
    c.del("n1", &db0, &cid0).ok("DEL the old db-0");
    c.remove_pod(&db0);
    let again = c.pod(&statefulset_pod("db", 0));
    let r = c.add("n1", &again, &container_id());
    r.ok("ADD the re-created db-0");
    assert_eq!(r.ip(), ip, "db-0 keeps its IP across backup and restore");
    assert!(c.audit().is_empty(), "{:?}", c.audit());
}

#[test]
fn backup_on_redb_restores_into_a_new_file() {
    let t = Testbed::new();
    t.create_pool("db", "db", 4);
    let pod = t.pod(&statefulset_pod("db", 0));
    let cid = container_id();
    let r = t.moor("ADD", &pod, &cid, "1.0.0", &json!({}), None);
    r.ok("ADD db-0");
    let ip = r.ip();
    let file = t.dir.join("moor.backup");
    let f = file.to_str().unwrap();
    let made = t.ipamctl_json(&["backup", f]);
    assert!(
        made["store"].as_str().unwrap().starts_with("redb:"),
        "{made}"
    );

    let o = t.ipamctl(&["restore", f]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not empty"));
    bad_files_refused(|a| t.ipamctl(a), &file);

    // A new redb file, the old one kept aside.
    t.stop_ipamd();
    std::fs::rename(&t.store, t.store.with_extension("old")).unwrap();
    t.start_ipamd();
    let done = t.ipamctl_json(&["restore", f]);
    assert_eq!(done["records"], made["records"], "{done}");
    let audit = t.ipamctl(&["audit"]);
    assert!(audit.status.success(), "ipamctl audit: {}", text(&audit));

    t.moor("DEL", &pod, &cid, "1.0.0", &json!({}), None)
        .ok("DEL the old db-0");
    t.remove_pod(&pod);
    let again = t.pod(&statefulset_pod("db", 0));
    let r = t.moor("ADD", &again, &container_id(), "1.0.0", &json!({}), None);
    r.ok("ADD the re-created db-0");
    assert_eq!(r.ip(), ip, "db-0 keeps its IP across backup and restore");
    assert!(t.audit().is_empty(), "{:?}", t.audit());
}
