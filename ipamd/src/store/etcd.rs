//! The cluster store: etcd v3, shared by every node's ipamd.
//!
//! Every key lives under one prefix (`/moor/` by default), so one etcd can
//! hold other things, or several moor installations. An entry's version is
//! etcd's `mod_revision`, and a `list` returns the revision of the read, so
//! [`Check`]s map onto etcd compares one to one and a [`Txn`] is ONE etcd
//! transaction:
//!
//! - `Version { key, 0 }`: `mod_revision(key) == 0`, which etcd evaluates as
//!   true exactly when the key is absent;
//! - `Version { key, v }`: `mod_revision(key) == v`;
//! - `PrefixUnchangedSince { prefix, rev }`: `mod_revision < rev + 1` over
//!   the range of the prefix (etcd compares every key of a range; an empty
//!   range passes, like the other backends).
//!
//! Failures: each endpoint has its own connection, and a call goes to the
//! endpoint that answered last. A call that could not reach an endpoint (the
//! connection was refused or timed out, or the member has no leader) is sent
//! to the next one, which is safe because that endpoint never saw it. A call
//! that may have reached etcd and got no answer is retried elsewhere only if
//! it is a read; a commit returns `Unavailable`, since it may have applied.
//! Every call, failover included, answers within `request_timeout`, so an
//! ADD during an outage fails fast. Connections come back by themselves when
//! etcd does.
//!
//! etcd refuses transactions with more than `--max-txn-ops` (default 128)
//! compares, or more than that many operations: such a `Txn` fails with
//! [`StoreError::Other`] naming the limit, before anything is sent.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KvClient, TlsOptions, TxnOp, WatchOptions,
};

use super::{Check, Entry, Op, Page, Store, StoreError, Txn, WatchEvent, WatchStream};

mod watch;

/// etcd's default `--max-txn-ops`: the most compares, and the most
/// operations, one transaction may have.
pub const MAX_TXN_OPS: usize = 128;

/// How many keys one range request of a `list` returns at most; longer lists
/// are read in pages at the revision of the first one.
const PAGE: i64 = 1000;

/// The largest response ipamd accepts (tonic's default is 4 MiB; pool and
/// carved records of big pools can be large).
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// How to reach etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    /// Client URLs of the members, e.g. `http://127.0.0.1:2379`. A URL with
    /// no scheme gets `https://` when TLS files are given, else `http://`.
    pub endpoints: Vec<String>,
    /// CA certificate (PEM) that signed the members' server certificates.
    /// Required for `https://` endpoints.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's `--client-cert-auth`; needs `key`.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key: Option<PathBuf>,
    /// Every key is stored under this prefix; it ends with `/`.
    pub prefix: String,
    /// How long connecting to one member may take.
    pub dial_timeout: Duration,
    /// How long one call may take, failover to other members included.
    pub request_timeout: Duration,
}

pub const DEFAULT_PREFIX: &str = "/moor/";

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            ca: None,
            cert: None,
            key: None,
            prefix: DEFAULT_PREFIX.to_string(),
            dial_timeout: Duration::from_millis(1500),
            request_timeout: Duration::from_millis(1500),
        }
    }
}

impl EtcdOptions {
    /// Options for these endpoints, with the defaults for the rest.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    fn tls(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }
}

/// One member's connection.
struct Member {
    endpoint: String,
    /// Kept for the watch client; it also owns the connection's endpoint
    /// discovery.
    client: Client,
    /// The KV client, made once: a `Client` clone clones eight gRPC
    /// clients (and drops them after), which was a tenth of an allocator's
    /// CPU per transaction.
    kv: KvClient,
}

pub struct EtcdStore {
    members: Vec<Member>,
    /// The member calls go to first: the one that answered last.
    current: AtomicUsize,
    prefix: String,
    request_timeout: Duration,
    describe: String,
    /// Every watch, on one etcd watch stream.
    watches: watch::Mux,
}

fn read_pem(what: &str, path: &Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path)
        .map_err(|e| StoreError::Other(format!("cannot read {what} {}: {e}", path.display())))
}

fn invalid(msg: String) -> StoreError {
    StoreError::Other(msg)
}

