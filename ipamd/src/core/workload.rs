//! A pod's app is its workload name, read off the pod name the way Kubernetes
//! builds it. We have no API server on the CNI path, so the name is all we get.

/// What a pod's name says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// The app (workload) name, the key of its pool within the namespace.
    pub app: String,
    /// The name survives re-creation (StatefulSet ordinal or bare pod), so the
    /// pod may keep its IP.
    pub stable_name: bool,
}

/// Characters Kubernetes uses for generated suffixes (k8s.io/apimachinery
/// rand.SafeEncodeString: no vowels, no 0, 1, 3 to avoid words and confusion).
fn is_generated(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len())
        && s.bytes()
            .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
}

/// Reads the workload from a pod name:
/// - Deployment `web-7d9f8c6b5-x2x9z`: ReplicaSet hash + 5-char suffix -> `web`
/// - StatefulSet `web-3`: ordinal -> `web`, stable
/// - DaemonSet / Job / bare ReplicaSet `web-x2x9z`: 5-char suffix -> `web`
/// - anything else is a bare pod: its own name, stable
pub fn workload_of(pod_name: &str) -> Workload {
    let parts: Vec<&str> = pod_name.split('-').collect();
    let n = parts.len();
    let prefix = |drop: usize| parts[..n - drop].join("-");
    if n >= 3 && is_generated(parts[n - 1], 5, 5) && is_generated(parts[n - 2], 6, 10) {
        return Workload {
            app: prefix(2),
            stable_name: false,
        };
    }
    if n >= 2 && !parts[n - 1].is_empty() && parts[n - 1].bytes().all(|b| b.is_ascii_digit()) {
        return Workload {
            app: prefix(1),
            stable_name: true,
        };
    }
    if n >= 2 && is_generated(parts[n - 1], 5, 5) {
        return Workload {
            app: prefix(1),
            stable_name: false,
        };
    }
    Workload {
        app: pod_name.to_string(),
        stable_name: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_of_each_kind() {
        let cases = [
            ("web-3", "web", true),
            ("web-0", "web", true),
            ("mysql-primary-12", "mysql-primary", true),
            ("web-7d9f8c6b5-x2x9z", "web", false),
            ("my-api-5c5b7d9d8f-8x7wq", "my-api", false),
            ("node-exporter-4xkzq", "node-exporter", false),
            ("redis", "redis", true),
            ("redis-cache", "redis-cache", true),
            // An ordinal that happens to look generated is still read as a
            // Deployment only with the hash segment before it.
            ("db-22457", "db", true),
        ];
        for (name, app, stable) in cases {
            assert_eq!(
                workload_of(name),
                Workload {
                    app: app.into(),
                    stable_name: stable
                },
                "{name}"
            );
        }
    }

    proptest! {
        #[test]
        fn statefulset_pods_map_to_their_set(set in "[a-z][a-z0-9]{0,8}(-[a-z][a-z0-9]{0,8}){0,2}", ord in 0u32..10_000) {
            let w = workload_of(&format!("{set}-{ord}"));
            prop_assert_eq!(w.app, set);
            prop_assert!(w.stable_name);
        }

        #[test]
        fn deployment_pods_map_to_their_deployment(
            dep in "[a-z][a-z0-9]{0,8}(-[a-z][a-z0-9]{0,8}){0,2}",
            hash in "[bcdfghjklmnpqrstvwxz2456789]{6,10}",
            suffix in "[bcdfghjklmnpqrstvwxz2456789]{5}",
        ) {
            let w = workload_of(&format!("{dep}-{hash}-{suffix}"));
            prop_assert_eq!(w.app, dep);
            prop_assert!(!w.stable_name);
        }
    }
}
