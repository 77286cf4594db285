//! The CNI environment: CNI_COMMAND, the attachment variables and CNI_ARGS
//! (spec section 2, "Parameters"). Parsing takes a lookup function instead of
//! reading the process environment, so it is tested without touching it.

use moor_proto::fields;

use crate::error::{code, CniError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Version,
    Gc,
}

impl Command {
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let Some(cmd) = lookup("CNI_COMMAND") else {
            return Err(invalid_env(
                "CNI_COMMAND",
                "CNI_COMMAND is not set; expected ADD, DEL, CHECK, STATUS, GC or VERSION \
                 (moor is a CNI plugin, run by a container runtime)",
            ));
        };
        match cmd.as_str() {
            "ADD" => Ok(Self::Add),
            "DEL" => Ok(Self::Del),
            "CHECK" => Ok(Self::Check),
            "STATUS" => Ok(Self::Status),
            "VERSION" => Ok(Self::Version),
            "GC" => Ok(Self::Gc),
            _ => Err(invalid_env(
                "CNI_COMMAND",
                format!("CNI_COMMAND is {cmd:?}; expected ADD, DEL, CHECK, STATUS, GC or VERSION"),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Status => "STATUS",
            Self::Version => "VERSION",
            Self::Gc => "GC",
        }
    }
}

/// The container interface an ADD, DEL or CHECK is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
    /// CNI_NETNS; empty only for DEL (containerd's repeated DELs send none).
    pub netns: String,
}

impl Attachment {
    pub fn from_env(
        cmd: Command,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, CniError> {
        let container_id = lookup("CNI_CONTAINERID").unwrap_or_default();
        validate_container_id(&container_id)?;
        let ifname = lookup("CNI_IFNAME").unwrap_or_default();
        validate_ifname(&ifname)?;
        let netns = lookup("CNI_NETNS").unwrap_or_default();
        if netns.is_empty() && cmd != Command::Del {
            return Err(invalid_env(
                "CNI_NETNS",
                format!(
                    "CNI_NETNS is not set or empty; {} needs the path of the container's \
                     network namespace",
                    cmd.name()
                ),
            ));
        }
        Ok(Self {
            container_id,
            ifname,
            netns,
        })
    }
}

/// CNI_CONTAINERID, by moor_proto::fields::container_id (the CNI spec's rule,
/// which ipamd applies too).
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    fields::container_id("CNI_CONTAINERID", id)
        .map_err(|e| invalid_env("CNI_CONTAINERID", e.to_string()))
}

/// CNI_IFNAME, by moor_proto::fields::ifname: what the kernel takes as a
/// link name (dev_valid_name), 1 to 15 bytes.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    fields::ifname("CNI_IFNAME", name).map_err(|e| invalid_env("CNI_IFNAME", e.to_string()))
}

/// The keys moor understands in CNI_ARGS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub pod_infra_container_id: String,
    /// MOOR_POOL: the pool to allocate from, over the config's `pool`.
    pub pool: Option<String>,
}

impl CniArgs {
    /// Checks the values ADD acts on, by the rules ipamd and ipamctl use
    /// (moor_proto::fields), before ipamd is asked. The pod identity is
    /// checked when both parts are given, which is when moor keys a binding
    /// and the app's pool on it: podman passes only K8S_POD_NAME, its
    /// container name (capitals and '_' allowed), and moor does not use it.
    /// DEL and CHECK find the attachment by container id and ifname and never
    /// fail over these.
    pub fn check_for_add(&self) -> Result<(), CniError> {
        let bad = |e: fields::FieldError| invalid_env("CNI_ARGS", e.to_string());
        if !self.pod_namespace.is_empty() && !self.pod_name.is_empty() {
            fields::namespace("K8S_POD_NAMESPACE in CNI_ARGS", &self.pod_namespace).map_err(bad)?;
            fields::pod_name("K8S_POD_NAME in CNI_ARGS", &self.pod_name).map_err(bad)?;
        }
        if let Some(pool) = &self.pool {
            fields::pool_name("MOOR_POOL in CNI_ARGS", pool).map_err(bad)?;
        }
        Ok(())
    }
}

