//! Cross-checks every record in a store against the others: the invariants of
//! BRIEF.md in the form the store can show them. Tests run it after every
//! burst; operators run it on the live store with `ipamctl audit`.
//!
//! The whole store is read in one `list` (one etcd revision, one redb read
//! transaction), so a live store is checked as one consistent snapshot: an
//! ADD that commits meanwhile is either wholly in it or wholly not.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::core::{AttachmentRef, Binding, Carved, FreeCount, Lease, Pool, Tor};
use crate::registry::NodeRecord;
use crate::store::{decode, keys, schema, Entry, Store, StoreError};

/// The fix for what only a bug (or a hand edit) can leave behind: no
/// ipamctl command repairs it safely.
pub const REPORT_A_BUG: &str =
    "report a bug: moor wrote an inconsistent store (keep this output and a copy of the store)";

/// One inconsistency: the record it is about, what is wrong with it, and
/// what an operator does about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The record's key (relative to the etcd prefix).
    pub key: String,
    /// What is wrong, in words.
    pub problem: String,
    /// What to run or do: an ipamctl command, or [`REPORT_A_BUG`].
    pub fix: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} (fix: {})", self.key, self.problem, self.fix)
    }
}

/// What an audit saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The store's schema version: its record's, or 1 for a store without
    /// one (written before the record existed; ipamd adds it at start).
    pub schema_version: u32,
    /// Whether the store has a schema record.
    pub schema_recorded: bool,
    /// Records read.
    pub records: usize,
    /// The store revision the snapshot was read at.
    pub revision: u64,
    /// Empty when the store is sound.
    pub findings: Vec<Finding>,
}

/// Every inconsistency found, in words; empty when the store is sound.
pub async fn audit(store: &dyn Store) -> Result<Vec<String>, StoreError> {
    Ok(findings(store)
        .await?
        .iter()
        .map(ToString::to_string)
        .collect())
}

/// Every inconsistency found; empty when the store is sound.
pub async fn findings(store: &dyn Store) -> Result<Vec<Finding>, StoreError> {
    Ok(run(store).await?.findings)
}

/// Reads the whole store once and checks it. Fails only when the store
/// cannot be read; a record that does not decode is a finding.
pub async fn run(store: &dyn Store) -> Result<Report, StoreError> {
    let (entries, revision) = store.list("").await?;
    let records = entries.len();
    let mut s = Snapshot::default();
    for e in &entries {
        s.take(e);
    }
    s.check();
    let (schema_version, schema_recorded) = s.schema.unwrap_or((1, false));
    Ok(Report {
        schema_version,
        schema_recorded,
        records,
        revision,
        findings: s.bad,
    })
}

/// The store, decoded and indexed by key.
#[derive(Default)]
struct Snapshot {
    schema: Option<(u32, bool)>,
    tors: BTreeMap<String, Tor>,
    carved: BTreeMap<String, Carved>,
    pools: BTreeMap<String, Pool>,
    apps: BTreeMap<String, String>,
    free: BTreeMap<String, FreeCount>,
    leases: BTreeMap<String, Lease>,
    bindings: BTreeMap<String, Binding>,
    attachments: BTreeMap<String, AttachmentRef>,
    bad: Vec<Finding>,
}

impl Snapshot {
    fn finding(&mut self, key: &str, problem: String, fix: &str) {
        self.bad.push(Finding {
            key: key.to_string(),
            problem,
            fix: fix.to_string(),
        });
    }

    fn bug(&mut self, key: &str, problem: String) {
        self.finding(key, problem, REPORT_A_BUG);
    }

    fn decoded<T: DeserializeOwned>(&mut self, e: &Entry, kind: &str) -> Option<T> {
        match decode::<T>(e) {
            Ok(v) => Some(v),
            Err(err) => {
                let reason = match err {
                    StoreError::Corrupt { reason, .. } => reason,
                    other => other.to_string(),
                };
                self.bug(&e.key, format!("does not decode as a {kind}: {reason}"));
                None
            }
        }
    }

