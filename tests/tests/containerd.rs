//! containerd 1.6 drives moor through CRI exactly as it does for kubelet
//! (issue 5): sandboxes get pool IPs and talk, a StatefulSet pod gets its IP
//! back, the reference plugins chained after moor work and are torn down,
//! a refused ADD leaves nothing, and a containerd crash leaks nothing for
//! long. Every test runs its own containerd and ipamd ([`CriNode`]).
//! [`kube`]: the same with ipamd reading a Kubernetes API (issue 10);
//! [`dual_stack`]: IPv4 and IPv6 per sandbox (issue 13).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use moor_e2e::containerd::{
    in_netns, link_exists, live_host_end_exists, ping_in, sandbox_config, CriNode, MoorCall,
    Options, Sandbox, CNI_RESULTS, TUNED_SYSCTL,
};
use moor_e2e::cri::v1::{PodSandboxState, PortMapping, Protocol};
use moor_e2e::names::{deployment_pod, statefulset_pod};
use nix::sys::signal::Signal;
use serde_json::Value;

#[path = "containerd/dual_stack.rs"]
mod dual_stack;
#[path = "containerd/kube.rs"]
mod kube;

/// A pod uid, unique in this process.
fn uid() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "uid-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The IPs of `pool`, from `ipamctl ip list`.
fn pool_ips(node: &CriNode, pool: &str) -> BTreeSet<Ipv4Addr> {
    node.ip_list()
        .iter()
        .filter(|e| e["pool"] == pool)
        .filter_map(|e| e["address"].as_str()?.parse().ok())
        .collect()
}

/// The `ip list` entry whose attachment is container `id`'s.
fn attachment_of(node: &CriNode, id: &str) -> Option<Value> {
    node.ip_list()
        .into_iter()
        .find(|e| e["attachment"]["container_id"] == id)
}

fn run(node: &CriNode, name: &str) -> Sandbox {
    node.run_sandbox(sandbox_config(name, &uid()))
        .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e}"))
}

/// Polls `f` every 100 ms until it holds; panics with `what` after `limit`.
fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn calls_for<'a>(calls: &'a [MoorCall], id: &str) -> Vec<&'a MoorCall> {
    calls.iter().filter(|c| c.container_id == id).collect()
}

