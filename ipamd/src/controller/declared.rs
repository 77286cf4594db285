//! Pools declared on workloads: what a workload's annotations ask for,
//! decided without I/O.
//!
//! `moor.io/pool-size: "N"` on a StatefulSet or Deployment asks for a pool
//! of N IPs for the app the node agent gives the workload's pods (its
//! namespace and the workload's name, `core/pod.rs`). Optional: `moor.io/tors: "t1,t2"` (the
//! ToRs or segments to carve from; default all), `moor.io/policy:
//! auto|sticky|release`, `moor.io/pool: NAME` (the pool's name). Without a
//! name it is `<namespace>-<workload>`, shortened with a hash where that is
//! no pool name (longer than a DNS label, or holding a '.').

use crate::core::{validate, Policy};
use crate::ipam::PoolSpec;
use crate::kubernetes::workloads::Workload;

pub const POOL_SIZE_ANNOTATION: &str = "moor.io/pool-size";
pub const TORS_ANNOTATION: &str = "moor.io/tors";
pub const POLICY_ANNOTATION: &str = "moor.io/policy";
pub use crate::core::POOL_ANNOTATION;

/// A DNS label's limit, the pool-name rule.
const MAX_NAME: usize = 63;

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

/// The pool a workload asks for; `Ok(None)` when it asks for none; `Err`
/// saying what is wrong with its annotations.
pub fn declared_pool(w: &Workload) -> Result<Option<PoolSpec>, String> {
    let Some(size) = w.annotations.get(POOL_SIZE_ANNOTATION) else {
        return Ok(None);
    };
    let what = |a: &str| format!("{} {}/{}: {a}", w.kind, w.namespace, w.name);
    let size: u32 = size.trim().parse().map_err(|_| {
        what(&format!(
            "{POOL_SIZE_ANNOTATION} {size:?} is not a number of IPs"
        ))
    })?;
    validate::pool_size(size).map_err(|e| what(&format!("{POOL_SIZE_ANNOTATION}: {e}")))?;
    let name = match w.annotations.get(POOL_ANNOTATION).filter(|n| !n.is_empty()) {
        Some(n) => n.clone(),
        None => derived_pool_name(&w.namespace, &w.name),
    };
    let tors = w
        .annotations
        .get(TORS_ANNOTATION)
        .map(|t| {
            t.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let policy = match w.annotations.get(POLICY_ANNOTATION).map(String::as_str) {
        None | Some("") | Some("auto") => Policy::Auto,
        Some("sticky") => Policy::Sticky,
        Some("release") => Policy::Release,
        Some(other) => {
            return Err(what(&format!(
                "{POLICY_ANNOTATION} {other:?} is not auto, sticky or release"
            )))
        }
    };
    Ok(Some(PoolSpec {
        name,
        namespace: w.namespace.clone(),
        app: w.name.clone(),
        size,
        tors,
        policy,
        allow_namespaces: Vec::new(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sts(ns: &str, name: &str, annotations: &[(&str, &str)]) -> Workload {
        Workload {
            kind: "StatefulSet",
            namespace: ns.into(),
            name: name.into(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
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
        let p = declared_pool(&sts(
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
        let named = sts(
            "shop",
            "db",
            &[(POOL_SIZE_ANNOTATION, "3"), (POOL_ANNOTATION, "mysql")],
        );
        assert_eq!(declared_pool(&named).unwrap().unwrap().name, "mysql");
        for bad in [
            (POOL_SIZE_ANNOTATION, "five"),
            (POOL_SIZE_ANNOTATION, "0"),
            (POLICY_ANNOTATION, "keep"),
        ] {
            let w = sts("shop", "db", &[(POOL_SIZE_ANNOTATION, "3"), bad]);
            let e = declared_pool(&w).unwrap_err();
            assert!(e.contains("StatefulSet shop/db"), "{e}");
        }
    }
}
