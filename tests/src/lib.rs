//! Test harness for moor's end-to-end tests and benchmarks: builds a ToR and a
//! node out of network namespaces, runs the real `ipamd`, `moor` and
//! `ipamctl` binaries against them, and removes everything it made.
//!
//! - [`testbed`]: [`Testbed`] (one ToR + one node + one ipamd) and [`Pod`].
//! - [`cluster`]: several nodes on a real etcd; [`ovs_cluster`]: the same
//!   switched by Open vSwitch with VLANs (issue 4).
//! - [`names`]: Kubernetes-shaped pod names and container ids.
//! - [`bins`]: where the built binaries are.
//! - [`bench`]: what the ADD/DEL benches share (options, statistics, machine facts).
//! - [`capture`]: tcpdump on an interface, the frames it saw as lines.
//!
//! Namespaces, temp dirs, the ipamd and etcd processes, Open vSwitch and the
//! TCP echo are moor-testkit's, shared with the other crates' tests.
//! - [`install_cni`]: runs scripts/install-cni.
//! - [`deploy`]: deploy/'s Kubernetes manifests as Kubernetes types, and the
//!   ClusterRole's grants the e2e tests compare with ipamd's API requests.
//! - [`ipamctl`]: the admin CLI against one ipamd socket.
//! - [`webhook`]: the controller's admission webhook as the API server
//!   calls it (test certificates, HTTPS, AdmissionReview v1, the patch).
//! - [`prometheus`]: deploy/monitoring/'s rules and dashboard, promtool,
//!   ipamd's scrape, and a real Prometheus in a node's netns.
//! - [`podman`]: a private podman 4.3 on the CNI backend.
//! - [`containerd`]: a private containerd 1.6 driven through CRI ([`cri`]),
//!   with moor as its CNI.
//! - [`soak`]: the fault-injecting soak (issue 15): pod workers, a fault
//!   injector and an independent checker on a 3-node cluster.
//! - [`ui`]: `ipamctl ui` and its page's DOM; [`chromium`]: headless
//!   Chromium loading it (screenshots, DOM dumps, a page kept open).

pub mod bench;
pub mod bins;
pub mod capture;
pub mod chromium;
pub mod cluster;
pub mod containerd;
pub mod control_plane;
pub mod cri;
pub mod deploy;
pub mod grpc;
pub mod install_cni;
pub mod ipamctl;
pub mod names;
pub mod ovs_cluster;
pub mod podman;
pub mod prometheus;
pub mod scrape;
pub mod soak;
pub mod testbed;
pub mod ui;
pub mod webhook;

pub use testbed::{CniRun, Counts, Families, Options, Pod, PodAddr, Testbed};