/// Done-when 1: sandboxes through CRI get IPs of their pool, reach each
/// other and the gateway, a StatefulSet pod re-created under its name gets
/// its IP back, and 50 sandboxes created and removed one after another leave
/// nothing behind.
#[test]
fn sandboxes_get_pool_ips_talk_keep_sticky_ips_and_leave_nothing() {
    let node = CriNode::new(Options::default());
    let version = node.cri().as_ref().unwrap().version().expect("Version");
    assert_eq!(version.runtime_name, "containerd");
    node.create_pool("api", "api", 60);
    node.create_pool("web", "web", 5);
    let api_ips = pool_ips(&node, "api");
    let web_ips = pool_ips(&node, "web");
    assert_eq!((api_ips.len(), web_ips.len()), (60, 5));

    let a = run(&node, &deployment_pod("api", 1));
    let b = run(&node, &deployment_pod("api", 2));
    for s in [&a, &b] {
        assert!(api_ips.contains(&s.ip), "{s:?}: IP not in pool api");
        // The sandbox's own view agrees with what containerd reported.
        let addr = in_netns(&s.netns, "ip", &["-4", "-o", "addr", "show", "dev", "eth0"]);
        assert!(
            addr.contains(&format!("{}/24", s.ip)),
            "{s:?}: eth0 has {addr}"
        );
        let att = attachment_of(&node, &s.id).unwrap_or_else(|| panic!("no attachment of {s:?}"));
        assert_eq!(att["attachment"]["netns"], s.netns.as_str());
        assert_eq!(att["attachment"]["pod"]["name"], s.name.as_str());
        assert!(link_exists(&s.host_veth()), "{s:?}: no host veth");
    }
    assert_ne!(a.ip, b.ip);
    assert!(ping_in(&a.netns, b.ip), "a cannot reach b");
    assert!(ping_in(&b.netns, a.ip), "b cannot reach a");
    assert!(
        ping_in(&a.netns, node.gateway),
        "a cannot reach the gateway"
    );
    assert!(
        ping_in(&b.netns, node.gateway),
        "b cannot reach the gateway"
    );
    for s in [&a, &b] {
        node.stop_and_remove(&s.id);
        assert!(
            !live_host_end_exists(&s.host_veth()),
            "{s:?}: host veth left"
        );
        assert!(
            !std::path::Path::new(&s.netns).exists(),
            "{s:?}: netns left"
        );
        let e = node.ip_entry(s.ip).expect("pool IP listed");
        assert_eq!(e["state"], "free", "a Deployment pod's IP goes back: {e}");
    }

    // A StatefulSet pod: deleted and re-created under its name, with a new
    // uid and sandbox id, it gets the same IP.
    let web0 = statefulset_pod("web", 0);
    let w1 = run(&node, &web0);
    assert!(web_ips.contains(&w1.ip), "{w1:?}: IP not in pool web");
    assert!(
        ping_in(&w1.netns, node.gateway),
        "web-0 cannot reach the gateway"
    );
    node.stop_and_remove(&w1.id);
    let kept = node.ip_entry(w1.ip).expect("web-0's IP listed");
    assert!(kept["attachment"].is_null(), "web-0 removed: {kept}");
    assert_eq!(kept["binding"]["name"], web0.as_str(), "{kept}");
    assert_eq!(kept["binding"]["namespace"], "shop", "{kept}");
    let w2 = run(&node, &web0);
    assert_ne!(w2.id, w1.id);
    assert_eq!(w2.ip, w1.ip, "web-0 re-created with another IP");
    assert!(
        ping_in(&w2.netns, node.gateway),
        "web-0 (again) cannot reach the gateway"
    );
    node.stop_and_remove(&w2.id);

    let start = Instant::now();
    for i in 0..50 {
        let s = run(&node, &deployment_pod("api", 100 + i));
        assert!(api_ips.contains(&s.ip), "{s:?}: IP not in pool api");
        node.stop_and_remove(&s.id);
    }
    eprintln!(
        "50 sandboxes run, stopped and removed one after another in {:?}",
        start.elapsed()
    );

    assert_eq!(node.listed_sandboxes(), Vec::<String>::new());
    let left = node.leftovers();
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
    let bound: Vec<Value> = node
        .ip_list()
        .into_iter()
        .filter(|e| e["state"] != "free")
        .collect();
    assert_eq!(bound.len(), 1, "only web-0's binding stays: {bound:?}");
    assert_eq!(bound[0]["address"], w1.ip.to_string());

    let calls = node.moor_calls();
    let adds = calls.iter().filter(|c| c.cmd == "ADD").count();
    let dels = calls.iter().filter(|c| c.cmd == "DEL").count();
    eprintln!("moor got {adds} ADDs and {dels} DELs for 54 sandboxes");
    assert_eq!(adds, 54);
}

/// GET / from `addr`; the body, or why not.
fn http_get(addr: SocketAddr) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut body = String::new();
    s.read_to_string(&mut body).map_err(|e| e.to_string())?;
    Ok(body)
}