    /// Files one record under its kind, checking that its key names it.
    fn take(&mut self, e: &Entry) {
        let k = e.key.as_str();
        if k == schema::KEY {
            match schema::parse(e) {
                Ok(v) => {
                    self.schema = Some((v, true));
                    if v > schema::CURRENT {
                        self.finding(
                            k,
                            format!(
                                "schema version {v} is newer than this ipamd knows ({}): the other records were checked as version {}",
                                schema::CURRENT,
                                schema::CURRENT
                            ),
                            "upgrade ipamd to a version that knows this schema",
                        );
                    }
                }
                Err(reason) => self.bug(k, reason),
            }
            return;
        }
        let Some((kind, rest)) = k.split_once('/') else {
            return self.unknown(k);
        };
        match kind {
            "tors" => {
                if let Some(t) = self.decoded::<Tor>(e, "ToR") {
                    if keys::tor(&t.name) != k {
                        self.bug(k, format!("holds ToR {}", t.name));
                    }
                    self.tors.insert(t.name.clone(), t);
                }
            }
            "carved" => {
                if let Some(c) = self.decoded::<Carved>(e, "carved record") {
                    self.carved.insert(rest.to_string(), c);
                }
            }
            "pools" => {
                if let Some(p) = self.decoded::<Pool>(e, "pool") {
                    if keys::pool(&p.name) != k {
                        self.bug(k, format!("holds pool {}", p.name));
                    }
                    self.pools.insert(p.name.clone(), p);
                }
            }
            "apps" => {
                if let Some(p) = self.decoded::<String>(e, "pool name") {
                    self.apps.insert(k.to_string(), p);
                }
            }
            "free" => {
                if let Some(c) = self.decoded::<FreeCount>(e, "free count") {
                    self.free.insert(k.to_string(), c);
                }
            }
            "leases" => {
                if let Some(l) = self.decoded::<Lease>(e, "lease") {
                    if keys::lease(&l.pool, l.ip) != k {
                        self.bug(k, format!("holds the lease of {} in pool {}", l.ip, l.pool));
                    }
                    self.leases.insert(k.to_string(), l);
                }
            }
            "bindings" => {
                if let Some(b) = self.decoded::<Binding>(e, "binding") {
                    if keys::binding(&b.pod) != k {
                        self.bug(k, format!("holds the binding of pod {}", b.pod));
                    }
                    self.bindings.insert(k.to_string(), b);
                }
            }
            "attachments" => {
                if let Some(r) = self.decoded::<AttachmentRef>(e, "attachment index entry") {
                    if rest.split('/').count() != 3 || rest.split('/').any(str::is_empty) {
                        self.bug(
                            k,
                            "is not attachments/<node>/<container>/<ifname>".to_string(),
                        );
                    }
                    self.attachments.insert(k.to_string(), r);
                }
            }
            "nodes" => {
                if let Some(n) = self.decoded::<NodeRecord>(e, "node record") {
                    if keys::node(&n.name) != k {
                        self.bug(k, format!("holds the record of node {}", n.name));
                    }
                }
            }
            _ => self.unknown(k),
        }
    }

    fn unknown(&mut self, key: &str) {
        self.finding(
            key,
            "is not a key moor writes".to_string(),
            "delete it if it was put there by hand, else report a bug",
        );
    }

    fn check(&mut self) {
        self.check_pools();
        self.check_leases();
        self.check_free_counts();
        self.check_bindings();
        self.check_attachments();
    }

