//! A watch-fed view of what this node's ADDs and DELs read, for a store with
//! history (etcd): the ToRs, the pools and the app registrations, and, for
//! every pool with IPs on this node's ToR, its leases. An ADD
//! decides from the view and commits one compare-and-swap transaction whose
//! checks cover every record it read (`attach.rs`), so a stale view costs one
//! failed commit and a second try through the store, never a wrong answer.
//!
//! Each prefix is listed, then watched from the revision of the list; a
//! broken or compacted watch marks the prefix stale (readers fall back to
//! the store) until it is listed again. A pool's leases are followed only
//! under the longest key prefix its IPs on this node's segments share
//! (`follow.rs`): a pool spread over many ToRs sends each node the events
//! of its own ToR's IPs, not those of every ToR (a node reads no other).
//! The node's own commits are applied at once with the revision they got,
//! so back-to-back ADDs on one pool do not wait for their watch events; an
//! event older than what the view holds for a key is ignored (deletes leave
//! a tombstone until the watch has passed them).

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::core::{AttachmentKey, FreeCount, Lease, Pool, PoolCounts, Tor};
use crate::store::{decode, keys, Entry, Op, Store};

use super::plan::AddRead;

mod cache;
mod follow;
use cache::{Cache, Value};
use follow::{follow, pool_named, refollow, segments, watched, Follow, Followed};

#[derive(Default)]
struct State {
    caches: HashMap<String, Cache>,
    /// Pools with IPs on this node's ToR: their leases there are watched
    /// (`follow.rs`).
    followed: HashMap<String, Followed>,
    /// This node's segments, worked out from `tors/` once per change of it
    /// (every ADD asks).
    segments: Option<Vec<Tor>>,
    /// Leases this node wrote that the view could not take in for good (its
    /// pool not followed yet, the pool's cache being listed again, the key
    /// outside the keys followed), with the revision of the write: until a
    /// live cache covers the key and has seen that revision, the view
    /// cannot say what is attached (`each_lease`). One whose pool the view
    /// knows and follows elsewhere, or not at all, is dropped at once: a
    /// pool record or ToR the view has not caught up with can hide one for
    /// a moment, and lookups then rely on where the node's mirror says the
    /// attachment is.
    unseen: HashMap<String, u64>,
    /// The last list of a prefix failed (the store does not answer): no
    /// use waiting for the view (`settled`).
    list_failed: bool,
}

impl State {
    /// Works this node's segments out if they are not known (the ToRs
    /// changed, or were read again); stays None while `tors/` is not live.
    fn know_segments(&mut self, tor: &str) {
        if self.segments.is_none() {
            self.segments = segments(self, tor);
        }
    }
}

struct Shared {
    store: Arc<dyn Store>,
    /// The ToR (or segment) name this node was configured with.
    tor: String,
    state: Mutex<State>,
    stop: tokio::sync::watch::Receiver<bool>,
}

pub struct View {
    shared: Arc<Shared>,
}

impl Drop for View {
    fn drop(&mut self) {
        let mut s = self.shared.state.lock().unwrap();
        for (_, f) in s.followed.drain() {
            f.task.abort();
        }
    }
}

/// An entry without its value: its key and version, what a compare checks
/// (the view's readers have the record decoded already).
fn stub(key: String, version: u64) -> Entry {
    Entry {
        key,
        value: Vec::new(),
        version,
    }
}

/// How the records under `prefix` decode.
fn decoder_for(prefix: &str) -> fn(&Entry) -> Value {
    fn typed<T: serde::de::DeserializeOwned + Send + Sync + 'static>(e: &Entry) -> Value {
        decode::<T>(e)
            .ok()
            .map(|v| Arc::new(v) as Arc<dyn Any + Send + Sync>)
    }
    match prefix {
        keys::TORS => typed::<Tor>,
        keys::POOLS => typed::<Pool>,
        keys::APPS => typed::<String>,
        _ => typed::<Lease>,
    }
}

