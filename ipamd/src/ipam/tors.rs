//! ToRs (L2 domains) and their segments: define, read, delete.

use std::collections::BTreeMap;

use crate::core::{validate, CarvedShare, Tor};
use crate::error::{Error, Result};
use crate::store::retry::{cas, Attempt};
use crate::store::{decode, keys, StoreExt, Txn};

use super::Ipam;

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
    pub async fn segments_of(&self, tor: &str) -> Result<Vec<Tor>> {
        let (all, _) = self.store.list_json::<Tor>(keys::TORS).await?;
        Ok(crate::core::segments_of(all.iter().map(|(t, _)| t), tor))
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