    /// Each IP in at most one pool and in its ToR; the ToRs' carved records
    /// and the app index agree with the pools.
    fn check_pools(&mut self) {
        let mut bad = Vec::new();
        let mut owner: HashMap<Ipv4Addr, &str> = HashMap::new();
        for p in self.pools.values() {
            let key = keys::pool(&p.name);
            for (tor, ips) in &p.ips {
                let t = self.tors.get(tor);
                for ip in ips {
                    if let Some(other) = owner.insert(*ip, &p.name) {
                        bad.push((key.clone(), format!("{ip} is also in pool {other}")));
                    }
                    match t {
                        None => bad.push((
                            key.clone(),
                            format!("{ip} is on ToR {tor}, which does not exist"),
                        )),
                        Some(t) if !t.subnet.contains(*ip) => bad.push((
                            key.clone(),
                            format!("{ip} is not in the subnet {} of ToR {tor}", t.subnet),
                        )),
                        _ => {}
                    }
                }
            }
            let app = keys::app(&p.namespace, &p.app);
            match self.apps.get(&app) {
                Some(name) if *name == p.name => {}
                Some(name) => bad.push((app, format!("names pool {name}, not {}", p.name))),
                None => bad.push((app, format!("missing: pool {} is for this app", p.name))),
            }
        }
        for (app, name) in &self.apps {
            match self.pools.get(name) {
                None => bad.push((
                    app.clone(),
                    format!("names pool {name}, which does not exist"),
                )),
                Some(p) if keys::app(&p.namespace, &p.app) != *app => bad.push((
                    app.clone(),
                    format!(
                        "names pool {name}, which is for app {}/{}",
                        p.namespace, p.app
                    ),
                )),
                _ => {}
            }
        }
        for (tor, carved) in &self.carved {
            let key = keys::carved(tor);
            if !self.tors.contains_key(tor) && !carved.ips.is_empty() {
                bad.push((
                    key.clone(),
                    format!(
                        "ToR {tor} does not exist, yet {} of its IPs are carved",
                        carved.ips.len()
                    ),
                ));
            }
            for (ip, pool) in &carved.ips {
                if owner.get(ip) != Some(&pool.as_str()) {
                    let holder = owner
                        .get(ip)
                        .map_or("no pool".to_string(), |p| format!("pool {p}"));
                    bad.push((
                        key.clone(),
                        format!("says {ip} is carved to pool {pool}, but {holder} holds it"),
                    ));
                }
            }
        }
        for t in self.tors.values() {
            let carved = self.carved.get(&t.name).map_or(0, |c| c.ips.len());
            let in_pools = owner.keys().filter(|ip| t.subnet.contains(**ip)).count();
            if in_pools != carved {
                bad.push((
                    keys::carved(&t.name),
                    format!("has {carved} carved IPs but pools hold {in_pools} IPs of the ToR"),
                ));
            }
        }
        for (key, problem) in bad {
            self.bug(&key, problem);
        }
    }

    /// Leases against pools, bindings and the attachment index.
    fn check_leases(&mut self) {
        let mut bad = Vec::new();
        for (key, l) in &self.leases {
            match self.pools.get(&l.pool) {
                None => bad.push((
                    key.clone(),
                    format!("is in pool {}, which does not exist", l.pool),
                    REPORT_A_BUG.to_string(),
                )),
                Some(p) if p.tor_of(l.ip) != Some(l.tor.as_str()) => bad.push((
                    key.clone(),
                    format!(
                        "says {} is the pool's on ToR {}; the pool disagrees",
                        l.ip, l.tor
                    ),
                    REPORT_A_BUG.to_string(),
                )),
                _ => {}
            }
            if l.binding.is_none() && l.attachment.is_none() && l.quarantine.is_none() {
                bad.push((
                    key.clone(),
                    "holds nothing (a free IP has no lease)".to_string(),
                    REPORT_A_BUG.to_string(),
                ));
            }
            if let Some(pod) = &l.binding {
                let bkey = keys::binding(pod);
                match self.bindings.get(&bkey) {
                    Some(b) if b.ip == l.ip && b.pool == l.pool => {}
                    Some(b) => bad.push((
                        key.clone(),
                        format!(
                            "is kept for pod {pod}, whose binding {bkey} is {} in pool {}",
                            b.ip, b.pool
                        ),
                        REPORT_A_BUG.to_string(),
                    )),
                    None => {
                        // `ip release` drops the lease's claim (and the
                        // binding key, which is absent anyway).
                        bad.push((
                            key.clone(),
                            format!("is kept for pod {pod}, which has no binding ({bkey})"),
                            format!("ipamctl ip release {}", l.ip),
                        ));
                    }
                }
            }
            if let Some(a) = &l.attachment {
                let akey = keys::attachment(&a.key);
                match self.attachments.get(&akey) {
                    Some(r) if r.ip == l.ip && r.pool == l.pool => {}
                    Some(r) => bad.push((
                        key.clone(),
                        format!(
                            "is attached to {}, whose index entry {akey} is {} in pool {}",
                            a.key, r.ip, r.pool
                        ),
                        REPORT_A_BUG.to_string(),
                    )),
                    None => bad.push((
                        key.clone(),
                        format!(
                            "is attached to {}, which has no index entry ({akey})",
                            a.key
                        ),
                        REPORT_A_BUG.to_string(),
                    )),
                }
            }
        }
        for (key, problem, fix) in bad {
            self.finding(&key, problem, &fix);
        }
    }

