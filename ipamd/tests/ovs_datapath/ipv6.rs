//! IPv6 and dual stack in OVS mode: pods on VLAN 100 of br-int, the
//! segment's gateways (10.1.0.1, fd00:1::1) in a netns behind another
//! access port of VLAN 100.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use ipnetwork::{IpNetwork, Ipv6Network};
use moor_ipamd::datapath::{Datapath, DatapathError, PodIpv6, PodLink};
use moor_proto::{format_mac, mac_for_ip};
use moor_testkit::netns::Netns;
use moor_testkit::Ovs;

use super::{config, datapath, pod_link, port_settings, require_root, BRIDGE, GATEWAY};

const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1);
const VLAN: u16 = 100;

fn v6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, last)
}

fn dual_link(pod: &Netns, container_id: &str, ip4: Ipv4Addr, ip6: Ipv6Addr) -> PodLink {
    PodLink {
        ipv6: Some(PodIpv6 {
            address: Ipv6Network::new(ip6, 64).unwrap(),
            gateway: GATEWAY6,
        }),
        ..pod_link(pod, container_id, ip4, VLAN)
    }
}

fn v6_link(pod: &Netns, container_id: &str, ip6: Ipv6Addr) -> PodLink {
    PodLink {
        address: IpNetwork::V6(Ipv6Network::new(ip6, 64).unwrap()),
        gateway: IpAddr::V6(GATEWAY6),
        ipv6: None,
        mac: mac_for_ip(IpAddr::V6(ip6)),
        ..pod_link(pod, container_id, Ipv4Addr::UNSPECIFIED, VLAN)
    }
}

/// A netns behind access port `port` of br-int (VLAN 100), its eth0 with
/// `mac` and `addrs` (IPv6 ones without DAD, as configured addresses).
fn host_on_vlan(ovs: &Ovs, role: &str, port: &str, mac: &str, addrs: &[&str]) -> Netns {
    let host = Netns::new(role);
    ovs.ip(&[
        "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", &host.name,
    ]);
    ovs.ip(&["link", "set", port, "up"]);
    ovs.vsctl(&["add-port", BRIDGE, port, &format!("tag={VLAN}")]);
    host.ip(&["link", "set", "eth0", "address", mac, "up"]);
    for a in addrs {
        let mut args = vec!["addr", "add", a, "dev", "eth0"];
        if a.contains(':') {
            args.push("nodad");
        }
        host.ip(&args);
    }
    host
}

fn gateway_host(ovs: &Ovs) -> Netns {
    host_on_vlan(
        ovs,
        "gw",
        "gwh",
        "02:00:00:00:01:01",
        &[&format!("{GATEWAY}/24"), &format!("{GATEWAY6}/64")],
    )
}

