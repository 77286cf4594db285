//! The client against real ovsdb-server and ovs-vswitchd (userspace datapath),
//! checked with `ovs-vsctl`. Needs root (network namespaces).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use moor_ovs::{Endpoint, ErrorKind, Options, Ovsdb, PortSpec};
use moor_testkit::Ovs;

async fn client(ovs: &Ovs) -> Ovsdb {
    Ovsdb::connect(&Endpoint::Unix(ovs.sock.clone()), Options::default())
        .await
        .expect("connect")
}

/// A client with a bridge `br0` on the userspace datapath.
async fn with_bridge(ovs: &Ovs) -> Ovsdb {
    let c = client(ovs).await;
    c.ensure_bridge("br0", Some("netdev"))
        .await
        .expect("ensure_bridge");
    c
}

fn pod_port(name: &str, tag: u16, pod: &str) -> PortSpec {
    PortSpec::new(name)
        .tag(tag)
        .external_id("owner", "moor")
        .external_id("moor/pod", pod)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_bridge_is_idempotent() {
    let ovs = Ovs::start();
    let c = client(&ovs).await;
    c.ensure_bridge("br0", Some("netdev")).await.unwrap();
    c.ensure_bridge("br0", Some("netdev")).await.unwrap();
    c.ensure_bridge("br0", None).await.unwrap();
    assert_eq!(ovs.vsctl(&["list-br"]), "br0");
    assert_eq!(
        ovs.vsctl(&["get", "bridge", "br0", "datapath_type"]),
        "netdev"
    );

    // Its internal port, applied: ofport LOCAL and a tap in vswitchd's netns.
    let ports = c.ports("br0").await.unwrap();
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(
        (ports[0].name.as_str(), ports[0].kind.as_str()),
        ("br0", "internal")
    );
    assert_eq!(ports[0].ofport, Some(65534));
    ovs.ip(&["link", "show", "br0"]);

    let err = c.ensure_bridge("br0", Some("system")).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Conflict { .. }), "{err}");
    assert!(err.to_string().contains("datapath_type"), "{err}");
    assert_eq!(
        ovs.vsctl(&["get", "bridge", "br0", "datapath_type"]),
        "netdev"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_port_is_atomic_and_idempotent() {
    let ovs = Ovs::start();
    let c = with_bridge(&ovs).await;
    ovs.veths(&["v1".to_string()]);
    let spec = pod_port("v1", 100, "ns/a");

    c.add_port("br0", &spec).await.unwrap();
    // add_port waited for ovs-vswitchd: the veth end already has its ofport.
    let ofport: i64 = ovs
        .vsctl(&["get", "interface", "v1", "ofport"])
        .parse()
        .unwrap();
    assert!(ofport > 0, "ofport {ofport}");
    assert_eq!(ovs.vsctl(&["get", "port", "v1", "tag"]), "100");
    assert_eq!(
        ovs.vsctl(&["get", "port", "v1", "external_ids"]),
        r#"{"moor/pod"="ns/a", owner=moor}"#
    );
    c.wait_applied(Duration::from_secs(5)).await.unwrap();

    // Identical again: fine, nothing new.
    c.add_port("br0", &spec).await.unwrap();
    assert_eq!(ovs.vsctl(&["list-ports", "br0"]), "v1");

    // Conflicting: an error naming the difference, and nothing changed.
    for other in [
        pod_port("v1", 200, "ns/a"),
        pod_port("v1", 100, "ns/b"),
        pod_port("v1", 100, "ns/a").kind("internal"),
    ] {
        let err = c.add_port("br0", &other).await.unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::Conflict { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&ovs.sock.display().to_string()) && msg.contains("add_port br0/v1"),
            "{msg}"
        );
    }
    c.ensure_bridge("br1", Some("netdev")).await.unwrap();
    let err = c.add_port("br1", &spec).await.unwrap_err();
    assert!(err.to_string().contains("on bridge \"br0\""), "{err}");
    assert_eq!(ovs.vsctl(&["get", "port", "v1", "tag"]), "100");
    assert_eq!(ovs.vsctl(&["list-ports", "br0"]), "v1");
    assert_eq!(ovs.vsctl(&["list-ports", "br1"]), "");

    let ports = c.ports("br0").await.unwrap();
    let v1 = ports.iter().find(|p| p.name == "v1").unwrap();
    assert_eq!(
        (v1.tag, v1.kind.as_str(), v1.ofport),
        (Some(100), "system", Some(ofport))
    );
    assert_eq!(v1.external_ids, spec.external_ids);
    assert_eq!(v1.error, None);

    // No such bridge: an error, and no stray Port or Interface row.
    let err = c
        .add_port("nope", &pod_port("v2", 100, "ns/x"))
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::NoSuchBridge(_)), "{err}");
    assert!(!ovs
        .vsctl(&["--columns=name", "list", "interface"])
        .contains("v2"));
    let err = c.ports("nope").await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::NoSuchBridge(_)), "{err}");

    // Bad input changes nothing either.
    let err = c
        .add_port("br0", &PortSpec::new("v3").tag(4096))
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Invalid(_)), "{err}");

    assert!(c.remove_port("br0", "v1").await.unwrap());
    assert!(!c.remove_port("br0", "v1").await.unwrap());
    assert_eq!(ovs.vsctl(&["list-ports", "br0"]), "");
    // The Interface row went with the Port.
    assert!(!ovs
        .vsctl(&["--columns=name", "list", "interface"])
        .contains("v1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_port_leaves_other_bridges_alone() {
    let ovs = Ovs::start();
    let c = with_bridge(&ovs).await;
    c.ensure_bridge("br1", Some("netdev")).await.unwrap();
    c.add_port("br1", &PortSpec::new("p1").kind("internal"))
        .await
        .unwrap();
    assert!(!c.remove_port("br0", "p1").await.unwrap());
    assert_eq!(ovs.vsctl(&["list-ports", "br1"]), "p1");
    assert!(c.remove_port("br1", "p1").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trunk_port() {
    let ovs = Ovs::start();
    let c = with_bridge(&ovs).await;
    ovs.veths(&["up0".to_string()]);
    c.add_port("br0", &PortSpec::new("up0").trunks([200, 100]))
        .await
        .unwrap();
    assert_eq!(ovs.vsctl(&["get", "port", "up0", "trunks"]), "[100, 200]");
    assert_eq!(ovs.vsctl(&["get", "port", "up0", "tag"]), "[]");
    let ports = c.ports("br0").await.unwrap();
    let up0 = ports.iter().find(|p| p.name == "up0").unwrap();
    assert_eq!((up0.tag, up0.trunks.as_slice()), (None, &[100, 200][..]));
    // The same trunks in another order is the same port.
    c.add_port("br0", &PortSpec::new("up0").trunks([100, 200]))
        .await
        .unwrap();
    let err = c
        .add_port("br0", &PortSpec::new("up0").trunks([100]))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("trunks [100, 200], wanted [100]"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_with_filters_by_external_ids() {
    let ovs = Ovs::start();
    let c = with_bridge(&ovs).await;
    c.ensure_bridge("br1", Some("netdev")).await.unwrap();
    let noisy = Options {
        wait_applied: false,
        ..Options::default()
    };
    let quick = c.with_options(noisy);
    // Internal ports: vswitchd makes their devices, no veths needed.
    for (bridge, name, pod) in [
        ("br0", "pa", "ns/a"),
        ("br0", "pb", "ns/b"),
        ("br1", "pc", "ns/c"),
    ] {
        quick
            .add_port(bridge, &pod_port(name, 100, pod).kind("internal"))
            .await
            .unwrap();
    }
    quick
        .add_port(
            "br0",
            &PortSpec::new("other")
                .kind("internal")
                .external_id("owner", "admin"),
        )
        .await
        .unwrap();
    c.wait_applied(Duration::from_secs(5)).await.unwrap();

    let b = c.ports_with("moor/pod", "ns/b").await.unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!((b[0].name.as_str(), b[0].bridge.as_str()), ("pb", "br0"));
    let ours: Vec<(String, String)> = c
        .ports_with("owner", "moor")
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.bridge, p.name))
        .collect();
    let want =
        [("br0", "pa"), ("br0", "pb"), ("br1", "pc")].map(|(b, n)| (b.to_string(), n.to_string()));
    assert_eq!(ours, want);
    assert!(c.ports_with("owner", "nobody").await.unwrap().is_empty());
    // Applied: every port has its ofport by now.
    assert!(c
        .ports("br0")
        .await
        .unwrap()
        .iter()
        .all(|p| p.ofport.unwrap_or(0) > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_adds_on_one_bridge() {
    let ovs = Ovs::start();
    let c = with_bridge(&ovs).await;
    let names: Vec<String> = (0..50).map(|i| format!("c{i}")).collect();
    ovs.veths(&names);
    let started = Instant::now();
    let tasks: Vec<_> = names
        .iter()
        .map(|n| {
            let (c, spec) = (c.clone(), pod_port(n, 100, &format!("ns/{n}")));
            tokio::spawn(async move { c.add_port("br0", &spec).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    println!("50 concurrent add_port: {:?}", started.elapsed());
    let listed: Vec<String> = ovs
        .vsctl(&["list-ports", "br0"])
        .lines()
        .map(str::to_string)
        .collect();
    let unique: BTreeSet<&String> = listed.iter().collect();
    assert_eq!((listed.len(), unique.len()), (50, 50), "{listed:?}");
    assert_eq!(unique, names.iter().collect());
    // Bridge.ports holds each exactly once, with the bridge's own port.
    let ports = ovs.vsctl(&["get", "bridge", "br0", "ports"]);
    assert_eq!(ports.split(',').count(), 51, "{ports}");
    let ours = c.ports("br0").await.unwrap();
    assert_eq!(ours.len(), 51);
    assert!(ours.iter().all(|p| p.ofport.unwrap_or(0) > 0), "{ours:?}");

    let tasks: Vec<_> = names
        .iter()
        .map(|n| {
            let (c, n) = (c.clone(), n.clone());
            tokio::spawn(async move { c.remove_port("br0", &n).await })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().unwrap());
    }
    assert_eq!(ovs.vsctl(&["list-ports", "br0"]), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_ovsdb_server_restarts() {
    let mut ovs = Ovs::start();
    let c = with_bridge(&ovs).await;
    ovs.veths(&["r1".to_string(), "r2".to_string()]);
    c.add_port("br0", &pod_port("r1", 100, "ns/r1"))
        .await
        .unwrap();

    ovs.kill_ovsdb_server();
    let timeout = Duration::from_secs(1);
    let short = c.with_options(Options {
        timeout,
        ..Options::default()
    });
    let started = Instant::now();
    let err = short.ports("br0").await.unwrap_err();
    let took = started.elapsed();
    println!("with ovsdb-server down, a call failed after {took:?}: {err}");
    assert!(took < timeout + Duration::from_millis(300), "{took:?}");
    assert!(matches!(err.kind(), ErrorKind::Connect { .. }), "{err}");
    assert!(
        err.to_string().contains(&ovs.sock.display().to_string()),
        "{err}"
    );
    let err = short
        .add_port("br0", &pod_port("r2", 100, "ns/r2"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("add_port br0/r2"), "{err}");

    ovs.start_ovsdb_server();
    // The same value, no new connect call.
    let ports = c.ports("br0").await.unwrap();
    assert!(ports.iter().any(|p| p.name == "r1"));
    // ovs-vswitchd reconnects on its own backoff: give the wait more time.
    let patient = c.with_options(Options {
        timeout: Duration::from_secs(20),
        ..Options::default()
    });
    let started = Instant::now();
    patient
        .add_port("br0", &pod_port("r2", 100, "ns/r2"))
        .await
        .unwrap();
    println!(
        "first add_port after the restart, applied by ovs-vswitchd: {:?}",
        started.elapsed()
    );
    assert_eq!(ovs.vsctl(&["list-ports", "br0"]), "r1\nr2");
    let ofport: i64 = ovs
        .vsctl(&["get", "interface", "r2", "ofport"])
        .parse()
        .unwrap();
    assert!(ofport > 0);
    assert!(c.remove_port("br0", "r2").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_a_stopped_server_fails_in_time_naming_the_socket() {
    let mut ovs = Ovs::start();
    ovs.kill_ovsdb_server();
    let timeout = Duration::from_millis(500);
    let started = Instant::now();
    let err = Ovsdb::connect(
        &Endpoint::Unix(ovs.sock.clone()),
        Options {
            timeout,
            ..Options::default()
        },
    )
    .await
    .expect_err("connect to a dead server");
    assert!(
        started.elapsed() < timeout + Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "ovsdb unix:{}: connect: cannot connect",
            ovs.sock.display()
        )),
        "{msg}"
    );

    let missing = "unix:/nonexistent/db.sock".parse().unwrap();
    let err = Ovsdb::connect(
        &missing,
        Options {
            timeout,
            ..Options::default()
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/db.sock"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_stopped_vswitchd_times_out() {
    let mut ovs = Ovs::start();
    let c = with_bridge(&ovs).await;
    ovs.stop_vswitchd();
    let timeout = Duration::from_millis(500);
    let waiting = c.with_options(Options {
        timeout,
        ..Options::default()
    });
    let started = Instant::now();
    let err = waiting
        .add_port("br0", &PortSpec::new("w1").kind("internal"))
        .await
        .unwrap_err();
    assert!(started.elapsed() < timeout + Duration::from_millis(300));
    assert!(matches!(err.kind(), ErrorKind::Timeout { .. }), "{err}");
    assert!(
        err.to_string().contains("ovs-vswitchd to apply next_cfg"),
        "{err}"
    );
    // The port itself was committed; only the wait failed.
    assert_eq!(ovs.vsctl(&["list-ports", "br0"]), "w1");

    let no_wait = c.with_options(Options {
        wait_applied: false,
        ..Options::default()
    });
    no_wait
        .add_port("br0", &PortSpec::new("w2").kind("internal"))
        .await
        .unwrap();
    let err = c.wait_applied(timeout).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Timeout { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_leaves_nothing_behind() {
    let ovs = Ovs::start();
    let c = client(&ovs).await;
    // A name no other test uses, to look for on the host afterwards.
    let bridge = format!("mh{}", std::process::id() % 100_000);
    c.ensure_bridge(&bridge, Some("netdev")).await.unwrap();
    c.add_port(&bridge, &PortSpec::new("mhp0").kind("internal"))
        .await
        .unwrap();
    ovs.ip(&["link", "show", &bridge]);
    let (dir, netns) = (ovs.dir.clone(), ovs.netns.clone());
    drop(c);
    drop(ovs);
    assert!(!dir.exists());
    let namespaces = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&namespaces.stdout).contains(&netns));
    let host = std::process::Command::new("ip")
        .args(["link", "show", &bridge])
        .output()
        .unwrap();
    assert!(
        !host.status.success(),
        "{bridge} leaked into the host namespace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_inactivity_probes_over_tcp() {
    let ovs = Ovs::start();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // ovsdb-server probes an idle client after 1 s and drops it 1 s later
    // unless it answers the "echo".
    let target = format!("target=\"ptcp:{port}:127.0.0.1\"");
    ovs.vsctl(&[
        "--",
        "--id=@m",
        "create",
        "Manager",
        &target,
        "inactivity_probe=1000",
        "--",
        "add",
        "Open_vSwitch",
        ".",
        "manager_options",
        "@m",
    ]);
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "ovsdb-server does not listen on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = Ovsdb::connect(&format!("tcp:{addr}").parse().unwrap(), Options::default())
        .await
        .unwrap();
    // A client that never answers, to show the probe is real.
    let mute = std::net::TcpStream::connect(&addr).unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    c.ensure_bridge("br0", Some("netdev")).await.unwrap();
    let log = ovs.log("ovsdb-server.log");
    let dropped: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("no response to inactivity probe"))
        .collect();
    assert_eq!(dropped.len(), 1, "only the mute client is dropped:\n{log}");
    assert!(
        dropped[0].contains(&mute.local_addr().unwrap().port().to_string()),
        "{log}"
    );
}