impl EtcdStore {
    /// Sets up connections to the members; connects lazily, so ipamd starts
    /// while etcd is down (calls fail with `Unavailable` until it is back).
    /// Fails only for bad options: no endpoint, a bad URL, unreadable or
    /// inconsistent TLS files, a bad prefix.
    pub async fn open(opts: EtcdOptions) -> Result<Self, StoreError> {
        if opts.prefix.is_empty() || !opts.prefix.ends_with('/') {
            return Err(invalid(format!(
                "etcd prefix {:?} must be non-empty and end with '/', e.g. /moor/",
                opts.prefix
            )));
        }
        if opts.dial_timeout.is_zero() || opts.request_timeout.is_zero() {
            return Err(invalid("etcd timeouts must be more than zero".into()));
        }
        let tls = opts.tls();
        let endpoints: Vec<String> = opts
            .endpoints
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
            .map(|e| {
                if e.contains("://") {
                    e.to_string()
                } else if tls {
                    format!("https://{e}")
                } else {
                    format!("http://{e}")
                }
            })
            .collect();
        if endpoints.is_empty() {
            return Err(invalid(
                "no etcd endpoint: use etcd:http://HOST:2379[,http://HOST2:2379...]".into(),
            ));
        }
        for e in &endpoints {
            let https = e.starts_with("https://");
            if !https && !e.starts_with("http://") {
                return Err(invalid(format!(
                    "etcd endpoint {e}: only http:// and https:// URLs are supported"
                )));
            }
            if https && opts.ca.is_none() {
                return Err(invalid(format!(
                    "etcd endpoint {e} is https:// but no CA certificate is given (--etcd-ca)"
                )));
            }
            if !https && tls {
                return Err(invalid(format!(
                    "etcd TLS files are given but endpoint {e} is plain http://: use https://"
                )));
            }
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(opts.dial_timeout)
            // A member cut off from the others answers "no leader" at once
            // instead of holding the call: it is then retried elsewhere.
            .with_require_leader(true)
            // Notice a silently dead member while a call is in flight.
            .with_keep_alive(Duration::from_secs(5), opts.dial_timeout);
        if tls {
            let mut t = TlsOptions::new();
            if let Some(ca) = &opts.ca {
                t = t.ca_certificate(Certificate::from_pem(read_pem("--etcd-ca", ca)?));
            }
            match (&opts.cert, &opts.key) {
                (Some(cert), Some(key)) => {
                    t = t.identity(Identity::from_pem(
                        read_pem("--etcd-cert", cert)?,
                        read_pem("--etcd-key", key)?,
                    ));
                }
                (None, None) => {}
                _ => {
                    return Err(invalid(
                        "--etcd-cert and --etcd-key go together: give both or neither".into(),
                    ))
                }
            }
            options = options.with_tls(t);
        }
        let mut members = Vec::with_capacity(endpoints.len());
        for e in &endpoints {
            let client = Client::connect([e.as_str()], Some(options.clone()))
                .await
                .map_err(|err| invalid(format!("etcd endpoint {e}: {err}")))?;
            members.push(Member {
                endpoint: e.clone(),
                kv: client
                    .kv_client()
                    .max_decoding_message_size(MAX_RESPONSE_BYTES),
                client,
            });
        }
        // Spread the nodes' ipamds over the members.
        let start = std::process::id() as usize % members.len();
        Ok(Self {
            describe: format!("etcd:{} (prefix {})", endpoints.join(","), opts.prefix),
            members,
            current: AtomicUsize::new(start),
            prefix: opts.prefix,
            request_timeout: opts.request_timeout,
            watches: watch::Mux::default(),
        })
    }

    /// The prefix every key is stored under.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The client of the member calls currently go to, for what the `Store`
    /// trait does not cover (leases, watches). Its keys are NOT prefixed.
    pub fn client(&self) -> Client {
        self.members[self.current.load(Ordering::Relaxed) % self.members.len()]
            .client
            .clone()
    }

    fn full(&self, key: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + key.len());
        k.extend_from_slice(self.prefix.as_bytes());
        k.extend_from_slice(key.as_bytes());
        k
    }

    fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.endpoint.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn entry(&self, kv: &etcd_client::KeyValue) -> Result<Entry, StoreError> {
        entry(&self.prefix, kv)
    }

    /// Runs `f` against the members, starting with the current one, within
    /// `request_timeout` in all. Calls that no member received move on to
    /// the next member; so do calls that may have been received, if `read`.
    async fn call<T, F, Fut>(&self, read: bool, f: F) -> Result<T, StoreError>
    where
        F: Fn(&Member) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.members.len();
        let start = self.current.load(Ordering::Relaxed) % n;
        let deadline = Instant::now() + self.request_timeout;
        let mut why = Vec::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let m = &self.members[idx];
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let failure = match tokio::time::timeout(left, f(m)).await {
                Ok(Ok(v)) => {
                    if idx != start {
                        self.current.store(idx, Ordering::Relaxed);
                    }
                    return Ok(v);
                }
                Ok(Err(e)) => classify(e)?,
                Err(_) => {
                    Failure::MaybeSent(format!("no answer within {:?}", self.request_timeout))
                }
            };
            // Next time, start with the next member.
            let _ = self.current.compare_exchange(
                idx,
                (idx + 1) % n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            match failure {
                Failure::NotSent(msg) => why.push(format!("{}: {msg}", m.endpoint)),
                Failure::MaybeSent(msg) => {
                    why.push(format!("{}: {msg}", m.endpoint));
                    if !read {
                        return Err(StoreError::Unavailable(format!(
                            "etcd {} did not answer ({}); the transaction may or may not have been applied",
                            self.endpoints(),
                            why.join("; ")
                        )));
                    }
                }
            }
        }
        if why.is_empty() {
            why.push(format!("no answer within {:?}", self.request_timeout));
        }
        Err(StoreError::Unavailable(format!(
            "etcd {} did not answer ({})",
            self.endpoints(),
            why.join("; ")
        )))
    }
}

fn revision(r: i64) -> u64 {
    u64::try_from(r).unwrap_or(0)
}

fn to_rev(what: &str, r: u64) -> Result<i64, StoreError> {
    i64::try_from(r).map_err(|_| StoreError::Other(format!("{what} {r} is not an etcd revision")))
}

/// A key-value of etcd as an entry, its key relative to `prefix`.
fn entry(prefix: &str, kv: &etcd_client::KeyValue) -> Result<Entry, StoreError> {
    let key = kv
        .key()
        .strip_prefix(prefix.as_bytes())
        .ok_or_else(|| StoreError::Other(format!("etcd returned a key outside {prefix}")))
        .and_then(|k| {
            std::str::from_utf8(k).map_err(|_| StoreError::Corrupt {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                reason: "the key is not UTF-8".into(),
            })
        })?;
    Ok(Entry {
        key: key.to_string(),
        value: kv.value().to_vec(),
        version: revision(kv.mod_revision()),
    })
}

