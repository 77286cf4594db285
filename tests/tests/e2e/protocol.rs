//! Done-when 1: ADD/DEL/CHECK/VERSION through the real `moor` binary against a
//! running ipamd, for each supported cniVersion; results validate against the
//! spec's result shape. Plus STATUS and GC on 1.1.0.

use moor_e2e::names::{container_id, deployment_pod, statefulset_pod};
use moor_e2e::{Options, Pod, Testbed};
use moor_proto::host_ifname;
use serde_json::{json, Value};

use crate::support::{check_add_result, check_wired, ip_entry, Attached, VERSIONS};

#[test]
fn cni_protocol_per_version() {
    // GC grace 0: GC may release an attachment as soon as it is unlisted.
    let tb = Testbed::with(Options {
        gc_grace_seconds: Some(0),
        ..Options::default()
    });
    tb.create_pool("proto", "proto", 8);

    for (i, &version) in VERSIONS.iter().enumerate() {
        let ctx = format!("cniVersion {version}");

        // VERSION echoes the asked version and lists it.
        let r = tb.moor_raw(
            &[("CNI_COMMAND", "VERSION")],
            json!({"cniVersion": version}).to_string().as_bytes(),
        );
        r.ok(&format!("VERSION {ctx}"));
        assert_eq!(r.json["cniVersion"], version, "{ctx}: {}", r.stdout);
        let supported = r.json["supportedVersions"]
            .as_array()
            .unwrap_or_else(|| panic!("supportedVersions: {}", r.stdout));
        assert!(supported.contains(&json!(version)), "{ctx}: {}", r.stdout);

        // ADD: the result's shape, and the kernel agrees with it.
        let pod = tb.pod(&statefulset_pod("proto", i as u32));
        let cid = container_id();
        let add = tb.moor("ADD", &pod, &cid, version, &json!({}), None);
        add.ok(&format!("ADD {ctx}"));
        let got = check_add_result(&tb, &pod, &cid, &add.json, version);
        if version == "1.1.0" {
            let eth0 = add.json["interfaces"]
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["name"] == "eth0")
                .unwrap();
            assert_eq!(
                eth0["mtu"], 1500,
                "{ctx}: mtu of the bridge: {}",
                add.stdout
            );
        }
        check_wired(&tb, &pod, &got);
        let host = host_ifname(&cid, "eth0");
        assert_eq!(
            tb.host_links(),
            vec![host.clone()],
            "{ctx}: one host veth end"
        );
        let entry = ip_entry(&tb, got.ip);
        assert_eq!(entry["state"], "in-use", "{ctx}: {entry}");
        assert_eq!(entry["attachment"]["container_id"], cid.as_str(), "{ctx}");
        assert_eq!(entry["attachment"]["state"], "ready", "{ctx}");
        assert_eq!(entry["pool"], "proto", "{ctx}");

        // ADD again (a runtime retrying): the same attachment.
        let again = tb.moor("ADD", &pod, &cid, version, &json!({}), None);
        again.ok(&format!("repeated ADD {ctx}"));
        assert_eq!(
            check_add_result(&tb, &pod, &cid, &again.json, version),
            got,
            "{ctx}: a repeated ADD returns the same IP"
        );

        check_and_del(&tb, &pod, &cid, version, &add.json, &got);
    }

    status_and_gc(&tb);
    let problems = tb.audit();
    assert!(problems.is_empty(), "audit: {problems:#?}");
}

