//! The CNI error result: a code, a short `msg` and the full `details`,
//! printed as JSON on stdout with a non-zero exit status (spec section 5,
//! "Error").

use std::fmt;

use serde::Serialize;

/// Well-known codes (spec section 5) and moor's own (100+).
pub use moor_proto::cni_code as code;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error as the runtime reads it from stdout.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_string(&Wire {
            cni_version,
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        })
        .unwrap_or_else(|_| format!("{{\"code\":{},\"msg\":\"moor: error\"}}", self.code))
    }
}

impl fmt::Display for CniError {
    /// Like libcni prints it: `msg; details`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.details.is_empty() {
            write!(f, "{} (code {})", self.msg, self.code)
        } else {
            write!(f, "{}; {} (code {})", self.msg, self.details, self.code)
        }
    }
}

impl std::error::Error for CniError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_spec_keys() {
        let e = CniError::new(7, "invalid network config", "field \"x\" is 1");
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.0.0")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "cniVersion": "1.0.0",
                "code": 7,
                "msg": "invalid network config",
                "details": "field \"x\" is 1",
            })
        );
    }

    #[test]
    fn empty_details_are_left_out() {
        let e = CniError::new(11, "try again", "");
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.1.0")).unwrap();
        assert!(v.get("details").is_none());
        assert_eq!(e.to_string(), "try again (code 11)");
    }
}
