//! `Ovsdb`: a shared, lazily reconnecting connection, calls bounded by a
//! deadline, transactions, and waiting for ovs-vswitchd.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::{sleep, timeout_at, Instant};

use crate::connection::{CallError, CfgState, Connection, OpenError, DB};
use crate::endpoint::Endpoint;
use crate::error::{Error, ErrorKind};

#[derive(Clone, Debug)]
pub struct Options {
    /// Bounds every call, including reconnecting and waiting for ovs-vswitchd.
    pub timeout: Duration,
    /// Mutating calls return only once ovs-vswitchd has applied the change
    /// (`cur_cfg` caught up with the `next_cfg` the transaction set), as
    /// `ovs-vsctl` does without `--no-wait`.
    pub wait_applied: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: Duration::from_secs(5),
            wait_applied: true,
        }
    }
}

/// A client of one ovsdb-server's `Open_vSwitch` database.
///
/// Cheap to clone; clones share one connection, on which concurrent calls are
/// multiplexed by JSON-RPC id. When ovsdb-server goes away the next call dials
/// again (retrying until its deadline), so a restarted server needs no action.
#[derive(Clone)]
pub struct Ovsdb {
    shared: Arc<Shared>,
    opts: Options,
}

impl std::fmt::Debug for Ovsdb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ovsdb")
            .field("endpoint", &self.shared.endpoint.to_string())
            .field("opts", &self.opts)
            .finish()
    }
}

struct Shared {
    endpoint: Endpoint,
    conn: tokio::sync::Mutex<Option<Arc<Connection>>>,
    /// Request ids, unique across reconnects so a late reply can never be
    /// taken for another call's.
    ids: AtomicU64,
    /// The highest `next_cfg` our own transactions set.
    committed_cfg: AtomicI64,
}

impl Ovsdb {
    /// Connects now, so a wrong endpoint shows at startup, retrying until
    /// `opts.timeout` in case ovsdb-server is still starting.
    pub async fn connect(endpoint: &Endpoint, opts: Options) -> Result<Self, Error> {
        let ovsdb = Ovsdb {
            shared: Arc::new(Shared {
                endpoint: endpoint.clone(),
                conn: tokio::sync::Mutex::new(None),
                ids: AtomicU64::new(1),
                committed_cfg: AtomicI64::new(0),
            }),
            opts,
        };
        let call = ovsdb.call("connect", String::new());
        call.connection().await.map_err(|k| call.error(k))?;
        Ok(ovsdb)
    }

    /// The same connection, with other options (e.g. a longer timeout or no
    /// waiting for ovs-vswitchd).
    pub fn with_options(&self, opts: Options) -> Self {
        Ovsdb {
            shared: self.shared.clone(),
            opts,
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.shared.endpoint
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// Waits until ovs-vswitchd has applied every change this client (or a
    /// clone) committed. Returns at once if there was none.
    pub async fn wait_applied(&self, timeout: Duration) -> Result<(), Error> {
        let mut call = self.call("wait_applied", String::new());
        call.deadline = Instant::now() + timeout;
        call.started = Instant::now();
        let target = self.shared.committed_cfg.load(Ordering::Relaxed);
        call.wait_cfg(target).await
    }

    pub(crate) fn call(&self, op: &str, subject: String) -> Call<'_> {
        let now = Instant::now();
        Call {
            ovsdb: self,
            op: if subject.is_empty() {
                op.to_string()
            } else {
                format!("{op} {subject}")
            },
            started: now,
            deadline: now + self.opts.timeout,
        }
    }
}

/// One public call in progress: its name (for errors) and its deadline.
pub(crate) struct Call<'a> {
    ovsdb: &'a Ovsdb,
    op: String,
    started: Instant,
    deadline: Instant,
}

/// A transaction's outcome as RFC 7047 reports it.
pub(crate) enum Txn {
    Committed(Vec<Value>),
    /// Operation `index` failed (an index equal to the number of operations
    /// means the commit itself failed, e.g. a constraint violation); nothing
    /// was changed.
    Aborted {
        index: usize,
        error: String,
        details: String,
    },
}

