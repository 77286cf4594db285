//! The `Admin` service ipamctl calls: ToRs, pools, IPs, bindings, nodes.

use std::net::IpAddr;
use std::sync::Arc;

use futures::stream::TryChunksError;
use futures::{Stream, StreamExt, TryStreamExt};
use moor_proto::v1::{self, admin_server::Admin};
use tonic::{Request, Response, Status};

use crate::error::{Error, Result};
use crate::ipam::listing::Items;
use crate::ipam::{registry, PoolChange, PoolSpec};
use crate::node::Node;

use super::convert::{
    audit_reply, binding_msg, evict_reply, family_from, ip_msg, parse_ip, pod_from, policy_from,
    pool_msg, tor_msg,
};
use super::status;

type Reply<T> = std::result::Result<Response<T>, Status>;

/// A listing's replies, each with at most [`MESSAGE`] items.
type Batches<R> = std::pin::Pin<Box<dyn Stream<Item = std::result::Result<R, Status>> + Send>>;

/// Items one message of a streamed listing carries at most: a few hundred
/// KiB, whatever the list's length.
const MESSAGE: usize = 500;

/// `items` in replies of at most [`MESSAGE`]: `one` converts an item,
/// `reply` wraps a batch. ipamd holds one batch (and what the walk below
/// holds); HTTP/2 flow control keeps it from running ahead of the reader.
fn batches<T, M, R>(
    items: Items<T>,
    one: impl Fn(T) -> M + Send + 'static,
    reply: impl Fn(Vec<M>) -> R + Send + 'static,
) -> Batches<R>
where
    T: Send + 'static,
    M: Send + 'static,
    R: Send + 'static,
{
    Box::pin(
        items
            .map_ok(one)
            .try_chunks(MESSAGE)
            .map(move |r| r.map(&reply).map_err(|TryChunksError(_, e)| status(&e))),
    )
}

/// The answer of a unary listing a stream replaced: an ipamctl older than
/// ipamd would print the first message of the stream as the whole list.
fn replaced(command: &str, rpc: &str) -> Status {
    Status::failed_precondition(format!(
        "this ipamd streams `{command}` (Admin.{rpc}) and this ipamctl is older than ipamd: use the ipamctl of ipamd's release"
    ))
}

fn ok<T>(r: Result<T>) -> Reply<T> {
    r.map(Response::new).map_err(|e| status(&e))
}

pub struct AdminApi(pub Arc<Node>, pub super::backup::Restoring);

