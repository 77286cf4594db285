//! Checks several tests share: the shape of an ADD result, a pod's wiring.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use moor_e2e::{Families, Pod, Testbed};
use moor_proto::{format_mac, host_ifname, mac_for_ipv4};
use serde_json::{json, Value};

/// The cniVersions moor must speak (issue 2).
pub const VERSIONS: [&str; 4] = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// What an ADD result says about the pod's interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub ip: Ipv4Addr,
    pub mac: String,
    /// A dual-stack pod's IPv6 address.
    pub ip6: Option<Ipv6Addr>,
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

fn assert_keys_within(v: &Value, allowed: &[&str], what: &str) {
    let extra: Vec<&str> = keys(v)
        .into_iter()
        .filter(|k| !allowed.contains(k))
        .collect();
    assert!(
        extra.is_empty(),
        "{what} has keys {extra:?} the spec does not define here: {v}"
    );
}

/// Checks an ADD result against the spec's result shape for `version`
/// (SPEC.md section 5 "ADD Success", and the versions' differences: `version`
/// in `ips` only before 1.0.0, `mtu` in `interfaces` only from 1.1.0) and
/// against this testbed: the pod interface is CNI_IFNAME in CNI_NETNS with the
/// MAC derived from the IP, the IP is in the ToR's pod range with the ToR's
/// prefix, gateway and default route.
pub fn check_add_result(
    tb: &Testbed,
    pod: &Pod,
    container_id: &str,
    res: &Value,
    version: &str,
) -> Attached {
    let pre_1_0 = matches!(version, "0.3.1" | "0.4.0");
    let v1_1 = version == "1.1.0";
    assert_keys_within(
        res,
        &["cniVersion", "interfaces", "ips", "routes", "dns"],
        "result",
    );
    assert_eq!(res["cniVersion"], version, "cniVersion is echoed: {res}");

    let ifaces = res["interfaces"]
        .as_array()
        .unwrap_or_else(|| panic!("interfaces is an array: {res}"));
    let mut iface_keys = vec!["name", "mac", "sandbox"];
    if v1_1 {
        iface_keys.extend(["mtu", "socketPath", "pciID"]);
    }
    for i in ifaces {
        assert_keys_within(i, &iface_keys, &format!("interface (cniVersion {version})"));
        assert!(
            i["name"]
                .as_str()
                .is_some_and(|n| !n.is_empty() && n.len() <= 15),
            "interface name: {i}"
        );
        if let Some(mac) = i.get("mac") {
            let mac = mac.as_str().expect("mac is a string");
            assert!(
                mac.len() == 17 && mac.split(':').all(|b| u8::from_str_radix(b, 16).is_ok()),
                "mac {mac:?} is aa:bb:cc:dd:ee:ff"
            );
        }
        if let Some(mtu) = i.get("mtu") {
            assert!(mtu.as_u64().is_some_and(|m| m >= 68), "mtu is a uint: {i}");
        }
    }
    let sandbox = pod.netns_path();
    let pod_ifaces: Vec<usize> = ifaces
        .iter()
        .enumerate()
        .filter(|(_, i)| {
            i.get("sandbox")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
        })
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        pod_ifaces.len(),
        1,
        "exactly one interface in a sandbox: {res}"
    );
    let pod_index = pod_ifaces[0];
    let pod_iface = &ifaces[pod_index];
    assert_eq!(pod_iface["name"], "eth0", "pod interface is CNI_IFNAME");
    assert_eq!(
        pod_iface["sandbox"],
        sandbox.as_str(),
        "sandbox is CNI_NETNS"
    );
    for (n, i) in ifaces.iter().enumerate().filter(|(n, _)| *n != pod_index) {
        assert_eq!(
            i["name"],
            host_ifname(container_id, "eth0").as_str(),
            "interface {n} on the host is the pod's host veth end: {res}"
        );
    }

    let ips = res["ips"].as_array().expect("ips is an array");
    let dual = tb.opts.families == Families::Dual;
    assert_eq!(ips.len(), 1 + usize::from(dual), "one IP per family: {res}");
    let ipc = &ips[0];
    let mut ip_keys = vec!["address", "gateway", "interface"];
    if pre_1_0 {
        ip_keys.push("version");
        assert_eq!(
            ipc["version"], "4",
            "ips[].version is \"4\" before 1.0.0: {res}"
        );
    } else {
        assert!(
            ipc.get("version").is_none(),
            "no ips[].version from 1.0.0: {res}"
        );
    }
    assert_keys_within(ipc, &ip_keys, "ips[0]");
    let (addr, prefix) = ipc["address"]
        .as_str()
        .and_then(|a| a.split_once('/'))
        .unwrap_or_else(|| panic!("address is CIDR: {ipc}"));
    let ip: Ipv4Addr = addr.parse().expect("address is IPv4");
    assert_eq!(prefix, "24", "address has the ToR subnet's prefix");
    assert!(tb.in_subnet(ip), "{ip} in {}", tb.subnet());
    assert!(
        (tb.range.0..=tb.range.1).contains(&ip),
        "{ip} in the ToR's pod range {:?}",
        tb.range
    );
    assert_eq!(ipc["gateway"], tb.gateway.to_string().as_str(), "gateway");
    assert_eq!(
        ipc["interface"], pod_index as u64,
        "ips[0].interface points at eth0"
    );

    let routes = res["routes"].as_array().expect("routes is an array");
    for r in routes {
        assert_keys_within(
            r,
            &["dst", "gw", "mtu", "advmss", "priority", "table", "scope"],
            "route",
        );
    }
    assert!(
        routes.contains(&json!({"dst": "0.0.0.0/0", "gw": tb.gateway.to_string()})),
        "default route via the gateway: {res}"
    );
    assert!(res["dns"].is_object(), "dns is an object: {res}");

    let ip6 = dual.then(|| {
        let ipc = &ips[1];
        if pre_1_0 {
            assert_eq!(
                ipc["version"], "6",
                "ips[1].version is \"6\" before 1.0.0: {res}"
            );
        } else {
            assert!(
                ipc.get("version").is_none(),
                "no ips[].version from 1.0.0: {res}"
            );
        }
        assert_keys_within(ipc, &ip_keys, "ips[1]");
        let (addr, prefix) = ipc["address"]
            .as_str()
            .and_then(|a| a.split_once('/'))
            .unwrap_or_else(|| panic!("address is CIDR: {ipc}"));
        let ip6: Ipv6Addr = addr.parse().expect("ips[1] is IPv6");
        assert_eq!(prefix, "64", "the IPv6 address has the /64's prefix: {res}");
        assert_eq!(
            ip6.segments()[..4],
            tb.gateway6.segments()[..4],
            "{ip6} in {}",
            tb.subnet6()
        );
        let range6 = tb.range6();
        assert!(
            (range6.0..=range6.1).contains(&ip6),
            "{ip6} in the ToR's IPv6 pod range {range6:?}"
        );
        assert_eq!(
            ipc["gateway"],
            tb.gateway6.to_string().as_str(),
            "IPv6 gateway"
        );
        assert_eq!(
            ipc["interface"], pod_index as u64,
            "ips[1].interface is eth0's"
        );
        assert!(
            routes.contains(&json!({"dst": "::/0", "gw": tb.gateway6.to_string()})),
            "IPv6 default route via the IPv6 gateway: {res}"
        );
        ip6
    });
    let mac = format_mac(&mac_for_ipv4(ip));
    assert_eq!(pod_iface["mac"], mac.as_str(), "pod MAC is 0a:58 + the IP");
    Attached { ip, mac, ip6 }
}