/// What one watch response says: events, or why the watch ended.
fn watch_events(
    prefix: &str,
    resp: &etcd_client::WatchResponse,
) -> Result<Vec<WatchEvent>, StoreError> {
    if resp.canceled() {
        return Err(if resp.compact_revision() > 0 {
            StoreError::Compacted(revision(resp.compact_revision()))
        } else {
            StoreError::Unavailable(format!("etcd ended the watch: {}", resp.cancel_reason()))
        });
    }
    let mut out = Vec::with_capacity(resp.events().len());
    for ev in resp.events() {
        let Some(kv) = ev.kv() else { continue };
        let e = entry(prefix, kv)?;
        out.push(WatchEvent {
            key: e.key,
            value: match ev.event_type() {
                EventType::Put => Some(e.value),
                EventType::Delete => None,
            },
            revision: e.version,
        });
    }
    Ok(out)
}

/// Why a call to one member failed, when another member may do better.
enum Failure {
    /// The member never got the call: safe to send it elsewhere.
    NotSent(String),
    /// The member may have got (and applied) the call.
    MaybeSent(String),
}

/// Sorts an etcd client error: `Err` for answers that another member would
/// give too (bad request, too many ops, auth).
fn classify(e: etcd_client::Error) -> Result<Failure, StoreError> {
    use tonic::Code;
    let status = match e {
        etcd_client::Error::GRpcStatus(s) => s,
        etcd_client::Error::TransportError(t) => return Ok(Failure::NotSent(t.to_string())),
        etcd_client::Error::IoError(io) => return Ok(Failure::MaybeSent(io.to_string())),
        other => return Err(StoreError::Other(format!("etcd: {other}"))),
    };
    let msg = describe_status(&status);
    match status.code() {
        _ if never_sent(&status) => Ok(Failure::NotSent(msg)),
        // Refused before it was acted on: the member is cut off from its
        // cluster, or is behind.
        Code::Unavailable | Code::ResourceExhausted
            if status.message().contains("no leader")
                || status.message().contains("too many requests") =>
        {
            Ok(Failure::NotSent(msg))
        }
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Unknown
        | Code::Aborted
        | Code::Internal => Ok(Failure::MaybeSent(msg)),
        _ if status.message().contains("too many operations") => Err(StoreError::Other(format!(
            "etcd refused a transaction with too many operations for its --max-txn-ops: {msg}"
        ))),
        _ => Err(StoreError::Other(format!("etcd: {msg}"))),
    }
}

/// Whether the call failed before it left this process: no connection to
/// the member could be made.
fn never_sent(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = source {
        let text = err.to_string();
        if text.contains("tcp connect error")
            || text.contains("error trying to connect")
            || text.contains("connect timed out")
        {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = err.source();
    }
    false
}

fn describe_status(status: &tonic::Status) -> String {
    let mut out = format!("{:?}: {}", status.code(), status.message());
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    let mut seen = status.message().to_string();
    while let Some(err) = source {
        let text = err.to_string();
        if !seen.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
            seen.push_str(&text);
        }
        source = err.source();
    }
    out
}

/// The ops of a transaction, one per key: a later op on a key replaces an
/// earlier one (what applying them in order does; etcd refuses a
/// transaction that names a key twice).
fn collapse(ops: Vec<Op>) -> Vec<Op> {
    let mut last: BTreeMap<String, Op> = BTreeMap::new();
    for op in ops {
        let key = match &op {
            Op::Put { key, .. } | Op::Delete { key } => key.clone(),
        };
        last.insert(key, op);
    }
    last.into_values().collect()
}

impl EtcdStore {
    /// Every entry under `prefix` (without values if `keys_only`), read in
    /// pages of one snapshot, and the revision of that snapshot.
    async fn range(&self, prefix: &str, keys_only: bool) -> Result<(Vec<Entry>, u64), StoreError> {
        let start = self.full(prefix);
        let end = prefix_end(&start);
        let mut out = Vec::new();
        let mut from = start;
        let mut at: Option<i64> = None;
        loop {
            let resp = self
                .call(true, |m| {
                    let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
                    if keys_only {
                        opts = opts.with_keys_only();
                    }
                    if let Some(rev) = at {
                        opts = opts.with_revision(rev);
                    }
                    let from = from.clone();
                    let mut kv = m.kv.clone();
                    async move { kv.get(from, Some(opts)).await }
                })
                .await?;
            let rev = match at {
                Some(rev) => rev,
                None => resp
                    .header()
                    .map(|h| h.revision())
                    .ok_or_else(|| StoreError::Other("etcd answered without a header".into()))?,
            };
            at = Some(rev);
            for kv in resp.kvs() {
                out.push(self.entry(kv)?);
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok((out, revision(rev))),
            }
        }
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let full = self.full(key);
        let resp = self
            .call(true, |m| {
                let full = full.clone();
                let mut kv = m.kv.clone();
                async move { kv.get(full, None).await }
            })
            .await?;
        match resp.kvs().first() {
            Some(kv) => Ok(Some(self.entry(kv)?)),
            None => Ok(None),
        }
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<Entry>, u64), StoreError> {
        self.range(prefix, false).await
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let (entries, _) = self.range(prefix, true).await?;
        Ok(entries.into_iter().map(|e| e.key).collect())
    }

