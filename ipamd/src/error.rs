//! ipamd's one error type. Every variant carries a message an operator can act
//! on (what, which pool/ToR/pod, and what to do), and knows the gRPC status and
//! CNI error code it becomes.

use crate::store::StoreError;

pub use moor_proto::cni_code;

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
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Datapath(String),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => Error::Unavailable(format!(
                "the store is unavailable ({m}); nothing was changed, retry later"
            )),
            other => Error::Internal(other.to_string()),
        }
    }
}

impl Error {
    pub fn cni_code(&self) -> u32 {
        match self {
            Error::Invalid(_) | Error::NotFound(_) | Error::Conflict(_) => cni_code::INVALID_CONFIG,
            Error::Refused { code, .. } => *code,
            Error::Unavailable(_) => cni_code::TRY_AGAIN_LATER,
            Error::Datapath(_) => cni_code::DATAPATH,
            Error::Internal(_) => cni_code::IPAMD_FAILED,
        }
    }

    pub fn to_status(&self) -> tonic::Status {
        use tonic::Code;
        let code = match self {
            Error::Invalid(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::Conflict(_) => Code::FailedPrecondition,
            Error::Refused { code, .. } if *code == cni_code::TRY_AGAIN_LATER => Code::Unavailable,
            Error::Refused { code, .. } if *code == cni_code::POOL_FULL => Code::ResourceExhausted,
            Error::Refused { .. } => Code::FailedPrecondition,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Datapath(_) | Error::Internal(_) => Code::Internal,
        };
        let mut s = tonic::Status::new(code, self.to_string());
        s.metadata_mut().insert(
            moor_proto::CNI_CODE_KEY,
            self.cni_code()
                .to_string()
                .parse()
                .expect("digits are ascii"),
        );
        s
    }
}
