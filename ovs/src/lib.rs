//! moor's OVSDB client (RFC 7047): bridges and VLAN ports in Open vSwitch's
//! `Open_vSwitch` database, spoken over one JSON-RPC connection to
//! ovsdb-server instead of an `ovs-vsctl` fork per change.
//!
//! ```no_run
//! # async fn f() -> Result<(), moor_ovs::Error> {
//! use moor_ovs::{Endpoint, Options, Ovsdb, PortSpec};
//! let endpoint: Endpoint = "unix:/run/openvswitch/db.sock".parse().unwrap();
//! let ovs = Ovsdb::connect(&endpoint, Options::default()).await?;
//! ovs.ensure_bridge("br-int", Some("netdev")).await?;
//! let port = PortSpec::new("veth1a2b").tag(100).external_id("owner", "moor");
//! ovs.add_port("br-int", &port).await?; // returns once ovs-vswitchd applied it
//! # Ok(()) }
//! ```

mod client;
mod connection;
mod datum;
mod endpoint;
mod error;
mod vswitch;

pub use client::{Options, Ovsdb};
pub use endpoint::{Endpoint, ParseEndpointError};
pub use error::{Error, ErrorKind};
pub use vswitch::{Port, PortSpec};
