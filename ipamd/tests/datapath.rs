//! The physical-mode datapath against real kernel objects.
//!
//! Each test builds its own topology and never touches the host: a "node"
//! netns holding a bridge (as the node's bridge to the physical network) and
//! one netns per pod. The datapath runs inside the node netns, on a thread
//! that entered it. Namespaces are deleted by a Drop guard, so also when an
//! assertion fails. Needs root; fails (never skips) without it.

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use moor_ipamd::datapath::{
    BridgeDatapath, Datapath, DatapathError, PodLink, ReapPolicy, GRAVEYARD_GROUP, GRAVE_PREFIX,
    RETIRED_ALIAS,
};
use moor_proto::{format_mac, host_ifname, mac_for_ipv4};
use moor_testkit::cmd::run;
use moor_testkit::netns::{enter, Netns};

#[path = "datapath/ipv6.rs"]
mod ipv6;

const BRIDGE: &str = "br0";
const BRIDGE_MAC: &str = "02:00:00:0b:00:01";
const BRIDGE_MTU: u32 = 1400;
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);

fn require_root() {
    moor_testkit::cmd::require_root(
        "the datapath tests create network namespaces, bridges and veths \
         (e.g. sudo -E cargo test -p moor-ipamd --test datapath)",
    );
}

/// A node netns with bridge br0 (explicit MAC, MTU 1400, the ToR's gateway
/// address on it, as a gateway reachable on the L2 segment).
fn node_with_bridge() -> Netns {
    let node = Netns::new("node");
    node.ip(&[
        "link", "add", BRIDGE, "address", BRIDGE_MAC, "type", "bridge",
    ]);
    node.ip(&["link", "set", BRIDGE, "mtu", &BRIDGE_MTU.to_string(), "up"]);
    node.ip(&["addr", "add", &format!("{GATEWAY}/24"), "dev", BRIDGE]);
    // An uplink port, so that the bridge has carrier before any pod, as on a
    // real node.
    node.ip(&[
        "link",
        "add",
        "uplink",
        "type",
        "veth",
        "peer",
        "name",
        "uplink-peer",
    ]);
    node.ip(&["link", "set", "uplink-peer", "up"]);
    node.ip(&["link", "set", "uplink", "master", BRIDGE, "up"]);
    node
}

fn pod_link(pod: &Netns, container_id: &str, ip: Ipv4Addr) -> PodLink {
    PodLink {
        netns: pod.path(),
        ifname: "eth0".to_string(),
        host_ifname: host_ifname(container_id, "eth0"),
        address: ipnetwork::Ipv4Network::new(ip, 24).unwrap().into(),
        gateway: GATEWAY.into(),
        ipv6: None,
        mac: mac_for_ipv4(ip),
        vlan: None,
        pod_namespace: "default".to_string(),
        pod_name: container_id.to_string(),
        container_id: container_id.to_string(),
    }
}

/// Runs `body` on a thread inside `netns` with a runtime of its own, as
/// ipamd runs in a node's netns. Panics propagate.
fn in_netns<F, Fut>(netns: &Netns, body: F)
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = ()>,
{
    let path = netns.path();
    std::thread::scope(|s| {
        let thread = s.spawn(move || {
            enter(&path);
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(body())
        });
        if let Err(panic) = thread.join() {
            std::panic::resume_unwind(panic);
        }
    });
}

