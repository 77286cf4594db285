//! The ADD decision: which IP a pod gets, or why it gets none. Invariant 3 of
//! BRIEF.md lives here: a pod with a binding gets that IP back or a refusal
//! that says why, never a silently different IP.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::model::{AttachmentKey, Binding, Lease, Pool, PoolCounts};

/// What the caller read from the store for one ADD.
pub struct AddInput<'a> {
    pub pool: &'a Pool,
    /// The ToR of the node the pod landed on.
    pub tor: &'a str,
    /// The segments (ToR records) of that ToR: its own and those made with
    /// `--segment-of` it. The pod may take an IP of any of them the pool has.
    pub segments: &'a [String],
    /// The pool's leases (IPs bound or in use), by IP. Shared: a node's
    /// view hands them out without copying them.
    pub leases: &'a BTreeMap<IpAddr, Arc<Lease>>,
    /// The pod's binding, if it has one (in any pool).
    pub binding: Option<&'a Binding>,
    pub key: &'a AttachmentKey,
    /// Whether the pod should keep its IP after DEL (policy and name).
    pub keeps_ip: bool,
    /// Now, in unix seconds: IPs still inside their whitelist delay are
    /// not given out.
    pub now_unix: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum AddDecision {
    /// Attach `ip` of `segment`. `new_binding`: also bind it to the pod.
    Take {
        ip: IpAddr,
        segment: String,
        new_binding: bool,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The pod's IP belongs to a segment that is not on the node's ToR.
    WrongTor {
        ip: IpAddr,
        bound_segment: String,
        node_tor: String,
    },
    /// The pod is bound to an IP of another pool than the one it asks for.
    OtherPool { ip: IpAddr, bound_pool: String },
    /// The pod's IP is still attached to another container (its previous
    /// incarnation not torn down yet): try again later.
    StillAttached { ip: IpAddr, holder: AttachmentKey },
    /// The pod's IP is quarantined: another interface answered for it.
    Quarantined { ip: IpAddr, mac: String },
    /// The pool has no IPs on the node's ToR at all.
    NotOnTor { pool_tors: Vec<String> },
    /// Every IP of the pool on this ToR is bound or in use. `tor` names the
    /// ToR, and the segment when it is not the ToR's own.
    Full { tor: String, counts: PoolCounts },
    /// The only free IPs here are new and inside their whitelist delay:
    /// one becomes allocatable at `until` (unix seconds).
    Waiting { tor: String, until: u64, ips: u32 },
    /// The pool is being created or deleted (`what`): no pod gets an IP
    /// of it until that is done.
    Changing { what: &'static str },
}

pub fn decide(input: &AddInput) -> Result<AddDecision, Refusal> {
    let pool = input.pool;
    // A pool half created may yet be undone, one half deleted is going:
    // an IP handed out now could outlive the pool's claim on it.
    if let Some(what) = pool.closed() {
        return Err(Refusal::Changing { what });
    }
    if let Some(b) = input.binding {
        if b.pool != pool.name {
            return Err(Refusal::OtherPool {
                ip: b.ip,
                bound_pool: b.pool.clone(),
            });
        }
        if !input.segments.contains(&b.tor) {
            return Err(Refusal::WrongTor {
                ip: b.ip,
                bound_segment: b.tor.clone(),
                node_tor: input.tor.to_string(),
            });
        }
        if let Some(q) = input.leases.get(&b.ip).and_then(|l| l.quarantine.as_ref()) {
            return Err(Refusal::Quarantined {
                ip: b.ip,
                mac: q.mac.clone(),
            });
        }
        if let Some(att) = input.leases.get(&b.ip).and_then(|l| l.attachment.as_ref()) {
            if &att.key != input.key {
                return Err(Refusal::StillAttached {
                    ip: b.ip,
                    holder: att.key.clone(),
                });
            }
        }
        return Ok(AddDecision::Take {
            ip: b.ip,
            segment: b.tor.clone(),
            new_binding: false,
        });
    }
    let here: Vec<(&String, &Vec<IpAddr>)> = pool
        .ips
        .iter()
        .filter(|(seg, ips)| input.segments.contains(seg) && !ips.is_empty())
        .collect();
    if here.is_empty() {
        return Err(Refusal::NotOnTor {
            pool_tors: pool.ips.keys().cloned().collect(),
        });
    }
    let mut waiting: Option<(u64, u32)> = None;
    for (segment, ips) in &here {
        // IPs being given back (a shrink in progress) are no longer free.
        let free = ips
            .iter()
            .filter(|ip| !input.leases.contains_key(ip) && !pool.leaving(**ip));
        for &ip in free {
            if pool.allocatable(ip, input.now_unix) {
                return Ok(AddDecision::Take {
                    ip,
                    segment: segment.to_string(),
                    new_binding: input.keeps_ip,
                });
            }
            let until = pool.allocatable_after[&ip];
            let (first, n) = waiting.unwrap_or((until, 0));
            waiting = Some((first.min(until), n + 1));
        }
    }
    let mut counts = PoolCounts::default();
    for ip in here.iter().flat_map(|(_, ips)| ips.iter()) {
        counts.total += 1;
        match input.leases.get(ip).map(|l| l.attachment.is_some()) {
            Some(true) => counts.in_use += 1,
            Some(false) => counts.bound += 1,
            None => counts.free += 1,
        }
    }
    let names: Vec<&str> = here
        .iter()
        .map(|(s, _)| s.as_str())
        .filter(|s| *s != input.tor)
        .collect();
    let tor = if names.is_empty() {
        input.tor.to_string()
    } else {
        format!("{} (segment {})", input.tor, names.join(", "))
    };
    match waiting {
        Some((until, ips)) => Err(Refusal::Waiting { tor, until, ips }),
        None => Err(Refusal::Full { tor, counts }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::*;

    fn pool() -> Pool {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        Pool {
            family: Default::default(),
            name: "web".into(),
            namespace: "default".into(),
            app: "web".into(),
            policy: Policy::Auto,
            tors: vec!["r1".into(), "r2".into()],
            ips: [
                ("r1".to_string(), vec![ip("10.1.0.10"), ip("10.1.0.11")]),
                ("r2".to_string(), vec![ip("10.2.0.10")]),
            ]
            .into(),
            allow_namespaces: vec![],
            allocatable_after: BTreeMap::new(),
            owner: None,
            op: None,
        }
    }

    fn key(c: &str) -> AttachmentKey {
        AttachmentKey {
            node: "n1".into(),
            container_id: c.into(),
            ifname: "eth0".into(),
        }
    }

    fn attached(ip: &str, c: &str, bound: bool) -> (IpAddr, Arc<Lease>) {
        let ip: IpAddr = ip.parse().unwrap();
        let pod = PodRef {
            namespace: "default".into(),
            name: format!("pod-{c}"),
            uid: String::new(),
        };
        (
            ip,
            Arc::new(Lease {
                ipv6: None,
                ip,
                pool: "web".into(),
                tor: "r1".into(),
                binding: bound.then(|| pod.clone()),
                attachment: Some(Attachment {
                    key: key(c),
                    pod,
                    netns: String::new(),
                    network: "moor".into(),
                    state: AttachmentState::Ready,
                    created_unix: 0,
                    created_binding: bound,
                }),
                evict: false,
                quarantine: None,
            }),
        )
    }

    #[test]
    fn takes_lowest_free_on_the_node_tor() {
        let p = pool();
        let leases = BTreeMap::from([attached("10.1.0.10", "a", false)]);
        let k = key("b");
        let d = decide(&AddInput {
            pool: &p,
            tor: "r1",
            segments: &["r1".to_string()],
            leases: &leases,
            binding: None,
            key: &k,
            keeps_ip: true,
            now_unix: 0,
        });
        assert_eq!(
            d,
            Ok(AddDecision::Take {
                ip: "10.1.0.11".parse().unwrap(),
                segment: "r1".into(),
                new_binding: true
            })
        );
        let d = decide(&AddInput {
            pool: &p,
            tor: "r2",
            segments: &["r2".to_string()],
            leases: &leases,
            binding: None,
            key: &k,
            keeps_ip: false,
            now_unix: 0,
        });
        assert_eq!(
            d,
            Ok(AddDecision::Take {
                ip: "10.2.0.10".parse().unwrap(),
                segment: "r2".into(),
                new_binding: false
            })
        );
    }

    #[test]
    fn new_ips_are_given_out_only_after_their_whitelist_delay() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut p = pool();
        p.allocatable_after.insert(ip("10.1.0.10"), 100);
        p.allocatable_after.insert(ip("10.1.0.11"), 90);
        let leases = BTreeMap::new();
        let k = key("a");
        let at = |now| {
            decide(&AddInput {
                pool: &p,
                tor: "r1",
                segments: &["r1".to_string()],
                leases: &leases,
                binding: None,
                key: &k,
                keeps_ip: false,
                now_unix: now,
            })
        };
        assert_eq!(
            at(89),
            Err(Refusal::Waiting {
                tor: "r1".into(),
                until: 90,
                ips: 2
            })
        );
        assert!(matches!(at(90), Ok(AddDecision::Take { ip: x, .. }) if x == ip("10.1.0.11")));
        assert!(matches!(at(100), Ok(AddDecision::Take { ip: x, .. }) if x == ip("10.1.0.10")));
        // A binding is honoured whatever the delay: the IP is the pod's.
        let b = Binding {
            pod: PodRef::default(),
            pool: "web".into(),
            ip: ip("10.1.0.10"),
            tor: "r1".into(),
        };
        let bound = decide(&AddInput {
            pool: &p,
            tor: "r1",
            segments: &["r1".to_string()],
            leases: &leases,
            binding: Some(&b),
            key: &k,
            keeps_ip: true,
            now_unix: 0,
        });
        assert!(matches!(bound, Ok(AddDecision::Take { ip: x, .. }) if x == b.ip));
    }

    #[test]
    fn full_pool_counts_what_holds_it() {
        let p = pool();
        let leases = BTreeMap::from([
            attached("10.1.0.10", "a", false),
            attached("10.1.0.11", "b", true),
        ]);
        let k = key("c");
        let d = decide(&AddInput {
            pool: &p,
            tor: "r1",
            segments: &["r1".to_string()],
            leases: &leases,
            binding: None,
            key: &k,
            keeps_ip: false,
            now_unix: 0,
        });
        assert_eq!(
            d,
            Err(Refusal::Full {
                tor: "r1".into(),
                counts: PoolCounts {
                    total: 2,
                    bound: 0,
                    in_use: 2,
                    free: 0
                }
            })
        );
        let d = decide(&AddInput {
            pool: &p,
            tor: "r9",
            segments: &["r9".to_string()],
            leases: &leases,
            binding: None,
            key: &k,
            keeps_ip: false,
            now_unix: 0,
        });
        assert!(matches!(d, Err(Refusal::NotOnTor { .. })));
    }

    #[test]
    fn binding_wins_or_refuses_clearly() {
        let p = pool();
        let b = Binding {
            pod: PodRef::default(),
            pool: "web".into(),
            ip: "10.1.0.11".parse().unwrap(),
            tor: "r1".into(),
        };
        let leases = BTreeMap::new();
        let k = key("c");
        let segs = |t: &str| vec![t.to_string()];
        let (r1, r2) = (segs("r1"), segs("r2"));
        let input = |tor, binding| AddInput {
            pool: &p,
            tor,
            segments: if tor == "r1" { &r1 } else { &r2 },
            leases: &leases,
            binding,
            key: &k,
            keeps_ip: true,
            now_unix: 0,
        };
        assert_eq!(
            decide(&input("r1", Some(&b))),
            Ok(AddDecision::Take {
                ip: b.ip,
                segment: "r1".into(),
                new_binding: false
            })
        );
        assert!(matches!(
            decide(&input("r2", Some(&b))),
            Err(Refusal::WrongTor { .. })
        ));
        let other = Binding {
            pool: "db".into(),
            ..b.clone()
        };
        assert!(matches!(
            decide(&input("r1", Some(&other))),
            Err(Refusal::OtherPool { .. })
        ));
        let held = BTreeMap::from([attached("10.1.0.11", "old", true)]);
        let d = decide(&AddInput {
            pool: &p,
            tor: "r1",
            segments: &["r1".to_string()],
            leases: &held,
            binding: Some(&b),
            key: &k,
            keeps_ip: true,
            now_unix: 0,
        });
        assert!(matches!(d, Err(Refusal::StillAttached { .. })));
    }

    #[test]
    fn segments_of_the_node_tor_are_served_and_named_when_full() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // A pool on segment r1-db of ToR r1 (and on ToR r2's own segment).
        let p = Pool {
            ips: [
                ("r1-db".to_string(), vec![ip("10.5.0.10")]),
                ("r2".to_string(), vec![ip("10.2.0.10")]),
            ]
            .into(),
            ..pool()
        };
        let on_r1 = vec!["r1".to_string(), "r1-db".to_string()];
        let k = key("c");
        let empty = BTreeMap::new();
        let input = |leases, binding| AddInput {
            pool: &p,
            tor: "r1",
            segments: &on_r1,
            leases,
            binding,
            key: &k,
            keeps_ip: true,
            now_unix: 0,
        };
        assert_eq!(
            decide(&input(&empty, None)),
            Ok(AddDecision::Take {
                ip: ip("10.5.0.10"),
                segment: "r1-db".into(),
                new_binding: true
            })
        );
        let mut held = attached("10.5.0.10", "a", false);
        Arc::make_mut(&mut held.1).tor = "r1-db".into();
        let leases = BTreeMap::from([held]);
        match decide(&input(&leases, None)) {
            Err(Refusal::Full { tor, counts }) => {
                assert_eq!(tor, "r1 (segment r1-db)");
                assert_eq!((counts.total, counts.in_use), (1, 1));
            }
            other => panic!("{other:?}"),
        }
        // A pod bound on ToR r2 is refused on r1 even though the pool has
        // IPs here, and the refusal names the segment it is bound to.
        let b = Binding {
            pod: PodRef::default(),
            pool: "web".into(),
            ip: ip("10.2.0.10"),
            tor: "r2".into(),
        };
        assert_eq!(
            decide(&input(&empty, Some(&b))),
            Err(Refusal::WrongTor {
                ip: b.ip,
                bound_segment: "r2".into(),
                node_tor: "r1".into()
            })
        );
    }

    #[test]
    fn pools_being_created_or_deleted_and_ips_being_given_back_are_refused() {
        use crate::core::{PoolOp, PoolStep};
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let on_r1 = vec!["r1".to_string()];
        let k = key("c");
        let empty = BTreeMap::new();
        let decide_for = |p: &Pool| {
            decide(&AddInput {
                pool: p,
                tor: "r1",
                segments: &on_r1,
                leases: &empty,
                binding: None,
                key: &k,
                keeps_ip: false,
                now_unix: 0,
            })
        };
        let with = |step| Pool {
            op: Some(PoolOp {
                since_unix: 0,
                why: None,
                step,
            }),
            ..pool()
        };
        let deleting = with(PoolStep::Deleting {
            cooling_until: 0,
            leases_done: false,
        });
        assert_eq!(
            decide_for(&deleting),
            Err(Refusal::Changing {
                what: "being deleted"
            })
        );
        let creating = with(PoolStep::Carving {
            creating: true,
            todo: BTreeMap::new(),
            explicit: BTreeMap::new(),
            carved: BTreeMap::new(),
            bind: vec![],
            allocatable_after: 0,
        });
        assert_eq!(
            decide_for(&creating),
            Err(Refusal::Changing {
                what: "being created"
            })
        );
        // A shrink giving back 10.1.0.10: the other IP of r1 is taken.
        let shrinking = with(PoolStep::GivingBack {
            ips: [("r1".to_string(), vec![ip("10.1.0.10")])].into(),
            cooling_until: 0,
        });
        match decide_for(&shrinking) {
            Ok(AddDecision::Take { ip: got, .. }) => assert_eq!(got, ip("10.1.0.11")),
            other => panic!("{other:?}"),
        }
        let gone = with(PoolStep::GivingBack {
            ips: [("r1".to_string(), vec![ip("10.1.0.10"), ip("10.1.0.11")])].into(),
            cooling_until: 0,
        });
        assert!(matches!(decide_for(&gone), Err(Refusal::Full { .. })));
        // A grow in progress hands out the IPs the pool already has.
        let growing = with(PoolStep::Carving {
            creating: false,
            todo: BTreeMap::new(),
            explicit: BTreeMap::new(),
            carved: BTreeMap::new(),
            bind: vec![],
            allocatable_after: 0,
        });
        assert!(decide_for(&growing).is_ok());
    }
}
