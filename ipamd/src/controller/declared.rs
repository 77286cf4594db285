//! Pools declared on workloads: what a workload's annotations ask for,
//! decided without I/O.
//!
//! `moor.io/pool-size: "N"` on a StatefulSet, Deployment, DaemonSet,
//! ReplicaSet or Job asks for a pool of at least N IPs (more when its pods
//! need more, `size.rs`) for the app the node agent gives the workload's
//! pods (its namespace and the workload's name, `core/pod.rs`). Optional:
//! `moor.io/tors: "t1,t2"` (the ToRs or segments to carve from; default
//! all), `moor.io/policy: auto|sticky|release`, `moor.io/pool: NAME` (the
//! pool's name), `moor.io/whitelist-delay: "30s"` (new IPs wait that long
//! before pods may take them), `moor.io/retain: "true"` (the pool outlives
//! the workload), `moor.io/ip-family: ipv4|ipv6|dual` (default: every
//! family its ToRs have; set when the pool is made). `moor.io/ips: "A,B"`
//! instead makes a pool of exactly
//! those IPs (bring your own), bound to a StatefulSet's ordinals in order.
//! Without a name the pool is `<namespace>-<workload>`, shortened with a
//! hash where that is no pool name (longer than a DNS label, or holding a
//! '.').

use std::net::IpAddr;

use crate::core::{validate, IpFamily, PodRef, Policy, PoolOwner};
use crate::ipam::PoolSpec;
use crate::kubernetes::workloads::Workload;

use super::size::pods_at_most;

pub const POOL_SIZE_ANNOTATION: &str = "moor.io/pool-size";
pub const TORS_ANNOTATION: &str = "moor.io/tors";
pub const POLICY_ANNOTATION: &str = "moor.io/policy";
pub const IPS_ANNOTATION: &str = "moor.io/ips";
pub const RETAIN_ANNOTATION: &str = "moor.io/retain";
pub const WHITELIST_DELAY_ANNOTATION: &str = "moor.io/whitelist-delay";
pub const FAMILY_ANNOTATION: &str = "moor.io/ip-family";
pub use crate::core::POOL_ANNOTATION;

/// A DNS label's limit, the pool-name rule.
const MAX_NAME: usize = 63;
/// Longest whitelist delay: a day (a longer one is a typo).
const MAX_DELAY_SECS: u64 = 86_400;
/// FNV-1a, 32 bits: a short, stable digest for derived names (the same
/// name on every replica and release).
fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The pool name a workload gets when it names none.
pub fn derived_pool_name(namespace: &str, workload: &str) -> String {
    let plain = format!("{namespace}-{workload}");
    if plain.len() <= MAX_NAME && !plain.contains('.') {
        return plain;
    }
    let hash = format!("{:08x}", fnv1a(&format!("{namespace}/{workload}")));
    let mut head: String = plain
        .replace('.', "-")
        .chars()
        .take(MAX_NAME - hash.len() - 1)
        .collect();
    while head.ends_with('-') {
        head.pop();
    }
    format!("{head}-{hash}")
}

/// What a workload's annotations declare.
#[derive(Debug, Clone)]
pub struct Declared {
    /// The pool to create (its size already `target`), owner set.
    pub spec: PoolSpec,
    /// `moor.io/pool` named the pool (else the name is derived, and an
    /// existing pool of the app is adopted whatever its name).
    pub named: bool,
    /// The size the pool follows: the annotation's or the pods', whichever
    /// is more; the number of IPs for a pool of explicit IPs.
    pub target: u32,
    /// The annotation's size and the pods' count (for messages).
    pub asked: u32,
    pub pods: u32,
}

impl Declared {
    /// A pool of explicit IPs (`moor.io/ips`): never resized to a count.
    pub fn explicit(&self) -> bool {
        !self.spec.ips.is_empty()
    }
}

