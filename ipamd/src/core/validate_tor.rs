//! Validation of a ToR segment (`ipamctl tor add`): one subnet per family
//! (IPv4, IPv6 or both), each with its gateway and pod ranges. Each error
//! names the field, the bad value and the fix; nothing is written when
//! validation fails.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use moor_proto::fields;

use super::family::{addr_like, num, Family, IpRange};
use super::model::Tor;
use super::validate::text;

/// Longest prefixes that leave room for pods and a gateway.
const V4_LONGEST: u8 = 30;
const V6_LONGEST: u8 = 126;
/// An IPv6 L2 segment is a /64 or a longer prefix: a shorter one is an
/// aggregate of links, not a link.
const V6_SHORTEST: u8 = 64;

fn family_name(v6: bool) -> &'static str {
    if v6 {
        "IPv6"
    } else {
        "IPv4"
    }
}

fn subnet(value: &str) -> Result<IpNetwork, String> {
    let net: IpNetwork = value.parse().map_err(|_| {
        format!("subnet {value:?} is not a CIDR: write it like 10.1.0.0/24 or fd00:1::/64")
    })?;
    if net.network() != net.ip() {
        return Err(format!(
            "subnet {value:?} has host bits set: use {}/{}",
            net.network(),
            net.prefix()
        ));
    }
    match net {
        IpNetwork::V4(_) if net.prefix() > V4_LONGEST => Err(format!(
            "subnet {value:?} is too small for pods and a gateway: use a /{V4_LONGEST} or larger"
        )),
        IpNetwork::V6(_) if net.prefix() > V6_LONGEST => Err(format!(
            "subnet {value:?} is too small for pods and a gateway: use a /{V6_LONGEST} or larger"
        )),
        IpNetwork::V6(_) if net.prefix() < V6_SHORTEST => Err(format!(
            "subnet {value:?} is wider than a /{V6_SHORTEST}: an IPv6 L2 segment is a /64 or longer; give the ToR one /64 of it"
        )),
        _ => Ok(net),
    }
}

fn ip(field: &str, value: &str) -> Result<IpAddr, String> {
    value
        .parse()
        .map_err(|_| format!("{field} {value:?} is not an IP address"))
}

/// The first and last address a pod or gateway may have: not the network
/// address (IPv6: the subnet-router anycast address), not IPv4's
/// broadcast.
fn host_bounds(net: IpNetwork) -> (IpAddr, IpAddr) {
    let first = num(net.network()) + 1;
    let last = match net {
        IpNetwork::V4(n) => num(IpAddr::V4(n.broadcast())) - 1,
        IpNetwork::V6(n) => num(IpAddr::V6(n.broadcast())),
    };
    (addr_like(net.ip(), first), addr_like(net.ip(), last))
}

fn overlaps(a: IpNetwork, b: IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
}

/// One family: its subnet, gateway and the ranges of `ranges` that are of
/// its family.
fn family(subnet_s: &str, gateway_s: &str, ranges: &[IpRange]) -> Result<Family, String> {
    let net = subnet(subnet_s)?;
    let gateway = ip("gateway", gateway_s)?;
    let (lo, hi) = host_bounds(net);
    if gateway.is_ipv4() != net.is_ipv4() {
        return Err(format!(
            "gateway {gateway} is {} but subnet {net} is {}: give each --subnet its --gateway, in the same order",
            family_name(gateway.is_ipv6()),
            family_name(net.is_ipv6())
        ));
    }
    let usable = |a: IpAddr| lo <= a && a <= hi && a.is_ipv4() == net.is_ipv4();
    if !usable(gateway) {
        return Err(format!(
            "gateway {gateway} is not a host address of subnet {net}: pick one between {lo} and {hi}"
        ));
    }
    let mut parsed: Vec<IpRange> = Vec::new();
    for r in ranges.iter().filter(|r| r.is_ipv6() == net.is_ipv6()) {
        if !usable(r.first) || !usable(r.last) {
            return Err(format!(
                "range {r} is not inside the host addresses of subnet {net} ({lo}-{hi}): a range lies within one subnet"
            ));
        }
        if let Some(o) = parsed
            .iter()
            .find(|o| o.first <= r.last && r.first <= o.last)
        {
            return Err(format!("range {r} overlaps range {o}: give each IP once"));
        }
        parsed.push(*r);
    }
    if parsed.is_empty() {
        parsed.push(IpRange {
            first: lo,
            last: hi,
        });
    }
    parsed.sort_by_key(|r| r.first);
    let f = Family {
        subnet: net,
        gateway,
        ranges: parsed,
    };
    if f.capacity() == 0 {
        return Err(format!(
            "subnet {net} has no IP left for pods: its only range IP is the gateway {gateway}"
        ));
    }
    Ok(f)
}

