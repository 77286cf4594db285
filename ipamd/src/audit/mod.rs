//! Cross-checks every record in a store against the others: the invariants of
//! BRIEF.md in the form the store can show them. Tests run it after every
//! burst; operators run it on the live store with `ipamctl audit`.
//!
//! The whole store is read in one `list` (one etcd revision, one redb read
//! transaction), so a live store is checked as one consistent snapshot: an
//! ADD that commits meanwhile is either wholly in it or wholly not.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::core::NodeRecord;
use crate::core::{AttachmentRef, Binding, CarvedShare, Cooling, Lease, Pool, Tor};
use crate::store::{decode, keys, schema, Entry, Store, StoreError};

/// The fix for what only a bug (or a hand edit) can leave behind: no
/// ipamctl command repairs it safely.
pub const REPORT_A_BUG: &str =
    "report a bug: moor wrote an inconsistent store (keep this output and a copy of the store)";

/// What every other finding's fix starts with while records do not decode.
pub const DEFER_TO_CORRUPT: &str =
    "first repair the records that do not decode (found corrupt above), which this may follow from";

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
    let mut s = Snapshot {
        indexed: !store.keeps_history(),
        ..Snapshot::default()
    };
    for e in &entries {
        s.take(e);
    }
    s.check();
    s.defer_to_corrupt();
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
    /// Whether every attachment has an index entry: not on etcd, where
    /// ipamd writes none since schema 5 (`ipam::find`); those left from
    /// before must still match their lease.
    indexed: bool,
    tors: BTreeMap<String, Tor>,
    /// (segment, pool) -> the pool's IPs there (`carved/<tor>/<pool>`).
    shares: BTreeMap<(String, String), Vec<std::net::IpAddr>>,
    /// Segment -> its cooling record.
    cooling: BTreeMap<String, Cooling>,
    /// Schema 1's `carved/<tor>` records (the migration to 2 removes them).
    carved_v1: Vec<String>,
    pools: BTreeMap<String, Pool>,
    apps: BTreeMap<String, String>,
    /// Schema 2's `free/<pool>/<tor>` records (the migration to 3 removes them).
    free_v2: Vec<String>,
    leases: BTreeMap<String, Lease>,
    bindings: BTreeMap<String, Binding>,
    attachments: BTreeMap<String, AttachmentRef>,
    bad: Vec<Finding>,
    /// Keys of the records that do not decode.
    corrupt: std::collections::BTreeSet<String>,
}

impl Snapshot {
    fn finding(&mut self, key: &str, problem: String, fix: &str) {
        self.bad.push(Finding {
            key: key.to_string(),
            problem,
            fix: fix.to_string(),
        });
    }

    /// With records that do not decode, the other findings may only
    /// follow from them (a lease kept for a pod whose binding is damaged
    /// looks kept for no one): their fix, such as releasing that IP, must
    /// wait for the repair, or it would undo what the damaged record held.
    fn defer_to_corrupt(&mut self) {
        if self.corrupt.is_empty() {
            return;
        }
        for f in &mut self.bad {
            if !self.corrupt.contains(&f.key) {
                f.fix = format!(
                    "{DEFER_TO_CORRUPT}; then, if this is still found: {}",
                    f.fix
                );
            }
        }
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
                // Not a bug to report but damage to repair: the fix is the
                // one the refused operations name.
                self.corrupt.insert(e.key.clone());
                self.finding(
                    &e.key,
                    format!("corrupt: does not decode as a {kind}: {reason}"),
                    crate::store::CORRUPT_FIX,
                );
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
            "carved" => match keys::parse_carved(k) {
                Some((_, None)) => self.carved_v1.push(k.to_string()),
                Some((tor, Some(keys::COOLING))) => {
                    if let Some(c) = self.decoded::<Cooling>(e, "cooling record") {
                        self.cooling.insert(tor.to_string(), c);
                    }
                }
                Some((tor, Some(pool))) => {
                    if let Some(c) = self.decoded::<CarvedShare>(e, "carved record") {
                        self.shares
                            .insert((tor.to_string(), pool.to_string()), c.ips);
                    }
                }
                None => self.unknown(k),
            },
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
            "free" => self.free_v2.push(k.to_string()),
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
}

mod checks;

#[cfg(test)]
mod tests;
