//! The allocation service: reads what the core needs from the store, asks the
//! core for a decision and commits it as one compare-and-swap transaction,
//! retrying when another writer got there first. Knows nothing of netlink.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::core::allocate::{self, AddDecision, AddInput, Refusal};
use crate::core::{
    carve, spread, validate, workload, Attachment, AttachmentKey, AttachmentRef, AttachmentState,
    Binding, Carved, FreeCount, Lease, PodRef, Policy, Pool, Quarantine, Tor, DEFAULT_POOL_SIZE,
};
use crate::error::{cni_code, Error, Result};
use crate::store::{keys, Entry, Store, StoreExt, Txn};

/// How often a transaction is retried when another writer changed what it read.
const MAX_ATTEMPTS: u32 = 32;

pub struct Ipam {
    store: Arc<dyn Store>,
    /// Serializes this daemon's own writes per pool, so its ADDs don't make
    /// each other retry; other daemons are kept apart by the CAS checks.
    pool_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Set when ipamd stops: open watches end, so shutdown does not wait on
    /// streams that never finish by themselves.
    shutdown: tokio::sync::watch::Sender<bool>,
}

/// What `pool create` asks for.
#[derive(Debug, Clone, Default)]
pub struct PoolSpec {
    pub name: String,
    pub namespace: String,
    pub app: String,
    /// 0 = the default (30).
    pub size: u32,
    /// Empty = every ToR.
    pub tors: Vec<String>,
    pub policy: Policy,
}

/// One ADD as the allocation service sees it.
#[derive(Debug, Clone)]
pub struct AllocRequest {
    pub key: AttachmentKey,
    pub pod: PodRef,
    /// Explicit pool (MOOR_POOL or config); None = the pod's app's pool.
    pub pool: Option<String>,
    pub netns: String,
    pub network: String,
    /// The ToR of this node.
    pub tor: String,
    pub now_unix: u64,
}

#[derive(Debug, Clone)]
pub struct Allocation {
    pub lease: Lease,
    pub tor: Tor,
    /// The attachment existed before this call (a repeated ADD).
    pub existing: bool,
}

impl Allocation {
    pub fn attachment(&self) -> &Attachment {
        self.lease
            .attachment
            .as_ref()
            .expect("allocations are attached")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    pub ip: Ipv4Addr,
    pub pool: String,
    pub binding_kept: bool,
    pub attachment: Attachment,
}

/// An IP of a pool as `ipamctl ip` shows it.
#[derive(Debug, Clone)]
pub struct IpView {
    pub ip: Ipv4Addr,
    pub pool: String,
    pub tor: String,
    pub lease: Option<Lease>,
}

fn refused(code: u32, msg: String) -> Error {
    Error::Refused { code, msg }
}

/// Small jittered backoff without a clock or rand dependency in the core:
/// the attempt number and the address of a stack value are jitter enough.
async fn backoff(attempt: u32) {
    let seed = (&attempt as *const u32 as usize as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let base = 1u64 << attempt.min(6);
    let jitter = seed % (base * 500 + 1);
    tokio::time::sleep(Duration::from_micros(base * 500 + jitter)).await;
}

fn contention(what: &str) -> Error {
    refused(
        cni_code::TRY_AGAIN_LATER,
        format!("{what}: gave up after {MAX_ATTEMPTS} attempts because other writers kept changing the same records; retry"),
    )
}

impl Ipam {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            pool_locks: Mutex::new(HashMap::new()),
            shutdown: tokio::sync::watch::channel(false).0,
        }
    }

    /// Ends every open watch (ipamd is stopping).
    pub fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn pool_lock(&self, pool: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.pool_locks
            .lock()
            .unwrap()
            .entry(pool.to_string())
            .or_default()
            .clone()
    }

    // ---------------------------------------------------------------- ToRs

    pub async fn add_tor(
        &self,
        name: &str,
        subnet: &str,
        gateway: &str,
        vlan: u32,
        ranges: &[(String, String)],
        segment_of: &str,
    ) -> Result<Tor> {
        for attempt in 0..MAX_ATTEMPTS {
            let (tors, rev) = self.store.list_json::<Tor>(keys::TORS).await?;
            let existing: Vec<Tor> = tors.into_iter().map(|(t, _)| t).collect();
            let tor = validate::tor(name, subnet, gateway, vlan, ranges, segment_of, &existing)
                .map_err(Error::Invalid)?;
            let mut txn = Txn::default();
            // No ToR appeared meanwhile (its subnet could overlap ours).
            txn.expect_prefix_unchanged(keys::TORS, rev)
                .expect(&keys::tor(name), None)
                .put(&keys::tor(name), &tor);
            if self.store.commit(txn).await? {
                return Ok(tor);
            }
            backoff(attempt).await;
        }
        Err(contention("tor add"))
    }

    pub async fn tors(&self) -> Result<Vec<(Tor, u32)>> {
        let (tors, _) = self.store.list_json::<Tor>(keys::TORS).await?;
        let mut out = Vec::new();
        for (tor, _) in tors {
            let carved = self.carved(&tor.name).await?.0;
            out.push((tor, carved.ips.len() as u32));
        }
        Ok(out)
    }

    /// The segments a node of ToR `tor` serves: the ToR's own record and
    /// every record made with `--segment-of` it. A node configured with a
    /// segment's name serves that segment's ToR.
    pub async fn segments_of(&self, tor: &str) -> Result<Vec<Tor>> {
        let (all, _) = self.store.list_json::<Tor>(keys::TORS).await?;
        let all: Vec<Tor> = all.into_iter().map(|(t, _)| t).collect();
        let switch = all
            .iter()
            .find(|t| t.name == tor)
            .map_or(tor, |t| t.switch())
            .to_string();
        Ok(all.into_iter().filter(|t| t.switch() == switch).collect())
    }

    pub async fn tor(&self, name: &str) -> Result<Option<Tor>> {
        Ok(self
            .store
            .get_json::<Tor>(&keys::tor(name))
            .await?
            .map(|(t, _)| t))
    }

