//! Dual stack through CRI (issue 13): a sandbox on a dual-stack ToR gets an
//! IPv4 address and its IPv6 partner from its pool, containerd reports both
//! in PodSandboxStatus (IPv4 as `network.ip`, IPv6 in
//! `network.additional_ips`), the pod has both addresses and default routes
//! and reaches both gateways, and a StatefulSet pod re-created under its
//! name gets both back.

use std::net::{Ipv4Addr, Ipv6Addr};

use moor_e2e::containerd::{in_netns, ping_in, CriNode, Options, Sandbox};
use moor_e2e::names::{deployment_pod, statefulset_pod};
use moor_e2e::testbed::Families;
use serde_json::Value;

use super::run;

/// `ipamctl -o json ip show V4`.
fn ip_show(node: &CriNode, v4: Ipv4Addr) -> Value {
    node.ipamctl_json(&["ip", "show", &v4.to_string()])
}

/// The sandbox's IPv6 address: there must be one.
fn ip6_of(s: &Sandbox) -> Ipv6Addr {
    s.ip6.unwrap_or_else(|| {
        panic!("{s:?}: PodSandboxStatus has no IPv6 address in network.additional_ips")
    })
}

/// Both addresses of `s` are pool `pool`'s pair, eth0 has both, both
/// default routes go to the ToR's gateways, and both gateways answer.
fn assert_dual(node: &CriNode, s: &Sandbox, pool: &str) {
    let ip6 = ip6_of(s);
    let shown = ip_show(node, s.ip);
    assert_eq!(shown["pool"], pool, "{s:?}: {shown}");
    assert_eq!(
        shown["address6"],
        ip6.to_string().as_str(),
        "{s:?}: the IPv6 address is not the partner of {}: {shown}",
        s.ip
    );
    assert_eq!(
        shown["attachment"]["container_id"],
        s.id.as_str(),
        "{shown}"
    );

    let addr4 = in_netns(&s.netns, "ip", &["-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(
        addr4.contains(&format!("{}/24", s.ip)),
        "{s:?}: eth0 has {addr4}"
    );
    let addr6 = in_netns(
        &s.netns,
        "ip",
        &["-6", "-o", "addr", "show", "dev", "eth0", "scope", "global"],
    );
    assert!(
        addr6.contains(&format!("{ip6}/64")),
        "{s:?}: eth0 has {addr6}"
    );
    assert!(
        !addr6.contains("tentative") && !addr6.contains("dadfailed"),
        "{s:?}: the IPv6 address waits for DAD: {addr6}"
    );
    let route4 = in_netns(&s.netns, "ip", &["-4", "route", "show", "default"]);
    assert!(
        route4.contains(&format!("via {}", node.gateway)),
        "{s:?}: IPv4 default route {route4}"
    );
    let route6 = in_netns(&s.netns, "ip", &["-6", "route", "show", "default"]);
    assert!(
        route6.contains(&format!("via {}", node.gateway6)),
        "{s:?}: IPv6 default route {route6}"
    );

    assert!(
        ping_in(&s.netns, node.gateway),
        "{s:?} cannot reach the IPv4 gateway {}",
        node.gateway
    );
    assert!(
        ping_in(&s.netns, node.gateway6),
        "{s:?} cannot reach the IPv6 gateway {}",
        node.gateway6
    );
}

#[test]
fn dual_stack_sandboxes_get_both_families_reach_both_gateways_and_keep_them() {
    let node = CriNode::new(Options {
        families: Families::Dual,
        ..Options::default()
    });
    node.create_pool("api", "api", 10);
    node.create_pool("web", "web", 3);
    for pool in ["api", "web"] {
        let v = node.ctl().pool_show(pool);
        assert_eq!(v["family"], "dual", "a pool of a dual-stack ToR: {v}");
    }
    // Every IP of the pools has its IPv6 partner in the ToR's IPv6 subnet.
    for e in node.ip_list() {
        let v6: Option<Ipv6Addr> = e["address6"].as_str().and_then(|a| a.parse().ok());
        assert!(
            v6.is_some_and(|v6| v6.octets()[..8] == node.gateway6.octets()[..8]),
            "no IPv6 partner in {}: {e}",
            node.subnet6()
        );
    }

    let a = run(&node, &deployment_pod("api", 1));
    let b = run(&node, &deployment_pod("api", 2));
    assert_dual(&node, &a, "api");
    assert_dual(&node, &b, "api");
    assert_ne!((a.ip, a.ip6), (b.ip, b.ip6));
    assert!(ping_in(&a.netns, ip6_of(&b)), "a cannot reach b over IPv6");
    assert!(ping_in(&b.netns, a.ip), "b cannot reach a over IPv4");

    for s in [&a, &b] {
        node.stop_and_remove(&s.id);
        let e = ip_show(&node, s.ip);
        assert_eq!(e["state"], "free", "a Deployment pod's IPs go back: {e}");
        assert_eq!(e["address6"], ip6_of(s).to_string().as_str(), "{e}");
    }

    // A StatefulSet pod, deleted and re-created under its name (new uid,
    // new sandbox id), gets both addresses back.
    let web0 = statefulset_pod("web", 0);
    let w1 = run(&node, &web0);
    assert_dual(&node, &w1, "web");
    node.stop_and_remove(&w1.id);
    let kept = ip_show(&node, w1.ip);
    assert!(kept["attachment"].is_null(), "web-0 removed: {kept}");
    assert_eq!(kept["state"], "bound", "{kept}");
    assert_eq!(kept["binding"]["name"], web0.as_str(), "{kept}");
    let w2 = run(&node, &web0);
    assert_ne!(w2.id, w1.id);
    assert_eq!(
        (w2.ip, w2.ip6),
        (w1.ip, w1.ip6),
        "web-0 re-created with other IPs"
    );
    assert_dual(&node, &w2, "web");
    node.stop_and_remove(&w2.id);

    assert_eq!(node.listed_sandboxes(), Vec::<String>::new());
    let left = node.leftovers();
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
    let taken: Vec<Value> = node
        .ip_list()
        .into_iter()
        .filter(|e| e["state"] != "free")
        .collect();
    assert_eq!(taken.len(), 1, "only web-0's binding stays: {taken:?}");
    assert_eq!(taken[0]["address"], w1.ip.to_string());
}
