//! Client-side checks of what the operator typed, before any RPC.
//!
//! ipamd checks everything again; these exist so that a typo gets an answer
//! that names the flag, the bad value and the fix, without a round trip and
//! even when ipamd is down. Pure functions: no I/O.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::Ipv4Network;
use moor_proto::fields::{self, FieldError, MAX_POOL_SIZE};
use moor_proto::v1::{
    AddBindingRequest, AddTorRequest, CreatePoolRequest, EvictIpRequest, IpRange, PodRef,
    ReleasePolicy,
};

use crate::output::{ExportFormat, Format, WatchFormat};

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

/// The arguments of `tor add`, as typed.
#[derive(Debug, Default, Clone)]
pub struct TorAdd<'a> {
    pub name: &'a str,
    pub subnet: &'a str,
    pub gateway: &'a str,
    pub vlan: Option<&'a str>,
    pub ranges: &'a [String],
    pub segment_of: Option<&'a str>,
}

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
}

pub fn tor_add(args: &TorAdd<'_>) -> Result<AddTorRequest, InputError> {
    let name = tor_name("NAME", args.name)?;
    let subnet = subnet("--subnet", args.subnet)?;
    let gateway = gateway("--gateway", args.gateway, subnet)?;
    let vlan = match args.vlan {
        Some(v) => vlan("--vlan", v)?,
        None => 0,
    };
    let mut ranges: Vec<(Ipv4Addr, Ipv4Addr, &str)> = Vec::new();
    for text in args.ranges {
        let (first, last) = range("--range", text, subnet)?;
        if let Some((_, _, other)) = ranges.iter().find(|(f, l, _)| first <= *l && *f <= last) {
            return Err(InputError::new(
                "--range",
                text,
                format!("overlaps --range {other}; merge them into one range"),
            ));
        }
        ranges.push((first, last, text));
    }
    let segment_of = match args.segment_of {
        Some(of) => tor_name("--segment-of", of)?,
        None => String::new(),
    };
    if segment_of == name {
        return Err(InputError::new(
            "--segment-of",
            &segment_of,
            "names the segment itself: give the ToR it is on, or leave --segment-of out"
                .to_string(),
        ));
    }
    Ok(AddTorRequest {
        segment_of,
        name,
        subnet: subnet.to_string(),
        gateway: gateway.to_string(),
        vlan,
        ranges: ranges
            .into_iter()
            .map(|(first, last, _)| IpRange {
                first: first.to_string(),
                last: last.to_string(),
            })
            .collect(),
        ..Default::default()
    })
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
    let mut ips: Vec<Ipv4Addr> = Vec::new();
    for ip in args.ips {
        let a = address("--ip", ip)?;
        if ips.contains(&a) {
            return Err(InputError::new(
                "--ip",
                ip,
                "is given twice; name each IP once",
            ));
        }
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
        ..Default::default()
    })
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

/// An IPv4 subnet in CIDR form with the host bits zero.
pub fn subnet(flag: &str, value: &str) -> Result<Ipv4Network, InputError> {
    let Some((addr, prefix)) = value.split_once('/') else {
        return Err(InputError::new(
            flag,
            value,
            "needs a prefix length; write address/prefix, e.g. 10.1.0.0/24",
        ));
    };
    match addr.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => {}
        Ok(IpAddr::V6(_)) => {
            return Err(InputError::new(
                flag,
                value,
                "is IPv6; ToRs are IPv4, use a subnet such as 10.1.0.0/24",
            ))
        }
        Err(_) => {
            return Err(InputError::new(
                flag,
                value,
                format!("{addr:?} is not an IPv4 address; write address/prefix, e.g. 10.1.0.0/24"),
            ))
        }
    }
    let net: Ipv4Network = value.parse().map_err(|_| {
        InputError::new(
            flag,
            value,
            format!("prefix length {prefix:?} is not 0-32; write address/prefix, e.g. 10.1.0.0/24"),
        )
    })?;
    if net.ip() != net.network() {
        let fixed = Ipv4Network::new(net.network(), net.prefix()).expect("same prefix");
        return Err(InputError::new(
            flag,
            value,
            format!("host bits are set: use {fixed}, not {value}"),
        ));
    }
    if net.prefix() > 30 {
        return Err(InputError::new(
            flag,
            value,
            "leaves no room for a gateway and pods; use a /30 or wider, e.g. 10.1.0.0/24",
        ));
    }
    Ok(net)
}