    async fn carved(&self, tor: &str) -> Result<(Carved, Option<Entry>)> {
        Ok(
            match self.store.get_json::<Carved>(&keys::carved(tor)).await? {
                Some((c, e)) => (c, Some(e)),
                None => (Carved::default(), None),
            },
        )
    }

    pub async fn delete_tor(&self, name: &str) -> Result<()> {
        let Some((_, tor_entry)) = self.store.get_json::<Tor>(&keys::tor(name)).await? else {
            return Err(Error::NotFound(format!("ToR {name} does not exist")));
        };
        let (carved, carved_entry) = self.carved(name).await?;
        if !carved.ips.is_empty() {
            let mut pools: Vec<&str> = carved.ips.values().map(String::as_str).collect();
            pools.dedup();
            return Err(Error::Conflict(format!(
                "ToR {name} still has {} IPs in pools {}: delete or shrink those pools first",
                carved.ips.len(),
                pools.join(", ")
            )));
        }
        let mut txn = Txn::default();
        txn.expect(&keys::tor(name), Some(&tor_entry))
            .expect(&keys::carved(name), carved_entry.as_ref())
            .delete(&keys::tor(name))
            .delete(&keys::carved(name));
        if self.store.commit(txn).await? {
            Ok(())
        } else {
            Err(Error::Conflict(format!(
                "ToR {name} changed while deleting it; run the command again"
            )))
        }
    }

    // --------------------------------------------------------------- pools

    pub async fn create_pool(&self, spec: &PoolSpec) -> Result<Pool> {
        validate::pool_name(&spec.name).map_err(Error::Invalid)?;
        validate::namespace(&spec.namespace).map_err(Error::Invalid)?;
        validate::app(&spec.app).map_err(Error::Invalid)?;
        let size = if spec.size == 0 {
            DEFAULT_POOL_SIZE
        } else {
            validate::pool_size(spec.size).map_err(Error::Invalid)?
        };
        let lock = self.pool_lock(&spec.name);
        let _guard = lock.lock().await;
        for attempt in 0..MAX_ATTEMPTS {
            if let Some((p, _)) = self.store.get_json::<Pool>(&keys::pool(&spec.name)).await? {
                return Err(Error::Conflict(format!(
                    "pool {} already exists (app {}/{}): resize it, or pick another name",
                    spec.name, p.namespace, p.app
                )));
            }
            let app_key = keys::app(&spec.namespace, &spec.app);
            if let Some((other, _)) = self.store.get_json::<String>(&app_key).await? {
                return Err(Error::Conflict(format!(
                    "app {}/{} already has pool {other}: one pool per app; resize that one",
                    spec.namespace, spec.app
                )));
            }
            let tors = self.pool_tors(&spec.tors).await?;
            let mut pool = Pool {
                name: spec.name.clone(),
                namespace: spec.namespace.clone(),
                app: spec.app.clone(),
                policy: spec.policy,
                tors: tors.iter().map(|(t, ..)| t.name.clone()).collect(),
                ips: BTreeMap::new(),
            };
            let mut txn = Txn::default();
            carve_into(&mut pool, &tors, size, &mut txn)?;
            for (tor, ips) in &pool.ips {
                let n = ips.len() as u32;
                txn.put(
                    &keys::free(&pool.name, tor),
                    &FreeCount { total: n, free: n },
                );
            }
            txn.expect(&keys::pool(&pool.name), None)
                .expect(&app_key, None)
                .put(&keys::pool(&pool.name), &pool)
                .put(&app_key, &pool.name);
            if self.store.commit(txn).await? {
                return Ok(pool);
            }
            backoff(attempt).await;
        }
        Err(contention("pool create"))
    }

    /// The ToRs a pool spreads over, with their carved records.
    async fn pool_tors(&self, names: &[String]) -> Result<Vec<(Tor, Carved, Option<Entry>)>> {
        let mut out = Vec::new();
        if names.is_empty() {
            let (tors, _) = self.store.list_json::<Tor>(keys::TORS).await?;
            if tors.is_empty() {
                return Err(Error::Invalid(
                    "no ToR is defined yet: add one with `ipamctl tor add NAME --subnet CIDR --gateway IP`".into(),
                ));
            }
            // By default a pool spreads over every ToR, on each ToR's own
            // segment; other segments are only used when a pool names them.
            for (t, _) in tors.into_iter().filter(|(t, _)| t.segment_of.is_none()) {
                let (c, e) = self.carved(&t.name).await?;
                out.push((t, c, e));
            }
        } else {
            for name in names {
                let Some(t) = self.tor(name).await? else {
                    return Err(Error::Invalid(format!(
                        "ToR {name} does not exist: add it with `ipamctl tor add {name} ...` or fix --tor"
                    )));
                };
                // One segment per ToR: a pod on a node of that ToR must
                // know which of the pool's subnets (and VLANs) it gets.
                if let Some((o, ..)) = out.iter().find(|(o, ..)| o.switch() == t.switch()) {
                    return Err(Error::Invalid(format!(
                        "--tor names {} and {}, two segments of ToR {}: a pool takes one segment per ToR; name one of them",
                        o.name,
                        t.name,
                        t.switch()
                    )));
                }
                let (c, e) = self.carved(name).await?;
                out.push((t, c, e));
            }
        }
        Ok(out)
    }

