//! moor end to end: the real `moor`, `ipamd` and `ipamctl` binaries on a node
//! and a ToR made of network namespaces (see `moor_e2e::Testbed`). Every test
//! builds its own testbed, so they run in parallel threads of this one
//! process. Needs root; fails (never skips) without it.
//!
//! One module per "Done when" item of issue 2:
//! 1. `protocol`: ADD/DEL/CHECK/VERSION/STATUS/GC per cniVersion, results
//!    against the spec's result shape.
//! 2. `datapath`: pods reach the gateway and each other; StatefulSet pods keep
//!    IP and MAC; Deployment pods give their IP back.
//! 3. `concurrency`: 200 ADD/DEL pairs from 16 parallel invocations.
//! 4. `crash`: kill -9 of ipamd in the middle of a burst of ADDs.
//! 5. `daemon_down`: DEL while ipamd is stopped; ADD while it is down.
//! 6. `bad_input`: a table of bad config/env/CLI input, none changing state.
//!
//! `controller`: issue 11's two controllers sharing a Lease; `gc`: its
//! garbage collection by Kubernetes truth and eviction by IP;
//! `pool_lifecycle`: its pools that follow their workloads; `webhook`: its
//! admission webhook over HTTPS. `listing`: `ip list` of thousands of IPs
//! streamed. `pool_steps`: issue 12's pools too big for one etcd
//! transaction, and ipamd killed between their steps. `ui`: issue 14's
//! pool page (`ipamctl ui`) loaded in headless Chromium. `monitoring`:
//! issue 14's alert rules and dashboard, and a real Prometheus scraping
//! ipamd. `dual_stack`: issue 13's dual-stack and IPv6-only pods on one
//! node; `ovs_ipv6`: its moved IPv6 and dual-stack pods on the OVS testbed,
//! and the control that shows the unsolicited NA is needed. `backup`:
//! issue 15's backup on etcd restored into a fresh store, and on redb.
//! `upgrade`: issue 15's upgrade from the previous release
//! (`tests/upgrade-from`, built by `scripts/build-upgrade-from`) with live
//! pods, on redb and as a rolling update on etcd.
//! `soak`: issue 15's 2-minute fault-injecting soak (`moor_e2e::soak`) and
//! its checker catching a planted IP live twice.
//! `corrupt`: issue 15's records that do not decode, one of each kind, on
//! redb and etcd: only what needs them fails, naming the key.

#[path = "e2e/audit.rs"]
mod audit;
#[path = "e2e/backup.rs"]
mod backup;
#[path = "e2e/bad_input.rs"]
mod bad_input;
#[path = "e2e/cluster.rs"]
mod cluster;
#[path = "e2e/cluster_cli.rs"]
mod cluster_cli;
#[path = "e2e/concurrency.rs"]
mod concurrency;
#[path = "e2e/controller.rs"]
mod controller;
#[path = "e2e/corrupt.rs"]
mod corrupt;
#[path = "e2e/crash.rs"]
mod crash;
#[path = "e2e/dad.rs"]
mod dad;
#[path = "e2e/daemon_down.rs"]
mod daemon_down;
#[path = "e2e/datapath.rs"]
mod datapath;
#[path = "e2e/dual_stack.rs"]
mod dual_stack;
#[path = "e2e/field_rules.rs"]
mod field_rules;
#[path = "e2e/gc.rs"]
mod gc;
#[path = "e2e/install_cni.rs"]
mod install_cni;
#[path = "e2e/listing.rs"]
mod listing;
#[path = "e2e/metrics.rs"]
mod metrics;
#[path = "e2e/monitoring.rs"]
mod monitoring;
#[path = "e2e/ovs_cluster.rs"]
mod ovs_cluster;
#[path = "e2e/ovs_ipv6.rs"]
mod ovs_ipv6;
#[path = "e2e/pool_lifecycle.rs"]
mod pool_lifecycle;
#[path = "e2e/pool_steps.rs"]
mod pool_steps;
#[path = "e2e/protocol.rs"]
mod protocol;
#[path = "e2e/soak.rs"]
mod soak;
#[path = "e2e/socket.rs"]
mod socket;
#[path = "e2e/support.rs"]
mod support;
#[path = "e2e/sweep.rs"]
mod sweep;
#[path = "e2e/ui.rs"]
mod ui;
#[path = "e2e/upgrade.rs"]
mod upgrade;
#[path = "e2e/webhook.rs"]
mod webhook;
