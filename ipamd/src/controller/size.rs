//! How many IPs a workload's pods need at once, from its spec: the size a
//! declared pool grows to (the annotation may ask for more). Pure.

use crate::kubernetes::workloads::{Replicas, Surge};

/// The most pods the workload runs at one time:
/// - StatefulSet, ReplicaSet: its replicas;
/// - Deployment: its replicas plus the rollout's surge (`maxSurge`, a
///   percentage rounded up as the Deployment controller does; none with
///   the `Recreate` strategy);
/// - DaemonSet: the nodes it runs on, once its status says (0 before: the
///   annotation alone sizes the pool);
/// - Job: its parallelism, never more than its completions.
pub fn pods_at_most(r: &Replicas) -> u32 {
    match *r {
        Replicas::Fixed(n) => n,
        Replicas::Rolling { replicas, surge } => {
            replicas.saturating_add(surge_pods(replicas, surge))
        }
        Replicas::PerNode(n) => n.unwrap_or(0),
        Replicas::Job {
            parallelism,
            completions,
        } => completions.map_or(parallelism, |c| parallelism.min(c)),
    }
}

/// Pods a rollout may run above the replicas.
fn surge_pods(replicas: u32, surge: Surge) -> u32 {
    match surge {
        Surge::None => 0,
        Surge::Pods(n) => n,
        Surge::Percent(p) => (u64::from(replicas) * u64::from(p)).div_ceil(100) as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn each_kind_counts_its_pods() {
        assert_eq!(pods_at_most(&Replicas::Fixed(5)), 5);
        let rolling = |replicas, surge| pods_at_most(&Replicas::Rolling { replicas, surge });
        // The default 25%, rounded up: 10 -> 3 more, 4 -> 1, 1 -> 1, 0 -> 0.
        assert_eq!(rolling(10, Surge::Percent(25)), 13);
        assert_eq!(rolling(4, Surge::Percent(25)), 5);
        assert_eq!(rolling(1, Surge::Percent(25)), 2);
        assert_eq!(rolling(0, Surge::Percent(25)), 0);
        assert_eq!(rolling(3, Surge::Pods(2)), 5);
        assert_eq!(rolling(3, Surge::None), 3);
        assert_eq!(rolling(3, Surge::Percent(100)), 6);
        assert_eq!(pods_at_most(&Replicas::PerNode(None)), 0);
        assert_eq!(pods_at_most(&Replicas::PerNode(Some(7))), 7);
        let job = |parallelism, completions| {
            pods_at_most(&Replicas::Job {
                parallelism,
                completions,
            })
        };
        assert_eq!(job(4, None), 4);
        assert_eq!(job(4, Some(2)), 2);
        assert_eq!(job(1, Some(10)), 1);
    }

    proptest! {
        /// A percentage surge is the smallest whole number of pods at or
        /// above that share, and never shrinks as replicas grow.
        #[test]
        fn a_percent_surge_rounds_up(replicas in 0u32..100_000, p in 0u32..=100) {
            let s = surge_pods(replicas, Surge::Percent(p));
            prop_assert!(u64::from(s) * 100 >= u64::from(replicas) * u64::from(p));
            prop_assert!(s == 0 || u64::from(s - 1) * 100 < u64::from(replicas) * u64::from(p));
            prop_assert!(surge_pods(replicas + 1, Surge::Percent(p)) >= s);
        }
    }
}
