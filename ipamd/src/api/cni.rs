//! The `Cni` service the plugin calls: one RPC per CNI command.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use moor_proto::v1::{self, cni_server::Cni};
use tonic::{Request, Response, Status};
use tracing::warn;

use crate::error::Error;
use crate::metrics;
use crate::node::{AddRequest, CheckRequest, Node};

use super::convert::{add_reply, pod_from};
use super::status;

type Reply<T> = Result<Response<T>, Status>;

pub struct CniApi(pub Arc<Node>, pub super::backup::Restoring);

/// The attachment key's two parts, which every CNI RPC carries.
fn key(k: Option<&v1::AttachmentKey>) -> Result<&v1::AttachmentKey, Error> {
    k.ok_or_else(|| Error::Invalid("request has no attachment key".into()))
}

/// Serves one CNI request, counted and timed (`moor_cni_*`) by its CNI
/// result code, and turns its error into the gRPC status. A request dropped
/// before it is answered (the plugin's deadline passed: tonic cancels the
/// handler) is counted as `cancelled` when it goes.
async fn metered<T>(op: &'static str, served: impl Future<Output = Result<T, Error>>) -> Reply<T> {
    /// Counts the request when it goes: with its code once answered, as
    /// cancelled if dropped before.
    struct Counted {
        op: &'static str,
        started: Instant,
        code: Option<u32>,
    }
    impl Drop for Counted {
        fn drop(&mut self) {
            let took = self.started.elapsed();
            match self.code {
                Some(code) => metrics::global().cni_request(self.op, code, took),
                None => metrics::global().cni_cancelled(self.op, took),
            }
        }
    }
    let mut counted = Counted {
        op,
        started: Instant::now(),
        code: None,
    };
    let r = served.await;
    counted.code = Some(r.as_ref().err().map_or(0, Error::cni_code));
    r.map(Response::new).map_err(|e| status(&e))
}

#[tonic::async_trait]
impl Cni for CniApi {
    async fn add(&self, r: Request<v1::AddRequest>) -> Reply<v1::AddReply> {
        metered("ADD", self.add_now(r.into_inner())).await
    }

    async fn del(&self, r: Request<v1::DelRequest>) -> Reply<v1::DelReply> {
        metered("DEL", self.del_now(r.get_ref())).await
    }

    async fn check(&self, r: Request<v1::CheckRequest>) -> Reply<v1::CheckReply> {
        metered("CHECK", self.check_now(r.into_inner())).await
    }

    async fn status(&self, _: Request<v1::StatusRequest>) -> Reply<v1::StatusReply> {
        metered("STATUS", async {
            let s = self.0.status().await;
            Ok(v1::StatusReply {
                node: s.node,
                tor: s.tor,
                ready: s.ready,
                free: s.free,
                reason: s.reason,
            })
        })
        .await
    }

    async fn gc(&self, r: Request<v1::GcRequest>) -> Reply<v1::GcReply> {
        metered("GC", self.gc_now(r.get_ref())).await
    }
}

impl CniApi {
    async fn add_now(&self, r: v1::AddRequest) -> Result<v1::AddReply, Error> {
        if let Some(e) = self.1.refuse_add() {
            return Err(e);
        }
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
            Ok(a) => Ok(add_reply(&a)),
            Err(e) => {
                warn!(error = %e, code = e.cni_code(), container_id = %req.container_id,
                    ifname = %req.ifname, pod = %req.pod, "ADD failed");
                Err(e)
            }
        }
    }

    async fn del_now(&self, r: &v1::DelRequest) -> Result<v1::DelReply, Error> {
        let k = key(r.key.as_ref())?;
        Ok(match self.0.del(&k.container_id, &k.ifname).await? {
            Some(d) => v1::DelReply {
                released: true,
                address: d.ip.to_string(),
                binding_kept: d.binding_kept,
            },
            None => v1::DelReply::default(),
        })
    }

    async fn check_now(&self, r: v1::CheckRequest) -> Result<v1::CheckReply, Error> {
        let k = key(r.key.as_ref())?;
        let address = if r.address.is_empty() {
            None
        } else {
            let ip = r.address.split('/').next().unwrap_or_default();
            Some(ip.parse().map_err(|_| {
                Error::Invalid(format!(
                    "prevResult address {:?} is not an IPv4 CIDR",
                    r.address
                ))
            })?)
        };
        let req = CheckRequest {
            container_id: k.container_id.clone(),
            ifname: k.ifname.clone(),
            netns: r.netns,
            address,
        };
        self.0.check(&req).await?;
        Ok(v1::CheckReply {})
    }

    async fn gc_now(&self, r: &v1::GcRequest) -> Result<v1::GcReply, Error> {
        let valid: HashSet<(String, String)> = r
            .valid
            .iter()
            .map(|k| (k.container_id.clone(), k.ifname.clone()))
            .collect();
        let released = self.0.gc(&r.network, &valid).await?;
        Ok(v1::GcReply {
            released: released.iter().map(|ip| ip.to_string()).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The series of `op` in the process's metrics.
    async fn count(op: &str, code: &str) -> Option<String> {
        let text = metrics::global().encode(metrics::Snapshot::default()).await;
        let series = format!(r#"moor_cni_requests_total{{op="{op}",code="{code}"}} "#);
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str()).map(str::to_string))
    }

    #[tokio::test]
    async fn a_request_is_counted_by_its_code_and_as_cancelled_when_dropped_unanswered() {
        // Ops of their own: the metrics are the process's.
        let ok = metered("TEST_OK", async { Ok::<_, Error>(()) }).await;
        assert!(ok.is_ok());
        let refused = metered("TEST_OK", async {
            Err::<(), _>(Error::refused(moor_proto::cni_code::POOL_FULL, "full"))
        })
        .await;
        assert!(refused.is_err());
        assert_eq!(count("TEST_OK", "0").await.as_deref(), Some("1"));
        assert_eq!(count("TEST_OK", "100").await.as_deref(), Some("1"));

        // The plugin's deadline passes: tonic drops the handler mid-way.
        let never = metered("TEST_CUT", std::future::pending::<Result<(), Error>>());
        let cut = tokio::time::timeout(std::time::Duration::from_millis(10), never).await;
        assert!(cut.is_err());
        assert_eq!(count("TEST_CUT", "cancelled").await.as_deref(), Some("1"));
        assert_eq!(count("TEST_CUT", "0").await, None);
    }
}
