//! IPv6 and dual stack in physical mode: the node's bridge also carries the
//! segment's IPv6 gateway (fd00:1::1/64).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use ipnetwork::{IpNetwork, Ipv6Network};
use moor_ipamd::datapath::{BridgeDatapath, Datapath, DatapathError, PodIpv6, PodLink};
use moor_proto::{format_mac, mac_for_ip};
use moor_testkit::netns::Netns;

use super::{in_netns, node_with_bridge, pod_link, require_root, BRIDGE};

const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1);

fn v6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, last)
}

/// The node of `node_with_bridge` with the IPv6 gateway on its bridge too
/// (without DAD, as a router's configured address).
fn node_with_dual_stack_bridge() -> Netns {
    let node = node_with_bridge();
    node.ip(&[
        "addr",
        "add",
        &format!("{GATEWAY6}/64"),
        "dev",
        BRIDGE,
        "nodad",
    ]);
    node
}

/// A dual-stack pod: `ip4` first, `ip6` its IPv6 side; MAC from the IPv4.
fn dual_link(pod: &Netns, container_id: &str, ip4: Ipv4Addr, ip6: Ipv6Addr) -> PodLink {
    PodLink {
        ipv6: Some(PodIpv6 {
            address: Ipv6Network::new(ip6, 64).unwrap(),
            gateway: GATEWAY6,
        }),
        ..pod_link(pod, container_id, ip4)
    }
}

/// An IPv6-only pod: its MAC from the IPv6 address.
fn v6_link(pod: &Netns, container_id: &str, ip6: Ipv6Addr) -> PodLink {
    PodLink {
        address: IpNetwork::V6(Ipv6Network::new(ip6, 64).unwrap()),
        gateway: IpAddr::V6(GATEWAY6),
        ipv6: None,
        mac: mac_for_ip(IpAddr::V6(ip6)),
        ..pod_link(pod, container_id, Ipv4Addr::UNSPECIFIED)
    }
}

/// The global IPv6 addresses of `ifname` as `ip -6 -j addr` prints them.
fn global_v6(netns: &Netns, ifname: &str) -> Vec<serde_json::Value> {
    let shown = netns.ip_json(&["-6", "addr", "show", "dev", ifname, "scope", "global"]);
    shown[0]["addr_info"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn assert_usable_v6(netns: &Netns, ip: Ipv6Addr) {
    let addrs = global_v6(netns, "eth0");
    let found = addrs
        .iter()
        .find(|a| a["local"] == ip.to_string().as_str())
        .unwrap_or_else(|| panic!("{ip} not on eth0 in {}: {addrs:?}", netns.name));
    assert_eq!(found["prefixlen"], 64, "{found}");
    for flag in ["tentative", "dadfailed"] {
        assert!(
            found.get(flag).is_none(),
            "{ip} is {flag} right after wire: {found}"
        );
    }
}

fn ping(from: &Netns, to: impl ToString) {
    let to = to.to_string();
    let out = from.exec(&["ping", "-c1", "-W1", &to]);
    assert!(
        out.status.success(),
        "ping {to} from {} failed: {}{}",
        from.name,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dual_stack_and_ipv6_only_pods_are_usable_when_wire_returns() {
    require_root();
    let node = node_with_dual_stack_bridge();
    // The IPv6-only pod's netns has IPv6 off by default, as some runtimes
    // and images leave it: wire turns it on for the pod's interface.
    let (pod_a, pod_b) = (Netns::new("pod"), Netns::ipv4_only("pod"));
    in_netns(&node, || async {
        let dp = BridgeDatapath::new(BRIDGE).await.unwrap();
        let a = dual_link(&pod_a, "ctr-a6", Ipv4Addr::new(10, 1, 0, 17), v6(0x11));
        let b = v6_link(&pod_b, "ctr-b6", v6(0x12));
        for (link, pod, ip6) in [(&a, &pod_a, v6(0x11)), (&b, &pod_b, v6(0x12))] {
            dp.wire(link).await.unwrap();
            // Right after wire: there, and not tentative (no DAD to wait for).
            assert_usable_v6(pod, ip6);
            assert_eq!(pod.mac_of("eth0"), format_mac(&link.mac));
            let routes = pod.ip_json(&["-6", "route", "show", "default"]);
            assert_eq!(
                (&routes[0]["gateway"], &routes[0]["dev"]),
                (&GATEWAY6.to_string().into(), &"eth0".into()),
                "{routes}"
            );
            dp.check(link).await.unwrap();
            // The host end is an L2 port: no IPv6 address of its own, and
            // none made when it got carrier.
            let host = node.ip_json(&["-d", "link", "show", "dev", &link.host_ifname]);
            assert_eq!(host[0]["inet6_addr_gen_mode"], "none", "{host}");
            let host6 = node.ip_json(&["-6", "addr", "show", "dev", &link.host_ifname]);
            assert!(
                host6
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|l| l["addr_info"].as_array().is_none_or(|a| a.is_empty())),
                "{host6}"
            );
        }
        // The dual-stack pod keeps its IPv4 side.
        let v4 = pod_a.ip_json(&["-4", "addr", "show", "dev", "eth0"]);
        assert_eq!(v4[0]["addr_info"][0]["local"], "10.1.0.17", "{v4}");
        assert_eq!(b.mac, mac_for_ip(IpAddr::V6(v6(0x12))));

        ping(&pod_a, "10.1.0.1");
        ping(&pod_a, GATEWAY6);
        ping(&pod_b, GATEWAY6);
        ping(&pod_a, v6(0x12));
        ping(&pod_b, v6(0x11));
    });
}

#[test]
fn bad_address_families_are_refused_and_leave_nothing() {
    require_root();
    let node = node_with_dual_stack_bridge();
    let pod = Netns::new("pod");
    in_netns(&node, || async {
        let dp = BridgeDatapath::new(BRIDGE).await.unwrap();
        let mixed = PodLink {
            gateway: IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1)),
            ..v6_link(&pod, "ctr-mix", v6(0x21))
        };
        let err = dp.wire(&mixed).await.unwrap_err();
        assert!(
            matches!(err, DatapathError::GatewayOutsideSubnet { .. }),
            "{err:?}"
        );
        let two = PodLink {
            ipv6: dual_link(&pod, "x", Ipv4Addr::new(10, 1, 0, 9), v6(0x22)).ipv6,
            ..v6_link(&pod, "ctr-two", v6(0x21))
        };
        let err = dp.wire(&two).await.unwrap_err();
        println!("{err}");
        assert!(
            matches!(err, DatapathError::TwoIpv6Addresses { .. }),
            "{err:?}"
        );
        assert!(!node.link_exists(&two.host_ifname) && !pod.link_exists("eth0"));
    });
}

#[test]
fn check_names_a_missing_ipv6_address_or_route() {
    require_root();
    let node = node_with_dual_stack_bridge();
    let pod = Netns::new("pod");
    in_netns(&node, || async {
        let dp = BridgeDatapath::new(BRIDGE).await.unwrap();
        let link = dual_link(&pod, "ctr-chk6", Ipv4Addr::new(10, 1, 0, 17), v6(0x31));
        dp.wire(&link).await.unwrap();
        dp.check(&link).await.unwrap();

        pod.ip(&[
            "-6",
            "route",
            "del",
            "default",
            "via",
            &GATEWAY6.to_string(),
        ]);
        let msg = dp.check(&link).await.unwrap_err().to_string();
        assert!(msg.contains("no default route via fd00:1::1"), "{msg}");
        pod.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &GATEWAY6.to_string(),
        ]);
        dp.check(&link).await.unwrap();

        pod.ip(&["-6", "addr", "del", "fd00:1::31/64", "dev", "eth0"]);
        let err = dp.check(&link).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, DatapathError::CheckFailed(_)), "{err:?}");
        assert!(msg.contains("does not have address fd00:1::31/64"), "{msg}");
        println!("{msg}");
    });
}