/// CHECK (0.4.0+; refused on 0.3.1), then DEL three times the ways runtimes do.
fn check_and_del(tb: &Testbed, pod: &Pod, cid: &str, version: &str, add: &Value, got: &Attached) {
    let ctx = format!("cniVersion {version}");
    let with_prev = json!({ "prevResult": add });
    let check = tb.moor("CHECK", pod, cid, version, &with_prev, None);
    if version == "0.3.1" {
        // CHECK is not defined before 0.4.0: "Incompatible CNI version".
        assert_eq!(check.err_code(&ctx), 1, "{ctx}: {}", check.stdout);
        let m = check.message();
        assert!(m.contains("CHECK") && m.contains("0.4.0"), "{ctx}: {m}");
    } else {
        check.ok(&format!("CHECK {ctx}"));
        assert_eq!(check.json, Value::Null, "CHECK prints nothing on success");

        // CHECK compares: a prevResult with another IP fails...
        let mut other = add.clone();
        let wrong = std::net::Ipv4Addr::from(u32::from(got.ip) + 1);
        other["ips"][0]["address"] = json!(format!("{wrong}/24"));
        let bad = tb.moor(
            "CHECK",
            pod,
            cid,
            version,
            &json!({ "prevResult": other }),
            None,
        );
        assert_eq!(bad.err_code(&ctx), 7, "{ctx}: {}", bad.stdout);
        assert!(
            bad.message().contains(&wrong.to_string()),
            "{}",
            bad.message()
        );
        // ...and so does a pod whose address was taken away.
        if version == "1.0.0" {
            let out = std::process::Command::new("ip")
                .args(["-n", &pod.netns, "addr", "flush", "dev", "eth0"])
                .output()
                .unwrap();
            assert!(out.status.success());
            let broken = tb.moor("CHECK", pod, cid, version, &with_prev, None);
            assert_eq!(broken.err_code(&ctx), 104, "{ctx}: {}", broken.stdout);
            assert!(broken.message().contains("eth0"), "{}", broken.message());
        }
    }

    // DEL with prevResult (0.4.0+ pass it), again, and as containerd's later
    // DELs: no CNI_NETNS, no prevResult.
    let del_conf = if version == "0.3.1" {
        json!({})
    } else {
        with_prev
    };
    tb.moor("DEL", pod, cid, version, &del_conf, None)
        .ok(&format!("DEL {ctx}"));
    assert!(
        tb.host_links().is_empty(),
        "{ctx}: host veth gone: {:?}",
        tb.host_links()
    );
    assert!(
        tb.pod_links(pod).is_empty(),
        "{ctx}: eth0 gone: {:?}",
        tb.pod_links(pod)
    );
    tb.moor("DEL", pod, cid, version, &json!({}), None)
        .ok(&format!("second DEL {ctx}"));
    let mut env = tb.cni_env("DEL", pod, cid);
    for (k, v) in &mut env {
        if k == "CNI_NETNS" {
            v.clear();
        }
    }
    let conf = tb.net_conf(version, &json!({})).to_string();
    let r = tb.moor_raw(&env, conf.as_bytes());
    r.ok(&format!("DEL without netns {ctx}"));
    assert_eq!(r.json, Value::Null, "DEL prints nothing on success");

    // A StatefulSet pod keeps its IP for its next incarnation.
    let entry = ip_entry(tb, got.ip);
    assert_eq!(entry["state"], "bound", "{ctx}: {entry}");
    assert_eq!(
        entry["binding"]["name"],
        pod.name.as_str(),
        "{ctx}: {entry}"
    );
    assert!(entry["attachment"].is_null(), "{ctx}: {entry}");
    assert!(tb.host_links().is_empty(), "{ctx}: no host link after DEL");
}

