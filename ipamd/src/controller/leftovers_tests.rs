use std::collections::HashSet;
use std::net::IpAddr;

use proptest::prelude::*;

use super::*;
use crate::core::{AttachmentKey, AttachmentState, Quarantine};

const GRACE: u64 = 600;
const T0: u64 = 1_700_000_000;

fn pod(name: &str, uid: &str) -> PodRef {
    PodRef {
        namespace: "shop".into(),
        name: name.into(),
        uid: uid.into(),
    }
}

fn ip(n: u8) -> IpAddr {
    IpAddr::from([10, 1, 0, n])
}

/// A lease of pool shop-db: bound to `bound` (if any), attached to pod
/// `attached` = (name, uid, node) (if any).
fn lease(n: u8, bound: Option<&str>, attached: Option<(&str, &str, &str)>) -> Lease {
    Lease {
        ipv6: None,
        ip: ip(n),
        pool: "shop-db".into(),
        tor: "t1".into(),
        binding: bound.map(|b| pod(b, "")),
        attachment: attached.map(|(name, uid, node)| Attachment {
            key: AttachmentKey {
                node: node.into(),
                container_id: format!("c-{name}-{uid}"),
                ifname: "eth0".into(),
            },
            pod: pod(name, uid),
            netns: format!("/run/netns/{name}"),
            network: "moor".into(),
            state: AttachmentState::Ready,
            created_unix: T0 - 1000,
            created_binding: false,
        }),
        evict: false,
        quarantine: None,
    }
}

fn world(pods: &[(&str, &str)], sets: &[&str], nodes: &[&str], agents: &[&str]) -> World {
    World {
        pods: pods
            .iter()
            .map(|(n, u)| (("shop".to_string(), n.to_string()), u.to_string()))
            .collect(),
        statefulsets: sets
            .iter()
            .map(|s| ("shop".to_string(), s.to_string()))
            .collect(),
        nodes: nodes
            .iter()
            .map(|n| (n.to_string(), NodeHealth::Ready))
            .collect(),
        live_agents: agents.iter().map(|a| a.to_string()).collect(),
    }
}

fn run(leases: &[Lease], w: &World, clocks: &mut Clocks, now: u64) -> Vec<(IpAddr, &'static str)> {
    decide(leases, &HashSet::new(), w, clocks, now, GRACE)
        .iter()
        .map(|r| (r.ip, r.kind()))
        .collect()
}

#[test]
fn statefulset_names() {
    assert_eq!(statefulset_of("db-4"), Some("db"));
    assert_eq!(statefulset_of("my-db-12"), Some("my-db"));
    assert_eq!(statefulset_of("db-0"), Some("db"));
    for bare in [
        "db",
        "db-",
        "-4",
        "db-04",
        "db-x",
        "db-+4",
        "db-99999999999",
    ] {
        assert_eq!(statefulset_of(bare), None, "{bare}");
    }
}

/// Issue 11: scale 3 -> 1 -> 3 keeps db-1 and db-2's IPs, however long
/// the StatefulSet stays scaled down.
#[test]
fn scale_down_keeps_bindings_while_the_statefulset_exists() {
    let leases = [
        lease(10, Some("db-0"), Some(("db-0", "u0", "n1"))),
        lease(11, Some("db-1"), None),
        lease(12, Some("db-2"), None),
    ];
    let scaled_down = world(&[("db-0", "u0")], &["db"], &["n1"], &["n1"]);
    let mut clocks = Clocks::default();
    for t in [T0, T0 + GRACE, T0 + 100 * GRACE] {
        assert_eq!(run(&leases, &scaled_down, &mut clocks, t), []);
    }
    assert_eq!(clocks, Clocks::default(), "nothing is absent");
}