/// A host on the bridge holding `ip` (IPv6, no DAD) with `mac`.
fn squatter6(node: &Netns, ip: Ipv6Addr, mac: &str) -> Netns {
    let host = super::squatter(node, Ipv4Addr::new(10, 1, 0, 250), mac);
    host.ip(&["addr", "add", &format!("{ip}/64"), "dev", "eth0", "nodad"]);
    host
}

#[test]
fn dad_probe_finds_another_owner_of_the_ipv6_address() {
    require_root();
    let node = node_with_dual_stack_bridge();
    let taken = v6(0x40);
    let other_mac = "02:00:00:00:00:98";
    let _squatter = squatter6(&node, taken, other_mac);
    let (pod, dual_pod, free_pod) = (Netns::new("pod"), Netns::new("pod"), Netns::new("pod"));
    in_netns(&node, || async {
        let window = Duration::from_millis(300);
        let dp = BridgeDatapath::new(BRIDGE)
            .await
            .unwrap()
            .with_dad_probe(window);
        // IPv6-only, and dual stack with a free IPv4 but the taken IPv6.
        for link in [
            v6_link(&pod, "ctr-dup6", taken),
            dual_link(&dual_pod, "ctr-dupd", Ipv4Addr::new(10, 1, 0, 41), taken),
        ] {
            match dp.wire(&link).await {
                Err(DatapathError::AddressConflict { ip, mac }) => {
                    assert_eq!((ip, mac.as_str()), (IpAddr::V6(taken), other_mac));
                }
                other => panic!("wire of a taken IPv6: want AddressConflict, got {other:?}"),
            }
            assert!(!node.link_exists(&link.host_ifname), "host end left behind");
        }
        assert!(!pod.link_exists("eth0") && !dual_pod.link_exists("eth0"));

        // Nobody holds fd00:1::41: the probe passes after its window.
        let free = dual_link(
            &free_pod,
            "ctr-free6",
            Ipv4Addr::new(10, 1, 0, 42),
            v6(0x41),
        );
        let started = Instant::now();
        dp.wire(&free).await.unwrap();
        assert!(
            started.elapsed() >= window,
            "the probe did not listen its window"
        );
        ping(&free_pod, GATEWAY6);
    });
}

