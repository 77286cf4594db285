//! The rules for the names, ids and numbers moor takes as input, one function
//! per field, shared by the plugin (`moor`), the admin CLI (`ipamctl`) and
//! the daemon (`ipamd`), so a value one of them accepts the others accept too.
//!
//! Each function takes the field as its caller shows it (`--app` in ipamctl,
//! `K8S_POD_NAME in CNI_ARGS` in moor, `app` in ipamd) and the value, and on
//! a bad value returns a [`FieldError`] naming the field, the value, what is
//! wrong and the fix. Pure: no I/O.
//!
//! The rules:
//! - Kubernetes names follow the API server's own validation, since the pool
//!   lookup keys on them and a rule looser than Kubernetes' would accept
//!   names no pod can have: a namespace is an RFC 1123 DNS label, a pod name
//!   and an app (a workload name: Deployment, StatefulSet, ...) are RFC 1123
//!   DNS subdomains.
//! - Pool and ToR names are DNS labels, like namespaces, so a pool can be
//!   named after its app and both fit in store keys and `ip` output.
//! - Container id and network name follow the CNI spec; the interface name
//!   follows the kernel (`dev_valid_name`).
//! - VLAN ids are 802.1Q's 1-4094; pool sizes 1-65535 (the width of `size`
//!   in ipamd's store).

use std::fmt;

/// Longest DNS label (RFC 1123): namespace, pool and ToR names.
pub const MAX_LABEL: usize = 63;
/// Longest DNS subdomain (RFC 1123): pod and app names.
pub const MAX_SUBDOMAIN: usize = 253;
/// Longest Linux interface name: IFNAMSIZ (16) minus the NUL.
pub const MAX_IFNAME: usize = 15;
/// Highest usable 802.1Q VLAN id; 0 and 4095 are reserved.
pub const MAX_VLAN: u32 = 4094;
/// Largest pool we carve in one go; a bigger app wants several pools.
pub const MAX_POOL_SIZE: u32 = 65_535;

/// Values longer than this are shortened in messages.
const SHOWN: usize = 100;

/// A bad value: which field, the value, what is wrong with it and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field as the entry point shows it: `--app`, `app`,
    /// `K8S_POD_NAME in CNI_ARGS`.
    pub field: String,
    /// The value as given.
    pub value: String,
    /// What is wrong, e.g. `holds '_'`.
    pub problem: String,
    /// How to fix it, with a corrected value when one can be guessed.
    pub fix: String,
    /// The value is a number: shown bare, not quoted.
    numeric: bool,
}

impl FieldError {
    fn new(field: &str, value: &str, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            field: field.to_string(),
            value: value.to_string(),
            problem: problem.into(),
            fix: fix.into(),
            numeric: false,
        }
    }

    fn number(field: &str, value: u32, problem: &str, fix: String) -> Self {
        Self {
            numeric: true,
            ..Self::new(field, &value.to_string(), problem, fix)
        }
    }

    /// `problem; fix`: the message without the field and value, for callers
    /// that print those themselves.
    pub fn reason(&self) -> String {
        format!("{}; {}", self.problem, self.fix)
    }

    /// The value as messages show it: a number bare, a string quoted (and
    /// shortened when long).
    pub fn shown_value(&self) -> String {
        if self.numeric {
            self.value.clone()
        } else {
            shown(&self.value)
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} {}: {}",
            self.field,
            self.shown_value(),
            self.reason()
        )
    }
}

impl std::error::Error for FieldError {}

fn shown(value: &str) -> String {
    if value.len() <= SHOWN {
        return format!("{value:?}");
    }
    let mut cut = SHOWN - 20;
    while !value.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{:?}... ({} bytes)", &value[..cut], value.len())
}

// ------------------------------------------------------------- CNI (moor)

/// CNI_CONTAINERID, per the CNI spec: not empty, a letter or digit first,
/// then letters, digits, '_', '.' and '-'.
pub fn container_id(field: &str, value: &str) -> Result<(), FieldError> {
    const FIX: &str = "a container id is a letter or digit followed by letters, digits, \
                       '_', '.' or '-' (CNI spec)";
    let Some(first) = value.chars().next() else {
        return Err(FieldError::new(field, value, "must not be empty", FIX));
    };
    if !first.is_ascii_alphanumeric() {
        return Err(FieldError::new(
            field,
            value,
            format!("starts with {first:?}"),
            FIX,
        ));
    }
    match value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        Some(c) => Err(FieldError::new(field, value, format!("holds {c:?}"), FIX)),
        None => Ok(()),
    }
}

