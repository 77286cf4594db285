//! The key layout, one prefix per kind of record. Documented for operators in
//! docs/architecture.md; a change here is a data migration.

use std::net::Ipv4Addr;

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

/// Which IPs of a ToR belong to which pool.
pub fn carved(tor: &str) -> String {
    format!("carved/{tor}")
}

pub fn pool(name: &str) -> String {
    format!("pools/{name}")
}

/// (namespace, app) -> pool name: one pool per app.
pub fn app(namespace: &str, app: &str) -> String {
    format!("apps/{namespace}/{app}")
}

/// Free IPs of a pool on a ToR (published for schedulers and label syncs).
pub fn free(pool: &str, tor: &str) -> String {
    format!("free/{pool}/{tor}")
}

pub fn frees(pool: &str) -> String {
    format!("free/{pool}/")
}

pub fn leases(pool: &str) -> String {
    format!("leases/{pool}/")
}

pub fn lease(pool: &str, ip: Ipv4Addr) -> String {
    format!("leases/{pool}/{ip}")
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
