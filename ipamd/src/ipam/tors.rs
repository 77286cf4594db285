//! ToRs (L2 domains) and their segments: define, read, delete.

use crate::core::{validate, Carved, Tor};
use crate::error::{Error, Result};
use crate::store::retry::{cas, Attempt};
use crate::store::{keys, Entry, StoreExt, Txn};

use super::Ipam;

impl Ipam {
    pub async fn add_tor(
        &self,
        name: &str,
        subnet: &str,
        gateway: &str,
        vlan: u32,
        ranges: &[(String, String)],
        segment_of: &str,
    ) -> Result<Tor> {
        cas(self.store.as_ref(), "tor add", || async move {
            let (tors, rev) = self.store.list_json::<Tor>(keys::TORS).await?;
            let existing: Vec<Tor> = tors.into_iter().map(|(t, _)| t).collect();
            let tor = validate::tor(name, subnet, gateway, vlan, ranges, segment_of, &existing)
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

    /// Every ToR and how many of its IPs are carved into pools.
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

    /// Which IPs of ToR `tor` are carved into which pool, and the record's
    /// entry (None: nothing carved yet).
    pub(super) async fn carved(&self, tor: &str) -> Result<(Carved, Option<Entry>)> {
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
}
