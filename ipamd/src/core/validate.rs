//! Validation of what operators ask for. Each error names the field, the bad
//! value and the fix; nothing is written when validation fails.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use moor_proto::fields::{self, FieldError};

use super::model::{IpRange, PodRef, Tor};

pub use moor_proto::fields::MAX_POOL_SIZE;

// The field rules themselves live in moor_proto::fields, shared with the
// plugin and ipamctl; these name the fields as ipamd's messages do.

fn text<T>(r: Result<T, FieldError>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

pub fn pool_name(value: &str) -> Result<(), String> {
    text(fields::pool_name("pool name", value))
}

/// A Kubernetes namespace: a DNS label.
pub fn namespace(value: &str) -> Result<(), String> {
    text(fields::namespace("namespace", value))
}

/// An app: a workload name, so a Kubernetes object name (DNS subdomain).
pub fn app(value: &str) -> Result<(), String> {
    text(fields::app("app", value))
}

/// The pod, the named pool and the network of an ADD. The pod identity is
/// checked when both parts are given, which is when moor keys a binding and
/// the app's pool on it; podman passes only a name (its container name,
/// which may hold capitals and '_'), and ipamd does not use it. An empty
/// pool means "the app's pool"; an empty network, a plugin that sends none.
pub fn add_input(pod: &PodRef, pool: &str, network: &str) -> Result<(), String> {
    if pod.is_known() {
        text(fields::namespace("pod namespace", &pod.namespace))?;
        text(fields::pod_name("pod name", &pod.name))?;
    }
    if !pool.is_empty() {
        text(fields::pool_name("pool", pool))?;
    }
    if !network.is_empty() {
        text(fields::network_name("network", network))?;
    }
    Ok(())
}

pub fn subnet(value: &str) -> Result<Ipv4Network, String> {
    let net: Ipv4Network = value
        .parse()
        .map_err(|_| format!("subnet {value:?} is not an IPv4 CIDR: write it like 10.1.0.0/24"))?;
    if net.network() != net.ip() {
        return Err(format!(
            "subnet {value:?} has host bits set: use {}/{}",
            net.network(),
            net.prefix()
        ));
    }
    if net.prefix() > 30 {
        return Err(format!(
            "subnet {value:?} is too small for pods and a gateway: use a /30 or larger"
        ));
    }
    Ok(net)
}

fn ip(field: &str, value: &str) -> Result<Ipv4Addr, String> {
    value
        .parse()
        .map_err(|_| format!("{field} {value:?} is not an IPv4 address"))
}

/// Builds a validated ToR. `ranges` are `(first, last)` strings; none means
/// the whole subnet but network, broadcast and gateway. A non-empty
/// `segment_of` makes it an extra segment (VLAN/subnet) of that ToR.
pub fn tor(
    tor_name: &str,
    subnet_s: &str,
    gateway_s: &str,
    vlan: u32,
    ranges: &[(String, String)],
    segment_of: &str,
    existing: &[Tor],
) -> Result<Tor, String> {
    text(fields::tor_name("ToR name", tor_name))?;
    if !segment_of.is_empty() {
        text(fields::tor_name("segment-of", segment_of))?;
        if segment_of == tor_name {
            return Err(format!(
                "segment-of {segment_of:?} names the segment itself: give the ToR it is on, or leave --segment-of out for a ToR's first segment"
            ));
        }
        if let Some(t) = existing.iter().find(|t| t.name == segment_of) {
            if let Some(of) = &t.segment_of {
                return Err(format!(
                    "segment-of {segment_of:?} is itself a segment of ToR {of}: use --segment-of {of}"
                ));
            }
        }
    }
    // Segments hang off a ToR, never off another segment: a record that
    // other records name as their ToR cannot become a segment.
    if let Some(t) = existing
        .iter()
        .find(|t| !segment_of.is_empty() && t.segment_of.as_deref() == Some(tor_name))
    {
        return Err(format!(
            "{tor_name} is the ToR of segment {}, so it cannot be a segment of {segment_of}: pick another name",
            t.name
        ));
    }
    let net = subnet(subnet_s)?;
    let gateway = ip("gateway", gateway_s)?;
    let usable = |a: Ipv4Addr| net.contains(a) && a != net.network() && a != net.broadcast();
    if !usable(gateway) {
        return Err(format!(
            "gateway {gateway} is not a host address of subnet {net}: pick one between {} and {}",
            Ipv4Addr::from(u32::from(net.network()) + 1),
            Ipv4Addr::from(u32::from(net.broadcast()) - 1)
        ));
    }
    // 0 on the wire is untagged.
    let vlan = match vlan {
        0 => None,
        v => Some(text(fields::vlan("vlan", v))?),
    };
    let mut parsed = Vec::new();
    for (first, last) in ranges {
        let r = IpRange {
            first: ip("range start", first)?,
            last: ip("range end", last)?,
        };
        if r.first > r.last {
            return Err(format!(
                "range {r} is backwards: write it as {last}-{first}"
            ));
        }
        if !usable(r.first) || !usable(r.last) {
            return Err(format!(
                "range {r} is not inside the host addresses of subnet {net}"
            ));
        }
        if let Some(o) = parsed
            .iter()
            .find(|o: &&IpRange| o.first <= r.last && r.first <= o.last)
        {
            return Err(format!("range {r} overlaps range {o}: give each IP once"));
        }
        parsed.push(r);
    }
    if parsed.is_empty() {
        let first = Ipv4Addr::from(u32::from(net.network()) + 1);
        let last = Ipv4Addr::from(u32::from(net.broadcast()) - 1);
        parsed.push(IpRange { first, last });
    }
    parsed.sort_by_key(|r| r.first);
    for t in existing {
        if t.name == tor_name {
            return Err(format!(
                "ToR {tor_name} already exists ({}): delete it first or pick another name",
                t.subnet
            ));
        }
        if t.subnet.overlaps(net) {
            return Err(format!(
                "subnet {net} overlaps subnet {} of ToR {}: each ToR has its own L2 subnet",
                t.subnet, t.name
            ));
        }
    }
    let t = Tor {
        name: tor_name.to_string(),
        subnet: net,
        gateway,
        vlan,
        ranges: parsed,
        segment_of: (!segment_of.is_empty()).then(|| segment_of.to_string()),
    };
    // Two segments of one ToR on one VLAN would be one L2 domain with two
    // subnets, and a node could not tell which access tag a pod gets.
    if let Some(o) = existing
        .iter()
        .find(|o| o.switch() == t.switch() && o.vlan == t.vlan)
    {
        return Err(format!(
            "ToR {} already has segment {} on {}: give each segment of a ToR its own --vlan",
            t.switch(),
            o.name,
            o.vlan
                .map_or("the untagged network".to_string(), |v| format!("VLAN {v}"))
        ));
    }
    if t.capacity() == 0 {
        return Err(format!(
            "ToR {tor_name} has no IP left for pods: its only range IP is the gateway {gateway}"
        ));
    }
    Ok(t)
}

pub fn pool_size(size: u32) -> Result<u32, String> {
    text(fields::pool_size("size", size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(subnet: &str, gw: &str, vlan: u32, ranges: &[(&str, &str)]) -> Result<Tor, String> {
        let r: Vec<_> = ranges
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let existing = [tor("other", "10.9.0.0/16", "10.9.0.1", 0, &[], "", &[]).unwrap()];
        tor("rack-1", subnet, gw, vlan, &r, "", &existing)
    }

    /// The field rules are moor_proto::fields'; here only that ipamd names
    /// its fields and applies each rule where it belongs.
    #[test]
    fn pool_and_add_fields_name_the_field() {
        let pod = |namespace: &str, name: &str| PodRef {
            namespace: namespace.into(),
            name: name.into(),
            uid: String::new(),
        };
        let bad = [
            (app("My_App"), "invalid app \"My_App\""),
            (app(""), "invalid app"),
            // Namespaces are DNS labels in Kubernetes: no dots.
            (namespace("a.b"), "invalid namespace"),
            (pool_name("my.pool"), "e.g. my-pool"),
            (pool_size(0).map(drop), "invalid size 0:"),
            (
                add_input(&pod("Shop", "web-0"), "", "n"),
                "invalid pod namespace",
            ),
            (
                add_input(&pod("shop", "Web_0"), "", "n"),
                "invalid pod name",
            ),
            (
                add_input(&pod("", ""), "Pool_1", "n"),
                "invalid pool \"Pool_1\"",
            ),
            (
                add_input(&pod("", ""), "", "a/b"),
                "invalid network \"a/b\"",
            ),
        ];
        for (got, want) in bad {
            let err = got.unwrap_err();
            assert!(err.contains(want), "want {want:?} in {err}");
        }
        app("mysql.v8").unwrap();
        namespace("kube-system").unwrap();
        pool_size(MAX_POOL_SIZE).unwrap();
        add_input(&pod("shop", "web.v2-0"), "web", "moor-e2e").unwrap();
        // podman: a container name and no namespace is no pod identity.
        add_input(&pod("", "My_Box"), "", "").unwrap();
    }

    #[test]
    fn good_tor() {
        let tor = t(
            "10.1.0.0/24",
            "10.1.0.1",
            100,
            &[("10.1.0.100", "10.1.0.199")],
        )
        .unwrap();
        assert_eq!(tor.capacity(), 100);
        assert_eq!(tor.vlan, Some(100));
        let whole = t("10.1.0.0/24", "10.1.0.1", 0, &[]).unwrap();
        assert_eq!(whole.capacity(), 253, "254 hosts but the gateway");
        assert_eq!(whole.vlan, None);
        assert!(whole.pod_ips().all(|ip| ip != whole.gateway));
    }

    #[test]
    fn bad_tors_name_the_field() {
        type Case<'a> = (&'a str, &'a str, u32, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            ("10.1.0.0/33", "10.1.0.1", 0, &[], "subnet"),
            ("10.1.0.5/24", "10.1.0.1", 0, &[], "use 10.1.0.0/24"),
            ("fd00::/64", "10.1.0.1", 0, &[], "subnet"),
            ("10.1.0.0/31", "10.1.0.0", 0, &[], "too small"),
            ("10.1.0.0/24", "10.2.0.1", 0, &[], "gateway"),
            ("10.1.0.0/24", "10.1.0.0", 0, &[], "gateway"),
            ("10.1.0.0/24", "10.1.0.255", 0, &[], "gateway"),
            ("10.1.0.0/24", "gw", 0, &[], "gateway"),
            ("10.1.0.0/24", "10.1.0.1", 4095, &[], "vlan"),
            (
                "10.1.0.0/24",
                "10.1.0.1",
                0,
                &[("10.1.0.9", "10.1.0.2")],
                "backwards",
            ),
            (
                "10.1.0.0/24",
                "10.1.0.1",
                0,
                &[("10.1.0.9", "10.1.1.2")],
                "range",
            ),
            (
                "10.1.0.0/24",
                "10.1.0.1",
                0,
                &[("10.1.0.2", "10.1.0.9"), ("10.1.0.5", "10.1.0.20")],
                "overlaps",
            ),
            (
                "10.1.0.0/24",
                "10.1.0.1",
                0,
                &[("10.1.0.1", "10.1.0.1")],
                "no IP left",
            ),
            (
                "10.9.4.0/24",
                "10.9.4.1",
                0,
                &[],
                "overlaps subnet 10.9.0.0/16",
            ),
        ];
        for (subnet, gw, vlan, ranges, want) in cases {
            let err = t(subnet, gw, *vlan, ranges).unwrap_err();
            assert!(err.contains(want), "{subnet} {gw} {vlan} {ranges:?}: {err}");
        }
        assert!(tor("Rack_1", "10.1.0.0/24", "10.1.0.1", 0, &[], "", &[])
            .unwrap_err()
            .contains("ToR name"));
    }

    #[test]
    fn segments_hang_off_one_tor_each_on_its_own_vlan() {
        let rack = tor("rack-1", "10.1.0.0/24", "10.1.0.1", 100, &[], "", &[]).unwrap();
        let seg = |name: &str, subnet: &str, vlan: u32, of: &str, existing: &[Tor]| {
            let gw = subnet.replace(".0/24", ".1");
            tor(name, subnet, &gw, vlan, &[], of, existing)
        };
        let db = seg(
            "rack-1-db",
            "10.2.0.0/24",
            200,
            "rack-1",
            std::slice::from_ref(&rack),
        )
        .unwrap();
        assert_eq!(db.switch(), "rack-1");
        assert_eq!(rack.switch(), "rack-1");
        // The ToR need not be defined first: nodes name it with --tor.
        let lone = seg("rack-9-db", "10.9.0.0/24", 200, "rack-9", &[]).unwrap();
        assert_eq!(lone.switch(), "rack-9");

        let existing = [rack.clone(), db.clone()];
        let cases = [
            (
                seg("x", "10.3.0.0/24", 200, "rack-1", &existing),
                "already has segment rack-1-db on VLAN 200",
            ),
            (
                seg("x", "10.3.0.0/24", 100, "rack-1", &existing),
                "already has segment rack-1 on VLAN 100",
            ),
            (
                seg("x", "10.3.0.0/24", 300, "rack-1-db", &existing),
                "use --segment-of rack-1",
            ),
            (seg("x", "10.3.0.0/24", 300, "x", &existing), "itself"),
            (
                seg("x", "10.3.0.0/24", 300, "Rack", &existing),
                "segment-of",
            ),
            (
                seg(
                    "rack-1",
                    "10.3.0.0/24",
                    300,
                    "rack-2",
                    std::slice::from_ref(&db),
                ),
                "is the ToR of segment rack-1-db",
            ),
        ];
        for (got, want) in cases {
            let err = got.unwrap_err();
            assert!(err.contains(want), "want {want:?} in {err}");
        }
        // Another VLAN on the same ToR is fine, and VLAN 200 on another ToR.
        seg("rack-1-web", "10.3.0.0/24", 300, "rack-1", &existing).unwrap();
        seg("rack-2-db", "10.4.0.0/24", 200, "rack-2", &existing).unwrap();
    }
}
