//! The OVS-mode datapath against a real ovsdb-server and ovs-vswitchd
//! (userspace datapath, `datapath_type=netdev`), started per test by the
//! moor-ovs harness: ovs-vswitchd runs in a fresh "node" netns, which also
//! holds the host ends of pod veths; the datapath's netlink socket is opened
//! in there (`OvsDatapath::new_in`). Pods are network namespaces. Checked
//! with `ovs-vsctl`, `ip` and `ping`. Needs root; missing OVS binaries fail
//! the tests, they are never skipped.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use moor_ipamd::datapath::{
    BridgeDatapath, Datapath, DatapathError, OvsConfig, OvsDatapath, PodLink, ReapPolicy,
    GRAVEYARD_GROUP, GRAVE_PREFIX,
};
use moor_ovs::Endpoint;
use moor_proto::{host_ifname, mac_for_ipv4};
use moor_testkit::cmd::run;
use moor_testkit::netns::{link_exists, Netns};
use moor_testkit::tcp_echo::tcp_echo;
use moor_testkit::Ovs;
use serde_json::Value;

#[path = "ovs_datapath/ipv6.rs"]
mod ipv6;

const BRIDGE: &str = "br-int";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);

fn require_root() {
    moor_testkit::cmd::require_root(
        "the ovs_datapath tests create network namespaces and run Open vSwitch \
         (e.g. sudo -E cargo test -p moor-ipamd --test ovs_datapath)",
    );
}

fn node_path(ovs: &Ovs) -> PathBuf {
    PathBuf::from("/run/netns").join(&ovs.netns)
}

fn config(ovs: &Ovs) -> OvsConfig {
    OvsConfig {
        datapath_type: Some("netdev".into()),
        ..OvsConfig::new(Endpoint::Unix(ovs.sock.clone()), BRIDGE)
    }
}

async fn datapath(ovs: &Ovs, cfg: &OvsConfig) -> OvsDatapath {
    OvsDatapath::new_in(cfg, Some(&node_path(ovs)))
        .await
        .expect("OvsDatapath::new_in")
}

fn pod_link(pod: &Netns, container_id: &str, ip: Ipv4Addr, vlan: u16) -> PodLink {
    PodLink {
        netns: pod.path(),
        ifname: "eth0".to_string(),
        host_ifname: host_ifname(container_id, "eth0"),
        address: ipnetwork::Ipv4Network::new(ip, 24).unwrap().into(),
        gateway: GATEWAY.into(),
        ipv6: None,
        mac: mac_for_ipv4(ip),
        vlan: Some(vlan),
        pod_namespace: "shop".to_string(),
        pod_name: format!("pod-{container_id}"),
        container_id: container_id.to_string(),
    }
}

/// The ports of `bridge`, sorted.
fn ports(ovs: &Ovs, bridge: &str) -> Vec<String> {
    let mut p: Vec<String> = ovs
        .vsctl(&["list-ports", bridge])
        .lines()
        .map(str::to_string)
        .collect();
    p.sort();
    p
}

/// Every Port row's name, duplicates kept, sorted.
fn port_rows(ovs: &Ovs) -> Vec<String> {
    let mut p: Vec<String> = ovs
        .vsctl(&["--bare", "--columns=name", "find", "port"])
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    p.sort();
    p
}

