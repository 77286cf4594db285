//! The CNI spec versions moor speaks and what differs between them.

use crate::error::{code, CniError};

/// What VERSION answers. 0.3.0 is accepted and treated like 0.3.1 (the only
/// difference between the two is a typo fix in the spec text).
pub const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Used when there is no config version to echo (e.g. an error before the
/// config could be read).
pub const LATEST: &str = "1.1.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CniVersion {
    V0_3,
    V0_4,
    V1_0,
    V1_1,
}

impl CniVersion {
    pub fn parse(v: &str) -> Result<Self, CniError> {
        match v {
            "0.3.0" | "0.3.1" => Ok(Self::V0_3),
            "0.4.0" => Ok(Self::V0_4),
            "1.0.0" => Ok(Self::V1_0),
            "1.1.0" => Ok(Self::V1_1),
            _ => Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("moor does not support CNI version {v:?}"),
                format!(
                    "the network config asks for cniVersion {v:?}; moor supports {}",
                    SUPPORTED.join(", ")
                ),
            )),
        }
    }

    /// 0.x results tag each IP with `"version": "4"` or `"6"`; 1.0.0 removed it.
    pub fn ips_carry_version(self) -> bool {
        self < Self::V1_0
    }

    /// `mtu` in result interfaces came with 1.1.0.
    pub fn interfaces_carry_mtu(self) -> bool {
        self >= Self::V1_1
    }

    /// CHECK came with 0.4.0; since then a runtime must pass prevResult.
    pub fn has_check(self) -> bool {
        self >= Self::V0_4
    }

    /// STATUS and GC came with 1.1.0.
    pub fn has_status_and_gc(self) -> bool {
        self >= Self::V1_1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_advertised_version_parses() {
        for v in SUPPORTED {
            CniVersion::parse(v).unwrap();
        }
        assert_eq!(CniVersion::parse("0.3.0").unwrap(), CniVersion::V0_3);
    }

    #[test]
    fn unsupported_version_names_itself_and_the_supported_ones() {
        for v in ["0.2.0", "0.1.0", "2.0.0", "1.0", ""] {
            let e = CniVersion::parse(v).unwrap_err();
            assert_eq!(e.code, 1);
            assert!(e.msg.contains(&format!("{v:?}")), "{e}");
            assert!(e.details.contains("0.3.1, 0.4.0, 1.0.0, 1.1.0"), "{e}");
        }
    }

    #[test]
    fn feature_gates() {
        use CniVersion::*;
        assert!(V0_3.ips_carry_version() && V0_4.ips_carry_version());
        assert!(!V1_0.ips_carry_version() && !V1_1.ips_carry_version());
        assert!(!V1_0.interfaces_carry_mtu() && V1_1.interfaces_carry_mtu());
        assert!(!V0_3.has_check() && V0_4.has_check());
        assert!(!V1_0.has_status_and_gc() && V1_1.has_status_and_gc());
    }
}
