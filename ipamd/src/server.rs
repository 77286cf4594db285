//! The gRPC API on a unix socket: the `Cni` service for the plugin and the
//! `Admin` service for ipamctl. The socket is root-only (0600) and every
//! connection's peer credentials are checked, so only root (or ipamd's own
//! user) can allocate or release IPs.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use futures::Stream;
use moor_proto::v1::{self, admin_server::Admin, cni_server::Cni};
use tokio::net::{UnixListener, UnixStream};
use tonic::{Request, Response, Status};
use tracing::warn;

use crate::cni::Node;
use crate::core::{pool_counts, PodRef, Policy, Pool, Tor};
use crate::error::Error;
use crate::ipam::{IpView, PoolChange, PoolSpec};

type Reply<T> = Result<Response<T>, Status>;

fn ok<T>(r: crate::error::Result<T>) -> Reply<T> {
    r.map(Response::new).map_err(|e| e.to_status())
}

pub struct CniApi(pub Arc<Node>);

#[tonic::async_trait]
impl Cni for CniApi {
    async fn add(&self, r: Request<v1::AddRequest>) -> Reply<v1::AddReply> {
        let res = self.0.add(r.get_ref()).await;
        if let Err(e) = &res {
            warn!(error = %e, "ADD failed");
        }
        ok(res)
    }

    async fn del(&self, r: Request<v1::DelRequest>) -> Reply<v1::DelReply> {
        ok(self.0.del(r.get_ref()).await)
    }

    async fn check(&self, r: Request<v1::CheckRequest>) -> Reply<v1::CheckReply> {
        ok(self.0.check(r.get_ref()).await.map(|_| v1::CheckReply {}))
    }

    async fn status(&self, _: Request<v1::StatusRequest>) -> Reply<v1::StatusReply> {
        Ok(Response::new(self.0.status().await))
    }

    async fn gc(&self, r: Request<v1::GcRequest>) -> Reply<v1::GcReply> {
        ok(self.0.gc(r.get_ref()).await)
    }
}

pub struct AdminApi(pub Arc<Node>);