/// `kubectl delete sts --cascade=orphan`: the pods live on and keep their
/// IPs; once they are deleted too, the grace runs, then the bindings go.
#[test]
fn an_orphaning_delete_keeps_bindings_while_the_pods_live() {
    let leases = [lease(10, Some("db-0"), None), lease(11, Some("db-1"), None)];
    let orphans = world(&[("db-0", "u0"), ("db-1", "u1")], &[], &["n1"], &["n1"]);
    let mut clocks = Clocks::default();
    assert_eq!(run(&leases, &orphans, &mut clocks, T0), []);
    assert_eq!(run(&leases, &orphans, &mut clocks, T0 + 10 * GRACE), []);
    let gone = world(&[], &[], &["n1"], &["n1"]);
    let deleted = T0 + 11 * GRACE;
    assert_eq!(run(&leases, &gone, &mut clocks, deleted), []);
    assert_eq!(run(&leases, &gone, &mut clocks, deleted + GRACE - 1), []);
    let due = decide(
        &leases,
        &HashSet::new(),
        &gone,
        &mut clocks,
        deleted + GRACE,
        GRACE,
    );
    assert_eq!(due.len(), 2);
    assert_eq!(
        due[0].reason,
        Reason::PodGone {
            statefulset: Some("db".into()),
            since_unix: deleted
        }
    );
    let why = due[0].why(GRACE);
    assert!(
        why.contains("no pod shop/db-0 and no StatefulSet shop/db has existed since"),
        "{why}"
    );
}

#[test]
fn a_pod_that_comes_back_restarts_the_grace() {
    let leases = [lease(10, Some("redis"), None)];
    let gone = world(&[], &[], &[], &[]);
    let back = world(&[("redis", "u2")], &[], &[], &[]);
    let mut clocks = Clocks::default();
    assert_eq!(run(&leases, &gone, &mut clocks, T0), []);
    assert_eq!(run(&leases, &back, &mut clocks, T0 + GRACE - 1), []);
    assert_eq!(run(&leases, &gone, &mut clocks, T0 + GRACE), []);
    assert_eq!(run(&leases, &gone, &mut clocks, T0 + 2 * GRACE - 1), []);
    let due = decide(
        &leases,
        &HashSet::new(),
        &gone,
        &mut clocks,
        T0 + 2 * GRACE,
        GRACE,
    );
    assert_eq!(
        due[0].reason,
        Reason::PodGone {
            statefulset: None,
            since_unix: T0 + GRACE
        },
        "a bare pod's binding: its clock started when it went the second time"
    );
}

/// A deleted pod whose DEL has not come yet keeps its IP attached: the
/// binding waits for the DEL, then goes at once if the grace has passed.
#[test]
fn an_attached_binding_waits_for_its_detach() {
    let attached = [lease(10, Some("db-3"), Some(("db-3", "u3", "n1")))];
    let detached = [lease(10, Some("db-3"), None)];
    let gone = world(&[], &[], &["n1"], &["n1"]);
    let mut clocks = Clocks::default();
    assert_eq!(run(&attached, &gone, &mut clocks, T0), []);
    assert_eq!(run(&attached, &gone, &mut clocks, T0 + 5 * GRACE), []);
    assert_eq!(
        run(&detached, &gone, &mut clocks, T0 + 5 * GRACE + 1),
        [(ip(10), "binding")]
    );
}

/// Issue 11: the pod's node is deleted; the pod is re-created elsewhere
/// (a new uid): the old attachment goes, the binding stays.
#[test]
fn a_dead_nodes_attachment_goes_and_its_binding_stays() {
    let leases = [lease(10, Some("db-1"), Some(("db-1", "old", "n1")))];
    let mut clocks = Clocks::default();
    // Node deleted, agent silent, pod re-created with another uid.
    let w = world(&[("db-1", "new")], &["db"], &["n2"], &["n2"]);
    let due = decide(&leases, &HashSet::new(), &w, &mut clocks, T0, GRACE);
    assert_eq!(due.len(), 1, "{due:?}");
    assert_eq!(due[0].kind(), "attachment");
    assert_eq!(
        due[0].reason,
        Reason::NodeGone {
            node: "n1".into(),
            not_ready_since: None
        }
    );
    assert!(due[0].why(GRACE).contains("node n1 was deleted"));
    // Each condition alone keeps it: the old pod still exists; the agent
    // still reports; the Node is Ready.
    for keep in [
        world(&[("db-1", "old")], &["db"], &["n2"], &["n2"]),
        world(&[("db-1", "new")], &["db"], &["n2"], &["n1", "n2"]),
        world(&[("db-1", "new")], &["db"], &["n1", "n2"], &["n2"]),
    ] {
        assert_eq!(run(&leases, &keep, &mut clocks, T0), [], "{keep:?}");
    }
}