    pub async fn resize_pool(&self, name: &str, size: u32) -> Result<Pool> {
        let size = validate::pool_size(size).map_err(Error::Invalid)?;
        let lock = self.pool_lock(name);
        let _guard = lock.lock().await;
        for attempt in 0..MAX_ATTEMPTS {
            let (mut pool, pool_entry) = self.pool_entry(name).await?;
            let current = pool.size();
            // Read before the leases: a lease change after this read also
            // changes a counter, and the counters' versions are checked.
            let (counters, _) = self.store.list(&keys::frees(name)).await?;
            let mut txn = Txn::default();
            if size > current {
                let tors = self.pool_tors(&pool.tors).await?;
                carve_into(&mut pool, &tors, size - current, &mut txn)?;
            } else if size < current {
                let (leases, rev) = self.store.list_json::<Lease>(&keys::leases(name)).await?;
                let busy: std::collections::HashSet<Ipv4Addr> =
                    leases.iter().map(|(l, _)| l.ip).collect();
                let drop = spread::shrink(&pool.ips, &|ip| busy.contains(&ip), current - size)
                    .map_err(|can| {
                        Error::Conflict(format!(
                            "pool {name} cannot shrink from {current} to {size}: {} of its IPs are bound or in use, so it can shrink to {} at the least; release bindings first (ipamctl binding list --pool {name})",
                            busy.len(),
                            current - can
                        ))
                    })?;
                // Give the dropped IPs back to their ToRs.
                let mut by_tor: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
                for ip in drop {
                    let tor = pool
                        .tor_of(ip)
                        .expect("dropped IPs are the pool's")
                        .to_string();
                    by_tor.entry(tor).or_default().push(ip);
                }
                for (tor, ips) in by_tor {
                    let (mut carved, entry) = self.carved(&tor).await?;
                    for ip in &ips {
                        carved.ips.remove(ip);
                    }
                    let list = pool.ips.get_mut(&tor).expect("tor of the pool");
                    list.retain(|ip| !ips.contains(ip));
                    if list.is_empty() {
                        pool.ips.remove(&tor);
                    }
                    txn.expect(&keys::carved(&tor), entry.as_ref())
                        .put(&keys::carved(&tor), &carved);
                }
                // No lease appeared on an IP we drop since we read them.
                txn.expect_prefix_unchanged(&keys::leases(name), rev);
            } else {
                return Ok(pool);
            }
            let leases = self.leases(name).await?;
            publish_counts(&mut txn, &pool, &leases, &counters);
            txn.expect(&keys::pool(name), Some(&pool_entry))
                .put(&keys::pool(name), &pool);
            if self.store.commit(txn).await? {
                return Ok(pool);
            }
            backoff(attempt).await;
        }
        Err(contention("pool resize"))
    }

