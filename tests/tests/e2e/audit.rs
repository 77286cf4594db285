//! Issue 9's foundations against the real binaries:
//! - `ipamctl audit`: clean (exit 0) after pods came and went; a planted
//!   inconsistency is reported with its key (exit 1), in plain and JSON.
//! - The store's schema version: a store written before the version record
//!   existed opens as version 1 (is migrated to 2 and gets the record); a store of a newer
//!   version makes ipamd exit non-zero with the version found, the version
//!   it knows and the fix. On etcd, ipamds starting together agree on it.

use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use moor_e2e::cluster::{Cluster, Layout};
use moor_e2e::names::{container_id, deployment_pod, statefulset_pod};
use moor_e2e::testbed::{POD_NAMESPACE, TOR};
use moor_e2e::Testbed;
use moor_ipamd::core::{Binding, PodRef};
use moor_ipamd::store::redb::RedbStore;
use moor_ipamd::store::{schema, Store, Txn};
use serde_json::{json, Value};

/// Runs `f` on the testbed's redb store (ipamd must be stopped: redb
/// allows one opener).
fn with_redb<T, Fut: Future<Output = T>>(path: &Path, f: impl FnOnce(RedbStore) -> Fut) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let s = RedbStore::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    rt.block_on(f(s))
}

async fn commit(s: &dyn Store, txn: Txn) {
    assert!(s.commit(txn).await.expect("commit"), "commit applied");
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `ipamctl audit` (plain), which must exit 0 and say the store is clean.
fn assert_clean(out: &Output, what: &str) {
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: ipamctl audit: {stdout}{}",
        text(&out.stderr)
    );
    let mut lines = stdout.lines();
    let first = format!("schema version {}", schema::CURRENT);
    assert_eq!(lines.next(), Some(first.as_str()), "{what}: {stdout}");
    assert!(
        lines.next().is_some_and(|l| l.starts_with("clean: ")),
        "{what}: {stdout}"
    );
}