#[test]
fn a_not_ready_node_counts_after_the_grace() {
    let leases = [lease(10, Some("db-1"), Some(("db-1", "old", "n1")))];
    let mut w = world(&[], &["db"], &[], &[]);
    // With the condition's transition time.
    w.nodes.insert(
        "n1".into(),
        NodeHealth::NotReady {
            since_unix: Some(T0),
        },
    );
    let mut clocks = Clocks::default();
    assert_eq!(run(&leases, &w, &mut clocks, T0 + GRACE - 1), []);
    assert_eq!(
        run(&leases, &w, &mut clocks, T0 + GRACE),
        [(ip(10), "attachment")]
    );
    // Without one: from when the controller first saw it NotReady.
    w.nodes
        .insert("n1".into(), NodeHealth::NotReady { since_unix: None });
    let mut clocks = Clocks::default();
    assert_eq!(run(&leases, &w, &mut clocks, T0 + 5 * GRACE), []);
    assert_eq!(clocks.not_ready.get("n1"), Some(&(T0 + 5 * GRACE)));
    assert_eq!(run(&leases, &w, &mut clocks, T0 + 6 * GRACE - 1), []);
    assert_eq!(
        run(&leases, &w, &mut clocks, T0 + 6 * GRACE),
        [(ip(10), "attachment")]
    );
}

/// Pod, StatefulSet and node all gone: the attachment, then the binding,
/// in one pass once the grace has passed.
#[test]
fn attachment_then_binding_in_one_pass() {
    let leases = [lease(10, Some("db-1"), Some(("db-1", "old", "n1")))];
    let w = world(&[], &[], &[], &[]);
    let mut clocks = Clocks::default();
    assert_eq!(run(&leases, &w, &mut clocks, T0), [(ip(10), "attachment")]);
    assert_eq!(
        run(&leases, &w, &mut clocks, T0 + GRACE),
        [(ip(10), "attachment"), (ip(10), "binding")]
    );
    // An evicted IP's binding goes with the attachment: listed once.
    let mut evicted = leases.clone();
    evicted[0].evict = true;
    assert_eq!(
        run(&evicted, &w, &mut clocks, T0 + GRACE),
        [(ip(10), "attachment")]
    );
}

#[test]
fn sticky_pools_and_quarantined_ips_are_left_alone() {
    let mut q = lease(11, Some("web-x"), None);
    q.quarantine = Some(Quarantine {
        mac: "02:00:00:00:00:01".into(),
        node: "n1".into(),
        since_unix: T0,
    });
    let leases = [lease(10, Some("web-x"), None), q];
    let w = world(&[], &[], &[], &[]);
    let sticky: HashSet<String> = ["shop-db".to_string()].into();
    let mut clocks = Clocks::default();
    for t in [T0, T0 + GRACE, T0 + 9 * GRACE] {
        assert!(decide(&leases, &sticky, &w, &mut clocks, t, GRACE).is_empty());
    }
    let mut clocks = Clocks::default();
    decide(&leases, &HashSet::new(), &w, &mut clocks, T0, GRACE);
    let due = decide(&leases, &HashSet::new(), &w, &mut clocks, T0 + GRACE, GRACE);
    assert_eq!(due.len(), 1, "the quarantined IP waits for the operator");
    assert_eq!(due[0].ip, ip(10));
}

// ------------------------------------------------------------ properties

const NAMES: [&str; 4] = ["db-0", "db-1", "web", "db-x"];
const NODES: [&str; 3] = ["n1", "n2", "n3"];

fn arb_lease(n: u8) -> impl Strategy<Value = Lease> {
    (
        proptest::option::of(0..NAMES.len()),
        proptest::option::of((0..NAMES.len(), 0..3u8, 0..NODES.len())),
        any::<bool>(),
    )
        .prop_map(move |(b, a, evict)| {
            let mut l = lease(
                n,
                b.map(|i| NAMES[i]),
                a.map(|(i, u, node)| (NAMES[i], ["u0", "u1", ""][u as usize], NODES[node])),
            );
            l.evict = evict && l.attachment.is_some();
            l
        })
}