/// A network's `name` in the config: the CNI spec gives it the container
/// id's rule (and no characters that are not allowed in a path, which that
/// rule already excludes).
pub fn network_name(field: &str, value: &str) -> Result<(), FieldError> {
    container_id(field, value).map_err(|mut e| {
        e.fix = "a network name is a letter or digit followed by letters, digits, \
                 '_', '.' or '-' (CNI spec)"
            .into();
        e
    })
}

/// CNI_IFNAME, as the kernel takes a link name (`dev_valid_name`): 1 to 15
/// bytes, not "." or "..", no '/', ':' or whitespace. Control characters
/// are refused too: the kernel takes them, but no runtime means them.
pub fn ifname(field: &str, value: &str) -> Result<(), FieldError> {
    let fix = format!(
        "a Linux interface name is 1-{MAX_IFNAME} bytes without '/', ':' or whitespace, \
         e.g. eth0"
    );
    let problem = if value.is_empty() {
        "must not be empty".to_string()
    } else if value.len() > MAX_IFNAME {
        format!(
            "is {} bytes long, over the kernel's {MAX_IFNAME}",
            value.len()
        )
    } else if value == "." || value == ".." {
        "is reserved".to_string()
    } else if let Some(c) = value
        .chars()
        .find(|c| matches!(c, '/' | ':') || c.is_whitespace() || c.is_control())
    {
        format!("holds {c:?}")
    } else {
        return Ok(());
    };
    Err(FieldError::new(field, value, problem, fix))
}

// ------------------------------------------------------- Kubernetes names

/// A Kubernetes namespace: an RFC 1123 DNS label.
pub fn namespace(field: &str, value: &str) -> Result<(), FieldError> {
    dns_label(field, value, "a namespace", "default")
}

/// A pod name: an RFC 1123 DNS subdomain, like every Kubernetes object name.
pub fn pod_name(field: &str, value: &str) -> Result<(), FieldError> {
    dns_subdomain(field, value, "a pod name", "web-0")
}

/// An app: the name of the pods' workload (Deployment, StatefulSet,
/// DaemonSet, Job, or the bare pod), which is a Kubernetes object name, so
/// an RFC 1123 DNS subdomain. ipamd reads it off the pod name, so an app
/// outside this rule could never match a pod.
pub fn app(field: &str, value: &str) -> Result<(), FieldError> {
    dns_subdomain(field, value, "an app (workload name)", "mysql")
}

// ------------------------------------------------------------ moor's names

/// A pool name: a DNS label.
pub fn pool_name(field: &str, value: &str) -> Result<(), FieldError> {
    dns_label(field, value, "a pool name", "mysql-prod")
}

/// A ToR (or segment) name: a DNS label.
pub fn tor_name(field: &str, value: &str) -> Result<(), FieldError> {
    dns_label(field, value, "a ToR name", "rack-1")
}

// ---------------------------------------------------------------- numbers

/// An 802.1Q VLAN id, 1-4094. Untagged is no VLAN at all, which each entry
/// point spells its own way (0 on the wire, no `--vlan` on the command line).
pub fn vlan(field: &str, value: u32) -> Result<u16, FieldError> {
    if (1..=MAX_VLAN).contains(&value) {
        return Ok(value as u16);
    }
    Err(FieldError::number(
        field,
        value,
        "is out of range",
        format!("a VLAN id is 1-{MAX_VLAN} (0 and 4095 are reserved); omit {field} for untagged"),
    ))
}

/// The number of IPs in a pool, 1-65535.
pub fn pool_size(field: &str, value: u32) -> Result<u32, FieldError> {
    if (1..=MAX_POOL_SIZE).contains(&value) {
        return Ok(value);
    }
    Err(FieldError::number(
        field,
        value,
        "is out of range",
        format!("a pool holds 1-{MAX_POOL_SIZE} IPs"),
    ))
}

// ---------------------------------------------------------------- helpers

fn label_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
}

/// RFC 1123 label: 1-63 of [a-z0-9-], a letter or digit at both ends.
fn dns_label(field: &str, value: &str, what: &str, example: &str) -> Result<(), FieldError> {
    let rule = "use only lowercase letters, digits and '-', starting and ending with a \
                letter or digit";
    name_rule(field, value, what, example, MAX_LABEL, false, rule)
}

/// RFC 1123 subdomain, as Kubernetes checks object names: 1-253
/// characters, dot-separated labels of [a-z0-9-], each starting and ending
/// with a letter or digit.
fn dns_subdomain(field: &str, value: &str, what: &str, example: &str) -> Result<(), FieldError> {
    let rule = "use only lowercase letters, digits, '-' and '.', starting and ending with \
                a letter or digit (also around each '.')";
    name_rule(field, value, what, example, MAX_SUBDOMAIN, true, rule)
}

