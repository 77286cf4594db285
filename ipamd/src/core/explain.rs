//! The words a person reads when an ADD is refused: what happened, which
//! pod, IP, pool and ToR, and the command that fixes it. Pure: the caller
//! passes what it read (the bound ToR, the alive nodes that could take the
//! pod).

use std::net::IpAddr;

use moor_proto::cni_code;

use super::allocate::Refusal;
use super::model::{PodRef, Pool};

/// A refusal as the runtime sees it: a CNI error code and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub code: u32,
    pub msg: String,
}

impl Refused {
    fn new(code: u32, msg: String) -> Self {
        Self { code, msg }
    }
}

/// What a pod (or its runtime) is told about a quarantined IP.
pub fn quarantine_message(ip: IpAddr, mac: &str, pod: Option<&PodRef>) -> String {
    let whose = pod.map_or(String::new(), |p| format!(" of pod {p}"));
    format!(
        "IP {ip}{whose} is quarantined: MAC {mac} answered for it on the network (moor's duplicate-address probe), so no pod gets it; find that host (`ip neigh | grep -i {mac}` on the gateway, or the switch's MAC table), then `ipamctl ip release {ip}`"
    )
}

/// Turns a core refusal into the error a runtime shows to a person.
/// `bound_tor`: the ToR of a WrongTor refusal's segment.
pub fn explain(
    r: Refusal,
    pool: &Pool,
    pod: &PodRef,
    bound_tor: Option<&str>,
    nodes: &[String],
) -> Refused {
    match r {
        Refusal::WrongTor {
            ip,
            bound_segment,
            node_tor,
        } => {
            let bound_tor = bound_tor.unwrap_or(&bound_segment);
            Refused::new(
            cni_code::WRONG_TOR,
            format!(
                "pod {pod} keeps IP {ip} on ToR {bound_tor}{}, but this node is on ToR {node_tor}: schedule it onto a node of ToR {bound_tor} ({}; node label moor.io/tor={bound_tor}), or release the IP with `ipamctl ip release {ip}` to give it a new one",
                if bound_tor == bound_segment { String::new() } else { format!(" (segment {bound_segment})") },
                if nodes.is_empty() {
                    "no node of it is alive now".to_string()
                } else {
                    format!("it can run on {}", nodes.join(", "))
                }
            ),
        )
        }
        Refusal::OtherPool { ip, bound_pool } => Refused::new(
            cni_code::OTHER_POOL,
            format!(
                "pod {pod} keeps IP {ip} of pool {bound_pool} but asks for pool {}: release it with `ipamctl ip release {ip}` first",
                pool.name
            ),
        ),
        Refusal::StillAttached { ip, holder } => Refused::new(
            cni_code::TRY_AGAIN_LATER,
            format!(
                "pod {pod} keeps IP {ip}, but it is still attached to container {holder} (the pod's previous instance has not been torn down yet); retry once it is deleted"
            ),
        ),
        Refusal::Quarantined { ip, mac } => Refused::new(
            cni_code::ADDRESS_CONFLICT,
            quarantine_message(ip, &mac, Some(pod)),
        ),
        Refusal::NotOnTor { pool_tors } => Refused::new(
            cni_code::WRONG_TOR,
            format!(
                "pool {} has no IPs on this node's ToR (it has IPs on: {}): schedule the pod onto a node of those ToRs, or grow the pool onto this ToR",
                pool.name,
                if pool_tors.is_empty() { "none".to_string() } else { pool_tors.join(", ") }
            ),
        ),
        Refusal::Full { tor, counts } => Refused::new(
            cni_code::POOL_FULL,
            format!(
                "pool {} is full on ToR {}: {} IPs, {} in use, {} kept for pods that are not running (ipamctl binding list --pool {}), {} free; grow it with `ipamctl pool resize {} --size N`",
                pool.name,
                tor,
                counts.total,
                counts.in_use,
                counts.bound,
                pool.name,
                counts.free,
                pool.name
            ),
        ),
        Refusal::Changing { what } => Refused::new(
            cni_code::TRY_AGAIN_LATER,
            format!(
                "pool {} is {what} (a change that takes several steps; ipamd finishes it, also after a restart): nothing was allocated, retry; if the pool is being deleted, name another pool",
                pool.name
            ),
        ),
        Refusal::Waiting { tor, until, ips } => Refused::new(
            cni_code::TRY_AGAIN_LATER,
            format!(
                "pool {}'s {ips} free IPs on ToR {tor} are new and become allocatable at {} (its whitelist delay, moor.io/whitelist-delay, lets whitelist syncers push them first); nothing was allocated, retry",
                pool.name,
                moor_proto::rfc3339_utc(until)
            ),
        ),
    }
}
