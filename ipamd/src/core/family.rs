//! Address families of a ToR segment. A segment has an IPv4 subnet, an IPv6
//! subnet or both (dual stack); each is a [`Family`]: subnet, gateway, pod
//! ranges. An IPv6 subnet is a /64 as often as not, so nothing here walks a
//! family IP by IP: sizes are u128 and the n-th pod IP is arithmetic.
//!
//! Dual stack pairs the families by position: the k-th pod IPv4 address of
//! a segment goes with its k-th pod IPv6 address (gateways skipped). A
//! dual-stack pool carves IPv4 addresses as before and its pods get each
//! one's partner too, so a pod has both or neither, keeps both when sticky,
//! and nothing new is carved, cooled or leased for the IPv6 side. IPv6-only
//! pools on a dual-stack segment carve from past the paired addresses.

use std::net::{IpAddr, Ipv6Addr};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// An inclusive range of pod addresses, of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpRange {
    pub first: IpAddr,
    pub last: IpAddr,
}

/// An address as a number: IPv4 and IPv6 alike.
pub fn num(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The address `n` of the family of `like`.
pub fn addr_like(like: IpAddr, n: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4((n as u32).into()),
        IpAddr::V6(_) => IpAddr::V6(n.into()),
    }
}

impl IpRange {
    /// Number of addresses in the range (never 0: first <= last is
    /// validated). A whole IPv6 /0 does not fit; ranges inside a subnet of
    /// /1 or longer do.
    pub fn size(&self) -> u128 {
        num(self.last) - num(self.first) + 1
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.first.is_ipv4() && self.first <= ip && ip <= self.last
    }

    pub fn is_ipv6(&self) -> bool {
        self.first.is_ipv6()
    }
}

impl std::fmt::Display for IpRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// One family of a segment: its subnet, gateway and pod ranges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Family {
    pub subnet: IpNetwork,
    pub gateway: IpAddr,
    /// Ascending, never empty once validated: "no ranges given" is stored
    /// as the whole subnet but its network (and IPv4 broadcast) address.
    pub ranges: Vec<IpRange>,
}

impl Family {
    pub fn is_ipv6(&self) -> bool {
        self.subnet.is_ipv6()
    }

    /// Pod IPs of the family (the gateway excluded), saturating at
    /// u128::MAX (a /0 only).
    pub fn capacity(&self) -> u128 {
        self.ranges
            .iter()
            .fold(0u128, |n, r| n.saturating_add(r.size()))
            - u128::from(self.ranges.iter().any(|r| r.contains(self.gateway)))
    }

    /// [`Self::capacity`] as a count of IPs a pool could take: an IPv6
    /// family holds more than any pool asks for.
    pub fn capacity_u32(&self) -> u32 {
        u32::try_from(self.capacity()).unwrap_or(u32::MAX)
    }

    pub fn is_pod_ip(&self, ip: IpAddr) -> bool {
        ip != self.gateway && self.ranges.iter().any(|r| r.contains(ip))
    }

    /// The position of `ip` among the family's pod IPs, ascending.
    pub fn index_of(&self, ip: IpAddr) -> Option<u128> {
        if !self.is_pod_ip(ip) {
            return None;
        }
        let mut before = 0u128;
        for r in &self.ranges {
            if r.contains(ip) {
                let mut i = before + (num(ip) - num(r.first));
                if r.contains(self.gateway) && self.gateway < ip {
                    i -= 1;
                }
                return Some(i);
            }
            before += r.size() - u128::from(r.contains(self.gateway));
        }
        None
    }

    /// The pod IP at position `i` (the inverse of [`Self::index_of`]).
    pub fn nth(&self, mut i: u128) -> Option<IpAddr> {
        for r in &self.ranges {
            let gw_here = r.contains(self.gateway);
            let here = r.size() - u128::from(gw_here);
            if i < here {
                let mut n = num(r.first) + i;
                if gw_here && n >= num(self.gateway) {
                    n += 1;
                }
                return Some(addr_like(r.first, n));
            }
            i -= here;
        }
        None
    }

    /// Pod IPs from position `from` on, ascending; lazy, so a /64 is never
    /// walked further than the caller takes.
    pub fn pod_ips_from(&self, from: u128) -> impl Iterator<Item = IpAddr> + '_ {
        let mut skip = from;
        self.ranges.iter().flat_map(move |r| {
            let gw = self.gateway;
            let gw_here = r.contains(gw);
            let here = r.size() - u128::from(gw_here);
            let start = skip.min(here);
            skip -= start;
            // The start-th pod IP of the range: one further on when the
            // gateway comes before it.
            let mut first = num(r.first) + start;
            if gw_here && first >= num(gw) {
                first += 1;
            }
            let last = if start == here {
                None
            } else {
                Some(num(r.last))
            };
            last.into_iter()
                .flat_map(move |last| first..=last)
                .map(move |n| addr_like(r.first, n))
                .filter(move |ip| *ip != gw)
        })
    }
}

/// Which families a pool's pods get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpFamily {
    /// Every pool made before dual stack, and the default on IPv4 ToRs.
    #[default]
    Ipv4,
    Ipv6,
    /// One IP of each family, from the same segment.
    Dual,
}

impl IpFamily {
    pub fn as_str(&self) -> &'static str {
        match self {
            IpFamily::Ipv4 => "ipv4",
            IpFamily::Ipv6 => "ipv6",
            IpFamily::Dual => "dual",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ipv4" => Some(IpFamily::Ipv4),
            "ipv6" => Some(IpFamily::Ipv6),
            "dual" => Some(IpFamily::Dual),
            _ => None,
        }
    }
}

impl std::fmt::Display for IpFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The IPv6 partner of position `i` of a dual-stack segment.
pub fn partner(v6: &Family, i: u128) -> Option<Ipv6Addr> {
    match v6.nth(i)? {
        IpAddr::V6(a) => Some(a),
        IpAddr::V4(_) => None,
    }
}

#[cfg(test)]
#[path = "family_tests.rs"]
mod tests;
