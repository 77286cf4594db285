//! Issue 13's "Done when" 2b: sticky IPv6 pods moved between nodes of the
//! Open vSwitch testbed (`moor_e2e::ovs_cluster`: nodes n1 and n2 under one
//! ToR switch on VLAN 100, each with its own ovsdb-server, ovs-vswitchd and
//! ipamd, on a real 3-member etcd), reached again within 1 s.
//!
//! 1. `moved_dual_stack_pod_keeps_both_addresses_and_is_reached_over_ipv6`:
//!    web-0 (dual stack) deleted on n1 and re-created on n2 keeps its IPv4
//!    and IPv6 addresses and its MAC, and a peer on n1 that talked to it
//!    over IPv6 (its neighbour entry checked) reaches its IPv6 address
//!    within 1 s of the ADD. Its gratuitous ARP also teaches the switches,
//!    so this one does not show which frame did: test 2 does.
//! 2. `moved_ipv6_pod_is_reached_within_a_second_through_its_unsolicited_na`:
//!    an IPv6-only web-0 moved the same way, twice, with OpenFlow rules on
//!    n2's bridge dropping the frames from its MAC that would teach the
//!    switches where it is: those its kernel sends unasked (MLD, router
//!    solicitations and advertisements, DAD: ICMPv6 130-134, 143, and 135
//!    from `::`) in both runs, and its neighbour advertisements (136) in
//!    the control run only. What it sends only once something reached it
//!    (echo replies, the solicitation for the peer's MAC) passes. The
//!    control run is not reached within 1 s; the real run, whose only
//!    difference is that ipamd's unsolicited NAs get through, is.
//!    tcpdump on n2's uplink records what each run put on the wire from
//!    the pod's MAC: nothing in the control run (the flow counters show
//!    the NAs and the pod's own frames were sent and dropped), the
//!    unsolicited NAs (Override set, Solicited clear, target = the pod's
//!    address, to ff02::1) in the real one; both are printed.
//!
//! The only timed assertion is issue 4's bound, 1 s from the ADD returning
//! (the ADD's own time is not counted) to the first answered ping; the
//! pings go out one after the other with a 100 ms timeout each, so a path
//! that opens at t is seen by t + 100 ms, and the margin printed is the
//! bound minus what was measured. Other waits are bounded so that a broken
//! datapath fails instead of hanging.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use moor_e2e::capture::Capture;
use moor_e2e::cluster::{Layout, UPLINK};
use moor_e2e::names::{container_id, deployment_pod, statefulset_pod};
use moor_e2e::ovs_cluster::OvsCluster;
use moor_e2e::testbed::Families;
use moor_e2e::Pod;
use moor_proto::{format_mac, mac_for_ip};
use serde_json::Value;

const TOR: &str = "rack-1";
/// Issue 4 (and 13 for IPv6): a moved pod is reached again within this.
const MOVE_BOUND: Duration = Duration::from_secs(1);
/// Pings before a move, which must be answered: a bound, not a speed.
const SETTLED: Duration = Duration::from_secs(5);
/// ipamd announces at ADD, +200 ms and +1 s; a capture kept this long
/// after the ADD returned holds all three.
const ANNOUNCED: Duration = Duration::from_millis(1600);
/// The frames a pod's own kernel sends unasked that teach a switch its
/// port, by ICMPv6 type and what more a flow matches: MLD query, report,
/// done (130-132), router solicitation (133) and advertisement (134),
/// duplicate address detection (a neighbour solicitation from `::`, 135)
/// and the MLDv2 report (143). Its other solicitations resolve a neighbour
/// it answers, so they follow a frame that reached it and are left alone:
/// dropped, the moved pod could not answer the peer at all.
const POD_OWN_ND: [(u8, &str); 7] = [
    (130, ""),
    (131, ""),
    (132, ""),
    (133, ""),
    (134, ""),
    (135, ",ipv6_src=::"),
    (143, ""),
];
/// The neighbour advertisement: ipamd's unsolicited ones, and the pod's
/// answers to solicitations.
const NA: (u8, &str) = (136, "");
/// Above the bridge's one NORMAL flow (priority 0).
const DROP_PRIORITY: u16 = 100;

/// A pod ADDed through `moor`, and what its ADD gave it.
struct Live {
    pod: Pod,
    cid: String,
    node: String,
    ip4: Option<Ipv4Addr>,
    ip6: Ipv6Addr,
    mac: String,
}

/// Two nodes under [`TOR`] on VLAN 100, 16 pod IPs per family.
fn two_nodes(families: Families) -> OvsCluster {
    OvsCluster::with_families(
        Layout::new()
            .tor_on_vlan(TOR, 16, 100)
            .node("n1", TOR)
            .node("n2", TOR),
        families,
    )
}

