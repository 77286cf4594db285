//! Issue 13 on one node (netns topology, embedded store):
//! 1. `dual_stack_pods_per_cni_version`: on a dual-stack ToR, pods of every
//!    cniVersion get results with both IPs (spec shape, `version` before
//!    1.0.0), both addresses are usable (not tentative) when ADD returns,
//!    and they reach both gateways and each other over IPv4 and IPv6; CHECK
//!    and DEL per version.
//! 2. `sticky_dual_stack_pod_gets_both_ips_and_its_mac_back`: deleted and
//!    re-created, a StatefulSet pod gets both IPs and the same MAC back;
//!    `ip show` by its IPv6 address and `pool export` name both.
//! 3. `ipv6_only_pods_reach_the_gateway_and_each_other`: an IPv6-only ToR.
//! 4. `dad_probe_quarantines_an_ipv6_address_in_use`: `--dad-probe-ms`
//!    fails the ADD with code 107 when another host answers for the pod's
//!    IPv6 address, quarantines the pair, and the retry gets the next one.

use std::net::{IpAddr, Ipv6Addr};

use moor_e2e::names::{container_id, deployment_pod, statefulset_pod};
use moor_e2e::{Families, Options, Pod, Testbed};
use moor_testkit::netns::pings;
use serde_json::{json, Value};

use crate::support::{binding_of, check_add_result, check_wired, VERSIONS};

fn dual() -> Testbed {
    Testbed::with(Options {
        families: Families::Dual,
        ..Options::default()
    })
}

/// `ip -n NETNS args...`, which must succeed; its stdout.
fn ip_in(netns: &str, args: &[&str]) -> String {
    let mut all = vec!["-n", netns];
    all.extend_from_slice(args);
    moor_testkit::cmd::run("ip", &all)
}

/// The pod's global IPv6 addresses on eth0 and their flags.
fn ipv6_on_eth0(pod: &Pod) -> Vec<(Ipv6Addr, Vec<String>)> {
    let v: Value = serde_json::from_str(&ip_in(
        &pod.netns,
        &["-6", "-j", "addr", "show", "dev", "eth0"],
    ))
    .expect("ip -j addr is JSON");
    let mut out = Vec::new();
    for a in v[0]["addr_info"].as_array().into_iter().flatten() {
        if a["scope"] != "global" {
            continue;
        }
        let addr: Ipv6Addr = a["local"].as_str().unwrap().parse().unwrap();
        // iproute2 prints flags as keys ("tentative": true, "nodad": true).
        let flags = a
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, v)| **v == json!(true))
            .map(|(k, _)| k.clone())
            .collect();
        out.push((addr, flags));
    }
    out
}

fn assert_reaches(pod: &Pod, to: impl Into<IpAddr>, what: &str) {
    let to = to.into();
    assert!(
        (0..3).any(|_| pings(&pod.netns, to)),
        "{what}: {} does not reach {to}",
        pod.name
    );
}

