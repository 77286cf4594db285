//! ipamd's errors as gRPC statuses. The CNI code travels in the status's
//! metadata (`moor-cni-code`), so the plugin reports exactly the code ipamd
//! chose instead of guessing it from the gRPC code.

use tonic::Code;

use crate::error::{cni_code, Error};
use crate::store::StoreError;

pub fn status(e: &Error) -> tonic::Status {
    let code = match e {
        Error::Invalid(_) => Code::InvalidArgument,
        Error::NotFound(_) => Code::NotFound,
        Error::Conflict(_) => Code::FailedPrecondition,
        Error::Refused { code, .. } if *code == cni_code::TRY_AGAIN_LATER => Code::Unavailable,
        Error::Refused { code, .. } if *code == cni_code::POOL_FULL => Code::ResourceExhausted,
        Error::Refused { .. } => Code::FailedPrecondition,
        Error::Unavailable { .. } | Error::Contended(_) => Code::Unavailable,
        // A record that does not decode: the data is damaged, not ipamd.
        Error::Store(StoreError::Corrupt { .. }) => Code::DataLoss,
        Error::Datapath { .. } | Error::Store(_) | Error::Internal { .. } => Code::Internal,
    };
    let mut s = tonic::Status::new(code, e.to_string());
    s.metadata_mut().insert(
        moor_proto::CNI_CODE_KEY,
        e.cni_code().to_string().parse().expect("digits are ascii"),
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cni_code_rides_along() {
        let s = status(&Error::refused(cni_code::POOL_FULL, "pool web is full"));
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.message(), "pool web is full");
        assert_eq!(s.metadata().get(moor_proto::CNI_CODE_KEY).unwrap(), "100");
        let s = status(&Error::unavailable("etcd is down"));
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.metadata().get(moor_proto::CNI_CODE_KEY).unwrap(), "11");
    }

    #[test]
    fn a_corrupt_record_is_data_loss_naming_it_also_for_a_whole_batch() {
        let e = Error::from(StoreError::Corrupt {
            key: "pools/web".into(),
            reason: "EOF".into(),
        });
        for e in [e.again(), e] {
            let s = status(&e);
            assert_eq!(s.code(), Code::DataLoss);
            assert!(s.message().contains("pools/web"), "{}", s.message());
            assert!(s.message().contains("ipamctl restore"), "{}", s.message());
            let code = cni_code::IPAMD_FAILED.to_string();
            assert_eq!(
                s.metadata().get(moor_proto::CNI_CODE_KEY).unwrap(),
                code.as_str()
            );
        }
    }
}