/// Whether lease `key`, which this node wrote at `rev` and the view could
/// not take in, is still not in it (`State::unseen`). `range`: the keys its
/// pool is followed under (None: not followed); `leases`: the pool's lease
/// cache; `pools`: the pools' cache.
fn still_unseen(
    key: &str,
    rev: u64,
    range: Option<&str>,
    leases: Option<&Cache>,
    pools: Option<&Cache>,
) -> bool {
    match range {
        // Followed: until its live cache has seen the write.
        Some(r) if key.starts_with(r) => leases.filter(|c| c.live).is_none_or(|c| c.seen < rev),
        // Not followed, or outside the keys followed: until the pool's
        // record reaches the view (which then follows it). Known and not
        // followed there, it has no IPs on this node's ToR (a node moved to
        // another ToR finds those where its mirror says); gone from a view
        // that has seen the write's revision, it was deleted.
        _ => pools.filter(|c| c.live).is_none_or(|c| {
            let pool = keys::lease_pool(key).unwrap_or_default();
            !c.slots.contains_key(&keys::pool(pool)) && c.seen < rev
        }),
    }
}

/// The prefix a key is cached under, if the view caches it.
fn prefix_of(key: &str) -> Option<String> {
    for global in [keys::TORS, keys::POOLS, keys::APPS] {
        if key.starts_with(global) {
            return Some(global.to_string());
        }
    }
    keys::lease_pool(key).map(keys::leases)
}

impl View {
    /// Starts following the store for a node of ToR `tor`. The view is
    /// empty (readers go to the store) until the first lists come back.
    pub fn start(
        store: Arc<dyn Store>,
        tor: &str,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        let shared = Arc::new(Shared {
            store,
            tor: tor.to_string(),
            state: Mutex::default(),
            stop,
        });
        for p in [keys::TORS, keys::POOLS, keys::APPS] {
            tokio::spawn(follow(shared.clone(), Follow::of(p)));
        }
        Self { shared }
    }

    pub fn tor(&self) -> &str {
        &self.shared.tor
    }

    /// Whether every prefix an ADD on this node reads is live: the global
    /// ones, and the leases of every pool on this ToR.
    pub fn ready(&self) -> bool {
        let s = self.shared.state.lock().unwrap();
        let live = |p: &str| s.caches.get(p).is_some_and(|c| c.live);
        [keys::TORS, keys::POOLS, keys::APPS]
            .iter()
            .all(|p| live(p))
            && s.followed.keys().all(|p| live(&keys::leases(p)))
    }

    /// Whether the view is live, or its lists fail (the store does not
    /// answer): what a start waits for before it looks for the node's
    /// attachments (`node::recover`).
    pub fn settled(&self) -> bool {
        self.ready() || self.shared.state.lock().unwrap().list_failed
    }

    /// The segments a node of this ToR serves (`Ipam::segments_of`).
    pub(super) fn segments(&self) -> Option<Vec<Tor>> {
        let mut s = self.shared.state.lock().unwrap();
        s.know_segments(&self.shared.tor);
        s.segments.clone()
    }

    /// The pool registered for app `ns/app`: `Some(None)` none, `None` the
    /// view cannot say.
    pub(super) fn app_pool(&self, ns: &str, app: &str) -> Option<Option<String>> {
        let s = self.shared.state.lock().unwrap();
        let c = s.caches.get(keys::APPS).filter(|c| c.live)?;
        Some(
            c.get::<String>(&keys::app(ns, app))?
                .map(|(p, _)| p.clone()),
        )
    }

    /// Whether pool `name` exists and allows pods of namespace `ns` (any,
    /// for None): `Some(None)` no such pool, `None` the view cannot say.
    pub(super) fn pool_allows(&self, name: &str, ns: Option<&str>) -> Option<Option<bool>> {
        let s = self.shared.state.lock().unwrap();
        let c = s.caches.get(keys::POOLS).filter(|c| c.live)?;
        let pool = c.get::<Pool>(&keys::pool(name))?;
        Some(pool.map(|(p, _)| ns.is_none_or(|ns| p.allows(ns))))
    }

