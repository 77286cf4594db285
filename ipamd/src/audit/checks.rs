//! The cross-checks themselves, one method per kind of record, over the
//! decoded snapshot.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use crate::core::{IpFamily, PoolOp, PoolStep};
use crate::store::keys;

use super::{Snapshot, REPORT_A_BUG};

impl Snapshot {
    pub(super) fn check(&mut self) {
        for key in std::mem::take(&mut self.carved_v1) {
            self.finding(
                &key,
                "is a schema 1 carved record, which ipamd replaces by per-pool records when it migrates the store to schema 2".to_string(),
                "start ipamd (it migrates the store at start)",
            );
        }
        for key in std::mem::take(&mut self.free_v2) {
            self.finding(
                &key,
                "is a free count, which moor no longer stores (since schema 3 counts are worked out from the leases)".to_string(),
                "delete it: the migration to schema 3 deletes those it finds, so this one was written since, not by moor",
            );
        }
        self.check_pools();
        self.check_leases();
        self.check_bindings();
        self.check_attachments();
    }

    /// Each IP in at most one pool and in its ToR; the ToRs' carved records
    /// and the app index agree with the pools.
    fn check_pools(&mut self) {
        let mut bad = Vec::new();
        let mut owner: HashMap<IpAddr, &str> = HashMap::new();
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
                        Some(t) if !t.carves_ip(p.family, *ip) => bad.push((
                            key.clone(),
                            format!(
                                "{ip} is not a pod IP a pool of family {} may have on ToR {tor} (subnets {})",
                                p.family,
                                t.families()
                                    .map(|f| f.subnet.to_string())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
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
        // What each pool holds per segment: its IPs, and those a change in
        // progress carved and has not made the pool's yet.
        let mut held: BTreeMap<(String, String), Vec<IpAddr>> = BTreeMap::new();
        for p in self.pools.values() {
            let carving = match &p.op {
                Some(PoolOp {
                    step: PoolStep::Carving { carved, .. },
                    ..
                }) => Some(carved),
                _ => None,
            };
            for (tor, ips) in p.ips.iter().chain(carving.into_iter().flatten()) {
                held.entry((tor.clone(), p.name.clone()))
                    .or_default()
                    .extend(ips);
            }
        }
        for ((tor, pool), ips) in &self.shares {
            let key = keys::carved(tor, pool);
            if !self.tors.contains_key(tor) {
                bad.push((
                    key.clone(),
                    format!(
                        "ToR {tor} does not exist, yet {} of its IPs are carved",
                        ips.len()
                    ),
                ));
            }
            let have = held.get(&(tor.clone(), pool.clone()));
            for ip in ips {
                if !have.is_some_and(|h| h.contains(ip)) {
                    let holder = owner
                        .get(ip)
                        .map_or("no pool".to_string(), |p| format!("pool {p}"));
                    bad.push((
                        key.clone(),
                        format!(
                            "says {ip} is carved to pool {pool}, but {holder} holds it on this ToR"
                        ),
                    ));
                }
                if self
                    .cooling
                    .get(tor)
                    .is_some_and(|c| c.until.contains_key(ip))
                {
                    bad.push((
                        key.clone(),
                        format!("{ip} is carved and cooling down at once"),
                    ));
                }
            }
        }
        for ((tor, pool), ips) in &held {
            let carved = self.shares.get(&(tor.clone(), pool.clone()));
            let missing: Vec<String> = ips
                .iter()
                .filter(|ip| !carved.is_some_and(|c| c.contains(ip)))
                .map(ToString::to_string)
                .collect();
            if !missing.is_empty() {
                bad.push((
                    keys::carved(tor, pool),
                    format!(
                        "lacks {} IPs pool {pool} holds on ToR {tor}: {}",
                        missing.len(),
                        missing.join(", ")
                    ),
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
                Some(p) if l.attachment.is_some() => {
                    // A dual-stack pod's IPv6 address is its IPv4 one's
                    // partner; a pod of one family has none.
                    let want = match p.family {
                        IpFamily::Dual => self.tors.get(&l.tor).and_then(|t| t.partner(l.ip)),
                        _ => None,
                    };
                    if l.ipv6 != want {
                        bad.push((
                            key.clone(),
                            format!(
                                "gives its pod IPv6 address {}, but pool {} ({}) pairs {} with {} on ToR {}",
                                l.ipv6.map_or("none".to_string(), |a| a.to_string()),
                                p.name,
                                p.family,
                                l.ip,
                                want.map_or("none".to_string(), |a| a.to_string()),
                                l.tor
                            ),
                            REPORT_A_BUG.to_string(),
                        ));
                    }
                }
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
                    None if !self.indexed => {}
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
