//! One `coordination.k8s.io/v1` Lease, read and written with optimistic
//! concurrency: every write names the resourceVersion it read, and the API
//! server answers 409 Conflict when the Lease changed since. That is the
//! whole of leader election's safety: two candidates that read the same
//! version cannot both write it. The election itself (who takes, when, and
//! for how long a holder may act) is `controller::elector`'s.

use std::time::Duration;

// Renamed: in ipamd a bare v1 module is moor's gRPC contract.
use k8s_openapi::api::coordination::v1 as coordinationv1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;

use coordinationv1::{Lease, LeaseSpec};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use metav1::MicroTime;

/// A Lease as the election reads it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseRecord {
    /// `holderIdentity`; empty: nobody holds it (released).
    pub holder: String,
    /// `leaseDurationSeconds`: how long the holder may go without renewing.
    pub duration_seconds: i32,
    /// `acquireTime`, `renewTime`: Unix seconds of the holder's wall clock
    /// (informational: candidates time expiry on their own monotonic clock).
    pub acquired_unix: u64,
    pub renewed_unix: u64,
    /// `leaseTransitions`: how many times the holder changed.
    pub transitions: i32,
    /// The version this record was read at ("" for one not yet written).
    pub resource_version: String,
}

/// Why a Lease request did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// 409: the Lease changed since it was read (or exists, on create).
    #[error("the Lease changed since it was read (409 Conflict)")]
    Conflict,
    /// The API did not answer, refused, or took longer than allowed.
    #[error("Lease {0}")]
    Failed(String),
}

/// The Lease `namespace/name` on one API server.
#[derive(Clone)]
pub struct LeaseApi {
    api: Api<Lease>,
    name: String,
    timeout: Duration,
}

fn micro(unix: u64) -> Option<MicroTime> {
    k8s_openapi::jiff::Timestamp::from_second(unix as i64)
        .ok()
        .map(MicroTime)
}

fn unix(t: &Option<MicroTime>) -> u64 {
    t.as_ref().map_or(0, |t| t.0.as_second().max(0) as u64)
}

impl LeaseRecord {
    fn from_lease(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        Self {
            holder: spec.holder_identity.unwrap_or_default(),
            duration_seconds: spec.lease_duration_seconds.unwrap_or(0),
            acquired_unix: unix(&spec.acquire_time),
            renewed_unix: unix(&spec.renew_time),
            transitions: spec.lease_transitions.unwrap_or(0),
            resource_version: lease.metadata.resource_version.clone().unwrap_or_default(),
        }
    }

    fn to_lease(&self, name: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                resource_version: (!self.resource_version.is_empty())
                    .then(|| self.resource_version.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: (!self.holder.is_empty()).then(|| self.holder.clone()),
                lease_duration_seconds: Some(self.duration_seconds),
                acquire_time: micro(self.acquired_unix),
                renew_time: micro(self.renewed_unix),
                lease_transitions: Some(self.transitions),
                ..Default::default()
            }),
        }
    }
}

impl LeaseApi {
    /// Lease `namespace/name`; every request gives up after `timeout`.
    pub fn new(client: Client, namespace: &str, name: &str, timeout: Duration) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            timeout,
        }
    }

    async fn bounded<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, LeaseError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(kube::Error::Api(s))) if s.code == 409 => Err(LeaseError::Conflict),
            Ok(Err(e)) => Err(LeaseError::Failed(format!("{what} {}: {e}", self.name))),
            Err(_) => Err(LeaseError::Failed(format!(
                "{what} {}: no answer within {} ms",
                self.name,
                self.timeout.as_millis()
            ))),
        }
    }

    /// The Lease now; `None` when it does not exist.
    pub async fn get(&self) -> Result<Option<LeaseRecord>, LeaseError> {
        let found = self.bounded("GET", self.api.get_opt(&self.name)).await?;
        Ok(found.as_ref().map(LeaseRecord::from_lease))
    }

    /// Creates the Lease as `record` says; `Conflict` when it exists.
    pub async fn create(&self, record: &LeaseRecord) -> Result<LeaseRecord, LeaseError> {
        let mut lease = record.to_lease(&self.name);
        lease.metadata.resource_version = None;
        let pp = PostParams::default();
        let made = self.bounded("POST", self.api.create(&pp, &lease)).await?;
        Ok(LeaseRecord::from_lease(&made))
    }

    /// Replaces the Lease with `record`, on the condition that it is still
    /// at `record.resource_version`; `Conflict` when it is not.
    pub async fn replace(&self, record: &LeaseRecord) -> Result<LeaseRecord, LeaseError> {
        if record.resource_version.is_empty() {
            // Without a version the server would overwrite whatever is there.
            return Err(LeaseError::Failed(format!(
                "PUT {}: no resourceVersion to write against",
                self.name
            )));
        }
        let lease = record.to_lease(&self.name);
        let pp = PostParams::default();
        let put = self.api.replace(&self.name, &pp, &lease);
        let written = self.bounded("PUT", put).await?;
        Ok(LeaseRecord::from_lease(&written))
    }
}
