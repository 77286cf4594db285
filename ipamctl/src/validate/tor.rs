//! `tor add`: a ToR segment has an IPv4 subnet, an IPv6 subnet or both
//! (dual stack), each with its gateway, and pod ranges of either family.
//! The rules are ipamd's (`ipamd/src/core/validate_tor.rs`), checked here so
//! that a typo is answered with the flag and the fix before any RPC; ipamd
//! checks them again (and what only it knows: names taken, overlaps with
//! other ToRs).
//!
//! An IPv6 subnet is a /64 as often as not: nothing here walks a range
//! address by address; sizes are u128 arithmetic.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use moor_proto::v1::{AddTorRequest, IpRange};

use super::{tor_name, vlan, InputError};

/// The arguments of `tor add`, as typed. `--subnet` and `--gateway` repeat
/// and pair up in order: at most one subnet per family.
#[derive(Debug, Default, Clone)]
pub struct TorAdd<'a> {
    pub name: &'a str,
    pub subnets: &'a [String],
    pub gateways: &'a [String],
    pub vlan: Option<&'a str>,
    pub ranges: &'a [String],
    pub segment_of: Option<&'a str>,
}

/// Longest prefixes that leave room for pods and a gateway (ipamd's).
const V4_LONGEST: u8 = 30;
const V6_LONGEST: u8 = 126;
/// An IPv6 L2 segment is a /64 or longer: a shorter prefix is an aggregate
/// of links, not a link.
const V6_SHORTEST: u8 = 64;

/// How `--subnet` pairs with `--gateway`, for the fixes.
const PAIRS: &str =
    "--subnet 10.1.0.0/24 --gateway 10.1.0.1 --subnet fd00:1::/64 --gateway fd00:1::1";

fn family_name(v6: bool) -> &'static str {
    if v6 {
        "IPv6"
    } else {
        "IPv4"
    }
}

fn num(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn addr_like(like: IpAddr, n: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4((n as u32).into()),
        IpAddr::V6(_) => IpAddr::V6(n.into()),
    }
}

/// The first and last address a pod or gateway may have: not the network
/// address (IPv6: the subnet-router anycast address), not IPv4's broadcast.
fn host_bounds(net: IpNetwork) -> (IpAddr, IpAddr) {
    let first = num(net.network()) + 1;
    let last = match net {
        IpNetwork::V4(n) => num(IpAddr::V4(n.broadcast())) - 1,
        IpNetwork::V6(n) => num(IpAddr::V6(n.broadcast())),
    };
    (addr_like(net.ip(), first), addr_like(net.ip(), last))
}

/// `FIRST-LAST` of a subnet's host addresses, for examples.
fn example_range(net: IpNetwork) -> String {
    let (lo, hi) = host_bounds(net);
    format!("{lo}-{hi}")
}

/// A subnet in CIDR form, IPv4 or IPv6, with the host bits zero and a
/// prefix that makes an L2 segment with room for pods and a gateway.
pub fn subnet(flag: &str, value: &str) -> Result<IpNetwork, InputError> {
    const EXAMPLE: &str = "e.g. 10.1.0.0/24 or fd00:1::/64";
    let Some((addr, prefix)) = value.split_once('/') else {
        return Err(InputError::new(
            flag,
            value,
            format!("needs a prefix length; write address/prefix, {EXAMPLE}"),
        ));
    };
    let ip: IpAddr = addr.parse().map_err(|_| {
        InputError::new(
            flag,
            value,
            format!("{addr:?} is not an IP address; write address/prefix, {EXAMPLE}"),
        )
    })?;
    let net: IpNetwork = value.parse().map_err(|_| {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        InputError::new(
            flag,
            value,
            format!("prefix length {prefix:?} is not 0-{max}; write address/prefix, {EXAMPLE}"),
        )
    })?;
    if net.ip() != net.network() {
        let fixed = IpNetwork::new(net.network(), net.prefix()).expect("same prefix");
        return Err(InputError::new(
            flag,
            value,
            format!("host bits are set: use {fixed}, not {value}"),
        ));
    }
    match net {
        IpNetwork::V4(_) if net.prefix() > V4_LONGEST => Err(InputError::new(
            flag,
            value,
            format!(
                "leaves no room for a gateway and pods; use a /{V4_LONGEST} or wider, e.g. 10.1.0.0/24"
            ),
        )),
        IpNetwork::V6(_) if net.prefix() > V6_LONGEST => Err(InputError::new(
            flag,
            value,
            format!(
                "leaves no room for a gateway and pods; use a /{V6_LONGEST} or wider, e.g. fd00:1::/64"
            ),
        )),
        IpNetwork::V6(_) if net.prefix() < V6_SHORTEST => {
            let one = IpNetwork::new(net.network(), V6_SHORTEST).expect("a /64");
            Err(InputError::new(
                flag,
                value,
                format!(
                    "is wider than a /{V6_SHORTEST}: an IPv6 L2 segment is a /64 or longer; give the ToR one /64 of it, e.g. {one}"
                ),
            ))
        }
        _ => Ok(net),
    }
}

