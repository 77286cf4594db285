//! Where the scheduler may put a pod of a pool: the ToRs whose nodes can
//! give it an IP. An IP never leaves its ToR, so a pod scheduled elsewhere
//! fails its ADD (code 101: bound elsewhere, or no IP of its pool there;
//! 100: its pool full there); the admission webhook turns this answer into
//! a required node affinity on the nodes' ToR label. Pure: the caller reads
//! the records from the store.

use std::collections::{BTreeMap, BTreeSet};

use super::model::{Binding, FreeCount, Pool, Tor};

/// What was read for one pod.
pub struct ScheduleInput<'a> {
    /// The pool the pod draws from (decided as the node agent decides it).
    pub pool: &'a Pool,
    /// Every ToR record: the ToRs and their extra segments.
    pub tors: &'a [Tor],
    /// The pool's free counts, by segment (`free/<pool>/<segment>`).
    pub free: &'a BTreeMap<String, FreeCount>,
    /// The pod's binding (in any pool), when the pod has a name to look it
    /// up by (a Deployment's pod has only a generateName at admission).
    pub binding: Option<&'a Binding>,
}

/// The ToRs a pod may be scheduled to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorChoice {
    /// ToR (switch) names, sorted; never empty. The values of the nodes'
    /// ToR label: a segment is named by the ToR it belongs to.
    pub tors: Vec<String>,
    /// The pool has IPs on more than one ToR: its pods are worth spreading
    /// over ToRs.
    pub spans: bool,
    /// Something the pod's creator should know (shown by kubectl as an
    /// admission warning): the pool is full, the binding is elsewhere.
    pub warning: Option<String>,
}

/// The ToR each segment is on.
fn switches(tors: &[Tor]) -> BTreeMap<&str, &str> {
    tors.iter().map(|t| (t.name.as_str(), t.switch())).collect()
}