fn policy_from(p: i32) -> Result<Policy, Status> {
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

fn tor_msg(t: &Tor, carved: u32) -> v1::Tor {
    v1::Tor {
        name: t.name.clone(),
        subnet: t.subnet.to_string(),
        gateway: t.gateway.to_string(),
        vlan: t.vlan.map_or(0, u32::from),
        ranges: t
            .ranges
            .iter()
            .map(|r| v1::IpRange {
                first: r.first.to_string(),
                last: r.last.to_string(),
            })
            .collect(),
        capacity: t.capacity(),
        carved,
        segment_of: t.segment_of.clone().unwrap_or_default(),
    }
}

fn pod_msg(p: &PodRef) -> v1::PodRef {
    v1::PodRef {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        uid: p.uid.clone(),
    }
}

fn pool_msg(p: &Pool, leases: &[crate::core::Lease]) -> v1::Pool {
    v1::Pool {
        name: p.name.clone(),
        namespace: p.namespace.clone(),
        app: p.app.clone(),
        size: p.size(),
        policy: policy_to(p.policy),
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

pub(crate) fn attachment_msg(a: &crate::core::Attachment, ip: Ipv4Addr) -> v1::Attachment {
    v1::Attachment {
        container_id: a.key.container_id.clone(),
        ifname: a.key.ifname.clone(),
        node: a.key.node.clone(),
        netns: a.netns.clone(),
        pod: Some(pod_msg(&a.pod)),
        host_ifname: moor_proto::host_ifname(&a.key.container_id, &a.key.ifname),
        mac: moor_proto::format_mac(&moor_proto::mac_for_ipv4(ip)),
        state: match a.state {
            crate::core::AttachmentState::Pending => "pending".into(),
            crate::core::AttachmentState::Ready => "ready".into(),
        },
        network: a.network.clone(),
        created_unix: a.created_unix,
    }
}

pub(crate) fn ip_msg(v: &IpView) -> v1::Ip {
    let state = v.lease.as_ref().map_or("free", |l| l.state().as_str());
    v1::Ip {
        address: v.ip.to_string(),
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

fn parse_ip(s: &str) -> Result<Ipv4Addr, Status> {
    s.parse().map_err(|_| {
        Status::invalid_argument(format!(
            "{s:?} is not an IPv4 address: write it like 10.1.0.17"
        ))
    })
}

#[tonic::async_trait]
impl Admin for AdminApi {
    async fn add_tor(&self, r: Request<v1::AddTorRequest>) -> Reply<v1::Tor> {
        let r = r.into_inner();
        let ranges: Vec<(String, String)> =
            r.ranges.into_iter().map(|x| (x.first, x.last)).collect();
        let ipam = &self.0.ipam;
        ok(ipam
            .add_tor(
                &r.name,
                &r.subnet,
                &r.gateway,
                r.vlan,
                &ranges,
                &r.segment_of,
            )
            .await
            .map(|t| tor_msg(&t, 0)))
    }

    async fn list_tors(&self, _: Request<v1::ListTorsRequest>) -> Reply<v1::ListTorsReply> {
        ok(self.0.ipam.tors().await.map(|tors| v1::ListTorsReply {
            tors: tors.iter().map(|(t, c)| tor_msg(t, *c)).collect(),
        }))
    }

    async fn get_tor(&self, r: Request<v1::GetTorRequest>) -> Reply<v1::Tor> {
        let name = &r.get_ref().name;
        let tors = self.0.ipam.tors().await.map_err(|e| e.to_status())?;
        match tors.iter().find(|(t, _)| &t.name == name) {
            Some((t, c)) => Ok(Response::new(tor_msg(t, *c))),
            None => Err(
                Error::NotFound(format!("ToR {name} does not exist (ipamctl tor list)"))
                    .to_status(),
            ),
        }
    }

    async fn delete_tor(&self, r: Request<v1::DeleteTorRequest>) -> Reply<v1::DeleteTorReply> {
        ok(self
            .0
            .ipam
            .delete_tor(&r.get_ref().name)
            .await
            .map(|_| v1::DeleteTorReply {}))
    }

    async fn create_pool(&self, r: Request<v1::CreatePoolRequest>) -> Reply<v1::Pool> {
        let r = r.into_inner();
        let spec = PoolSpec {
            name: r.name,
            namespace: r.namespace,
            app: r.app,
            size: r.size,
            tors: r.tors,
            policy: policy_from(r.policy)?,
        };
        ok(self
            .0
            .ipam
            .create_pool(&spec)
            .await
            .map(|p| pool_msg(&p, &[])))
    }

    async fn resize_pool(&self, r: Request<v1::ResizePoolRequest>) -> Reply<v1::Pool> {
        let r = r.into_inner();
        let ipam = &self.0.ipam;
        ok(async {
            ipam.resize_pool(&r.name, r.size).await?;
            let (p, leases) = ipam.pool(&r.name).await?;
            Ok(pool_msg(&p, &leases))
        }
        .await)
    }

    async fn list_pools(&self, _: Request<v1::ListPoolsRequest>) -> Reply<v1::ListPoolsReply> {
        let ipam = &self.0.ipam;
        ok(async {
            let mut pools = Vec::new();
            for p in ipam.pools().await? {
                let leases = ipam.leases(&p.name).await?;
                pools.push(pool_msg(&p, &leases));
            }
            Ok(v1::ListPoolsReply { pools })
        }
        .await)
    }

    async fn get_pool(&self, r: Request<v1::GetPoolRequest>) -> Reply<v1::Pool> {
        ok(self
            .0
            .ipam
            .pool(&r.get_ref().name)
            .await
            .map(|(p, l)| pool_msg(&p, &l)))
    }

    async fn delete_pool(&self, r: Request<v1::DeletePoolRequest>) -> Reply<v1::DeletePoolReply> {
        ok(self
            .0
            .ipam
            .delete_pool(&r.get_ref().name)
            .await
            .map(|_| v1::DeletePoolReply {}))
    }

    async fn export_pool(&self, r: Request<v1::ExportPoolRequest>) -> Reply<v1::ExportPoolReply> {
        ok(self
            .0
            .ipam
            .pool(&r.get_ref().name)
            .await
            .map(|(p, _)| v1::ExportPoolReply {
                pool: p.name.clone(),
                ips: p.all_ips().iter().map(|ip| ip.to_string()).collect(),
            }))
    }

    async fn list_ips(&self, r: Request<v1::ListIpsRequest>) -> Reply<v1::ListIpsReply> {
        let pool = &r.get_ref().pool;
        let pool = (!pool.is_empty()).then_some(pool.as_str());
        ok(self.0.ipam.ips(pool).await.map(|ips| v1::ListIpsReply {
            ips: ips.iter().map(ip_msg).collect(),
        }))
    }

    async fn get_ip(&self, r: Request<v1::GetIpRequest>) -> Reply<v1::Ip> {
        let ip = parse_ip(&r.get_ref().address)?;
        ok(self.0.ipam.ip(ip).await.map(|v| ip_msg(&v)))
    }

    async fn release_ip(&self, r: Request<v1::ReleaseIpRequest>) -> Reply<v1::ReleaseIpReply> {
        let ip = parse_ip(&r.get_ref().address)?;
        ok(self
            .0
            .ipam
            .release_ip(ip)
            .await
            .map(|(v, was_bound)| v1::ReleaseIpReply {
                ip: Some(ip_msg(&v)),
                was_bound,
            }))
    }

    async fn evict_ip(&self, r: Request<v1::EvictIpRequest>) -> Reply<v1::EvictIpReply> {
        let ip = parse_ip(&r.get_ref().address)?;
        ok(self.0.evict(ip, r.get_ref().force).await)
    }

    async fn list_nodes(&self, _: Request<v1::ListNodesRequest>) -> Reply<v1::ListNodesReply> {
        let now = crate::cni::now_unix();
        let nodes = crate::registry::nodes(self.0.ipam.store().as_ref())
            .await
            .map_err(|e| Error::from(e).to_status())?;
        Ok(Response::new(v1::ListNodesReply {
            nodes: nodes
                .into_iter()
                .map(|n| v1::Node {
                    alive: n.alive(now),
                    name: n.name,
                    tor: n.tor,
                    mode: n.mode,
                    version: n.version,
                    started_unix: n.started_unix,
                    heartbeat_unix: n.heartbeat_unix,
                })
                .collect(),
        }))
    }

    type WatchPoolStream =
        std::pin::Pin<Box<dyn Stream<Item = Result<v1::PoolChange, Status>> + Send + 'static>>;

    async fn watch_pool(&self, r: Request<v1::WatchPoolRequest>) -> Reply<Self::WatchPoolStream> {
        use futures::StreamExt;
        use v1::pool_change::Kind;
        let name = r.into_inner().name;
        let pool = name.clone();
        let stream = self.0.ipam.clone().watch_pool(name).map(move |c| {
            let strs = |ips: Vec<Ipv4Addr>| ips.iter().map(|ip| ip.to_string()).collect();
            let (kind, ips, revision) = match c.map_err(|e| e.to_status())? {
                PoolChange::Snapshot { ips, revision } => (Kind::Snapshot, strs(ips), revision),
                PoolChange::Add { ips, revision } => (Kind::Add, strs(ips), revision),
                PoolChange::Remove { ips, revision } => (Kind::Remove, strs(ips), revision),
                PoolChange::Deleted { revision } => (Kind::Deleted, vec![], revision),
            };
            Ok(v1::PoolChange {
                kind: kind as i32,
                pool: pool.clone(),
                ips,
                revision,
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_bindings(
        &self,
        r: Request<v1::ListBindingsRequest>,
    ) -> Reply<v1::ListBindingsReply> {
        let pool = &r.get_ref().pool;
        let pool = (!pool.is_empty()).then_some(pool.as_str());
        ok(self
            .0
            .ipam
            .bindings(pool)
            .await
            .map(|bs| v1::ListBindingsReply {
                bindings: bs
                    .iter()
                    .map(|(b, attached)| v1::Binding {
                        pod: Some(pod_msg(&b.pod)),
                        pool: b.pool.clone(),
                        address: b.ip.to_string(),
                        tor: b.tor.clone(),
                        attached: *attached,
                    })
                    .collect(),
            }))
    }

    async fn audit(&self, _: Request<v1::AuditRequest>) -> Reply<v1::AuditReply> {
        let report = crate::audit::run(self.0.ipam.store().as_ref())
            .await
            .map_err(|e| Error::from(e).to_status())?;
        Ok(Response::new(audit_msg(report)))
    }
}

fn audit_msg(r: crate::audit::Report) -> v1::AuditReply {
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

/// Binds the socket: removes a stale one, creates the directory, 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    // Bind under a umask that already denies others, then tighten: no window
    // in which another user could connect.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let l = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let l = l?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Accepted connections whose peer is root or ipamd's own user; others are
/// dropped with a warning.
pub fn authorized(listener: UnixListener) -> impl Stream<Item = std::io::Result<UnixStream>> {
    let me = nix::unistd::geteuid().as_raw();
    futures::stream::unfold(listener, move |l| async move {
        loop {
            match l.accept().await {
                Ok((s, _)) => match s.peer_cred() {
                    Ok(c) if c.uid() == 0 || c.uid() == me => return Some((Ok(s), l)),
                    Ok(c) => {
                        warn!(uid = c.uid(), pid = ?c.pid(), "refused a connection from a non-root peer")
                    }
                    Err(e) => {
                        warn!(error = %e, "refused a connection whose peer credentials are unknown")
                    }
                },
                Err(e) => {
                    // Out of fds and the like: don't spin on accept.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    return Some((Err(e), l));
                }
            }
        }
    })
}

pub async fn serve(
    node: Arc<Node>,
    listener: UnixListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(v1::cni_server::CniServer::new(CniApi(node.clone())))
        .add_service(v1::admin_server::AdminServer::new(AdminApi(node)))
        .serve_with_incoming_shutdown(authorized(listener), shutdown)
        .await
}
