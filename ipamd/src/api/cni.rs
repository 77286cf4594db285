//! The `Cni` service the plugin calls: one RPC per CNI command.

use std::collections::HashSet;
use std::sync::Arc;

use moor_proto::v1::{self, cni_server::Cni};
use tonic::{Request, Response, Status};
use tracing::warn;

use crate::error::Error;
use crate::node::{AddRequest, CheckRequest, Node};

use super::convert::{add_reply, pod_from};
use super::status;

type Reply<T> = Result<Response<T>, Status>;

pub struct CniApi(pub Arc<Node>);

/// The attachment key's two parts, which every CNI RPC carries.
fn key(k: Option<&v1::AttachmentKey>) -> Result<&v1::AttachmentKey, Status> {
    k.ok_or_else(|| status(&Error::Invalid("request has no attachment key".into())))
}

#[tonic::async_trait]
impl Cni for CniApi {
    async fn add(&self, r: Request<v1::AddRequest>) -> Reply<v1::AddReply> {
        let r = r.into_inner();
        let k = key(r.key.as_ref())?;
        let req = AddRequest {
            container_id: k.container_id.clone(),
            ifname: k.ifname.clone(),
            netns: r.netns,
            network: r.network,
            pod: pod_from(r.pod.as_ref()),
            pool: (!r.pool.is_empty()).then_some(r.pool),
            default_pool: (!r.default_pool.is_empty()).then_some(r.default_pool),
        };
        match self.0.add(&req).await {
            Ok(a) => Ok(Response::new(add_reply(&a))),
            Err(e) => {
                warn!(error = %e, "ADD failed");
                Err(status(&e))
            }
        }
    }

    async fn del(&self, r: Request<v1::DelRequest>) -> Reply<v1::DelReply> {
        let k = key(r.get_ref().key.as_ref())?;
        let d = self
            .0
            .del(&k.container_id, &k.ifname)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(match d {
            Some(d) => v1::DelReply {
                released: true,
                address: d.ip.to_string(),
                binding_kept: d.binding_kept,
            },
            None => v1::DelReply::default(),
        }))
    }

    async fn check(&self, r: Request<v1::CheckRequest>) -> Reply<v1::CheckReply> {
        let r = r.into_inner();
        let k = key(r.key.as_ref())?;
        let address = if r.address.is_empty() {
            None
        } else {
            let ip = r.address.split('/').next().unwrap_or_default();
            Some(ip.parse().map_err(|_| {
                status(&Error::Invalid(format!(
                    "prevResult address {:?} is not an IPv4 CIDR",
                    r.address
                )))
            })?)
        };
        let req = CheckRequest {
            container_id: k.container_id.clone(),
            ifname: k.ifname.clone(),
            netns: r.netns,
            address,
        };
        self.0.check(&req).await.map_err(|e| status(&e))?;
        Ok(Response::new(v1::CheckReply {}))
    }

    async fn status(&self, _: Request<v1::StatusRequest>) -> Reply<v1::StatusReply> {
        let s = self.0.status().await;
        Ok(Response::new(v1::StatusReply {
            node: s.node,
            tor: s.tor,
            ready: s.ready,
            free: s.free,
            reason: s.reason,
        }))
    }

    async fn gc(&self, r: Request<v1::GcRequest>) -> Reply<v1::GcReply> {
        let r = r.get_ref();
        let valid: HashSet<(String, String)> = r
            .valid
            .iter()
            .map(|k| (k.container_id.clone(), k.ifname.clone()))
            .collect();
        let released = self
            .0
            .gc(&r.network, &valid)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(v1::GcReply {
            released: released.iter().map(|ip| ip.to_string()).collect(),
        }))
    }
}
