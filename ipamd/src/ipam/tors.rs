//! ToRs (L2 domains) and their segments: define, read, delete.

use std::collections::BTreeMap;

use crate::core::{validate, CarvedShare, Tor};
use crate::error::{Error, Result};
use crate::store::retry::{cas, Attempt};
use crate::store::{decode, keys, StoreError, StoreExt, Txn};

use super::Ipam;

/// A ToR record that does not decode: the ToR its key names, and why.
#[derive(Debug, Clone)]
pub(crate) struct Unreadable {
    pub name: String,
    pub key: String,
    pub reason: String,
}

impl Unreadable {
    pub(crate) fn error(&self) -> Error {
        StoreError::Corrupt {
            key: self.key.clone(),
            reason: self.reason.clone(),
        }
        .into()
    }
}

impl Ipam {
    /// A single-family segment: [`Self::add_tor_families`] with one
    /// subnet.
    pub async fn add_tor(
        &self,
        name: &str,
        subnet: &str,
        gateway: &str,
        vlan: u32,
        ranges: &[(String, String)],
        segment_of: &str,
    ) -> Result<Tor> {
        let nets = [(subnet.to_string(), gateway.to_string())];
        self.add_tor_families(name, &nets, vlan, ranges, segment_of)
            .await
    }

    /// Defines a ToR segment with its (subnet, gateway) per family.
    pub async fn add_tor_families(
        &self,
        name: &str,
        nets: &[(String, String)],
        vlan: u32,
        ranges: &[(String, String)],
        segment_of: &str,
    ) -> Result<Tor> {
        cas(self.store.as_ref(), "tor add", || async move {
            let (tors, rev) = self.store.list_json::<Tor>(keys::TORS).await?;
            let existing: Vec<Tor> = tors.into_iter().map(|(t, _)| t).collect();
            let tor = validate::tor_families(name, nets, vlan, ranges, segment_of, &existing)
                .map_err(Error::Invalid)?;
            let mut txn = Txn::default();
            // No ToR appeared meanwhile (its subnet could overlap ours).
            txn.expect_prefix_unchanged(keys::TORS, rev)
                .expect(&keys::tor(name), None)
                .put(&keys::tor(name), &tor);
            Ok(Attempt::Commit(txn, tor))
        })
        .await
    }

    /// Every ToR and how many of its IPs are carved into pools (one list
    /// of every carved record; cooling IPs are not counted).
    pub async fn tors(&self) -> Result<Vec<(Tor, u32)>> {
        let (tors, _) = self.store.list_json::<Tor>(keys::TORS).await?;
        let (carved, _) = self.store.list(keys::CARVED).await?;
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        for e in &carved {
            if let Some((tor, Some(pool))) = keys::parse_carved(&e.key) {
                if pool != keys::COOLING {
                    *counts.entry(tor.to_string()).or_default() +=
                        decode::<CarvedShare>(e)?.ips.len() as u32;
                }
            }
        }
        Ok(tors
            .into_iter()
            .map(|(t, _)| {
                let n = counts.get(&t.name).copied().unwrap_or(0);
                (t, n)
            })
            .collect())
    }

    /// The segments a node of ToR `tor` serves: the ToR's own record and
    /// every record made with `--segment-of` it. A node configured with a
    /// segment's name serves that segment's ToR.
    /// A ToR record that does not decode fails this only when it is `tor`'s
    /// own (the others are left out: [`Self::segments_and_unreadable`]).
    pub async fn segments_of(&self, tor: &str) -> Result<Vec<Tor>> {
        Ok(self.segments_and_unreadable(tor).await?.0)
    }

    /// [`Self::segments_of`], and the ToR records that do not decode. Any
    /// of those may be a segment of `tor` (the record says whose segment
    /// it is): an ADD refuses a pool with IPs on one, naming it, and
    /// serves the other pools; a record is never taken for absent where
    /// it decides which IPs are free.
    pub(crate) async fn segments_and_unreadable(
        &self,
        tor: &str,
    ) -> Result<(Vec<Tor>, Vec<Unreadable>)> {
        let (entries, _) = self.store.list(keys::TORS).await?;
        let mut all = Vec::new();
        let mut unreadable = Vec::new();
        for e in entries {
            match decode::<Tor>(&e) {
                Ok(t) => all.push(t),
                Err(StoreError::Corrupt { key, reason }) => {
                    let name = key.strip_prefix(keys::TORS).unwrap_or(&key).to_string();
                    if name == tor {
                        return Err(StoreError::Corrupt { key, reason }.into());
                    }
                    unreadable.push(Unreadable { name, key, reason });
                }
                Err(other) => return Err(other.into()),
            }
        }
        Ok((crate::core::segments_of(all.iter(), tor), unreadable))
    }

    pub async fn tor(&self, name: &str) -> Result<Option<Tor>> {
        Ok(self
            .store
            .get_json::<Tor>(&keys::tor(name))
            .await?
            .map(|(t, _)| t))
    }

    pub async fn delete_tor(&self, name: &str) -> Result<()> {
        let Some((_, tor_entry)) = self.store.get_json::<Tor>(&keys::tor(name)).await? else {
            return Err(Error::NotFound(format!("ToR {name} does not exist")));
        };
        let Some(tor) = self.tor(name).await? else {
            return Err(Error::NotFound(format!("ToR {name} does not exist")));
        };
        let st = self.tor_state(tor).await?;
        if !st.carved.ips.is_empty() {
            let pools: Vec<&str> = st.shares.keys().map(String::as_str).collect();
            return Err(Error::Conflict(format!(
                "ToR {name} still has {} IPs in pools {}: delete or shrink those pools first",
                st.carved.ips.len(),
                pools.join(", ")
            )));
        }
        // The cooling record stays: a ToR defined again under this name
        // must not hand out IPs whose cool-down has not ended. No pool
        // carved here since the read (a new record would fail the commit).
        let mut txn = Txn::default();
        txn.expect(&keys::tor(name), Some(&tor_entry))
            .expect_prefix_unchanged(&keys::carved_prefix(name), st.rev)
            .delete(&keys::tor(name));
        if self.store.commit(txn).await? {
            Ok(())
        } else {
            Err(Error::Conflict(format!(
                "ToR {name} changed while deleting it; run the command again"
            )))
        }
    }
}
