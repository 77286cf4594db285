//! Backup and restore of the whole store (`ipamctl backup`, `ipamctl
//! restore`). A backup is every record under moor's prefix, read in one
//! snapshot ([`Store::snapshot`]); a restore writes them into an empty
//! store in transactions within etcd's limits.
//!
//! Order: records are read and restored in *restore order*: everything but
//! `apps/` and `pools/` first, then those two. An ADD allocates only from a
//! pool it finds (through `apps/` or by name), so any pool a half-restored
//! store shows already has its carved IPs, leases and bindings: another
//! ipamd on the same etcd never hands out an IP a restored lease holds, and
//! a sticky pod never misses its binding. (The restoring ipamd itself also
//! refuses ADDs while it restores: see `api/backup.rs`.)
//!
//! Crash safety: the first transaction writes the marker record
//! [`MARKER`] (which backup, by its checksum) with the backup's schema
//! version, create-only and only if the store is still empty; every later
//! transaction checks the marker is unchanged; the last one deletes it. A
//! restore killed midway leaves the marker: restoring the same file again
//! writes every record again (puts are idempotent) and finishes; another
//! file, a backup, or a second restore are refused while it is there.

use std::sync::Arc;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::schema::{self, SchemaRecord};
use crate::store::{keys, Entry, Store, StoreError, StoreExt, Txn};

use super::listing::Items;
use super::Ipam;

/// The marker of a restore under way.
pub const MARKER: &str = "restoring";

/// Prefixes restored last, once what they point at is in the store.
const LAST: [&str; 2] = [keys::APPS, keys::POOLS];

/// Record kinds a store must not hold for a restore. `nodes/` is not one:
/// ipamds register as they start, and the registry is liveness, not state.
const STATE: [&str; 7] = [
    keys::TORS,
    keys::POOLS,
    keys::BINDINGS,
    keys::ATTACHMENTS,
    keys::APPS,
    keys::LEASES,
    keys::CARVED,
];

/// What a backup stream carries: records, then its summary.
#[derive(Debug)]
pub enum Part {
    Records(Vec<Entry>),
    End(Summary),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub records: u64,
    /// The `schema` record's version; 1 without one.
    pub schema_version: u32,
    pub revision: u64,
}

/// What a restore is told before the records: from the backup file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreHeader {
    /// The file's checksum: a resumed restore must be of the same file.
    pub backup_id: String,
    pub schema_version: u32,
    pub records: u64,
}

/// The marker's value.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Marker {
    #[serde(flatten)]
    header: RestoreHeader,
    started_unix: u64,
}

/// What a finished restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub records: u64,
    pub resumed: bool,
    /// The store's version after the schema check (an older backup is
    /// migrated).
    pub schema_version: u32,
}

fn is_last(key: &str) -> bool {
    LAST.iter().any(|p| key.starts_with(p))
}

impl Ipam {
    /// Every record of the store in restore order, one snapshot, pages
    /// as read; then the summary. Refused while a restore is under way.
    pub fn backup(&self) -> Items<Part> {
        let mut prefixes = vec![String::new()];
        prefixes.extend(LAST.iter().map(|p| p.to_string()));
        let pages = self.store.clone().snapshot(prefixes);
        let sum = Summary {
            records: 0,
            schema_version: 1,
            revision: 0,
        };
        futures::stream::try_unfold(
            (pages, sum, false),
            |(mut pages, mut sum, ended)| async move {
                if ended {
                    return Ok(None);
                }
                while let Some(page) = pages.next().await {
                    let (walk, page) = page.map_err(|e| match e {
                        StoreError::Compacted(rev) => Error::unavailable(format!(
                            "the store compacted revision {rev} while the backup read it (etcd compacts its history as it grows): run the backup again"
                        )),
                        e => e.into(),
                    })?;
                    sum.revision = page.revision;
                    let mut out = Vec::with_capacity(page.entries.len());
                    for e in page.entries {
                        // The first walk is of everything: LAST comes after.
                        if walk == 0 && is_last(&e.key) {
                            continue;
                        }
                        check_backup_entry(&e, &mut sum)?;
                        out.push(e);
                    }
                    if !out.is_empty() {
                        sum.records += out.len() as u64;
                        return Ok(Some((Part::Records(out), (pages, sum, false))));
                    }
                }
                Ok(Some((Part::End(sum.clone()), (pages, sum, true))))
            },
        )
        .boxed()
    }