/// Parses `KEY=VALUE;KEY=VALUE`. A pair without '=' is an invalid CNI_ARGS
/// (code 4); an unknown key is an unsupported field (code 2) unless
/// `IgnoreUnknown` is 1 or true, as in libcni.
pub fn parse_cni_args(raw: &str) -> Result<CniArgs, CniError> {
    let mut pairs = Vec::new();
    for pair in raw.split(';').filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(invalid_env(
                "CNI_ARGS",
                format!("CNI_ARGS has {pair:?}, which is not a KEY=VALUE pair (pairs are separated by ';')"),
            ));
        };
        if key.is_empty() {
            return Err(invalid_env(
                "CNI_ARGS",
                format!("CNI_ARGS has {pair:?}, which has an empty key"),
            ));
        }
        pairs.push((key, value));
    }
    let mut ignore_unknown = false;
    for (key, value) in &pairs {
        if *key == "IgnoreUnknown" {
            ignore_unknown = match value.to_ascii_lowercase().as_str() {
                "1" | "true" => true,
                "0" | "false" | "" => false,
                _ => {
                    return Err(invalid_env(
                        "CNI_ARGS",
                        format!(
                            "CNI_ARGS has IgnoreUnknown={value:?}; expected 1, true, 0 or false"
                        ),
                    ))
                }
            };
        }
    }
    let mut args = CniArgs::default();
    for (key, value) in pairs {
        let value = value.to_string();
        match key {
            "K8S_POD_NAMESPACE" => args.pod_namespace = value,
            "K8S_POD_NAME" => args.pod_name = value,
            "K8S_POD_UID" => args.pod_uid = value,
            "K8S_POD_INFRA_CONTAINER_ID" => args.pod_infra_container_id = value,
            "MOOR_POOL" => args.pool = Some(value).filter(|p| !p.is_empty()),
            "IgnoreUnknown" => {}
            _ if ignore_unknown => {}
            _ => {
                return Err(CniError::new(
                    code::UNSUPPORTED_FIELD,
                    format!("unsupported CNI_ARGS key {key:?}"),
                    format!(
                        "CNI_ARGS has {key}={value:?}, which moor does not know; it knows \
                         K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID, K8S_POD_INFRA_CONTAINER_ID, \
                         MOOR_POOL and IgnoreUnknown (set IgnoreUnknown=1 to ignore other keys)"
                    ),
                ))
            }
        }
    }
    Ok(args)
}

