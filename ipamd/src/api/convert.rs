//! Domain values as wire messages, and wire values as domain ones.

use std::net::{IpAddr, Ipv6Addr};

use moor_proto::v1;
use tonic::Status;

use crate::core::{
    pool_counts, Attachment, AttachmentState, Binding, IpFamily, Lease, PodRef, Policy, Pool, Tor,
};
use crate::ipam::IpView;
use crate::node::{Added, Evicted};

pub fn policy_from(p: i32) -> Result<Policy, Status> {
    match v1::ReleasePolicy::try_from(p) {
        Ok(v1::ReleasePolicy::Auto) => Ok(Policy::Auto),
        Ok(v1::ReleasePolicy::Sticky) => Ok(Policy::Sticky),
        Ok(v1::ReleasePolicy::Release) => Ok(Policy::Release),
        Err(_) => Err(Status::invalid_argument(format!(
            "policy {p} is not a release policy: use auto, sticky or release"
        ))),
    }
}

fn policy_to(p: Policy) -> i32 {
    match p {
        Policy::Auto => v1::ReleasePolicy::Auto as i32,
        Policy::Sticky => v1::ReleasePolicy::Sticky as i32,
        Policy::Release => v1::ReleasePolicy::Release as i32,
    }
}

pub fn pod_from(p: Option<&v1::PodRef>) -> PodRef {
    p.map(|p| PodRef {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        uid: p.uid.clone(),
    })
    .unwrap_or_default()
}

pub fn parse_ip(s: &str) -> Result<IpAddr, Status> {
    s.parse().map_err(|_| {
        Status::invalid_argument(format!(
            "{s:?} is not an IP address: write it like 10.1.0.17 or fd00:1::11"
        ))
    })
}

/// A pool's family as asked on the wire: empty is "every family its ToRs
/// have".
pub fn family_from(s: &str) -> Result<Option<IpFamily>, Status> {
    if s.is_empty() {
        return Ok(None);
    }
    IpFamily::parse(s).map(Some).ok_or_else(|| {
        Status::invalid_argument(format!(
            "family {s:?} is not an address family: use ipv4, ipv6 or dual (or leave it out: every family its ToRs have)"
        ))
    })
}

pub fn tor_msg(t: &Tor, carved: u32) -> v1::Tor {
    let v6 = t.ipv6.as_ref();
    v1::Tor {
        name: t.name.clone(),
        subnet: t.first.subnet.to_string(),
        gateway: t.first.gateway.to_string(),
        vlan: t.vlan.map_or(0, u32::from),
        ranges: t
            .families()
            .flat_map(|f| f.ranges.iter())
            .map(|r| v1::IpRange {
                first: r.first.to_string(),
                last: r.last.to_string(),
            })
            .collect(),
        capacity: t.capacity(t.default_family()),
        carved,
        segment_of: t.segment_of.clone().unwrap_or_default(),
        subnet6: v6.map(|f| f.subnet.to_string()).unwrap_or_default(),
        gateway6: v6.map(|f| f.gateway.to_string()).unwrap_or_default(),
        capacity6: t.capacity(IpFamily::Ipv6),
    }
}

pub fn pod_msg(p: &PodRef) -> v1::PodRef {
    v1::PodRef {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        uid: p.uid.clone(),
    }
}

pub fn pool_msg(p: &Pool, leases: &[Lease]) -> v1::Pool {
    v1::Pool {
        name: p.name.clone(),
        namespace: p.namespace.clone(),
        app: p.app.clone(),
        size: p.size(),
        policy: policy_to(p.policy),
        allow_namespaces: p.allow_namespaces.clone(),
        family: p.family.as_str().into(),
        tors: pool_counts(p, leases)
            .into_iter()
            .map(|(tor, c)| v1::PoolTor {
                tor,
                total: c.total,
                bound: c.bound,
                in_use: c.in_use,
                free: c.free,
            })
            .collect(),
    }
}

pub fn attachment_msg(a: &Attachment, ip: IpAddr) -> v1::Attachment {
    v1::Attachment {
        container_id: a.key.container_id.clone(),
        ifname: a.key.ifname.clone(),
        node: a.key.node.clone(),
        netns: a.netns.clone(),
        pod: Some(pod_msg(&a.pod)),
        host_ifname: moor_proto::host_ifname(&a.key.container_id, &a.key.ifname),
        mac: moor_proto::format_mac(&moor_proto::mac_for_ip(ip)),
        state: match a.state {
            AttachmentState::Pending => "pending".into(),
            AttachmentState::Ready => "ready".into(),
        },
        network: a.network.clone(),
        created_unix: a.created_unix,
    }
}