#[tonic::async_trait]
impl Admin for AdminApi {
    async fn add_tor(&self, r: Request<v1::AddTorRequest>) -> Reply<v1::Tor> {
        let r = r.into_inner();
        let ranges: Vec<(String, String)> =
            r.ranges.into_iter().map(|x| (x.first, x.last)).collect();
        let mut nets = vec![(r.subnet, r.gateway)];
        if !r.subnet6.is_empty() || !r.gateway6.is_empty() {
            nets.push((r.subnet6, r.gateway6));
        }
        let ipam = &self.0.ipam;
        ok(ipam
            .add_tor_families(&r.name, &nets, r.vlan, &ranges, &r.segment_of)
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
        let tors = self.0.ipam.tors().await.map_err(|e| status(&e))?;
        match tors.iter().find(|(t, _)| &t.name == name) {
            Some((t, c)) => Ok(Response::new(tor_msg(t, *c))),
            None => Err(status(&Error::NotFound(format!(
                "ToR {name} does not exist (ipamctl tor list)"
            )))),
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
        let ips = r
            .ips
            .iter()
            .map(|ip| parse_ip(ip))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let spec = PoolSpec {
            name: r.name,
            namespace: r.namespace,
            app: r.app,
            size: r.size,
            tors: r.tors,
            policy: policy_from(r.policy)?,
            allow_namespaces: r.allow_namespaces,
            ips,
            family: family_from(&r.family)?,
            ..PoolSpec::default()
        };
        let now = self.0.clock.now_unix();
        ok(self
            .0
            .ipam
            .create_pool(&spec, now)
            .await
            .map(|p| pool_msg(&p, &[])))
    }

    async fn resize_pool(&self, r: Request<v1::ResizePoolRequest>) -> Reply<v1::Pool> {
        let r = r.into_inner();
        let ipam = &self.0.ipam;
        ok(async {
            ipam.resize_pool(&r.name, r.size, self.0.clock.now_unix())
                .await?;
            let (p, leases) = ipam.pool(&r.name).await?;
            Ok(pool_msg(&p, &leases))
        }
        .await)
    }

    async fn list_pools(&self, _: Request<v1::ListPoolsRequest>) -> Reply<v1::ListPoolsReply> {
        Err(replaced("pool list", "StreamPools"))
    }

    type StreamPoolsStream = Batches<v1::ListPoolsReply>;

    async fn stream_pools(
        &self,
        _: Request<v1::ListPoolsRequest>,
    ) -> Reply<Self::StreamPoolsStream> {
        let pools = self.0.ipam.pool_walk();
        Ok(Response::new(batches(
            pools,
            |(p, leases)| pool_msg(&p, &leases),
            |pools| v1::ListPoolsReply { pools },
        )))
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
            .delete_pool(&r.get_ref().name, self.0.clock.now_unix())
            .await
            .map(|_| v1::DeletePoolReply {}))
    }

    async fn export_pool(&self, r: Request<v1::ExportPoolRequest>) -> Reply<v1::ExportPoolReply> {
        let ipam = &self.0.ipam;
        let export = async {
            let (p, _) = ipam.pool(&r.get_ref().name).await?;
            let partners = ipam.partners(&p).await?;
            let ips = p.all_ips();
            Ok(v1::ExportPoolReply {
                pool: p.name.clone(),
                // Same order as `ips`, one entry each: a partner missing
                // (its segment deleted under the pool) is an empty entry,
                // so no address is paired with another's.
                ips6: if partners.is_empty() {
                    Vec::new()
                } else {
                    ips.iter()
                        .map(|ip| partners.get(ip).map(|a| a.to_string()).unwrap_or_default())
                        .collect()
                },
                ips: ips.iter().map(|ip| ip.to_string()).collect(),
            })
        };
        ok(export.await)
    }

    async fn list_ips(&self, _: Request<v1::ListIpsRequest>) -> Reply<v1::ListIpsReply> {
        Err(replaced("ip list", "StreamIps"))
    }

    type StreamIpsStream = Batches<v1::ListIpsReply>;

    async fn stream_ips(&self, r: Request<v1::ListIpsRequest>) -> Reply<Self::StreamIpsStream> {
        let pool = &r.get_ref().pool;
        let pool = (!pool.is_empty()).then_some(pool.as_str());
        let ips = self.0.ipam.ip_walk(pool).await.map_err(|e| status(&e))?;
        Ok(Response::new(batches(
            ips,
            |v| ip_msg(&v),
            |ips| v1::ListIpsReply { ips },
        )))
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
        ok(self
            .0
            .evict(ip, r.get_ref().force)
            .await
            .map(|e| evict_reply(&e)))
    }

    async fn list_nodes(&self, _: Request<v1::ListNodesRequest>) -> Reply<v1::ListNodesReply> {
        let now = self.0.clock.now_unix();
        let nodes = registry::nodes(self.0.ipam.store().as_ref())
            .await
            .map_err(|e| status(&Error::from(e)))?;
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

    type WatchPoolStream = std::pin::Pin<
        Box<dyn Stream<Item = std::result::Result<v1::PoolChange, Status>> + Send + 'static>,
    >;

    async fn watch_pool(&self, r: Request<v1::WatchPoolRequest>) -> Reply<Self::WatchPoolStream> {
        use v1::pool_change::Kind;
        let name = r.into_inner().name;
        let pool = name.clone();
        let stream = self.0.ipam.clone().watch_pool(name).map(move |c| {
            let strs = |ips: Vec<IpAddr>| ips.iter().map(|ip| ip.to_string()).collect();
            let (kind, ips, revision) = match c.map_err(|e| status(&e))? {
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
        _: Request<v1::ListBindingsRequest>,
    ) -> Reply<v1::ListBindingsReply> {
        Err(replaced("binding list", "StreamBindings"))
    }

    type StreamBindingsStream = Batches<v1::ListBindingsReply>;

    async fn stream_bindings(
        &self,
        r: Request<v1::ListBindingsRequest>,
    ) -> Reply<Self::StreamBindingsStream> {
        let pool = &r.get_ref().pool;
        let pool = (!pool.is_empty()).then_some(pool.as_str());
        Ok(Response::new(batches(
            self.0.ipam.binding_walk(pool),
            |(b, attached, ipv6)| binding_msg(&b, attached, ipv6),
            |bindings| v1::ListBindingsReply { bindings },
        )))
    }

    async fn add_binding(&self, r: Request<v1::AddBindingRequest>) -> Reply<v1::Binding> {
        let r = r.into_inner();
        let ip = parse_ip(&r.address)?;
        let mut pod = pod_from(r.pod.as_ref());
        pod.uid.clear();
        // The reply names the IPv6 partner too, as `binding list` does.
        ok(self
            .0
            .ipam
            .bind(&pod, ip)
            .await
            .map(|(b, ipv6)| binding_msg(&b, false, ipv6)))
    }

    async fn audit(&self, _: Request<v1::AuditRequest>) -> Reply<v1::AuditReply> {
        let report = crate::audit::run(self.0.ipam.store().as_ref())
            .await
            .map_err(|e| status(&Error::from(e)))?;
        Ok(Response::new(audit_reply(report)))
    }

    type BackupStream = super::backup::BackupStream;

    async fn backup(&self, _: Request<v1::BackupRequest>) -> Reply<Self::BackupStream> {
        Ok(Response::new(super::backup::backup(&self.0)))
    }

    async fn restore(
        &self,
        r: Request<tonic::Streaming<v1::RestoreChunk>>,
    ) -> Reply<v1::RestoreReply> {
        super::backup::restore(&self.0, &self.1, r.into_inner())
            .await
            .map(Response::new)
    }
}