    /// Starts a restore of the backup `h` says: refuses a newer schema
    /// and a store that holds state or another backup's marker; writes
    /// the marker (or finds its own: the restore resumes).
    pub async fn restore_begin(&self, h: RestoreHeader, now_unix: u64) -> Result<Restore> {
        if h.schema_version == 0 || h.backup_id.is_empty() {
            return Err(Error::Invalid(
                "restore header: schema_version (1 or more) and backup_id are required".into(),
            ));
        }
        if h.schema_version > schema::CURRENT {
            return Err(Error::Invalid(format!(
                "the backup is of schema version {}, newer than this ipamd {} knows ({}): restore it with an ipamd of the release that made it, or a newer one",
                h.schema_version,
                env!("CARGO_PKG_VERSION"),
                schema::CURRENT
            )));
        }
        let store = &self.store;
        let found = store.get_json::<Marker>(MARKER).await?;
        let resumed = match &found {
            Some((m, _)) if m.header == h => true,
            Some((m, _)) => {
                return Err(Error::Conflict(format!(
                    "the store holds an unfinished restore of another backup (checksum {}, {} records): finish it by restoring that file again, or restore into an empty store",
                    m.header.backup_id, m.header.records
                )))
            }
            None => false,
        };
        let marker = match found {
            Some((_, e)) => e,
            None => {
                let mut txn = Txn::default();
                for prefix in STATE {
                    let page = store.list_page(prefix, None, 1, None).await?;
                    if let Some(e) = page.entries.first() {
                        return Err(Error::Conflict(format!(
                            "the store is not empty (it holds {}): restore only into an empty store: a fresh etcd (or another --etcd-prefix), or a new redb file; nothing was changed",
                            e.key
                        )));
                    }
                    txn.expect_prefix_unchanged(prefix, page.revision);
                }
                txn.expect(MARKER, None)
                    .put(
                        MARKER,
                        &Marker {
                            header: h.clone(),
                            started_unix: now_unix,
                        },
                    )
                    .put(
                        schema::KEY,
                        &SchemaRecord {
                            version: h.schema_version,
                        },
                    );
                if !store.commit(txn).await? {
                    return Err(Error::Conflict(
                        "the store changed while the restore began (another restore, or an ipamd writing): restore only into an empty store that nothing else writes to".into(),
                    ));
                }
                store.get(MARKER).await?.ok_or_else(|| {
                    Error::Conflict("the restore marker went as soon as it was written: is another restore running?".into())
                })?
            }
        };
        Ok(Restore {
            store: store.clone(),
            header: h,
            marker,
            resumed,
            written: 0,
            txn: Txn::default(),
        })
    }
}

/// The checks a record passes on its way into a backup.
fn check_backup_entry(e: &Entry, sum: &mut Summary) -> Result<()> {
    if e.key == MARKER {
        return Err(Error::Conflict(format!(
            "the store holds the marker {MARKER:?} of a restore that did not finish: run that `ipamctl restore` again to finish it, then back up"
        )));
    }
    // A restore refuses a record that is not JSON (the file was edited):
    // a backup that holds one could never be restored, so it is refused
    // now, naming the record to repair first.
    if serde_json::from_slice::<serde::de::IgnoredAny>(&e.value).is_err() {
        return Err(Error::Store(StoreError::Corrupt {
            key: e.key.clone(),
            reason: "not JSON, and a backup holding it could not be restored".into(),
        }));
    }
    if e.key == schema::KEY {
        sum.schema_version = schema::parse(e).map_err(|why| {
            Error::Store(StoreError::Corrupt {
                key: e.key.clone(),
                reason: why,
            })
        })?;
    }
    Ok(())
}

/// A restore under way: records go in transactions within etcd's limits,
/// each guarded by the marker.
pub struct Restore {
    store: Arc<dyn Store>,
    header: RestoreHeader,
    marker: Entry,
    resumed: bool,
    written: u64,
    txn: Txn,
}