pub fn binding_msg(b: &Binding, attached: bool, ipv6: Option<Ipv6Addr>) -> v1::Binding {
    v1::Binding {
        pod: Some(pod_msg(&b.pod)),
        pool: b.pool.clone(),
        address: b.ip.to_string(),
        tor: b.tor.clone(),
        attached,
        address6: ipv6.map(|a| a.to_string()).unwrap_or_default(),
    }
}

pub fn ip_msg(v: &IpView) -> v1::Ip {
    let state = v.lease.as_ref().map_or("free", |l| l.state().as_str());
    v1::Ip {
        address: v.ip.to_string(),
        address6: v.ipv6.map(|a| a.to_string()).unwrap_or_default(),
        pool: v.pool.clone(),
        tor: v.tor.clone(),
        state: state.into(),
        binding: v
            .lease
            .as_ref()
            .and_then(|l| l.binding.as_ref())
            .map(pod_msg),
        attachment: v
            .lease
            .as_ref()
            .and_then(|l| l.attachment.as_ref())
            .map(|a| attachment_msg(a, v.ip)),
        quarantine: v
            .lease
            .as_ref()
            .and_then(|l| l.quarantine.as_ref())
            .map(|q| v1::Quarantine {
                mac: q.mac.clone(),
                node: q.node.clone(),
                since_unix: q.since_unix,
            }),
    }
}

/// The CNI result of an ADD: the host end (when this call created it), then
/// the pod's interface; the address with the ToR's prefix and the default
/// route via its gateway.
pub fn add_reply(a: &Added) -> v1::AddReply {
    let (mtu, host_mac) = a.wired.map_or((0, [0; 6]), |w| (w.mtu, w.host_mac));
    let link = &a.link;
    let mut interfaces = vec![];
    if host_mac != [0; 6] {
        interfaces.push(v1::Interface {
            name: link.host_ifname.clone(),
            mac: moor_proto::format_mac(&host_mac),
            mtu,
            sandbox: String::new(),
        });
    }
    interfaces.push(v1::Interface {
        name: link.ifname.clone(),
        mac: moor_proto::format_mac(&link.mac),
        mtu,
        sandbox: link.netns.display().to_string(),
    });
    let gateway = a.tor.first.gateway;
    let default_route = |gw: IpAddr| v1::Route {
        dst: if gw.is_ipv4() { "0.0.0.0/0" } else { "::/0" }.into(),
        gw: gw.to_string(),
    };
    let mut routes = vec![default_route(gateway)];
    // A dual-stack pod: its IPv6 default route too.
    if let Some(v6) = link.ipv6 {
        routes.push(default_route(v6.gateway.into()));
    }
    v1::AddReply {
        interface_index: interfaces.len() as u32 - 1,
        interfaces,
        address: link.address.to_string(),
        gateway: gateway.to_string(),
        routes,
        address6: link.ipv6.map_or(String::new(), |v6| v6.address.to_string()),
        gateway6: link.ipv6.map_or(String::new(), |v6| v6.gateway.to_string()),
        pool: a.lease.pool.clone(),
        tor: a.tor.name.clone(),
        sticky: a.lease.binding.is_some(),
    }
}

pub fn evict_reply(e: &Evicted) -> v1::EvictIpReply {
    v1::EvictIpReply {
        released: e.released,
        pending: e.pending,
        holder: e.holder.as_ref().map(|a| attachment_msg(a, e.ip.ip)),
        message: e.message.clone(),
        ip: Some(ip_msg(&e.ip)),
    }
}

pub fn audit_reply(r: crate::audit::Report) -> v1::AuditReply {
    v1::AuditReply {
        schema_version: r.schema_version,
        schema_recorded: r.schema_recorded,
        schema_known: crate::store::schema::CURRENT,
        records: r.records as u64,
        revision: r.revision,
        findings: r
            .findings
            .into_iter()
            .map(|f| v1::AuditFinding {
                key: f.key,
                problem: f.problem,
                fix: f.fix,
            })
            .collect(),
    }
}
