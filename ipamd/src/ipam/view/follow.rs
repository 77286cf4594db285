//! The view's follow tasks: what each keeps up to date, and which pools'
//! leases a node follows under which keys.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tracing::debug;

use crate::core::{Pool, Tor};
use crate::store::keys;

use super::{decoder_for, Shared, State};

/// A pool whose leases are followed: under which keys, by which task.
pub(super) struct Followed {
    pub(super) range: String,
    pub(super) task: tokio::task::AbortHandle,
}

/// What one follow task keeps up to date: the cache `cache`, from the keys
/// under `range`; for a pool's leases, which pool.
pub(super) struct Follow {
    cache: String,
    range: String,
    pool: Option<String>,
}

impl Follow {
    pub(super) fn of(prefix: &str) -> Self {
        Self {
            cache: prefix.to_string(),
            range: prefix.to_string(),
            pool: None,
        }
    }

    /// Whether this task still follows its keys (a pool's task is replaced
    /// when the pool's IPs here change, stopped when it has none left; one
    /// aborted while it waited for the lock must write nothing).
    fn current(&self, s: &State) -> bool {
        self.pool.as_ref().is_none_or(|pool| {
            s.followed
                .get(pool)
                .is_some_and(|f| f.task.id() == tokio::task::id())
        })
    }
}

pub(super) fn segments(s: &State, tor: &str) -> Option<Vec<Tor>> {
    let c = s.caches.get(keys::TORS).filter(|c| c.live)?;
    Some(crate::core::segments_of(c.values::<Tor>()?, tor))
}

/// Follows the leases of exactly the pools with IPs on this
/// node's segments: all of them (`only` None: the ToRs or every pool were
/// read again), or the pools whose records changed.
pub(super) fn refollow(shared: &Arc<Shared>, s: &mut State, only: Option<&[String]>) {
    s.know_segments(&shared.tor);
    let Some(segs) = &s.segments else {
        return;
    };
    let segs: HashSet<String> = segs.iter().map(|t| t.name.clone()).collect();
    let Some(pools) = s.caches.get(keys::POOLS).filter(|c| c.live) else {
        return;
    };
    let serves = |key: &String| {
        let (p, _) = pools.get::<Pool>(key)??;
        lease_range(p, &segs).map(|range| (p.name.clone(), range))
    };
    let (want, consider): (HashMap<String, String>, Vec<String>) = match only {
        None => {
            let want: HashMap<String, String> = pools.slots.keys().filter_map(serves).collect();
            let mut all: Vec<String> = s.followed.keys().cloned().collect();
            all.extend(want.keys().cloned());
            (want, all)
        }
        Some(names) => {
            let want = names
                .iter()
                .filter_map(|n| serves(&keys::pool(n)))
                .collect();
            (want, names.to_vec())
        }
    };
    for p in consider {
        let range = want.get(&p);
        if s.followed.get(&p).map(|f| &f.range) == range {
            continue;
        }
        // Not wanted any more, or under other keys: the cache goes until
        // the new task has listed them.
        if let Some(old) = s.followed.remove(&p) {
            old.task.abort();
        }
        s.caches.remove(&keys::leases(&p));
        let Some(range) = range else { continue };
        // The task takes the state's lock (held here) before anything
        // else: it finds itself in `followed`.
        let task = tokio::spawn(follow(
            shared.clone(),
            Follow {
                cache: keys::leases(&p),
                range: range.clone(),
                pool: Some(p.clone()),
            },
        ));
        s.followed.insert(
            p,
            Followed {
                range: range.clone(),
                task: task.abort_handle(),
            },
        );
    }
}

