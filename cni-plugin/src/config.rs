//! The network config on stdin: the fields moor reads, their defaults, and
//! errors that name the field, its value and what was expected.
//!
//! Unknown fields are tolerated: runtimes add `runtimeConfig`, `args`,
//! `capabilities`, `prevResult` and `cni.dev/...` keys, and admins may keep
//! comments or other plugins' keys in the same object.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use moor_proto::fields::{self, FieldError};
use serde_json::{Map, Value};

use crate::error::{code, CniError};
use crate::version::CniVersion;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(10_000);
const MAX_TIMEOUT_MS: u64 = 600_000;

#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// `cniVersion` exactly as given; results and errors echo it.
    pub cni_version: String,
    pub version: CniVersion,
    /// `name`: sent to ipamd as the network, which scopes GC.
    pub name: String,
    /// `socket`: ipamd's unix socket.
    pub socket: PathBuf,
    /// `pool`: explicit pool; MOOR_POOL in CNI_ARGS wins over it.
    pub pool: Option<String>,
    /// `pendingDir`: where DEL leaves records while ipamd is down. Defaults to
    /// `<socket>.pending`, so two daemons on one machine never share one.
    pub pending_dir: PathBuf,
    /// `timeoutMs`: how long one request to ipamd may take.
    pub timeout: Duration,
    /// `logFile`: append logs here instead of stderr.
    pub log_file: Option<PathBuf>,
    /// `prevResult`, as the runtime converted it to `cniVersion`.
    pub prev_result: Option<Map<String, Value>>,
    /// `cni.dev/valid-attachments` (GC): (containerID, ifname) pairs.
    pub valid_attachments: Option<Vec<(String, String)>>,
}

/// Decodes stdin into a JSON object (code 6 if it is not one).
pub fn decode(stdin: &[u8]) -> Result<Map<String, Value>, CniError> {
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Err(CniError::new(
            code::DECODING_FAILURE,
            "no network config on stdin",
            "stdin was empty; the runtime must pass the network config as JSON",
        ));
    }
    match serde_json::from_slice::<Value>(stdin) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(CniError::new(
            code::DECODING_FAILURE,
            "network config is not a JSON object",
            format!("stdin holds {}, expected a JSON object", describe(&other)),
        )),
        Err(e) => Err(CniError::new(
            code::DECODING_FAILURE,
            "cannot decode the network config on stdin",
            format!("invalid JSON: {e}"),
        )),
    }
}

impl NetConf {
    /// Checks `pool`, by the rule ipamd and ipamctl use, before an ADD asks
    /// ipamd for it. Only ADD: DEL and CHECK do not use it and must not fail
    /// over it.
    pub fn check_pool(&self) -> Result<(), CniError> {
        match &self.pool {
            Some(p) => fields::pool_name("pool", p)
                .map_err(|e| invalid_field("pool", &Value::String(p.clone()), &e)),
            None => Ok(()),
        }
    }

    pub fn from_json(map: &Map<String, Value>) -> Result<Self, CniError> {
        let cni_version = opt_str(map, "cniVersion", "a CNI version string such as \"1.0.0\"")?
            .ok_or_else(|| missing("cniVersion", "a CNI version string such as \"1.0.0\""))?;
        let version = CniVersion::parse(&cni_version)?;

        let name = opt_str(map, "name", "the network name")?
            .ok_or_else(|| missing("name", "the network name"))?;
        fields::network_name("name", &name).map_err(|e| invalid_field("name", &map["name"], &e))?;
        opt_str(map, "type", "the plugin name")?;

        let socket = opt_abs_path(map, "socket", "the absolute path of ipamd's unix socket")?
            .unwrap_or_else(|| PathBuf::from(moor_proto::DEFAULT_SOCKET));
        let pool = opt_str(map, "pool", "a pool name")?.filter(|p| !p.is_empty());
        let pending_dir = opt_abs_path(
            map,
            "pendingDir",
            "the absolute path of a directory for DELs made while ipamd is down",
        )?
        .unwrap_or_else(|| default_pending_dir(&socket));
        let timeout = match present(map, "timeoutMs") {
            None => DEFAULT_TIMEOUT,
            Some(v) => match v.as_u64() {
                Some(ms) if (1..=MAX_TIMEOUT_MS).contains(&ms) => Duration::from_millis(ms),
                _ => {
                    return Err(invalid(
                        "timeoutMs",
                        v,
                        &format!("a whole number of milliseconds from 1 to {MAX_TIMEOUT_MS}"),
                    ))
                }
            },
        };
        let log_file = opt_abs_path(map, "logFile", "the absolute path of a log file")?;
        let prev_result = match present(map, "prevResult") {
            None => None,
            Some(Value::Object(m)) => Some(m.clone()),
            Some(v) => return Err(invalid("prevResult", v, "a CNI result object")),
        };
        let valid_attachments = match present(map, "cni.dev/valid-attachments") {
            None => None,
            Some(v) => Some(parse_valid_attachments(v)?),
        };

        Ok(Self {
            cni_version,
            version,
            name,
            socket,
            pool,
            pending_dir,
            timeout,
            log_file,
            prev_result,
            valid_attachments,
        })
    }
}