    /// The pool and its leases, if the view follows it live.
    pub(super) fn pool_data(&self, name: &str) -> Option<AddRead> {
        let s = self.shared.state.lock().unwrap();
        let live = |p: &str| s.caches.get(p).filter(|c| c.live);
        let key = keys::pool(name);
        let (pool, version) = live(keys::POOLS)?.get_shared::<Pool>(&key)??;
        Some(AddRead {
            pool: (pool, stub(key, version)),
            leases: live(&keys::leases(name))?.shared()?,
        })
    }

    /// The lease of `ip` in `pool` (None inside: no lease), if the view
    /// follows it live (the pool, and the IP's key: a pool's leases on other
    /// segments are not followed). Tests: the ADD and DEL paths look leases
    /// up by attachment (`attached`).
    #[cfg(test)]
    pub(super) fn lease(&self, pool: &str, ip: std::net::IpAddr) -> Option<Option<(Lease, Entry)>> {
        let s = self.shared.state.lock().unwrap();
        let leases = s.caches.get(&keys::leases(pool)).filter(|c| c.live)?;
        let key = keys::lease(pool, ip);
        if !watched(&s, &key) {
            return None;
        }
        Some(
            leases
                .get::<Lease>(&key)?
                .map(|(l, version)| (l.clone(), stub(key, version))),
        )
    }

    /// The lease attached to `key`, from the leases the view follows (every
    /// IP of this node's segments, where its ADDs take theirs): `Some(None)`
    /// none is, `None` the view cannot say (not all of it is live). A lease
    /// that does not decode is passed over: it may be this key's, but taking
    /// it for unknown would send every DEL of the node to the store while it
    /// stays damaged (`ipamctl audit` names it).
    pub(super) fn attached(&self, key: &AttachmentKey) -> Option<Option<(Lease, Entry)>> {
        let mut found = None;
        self.each_lease(|k, l, version| {
            if found.is_none() && l.is_some_and(|l| l.attached_to(key)) {
                found = l.map(|l| (l.clone(), stub(k.to_string(), version)));
            }
        })?;
        Some(found)
    }

    /// Every lease the view follows attached on node `node`, and the keys
    /// of the followed leases that do not decode (any may be the node's),
    /// if the view is live.
    pub(super) fn attached_on(&self, node: &str) -> Option<(Vec<Lease>, Vec<String>)> {
        let (mut mine, mut corrupt) = (Vec::new(), Vec::new());
        self.each_lease(|k, l, _| match l {
            Some(l) if l.attachment.as_ref().is_some_and(|a| a.key.node == node) => {
                mine.push(l.clone())
            }
            Some(_) => {}
            None => corrupt.push(k.to_string()),
        })?;
        Some((mine, corrupt))
    }

    /// `f` of every followed lease (None: it does not decode) and its
    /// version, if the view is live: the ToRs and pools (which say what is
    /// followed) and every followed pool's leases.
    fn each_lease(&self, mut f: impl FnMut(&str, Option<&Lease>, u64)) -> Option<()> {
        let mut s = self.shared.state.lock().unwrap();
        s.know_segments(&self.shared.tor);
        s.segments.as_ref()?;
        if !s.unseen.is_empty() {
            let State {
                unseen,
                followed,
                caches,
                ..
            } = &mut *s;
            unseen.retain(|key, rev| {
                let Some(pool) = keys::lease_pool(key) else {
                    return false;
                };
                still_unseen(
                    key,
                    *rev,
                    followed.get(pool).map(|f| f.range.as_str()),
                    caches.get(&keys::leases(pool)),
                    caches.get(keys::POOLS),
                )
            });
            if !unseen.is_empty() {
                return None;
            }
        }
        let live = |p: &str| s.caches.get(p).filter(|c| c.live);
        live(keys::TORS)?;
        live(keys::POOLS)?;
        let caches: Vec<&Cache> = s
            .followed
            .keys()
            .map(|p| live(&keys::leases(p)))
            .collect::<Option<_>>()?;
        for c in caches {
            for (k, slot) in &c.slots {
                let lease = slot
                    .value
                    .as_deref()
                    .and_then(|v| v.downcast_ref::<Lease>());
                f(k, lease, slot.version);
            }
        }
        Some(())
    }