/// The keys a node of segments `segs` follows of `pool`'s leases: the
/// longest prefix the keys of its IPs there share (the key is
/// `leases/<pool>/<ip>`, so each segment's IPs share most of theirs).
/// None: the pool has no IPs there. A pool whose IPs there are none yet
/// (a segment of it carved empty) is followed whole, as the counts of
/// its segments are.
fn lease_range(pool: &Pool, segs: &HashSet<String>) -> Option<String> {
    let mut here = pool
        .ips
        .iter()
        .filter(|(seg, _)| segs.contains(*seg))
        .peekable();
    here.peek()?;
    let mut ips = here.flat_map(|(_, ips)| ips);
    let Some(first) = ips.next() else {
        return Some(keys::leases(&pool.name));
    };
    let first = keys::lease(&pool.name, *first);
    let mut len = first.len();
    for ip in ips {
        let key = keys::lease(&pool.name, *ip);
        len = common_len(&first[..len], &key);
    }
    Some(first[..len].to_string())
}

/// The length of the longest prefix `a` and `b` share.
fn common_len(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((i, _), _)| i)
}

/// Whether the view's watches cover `key`: a lease outside the keys its
/// pool is followed under would never be updated again.
pub(super) fn watched(s: &State, key: &str) -> bool {
    let Some(pool) = keys::lease_pool(key) else {
        return true;
    };
    s.followed
        .get(pool)
        .is_none_or(|f| key.starts_with(&f.range))
}

/// The pool a `pools/` key names.
pub(super) fn pool_named(key: &str) -> Option<String> {
    key.strip_prefix(keys::POOLS).map(str::to_string)
}