#[test]
fn dual_stack_pods_per_cni_version() {
    let tb = dual();
    tb.create_pool("proto", "proto", 8);
    let pool = tb.ipamctl_json(&["pool", "show", "proto"]);
    assert_eq!(
        pool["family"], "dual",
        "the default on a dual-stack ToR: {pool}"
    );
    let mut live: Vec<(Pod, String, IpAddr, Ipv6Addr)> = Vec::new();
    for (i, &version) in VERSIONS.iter().enumerate() {
        let ctx = format!("cniVersion {version}");
        let pod = tb.pod(&statefulset_pod("proto", i as u32));
        let cid = container_id();
        let add = tb.moor("ADD", &pod, &cid, version, &json!({}), None);
        add.ok(&format!("ADD {ctx}"));
        let got = check_add_result(&tb, &pod, &cid, &add.json, version);
        // Usable when ADD returns: present, not tentative, not failed.
        let ip6 = got.ip6.expect("a dual-stack result");
        let on = ipv6_on_eth0(&pod);
        assert_eq!(on.len(), 1, "{ctx}: one global IPv6 address: {on:?}");
        assert_eq!(on[0].0, ip6, "{ctx}");
        assert!(
            !on[0].1.iter().any(|f| f == "tentative" || f == "dadfailed"),
            "{ctx}: {ip6} is {:?} when ADD returned",
            on[0].1
        );
        check_wired(&tb, &pod, &got);
        let accept_ra = moor_testkit::cmd::run(
            "ip",
            &[
                "netns",
                "exec",
                &pod.netns,
                "cat",
                "/proc/sys/net/ipv6/conf/eth0/accept_ra",
            ],
        );
        assert_eq!(
            accept_ra.trim(),
            "0",
            "{ctx}: no SLAAC beside moor's address"
        );
        let route6 = ip_in(&pod.netns, &["-6", "route", "show", "default"]);
        assert!(
            route6.contains(&format!("via {}", tb.gateway6)),
            "{ctx}: IPv6 default route: {route6}"
        );
        // The partner: what ipamctl pairs with the IPv4 address.
        let shown = tb.ipamctl_json(&["ip", "show", &got.ip.to_string()]);
        assert_eq!(
            shown["address6"],
            ip6.to_string().as_str(),
            "{ctx}: {shown}"
        );
        assert_reaches(&pod, tb.gateway, &ctx);
        assert_reaches(&pod, tb.gateway6, &ctx);
        // CHECK with the result as prevResult (0.4.0 on).
        if version != "0.3.1" {
            let check = tb.moor(
                "CHECK",
                &pod,
                &cid,
                version,
                &json!({"prevResult": add.json}),
                None,
            );
            check.ok(&format!("CHECK {ctx}"));
        }
        live.push((pod, cid, IpAddr::V4(got.ip), ip6));
    }
    // Every pod reaches every other over both families.
    for (a, _, _, _) in &live {
        for (b, _, ip4, ip6) in &live {
            if a.name != b.name {
                assert_reaches(a, *ip4, "pod to pod over IPv4");
                assert_reaches(a, *ip6, "pod to pod over IPv6");
            }
        }
    }
    for ((pod, cid, _, _), version) in live.iter().zip(VERSIONS) {
        tb.moor("DEL", pod, cid, version, &json!({}), None)
            .ok("DEL");
        assert!(tb.pod_links(pod).is_empty(), "DEL removed eth0");
    }
    let bad = tb.audit();
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn sticky_dual_stack_pod_gets_both_ips_and_its_mac_back() {
    let tb = dual();
    tb.create_pool("db", "db", 4);
    let pod = tb.pod(&statefulset_pod("db", 0));
    let cid = container_id();
    let first = tb.moor("ADD", &pod, &cid, "1.1.0", &json!({}), None);
    first.ok("first ADD");
    let got = check_add_result(&tb, &pod, &cid, &first.json, "1.1.0");
    tb.moor("DEL", &pod, &cid, "1.1.0", &json!({}), None)
        .ok("DEL");
    tb.remove_pod(&pod);

    let again = tb.pod(&statefulset_pod("db", 0));
    let cid2 = container_id();
    let second = tb.moor("ADD", &again, &cid2, "1.1.0", &json!({}), None);
    second.ok("re-created");
    let back = check_add_result(&tb, &again, &cid2, &second.json, "1.1.0");
    assert_eq!(back, got, "both IPs and the MAC come back");
    check_wired(&tb, &again, &back);

    // Either address names the IP; export lists both families.
    let ip6 = back.ip6.unwrap().to_string();
    let shown = tb.ipamctl_json(&["ip", "show", &ip6]);
    assert_eq!(shown["address"], back.ip.to_string().as_str(), "{shown}");
    assert_eq!(shown["state"], "in-use", "{shown}");
    let export = tb.ipamctl_json(&["pool", "export", "db", "--format", "json"]);
    let (ips, ips6) = (
        export["ips"].as_array().unwrap(),
        export["ips6"].as_array().unwrap(),
    );
    assert_eq!((ips.len(), ips6.len()), (4, 4), "{export}");
    let at = ips
        .iter()
        .position(|i| *i == back.ip.to_string().as_str())
        .unwrap();
    assert_eq!(
        ips6[at],
        ip6.as_str(),
        "the partner in the same place: {export}"
    );
    // A binding made by a free pair's IPv6 address keeps the pair; the
    // reply and `binding list` name both halves.
    let free = (at + 1) % ips.len();
    let target = format!("{}/db-3", again.namespace);
    let bound = tb.ipamctl_json(&["binding", "add", &target, ips6[free].as_str().unwrap()]);
    let bound = &bound[0];
    assert_eq!(
        (&bound["address"], &bound["address6"]),
        (&ips[free], &ips6[free]),
        "{bound}"
    );
    let listed = binding_of(&tb, &["binding", "list", "--pool", "db"], "db-3");
    assert_eq!(listed["address6"], ips6[free], "{listed}");
    tb.moor("DEL", &again, &cid2, "1.1.0", &json!({}), None)
        .ok("DEL");
    let bad = tb.audit();
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn ipv6_only_pods_reach_the_gateway_and_each_other() {
    let tb = Testbed::with(Options {
        families: Families::Ipv6,
        ..Options::default()
    });
    tb.create_pool("api", "api", 4);
    let pool = tb.ipamctl_json(&["pool", "show", "api"]);
    assert_eq!(pool["family"], "ipv6", "{pool}");
    let mut live = Vec::new();
    for n in 0..2 {
        let pod = tb.pod(&deployment_pod("api", n));
        let cid = container_id();
        let add = tb.moor("ADD", &pod, &cid, "0.4.0", &json!({}), None);
        add.ok("ADD");
        let ips = add.json["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 1, "one IP: {}", add.stdout);
        assert_eq!(ips[0]["version"], "6", "{}", add.stdout);
        assert_eq!(ips[0]["gateway"], tb.gateway6.to_string().as_str());
        assert!(
            add.json["routes"]
                .as_array()
                .unwrap()
                .contains(&json!({"dst": "::/0", "gw": tb.gateway6.to_string()})),
            "{}",
            add.stdout
        );
        let ip6 = add.ip6().expect("an IPv6 address");
        let on = ipv6_on_eth0(&pod);
        assert_eq!(on.len(), 1, "{on:?}");
        assert_eq!(on[0].0, ip6);
        assert!(!on[0].1.iter().any(|f| f == "tentative"), "{on:?}");
        // The MAC comes from the IPv6 address.
        let mac = moor_proto::format_mac(&moor_proto::mac_for_ip(IpAddr::V6(ip6)));
        let eth0 = add.json["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == "eth0")
            .unwrap()
            .clone();
        assert_eq!(eth0["mac"], mac.as_str(), "{}", add.stdout);
        assert!(mac.starts_with("0a:59:"), "{mac}");
        assert!(
            tb.pod_addr(&pod, "eth0").is_none(),
            "no IPv4 address on eth0"
        );
        assert_reaches(&pod, tb.gateway6, "IPv6-only pod");
        live.push((pod, cid, ip6));
    }
    assert_reaches(&live[0].0, live[1].2, "pod to pod");
    assert_reaches(&live[1].0, live[0].2, "pod to pod");
    for (pod, cid, _) in &live {
        tb.moor("DEL", pod, cid, "0.4.0", &json!({}), None)
            .ok("DEL");
    }
    let bad = tb.audit();
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn dad_probe_quarantines_an_ipv6_address_in_use() {
    let tb = Testbed::with(Options {
        families: Families::Dual,
        ipamd_args: vec!["--dad-probe-ms".into(), "300".into()],
        ..Options::default()
    });
    tb.create_pool("api", "api", 2);
    let export = tb.ipamctl_json(&["pool", "export", "api", "--format", "json"]);
    let ips6: Vec<String> = export["ips6"]
        .as_array()
        .expect("a dual-stack export")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let ips: Vec<String> = export["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    // The router has the first pair's IPv6 address by mistake (its IPv4
    // one is free): it answers the probe's neighbour solicitation.
    let taken6 = &ips6[0];
    ip_in(
        &tb.tor_ns,
        &[
            "addr",
            "add",
            &format!("{taken6}/128"),
            "dev",
            "tor0",
            "nodad",
        ],
    );
    let link: Value =
        serde_json::from_str(&ip_in(&tb.tor_ns, &["-j", "link", "show", "tor0"])).unwrap();
    let router_mac = link[0]["address"].as_str().unwrap().to_string();

    let pod = tb.pod(&deployment_pod("api", 1));
    let add = tb.moor("ADD", &pod, &container_id(), "1.0.0", &json!({}), None);
    assert_eq!(
        add.err_code("ADD of a taken IPv6 address"),
        107,
        "{}",
        add.stdout
    );
    let msg = add.message();
    for want in [taken6.as_str(), router_mac.as_str(), "ipamctl ip release"] {
        assert!(msg.contains(want), "{want:?} not in {msg}");
    }
    assert!(tb.host_links().is_empty(), "the failed ADD left a veth");
    // The pair is quarantined, shown by either address.
    let shown = tb.ipamctl_json(&["ip", "show", taken6]);
    assert_eq!(shown["address"], ips[0].as_str(), "{shown}");
    assert_eq!(shown["state"], "quarantined", "{shown}");
    assert_eq!(shown["quarantine"]["mac"], router_mac.as_str(), "{shown}");

    // The runtime's retry gets the other pair.
    let retry = container_id();
    let add = tb.moor("ADD", &pod, &retry, "1.0.0", &json!({}), None);
    add.ok("retry");
    assert_eq!(add.ip().to_string(), ips[1]);
    assert_eq!(
        add.ip6().map(|a| a.to_string()).as_deref(),
        Some(ips6[1].as_str())
    );
    tb.moor("DEL", &pod, &retry, "1.0.0", &json!({}), None)
        .ok("DEL");
    let bad = tb.audit();
    assert!(bad.is_empty(), "{bad:#?}");
}
