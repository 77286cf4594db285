//! The JSON the page reads, shaped from ipamd's replies. Pure: no I/O.
//!
//! Pools, IPs and nodes are the views `ipamctl -o json` prints (`output`),
//! so the page and the CLI agree field by field; a ToR adds the counts of
//! its pools, summed here because ipamd keeps them per pool.

use std::collections::BTreeMap;

use moor_proto::v1::{Node, Tor};
use serde::Serialize;

use crate::output::{CountsView, IpView, NodeView, PoolView, TorView};
use crate::ui::query::PageInfo;

/// `/api/overview`: every ToR with its pools' counts, every node.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Overview {
    /// By name.
    pub tors: Vec<TorSummary>,
    /// By name.
    pub nodes: Vec<NodeView>,
    /// How many pools there are.
    pub pools: usize,
    /// Over every pool.
    pub totals: CountsView,
    /// ipamctl's clock, for the heartbeats' ages.
    pub now_unix: u64,
}

/// A ToR (or segment) as `tor show` prints it, and the counts of the IPs
/// pools hold in it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TorSummary {
    #[serde(flatten)]
    pub tor: TorView,
    /// Pools with IPs in this ToR.
    pub pools: usize,
    #[serde(flatten)]
    pub counts: CountsView,
}

/// Sums the pools' per-ToR counts into their ToRs. A ToR a pool names that
/// `tors` lacks (deleted between the two reads) still shows, without its
/// subnet, rather than its IPs going missing from the sums.
pub fn overview(tors: &[Tor], pools: &[PoolView], nodes: &[Node], now_unix: u64) -> Overview {
    let mut by_name: BTreeMap<String, TorSummary> = tors
        .iter()
        .map(|t| {
            let summary = TorSummary {
                tor: TorView::from(t),
                pools: 0,
                counts: CountsView::default(),
            };
            (t.name.clone(), summary)
        })
        .collect();
    let mut totals = CountsView::default();
    for pool in pools {
        totals = add(totals, pool.totals);
        for pt in &pool.tors {
            let s = by_name.entry(pt.tor.clone()).or_insert_with(|| TorSummary {
                tor: TorView::from(&Tor {
                    name: pt.tor.clone(),
                    ..Tor::default()
                }),
                pools: 0,
                counts: CountsView::default(),
            });
            s.pools += 1;
            s.counts = add(s.counts, pt.counts);
        }
    }
    let mut nodes: Vec<NodeView> = nodes.iter().map(NodeView::from).collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Overview {
        tors: by_name.into_values().collect(),
        nodes,
        pools: pools.len(),
        totals,
        now_unix,
    }
}

fn add(a: CountsView, b: CountsView) -> CountsView {
    CountsView {
        total: a.total.saturating_add(b.total),
        bound: a.bound.saturating_add(b.bound),
        in_use: a.in_use.saturating_add(b.in_use),
        free: a.free.saturating_add(b.free),
    }
}

/// `/api/pools`: one page of the pools that match the search.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PoolsPage {
    /// The search text as used (lowercased, trimmed).
    pub q: String,
    /// Every pool, matching or not.
    pub total: usize,
    #[serde(flatten)]
    pub page: PageInfo,
    /// By name.
    pub pools: Vec<PoolView>,
}

/// `/api/pools/NAME/ips`: one page of a pool's IPs.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct IpsPage {
    pub pool: String,
    #[serde(flatten)]
    pub page: PageInfo,
    /// By address, as ipamd sends them.
    pub ips: Vec<IpView>,
}