/// `tc -j qdisc show dev DEV`: the kinds of its qdiscs.
fn qdisc_kinds(dev: &str) -> Vec<String> {
    let out = Command::new("tc")
        .args(["-j", "qdisc", "show", "dev", dev])
        .output()
        .expect("run tc");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|q| q["kind"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The ifb device the bandwidth plugin redirects `dev`'s ingress to.
fn ifb_of(dev: &str) -> Option<String> {
    let out = Command::new("tc")
        .args(["filter", "show", "dev", dev, "parent", "ffff:"])
        .output()
        .expect("run tc");
    let text = String::from_utf8_lossy(&out.stdout);
    let after = text.split("to device ").nth(1)?;
    Some(
        after
            .split(|c: char| c == ')' || c.is_whitespace())
            .next()?
            .to_string(),
    )
}

/// Done-when 2: moor -> portmap -> bandwidth -> tuning through containerd.
/// A hostPort reaches a listener in the pod, bandwidth annotations become tc
/// shaping, tuning sets its sysctl in the pod; StopPodSandbox's DEL removes
/// the NAT rules and the shaping, and the later DELs (no prevResult, empty
/// CNI_NETNS) succeed and bring nothing back.
#[test]
fn chained_portmap_bandwidth_tuning_work_and_are_torn_down() {
    let node = CriNode::new(Options {
        chain: true,
        ..Options::default()
    });
    node.create_pool("api", "api", 10);
    // Unique per process: hostPorts are the root netns's, shared by all.
    let host_port = 20_000 + (std::process::id() % 20_000) as i32;
    let mut config = sandbox_config(&deployment_pod("api", 1), &uid());
    config.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp as i32,
        container_port: 8080,
        host_port,
        host_ip: String::new(),
    }];
    config.annotations = [
        ("kubernetes.io/ingress-bandwidth", "1M"),
        ("kubernetes.io/egress-bandwidth", "2M"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let s = node
        .run_sandbox(config)
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}"));

    // tuning
    let sysctl = format!("/proc/sys/{}", TUNED_SYSCTL.0.replace('.', "/"));
    assert_eq!(
        in_netns(&s.netns, "cat", &[&sysctl]).trim(),
        TUNED_SYSCTL.1,
        "tuning did not set {} in the pod",
        TUNED_SYSCTL.0
    );

    // portmap: a listener in the pod, reached on the node's IP and hostPort.
    let www = node.dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let token = format!("moor-{}", s.id);
    std::fs::write(www.join("index.html"), &token).unwrap();
    let mut httpd = Command::new("nsenter")
        .arg(format!("--net={}", s.netns))
        .args(["busybox", "httpd", "-f", "-p", "8080", "-h"])
        .arg(&www)
        .stdin(Stdio::null())
        .spawn()
        .expect("start httpd in the pod");
    let direct = SocketAddr::from((s.ip, 8080));
    wait_for(
        "httpd listening in the pod",
        Duration::from_secs(10),
        || http_get(direct).is_ok(),
    );
    let via_host_port = http_get(SocketAddr::from((node.node_ip, host_port as u16)));
    let _ = httpd.kill();
    let _ = httpd.wait();
    let body = via_host_port.unwrap_or_else(|e| panic!("hostPort {host_port}: {e}"));
    assert!(
        body.contains(&token),
        "hostPort {host_port} answered {body}"
    );
    assert!(
        !node.nat_rules().is_empty(),
        "no portmap rule names the sandbox"
    );

    // bandwidth: ingress (to the pod) shaped on the host veth, egress on an
    // ifb the host veth's ingress is redirected to.
    let veth = s.host_veth();
    let kinds = qdisc_kinds(&veth);
    assert!(kinds.iter().any(|k| k == "tbf"), "{veth}: qdiscs {kinds:?}");
    assert!(
        kinds.iter().any(|k| k == "ingress"),
        "{veth}: qdiscs {kinds:?}"
    );
    let ifb = ifb_of(&veth).unwrap_or_else(|| panic!("{veth}: no redirect to an ifb"));
    let ifb_kinds = qdisc_kinds(&ifb);
    assert!(
        ifb_kinds.iter().any(|k| k == "tbf"),
        "{ifb}: qdiscs {ifb_kinds:?}"
    );

    // StopPodSandbox: the DEL with prevResult.
    node.stop_sandbox(&s.id)
        .unwrap_or_else(|e| panic!("StopPodSandbox: {e}"));
    let after_stop = node.moor_calls();
    let check_clean = |when: &str| {
        let rules = node.nat_rules();
        assert!(rules.is_empty(), "{when}: NAT rules left: {rules:?}");
        assert!(!link_exists(&ifb), "{when}: ifb {ifb} left");
        assert!(
            !live_host_end_exists(&veth),
            "{when}: host veth {veth} left"
        );
    };
    check_clean("after StopPodSandbox");
    // RemovePodSandbox: containerd DELs again, without prevResult.
    node.remove_sandbox(&s.id)
        .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}"));
    check_clean("after RemovePodSandbox");
    // A second Stop of a removed sandbox is what kubelet may do; containerd
    // answers NotFound and runs no CNI.
    let _ = node.stop_sandbox(&s.id);
    check_clean("after a repeated StopPodSandbox");

    let calls = node.moor_calls();
    let dels: Vec<&MoorCall> = calls_for(&calls, &s.id)
        .into_iter()
        .filter(|c| c.cmd == "DEL")
        .collect();
    eprintln!("DELs of the chained sandbox: {dels:?}");
    assert!(
        dels.len()
            > calls_for(&after_stop, &s.id)
                .iter()
                .filter(|c| c.cmd == "DEL")
                .count(),
        "RemovePodSandbox ran no DEL: {dels:?}"
    );
    assert!(
        dels.iter().skip(1).all(|c| c.netns.is_empty()),
        "later DELs came with a netns: {dels:?}"
    );
    let left = node.leftovers();
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
}