#[test]
fn neighbour_advertisement_corrects_a_stale_entry_on_the_node() {
    require_root();
    let node = node_with_dual_stack_bridge();
    let pod = Netns::new("pod");
    let link = dual_link(&pod, "ctr-na", Ipv4Addr::new(10, 1, 0, 17), v6(0x51));
    let want = format_mac(&link.mac);
    let old_owner = ["lladdr", "02:de:ad:be:ef:02", "dev", BRIDGE, "nud", "stale"];
    let neigh_mac = |ip: &str| {
        node.ip_json(&["-6", "neigh", "show", ip, "dev", BRIDGE])[0]["lladdr"]
            .as_str()
            .map(str::to_string)
    };
    in_netns(&node, || async {
        let dp = BridgeDatapath::new(BRIDGE).await.unwrap();
        // The control: an address added by hand (no DAD, as moor adds the
        // pod's) on a host without moor's advertisement. Its stale entry on
        // the node is still wrong after the pod's was fixed, though it had
        // longer: the kernel announces nothing when an address is added
        // (ndisc_notify is off), so what fixes the pod's entry is moor's NA.
        let hand = super::squatter(&node, Ipv4Addr::new(10, 1, 0, 251), "02:00:00:00:00:97");
        node.ip(&[&["-6", "neigh", "replace", "fd00:1::52"][..], &old_owner].concat());
        hand.ip(&["addr", "add", "fd00:1::52/64", "dev", "eth0", "nodad"]);
        // Seeded after new(), whose MAC pinning flushes the bridge's entries.
        node.ip(&[&["-6", "neigh", "replace", "fd00:1::51"][..], &old_owner].concat());
        dp.wire(&link).await.unwrap();
        // Well before the second announcement (~+200 ms): the first one,
        // sent before wire returns, must have done it.
        let deadline = Instant::now() + Duration::from_millis(150);
        while neigh_mac("fd00:1::51").as_deref() != Some(want.as_str()) {
            assert!(
                Instant::now() < deadline,
                "the first NA did not update the node's entry: {:?}",
                neigh_mac("fd00:1::51")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            neigh_mac("fd00:1::52").as_deref(),
            Some("02:de:ad:be:ef:02"),
            "the control's entry changed without an NA"
        );
    });
}

#[test]
fn wire_sends_three_neighbour_advertisements() {
    require_root();
    let node = node_with_dual_stack_bridge();
    let pod = Netns::new("pod");
    let link = dual_link(&pod, "ctr-na3", Ipv4Addr::new(10, 1, 0, 17), v6(0x61));
    let seen = super::tcpdump_during_wire(&node, &link, &["-vv"], "icmp6 and ip6[40] == 136")
        .replace("\n\t", " ");
    let mac = format_mac(&link.mac);
    let nas: Vec<&str> = seen
        .lines()
        .filter(|l| l.contains(&format!(" {mac} > 33:33:00:00:00:01")))
        .filter(|l| {
            l.contains("hlim 255")
                && l.contains("fd00:1::61 > ff02::1")
                && l.contains("icmp6 sum ok")
                && l.contains("tgt is fd00:1::61, Flags [override]")
                && l.contains(&format!(
                    "destination link-address option (2), length 8 (1): {mac}"
                ))
        })
        .collect();
    assert_eq!(
        nas.len(),
        3,
        "expected 3 unsolicited NAs from the pod, tcpdump saw:\n{seen}"
    );
}

/// Prints what the IPv6 side adds to a wire (no assertion on speed: the
/// numbers move with the machine's load; compare inside one run).
#[test]
fn wire_wall_time_ipv4_vs_dual_stack() {
    require_root();
    let node = node_with_dual_stack_bridge();
    let pod = Netns::new("pod");
    in_netns(&node, || async {
        let dp = BridgeDatapath::new(BRIDGE).await.unwrap();
        let v4 = pod_link(&pod, "ctr-t4", Ipv4Addr::new(10, 1, 0, 70));
        let dual = dual_link(&pod, "ctr-t6", Ipv4Addr::new(10, 1, 0, 71), v6(0x71));
        let (mut walls, mut pod_sides) = ([vec![], vec![]], [vec![], vec![]]);
        for _ in 0..20 {
            for (i, link) in [&v4, &dual].into_iter().enumerate() {
                let started = Instant::now();
                let wired = dp.wire(link).await.unwrap();
                walls[i].push(started.elapsed());
                pod_sides[i].push(wired.steps.pod_side);
                dp.unwire(&link.host_ifname).await.unwrap();
            }
        }
        for (i, name) in ["IPv4", "dual stack"].into_iter().enumerate() {
            walls[i].sort();
            pod_sides[i].sort();
            println!(
                "{name}: wire median {:?} (pod side {:?}), max {:?}",
                walls[i][10], pod_sides[i][10], walls[i][19]
            );
        }
    });
}
