//! Issue 15, done-when 3: a record that does not decode (hand edit, bug,
//! damaged disk) makes only the operations that need it fail, with an error
//! naming its key and the repair; ipamd keeps serving everything else, never
//! takes the record for absent (that could hand its IP out twice), and
//! `ipamctl audit` lists it. One table of record kinds, run on redb (ipamd
//! stopped, garbage written with redb, ipamd started again: also a start on
//! a damaged store) and on etcd (garbage put while ipamd runs: its watches
//! see it). Each kind is damaged, checked and repaired in turn on one ipamd.

use std::net::Ipv4Addr;
use std::process::Output;

use moor_e2e::cluster::{Cluster, Layout};
use moor_e2e::ipamctl::Ipamctl;
use moor_e2e::names::{container_id, deployment_pod, statefulset_pod};
use moor_e2e::testbed::{CniRun, Pod, POD_NAMESPACE, TOR};
use moor_e2e::Testbed;
use moor_ipamd::audit::DEFER_TO_CORRUPT;
use moor_ipamd::store::redb::RedbStore;
use moor_ipamd::store::{Op, Store, Txn};
use serde_json::{json, Value};

/// Bytes no record decodes from.
const GARBAGE: &[u8] = b"{\"truncated\": [1, 2";

/// A second ToR no pool uses: its record is one a node's pods do not need.
const OTHER_TOR: &str = "rack-z";

/// What the scenario needs of a node and its store.
trait Bed {
    fn ctl(&self) -> Ipamctl<'_>;
    fn pod(&self, name: &str) -> Pod;
    /// `moor` CNI_COMMAND=`cmd` for `pod` on the node, `extra` over the config.
    fn cni(&self, cmd: &str, pod: &Pod, cid: &str, extra: &Value) -> CniRun;
    fn node(&self) -> String;
    fn tor(&self) -> String;
    /// Puts `value` raw under `key` (None: deletes it); returns what was
    /// there.
    fn swap(&self, key: &str, value: Option<Vec<u8>>) -> Option<Vec<u8>>;
    fn ipamd_alive(&self) -> bool;
    fn log_tail(&self) -> String;
}

async fn swap_in(s: &dyn Store, key: &str, value: Option<Vec<u8>>) -> Option<Vec<u8>> {
    let old = s.get(key).await.expect("read the record").map(|e| e.value);
    let mut t = Txn::default();
    t.ops.push(match value {
        Some(value) => Op::Put {
            key: key.into(),
            value,
        },
        None => Op::Delete { key: key.into() },
    });
    assert!(s.commit(t).await.expect("write the record"), "applied");
    old
}

impl Bed for Testbed {
    fn ctl(&self) -> Ipamctl<'_> {
        Testbed::ctl(self)
    }
    fn pod(&self, name: &str) -> Pod {
        Testbed::pod(self, name)
    }
    fn cni(&self, cmd: &str, pod: &Pod, cid: &str, extra: &Value) -> CniRun {
        self.moor(cmd, pod, cid, "1.0.0", extra, None)
    }
    fn node(&self) -> String {
        self.node.clone()
    }
    fn tor(&self) -> String {
        TOR.into()
    }
    fn swap(&self, key: &str, value: Option<Vec<u8>>) -> Option<Vec<u8>> {
        // redb allows one opener: stop ipamd, write, start it again (on a
        // store that now holds the damaged record).
        self.stop_ipamd();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let old = {
            let s = RedbStore::open(&self.store).expect("open the redb store");
            rt.block_on(swap_in(&s, key, value))
        };
        self.start_ipamd();
        old
    }
    fn ipamd_alive(&self) -> bool {
        self.ipamd_pid()
            .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}/stat")).exists())
            && self.ctl().run(&["pool", "show", "api"]).status.success()
    }
    fn log_tail(&self) -> String {
        Testbed::log_tail(self, 40)
    }
}

/// An etcd cluster with one node, `n1`, on `tor-a`.
struct EtcdBed(Cluster);