/// `<socket>.pending`, e.g. /run/moor/ipamd.sock.pending.
pub fn default_pending_dir(socket: &Path) -> PathBuf {
    let mut s = OsString::from(socket.as_os_str());
    s.push(".pending");
    PathBuf::from(s)
}

fn parse_valid_attachments(v: &Value) -> Result<Vec<(String, String)>, CniError> {
    const FIELD: &str = "cni.dev/valid-attachments";
    let Value::Array(items) = v else {
        return Err(invalid(
            FIELD,
            v,
            "an array of {\"containerID\": ..., \"ifname\": ...} objects",
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let get = |key: &str| match item.get(key) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                other => Err(invalid(
                    &format!("{FIELD}[{i}].{key}"),
                    other.unwrap_or(&Value::Null),
                    "a non-empty string",
                )),
            };
            Ok((get("containerID")?, get("ifname")?))
        })
        .collect()
}

/// A field that is absent or JSON null counts as not given.
fn present<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|v| !v.is_null())
}

fn opt_str(
    map: &Map<String, Value>,
    key: &str,
    expected: &str,
) -> Result<Option<String>, CniError> {
    match present(map, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(invalid(key, v, &format!("a string: {expected}"))),
    }
}

fn opt_abs_path(
    map: &Map<String, Value>,
    key: &str,
    expected: &str,
) -> Result<Option<PathBuf>, CniError> {
    match opt_str(map, key, expected)? {
        None => Ok(None),
        Some(s) if s.starts_with('/') => Ok(Some(PathBuf::from(s))),
        Some(_) => Err(invalid(key, &map[key], expected)),
    }
}

/// A field the shared rules (moor_proto::fields) refuse.
fn invalid_field(key: &str, value: &Value, e: &FieldError) -> CniError {
    CniError::new(
        code::INVALID_CONFIG,
        format!("invalid network config field {key:?}"),
        format!("field {key:?} is {}: {}", describe(value), e.reason()),
    )
}

fn missing(key: &str, expected: &str) -> CniError {
    CniError::new(
        code::INVALID_CONFIG,
        format!("network config has no {key:?}"),
        format!("the network config must set {key:?} to {expected}"),
    )
}

fn invalid(key: &str, value: &Value, expected: &str) -> CniError {
    CniError::new(
        code::INVALID_CONFIG,
        format!("invalid network config field {key:?}"),
        format!("field {key:?} is {}, expected {expected}", describe(value)),
    )
}