/// Builds a validated single-family ToR: [`tor_families`] with one
/// subnet.
pub fn tor(
    tor_name: &str,
    subnet_s: &str,
    gateway_s: &str,
    vlan: u32,
    ranges: &[(String, String)],
    segment_of: &str,
    existing: &[Tor],
) -> Result<Tor, String> {
    tor_families(
        tor_name,
        &[(subnet_s.to_string(), gateway_s.to_string())],
        vlan,
        ranges,
        segment_of,
        existing,
    )
}

/// Builds a validated ToR segment. `nets` are (subnet, gateway) pairs, one
/// per family; `ranges` are `(first, last)` strings of either family, none
/// of a family meaning its whole subnet but the network (and IPv4
/// broadcast) address. A non-empty `segment_of` makes it an extra segment
/// (VLAN/subnets) of that ToR.
pub fn tor_families(
    tor_name: &str,
    nets: &[(String, String)],
    vlan: u32,
    ranges: &[(String, String)],
    segment_of: &str,
    existing: &[Tor],
) -> Result<Tor, String> {
    text(fields::tor_name("ToR name", tor_name))?;
    segment_rules(tor_name, segment_of, existing)?;
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
        if r.first.is_ipv4() != r.last.is_ipv4() {
            return Err(format!(
                "range {r} mixes IPv4 and IPv6: give one range per family"
            ));
        }
        if r.first > r.last {
            return Err(format!(
                "range {r} is backwards: write it as {last}-{first}"
            ));
        }
        parsed.push(r);
    }
    let families = match nets {
        [] => return Err("no subnet: give --subnet CIDR --gateway IP (one pair per family, IPv4 and/or IPv6)".into()),
        [(s, g)] => vec![family(s, g, &parsed)?],
        [(s1, g1), (s2, g2)] => {
            let (a, b) = (family(s1, g1, &parsed)?, family(s2, g2, &parsed)?);
            if a.is_ipv6() == b.is_ipv6() {
                return Err(format!(
                    "subnets {} and {} are both {}: a segment has at most one subnet per family (an IPv4 one and an IPv6 one)",
                    a.subnet,
                    b.subnet,
                    family_name(a.is_ipv6())
                ));
            }
            vec![a, b]
        }
        _ => return Err(format!(
            "{} subnets given: a segment has at most one subnet per family (an IPv4 one and an IPv6 one)",
            nets.len()
        )),
    };
    for r in &parsed {
        if !families.iter().any(|f| f.is_ipv6() == r.is_ipv6()) {
            return Err(format!(
                "range {r} is {} but the segment has no {} subnet: add --subnet and --gateway of that family, or drop the range",
                family_name(r.is_ipv6()),
                family_name(r.is_ipv6())
            ));
        }
    }
    let mut families = families.into_iter();
    let mut first = families.next().expect("one family at least");
    let mut second = families.next();
    if first.is_ipv6() {
        if let Some(v4) = second.take() {
            second = Some(std::mem::replace(&mut first, v4));
        }
    }
    if let Some(v6) = &second {
        // Every pod IPv4 address needs its IPv6 partner.
        if v6.capacity() < first.capacity() {
            return Err(format!(
                "the IPv6 ranges of subnet {} hold {} pod IPs, fewer than the {} of IPv4 subnet {}: a dual-stack pod gets one of each, so give IPv6 ranges at least as large (or none: the whole /64)",
                v6.subnet,
                v6.capacity(),
                first.capacity(),
                first.subnet
            ));
        }
    }
    for t in existing {
        if t.name == tor_name {
            return Err(format!(
                "ToR {tor_name} already exists ({}): delete it first or pick another name",
                t.families()
                    .map(|f| f.subnet.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        for mine in std::iter::once(&first).chain(second.as_ref()) {
            if let Some(o) = t.families().find(|o| overlaps(o.subnet, mine.subnet)) {
                return Err(format!(
                    "subnet {} overlaps subnet {} of ToR {}: each ToR has its own L2 subnet",
                    mine.subnet, o.subnet, t.name
                ));
            }
        }
    }
    let t = Tor {
        name: tor_name.to_string(),
        first,
        vlan,
        segment_of: (!segment_of.is_empty()).then(|| segment_of.to_string()),
        ipv6: second,
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
    Ok(t)
}

/// Segments hang off a ToR, never off another segment.
fn segment_rules(tor_name: &str, segment_of: &str, existing: &[Tor]) -> Result<(), String> {
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
    // A record that other records name as their ToR cannot become a
    // segment.
    if let Some(t) = existing
        .iter()
        .find(|t| !segment_of.is_empty() && t.segment_of.as_deref() == Some(tor_name))
    {
        return Err(format!(
            "{tor_name} is the ToR of segment {}, so it cannot be a segment of {segment_of}: pick another name",
            t.name
        ));
    }
    Ok(())
}

#[cfg(test)]
#[path = "validate_tor_tests.rs"]
mod tests;
