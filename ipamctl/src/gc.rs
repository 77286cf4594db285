//! `ipamctl gc [--dry-run]`: garbage collection by Kubernetes truth, asked
//! of the controller (`ipamd --role controller|both`) on its socket. The
//! dry run lists what is due and why; without it, ipamctl releases exactly
//! that now: bindings whose pod and StatefulSet have been gone for longer
//! than the controller's grace, attachments whose pod and node are gone.

use moor_proto::v1::controller_client::ControllerClient;
use moor_proto::v1::{CollectGarbageReply, CollectGarbageRequest, GarbageRelease};
use serde::Serialize;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::output::{json, Format, Table};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReleaseView {
    /// `binding` or `attachment`.
    pub kind: String,
    pub address: String,
    pub pool: String,
    /// `namespace/name` of the pod.
    pub pod: String,
    /// The uid the pod had, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// An attachment's node and container.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// `pod-gone`, `node-deleted` or `node-not-ready`.
    pub reason: String,
    /// Gone or NotReady since (unix seconds); absent for `node-deleted`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since_unix: Option<u64>,
    pub message: String,
    /// Released by this call.
    pub done: bool,
    /// Tried and not done: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GcView {
    pub dry_run: bool,
    pub grace_seconds: u64,
    /// Stopped early: the controller stopped leading.
    pub fenced: bool,
    pub releases: Vec<ReleaseView>,
}

fn some(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

impl From<&GarbageRelease> for ReleaseView {
    fn from(r: &GarbageRelease) -> Self {
        let pod = r.pod.clone().unwrap_or_default();
        Self {
            kind: r.kind.clone(),
            address: r.address.clone(),
            pool: r.pool.clone(),
            pod: format!("{}/{}", pod.namespace, pod.name),
            uid: some(&pod.uid),
            node: some(&r.node),
            container_id: some(&r.container_id),
            reason: r.reason.clone(),
            since_unix: (r.since_unix != 0).then_some(r.since_unix),
            message: r.message.clone(),
            done: r.done,
            error: some(&r.error),
        }
    }
}

impl From<&CollectGarbageReply> for GcView {
    fn from(r: &CollectGarbageReply) -> Self {
        Self {
            dry_run: r.dry_run,
            grace_seconds: r.grace_seconds,
            fenced: r.fenced,
            releases: r.releases.iter().map(ReleaseView::from).collect(),
        }
    }
}

/// The reply as text, and whether it is a failure (the controller stopped
/// leading half-way: exit 1).
pub fn render(reply: &CollectGarbageReply, format: Format) -> (String, bool) {
    let v = GcView::from(reply);
    if format == Format::Json {
        return (json(&v), v.fenced);
    }
    if v.releases.is_empty() {
        return (
            format!(
                "nothing to release (a binding goes {} s after its pod and its StatefulSet are gone)\n",
                v.grace_seconds
            ),
            false,
        );
    }
    let mut t = Table::new(&["STATUS", "KIND", "IP", "POOL", "POD", "REASON"]);
    for r in &v.releases {
        let status = match (v.dry_run, r.done, &r.error) {
            (true, ..) => "would release",
            (_, true, _) => "released",
            (_, false, Some(_)) => "not released",
            (_, false, None) => "not released (not leading)",
        };
        t.row([
            status.to_string(),
            r.kind.clone(),
            r.address.clone(),
            r.pool.clone(),
            r.pod.clone(),
            r.reason.clone(),
        ]);
    }
    let mut out = t.render();
    out.push('\n');
    for r in &v.releases {
        out.push_str(&format!("{} ({}): {}\n", r.address, r.kind, r.message));
        if let Some(e) = &r.error {
            out.push_str(&format!("  not released: {e}\n"));
        }
    }
    if v.fenced {
        out.push_str("stopped: this controller replica stopped leading; run ipamctl gc again on the leader\n");
    }
    (out, v.fenced)
}

/// Asks the controller for a pass.
pub async fn collect(channel: Channel, dry_run: bool) -> Result<CollectGarbageReply, Status> {
    let mut client = ControllerClient::new(channel);
    match client
        .collect_garbage(CollectGarbageRequest { dry_run })
        .await
    {
        Ok(r) => Ok(r.into_inner()),
        Err(s) if s.code() == Code::Unimplemented => Err(Status::unimplemented(
            "this ipamd does not run the controller (--role node): run ipamctl gc where ipamd --role controller or both runs, e.g. kubectl exec -n moor-system deployment/moor-controller -- ipamctl gc",
        )),
        Err(s) => Err(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moor_proto::v1::PodRef;

    fn reply(dry_run: bool, done: bool) -> CollectGarbageReply {
        CollectGarbageReply {
            releases: vec![GarbageRelease {
                kind: "binding".into(),
                address: "10.1.0.11".into(),
                pool: "shop-db".into(),
                pod: Some(PodRef {
                    namespace: "shop".into(),
                    name: "db-1".into(),
                    uid: String::new(),
                }),
                reason: "pod-gone".into(),
                since_unix: 1_700_000_000,
                message: "10.1.0.11 kept for pod shop/db-1: no pod ...".into(),
                done,
                ..Default::default()
            }],
            dry_run,
            grace_seconds: 600,
            fenced: false,
        }
    }

    #[test]
    fn the_dry_run_says_what_would_go_and_why() {
        let (text, failed) = render(&reply(true, false), Format::Table);
        assert!(!failed);
        assert!(text.contains("would release"), "{text}");
        assert!(text.contains("shop/db-1"), "{text}");
        assert!(
            text.contains("10.1.0.11 (binding): 10.1.0.11 kept for pod"),
            "{text}"
        );
        let (text, _) = render(&reply(false, true), Format::Json);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["releases"][0]["done"], true);
        assert_eq!(v["releases"][0]["pod"], "shop/db-1");
        assert_eq!(v["releases"][0]["since_unix"], 1_700_000_000);
        assert!(v["releases"][0].get("node").is_none());
        let empty = CollectGarbageReply {
            grace_seconds: 600,
            ..Default::default()
        };
        let (text, _) = render(&empty, Format::Table);
        assert!(text.starts_with("nothing to release"), "{text}");
    }
}
