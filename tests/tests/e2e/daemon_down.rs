//! Done-when 5: DEL with ipamd stopped succeeds; after ipamd starts, the IP is
//! free again. And an ADD while ipamd is down says "try again later", naming
//! the socket.

use std::time::{Duration, Instant};

use moor_e2e::names::{container_id, deployment_pod};
use moor_e2e::{Counts, Testbed};
use moor_proto::host_ifname;
use serde_json::json;

use crate::support::{check_add_result, check_wired};

#[test]
fn del_with_ipamd_down_releases_after_restart() {
    let tb = Testbed::new();
    tb.create_pool("api", "api", 4);
    let pod = tb.pod(&deployment_pod("api", 3));
    let cid = container_id();
    let add = tb.moor("ADD", &pod, &cid, "1.0.0", &json!({}), None);
    add.ok("ADD");
    let got = check_add_result(&tb, &pod, &cid, &add.json, "1.0.0");
    check_wired(&tb, &pod, &got);
    let in_use = Counts {
        total: 4,
        bound: 0,
        in_use: 1,
        free: 3,
    };
    assert_eq!(tb.pool_counts("api"), in_use);

    tb.stop_ipamd();
    let record = tb.pending_record(&cid);
    assert!(!record.exists());
    let del = tb.moor("DEL", &pod, &cid, "1.0.0", &json!({}), None);
    del.ok("DEL with ipamd down");
    println!("DEL with ipamd down took {:.2?}", del.took);
    assert!(
        tb.host_links().is_empty(),
        "moor removed the host veth itself"
    );
    assert!(tb.pod_links(&pod).is_empty(), "and with it the pod's eth0");
    assert!(
        record.is_file(),
        "pending DEL recorded at {}",
        record.display()
    );
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).expect("record is JSON");
    assert_eq!(rec["container_id"], cid.as_str(), "{rec}");
    assert_eq!(rec["ifname"], "eth0", "{rec}");
    // containerd's later DEL, still with ipamd down: fine too.
    tb.moor("DEL", &pod, &cid, "1.0.0", &json!({}), None)
        .ok("second DEL with ipamd down");

    // ADD with ipamd down: code 11, naming the socket.
    let other = tb.pod(&deployment_pod("api", 4));
    let other_id = container_id();
    let r = tb.moor("ADD", &other, &other_id, "1.0.0", &json!({}), None);
    assert_eq!(r.err_code("ADD with ipamd down"), 11, "{}", r.stdout);
    assert_eq!(r.json["cniVersion"], "1.0.0", "{}", r.stdout);
    let socket = tb.socket.display().to_string();
    assert!(
        r.message().contains(&socket),
        "names the socket: {}",
        r.message()
    );
    assert!(tb.pod_links(&other).is_empty() && tb.host_links().is_empty());

    // ipamd starts and applies the recorded DEL.
    tb.start_ipamd();
    let free = Counts {
        total: 4,
        bound: 0,
        in_use: 0,
        free: 4,
    };
    let start = Instant::now();
    loop {
        let c = tb.pool_counts("api");
        if c == free && !record.exists() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "after 10 s: counts {c:?}, record exists: {}",
            record.exists()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "the recorded DEL was applied {:.2?} after ipamd was up",
        start.elapsed()
    );
    let e = tb.ipamctl_json(&["ip", "show", &got.ip.to_string()]);
    assert_eq!(e["state"], "free", "{e}");

    // The IP is really reusable: the next pod gets wired with it or another,
    // and the runtime's DEL after the restart is still fine.
    tb.moor("DEL", &pod, &cid, "1.0.0", &json!({}), None)
        .ok("DEL after the restart");
    let r = tb.moor("ADD", &other, &other_id, "1.0.0", &json!({}), None);
    r.ok("ADD after the restart");
    check_add_result(&tb, &other, &other_id, &r.json, "1.0.0");
    assert_eq!(tb.host_links(), vec![host_ifname(&other_id, "eth0")]);
    tb.moor("DEL", &other, &other_id, "1.0.0", &json!({}), None)
        .ok("DEL");
    assert_eq!(tb.pool_counts("api"), free);
    let problems = tb.audit();
    assert!(problems.is_empty(), "audit: {problems:#?}");
}
