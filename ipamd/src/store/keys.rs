//! The key layout, one prefix per kind of record. Documented for operators in
//! docs/architecture.md; a change here is a data migration.

use std::net::IpAddr;

use crate::core::{AttachmentKey, PodRef};

pub const TORS: &str = "tors/";
pub const POOLS: &str = "pools/";
pub const BINDINGS: &str = "bindings/";
pub const ATTACHMENTS: &str = "attachments/";
pub const NODES: &str = "nodes/";
pub const APPS: &str = "apps/";
pub const LEASES: &str = "leases/";
/// Every pool's free counts: `free/<pool>/<segment>`.
pub const FREE: &str = "free/";

pub fn node(name: &str) -> String {
    format!("nodes/{name}")
}

pub fn tor(name: &str) -> String {
    format!("tors/{name}")
}

/// Every ToR segment's carved records.
pub const CARVED: &str = "carved/";

/// The name under a segment's prefix of its cooling record. Pool names are
/// DNS labels, which never hold `_`, so no pool's record can be it.
pub const COOLING: &str = "_cooling";

/// Everything carved from ToR segment `tor` (schema 2): one list of this
/// prefix tells which IPs pools hold and which cool down.
pub fn carved_prefix(tor: &str) -> String {
    format!("carved/{tor}/")
}

/// Pool `pool`'s IPs on ToR segment `tor` (schema 2).
pub fn carved(tor: &str, pool: &str) -> String {
    format!("carved/{tor}/{pool}")
}

/// IPs of ToR segment `tor` that pools gave back, cooling down (schema 2).
pub fn cooling(tor: &str) -> String {
    format!("carved/{tor}/{COOLING}")
}

/// Schema 1's single record per ToR segment: every carved IP -> pool, and
/// the cooling IPs. Only the migration to schema 2 reads it.
pub fn carved_v1(tor: &str) -> String {
    format!("carved/{tor}")
}

/// What a key under `carved/` names: (segment, None) for a schema 1
/// record, (segment, Some(pool or COOLING)) for a schema 2 one.
pub fn parse_carved(key: &str) -> Option<(&str, Option<&str>)> {
    let rest = key.strip_prefix(CARVED)?;
    match rest.split_once('/') {
        None if !rest.is_empty() => Some((rest, None)),
        Some((tor, name)) if !tor.is_empty() && !name.is_empty() && !name.contains('/') => {
            Some((tor, Some(name)))
        }
        _ => None,
    }
}

pub fn pool(name: &str) -> String {
    format!("pools/{name}")
}

/// (namespace, app) -> pool name: one pool per app.
pub fn app(namespace: &str, app: &str) -> String {
    format!("apps/{namespace}/{app}")
}

pub fn leases(pool: &str) -> String {
    format!("leases/{pool}/")
}

pub fn lease(pool: &str, ip: IpAddr) -> String {
    format!("leases/{pool}/{ip}")
}

/// The pool a `leases/<pool>/<ip>` key names.
pub fn lease_pool(key: &str) -> Option<&str> {
    key.strip_prefix(LEASES)?.split_once('/').map(|(p, _)| p)
}

pub fn binding(pod: &PodRef) -> String {
    format!("bindings/{}/{}", pod.namespace, pod.name)
}

pub fn node_attachments(node: &str) -> String {
    format!("attachments/{node}/")
}

pub fn attachment(key: &AttachmentKey) -> String {
    format!(
        "attachments/{}/{}/{}",
        key.node, key.container_id, key.ifname
    )
}
