//! The gRPC contract of moor, package `moor.v1`: the `Cni` service the plugin
//! calls and the `Admin` service `ipamctl` calls, both served by `ipamd` on
//! one unix socket; the `Controller` service (`controller.proto`) that the
//! controller role serves on its socket.

#[allow(clippy::all)]
pub mod v1 {
    tonic::include_proto!("moor.v1");
}

pub mod fields;
pub mod pending;

/// Default path of ipamd's socket.
pub const DEFAULT_SOCKET: &str = "/run/moor/ipamd.sock";

/// gRPC metadata key carrying the CNI error code ipamd wants the plugin to
/// report, so the plugin need not guess it from the gRPC status code.
pub const CNI_CODE_KEY: &str = "moor-cni-code";

/// CNI error codes: the spec's well-known ones and moor's own (100+), in one
/// place so the plugin and ipamd never disagree. docs/operations.md lists them.
pub mod cni_code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODING_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// Every IP of the pod's pool on this node's ToR is bound or in use.
    pub const POOL_FULL: u32 = 100;
    /// The pod's IP (or its pool) is on another ToR than this node's.
    pub const WRONG_TOR: u32 = 101;
    /// No pool for the pod (none for its app, or the named one is missing).
    pub const NO_POOL: u32 = 102;
    /// This node's ToR is not defined yet.
    pub const TOR_UNDEFINED: u32 = 103;
    /// Wiring the pod's interface failed (the IP was given back).
    pub const DATAPATH: u32 = 104;
    /// The pod keeps an IP of another pool than the one it asks for.
    pub const OTHER_POOL: u32 = 105;
    /// CHECK of an attachment this node does not have.
    pub const NOT_ATTACHED: u32 = 106;
    /// The duplicate-address probe found another owner of the pod's IP; the
    /// IP is quarantined until `ipamctl ip release`.
    pub const ADDRESS_CONFLICT: u32 = 107;
    /// The pod names (by annotation) a pool of another namespace that does
    /// not allow it (`ipamctl pool create ... --allow-namespace NS`).
    pub const POOL_NOT_ALLOWED: u32 = 108;
    /// ipamd refused the request without saying which way (older ipamd).
    pub const REFUSED: u32 = 110;
    /// ipamd does not know the RPC: plugin and daemon versions differ.
    pub const VERSION_SKEW: u32 = 111;
    /// ipamd failed internally, or answered something the plugin cannot use.
    pub const IPAMD_FAILED: u32 = 112;
}

/// Name of the host end of a pod's veth, derived from the CNI attachment key.
///
/// Both ipamd (which creates the link) and the plugin (which deletes it when
/// ipamd is down) compute it, so it must never change between versions:
/// FNV-1a 64 over `container_id`, a NUL, `ifname`; "mr" + 12 hex digits
/// (14 bytes, under the kernel's 15-byte IFNAMSIZ limit).
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id
        .bytes()
        .chain(std::iter::once(0))
        .chain(ifname.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{HOST_IFNAME_PREFIX}{:012x}", h >> 16)
}

/// What every [`host_ifname`] starts with.
pub const HOST_IFNAME_PREFIX: &str = "mr";

/// The device group retired host ends are parked in: "moor" in ASCII
/// (0x6d6f6f72). Group 0 is every device's default, and admins who use
/// groups (`/etc/iproute2/group`) number them from 1 up; a group delete
/// refuses (EOPNOTSUPP) if any member cannot be deleted, so the group must be
/// ours alone. A number no one picks by hand keeps it so.
///
/// A host end in this group is retired (ipamd's `datapath::graveyard`): its
/// pod was DEL'd and it is gone for every purpose but its name, which it
/// keeps until it is reaped.
pub const GRAVEYARD_GROUP: u32 = 0x6d6f_6f72;