/// Done-when 4: an ADD refused because the pool is exhausted fails
/// RunPodSandbox with moor's message (pool, ToR, counts) and leaves nothing.
#[test]
fn exhausted_pool_fails_the_sandbox_with_our_message_and_leaves_nothing() {
    let node = CriNode::new(Options::default());
    node.create_pool("api", "api", 1);
    let a = run(&node, &deployment_pod("api", 1));
    let err = node
        .run_sandbox(sandbox_config(&deployment_pod("api", 2), &uid()))
        .expect_err("a second sandbox in a pool of one");
    let msg = err.message();
    eprintln!("RunPodSandbox failed: {err}");
    for part in ["pool api", "ToR rack-1", "1 IPs", "1 in use", "0 free"] {
        assert!(msg.contains(part), "the error does not say '{part}': {msg}");
    }
    assert_eq!(node.listed_sandboxes(), vec![a.id.clone()]);
    let calls = node.moor_calls();
    let failed: BTreeSet<String> = calls
        .iter()
        .filter(|c| c.cmd == "ADD" && c.container_id != a.id)
        .map(|c| c.container_id.clone())
        .collect();
    assert_eq!(failed.len(), 1, "one refused ADD: {calls:?}");
    let failed = failed.into_iter().next().unwrap();
    eprintln!(
        "calls for the refused sandbox: {:?}",
        calls_for(&calls, &failed)
    );
    assert!(attachment_of(&node, &failed).is_none());
    assert!(!link_exists(&moor_proto::host_ifname(&failed, "eth0")));
    for c in calls_for(&calls, &failed) {
        assert!(
            c.netns.is_empty() || !std::path::Path::new(&c.netns).exists(),
            "the refused sandbox's netns {} is left",
            c.netns
        );
    }
    let results = node.cni_results();
    assert!(
        results.iter().all(|r| !r.contains(&failed)),
        "result cache of the refused sandbox: {results:?}"
    );
    let taken: Vec<Value> = node
        .ip_list()
        .into_iter()
        .filter(|e| e["state"] != "free")
        .collect();
    assert_eq!(
        taken.len(),
        1,
        "only the first sandbox holds an IP: {taken:?}"
    );
    assert_eq!(taken[0]["attachment"]["container_id"], a.id.as_str());

    node.stop_and_remove(&a.id);
    let left = node.leftovers();
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
}

/// Done-when 5: containerd is SIGKILLed with sandboxes running and one
/// sandbox's ADD in flight, then restarted. It still knows every sandbox,
/// the one whose ADD it never saw finish too (containerd 1.6 records a
/// sandbox before its CNI ADD), and removing them through CRI frees every
/// IP. ipamd's leak sweep runs every second meanwhile and must leave the
/// running sandboxes alone.
#[test]
fn containerd_killed_mid_add_and_restarted_still_removes_everything() {
    let node = CriNode::new(Options {
        reconcile_interval_seconds: Some(1),
        gc_grace_seconds: Some(2),
        ..Options::default()
    });
    node.create_pool("api", "api", 10);
    let live: Vec<Sandbox> = (1..=3)
        .map(|i| run(&node, &deployment_pod("api", i)))
        .collect();
    let live_ids: BTreeSet<String> = live.iter().map(|s| s.id.clone()).collect();

    // Hold the next ADD inside moor (ipamd stopped), kill containerd under
    // it, then let the ADD finish: the attachment exists, containerd never
    // got its result.
    node.signal_ipamd(Signal::SIGSTOP);
    let in_flight = std::thread::scope(|scope| {
        let pending =
            scope.spawn(|| node.run_sandbox(sandbox_config(&deployment_pod("api", 9), &uid())));
        let mut call = None;
        let waited = Instant::now();
        while call.is_none() && waited.elapsed() < Duration::from_secs(30) {
            call = node
                .moor_calls()
                .into_iter()
                .find(|c| c.cmd == "ADD" && !live_ids.contains(&c.container_id));
            std::thread::sleep(Duration::from_millis(20));
        }
        node.kill9_containerd();
        node.signal_ipamd(Signal::SIGCONT);
        let r = pending.join().expect("the RunPodSandbox thread");
        assert!(
            r.is_err(),
            "RunPodSandbox succeeded with containerd killed: {r:?}"
        );
        call.expect("moor was not called for the 4th sandbox within 30 s")
    });
    wait_for(
        "the in-flight ADD attached",
        Duration::from_secs(10),
        || attachment_of(&node, &in_flight.container_id).is_some(),
    );

    node.start_containerd();
    let listed = node
        .cri()
        .as_ref()
        .unwrap()
        .list_pod_sandbox()
        .expect("ListPodSandbox");
    let ids: BTreeSet<String> = listed.iter().map(|s| s.id.clone()).collect();
    let mut expected = live_ids.clone();
    expected.insert(in_flight.container_id.clone());
    assert_eq!(ids, expected, "containerd after its restart");
    for s in &listed {
        let want = if s.id == in_flight.container_id {
            PodSandboxState::SandboxNotready
        } else {
            PodSandboxState::SandboxReady
        };
        assert_eq!(s.state(), want, "{s:?}");
    }
    // The sweep runs every second with a 2 s grace: running sandboxes keep
    // their attachments over several passes.
    std::thread::sleep(Duration::from_secs(4));
    for s in &live {
        assert!(
            attachment_of(&node, &s.id).is_some(),
            "the leak sweep released running sandbox {s:?}"
        );
        assert!(ping_in(&s.netns, node.gateway), "{s:?} lost its network");
    }
    for id in &expected {
        node.stop_and_remove(id);
        assert!(attachment_of(&node, id).is_none(), "{id} still attached");
    }
    let calls = node.moor_calls();
    eprintln!(
        "calls for the sandbox whose ADD was in flight: {:?}",
        calls_for(&calls, &in_flight.container_id)
    );
    let left = node.leftovers();
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
}