/// A JSON endpoint's failure: `{"error": "..."}`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ErrorBody<'a> {
    pub error: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::PoolTorView;
    use moor_proto::v1::IpRange;
    use serde_json::json;

    fn counts(total: u32, bound: u32, in_use: u32) -> CountsView {
        CountsView {
            total,
            bound,
            in_use,
            free: total - bound - in_use,
        }
    }

    fn pool(name: &str, tors: &[(&str, CountsView)]) -> PoolView {
        let tors: Vec<PoolTorView> = tors
            .iter()
            .map(|(t, c)| PoolTorView {
                tor: t.to_string(),
                counts: *c,
            })
            .collect();
        let totals = tors
            .iter()
            .fold(CountsView::default(), |a, t| add(a, t.counts));
        PoolView {
            name: name.into(),
            namespace: "shop".into(),
            app: name.into(),
            size: totals.total,
            policy: "auto".into(),
            family: "ipv4".into(),
            allow_namespaces: Vec::new(),
            tors,
            totals,
        }
    }

    fn tor(name: &str, capacity: u32, carved: u32) -> Tor {
        Tor {
            name: name.into(),
            subnet: "10.1.0.0/24".into(),
            gateway: "10.1.0.1".into(),
            vlan: 0,
            ranges: vec![IpRange {
                first: "10.1.0.10".into(),
                last: "10.1.0.20".into(),
            }],
            capacity,
            carved,
            segment_of: String::new(),
            ..Default::default()
        }
    }

    #[test]
    fn tors_sum_their_pools_counts() {
        let pools = [
            pool(
                "web",
                &[("rack-1", counts(3, 1, 1)), ("rack-2", counts(3, 0, 2))],
            ),
            pool("db", &[("rack-2", counts(4, 2, 0))]),
        ];
        let nodes = [
            Node {
                name: "node-b".into(),
                alive: false,
                ..Node::default()
            },
            Node {
                name: "node-a".into(),
                alive: true,
                ..Node::default()
            },
        ];
        let o = overview(
            &[
                tor("rack-2", 100, 7),
                tor("rack-1", 50, 3),
                tor("empty", 9, 0),
            ],
            &pools,
            &nodes,
            1_700_000_000,
        );
        let names: Vec<&str> = o.tors.iter().map(|t| t.tor.name.as_str()).collect();
        assert_eq!(names, ["empty", "rack-1", "rack-2"]);
        assert_eq!((o.tors[0].pools, o.tors[0].counts), (0, counts(0, 0, 0)));
        assert_eq!((o.tors[1].pools, o.tors[1].counts), (1, counts(3, 1, 1)));
        assert_eq!((o.tors[2].pools, o.tors[2].counts), (2, counts(7, 2, 2)));
        assert_eq!(o.tors[2].tor.capacity, 100);
        assert_eq!(o.totals, counts(10, 3, 3));
        assert_eq!(o.pools, 2);
        let nodes: Vec<(&str, bool)> = o.nodes.iter().map(|n| (n.name.as_str(), n.alive)).collect();
        assert_eq!(nodes, [("node-a", true), ("node-b", false)]);
    }

    #[test]
    fn a_tor_only_a_pool_names_still_counts() {
        let pools = [pool("web", &[("gone", counts(2, 0, 1))])];
        let o = overview(&[], &pools, &[], 0);
        assert_eq!(o.tors.len(), 1);
        assert_eq!(o.tors[0].tor.name, "gone");
        assert_eq!(o.tors[0].counts, counts(2, 0, 1));
    }

    #[test]
    fn json_is_flat_per_tor_and_pages_carry_their_place() {
        let o = overview(
            &[tor("rack-1", 50, 3)],
            &[pool("web", &[("rack-1", counts(3, 1, 1))])],
            &[],
            5,
        );
        let v = serde_json::to_value(&o).unwrap();
        let t = &v["tors"][0];
        assert_eq!(t["name"], "rack-1");
        assert_eq!(t["capacity"], 50);
        assert_eq!(t["carved"], 3);
        assert_eq!(t["pools"], 1);
        // What the page shows of a segment's IPv6 side: null without one.
        assert_eq!((&t["subnet6"], &t["capacity6"]), (&json!(null), &json!(0)));
        let dual = Tor {
            subnet6: "fd00:1::/64".into(),
            gateway6: "fd00:1::1".into(),
            ..tor("rack-6", 9, 0)
        };
        let v6 = serde_json::to_value(overview(&[dual], &[], &[], 5)).unwrap();
        assert_eq!(v6["tors"][0]["subnet6"], "fd00:1::/64");
        assert_eq!(
            (&t["total"], &t["bound"], &t["in_use"], &t["free"]),
            (&3.into(), &1.into(), &1.into(), &1.into())
        );
        assert_eq!(v["now_unix"], 5);

        let page = PoolsPage {
            q: "we".into(),
            total: 2000,
            page: PageInfo {
                page: 2,
                per_page: 50,
                pages: 3,
                matching: 120,
            },
            pools: vec![pool("web", &[])],
        };
        let v = serde_json::to_value(&page).unwrap();
        for (k, want) in [
            ("total", 2000),
            ("page", 2),
            ("per_page", 50),
            ("pages", 3),
            ("matching", 120),
        ] {
            assert_eq!(v[k], want, "{k} in {v}");
        }
        assert_eq!(v["pools"][0]["name"], "web");
        assert_eq!(v["pools"][0]["family"], "ipv4");
        assert_eq!(v["pools"][0]["totals"]["total"], 0);
    }
}
