//! Client-side checks of what the operator typed, before any RPC.
//!
//! ipamd checks everything again; these exist so that a typo gets an answer
//! that names the flag, the bad value and the fix, without a round trip and
//! even when ipamd is down. Pure functions: no I/O.

mod tor;

use std::fmt;
use std::net::IpAddr;

use clap::ValueEnum;
use moor_proto::fields::{self, FieldError, MAX_POOL_SIZE};
use moor_proto::v1::{AddBindingRequest, CreatePoolRequest, EvictIpRequest, PodRef, ReleasePolicy};

use crate::output::{ExportFormat, Format, WatchFormat};

pub use tor::{tor_add, TorAdd};

/// Bad input: which flag (or positional argument), the value given, and what
/// is wrong with it including how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    pub flag: String,
    pub value: String,
    pub message: String,
}

impl InputError {
    fn new(flag: &str, value: &str, message: impl Into<String>) -> Self {
        Self {
            flag: flag.to_string(),
            value: value.to_string(),
            message: message.into(),
        }
    }
}

/// A field rule's refusal, with the flag as ipamctl shows it.
impl From<FieldError> for InputError {
    fn from(e: FieldError) -> Self {
        Self {
            message: e.reason(),
            flag: e.field,
            value: e.value,
        }
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} {:?}: {}",
            self.flag, self.value, self.message
        )
    }
}

impl std::error::Error for InputError {}

/// The arguments of `pool create`, as typed.
#[derive(Debug, Default, Clone)]
pub struct PoolCreate<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub app: &'a str,
    pub size: Option<&'a str>,
    pub tors: &'a [String],
    pub policy: Option<&'a str>,
    /// `--allow-namespace`, repeatable; `*` = every namespace.
    pub allow_namespaces: &'a [String],
    /// `--ip`, repeatable: bring your own IPs.
    pub ips: &'a [String],
    /// `--family`; `None`: every family all the pool's ToRs have.
    pub family: Option<PoolFamily>,
}

/// `pool create --family`: which address families the pool's pods get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PoolFamily {
    /// An IPv4 address each.
    Ipv4,
    /// An IPv6 address each.
    Ipv6,
    /// One of each, from a dual-stack ToR segment.
    Dual,
}

impl PoolFamily {
    /// As ipamd spells it on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolFamily::Ipv4 => "ipv4",
            PoolFamily::Ipv6 => "ipv6",
            PoolFamily::Dual => "dual",
        }
    }
}