    /// The free counts on this node's segments of every pool with IPs
    /// there, if the view follows them all live (CNI STATUS).
    pub(super) fn free_counts(&self) -> Option<Vec<BTreeMap<String, FreeCount>>> {
        let counts = self.each_followed(|pool, leases| {
            crate::core::free_counts(pool, leases.into_iter().map(|l| l.ip))
        })?;
        Some(counts.into_iter().map(|(_, c)| c).collect())
    }

    /// Every followed pool's counts on this node's segments, if the view
    /// follows them all live (metrics).
    pub(super) fn pool_counts(&self) -> Option<Vec<(String, BTreeMap<String, PoolCounts>)>> {
        self.each_followed(|pool, leases| crate::core::pool_counts(pool, leases))
    }

    /// `f` of every pool with IPs on this node's ToR and its leases, per
    /// segment of this node's, if the view follows them all live. Other
    /// segments are left out: their leases are not followed.
    fn each_followed<X>(
        &self,
        f: impl Fn(&Pool, Vec<&Lease>) -> BTreeMap<String, X>,
    ) -> Option<Vec<(String, BTreeMap<String, X>)>> {
        let mut s = self.shared.state.lock().unwrap();
        s.know_segments(&self.shared.tor);
        // The segments the followed keys were worked out for.
        let here: Vec<&str> = s
            .segments
            .as_ref()?
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        let pools = s.caches.get(keys::POOLS).filter(|c| c.live)?;
        s.followed
            .keys()
            .map(|name| {
                let (pool, _) = pools.get::<Pool>(&keys::pool(name))??;
                let leases = s.caches.get(&keys::leases(name)).filter(|c| c.live)?;
                let mut counts = f(pool, leases.values::<Lease>()?);
                counts.retain(|seg, _| here.contains(&seg.as_str()));
                Some((name.clone(), counts))
            })
            .collect()
    }

    /// Drops `key` from the view, as a view whose watch lags behind a
    /// change would not have it (tests).
    #[cfg(test)]
    pub(super) fn forget(&self, key: &str) {
        let mut s = self.shared.state.lock().unwrap();
        if let Some(c) = prefix_of(key).and_then(|p| s.caches.get_mut(&p)) {
            // Its watch event, if still on the way, must not bring it back.
            if let Some(slot) = c.slots.remove(key) {
                c.tombs.insert(key.to_string(), slot.version);
            }
        }
    }

    /// Puts `lease` back at `key` with its older `version`, as a view whose
    /// watch has not yet brought a change by another writer would hold it
    /// (tests).
    #[cfg(test)]
    pub(super) fn rewind(&self, key: &str, lease: Lease, version: u64) {
        let mut s = self.shared.state.lock().unwrap();
        if let Some(c) = prefix_of(key).and_then(|p| s.caches.get_mut(&p)) {
            let value: cache::Value = Some(Arc::new(lease));
            c.slots
                .insert(key.to_string(), cache::Slot { version, value });
        }
    }