    /// The published free counts agree with the pools and their leases.
    fn check_free_counts(&mut self) {
        let mut bad = Vec::new();
        let mut used: HashMap<(&str, &str), u32> = HashMap::new();
        for l in self.leases.values() {
            *used.entry((&l.pool, &l.tor)).or_default() += 1;
        }
        let mut expected: BTreeMap<String, FreeCount> = BTreeMap::new();
        for p in self.pools.values() {
            for (tor, ips) in &p.ips {
                let total = ips.len() as u32;
                let used = used.get(&(p.name.as_str(), tor.as_str())).copied();
                expected.insert(
                    keys::free(&p.name, tor),
                    FreeCount {
                        total,
                        free: total.saturating_sub(used.unwrap_or(0)),
                    },
                );
            }
        }
        for (key, have) in &self.free {
            match expected.get(key) {
                None => bad.push((key.clone(), "belongs to no pool's ToR".to_string())),
                Some(want) if want != have => bad.push((
                    key.clone(),
                    format!(
                        "says {} free of {}; the pool and its leases say {} free of {}",
                        have.free, have.total, want.free, want.total
                    ),
                )),
                _ => {}
            }
        }
        for key in expected.keys() {
            if !self.free.contains_key(key) {
                bad.push((key.clone(), "missing: the pool has IPs on this ToR".into()));
            }
        }
        for (key, problem) in bad {
            self.bug(&key, problem);
        }
    }

    fn check_bindings(&mut self) {
        let mut bad = Vec::new();
        for (key, b) in &self.bindings {
            if !self.pools.contains_key(&b.pool) {
                bad.push((
                    key.clone(),
                    format!("keeps {} in pool {}, which does not exist", b.ip, b.pool),
                ));
                continue;
            }
            let lkey = keys::lease(&b.pool, b.ip);
            let ok = self
                .leases
                .get(&lkey)
                .is_some_and(|l| l.binding.as_ref() == Some(&b.pod));
            if !ok {
                bad.push((
                    key.clone(),
                    format!(
                        "keeps {} for pod {}, but the lease {lkey} is not kept for it",
                        b.ip, b.pod
                    ),
                ));
            }
        }
        for (key, problem) in bad {
            self.bug(&key, problem);
        }
    }