impl Bed for EtcdBed {
    fn ctl(&self) -> Ipamctl<'_> {
        self.0.ctl("n1")
    }
    fn pod(&self, name: &str) -> Pod {
        self.0.pod(name)
    }
    fn cni(&self, cmd: &str, pod: &Pod, cid: &str, extra: &Value) -> CniRun {
        self.0.moor("n1", cmd, pod, cid, extra)
    }
    fn node(&self) -> String {
        "n1".into()
    }
    fn tor(&self) -> String {
        "tor-a".into()
    }
    fn swap(&self, key: &str, value: Option<Vec<u8>>) -> Option<Vec<u8>> {
        let key = key.to_string();
        self.0
            .with_store(|s| async move { swap_in(&s, &key, value).await })
    }
    fn ipamd_alive(&self) -> bool {
        self.0.ipamd_running("n1") && self.ctl().run(&["pool", "show", "api"]).status.success()
    }
    fn log_tail(&self) -> String {
        self.0.node("n1").log_tail(40)
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A pod attached by the scenario.
struct Running {
    pod: Pod,
    cid: String,
    ip: Ipv4Addr,
}

fn add(bed: &dyn Bed, name: &str) -> Running {
    let pod = bed.pod(name);
    let cid = container_id();
    let ip = bed.cni("ADD", &pod, &cid, &json!({})).ok(name).ip();
    Running { pod, cid, ip }
}

fn check(bed: &dyn Bed, r: &Running) -> CniRun {
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": r.pod.netns_path()}],
        "ips": [{"address": format!("{}/24", r.ip), "interface": 0}],
    });
    bed.cni("CHECK", &r.pod, &r.cid, &json!({ "prevResult": prev }))
}

fn del(bed: &dyn Bed, r: &Running) -> CniRun {
    bed.cni("DEL", &r.pod, &r.cid, &json!({}))
}

/// The operation a damaged record refuses.
enum Needs {
    /// ADD of a new pod of this name.
    Add(String),
    /// CHECK of web-1 (attached all along).
    Check,
    /// This ipamctl command.
    Ctl(Vec<String>),
}

struct Kind {
    what: &'static str,
    key: String,
    needs: Needs,
}

/// Runs `needs` and returns (succeeded, everything it printed).
fn attempt(bed: &dyn Bed, needs: &Needs, web1: &Running) -> (bool, String, Option<Running>) {
    match needs {
        Needs::Add(name) => {
            let pod = bed.pod(name);
            let cid = container_id();
            let r = bed.cni("ADD", &pod, &cid, &json!({}));
            let all = format!("{}{}", r.stdout, r.stderr);
            if r.code == 0 {
                let ip = r.ip();
                (true, all, Some(Running { pod, cid, ip }))
            } else {
                (false, all, None)
            }
        }
        Needs::Check => {
            let r = check(bed, web1);
            (r.code == 0, format!("{}{}", r.stdout, r.stderr), None)
        }
        Needs::Ctl(args) => {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out: Output = bed.ctl().run(&args);
            (
                out.status.success(),
                format!("{}{}", text(&out.stdout), text(&out.stderr)),
                None,
            )
        }
    }
}

