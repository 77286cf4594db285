//! ipamd: the per-node IPAM daemon of moor, as a library so tests and tools
//! can drive its parts. Layers point one way, bottom first (docs/architecture.md
//! draws them; the `layering` test keeps them so):
//!
//! - `clock`, `core`: the wall clock, and the pure allocation logic;
//! - `metrics`: what ipamd counts for Prometheus, bumped in every layer;
//! - `datapath`: wires pods into the network (netlink, OVS), on its own;
//! - `store`: where state lives (redb, etcd, memory) and the CAS retry;
//! - `kubernetes`: the API server's pods, namespaces, node and events;
//! - `audit`: cross-checks the store's records;
//! - `ipam`: the allocation service over a store;
//! - `node`: the CNI operations of one node (ipam + datapath + mirror);
//! - `controller`: the cluster-wide control loops, one leader at a time
//!   (a Lease), beside `node` (`ipamd --role controller|both`);
//! - `api`: the gRPC services, the only layer that knows the wire types.

pub mod api;
pub mod audit;
pub mod clock;
pub mod controller;
pub mod core;
pub mod datapath;
pub mod error;
pub mod ipam;
pub mod kubernetes;
pub mod metrics;
pub mod node;
pub mod store;

#[cfg(test)]
mod layering;