    fn check_attachments(&mut self) {
        let mut bad = Vec::new();
        for (key, r) in &self.attachments {
            let lkey = keys::lease(&r.pool, r.ip);
            let ok = self
                .leases
                .get(&lkey)
                .and_then(|l| l.attachment.as_ref())
                .is_some_and(|a| keys::attachment(&a.key) == *key);
            if !ok {
                bad.push((
                    key.clone(),
                    format!(
                        "points at {} in pool {}, but the lease {lkey} is not attached to it",
                        r.ip, r.pool
                    ),
                ));
            }
        }
        for (key, problem) in bad {
            self.bug(&key, problem);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::core::{AttachmentKey, PodRef, Policy};
    use crate::ipam::{AllocRequest, Ipam, PoolSpec};
    use crate::store::mem::MemStore;
    use crate::store::{StoreExt, Txn};

    fn req(cid: &str, pod: &str) -> AllocRequest {
        AllocRequest {
            key: AttachmentKey {
                node: "n1".into(),
                container_id: cid.into(),
                ifname: "eth0".into(),
            },
            pod: PodRef {
                namespace: "default".into(),
                name: pod.into(),
                uid: String::new(),
            },
            pool: None,
            netns: format!("/run/netns/{cid}"),
            network: "moor".into(),
            tor: "r1".into(),
            now_unix: 1,
        }
    }

    /// ToR r1 (10 pod IPs), pool web of 4, a sticky pod web-0 attached (c1)
    /// and a Deployment pod attached (c2); returns web-0's IP.
    async fn busy_store() -> (Arc<MemStore>, Ipv4Addr) {
        let store = Arc::new(MemStore::new());
        let ipam = Ipam::new(store.clone());
        ipam.add_tor(
            "r1",
            "10.1.0.0/24",
            "10.1.0.1",
            0,
            &[("10.1.0.10".into(), "10.1.0.19".into())],
            "",
        )
        .await
        .unwrap();
        ipam.create_pool(&PoolSpec {
            name: "web".into(),
            namespace: "default".into(),
            app: "web".into(),
            size: 4,
            tors: vec![],
            policy: Policy::Auto,
        })
        .await
        .unwrap();
        let a = ipam.allocate(&req("c1", "web-0")).await.unwrap();
        ipam.allocate(&req("c2", "web-5d8f7c9b4-x2x7q"))
            .await
            .unwrap();
        crate::store::schema::ensure(store.as_ref()).await.unwrap();
        (store, a.lease.ip)
    }

    async fn put(store: &MemStore, key: &str, value: &impl Serialize) {
        let mut t = Txn::default();
        t.put(key, value);
        assert!(store.commit(t).await.unwrap());
    }

    async fn put_raw(store: &MemStore, key: &str, raw: &[u8]) {
        let mut t = Txn::default();
        t.ops.push(crate::store::Op::Put {
            key: key.into(),
            value: raw.to_vec(),
        });
        assert!(store.commit(t).await.unwrap());
    }

    async fn delete(store: &MemStore, key: &str) {
        let mut t = Txn::default();
        t.delete(key);
        assert!(store.commit(t).await.unwrap());
    }

    /// The findings' keys, and every finding names its key and a fix.
    async fn keys_found(store: &MemStore) -> Vec<String> {
        let found = findings(store).await.unwrap();
        for f in &found {
            assert!(!f.problem.is_empty() && !f.fix.is_empty(), "{f:?}");
            assert!(f.to_string().starts_with(&f.key), "{f}");
        }
        found.into_iter().map(|f| f.key).collect()
    }

    #[tokio::test]
    async fn a_store_written_by_ipam_is_clean() {
        let (store, _) = busy_store().await;
        let r = run(store.as_ref()).await.unwrap();
        assert_eq!(r.findings, vec![], "{:#?}", r.findings);
        assert_eq!((r.schema_version, r.schema_recorded), (1, true));
        assert!(r.records > 5, "{r:?}");
        assert_eq!(audit(store.as_ref()).await.unwrap(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn a_store_without_schema_record_is_version_one_and_clean() {
        let (store, _) = busy_store().await;
        delete(&store, schema::KEY).await;
        let r = run(store.as_ref()).await.unwrap();
        assert_eq!((r.schema_version, r.schema_recorded), (1, false));
        assert!(r.findings.is_empty(), "{:#?}", r.findings);
    }

    #[tokio::test]
    async fn binding_without_its_lease_is_found() {
        let (store, ip) = busy_store().await;
        let stray = Binding {
            pod: PodRef {
                namespace: "default".into(),
                name: "ghost-0".into(),
                uid: String::new(),
            },
            pool: "web".into(),
            ip,
            tor: "r1".into(),
        };
        put(&store, "bindings/default/ghost-0", &stray).await;
        assert_eq!(keys_found(&store).await, ["bindings/default/ghost-0"]);
    }

    #[tokio::test]
    async fn binding_of_a_missing_pool_is_found() {
        let (store, ip) = busy_store().await;
        let (mut b, _) = store
            .get_json::<Binding>("bindings/default/web-0")
            .await
            .unwrap()
            .unwrap();
        b.pool = "gone".into();
        put(&store, "bindings/default/web-0", &b).await;
        let found = findings(store.as_ref()).await.unwrap();
        let keys: Vec<_> = found.iter().map(|f| f.key.as_str()).collect();
        let lease = format!("leases/web/{ip}");
        assert_eq!(
            keys,
            [lease.as_str(), "bindings/default/web-0"],
            "{found:#?}"
        );
        assert!(found[1].problem.contains("gone"), "{}", found[1]);
    }

    #[tokio::test]
    async fn lease_whose_binding_is_gone_names_ip_release() {
        let (store, ip) = busy_store().await;
        delete(&store, "bindings/default/web-0").await;
        let found = findings(store.as_ref()).await.unwrap();
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].key, format!("leases/web/{ip}"));
        assert_eq!(found[0].fix, format!("ipamctl ip release {ip}"));
    }

    #[tokio::test]
    async fn wrong_free_count_is_found() {
        let (store, _) = busy_store().await;
        put(&store, "free/web/r1", &FreeCount { total: 4, free: 4 }).await;
        let found = findings(store.as_ref()).await.unwrap();
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].key, "free/web/r1");
        assert!(found[0].problem.contains("4 free of 4"), "{}", found[0]);
        assert!(found[0].problem.contains("2 free of 4"), "{}", found[0]);
    }

    #[tokio::test]
    async fn missing_free_count_and_app_index_are_found() {
        let (store, _) = busy_store().await;
        delete(&store, "free/web/r1").await;
        delete(&store, "apps/default/web").await;
        let mut keys = keys_found(&store).await;
        keys.sort();
        assert_eq!(keys, ["apps/default/web", "free/web/r1"]);
    }

    #[tokio::test]
    async fn undecodable_record_is_a_finding_not_an_error() {
        let (store, ip) = busy_store().await;
        let key = format!("leases/web/{ip}");
        put_raw(&store, &key, b"{not json").await;
        let keys = keys_found(&store).await;
        // The lease does not decode; its binding and index entry then point
        // at nothing, and the free count looks one too high.
        assert!(keys.contains(&key), "{keys:?}");
        assert!(
            keys.contains(&"bindings/default/web-0".to_string()),
            "{keys:?}"
        );
        let r = run(store.as_ref()).await.unwrap();
        let f = r.findings.iter().find(|f| f.key == key).unwrap();
        assert!(f.problem.starts_with("does not decode as a lease"), "{f}");
    }

    #[tokio::test]
    async fn attachment_index_under_another_node_is_found() {
        let (store, _) = busy_store().await;
        let (r, _) = store
            .get_json::<AttachmentRef>("attachments/n1/c1/eth0")
            .await
            .unwrap()
            .unwrap();
        delete(&store, "attachments/n1/c1/eth0").await;
        put(&store, "attachments/n2/c1/eth0", &r).await;
        let mut keys = keys_found(&store).await;
        keys.sort();
        let lease = format!("leases/web/{}", r.ip);
        assert_eq!(keys, ["attachments/n2/c1/eth0".to_string(), lease]);
    }

    #[tokio::test]
    async fn lease_holding_nothing_and_carved_mismatch_are_found() {
        let (store, _) = busy_store().await;
        let ip: Ipv4Addr = "10.1.0.19".parse().unwrap();
        let (pool, _) = store.get_json::<Pool>("pools/web").await.unwrap().unwrap();
        assert!(!pool.all_ips().contains(&ip), "10.1.0.19 is not web's");
        let (mut carved, _) = store
            .get_json::<Carved>("carved/r1")
            .await
            .unwrap()
            .unwrap();
        carved.ips.insert(ip, "web".into());
        put(&store, "carved/r1", &carved).await;
        let empty = Lease {
            ip: pool.all_ips()[3],
            pool: "web".into(),
            tor: "r1".into(),
            binding: None,
            attachment: None,
            evict: false,
            quarantine: None,
        };
        let lease = format!("leases/web/{}", empty.ip);
        put(&store, &lease, &empty).await;
        let keys = keys_found(&store).await;
        assert!(keys.contains(&lease), "{keys:?}");
        assert!(keys.contains(&"carved/r1".to_string()), "{keys:?}");
        assert!(keys.contains(&"free/web/r1".to_string()), "{keys:?}");
    }

    #[tokio::test]
    async fn unknown_keys_and_newer_schema_are_found() {
        let (store, _) = busy_store().await;
        put(&store, "stray", &1).await;
        put(&store, schema::KEY, &serde_json::json!({"version": 2})).await;
        let r = run(store.as_ref()).await.unwrap();
        let keys: Vec<_> = r.findings.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(keys, [schema::KEY, "stray"], "{:#?}", r.findings);
        assert_eq!(r.schema_version, 2);
    }
}
