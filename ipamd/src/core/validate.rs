//! Validation of what operators ask for. Each error names the field, the bad
//! value and the fix; nothing is written when validation fails.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use super::model::{IpRange, Tor};

/// Largest pool we carve in one go; a bigger app wants several pools.
pub const MAX_POOL_SIZE: u32 = 65_535;

pub fn name(field: &str, value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{field} {value:?} is not a valid name: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit"
        ))
    }
}

/// A Kubernetes namespace or app name; apps may be longer (up to 253).
pub fn k8s_name(field: &str, value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && value.as_bytes()[0].is_ascii_alphanumeric()
        && value.as_bytes()[value.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{field} {value:?} is not a valid Kubernetes name: use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
        ))
    }
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
/// the whole subnet but network, broadcast and gateway.
pub fn tor(
    tor_name: &str,
    subnet_s: &str,
    gateway_s: &str,
    vlan: u32,
    ranges: &[(String, String)],
    existing: &[Tor],
) -> Result<Tor, String> {
    name("ToR name", tor_name)?;
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
    if vlan > 4094 {
        return Err(format!(
            "vlan {vlan} is out of range: use 1-4094, or leave it out for an untagged network"
        ));
    }
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
        vlan: (vlan != 0).then_some(vlan as u16),
        ranges: parsed,
    };
    if t.capacity() == 0 {
        return Err(format!(
            "ToR {tor_name} has no IP left for pods: its only range IP is the gateway {gateway}"
        ));
    }
    Ok(t)
}

pub fn pool_size(size: u32) -> Result<u32, String> {
    if size == 0 || size > MAX_POOL_SIZE {
        return Err(format!(
            "size {size} is out of range: use 1-{MAX_POOL_SIZE}"
        ));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(subnet: &str, gw: &str, vlan: u32, ranges: &[(&str, &str)]) -> Result<Tor, String> {
        let r: Vec<_> = ranges
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let existing = [tor("other", "10.9.0.0/16", "10.9.0.1", 0, &[], &[]).unwrap()];
        tor("rack-1", subnet, gw, vlan, &r, &existing)
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
        assert!(tor("Rack_1", "10.1.0.0/24", "10.1.0.1", 0, &[], &[])
            .unwrap_err()
            .contains("ToR name"));
    }
}