/// A JSON value as it would appear in the config, shortened.
fn describe(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 80 {
        let mut cut = 77;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<NetConf, CniError> {
        NetConf::from_json(v.as_object().unwrap())
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(json!({"cniVersion": "1.0.0", "name": "moor", "type": "moor"})).unwrap();
        assert_eq!(c.cni_version, "1.0.0");
        assert_eq!(c.version, CniVersion::V1_0);
        assert_eq!(c.name, "moor");
        assert_eq!(c.socket, Path::new("/run/moor/ipamd.sock"));
        assert_eq!(c.pending_dir, Path::new("/run/moor/ipamd.sock.pending"));
        assert_eq!(c.pool, None);
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert_eq!(c.log_file, None);
        assert_eq!(c.prev_result, None);
        assert_eq!(c.valid_attachments, None);
    }

    #[test]
    fn every_field_and_tolerated_extras() {
        let c = parse(json!({
            "cniVersion": "0.3.0",
            "name": "db-net.1",
            "type": "moor",
            "socket": "/run/moor2/ipamd.sock",
            "pool": "mysql",
            "timeoutMs": 2500,
            "logFile": "/var/log/moor.log",
            "runtimeConfig": {"portMappings": [{"HostPort": 80, "ContainerPort": 8080}]},
            "capabilities": {"portMappings": true},
            "args": {"cni": {"x": 1}},
            "cniVersions": ["0.3.1"],
            "somethingElse": [1, 2],
            "prevResult": {"cniVersion": "0.3.0", "ips": []},
        }))
        .unwrap();
        assert_eq!(c.version, CniVersion::V0_3);
        assert_eq!(c.pending_dir, Path::new("/run/moor2/ipamd.sock.pending"));
        assert_eq!(c.pool.as_deref(), Some("mysql"));
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(c.log_file.as_deref(), Some(Path::new("/var/log/moor.log")));
        assert!(c.prev_result.is_some());
        let c =
            parse(json!({"cniVersion": "1.1.0", "name": "n", "pendingDir": "/x/p", "pool": ""}))
                .unwrap();
        assert_eq!(c.pending_dir, Path::new("/x/p"));
        assert_eq!(c.pool, None);
    }

    #[test]
    fn null_means_not_given() {
        let c =
            parse(json!({"cniVersion": "1.0.0", "name": "n", "socket": null, "timeoutMs": null}))
                .unwrap();
        assert_eq!(c.socket, Path::new(moor_proto::DEFAULT_SOCKET));
    }

    /// Each bad config gives its code and a message naming the field and value.
    #[test]
    fn bad_config_table() {
        let cases: Vec<(Value, u32, &[&str])> = vec![
            (json!({"name": "n"}), 7, &["cniVersion"]),
            (
                json!({"cniVersion": 1.0, "name": "n"}),
                7,
                &["cniVersion", "1.0"],
            ),
            (
                json!({"cniVersion": "0.2.0", "name": "n"}),
                1,
                &["0.2.0", "1.1.0"],
            ),
            (json!({"cniVersion": "1.0.0"}), 7, &["name"]),
            (
                json!({"cniVersion": "1.0.0", "name": ""}),
                7,
                &["name", "\"\""],
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "a/b"}),
                7,
                &["name", "a/b"],
            ),
            (
                json!({"cniVersion": "1.0.0", "name": ["n"]}),
                7,
                &["name", "[\"n\"]", "string"],
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "type": 3}),
                7,
                &["type", "3"],
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "socket": 5}),
                7,
                &["socket", "5", "string"],
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "socket": "run/x.sock"}),
                7,
                &["socket", "run/x.sock", "absolute"],
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "pool": {}}),
                7,
                &["pool", "{}"],
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "pendingDir": false}),
                7,
                &["pendingDir", "false"],
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "timeoutMs": "10s"}),
                7,
                &["timeoutMs", "\"10s\"", "milliseconds"],
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "timeoutMs": 0}),
                7,
                &["timeoutMs", "0"],
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "timeoutMs": -5}),
                7,
                &["timeoutMs", "-5"],
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "timeoutMs": 1.5}),
                7,
                &["timeoutMs", "1.5"],
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "logFile": "moor.log"}),
                7,
                &["logFile", "moor.log"],
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "prevResult": "x"}),
                7,
                &["prevResult"],
            ),
            (
                json!({"cniVersion": "1.1.0", "name": "n", "cni.dev/valid-attachments": {}}),
                7,
                &["valid-attachments"],
            ),
            (
                json!({"cniVersion": "1.1.0", "name": "n", "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}, {"containerID": "b"}]}),
                7,
                &["valid-attachments[1].ifname", "null"],
            ),
        ];
        for (conf, want, needles) in cases {
            let err = parse(conf.clone()).expect_err(&conf.to_string());
            assert_eq!(err.code, want, "{conf}: {err}");
            for n in needles {
                assert!(err.to_string().contains(n), "{conf}: {err} lacks {n}");
            }
        }
    }

    /// `pool` is checked by the shared rule on ADD only (DEL must not fail
    /// over a pool it does not use).
    #[test]
    fn pool_follows_the_pool_name_rule() {
        let c = parse(json!({"cniVersion": "1.0.0", "name": "n", "pool": "My_Pool"})).unwrap();
        let e = c.check_pool().unwrap_err();
        assert_eq!(e.code, 7, "{e}");
        for w in ["\"pool\"", "My_Pool", "e.g. my-pool"] {
            assert!(e.to_string().contains(w), "{e} lacks {w:?}");
        }
        let c = parse(json!({"cniVersion": "1.0.0", "name": "n", "pool": "mysql"})).unwrap();
        c.check_pool().unwrap();
    }

    #[test]
    fn valid_attachments_parse() {
        let c = parse(json!({
            "cniVersion": "1.1.0", "name": "n",
            "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}, {"containerID": "b", "ifname": "net1"}],
        }))
        .unwrap();
        assert_eq!(
            c.valid_attachments.unwrap(),
            vec![("a".into(), "eth0".into()), ("b".into(), "net1".into())]
        );
    }

    #[test]
    fn bad_stdin_is_a_decoding_failure() {
        for raw in [&b""[..], b"  \n", b"{", b"[1]", b"\"str\"", b"{\"a\":}"] {
            let e = decode(raw).unwrap_err();
            assert_eq!(e.code, 6, "{:?}: {e}", String::from_utf8_lossy(raw));
        }
        assert!(decode(b"{\"cniVersion\":\"1.0.0\"}").is_ok());
    }

    #[test]
    fn long_values_are_shortened() {
        let long = "x".repeat(500);
        let e = parse(json!({"cniVersion": "1.0.0", "name": "n", "socket": long})).unwrap_err();
        assert!(e.details.len() < 200, "{e}");
    }
}
