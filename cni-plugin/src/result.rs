//! The ADD result in the version the config asks for (spec section 5, "ADD
//! Success"), merging into a prevResult when moor is not first in a chain,
//! and reading a prevResult back for CHECK.

use std::net::IpAddr;

use moor_proto::v1::AddReply;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{code, CniError};
use crate::version::CniVersion;

#[derive(Serialize)]
struct CniResult<'a> {
    #[serde(rename = "cniVersion")]
    cni_version: &'a str,
    interfaces: Vec<Interface<'a>>,
    ips: Vec<IpConfig<'a>>,
    routes: Vec<Route<'a>>,
    /// Always `{}`: ipamd hands out no DNS settings (kubelet sets pods' DNS).
    dns: Map<String, Value>,
}

#[derive(Serialize)]
struct Interface<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    mac: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    mtu: Option<u32>,
    /// Empty (left out) for host-side interfaces.
    #[serde(skip_serializing_if = "str::is_empty")]
    sandbox: &'a str,
}

#[derive(Serialize)]
struct IpConfig<'a> {
    /// "4" or "6", only in 0.3.x/0.4.0 results.
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'static str>,
    address: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    gateway: &'a str,
    interface: u32,
}

#[derive(Serialize)]
struct Route<'a> {
    dst: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    gw: &'a str,
}

/// The result of an ADD, from ipamd's reply. A reply the result cannot be
/// built from is an ipamd bug, reported as such (the runtime then DELs).
pub fn build(reply: &AddReply, version: CniVersion, cni_version: &str) -> Result<Value, CniError> {
    let ip = parse_cidr(&reply.address).ok_or_else(|| {
        bad_reply(format!(
            "address {:?} is not an IP address in CIDR notation",
            reply.address
        ))
    })?;
    if !reply.gateway.is_empty() && reply.gateway.parse::<IpAddr>().is_err() {
        return Err(bad_reply(format!(
            "gateway {:?} is not an IP address",
            reply.gateway
        )));
    }
    // A dual-stack pod's IPv6 address: an IPv6 CIDR (and gateway).
    let ip6 = if reply.address6.is_empty() {
        None
    } else {
        match parse_cidr(&reply.address6) {
            Some(a) if a.is_ipv6() && ip.is_ipv4() => Some(a),
            _ => {
                return Err(bad_reply(format!(
                "address6 {:?} is not an IPv6 address in CIDR notation beside IPv4 address {:?}",
                reply.address6, reply.address
            )))
            }
        }
    };
    if !reply.gateway6.is_empty() && !reply.gateway6.parse::<IpAddr>().is_ok_and(|g| g.is_ipv6()) {
        return Err(bad_reply(format!(
            "gateway6 {:?} is not an IPv6 address",
            reply.gateway6
        )));
    }
    let ip_version = |a: IpAddr| {
        version
            .ips_carry_version()
            .then_some(if a.is_ipv4() { "4" } else { "6" })
    };
    if reply.interface_index as usize >= reply.interfaces.len() {
        return Err(bad_reply(format!(
            "interface_index {} but {} interface(s)",
            reply.interface_index,
            reply.interfaces.len()
        )));
    }
    let result = CniResult {
        cni_version,
        interfaces: reply
            .interfaces
            .iter()
            .map(|i| Interface {
                name: &i.name,
                mac: &i.mac,
                mtu: Some(i.mtu).filter(|&m| m > 0 && version.interfaces_carry_mtu()),
                sandbox: &i.sandbox,
            })
            .collect(),
        ips: std::iter::once(IpConfig {
            version: ip_version(ip),
            address: &reply.address,
            gateway: &reply.gateway,
            interface: reply.interface_index,
        })
        .chain(ip6.map(|a| IpConfig {
            version: ip_version(a),
            address: &reply.address6,
            gateway: &reply.gateway6,
            interface: reply.interface_index,
        }))
        .collect(),
        routes: reply
            .routes
            .iter()
            .map(|r| Route {
                dst: &r.dst,
                gw: &r.gw,
            })
            .collect(),
        dns: Map::new(),
    };
    serde_json::to_value(result).map_err(|e| bad_reply(e.to_string()))
}