/// `ipamctl -o json audit`: its exit code and its report.
fn audit(bed: &dyn Bed) -> (Option<i32>, Value) {
    let out = bed.ctl().run(&["-o", "json", "audit"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "audit printed no JSON ({e}): {}{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    (out.status.code(), v)
}

/// Pods of the other pool come and go and are checked, and the attached
/// pods answer CHECK: what a damaged record must not stop.
fn others_work(bed: &dyn Bed, label: &str, steady: &[&Running]) {
    for r in steady {
        check(bed, r).ok(&format!("{label}: CHECK of {}", r.pod.name));
    }
    let fresh = add(bed, &deployment_pod("api", next_seed()));
    check(bed, &fresh).ok(&format!("{label}: CHECK of a new api pod"));
    del(bed, &fresh).ok(&format!("{label}: DEL of a new api pod"));
    // STATUS (CNI 1.1.0): the node stays ready; a runtime that saw it fail
    // would stop starting pods here.
    bed.cni(
        "STATUS",
        &fresh.pod,
        &fresh.cid,
        &json!({"cniVersion": "1.1.0"}),
    )
    .ok(&format!("{label}: STATUS"));
}

fn next_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(100);
    N.fetch_add(1, Ordering::Relaxed)
}

fn scenario(bed: &dyn Bed, store: &str) {
    let tor = bed.tor();
    let ctl = bed.ctl();
    ctl.tor_add(
        OTHER_TOR,
        "10.254.9.0/24",
        Ipv4Addr::new(10, 254, 9, 1),
        (Ipv4Addr::new(10, 254, 9, 10), Ipv4Addr::new(10, 254, 9, 40)),
        &[],
    );
    ctl.create_pool("web", "web", 4, &[&tor]);
    ctl.create_pool("api", "api", 4, &[&tor]);
    // A smaller api pool gives an IP back: the segment gets a cooling record.
    ctl.resize_pool("api", 3);
    // web-0 is bound but not attached; web-1 and an api pod stay attached.
    let web0 = add(bed, &statefulset_pod("web", 0));
    del(bed, &web0).ok("DEL web-0");
    let web1 = add(bed, &statefulset_pod("web", 1));
    let api = add(bed, &deployment_pod("api", 1));
    let (code, v) = audit(bed);
    assert_eq!(code, Some(0), "{store}: audit before damage: {v:#}");

    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let kinds = [
        Kind {
            what: "pool",
            key: "pools/web".into(),
            needs: Needs::Add(statefulset_pod("web", 2)),
        },
        Kind {
            what: "app registration",
            key: format!("apps/{POD_NAMESPACE}/web"),
            needs: Needs::Add(statefulset_pod("web", 2)),
        },
        Kind {
            what: "lease",
            key: format!("leases/web/{}", web1.ip),
            needs: Needs::Add(statefulset_pod("web", 2)),
        },
        Kind {
            what: "binding",
            key: format!("bindings/{POD_NAMESPACE}/web-0"),
            needs: Needs::Add(statefulset_pod("web", 0)),
        },
        // What a CHECK of an attached pod reads: on redb its index entry;
        // on etcd (schema 5: no index) its lease, found where the node's
        // mirror says it is.
        if store == "etcd" {
            Kind {
                what: "attached lease",
                key: format!("leases/web/{}", web1.ip),
                needs: Needs::Check,
            }
        } else {
            Kind {
                what: "attachment",
                key: format!("attachments/{}/{}/eth0", bed.node(), web1.cid),
                needs: Needs::Check,
            }
        },
        Kind {
            what: "carved share",
            key: format!("carved/{tor}/web"),
            needs: Needs::Ctl(s(&["pool", "resize", "web", "--size", "5"])),
        },
        Kind {
            what: "cooling record",
            key: format!("carved/{tor}/_cooling"),
            needs: Needs::Ctl(s(&["pool", "resize", "web", "--size", "5"])),
        },
        // A node's own record is rewritten by its heartbeat (10 s) and at
        // start; a node that is gone (its ipamd stopped for good) keeps it.
        Kind {
            what: "node registration",
            key: "nodes/gone-node".into(),
            needs: Needs::Ctl(s(&["node", "list"])),
        },
        Kind {
            what: "ToR",
            key: format!("tors/{OTHER_TOR}"),
            needs: Needs::Ctl(s(&[
                "pool",
                "create",
                "z",
                "--namespace",
                "shop",
                "--app",
                "z",
                "--size",
                "2",
                "--tor",
                OTHER_TOR,
            ])),
        },
    ];
    for k in &kinds {
        let label = format!("{store}: corrupt {} {}", k.what, k.key);
        let old = bed.swap(&k.key, Some(GARBAGE.to_vec()));

        // The audit names it, as damage with the repair, and goes on.
        let (code, v) = audit(bed);
        assert_eq!(code, Some(1), "{label}: audit: {v:#}");
        let f = v["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .find(|f| f["key"] == json!(k.key))
            .unwrap_or_else(|| panic!("{label}: audit does not name it: {v:#}"));
        assert!(
            f["problem"].as_str().unwrap().starts_with("corrupt: "),
            "{label}: {f}"
        );
        assert!(
            f["fix"].as_str().unwrap().contains("ipamctl restore"),
            "{label}: {f}"
        );
        // What only follows from it (a lease whose binding is the damaged
        // record looks kept for no one) waits for the repair: acting on it
        // first (`ip release`) would undo what the record held.
        for other in v["findings"].as_array().unwrap() {
            if other["key"] != json!(k.key) {
                assert!(
                    other["fix"].as_str().unwrap().starts_with(DEFER_TO_CORRUPT),
                    "{label}: {other}"
                );
            }
        }

        // The operation that needs it is refused, naming the key and the fix.
        let (ok, said, _) = attempt(bed, &k.needs, &web1);
        assert!(
            !ok,
            "{label}: the operation that needs it succeeded: {said}"
        );
        assert!(
            said.contains(&k.key),
            "{label}: the key is not named: {said}"
        );
        assert!(said.contains("corrupt"), "{label}: {said}");
        assert!(said.contains("ipamctl restore"), "{label}: no fix: {said}");

        // Listings that would show the record refuse, naming it (a list or
        // a whitelist export that left it out would mislead); a backup
        // refuses to carry it (its restore would refuse the file).
        let backup = std::env::temp_dir().join(format!(
            "moor-corrupt-{}-{store}.backup",
            std::process::id()
        ));
        let listings: &[&[&str]] = &[
            &["ip", "list"],
            &["binding", "list"],
            &["pool", "list"],
            &["pool", "show", "web"],
            &["pool", "export", "web"],
            &["tor", "list"],
            &["backup", backup.to_str().unwrap()],
        ];
        for args in listings {
            let out = bed.ctl().run(args);
            let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
            if !out.status.success() {
                assert!(said.contains(&k.key), "{label}: ipamctl {args:?}: {said}");
            } else if args[0] == "backup" {
                panic!("{label}: the backup took a record it cannot restore: {said}");
            }
        }
        let _ = std::fs::remove_file(&backup);
        // Everything else keeps working.
        // web-1's own records: its CHECK needs them.
        let steady: Vec<&Running> =
            if k.key.contains(&web1.cid) || k.key.ends_with(&web1.ip.to_string()) {
                vec![&api]
            } else {
                vec![&api, &web1]
            };
        others_work(bed, &label, &steady);
        assert!(bed.ipamd_alive(), "{label}: ipamd died: {}", bed.log_tail());
        assert!(
            !bed.log_tail().contains("panicked"),
            "{label}: {}",
            bed.log_tail()
        );

        // Repaired, the operation works (and is undone) and the audit is clean.
        bed.swap(&k.key, old);
        let (ok, said, made) = attempt(bed, &k.needs, &web1);
        assert!(ok, "{label}: after the repair: {said}");
        if let Some(r) = made {
            if r.pod.name == "web-0" {
                assert_eq!(r.ip, web0.ip, "{label}: web-0 keeps its IP");
            }
            del(bed, &r).ok(&format!("{label}: DEL after the repair"));
        }
        if let Needs::Ctl(args) = &k.needs {
            match (args[0].as_str(), args[1].as_str()) {
                ("pool", "resize") => bed.ctl().resize_pool("web", 4),
                ("pool", "create") => {
                    bed.ctl().ok(&["pool", "delete", "z"]);
                }
                _ => {}
            }
        }
        let (code, v) = audit(bed);
        assert_eq!(code, Some(0), "{label}: audit after the repair: {v:#}");
    }
}

#[test]
fn corrupt_records_on_redb_fail_only_what_needs_them() {
    let tb = Testbed::new();
    scenario(&tb, "redb");
}

#[test]
fn corrupt_records_on_etcd_fail_only_what_needs_them() {
    let c = Cluster::new(Layout::new().tor("tor-a", 20).node("n1", "tor-a"));
    scenario(&EtcdBed(c), "etcd");
}