fn name_rule(
    field: &str,
    value: &str,
    what: &str,
    example: &str,
    max: usize,
    dots: bool,
    rule: &str,
) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(FieldError::new(
            field,
            value,
            "must not be empty",
            format!("give {what}, e.g. {example}"),
        ));
    }
    if value.len() > max {
        return Err(FieldError::new(
            field,
            value,
            format!("is {} characters long", value.len()),
            format!("shorten it to at most {max}"),
        ));
    }
    let problem = if let Some(c) = value
        .chars()
        .find(|&c| !(label_char(c) || dots && c == '.'))
    {
        if c.is_ascii_uppercase() {
            format!("holds the capital {c:?}")
        } else {
            format!("holds {c:?}")
        }
    } else if let Some(part) = value.split('.').find(|p| !label_ok(p)) {
        // Only the characters are allowed now: a part is empty or has a '-'
        // at an end.
        if !dots || part.len() == value.len() {
            let end = if part.starts_with('-') {
                "starts"
            } else {
                "ends"
            };
            format!("{end} with '-'")
        } else if value.starts_with('.') {
            "starts with '.'".to_string()
        } else if value.ends_with('.') {
            "ends with '.'".to_string()
        } else if part.is_empty() {
            "has two dots in a row".to_string()
        } else {
            format!("has the part {part:?} between dots, which starts or ends with '-'")
        }
    } else {
        return Ok(());
    };
    let mut fix = rule.to_string();
    if let Some(s) = suggestion(value, max, dots) {
        fix.push_str(&format!(", e.g. {s}"));
    }
    Err(FieldError::new(field, value, problem, fix))
}

/// A non-empty run of [a-z0-9-] with a letter or digit at both ends.
fn label_ok(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    s.starts_with(alnum) && s.ends_with(alnum) && s.chars().all(label_char)
}

