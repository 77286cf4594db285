//! Carving a ToR's pod ranges into pools.

use std::net::Ipv4Addr;

use super::model::{Carved, Tor};

/// The lowest `n` IPs of the ToR that no pool has yet. Fewer when the ToR runs
/// out; callers check the length.
pub fn lowest_free(tor: &Tor, carved: &Carved, n: u32) -> Vec<Ipv4Addr> {
    tor.pod_ips()
        .filter(|ip| !carved.ips.contains_key(ip))
        .take(n as usize)
        .collect()
}

/// IPs of the ToR no pool has.
pub fn free_count(tor: &Tor, carved: &Carved) -> u32 {
    tor.capacity()
        - carved
            .ips
            .keys()
            .filter(|ip| tor.subnet.contains(**ip))
            .count() as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::validate;

    #[test]
    fn carves_lowest_uncarved_skipping_gateway() {
        let tor = validate::tor("r1", "10.0.0.0/29", "10.0.0.3", 0, &[], "", &[]).unwrap();
        let mut carved = Carved::default();
        carved.ips.insert("10.0.0.2".parse().unwrap(), "p".into());
        let got = lowest_free(&tor, &carved, 3);
        let want: Vec<Ipv4Addr> = ["10.0.0.1", "10.0.0.4", "10.0.0.5"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(got, want);
        assert_eq!(free_count(&tor, &carved), 4); // .1 .4 .5 .6
        assert_eq!(lowest_free(&tor, &carved, 10).len(), 4);
    }
}
