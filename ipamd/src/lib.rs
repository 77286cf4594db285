//! ipamd: the per-node IPAM daemon of moor, as a library so tests and tools can
//! drive its parts. `core` is the pure allocation logic; `store` keeps state;
//! `ipam` joins them; `datapath` wires pods into the network; `server` serves
//! the gRPC API on a unix socket.

pub mod audit;
pub mod cni;
pub mod core;
pub mod datapath;
pub mod error;
pub mod ipam;
pub mod mirror;
pub mod registry;
pub mod server;
pub mod store;
pub mod sweep;