impl Restore {
    /// Takes the next records of the backup, in its order; writes a
    /// transaction whenever one is full.
    pub async fn records(&mut self, records: Vec<(String, Vec<u8>)>) -> Result<()> {
        for (key, value) in records {
            self.check_record(&key, &value)?;
            self.written += 1;
            if self.written > self.header.records {
                return Err(Error::Invalid(format!(
                    "the backup sent more records than its header says ({}): the file is not what was checked; restore it again",
                    self.header.records
                )));
            }
            if key.starts_with(keys::NODES) && self.store.get(&key).await?.is_some() {
                // A node registered since: its record is newer.
                continue;
            }
            let index = self.index_entry(&key, &value);
            let room = key.len()
                + value.len()
                + 8
                + index.as_ref().map_or(0, |(k, v)| k.len() + v.len() + 8);
            if !self.txn.has_room(2, 1, room) && !self.txn.ops.is_empty() {
                self.flush().await?;
            }
            self.txn.ops.push(crate::store::Op::Put { key, value });
            if let Some((key, value)) = index {
                self.txn.ops.push(crate::store::Op::Put { key, value });
            }
        }
        Ok(())
    }

    /// Into a store that indexes attachments (redb, `find.rs`), the index
    /// entry of an attached lease: a backup of etcd (schema 5) holds none.
    /// A backup that holds it puts the same entry again.
    fn index_entry(&self, key: &str, value: &[u8]) -> Option<(String, Vec<u8>)> {
        if self.store.keeps_history() || !key.starts_with(keys::LEASES) {
            return None;
        }
        let lease: crate::core::Lease = serde_json::from_slice(value).ok()?;
        let a = lease.attachment?;
        let r = crate::core::AttachmentRef {
            pool: lease.pool,
            ip: lease.ip,
        };
        Some((keys::attachment(&a.key), serde_json::to_vec(&r).ok()?))
    }

    fn check_record(&self, key: &str, value: &[u8]) -> Result<()> {
        if key.is_empty() || key == MARKER {
            return Err(Error::Invalid(format!(
                "backup record key {key:?} cannot be restored: the file is not a backup of moor"
            )));
        }
        if serde_json::from_slice::<serde::de::IgnoredAny>(value).is_err() {
            return Err(Error::Invalid(format!(
                "backup record {key} is not JSON: the file is not a backup of moor, or was edited"
            )));
        }
        if key == schema::KEY {
            let e = Entry {
                key: key.to_string(),
                value: value.to_vec(),
                version: 0,
            };
            if schema::parse(&e).ok() != Some(self.header.schema_version) {
                return Err(Error::Invalid(format!(
                    "backup record schema says another version than the header ({}): the file was edited",
                    self.header.schema_version
                )));
            }
        }
        Ok(())
    }

    /// Writes the records taken so far, if the marker is still ours.
    async fn flush(&mut self) -> Result<()> {
        if self.txn.ops.is_empty() {
            return Ok(());
        }
        let mut txn = std::mem::take(&mut self.txn);
        txn.expect_version(MARKER, self.marker.version);
        if !self.store.commit(txn).await? {
            return Err(Error::Conflict(format!(
                "the restore marker {MARKER:?} changed under this restore: another restore is running into this store"
            )));
        }
        Ok(())
    }

    /// Every record was sent: writes the rest, removes the marker, and
    /// brings an older schema to this ipamd's (the normal schema check).
    pub async fn finish(mut self) -> Result<Restored> {
        if self.written != self.header.records {
            return Err(Error::Invalid(format!(
                "the backup sent {} records and its header says {}: the file is not what was checked; restore it again (the store keeps the marker and resumes)",
                self.written, self.header.records
            )));
        }
        self.flush().await?;
        let mut txn = Txn::default();
        txn.expect_version(MARKER, self.marker.version)
            .delete(MARKER);
        if !self.store.commit(txn).await? {
            return Err(Error::Conflict(format!(
                "the restore marker {MARKER:?} changed under this restore: another restore is running into this store"
            )));
        }
        let opened = schema::ensure(self.store.as_ref())
            .await
            .map_err(|e| Error::Conflict(format!("restored, but the schema check failed: {e}")))?;
        Ok(Restored {
            records: self.written,
            resumed: self.resumed,
            schema_version: opened.version,
        })
    }
}