fn ip_netns(netns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["-n", netns])
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip -n {netns} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// eth0's MAC and global addresses (with prefix lengths) in `pod`.
fn eth0(pod: &Pod) -> (String, Vec<(IpAddr, u64)>) {
    let v: Value = serde_json::from_str(&ip_netns(&pod.netns, &["-j", "addr", "show", "eth0"]))
        .expect("ip -j addr prints JSON");
    let link = &v[0];
    let addrs = link["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["scope"] == "global")
        .filter_map(|a| Some((a["local"].as_str()?.parse().ok()?, a["prefixlen"].as_u64()?)))
        .collect();
    (
        link["address"].as_str().unwrap_or_default().to_string(),
        addrs,
    )
}

/// ADDs `pod` on `node`; checks it got an IPv6 address (and with dual
/// stack an IPv4 one) of [`TOR`]'s ranges on eth0, and the MAC derived
/// from its first address.
fn add(c: &OvsCluster, node: &str, pod: Pod) -> Live {
    let cid = container_id();
    let r = c.add(node, &pod, &cid);
    r.ok(&format!("ADD {} on {node}", pod.name));
    let ips: Vec<IpAddr> = r.json["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["address"].as_str()?.split('/').next()?.parse().ok())
        .collect();
    let ip4 = ips.iter().find_map(|ip| match ip {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    });
    let ip6 = r
        .ip6()
        .unwrap_or_else(|| panic!("ADD {} gave no IPv6 address: {}", pod.name, r.stdout));
    assert!(
        c.tor6(TOR).in_range(ip6),
        "ADD {}: {ip6} is not in {TOR}'s IPv6 range {:?}",
        pod.name,
        c.tor6(TOR).range
    );
    if let Some(ip4) = ip4 {
        assert!(c.tor(TOR).in_range(ip4), "ADD {}: {ip4}", pod.name);
    }
    let (mac, addrs) = eth0(&pod);
    let mut want: Vec<(IpAddr, u64)> = vec![(ip6.into(), 64)];
    want.extend(ip4.map(|v4| (IpAddr::V4(v4), 24)));
    want.sort();
    let mut have = addrs;
    have.sort();
    assert_eq!(have, want, "{}'s global addresses on eth0", pod.name);
    let first = ip4.map_or(IpAddr::V6(ip6), IpAddr::V4);
    assert_eq!(
        mac,
        format_mac(&mac_for_ip(first)),
        "{}'s MAC comes from {first}",
        pod.name
    );
    Live {
        pod,
        cid,
        node: node.to_string(),
        ip4,
        ip6,
        mac,
    }
}

fn del(c: &OvsCluster, l: &Live) {
    c.del(&l.node, &l.pod, &l.cid)
        .ok(&format!("DEL {} on {}", l.pod.name, l.node));
    c.remove_pod(&l.pod);
}

/// How long until `from` (pinging from its own IPv6 address) reaches `to`'s
/// IPv6 address, if within `within`.
fn reaches6(c: &OvsCluster, from: &Live, to: Ipv6Addr, within: Duration) -> Option<Duration> {
    c.reaches_from(&from.pod, Some(from.ip6.into()), to.into(), within)
}

/// The MAC `pod` has in its neighbour table for `ip`, if any.
fn cached_mac(pod: &Pod, ip: IpAddr) -> Option<String> {
    let out = ip_netns(&pod.netns, &["-j", "neigh", "show", &ip.to_string()]);
    let v: Value = serde_json::from_str(&out).ok()?;
    v.as_array()?
        .first()?
        .get("lladdr")?
        .as_str()
        .map(str::to_string)
}

/// Pings `to` from `from` until answered (within [`SETTLED`]) and checks
/// that `from` then has `to`'s MAC in its neighbour table: the state a
/// move has to correct.
fn talked(c: &OvsCluster, from: &Live, to: &Live) {
    assert!(
        reaches6(c, from, to.ip6, SETTLED).is_some(),
        "before the move: {} does not reach {} at {}",
        from.pod.name,
        to.pod.name,
        to.ip6
    );
    assert_eq!(
        cached_mac(&from.pod, to.ip6.into()).as_deref(),
        Some(to.mac.as_str()),
        "{} has {}'s MAC for {} in its neighbour table",
        from.pod.name,
        to.pod.name,
        to.ip6
    );
}

/// Prints how long after its ADD the moved pod was reached, and the margin
/// to the bound.
fn print_reached(what: &str, reached: Option<Duration>) {
    match reached {
        Some(t) => println!(
            "ovs_ipv6 {what}: reached {:.3} s after the ADD returned (bound {MOVE_BOUND:?}, \
             margin {:.3} s)",
            t.as_secs_f64(),
            MOVE_BOUND.as_secs_f64() - t.as_secs_f64()
        ),
        None => println!("ovs_ipv6 {what}: not reached within {MOVE_BOUND:?} of the ADD"),
    }
}

// ------------------------------------------------------------ 1

#[test]
fn moved_dual_stack_pod_keeps_both_addresses_and_is_reached_over_ipv6() {
    let c = two_nodes(Families::Dual);
    c.create_pool("web", "web", 4, &[]);
    // Pods as a runtime makes them (IPv6 off in the netns): ipamd turns it
    // on for eth0.
    let web0 = add(&c, "n1", c.pod(&statefulset_pod("web", 0)));
    let peer = add(&c, "n1", c.pod(&deployment_pod("web", 1)));
    assert!(
        web0.ip4.is_some() && peer.ip4.is_some(),
        "a dual-stack pool gives both families"
    );
    talked(&c, &peer, &web0);
    del(&c, &web0);

    let moved = add(&c, "n2", c.pod(&statefulset_pod("web", 0)));
    let added = Instant::now();
    let reached = reaches6(&c, &peer, moved.ip6, MOVE_BOUND).map(|_| added.elapsed());
    print_reached("1 (dual stack, IPv6)", reached);
    assert_eq!(
        (moved.ip4, moved.ip6, &moved.mac),
        (web0.ip4, web0.ip6, &web0.mac),
        "web-0 keeps both addresses and its MAC on n2"
    );
    assert!(
        reached.is_some(),
        "the peer on n1 did not reach web-0's IPv6 address {} on n2 within {MOVE_BOUND:?} of \
         its ADD",
        moved.ip6
    );
    // And its IPv4 address (the IPv4 bound is ovs_cluster's test 2).
    let ip4 = moved.ip4.expect("dual stack");
    assert!(c.ping(&peer.pod, ip4), "the peer reaches web-0 at {ip4}");
    assert!(
        reaches6(&c, &moved, c.tor6(TOR).gateway, SETTLED).is_some(),
        "web-0 on n2 reaches its IPv6 gateway"
    );
    del(&c, &moved);
    del(&c, &peer);
}

// ------------------------------------------------------------ 2

/// Adds flows on `node`'s bridge dropping the ICMPv6 frames `kinds` (type,
/// more match fields) from `mac`.
fn drop_from(c: &OvsCluster, node: &str, mac: &str, kinds: &[(u8, &str)]) {
    for (t, more) in kinds {
        let flow =
            format!("priority={DROP_PRIORITY},icmp6,dl_src={mac},icmp_type={t}{more},actions=drop");
        c.ofctl(node, "add-flow", &[&flow]);
    }
}

/// Removes every flow matching frames from `mac` on `node`'s bridge.
fn undrop(c: &OvsCluster, node: &str, mac: &str) {
    c.ofctl(node, "del-flows", &[&format!("dl_src={mac}")]);
}

/// Packets each drop flow for `mac` on `node` matched, by ICMPv6 type.
fn dropped(c: &OvsCluster, node: &str, mac: &str) -> BTreeMap<u8, u64> {
    let out = c.ofctl(node, "dump-flows", &[&format!("icmp6,dl_src={mac}")]);
    out.lines()
        .filter_map(|line| {
            let field = |name: &str| -> Option<u64> {
                let at = line.find(&format!("{name}="))? + name.len() + 1;
                line[at..]
                    .split(|ch: char| !ch.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            };
            Some((u8::try_from(field("icmp_type")?).ok()?, field("n_packets")?))
        })
        .collect()
}

/// The frames of `frames` that are unsolicited neighbour advertisements for
/// `ip` from `mac`: to all nodes, Override set, Solicited clear.
fn unsolicited_nas<'a>(frames: &'a [String], mac: &str, ip: Ipv6Addr) -> Vec<&'a String> {
    frames
        .iter()
        .filter(|f| {
            f.contains(&format!("{mac} > 33:33:00:00:00:01"))
                && f.contains(&format!("{ip} > ff02::1:"))
                && f.contains("neighbor advertisement")
                && f.contains(&format!("tgt is {ip}, Flags [override]"))
        })
        .collect()
}

fn print_frames(run: &str, frames: &[String], dropped: &BTreeMap<u8, u64>) {
    println!(
        "ovs_ipv6 2 ({run}): {} frame(s) from web-0's MAC on n2's {UPLINK}; packets the drop \
         flows took, by ICMPv6 type: {dropped:?}",
        frames.len()
    );
    for f in frames {
        println!("  {f}");
    }
}

#[test]
fn moved_ipv6_pod_is_reached_within_a_second_through_its_unsolicited_na() {
    let c = two_nodes(Families::Ipv6);
    c.create_pool("web", "web", 4, &[]);
    // IPv6 left on in the pods: their own neighbour discovery is real and
    // is what the flows hold back.
    let web0 = add(&c, "n1", c.pod_with_ipv6(&statefulset_pod("web", 0)));
    let peer = add(&c, "n1", c.pod_with_ipv6(&deployment_pod("web", 1)));
    assert_eq!(
        (web0.ip4, peer.ip4),
        (None, None),
        "an IPv6-only pool gives IPv6 only"
    );
    talked(&c, &peer, &web0);
    del(&c, &web0);
    let n2 = &c.node("n2").ns;
    let mac = web0.mac.clone();

    // The control: nothing from web-0's MAC that could teach a switch
    // leaves n2, ipamd's NAs included.
    let mut all = POD_OWN_ND.to_vec();
    all.push(NA);
    drop_from(&c, "n2", &mac, &all);
    let capture = Capture::start(n2, UPLINK, &format!("ether src {mac}"));
    let hidden = add(&c, "n2", c.pod_with_ipv6(&statefulset_pod("web", 0)));
    let added = Instant::now();
    let unannounced = reaches6(&c, &peer, hidden.ip6, MOVE_BOUND).map(|_| added.elapsed());
    std::thread::sleep(ANNOUNCED.saturating_sub(added.elapsed()));
    let frames = capture.stop();
    let took = dropped(&c, "n2", &mac);
    print_reached("2 (control: no NA, no ND of its own)", unannounced);
    print_frames("control", &frames, &took);
    assert_eq!(
        (hidden.ip6, &hidden.mac),
        (web0.ip6, &web0.mac),
        "web-0 keeps its address and MAC on n2"
    );
    assert_eq!(
        cached_mac(&peer.pod, web0.ip6.into()).as_deref(),
        Some(mac.as_str()),
        "the peer still has web-0's MAC cached: it sends to the right MAC, only the switches \
         do not know where it is"
    );
    assert!(
        unannounced.is_none(),
        "web-0 moved with every frame that could teach the switches dropped was reached \
         after {unannounced:?}: the test cannot tell the NA from none"
    );
    assert!(
        frames.is_empty(),
        "the control run put frames from web-0's MAC on n2's uplink: {frames:#?}"
    );
    assert!(
        took.get(&NA.0).is_some_and(|&n| n >= 1),
        "ipamd's NAs were sent in the control run and dropped: {took:?}"
    );
    del(&c, &hidden);

    // The real move: the same, but the NAs pass. The pod's own neighbour
    // discovery stays held back, so the NAs are all that can teach the
    // switches where web-0 is now.
    undrop(&c, "n2", &mac);
    drop_from(&c, "n2", &mac, &POD_OWN_ND);
    let capture = Capture::start(n2, UPLINK, &format!("ether src {mac}"));
    let moved = add(&c, "n2", c.pod_with_ipv6(&statefulset_pod("web", 0)));
    let added = Instant::now();
    let reached = reaches6(&c, &peer, moved.ip6, MOVE_BOUND).map(|_| added.elapsed());
    std::thread::sleep(ANNOUNCED.saturating_sub(added.elapsed()));
    let frames = capture.stop();
    let took = dropped(&c, "n2", &mac);
    print_reached("2 (real: the NAs pass)", reached);
    print_frames("real", &frames, &took);
    assert_eq!(
        (moved.ip6, &moved.mac),
        (web0.ip6, &web0.mac),
        "web-0 keeps its address and MAC on n2"
    );
    assert!(
        reached.is_some(),
        "the peer on n1 did not reach web-0 at {} on n2 within {MOVE_BOUND:?} of its ADD",
        moved.ip6
    );
    let nas = unsolicited_nas(&frames, &mac, moved.ip6);
    assert!(
        !nas.is_empty(),
        "no unsolicited NA for {} from {mac} on n2's uplink: {frames:#?}",
        moved.ip6
    );
    assert!(
        frames.first().is_some_and(|f| nas.contains(&f)),
        "the first frame from web-0's MAC on the wire is its unsolicited NA: {frames:#?}"
    );
    // Besides the NAs, only what answering the peer takes: the pod's
    // solicitation for the peer's MAC (from its own address, not DAD) and
    // its echo replies; none of its own ND or MLD got past the flows.
    let others: Vec<&String> = frames
        .iter()
        .filter(|f| {
            let resolving = f.contains("neighbor solicitation")
                && f.contains(&format!("{} > ff02::1:ff", moved.ip6));
            !(nas.contains(f) || resolving || f.contains("ICMP6, echo reply"))
        })
        .collect();
    assert!(
        others.is_empty(),
        "frames from web-0's MAC on n2's uplink other than its NAs and its answers to the \
         peer: {others:#?}"
    );
    undrop(&c, "n2", &mac);
    del(&c, &moved);
    del(&c, &peer);
}