fn invalid_env(var: &str, details: impl Into<String>) -> CniError {
    CniError::new(
        code::INVALID_ENV,
        format!("invalid environment variable {var}"),
        details,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    const GOOD: [(&str, &str); 4] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "3f2a.b_c-9"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", "/var/run/netns/cni-1"),
    ];

    fn with(over: &[(&'static str, Option<&'static str>)]) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = GOOD
            .iter()
            .filter(|(k, _)| !over.iter().any(|(o, _)| o == k))
            .copied()
            .collect();
        v.extend(over.iter().filter_map(|(k, val)| val.map(|val| (*k, val))));
        v
    }

    #[test]
    fn good_env_parses() {
        let env = lookup(&GOOD);
        let cmd = Command::from_env(&env).unwrap();
        assert_eq!(cmd, Command::Add);
        let a = Attachment::from_env(cmd, &env).unwrap();
        assert_eq!(a.container_id, "3f2a.b_c-9");
        assert_eq!(a.ifname, "eth0");
        assert_eq!(a.netns, "/var/run/netns/cni-1");
    }

    /// Each bad environment gives code 4 and a message naming the variable.
    #[test]
    fn bad_env_table() {
        let long = "a234567890123456";
        // (what, variables set or unset over a good environment, variable named)
        type Case = (
            &'static str,
            Vec<(&'static str, Option<&'static str>)>,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            ("no command", vec![("CNI_COMMAND", None)], "CNI_COMMAND"),
            (
                "unknown command",
                vec![("CNI_COMMAND", Some("ATTACH"))],
                "CNI_COMMAND",
            ),
            (
                "lowercase command",
                vec![("CNI_COMMAND", Some("add"))],
                "CNI_COMMAND",
            ),
            (
                "no container id",
                vec![("CNI_CONTAINERID", None)],
                "CNI_CONTAINERID",
            ),
            (
                "empty container id",
                vec![("CNI_CONTAINERID", Some(""))],
                "CNI_CONTAINERID",
            ),
            (
                "id starts with dash",
                vec![("CNI_CONTAINERID", Some("-abc"))],
                "CNI_CONTAINERID",
            ),
            (
                "id has slash",
                vec![("CNI_CONTAINERID", Some("ab/c"))],
                "CNI_CONTAINERID",
            ),
            (
                "id has space",
                vec![("CNI_CONTAINERID", Some("ab c"))],
                "CNI_CONTAINERID",
            ),
            ("no ifname", vec![("CNI_IFNAME", None)], "CNI_IFNAME"),
            (
                "ifname too long",
                vec![("CNI_IFNAME", Some(long))],
                "CNI_IFNAME",
            ),
            ("ifname dot", vec![("CNI_IFNAME", Some("."))], "CNI_IFNAME"),
            (
                "ifname dotdot",
                vec![("CNI_IFNAME", Some(".."))],
                "CNI_IFNAME",
            ),
            (
                "ifname slash",
                vec![("CNI_IFNAME", Some("et/h0"))],
                "CNI_IFNAME",
            ),
            (
                "ifname space",
                vec![("CNI_IFNAME", Some("eth 0"))],
                "CNI_IFNAME",
            ),
            (
                "ifname tab",
                vec![("CNI_IFNAME", Some("eth\t0"))],
                "CNI_IFNAME",
            ),
            (
                "ifname colon",
                vec![("CNI_IFNAME", Some("eth0:1"))],
                "CNI_IFNAME",
            ),
            ("no netns on ADD", vec![("CNI_NETNS", None)], "CNI_NETNS"),
            (
                "empty netns on CHECK",
                vec![("CNI_COMMAND", Some("CHECK")), ("CNI_NETNS", Some(""))],
                "CNI_NETNS",
            ),
        ];
        for (what, over, var) in cases {
            let env = lookup(&with(&over));
            let err = Command::from_env(&env)
                .and_then(|cmd| Attachment::from_env(cmd, &env))
                .expect_err(what);
            assert_eq!(err.code, 4, "{what}: {err}");
            assert!(err.to_string().contains(var), "{what}: {err}");
        }
    }

    #[test]
    fn ifname_of_fifteen_bytes_is_fine_sixteen_is_not() {
        validate_ifname("a23456789012345").unwrap();
        validate_ifname("a234567890123456").unwrap_err();
        // Bytes, not characters: 8 two-byte characters are 16 bytes.
        validate_ifname("éééééééé").unwrap_err();
    }

    #[test]
    fn netns_is_optional_for_del() {
        let env = lookup(&with(&[("CNI_COMMAND", Some("DEL")), ("CNI_NETNS", None)]));
        let a = Attachment::from_env(Command::Del, &env).unwrap();
        assert_eq!(a.netns, "");
    }

    #[test]
    fn kubelet_args_parse() {
        let a = parse_cni_args(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=db;K8S_POD_NAME=mysql-0;\
             K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=1-2-3",
        )
        .unwrap();
        assert_eq!(a.pod_namespace, "db");
        assert_eq!(a.pod_name, "mysql-0");
        assert_eq!(a.pod_uid, "1-2-3");
        assert_eq!(a.pod_infra_container_id, "abc");
        assert_eq!(a.pool, None);
        assert_eq!(parse_cni_args("").unwrap(), CniArgs::default());
        assert_eq!(parse_cni_args("K8S_POD_NAME=x;").unwrap().pod_name, "x");
    }

    #[test]
    fn moor_pool_and_values_with_equals() {
        let a = parse_cni_args("MOOR_POOL=mysql-pool;K8S_POD_NAME=a=b").unwrap();
        assert_eq!(a.pool.as_deref(), Some("mysql-pool"));
        assert_eq!(a.pod_name, "a=b");
        assert_eq!(parse_cni_args("MOOR_POOL=").unwrap().pool, None);
    }

    #[test]
    fn bad_args_table() {
        let cases = [
            ("K8S_POD_NAME", 4, "CNI_ARGS"),
            ("K8S_POD_NAME=a;junk", 4, "junk"),
            ("=x", 4, "CNI_ARGS"),
            ("IgnoreUnknown=maybe", 4, "IgnoreUnknown"),
            ("FOO=bar", 2, "FOO=\"bar\""),
            ("IgnoreUnknown=0;FOO=bar", 2, "FOO"),
        ];
        for (raw, want, needle) in cases {
            let e = parse_cni_args(raw).expect_err(raw);
            assert_eq!(e.code, want, "{raw}: {e}");
            assert!(e.to_string().contains(needle), "{raw}: {e}");
        }
    }

    /// ADD's CNI_ARGS values follow the shared field rules: code 4 naming
    /// the key, the value and the fix.
    #[test]
    fn add_checks_pod_identity_and_pool() {
        // (CNI_ARGS, words of the error)
        let bad: &[(&str, &[&str])] = &[
            (
                "K8S_POD_NAMESPACE=Shop;K8S_POD_NAME=web-0",
                &["K8S_POD_NAMESPACE in CNI_ARGS", "\"Shop\"", "e.g. shop"],
            ),
            (
                "K8S_POD_NAMESPACE=a.b;K8S_POD_NAME=web-0",
                &["K8S_POD_NAMESPACE", "e.g. a-b"],
            ),
            (
                "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=My_App-0",
                &["K8S_POD_NAME in CNI_ARGS", "\"My_App-0\"", "e.g. my-app-0"],
            ),
            (
                "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;MOOR_POOL=Web_Pool",
                &["MOOR_POOL in CNI_ARGS", "\"Web_Pool\"", "e.g. web-pool"],
            ),
        ];
        for (raw, words) in bad {
            let e = parse_cni_args(raw).unwrap().check_for_add().expect_err(raw);
            assert_eq!(e.code, 4, "{raw}: {e}");
            for w in *words {
                assert!(e.to_string().contains(w), "{raw}: {e} lacks {w:?}");
            }
        }
        for good in [
            "",
            "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web.v2-7d9f8c6b5-x2x9z;MOOR_POOL=web",
            // podman: its container name, no namespace, no pod identity.
            "IgnoreUnknown=1;K8S_POD_NAME=My_Box",
        ] {
            parse_cni_args(good).unwrap().check_for_add().unwrap();
        }
    }

    #[test]
    fn ignore_unknown_anywhere_in_the_list() {
        for raw in [
            "FOO=bar;IgnoreUnknown=true",
            "IgnoreUnknown=TRUE;FOO=bar",
            "FOO=1;IgnoreUnknown=1",
        ] {
            parse_cni_args(raw).unwrap();
        }
    }
}
