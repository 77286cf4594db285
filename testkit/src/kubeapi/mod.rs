//! A fake Kubernetes API server on 127.0.0.1, plain HTTP/1.1: the one
//! allowed stand-in for a kube-apiserver, which these machines cannot run.
//! kube-rs (`Api`, `watcher`, `reflector`, `metadata_watcher`,
//! `watcher::Config::streaming_lists()`) talks to it unmodified through the
//! kubeconfig [`FakeApi::write_kubeconfig`] writes.
//!
//! # What it serves
//! - Resources ([`Resource`]): core/v1 `pods`, `namespaces`, `nodes`,
//!   `configmaps`; apps/v1 `daemonsets`, `replicasets`; policy/v1
//!   `poddisruptionbudgets`; `pods/eviction` (PodDisruptionBudgets honoured,
//!   `eviction.rs`); a DELETE collects dependents by ownerReferences as the
//!   garbage collector would (`propagationPolicy`, `gc.rs`);
//!   `events`; events.k8s.io/v1 `events` (kube-runtime's `Recorder`);
//!   batch/v1 `jobs`; apps/v1 `statefulsets`, `deployments`;
//!   coordination.k8s.io/v1 `leases` (leader election: a PUT with a stale
//!   resourceVersion gets 409 Conflict; the spec is validated as the real
//!   server does). Namespaced ones also cluster-wide (`/api/v1/pods`).
//!   `/version` answers; discovery (`/api`, `/apis`) does not (typed `Api`
//!   needs none).
//! - LIST: `resourceVersion` with `resourceVersionMatch` (`NotOlderThan`,
//!   `Exact`: a consistent snapshot rebuilt from the history),
//!   `limit` + `continue` (a token naming the snapshot and the last key,
//!   shaped as the real one; a token older than the history: 410 `Expired`
//!   with the server's message), `remainingItemCount` when no selector,
//!   `XList` shape with `metadata.resourceVersion`/`continue`; items carry
//!   no kind/apiVersion, as the real server sends them.
//! - WATCH (`watch=1|true`): chunked, one JSON event per line. Starting
//!   from `resourceVersion` replays the bounded history; older than the
//!   history: an `ERROR` event with a 410 `Expired` Status ("too old
//!   resource version"). No (or "0") resourceVersion: synthetic `ADDED`
//!   for what exists, then changes. `allowWatchBookmarks=true`: a
//!   `BOOKMARK` every [`FakeApiBuilder::bookmark_interval`].
//!   `sendInitialEvents=true` with `resourceVersionMatch=NotOlderThan`:
//!   `ADDED` events then a `BOOKMARK` annotated
//!   `k8s.io/initial-events-end: "true"`. `timeoutSeconds` ends the stream.
//!   Selectors apply as the watch cache applies them: an object that stops
//!   matching arrives as `DELETED` (its last matching state, at the new
//!   resourceVersion), one that starts matching as `ADDED`.
//! - Selectors: `labelSelector` (`=`, `==`, `!=`, `in`, `notin`, exists,
//!   `!`, `>`, `<`); `fieldSelector` (`=`, `==`, `!=`) over the field
//!   labels the real server registers per resource (pods: `metadata.name`,
//!   `metadata.namespace`, `spec.nodeName`, `spec.restartPolicy`,
//!   `spec.schedulerName`, `spec.serviceAccountName`, `spec.hostNetwork`,
//!   `status.phase`, `status.podIP`, `status.nominatedNodeName`).
//! - GET, POST (201; `generateName`; the namespace must exist), PUT
//!   (resourceVersion precondition), PATCH, DELETE (immediate, as with no
//!   kubelet to wait for; `preconditions` honoured). The server sets
//!   `uid`, `creationTimestamp`, `resourceVersion` (one global counter,
//!   bumped by every write) and `generation` (pods, jobs, statefulsets,
//!   deployments; bumped when the
//!   spec changes).
//! - PATCH: `application/merge-patch+json` (RFC 7386);
//!   `application/strategic-merge-patch+json` applied with merge semantics,
//!   which is what the real server does for maps and scalars (metadata,
//!   labels, annotations, Event fields).
//! - `Accept: application/json;as=PartialObjectMetadata[List];g=meta.k8s.io;v=v1`
//!   (kube's metadata API) answers `PartialObjectMetadata[List]`.
//!
//! # What it refuses (with a `Status` body, never by ignoring)
//! - Unknown paths, other resources, subresources (`/status`, `/log`,
//!   `/binding`...): 404. A verb a path does not take, `deletecollection`:
//!   405.
//! - Unsupported field labels: 400 `field label not supported: X`; bad
//!   selector syntax: 400 as the real parser words it.
//! - A strategic merge patch holding a list or a `$` directive (whose
//!   merge-by-key the fake does not implement): 400 naming the path.
//!   `application/json-patch+json`, `application/apply-patch+yaml` and
//!   other body types: 415. `dryRun`: 400. Protobuf or `as=Table`: 406.
//! - Invalid list/watch option combinations: 422, as the real validation.
//!
//! # Test controls (not over HTTP)
//! [`FakeApi`] seeds and changes objects as the controllers would (see
//! [`objects`]), records every request ([`ApiRequest`]: the authorizer's
//! verb, resource, namespace), simulates outages ([`FakeApi::stop`]
//! refuses connections and resets open ones — kube's client retries 503s
//! by itself, so an outage must look like a dead peer), restarts on the
//! same port, ends open watches, expires the next watch with a 410, and
//! compacts the history. A real API server restart is [`FakeApi::stop`],
//! [`FakeApi::compact`], [`FakeApi::restart`]: its watch cache starts at
//! the current resourceVersion, so clients resuming older ones relist.

mod control;
mod eviction;
mod gc;
mod handler;
mod list;
pub mod objects;
mod request;
mod resource;
mod selector;
mod server;
mod status;
mod store;
mod watch;
mod write;

pub use control::{FakeApi, FakeApiBuilder};
pub use gc::Propagation;
pub use request::ApiRequest;
pub use resource::Resource;
pub use status::Status;