fn assert_usable_v6(pod: &Netns, ip: Ipv6Addr) {
    let shown = pod.ip_json(&["-6", "addr", "show", "dev", "eth0", "scope", "global"]);
    let addrs = shown[0]["addr_info"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let found = addrs
        .iter()
        .find(|a| a["local"] == ip.to_string().as_str())
        .unwrap_or_else(|| panic!("{ip} not on eth0: {shown}"));
    for flag in ["tentative", "dadfailed"] {
        assert!(
            found.get(flag).is_none(),
            "{ip} is {flag} right after wire: {found}"
        );
    }
}

/// Pings `to` until it answers, for up to 5 s (the userspace datapath
/// learns a new port's MACs from its first frames).
fn reaches(from: &Netns, to: impl ToString) -> bool {
    moor_testkit::netns::wait_ping(&from.name, to.to_string(), Duration::from_secs(5)).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_and_ipv6_only_pods_on_a_vlan_reach_the_gateway_and_each_other() {
    require_root();
    let ovs = Ovs::start();
    let dp = datapath(&ovs, &config(&ovs)).await;
    let _gw = gateway_host(&ovs);
    let (pa, pb) = (Netns::new("a"), Netns::new("b"));
    let a = dual_link(&pa, "ctr-a6", Ipv4Addr::new(10, 1, 0, 11), v6(0x11));
    let b = v6_link(&pb, "ctr-b6", v6(0x12));
    for (link, pod, ip6) in [(&a, &pa, v6(0x11)), (&b, &pb, v6(0x12))] {
        dp.wire(link).await.unwrap();
        assert_usable_v6(pod, ip6);
        assert_eq!(pod.mac_of("eth0"), format_mac(&link.mac));
        dp.check(link).await.unwrap();
        // The host end makes no IPv6 address of its own (silent).
        let out = std::process::Command::new("ip")
            .args([
                "netns", "exec", &ovs.netns, "ip", "-d", "-j", "link", "show", "dev",
            ])
            .arg(&link.host_ifname)
            .output()
            .unwrap();
        let host: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(host[0]["inet6_addr_gen_mode"], "none", "{host}");
    }
    // The ports name both addresses: moor-ip the first, moor-ip6 the IPv6 one.
    let ids = |link: &PodLink| {
        let ids = port_settings(&ovs, &link.host_ifname).2;
        (ids.get("moor-ip").cloned(), ids.get("moor-ip6").cloned())
    };
    assert_eq!(
        ids(&a),
        (Some("10.1.0.11".into()), Some("fd00:1::11".into()))
    );
    assert_eq!(ids(&b), (Some("fd00:1::12".into()), None));
    assert!(
        reaches(&pa, GATEWAY6),
        "dual-stack pod cannot reach the IPv6 gateway"
    );
    assert!(
        reaches(&pa, GATEWAY),
        "dual-stack pod cannot reach the IPv4 gateway"
    );
    assert!(
        reaches(&pb, GATEWAY6),
        "IPv6-only pod cannot reach the gateway"
    );
    assert!(reaches(&pa, v6(0x12)), "a cannot reach b over IPv6");
    assert!(reaches(&pb, v6(0x11)), "b cannot reach a over IPv6");

    // CHECK names the missing IPv6 route, then the missing address.
    pb.ip(&["-6", "route", "del", "default"]);
    let msg = dp.check(&b).await.unwrap_err().to_string();
    assert!(msg.contains("no default route via fd00:1::1"), "{msg}");
    pa.ip(&["-6", "addr", "del", "fd00:1::11/64", "dev", "eth0"]);
    let err = dp.check(&a).await.unwrap_err();
    assert!(matches!(err, DatapathError::CheckFailed(_)), "{err:?}");
    assert!(err.to_string().contains("fd00:1::11/64"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dad_probe_across_ovs_finds_another_owner_of_the_ipv6_address() {
    require_root();
    let ovs = Ovs::start();
    let dp = datapath(&ovs, &config(&ovs))
        .await
        .with_dad_probe(Duration::from_millis(300));
    let other_mac = "02:00:00:00:00:98";
    let _squatter = host_on_vlan(&ovs, "squat", "sq0", other_mac, &["fd00:1::40/64"]);
    let (pod, free_pod) = (Netns::new("pod"), Netns::new("pod"));
    let taken = v6_link(&pod, "ctr-dup6", v6(0x40));
    match dp.wire(&taken).await {
        Err(DatapathError::AddressConflict { ip, mac }) => {
            assert_eq!((ip, mac.as_str()), (IpAddr::V6(v6(0x40)), other_mac));
        }
        other => panic!("wire of a taken IPv6: want AddressConflict, got {other:?}"),
    }
    assert!(!pod.link_exists("eth0"), "pod end left behind");
    assert!(
        !super::ports(&ovs, BRIDGE).contains(&taken.host_ifname),
        "port left behind"
    );

    let free = dual_link(
        &free_pod,
        "ctr-free6",
        Ipv4Addr::new(10, 1, 0, 42),
        v6(0x41),
    );
    dp.wire(&free).await.unwrap();
    dp.check(&free).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neighbour_advertisements_cross_the_vlan_and_fix_a_stale_entry() {
    require_root();
    let ovs = Ovs::start();
    let dp = datapath(&ovs, &config(&ovs)).await;
    let gw = gateway_host(&ovs);
    let pod = Netns::new("pod");
    let link = dual_link(&pod, "ctr-na", Ipv4Addr::new(10, 1, 0, 21), v6(0x21));
    let want = format_mac(&link.mac);
    let old_owner = ["lladdr", "02:de:ad:be:ef:02", "dev", "eth0", "nud", "stale"];
    let neigh_mac = |ip: &str| {
        gw.ip_json(&["-6", "neigh", "show", ip, "dev", "eth0"])[0]["lladdr"]
            .as_str()
            .map(str::to_string)
    };
    // The control, as in the physical-mode test: an address added by hand
    // (no DAD) on a host without moor's advertisements.
    gw.ip(&[&["-6", "neigh", "replace", "fd00:1::22"][..], &old_owner].concat());
    let _control = host_on_vlan(&ovs, "ctl", "ctl0", "02:00:00:00:00:97", &["fd00:1::22/64"]);
    gw.ip(&[&["-6", "neigh", "replace", "fd00:1::21"][..], &old_owner].concat());
    dp.wire(&link).await.unwrap();
    // The pod sends nothing that names fd00:1::21 but the NAs; all three go
    // out within ~1 s of wire (0, +0.2 s, +1 s); 0.5 s of margin.
    let deadline = Instant::now() + Duration::from_millis(1500);
    while neigh_mac("fd00:1::21").as_deref() != Some(want.as_str()) {
        assert!(
            Instant::now() < deadline,
            "no NA reached the gateway over VLAN {VLAN}: {:?}",
            neigh_mac("fd00:1::21")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        neigh_mac("fd00:1::22").as_deref(),
        Some("02:de:ad:be:ef:02"),
        "the control's entry changed without an NA"
    );
}
