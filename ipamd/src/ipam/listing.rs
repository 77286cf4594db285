//! The admin listings that read everything of a kind (`ip list`, `pool
//! list`, `binding list`) as streams that walk the store a page at a time:
//! ipamd holds one page of records plus one pool's leases, whatever the
//! cluster's size. (Built whole, the `ip list` of 100k IPs held every pool,
//! every lease and the reply at once.)
//!
//! A walk reads its pages at the revision of its first page, so on etcd a
//! listing is one snapshot; if etcd compacts that revision part way, the
//! listing fails with a message saying to run it again (it cannot start over
//! by itself: the first part is already on its way to the caller).

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};

use crate::core::{Binding, IpFamily, Lease, Pool, Tor};
use crate::error::{Error, Result};
use crate::store::{decode, keys, Entry, Store, StoreError, StoreExt};

use super::{IpView, Ipam};

/// Records one store read returns at most.
pub const PAGE: usize = 500;

/// A listing, item by item, in order.
pub type Items<T> = BoxStream<'static, Result<T>>;

/// Where a walk over the keys of a prefix is.
pub(super) struct Walk {
    store: Arc<dyn Store>,
    prefix: String,
    after: Option<String>,
    at: Option<u64>,
    /// Every page at the first one's revision (one snapshot), or each at
    /// the store's current state (`current`).
    pinned: bool,
    done: bool,
    /// Read and not yet handed out.
    queue: VecDeque<Entry>,
}

impl Walk {
    pub(super) fn new(store: Arc<dyn Store>, prefix: &str) -> Self {
        Self {
            store,
            prefix: prefix.to_string(),
            after: None,
            at: None,
            pinned: true,
            done: false,
            queue: VecDeque::new(),
        }
    }

    /// Each page read at the store's current state, not at the first
    /// page's revision: a lookup that outlives etcd's compaction goes on
    /// (each key that exists throughout is still seen once).
    pub(super) fn current(mut self) -> Self {
        self.pinned = false;
        self
    }

    /// The next entry, reading the next page when the last one is used up.
    pub(super) async fn next(&mut self) -> Result<Option<Entry>> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Ok(Some(e));
            }
            if self.done {
                return Ok(None);
            }
            let page = self
                .store
                .list_page(&self.prefix, self.after.as_deref(), PAGE, self.at)
                .await
                .map_err(|e| compacted(e, &self.prefix))?;
            if self.pinned {
                self.at = Some(page.revision);
            }
            self.after = page.entries.last().map(|e| e.key.clone());
            self.done = !page.more;
            self.queue.extend(page.entries);
        }
    }
}

fn compacted(e: StoreError, prefix: &str) -> Error {
    match e {
        StoreError::Compacted(rev) => Error::unavailable(format!(
            "the store compacted revision {rev} while this listing read {prefix} at it (etcd's history is compacted as it grows): run the listing again"
        )),
        e => e.into(),
    }
}

/// Every lease of `pool`, read page by page at `at` (the pools' walk's
/// revision) so pool and leases are one snapshot.
async fn leases_at(store: &Arc<dyn Store>, pool: &str, at: Option<u64>) -> Result<Vec<Lease>> {
    let mut walk = Walk::new(store.clone(), &keys::leases(pool));
    walk.at = at;
    let mut out = Vec::new();
    while let Some(e) = walk.next().await? {
        out.push(decode(&e)?);
    }
    Ok(out)
}

async fn partners(store: &Arc<dyn Store>, p: &Pool) -> Result<BTreeMap<IpAddr, Ipv6Addr>> {
    let mut out = BTreeMap::new();
    if p.family != IpFamily::Dual {
        return Ok(out);
    }
    for (seg, ips) in &p.ips {
        let Some((tor, _)) = store.get_json::<Tor>(&keys::tor(seg)).await? else {
            continue;
        };
        out.extend(ips.iter().filter_map(|ip| Some((*ip, tor.partner(*ip)?))));
    }
    Ok(out)
}