fn status_and_gc(tb: &Testbed) {
    // STATUS: 1.1.0 only; ready (exit 0, no output) with free IPs.
    let r = tb.moor_raw(
        &[("CNI_COMMAND", "STATUS")],
        tb.net_conf("1.1.0", &json!({})).to_string().as_bytes(),
    );
    r.ok("STATUS 1.1.0");
    assert_eq!(r.json, Value::Null);
    let r = tb.moor_raw(
        &[("CNI_COMMAND", "STATUS")],
        tb.net_conf("1.0.0", &json!({})).to_string().as_bytes(),
    );
    assert_eq!(r.err_code("STATUS 1.0.0"), 1, "{}", r.stdout);

    // GC: the listed attachment stays, the unlisted one goes.
    let keep = tb.pod(&statefulset_pod("proto", 10));
    let drop = tb.pod(&deployment_pod("proto", 1));
    let (keep_id, drop_id) = (container_id(), container_id());
    let keep_add = tb.moor("ADD", &keep, &keep_id, "1.1.0", &json!({}), None);
    keep_add.ok("ADD keep");
    let keep_ip = check_add_result(tb, &keep, &keep_id, &keep_add.json, "1.1.0");
    let drop_add = tb.moor("ADD", &drop, &drop_id, "1.1.0", &json!({}), None);
    drop_add.ok("ADD drop");
    let drop_ip = check_add_result(tb, &drop, &drop_id, &drop_add.json, "1.1.0");
    let gc = |valid: Value, version: &str| {
        tb.moor_raw(
            &[("CNI_COMMAND", "GC")],
            tb.net_conf(version, &json!({ "cni.dev/valid-attachments": valid }))
                .to_string()
                .as_bytes(),
        )
    };
    let valid = json!([{"containerID": keep_id, "ifname": "eth0"}]);
    assert_eq!(gc(valid.clone(), "1.0.0").err_code("GC 1.0.0"), 1);
    gc(valid.clone(), "1.1.0").ok("GC");
    assert_eq!(
        tb.host_links(),
        vec![host_ifname(&keep_id, "eth0")],
        "GC removed the unlisted pod's veth only"
    );
    assert!(tb.pod_links(&drop).is_empty(), "GC'd pod lost eth0");
    assert_eq!(
        ip_entry(tb, drop_ip.ip)["state"],
        "free",
        "GC gave back the IP"
    );
    check_wired(tb, &keep, &keep_ip);
    tb.moor(
        "CHECK",
        &keep,
        &keep_id,
        "1.1.0",
        &json!({"prevResult": keep_add.json}),
        None,
    )
    .ok("CHECK of the listed pod after GC");
    // The runtime's DEL of the GC'd attachment still succeeds; GC again is a no-op.
    tb.moor("DEL", &drop, &drop_id, "1.1.0", &json!({}), None)
        .ok("DEL after GC");
    gc(valid, "1.1.0").ok("GC again");
    assert_eq!(ip_entry(tb, keep_ip.ip)["state"], "in-use");
    // And with nothing listed, the last one goes too.
    gc(json!([]), "1.1.0").ok("GC of everything");
    assert!(tb.host_links().is_empty(), "{:?}", tb.host_links());
    assert_eq!(
        ip_entry(tb, keep_ip.ip)["state"],
        "bound",
        "sts pod keeps its binding"
    );
    let c = tb.pool_counts("proto");
    assert_eq!((c.in_use, c.total), (0, 8), "{c:?}");
}

/// Issue 5: STATUS says "not ready" (code 50, with the reason) while this
/// node cannot give a pod an IP: ToR undefined, no pool on it, every pool on
/// it full, ipamd unreachable; a pool on another segment of the ToR counts.
#[test]
fn status_is_ready_only_while_the_node_can_hand_out_an_ip() {
    let tb = Testbed::with(Options {
        define_tor: false,
        ..Options::default()
    });
    let status = || {
        tb.moor_raw(
            &[("CNI_COMMAND", "STATUS")],
            tb.net_conf("1.1.0", &json!({})).to_string().as_bytes(),
        )
    };
    let not_ready = |why: &str| {
        let r = status();
        assert_eq!(r.err_code(why), 50, "{why}: {}", r.stdout);
        let msg = r.message();
        assert!(msg.contains(why), "want {why:?} in {msg}");
    };
    not_ready("not defined");
    tb.define_tor();
    not_ready("no pool has IPs on ToR rack-1");
    tb.create_pool("api", "api", 1);
    status().ok("STATUS with a free IP");

    let pod = tb.pod(&deployment_pod("api", 1));
    let cid = container_id();
    tb.moor("ADD", &pod, &cid, "1.1.0", &json!({}), None)
        .ok("ADD the pool's only IP");
    not_ready("all 1 pools with IPs on ToR rack-1 are full");

    // A second segment of the same ToR, with a pool on it: ready again.
    let out = tb.ipamctl(&[
        "tor",
        "add",
        "rack-1-db",
        "--subnet",
        "172.31.7.0/24",
        "--gateway",
        "172.31.7.1",
        "--vlan",
        "200",
        "--segment-of",
        "rack-1",
    ]);
    assert!(out.status.success(), "tor add --segment-of: {out:?}");
    let out = tb.ipamctl(&[
        "pool",
        "create",
        "db",
        "--namespace",
        "shop",
        "--app",
        "db",
        "--size",
        "2",
        "--tor",
        "rack-1-db",
    ]);
    assert!(out.status.success(), "pool create on the segment: {out:?}");
    status().ok("STATUS with free IPs on another segment of the ToR");

    tb.stop_ipamd();
    let r = status();
    assert_eq!(r.err_code("STATUS with ipamd down"), 50, "{}", r.stdout);
    assert!(
        r.message().contains(&tb.socket.display().to_string()),
        "{}",
        r.message()
    );
}