    /// One range request with a limit, at `at_revision` when given: etcd
    /// keeps old revisions until a compaction, so the pages of one walk are
    /// one snapshot. Linearizable like every read here: a page may go to
    /// another member on failover, which must then have the revision too.
    async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        at_revision: Option<u64>,
    ) -> Result<Page, StoreError> {
        let start = self.full(prefix);
        let end = prefix_end(&start);
        let from = match start_after {
            Some(a) if a > prefix => {
                let mut k = self.full(a);
                // The first key after `a`.
                k.push(0);
                k
            }
            _ => start,
        };
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let at = at_revision.map(|r| to_rev("revision", r)).transpose()?;
        let resp = self
            .call(true, |m| {
                let mut opts = GetOptions::new().with_range(end.clone()).with_limit(limit);
                if let Some(rev) = at {
                    opts = opts.with_revision(rev);
                }
                let from = from.clone();
                let mut kv = m.kv.clone();
                async move { kv.get(from, Some(opts)).await }
            })
            .await
            .map_err(|e| match (e, at_revision) {
                (StoreError::Other(msg), Some(rev)) if msg.contains("compacted") => {
                    StoreError::Compacted(rev)
                }
                (e, _) => e,
            })?;
        let rev = match at_revision {
            Some(rev) => rev,
            None => resp
                .header()
                .map(|h| revision(h.revision()))
                .ok_or_else(|| StoreError::Other("etcd answered without a header".into()))?,
        };
        let entries = resp
            .kvs()
            .iter()
            .map(|kv| self.entry(kv))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page {
            more: resp.more() && !entries.is_empty(),
            entries,
            revision: rev,
        })
    }

    async fn commit(&self, txn: Txn) -> Result<bool, StoreError> {
        Ok(self.commit_at(txn).await?.is_some())
    }

    async fn commit_at(&self, txn: Txn) -> Result<Option<u64>, StoreError> {
        let ops = collapse(txn.ops);
        if txn.checks.len() > MAX_TXN_OPS || ops.len() > MAX_TXN_OPS {
            return Err(StoreError::Other(format!(
                "transaction too big for etcd: {} checks and {} writes, and etcd allows at most {MAX_TXN_OPS} of each (--max-txn-ops)",
                txn.checks.len(),
                ops.len()
            )));
        }
        let mut compares = Vec::with_capacity(txn.checks.len());
        for c in &txn.checks {
            compares.push(match c {
                Check::Version { key, version } => Compare::mod_revision(
                    self.full(key),
                    CompareOp::Equal,
                    to_rev("version", *version)?,
                ),
                Check::PrefixUnchangedSince { prefix, revision } => {
                    let start = self.full(prefix);
                    let end = prefix_end(&start);
                    Compare::mod_revision(
                        start,
                        CompareOp::Less,
                        to_rev("revision", revision.saturating_add(1))?,
                    )
                    .with_range(end)
                }
            });
        }
        let ops: Vec<TxnOp> = ops
            .into_iter()
            .map(|op| match op {
                Op::Put { key, value } => TxnOp::put(self.full(&key), value, None),
                Op::Delete { key } => TxnOp::delete(self.full(&key), None),
            })
            .collect();
        let etxn = etcd_client::Txn::new().when(compares).and_then(ops);
        let resp = self
            .call(false, |m| {
                let etxn = etxn.clone();
                let mut kv = m.kv.clone();
                async move { kv.txn(etxn).await }
            })
            .await?;
        if !resp.succeeded() {
            return Ok(None);
        }
        let rev = resp
            .header()
            .map(|h| h.revision())
            .ok_or_else(|| StoreError::Other("etcd answered without a header".into()))?;
        Ok(Some(revision(rev)))
    }

    fn keeps_history(&self) -> bool {
        true
    }

    /// An etcd watch from `after_revision + 1`, on the store's one watch
    /// stream (`watch.rs`). If etcd compacted that history, the stream's
    /// first item is `Compacted`; after any error the stream ends (the
    /// caller re-reads and watches again).
    async fn watch(&self, prefix: &str, after_revision: u64) -> Result<WatchStream, StoreError> {
        let start = self.full(prefix);
        let end = prefix_end(&start);
        let from = to_rev("revision", after_revision.saturating_add(1))?;
        let opts = WatchOptions::new()
            .with_range(end)
            .with_start_revision(from);
        self.watches.watch(self, start, opts).await
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

/// The end of the range of keys that start with `prefix` (etcd's rule).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    //! Against real etcd processes (Debian's etcd-server), one or three per
    //! test, on free 127.0.0.1 ports, each in its own data directory:
    //! [`moor_testkit::EtcdCluster`].
    use super::*;
    use crate::store::StoreOptions;
    use moor_testkit::cmd::free_port;
    use moor_testkit::{EtcdCluster, TempDir};
    use std::sync::Arc;

    /// Starts `n` members that form one cluster and waits until it answers.
    async fn cluster(test: &str, n: usize) -> EtcdCluster {
        start(test, n, EtcdCluster::start).await
    }

    /// Like [`cluster`], but clients must use https and a certificate of the
    /// test CA (`--client-cert-auth`), found in [`EtcdCluster::pki`].
    async fn tls_cluster(test: &str, n: usize) -> EtcdCluster {
        start(test, n, EtcdCluster::start_tls).await
    }

    type Start = fn(&Path, usize, &str, &[&str]) -> Result<EtcdCluster, String>;

    async fn start(test: &str, n: usize, how: Start) -> EtcdCluster {
        let dir = std::env::temp_dir().join(moor_testkit::unique(&format!("moor-etcd-{test}")));
        let etcd = how(&dir, n, &format!("moor-{test}"), &[])
            .unwrap_or_else(|e| panic!("these tests need a real etcd: {e}"));
        ready(&etcd).await;
        etcd
    }

    /// Until a write through every running member succeeds (30 s at most).
    async fn ready(etcd: &EtcdCluster) {
        etcd.wait_ready_async(Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    async fn raw(etcd: &EtcdCluster) -> Client {
        etcd.client().await.unwrap()
    }

    async fn store(endpoints: Vec<String>, prefix: &str) -> EtcdStore {
        EtcdStore::open(EtcdOptions {
            prefix: prefix.to_string(),
            ..EtcdOptions::new(endpoints)
        })
        .await
        .unwrap()
    }

    fn create(key: &str, value: &str) -> Txn {
        let mut t = Txn::default();
        t.expect(key, None).put(key, &value);
        t
    }

    #[tokio::test]
    async fn conforms() {
        let etcd = cluster("conforms", 1).await;
        let s = store(etcd.endpoints(), "/moor/").await;
        super::super::conformance::cas_semantics(&s).await;
        super::super::conformance::paged_list(&s).await;
    }

    #[tokio::test]
    async fn pages_are_one_snapshot_until_a_compaction() {
        let etcd = cluster("pages", 1).await;
        let s = store(etcd.endpoints(), "/moor/").await;
        for k in ["p/1", "p/2", "p/3"] {
            assert!(s.commit(create(k, "v")).await.unwrap());
        }
        let first = s.list_page("p/", None, 1, None).await.unwrap();
        assert_eq!(first.entries[0].key, "p/1");
        // Written after the first page: not in the walk's snapshot.
        assert!(s.commit(create("p/4", "v")).await.unwrap());
        let rest = s
            .list_page("p/", Some("p/1"), 10, Some(first.revision))
            .await
            .unwrap();
        assert_eq!(
            rest.entries
                .iter()
                .map(|e| e.key.as_str())
                .collect::<Vec<_>>(),
            ["p/2", "p/3"]
        );
        assert_eq!(rest.revision, first.revision);
        // Once that revision is compacted, the walk cannot go on.
        let (_, now) = s.list("p/").await.unwrap();
        raw(&etcd)
            .await
            .compact(to_rev("r", now).unwrap(), None)
            .await
            .unwrap();
        match s
            .list_page("p/", Some("p/1"), 10, Some(first.revision))
            .await
        {
            Err(StoreError::Compacted(rev)) => assert_eq!(rev, first.revision),
            other => panic!("a page at a compacted revision: {other:?}"),
        }
    }

    #[tokio::test]
    async fn keys_live_under_the_prefix() {
        let etcd = cluster("prefix", 1).await;
        let a = store(etcd.endpoints(), "/moor/").await;
        let b = store(etcd.endpoints(), "/other/").await;
        assert!(a.commit(create("pools/web", "a")).await.unwrap());
        assert!(b.commit(create("pools/web", "b")).await.unwrap());

        let mut raw = raw(&etcd).await;
        let got = raw.get("/moor/pools/web", None).await.unwrap();
        assert_eq!(got.kvs()[0].value(), b"\"a\"");
        let got = raw.get("/other/pools/web", None).await.unwrap();
        assert_eq!(got.kvs()[0].value(), b"\"b\"");
        assert!(raw.get("pools/web", None).await.unwrap().kvs().is_empty());
        // A key next to the prefix is not in it.
        raw.put("/moorx/pools/x", "1", None).await.unwrap();
        raw.put("/moor/pools/raw", "2", None).await.unwrap();
        let (all, rev) = a.list("").await.unwrap();
        assert_eq!(
            all.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
            ["pools/raw", "pools/web"]
        );
        assert!(all.iter().all(|e| e.version <= rev));
        let e = a.get("pools/web").await.unwrap().unwrap();
        assert_eq!(
            e.version,
            revision(raw.get("/moor/pools/web", None).await.unwrap().kvs()[0].mod_revision())
        );
        assert!(a.describe().contains("/moor/"), "{}", a.describe());
    }

    #[tokio::test]
    async fn lists_longer_than_a_page_and_big_transactions() {
        let etcd = cluster("page", 1).await;
        let s = store(etcd.endpoints(), "/moor/").await;
        // 2.5 pages, 100 writes a transaction.
        for chunk in 0..25 {
            let mut t = Txn::default();
            for i in 0..100 {
                t.put(&format!("l/{:05}", chunk * 100 + i), &i);
            }
            assert!(s.commit(t).await.unwrap());
        }
        let (all, rev) = s.list("l/").await.unwrap();
        assert_eq!(all.len(), 2500);
        assert!(all.windows(2).all(|w| w[0].key < w[1].key), "key order");
        let mut guard = Txn::default();
        guard.expect_prefix_unchanged("l/", rev).put("m", &1);
        assert!(s.commit(guard).await.unwrap());

        // etcd's --max-txn-ops counts compares and writes separately.
        let mut max = Txn::default();
        for i in 0..MAX_TXN_OPS {
            max.expect(&format!("n/{i}"), None)
                .put(&format!("n/{i}"), &i);
        }
        assert!(s.commit(max).await.unwrap());
        let mut over = Txn::default();
        for i in 0..=MAX_TXN_OPS {
            over.put(&format!("o/{i}"), &i);
        }
        match s.commit(over).await {
            Err(StoreError::Other(msg)) => assert!(msg.contains("128"), "{msg}"),
            other => panic!("a transaction of 129 writes: {other:?}"),
        }
        // One key written twice: the last write wins, as in the other
        // backends (etcd itself refuses such a transaction).
        let mut twice = Txn::default();
        twice.put("p", &1).put("p", &2).put("q", &1).delete("q");
        assert!(s.commit(twice).await.unwrap());
        assert_eq!(s.get("p").await.unwrap().unwrap().value, b"2");
        assert!(s.get("q").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn two_stores_race_create_only() {
        let etcd = cluster("race", 1).await;
        let a = Arc::new(store(etcd.endpoints(), "/moor/").await);
        let b = Arc::new(store(etcd.endpoints(), "/moor/").await);
        const KEYS: usize = 4;
        let mut tasks = Vec::new();
        for (s, name) in [(a.clone(), "a"), (b.clone(), "b")] {
            for t in 0..50 {
                let s = s.clone();
                tasks.push(tokio::spawn(async move {
                    let mut won = Vec::new();
                    for k in 0..KEYS {
                        let me = format!("{name}{t}");
                        if s.commit(create(&format!("ip/{k}"), &me)).await.unwrap() {
                            won.push((k, me));
                        }
                    }
                    won
                }));
            }
        }
        let mut winners: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for t in tasks {
            for (k, me) in t.await.unwrap() {
                winners.entry(k).or_default().push(me);
            }
        }
        for k in 0..KEYS {
            let w = winners.get(&k).cloned().unwrap_or_default();
            assert_eq!(w.len(), 1, "key ip/{k}: winners {w:?}");
            let stored = a.get(&format!("ip/{k}")).await.unwrap().unwrap();
            assert_eq!(stored.value, serde_json::to_vec(&w[0]).unwrap());
            assert_eq!(b.get(&format!("ip/{k}")).await.unwrap().unwrap(), stored);
        }
    }

    fn unavailable<T: std::fmt::Debug>(r: Result<T, StoreError>, what: &str) -> String {
        match r {
            Err(StoreError::Unavailable(msg)) => msg,
            other => panic!("{what} while etcd is down: {other:?}"),
        }
    }

    #[tokio::test]
    async fn fails_fast_while_etcd_is_down_and_recovers() {
        let etcd = cluster("outage", 1).await;
        let s = store(etcd.endpoints(), "/moor/").await;
        assert!(s.commit(create("k/1", "one")).await.unwrap());

        etcd.stop(0);
        for _ in 0..3 {
            let t = Instant::now();
            let msg = unavailable(s.get("k/1").await, "get");
            assert!(msg.contains(etcd.client_url(0)), "{msg}");
            unavailable(s.list("k/").await, "list");
            unavailable(s.commit(create("k/2", "two")).await, "commit");
            assert!(
                t.elapsed() < Duration::from_secs(3),
                "three calls took {:?}",
                t.elapsed()
            );
        }

        etcd.start_member(0);
        ready(&etcd).await;
        // The same store object, no reopening.
        let until = Instant::now() + Duration::from_secs(10);
        let e = loop {
            match s.get("k/1").await {
                Ok(e) => break e,
                Err(StoreError::Unavailable(_)) if Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("after etcd came back: {e}"),
            }
        };
        assert_eq!(e.unwrap().value, b"\"one\"");
        assert!(s.commit(create("k/2", "two")).await.unwrap());
        assert_eq!(s.list("k/").await.unwrap().0.len(), 2);
    }

    #[tokio::test]
    async fn slow_member_times_out() {
        // A member that accepts connections and never answers (SIGSTOP):
        // calls give up within the request timeout.
        let etcd = cluster("stopped", 1).await;
        let s = EtcdStore::open(EtcdOptions {
            request_timeout: Duration::from_millis(500),
            ..EtcdOptions::new(etcd.endpoints())
        })
        .await
        .unwrap();
        assert!(s.get("x").await.unwrap().is_none());
        etcd.pause(0, true);
        let t = Instant::now();
        let msg = unavailable(s.commit(create("x", "1")).await, "commit");
        assert!(msg.contains("may or may not"), "{msg}");
        unavailable(s.get("x").await, "get");
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
        etcd.pause(0, false);
    }

    #[tokio::test]
    async fn commits_go_on_when_a_member_is_killed() {
        let etcd = cluster("cluster", 3).await;
        let s = Arc::new(store(etcd.endpoints(), "/moor/").await);
        for i in 0..10 {
            assert!(s.commit(create(&format!("c/{i}"), "x")).await.unwrap());
        }
        // Kill the leader, which is also the member the store talks to,
        // with a burst of commits in flight.
        let victim = etcd.leader_async().await.expect("the cluster has a leader");
        s.current.store(victim, Ordering::Relaxed);
        let t0 = Instant::now();
        let burst: Vec<_> = (0..20)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    let mut errors = Vec::new();
                    loop {
                        // Create-only, so a commit that applied but whose
                        // answer was lost shows as already there.
                        match s.commit(create(&format!("burst/{i}"), "x")).await {
                            Ok(_) => return (errors, t0.elapsed()),
                            Err(StoreError::Unavailable(e)) if t0.elapsed().as_secs() < 15 => {
                                errors.push(e);
                                tokio::time::sleep(Duration::from_millis(50)).await
                            }
                            Err(e) => panic!("burst/{i}: {e} after {errors:?}"),
                        }
                    }
                })
            })
            .collect();
        etcd.kill9(victim);
        let mut errors = Vec::new();
        let mut slowest = Duration::ZERO;
        for b in burst {
            let (e, took) = b.await.unwrap();
            errors.extend(e);
            slowest = slowest.max(took);
        }
        assert_eq!(s.list("burst/").await.unwrap().0.len(), 20);
        eprintln!(
            "killed the leader {} of 3: {} Unavailable in the burst, all 20 committed within {slowest:?}; e.g. {:?}",
            etcd.name(victim),
            errors.len(),
            errors.first()
        );
        let mut failures = 0;
        for i in 0..50 {
            loop {
                match s.commit(create(&format!("after/{i}"), "x")).await {
                    Ok(applied) => {
                        assert!(applied || failures > 0);
                        break;
                    }
                    Err(StoreError::Unavailable(e)) => {
                        failures += 1;
                        assert!(failures < 100, "still failing: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
        let (after, _) = s.list("after/").await.unwrap();
        assert_eq!(after.len(), 50);
        assert_eq!(failures, 0, "commits failed after the burst had passed");
    }

    #[tokio::test]
    async fn tls_with_client_certificates() {
        let etcd = tls_cluster("tls", 1).await;
        let pki = etcd.pki().unwrap();
        let opts = StoreOptions {
            etcd_ca: Some(pki.join("ca.pem")),
            etcd_cert: Some(pki.join("client.pem")),
            etcd_key: Some(pki.join("client.key")),
            etcd_prefix: "/moor/".into(),
        };
        let spec = format!("etcd:{}", etcd.endpoints().join(","));
        let s = crate::store::open(&spec, &opts).await.unwrap();
        super::super::conformance::cas_semantics(&*s).await;

        // Without a client certificate etcd refuses the connection.
        let anon = StoreOptions {
            etcd_cert: None,
            etcd_key: None,
            ..opts.clone()
        };
        let s = crate::store::open(&spec, &anon).await.unwrap();
        assert!(s.get("a/1").await.is_err());
        // Plain http to a TLS member gets nowhere either.
        let plain = etcd.client_url(0).replace("https://", "http://");
        let s = store(vec![plain], "/moor/").await;
        assert!(s.get("a/1").await.is_err());
    }

    #[tokio::test]
    async fn watch_reports_compaction_and_outage() {
        use futures::StreamExt;
        let etcd = cluster("watch", 1).await;
        let s = store(etcd.endpoints(), "/moor/").await;
        let (_, old) = s.list("w/").await.unwrap();
        assert!(s.commit(create("w/1", "a")).await.unwrap());
        assert!(s.commit(create("w/2", "b")).await.unwrap());
        // History is there: both changes are replayed.
        let mut w = s.watch("w/", old).await.unwrap();
        for key in ["w/1", "w/2"] {
            let ev = w.next().await.unwrap().unwrap();
            assert_eq!((ev.key.as_str(), ev.value.is_some()), (key, true));
        }
        // Compacted history: the stream says so first.
        let (_, now) = s.list("w/").await.unwrap();
        raw(&etcd)
            .await
            .compact(to_rev("r", now).unwrap(), None)
            .await
            .unwrap();
        let mut w = s.watch("w/", old).await.unwrap();
        match tokio::time::timeout(Duration::from_secs(3), w.next()).await {
            Ok(Some(Err(StoreError::Compacted(rev)))) => assert_eq!(rev, now),
            other => panic!("watch from before a compaction: {other:?}"),
        }
        // etcd going away ends a live watch with Unavailable, promptly.
        let mut w = s.watch("w/", now).await.unwrap();
        etcd.stop(0);
        match tokio::time::timeout(Duration::from_secs(3), w.next()).await {
            Ok(Some(Err(StoreError::Unavailable(_)))) => {}
            other => panic!("watch while etcd stops: {other:?}"),
        }
        assert!(w.next().await.is_none(), "the stream ends after an error");
        unavailable(s.watch("w/", now).await.map(|_| ()), "watch");
    }

    /// etcd's own gauge `name` (its /metrics, plain HTTP).
    fn etcd_gauge(etcd: &EtcdCluster, name: &str) -> f64 {
        use std::io::{Read, Write};
        let addr = etcd.client_url(0).trim_start_matches("http://").to_string();
        let mut conn = std::net::TcpStream::connect(&addr).unwrap();
        write!(conn, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut body = String::new();
        conn.read_to_string(&mut body).unwrap();
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in etcd's metrics"))
    }

    /// `n` watches of `base/<i>/` from `rev`, then a key created under
    /// each: each watch gets the change under its own prefix, and only that.
    async fn each_watch_gets_its_own(
        s: &EtcdStore,
        base: &str,
        n: usize,
        rev: u64,
    ) -> Vec<WatchStream> {
        use futures::StreamExt;
        let mut watches = Vec::new();
        for i in 0..n {
            watches.push(s.watch(&format!("{base}/{i}/"), rev).await.unwrap());
        }
        for i in 0..n {
            assert!(s
                .commit(create(&format!("{base}/{i}/k"), "v"))
                .await
                .unwrap());
        }
        for (i, w) in watches.iter_mut().enumerate() {
            let ev = tokio::time::timeout(Duration::from_secs(3), w.next())
                .await
                .unwrap_or_else(|_| panic!("watch {i} got nothing"))
                .unwrap()
                .unwrap();
            assert_eq!(ev.key, format!("{base}/{i}/k"));
        }
        watches
    }

    #[tokio::test]
    async fn watches_share_one_stream() {
        use futures::StreamExt;
        let etcd = cluster("mux", 1).await;
        let s = store(etcd.endpoints(), "/moor/").await;
        let (_, rev) = s.list("m/").await.unwrap();
        let mut watches = each_watch_gets_its_own(&s, "m", 30, rev).await;
        let gauge = |name: &str| etcd_gauge(&etcd, name);
        assert_eq!(gauge("etcd_debugging_mvcc_watch_stream_total"), 1.0);
        assert_eq!(gauge("etcd_debugging_mvcc_watcher_total"), 30.0);
        // A watch dropped is cancelled in etcd within the sweep (1 s; 3 s
        // allowed), though no event comes for it.
        drop(watches.remove(0));
        let deadline = Instant::now() + Duration::from_secs(3);
        while gauge("etcd_debugging_mvcc_watcher_total") != 29.0 {
            assert!(Instant::now() < deadline, "the dropped watch stayed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The others go on; a watch from before a compaction fails alone.
        let (_, now) = s.list("m/").await.unwrap();
        raw(&etcd)
            .await
            .compact(to_rev("r", now).unwrap(), None)
            .await
            .unwrap();
        let mut old = s.watch("m/1/", rev).await.unwrap();
        match tokio::time::timeout(Duration::from_secs(3), old.next()).await {
            Ok(Some(Err(StoreError::Compacted(_)))) => {}
            other => panic!("watch from before a compaction: {other:?}"),
        }
        assert!(s.commit(create("m/2/more", "v")).await.unwrap());
        let ev = watches[1].next().await.unwrap().unwrap();
        assert_eq!(ev.key, "m/2/more");
        // etcd going away ends every watch on the stream with Unavailable.
        etcd.stop(0);
        for w in &mut watches {
            match tokio::time::timeout(Duration::from_secs(3), w.next()).await {
                Ok(Some(Err(StoreError::Unavailable(_)))) => {}
                other => panic!("watch while etcd stops: {other:?}"),
            }
            assert!(w.next().await.is_none(), "the stream ends after an error");
        }
        // Back: a new watch opens a new stream.
        etcd.start_member(0);
        etcd.wait_ready_async(Duration::from_secs(10))
            .await
            .unwrap();
        let (_, now) = s.list("m/").await.unwrap();
        let mut w = s.watch("m/3/", now).await.unwrap();
        assert!(s.commit(create("m/3/back", "v")).await.unwrap());
        let ev = tokio::time::timeout(Duration::from_secs(3), w.next()).await;
        assert_eq!(ev.unwrap().unwrap().unwrap().key, "m/3/back");
    }

    /// A caller dropped while its ask waits for the stream's sender (held
    /// here as a cancel in flight holds it) leaves no ask queued unsent:
    /// the watches asked after it get their own events.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watch_dropped_while_it_is_asked_mixes_up_no_other() {
        let etcd = cluster("ask", 1).await;
        let s = Arc::new(store(etcd.endpoints(), "/moor/").await);
        let (_, rev) = s.list("a/").await.unwrap();
        let _open = s.watch("a/open/", rev).await.unwrap();
        s.watches
            .with_sender_held(async {
                let asking = tokio::spawn({
                    let s = s.clone();
                    async move { s.watch("a/dropped/", rev).await }
                });
                // Its ask is queued; it waits for the sender.
                tokio::time::sleep(Duration::from_millis(200)).await;
                assert!(!asking.is_finished());
                asking.abort();
                let _ = asking.await;
            })
            .await;
        each_watch_gets_its_own(&s, "a", 3, rev).await;
    }

    #[tokio::test]
    async fn bad_options_are_refused() {
        let bad = |o: EtcdOptions| async move {
            match EtcdStore::open(o).await {
                Err(StoreError::Other(msg)) => msg,
                Err(e) => panic!("{e}"),
                Ok(_) => panic!("accepted"),
            }
        };
        assert!(bad(EtcdOptions::new(Vec::<String>::new()))
            .await
            .contains("no etcd endpoint"));
        assert!(bad(EtcdOptions::new(["unix:///x"])).await.contains("http"));
        assert!(bad(EtcdOptions::new(["https://127.0.0.1:2379"]))
            .await
            .contains("--etcd-ca"));
        let mut o = EtcdOptions::new(["http://127.0.0.1:2379"]);
        o.prefix = "/moor".into();
        assert!(bad(o).await.contains("end with '/'"));
        let mut o = EtcdOptions::new(["https://127.0.0.1:2379"]);
        o.ca = Some("/nonexistent/ca.pem".into());
        assert!(bad(o).await.contains("/nonexistent/ca.pem"));
        // What --store and the --etcd-* flags accept.
        let dir = TempDir::new("moor-etcd-open");
        let redb = format!("redb:{}", dir.join("s.redb").display());
        let none = StoreOptions::default();
        assert!(crate::store::open(&redb, &none).await.is_ok());
        let with_ca = StoreOptions {
            etcd_ca: Some("/ca.pem".into()),
            ..StoreOptions::default()
        };
        let err = crate::store::open(&redb, &with_ca).await.err().unwrap();
        assert!(err.contains("--etcd-ca"), "{err}");
        for spec in ["etcd:", "etcd: , ", "zk:127.0.0.1", "redb:"] {
            let err = crate::store::open(spec, &none).await.err().unwrap();
            assert!(err.contains(spec.trim_end_matches([' ', ','])), "{err}");
        }
        drop(dir);
        // Lazy: opening does not need etcd to be up.
        let s = store(vec![format!("127.0.0.1:{}", free_port())], "/moor/").await;
        assert!(s.describe().starts_with("etcd:http://127.0.0.1:"));
        assert!(matches!(s.get("a").await, Err(StoreError::Unavailable(_))));
    }
}
