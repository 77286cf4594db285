//! Cross-checks every record in a store against the others: the invariants of
//! BRIEF.md in the form the store can show them. Tests run it after every
//! burst; operators can run it on a copy of a store (`ipamd --audit`).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use crate::core::{AttachmentRef, Binding, Carved, FreeCount, Lease, Pool, Tor};
use crate::store::{keys, Store, StoreError, StoreExt};

/// Every inconsistency found, in words; empty when the store is sound.
pub async fn audit(store: &dyn Store) -> Result<Vec<String>, StoreError> {
    let mut bad = Vec::new();
    let (pools, _) = store.list_json::<Pool>(keys::POOLS).await?;
    let pools: BTreeMap<String, Pool> = pools
        .into_iter()
        .map(|(p, _)| (p.name.clone(), p))
        .collect();
    let (tors, _) = store.list_json::<Tor>(keys::TORS).await?;

    // Each IP in at most one pool, and the ToR's carved record agrees.
    let mut owner: HashMap<Ipv4Addr, &str> = HashMap::new();
    for p in pools.values() {
        for (tor, ips) in &p.ips {
            for ip in ips {
                if let Some(other) = owner.insert(*ip, &p.name) {
                    bad.push(format!("{ip} is in pools {other} and {}", p.name));
                }
                if !tors
                    .iter()
                    .any(|(t, _)| &t.name == tor && t.subnet.contains(*ip))
                {
                    bad.push(format!("{ip} of pool {} is not in ToR {tor}", p.name));
                }
            }
        }
        match store
            .get_json::<String>(&keys::app(&p.namespace, &p.app))
            .await?
        {
            Some((name, _)) if name == p.name => {}
            other => bad.push(format!("app index of pool {} is {other:?}", p.name)),
        }
    }
    for (t, _) in &tors {
        let carved = store
            .get_json::<Carved>(&keys::carved(&t.name))
            .await?
            .map(|(c, _)| c)
            .unwrap_or_default();
        for (ip, pool) in &carved.ips {
            if owner.get(ip) != Some(&pool.as_str()) {
                bad.push(format!(
                    "ToR {} says {ip} is carved to {pool}, the pools disagree",
                    t.name
                ));
            }
        }
        let in_pools = owner.keys().filter(|ip| t.subnet.contains(**ip)).count();
        if in_pools != carved.ips.len() {
            bad.push(format!(
                "ToR {} has {} carved IPs but pools hold {in_pools} of its IPs",
                t.name,
                carved.ips.len()
            ));
        }
    }

    // Leases against pools, bindings and the attachment index.
    let (leases, _) = store.list_json::<Lease>("leases/").await?;
    for (l, e) in &leases {
        let where_ = &e.key;
        if keys::lease(&l.pool, l.ip) != *where_ {
            bad.push(format!("lease {where_} names {}/{}", l.pool, l.ip));
        }
        match pools.get(&l.pool) {
            None => bad.push(format!("lease {where_} of a missing pool")),
            Some(p) if p.tor_of(l.ip) != Some(l.tor.as_str()) => bad.push(format!(
                "lease {where_}: {} is not the pool's on ToR {}",
                l.ip, l.tor
            )),
            _ => {}
        }
        if l.binding.is_none() && l.attachment.is_none() && l.quarantine.is_none() {
            bad.push(format!(
                "lease {where_} holds nothing (a free IP must have no lease)"
            ));
        }
        if let Some(pod) = &l.binding {
            match store.get_json::<Binding>(&keys::binding(pod)).await? {
                Some((b, _)) if b.ip == l.ip && b.pool == l.pool => {}
                other => bad.push(format!(
                    "lease {where_} bound to {pod}, binding says {other:?}"
                )),
            }
        }
        if let Some(a) = &l.attachment {
            match store
                .get_json::<AttachmentRef>(&keys::attachment(&a.key))
                .await?
            {
                Some((r, _)) if r.ip == l.ip && r.pool == l.pool => {}
                other => bad.push(format!(
                    "lease {where_} attached to {}, index says {other:?}",
                    a.key
                )),
            }
        }
    }
    // The published free counts agree with the leases.
    let (counters, _) = store.list_json::<FreeCount>("free/").await?;
    for (c, e) in &counters {
        let owner = pools.values().find_map(|p| {
            p.ips
                .iter()
                .find(|(t, _)| keys::free(&p.name, t) == e.key)
                .map(|(t, ips)| (p, t, ips))
        });
        let Some((p, tor, ips)) = owner else {
            bad.push(format!("free count {} belongs to no pool's ToR", e.key));
            continue;
        };
        let used = leases
            .iter()
            .filter(|(l, _)| l.pool == p.name && &l.tor == tor)
            .count() as u32;
        let want = FreeCount {
            total: ips.len() as u32,
            free: (ips.len() as u32).saturating_sub(used),
        };
        if *c != want {
            bad.push(format!(
                "free count {} is {c:?}, the leases say {want:?}",
                e.key
            ));
        }
    }
    for p in pools.values() {
        for tor in p.ips.keys() {
            let key = keys::free(&p.name, tor);
            if !counters.iter().any(|(_, e)| e.key == key) {
                bad.push(format!(
                    "pool {} publishes no free count for ToR {tor}",
                    p.name
                ));
            }
        }
    }
    let (bindings, _) = store.list_json::<Binding>(keys::BINDINGS).await?;
    for (b, _) in &bindings {
        let ok = store
            .get_json::<Lease>(&keys::lease(&b.pool, b.ip))
            .await?
            .is_some_and(|(l, _)| l.binding.as_ref() == Some(&b.pod));
        if !ok {
            bad.push(format!(
                "binding of {} to {} has no matching lease",
                b.pod, b.ip
            ));
        }
    }
    let (refs, _) = store.list_json::<AttachmentRef>(keys::ATTACHMENTS).await?;
    for (r, e) in &refs {
        let ok = store
            .get_json::<Lease>(&keys::lease(&r.pool, r.ip))
            .await?
            .and_then(|(l, _)| l.attachment)
            .is_some_and(|a| keys::attachment(&a.key) == e.key);
        if !ok {
            bad.push(format!(
                "attachment index {} -> {} has no matching lease",
                e.key, r.ip
            ));
        }
    }
    Ok(bad)
}
