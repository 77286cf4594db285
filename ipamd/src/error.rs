//! ipamd's one error type. Every variant carries a message an operator can act
//! on (what, which pool/ToR/pod, and what to do) and keeps the error that
//! caused it (`source`), so a log line or `{:#}` shows the whole chain while a
//! runtime sees one sentence. `cni_code` is the one mapping to CNI error
//! codes; the gRPC status lives with the API (`api::status`).

use crate::datapath::DatapathError;
use crate::store::retry::Contended;
use crate::store::StoreError;

pub use moor_proto::cni_code;

type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input; nothing was changed.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// The request contradicts the state (exists already, still in use).
    #[error("{0}")]
    Conflict(String),
    /// An ADD that cannot be served, with the CNI code the runtime should see.
    #[error("{msg}")]
    Refused { code: u32, msg: String },
    /// The store cannot be reached; retry later.
    #[error("{msg}")]
    Unavailable {
        msg: String,
        #[source]
        source: Option<StoreError>,
    },
    /// Other writers kept changing what a change read; retry.
    #[error(transparent)]
    Contended(#[from] Contended),
    /// The store answered with something that is not right (a corrupt
    /// record, an internal error of the backend).
    #[error(transparent)]
    Store(StoreError),
    /// Wiring or unwiring a pod failed; `context` says which pod and what.
    #[error("{context}: {source}")]
    Datapath {
        context: String,
        #[source]
        source: DatapathError,
    },
    #[error("{msg}")]
    Internal {
        msg: String,
        #[source]
        source: Option<Cause>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::Unavailable(m) => Error::Unavailable {
                msg: format!("the store is unavailable ({m}); nothing was changed, retry later"),
                source: Some(e),
            },
            _ => Error::Store(e),
        }
    }
}

impl Error {
    pub fn unavailable(msg: impl Into<String>) -> Self {
        Error::Unavailable {
            msg: msg.into(),
            source: None,
        }
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        Error::Internal {
            msg: msg.into(),
            source: None,
        }
    }

    /// An internal failure whose cause is `source`; `msg` says what was
    /// being done and usually ends with the cause's text.
    pub fn internal_from(
        msg: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Internal {
            msg: msg.into(),
            source: Some(Box::new(source)),
        }
    }

    pub fn datapath(context: impl Into<String>, source: DatapathError) -> Self {
        Error::Datapath {
            context: context.into(),
            source,
        }
    }

    /// The same error again, for each of several requests that one failed
    /// operation served (a batch): same kind, same CNI code, same words.
    pub fn again(&self) -> Self {
        match self {
            Error::Invalid(m) => Error::Invalid(m.clone()),
            Error::NotFound(m) => Error::NotFound(m.clone()),
            Error::Conflict(m) => Error::Conflict(m.clone()),
            Error::Refused { code, msg } => Error::refused(*code, msg.clone()),
            Error::Unavailable { msg, .. } => Error::unavailable(msg.clone()),
            Error::Contended(c) => Error::Contended(crate::store::retry::Contended {
                what: c.what.clone(),
                attempts: c.attempts,
            }),
            // Still the damage it is (DATA_LOSS, not an internal error).
            Error::Store(StoreError::Corrupt { key, reason }) => {
                Error::Store(StoreError::Corrupt {
                    key: key.clone(),
                    reason: reason.clone(),
                })
            }
            other => Error::internal(other.to_string()),
        }
    }

    pub fn refused(code: u32, msg: impl Into<String>) -> Self {
        Error::Refused {
            code,
            msg: msg.into(),
        }
    }

    /// The same error with `more` appended to its message (the cause stays).
    pub fn and(self, more: &str) -> Self {
        match self {
            Error::Unavailable { msg, source } => Error::Unavailable {
                msg: format!("{msg}{more}"),
                source,
            },
            Error::Internal { msg, source } => Error::Internal {
                msg: format!("{msg}{more}"),
                source,
            },
            other => Error::Internal {
                msg: format!("{other}{more}"),
                source: Some(Box::new(other)),
            },
        }
    }

    /// Whether the store could not be reached (the operation may be retried
    /// once it answers; DEL defers it, ADD may serve from the mirror).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }

    /// A store record this needed does not decode (`StoreError::Corrupt`).
    pub fn is_corrupt(&self) -> bool {
        matches!(self, Error::Store(StoreError::Corrupt { .. }))
    }

    /// The CNI error code a runtime sees for this error.
    pub fn cni_code(&self) -> u32 {
        match self {
            Error::Invalid(_) | Error::NotFound(_) | Error::Conflict(_) => cni_code::INVALID_CONFIG,
            Error::Refused { code, .. } => *code,
            Error::Unavailable { .. } | Error::Contended(_) => cni_code::TRY_AGAIN_LATER,
            Error::Datapath { .. } => cni_code::DATAPATH,
            Error::Store(_) | Error::Internal { .. } => cni_code::IPAMD_FAILED,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn store_outages_are_unavailable_and_keep_their_cause() {
        let e = Error::from(StoreError::Unavailable("dial timeout".into()));
        assert!(e.is_unavailable());
        assert_eq!(e.cni_code(), cni_code::TRY_AGAIN_LATER);
        assert_eq!(
            e.to_string(),
            "the store is unavailable (dial timeout); nothing was changed, retry later"
        );
        assert_eq!(
            e.source().unwrap().to_string(),
            "store unavailable: dial timeout"
        );
        let corrupt = Error::from(StoreError::Corrupt {
            key: "leases/p/10.0.0.1".into(),
            reason: "eof".into(),
        });
        assert_eq!(corrupt.cni_code(), cni_code::IPAMD_FAILED);
        assert!(corrupt.to_string().contains("leases/p/10.0.0.1"));
    }

    #[test]
    fn datapath_errors_say_what_and_keep_the_kernel_error() {
        let e = Error::datapath(
            "wiring 10.0.0.5 for pod a/b failed",
            DatapathError::CheckFailed("no route".into()),
        );
        assert_eq!(e.cni_code(), cni_code::DATAPATH);
        assert_eq!(
            e.to_string(),
            "wiring 10.0.0.5 for pod a/b failed: pod wiring check failed: no route"
        );
        assert!(e.source().is_some());
    }

    #[test]
    fn contention_is_try_again_later() {
        let e = Error::from(Contended {
            what: "pool resize".into(),
            attempts: 32,
        });
        assert_eq!(e.cni_code(), cni_code::TRY_AGAIN_LATER);
        assert!(e.to_string().starts_with("pool resize: gave up after 32"));
    }
}
