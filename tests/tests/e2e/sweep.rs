//! The leak sweep (issue 5): attachments whose pod vanished without a DEL are
//! released by ipamd itself, the way containerd and podman (which never send
//! CNI GC) need, and nothing alive is touched.

use std::time::{Duration, Instant};

use moor_e2e::names::{container_id, deployment_pod};
use moor_e2e::{Counts, Options, Testbed};
use moor_proto::host_ifname;
use serde_json::json;

/// Long enough for a 1 s sweep to see a gone pod twice past a 1 s grace
/// period, with room for a loaded CI machine.
const SWEEP_WAIT: Duration = Duration::from_secs(20);

#[test]
fn pods_gone_without_del_are_released_and_live_ones_kept() {
    let tb = Testbed::with(Options {
        gc_grace_seconds: Some(1),
        ipamd_args: vec!["--reconcile-interval-seconds".into(), "1".into()],
        ..Options::default()
    });
    tb.create_pool("api", "api", 4);
    tb.create_pool("web", "web", 2);
    let add = |pod: &moor_e2e::Pod| {
        let cid = container_id();
        tb.moor("ADD", pod, &cid, "1.0.0", &json!({}), None)
            .ok("ADD");
        cid
    };
    // Its sandbox (netns) is removed, the DEL never comes.
    let netns_gone = tb.pod(&deployment_pod("api", 1));
    let netns_gone_id = add(&netns_gone);
    // Its host veth is deleted behind moor's back (and with it the pod's).
    let veth_gone = tb.pod(&deployment_pod("api", 2));
    let veth_gone_id = add(&veth_gone);
    // A StatefulSet pod whose netns goes: its binding must stay.
    let sticky = tb.pod("web-0");
    let sticky_id = add(&sticky);
    let sticky_ip = tb.ip_of_container(&sticky_id).expect("web-0 attached")["address"].clone();
    // Alive all along.
    let alive = tb.pod(&deployment_pod("api", 3));
    let alive_id = add(&alive);

    tb.remove_pod(&netns_gone);
    tb.remove_pod(&sticky);
    let veth = host_ifname(&veth_gone_id, "eth0");
    let out = std::process::Command::new("ip")
        .args(["-n", &tb.node_ns, "link", "del", &veth])
        .output()
        .unwrap();
    assert!(out.status.success(), "delete {veth}: {out:?}");

    let start = Instant::now();
    let gone = [&netns_gone_id, &veth_gone_id, &sticky_id];
    while gone.iter().any(|c| tb.ip_of_container(c).is_some()) {
        assert!(
            start.elapsed() < SWEEP_WAIT,
            "leaked attachments not released after {SWEEP_WAIT:?}: {:#?}\nipamd log:\n{}",
            gone.iter()
                .filter_map(|c| tb.ip_of_container(c))
                .collect::<Vec<_>>(),
            tb.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("leak sweep released 3 attachments in {:?}", start.elapsed());

    // The live pod is untouched, with its veth, after several more passes.
    std::thread::sleep(Duration::from_secs(3));
    assert!(tb.ip_of_container(&alive_id).is_some(), "live pod released");
    assert_eq!(tb.host_links(), vec![host_ifname(&alive_id, "eth0")]);
    assert_eq!(
        tb.pool_counts("api"),
        Counts {
            total: 4,
            bound: 0,
            in_use: 1,
            free: 3
        }
    );
    // web-0 keeps its IP for its next sandbox.
    assert_eq!(
        tb.pool_counts("web"),
        Counts {
            total: 2,
            bound: 1,
            in_use: 0,
            free: 1
        }
    );
    let again = tb.pod("web-0");
    let again_id = add(&again);
    assert_eq!(
        tb.ip_of_container(&again_id).expect("web-0 again")["address"],
        sticky_ip
    );
    let log = std::fs::read_to_string(&tb.log).unwrap();
    assert_eq!(
        log.matches("released an attachment whose pod is gone")
            .count(),
        3,
        "{}",
        tb.log_tail(40)
    );
    tb.moor("DEL", &alive, &alive_id, "1.0.0", &json!({}), None)
        .ok("DEL");
    tb.moor("DEL", &again, &again_id, "1.0.0", &json!({}), None)
        .ok("DEL");
    let bad = tb.audit();
    assert!(bad.is_empty(), "{bad:#?}");
}
