//! The duplicate-address probe (issue 4, optional, `ipamd --dad-probe-ms`):
//! an IP another host on the ToR already answers for fails the ADD with code
//! 107 naming that host's MAC, is quarantined, and comes back only with
//! `ipamctl ip release`.

use moor_e2e::names::{container_id, deployment_pod};
use moor_e2e::{Options, Testbed};
use serde_json::{json, Value};

/// `ip args...`, which must succeed; its stdout.
fn ip(args: &[&str]) -> String {
    moor_testkit::cmd::run("ip", args)
}

#[test]
fn an_ip_someone_else_answers_for_is_quarantined_not_handed_out() {
    let tb = Testbed::with(Options {
        ipamd_args: vec!["--dad-probe-ms".into(), "300".into()],
        ..Options::default()
    });
    tb.create_pool("api", "api", 2);
    let ips: Vec<String> = tb.ipamctl_json(&["pool", "export", "api", "--format", "json"])["ips"]
        .as_array()
        .expect("export lists the pool's IPs")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let (taken, other) = (&ips[0], &ips[1]);
    // The router on the ToR has the pool's first IP configured by mistake:
    // it answers ARP for it with its own MAC.
    ip(&[
        "-n",
        &tb.tor_ns,
        "addr",
        "add",
        &format!("{taken}/32"),
        "dev",
        "tor0",
    ]);
    let link: Value =
        serde_json::from_str(&ip(&["-n", &tb.tor_ns, "-j", "link", "show", "tor0"])).unwrap();
    let router_mac = link[0]["address"].as_str().unwrap().to_string();

    let pod = tb.pod(&deployment_pod("api", 1));
    let cid = container_id();
    let add = tb.moor("ADD", &pod, &cid, "1.0.0", &json!({}), None);
    assert_eq!(add.err_code("ADD of a taken IP"), 107, "{}", add.stdout);
    let msg = add.message();
    for want in [taken.as_str(), router_mac.as_str(), "ipamctl ip release"] {
        assert!(msg.contains(want), "{want:?} not in {msg}");
    }
    assert!(tb.host_links().is_empty(), "the failed ADD left a veth");
    assert!(tb.pod_links(&pod).iter().all(|l| l == "lo"));
    let shown = tb.ipamctl_json(&["ip", "show", taken]);
    assert_eq!(shown["state"], "quarantined", "{shown}");
    assert_eq!(shown["quarantine"]["mac"], router_mac.as_str(), "{shown}");

    // The runtime's retry gets the other IP, which nobody answers for.
    let retry = container_id();
    let add = tb.moor("ADD", &pod, &retry, "1.0.0", &json!({}), None);
    add.ok("retry");
    assert_eq!(
        tb.ip_of_container(&retry).unwrap()["address"],
        other.as_str()
    );

    // The operator fixes the router and lifts the quarantine.
    ip(&[
        "-n",
        &tb.tor_ns,
        "addr",
        "del",
        &format!("{taken}/32"),
        "dev",
        "tor0",
    ]);
    tb.ipamctl_json(&["ip", "release", taken]);
    assert_eq!(tb.ipamctl_json(&["ip", "show", taken])["state"], "free");
    let second = tb.pod(&deployment_pod("api", 2));
    let cid2 = container_id();
    tb.moor("ADD", &second, &cid2, "1.0.0", &json!({}), None)
        .ok("ADD after release");
    assert_eq!(
        tb.ip_of_container(&cid2).unwrap()["address"],
        taken.as_str()
    );
    for (p, c) in [(&pod, &retry), (&second, &cid2)] {
        tb.moor("DEL", p, c, "1.0.0", &json!({}), None).ok("DEL");
    }
    let bad = tb.audit();
    assert!(bad.is_empty(), "{bad:#?}");
}