/// `ipamctl -o json audit`'s stdout, parsed, and its exit code.
fn audit_json(out: &Output) -> (Option<i32>, Value) {
    let v = serde_json::from_str(&text(&out.stdout)).unwrap_or_else(|e| {
        panic!(
            "ipamctl -o json audit is not JSON ({e}): {}{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    (out.status.code(), v)
}

fn finding_keys(v: &Value) -> Vec<String> {
    v["findings"]
        .as_array()
        .expect("findings is an array")
        .iter()
        .map(|f| f["key"].as_str().expect("key").to_string())
        .collect()
}

#[test]
fn audit_is_clean_after_pods_and_names_a_planted_inconsistency() {
    let tb = Testbed::new();
    tb.create_pool("web", "web", 4);
    tb.create_pool("api", "api", 4);
    // A StatefulSet pod (bound), a Deployment pod that stays, and one that
    // comes and goes.
    let add = |pod: &moor_e2e::Pod| {
        let cid = container_id();
        tb.moor("ADD", pod, &cid, "1.0.0", &json!({}), None)
            .ok("ADD");
        cid
    };
    let web0 = tb.pod(&statefulset_pod("web", 0));
    let web0_id = add(&web0);
    let api = tb.pod(&deployment_pod("api", 1));
    add(&api);
    let gone = tb.pod(&deployment_pod("api", 2));
    let gone_id = add(&gone);
    tb.moor("DEL", &gone, &gone_id, "1.0.0", &json!({}), None)
        .ok("DEL");
    let web0_ip = tb.ip_of_container(&web0_id).expect("web-0 attached")["address"]
        .as_str()
        .unwrap()
        .to_string();

    assert_clean(&tb.ipamctl(&["audit"]), "after pods");
    let (code, v) = audit_json(&tb.ipamctl(&["-o", "json", "audit"]));
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(v["clean"], json!(true), "{v:#}");
    assert_eq!(v["schema_version"], json!(schema::CURRENT), "{v:#}");
    assert_eq!(v["schema_recorded"], json!(true), "{v:#}");
    assert_eq!(v["findings"], json!([]), "{v:#}");
    assert!(v["records"].as_u64().unwrap() > 8, "{v:#}");

    // Plant two inconsistencies: a binding no lease knows of (on a free IP
    // of web), and a free count (moor stores none since schema 3).
    tb.stop_ipamd();
    let ghost_ip = free_web_ips(&tb, &web0_ip)[0];
    with_redb(&tb.store, |s| async move {
        let mut t = Txn::default();
        t.put(
            &format!("bindings/{POD_NAMESPACE}/ghost-0"),
            &Binding {
                pod: PodRef {
                    namespace: POD_NAMESPACE.into(),
                    name: "ghost-0".into(),
                    uid: String::new(),
                },
                pool: "web".into(),
                ip: ghost_ip,
                tor: TOR.into(),
            },
        )
        .put(&format!("free/api/{TOR}"), &json!({"total": 4, "free": 4}));
        commit(&s, t).await;
    });
    tb.start_ipamd();

    let out = tb.ipamctl(&["audit"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.starts_with(&format!(
            "schema version {}\n2 findings in ",
            schema::CURRENT
        )),
        "{stdout}"
    );
    let ghost_line = format!("bindings/{POD_NAMESPACE}/ghost-0: keeps {ghost_ip} for pod");
    assert!(stdout.contains(&ghost_line), "{stdout}");
    let free_line = format!("free/api/{TOR}: is a free count, which moor no longer stores");
    assert!(stdout.contains(&free_line), "{stdout}");
    assert!(stdout.contains("\n  fix: delete it: "), "{stdout}");
    assert!(text(&out.stderr).is_empty(), "{}", text(&out.stderr));

    let (code, v) = audit_json(&tb.ipamctl(&["-o", "json", "audit"]));
    assert_eq!(code, Some(1), "{v:#}");
    assert_eq!(v["clean"], json!(false), "{v:#}");
    assert_eq!(
        finding_keys(&v),
        [
            format!("bindings/{POD_NAMESPACE}/ghost-0"),
            format!("free/api/{TOR}")
        ],
        "{v:#}"
    );
    for f in v["findings"].as_array().unwrap() {
        assert!(!f["problem"].as_str().unwrap().is_empty(), "{f}");
        assert!(!f["fix"].as_str().unwrap().is_empty(), "{f}");
    }
    // The library's audit (what the other e2e tests run) agrees.
    assert_eq!(tb.audit().len(), 2);
}

/// The IPs of pool web but `taken` (web-0's), read from the store (ipamd
/// is stopped).
fn free_web_ips(tb: &Testbed, taken: &str) -> Vec<IpAddr> {
    let taken = taken.to_string();
    with_redb(&tb.store, |s| async move {
        let e = s.get("pools/web").await.unwrap().expect("pool web");
        let pool: moor_ipamd::core::Pool = serde_json::from_slice(&e.value).unwrap();
        pool.all_ips()
            .into_iter()
            .filter(|ip| ip.to_string() != taken)
            .collect()
    })
}

/// Runs ipamd on the testbed's store by hand; it must exit by itself within
/// 20 s. Returns its exit code and stderr.
fn ipamd_exits(tb: &Testbed) -> (Option<i32>, String) {
    let store = format!("redb:{}", tb.store.display());
    let mut child = Command::new("ip")
        .args(["netns", "exec", &tb.node_ns])
        .arg(&tb.bins().ipamd)
        .arg("--socket")
        .arg(&tb.socket)
        .args(["--store", &store, "--node", &tb.node, "--tor", TOR])
        .args(["--bridge", &tb.bridge])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ipamd");
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(_status) = child.try_wait().expect("wait for ipamd") {
            let out = child.wait_with_output().expect("ipamd's stderr");
            return (out.status.code(), text(&out.stderr));
        }
        if Instant::now() > until {
            let _ = child.kill();
            let out = child.wait_with_output().expect("ipamd's stderr");
            panic!(
                "ipamd on a newer store still runs after 20 s: {}",
                text(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn schema_record(tb: &Testbed) -> Option<Value> {
    with_redb(&tb.store, |s| async move {
        s.get(schema::KEY)
            .await
            .unwrap()
            .map(|e| serde_json::from_slice(&e.value).unwrap())
    })
}

#[test]
fn store_without_schema_record_is_version_one_and_newer_is_refused() {
    let tb = Testbed::new();
    tb.create_pool("web", "web", 2);
    let web0 = tb.pod(&statefulset_pod("web", 0));
    let cid = container_id();
    let ip = tb
        .moor("ADD", &web0, &cid, "1.0.0", &json!({}), None)
        .ok("ADD")
        .ip();
    tb.stop_ipamd();
    assert_eq!(
        schema_record(&tb),
        Some(json!({"version": schema::CURRENT})),
        "ipamd wrote the record"
    );

    // The store as the previous commit wrote it: no record.
    with_redb(&tb.store, |s| async move {
        let mut t = Txn::default();
        t.delete(schema::KEY);
        commit(&s, t).await;
    });
    assert_eq!(schema_record(&tb), None);
    tb.start_ipamd();
    assert!(
        tb.log_tail(20)
            .contains(&format!("store schema version {}", schema::CURRENT)),
        "ipamd logs the version: {}",
        tb.log_tail(20)
    );
    assert_clean(
        &tb.ipamctl(&["audit"]),
        "after opening a store without record",
    );
    let (_, v) = audit_json(&tb.ipamctl(&["-o", "json", "audit"]));
    assert_eq!(
        (
            &v["schema_version"],
            &v["schema_recorded"],
            &v["schema_known"]
        ),
        (
            &json!(schema::CURRENT),
            &json!(true),
            &json!(schema::CURRENT)
        ),
        "{v:#}"
    );
    // Nothing else changed: the pod still holds its IP.
    let held = tb.ip_of_container(&cid).expect("web-0 still attached");
    assert_eq!(held["address"], json!(ip.to_string()));
    tb.stop_ipamd();
    assert_eq!(
        schema_record(&tb),
        Some(json!({"version": schema::CURRENT}))
    );

    // A store a newer ipamd migrated: refused, and left as it is.
    let newer = schema::CURRENT + 1;
    with_redb(&tb.store, |s| async move {
        let mut t = Txn::default();
        t.put(schema::KEY, &json!({ "version": newer }));
        commit(&s, t).await;
    });
    let (code, stderr) = ipamd_exits(&tb);
    assert_eq!(code, Some(1), "{stderr}");
    for want in [
        format!("schema version is {newer}"),
        "this ipamd".to_string(),
        format!("knows ({})", schema::CURRENT),
        "Upgrade ipamd".to_string(),
    ] {
        assert!(stderr.contains(&want), "{want:?} in {stderr}");
    }
    assert_eq!(schema_record(&tb), Some(json!({ "version": newer })));
}

#[test]
fn etcd_ipamds_agree_on_the_schema_and_audit_finds_a_bad_count() {
    let c = Cluster::new(
        Layout::new()
            .tor("tor-a", 20)
            .node("n1", "tor-a")
            .node("n2", "tor-a"),
    );
    // Both ipamds started on an empty prefix at once: one record, the current version.
    let rec = c.etcd_list(schema::KEY);
    assert_eq!(
        rec,
        vec![(
            schema::KEY.to_string(),
            json!({ "version": schema::CURRENT })
        )],
        "{rec:?}"
    );
    c.create_pool("web", "web", 4, &["tor-a"]);
    for (i, node) in ["n1", "n2"].into_iter().enumerate() {
        let pod = c.pod(&statefulset_pod("web", i as u32));
        c.add(node, &pod, &container_id()).ok("ADD");
    }
    assert_clean(&c.ipamctl("n2", &["audit"]), "etcd after pods");
    assert!(c.audit().is_empty(), "{:#?}", c.audit());

    c.with_store(|s| async move {
        let mut t = Txn::default();
        t.put("free/web/tor-a", &json!({"total": 4, "free": 1}));
        commit(&s, t).await;
    });
    let (code, v) = audit_json(&c.ipamctl("n1", &["-o", "json", "audit"]));
    assert_eq!(code, Some(1), "{v:#}");
    assert_eq!(finding_keys(&v), ["free/web/tor-a"], "{v:#}");

    // A prefix without record (the previous commit's): the record comes
    // back when an ipamd starts.
    c.with_store(|s| async move {
        let mut t = Txn::default();
        t.delete(schema::KEY);
        commit(&s, t).await;
    });
    c.stop_ipamd("n1");
    c.start_ipamd("n1");
    assert_eq!(
        c.etcd_list(schema::KEY),
        vec![(
            schema::KEY.to_string(),
            json!({ "version": schema::CURRENT })
        )]
    );
}