/// Our result appended to a prevResult (spec: a plugin given a prevResult
/// outputs it with its own changes). Our `ips[].interface` indexes shift by
/// the number of interfaces already there; the earlier plugin's DNS stays.
pub fn merge_into_prev(prev: &Map<String, Value>, ours: Value, cni_version: &str) -> Value {
    let mut out = prev.clone();
    let Value::Object(mut ours) = ours else {
        return Value::Object(out);
    };
    let take = |m: &mut Map<String, Value>, key: &str| match m.remove(key) {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    };
    let mut interfaces = take(&mut out, "interfaces");
    let offset = interfaces.len() as u64;
    interfaces.extend(take(&mut ours, "interfaces"));
    let mut ips = take(&mut out, "ips");
    ips.extend(take(&mut ours, "ips").into_iter().map(|mut ip| {
        if let Some(i) = ip.get("interface").and_then(Value::as_u64) {
            ip["interface"] = Value::from(i + offset);
        }
        ip
    }));
    let mut routes = take(&mut out, "routes");
    routes.extend(take(&mut ours, "routes"));
    out.insert("cniVersion".into(), Value::from(cni_version));
    out.insert("interfaces".into(), Value::Array(interfaces));
    out.insert("ips".into(), Value::Array(ips));
    out.insert("routes".into(), Value::Array(routes));
    if !out.get("dns").is_some_and(Value::is_object) {
        out.insert("dns".into(), ours.remove("dns").unwrap_or_default());
    }
    Value::Object(out)
}

/// The address CHECK asks ipamd about: the IP of the interface named
/// `ifname` inside the sandbox in prevResult, else the first IP; empty if
/// prevResult has none.
pub fn check_address(prev: &Map<String, Value>, ifname: &str) -> String {
    let empty = Vec::new();
    let list = |key: &str| prev.get(key).and_then(Value::as_array).unwrap_or(&empty);
    let interfaces = list("interfaces");
    let ips = list("ips");
    let named = |want_sandbox: bool| {
        interfaces.iter().position(|i| {
            i.get("name").and_then(Value::as_str) == Some(ifname)
                && (!want_sandbox
                    || i.get("sandbox")
                        .and_then(Value::as_str)
                        .is_some_and(|s| !s.is_empty()))
        })
    };
    let index = named(true).or_else(|| named(false));
    let address = |ip: &Value| ip.get("address").and_then(Value::as_str).map(str::to_owned);
    index
        .and_then(|idx| {
            ips.iter()
                .find(|ip| ip.get("interface").and_then(Value::as_u64) == Some(idx as u64))
                .and_then(address)
        })
        .or_else(|| ips.first().and_then(address))
        .unwrap_or_default()
}

fn parse_cidr(s: &str) -> Option<IpAddr> {
    let (ip, prefix) = s.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some(ip)
}