pub fn pool_create(args: &PoolCreate<'_>) -> Result<CreatePoolRequest, InputError> {
    let name = pool_name("NAME", args.name)?;
    let namespace = namespace("--namespace", args.namespace)?;
    let app = app("--app", args.app)?;
    let size = match args.size {
        Some(s) => size("--size", s)?,
        // 0 asks ipamd for its default (30).
        None => 0,
    };
    let mut tors: Vec<String> = Vec::new();
    for tor in args.tors {
        let tor = tor_name("--tor", tor)?;
        if tors.contains(&tor) {
            return Err(InputError::new(
                "--tor",
                &tor,
                "is given twice; name each ToR once",
            ));
        }
        tors.push(tor);
    }
    let policy = match args.policy {
        Some(p) => policy("--policy", p)?,
        None => ReleasePolicy::Auto,
    };
    let mut allow_namespaces: Vec<String> = Vec::new();
    for ns in args.allow_namespaces {
        let ns = if ns == "*" {
            ns.clone()
        } else {
            self::namespace("--allow-namespace", ns)?
        };
        if !allow_namespaces.contains(&ns) {
            allow_namespaces.push(ns);
        }
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    for ip in args.ips {
        let a = address("--ip", ip)?;
        if ips.contains(&a) {
            return Err(InputError::new(
                "--ip",
                ip,
                "is given twice; name each IP once",
            ));
        }
        ip_of_family("--ip", ip, a, args.family, ips.first())?;
        ips.push(a);
    }
    if !ips.is_empty() && size != 0 && size as usize != ips.len() {
        return Err(InputError::new(
            "--size",
            &size.to_string(),
            format!(
                "differs from the {} IPs given with --ip; leave --size out, the IPs make the pool",
                ips.len()
            ),
        ));
    }
    Ok(CreatePoolRequest {
        name,
        namespace,
        app,
        size,
        tors,
        policy: policy.into(),
        allow_namespaces,
        ips: ips.iter().map(|ip| ip.to_string()).collect(),
        family: args.family.map_or("", PoolFamily::as_str).to_string(),
    })
}

/// A pool lists the addresses it carves: a dual-stack pool its IPv4 ones
/// (each brings its IPv6 partner), so a pool's `--ip`s are of one family
/// (ipamd's rule; it also checks each is in a pod range).
fn ip_of_family(
    flag: &str,
    value: &str,
    ip: IpAddr,
    family: Option<PoolFamily>,
    first: Option<&IpAddr>,
) -> Result<(), InputError> {
    let fix = match (family, ip) {
        (Some(PoolFamily::Ipv4), IpAddr::V6(_)) => {
            "is IPv6 but --family is ipv4; give IPv4 addresses, or --family ipv6"
        }
        (Some(PoolFamily::Ipv6), IpAddr::V4(_)) => {
            "is IPv4 but --family is ipv6; give IPv6 addresses, or --family ipv4 or dual"
        }
        (Some(PoolFamily::Dual), IpAddr::V6(_)) => {
            "is IPv6, but a dual-stack pool lists its IPv4 addresses (each brings its IPv6 \
             partner); name the IPv4 address it pairs with"
        }
        (None, _) if first.is_some_and(|f| f.is_ipv4() != ip.is_ipv4()) => {
            "mixes IPv4 and IPv6 in one pool; a pool lists one family's addresses (a dual-stack \
             pool its IPv4 ones, each brings its IPv6 partner: --family dual)"
        }
        _ => return Ok(()),
    };
    Err(InputError::new(flag, value, fix))
}

/// `binding add NS/POD IP`.
pub fn binding_add(pod: &str, address: &str) -> Result<AddBindingRequest, InputError> {
    let Some((ns, name)) = pod.split_once('/') else {
        return Err(InputError::new(
            "NS/POD",
            pod,
            "is not NAMESPACE/NAME; write the pod like shop/db-0",
        ));
    };
    fields::namespace("NS/POD", ns)?;
    fields::pod_name("NS/POD", name)?;
    Ok(AddBindingRequest {
        pod: Some(PodRef {
            namespace: ns.to_string(),
            name: name.to_string(),
            uid: String::new(),
        }),
        address: self::address("IP", address)?.to_string(),
    })
}

// Names follow moor_proto::fields, the rules ipamd and the plugin apply too;
// the checks here only spare a round trip.

/// A ToR name (also `--segment-of`, `--tor`): a DNS label.
pub fn tor_name(flag: &str, value: &str) -> Result<String, InputError> {
    fields::tor_name(flag, value)?;
    Ok(value.to_string())
}

/// A pool name (also `--pool`): a DNS label.
pub fn pool_name(flag: &str, value: &str) -> Result<String, InputError> {
    fields::pool_name(flag, value)?;
    Ok(value.to_string())
}

/// A Kubernetes namespace: a DNS label.
pub fn namespace(flag: &str, value: &str) -> Result<String, InputError> {
    fields::namespace(flag, value)?;
    Ok(value.to_string())
}

/// An app is the name of the pods' workload (Deployment, StatefulSet, ...):
/// a Kubernetes object name, which is what ipamd reads off pod names.
pub fn app(flag: &str, value: &str) -> Result<String, InputError> {
    fields::app(flag, value)?;
    Ok(value.to_string())
}

/// An 802.1Q VLAN id; untagged is "no --vlan", not 0.
pub fn vlan(flag: &str, value: &str) -> Result<u32, InputError> {
    let id: u32 = value.parse().map_err(|_| {
        InputError::new(
            flag,
            value,
            "is not a number; give a VLAN id 1-4094, or omit --vlan for untagged",
        )
    })?;
    Ok(fields::vlan(flag, id)?.into())
}

/// A pool size, for `pool create --size` and `pool resize --size`.
pub fn size(flag: &str, value: &str) -> Result<u32, InputError> {
    let n = value.parse::<u32>().map_err(|_| {
        InputError::new(
            flag,
            value,
            format!("is not a number; give a pool size 1-{MAX_POOL_SIZE}"),
        )
    })?;
    Ok(fields::pool_size(flag, n)?)
}

pub fn policy(flag: &str, value: &str) -> Result<ReleasePolicy, InputError> {
    match value {
        "auto" => Ok(ReleasePolicy::Auto),
        "sticky" => Ok(ReleasePolicy::Sticky),
        "release" => Ok(ReleasePolicy::Release),
        _ => Err(InputError::new(
            flag,
            value,
            "use auto (stable pod names keep their IP), sticky (every pod keeps its IP) \
             or release (every pod gives its IP back)",
        )),
    }
}

/// An address argument, as in `ip show IP`: IPv4 or IPv6 (either address
/// of a dual-stack pod; ipamd finds the pod by either).
pub fn address(flag: &str, value: &str) -> Result<IpAddr, InputError> {
    value.parse().map_err(|_| {
        InputError::new(
            flag,
            value,
            "is not an IP address; give a pod address such as 10.1.0.17 or fd00:1::17 (no /prefix)",
        )
    })
}

/// `ip evict IP [--force]`.
pub fn evict(address: &str, force: bool) -> Result<EvictIpRequest, InputError> {
    Ok(EvictIpRequest {
        address: self::address("IP", address)?.to_string(),
        force,
    })
}

/// The line format of `pool export --watch`: `--format` if given, else json
/// with `-o json`, else plain. A feed of changes has no CSV form.
pub fn watch_format(
    format: Option<ExportFormat>,
    output: Format,
) -> Result<WatchFormat, InputError> {
    match (format, output) {
        (Some(ExportFormat::Plain), _) | (None, Format::Table) => Ok(WatchFormat::Plain),
        (Some(ExportFormat::Json), _) | (None, Format::Json) => Ok(WatchFormat::Json),
        (Some(ExportFormat::Csv), _) => Err(InputError::new(
            "--format",
            "csv",
            "cannot be used with --watch: the feed is lines of changes; use --format plain \
             (= N, + IP, - IP, ! deleted) or --format json, or drop --watch for a CSV export",
        )),
    }
}

/// The error of a bad input, for the tables of the tests.
#[cfg(test)]
fn err<T: fmt::Debug>(r: Result<T, InputError>) -> Option<InputError> {
    r.err()
}

/// Each case (what, error, the flag it names, words of the fix) was
/// refused with an error that names its flag, quotes its value and says
/// the fix.
#[cfg(test)]
fn assert_refusals(cases: Vec<(&str, Option<InputError>, &str, &str)>) {
    for (what, error, flag, fix) in cases {
        let e = error.unwrap_or_else(|| panic!("{what}: accepted"));
        let text = e.to_string();
        assert_eq!(e.flag, flag, "{what}: {text}");
        assert!(text.contains(flag), "{what}: {text} does not name {flag}");
        assert!(
            text.contains(&format!("{:?}", e.value)),
            "{what}: {text} does not quote the value"
        );
        assert!(text.contains(fix), "{what}: {text} lacks {fix:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(
        name: &str,
        namespace: &str,
        app: &str,
        size: Option<&str>,
        tors: &[&str],
        policy: Option<&str>,
    ) -> Result<CreatePoolRequest, InputError> {
        let tors: Vec<String> = tors.iter().map(|s| s.to_string()).collect();
        pool_create(&PoolCreate {
            name,
            namespace,
            app,
            size,
            tors: &tors,
            policy,
            allow_namespaces: &[],
            ips: &[],
            family: None,
        })
    }

    /// `pool create db ... --ip IP ... [--family F]`.
    fn byo(ips: &[&str], family: Option<PoolFamily>) -> Result<CreatePoolRequest, InputError> {
        let ips: Vec<String> = ips.iter().map(|s| s.to_string()).collect();
        pool_create(&PoolCreate {
            name: "db",
            namespace: "shop",
            app: "db",
            ips: &ips,
            family,
            ..Default::default()
        })
    }

    #[test]
    fn bad_input_names_the_flag_the_value_and_the_fix() {
        // (what, error, flag it must name, words of the fix)
        let cases: Vec<(&str, Option<InputError>, &str, &str)> = vec![
            (
                "pool name with a dot",
                err(pool("my.pool", "default", "web", None, &[], None)),
                "NAME",
                "e.g. my-pool",
            ),
            (
                "namespace with capitals",
                err(pool("p", "Prod", "web", None, &[], None)),
                "--namespace",
                "e.g. prod",
            ),
            (
                "empty app",
                err(pool("p", "default", "", None, &[], None)),
                "--app",
                "must not be empty",
            ),
            // An app is a workload (object) name: lowercase, no '_' or '/'.
            (
                "app with a slash",
                err(pool("p", "default", "a/b", None, &[], None)),
                "--app",
                "e.g. a-b",
            ),
            (
                "app with capitals and '_'",
                err(pool("x", "default", "My_App", None, &[], None)),
                "--app",
                "e.g. my-app",
            ),
            (
                "app too long for an object name",
                err(pool("x", "default", &"a".repeat(254), None, &[], None)),
                "--app",
                "at most 253",
            ),
            (
                "namespace with a dot",
                err(pool("p", "a.b", "web", None, &[], None)),
                "--namespace",
                "e.g. a-b",
            ),
            (
                "size 0",
                err(pool("p", "default", "web", Some("0"), &[], None)),
                "--size",
                "1-65535",
            ),
            (
                "size 65536",
                err(pool("p", "default", "web", Some("65536"), &[], None)),
                "--size",
                "1-65535",
            ),
            (
                "size negative",
                err(pool("p", "default", "web", Some("-3"), &[], None)),
                "--size",
                "not a number",
            ),
            (
                "bad tor name in pool",
                err(pool("p", "default", "web", None, &["Rack 1"], None)),
                "--tor",
                "lowercase",
            ),
            (
                "tor given twice",
                err(pool("p", "default", "web", None, &["r1", "r1"], None)),
                "--tor",
                "given twice",
            ),
            (
                "unknown policy",
                err(pool("p", "default", "web", None, &[], Some("keep"))),
                "--policy",
                "auto",
            ),
            (
                "address with prefix",
                err(address("IP", "10.1.0.17/24")),
                "IP",
                "no /prefix",
            ),
            (
                "IPv6 address with prefix",
                err(address("IP", "fd00:1::17/64")),
                "IP",
                "such as 10.1.0.17 or fd00:1::17 (no /prefix)",
            ),
            (
                "--ip IPv6 in an ipv4 pool",
                err(byo(&["fd00:1::5"], Some(PoolFamily::Ipv4))),
                "--ip",
                "or --family ipv6",
            ),
            (
                "--ip IPv4 in an ipv6 pool",
                err(byo(&["10.1.0.5"], Some(PoolFamily::Ipv6))),
                "--ip",
                "give IPv6 addresses",
            ),
            (
                "--ip IPv6 partner in a dual pool",
                err(byo(&["10.1.0.5", "fd00:1::5"], Some(PoolFamily::Dual))),
                "--ip",
                "name the IPv4 address it pairs with",
            ),
            (
                "--ip of both families, no --family",
                err(byo(&["fd00:1::5", "10.1.0.5"], None)),
                "--ip",
                "--family dual",
            ),
            (
                "--ip IPv6 twice, spelled two ways",
                err(byo(&["fd00:1::5", "FD00:1:0::5"], None)),
                "--ip",
                "given twice",
            ),
        ];
        assert!(cases.len() >= 15);
        assert_refusals(cases);
    }

    #[test]
    fn good_pool_becomes_the_request() {
        let req = pool(
            "mysql-prod",
            "db",
            "mysql-8.0",
            Some("65535"),
            &["r1", "r2"],
            Some("sticky"),
        )
        .unwrap();
        assert_eq!(req.size, 65535);
        assert_eq!(req.tors, vec!["r1", "r2"]);
        assert_eq!(req.policy, ReleasePolicy::Sticky as i32);

        let defaults = pool("web", "default", "web", None, &[], None).unwrap();
        assert_eq!(defaults.family, "", "every family its ToRs have");
        assert_eq!(defaults.size, 0, "0 asks ipamd for its default");
        assert_eq!(defaults.policy, ReleasePolicy::Auto as i32);
        assert!(defaults.tors.is_empty());

        // (--ip, --family, the request's ips and family)
        for (ips, family, want_ips, want_family) in [
            (
                &["fd00:1::6", "FD00:1::5"][..],
                Some(PoolFamily::Ipv6),
                &["fd00:1::6", "fd00:1::5"][..],
                "ipv6",
            ),
            (&["fd00:1::6"][..], None, &["fd00:1::6"][..], ""),
            (
                &["10.1.0.6", "10.1.0.5"][..],
                Some(PoolFamily::Dual),
                &["10.1.0.6", "10.1.0.5"][..],
                "dual",
            ),
            (&[][..], Some(PoolFamily::Ipv4), &[][..], "ipv4"),
        ] {
            let req = byo(ips, family).unwrap();
            assert_eq!(req.ips, want_ips, "{ips:?}");
            assert_eq!(req.family, want_family, "{ips:?}");
        }
    }

    #[test]
    fn evict_and_watch_input() {
        // (what, error, flag it must name, words of the fix)
        let cases: Vec<(&str, Option<InputError>, &str, &str)> = vec![
            (
                "evict an address with a prefix",
                err(evict("10.1.0.17/24", false)),
                "IP",
                "no /prefix",
            ),
            (
                "evict a name",
                err(evict("web-0", true)),
                "IP",
                "not an IP address",
            ),
            (
                "evict an IPv6 address with a prefix",
                err(evict("fd00:1::17/64", false)),
                "IP",
                "such as 10.1.0.17 or fd00:1::17 (no /prefix)",
            ),
            (
                "evict nothing",
                err(evict("", false)),
                "IP",
                "not an IP address",
            ),
            (
                "watch as csv",
                err(watch_format(Some(ExportFormat::Csv), Format::Table)),
                "--format",
                "cannot be used with --watch",
            ),
            (
                "watch as csv with -o json",
                err(watch_format(Some(ExportFormat::Csv), Format::Json)),
                "--format",
                "--format plain",
            ),
        ];
        assert_refusals(cases);

        let req = evict("10.1.0.17", true).unwrap();
        assert_eq!((req.address.as_str(), req.force), ("10.1.0.17", true));
        // Either address of a dual-stack pod; sent in its canonical form.
        let req = evict("FD00:1:0::17", false).unwrap();
        assert_eq!(req.address, "fd00:1::17");
        // --format wins over -o; -o json alone means JSON lines.
        for (format, output, want) in [
            (None, Format::Table, WatchFormat::Plain),
            (None, Format::Json, WatchFormat::Json),
            (Some(ExportFormat::Plain), Format::Json, WatchFormat::Plain),
            (Some(ExportFormat::Json), Format::Table, WatchFormat::Json),
        ] {
            assert_eq!(
                watch_format(format, output),
                Ok(want),
                "{format:?} {output:?}"
            );
        }
    }

    #[test]
    fn names_at_the_limits() {
        assert!(tor_name("NAME", &"a".repeat(63)).is_ok());
        assert!(pool_name("NAME", "0").is_ok());
        assert!(tor_name("NAME", "a-b-c").is_ok());
        assert!(tor_name("NAME", "-a").is_err());
        assert!(pool_name("NAME", "a b").is_err());
        assert!(app("--app", &"a".repeat(253)).is_ok());
        assert!(app("--app", "mysql.v8").is_ok());
        // No suggestion when lowercasing would not help.
        let e = tor_name("NAME", "ü").unwrap_err();
        assert!(!e.message.contains("e.g."), "{e}");
    }
}