/// The pool a workload asks for; `Ok(None)` when it asks for none; `Err`
/// saying what is wrong with its annotations (the workload's kind and
/// name, the annotation and the fix).
pub fn declared_pool(w: &Workload) -> Result<Option<Declared>, String> {
    let a = &w.annotations;
    let (size, ips) = (a.get(POOL_SIZE_ANNOTATION), a.get(IPS_ANNOTATION));
    if size.is_none() && ips.is_none() {
        return Ok(None);
    }
    let what = |e: &str| format!("{}: {e}", w.describe());
    let ips = match ips {
        Some(list) => explicit_ips(list).map_err(|e| what(&e))?,
        None => Vec::new(),
    };
    let asked = match size {
        Some(size) => {
            let n: u32 = size.trim().parse().map_err(|_| {
                what(&format!(
                    "{POOL_SIZE_ANNOTATION} {size:?} is not a number of IPs"
                ))
            })?;
            validate::pool_size(n).map_err(|e| what(&format!("{POOL_SIZE_ANNOTATION}: {e}")))?
        }
        None => ips.len() as u32,
    };
    if !ips.is_empty() && asked != ips.len() as u32 {
        return Err(what(&format!(
            "{POOL_SIZE_ANNOTATION} {asked} but {IPS_ANNOTATION} lists {} IPs: leave {POOL_SIZE_ANNOTATION} out (the IPs make the pool)",
            ips.len()
        )));
    }
    let pods = pods_at_most(&w.replicas);
    let target = if ips.is_empty() {
        let t = asked.max(pods);
        validate::pool_size(t).map_err(|e| what(&format!("{pods} pods: {e}")))?
    } else {
        asked
    };
    let named = a.get(POOL_ANNOTATION).is_some_and(|n| !n.is_empty());
    let name = match a.get(POOL_ANNOTATION).filter(|n| !n.is_empty()) {
        Some(n) => {
            validate::pool_name(n).map_err(|e| what(&format!("{POOL_ANNOTATION}: {e}")))?;
            n.clone()
        }
        None => derived_pool_name(&w.namespace, &w.name),
    };
    let tors = a
        .get(TORS_ANNOTATION)
        .map(|t| {
            t.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let policy = match a.get(POLICY_ANNOTATION).map(String::as_str) {
        None | Some("") | Some("auto") => Policy::Auto,
        Some("sticky") => Policy::Sticky,
        Some("release") => Policy::Release,
        Some(other) => {
            return Err(what(&format!(
                "{POLICY_ANNOTATION} {other:?} is not auto, sticky or release"
            )))
        }
    };
    let retain = match a.get(RETAIN_ANNOTATION).map(|s| s.trim()) {
        None | Some("") | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(what(&format!(
                "{RETAIN_ANNOTATION} {other:?} is not \"true\" or \"false\""
            )))
        }
    };
    let delay_secs = match a.get(WHITELIST_DELAY_ANNOTATION) {
        None => 0,
        Some(d) => seconds(d).map_err(|e| what(&format!("{WHITELIST_DELAY_ANNOTATION}: {e}")))?,
    };
    let family = match a.get(FAMILY_ANNOTATION).map(|f| f.trim()) {
        None | Some("") => None,
        Some(f) => Some(IpFamily::parse(f).ok_or_else(|| {
            what(&format!(
                "{FAMILY_ANNOTATION} {f:?} is not ipv4, ipv6 or dual (or leave it out: every family the pool's ToRs have)"
            ))
        })?),
    };
    // A StatefulSet's pods are its ordinals: db-0 keeps the first IP.
    let bind = if w.kind == "StatefulSet" {
        (0..ips.len())
            .map(|i| PodRef {
                namespace: w.namespace.clone(),
                name: format!("{}-{i}", w.name),
                uid: String::new(),
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(Some(Declared {
        spec: PoolSpec {
            name,
            namespace: w.namespace.clone(),
            app: w.name.clone(),
            size: if ips.is_empty() { target } else { 0 },
            tors,
            policy,
            allow_namespaces: Vec::new(),
            ips,
            delay_secs,
            owner: Some(PoolOwner {
                kind: w.kind.to_string(),
                name: w.name.clone(),
                uid: w.uid.clone(),
                retain,
            }),
            bind,
            family,
        },
        named,
        target,
        asked,
        pods,
    }))
}

/// `moor.io/ips`: IPv4 addresses separated by commas (or white space).
fn explicit_ips(list: &str) -> Result<Vec<IpAddr>, String> {
    let ips: Vec<IpAddr> = list
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse().map_err(|_| {
                format!("{IPS_ANNOTATION}: {s:?} is not an IPv4 address: list them like \"10.1.0.5,10.1.0.6\"")
            })
        })
        .collect::<Result<_, _>>()?;
    if ips.is_empty() {
        return Err(format!(
            "{IPS_ANNOTATION} lists no IP: list them like \"10.1.0.5,10.1.0.6\", or leave it out"
        ));
    }
    Ok(ips)
}

/// `30`, `30s`, `5m`: seconds, at most a day.
fn seconds(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (num, unit) = match t.strip_suffix('m') {
        Some(n) => (n, 60),
        None => (t.strip_suffix('s').unwrap_or(t), 1),
    };
    let n: u64 = num.trim().parse().map_err(|_| {
        format!("{text:?} is not a duration: write seconds (30, 30s) or minutes (5m)")
    })?;
    let secs = n.saturating_mul(unit);
    if secs > MAX_DELAY_SECS {
        return Err(format!("{text:?} is longer than a day"));
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::kubernetes::workloads::{Replicas, Surge};

    fn workload(
        kind: &'static str,
        ns: &str,
        name: &str,
        replicas: Replicas,
        annotations: &[(&str, &str)],
    ) -> Workload {
        Workload {
            kind,
            api_version: "apps/v1",
            namespace: ns.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            replicas,
        }
    }

    fn sts(ns: &str, name: &str, annotations: &[(&str, &str)]) -> Workload {
        workload("StatefulSet", ns, name, Replicas::Fixed(1), annotations)
    }

    #[test]
    fn names_derive_from_namespace_and_workload() {
        assert_eq!(derived_pool_name("shop", "db"), "shop-db");
        let long = "w".repeat(60);
        let n = derived_pool_name("shop", &long);
        assert_eq!(n.len(), 63);
        validate::pool_name(&n).unwrap();
        assert_ne!(n, derived_pool_name("shop", &format!("{long}x")));
        let dotted = derived_pool_name("shop", "web.v2");
        assert!(dotted.starts_with("shop-web-v2-"), "{dotted}");
        validate::pool_name(&dotted).unwrap();
        // Stable across runs and replicas.
        assert_eq!(dotted, derived_pool_name("shop", "web.v2"));
    }

    #[test]
    fn annotations_decide_the_pool() {
        assert!(declared_pool(&sts("shop", "db", &[])).unwrap().is_none());
        let d = declared_pool(&sts(
            "shop",
            "db",
            &[
                (POOL_SIZE_ANNOTATION, "5"),
                (TORS_ANNOTATION, "t1, t2"),
                (POLICY_ANNOTATION, "sticky"),
            ],
        ))
        .unwrap()
        .unwrap();
        let p = &d.spec;
        assert_eq!(
            (
                p.name.as_str(),
                p.namespace.as_str(),
                p.app.as_str(),
                p.size
            ),
            ("shop-db", "shop", "db", 5)
        );
        assert_eq!(p.tors, ["t1", "t2"]);
        assert_eq!(p.policy, Policy::Sticky);
        assert_eq!(p.family, None, "every family its ToRs have");
        let v6 = sts(
            "shop",
            "db",
            &[(POOL_SIZE_ANNOTATION, "5"), (FAMILY_ANNOTATION, " ipv6 ")],
        );
        assert_eq!(
            declared_pool(&v6).unwrap().unwrap().spec.family,
            Some(IpFamily::Ipv6)
        );
        let named = sts(
            "shop",
            "db",
            &[(POOL_SIZE_ANNOTATION, "3"), (POOL_ANNOTATION, "mysql")],
        );
        let named = declared_pool(&named).unwrap().unwrap();
        assert_eq!((named.spec.name.as_str(), named.named), ("mysql", true));
        assert_eq!(p.owner.as_ref().unwrap().uid, "uid-db");
        assert!(!p.owner.as_ref().unwrap().retain);
        for bad in [
            (POOL_SIZE_ANNOTATION, "five"),
            (POOL_SIZE_ANNOTATION, "0"),
            (POLICY_ANNOTATION, "keep"),
            (RETAIN_ANNOTATION, "yes"),
            (WHITELIST_DELAY_ANNOTATION, "soon"),
            (WHITELIST_DELAY_ANNOTATION, "2000m"),
            (POOL_ANNOTATION, "Not_A_Name"),
            (IPS_ANNOTATION, "10.1.0.5,10.1.0"),
            (IPS_ANNOTATION, " , "),
            (FAMILY_ANNOTATION, "ipv5"),
            (FAMILY_ANNOTATION, "IPv4"),
        ] {
            let w = sts("shop", "db", &[(POOL_SIZE_ANNOTATION, "3"), bad]);
            let e = declared_pool(&w).unwrap_err();
            assert!(
                e.contains("StatefulSet shop/db") && e.contains(bad.0),
                "{e}"
            );
        }
        let d = sts(
            "shop",
            "db",
            &[
                (POOL_SIZE_ANNOTATION, "3"),
                (RETAIN_ANNOTATION, "true"),
                (WHITELIST_DELAY_ANNOTATION, "2m"),
            ],
        );
        let d = declared_pool(&d).unwrap().unwrap();
        assert!(d.spec.owner.unwrap().retain);
        assert_eq!(d.spec.delay_secs, 120);
    }

    #[test]
    fn the_pool_covers_the_pods_and_the_annotation() {
        let size = |kind, replicas, n: &str| {
            let w = workload(kind, "shop", "web", replicas, &[(POOL_SIZE_ANNOTATION, n)]);
            let d = declared_pool(&w).unwrap().unwrap();
            assert_eq!(d.spec.size, d.target);
            d.target
        };
        assert_eq!(size("StatefulSet", Replicas::Fixed(8), "5"), 8);
        assert_eq!(size("StatefulSet", Replicas::Fixed(3), "5"), 5);
        let web = Replicas::Rolling {
            replicas: 10,
            surge: Surge::Percent(25),
        };
        assert_eq!(size("Deployment", web, "5"), 13);
        assert_eq!(size("Deployment", web, "20"), 20);
        assert_eq!(size("DaemonSet", Replicas::PerNode(None), "4"), 4);
        assert_eq!(size("DaemonSet", Replicas::PerNode(Some(9)), "4"), 9);
        let job = Replicas::Job {
            parallelism: 6,
            completions: Some(2),
        };
        assert_eq!(size("Job", job, "1"), 2);
        let huge = workload(
            "StatefulSet",
            "shop",
            "web",
            Replicas::Fixed(70_000),
            &[(POOL_SIZE_ANNOTATION, "1")],
        );
        assert!(declared_pool(&huge).unwrap_err().contains("70000 pods"));
    }

    #[test]
    fn explicit_ips_make_the_pool_and_go_to_ordinals_in_order() {
        let w = sts("shop", "db", &[(IPS_ANNOTATION, "10.1.0.6, 10.1.0.5")]);
        let d = declared_pool(&w).unwrap().unwrap();
        assert!(d.explicit());
        assert_eq!(d.target, 2);
        assert_eq!(d.spec.size, 0);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(d.spec.ips, [ip("10.1.0.6"), ip("10.1.0.5")]);
        let pods: Vec<String> = d.spec.bind.iter().map(|p| p.to_string()).collect();
        assert_eq!(pods, ["shop/db-0", "shop/db-1"]);
        // The count must agree; a Deployment's pods have no ordinals.
        let both = sts(
            "shop",
            "db",
            &[(IPS_ANNOTATION, "10.1.0.5"), (POOL_SIZE_ANNOTATION, "2")],
        );
        assert!(declared_pool(&both).unwrap_err().contains("lists 1 IPs"));
        let dep = workload(
            "Deployment",
            "shop",
            "web",
            Replicas::Rolling {
                replicas: 5,
                surge: Surge::None,
            },
            &[(IPS_ANNOTATION, "10.1.0.5")],
        );
        let d = declared_pool(&dep).unwrap().unwrap();
        assert!(d.spec.bind.is_empty());
        assert_eq!(
            d.target, 1,
            "explicit IPs are the pool, whatever the replicas"
        );
    }
}