fn bad_reply(details: String) -> CniError {
    CniError::new(
        code::IPAMD_FAILED,
        "ipamd sent an ADD reply moor cannot use",
        details,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use moor_proto::v1::{Interface as PInterface, Route as PRoute};
    use serde_json::json;

    fn reply() -> AddReply {
        AddReply {
            interfaces: vec![
                PInterface {
                    name: "mr0123456789ab".into(),
                    mac: "aa:bb:cc:00:11:22".into(),
                    mtu: 1500,
                    sandbox: String::new(),
                },
                PInterface {
                    name: "eth0".into(),
                    mac: "0a:58:0a:01:00:11".into(),
                    mtu: 1500,
                    sandbox: "/var/run/netns/cni-1".into(),
                },
            ],
            address: "10.1.0.17/24".into(),
            gateway: "10.1.0.1".into(),
            interface_index: 1,
            routes: vec![PRoute {
                dst: "0.0.0.0/0".into(),
                gw: "10.1.0.1".into(),
            }],
            pool: "mysql".into(),
            tor: "tor-a".into(),
            sticky: true,
            address6: String::new(),
            gateway6: String::new(),
        }
    }

    /// A dual-stack pod's reply: both addresses, both default routes.
    fn dual() -> AddReply {
        let mut r = reply();
        r.address6 = "fd00:1::11/64".into();
        r.gateway6 = "fd00:1::1".into();
        r.routes.push(PRoute {
            dst: "::/0".into(),
            gw: "fd00:1::1".into(),
        });
        r
    }

    #[test]
    fn dual_stack_results_carry_both_ips_per_version() {
        for (v, ip_version) in [
            ("0.3.0", true),
            ("0.3.1", true),
            ("0.4.0", true),
            ("1.0.0", false),
            ("1.1.0", false),
        ] {
            let got = build(&dual(), CniVersion::parse(v).unwrap(), v).unwrap();
            let mut v4 = json!({"address": "10.1.0.17/24", "gateway": "10.1.0.1", "interface": 1});
            let mut v6 =
                json!({"address": "fd00:1::11/64", "gateway": "fd00:1::1", "interface": 1});
            if ip_version {
                v4["version"] = json!("4");
                v6["version"] = json!("6");
            }
            assert_eq!(got["ips"], json!([v4, v6]), "version {v}");
            assert_eq!(
                got["routes"],
                json!([{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}, {"dst": "::/0", "gw": "fd00:1::1"}]),
                "version {v}"
            );
        }
        // An IPv6 address6 only beside an IPv4 address, and a real one.
        for (a, a6, g6) in [
            ("10.1.0.17/24", "10.1.0.18/24", "fd00:1::1"),
            ("fd00:2::5/64", "fd00:1::11/64", "fd00:1::1"),
            ("10.1.0.17/24", "fd00:1::11", "fd00:1::1"),
            ("10.1.0.17/24", "fd00:1::11/64", "10.1.0.1"),
        ] {
            let mut r = dual();
            (r.address, r.address6, r.gateway6) = (a.into(), a6.into(), g6.into());
            let e = build(&r, CniVersion::V1_1, "1.1.0").unwrap_err();
            assert!(e.to_string().contains("ipamd"), "{a} {a6} {g6}: {e}");
        }
    }

    fn expected(cni_version: &str, ip_version: bool, mtu: bool) -> Value {
        let mut host = json!({"name": "mr0123456789ab", "mac": "aa:bb:cc:00:11:22"});
        let mut pod =
            json!({"name": "eth0", "mac": "0a:58:0a:01:00:11", "sandbox": "/var/run/netns/cni-1"});
        if mtu {
            host["mtu"] = json!(1500);
            pod["mtu"] = json!(1500);
        }
        let mut ip = json!({"address": "10.1.0.17/24", "gateway": "10.1.0.1", "interface": 1});
        if ip_version {
            ip["version"] = json!("4");
        }
        json!({
            "cniVersion": cni_version,
            "interfaces": [host, pod],
            "ips": [ip],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}],
            "dns": {},
        })
    }

    #[test]
    fn result_shape_per_version() {
        for (v, ip_version, mtu) in [
            ("0.3.0", true, false),
            ("0.3.1", true, false),
            ("0.4.0", true, false),
            ("1.0.0", false, false),
            ("1.1.0", false, true),
        ] {
            let got = build(&reply(), CniVersion::parse(v).unwrap(), v).unwrap();
            assert_eq!(got, expected(v, ip_version, mtu), "version {v}");
        }
    }

    #[test]
    fn empty_optional_fields_are_left_out() {
        let mut r = reply();
        r.gateway.clear();
        r.routes[0].gw.clear();
        r.interfaces[1].mtu = 0;
        r.interfaces[0].mac.clear();
        let got = build(&r, CniVersion::V1_1, "1.1.0").unwrap();
        assert_eq!(
            got["ips"][0],
            json!({"address": "10.1.0.17/24", "interface": 1})
        );
        assert_eq!(got["routes"][0], json!({"dst": "0.0.0.0/0"}));
        assert_eq!(
            got["interfaces"][0],
            json!({"name": "mr0123456789ab", "mtu": 1500})
        );
        assert!(got["interfaces"][1].get("mtu").is_none());
    }

    #[test]
    fn ipv6_is_version_6() {
        let mut r = reply();
        r.address = "fd00::11/64".into();
        r.gateway = "fd00::1".into();
        let got = build(&r, CniVersion::V0_4, "0.4.0").unwrap();
        assert_eq!(got["ips"][0]["version"], "6");
    }

    #[test]
    fn unusable_replies_are_ipamd_errors() {
        type Spoil = fn(&mut AddReply);
        let cases: Vec<(&str, Spoil)> = vec![
            ("no address", |r| r.address.clear()),
            ("no prefix", |r| r.address = "10.1.0.17".into()),
            ("bad prefix", |r| r.address = "10.1.0.17/33".into()),
            ("bad gateway", |r| r.gateway = "gw".into()),
            ("index out of range", |r| r.interface_index = 2),
            ("no interfaces", |r| r.interfaces.clear()),
        ];
        for (what, f) in cases {
            let mut r = reply();
            f(&mut r);
            let e = build(&r, CniVersion::V1_0, "1.0.0").expect_err(what);
            assert_eq!(e.code, code::IPAMD_FAILED, "{what}");
        }
    }

    #[test]
    fn merge_appends_after_prev_and_shifts_interface_index() {
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": "/ns"}],
            "ips": [{"address": "192.168.0.2/24", "interface": 0}],
            "routes": [{"dst": "192.168.0.0/16"}],
            "dns": {"nameservers": ["1.1.1.1"]},
            "custom": true,
        });
        let ours = build(&reply(), CniVersion::V1_0, "1.0.0").unwrap();
        let got = merge_into_prev(prev.as_object().unwrap(), ours, "1.0.0");
        assert_eq!(got["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(got["interfaces"][2]["name"], "eth0");
        assert_eq!(got["ips"][0]["interface"], 0);
        assert_eq!(got["ips"][1]["interface"], 2);
        assert_eq!(got["ips"][1]["address"], "10.1.0.17/24");
        assert_eq!(got["routes"].as_array().unwrap().len(), 2);
        assert_eq!(got["dns"]["nameservers"][0], "1.1.1.1");
        assert_eq!(got["custom"], true);
        assert_eq!(got["cniVersion"], "1.0.0");
    }

    #[test]
    fn merge_into_empty_prev_is_our_result() {
        let ours = build(&reply(), CniVersion::V0_4, "0.4.0").unwrap();
        let got = merge_into_prev(&Map::new(), ours.clone(), "0.4.0");
        assert_eq!(got, ours);
    }

    #[test]
    fn check_address_picks_the_sandbox_interface() {
        let prev = json!({
            "interfaces": [
                {"name": "eth0"},
                {"name": "net1", "sandbox": "/ns"},
                {"name": "eth0", "sandbox": "/ns"},
            ],
            "ips": [
                {"address": "10.0.0.1/24", "interface": 0},
                {"address": "10.0.1.5/24", "interface": 1},
                {"address": "10.0.2.7/24", "interface": 2},
            ],
        });
        let prev = prev.as_object().unwrap();
        assert_eq!(check_address(prev, "eth0"), "10.0.2.7/24");
        assert_eq!(check_address(prev, "net1"), "10.0.1.5/24");
        // Unknown interface: the first IP.
        assert_eq!(check_address(prev, "net9"), "10.0.0.1/24");
        assert_eq!(check_address(&Map::new(), "eth0"), "");
        // 0.x IPs without interface index.
        let old = json!({"ips": [{"version": "4", "address": "10.0.3.3/24"}]});
        assert_eq!(
            check_address(old.as_object().unwrap(), "eth0"),
            "10.0.3.3/24"
        );
    }
}
