//! Done-when 2: pods in one pool on one node reach the gateway and each other;
//! a re-created StatefulSet-style pod gets the same IP and MAC; a
//! Deployment-style pod's IP goes back to the pool on DEL.

use std::net::Ipv4Addr;

use moor_e2e::names::{container_id, deployment_pod};
use moor_e2e::{Counts, Pod, Testbed};
use serde_json::json;

use crate::support::{binding_of, check_add_result, check_wired, ip_entry, Attached};

fn add(tb: &Testbed, pod: &Pod, cid: &str) -> Attached {
    let r = tb.moor("ADD", pod, cid, "1.0.0", &json!({}), None);
    r.ok(&format!("ADD {}", pod.name));
    let got = check_add_result(tb, pod, cid, &r.json, "1.0.0");
    check_wired(tb, pod, &got);
    got
}

fn assert_pings(tb: &Testbed, from: &Pod, to: Ipv4Addr, what: &str) {
    assert!(tb.ping(from, to), "{} cannot ping {what} ({to})", from.name);
}

#[test]
fn pods_reach_gateway_and_each_other_and_stick() {
    let tb = Testbed::new();
    tb.create_pool("web", "web", 4);
    tb.create_pool("api", "api", 3);

    let web0 = tb.pod("web-0");
    let web1 = tb.pod("web-1");
    let api = tb.pod(&deployment_pod("api", 7));
    let (web0_id, web1_id, api_id) = (container_id(), container_id(), container_id());
    let a0 = add(&tb, &web0, &web0_id);
    let a1 = add(&tb, &web1, &web1_id);
    let aa = add(&tb, &api, &api_id);
    assert!(
        a0.ip != a1.ip && a0.ip != aa.ip && a1.ip != aa.ip,
        "distinct IPs"
    );
    assert_eq!(ip_entry(&tb, a0.ip)["pool"], "web");
    assert_eq!(ip_entry(&tb, a1.ip)["pool"], "web");
    assert_eq!(ip_entry(&tb, aa.ip)["pool"], "api");

    for p in [&web0, &web1, &api] {
        assert_pings(&tb, p, tb.gateway, "the gateway");
    }
    assert_pings(&tb, &web0, a1.ip, "web-1");
    assert_pings(&tb, &web1, aa.ip, "the api pod");
    assert_pings(&tb, &api, a0.ip, "web-0");

    // web-0 is deleted and re-created: new container, new netns, same name.
    tb.moor("DEL", &web0, &web0_id, "1.0.0", &json!({}), None)
        .ok("DEL web-0");
    tb.remove_pod(&web0);
    assert_eq!(tb.host_links().len(), 2, "web-0's host veth is gone");
    let kept = binding_of(&tb, &["binding", "list"], "web-0");
    assert_eq!(kept["address"], a0.ip.to_string().as_str());
    assert_eq!(kept["attached"], false);
    assert_eq!(
        tb.pool_counts("web"),
        Counts {
            total: 4,
            bound: 1,
            in_use: 1,
            free: 2
        }
    );

    let web0b = tb.pod("web-0");
    assert_ne!(web0b.netns, web0.netns);
    let b0 = add(&tb, &web0b, &container_id());
    assert_eq!(b0, a0, "re-created web-0 has the same IP and MAC");
    assert_pings(&tb, &web0b, tb.gateway, "the gateway");
    assert_pings(&tb, &web1, b0.ip, "the re-created web-0");
    assert_pings(&tb, &api, b0.ip, "the re-created web-0");

    // The Deployment pod gives its IP back.
    assert_eq!(
        tb.pool_counts("api"),
        Counts {
            total: 3,
            bound: 0,
            in_use: 1,
            free: 2
        }
    );
    tb.moor("DEL", &api, &api_id, "1.0.0", &json!({}), None)
        .ok("DEL api");
    assert_eq!(
        tb.pool_counts("api"),
        Counts {
            total: 3,
            bound: 0,
            in_use: 0,
            free: 3
        }
    );
    let e = ip_entry(&tb, aa.ip);
    assert_eq!(e["state"], "free", "{e}");
    assert!(e["binding"].is_null() && e["attachment"].is_null(), "{e}");
    assert!(
        !tb.ipamctl_json(&["binding", "list"])
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["pod"]["name"] == api.name.as_str()),
        "no binding for the Deployment pod"
    );
    assert_eq!(
        tb.pool_counts("web"),
        Counts {
            total: 4,
            bound: 0,
            in_use: 2,
            free: 2
        }
    );
    assert_eq!(tb.host_links().len(), 2);
    let problems = tb.audit();
    assert!(problems.is_empty(), "audit: {problems:#?}");
}
