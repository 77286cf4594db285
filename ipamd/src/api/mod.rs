//! The gRPC API on a unix socket: the `Cni` service for the plugin and the
//! `Admin` service for ipamctl; with the controller role, the `Controller`
//! service (`ipamctl gc`). This layer owns every wire type (`v1::`):
//! it checks and translates requests into domain calls on `Node` and `Ipam`,
//! and domain results and errors into replies. Nothing below it sees gRPC.

mod admin;
mod backup;
mod cni;
mod controller;
mod convert;
pub mod metrics;
mod socket;
mod status;

use std::sync::Arc;

use moor_proto::v1;
use tokio::net::UnixListener;

use crate::controller::Collector;
use crate::node::Node;

pub use admin::AdminApi;
pub use backup::Restoring;
pub use cni::CniApi;
pub use controller::ControllerApi;
pub use socket::{authorized, bind};
pub use status::status;

/// Serves the node's services on `listener`, and the controller's with
/// `collector` (`--role both`), until `shutdown` completes.
pub async fn serve(
    node: Arc<Node>,
    collector: Option<Arc<Collector>>,
    listener: UnixListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let restoring = backup::Restoring::default();
    tonic::transport::Server::builder()
        .add_service(v1::cni_server::CniServer::new(CniApi(
            node.clone(),
            restoring.clone(),
        )))
        .add_service(v1::admin_server::AdminServer::new(AdminApi(
            node, restoring,
        )))
        .add_optional_service(
            collector.map(|c| v1::controller_server::ControllerServer::new(ControllerApi(c))),
        )
        .serve_with_incoming_shutdown(authorized(listener), shutdown)
        .await
}

/// Serves only the controller's service (`--role controller`).
pub async fn serve_controller(
    collector: Arc<Collector>,
    listener: UnixListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(v1::controller_server::ControllerServer::new(ControllerApi(
            collector,
        )))
        .serve_with_incoming_shutdown(authorized(listener), shutdown)
        .await
}