/// The ToRs a pod of `input.pool` may land on:
/// - bound in this pool: only its binding's ToR (its IP cannot move);
/// - otherwise the pool's ToRs where it has a free IP; when none has, all
///   of the pool's ToRs and a warning (the pod would fail anywhere; the
///   scheduler's usual choice beats pinning it to a guess).
///
/// None when the pool has no IPs on a known ToR (nothing to steer to), or
/// its binding's segment is no longer defined (its ADD fails wherever it
/// goes, with a message that says why).
pub fn tors_for(input: &ScheduleInput) -> Option<TorChoice> {
    let pool = input.pool;
    let switch = switches(input.tors);
    let pool_tors: BTreeSet<&str> = pool
        .ips
        .iter()
        .filter(|(_, ips)| !ips.is_empty())
        .filter_map(|(seg, _)| switch.get(seg.as_str()).copied())
        .collect();
    if pool_tors.is_empty() {
        return None;
    }
    let spans = pool_tors.len() > 1;
    let choice = |tors: Vec<&str>, warning: Option<String>| TorChoice {
        tors: tors.into_iter().map(str::to_string).collect(),
        spans,
        warning,
    };
    let mut warning = None;
    match input.binding {
        Some(b) if b.pool == pool.name => {
            let tor = switch.get(b.tor.as_str())?;
            return Some(choice(vec![tor], None));
        }
        Some(b) => {
            warning = Some(format!(
                "moor: {}/{} is bound to {} of pool {}, not of pool {}: its ADD fails until `ipamctl ip release {}`",
                b.pod.namespace, b.pod.name, b.ip, b.pool, pool.name, b.ip
            ));
        }
        None => {}
    }
    // A segment without a published count (a record written before counts
    // existed) is assumed to have room: a wrong "full" would pin the pod
    // away from the only ToR that can take it.
    let room = |seg: &str| input.free.get(seg).is_none_or(|c| c.free > 0);
    let free: BTreeSet<&str> = pool
        .ips
        .iter()
        .filter(|(seg, ips)| !ips.is_empty() && room(seg))
        .filter_map(|(seg, _)| switch.get(seg.as_str()).copied())
        .collect();
    if free.is_empty() {
        let all: Vec<&str> = pool_tors.into_iter().collect();
        let full = format!(
            "moor: pool {} has no free IP on its ToRs ({}): the pod's ADD fails until one is released or the pool grows (ipamctl pool resize)",
            pool.name,
            all.join(", ")
        );
        return Some(choice(all, warning.or(Some(full))));
    }
    Some(choice(free.into_iter().collect(), warning))
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use proptest::prelude::*;

    use super::*;
    use crate::core::{PodRef, Policy};

    fn tor(name: &str, segment_of: Option<&str>) -> Tor {
        Tor {
            name: name.into(),
            first: crate::core::Family {
                subnet: "10.0.0.0/24".parse().unwrap(),
                gateway: IpAddr::from([10, 0, 0, 1]),
                ranges: Vec::new(),
            },
            vlan: None,
            segment_of: segment_of.map(str::to_string),
            ipv6: None,
        }
    }

    fn pool(segments: &[(&str, usize)]) -> Pool {
        let mut next = 10u8;
        let ips = segments
            .iter()
            .map(|(s, n)| {
                let v = (0..*n)
                    .map(|_| {
                        next += 1;
                        IpAddr::from([10, 0, 0, next])
                    })
                    .collect();
                (s.to_string(), v)
            })
            .collect();
        Pool {
            name: "web".into(),
            namespace: "shop".into(),
            app: "web".into(),
            policy: Policy::Auto,
            tors: Vec::new(),
            ips,
            family: Default::default(),
            allow_namespaces: Vec::new(),
            allocatable_after: Default::default(),
            owner: None,
            op: None,
        }
    }

    fn free(counts: &[(&str, u32)]) -> BTreeMap<String, FreeCount> {
        counts
            .iter()
            .map(|(s, f)| (s.to_string(), FreeCount { total: 4, free: *f }))
            .collect()
    }

    fn binding(pool: &str, segment: &str) -> Binding {
        Binding {
            pod: PodRef {
                namespace: "shop".into(),
                name: "web-1".into(),
                uid: String::new(),
            },
            pool: pool.into(),
            ip: IpAddr::from([10, 0, 0, 11]),
            tor: segment.into(),
        }
    }

    fn topology() -> Vec<Tor> {
        vec![
            tor("t1", None),
            tor("t2", None),
            tor("t3", None),
            tor("t2-v200", Some("t2")),
        ]
    }

    fn decide(p: &Pool, f: &BTreeMap<String, FreeCount>, b: Option<&Binding>) -> Option<TorChoice> {
        tors_for(&ScheduleInput {
            pool: p,
            tors: &topology(),
            free: f,
            binding: b,
        })
    }

    #[test]
    fn unbound_pods_go_to_the_tors_with_a_free_ip() {
        let p = pool(&[("t1", 4), ("t2", 4), ("t3", 4)]);
        let c = decide(&p, &free(&[("t1", 0), ("t2", 3), ("t3", 1)]), None).unwrap();
        assert_eq!(c.tors, ["t2", "t3"]);
        assert!(c.spans);
        assert_eq!(c.warning, None);
    }

    #[test]
    fn a_full_pool_keeps_all_its_tors_and_warns() {
        let p = pool(&[("t1", 4), ("t2", 4)]);
        let c = decide(&p, &free(&[("t1", 0), ("t2", 0)]), None).unwrap();
        assert_eq!(c.tors, ["t1", "t2"]);
        let w = c.warning.unwrap();
        assert!(
            w.contains("pool web has no free IP on its ToRs (t1, t2)"),
            "{w}"
        );
        assert!(w.contains("ipamctl pool resize"), "{w}");
    }

    #[test]
    fn a_bound_pod_goes_to_its_bindings_tor_only() {
        let p = pool(&[("t1", 4), ("t2", 4)]);
        // Even when that ToR is otherwise full: the pod's IP is there.
        let f = free(&[("t1", 4), ("t2", 0)]);
        let c = decide(&p, &f, Some(&binding("web", "t2"))).unwrap();
        assert_eq!(c.tors, ["t2"]);
        assert!(c.spans);
        assert_eq!(c.warning, None);
        // A binding on a segment: the ToR the segment belongs to.
        let p = pool(&[("t1", 4), ("t2-v200", 4)]);
        let c = decide(&p, &f, Some(&binding("web", "t2-v200"))).unwrap();
        assert_eq!(c.tors, ["t2"]);
        // A binding on a segment deleted since: nothing to steer to.
        assert_eq!(decide(&p, &f, Some(&binding("web", "gone"))), None);
    }

    #[test]
    fn a_binding_of_another_pool_is_warned_about() {
        let p = pool(&[("t1", 4), ("t2", 4)]);
        let c = decide(
            &p,
            &free(&[("t1", 1), ("t2", 0)]),
            Some(&binding("db", "t2")),
        )
        .unwrap();
        assert_eq!(c.tors, ["t1"]);
        let w = c.warning.unwrap();
        assert!(
            w.contains("bound to 10.0.0.11 of pool db, not of pool web"),
            "{w}"
        );
    }

    #[test]
    fn segments_map_to_their_tor() {
        // IPs on two segments of t2: one ToR, nothing to spread.
        let p = pool(&[("t2", 2), ("t2-v200", 2)]);
        let c = decide(&p, &free(&[("t2", 0), ("t2-v200", 2)]), None).unwrap();
        assert_eq!(c.tors, ["t2"]);
        assert!(!c.spans);
        // One ToR's segment full, another ToR free.
        let p = pool(&[("t1", 2), ("t2-v200", 2)]);
        let c = decide(&p, &free(&[("t1", 0), ("t2-v200", 2)]), None).unwrap();
        assert_eq!(c.tors, ["t2"]);
        assert!(c.spans);
    }

    #[test]
    fn unknown_segments_and_empty_pools_steer_nowhere() {
        let p = pool(&[("elsewhere", 4)]);
        assert_eq!(decide(&p, &free(&[]), None), None);
        let p = pool(&[("t1", 0)]);
        assert_eq!(decide(&p, &free(&[]), None), None);
        // A segment with no published count is assumed to have room.
        let p = pool(&[("t1", 2), ("t3", 2)]);
        let c = decide(&p, &free(&[("t1", 0)]), None).unwrap();
        assert_eq!(c.tors, ["t3"]);
    }

    proptest! {
        /// Whatever the counts: the answer is a non-empty sorted set of the
        /// pool's ToRs; a ToR is in it iff one of its segments has room (or
        /// none has); a bound pod gets exactly its ToR.
        #[test]
        fn the_choice_is_a_subset_of_the_pools_tors(
            sizes in proptest::collection::vec(0usize..3, 4),
            frees in proptest::collection::vec(0u32..3, 4),
            bound in proptest::option::of(0usize..4),
        ) {
            let segs = ["t1", "t2", "t3", "t2-v200"];
            let switch_of = |s: &str| if s == "t2-v200" { "t2" } else { s }.to_string();
            let spec: Vec<(&str, usize)> = segs.iter().copied().zip(sizes.iter().copied()).collect();
            let p = pool(&spec);
            let f: BTreeMap<String, FreeCount> = segs.iter().zip(&frees)
                .map(|(s, n)| (s.to_string(), FreeCount { total: 2, free: *n }))
                .collect();
            let b = bound.map(|i| binding("web", segs[i]));
            let with_ips: BTreeSet<String> = spec.iter().filter(|(_, n)| *n > 0).map(|(s, _)| switch_of(s)).collect();
            let Some(c) = decide(&p, &f, b.as_ref()) else {
                prop_assert!(with_ips.is_empty());
                return Ok(());
            };
            prop_assert!(!c.tors.is_empty());
            prop_assert!(c.tors.windows(2).all(|w| w[0] < w[1]));
            prop_assert_eq!(c.spans, with_ips.len() > 1);
            if let Some(b) = &b {
                prop_assert_eq!(c.tors.clone(), vec![switch_of(&b.tor)]);
                return Ok(());
            }
            let roomy: BTreeSet<String> = spec.iter().zip(&frees)
                .filter(|((_, n), f)| *n > 0 && **f > 0)
                .map(|((s, _), _)| switch_of(s))
                .collect();
            let expected = if roomy.is_empty() { with_ips } else { roomy.clone() };
            prop_assert_eq!(c.tors.iter().cloned().collect::<BTreeSet<_>>(), expected);
            prop_assert_eq!(c.warning.is_some(), roomy.is_empty());
        }
    }
}