/// The ToR's router: a host address of `subnet`.
pub fn gateway(flag: &str, value: &str, subnet: Ipv4Network) -> Result<Ipv4Addr, InputError> {
    let first = first_host(subnet);
    let ip = ipv4(value).ok_or_else(|| {
        InputError::new(
            flag,
            value,
            format!("is not an IPv4 address; give the router's address in {subnet}, e.g. {first}"),
        )
    })?;
    if !subnet.contains(ip) {
        return Err(InputError::new(
            flag,
            value,
            format!("is outside --subnet {subnet}; give the router's address in it, e.g. {first}"),
        ));
    }
    if ip == subnet.network() {
        return Err(InputError::new(
            flag,
            value,
            format!("is the network address of {subnet}; use a host address such as {first}"),
        ));
    }
    if ip == subnet.broadcast() {
        return Err(InputError::new(
            flag,
            value,
            format!(
                "is the broadcast address of {subnet}; use a host address such as {}",
                last_host(subnet)
            ),
        ));
    }
    Ok(ip)
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

/// `FIRST-LAST`, both in `subnet`, FIRST <= LAST.
pub fn range(
    flag: &str,
    value: &str,
    subnet: Ipv4Network,
) -> Result<(Ipv4Addr, Ipv4Addr), InputError> {
    let example = format!("{}-{}", first_host(subnet), last_host(subnet));
    let Some((a, b)) = value.split_once('-') else {
        return Err(InputError::new(
            flag,
            value,
            format!("write a range as FIRST-LAST, e.g. {example}"),
        ));
    };
    let parse = |s: &str| {
        ipv4(s.trim()).ok_or_else(|| {
            InputError::new(
                flag,
                value,
                format!(
                    "{:?} is not an IPv4 address; write FIRST-LAST, e.g. {example}",
                    s.trim()
                ),
            )
        })
    };
    let (first, last) = (parse(a)?, parse(b)?);
    if first > last {
        return Err(InputError::new(
            flag,
            value,
            format!("starts after it ends; write it low-high: {last}-{first}"),
        ));
    }
    for ip in [first, last] {
        if !subnet.contains(ip) {
            return Err(InputError::new(
                flag,
                value,
                format!("{ip} is outside --subnet {subnet}; keep ranges inside it, e.g. {example}"),
            ));
        }
    }
    Ok((first, last))
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

/// An address argument, as in `ip show IP`.
pub fn address(flag: &str, value: &str) -> Result<Ipv4Addr, InputError> {
    ipv4(value).ok_or_else(|| {
        InputError::new(
            flag,
            value,
            "is not an IPv4 address; give a pod address such as 10.1.0.17 (no /prefix)",
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

fn ipv4(s: &str) -> Option<Ipv4Addr> {
    s.parse().ok()
}

fn first_host(net: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()).saturating_add(1))
}

fn last_host(net: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.broadcast()).saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tor(
        name: &str,
        subnet: &str,
        gateway: &str,
        vlan: Option<&str>,
        ranges: &[&str],
    ) -> Result<AddTorRequest, InputError> {
        let ranges: Vec<String> = ranges.iter().map(|s| s.to_string()).collect();
        tor_add(&TorAdd {
            name,
            subnet,
            gateway,
            vlan,
            ranges: &ranges,
            segment_of: None,
        })
    }

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
        })
    }

    fn err<T: fmt::Debug>(r: Result<T, InputError>) -> Option<InputError> {
        r.err()
    }

    #[test]
    fn bad_input_names_the_flag_the_value_and_the_fix() {
        const NET: &str = "10.1.0.0/24";
        const GW: &str = "10.1.0.1";
        // (what, error, flag it must name, words of the fix)
        let cases: Vec<(&str, Option<InputError>, &str, &str)> = vec![
            (
                "tor name with capitals",
                err(tor("Rack1", NET, GW, None, &[])),
                "NAME",
                "e.g. rack1",
            ),
            (
                "tor name with underscore",
                err(tor("rack_1", NET, GW, None, &[])),
                "NAME",
                "e.g. rack-1",
            ),
            (
                "tor name ending in '-'",
                err(tor("rack-", NET, GW, None, &[])),
                "NAME",
                "starting and ending",
            ),
            (
                "empty tor name",
                err(tor("", NET, GW, None, &[])),
                "NAME",
                "must not be empty",
            ),
            (
                "64-char tor name",
                err(tor(&"a".repeat(64), NET, GW, None, &[])),
                "NAME",
                "at most 63",
            ),
            (
                "subnet with host bits",
                err(tor("r1", "10.1.0.5/24", GW, None, &[])),
                "--subnet",
                "use 10.1.0.0/24, not 10.1.0.5/24",
            ),
            (
                "subnet without prefix",
                err(tor("r1", "10.1.0.0", GW, None, &[])),
                "--subnet",
                "e.g. 10.1.0.0/24",
            ),
            (
                "subnet garbage",
                err(tor("r1", "10.1.0/24", GW, None, &[])),
                "--subnet",
                "not an IPv4 address",
            ),
            (
                "subnet prefix 33",
                err(tor("r1", "10.1.0.0/33", GW, None, &[])),
                "--subnet",
                "not 0-32",
            ),
            (
                "IPv6 subnet",
                err(tor("r1", "fd00::/64", GW, None, &[])),
                "--subnet",
                "is IPv6",
            ),
            (
                "/31 subnet",
                err(tor("r1", "10.1.0.0/31", "10.1.0.1", None, &[])),
                "--subnet",
                "/30 or wider",
            ),
            (
                "gateway outside subnet",
                err(tor("r1", NET, "10.2.0.1", None, &[])),
                "--gateway",
                "outside --subnet 10.1.0.0/24",
            ),
            (
                "gateway is network address",
                err(tor("r1", NET, "10.1.0.0", None, &[])),
                "--gateway",
                "network address of 10.1.0.0/24; use a host address such as 10.1.0.1",
            ),
            (
                "gateway is broadcast address",
                err(tor("r1", NET, "10.1.0.255", None, &[])),
                "--gateway",
                "such as 10.1.0.254",
            ),
            (
                "gateway not an IP",
                err(tor("r1", NET, "router", None, &[])),
                "--gateway",
                "not an IPv4 address",
            ),
            (
                "VLAN 0",
                err(tor("r1", NET, GW, Some("0"), &[])),
                "--vlan",
                "omit --vlan for untagged",
            ),
            (
                "VLAN 4095",
                err(tor("r1", NET, GW, Some("4095"), &[])),
                "--vlan",
                "1-4094",
            ),
            (
                "VLAN not a number",
                err(tor("r1", NET, GW, Some("ten"), &[])),
                "--vlan",
                "not a number",
            ),
            (
                "range without dash",
                err(tor("r1", NET, GW, None, &["10.1.0.10"])),
                "--range",
                "FIRST-LAST, e.g. 10.1.0.1-10.1.0.254",
            ),
            (
                "range reversed",
                err(tor("r1", NET, GW, None, &["10.1.0.20-10.1.0.10"])),
                "--range",
                "low-high: 10.1.0.10-10.1.0.20",
            ),
            (
                "range leaving the subnet",
                err(tor("r1", NET, GW, None, &["10.1.0.200-10.1.1.10"])),
                "--range",
                "10.1.1.10 is outside --subnet 10.1.0.0/24",
            ),
            (
                "range end not an IP",
                err(tor("r1", NET, GW, None, &["10.1.0.10-x"])),
                "--range",
                "\"x\" is not an IPv4 address",
            ),
            (
                "overlapping ranges",
                err(tor(
                    "r1",
                    NET,
                    GW,
                    None,
                    &["10.1.0.10-10.1.0.20", "10.1.0.20-10.1.0.30"],
                )),
                "--range",
                "overlaps --range 10.1.0.10-10.1.0.20",
            ),
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
        ];
        assert!(cases.len() >= 15);
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

    #[test]
    fn good_tor_becomes_the_request() {
        let req = tor(
            "rack-1",
            "10.1.0.0/24",
            "10.1.0.1",
            Some("100"),
            &["10.1.0.10-10.1.0.99", "10.1.0.200 - 10.1.0.200"],
        )
        .unwrap();
        assert_eq!(req.name, "rack-1");
        assert_eq!(req.subnet, "10.1.0.0/24");
        assert_eq!(req.gateway, "10.1.0.1");
        assert_eq!(req.vlan, 100);
        assert_eq!(req.ranges.len(), 2);
        assert_eq!(req.ranges[1].first, "10.1.0.200");
        assert_eq!(req.ranges[1].last, "10.1.0.200");

        let untagged = tor("r2", "192.168.0.0/30", "192.168.0.2", None, &[]).unwrap();
        assert_eq!(untagged.vlan, 0);
        assert!(untagged.ranges.is_empty());
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
        assert_eq!(defaults.size, 0, "0 asks ipamd for its default");
        assert_eq!(defaults.policy, ReleasePolicy::Auto as i32);
        assert!(defaults.tors.is_empty());
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
                "not an IPv4 address",
            ),
            (
                "evict an IPv6 address",
                err(evict("fd00::17", false)),
                "IP",
                "such as 10.1.0.17",
            ),
            (
                "evict nothing",
                err(evict("", false)),
                "IP",
                "not an IPv4 address",
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
        for (what, error, flag, fix) in cases {
            let e = error.unwrap_or_else(|| panic!("{what}: accepted"));
            let text = e.to_string();
            assert_eq!(e.flag, flag, "{what}: {text}");
            assert!(
                text.contains(&format!("{:?}", e.value)),
                "{what}: {text} does not quote the value"
            );
            assert!(text.contains(fix), "{what}: {text} lacks {fix:?}");
        }

        let req = evict("10.1.0.17", true).unwrap();
        assert_eq!((req.address.as_str(), req.force), ("10.1.0.17", true));
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
