//! The binary on its own: VERSION, input errors, and what ADD, DEL and
//! STATUS do when nothing listens on ipamd's socket.

mod common;

use common::{config, container_id, moor, temp_dir};
use moor_proto::pending;
use serde_json::json;
use std::time::Duration;

#[test]
fn version_works_standalone() {
    let r = moor(&[("CNI_COMMAND", "VERSION")], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.json(),
        json!({"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
    let r = moor(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.4.0"}"#);
    assert_eq!(r.code, 0);
    assert_eq!(r.json()["cniVersion"], "0.4.0");
    assert!(r.stderr.is_empty(), "{}", r.stderr);
}

#[test]
fn add_without_ipamd_is_try_again_later_and_quick() {
    let dir = temp_dir("add");
    let sock = dir.join("ipamd.sock");
    let cid = container_id("add");
    let r = moor(
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", &cid),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/var/run/netns/nothing"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=db;K8S_POD_NAME=mysql-0",
            ),
            ("CNI_PATH", "/opt/cni/bin"),
        ],
        &config("1.0.0", &sock),
    );
    assert_ne!(r.code, 0);
    let e = r.json();
    assert_eq!(e["code"], 11, "{e}");
    assert_eq!(e["cniVersion"], "1.0.0");
    let details = e["details"].as_str().unwrap();
    assert!(details.contains(sock.to_str().unwrap()), "{details}");
    assert!(details.contains("not running"), "{details}");
    assert!(r.took < Duration::from_secs(3), "took {:?}", r.took);
    // Nothing but the error on stdout; the log line went to stderr.
    assert_eq!(r.stdout.lines().count(), 1);
    assert!(r.stderr.contains("ADD failed"), "{}", r.stderr);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// ADD refuses values outside the shared field rules (moor_proto::fields)
/// itself, before any connection: code 4 naming the CNI_ARGS key, the value
/// and the fix. DEL with the same arguments still succeeds: it finds the
/// attachment by container id and ifname, and a teardown never fails over a
/// name.
#[test]
fn add_refuses_bad_names_before_asking_ipamd_and_del_does_not_care() {
    let dir = temp_dir("names");
    let sock = dir.join("ipamd.sock");
    let cid = container_id("names");
    // (CNI_ARGS, words of the error)
    let cases: &[(&str, &[&str])] = &[
        (
            "K8S_POD_NAMESPACE=db;K8S_POD_NAME=My_App-0",
            &["K8S_POD_NAME in CNI_ARGS", "\"My_App-0\"", "e.g. my-app-0"],
        ),
        (
            "K8S_POD_NAMESPACE=Db;K8S_POD_NAME=mysql-0",
            &["K8S_POD_NAMESPACE in CNI_ARGS", "\"Db\"", "e.g. db"],
        ),
        (
            "K8S_POD_NAMESPACE=db;K8S_POD_NAME=mysql-0;MOOR_POOL=my.pool",
            &["MOOR_POOL in CNI_ARGS", "\"my.pool\"", "e.g. my-pool"],
        ),
    ];
    for (args, words) in cases {
        let env = |cmd| {
            [
                ("CNI_COMMAND", cmd),
                ("CNI_CONTAINERID", cid.as_str()),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", "/var/run/netns/nothing"),
                ("CNI_ARGS", *args),
            ]
        };
        let r = moor(&env("ADD"), &config("1.0.0", &sock));
        let e = r.json();
        assert_eq!(e["code"], 4, "{args}: {e}");
        let text = format!(
            "{} {}",
            e["msg"].as_str().unwrap_or(""),
            e["details"].as_str().unwrap_or("")
        );
        for w in *words {
            assert!(text.contains(w), "{args}: {text} lacks {w:?}");
        }
        assert!(
            !text.contains("not running"),
            "{args}: ipamd was asked: {text}"
        );
        let r = moor(&env("DEL"), &config("1.0.0", &sock));
        assert_eq!(r.code, 0, "{args}: DEL {}", r.stdout);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn del_without_ipamd_succeeds_and_leaves_a_pending_record() {
    let dir = temp_dir("del");
    let sock = dir.join("ipamd.sock");
    let cid = container_id("del");
    let env = [
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", cid.as_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", "/var/run/netns/gone"),
        (
            "CNI_ARGS",
            "K8S_POD_NAMESPACE=db;K8S_POD_NAME=mysql-0;K8S_POD_UID=u1",
        ),
    ];
    let r = moor(&env, &config("0.4.0", &sock));
    assert_eq!(r.code, 0, "stdout {} stderr {}", r.stdout, r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);

    let pending_dir = dir.join("ipamd.sock.pending");
    let records = pending::read_all(&pending_dir).unwrap();
    assert_eq!(records.len(), 1);
    let (path, rec) = &records[0];
    assert_eq!(*path, pending::path_for(&pending_dir, &cid, "eth0"));
    assert_eq!(rec.container_id, cid);
    assert_eq!(rec.ifname, "eth0");
    assert_eq!(rec.netns, "/var/run/netns/gone");
    assert_eq!(rec.pod_namespace, "db");
    assert_eq!(rec.pod_name, "mysql-0");
    assert_eq!(rec.network, "moor-test");
    assert!(rec.written_unix > 1_600_000_000);

    // containerd's later DELs: no netns, no prevResult. Still success, and
    // still one record.
    let mut env = env;
    env[3] = ("CNI_NETNS", "");
    let r = moor(&env, &config("0.4.0", &sock));
    assert_eq!(r.code, 0, "{}", r.stdout);
    let records = pending::read_all(&pending_dir).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].1.netns, "");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn del_uses_the_configured_pending_dir() {
    let dir = temp_dir("delpd");
    let cid = container_id("delpd");
    let pending_dir = dir.join("elsewhere");
    let conf = json!({
        "cniVersion": "1.1.0", "name": "moor-test", "type": "moor",
        "socket": dir.join("ipamd.sock"), "pendingDir": pending_dir,
        "prevResult": {"cniVersion": "1.1.0", "ips": [{"address": "10.0.0.5/24"}]},
    });
    let r = moor(
        &[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", &cid),
            ("CNI_IFNAME", "net1"),
        ],
        &conf.to_string(),
    );
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert_eq!(pending::read_all(&pending_dir).unwrap().len(), 1);
    assert!(!dir.join("ipamd.sock.pending").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn status_without_ipamd_is_not_available() {
    let dir = temp_dir("status");
    let sock = dir.join("ipamd.sock");
    let r = moor(&[("CNI_COMMAND", "STATUS")], &config("1.1.0", &sock));
    assert_ne!(r.code, 0);
    let e = r.json();
    assert_eq!(e["code"], 50);
    assert!(e["details"]
        .as_str()
        .unwrap()
        .contains(sock.to_str().unwrap()));
    // STATUS is a 1.1.0 command.
    let r = moor(&[("CNI_COMMAND", "STATUS")], &config("1.0.0", &sock));
    assert_eq!(r.json()["code"], 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Bad input is reported on stdout as a CNI error, with its code, and
/// nothing is created.
#[test]
fn bad_input_codes() {
    let dir = temp_dir("bad");
    let sock = dir.join("ipamd.sock");
    let good = config("1.0.0", &sock);
    // (environment, stdin, expected code, what the error must name)
    type Case<'a> = (Vec<(&'a str, &'a str)>, String, u32, &'a str);
    let cases: Vec<Case> = vec![
        (vec![], good.clone(), 4, "CNI_COMMAND"),
        (
            vec![("CNI_COMMAND", "FROB")],
            good.clone(),
            4,
            "CNI_COMMAND",
        ),
        (vec![("CNI_COMMAND", "ADD")], "{not json".into(), 6, "JSON"),
        (
            vec![("CNI_COMMAND", "ADD")],
            r#"{"cniVersion":"0.2.0","name":"n"}"#.into(),
            1,
            "0.2.0",
        ),
        (
            vec![("CNI_COMMAND", "ADD")],
            r#"{"cniVersion":"1.0.0","name":"n","timeoutMs":"soon"}"#.into(),
            7,
            "timeoutMs",
        ),
        (
            vec![("CNI_COMMAND", "DEL")],
            good.clone(),
            4,
            "CNI_CONTAINERID",
        ),
        (
            vec![
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "a-very-long-name0"),
            ],
            good.clone(),
            4,
            "CNI_IFNAME",
        ),
    ];
    for (env, stdin, want, needle) in cases {
        let r = moor(&env, &stdin);
        assert_ne!(r.code, 0, "{env:?}");
        let e = r.json();
        assert_eq!(e["code"], want, "{env:?} {stdin}: {e}");
        assert!(e.to_string().contains(needle), "{e} lacks {needle}");
    }
    assert!(!dir.join("ipamd.sock.pending").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn logs_go_to_the_log_file_when_set() {
    let dir = temp_dir("logfile");
    let log = dir.join("moor.log");
    let conf = json!({
        "cniVersion": "1.0.0", "name": "moor-test",
        "socket": dir.join("ipamd.sock"), "logFile": log,
    });
    let cid = container_id("log");
    let r = moor(
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", &cid),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/ns"),
        ],
        &conf.to_string(),
    );
    assert_eq!(r.json()["code"], 11);
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("ADD failed") && logged.contains(&cid),
        "{logged}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