/// Lists `f.range`, then applies every change after that list to
/// `f.cache`, again and again: a broken or compacted watch marks it stale
/// until it is listed again.
pub(super) async fn follow(shared: Arc<Shared>, f: Follow) {
    let prefix = &f.cache;
    let mut stop = shared.stop.clone();
    let mut failures = 0u32;
    loop {
        if *stop.borrow() {
            return;
        }
        if failures > 0 {
            let pause = Duration::from_millis(100 * u64::from(failures.min(50)));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        let listed = shared.store.list(&f.range).await;
        let (entries, rev) = match listed {
            Ok(r) => r,
            Err(e) => {
                debug!(range = %f.range, error = %e, "view: list failed");
                shared.state.lock().unwrap().list_failed = true;
                failures += 1;
                continue;
            }
        };
        let mut events = match shared.store.watch(&f.range, rev).await {
            Ok(w) => w,
            Err(e) => {
                debug!(range = %f.range, error = %e, "view: watch failed");
                failures += 1;
                continue;
            }
        };
        {
            let mut s = shared.state.lock().unwrap();
            if !f.current(&s) {
                return;
            }
            let c = s.caches.entry(prefix.clone()).or_default();
            c.decoder = Some(decoder_for(prefix));
            c.replace(entries);
            c.tombs.clear();
            c.seen = rev;
            c.live = true;
            s.list_failed = false;
            if prefix == keys::TORS {
                s.segments = None;
            }
            if prefix == keys::POOLS || prefix == keys::TORS {
                refollow(&shared, &mut s, None);
            }
        }
        failures = 0;
        // One wait for the stop, not one per event (each registers with
        // the stop channel and unregisters again: a lock and a list walk).
        let stopped = stop.wait_for(|s| *s);
        tokio::pin!(stopped);
        loop {
            let ev = tokio::select! {
                ev = events.next() => ev,
                _ = &mut stopped => return,
            };
            let Some(Ok(ev)) = ev else { break };
            let mut s = shared.state.lock().unwrap();
            if !f.current(&s) {
                return;
            }
            let Some(c) = s.caches.get_mut(prefix) else {
                // No longer followed.
                return;
            };
            let pool = pool_named(&ev.key);
            c.event(ev);
            if prefix == keys::TORS {
                s.segments = None;
                refollow(&shared, &mut s, None);
            } else if let Some(p) = pool {
                refollow(&shared, &mut s, Some(&[p]));
            }
        }
        debug!(range = %f.range, "view: watch ended; listing again");
        let mut s = shared.state.lock().unwrap();
        if !f.current(&s) {
            return;
        }
        if let Some(c) = s.caches.get_mut(prefix) {
            c.live = false;
        }
        if prefix == keys::TORS {
            s.segments = None;
        }
        drop(s);
        failures += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn pool(ips: &[(&str, &[&str])]) -> Pool {
        Pool {
            family: Default::default(),
            name: "web".into(),
            namespace: "default".into(),
            app: "web".into(),
            policy: crate::core::Policy::Auto,
            tors: ips.iter().map(|(t, _)| t.to_string()).collect(),
            ips: ips
                .iter()
                .map(|(t, ips)| {
                    (
                        t.to_string(),
                        ips.iter().map(|i| i.parse().unwrap()).collect(),
                    )
                })
                .collect(),
            allow_namespaces: vec![],
            allocatable_after: BTreeMap::new(),
            owner: None,
            op: None,
        }
    }

    fn range(pool: &Pool, segs: &[&str]) -> Option<String> {
        lease_range(pool, &segs.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn a_pool_is_followed_under_the_keys_its_ips_here_share() {
        let p = pool(&[
            ("r1", &["10.1.0.50", "10.1.0.59", "10.1.0.55"]),
            ("r2", &["10.2.0.10", "10.2.0.19"]),
            ("r1b", &["10.1.3.7"]),
            ("r9", &[]),
        ]);
        assert_eq!(range(&p, &["r1"]).unwrap(), "leases/web/10.1.0.5");
        assert_eq!(range(&p, &["r2"]).unwrap(), "leases/web/10.2.0.1");
        // Two segments of one ToR: what both share.
        assert_eq!(range(&p, &["r1", "r1b"]).unwrap(), "leases/web/10.1.");
        assert_eq!(range(&p, &["r1", "r2"]).unwrap(), "leases/web/10.");
        // One IP: its own key (and any key it begins).
        let one = pool(&[("r1", &["10.1.0.5"])]);
        assert_eq!(range(&one, &["r1"]).unwrap(), "leases/web/10.1.0.5");
        // Not on this ToR: not followed; there without IPs: followed whole.
        assert_eq!(range(&p, &["r3"]), None);
        assert_eq!(range(&p, &["r9"]).unwrap(), "leases/web/");
        let v6 = pool(&[("r1", &["fd00:1::a", "fd00:1::1f"]), ("r2", &["fd00:2::a"])]);
        assert_eq!(range(&v6, &["r1"]).unwrap(), "leases/web/fd00:1::");
    }

    #[test]
    fn the_keys_followed_cover_every_ip_here_and_no_more_than_they_share() {
        // Every pool IP of 10.1.0.0/22 on r1, a random subset: the range
        // is a prefix of each of their keys, and one more character of
        // any of them is not a prefix of all.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200 {
            let mut ips = Vec::new();
            for i in 0..1024u32 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                if seed.is_multiple_of(37) {
                    ips.push(format!("10.1.{}.{}", i / 256, i % 256));
                }
            }
            if ips.is_empty() {
                continue;
            }
            let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
            let p = pool(&[("r1", &refs)]);
            let r = range(&p, &["r1"]).unwrap();
            let keys: Vec<String> = ips.iter().map(|ip| format!("leases/web/{ip}")).collect();
            assert!(keys.iter().all(|k| k.starts_with(&r)), "{r}");
            let longer = &keys[0][..(r.len() + 1).min(keys[0].len())];
            assert!(
                longer == r || !keys.iter().all(|k| k.starts_with(longer)),
                "{r} is not the longest"
            );
        }
    }

    #[test]
    fn common_lengths() {
        assert_eq!(common_len("10.1.0.5", "10.1.0.59"), 8);
        assert_eq!(common_len("10.1.0.59", "10.1.0.5"), 8);
        assert_eq!(common_len("10.1.0.5", "10.2.0.5"), 3);
        assert_eq!(common_len("", "10"), 0);
        assert_eq!(common_len("a", "a"), 1);
    }
}
