//! Property fuzzing (issue 15) of ipamctl's command line: clap's parsing
//! and the checks (`validate`) it runs before any RPC. The real binary is
//! run, with no ipamd behind its socket: whatever the arguments, it exits
//! 0 (help, version), 1 (a well-formed command that cannot reach ipamd) or
//! 2 (bad input, with a message), and never panics. See fuzz/harness.rs.
//!
//! An input is a JSON array of the arguments. `ui` (a web server) and
//! `watch` (retries until ipamd is back) are long-running by design: they
//! are swapped for `get` so a case ends.

#[path = "../../fuzz/harness.rs"]
mod harness;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::Value;

fn args_inputs() -> impl Strategy<Value = Vec<u8>> {
    let path = prop::sample::select(vec![
        "tor add",
        "tor list",
        "tor get",
        "tor delete",
        "pool create",
        "pool resize",
        "pool list",
        "pool get",
        "pool delete",
        "pool export",
        "ip list",
        "ip get",
        "ip release",
        "ip evict",
        "binding add",
        "binding list",
        "node list",
        "audit",
        "gc",
        "",
    ]);
    let flag = prop::sample::select(vec![
        "--subnet",
        "--gateway",
        "--subnet6",
        "--gateway6",
        "--vlan",
        "--range",
        "--segment-of",
        "--namespace",
        "--app",
        "--size",
        "--tor",
        "--policy",
        "--ip",
        "--family",
        "--allow-namespace",
        "--format",
        "--force",
        "--delete-pod",
        "--dry-run",
        "-o",
        "--output",
        "--socket",
        "--",
        "-",
    ]);
    let value = prop_oneof![
        3 => prop::sample::select(vec![
            "r1", "web", "default", "10.1.0.0/24", "10.1.0.1", "10.1.0.10-10.1.0.20",
            "10.1.0.20-10.1.0.10", "fd00::/64", "fd00::1", "0", "4094", "4095", "65536",
            "-1", "99999999999999999999", "auto", "sticky", "release", "ipv4", "ipv6", "dual",
            "json", "table", "csv", "default/web-0", "*", "",
        ])
        .prop_map(str::to_string),
        2 => harness::odd_string(),
    ];
    let word = prop_oneof![
        2 => flag.prop_map(str::to_string),
        3 => value,
    ];
    prop_oneof![
        6 => (path, prop::collection::vec(word, 0..8)).prop_map(|(p, rest)| {
            let mut args: Vec<String> = p.split_whitespace().map(str::to_string).collect();
            args.extend(rest);
            serde_json::to_vec(&args).unwrap()
        }),
        1 => prop::collection::vec(harness::odd_string(), 0..6)
            .prop_map(|a| serde_json::to_vec(&a).unwrap()),
    ]
}

#[test]
fn ipamctl_args() {
    let dir = moor_testkit::TempDir::new("moor-fuzz-ipamctl");
    let socket = dir.path().join("no-ipamd.sock");
    harness::run("ipamctl_args", args_inputs(), |input| {
        let Ok(Value::Array(words)) = serde_json::from_slice::<Value>(input) else {
            return;
        };
        let args: Vec<String> = words
            .iter()
            .filter_map(Value::as_str)
            // A NUL cannot be passed in an argv string.
            .map(|w| match w.replace('\0', "") {
                w if w == "ui" || w == "watch" => "get".to_string(),
                w => w,
            })
            .collect();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ipamctl"))
            .args(&args)
            .env("MOOR_SOCKET", &socket)
            .env("HOME", dir.path())
            .env("KUBECONFIG", dir.path().join("no-kubeconfig"))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("ipamctl {args:?} still running after 20 s");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked"),
            "ipamctl {args:?} panicked: {stderr}"
        );
        match out.status.code() {
            Some(0 | 1) => {}
            Some(2) => assert!(!stderr.trim().is_empty(), "exit 2 without a message"),
            other => panic!("ipamctl {args:?} exited {other:?}: {stderr}"),
        }
    });
}