/// The router of `subnet`: a host address of it, of its family.
pub fn gateway(flag: &str, value: &str, subnet: IpNetwork) -> Result<IpAddr, InputError> {
    let (first, last) = host_bounds(subnet);
    let ip: IpAddr = value.parse().map_err(|_| {
        InputError::new(
            flag,
            value,
            format!("is not an IP address; give the router's address in {subnet}, e.g. {first}"),
        )
    })?;
    if ip.is_ipv4() != subnet.is_ipv4() {
        return Err(InputError::new(
            flag,
            value,
            format!(
                "is {} but its --subnet {subnet} is {}: give each --subnet its --gateway, in the same order ({PAIRS})",
                family_name(ip.is_ipv6()),
                family_name(subnet.is_ipv6())
            ),
        ));
    }
    if !subnet.contains(ip) {
        return Err(InputError::new(
            flag,
            value,
            format!("is outside --subnet {subnet}; give the router's address in it, e.g. {first}"),
        ));
    }
    if ip == subnet.network() {
        return Err(InputError::new(
            flag,
            value,
            format!("is the network address of {subnet}; use a host address such as {first}"),
        ));
    }
    if ip > last {
        return Err(InputError::new(
            flag,
            value,
            format!("is the broadcast address of {subnet}; use a host address such as {last}"),
        ));
    }
    Ok(ip)
}

/// `FIRST-LAST` of one family, FIRST <= LAST; which subnet it belongs in
/// is checked once the subnets are known.
fn range(flag: &str, value: &str) -> Result<(IpAddr, IpAddr), InputError> {
    const EXAMPLE: &str = "e.g. 10.1.0.10-10.1.0.99 or fd00:1::10-fd00:1::ff";
    // IPv6 addresses have no '-', so the first one splits any range.
    let Some((a, b)) = value.split_once('-') else {
        return Err(InputError::new(
            flag,
            value,
            format!("write a range as FIRST-LAST, {EXAMPLE}"),
        ));
    };
    let parse = |s: &str| {
        s.trim().parse::<IpAddr>().map_err(|_| {
            InputError::new(
                flag,
                value,
                format!(
                    "{:?} is not an IP address; write FIRST-LAST, {EXAMPLE}",
                    s.trim()
                ),
            )
        })
    };
    let (first, last) = (parse(a)?, parse(b)?);
    if first.is_ipv4() != last.is_ipv4() {
        return Err(InputError::new(
            flag,
            value,
            "mixes IPv4 and IPv6; give one --range per family, e.g. --range 10.1.0.10-10.1.0.99 --range fd00:1::10-fd00:1::ff",
        ));
    }
    if first > last {
        return Err(InputError::new(
            flag,
            value,
            format!("starts after it ends; write it low-high: {last}-{first}"),
        ));
    }
    Ok((first, last))
}

/// One family of the segment as checked: its subnet, gateway and the
/// ranges of its family (none given: the whole subnet).
struct Family<'a> {
    net: IpNetwork,
    gateway: IpAddr,
    /// As typed, with the parsed bounds.
    ranges: Vec<(IpAddr, IpAddr, &'a str)>,
}

impl Family<'_> {
    /// Pod IPs of the family, the gateway excluded (ipamd's
    /// `Family::capacity`).
    fn capacity(&self) -> u128 {
        let whole = [host_bounds(self.net)];
        let ranges: Vec<(IpAddr, IpAddr)> = if self.ranges.is_empty() {
            whole.to_vec()
        } else {
            self.ranges.iter().map(|(a, b, _)| (*a, *b)).collect()
        };
        let size = ranges
            .iter()
            .fold(0u128, |n, (a, b)| n.saturating_add(num(*b) - num(*a) + 1));
        let gw_in = ranges
            .iter()
            .any(|(a, b)| *a <= self.gateway && self.gateway <= *b);
        size - u128::from(gw_in)
    }

    fn ranges_text(&self) -> String {
        self.ranges
            .iter()
            .map(|(_, _, t)| *t)
            .collect::<Vec<_>>()
            .join(",")
    }
}