/// The pod really has the attachment: the IP with the ToR prefix and the
/// derived MAC on eth0, the default route via the gateway.
pub fn check_wired(tb: &Testbed, pod: &Pod, want: &Attached) {
    let a = tb
        .pod_addr(pod, "eth0")
        .unwrap_or_else(|| panic!("pod {} has no IPv4 on eth0", pod.name));
    assert_eq!(a.ip, want.ip, "IP on eth0 of {}", pod.name);
    assert_eq!(a.prefix, 24, "prefix on eth0 of {}", pod.name);
    assert_eq!(a.mac, want.mac, "MAC of eth0 of {}", pod.name);
    assert_eq!(
        tb.pod_default_gateway(pod),
        Some(tb.gateway),
        "default route of {}",
        pod.name
    );
}

/// A minimal prevResult naming `ip` on eth0 in the pod, as a runtime keeps it.
pub fn prev_result(pod: &Pod, version: &str, ip: Ipv4Addr) -> Value {
    json!({
        "cniVersion": version,
        "interfaces": [{"name": "eth0", "sandbox": pod.netns_path()}],
        "ips": [{"address": format!("{ip}/24"), "interface": 0}],
    })
}

/// The `ip list` entry of `ip`.
/// Pod `pod`'s binding in `ipamctl -o json binding list` (panics naming
/// the list when it has none).
pub fn binding_of(tb: &Testbed, args: &[&str], pod: &str) -> Value {
    let list = tb.ipamctl_json(args);
    list.as_array()
        .unwrap()
        .iter()
        .find(|b| b["pod"]["name"] == pod)
        .cloned()
        .unwrap_or_else(|| panic!("{pod} has no binding: {list}"))
}

