//! Schema 1 -> 2: the carved IPs of a ToR segment move from one record per
//! segment (`carved/<tor>`: every IP -> its pool, and the cooling IPs),
//! which outgrew etcd's request size for pools over many ToRs, to one
//! record per (pool, segment) (`carved/<tor>/<pool>`) and one of cooling
//! IPs (`carved/<tor>/_cooling`).
//!
//! Per segment: the new records are written, in transactions of at most
//! etcd's limits, then the old one is deleted, last. Every transaction
//! requires the old record unchanged, so a copy is never written over a
//! newer state: once the old record is gone the segment is done (and a
//! schema 2 writer may change its records after the bump), and a slower
//! migrator running alongside fails its commits and moves on. Killed at
//! any point, a re-run finds the old record still there and writes the
//! same records again (puts of the same values), or finds it gone.

use std::collections::BTreeMap;

use futures::future::BoxFuture;

use super::{decode, keys, Entry, Store, StoreError, Txn};
use crate::core::{Carved, CarvedShare, Cooling};

/// The migration, as `schema::MIGRATIONS` runs it.
pub fn run(store: &dyn Store) -> BoxFuture<'_, Result<(), StoreError>> {
    Box::pin(migrate(store))
}

async fn migrate(store: &dyn Store) -> Result<(), StoreError> {
    let (entries, _) = store.list(keys::CARVED).await?;
    for e in entries {
        if let Some((tor, None)) = keys::parse_carved(&e.key) {
            let tor = tor.to_string();
            migrate_segment(store, &tor, e).await?;
        }
    }
    Ok(())
}

/// The records schema 2 keeps for a segment schema 1 recorded as `old`.
fn records(tor: &str, old: &Carved) -> BTreeMap<String, Vec<u8>> {
    let mut shares: BTreeMap<&str, Vec<std::net::IpAddr>> = BTreeMap::new();
    for (ip, pool) in &old.ips {
        shares.entry(pool).or_default().push(*ip);
    }
    let mut out = BTreeMap::new();
    for (pool, mut ips) in shares {
        ips.sort();
        out.insert(keys::carved(tor, pool), json(&CarvedShare { ips }));
    }
    // Cool-downs that ended are dropped by the segment's next write.
    let mut until = old.cooling.clone();
    until.retain(|ip, _| !old.ips.contains_key(ip));
    if !until.is_empty() {
        out.insert(keys::cooling(tor), json(&Cooling { until }));
    }
    out
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialize")
}

async fn migrate_segment(store: &dyn Store, tor: &str, mut old: Entry) -> Result<(), StoreError> {
    let v1 = keys::carved_v1(tor);
    // Each pass either finishes the segment or sees the old record change
    // (an old ipamd still writing): then it reads it again.
    for _ in 0..8 {
        let want = records(tor, &decode::<Carved>(&old)?);
        let (present, _) = store.list(&keys::carved_prefix(tor)).await?;
        let mut ops: Vec<(String, Option<Vec<u8>>)> = Vec::new();
        for (key, value) in &want {
            if !present.iter().any(|e| &e.key == key && &e.value == value) {
                ops.push((key.clone(), Some(value.clone())));
            }
        }
        for e in &present {
            if !want.contains_key(&e.key) {
                ops.push((e.key.clone(), None));
            }
        }
        let mut rest = ops.into_iter().peekable();
        loop {
            let mut txn = Txn::default();
            txn.expect(&v1, Some(&old));
            while let Some((key, value)) = rest.peek() {
                let bytes = key.len() + value.as_ref().map_or(0, Vec::len) + 64;
                if !txn.ops.is_empty() && !txn.has_room(2, 0, bytes) {
                    break;
                }
                match value {
                    Some(v) => txn.ops.push(super::Op::Put {
                        key: key.clone(),
                        value: v.clone(),
                    }),
                    None => {
                        txn.delete(key);
                    }
                }
                rest.next();
            }
            let last = rest.peek().is_none();
            if last {
                txn.delete(&v1);
            }
            if !store.commit(txn).await? {
                break;
            }
            if last {
                return Ok(());
            }
        }
        // Lost a commit: the old record changed or is gone.
        match store.get(&v1).await? {
            None => return Ok(()),
            Some(e) => old = e,
        }
    }
    Err(StoreError::Other(format!(
        "store record {v1} kept changing while ipamd migrated it to schema 2: is an older ipamd still running on this store? Stop it, then start this one again"
    )))
}

#[cfg(test)]
#[path = "migrate_v2_tests.rs"]
mod tests;