#[test]
fn wire_creates_both_ends() {
    require_root();
    let node = node_with_bridge();
    let pod = Netns::new("pod");
    in_netns(&node, || async {
        let dp = BridgeDatapath::new(BRIDGE).await.unwrap();
        let link = pod_link(&pod, "ctr-a", Ipv4Addr::new(10, 1, 0, 17));
        let started = Instant::now();
        let wired = dp.wire(&link).await.unwrap();
        let wire_time = started.elapsed();
        assert_eq!(wired.mtu, BRIDGE_MTU);

        let host = node.link(&link.host_ifname);
        assert_eq!(host["master"], BRIDGE, "{host}");
        assert_eq!(host["mtu"], BRIDGE_MTU, "{host}");
        assert_eq!(host["address"], format_mac(&wired.host_mac), "{host}");
        assert!(
            host["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
            "{host}"
        );

        let eth0 = pod.link("eth0");
        assert_eq!(eth0["mtu"], BRIDGE_MTU, "{eth0}");
        assert_eq!(eth0["address"], format_mac(&link.mac), "{eth0}");
        assert_eq!(eth0["operstate"], "UP", "{eth0}");
        let addrs = pod.ip_json(&["-4", "addr", "show", "dev", "eth0"]);
        let addr = &addrs[0]["addr_info"][0];
        assert_eq!(
            (&addr["local"], &addr["prefixlen"]),
            (&"10.1.0.17".into(), &24.into()),
            "{addrs}"
        );
        let routes = pod.ip_json(&["route", "show", "default"]);
        assert_eq!(routes.as_array().unwrap().len(), 1, "{routes}");
        assert_eq!(
            (&routes[0]["gateway"], &routes[0]["dev"]),
            (&"10.1.0.1".into(), &"eth0".into())
        );
        dp.check(&link).await.unwrap();

        let started = Instant::now();
        dp.unwire(&link.host_ifname).await.unwrap();
        let unwire_time = started.elapsed();
        println!("one wire: {wire_time:?}, one unwire: {unwire_time:?}");
        assert_cut_off(&node, &pod, &link.host_ifname);
        wait_reaped(&node, &pod);
    });
}

#[test]
fn wire_unwire_wall_time() {
    require_root();
    let node = node_with_bridge();
    let pod = Netns::new("pod");
    in_netns(&node, || async {
        let dp = BridgeDatapath::new(BRIDGE).await.unwrap();
        let link = pod_link(&pod, "ctr-time", Ipv4Addr::new(10, 1, 0, 30));
        let (mut wires, mut unwires) = (vec![], vec![]);
        for _ in 0..10 {
            let started = Instant::now();
            dp.wire(&link).await.unwrap();
            wires.push(started.elapsed());
            let started = Instant::now();
            dp.unwire(&link.host_ifname).await.unwrap();
            unwires.push(started.elapsed());
        }
        wires.sort();
        unwires.sort();
        println!(
            "wire: min {:?} median {:?} max {:?}; unwire: min {:?} median {:?} max {:?}",
            wires[0], wires[5], wires[9], unwires[0], unwires[5], unwires[9]
        );
    });
}

#[test]
fn pods_on_one_bridge_reach_each_other_and_the_gateway() {
    require_root();
    let node = node_with_bridge();
    let (pod_a, pod_b) = (Netns::new("pod"), Netns::new("pod"));
    in_netns(&node, || async {
        let dp = BridgeDatapath::new(BRIDGE).await.unwrap();
        dp.wire(&pod_link(&pod_a, "ctr-a", Ipv4Addr::new(10, 1, 0, 17)))
            .await
            .unwrap();
        dp.wire(&pod_link(&pod_b, "ctr-b", Ipv4Addr::new(10, 1, 0, 18)))
            .await
            .unwrap();
        for (from, to) in [
            (&pod_b, "10.1.0.17"),
            (&pod_a, "10.1.0.18"),
            (&pod_a, "10.1.0.1"),
        ] {
            let out = from.exec(&["ping", "-c1", "-W1", to]);
            assert!(
                out.status.success(),
                "ping {to} from {} failed: {}{}",
                from.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });
}

/// A host on the bridge that holds `ip` with `mac` (not a moor pod: its own
/// MAC, set up by hand, as a forgotten VM or a bare-metal box would be).
fn squatter(node: &Netns, ip: Ipv4Addr, mac: &str) -> Netns {
    let host = Netns::new("squat");
    // Names are per netns: the node netns is this test's own.
    let (outer, inner) = ("squat0", "eth0");
    run(
        "ip",
        &[
            "-n", &node.name, "link", "add", outer, "type", "veth", "peer", "name", inner, "netns",
            &host.name,
        ],
    );
    node.ip(&["link", "set", outer, "master", BRIDGE, "up"]);
    host.ip(&["link", "set", inner, "address", mac, "up"]);
    host.ip(&["addr", "add", &format!("{ip}/24"), "dev", inner]);
    host
}

#[test]
fn dad_probe_refuses_an_ip_another_host_answers_for_and_leaves_nothing() {
    require_root();
    let node = node_with_bridge();
    let ip = Ipv4Addr::new(10, 1, 0, 40);
    let other_mac = "02:00:00:00:00:99";
    let _squatter = squatter(&node, ip, other_mac);
    let (pod, free_pod) = (Netns::new("pod"), Netns::new("pod"));
    in_netns(&node, || async {
        let window = Duration::from_millis(300);
        let dp = BridgeDatapath::new(BRIDGE)
            .await
            .unwrap()
            .with_dad_probe(window);
        let link = pod_link(&pod, "ctr-dup", ip);
        let started = Instant::now();
        match dp.wire(&link).await {
            Err(DatapathError::AddressConflict { ip: got, mac }) => {
                assert_eq!((got, mac.as_str()), (ip.into(), other_mac));
            }
            other => panic!("wire of a taken IP: want AddressConflict, got {other:?}"),
        }
        println!("conflict found after {:?}", started.elapsed());
        assert!(!node.link_exists(&link.host_ifname), "host end left behind");
        assert!(!pod.link_exists("eth0"), "pod end left behind");

        // A free IP passes the probe, which takes about the window.
        let free = pod_link(&free_pod, "ctr-free", Ipv4Addr::new(10, 1, 0, 41));
        let started = Instant::now();
        dp.wire(&free).await.unwrap();
        let took = started.elapsed();
        assert!(took >= window, "the probe listened only {took:?}");
        let out = free_pod.exec(&["ping", "-c1", "-W1", "10.1.0.1"]);
        assert!(
            out.status.success(),
            "the probed pod cannot reach the gateway"
        );
        dp.unwire(&free.host_ifname).await.unwrap();

        // Without the probe (the default) the same taken IP is wired: the
        // test above is the probe's doing.
        let plain = BridgeDatapath::new(BRIDGE).await.unwrap();
        plain.wire(&link).await.unwrap();
        plain.unwire(&link.host_ifname).await.unwrap();
    });
}

/// Waits until `tcpdump` (stderr piped) listens; its stderr says so.
fn wait_listening(tcpdump: &mut std::process::Child) {
    let mut stderr = BufReader::new(tcpdump.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("listening on") {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "tcpdump exited early"
        );
    }
}

/// What tcpdump (`-l -n -e` plus `args`, then `filter`) on the node's
/// bridge saw while `link` was wired and for 1.5 s after, when the last
/// of the three announcements (~0, ~+0.2 s, ~+1 s) is out.
fn tcpdump_during_wire(node: &Netns, link: &PodLink, args: &[&str], filter: &str) -> String {
    tcpdump_in_during_wire(node, BRIDGE, node, link, filter, args, 1500)
}

/// What tcpdump on `iface` of netns `on` saw while `link` was wired (from
/// `node`) and for `after_ms` after.
fn tcpdump_in_during_wire(
    on: &Netns,
    iface: &str,
    node: &Netns,
    link: &PodLink,
    filter: &str,
    args: &[&str],
    after_ms: u64,
) -> String {
    let mut tcpdump = Command::new("ip")
        .args(["netns", "exec", &on.name, "tcpdump", "-l", "-n", "-e"])
        .args(args)
        .args(["-i", iface, filter])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tcpdump");
    wait_listening(&mut tcpdump);
    in_netns(node, || async {
        let dp = BridgeDatapath::new(BRIDGE).await.unwrap();
        dp.wire(link).await.unwrap();
        tokio::time::sleep(Duration::from_millis(after_ms)).await;
    });
    let _ = tcpdump.kill();
    let out = tcpdump.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn wire_sends_three_gratuitous_arps() {
    require_root();
    let node = node_with_bridge();
    let pod = Netns::new("pod");
    let link = pod_link(&pod, "ctr-garp", Ipv4Addr::new(10, 1, 0, 17));
    let seen = tcpdump_during_wire(&node, &link, &[], "arp");
    let garps: Vec<&str> = seen
        .lines()
        .filter(|l| {
            l.starts_with(&format!("{} ", format_mac(&link.mac)))
                || l.contains(&format!(" {} > ff:ff:ff:ff:ff:ff", format_mac(&link.mac)))
        })
        .filter(|l| l.contains("10.1.0.17") && !l.contains("Reply"))
        .collect();
    assert_eq!(
        garps.len(),
        3,
        "expected 3 gratuitous ARPs from the pod, tcpdump saw:\n{seen}"
    );
}

/// The host end sends no IPv6 into the pod: with IPv6 as the kernel leaves
/// a new link it would make a link-local address on carrier and send an
/// MLD report (at once), a DAD solicitation (~1 s) and router
/// solicitations (~2 s) into the pod on every ADD.
#[test]
fn host_end_sends_no_ipv6_into_the_pod() {
    require_root();
    let node = node_with_bridge();
    let pod = Netns::new("pod");
    let link = pod_link(&pod, "ctr-quiet", Ipv4Addr::new(10, 1, 0, 18));
    // `any`: eth0 does not exist yet; frames from the host end arrive as
    // "In <host end's MAC>".
    let seen = tcpdump_in_during_wire(&pod, "any", &node, &link, "ip6", &[], 2500);
    let host = node.ip_json(&["-d", "link", "show", "dev", &link.host_ifname]);
    let host_mac = host[0]["address"].as_str().unwrap();
    let from_host: Vec<&str> = seen.lines().filter(|l| l.contains(host_mac)).collect();
    assert!(
        from_host.is_empty(),
        "the host end ({host_mac}) sent IPv6 into the pod:\n{}",
        from_host.join("\n")
    );
    assert_eq!(host[0]["inet6_addr_gen_mode"], "none", "{host}");
}

#[test]
fn garp_corrects_a_stale_neighbour_entry_on_the_node() {
    require_root();
    let node = node_with_bridge();
    let pod = Netns::new("pod");
    let link = pod_link(&pod, "ctr-neigh", Ipv4Addr::new(10, 1, 0, 17));
    let want = format_mac(&link.mac);
    in_netns(&node, || async {
        let dp = BridgeDatapath::new(BRIDGE).await.unwrap();
        // The node knew 10.1.0.17 at another MAC (the IP's previous owner)
        // and has no reason to ask again: the announcement alone must fix it.
        // Seeded after new(), whose MAC pinning flushes the bridge's entries.
        let old_owner = ["lladdr", "02:de:ad:be:ef:01", "dev", BRIDGE, "nud", "stale"];
        node.ip(&[&["neigh", "replace", "10.1.0.17"][..], &old_owner].concat());
        dp.wire(&link).await.unwrap();
        // Well before the second announcement (~+200 ms): the first one,
        // sent before wire returns, must have done it.
        let deadline = Instant::now() + Duration::from_millis(150);
        loop {
            let neigh = node.ip_json(&["neigh", "show", "10.1.0.17", "dev", BRIDGE]);
            if neigh[0]["lladdr"] == want.as_str() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the first gratuitous ARP did not update the node's neighbour entry: {neigh}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}

#[test]
fn wire_fails_cleanly_when_ifname_exists_in_pod() {
    require_root();
    let node = node_with_bridge();
    let pod = Netns::new("pod");
    pod.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ]);
    let before = pod.mac_of("eth0");
    in_netns(&node, || async {
        let dp = BridgeDatapath::new(BRIDGE).await.unwrap();
        let link = pod_link(&pod, "ctr-dup", Ipv4Addr::new(10, 1, 0, 17));
        let err = dp.wire(&link).await.unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, DatapathError::PodIfnameExists { .. }),
            "{err:?}"
        );
        assert!(msg.contains("eth0") && msg.contains(&pod.name), "{msg}");
        println!("{msg}");
        assert!(!dp.host_link_exists(&link.host_ifname).await.unwrap());
        assert!(!node.link_exists(&link.host_ifname), "host end left behind");
        assert_eq!(pod.mac_of("eth0"), before, "the pod's own eth0 was touched");
    });
}

#[test]
fn wire_fails_cleanly_when_host_link_exists() {
    require_root();
    let node = node_with_bridge();
    let (pod_a, pod_b) = (Netns::new("pod"), Netns::new("pod"));
    in_netns(&node, || async {
        let dp = BridgeDatapath::new(BRIDGE).await.unwrap();
        let first = pod_link(&pod_a, "ctr-same", Ipv4Addr::new(10, 1, 0, 17));
        dp.wire(&first).await.unwrap();
        // Same attachment key (so same host name), another sandbox.
        let second = PodLink {
            netns: pod_b.path(),
            ..pod_link(&pod_b, "ctr-same", Ipv4Addr::new(10, 1, 0, 18))
        };
        let err = dp.wire(&second).await.unwrap_err();
        assert!(
            matches!(err, DatapathError::HostLinkExists { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains(&first.host_ifname), "{err}");
        println!("{err}");
        assert!(
            !pod_b.link_exists("eth0"),
            "pod end created in the second pod"
        );
        // The first pod's wiring is not "rolled back" by the second's failure.
        dp.check(&first).await.unwrap();
    });
}

#[test]
fn wire_into_missing_netns_or_with_bad_input_leaves_nothing() {
    require_root();
    let node = node_with_bridge();
    let pod = Netns::new("pod");
    let links_before = node.ip_json(&["link", "show"]).as_array().unwrap().len();
    in_netns(&node, || async {
        let dp = BridgeDatapath::new(BRIDGE).await.unwrap();
        let missing = PathBuf::from(format!("/run/netns/moor-dp-{}-missing", std::process::id()));
        let link = PodLink {
            netns: missing.clone(),
            ..pod_link(&pod, "ctr-gone", Ipv4Addr::new(10, 1, 0, 17))
        };
        let err = dp.wire(&link).await.unwrap_err();
        assert!(
            matches!(err, DatapathError::NetnsNotFound { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains(missing.to_str().unwrap()), "{err}");
        println!("{err}");

        let outside = PodLink {
            gateway: Ipv4Addr::new(10, 2, 0, 1).into(),
            ..pod_link(&pod, "ctr-gw", Ipv4Addr::new(10, 1, 0, 17))
        };
        let err = dp.wire(&outside).await.unwrap_err();
        assert!(
            matches!(err, DatapathError::GatewayOutsideSubnet { .. }),
            "{err:?}"
        );

        let long = PodLink {
            ifname: "a-very-long-ifname".to_string(),
            ..pod_link(&pod, "ctr-long", Ipv4Addr::new(10, 1, 0, 17))
        };
        let err = dp.wire(&long).await.unwrap_err();
        assert!(
            matches!(err, DatapathError::InvalidIfname { .. }),
            "{err:?}"
        );
    });
    let links_after = node.ip_json(&["link", "show"]).as_array().unwrap().len();
    assert_eq!(
        links_before, links_after,
        "a failed wire left a link in the node"
    );
    assert!(!pod.link_exists("eth0"));
}

#[test]
fn a_pod_netns_deleted_after_its_add_takes_the_veth_along() {
    // The pod's work runs on pooled threads that wait for the next pod in
    // ipamd's own netns: one left in the pod's netns would keep the netns,
    // and with it the veth, alive for as long as it idles (10 s).
    require_root();
    let node = node_with_bridge();
    let pod = Netns::ipv4_only("pod");
    let link = pod_link(&pod, "ctr-netns-gone", Ipv4Addr::new(10, 1, 0, 19));
    in_netns(&node, || async {
        let dp = BridgeDatapath::new(BRIDGE).await.unwrap();
        dp.wire(&link).await.unwrap();
        dp.check(&link).await.unwrap();
    });
    // The runtime above is gone, and with it the announcer's socket.
    assert!(node.link_exists(&link.host_ifname));
    pod.delete();
    // The kernel's netns cleanup takes well under a second here: 5 s is
    // the margin, half the pooled threads' idle time.
    let deadline = Instant::now() + Duration::from_secs(5);
    while node.link_exists(&link.host_ifname) {
        assert!(
            Instant::now() < deadline,
            "{} outlived its pod's netns by 5 s: something still holds the netns",
            link.host_ifname
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn unwire_is_idempotent() {
    require_root();
    let node = node_with_bridge();
    let pod = Netns::new("pod");
    let gone = Netns::new("pod");
    in_netns(&node, || async {
        let dp = BridgeDatapath::new(BRIDGE).await.unwrap();
        let link = pod_link(&pod, "ctr-del", Ipv4Addr::new(10, 1, 0, 17));
        dp.wire(&link).await.unwrap();
        assert!(dp.host_link_exists(&link.host_ifname).await.unwrap());
        dp.unwire(&link.host_ifname).await.unwrap();
        assert!(!dp.host_link_exists(&link.host_ifname).await.unwrap());
        dp.unwire(&link.host_ifname).await.unwrap();
        dp.unwire("mrneverexisted").await.unwrap();

        // The sandbox's netns is deleted before DEL (the runtime tore it down).
        let link = pod_link(&gone, "ctr-gone", Ipv4Addr::new(10, 1, 0, 18));
        dp.wire(&link).await.unwrap();
        run("ip", &["netns", "del", &gone.name]);
        dp.unwire(&link.host_ifname).await.unwrap();
        dp.unwire(&link.host_ifname).await.unwrap();
    });
}

#[test]
fn delete_link_blocking_reports_whether_it_deleted() {
    require_root();
    let node = Netns::new("node");
    node.ip(&[
        "link", "add", "dlb0", "type", "veth", "peer", "name", "dlb1",
    ]);
    let path = node.path();
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(&path);
            assert!(moor_ipamd::datapath::delete_link_blocking("dlb0").unwrap());
            assert!(!moor_ipamd::datapath::delete_link_blocking("dlb0").unwrap());
            // Also from inside a runtime (it then uses a thread of its own,
            // which starts in this thread's netns).
            node.ip(&[
                "link", "add", "dlb2", "type", "veth", "peer", "name", "dlb3",
            ]);
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async {
                assert!(moor_ipamd::datapath::delete_link_blocking("dlb2").unwrap());
            });
        })
        .join()
        .unwrap();
    });
    assert!(!node.link_exists("dlb0") && !node.link_exists("dlb1") && !node.link_exists("dlb2"));
}

#[test]
fn check_passes_after_wire_and_names_what_broke() {
    require_root();
    let node = node_with_bridge();
    let pod = Netns::new("pod");
    in_netns(&node, || async {
        let dp = BridgeDatapath::new(BRIDGE).await.unwrap();
        let link = pod_link(&pod, "ctr-check", Ipv4Addr::new(10, 1, 0, 17));
        dp.wire(&link).await.unwrap();
        dp.check(&link).await.unwrap();

        let wrong_mac = PodLink {
            mac: [0x0a, 0x58, 1, 2, 3, 4],
            ..link.clone()
        };
        let err = dp.check(&wrong_mac).await.unwrap_err();
        assert!(err.to_string().contains("MAC"), "{err}");

        pod.ip(&["addr", "del", "10.1.0.17/24", "dev", "eth0"]);
        let err = dp.check(&link).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, DatapathError::CheckFailed(_)), "{err:?}");
        assert!(
            msg.contains("10.1.0.17/24") && msg.contains("eth0"),
            "{msg}"
        );
        println!("{msg}");

        dp.unwire(&link.host_ifname).await.unwrap();
        let err = dp.check(&link).await.unwrap_err();
        assert!(err.to_string().contains(&link.host_ifname), "{err}");
    });
}

#[test]
fn bridge_mac_stays_pinned_when_lower_macs_join() {
    require_root();
    let node = Netns::new("node");
    // Bridges with kernel-chosen MACs: unpinned, they follow their lowest port.
    for bridge in ["brpin", "brfree"] {
        node.ip(&["link", "add", bridge, "type", "bridge"]);
        node.ip(&["link", "set", bridge, "up"]);
        node.ip(&["addr", "add", &format!("{GATEWAY}/24"), "dev", bridge]);
    }
    let pod = Netns::new("pod");
    let add_low_port = |bridge: &str, port: &str, peer: &str| {
        node.ip(&[
            "link",
            "add",
            port,
            "address",
            "02:00:00:00:00:01",
            "type",
            "veth",
            "peer",
            "name",
            peer,
        ]);
        node.ip(&["link", "set", port, "master", bridge, "up"]);
    };
    // Control: without pinning, a port with a lower MAC takes over.
    add_low_port("brfree", "lowf", "lowf1");
    assert_eq!(
        node.mac_of("brfree"),
        "02:00:00:00:00:01",
        "this kernel's bridge does not follow its lowest port; the pin test below proves nothing"
    );

    let pinned = node.mac_of("brpin");
    in_netns(&node, || async {
        let dp = BridgeDatapath::new("brpin").await.unwrap();
        dp.wire(&pod_link(&pod, "ctr-pin", Ipv4Addr::new(10, 1, 0, 17)))
            .await
            .unwrap();
        add_low_port("brpin", "lowp", "lowp1");
        assert_eq!(node.mac_of("brpin"), pinned, "bridge MAC moved");
    });
}

#[test]
fn new_names_a_missing_or_wrong_bridge() {
    require_root();
    let node = Netns::new("node");
    node.ip(&["link", "add", "vx0", "type", "veth", "peer", "name", "vx1"]);
    in_netns(&node, || async {
        let err = BridgeDatapath::new("nosuchbr").await.err().unwrap();
        assert!(
            matches!(err, DatapathError::BridgeNotFound { .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("bridge nosuchbr not found"),
            "{err}"
        );
        let err = BridgeDatapath::new("vx0").await.err().unwrap();
        assert!(matches!(err, DatapathError::NotABridge { .. }), "{err:?}");
        assert!(err.to_string().contains("vx0 is a veth"), "{err}");
        println!("{err}");
    });
}

#[test]
fn restart_does_not_repin_or_flush_neighbours() {
    require_root();
    let node = Netns::new("node");
    node.ip(&["link", "add", "brr", "type", "bridge"]);
    node.ip(&["link", "set", "brr", "up"]);
    let path = node.path();
    std::thread::scope(|s| {
        let thread = s.spawn(|| {
            // ipamd sees its own netns's devices in /sys (a DaemonSet with
            // host networking does); give this thread the same view.
            enter(&path);
            mount_private_sysfs();
            let read =
                |f: &str| std::fs::read_to_string(format!("/sys/class/net/brr/{f}")).unwrap();
            assert_eq!(
                read("addr_assign_type").trim(),
                "1",
                "a new bridge's MAC is random"
            );
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                BridgeDatapath::new("brr").await.unwrap();
                assert_eq!(
                    read("addr_assign_type").trim(),
                    "3",
                    "new() did not pin the MAC"
                );
                let static_neigh = ["10.1.0.99", "lladdr", "02:00:00:00:99:99", "dev", "brr"];
                node.ip(&[&["neigh", "add"][..], &static_neigh, &["nud", "permanent"]].concat());
                // ipamd restarts: pinning again would flush the entry.
                BridgeDatapath::new("brr").await.unwrap();
                let neigh = node.ip_json(&["neigh", "show", "10.1.0.99", "dev", "brr"]);
                assert_eq!(
                    neigh[0]["lladdr"], "02:00:00:00:99:99",
                    "neighbours flushed: {neigh}"
                );
            });
        });
        if let Err(panic) = thread.join() {
            std::panic::resume_unwind(panic);
        }
    });
}

/// Gives the calling thread a private mount namespace with a sysfs mounted
/// from its current netns (as `ip netns exec` does for a process).
fn mount_private_sysfs() {
    // SAFETY: plain syscalls on constant, NUL-terminated strings; unshare
    // affects only this thread, which exits at the end of the test.
    unsafe {
        assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0, "unshare(CLONE_NEWNS)");
        let root = c"/".as_ptr();
        let none = std::ptr::null();
        assert_eq!(
            libc::mount(none, root, none, libc::MS_REC | libc::MS_SLAVE, none.cast()),
            0,
            "make / a slave mount"
        );
        let sysfs = c"sysfs".as_ptr();
        assert_eq!(
            libc::mount(sysfs, c"/sys".as_ptr(), sysfs, 0, none.cast()),
            0,
            "mount sysfs: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[test]
fn wire_rolls_back_when_a_pod_side_step_fails() {
    require_root();
    let node = node_with_bridge();
    let pod = Netns::new("pod");
    // The pod already has a default route (another interface with a gateway),
    // so adding ours fails after the veth exists.
    pod.ip(&[
        "link",
        "add",
        "net1",
        "type",
        "veth",
        "peer",
        "name",
        "net1-peer",
    ]);
    pod.ip(&["link", "set", "net1-peer", "up"]);
    pod.ip(&["link", "set", "net1", "up"]);
    pod.ip(&["addr", "add", "10.9.0.2/24", "dev", "net1"]);
    pod.ip(&["route", "add", "default", "via", "10.9.0.1"]);
    in_netns(&node, || async {
        let dp = BridgeDatapath::new(BRIDGE).await.unwrap();
        let link = pod_link(&pod, "ctr-route", Ipv4Addr::new(10, 1, 0, 17));
        let err = dp.wire(&link).await.unwrap_err();
        assert!(
            err.to_string().contains("already has a default route"),
            "{err}"
        );
        println!("{err}");
        assert!(
            !node.link_exists(&link.host_ifname),
            "host end not rolled back"
        );
        assert!(!pod.link_exists("eth0"), "pod end not rolled back");
    });
}

// ------------------------------------------------- DEL without the kernel

/// A reap policy that never reaps on its own: what the graveyard holds
/// stays until a flush or the next start.
const NEVER: ReapPolicy = ReapPolicy {
    quiet: Duration::from_secs(3600),
    max_wait: Duration::from_secs(3600),
};

/// How long a test waits for the reaper (default policy: 50 ms of quiet).
const REAPED_WITHIN: Duration = Duration::from_secs(5);

/// The links in moor's device group in `netns` (`ip -j -d link show`).
fn graves(netns: &Netns) -> Vec<serde_json::Value> {
    // `ip link show group N` prints `{}` for every other link: filter.
    let group = GRAVEYARD_GROUP.to_string();
    let v = netns.ip_json(&["link", "show"]);
    let all = v.as_array().cloned().unwrap_or_default();
    all.into_iter()
        .filter(|l| l["group"] == group.as_str())
        .collect()
}

/// Right after an unwire: every retired link is down, out of the bridge and
/// named either as a grave or (the host end, which keeps its name until it
/// is reaped or a same-key re-ADD needs it) `host_ifname`; the pod's
/// interface (until reaped) has no carrier, so its IP is not live.
fn assert_cut_off(node: &Netns, pod: &Netns, host_ifname: &str) {
    for g in graves(node) {
        let flags = g["flags"].as_array().cloned().unwrap_or_default();
        assert!(!flags.iter().any(|f| f == "UP"), "retired link up: {g}");
        assert!(g.get("master").is_none(), "retired link still a port: {g}");
        let name = g["ifname"].as_str().unwrap();
        assert!(name.starts_with(GRAVE_PREFIX) || name == host_ifname, "{g}");
        assert_eq!(g["ifalias"], RETIRED_ALIAS, "says what it is: {g}");
    }
    // One snapshot: the reaper may delete the link at any moment.
    let all = node.ip_json(&["link", "show"]);
    for l in all.as_array().into_iter().flatten() {
        if l["ifname"] == host_ifname {
            let group = GRAVEYARD_GROUP.to_string();
            assert_eq!(l["group"], group.as_str(), "host end not retired: {l}");
        }
    }
    assert_ne!(pod.carrier("eth0"), Some(true), "pod end has carrier");
}

/// Polls (bounded) until the graveyard of `node` is empty and `pod` has no
/// eth0.
fn wait_reaped(node: &Netns, pod: &Netns) {
    let started = Instant::now();
    while !graves(node).is_empty() || pod.link_exists("eth0") {
        assert!(
            started.elapsed() < REAPED_WITHIN,
            "not reaped within {REAPED_WITHIN:?}: graves {:?}, pod links {:?}",
            graves(node),
            pod.links()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("reaped within {:?} of the check", started.elapsed());
}

async fn wait_reaped_or_flush(dp: &BridgeDatapath, node: &Netns) {
    dp.flush_graveyard().await.unwrap();
    assert!(graves(node).is_empty());
}

fn pings_gateway(pod: &Netns) -> bool {
    pod.exec(&["ping", "-c1", "-W1", &GATEWAY.to_string()])
        .status
        .success()
}

#[test]
fn unwire_cuts_the_pod_off_at_once_and_the_reaper_deletes_it_later() {
    require_root();
    let node = node_with_bridge();
    let pod = Netns::ipv4_only("pod");
    in_netns(&node, || async {
        let dp = BridgeDatapath::new(BRIDGE).await.unwrap();
        let link = pod_link(&pod, "ctr-cut", Ipv4Addr::new(10, 1, 0, 50));
        dp.wire(&link).await.unwrap();
        assert!(pings_gateway(&pod));
        let index = node.link(&link.host_ifname)["ifindex"].as_u64().unwrap();

        let started = Instant::now();
        dp.unwire(&link.host_ifname).await.unwrap();
        println!("unwire returned after {:?}", started.elapsed());
        // Checked before the reaper's 50 ms of quiet can have passed? Not
        // guaranteed on a loaded machine, so each check holds either way.
        assert_cut_off(&node, &pod, &link.host_ifname);
        let graves_now = graves(&node);
        if let Some(g) = graves_now.first() {
            assert_eq!(g["ifindex"], index, "{g}");
            assert_eq!(
                g["ifname"],
                link.host_ifname.as_str(),
                "no rename at DEL: {g}"
            );
            assert!(
                !pings_gateway(&pod),
                "a retired pod still reaches the gateway"
            );
        }
        wait_reaped(&node, &pod);
        let stats = dp.graveyard_stats();
        assert_eq!(stats.parked, 1, "{stats:?}");
        assert!(stats.requests >= 2, "start and one reap: {stats:?}");
    });
}

#[test]
fn retired_links_are_down_off_the_bridge_and_without_carrier_until_reaped() {
    require_root();
    let node = node_with_bridge();
    let pod = Netns::ipv4_only("pod");
    in_netns(&node, || async {
        let dp = BridgeDatapath::new(BRIDGE)
            .await
            .unwrap()
            .with_reap_policy(NEVER);
        let link = pod_link(&pod, "ctr-park", Ipv4Addr::new(10, 1, 0, 51));
        dp.wire(&link).await.unwrap();
        dp.unwire(&link.host_ifname).await.unwrap();
        assert_cut_off(&node, &pod, &link.host_ifname);
        assert_eq!(graves(&node).len(), 1);
        assert_eq!(
            pod.carrier("eth0"),
            Some(false),
            "pod end kept until reaped"
        );
        assert!(
            !pings_gateway(&pod),
            "a retired pod still reaches the gateway"
        );
        // The leak sweep and CHECK look host ends up by name: gone.
        assert!(!dp.host_link_exists(&link.host_ifname).await.unwrap());
        dp.flush_graveyard().await.unwrap();
        assert!(graves(&node).is_empty() && !pod.link_exists("eth0"));
    });
}

#[test]
fn re_add_of_the_same_key_right_after_del_works_and_reaches_the_gateway() {
    require_root();
    let node = node_with_bridge();
    let node2 = node_with_bridge();
    let (pod, fresh) = (Netns::ipv4_only("pod"), Netns::ipv4_only("pod"));
    in_netns(&node, || async {
        let dp = BridgeDatapath::new(BRIDGE)
            .await
            .unwrap()
            .with_reap_policy(NEVER);
        let ip = Ipv4Addr::new(10, 1, 0, 52);
        let link = pod_link(&pod, "ctr-again", ip);
        dp.wire(&link).await.unwrap();
        dp.unwire(&link.host_ifname).await.unwrap();
        assert_eq!(graves(&node).len(), 1, "the old veth is still going away");

        // Into the same netns: its eth0 is the old pod end, not yet reaped,
        // and the old host end still holds the host name; the ADD moves both
        // aside (grave names) and takes the names.
        let old_index = pod.link("eth0")["ifindex"].as_u64().unwrap();
        let old_host_index = node.link(&link.host_ifname)["ifindex"].as_u64().unwrap();
        let started = Instant::now();
        dp.wire(&link).await.unwrap();
        println!("re-ADD into the same netns: {:?}", started.elapsed());
        assert_eq!(
            graves(&node).len(),
            1,
            "a re-ADD does not wait for the reaper"
        );
        assert_eq!(pod.carrier("eth0"), Some(true));
        let old = pod.link(&format!("{GRAVE_PREFIX}{old_index}"));
        let flags = old["flags"].as_array().unwrap();
        assert!(!flags.iter().any(|f| f == "UP"), "old pod end up: {old}");
        let old_host = node.link(&format!("{GRAVE_PREFIX}{old_host_index}"));
        assert_eq!(old_host["group"], GRAVEYARD_GROUP.to_string(), "{old_host}");
        assert_ne!(
            node.link(&link.host_ifname)["ifindex"].as_u64().unwrap(),
            old_host_index,
            "the new pair holds the host name"
        );
        assert!(pings_gateway(&pod), "re-ADDed pod cannot reach the gateway");
        dp.check(&link).await.unwrap();
        wait_reaped_or_flush(&dp, &node).await;
        assert_eq!(
            pod.links().len(),
            2,
            "lo and the new eth0: {:?}",
            pod.links()
        );

        // Into a new netns (a new sandbox with the same key): only the host
        // name is needed, and it is free at once.
        dp.unwire(&link.host_ifname).await.unwrap();
        let moved = PodLink {
            netns: fresh.path(),
            ..link.clone()
        };
        dp.wire(&moved).await.unwrap();
        assert_eq!(graves(&node).len(), 1, "the old veth waits for the reaper");
        assert_eq!(pod.carrier("eth0"), Some(false), "old pod end not live");
        assert!(
            pings_gateway(&fresh),
            "re-ADDed pod cannot reach the gateway"
        );
        dp.unwire(&moved.host_ifname).await.unwrap();
        dp.flush_graveyard().await.unwrap();
        assert!(graves(&node).is_empty());

        // The same netns, re-ADDed by another node (its host ends in another
        // netns, as the e2e clusters' nodes share pod namespaces): the
        // retired end is told by its alias.
        dp.wire(&link).await.unwrap();
        dp.unwire(&link.host_ifname).await.unwrap();
        let other = BridgeDatapath::new_in(BRIDGE, Some(&node2.path()))
            .await
            .unwrap();
        other.wire(&link).await.unwrap();
        assert_eq!(pod.carrier("eth0"), Some(true));
        assert_eq!(graves(&node).len(), 1, "the first node's reaper has it");
        other.unwire(&link.host_ifname).await.unwrap();
    });
}

#[test]
fn a_crash_leaves_retired_links_that_the_next_start_deletes() {
    require_root();
    let node = node_with_bridge();
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("pod")).collect();
    in_netns(&node, || async {
        let dp = BridgeDatapath::new(BRIDGE)
            .await
            .unwrap()
            .with_reap_policy(NEVER);
        for (i, pod) in pods.iter().enumerate() {
            let link = pod_link(
                pod,
                &format!("ctr-crash-{i}"),
                Ipv4Addr::new(10, 1, 0, 60 + i as u8),
            );
            dp.wire(&link).await.unwrap();
            if i < 2 {
                dp.unwire(&link.host_ifname).await.unwrap();
            } else {
                // A crash inside a retire on a kernel that needs two
                // requests: in the group, still under its live name.
                node.ip(&[
                    "link",
                    "set",
                    &link.host_ifname,
                    "down",
                    "group",
                    &GRAVEYARD_GROUP.to_string(),
                ]);
            }
        }
        assert_eq!(graves(&node).len(), 3);
        // The "crash": the datapath goes without reaping.
        drop(dp);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(graves(&node).len(), 3, "nothing reaps without a datapath");

        let dp = BridgeDatapath::new(BRIDGE).await.unwrap();
        assert!(
            graves(&node).is_empty(),
            "the next start deleted the leftovers"
        );
        for pod in &pods {
            assert!(!pod.link_exists("eth0"));
        }
        let stats = dp.graveyard_stats();
        assert_eq!((stats.requests, stats.reaps), (1, 1), "{stats:?}");
    });
}

#[test]
fn a_burst_of_dels_is_reaped_in_few_batches() {
    require_root();
    const PODS: usize = 20;
    let node = node_with_bridge();
    let pods: Vec<Netns> = (0..PODS).map(|_| Netns::new("pod")).collect();
    in_netns(&node, || async {
        let dp = BridgeDatapath::new(BRIDGE).await.unwrap();
        let links: Vec<PodLink> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                pod_link(
                    pod,
                    &format!("ctr-burst-{i}"),
                    Ipv4Addr::new(10, 1, 0, 100 + i as u8),
                )
            })
            .collect();
        for link in &links {
            dp.wire(link).await.unwrap();
        }
        let before = dp.graveyard_stats();
        let started = Instant::now();
        for link in &links {
            dp.unwire(&link.host_ifname).await.unwrap();
        }
        let took = started.elapsed();
        println!("{PODS} unwires in {took:?}");
        let waited = Instant::now();
        while !graves(&node).is_empty() || pods.iter().any(|p| p.link_exists("eth0")) {
            assert!(waited.elapsed() < REAPED_WITHIN, "burst not reaped");
            std::thread::sleep(Duration::from_millis(10));
        }
        // The links go when the kernel has deleted them, a moment before
        // the reaper thread counts its reap: wait for the count (bounded).
        let mut after = dp.graveyard_stats();
        while after.reaps == before.reaps && waited.elapsed() < REAPED_WITHIN {
            std::thread::sleep(Duration::from_millis(5));
            after = dp.graveyard_stats();
        }
        let reaps = after.reaps - before.reaps;
        let requests = after.requests - before.requests;
        println!("{PODS} DELs reaped in {reaps} group deletes ({requests} requests)");
        assert_eq!(after.parked - before.parked, PODS as u64);
        assert!(
            (1..=3).contains(&reaps) && requests <= 3,
            "{PODS} DELs took {reaps} reaps, {requests} requests"
        );
    });
}
