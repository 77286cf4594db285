//! The page's data, read from ipamd's Admin API over its unix socket, one
//! fresh connection per request: an ipamd that restarts (or was down when
//! `ipamctl ui` started) is simply there again on the next refresh, and
//! nothing is cached between requests.

use std::fmt;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use moor_proto::v1::admin_client::AdminClient;
use moor_proto::v1::{ListIpsRequest, ListNodesRequest, ListPoolsRequest, ListTorsRequest};
use tonic::transport::Channel;
use tonic::Code;

use crate::client::{self, ServerError, Unreachable};
use crate::output::{IpView, PoolView};
use crate::ui::views::{self, Overview};

/// ipamd, at its socket.
#[derive(Debug, Clone)]
pub struct Ipamd {
    pub socket: PathBuf,
}

/// Why ipamd's data could not be had.
#[derive(Debug)]
pub enum FetchError {
    Unreachable(Unreachable),
    /// ipamd answered with an error.
    Refused(tonic::Status),
}

impl FetchError {
    /// ipamd said the thing asked for does not exist (a pool deleted while
    /// the page shows it): the page's own 404, not a failure of ipamd.
    pub fn is_not_found(&self) -> bool {
        matches!(self, FetchError::Refused(s) if s.code() == Code::NotFound)
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Unreachable(e) => e.fmt(f),
            FetchError::Refused(s) if s.code() == Code::Unimplemented => write!(
                f,
                "this ipamd is older than ipamctl: it cannot stream pools or IPs; \
                 use the ipamctl of ipamd's release ({})",
                ServerError(s.clone())
            ),
            FetchError::Refused(s) => ServerError(s.clone()).fmt(f),
        }
    }
}

impl std::error::Error for FetchError {}

impl From<tonic::Status> for FetchError {
    fn from(s: tonic::Status) -> Self {
        FetchError::Refused(s)
    }
}

impl Ipamd {
    async fn admin(&self) -> Result<AdminClient<Channel>, FetchError> {
        let channel = client::channel(&self.socket)
            .await
            .map_err(FetchError::Unreachable)?;
        Ok(client::admin(channel))
    }

    /// Every pool, by name.
    pub async fn pools(&self) -> Result<Vec<PoolView>, FetchError> {
        pools_of(&mut self.admin().await?).await
    }

    /// Every ToR with its pools' counts, and every node.
    pub async fn overview(&self) -> Result<Overview, FetchError> {
        let mut admin = self.admin().await?;
        let tors = admin.list_tors(ListTorsRequest {}).await?.into_inner().tors;
        let pools = pools_of(&mut admin).await?;
        let nodes = admin
            .list_nodes(ListNodesRequest {})
            .await?
            .into_inner()
            .nodes;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(views::overview(&tors, &pools, &nodes, now))
    }

    /// Every IP of one pool, by address.
    pub async fn ips(&self, pool: &str) -> Result<Vec<IpView>, FetchError> {
        let mut admin = self.admin().await?;
        let request = ListIpsRequest {
            pool: pool.to_string(),
        };
        let mut replies = admin.stream_ips(request).await?.into_inner();
        let mut ips = Vec::new();
        while let Some(m) = replies.message().await? {
            ips.extend(m.ips.iter().map(IpView::from));
        }
        Ok(ips)
    }
}

async fn pools_of(admin: &mut AdminClient<Channel>) -> Result<Vec<PoolView>, FetchError> {
    let mut replies = admin.stream_pools(ListPoolsRequest {}).await?.into_inner();
    let mut pools = Vec::new();
    while let Some(m) = replies.message().await? {
        pools.extend(m.pools.iter().map(PoolView::from));
    }
    // ipamd sends them by name already; the page's order must not depend
    // on it.
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(pools)
}
