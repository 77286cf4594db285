//! The `Controller` service ipamctl calls on the controller's socket:
//! `ipamctl gc [--dry-run]`.

use std::sync::Arc;

use moor_proto::v1::{self, controller_server::Controller};
use tonic::{Request, Response, Status};

use crate::controller::{Collector, Outcome, Reason, Target};

use super::convert::pod_msg;
use super::status;

pub struct ControllerApi(pub Arc<Collector>);

fn release_msg(o: &Outcome) -> v1::GarbageRelease {
    let r = &o.release;
    let (node, container_id) = match &r.target {
        Target::Attachment(a) => (a.key.node.clone(), a.key.container_id.clone()),
        Target::Binding(_) => (String::new(), String::new()),
    };
    let (reason, since_unix) = match &r.reason {
        Reason::PodGone { since_unix, .. } => ("pod-gone", *since_unix),
        Reason::NodeGone {
            not_ready_since: None,
            ..
        } => ("node-deleted", 0),
        Reason::NodeGone {
            not_ready_since: Some(t),
            ..
        } => ("node-not-ready", *t),
    };
    v1::GarbageRelease {
        kind: r.kind().into(),
        address: r.ip.to_string(),
        pool: r.pool.clone(),
        pod: Some(pod_msg(r.pod())),
        node,
        container_id,
        reason: reason.into(),
        since_unix,
        message: o.why.clone(),
        done: o.done,
        error: o.error.clone().unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl Controller for ControllerApi {
    async fn collect_garbage(
        &self,
        r: Request<v1::CollectGarbageRequest>,
    ) -> Result<Response<v1::CollectGarbageReply>, Status> {
        let dry_run = r.get_ref().dry_run;
        let pass = self
            .0
            .collect(dry_run, true)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(v1::CollectGarbageReply {
            releases: pass.outcomes.iter().map(release_msg).collect(),
            dry_run,
            grace_seconds: self.0.grace.as_secs(),
            fenced: pass.fenced,
        }))
    }
}