pub fn tor_add(args: &TorAdd<'_>) -> Result<AddTorRequest, InputError> {
    let name = tor_name("NAME", args.name)?;
    let vlan = match args.vlan {
        Some(v) => vlan("--vlan", v)?,
        None => 0,
    };
    let mut families: Vec<Family> = Vec::new();
    for (i, s) in args.subnets.iter().enumerate() {
        let net = subnet("--subnet", s)?;
        let Some(g) = args.gateways.get(i) else {
            return Err(InputError::new(
                "--subnet",
                s,
                format!("has no --gateway; give each --subnet its --gateway, in the same order ({PAIRS})"),
            ));
        };
        let gateway = gateway("--gateway", g, net)?;
        if let Some(other) = families.iter().find(|f| f.net.is_ipv4() == net.is_ipv4()) {
            return Err(InputError::new(
                "--subnet",
                s,
                format!(
                    "is {}, as is --subnet {}: a segment has at most one subnet per family, one IPv4 and one IPv6; another subnet of a family is another segment (tor add ... --segment-of)",
                    family_name(net.is_ipv6()),
                    other.net
                ),
            ));
        }
        families.push(Family {
            net,
            gateway,
            ranges: Vec::new(),
        });
    }
    if let Some(extra) = args.gateways.get(args.subnets.len()) {
        return Err(InputError::new(
            "--gateway",
            extra,
            format!(
                "has no --subnet; give each --gateway its --subnet, in the same order ({PAIRS})"
            ),
        ));
    }
    if families.is_empty() {
        return Err(InputError::new(
            "--subnet",
            "",
            format!("is required: give --subnet CIDR --gateway IP, one pair per family ({PAIRS})"),
        ));
    }
    for text in args.ranges {
        let (first, last) = range("--range", text)?;
        let Some(f) = families
            .iter_mut()
            .find(|f| f.net.is_ipv4() == first.is_ipv4())
        else {
            let fam = family_name(first.is_ipv6());
            return Err(InputError::new(
                "--range",
                text,
                format!(
                    "is {fam} but no {fam} --subnet is given; add --subnet and --gateway of that family, or drop the range"
                ),
            ));
        };
        let (lo, hi) = host_bounds(f.net);
        for ip in [first, last] {
            let why = if !f.net.contains(ip) {
                "is outside"
            } else if ip < lo {
                "is the network address of"
            } else if ip > hi {
                "is the broadcast address of"
            } else {
                continue;
            };
            return Err(InputError::new(
                "--range",
                text,
                format!(
                    "{ip} {why} --subnet {}; keep ranges to its host addresses, e.g. {}",
                    f.net,
                    example_range(f.net)
                ),
            ));
        }
        if let Some((_, _, other)) = f.ranges.iter().find(|(a, b, _)| first <= *b && *a <= last) {
            return Err(InputError::new(
                "--range",
                text,
                format!("overlaps --range {other}; merge them into one range"),
            ));
        }
        f.ranges.push((first, last, text));
    }
    for f in &families {
        if f.capacity() == 0 {
            return Err(InputError::new(
                "--range",
                &f.ranges_text(),
                format!(
                    "holds only the gateway {} of --subnet {}; give ranges with addresses for pods",
                    f.gateway, f.net
                ),
            ));
        }
    }
    // IPv4 first, whatever the order given: the wire's `subnet` is the
    // IPv4 side of a dual-stack segment.
    families.sort_by_key(|f| f.net.is_ipv6());
    if let [v4, v6] = &families[..] {
        // Every pod IPv4 address needs its IPv6 partner.
        let (have, need) = (v6.capacity(), v4.capacity());
        if have < need {
            let fix = format!(
                "holds {have} pod IPs, fewer than the {need} of --subnet {}: a dual-stack pod gets one of each",
                v4.net
            );
            return Err(if v6.ranges.is_empty() {
                InputError::new(
                    "--subnet",
                    &v6.net.to_string(),
                    format!(
                        "{fix}; use a wider IPv6 subnet (a /64) or fewer IPv4 addresses (--range)"
                    ),
                )
            } else {
                InputError::new(
                    "--range",
                    &v6.ranges_text(),
                    format!(
                        "{fix}; give IPv6 ranges at least as large (or none: the whole subnet)"
                    ),
                )
            });
        }
    }
    let segment_of = match args.segment_of {
        Some(of) => tor_name("--segment-of", of)?,
        None => String::new(),
    };
    if segment_of == name {
        return Err(InputError::new(
            "--segment-of",
            &segment_of,
            "names the segment itself: give the ToR it is on, or leave --segment-of out",
        ));
    }
    let mut nets = families.iter();
    let first = nets.next().expect("one family at least");
    let v6 = nets.next();
    Ok(AddTorRequest {
        name,
        subnet: first.net.to_string(),
        gateway: first.gateway.to_string(),
        subnet6: v6.map(|f| f.net.to_string()).unwrap_or_default(),
        gateway6: v6.map(|f| f.gateway.to_string()).unwrap_or_default(),
        vlan,
        // In the order given, each in its canonical spelling.
        ranges: args
            .ranges
            .iter()
            .map(|text| {
                let (first, last) = range("--range", text).expect("checked above");
                IpRange {
                    first: first.to_string(),
                    last: last.to_string(),
                }
            })
            .collect(),
        segment_of,
    })
}

#[cfg(test)]
#[path = "tor_tests.rs"]
mod tests;