    /// Applies this node's own committed change, which got `revision`.
    /// `leases`: leases the change put, as the caller has them (they are
    /// not decoded again, nor copied).
    pub(super) fn committed(&self, ops: &[Op], revision: u64, leases: &[Arc<Lease>]) {
        if revision == 0 {
            return;
        }
        let known: Vec<(String, &Arc<Lease>)> = leases
            .iter()
            .map(|l| (keys::lease(&l.pool, l.ip), l))
            .collect();
        let mut s = self.shared.state.lock().unwrap();
        let mut tors_changed = false;
        let mut pools_changed = Vec::new();
        for op in ops {
            let (key, value) = match op {
                Op::Put { key, value } => (key, Some(value)),
                Op::Delete { key } => (key, None),
            };
            let Some(p) = prefix_of(key) else { continue };
            tors_changed |= p == keys::TORS;
            pools_changed.extend(pool_named(key));
            let lease = keys::lease_pool(key).is_some();
            if !(watched(&s, key) && s.caches.contains_key(&p)) {
                // No watch would bring its later changes.
                if lease {
                    match value {
                        Some(_) => s.unseen.insert(key.clone(), revision),
                        None => s.unseen.remove(key),
                    };
                }
                continue;
            }
            if lease {
                // A cache being listed again is replaced by the list, which
                // may predate this write: unseen until it is live past it.
                let relisting = s.caches.get(&p).is_some_and(|c| !c.live);
                match (relisting, value) {
                    (true, Some(_)) => s.unseen.insert(key.clone(), revision),
                    _ => s.unseen.remove(key),
                };
            }
            let Some(c) = s.caches.get_mut(&p) else {
                continue;
            };
            let known = known.iter().find(|(k, _)| k == key);
            match (value, known) {
                (Some(_), Some((_, l))) => c.put_decoded(
                    key,
                    revision,
                    Some((*l).clone() as Arc<dyn Any + Send + Sync>),
                ),
                (Some(v), None) => c.put(key, v.clone(), revision),
                (None, _) => c.delete(key, revision),
            }
        }
        if tors_changed {
            s.segments = None;
            refollow(&self.shared, &mut s, None);
        } else if !pools_changed.is_empty() {
            refollow(&self.shared, &mut s, Some(&pools_changed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache as listed at `seen`, holding `keys`.
    fn cache(live: bool, seen: u64, keys: &[&str]) -> Cache {
        let mut c = Cache {
            live,
            seen,
            ..Cache::default()
        };
        for k in keys {
            c.put_decoded(k, seen, None);
        }
        c
    }

    #[test]
    fn a_write_stays_unseen_until_a_live_cache_covering_it_is_past_it() {
        let key = "leases/web/10.1.0.7";
        let range = Some("leases/web/10.1.0.");
        let pools = cache(true, 50, &["pools/web"]);
        let p = Some(&pools);
        // Followed and in range: the lease cache decides.
        assert!(still_unseen(key, 100, range, None, p), "no cache yet");
        let relisting = cache(false, 120, &[]);
        assert!(
            still_unseen(key, 100, range, Some(&relisting), p),
            "being listed again"
        );
        let behind = cache(true, 99, &[]);
        assert!(
            still_unseen(key, 100, range, Some(&behind), p),
            "live, not past it"
        );
        let past = cache(true, 100, &[]);
        assert!(
            !still_unseen(key, 100, range, Some(&past), p),
            "live at its revision"
        );
        // Not followed, or outside the keys followed: the pools' cache.
        let other = Some("leases/web/10.2.0.");
        assert!(
            !still_unseen(key, 100, other, None, p),
            "pool known: not here"
        );
        assert!(
            !still_unseen(key, 100, None, None, p),
            "pool known, not followed"
        );
        let without = cache(true, 50, &[]);
        assert!(
            still_unseen(key, 100, None, None, Some(&without)),
            "pool not seen yet"
        );
        let gone = cache(true, 101, &[]);
        assert!(
            !still_unseen(key, 100, None, None, Some(&gone)),
            "pool deleted since"
        );
        let stale = cache(false, 200, &[]);
        assert!(
            still_unseen(key, 100, None, None, Some(&stale)),
            "pools being listed"
        );
        assert!(still_unseen(key, 100, None, None, None), "no pools cache");
    }

    #[test]
    fn prefixes() {
        assert_eq!(prefix_of("pools/web").as_deref(), Some("pools/"));
        assert_eq!(
            prefix_of("leases/web/10.0.0.1").as_deref(),
            Some("leases/web/")
        );
        assert_eq!(prefix_of("free/web/r1"), None);
        assert_eq!(prefix_of("bindings/ns/p"), None);
        assert_eq!(prefix_of("leases/web"), None);
    }
}
