//! Property fuzzing (issue 15) of what moor_proto parses: the pending-DEL
//! record files ipamd replays, and the shared field rules every entry point
//! (plugin, CLI, daemon) checks input with. See fuzz/harness.rs.

#[path = "../../fuzz/harness.rs"]
mod harness;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use moor_proto::{fields, pending};
use proptest::prelude::*;

/// A fresh directory per case, under the system temp dir, removed after.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("moor-fuzz-pending-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A record file as the plugin would have left it (or a torn, edited or
/// foreign one): `scan` reads it as ipamd does at start and on each replay.
#[test]
fn pending_del() {
    harness::run(
        "pending_del",
        harness::json_inputs("pending_del"),
        |input| {
            let dir = Dir::new();
            let path = dir.0.join("c1-eth0.json");
            std::fs::write(&path, input).unwrap();
            let scan = pending::scan(&dir.0).expect("a readable directory scans");
            assert_eq!(scan.records.len() + scan.skipped.len(), 1);
            if let Some((p, rec)) = scan.records.first() {
                assert_eq!(p, &path);
                assert!(
                    harness::is_json(input),
                    "accepted a record that is not JSON"
                );
                assert!(!rec.container_id.is_empty() && !rec.ifname.is_empty());
                // What was read encodes and decodes the same, and its DEL's
                // record path stays inside the directory whatever the ids hold.
                let bytes = serde_json::to_vec(rec).unwrap();
                assert_eq!(
                    &serde_json::from_slice::<pending::PendingDel>(&bytes).unwrap(),
                    rec
                );
                let own = pending::path_for(&dir.0, &rec.container_id, &rec.ifname);
                assert_eq!(own.parent(), Some(dir.0.as_path()));
            }
        },
    );
}

/// The input is "RULE\nVALUE": one field rule and the value it checks.
fn field_inputs() -> impl Strategy<Value = Vec<u8>> {
    let rule = prop::sample::select(vec![
        "container_id",
        "network_name",
        "ifname",
        "namespace",
        "pod_name",
        "app",
        "pool_name",
        "tor_name",
        "vlan",
        "pool_size",
    ]);
    let value = prop_oneof![
        harness::odd_string(),
        any::<u32>().prop_map(|n| n.to_string()),
        "[a-z0-9]([a-z0-9.-]{0,70}[a-z0-9])?",
    ];
    prop_oneof![
        6 => (rule, value).prop_map(|(r, v)| format!("{r}\n{v}").into_bytes()),
        1 => harness::bytes(),
    ]
}

#[test]
fn field_rules() {
    harness::run("field_rules", field_inputs(), |input| {
        let text = String::from_utf8_lossy(input);
        let Some((rule, value)) = text.split_once('\n') else {
            return;
        };
        let number = value.parse::<u32>();
        let outcome = match rule {
            "container_id" => fields::container_id("f", value),
            "network_name" => fields::network_name("f", value),
            "ifname" => fields::ifname("f", value),
            "namespace" => fields::namespace("f", value),
            "pod_name" => fields::pod_name("f", value),
            "app" => fields::app("f", value),
            "pool_name" => fields::pool_name("f", value),
            "tor_name" => fields::tor_name("f", value),
            "vlan" => match number {
                Ok(n) => fields::vlan("f", n).map(|v| assert!((1..=4094).contains(&v))),
                Err(_) => return,
            },
            "pool_size" => match number {
                Ok(n) => fields::pool_size("f", n).map(|s| assert!((1..=65535).contains(&s))),
                Err(_) => return,
            },
            _ => return,
        };
        match outcome {
            Ok(()) => {
                // Every name rule refuses the empty string, separators
                // and control characters.
                if !matches!(rule, "vlan" | "pool_size") {
                    assert!(!value.is_empty());
                    assert!(!value
                        .chars()
                        .any(|c| c == '/' || c.is_whitespace() || c.is_control()));
                }
                if matches!(rule, "namespace" | "pool_name" | "tor_name") {
                    assert!(value.len() <= 63, "a DNS label of {} bytes", value.len());
                }
                if rule == "ifname" {
                    assert!(value.len() <= 15 && value != "." && value != "..");
                }
            }
            Err(e) => {
                // The error names the field and says how to fix it.
                assert_eq!(e.field, "f");
                assert!(!e.reason().is_empty() && !e.to_string().is_empty());
            }
        }
    });
}