pub fn ip_entry(tb: &Testbed, ip: Ipv4Addr) -> Value {
    tb.ipamctl_json(&["ip", "show", &ip.to_string()])
}

/// After a successful ADD: the node (its `host_links`) holds the host end of
/// `cid`'s veth.
pub fn assert_host_veth(host_links: &[String], cid: &str, what: &str) {
    assert!(
        host_links.contains(&host_ifname(cid, "eth0")),
        "{what}: host veth"
    );
}

/// A failed ADD that left no attachment left nothing else: no host veth on
/// the node (its `host_links`), no link in the pod (`pod_links`).
pub fn assert_unwired(host_links: &[String], cid: &str, pod_links: &[String], what: &str) {
    assert!(
        !host_links.contains(&host_ifname(cid, "eth0")),
        "{what}: no attachment but a host veth"
    );
    assert!(
        pod_links.is_empty(),
        "{what}: no attachment but links in the pod: {pod_links:?}"
    );
}

/// What a whitelist syncer knows from the plain feed of `ipamctl pool
/// export NAME --watch` (`= N` starts a snapshot of N `+` lines, `+ IP`
/// adds, `- IP` removes, `! deleted` ends).
#[derive(Debug, Default)]
pub struct Feed {
    pub set: BTreeSet<String>,
    /// Every line, in order.
    pub lines: Vec<String>,
    pub snapshots: usize,
    /// `+` lines still owed by the last `= N`.
    pub owed: usize,
    pub deleted: bool,
    /// Lines that break the protocol.
    pub errors: Vec<String>,
}

impl Feed {
    pub fn apply(&mut self, line: &str) {
        self.lines.push(line.to_string());
        let mut bad = |why: &str| self.errors.push(format!("{line:?}: {why}"));
        if self.deleted {
            bad("after ! deleted");
        }
        match line.split_once(' ') {
            Some(("=", n)) => {
                if self.owed > 0 {
                    bad("a snapshot before the last one was complete");
                }
                match n.parse() {
                    Ok(n) => self.owed = n,
                    Err(_) => bad("N is not a number"),
                }
                self.set.clear();
                self.snapshots += 1;
            }
            Some(("+", ip)) => {
                if ip.parse::<Ipv4Addr>().is_err() {
                    bad("not an IPv4 address");
                }
                if !self.set.insert(ip.to_string()) {
                    bad("added twice");
                }
                self.owed = self.owed.saturating_sub(1);
            }
            Some(("-", ip)) => {
                if self.owed > 0 {
                    bad("a removal inside a snapshot");
                }
                if !self.set.remove(ip) {
                    bad("removes an IP that is not in the set");
                }
            }
            Some(("!", "deleted")) => self.deleted = true,
            _ => bad("not a line of the protocol"),
        }
    }

    /// The set, if no snapshot is half-read.
    pub fn set(&self) -> Option<BTreeSet<String>> {
        (self.owed == 0 && self.snapshots > 0).then(|| self.set.clone())
    }
}

/// The state a bad input must not change: ipamd's tables, the host's
/// links, each of `pods`' links, the pending DELs.
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    pub tors: Value,
    pub pools: Value,
    pub ips: Value,
    pub bindings: Value,
    pub host_links: Vec<String>,
    pub pod_links: Vec<Vec<String>>,
    pub pending: Vec<String>,
}

pub fn snapshot(tb: &Testbed, pods: &[&Pod]) -> Snapshot {
    let pending = std::fs::read_dir(&tb.pending_dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    Snapshot {
        tors: tb.ipamctl_json(&["tor", "list"]),
        pools: tb.ipamctl_json(&["pool", "list"]),
        ips: tb.ipamctl_json(&["ip", "list"]),
        bindings: tb.ipamctl_json(&["binding", "list"]),
        host_links: tb.host_links(),
        pod_links: pods.iter().map(|p| tb.pod_links(p)).collect(),
        pending,
    }
}
