//! Issue 4's OVS testbed for a person to poke at (`sudo ./scripts/testbed
//! [NODES]`): NODES nodes (default 2) under ToR rack-1 (VLAN 100) with a
//! segment rack-1-v200 (VLAN 200), each node with its own ovsdb-server,
//! ovs-vswitchd and ipamd on a 3-member etcd, one pod of each VLAN on every
//! node (see `moor_e2e::ovs_cluster`). Prints where everything is, then
//! waits; Ctrl-C (or SIGTERM, SIGHUP) stops and removes all of it. A SIGKILL
//! leaves it behind.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use moor_e2e::cluster::Layout;
use moor_e2e::names::{container_id, deployment_pod};
use moor_e2e::ovs_cluster::{gateway_port, OvsCluster, NODE_BRIDGE};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

const TOR: &str = "rack-1";
const SEGMENT: &str = "rack-1-v200";

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn main() {
    let nodes: usize = match std::env::args().nth(1) {
        None => 2,
        Some(n) => match n.parse() {
            Ok(n) if (1..=8).contains(&n) => n,
            _ => {
                eprintln!("usage: testbed [NODES]   (NODES: 1 to 8, default 2)");
                std::process::exit(2);
            }
        },
    };
    // A flag, not the default action: the testbed must be torn down. A
    // signal while it is being built ends it right after.
    let on_signal = SigAction::new(SigHandler::Handler(stop), SaFlags::empty(), SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(sig, &on_signal) }.expect("install a signal handler");
    }

    let mut layout = Layout::new()
        .tor_on_vlan(TOR, 32, 100)
        .segment(SEGMENT, TOR, 32, 200);
    for i in 1..=nodes {
        layout = layout.node(&format!("n{i}"), TOR);
    }
    let c = OvsCluster::new(layout);
    c.create_pool("web", "web", 8, &[TOR]);
    c.create_pool("db", "db", 8, &[SEGMENT]);
    println!("pods (netns, node, IP):");
    for (i, node) in c.nodes.iter().enumerate() {
        for app in ["web", "db"] {
            let pod = c.pod(&deployment_pod(app, i as u64));
            let r = c.add(&node.name, &pod, &container_id());
            r.ok(&format!("ADD {} on {}", pod.name, node.name));
            println!(
                "  {:40} {:4} {}",
                pod.netns,
                node.name,
                r.json["ips"][0]["address"].as_str().unwrap_or("?")
            );
        }
    }
    println!("ToR and segments:");
    for t in &c.tors {
        println!(
            "  {:12} netns {}  VLAN {}  gateway {} on port {} (MAC {})  pod range {}-{}",
            t.name,
            t.ns,
            t.vlan.map_or("-".to_string(), |v| v.to_string()),
            t.gateway,
            gateway_port(t.vlan),
            t.mac,
            t.range.0,
            t.range.1
        );
    }
    println!("nodes:");
    for n in &c.nodes {
        println!(
            "  {}: netns {}  ovs-vsctl --db={} show\n      ipamctl --socket {} pool list    log {}",
            n.name,
            n.ns,
            c.ovsdb(&n.name),
            n.socket.display(),
            n.log.display()
        );
    }
    println!(
        "etcd: {} (prefix {})\nbridge on every node: {NODE_BRIDGE}; try: ip netns exec <pod netns> ping <IP>",
        c.etcd_endpoints().join(","),
        c.prefix
    );
    println!("Ctrl-C tears it all down.");
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("tearing the testbed down");
}