    async fn pool_entry(&self, name: &str) -> Result<(Pool, Entry)> {
        self.store
            .get_json::<Pool>(&keys::pool(name))
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!("pool {name} does not exist (ipamctl pool list)"))
            })
    }

    pub async fn pools(&self) -> Result<Vec<Pool>> {
        let (pools, _) = self.store.list_json::<Pool>(keys::POOLS).await?;
        Ok(pools.into_iter().map(|(p, _)| p).collect())
    }

    pub async fn pool(&self, name: &str) -> Result<(Pool, Vec<Lease>)> {
        let (pool, _) = self.pool_entry(name).await?;
        let leases = self.leases(name).await?;
        Ok((pool, leases))
    }

    pub async fn leases(&self, pool: &str) -> Result<Vec<Lease>> {
        let (leases, _) = self.store.list_json::<Lease>(&keys::leases(pool)).await?;
        Ok(leases.into_iter().map(|(l, _)| l).collect())
    }

    pub async fn delete_pool(&self, name: &str) -> Result<()> {
        let lock = self.pool_lock(name);
        let _guard = lock.lock().await;
        let (pool, pool_entry) = self.pool_entry(name).await?;
        let (leases, rev) = self.store.list_json::<Lease>(&keys::leases(name)).await?;
        let attached: Vec<String> = leases
            .iter()
            .filter_map(|(l, _)| {
                l.attachment
                    .as_ref()
                    .map(|a| format!("{} ({})", l.ip, a.pod))
            })
            .collect();
        if !attached.is_empty() {
            return Err(Error::Conflict(format!(
                "pool {name} has {} IPs in use: {}; delete those pods first",
                attached.len(),
                attached.join(", ")
            )));
        }
        let mut txn = Txn::default();
        txn.expect(&keys::pool(name), Some(&pool_entry))
            .expect_prefix_unchanged(&keys::leases(name), rev)
            .delete(&keys::pool(name))
            .delete(&keys::app(&pool.namespace, &pool.app));
        for (lease, _) in &leases {
            txn.delete(&keys::lease(name, lease.ip));
            if let Some(pod) = &lease.binding {
                txn.delete(&keys::binding(pod));
            }
        }
        for (tor, ips) in &pool.ips {
            let (mut carved, entry) = self.carved(tor).await?;
            for ip in ips {
                carved.ips.remove(ip);
            }
            txn.expect(&keys::carved(tor), entry.as_ref())
                .put(&keys::carved(tor), &carved);
        }
        for e in self.store.list(&keys::frees(name)).await?.0 {
            txn.delete(&e.key);
        }
        if self.store.commit(txn).await? {
            Ok(())
        } else {
            Err(Error::Conflict(format!(
                "pool {name} changed while deleting it; run the command again"
            )))
        }
    }

    /// Adds to `txn` the published free count of (pool, tor) moved by
    /// `delta` (+1: a lease went away), guarded by the counter's version.
    async fn bump_free(&self, txn: &mut Txn, pool: &str, tor: &str, delta: i64) -> Result<()> {
        let key = keys::free(pool, tor);
        if let Some((mut c, e)) = self.store.get_json::<FreeCount>(&key).await? {
            c.free = (i64::from(c.free) + delta).clamp(0, i64::from(c.total)) as u32;
            txn.expect(&key, Some(&e)).put(&key, &c);
        }
        Ok(())
    }

    // ----------------------------------------------------------------- IPs

    pub async fn ips(&self, pool: Option<&str>) -> Result<Vec<IpView>> {
        let pools = match pool {
            Some(p) => vec![self.pool_entry(p).await?.0],
            None => self.pools().await?,
        };
        let mut out = Vec::new();
        for p in pools {
            let mut leases: BTreeMap<Ipv4Addr, Lease> = self
                .leases(&p.name)
                .await?
                .into_iter()
                .map(|l| (l.ip, l))
                .collect();
            for (tor, ips) in &p.ips {
                for ip in ips {
                    out.push(IpView {
                        ip: *ip,
                        pool: p.name.clone(),
                        tor: tor.clone(),
                        lease: leases.remove(ip),
                    });
                }
            }
        }
        out.sort_by_key(|v| v.ip);
        Ok(out)
    }

    pub async fn ip(&self, ip: Ipv4Addr) -> Result<IpView> {
        let not_found = || {
            Error::NotFound(format!(
                "{ip} is in no pool (ipamctl ip list shows the IPs of every pool)"
            ))
        };
        // Only the ToR records: `tors()` would also read every ToR's carved
        // record (tens of KiB each) just to count them.
        let (tors, _) = self.store.list_json::<Tor>(keys::TORS).await?;
        let tor = tors
            .iter()
            .map(|(t, _)| t)
            .find(|t| t.subnet.contains(ip))
            .ok_or_else(not_found)?;
        let (carved, _) = self.carved(&tor.name).await?;
        let pool = carved.ips.get(&ip).ok_or_else(not_found)?;
        let lease = self
            .store
            .get_json::<Lease>(&keys::lease(pool, ip))
            .await?
            .map(|(l, _)| l);
        Ok(IpView {
            ip,
            pool: pool.clone(),
            tor: tor.name.clone(),
            lease,
        })
    }

    /// Drops the binding on an IP. A live attachment keeps the IP until its
    /// DEL; then it goes back to the pool.
    pub async fn release_ip(&self, ip: Ipv4Addr) -> Result<(IpView, bool)> {
        let (view, dropped, _) = self.drop_binding(ip, false).await?;
        Ok((view, dropped))
    }

    pub async fn bindings(&self, pool: Option<&str>) -> Result<Vec<(Binding, bool)>> {
        let (bindings, _) = self.store.list_json::<Binding>(keys::BINDINGS).await?;
        let mut out = Vec::new();
        for (b, _) in bindings {
            if pool.is_some_and(|p| p != b.pool) {
                continue;
            }
            let attached = self
                .store
                .get_json::<Lease>(&keys::lease(&b.pool, b.ip))
                .await?
                .is_some_and(|(l, _)| l.attachment.is_some());
            out.push((b, attached));
        }
        Ok(out)
    }

    // ------------------------------------------------------------ CNI path

    /// The pool a pod draws from: explicit, or its app's.
    async fn resolve_pool(&self, req: &AllocRequest) -> Result<(String, bool)> {
        if let Some(p) = &req.pool {
            if self.store.get(&keys::pool(p)).await?.is_none() {
                return Err(refused(
                    cni_code::NO_POOL,
                    format!("pool {p} (named by MOOR_POOL or the network config) does not exist: create it with `ipamctl pool create {p} --namespace NS --app APP`"),
                ));
            }
            let stable = req.pod.is_known() && workload::workload_of(&req.pod.name).stable_name;
            return Ok((p.clone(), stable));
        }
        if !req.pod.is_known() {
            return Err(refused(
                cni_code::NO_POOL,
                "no pool for this container: the runtime passed no K8S_POD_NAMESPACE/K8S_POD_NAME, so set MOOR_POOL in CNI_ARGS or \"pool\" in the network config".into(),
            ));
        }
        let w = workload::workload_of(&req.pod.name);
        match self
            .store
            .get_json::<String>(&keys::app(&req.pod.namespace, &w.app))
            .await?
        {
            Some((p, _)) => Ok((p, w.stable_name)),
            None => Err(refused(
                cni_code::NO_POOL,
                format!(
                    "no pool for app {ns}/{app} (pod {pod}): create one with `ipamctl pool create {app} --namespace {ns} --app {app}` so its IPs are known before it starts, or name a pool with MOOR_POOL",
                    ns = req.pod.namespace,
                    app = w.app,
                    pod = req.pod
                ),
            )),
        }
    }

    /// Records the attachment (state pending) and returns the IP. Repeated
    /// for the same key, returns the same attachment.
    pub async fn allocate(&self, req: &AllocRequest) -> Result<Allocation> {
        let segments = self.segments_of(&req.tor).await?;
        if segments.is_empty() {
            return Err(refused(
                cni_code::TOR_UNDEFINED,
                format!(
                    "this node's ToR {t} is not defined yet: add it with `ipamctl tor add {t} --subnet CIDR --gateway IP`",
                    t = req.tor
                ),
            ));
        }
        let segment = |name: &str| {
            segments
                .iter()
                .find(|t| t.name == name)
                .cloned()
                .ok_or_else(|| {
                    Error::Internal(format!(
                        "segment {name} is not on ToR {}; it was deleted or moved",
                        req.tor
                    ))
                })
        };
        let segment_names: Vec<String> = segments.iter().map(|t| t.name.clone()).collect();
        if let Some(existing) = self.attached(&req.key).await? {
            return Ok(Allocation {
                tor: segment(&existing.tor)?,
                lease: existing,
                existing: true,
            });
        }
        let (pool_name, stable_name) = self.resolve_pool(req).await?;
        let lock = self.pool_lock(&pool_name);
        let _guard = lock.lock().await;
        for attempt in 0..MAX_ATTEMPTS {
            let (pool, pool_entry) = self.pool_entry(&pool_name).await?;
            let binding = if req.pod.is_known() {
                self.store
                    .get_json::<Binding>(&keys::binding(&req.pod))
                    .await?
            } else {
                None
            };
            // Read before the leases: a lease change after this read also moves
            // the counters, whose versions the commit checks.
            let (counters, _) = self
                .store
                .list_json::<FreeCount>(&keys::frees(&pool_name))
                .await?;
            let (lease_list, _) = self
                .store
                .list_json::<Lease>(&keys::leases(&pool.name))
                .await?;
            let leases: BTreeMap<Ipv4Addr, (Lease, Entry)> = lease_list
                .into_iter()
                .map(|(l, e)| (l.ip, (l, e)))
                .collect();
            let plain: BTreeMap<Ipv4Addr, Lease> =
                leases.iter().map(|(ip, (l, _))| (*ip, l.clone())).collect();
            let keeps_ip = req.pod.is_known() && pool.policy.keeps_ip(stable_name);
            let decision = allocate::decide(&AddInput {
                pool: &pool,
                tor: &req.tor,
                segments: &segment_names,
                leases: &plain,
                binding: binding.as_ref().map(|(b, _)| b),
                key: &req.key,
                keeps_ip,
            });
            let decision = match decision {
                Ok(d) => d,
                Err(r) => {
                    let bound_tor = match &r {
                        Refusal::WrongTor { bound_segment, .. } => {
                            let t = self.tor(bound_segment).await?;
                            Some(t.map_or(bound_segment.clone(), |t| t.switch().to_string()))
                        }
                        _ => None,
                    };
                    let nodes = match &bound_tor {
                        Some(t) => self.alive_nodes_of(t).await,
                        None => Vec::new(),
                    };
                    return Err(explain(r, &pool, &req.pod, bound_tor.as_deref(), &nodes));
                }
            };
            let AddDecision::Take {
                ip,
                segment: seg,
                new_binding,
            } = decision;
            let tor = segment(&seg)?;
            let old = leases.get(&ip);
            let attachment = Attachment {
                key: req.key.clone(),
                pod: req.pod.clone(),
                netns: req.netns.clone(),
                network: req.network.clone(),
                state: AttachmentState::Pending,
                created_unix: req.now_unix,
                created_binding: new_binding,
            };
            let lease = Lease {
                ip,
                pool: pool.name.clone(),
                tor: seg.clone(),
                binding: if new_binding {
                    Some(req.pod.clone())
                } else {
                    old.and_then(|(l, _)| l.binding.clone())
                },
                attachment: Some(attachment),
                evict: false,
                quarantine: None,
            };
            let lease_key = keys::lease(&pool.name, ip);
            let att_key = keys::attachment(&req.key);
            let mut txn = Txn::default();
            txn.expect(&keys::pool(&pool.name), Some(&pool_entry))
                .expect(&lease_key, old.map(|(_, e)| e))
                .expect(&att_key, None)
                .put(&lease_key, &lease)
                .put(
                    &att_key,
                    &AttachmentRef {
                        pool: pool.name.clone(),
                        ip,
                    },
                );
            if new_binding {
                let b = Binding {
                    pod: req.pod.clone(),
                    pool: pool.name.clone(),
                    ip,
                    tor: seg.clone(),
                };
                txn.expect(&keys::binding(&req.pod), None)
                    .put(&keys::binding(&req.pod), &b);
            } else if let Some((_, e)) = &binding {
                txn.expect(&keys::binding(&req.pod), Some(e));
            }
            if old.is_none() {
                // A free IP became leased: publish the pool's free count on
                // this segment, recomputed (so it also heals a stale one).
                let key = keys::free(&pool.name, &seg);
                let counter = counters.iter().find(|(_, e)| e.key == key);
                let total = pool.ips.get(&seg).map_or(0, |v| v.len() as u32);
                let used = 1 + plain.values().filter(|l| l.tor == seg).count() as u32;
                txn.expect(&key, counter.map(|(_, e)| e)).put(
                    &key,
                    &FreeCount {
                        total,
                        free: total.saturating_sub(used),
                    },
                );
            }
            if self.store.commit(txn).await? {
                return Ok(Allocation {
                    lease,
                    tor,
                    existing: false,
                });
            }
            backoff(attempt).await;
        }
        Err(contention(&format!("allocating in pool {pool_name}")))
    }

    /// The lease of an attachment, if this key is attached.
    pub async fn attached(&self, key: &AttachmentKey) -> Result<Option<Lease>> {
        let Some((r, _)) = self
            .store
            .get_json::<AttachmentRef>(&keys::attachment(key))
            .await?
        else {
            return Ok(None);
        };
        Ok(self
            .store
            .get_json::<Lease>(&keys::lease(&r.pool, r.ip))
            .await?
            .map(|(l, _)| l)
            .filter(|l| l.attachment.as_ref().is_some_and(|a| &a.key == key)))
    }

    /// Writes an attachment made during a store outage from the pod's cached
    /// binding (`lease` carries it, ready). Applies only if the store still
    /// keeps that IP for that pod and nothing is attached to it: `Ok(false)`
    /// means it does not, and the caller must take the pod's interface down.
    pub async fn attach_bound(&self, lease: &Lease) -> Result<bool> {
        let a = lease
            .attachment
            .as_ref()
            .expect("attach_bound needs an attachment");
        let lock = self.pool_lock(&lease.pool);
        let _guard = lock.lock().await;
        for attempt in 0..MAX_ATTEMPTS {
            let key = keys::lease(&lease.pool, lease.ip);
            let att_key = keys::attachment(&a.key);
            let Some((now, entry)) = self.store.get_json::<Lease>(&key).await? else {
                return Ok(false);
            };
            // The same pod by name: a re-created pod has a new UID.
            let same_pod = now
                .binding
                .as_ref()
                .is_some_and(|b| b.namespace == a.pod.namespace && b.name == a.pod.name);
            // A quarantined IP is in use by someone else on the network: the
            // pod's offline restart loses it (its interface is taken down).
            if !same_pod || now.evict || now.quarantine.is_some() {
                return Ok(false);
            }
            match &now.attachment {
                Some(other) if other.key == a.key => return Ok(true),
                Some(_) => return Ok(false),
                None => {}
            }
            let mut merged = now.clone();
            merged.attachment = Some(a.clone());
            let mut txn = Txn::default();
            txn.expect(&key, Some(&entry))
                .expect(&att_key, None)
                .put(&key, &merged)
                .put(
                    &att_key,
                    &AttachmentRef {
                        pool: lease.pool.clone(),
                        ip: lease.ip,
                    },
                );
            if self.store.commit(txn).await? {
                return Ok(true);
            }
            backoff(attempt).await;
        }
        Err(contention("writing an attachment made during an outage"))
    }

    /// Marks an attachment wired: from now on a restart keeps it.
    pub async fn mark_ready(&self, key: &AttachmentKey) -> Result<()> {
        for attempt in 0..MAX_ATTEMPTS {
            let Some((r, _)) = self
                .store
                .get_json::<AttachmentRef>(&keys::attachment(key))
                .await?
            else {
                return Err(Error::Internal(format!(
                    "attachment {key} vanished before it was wired"
                )));
            };
            let lease_key = keys::lease(&r.pool, r.ip);
            let Some((mut lease, entry)) = self.store.get_json::<Lease>(&lease_key).await? else {
                return Err(Error::Internal(format!(
                    "lease of {key} vanished before it was wired"
                )));
            };
            match lease.attachment.as_mut() {
                Some(a) if &a.key == key => a.state = AttachmentState::Ready,
                _ => {
                    return Err(Error::Internal(format!(
                        "{} is no longer attached to {key}",
                        r.ip
                    )))
                }
            }
            let mut txn = Txn::default();
            txn.expect(&lease_key, Some(&entry)).put(&lease_key, &lease);
            if self.store.commit(txn).await? {
                return Ok(());
            }
            backoff(attempt).await;
        }
        Err(contention("marking an attachment ready"))
    }

    /// Ends an attachment. The IP stays with the pod if it has a binding,
    /// else goes back to the pool. `rollback` (a failed or half-done ADD) also
    /// drops a binding that ADD created. `Ok(None)`: nothing was attached.
    pub async fn release(&self, key: &AttachmentKey, rollback: bool) -> Result<Option<Released>> {
        self.release_as(key, rollback, None).await
    }

    /// Rolls back an ADD whose duplicate-address probe heard another owner
    /// of the IP, and quarantines the IP: it stays out of use (a binding
    /// that this ADD did not create stays too, so the pod is refused rather
    /// than given another IP) until `ipamctl ip release`.
    pub async fn quarantine(&self, key: &AttachmentKey, q: Quarantine) -> Result<Option<Released>> {
        self.release_as(key, true, Some(q)).await
    }

    async fn release_as(
        &self,
        key: &AttachmentKey,
        rollback: bool,
        quarantine: Option<Quarantine>,
    ) -> Result<Option<Released>> {
        let att_key = keys::attachment(key);
        for attempt in 0..MAX_ATTEMPTS {
            let Some((r, att_entry)) = self.store.get_json::<AttachmentRef>(&att_key).await? else {
                return Ok(None);
            };
            let lock = self.pool_lock(&r.pool);
            let _guard = lock.lock().await;
            let lease_key = keys::lease(&r.pool, r.ip);
            let mut txn = Txn::default();
            txn.expect(&att_key, Some(&att_entry)).delete(&att_key);
            let lease = self.store.get_json::<Lease>(&lease_key).await?;
            let Some((mut lease, lease_entry)) = lease else {
                // A dangling index entry: drop it.
                if self.store.commit(txn).await? {
                    return Ok(None);
                }
                continue;
            };
            let attachment = match lease.attachment.take() {
                Some(a) if &a.key == key => a,
                other => {
                    // The IP moved on; only the index entry is ours.
                    lease.attachment = other;
                    if self.store.commit(txn).await? {
                        return Ok(None);
                    }
                    continue;
                }
            };
            txn.expect(&lease_key, Some(&lease_entry));
            if (rollback && attachment.created_binding) || lease.evict {
                if let Some(pod) = lease.binding.take() {
                    txn.delete(&keys::binding(&pod));
                }
            }
            let binding_kept = lease.binding.is_some();
            if quarantine.is_some() {
                lease.quarantine = quarantine.clone();
            }
            if binding_kept || lease.quarantine.is_some() {
                txn.put(&lease_key, &lease);
            } else {
                txn.delete(&lease_key);
                self.bump_free(&mut txn, &r.pool, &lease.tor, 1).await?;
            }
            if self.store.commit(txn).await? {
                return Ok(Some(Released {
                    ip: r.ip,
                    pool: r.pool,
                    binding_kept,
                    attachment,
                }));
            }
            backoff(attempt).await;
        }
        Err(contention("releasing an attachment"))
    }

    /// Names of the alive nodes of a ToR, for error messages; empty when the
    /// registry cannot be read.
    async fn alive_nodes_of(&self, tor: &str) -> Vec<String> {
        let now = crate::cni::now_unix();
        match crate::registry::nodes(self.store.as_ref()).await {
            Ok(nodes) => nodes
                .into_iter()
                .filter(|n| n.tor == tor && n.alive(now))
                .map(|n| n.name)
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// `ip evict` without force: a bound IP no pod holds is released now; a
    /// held one is marked so its binding goes with the holder's DEL. Returns
    /// the IP after the change, whether it was released, and the holder.
    pub async fn mark_evict(&self, ip: Ipv4Addr) -> Result<(IpView, bool, Option<Attachment>)> {
        self.drop_binding(ip, true).await
    }

    /// The binding of `ip` goes: now if no pod holds the IP (the IP is free
    /// again); if one does, now (`ip release`) or, with `at_del`, with that
    /// pod's DEL (`ip evict`). Returns the IP after the change, whether the
    /// binding was dropped now, and the holder.
    async fn drop_binding(
        &self,
        ip: Ipv4Addr,
        at_del: bool,
    ) -> Result<(IpView, bool, Option<Attachment>)> {
        let view = self.ip(ip).await?;
        let lock = self.pool_lock(&view.pool);
        let _guard = lock.lock().await;
        let key = keys::lease(&view.pool, ip);
        for attempt in 0..MAX_ATTEMPTS {
            let Some((mut lease, entry)) = self.store.get_json::<Lease>(&key).await? else {
                return Ok((
                    IpView {
                        lease: None,
                        ..view
                    },
                    false,
                    None,
                ));
            };
            let holder = lease.attachment.clone();
            let lifted = lease.quarantine.take();
            if let Some(q) = &lifted {
                if at_del {
                    return Err(Error::Conflict(format!(
                        "{ip} is quarantined (MAC {} answered for it on the network), not held by a pod: once that host is dealt with, lift the quarantine with `ipamctl ip release {ip}`",
                        q.mac
                    )));
                }
            }
            // `ip release` of a quarantined IP (the operator has dealt with
            // the other owner) lifts the quarantine and drops a binding kept
            // on the IP; an attachment (a pod restarted on it during a store
            // outage) stays, and the IP with it.
            let binding = lease.binding.clone();
            if binding.is_none() && lifted.is_none() {
                return Ok((
                    IpView {
                        lease: Some(lease),
                        ..view
                    },
                    false,
                    holder,
                ));
            }
            let mut txn = Txn::default();
            txn.expect(&key, Some(&entry));
            let dropped = if holder.is_some() && at_del {
                // The binding goes with the holder's DEL.
                lease.evict = true;
                txn.put(&key, &lease);
                false
            } else {
                if let Some(pod) = &binding {
                    txn.delete(&keys::binding(pod));
                }
                if holder.is_some() {
                    lease.binding = None;
                    txn.put(&key, &lease);
                } else {
                    txn.delete(&key);
                    self.bump_free(&mut txn, &view.pool, &lease.tor, 1).await?;
                }
                true
            };
            if self.store.commit(txn).await? {
                if let Some(q) = &lifted {
                    tracing::info!(%ip, other_mac = %q.mac, "quarantine lifted");
                }
                let lease = holder.is_some().then_some(lease);
                return Ok((IpView { lease, ..view }, dropped, holder));
            }
            backoff(attempt).await;
        }
        Err(contention(if at_del { "ip evict" } else { "ip release" }))
    }

    /// The pool's IP set as a stream: a snapshot, then every change; after a
    /// store error or compaction, a new snapshot (so nothing is missed).
    pub fn watch_pool(
        self: Arc<Self>,
        name: String,
    ) -> impl futures::Stream<Item = Result<PoolChange>> + Send + 'static {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let mut stop = self.shutdown.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                _ = feed_pool_changes(self, name, tx) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }

    /// Every attachment recorded for a node.
    pub async fn node_attachments(&self, node: &str) -> Result<Vec<Lease>> {
        let (refs, _) = self
            .store
            .list_json::<AttachmentRef>(&keys::node_attachments(node))
            .await?;
        let mut out = Vec::new();
        for (r, e) in refs {
            if let Some((l, _)) = self
                .store
                .get_json::<Lease>(&keys::lease(&r.pool, r.ip))
                .await?
            {
                if l.attachment
                    .as_ref()
                    .is_some_and(|a| keys::attachment(&a.key) == e.key)
                {
                    out.push(l);
                }
            }
        }
        Ok(out)
    }
}

/// Carves `n` more IPs for `pool` over `tors`, weighted by each ToR's free
/// IPs, and adds the carved-record writes to `txn`.
fn carve_into(
    pool: &mut Pool,
    tors: &[(Tor, Carved, Option<Entry>)],
    n: u32,
    txn: &mut Txn,
) -> Result<()> {
    let free: BTreeMap<String, u32> = tors
        .iter()
        .map(|(t, c, _)| (t.name.clone(), carve::free_count(t, c)))
        .collect();
    let shares = spread::by_free(n, &free).map_err(|total| {
        Error::Invalid(format!(
            "pool {} needs {n} more IPs but ToRs {} have only {total} free: add ranges, add ToRs or ask for fewer",
            pool.name,
            free.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })?;
    for (tor, carved, entry) in tors {
        let share = shares[&tor.name];
        if share == 0 {
            continue;
        }
        let ips = carve::lowest_free(tor, carved, share);
        let mut carved = carved.clone();
        for ip in &ips {
            carved.ips.insert(*ip, pool.name.clone());
        }
        let list = pool.ips.entry(tor.name.clone()).or_default();
        list.extend(ips);
        list.sort();
        txn.expect(&keys::carved(&tor.name), entry.as_ref())
            .put(&keys::carved(&tor.name), &carved);
    }
    Ok(())
}

/// What a pod (or its runtime) is told about a quarantined IP.
pub fn quarantine_message(ip: Ipv4Addr, mac: &str, pod: Option<&PodRef>) -> String {
    let whose = pod.map_or(String::new(), |p| format!(" of pod {p}"));
    format!(
        "IP {ip}{whose} is quarantined: MAC {mac} answered for it on the network (moor's duplicate-address probe), so no pod gets it; find that host (`ip neigh | grep -i {mac}` on the gateway, or the switch's MAC table), then `ipamctl ip release {ip}`"
    )
}

/// Turns a core refusal into the error a runtime shows to a person.
/// `bound_tor`: the ToR of a WrongTor refusal's segment.
fn explain(
    r: Refusal,
    pool: &Pool,
    pod: &PodRef,
    bound_tor: Option<&str>,
    nodes: &[String],
) -> Error {
    match r {
        Refusal::WrongTor {
            ip,
            bound_segment,
            node_tor,
        } => {
            let bound_tor = bound_tor.unwrap_or(&bound_segment);
            refused(
            cni_code::WRONG_TOR,
            format!(
                "pod {pod} keeps IP {ip} on ToR {bound_tor}{}, but this node is on ToR {node_tor}: schedule it onto a node of ToR {bound_tor} ({}; node label moor.io/tor={bound_tor}), or release the IP with `ipamctl ip release {ip}` to give it a new one",
                if bound_tor == bound_segment { String::new() } else { format!(" (segment {bound_segment})") },
                if nodes.is_empty() {
                    "no node of it is alive now".to_string()
                } else {
                    format!("it can run on {}", nodes.join(", "))
                }
            ),
        )
        }
        Refusal::OtherPool { ip, bound_pool } => refused(
            cni_code::OTHER_POOL,
            format!(
                "pod {pod} keeps IP {ip} of pool {bound_pool} but asks for pool {}: release it with `ipamctl ip release {ip}` first",
                pool.name
            ),
        ),
        Refusal::StillAttached { ip, holder } => refused(
            cni_code::TRY_AGAIN_LATER,
            format!(
                "pod {pod} keeps IP {ip}, but it is still attached to container {holder} (the pod's previous instance has not been torn down yet); retry once it is deleted"
            ),
        ),
        Refusal::Quarantined { ip, mac } => refused(
            cni_code::ADDRESS_CONFLICT,
            quarantine_message(ip, &mac, Some(pod)),
        ),
        Refusal::NotOnTor { pool_tors } => refused(
            cni_code::WRONG_TOR,
            format!(
                "pool {} has no IPs on this node's ToR (it has IPs on: {}): schedule the pod onto a node of those ToRs, or grow the pool onto this ToR",
                pool.name,
                if pool_tors.is_empty() { "none".to_string() } else { pool_tors.join(", ") }
            ),
        ),
        Refusal::Full { tor, counts } => refused(
            cni_code::POOL_FULL,
            format!(
                "pool {} is full on ToR {}: {} IPs, {} in use, {} kept for pods that are not running (ipamctl binding list --pool {}), {} free; grow it with `ipamctl pool resize {} --size N`",
                pool.name,
                tor,
                counts.total,
                counts.in_use,
                counts.bound,
                pool.name,
                counts.free,
                pool.name
            ),
        ),
    }
}

#[cfg(test)]
#[path = "ipam_tests.rs"]
mod tests;

/// One change of a pool's IP set, as `WatchPool` streams it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolChange {
    Snapshot { ips: Vec<Ipv4Addr>, revision: u64 },
    Add { ips: Vec<Ipv4Addr>, revision: u64 },
    Remove { ips: Vec<Ipv4Addr>, revision: u64 },
    Deleted { revision: u64 },
}

/// Feeds `tx` until the client goes away or the pool is deleted.
async fn feed_pool_changes(
    ipam: Arc<Ipam>,
    name: String,
    tx: tokio::sync::mpsc::Sender<Result<PoolChange>>,
) {
    use crate::store::StoreError;
    use futures::StreamExt;
    use std::collections::BTreeSet;
    let key = keys::pool(&name);
    let mut first = true;
    let mut failures = 0u64;
    'snapshot: loop {
        if failures > 0 {
            let pause = Duration::from_millis(200 * failures.min(10));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = tx.closed() => return,
            }
        }
        // Read the pool and the revision it was read at, then watch from
        // exactly there: every later change arrives, none is missed.
        let (entries, rev) = match ipam.store.list(&key).await {
            Ok(r) => r,
            Err(e) if first => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
            Err(_) => {
                failures += 1;
                continue;
            }
        };
        let Some(entry) = entries.iter().find(|e| e.key == key) else {
            let end = if first {
                Err(Error::NotFound(format!(
                    "pool {name} does not exist (ipamctl pool list)"
                )))
            } else {
                Ok(PoolChange::Deleted { revision: rev })
            };
            let _ = tx.send(end).await;
            return;
        };
        let pool: Pool = match crate::store::decode(entry) {
            Ok(p) => p,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        let mut watch = match ipam.store.watch(&key, rev).await {
            Ok(w) => w,
            // A commit landed between the read and the watch: read again.
            Err(StoreError::Compacted(_)) => continue,
            Err(e) if first => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
            Err(_) => {
                failures += 1;
                continue;
            }
        };
        first = false;
        failures = 0;
        let mut have: BTreeSet<Ipv4Addr> = pool.all_ips().into_iter().collect();
        let snap = PoolChange::Snapshot {
            ips: have.iter().copied().collect(),
            revision: rev,
        };
        if tx.send(Ok(snap)).await.is_err() {
            return;
        }
        loop {
            let ev = tokio::select! {
                ev = watch.next() => ev,
                _ = tx.closed() => return,
            };
            let ev = match ev {
                Some(Ok(ev)) => ev,
                // Connection lost or history compacted: a new snapshot.
                Some(Err(_)) | None => {
                    failures = 1;
                    continue 'snapshot;
                }
            };
            if ev.key != key {
                continue;
            }
            let Some(value) = ev.value else {
                let _ = tx
                    .send(Ok(PoolChange::Deleted {
                        revision: ev.revision,
                    }))
                    .await;
                return;
            };
            let Ok(pool) = serde_json::from_slice::<Pool>(&value) else {
                continue 'snapshot;
            };
            let now: BTreeSet<Ipv4Addr> = pool.all_ips().into_iter().collect();
            let removed: Vec<Ipv4Addr> = have.difference(&now).copied().collect();
            let added: Vec<Ipv4Addr> = now.difference(&have).copied().collect();
            have = now;
            for change in [
                (!removed.is_empty()).then_some(PoolChange::Remove {
                    ips: removed,
                    revision: ev.revision,
                }),
                (!added.is_empty()).then_some(PoolChange::Add {
                    ips: added,
                    revision: ev.revision,
                }),
            ]
            .into_iter()
            .flatten()
            {
                if tx.send(Ok(change)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Adds to `txn` the pool's published free counts, recomputed from `leases`,
/// guarded by the versions of the counters read before them (`old`): any
/// lease change since then also moved a counter, and fails the commit.
fn publish_counts(txn: &mut Txn, pool: &Pool, leases: &[Lease], old: &[Entry]) {
    for e in old {
        txn.expect(&e.key, Some(e));
        if !pool.ips.keys().any(|t| keys::free(&pool.name, t) == e.key) {
            txn.delete(&e.key);
        }
    }
    for (tor, ips) in &pool.ips {
        let key = keys::free(&pool.name, tor);
        if !old.iter().any(|e| e.key == key) {
            txn.expect(&key, None);
        }
        let used = leases.iter().filter(|l| &l.tor == tor).count() as u32;
        let total = ips.len() as u32;
        txn.put(
            &key,
            &FreeCount {
                total,
                free: total.saturating_sub(used),
            },
        );
    }
}