/// Done-when 5, the runtime forgetting: a containerd that loses its state
/// (root wiped and restarted, pod netns gone as after a reboot) never sends
/// the DELs of its old sandboxes. ipamd's leak sweep releases their
/// attachments (netns and host veth gone, seen twice, past the grace
/// period), and leaves a sandbox of the new containerd alone.
#[test]
fn leak_sweep_releases_what_a_containerd_that_lost_its_state_forgot() {
    let node = CriNode::new(Options {
        reconcile_interval_seconds: Some(1),
        gc_grace_seconds: Some(2),
        ..Options::default()
    });
    node.create_pool("api", "api", 10);
    node.create_pool("db", "db", 2);
    let old: Vec<Sandbox> = vec![
        run(&node, &deployment_pod("api", 1)),
        run(&node, &deployment_pod("api", 2)),
        run(&node, &statefulset_pod("db", 0)),
    ];
    node.lose_containerd_state();
    assert_eq!(
        node.listed_sandboxes(),
        Vec::<String>::new(),
        "containerd forgot"
    );
    let fresh = run(&node, &deployment_pod("api", 3));

    let start = Instant::now();
    wait_for(
        "ipamd's leak sweep released the forgotten attachments",
        Duration::from_secs(30),
        || old.iter().all(|s| attachment_of(&node, &s.id).is_none()),
    );
    eprintln!(
        "the leak sweep released 3 forgotten attachments in {:?}",
        start.elapsed()
    );
    for s in &old {
        let e = node.ip_entry(s.ip).unwrap();
        if s.name.starts_with("db-") {
            // A StatefulSet pod keeps its IP: the binding stays.
            assert_eq!(e["state"], "bound", "{e}");
        } else {
            assert_eq!(e["state"], "free", "{e}");
        }
    }
    assert!(
        attachment_of(&node, &fresh.id).is_some(),
        "the leak sweep released the running sandbox {fresh:?}"
    );
    assert!(
        ping_in(&fresh.netns, node.gateway),
        "{fresh:?} lost its network"
    );
    // db-0 comes back on its IP.
    let db0 = run(&node, &statefulset_pod("db", 0));
    assert_eq!(db0.ip, old[2].ip);
    node.stop_and_remove(&db0.id);
    node.stop_and_remove(&fresh.id);
    // libcni's result cache entries of the forgotten sandboxes stay: they
    // are containerd's (it deletes them with its DEL), hold no resource, and
    // no CNI plugin is told about them. Drop removes them.
    let left: Vec<String> = node
        .leftovers()
        .into_iter()
        .filter(|l| !(l.starts_with(CNI_RESULTS) && old.iter().any(|s| l.contains(&s.id))))
        .collect();
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
}
