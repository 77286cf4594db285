//! Property fuzzing of what the plugin parses (issue 15): the network config
//! on stdin, the CNI environment, CNI_ARGS and prevResult. See
//! fuzz/harness.rs; `scripts/fuzz` runs these with 100,000 cases each.
//!
//! The plugin is a binary crate: its parsing modules are compiled in here
//! from its sources, as they are into `moor`.

#[allow(dead_code)]
#[path = "../src/config.rs"]
mod config;
#[allow(dead_code)]
#[path = "../src/env.rs"]
mod env;
#[allow(dead_code)]
#[path = "../src/error.rs"]
mod error;
#[path = "../../fuzz/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "../src/result.rs"]
mod result;
#[allow(dead_code)]
#[path = "../src/version.rs"]
mod version;

use std::collections::BTreeMap;

use moor_proto::fields;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use crate::config::NetConf;
use crate::env::{Attachment, Command};
use crate::error::CniError;

/// The error a runtime would print: JSON with the spec's keys.
fn printable(e: &CniError) {
    let out: Value = serde_json::from_str(&e.to_json("1.0.0")).expect("the error is JSON");
    assert!(out["code"].is_u64() && out["msg"].is_string(), "{out}");
}

#[test]
fn cni_config() {
    harness::run("cni_config", harness::json_inputs("cni_config"), |input| {
        let map = match config::decode(input) {
            Ok(map) => map,
            Err(e) => return printable(&e),
        };
        assert!(harness::is_json(input), "decode accepted non-JSON");
        let conf = match NetConf::from_json(&map) {
            Ok(conf) => conf,
            Err(e) => return printable(&e),
        };
        // What was accepted holds to the rules the fields have.
        version::CniVersion::parse(&conf.cni_version).expect("a supported version");
        assert_eq!(map["cniVersion"], Value::String(conf.cni_version.clone()));
        fields::network_name("name", &conf.name).expect("a valid network name");
        assert!(conf.socket.is_absolute() && conf.pending_dir.is_absolute());
        assert!(conf.log_file.as_ref().is_none_or(|p| p.is_absolute()));
        let ms = conf.timeout.as_millis();
        assert!((1..=600_000).contains(&ms), "timeout {ms} ms");
        for (cid, ifname) in conf.valid_attachments.iter().flatten() {
            assert!(!cid.is_empty() && !ifname.is_empty());
        }
        if let Err(e) = conf.check_pool() {
            printable(&e);
        }
    });
}

/// The environment, given as a JSON object of variables.
fn lookup_in(input: &[u8]) -> BTreeMap<String, String> {
    match serde_json::from_slice::<Value>(input) {
        Ok(Value::Object(m)) => m
            .into_iter()
            .filter_map(|(k, v)| match v {
                Value::String(s) => Some((k, s)),
                _ => None,
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

#[test]
fn cni_env() {
    harness::run("cni_env", harness::json_inputs("cni_env"), |input| {
        let vars = lookup_in(input);
        let lookup = |k: &str| vars.get(k).cloned();
        let cmd = match Command::from_env(lookup) {
            Ok(cmd) => cmd,
            Err(e) => return printable(&e),
        };
        assert_eq!(
            Some(cmd.name()),
            vars.get("CNI_COMMAND").map(String::as_str)
        );
        match Attachment::from_env(cmd, lookup) {
            Ok(att) => {
                fields::container_id("CNI_CONTAINERID", &att.container_id).expect("valid id");
                fields::ifname("CNI_IFNAME", &att.ifname).expect("valid ifname");
                assert!(!att.netns.is_empty() || cmd == Command::Del);
            }
            Err(e) => printable(&e),
        }
    });
}

fn cni_args_inputs() -> impl Strategy<Value = Vec<u8>> {
    let key = prop_oneof![
        4 => prop::sample::select(vec![
            "K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_UID", "K8S_POD_INFRA_CONTAINER_ID",
            "MOOR_POOL", "IgnoreUnknown", "ignoreunknown", "X", "",
        ])
        .prop_map(str::to_string),
        1 => harness::odd_string(),
    ];
    let value = prop_oneof![
        2 => prop::sample::select(vec!["1", "true", "TRUE", "0", "false", "", "web", "a=b"])
            .prop_map(str::to_string),
        2 => harness::odd_string(),
    ];
    let pair = (key, prop::option::weighted(0.9, value)).prop_map(|(k, v)| match v {
        Some(v) => format!("{k}={v}"),
        None => k,
    });
    prop_oneof![
        4 => prop::collection::vec(pair, 0..8).prop_map(|p| p.join(";").into_bytes()),
        1 => harness::bytes(),
    ]
}

#[test]
fn cni_args() {
    harness::run("cni_args", cni_args_inputs(), |input| {
        let raw = String::from_utf8_lossy(input);
        match env::parse_cni_args(&raw) {
            Ok(args) => {
                // Accepted: every pair had a key and a value.
                for pair in raw.split(';').filter(|p| !p.is_empty()) {
                    assert!(pair.split_once('=').is_some_and(|(k, _)| !k.is_empty()));
                }
                assert!(args.pool.as_ref().is_none_or(|p| !p.is_empty()));
                if let Err(e) = args.check_for_add() {
                    printable(&e);
                }
            }
            Err(e) => printable(&e),
        }
    });
}

/// Our own result, as the plugin builds it, to merge into a prevResult.
fn ours() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}],
        "ips": [{"address": "10.0.0.2/24", "gateway": "10.0.0.1", "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {},
    })
}

fn array_len(m: &Map<String, Value>, key: &str) -> usize {
    m.get(key).and_then(Value::as_array).map_or(0, Vec::len)
}

#[test]
fn cni_prev_result() {
    harness::run(
        "cni_prev_result",
        harness::json_inputs("cni_prev_result"),
        |input| {
            let Ok(Value::Object(prev)) = serde_json::from_slice::<Value>(input) else {
                return;
            };
            let _ = result::check_address(&prev, "eth0");
            let merged = result::merge_into_prev(&prev, ours(), "1.0.0");
            let merged = merged.as_object().expect("the merged result is an object");
            assert_eq!(merged["cniVersion"], "1.0.0");
            let interfaces = array_len(&prev, "interfaces");
            assert_eq!(array_len(merged, "interfaces"), interfaces + 1);
            assert_eq!(array_len(merged, "ips"), array_len(&prev, "ips") + 1);
            // Our IP points at our interface, after the earlier plugins' ones.
            let ip = merged["ips"].as_array().unwrap().last().unwrap();
            assert_eq!(ip["interface"], json!(interfaces));
        },
    );
}
