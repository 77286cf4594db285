//! Where ovsdb-server listens, in the spelling OVS itself uses (`unix:PATH`,
//! `tcp:IP:PORT`), so the same string works for `ovs-vsctl --db=` and for us.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

#[derive(Debug, thiserror::Error)]
#[error("invalid ovsdb endpoint {input:?}: {reason} (want unix:PATH or tcp:IP:PORT)")]
pub struct ParseEndpointError {
    input: String,
    reason: &'static str,
}

impl FromStr for Endpoint {
    type Err = ParseEndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseEndpointError {
            input: s.to_string(),
            reason,
        };
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(err("empty path"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = s.strip_prefix("tcp:") {
            return addr
                .parse()
                .map(Endpoint::Tcp)
                .map_err(|_| err("not an IP:PORT (IPv6 as [ADDR]:PORT)"));
        }
        Err(err("unknown method (ssl is not supported)"))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            Endpoint::Tcp(addr) => write!(f, "tcp:{addr}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_ovs_spelling() {
        for s in [
            "unix:/run/openvswitch/db.sock",
            "tcp:127.0.0.1:6640",
            "tcp:[::1]:6640",
        ] {
            assert_eq!(s.parse::<Endpoint>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn rejects_what_it_cannot_dial() {
        for s in [
            "unix:",
            "tcp:localhost:6640",
            "tcp:1.2.3.4",
            "ssl:1.2.3.4:6640",
            "/run/db.sock",
        ] {
            let err = s.parse::<Endpoint>().unwrap_err().to_string();
            assert!(err.contains(s), "{err}");
        }
    }
}