/// MAC address of a pod interface, derived from its IPv4 address so that a pod
/// re-created with the same IP (on any node) also has the same MAC, and peers'
/// ARP caches stay right. 0a:58 is locally administered, unicast.
pub fn mac_for_ipv4(ip: std::net::Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x0a, 0x58, o[0], o[1], o[2], o[3]]
}

/// MAC address of a pod interface whose first address is `ip`: an IPv4
/// address as [`mac_for_ipv4`]; an IPv6 one (an IPv6-only pod) 0a:59
/// followed by the two halves of its interface identifier XORed, which
/// differ for every two addresses of a pod range shorter than 2^32 (any
/// range an operator writes), and never equal a MAC derived from IPv4.
pub fn mac_for_ip(ip: std::net::IpAddr) -> [u8; 6] {
    match ip {
        std::net::IpAddr::V4(v4) => mac_for_ipv4(v4),
        std::net::IpAddr::V6(v6) => {
            let iid = u128::from(v6) as u64;
            let folded = ((iid >> 32) as u32 ^ iid as u32).to_be_bytes();
            [0x0a, 0x59, folded[0], folded[1], folded[2], folded[3]]
        }
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `Instant` reads, shared by
/// every process on the machine, so the plugin's timing stamps, ipamd's
/// timing line and a benchmark's own stamps of one ADD line up.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to; CLOCK_MONOTONIC always
    // exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// `2024-05-01T12:00:00Z`: a Unix time as RFC 3339 in UTC, whole seconds
/// (what ipamctl prints and what the Kubernetes API writes), without a date
/// crate for one field. Howard Hinnant's civil_from_days.
pub fn rfc3339_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_utc_counts_days_right() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_714_564_800), "2024-05-01T12:00:00Z");
        assert_eq!(rfc3339_utc(1_735_689_599), "2024-12-31T23:59:59Z");
        assert_eq!(rfc3339_utc(1_765_000_000), "2025-12-06T05:46:40Z");
    }

    #[test]
    fn host_ifname_is_stable_and_short() {
        let a = host_ifname("abc", "eth0");
        assert_eq!(a, host_ifname("abc", "eth0"));
        assert_ne!(a, host_ifname("abc", "eth1"));
        assert_ne!(a, host_ifname("abcd", "eth0"));
        // The boundary between the two parts matters.
        assert_ne!(host_ifname("ab", "ceth0"), host_ifname("abc", "eth0"));
        assert_eq!(a.len(), 14);
        assert!(a.starts_with("mr"));
        // Pinned: a change here strands host veths of running pods on upgrade.
        assert_eq!(host_ifname("c1", "eth0"), "mrf53f02b3bfe9");
    }

    #[test]
    fn mac_is_derived_from_ip() {
        let mac = mac_for_ipv4("10.1.2.3".parse().unwrap());
        assert_eq!(format_mac(&mac), "0a:58:0a:01:02:03");
        assert_eq!(mac[0] & 1, 0, "unicast");
        assert_eq!(mac[0] & 2, 2, "locally administered");
    }

    #[test]
    fn ipv6_mac_folds_the_interface_identifier() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(
            mac_for_ip(ip("10.1.2.3")),
            mac_for_ipv4("10.1.2.3".parse().unwrap())
        );
        let mac = mac_for_ip(ip("fd00:1::1:0:a"));
        // IID 0000:0001:0000:000a: 0x00000001 ^ 0x0000000a.
        assert_eq!(format_mac(&mac), "0a:59:00:00:00:0b");
        // Neighbours in a range differ; the prefix does not matter.
        assert_ne!(mac_for_ip(ip("fd00:1::10")), mac_for_ip(ip("fd00:1::11")));
        assert_eq!(mac_for_ip(ip("fd00:1::10")), mac_for_ip(ip("fd00:2::10")));
        // Never a MAC of an IPv4 pod, even with the same low bits.
        assert_ne!(mac_for_ip(ip("::a01:203")), mac_for_ip(ip("10.1.2.3")));
    }
}
