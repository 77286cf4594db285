//! The allocator under random concurrent scripts: ADDs, DELs, resizes and
//! binding releases on three nodes, checked as they go (no IP attached to
//! two pods at once, a sticky pod always gets its own IP) and at the end (the
//! store consistent, only bindings left, the published free counts right).

use super::*;

#[derive(Debug, Clone)]
enum Step {
    Add { pod: usize, node: usize },
    Del { pod: usize },
    Resize(u32),
    ReleaseBinding { pod: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0usize..12, 0usize..3).prop_map(|(pod, node)| Step::Add { pod, node }),
        4 => (0usize..12).prop_map(|pod| Step::Del { pod }),
        1 => (2u32..16).prop_map(Step::Resize),
        1 => (0usize..12).prop_map(|pod| Step::ReleaseBinding { pod }),
    ]
}

/// Pods 0-5 are StatefulSet-style (sticky), 6-11 Deployment-style.
fn pod_name(p: usize) -> String {
    if p < 6 {
        format!("web-{p}")
    } else {
        format!(
            "web-5c5b7d9d8f-{}",
            ["bcdfg", "hjklm", "npqrs", "tvwxz", "22457", "68924"][p - 6]
        )
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    /// Four concurrent actors run random scripts against one pool; whatever
    /// the interleaving, the store stays consistent, no IP is attached twice,
    /// sticky pods only ever see their own IP, and after everything is
    /// deleted the only leases left are bindings.
    #[test]
    fn concurrent_random_scripts_keep_the_invariants(scripts in proptest::collection::vec(proptest::collection::vec(step(), 1..25), 4)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
        rt.block_on(async move {
            let (store, ipam) = setup(8, Policy::Auto).await;
            let ipam = Arc::new(ipam);
            let nodes = [("n1", "r1"), ("n2", "r1"), ("n3", "r2")];
            // Each actor owns the pods with index % 4 == actor, so one pod is
            // never ADDed twice at once (a runtime never does that either).
            let mut tasks = Vec::new();
            // Which pod holds each attached IP now, over all actors.
            let holders: Arc<std::sync::Mutex<BTreeMap<IpAddr, usize>>> = Arc::default();
            for (actor, script) in scripts.into_iter().enumerate() {
                let ipam = ipam.clone();
                let holders = holders.clone();
                tasks.push(tokio::spawn(async move {
                    let mut live: BTreeMap<usize, (AttachmentKey, IpAddr)> = BTreeMap::new();
                    let mut seen: BTreeMap<usize, IpAddr> = BTreeMap::new();
                    let mut gen = 0;
                    for s in script {
                        match s {
                            Step::Add { pod, node } if pod % 4 == actor && !live.contains_key(&pod) => {
                                gen += 1;
                                let (n, t) = nodes[node];
                                let r = req(n, t, &format!("p{pod}g{gen}"), &pod_name(pod));
                                match ipam.allocate(&r).await {
                                    Ok(a) => {
                                        let other = holders.lock().unwrap().insert(a.lease.ip, pod);
                                        assert_eq!(other, None, "{} attached to pod {other:?} and to pod {pod}", a.lease.ip);
                                        if pod < 6 {
                                            if let Some(prev) = seen.get(&pod) {
                                                assert_eq!(*prev, a.lease.ip, "sticky pod {pod} got a different IP");
                                            }
                                            seen.insert(pod, a.lease.ip);
                                        }
                                        live.insert(pod, (r.key, a.lease.ip));
                                    }
                                    Err(e) => assert!(
                                        [cni_code::POOL_FULL, cni_code::WRONG_TOR, cni_code::TRY_AGAIN_LATER].contains(&e.cni_code()),
                                        "unexpected refusal {e}"
                                    ),
                                }
                            }
                            Step::Del { pod } if pod % 4 == actor => {
                                if let Some((k, ip)) = live.remove(&pod) {
                                    // Not held from the moment the DEL starts: another
                                    // ADD may take the IP as soon as it commits.
                                    assert_eq!(holders.lock().unwrap().remove(&ip), Some(pod));
                                    let r = ipam.release(&k, false).await.unwrap().expect("attached");
                                    assert_eq!(r.ip, ip);
                                }
                            }
                            Step::ReleaseBinding { pod } if pod % 4 == actor => {
                                if let Some(ip) = seen.remove(&pod) {
                                    ipam.release_ip(ip).await.unwrap();
                                }
                            }
                            Step::Resize(n) if actor == 0 => {
                                let _ = ipam.resize_pool("web", n, 0).await;
                            }
                            _ => {}
                        }
                    }
                    for (pod, (k, ip)) in &live {
                        assert_eq!(holders.lock().unwrap().remove(ip), Some(*pod));
                        ipam.release(k, false).await.unwrap().expect("attached");
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            clean(&store).await;
            let leases = ipam.leases("web").await.unwrap();
            assert!(leases.iter().all(|l| l.attachment.is_none() && l.binding.is_some()), "{leases:?}");
            assert!(holders.lock().unwrap().is_empty());
            let (pool, _) = ipam.pool("web").await.unwrap();
            let counts = crate::core::pool_counts(&pool, &leases);
            let total: u32 = counts.values().map(|c| c.total).sum();
            let free: u32 = counts.values().map(|c| c.free).sum();
            assert_eq!(total, pool.size());
            assert_eq!(free as usize, pool.size() as usize - leases.len());
            // The free counts from the lease keys alone (STATUS, the
            // webhook) agree.
            let free = ipam.free_counts(&pool).await.unwrap();
            assert_eq!(free.len(), counts.len());
            for (tor, c) in &counts {
                assert_eq!((free[tor].total, free[tor].free), (c.total, c.free), "{tor}");
            }
        });
    }
}