fn arb_health() -> impl Strategy<Value = Option<NodeHealth>> {
    prop_oneof![
        Just(None),
        Just(Some(NodeHealth::Ready)),
        Just(Some(NodeHealth::NotReady { since_unix: None })),
        (0..3 * GRACE).prop_map(|d| Some(NodeHealth::NotReady {
            since_unix: Some(T0 + d)
        })),
    ]
}

fn arb_world() -> impl Strategy<Value = World> {
    (
        proptest::collection::vec((0..NAMES.len(), 0..2u8), 0..4),
        any::<bool>(),
        proptest::collection::vec(arb_health(), NODES.len()),
        proptest::collection::vec(any::<bool>(), NODES.len()),
    )
        .prop_map(|(pods, set, health, agents)| World {
            pods: pods
                .into_iter()
                .map(|(i, u)| {
                    (
                        ("shop".to_string(), NAMES[i].to_string()),
                        ["u0", "u1"][u as usize].to_string(),
                    )
                })
                .collect(),
            statefulsets: if set {
                [("shop".to_string(), "db".to_string())].into()
            } else {
                HashSet::new()
            },
            nodes: NODES
                .iter()
                .zip(health)
                .filter_map(|(n, h)| h.map(|h| (n.to_string(), h)))
                .collect(),
            live_agents: NODES
                .iter()
                .zip(agents)
                .filter(|(_, a)| *a)
                .map(|(n, _)| n.to_string())
                .collect(),
        })
}

proptest! {
    /// Over any sequence of worlds and times: nothing is released that a
    /// pod, its StatefulSet, a live agent or a Ready node still vouches for;
    /// a binding goes only once its pod has been absent for the whole
    /// grace, as seen by the passes, and only when nothing stays attached.
    #[test]
    fn releases_are_always_justified(
        leases in (0..6u8).prop_flat_map(|n| (0..n).map(|i| arb_lease(10 + i)).collect::<Vec<_>>()),
        steps in proptest::collection::vec((arb_world(), 0..GRACE), 1..8),
    ) {
        let mut clocks = Clocks::default();
        let mut now = T0;
        // Per pod name: since when every pass saw it absent.
        let mut absent_since: std::collections::HashMap<String, u64> = Default::default();
        for (w, dt) in steps {
            now += dt;
            let uids: HashSet<&String> = w.pods.values().collect();
            for name in NAMES {
                let present = w.has_pod("shop", name)
                    || statefulset_of(name).is_some_and(|s| w.has_statefulset("shop", s));
                if present {
                    absent_since.remove(name);
                } else {
                    absent_since.entry(name.to_string()).or_insert(now);
                }
            }
            let due = decide(&leases, &HashSet::new(), &w, &mut clocks, now, GRACE);
            for r in &due {
                let l = leases.iter().find(|l| l.ip == r.ip).unwrap();
                match &r.target {
                    Target::Attachment(a) => {
                        prop_assert_eq!(Some(a), l.attachment.as_ref());
                        let node = &a.key.node;
                        prop_assert!(!w.live_agents.contains(node));
                        prop_assert!(w.nodes.get(node) != Some(&NodeHealth::Ready));
                        if a.pod.uid.is_empty() {
                            prop_assert!(!w.has_pod("shop", &a.pod.name));
                        } else {
                            prop_assert!(!uids.contains(&a.pod.uid));
                        }
                        if let Some(NodeHealth::NotReady { since_unix: Some(s) }) = w.nodes.get(node) {
                            prop_assert!(now >= s + GRACE);
                        }
                    }
                    Target::Binding(p) => {
                        prop_assert_eq!(Some(p), l.binding.as_ref());
                        let since = absent_since.get(&p.name).copied();
                        prop_assert!(since.is_some_and(|s| now >= s + GRACE), "{:?} since {:?}", p, since);
                        let detached_here = due.iter().any(|o| o.ip == r.ip && o.kind() == "attachment");
                        prop_assert!(l.attachment.is_none() || (detached_here && !l.evict));
                    }
                }
            }
            // Deciding again at the same moment decides the same.
            let mut again = clocks.clone();
            prop_assert_eq!(decide(&leases, &HashSet::new(), &w, &mut again, now, GRACE), due);
            prop_assert_eq!(again, clocks.clone());
        }
    }
}