/// A port's tag, trunks and external_ids as `ovs-vsctl` reads them.
fn port_settings(ovs: &Ovs, name: &str) -> (Option<u64>, Vec<u64>, BTreeMap<String, String>) {
    let raw = ovs.vsctl(&[
        "--format=json",
        "--columns=tag,trunks,external_ids",
        "list",
        "port",
        name,
    ]);
    let v: Value = serde_json::from_str(&raw).expect("ovs-vsctl prints JSON");
    let row = &v["data"][0];
    let set = |x: &Value| -> Vec<u64> {
        match x {
            Value::Number(n) => vec![n.as_u64().unwrap()],
            Value::Array(a) if a[0] == "set" => a[1]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_u64().unwrap())
                .collect(),
            other => panic!("not a set of integers: {other}"),
        }
    };
    let tag = set(&row[0]).first().copied();
    let trunks = set(&row[1]);
    let ids = row[2][1]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| {
            (
                kv[0].as_str().unwrap().to_string(),
                kv[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (tag, trunks, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_one_vlan_reach_each_other_and_another_vlan_is_isolated() {
    require_root();
    let ovs = Ovs::start();
    let dp = datapath(&ovs, &config(&ovs)).await;
    assert_eq!(
        ovs.vsctl(&["get", "bridge", BRIDGE, "datapath_type"]),
        "netdev"
    );
    let (pa, pb, pc) = (
        Netns::ipv4_only("a"),
        Netns::ipv4_only("b"),
        Netns::ipv4_only("c"),
    );
    let (ipa, ipb, ipc) = (
        Ipv4Addr::new(10, 1, 0, 11),
        Ipv4Addr::new(10, 1, 0, 12),
        Ipv4Addr::new(10, 1, 0, 13),
    );
    let a = pod_link(&pa, "ctr-a", ipa, 100);
    let b = pod_link(&pb, "ctr-b", ipb, 100);
    // Same subnet, other VLAN: only the tag keeps it apart.
    let c = pod_link(&pc, "ctr-c", ipc, 200);
    for l in [&a, &b, &c] {
        let wired = dp.wire(l).await.unwrap();
        assert_eq!(wired.mtu, dp.mtu());
        dp.check(l).await.unwrap();
    }

    let (tag, trunks, ids) = port_settings(&ovs, &a.host_ifname);
    assert_eq!((tag, trunks.len()), (Some(100), 0));
    let want: BTreeMap<String, String> = [
        ("moor-owner", "moor"),
        ("moor-namespace", "shop"),
        ("moor-name", "pod-ctr-a"),
        ("moor-container", "ctr-a"),
        ("moor-ifname", "eth0"),
        ("moor-ip", "10.1.0.11"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(ids, want);
    assert_eq!(port_settings(&ovs, &c.host_ifname).0, Some(200));
    let ofport: i64 = ovs
        .vsctl(&["get", "interface", &a.host_ifname, "ofport"])
        .parse()
        .unwrap();
    assert!(ofport > 0, "ofport {ofport}");
    // The host end carries no Linux master: OVS owns it.
    let host = run(
        "ip",
        &["-n", &ovs.netns, "-o", "link", "show", &a.host_ifname],
    );
    assert!(!host.contains("master"), "{host}");

    assert!(pa.reaches(ipb, Duration::from_secs(5)), "a cannot reach b");
    assert!(pb.pings(ipa), "b cannot reach a");
    // TCP too: on the userspace datapath this needs the pods' TX checksum
    // offload off, which wire does.
    tcp_echo(pa.path(), pb.path(), ipb, 1 << 20).expect("TCP from a to b");
    assert!(!pc.pings(ipa), "VLAN 200 reaches VLAN 100");
    assert!(!pa.pings(ipc), "VLAN 100 reaches VLAN 200");

    // A tag changed by hand: CHECK says what is wrong.
    ovs.vsctl(&["set", "port", &c.host_ifname, "tag=300"]);
    let err = dp.check(&c).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DatapathError::CheckFailed(_)), "{err:?}");
    assert!(
        msg.contains(&c.host_ifname) && msg.contains("tag 300, expected 200"),
        "{msg}"
    );
    println!("{msg}");

    // Proof that the tag was what isolated c: with 100 it reaches a.
    ovs.vsctl(&["set", "port", &c.host_ifname, "tag=100"]);
    assert!(pc.reaches(ipa, Duration::from_secs(5)), "c with tag 100");

    // The pod side is checked as in physical mode.
    pa.ip(&["addr", "flush", "dev", "eth0"]);
    let err = dp.check(&a).await.unwrap_err().to_string();
    assert!(err.contains("does not have address 10.1.0.11/24"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwire_removes_port_and_veth_and_is_idempotent() {
    require_root();
    let ovs = Ovs::start();
    let dp = datapath(&ovs, &config(&ovs)).await;
    let pod = Netns::ipv4_only("pod");
    let link = pod_link(&pod, "ctr-del", Ipv4Addr::new(10, 1, 0, 21), 100);
    dp.wire(&link).await.unwrap();
    assert_eq!(ports(&ovs, BRIDGE), vec![link.host_ifname.clone()]);
    assert!(dp.host_link_exists(&link.host_ifname).await.unwrap());

    dp.unwire(&link.host_ifname).await.unwrap();
    assert!(ports(&ovs, BRIDGE).is_empty());
    assert!(port_rows(&ovs).iter().all(|p| p == BRIDGE), "port row left");
    assert!(
        !link_exists(&ovs.netns, &link.host_ifname),
        "host end kept its name"
    );
    assert_ne!(pod.carrier("eth0"), Some(true), "pod end has carrier");
    assert!(!dp.host_link_exists(&link.host_ifname).await.unwrap());
    wait_reaped(&ovs, &pod);

    // Again, and for something never wired: nothing missing is an error.
    dp.unwire(&link.host_ifname).await.unwrap();
    dp.unwire("mrneverwired").await.unwrap();
    let err = dp.check(&link).await.unwrap_err().to_string();
    assert!(err.contains("does not exist"), "{err}");

    // The same pod wired again works (nothing stale in the way).
    dp.wire(&link).await.unwrap();
    dp.check(&link).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_removes_stale_ports_and_readds_missing_ones() {
    require_root();
    let ovs = Ovs::start();
    let dp = datapath(&ovs, &config(&ovs)).await;
    let (pa, pb, ps, pg) = (
        Netns::ipv4_only("a"),
        Netns::ipv4_only("b"),
        Netns::ipv4_only("stale"),
        Netns::ipv4_only("gone"),
    );
    let (ipa, ipb) = (Ipv4Addr::new(10, 1, 0, 31), Ipv4Addr::new(10, 1, 0, 32));
    let a = pod_link(&pa, "ctr-a", ipa, 100);
    let b = pod_link(&pb, "ctr-b", ipb, 100);
    let stale = pod_link(&ps, "ctr-stale", Ipv4Addr::new(10, 1, 0, 33), 100);
    // Live per the store, but never wired here (its host veth is gone).
    let gone = pod_link(&pg, "ctr-gone", Ipv4Addr::new(10, 1, 0, 34), 100);
    for l in [&a, &b, &stale] {
        dp.wire(l).await.unwrap();
    }
    assert!(pa.reaches(ipb, Duration::from_secs(5)));
    // Someone else's port: never touched.
    ovs.ip(&[
        "link", "add", "other0", "type", "veth", "peer", "name", "other0p",
    ]);
    ovs.vsctl(&["add-port", BRIDGE, "other0"]);

    // a's port deleted by hand, b's retagged by hand.
    ovs.vsctl(&["del-port", BRIDGE, &a.host_ifname]);
    ovs.vsctl(&["set", "port", &b.host_ifname, "tag=300"]);
    assert!(!pa.pings(ipb), "a still reaches b without its port");

    let live = [a.clone(), b.clone(), gone.clone()];
    let started = Instant::now();
    let report = dp.reconcile(&live).await.unwrap();
    println!("reconcile took {:?}: {report:?}", started.elapsed());
    assert_eq!(report.removed, vec![stale.host_ifname.clone()]);
    assert_eq!(report.readded, vec![a.host_ifname.clone()]);
    assert_eq!(report.repaired, vec![b.host_ifname.clone()]);
    assert_eq!(report.host_gone, vec![gone.clone()]);
    assert_eq!(report.kept, 0);

    let mut want = vec![
        a.host_ifname.clone(),
        b.host_ifname.clone(),
        "other0".to_string(),
    ];
    want.sort();
    assert_eq!(ports(&ovs, BRIDGE), want);
    assert_eq!(port_settings(&ovs, &b.host_ifname).0, Some(100));
    // Only the port goes: the stale pod's veth is left for its DEL.
    assert!(link_exists(&ovs.netns, &stale.host_ifname));
    dp.check(&a).await.unwrap();
    dp.check(&b).await.unwrap();
    assert!(pa.reaches(ipb, Duration::from_secs(5)), "a after re-add");
    assert!(pb.pings(ipa));

    // Nothing left to do.
    let again = dp.reconcile(&live).await.unwrap();
    assert_eq!(
        (
            again.kept,
            again.removed.len(),
            again.readded.len(),
            again.repaired.len()
        ),
        (2, 0, 0, 0),
        "{again:?}"
    );
    assert_eq!(again.host_gone, vec![gone]);
    let mut rows = port_rows(&ovs);
    rows.dedup();
    assert_eq!(rows.len(), port_rows(&ovs).len(), "duplicate port rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_rolls_back_when_the_port_cannot_be_added() {
    require_root();
    let mut ovs = Ovs::start();
    let cfg = OvsConfig {
        timeout: Duration::from_secs(1),
        ..config(&ovs)
    };
    let dp = datapath(&ovs, &cfg).await;
    let pod = Netns::ipv4_only("pod");
    let link = pod_link(&pod, "ctr-rb", Ipv4Addr::new(10, 1, 0, 41), 100);

    // The bridge is gone: the transaction aborts, the veth is deleted.
    ovs.vsctl(&["del-br", BRIDGE]);
    let err = dp.wire(&link).await.unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(matches!(err, DatapathError::Ovs { .. }), "{err:?}");
    assert!(msg.contains("no bridge \"br-int\""), "{msg}");
    assert!(!link_exists(&ovs.netns, &link.host_ifname), "veth left");
    assert!(!pod.link_exists("eth0"), "pod end left");

    // ovs-vswitchd stopped: the port is written but never applied; the
    // wire times out and removes both the port row and the veth.
    ovs.vsctl(&[
        "add-br",
        BRIDGE,
        "--",
        "set",
        "bridge",
        BRIDGE,
        "datapath_type=netdev",
    ]);
    ovs.stop_vswitchd();
    let started = Instant::now();
    let err = dp.wire(&link).await.unwrap_err().to_string();
    println!("after {:?}: {err}", started.elapsed());
    assert!(err.contains("is it running?"), "{err}");
    assert!(
        err.contains(&ovs.db()),
        "error does not name the endpoint: {err}"
    );
    assert!(ports(&ovs, BRIDGE).is_empty(), "port row left");
    assert!(!link_exists(&ovs.netns, &link.host_ifname), "veth left");
    assert!(!pod.link_exists("eth0"), "pod end left");
}

/// ovsdb-server killed and restarted under live pods. Note what OVS does
/// here: ovs-vswitchd's main loop (`bridge_run`) does nothing while it does
/// not hold its database lock, and with the userspace datapath that loop is
/// also what moves packets between system (AF_PACKET) ports, so pods stop
/// talking during the outage and until ovs-vswitchd reconnects on its own
/// backoff (1, 2, 4, 8 s). The kernel datapath would keep forwarding. The
/// test prints what it saw and insists on what is ipamd's: clear, bounded
/// errors meanwhile, nothing left behind, the client reconnecting by itself,
/// pods working again, no duplicate port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_survive_an_ovsdb_server_restart_and_the_next_wire_works() {
    require_root();
    let mut ovs = Ovs::start();
    let cfg = OvsConfig {
        timeout: Duration::from_secs(2),
        ..config(&ovs)
    };
    let dp = datapath(&ovs, &cfg).await;
    let (pa, pb, pc) = (
        Netns::ipv4_only("a"),
        Netns::ipv4_only("b"),
        Netns::ipv4_only("c"),
    );
    let (ipa, ipb, ipc) = (
        Ipv4Addr::new(10, 1, 0, 51),
        Ipv4Addr::new(10, 1, 0, 52),
        Ipv4Addr::new(10, 1, 0, 53),
    );
    let a = pod_link(&pa, "ctr-a", ipa, 100);
    let b = pod_link(&pb, "ctr-b", ipb, 100);
    let c = pod_link(&pc, "ctr-c", ipc, 100);
    // d is deleted while ovsdb-server is down.
    let pd = Netns::ipv4_only("d");
    let d = pod_link(&pd, "ctr-d", Ipv4Addr::new(10, 1, 0, 54), 100);
    dp.wire(&a).await.unwrap();
    dp.wire(&b).await.unwrap();
    dp.wire(&d).await.unwrap();
    assert!(pa.reaches(ipb, Duration::from_secs(5)));

    ovs.kill_ovsdb_server();
    let forwarding = pa.pings(ipb);
    println!("forwarding while ovsdb-server is down (userspace datapath): {forwarding}");
    // A wire meanwhile fails within its timeout, naming the endpoint, and
    // leaves nothing behind. An unwire succeeds: the veth goes, and the
    // port row (if any) is left to the leak sweep's `orphan_ports`.
    let started = Instant::now();
    let err = dp.wire(&c).await.unwrap_err().to_string();
    let took = started.elapsed();
    println!("wire with ovsdb-server down failed after {took:?}: {err}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert!(
        err.contains(&ovs.db()) && err.contains("cannot connect"),
        "{err}"
    );
    assert!(!link_exists(&ovs.netns, &c.host_ifname), "veth left");
    dp.unwire(&c.host_ifname).await.unwrap();
    dp.unwire(&d.host_ifname).await.unwrap();
    assert!(
        !link_exists(&ovs.netns, &d.host_ifname),
        "d's veth outlived unwire"
    );

    ovs.start_ovsdb_server();
    let restarted = Instant::now();
    // d's port outlived its veth; the sweep finds it and removes it.
    assert_eq!(
        dp.orphan_ports().await.unwrap(),
        vec![d.host_ifname.clone()]
    );
    assert!(dp.remove_orphan_port(&d.host_ifname).await.unwrap());
    assert!(dp.orphan_ports().await.unwrap().is_empty());
    assert!(
        pa.reaches(ipb, Duration::from_secs(20)),
        "a does not reach b after the restart"
    );
    println!(
        "pods talk again {:?} after ovsdb-server is back",
        restarted.elapsed()
    );
    // The same client, reconnected by itself.
    let started = Instant::now();
    dp.wire(&c).await.unwrap();
    println!("first wire after the restart: {:?}", started.elapsed());
    for l in [&a, &b, &c] {
        dp.check(l).await.unwrap();
    }
    assert!(pc.reaches(ipa, Duration::from_secs(5)), "new pod c");
    assert!(pb.pings(ipa));
    let mut want = vec![
        a.host_ifname.clone(),
        b.host_ifname.clone(),
        c.host_ifname.clone(),
        BRIDGE.to_string(),
    ];
    want.sort();
    assert_eq!(port_rows(&ovs), want, "duplicate or orphan port");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_is_a_trunk_that_carries_the_pods_vlan_to_the_tor() {
    require_root();
    let ovs = Ovs::start();
    // The ToR: another OVS bridge (same ovs-vswitchd) with the node's uplink
    // peer as a trunk and VLAN 100's gateway on an access port.
    ovs.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up0p"]);
    ovs.ip(&["link", "set", "up0p", "up"]);
    let gw = Netns::ipv4_only("gw");
    ovs.ip(&[
        "link", "add", "gwh", "type", "veth", "peer", "name", "eth0", "netns", &gw.name,
    ]);
    ovs.ip(&["link", "set", "gwh", "up"]);
    gw.ip(&["addr", "add", &format!("{GATEWAY}/24"), "dev", "eth0"]);
    gw.ip(&["link", "set", "eth0", "up"]);
    ovs.vsctl(&[
        "add-br",
        "br-tor",
        "--",
        "set",
        "bridge",
        "br-tor",
        "datapath_type=netdev",
        "--",
        "add-port",
        "br-tor",
        "up0p",
        "--",
        "add-port",
        "br-tor",
        "gwh",
        "tag=100",
    ]);

    let cfg = OvsConfig {
        uplink: Some("up0".into()),
        uplink_vlans: vec![200, 100],
        ..config(&ovs)
    };
    let dp = datapath(&ovs, &cfg).await;
    let (tag, trunks, ids) = port_settings(&ovs, "up0");
    assert_eq!((tag, trunks), (None, vec![100, 200]));
    assert_eq!(ids.get("moor-role").map(String::as_str), Some("uplink"));
    assert!(!ids.contains_key("moor-owner"), "{ids:?}");
    let up = run("ip", &["-n", &ovs.netns, "-o", "link", "show", "up0"]);
    assert!(up.contains(",UP"), "ipamd did not set the uplink up: {up}");
    // Idempotent: a restarted ipamd finds it in place.
    drop(dp);
    let dp = datapath(&ovs, &cfg).await;
    assert_eq!(ports(&ovs, BRIDGE), vec!["up0".to_string()]);

    let (pa, pc) = (Netns::ipv4_only("a"), Netns::ipv4_only("c"));
    let a = pod_link(&pa, "ctr-a", Ipv4Addr::new(10, 1, 0, 61), 100);
    let c = pod_link(&pc, "ctr-c", Ipv4Addr::new(10, 1, 0, 62), 200);
    dp.wire(&a).await.unwrap();
    dp.wire(&c).await.unwrap();
    assert!(
        pa.reaches(GATEWAY, Duration::from_secs(5)),
        "VLAN 100 pod cannot reach its gateway over the trunk"
    );
    assert!(!pc.pings(GATEWAY), "VLAN 200 reaches VLAN 100's gateway");
    // Reconcile leaves the uplink alone.
    let report = dp.reconcile(std::slice::from_ref(&a)).await.unwrap();
    assert_eq!(report.removed, vec![c.host_ifname.clone()]);
    assert!(ports(&ovs, BRIDGE).contains(&"up0".to_string()));

    // A missing uplink is a clear error.
    let missing = OvsConfig {
        uplink: Some("nosuch0".into()),
        ..config(&ovs)
    };
    let err = OvsDatapath::new_in(&missing, Some(&node_path(&ovs)))
        .await
        .err()
        .expect("a missing uplink is an error")
        .to_string();
    println!("{err}");
    assert!(
        err.contains("nosuch0") && err.contains("does not exist"),
        "{err}"
    );
}

fn summary(mut times: Vec<Duration>) -> String {
    times.sort();
    format!(
        "min {:?} median {:?} max {:?}",
        times[0],
        times[times.len() / 2],
        times[times.len() - 1]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_unwire_wall_time_ovs_vs_bridge() {
    require_root();
    const ROUNDS: usize = 20;
    let ovs = Ovs::start();
    let dp = datapath(&ovs, &config(&ovs)).await;
    // A Linux bridge in the same node netns, for physical mode.
    ovs.ip(&[
        "link",
        "add",
        "lbr0",
        "address",
        "02:00:00:0b:00:01",
        "type",
        "bridge",
    ]);
    ovs.ip(&["link", "set", "lbr0", "up"]);
    let bridge = BridgeDatapath::new_in("lbr0", Some(&node_path(&ovs)))
        .await
        .unwrap();
    let pod = Netns::ipv4_only("pod");
    let link = pod_link(&pod, "ctr-time", Ipv4Addr::new(10, 1, 0, 70), 100);
    let modes: [(&str, &dyn Datapath); 2] = [("ovs", &dp), ("bridge", &bridge)];
    for (mode, dp) in modes {
        let (mut wires, mut unwires, mut cycles) = (vec![], vec![], vec![]);
        for _ in 0..ROUNDS {
            let started = Instant::now();
            dp.wire(&link).await.unwrap();
            let wired = started.elapsed();
            dp.unwire(&link.host_ifname).await.unwrap();
            wires.push(wired);
            unwires.push(started.elapsed() - wired);
            cycles.push(started.elapsed());
        }
        println!(
            "{mode:>6}: wire {}; unwire {}; wire+unwire {}",
            summary(wires),
            summary(unwires),
            summary(cycles)
        );
    }
}

// ------------------------------------------------- DEL without the kernel

/// The links in moor's device group in the node netns.
fn graves(ovs: &Ovs) -> Vec<Value> {
    let out = run("ip", &["-n", &ovs.netns, "-j", "link", "show"]);
    let all: Value = serde_json::from_str(&out).unwrap();
    let group = GRAVEYARD_GROUP.to_string();
    all.as_array()
        .unwrap()
        .iter()
        .filter(|l| l["group"] == group.as_str())
        .cloned()
        .collect()
}

/// Polls (bounded) until the node's graveyard is empty and `pod` has only lo.
fn wait_reaped(ovs: &Ovs, pod: &Netns) {
    let started = Instant::now();
    while !graves(ovs).is_empty() || pod.links().iter().any(|l| l != "lo") {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "not reaped within 5 s: graves {:?}, pod links {:?}",
            graves(ovs),
            pod.links()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwire_retires_the_veth_re_add_works_and_a_crash_leaves_nothing() {
    require_root();
    let ovs = Ovs::start();
    let never = ReapPolicy {
        quiet: Duration::from_secs(3600),
        max_wait: Duration::from_secs(3600),
    };
    let dp = datapath(&ovs, &config(&ovs)).await.with_reap_policy(never);
    let pod = Netns::ipv4_only("pod");
    let link = pod_link(&pod, "ctr-retire", Ipv4Addr::new(10, 1, 0, 31), 0);
    dp.wire(&link).await.unwrap();
    let index = run(
        "ip",
        &["-n", &ovs.netns, "-j", "link", "show", &link.host_ifname],
    );
    let index: Value = serde_json::from_str(&index).unwrap();
    let index = index[0]["ifindex"].as_u64().unwrap();

    // DEL: the port row is gone, the host end down and renamed into the
    // group, the pod end without carrier.
    let started = Instant::now();
    dp.unwire(&link.host_ifname).await.unwrap();
    println!("OVS unwire: {:?}", started.elapsed());
    assert!(ports(&ovs, BRIDGE).is_empty(), "port row left");
    let g = graves(&ovs);
    assert_eq!(g.len(), 1, "{g:?}");
    assert_eq!(g[0]["ifname"], format!("{GRAVE_PREFIX}{index}"));
    assert!(!g[0]["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    assert_eq!(pod.carrier("eth0"), Some(false));

    // Re-ADD of the same key into the same netns, the old veth still there:
    // works, and the pod is on the switch again.
    dp.wire(&link).await.unwrap();
    dp.check(&link).await.unwrap();
    assert_eq!(ports(&ovs, BRIDGE), vec![link.host_ifname.clone()]);
    assert_eq!(pod.carrier("eth0"), Some(true));
    assert_eq!(
        graves(&ovs).len(),
        1,
        "the re-ADD did not wait for the reaper"
    );

    // A crash: the datapath goes without reaping; the next start deletes
    // what it left.
    dp.unwire(&link.host_ifname).await.unwrap();
    assert_eq!(graves(&ovs).len(), 2);
    drop(dp);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(graves(&ovs).len(), 2, "nothing reaps without a datapath");
    let dp = datapath(&ovs, &config(&ovs)).await;
    assert!(
        graves(&ovs).is_empty(),
        "the next start deleted the leftovers"
    );
    assert_eq!(pod.links(), vec!["lo".to_string()]);
    let stats = dp.graveyard_stats();
    assert_eq!((stats.requests, stats.reaps), (1, 1), "{stats:?}");
}