/// The value lowercased, with every character the rule refuses turned into
/// '-', '-' trimmed off the ends of each part and empty parts dropped, if
/// that is a valid name.
fn suggestion(value: &str, max: usize, dots: bool) -> Option<String> {
    let mapped: String = value
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if label_char(c) || dots && c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let s = mapped
        .split('.')
        .map(|p| p.trim_matches('-'))
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(".");
    let ok = !s.is_empty() && s.len() <= max && s.split('.').all(label_ok);
    ok.then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Rule = fn(&str, &str) -> Result<(), FieldError>;

    /// Every string rule, by name.
    const RULES: &[(&str, Rule)] = &[
        ("container_id", container_id),
        ("network_name", network_name),
        ("ifname", ifname),
        ("namespace", namespace),
        ("pod_name", pod_name),
        ("app", app),
        ("pool_name", pool_name),
        ("tor_name", tor_name),
    ];

    fn rule(name: &str) -> Rule {
        RULES.iter().find(|(n, _)| *n == name).unwrap().1
    }

    // Reference predicates, written as the specs state them (a regex read
    // left to right), independently of the code above.

    /// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`
    fn ref_label(s: &str, max: usize) -> bool {
        let b = s.as_bytes();
        let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        if b.is_empty() || b.len() > max || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
            return false;
        }
        b.iter().all(|&c| alnum(c) || c == b'-')
    }

    /// `label(\.label)*`, at most 253 in all.
    fn ref_subdomain(s: &str) -> bool {
        s.len() <= MAX_SUBDOMAIN && s.split('.').all(|l| ref_label(l, MAX_SUBDOMAIN))
    }

    /// `[a-zA-Z0-9][a-zA-Z0-9_.\-]*`
    fn ref_container_id(s: &str) -> bool {
        let b = s.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b.iter()
                .all(|&c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
    }

    fn ref_ifname(s: &str) -> bool {
        (1..=15).contains(&s.len())
            && s != "."
            && s != ".."
            && !s
                .chars()
                .any(|c| "/: \t\n\r\x0b\x0c\0".contains(c) || c.is_whitespace() || c.is_control())
    }

    fn reference(name: &str, s: &str) -> bool {
        match name {
            "container_id" | "network_name" => ref_container_id(s),
            "ifname" => ref_ifname(s),
            "namespace" | "pool_name" | "tor_name" => ref_label(s, MAX_LABEL),
            "pod_name" | "app" => ref_subdomain(s),
            _ => unreachable!("{name}"),
        }
    }

    #[test]
    fn table_of_values() {
        let long = |n: usize| "a".repeat(n);
        // (rule, value, accepted)
        let cases: Vec<(&str, String, bool)> = [
            ("container_id", "3f2a.b_c-9", true),
            ("container_id", "A", true),
            ("container_id", "", false),
            ("container_id", "-abc", false),
            ("container_id", "_abc", false),
            ("container_id", "ab/c", false),
            ("container_id", "ab c", false),
            ("container_id", "abé", false),
            ("network_name", "moor-e2e.1_x", true),
            ("network_name", "a/b", false),
            ("ifname", "eth0", true),
            ("ifname", "net1.100", true),
            ("ifname", "a23456789012345", true),
            ("ifname", "a234567890123456", false),
            ("ifname", "éééééééé", false),
            ("ifname", "", false),
            ("ifname", ".", false),
            ("ifname", "..", false),
            ("ifname", "...", true),
            ("ifname", "et/h0", false),
            ("ifname", "eth0:1", false),
            ("ifname", "eth 0", false),
            ("ifname", "eth\t0", false),
            ("ifname", "eth\x0b0", false),
            ("ifname", "eth\0", false),
            ("namespace", "default", true),
            ("namespace", "kube-system", true),
            ("namespace", "0", true),
            ("namespace", "a.b", false),
            ("namespace", "Prod", false),
            ("namespace", "-a", false),
            ("pod_name", "web-7d9f8c6b5-x2x9z", true),
            ("pod_name", "web.v2-0", true),
            ("pod_name", "web..0", false),
            ("pod_name", "web-.0", false),
            ("pod_name", "web.-0", false),
            ("pod_name", ".web", false),
            ("pod_name", "My_Pod", false),
            ("app", "mysql", true),
            ("app", "mysql.v8", true),
            ("app", "My_App", false),
            ("app", "my_app", false),
            ("app", "a/b", false),
            ("app", "", false),
            ("app", "app-", false),
            ("pool_name", "mysql-prod", true),
            ("pool_name", "my.pool", false),
            ("pool_name", "Web_1", false),
            ("tor_name", "rack-1", true),
            ("tor_name", "Rack 1", false),
            ("tor_name", "rack-", false),
        ]
        .into_iter()
        .map(|(r, v, ok)| (r, v.to_string(), ok))
        .chain([
            ("namespace", long(63), true),
            ("namespace", long(64), false),
            ("pool_name", long(63), true),
            ("pool_name", long(64), false),
            ("tor_name", long(64), false),
            ("app", long(253), true),
            ("app", long(254), false),
            ("pod_name", format!("{}.{}", long(63), long(189)), true),
            ("container_id", long(1000), true),
        ])
        .collect();
        for (name, value, accepted) in cases {
            let got = rule(name)("FIELD", &value);
            assert_eq!(got.is_ok(), accepted, "{name}({value:?}): {got:?}");
            assert_eq!(
                reference(name, &value),
                accepted,
                "reference {name}({value:?})"
            );
            if let Err(e) = got {
                let text = e.to_string();
                assert!(text.contains("FIELD"), "{text}");
                assert!(text.contains(&e.shown_value()), "{text}");
                assert!(!e.problem.is_empty() && !e.fix.is_empty(), "{text}");
            }
        }
    }

    #[test]
    fn messages_name_the_field_the_value_and_the_fix() {
        // (error, words the message must hold)
        let cases: Vec<(FieldError, &[&str])> = vec![
            (
                app("--app", "My_App").unwrap_err(),
                &[
                    "invalid --app \"My_App\"",
                    "capital 'M'",
                    "lowercase",
                    "e.g. my-app",
                ],
            ),
            (
                app("app", "").unwrap_err(),
                &["must not be empty", "e.g. mysql"],
            ),
            (
                namespace("--namespace", "Prod").unwrap_err(),
                &["--namespace", "e.g. prod"],
            ),
            (
                tor_name("NAME", "rack_1").unwrap_err(),
                &["holds '_'", "e.g. rack-1"],
            ),
            (
                tor_name("NAME", "rack-").unwrap_err(),
                &["ends with '-'", "starting and ending"],
            ),
            (
                pool_name("NAME", &"a".repeat(64)).unwrap_err(),
                &["64 characters", "at most 63"],
            ),
            (
                pod_name("K8S_POD_NAME in CNI_ARGS", "web..0").unwrap_err(),
                &["K8S_POD_NAME in CNI_ARGS", "two dots", "e.g. web.0"],
            ),
            (
                container_id("CNI_CONTAINERID", "-x/y").unwrap_err(),
                &["CNI_CONTAINERID", "\"-x/y\"", "starts with '-'", "CNI spec"],
            ),
            (
                ifname("CNI_IFNAME", "eth0123456789abc").unwrap_err(),
                &["CNI_IFNAME", "16 bytes", "15"],
            ),
            (
                vlan("--vlan", 5000).unwrap_err(),
                &["--vlan 5000", "1-4094", "omit --vlan"],
            ),
            (vlan("vlan", 0).unwrap_err(), &["vlan 0:", "reserved"]),
            (
                pool_size("size", 65_536).unwrap_err(),
                &["size 65536:", "1-65535"],
            ),
            (pool_size("--size", 0).unwrap_err(), &["1-65535"]),
        ];
        for (e, words) in cases {
            let text = e.to_string();
            for w in words {
                assert!(text.contains(w), "{text:?} lacks {w:?}");
            }
        }
        // No suggestion when lowercasing and dashes would not help.
        assert!(!tor_name("NAME", "ü").unwrap_err().fix.contains("e.g."));
        assert_eq!(vlan("vlan", 4094), Ok(4094));
        assert_eq!(vlan("vlan", 1), Ok(1));
        assert!(vlan("vlan", 4095).is_err());
        assert_eq!(pool_size("size", 65_535), Ok(65_535));
        assert_eq!(pool_size("size", 1), Ok(1));
    }

    #[test]
    fn long_values_are_shortened_in_messages() {
        let e = container_id("CNI_CONTAINERID", &format!("a{}", "/".repeat(5000))).unwrap_err();
        let text = e.to_string();
        assert!(text.len() < 400, "{text}");
        assert!(text.contains("5001 bytes"), "{text}");
        assert_eq!(e.value.len(), 5001, "the error keeps the whole value");
    }

    /// Strings over the characters that matter to some rule.
    fn any_name() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9.\\-]{0,70}",
            "[a-zA-Z0-9_.\\-/: \\t]{0,20}",
            "[a-z0-9]([a-z0-9.\\-]{0,250}[a-z0-9])?",
            ".{0,20}",
        ]
    }

    proptest! {
        /// Every rule agrees with its reference predicate.
        #[test]
        fn rules_agree_with_the_reference(s in any_name()) {
            for (name, rule) in RULES {
                prop_assert_eq!(rule("f", &s).is_ok(), reference(name, &s), "{}({:?})", name, s);
            }
        }

        /// A suggestion, when made, is itself accepted: following the fix
        /// never leads to another refusal.
        #[test]
        fn suggestions_are_accepted(s in any_name()) {
            for (name, rule) in RULES {
                if let Err(e) = rule("f", &s) {
                    if let Some((_, fixed)) = e.fix.split_once(", e.g. ") {
                        prop_assert!(rule("f", fixed).is_ok(), "{}: {:?} suggests {:?}", name, s, fixed);
                    }
                }
            }
        }

        /// An accepted name stays accepted after a round trip through the
        /// places it travels: a protobuf string, a CNI_ARGS pair, a store
        /// key segment (namespace/app) and back.
        #[test]
        fn accepted_values_survive_a_round_trip(s in any_name()) {
            for (name, rule) in RULES {
                if rule("f", &s).is_err() {
                    continue;
                }
                let pod = crate::v1::PodRef { namespace: s.clone(), name: s.clone(), uid: String::new() };
                let wire = prost::Message::encode_to_vec(&pod);
                let back = <crate::v1::PodRef as prost::Message>::decode(wire.as_slice()).unwrap();
                prop_assert!(rule("f", &back.name).is_ok());
                if matches!(*name, "ifname" | "network_name" | "container_id") {
                    // Not in CNI_ARGS; the ids are in store keys, checked below.
                    let key = format!("attachments/{s}/eth0");
                    prop_assert!(*name == "ifname" || key.split('/').count() == 3);
                    continue;
                }
                let args = format!("K8S_POD_NAME={s};X=1");
                let parsed = args.split(';').next().and_then(|p| p.split_once('=')).unwrap().1;
                prop_assert_eq!(parsed, s.as_str(), "{} holds ';' or '='", name);
                let key = format!("apps/{s}/{s}");
                prop_assert_eq!(key.split('/').count(), 3, "{} holds '/'", name);
                prop_assert!(rule("f", key.split('/').nth(1).unwrap()).is_ok());
            }
        }

        #[test]
        fn numbers_in_range_are_accepted(n in any::<u32>()) {
            prop_assert_eq!(vlan("v", n).is_ok(), (1..=4094).contains(&n));
            prop_assert_eq!(pool_size("s", n).is_ok(), (1..=65_535).contains(&n));
            if let Ok(v) = vlan("v", n) {
                prop_assert_eq!(u32::from(v), n);
            }
        }
    }
}