impl Call<'_> {
    pub fn error(&self, kind: ErrorKind) -> Error {
        Error::new(
            self.ovsdb.shared.endpoint.to_string(),
            self.op.clone(),
            kind,
        )
    }

    fn timeout(&self, waiting_for: impl Into<String>) -> ErrorKind {
        ErrorKind::Timeout {
            after: self.deadline - self.started,
            waiting_for: waiting_for.into(),
        }
    }

    pub fn wait_applied(&self) -> bool {
        self.ovsdb.opts.wait_applied
    }

    /// The live connection, dialing a new one if there is none.
    async fn connection(&self) -> Result<Arc<Connection>, ErrorKind> {
        let shared = &self.ovsdb.shared;
        let mut slot = timeout_at(self.deadline, shared.conn.lock())
            .await
            .map_err(|_| self.timeout("the connection another call is dialing"))?;
        if let Some(conn) = slot.as_ref() {
            if !conn.is_closed() {
                return Ok(conn.clone());
            }
            *slot = None;
        }
        let mut backoff = Duration::from_millis(10);
        let mut last = None;
        loop {
            let opened = timeout_at(
                self.deadline,
                Connection::open(&shared.endpoint, &shared.ids),
            )
            .await;
            match opened {
                Ok(Ok(conn)) => {
                    tracing::info!(endpoint = %shared.endpoint, "connected to ovsdb-server");
                    // A database recreated since our last commit counts from
                    // scratch; waiting for our old next_cfg would never end.
                    if let CfgState::Known { next_cfg, .. } = *conn.cfg().borrow() {
                        shared.committed_cfg.fetch_min(next_cfg, Ordering::Relaxed);
                    }
                    let conn = Arc::new(conn);
                    *slot = Some(conn.clone());
                    return Ok(conn);
                }
                Ok(Err(OpenError::Io(e))) => last = Some(e),
                Ok(Err(OpenError::Monitor(CallError::Rpc(e)))) => {
                    return Err(ErrorKind::Ovsdb {
                        error: "monitor on Open_vSwitch cur_cfg failed".to_string(),
                        details: e.to_string(),
                    })
                }
                // The server went away again right after accepting us.
                Ok(Err(OpenError::Monitor(CallError::NotSent(why) | CallError::Lost(why)))) => {
                    last = Some(std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        why,
                    ))
                }
                Err(_) => {}
            }
            let now = Instant::now();
            if now >= self.deadline {
                return Err(ErrorKind::Connect {
                    source: last.unwrap_or_else(|| std::io::ErrorKind::TimedOut.into()),
                    retried_for: now - self.started,
                });
            }
            if let Some(e) = &last {
                tracing::debug!(endpoint = %shared.endpoint, error = %e, "ovsdb-server not reachable yet");
            }
            // Retry until the deadline, the last try right at it: ovsdb-server
            // may be restarting.
            sleep(backoff.min(self.deadline - now)).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// Runs one transaction, re-sending it on a new connection if the old one
    /// died first. Re-sending is safe because every transaction this crate
    /// builds is guarded by `wait` operations that make a second run abort
    /// once the first one committed.
    pub async fn transact(&self, ops: Vec<Value>) -> Result<Txn, Error> {
        let n_ops = ops.len();
        let mut params = vec![json!(DB)];
        params.extend(ops);
        let params = Value::Array(params);
        let reply = loop {
            let conn = self.connection().await.map_err(|k| self.error(k))?;
            let id = self.ovsdb.shared.ids.fetch_add(1, Ordering::Relaxed);
            match timeout_at(self.deadline, conn.call(id, "transact", params.clone())).await {
                Ok(Ok(reply)) => break reply,
                Ok(Err(CallError::Rpc(e))) => return Err(self.error(rpc_error(&e))),
                Ok(Err(CallError::NotSent(why) | CallError::Lost(why))) => {
                    tracing::warn!(endpoint = %self.ovsdb.shared.endpoint, op = %self.op, %why, "ovsdb connection lost; retrying on a new one");
                    sleep(Duration::from_millis(10)).await;
                }
                Err(_) => {
                    // No reply in time: the server may be hung or a tcp peer
                    // gone silently. Start afresh next time.
                    conn.close("a call timed out waiting for its reply");
                    return Err(self.error(self.timeout("the reply to a transaction")));
                }
            }
        };
        let results = match reply {
            Value::Array(results) => results,
            other => {
                return Err(self.error(ErrorKind::Protocol(format!(
                    "transact result is not an array: {other}"
                ))))
            }
        };
        for (index, r) in results.iter().enumerate() {
            if let Some(error) = r.get("error").and_then(Value::as_str) {
                return Ok(Txn::Aborted {
                    index,
                    error: error.to_string(),
                    details: r
                        .get("details")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                });
            }
        }
        if results.len() < n_ops {
            return Err(self.error(ErrorKind::Protocol(format!(
                "{} results for {n_ops} operations",
                results.len()
            ))));
        }
        Ok(Txn::Committed(results))
    }

    /// Records a `next_cfg` our transaction set; the caller waits for it if
    /// the options say so.
    pub fn committed(&self, next_cfg: i64) {
        self.ovsdb
            .shared
            .committed_cfg
            .fetch_max(next_cfg, Ordering::Relaxed);
    }

    /// Waits until ovs-vswitchd's `cur_cfg` reaches `target`, across
    /// reconnects. (Not `min(target, next_cfg)`: the monitor's `next_cfg`
    /// may not have caught up with our own commit yet.)
    pub async fn wait_cfg(&self, target: i64) -> Result<(), Error> {
        if target <= 0 {
            return Ok(());
        }
        loop {
            let conn = self.connection().await.map_err(|k| self.error(k))?;
            let mut cfg = conn.cfg();
            loop {
                let state = *cfg.borrow_and_update();
                match state {
                    CfgState::Known { cur_cfg, .. } if cur_cfg >= target => return Ok(()),
                    CfgState::Closed => break,
                    _ => {}
                }
                match timeout_at(self.deadline, cfg.changed()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break,
                    Err(_) => {
                        let seen = match state {
                            CfgState::Known { cur_cfg, .. } => format!(" (cur_cfg is {cur_cfg})"),
                            _ => " (no Open_vSwitch row)".to_string(),
                        };
                        return Err(self.error(self.timeout(format!(
                            "ovs-vswitchd to apply next_cfg {target}{seen}; is it running?"
                        ))));
                    }
                }
            }
        }
    }
}

/// A JSON-RPC `error` member (RFC 7047 section 3.1: an object with `error`
/// and maybe `details`, though older servers send other shapes).
fn rpc_error(e: &Value) -> ErrorKind {
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    ErrorKind::Ovsdb {
        error: e.get("error").map_or_else(|| "error".to_string(), text),
        details: e.get("details").map_or_else(|| text(e), text),
    }
}