/// The IPs of one pool in address order, each with its lease.
fn views(p: &Pool, leases: Vec<Lease>, partners: &BTreeMap<IpAddr, Ipv6Addr>) -> Vec<IpView> {
    let mut leases: BTreeMap<IpAddr, Lease> = leases.into_iter().map(|l| (l.ip, l)).collect();
    let mut out: Vec<IpView> = p
        .ips
        .iter()
        .flat_map(|(tor, ips)| ips.iter().map(move |ip| (tor, *ip)))
        .map(|(tor, ip)| IpView {
            ip,
            ipv6: partners.get(&ip).copied(),
            pool: p.name.clone(),
            tor: tor.clone(),
            lease: leases.remove(&ip),
        })
        .collect();
    out.sort_by_key(|v| v.ip);
    out
}

impl Ipam {
    /// The IPv6 partner of each IP of a dual-stack pool (empty for a pool
    /// of one family): its segments' records read once.
    pub async fn partners(&self, p: &Pool) -> Result<BTreeMap<IpAddr, Ipv6Addr>> {
        partners(&self.store, p).await
    }

    /// Every pool in name order with its leases, one pool at a time.
    pub fn pool_walk(&self) -> Items<(Pool, Vec<Lease>)> {
        let walk = Walk::new(self.store.clone(), keys::POOLS);
        stream::try_unfold(walk, |mut walk| async move {
            let Some(e) = walk.next().await? else {
                return Ok(None);
            };
            let pool: Pool = decode(&e)?;
            let leases = leases_at(&walk.store, &pool.name, walk.at).await?;
            Ok(Some(((pool, leases), walk)))
        })
        .boxed()
    }

    /// The IPs of every pool (pools in name order, each pool's IPs in
    /// address order), or of one: `pool` is checked before the stream
    /// starts, so a missing pool is an error, not an empty list.
    pub async fn ip_walk(&self, pool: Option<&str>) -> Result<Items<IpView>> {
        let pools = match pool {
            Some(name) => {
                let (p, leases) = self.pool(name).await?;
                stream::once(async move { Ok((p, leases)) }).boxed()
            }
            None => self.pool_walk(),
        };
        let store = self.store.clone();
        Ok(pools
            .and_then(move |(p, leases)| {
                let store = store.clone();
                async move {
                    let partners = partners(&store, &p).await?;
                    Ok(stream::iter(
                        views(&p, leases, &partners).into_iter().map(Ok),
                    ))
                }
            })
            .try_flatten()
            .boxed())
    }

    /// Every binding (of one pool, or all) in pod order, whether its IP
    /// is attached, and its IPv6 partner (a dual-stack pool's).
    pub fn binding_walk(&self, pool: Option<&str>) -> Items<(Binding, bool, Option<Ipv6Addr>)> {
        let walk = Walk::new(self.store.clone(), keys::BINDINGS);
        let pool = pool.map(str::to_string);
        // Each pool's partners, read once per walk.
        let known: BTreeMap<String, BTreeMap<IpAddr, Ipv6Addr>> = BTreeMap::new();
        stream::try_unfold(
            (walk, pool, known),
            |(mut walk, pool, mut known)| async move {
                while let Some(e) = walk.next().await? {
                    let b: Binding = decode(&e)?;
                    if pool.as_ref().is_some_and(|p| *p != b.pool) {
                        continue;
                    }
                    let attached = walk
                        .store
                        .get_json::<Lease>(&keys::lease(&b.pool, b.ip))
                        .await?
                        .is_some_and(|(l, _)| l.attachment.is_some());
                    if !known.contains_key(&b.pool) {
                        let found = match walk.store.get_json::<Pool>(&keys::pool(&b.pool)).await? {
                            Some((p, _)) => partners(&walk.store, &p).await?,
                            None => BTreeMap::new(),
                        };
                        known.insert(b.pool.clone(), found);
                    }
                    let ipv6 = known[&b.pool].get(&b.ip).copied();
                    return Ok(Some(((b, attached, ipv6), (walk, pool, known))));
                }
                Ok(None)
            },
        )
        .boxed()
    }
}
