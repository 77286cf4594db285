use std::io;
use std::time::Duration;

/// A failed call: which ovsdb-server, which operation, and what went wrong.
///
/// Displays as `ovsdb unix:/run/openvswitch/db.sock: add_port br-int/veth1: ...`.
#[derive(Debug, thiserror::Error)]
#[error("ovsdb {endpoint}: {op}: {kind}")]
pub struct Error {
    endpoint: String,
    op: String,
    kind: ErrorKind,
}

impl Error {
    pub(crate) fn new(endpoint: String, op: String, kind: ErrorKind) -> Self {
        Error { endpoint, op, kind }
    }

    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn op(&self) -> &str {
        &self.op
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// ovsdb-server could not be reached until the call's deadline.
    #[error("cannot connect (retried for {retried_for:?}): {source}")]
    Connect {
        source: io::Error,
        retried_for: Duration,
    },
    /// The call's deadline passed; `waiting_for` says on what.
    #[error("timed out after {after:?} waiting for {waiting_for}")]
    Timeout {
        after: Duration,
        waiting_for: String,
    },
    /// ovsdb-server refused the request or a transaction failed. For a failed
    /// transaction `error` is the RFC 7047 error tag ("constraint violation",
    /// "referential integrity violation", ...), `details` its explanation.
    #[error("ovsdb-server: {error}: {details}")]
    Ovsdb { error: String, details: String },
    #[error("no bridge {0:?}")]
    NoSuchBridge(String),
    /// The bridge or port already exists with other settings; nothing was changed.
    #[error("{what} already exists with other settings ({differs}); nothing changed")]
    Conflict { what: String, differs: String },
    /// The Open_vSwitch table has no row: `ovs-vsctl init` (or ovs-vswitchd) never ran.
    #[error("the database is not initialized (no Open_vSwitch row; run `ovs-vsctl init`)")]
    NotInitialized,
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A reply this client does not understand.
    #[error("unexpected reply: {0}")]
    Protocol(String),
}
