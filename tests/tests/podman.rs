//! podman 4.3 (Debian, `network_backend = "cni"`) drives moor: a container on
//! a moor network gets an IP of the network's pool, reaches the ToR's gateway
//! and its neighbour, and gives the IP back when it stops, leaving no veth,
//! no attachment and no libcni result cache behind. Needs root; fails (never
//! skips) without it.
//!
//! The node is the root netns (`Options::root_netns`): podman runs CNI
//! plugins from its own netns, and moor deletes a host veth there itself when
//! ipamd is down.
//!
//! What podman passes: `CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAME=<container
//! name>`, no K8S_POD_NAMESPACE. moor therefore has no pod identity, so the
//! network config must name the pool (`"pool"`), and the IP always goes back
//! on DEL, even from a sticky pool: a podman container is never bound.

use moor_e2e::containerd::live_host_end_exists;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Instant;

use moor_e2e::podman::{Podman, IMAGE};
use moor_e2e::testbed::Families;
use moor_e2e::{install_cni, Counts, Options, Testbed};
use moor_proto::host_ifname;
use serde_json::{json, Value};

const POOL: &str = "podman-web";

/// Fields drop in order: podman first (its `rm --all` DELs reach ipamd), then
/// the testbed.
struct Env {
    podman: Podman,
    tb: Testbed,
    net: String,
}

/// A root-netns testbed with a sticky pool of `size`, a private podman, and
/// a moor network for the pool installed by scripts/install-cni.
fn env(size: u32) -> Env {
    env_of(size, Families::Ipv4)
}

/// [`env`] on a ToR of `families` (the pool takes every family the ToR has).
fn env_of(size: u32, families: Families) -> Env {
    let tb = Testbed::with(Options {
        root_netns: true,
        families,
        ..Options::default()
    });
    let size = size.to_string();
    let out = tb.ipamctl(&[
        "pool",
        "create",
        POOL,
        "--namespace",
        "podman",
        "--app",
        "web",
        "--size",
        &size,
        "--policy",
        "sticky",
    ]);
    moor_e2e::testbed::assert_ok(&out, "ipamctl pool create");
    let podman = Podman::new();
    let net = podman.network_name();
    let conflist = podman.root.join(format!("10-{net}.conflist"));
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": net,
        "plugins": [{"type": "moor", "pool": POOL}],
    });
    std::fs::write(&conflist, conf.to_string()).expect("write the conflist");
    let s = |p: &Path| p.display().to_string();
    let out = install_cni::run(&[
        "--bin-dir".into(),
        s(&podman.bin_dir),
        "--conf-dir".into(),
        s(&podman.conf_dir),
        "--conflist".into(),
        s(&conflist),
        "--moor".into(),
        s(&tb.bins().moor),
        "--socket".into(),
        s(&tb.socket),
        "--timeout".into(),
        "30".to_string(),
    ]);
    moor_e2e::testbed::assert_ok(&out, "scripts/install-cni");
    let nets = podman.ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(
        nets.lines().any(|l| l == net),
        "podman lists the installed network {net}: {nets}"
    );
    Env { podman, tb, net }
}

/// The IPv4 address and prefix in `ip -o -4 addr show dev eth0` output.
fn parse_inet(out: &str) -> (Ipv4Addr, u8) {
    let cidr = out
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap_or_else(|| panic!("no inet address in: {out}"));
    let (ip, prefix) = cidr.split_once('/').expect("inet is CIDR");
    (ip.parse().expect("IPv4"), prefix.parse().expect("prefix"))
}

