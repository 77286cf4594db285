//! Names shaped like the ones Kubernetes and container runtimes make: what
//! ipamd reads a pod's app and stickiness from.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Characters of Kubernetes' generated suffixes (rand.SafeEncodeString).
const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// splitmix64: a tiny deterministic mixer, enough for unique-looking names.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn safe_chars(mut seed: u64, n: usize) -> String {
    (0..n)
        .map(|_| {
            let c = SAFE[(seed % SAFE.len() as u64) as usize] as char;
            seed /= SAFE.len() as u64;
            if seed == 0 {
                seed = mix(c as u64);
            }
            c
        })
        .collect()
}

/// A Deployment pod's name: `APP-<ReplicaSet hash, 10>-<suffix, 5>`, distinct
/// for distinct `seed`s (the suffix encodes the seed). Its IP goes back to the
/// pool on DEL.
pub fn deployment_pod(app: &str, seed: u64) -> String {
    let hash = safe_chars(mix(app.len() as u64 ^ 0x5eed), 10);
    // 27^5 > 14 million distinct suffixes: the seed itself, not a hash of it.
    let mut s = seed % 27u64.pow(5);
    let suffix: String = (0..5)
        .map(|_| {
            let c = SAFE[(s % 27) as usize] as char;
            s /= 27;
            c
        })
        .collect();
    format!("{app}-{hash}-{suffix}")
}

/// A StatefulSet pod's name: `APP-ORDINAL`. It keeps its IP across re-creation.
pub fn statefulset_pod(app: &str, ordinal: u32) -> String {
    format!("{app}-{ordinal}")
}

/// A container id as runtimes make them (64 hex digits), unique in this process
/// and very likely across processes.
pub fn container_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let seed = mix(u64::from(std::process::id()) ^ mix(nanos)) ^ n;
    (0..4)
        .map(|i| format!("{:016x}", mix(seed.wrapping_add(i))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_names_are_distinct_and_well_formed() {
        let names: std::collections::BTreeSet<String> =
            (0..1000).map(|i| deployment_pod("api", i)).collect();
        assert_eq!(names.len(), 1000);
        for n in &names {
            let parts: Vec<&str> = n.split('-').collect();
            assert_eq!(parts.len(), 3, "{n}");
            assert_eq!(parts[1].len(), 10, "{n}");
            assert_eq!(parts[2].len(), 5, "{n}");
            assert!(parts[1..]
                .iter()
                .all(|p| p.bytes().all(|b| SAFE.contains(&b))));
        }
    }

    #[test]
    fn container_ids_are_unique_hex() {
        let a = container_id();
        let b = container_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
