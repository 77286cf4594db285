//! 100 pod ports added and removed through this client versus `ovs-vsctl`
//! processes doing the same, on one ovsdb-server + ovs-vswitchd. Prints wall
//! times (run with `--nocapture`); asserts nothing about them. Its own test
//! binary so no other test competes for the two cores meanwhile.

use std::time::{Duration, Instant};

use moor_ovs::{Endpoint, Options, Ovsdb, PortSpec};
use moor_testkit::Ovs;

const PORTS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_remove_100_ports_client_vs_ovs_vsctl() {
    let ovs = Ovs::start();
    let c = Ovsdb::connect(&Endpoint::Unix(ovs.sock.clone()), Options::default())
        .await
        .unwrap();
    c.ensure_bridge("br0", Some("netdev")).await.unwrap();
    let names: Vec<String> = (0..PORTS).map(|i| format!("b{i}")).collect();
    ovs.veths(&names);
    let spec = |n: &str| {
        PortSpec::new(n)
            .tag(100)
            .external_id("owner", "moor")
            .external_id("pod", format!("ns-{n}"))
    };
    let no_wait = c.with_options(Options {
        wait_applied: false,
        ..Options::default()
    });

    let mut rows = Vec::new();
    for (label, client) in [
        ("moor-ovs, wait for vswitchd", &c),
        ("moor-ovs, no wait", &no_wait),
    ] {
        let started = Instant::now();
        let mut adding = Duration::ZERO;
        for n in &names {
            let add = Instant::now();
            client.add_port("br0", &spec(n)).await.unwrap();
            adding += add.elapsed();
            assert!(client.remove_port("br0", n).await.unwrap());
        }
        c.wait_applied(Duration::from_secs(10)).await.unwrap();
        rows.push((label, started.elapsed(), Some(adding)));
    }
    for (label, wait) in [
        ("ovs-vsctl, wait for vswitchd", true),
        ("ovs-vsctl --no-wait", false),
    ] {
        let started = Instant::now();
        for n in &names {
            let mut add = vec!["add-port", "br0", n, "tag=100"];
            let (owner, pod) = (
                "external_ids:owner=moor".to_string(),
                format!("external_ids:pod=ns-{n}"),
            );
            add.extend(["--", "set", "port", n, &owner, &pod]);
            let mut del = vec!["del-port", "br0", n];
            if !wait {
                add.insert(0, "--no-wait");
                del.insert(0, "--no-wait");
            }
            ovs.vsctl(&add);
            ovs.vsctl(&del);
        }
        rows.push((label, started.elapsed(), None));
    }
    assert_eq!(ovs.vsctl(&["list-ports", "br0"]), "");

    println!("{PORTS} x (add_port tag=100 + external_ids, then remove_port), veth ends, netdev datapath:");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for (label, took, adding) in rows {
        let per = ms(took) / PORTS as f64;
        let adds = adding.map_or_else(String::new, |a| {
            format!("  (the adds alone: {:.2} ms each)", ms(a) / PORTS as f64)
        });
        println!(
            "  {label:<30} {:>8.1} ms total  {per:>6.2} ms per add+remove{adds}",
            ms(took)
        );
    }
}