/// The IPs of the pool, from `ipamctl ip list --pool`.
fn pool_ips(tb: &Testbed) -> Vec<Ipv4Addr> {
    let v = tb.ipamctl_json(&["ip", "list", "--pool", POOL]);
    v.as_array()
        .expect("ip list is an array")
        .iter()
        .map(|e| e["address"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// Nothing of `cid` is left: no attachment, no host veth, no cached result.
fn assert_gone(e: &Env, cid: &str, what: &str) {
    assert_eq!(
        e.tb.ip_of_container(cid),
        None,
        "{what}: attachment of {cid}"
    );
    let veth = host_ifname(cid, "eth0");
    // A retired one (moor's device group, reaped within a second) is gone
    // for every purpose but its name.
    assert!(
        !live_host_end_exists(&veth),
        "{what}: host veth {veth} is left"
    );
    let cached = Podman::cached_results(&e.net);
    assert!(
        !cached.iter().any(|p| p.to_string_lossy().contains(cid)),
        "{what}: libcni's cache still has {cached:?}"
    );
}

/// No binding at all: podman containers are never bound.
fn assert_no_bindings(tb: &Testbed) {
    let b = tb.ipamctl_json(&["binding", "list"]);
    assert_eq!(b, json!([]), "no bindings");
}

fn exec_ping(p: &Podman, container: &str, ip: impl Into<IpAddr>) -> bool {
    let ip = ip.into().to_string();
    (0..3).any(|_| {
        p.run(&["exec", container, "ping", "-c1", "-W1", &ip])
            .status
            .success()
    })
}

/// The arguments of `podman run -d --name NAME --network NET IMAGE sleep 600`.
fn run_detached<'a>(name: &'a str, net: &'a str) -> [&'a str; 9] {
    [
        "run",
        "-d",
        "--name",
        name,
        "--network",
        net,
        IMAGE,
        "sleep",
        "600",
    ]
}

/// The IPv4 address and prefix on container `name`'s eth0.
fn eth0_inet(p: &Podman, name: &str) -> (Ipv4Addr, u8) {
    parse_inet(&p.ok(&[
        "exec", name, "ip", "-o", "-4", "addr", "show", "dev", "eth0",
    ]))
}

/// Runs `podman ARGS` and prints how long it took (no assertion on it).
fn timed(p: &Podman, args: &[&str]) -> String {
    let start = Instant::now();
    let out = p.ok(args);
    eprintln!("podman {}: {:?}", args.join(" "), start.elapsed());
    out
}

#[test]
fn run_prints_its_pool_ip_and_gives_it_back() {
    let e = env(3);
    let out = timed(
        &e.podman,
        &[
            "run",
            "--rm",
            "--network",
            &e.net,
            IMAGE,
            "ip",
            "-o",
            "-4",
            "addr",
            "show",
            "dev",
            "eth0",
        ],
    );
    let (ip, prefix) = parse_inet(&out);
    assert_eq!(prefix, 24, "the ToR's prefix: {out}");
    assert!(
        pool_ips(&e.tb).contains(&ip),
        "{ip} is an IP of pool {POOL}"
    );
    // --rm: the container has exited and is gone, and so is its network.
    assert_eq!(e.podman.ok(&["ps", "--all", "--quiet"]).trim(), "");
    assert_eq!(
        e.tb.pool_counts(POOL),
        Counts {
            total: 3,
            bound: 0,
            in_use: 0,
            free: 3
        }
    );
    assert_eq!(e.tb.host_links(), Vec::<String>::new(), "no host veth");
    assert_eq!(
        Podman::cached_results(&e.net),
        Vec::<std::path::PathBuf>::new()
    );
    assert_no_bindings(&e.tb);
    assert_eq!(e.tb.audit(), Vec::<String>::new(), "store audit");
}

#[test]
fn container_holds_its_pool_ip_until_stopped() {
    let e = env(3);
    let p = &e.podman;
    let name = format!("{}-a", e.net);
    let cid = timed(p, &run_detached(&name, &e.net)).trim().to_string();
    let (ip, prefix) = eth0_inet(p, &name);
    assert_eq!(prefix, 24);

    // What the container shows is what ipamd has for its container id.
    let entry: Value =
        e.tb.ip_of_container(&cid)
            .unwrap_or_else(|| panic!("ipamctl ip list has no attachment of {cid}"));
    assert_eq!(entry["address"], ip.to_string().as_str(), "{entry}");
    assert_eq!(entry["pool"], POOL, "{entry}");
    let att = &entry["attachment"];
    assert_eq!(att["network"], e.net.as_str(), "{entry}");
    assert_eq!(att["ifname"], "eth0", "{entry}");
    assert_eq!(att["host_ifname"], host_ifname(&cid, "eth0").as_str());
    // podman passes the container name as K8S_POD_NAME and no namespace.
    assert_eq!(att["pod"]["name"], name.as_str(), "{entry}");
    assert_eq!(att["pod"]["namespace"], "", "{entry}");
    let netns = p.inspect(&name)["NetworkSettings"]["SandboxKey"]
        .as_str()
        .expect("SandboxKey")
        .to_string();
    assert_eq!(att["netns"], netns.as_str(), "CNI_NETNS is podman's netns");
    assert_eq!(e.tb.host_links(), [host_ifname(&cid, "eth0")]);
    let cache = Path::new(moor_e2e::podman::CNI_RESULTS).join(format!("{}-{cid}-eth0", e.net));
    assert!(
        cache.is_file(),
        "libcni cached the ADD result at {}",
        cache.display()
    );

    // Through the bridge in the root netns to the ToR, and to a neighbour.
    assert!(
        exec_ping(p, &name, e.tb.gateway),
        "{name} pings the gateway"
    );
    let name_b = format!("{}-b", e.net);
    let cid_b = p.ok(&run_detached(&name_b, &e.net)).trim().to_string();
    let (ip_b, _) = eth0_inet(p, &name_b);
    assert_ne!(ip, ip_b, "two containers, two IPs");
    assert!(exec_ping(p, &name_b, ip), "{name_b} pings {name}");

    // Stop: DEL gives the IP back (a sticky pool, but no pod identity).
    timed(p, &["stop", "--time", "0", &name]);
    assert_gone(&e, &cid, "after podman stop");
    assert!(!Path::new(&netns).exists(), "podman removed {netns}");
    assert_no_bindings(&e.tb);
    assert_eq!(
        e.tb.pool_counts(POOL),
        Counts {
            total: 3,
            bound: 0,
            in_use: 1,
            free: 2
        }
    );
    assert_eq!(e.tb.host_links(), [host_ifname(&cid_b, "eth0")]);

    // Started again, the same container id gets an IP of the pool again.
    timed(p, &["start", &name]);
    let (ip2, _) = eth0_inet(p, &name);
    let entry = e.tb.ip_of_container(&cid).expect("attached again");
    assert_eq!(entry["address"], ip2.to_string().as_str());
    assert!(pool_ips(&e.tb).contains(&ip2));
    timed(p, &["stop", "--time", "0", &name]);
    timed(p, &["rm", &name]);
    assert_gone(&e, &cid, "after podman rm");

    timed(p, &["rm", "--force", "--time", "0", &name_b]);
    assert_gone(&e, &cid_b, "after podman rm -f");
    assert_eq!(e.tb.host_links(), Vec::<String>::new(), "no host veth");
    assert_eq!(e.tb.pool_counts(POOL).free, 3, "every IP back");
    assert_eq!(e.tb.audit(), Vec::<String>::new(), "store audit");
}

#[test]
fn a_full_pool_fails_the_container_with_our_message_and_leaves_nothing() {
    let e = env(1);
    let p = &e.podman;
    let first = format!("{}-a", e.net);
    p.ok(&run_detached(&first, &e.net));
    let second = format!("{}-b", e.net);
    let out = p.run(&run_detached(&second, &e.net));
    assert!(
        !out.status.success(),
        "a second container in a pool of 1 must fail"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    for w in [POOL, moor_e2e::testbed::TOR, "1 in use", "0 free"] {
        assert!(
            err.contains(w),
            "podman shows moor's error naming {w:?}: {err}"
        );
    }
    // podman keeps the failed container (Created); its network is gone.
    let cid = p.ok(&["container", "inspect", "--format", "{{.Id}}", &second]);
    let cid = cid.trim();
    assert_gone(&e, cid, "after the failed ADD");
    assert_eq!(
        e.tb.host_links().len(),
        1,
        "only the first container's veth"
    );
    eprintln!("podman's error: {}", err.trim());
}

/// The global IPv6 addresses and prefixes in `ip -o addr show` output.
fn parse_inet6_global(out: &str) -> Vec<(Ipv6Addr, u8)> {
    out.lines()
        .filter(|l| l.contains(" scope global"))
        .filter_map(|l| {
            let cidr = l.split_whitespace().skip_while(|w| *w != "inet6").nth(1)?;
            let (ip, prefix) = cidr.split_once('/')?;
            Some((ip.parse().ok()?, prefix.parse().ok()?))
        })
        .collect()
}

/// Both addresses on container `name`'s eth0: the IPv4 one and the one
/// global IPv6 one.
fn eth0_dual(p: &Podman, name: &str) -> ((Ipv4Addr, u8), (Ipv6Addr, u8)) {
    let out = p.ok(&["exec", name, "ip", "-o", "addr", "show", "dev", "eth0"]);
    dual_of(&out)
}

fn dual_of(out: &str) -> ((Ipv4Addr, u8), (Ipv6Addr, u8)) {
    let v6 = parse_inet6_global(out);
    assert_eq!(v6.len(), 1, "one global IPv6 address on eth0: {out}");
    (parse_inet(out), v6[0])
}

/// `ipamctl -o json ip show V4`'s IPv6 partner of `v4`.
fn partner_of(tb: &Testbed, v4: Ipv4Addr) -> Option<Ipv6Addr> {
    let v = tb.ipamctl_json(&["ip", "show", &v4.to_string()]);
    v["address6"].as_str().and_then(|a| a.parse().ok())
}

/// Dual stack (issue 13): on a dual-stack ToR, a podman container prints
/// both its addresses (the pool's IPv4 one and its IPv6 partner, each with
/// the ToR's prefix), has both default routes, pings both gateways, and
/// `podman rm` gives both back (a podman container is never bound).
#[test]
fn dual_stack_container_shows_both_addresses_pings_both_gateways_and_gives_them_back() {
    let e = env_of(3, Families::Dual);
    let pool = e.tb.ipamctl_json(&["pool", "show", POOL]);
    assert_eq!(pool["family"], "dual", "{pool}");
    let p = &e.podman;

    let out = timed(
        p,
        &[
            "run",
            "--rm",
            "--network",
            &e.net,
            IMAGE,
            "ip",
            "-o",
            "addr",
            "show",
            "dev",
            "eth0",
        ],
    );
    let ((ip, prefix), (ip6, prefix6)) = dual_of(&out);
    assert_eq!((prefix, prefix6), (24, 64), "the ToR's prefixes: {out}");
    assert!(pool_ips(&e.tb).contains(&ip), "{ip} is an IP of {POOL}");
    assert_eq!(partner_of(&e.tb, ip), Some(ip6), "{ip6} is {ip}'s partner");
    assert_eq!(e.tb.pool_counts(POOL).free, 3, "--rm gave both back");
    assert_eq!(e.tb.host_links(), Vec::<String>::new(), "no host veth");

    let name = format!("{}-a", e.net);
    let cid = timed(p, &run_detached(&name, &e.net)).trim().to_string();
    let ((ip, _), (ip6, _)) = eth0_dual(p, &name);
    assert_eq!(partner_of(&e.tb, ip), Some(ip6), "{ip6} is {ip}'s partner");
    let entry =
        e.tb.ip_of_container(&cid)
            .unwrap_or_else(|| panic!("ipamctl ip list has no attachment of {cid}"));
    assert_eq!(entry["address"], ip.to_string().as_str(), "{entry}");
    // podman's own view of the network, from the CNI result.
    let settings = &p.inspect(&name)["NetworkSettings"]["Networks"][&e.net];
    assert_eq!(settings["IPAddress"], ip.to_string().as_str(), "{settings}");
    assert_eq!(
        settings["GlobalIPv6Address"],
        ip6.to_string().as_str(),
        "{settings}"
    );
    let routes6 = p.ok(&["exec", &name, "ip", "-6", "route", "show", "default"]);
    assert!(
        routes6.contains(&format!("via {}", e.tb.gateway6)),
        "the IPv6 default route: {routes6}"
    );
    assert!(
        exec_ping(p, &name, e.tb.gateway),
        "{name} pings the gateway"
    );
    assert!(
        exec_ping(p, &name, e.tb.gateway6),
        "{name} pings the IPv6 gateway {}",
        e.tb.gateway6
    );

    timed(p, &["rm", "--force", "--time", "0", &name]);
    assert_gone(&e, &cid, "after podman rm -f");
    assert_no_bindings(&e.tb);
    let shown = e.tb.ipamctl_json(&["ip", "show", &ip.to_string()]);
    assert_eq!(shown["state"], "free", "{shown}");
    assert_eq!(e.tb.pool_counts(POOL).free, 3, "every IP back");
    assert_eq!(e.tb.audit(), Vec::<String>::new(), "store audit");
}
