//! A ToR segment as the store keeps it (`tors/<name>`), and what its
//! families say about which IPs a pool of each family may carve.

use std::net::{IpAddr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use super::family::{Family, IpFamily};

/// A ToR (top-of-rack switch) and its L2 domain: its subnets (IPv4, IPv6
/// or both), gateways, an optional VLAN and the parts of the subnets
/// reserved for pods. An IP can move between nodes of one ToR, never out of
/// it.
///
/// A ToR that carries several VLANs/subnets has one record per segment: the
/// extra ones name the ToR in `segment_of`, and nodes of the ToR serve all of
/// them. Pools name the segment they take IPs from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tor {
    pub name: String,
    /// The segment's first family: IPv4 when it has IPv4, else IPv6. Its
    /// fields (`subnet`, `gateway`, `ranges`) sit at the top of the record,
    /// where every record before dual stack has them.
    #[serde(flatten)]
    pub first: Family,
    #[serde(default)]
    pub vlan: Option<u16>,
    /// The ToR this record is an extra segment of; None: it is a ToR (and
    /// its first segment) itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_of: Option<String>,
    /// The IPv6 side of a dual-stack segment (`first` is then IPv4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Family>,
}

/// The segments a node of ToR `tor` serves, of `all`, by name: the ToR's
/// own record and every record made with `--segment-of` it (a node
/// configured with a segment's name serves that segment's ToR).
pub fn segments_of<'a>(all: impl IntoIterator<Item = &'a Tor>, tor: &str) -> Vec<Tor> {
    let all: Vec<&Tor> = all.into_iter().collect();
    let switch = all
        .iter()
        .find(|t| t.name == tor)
        .map_or(tor, |t| t.switch());
    let mut out: Vec<Tor> = all
        .iter()
        .filter(|t| t.switch() == switch)
        .map(|t| (*t).clone())
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

impl Tor {
    /// The switch this segment is on: where its IPs may move between nodes.
    pub fn switch(&self) -> &str {
        self.segment_of.as_deref().unwrap_or(&self.name)
    }

    pub fn v4(&self) -> Option<&Family> {
        (!self.first.is_ipv6()).then_some(&self.first)
    }

    pub fn v6(&self) -> Option<&Family> {
        self.ipv6
            .as_ref()
            .or((self.first.is_ipv6()).then_some(&self.first))
    }

    /// Every family of the segment, IPv4 first.
    pub fn families(&self) -> impl Iterator<Item = &Family> {
        std::iter::once(&self.first).chain(self.ipv6.as_ref())
    }

    pub fn offers(&self, f: IpFamily) -> bool {
        match f {
            IpFamily::Ipv4 => self.v4().is_some(),
            IpFamily::Ipv6 => self.v6().is_some(),
            IpFamily::Dual => self.v4().is_some() && self.v6().is_some(),
        }
    }

    /// What a pool over this segment alone gets by default: every family
    /// it has.
    pub fn default_family(&self) -> IpFamily {
        match (self.v4(), self.v6()) {
            (Some(_), Some(_)) => IpFamily::Dual,
            (None, Some(_)) => IpFamily::Ipv6,
            _ => IpFamily::Ipv4,
        }
    }

    /// Where a pool of family `f` carves: the family and the position its
    /// IPs start at. IPv4 and dual-stack pools carve IPv4 addresses (a
    /// dual-stack pod's IPv6 address is its IPv4 one's partner); IPv6-only
    /// pools carve IPv6 addresses, on a dual-stack segment only those past
    /// the partners of its IPv4 pod IPs. None: the segment lacks `f`.
    pub fn carves(&self, f: IpFamily) -> Option<(&Family, u128)> {
        if !self.offers(f) {
            return None;
        }
        match (f, &self.ipv6) {
            (IpFamily::Ipv4 | IpFamily::Dual, _) => Some((&self.first, 0)),
            (IpFamily::Ipv6, None) => Some((&self.first, 0)),
            (IpFamily::Ipv6, Some(v6)) => Some((v6, self.first.capacity())),
        }
    }

    /// IPs a pool of family `f` may be given, ascending (lazy: a /64 is
    /// never walked further than the caller takes).
    pub fn pod_ips(&self, f: IpFamily) -> impl Iterator<Item = IpAddr> + '_ {
        self.carves(f)
            .into_iter()
            .flat_map(|(fam, from)| fam.pod_ips_from(from))
    }

    /// How many IPs pools of family `f` may carve here (saturating).
    pub fn capacity(&self, f: IpFamily) -> u32 {
        self.carves(f).map_or(0, |(fam, from)| {
            u32::try_from(fam.capacity().saturating_sub(from)).unwrap_or(u32::MAX)
        })
    }

    /// Whether `ip` is one a pool of family `f` carves here.
    pub fn carves_ip(&self, f: IpFamily, ip: IpAddr) -> bool {
        self.carves(f)
            .is_some_and(|(fam, from)| fam.index_of(ip).is_some_and(|i| i >= from))
    }

    /// The IPv6 partner of pod IPv4 address `ip` on a dual-stack segment.
    pub fn partner(&self, ip: IpAddr) -> Option<Ipv6Addr> {
        let v6 = self.ipv6.as_ref()?;
        super::family::partner(v6, self.first.index_of(ip)?)
    }

    /// The pod IPv4 address whose partner `ip` is (the reverse of
    /// [`Self::partner`]).
    pub fn partner_of(&self, ip: IpAddr) -> Option<IpAddr> {
        let i = self.ipv6.as_ref()?.index_of(ip)?;
        self.first.nth(i)
    }

    /// The family of the segment `ip` is in, if any.
    pub fn family_of(&self, ip: IpAddr) -> Option<&Family> {
        self.families().find(|f| f.subnet.contains(ip))
    }
}
