//! Deleting a pod's host-side veth when ipamd is down. This is the plugin's
//! only netlink: normally ipamd owns the datapath. Deleting the host end of a
//! veth pair removes the pod end with it.
//!
//! The plugin runs in the host netns (the runtime's), so the netlink socket is
//! opened right here; nothing enters the pod's netns.

use std::time::Duration;

use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use tracing::{debug, warn};

/// The kernel's ENODEV: no link of that name.
const ENODEV: i32 = 19;
const NETLINK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Deleted,
    /// Already gone: fine, DEL is idempotent.
    NotFound,
    /// Could not delete (no netlink, no permission, ...). ipamd removes it
    /// when it replays the pending DEL.
    Failed(String),
}

/// Deletes the link `name` in the current netns; never fails the DEL.
pub async fn delete(name: &str) -> Outcome {
    let outcome = try_delete(name).await;
    match &outcome {
        Outcome::Deleted => debug!(link = name, "deleted host veth"),
        Outcome::NotFound => debug!(link = name, "host veth already gone"),
        Outcome::Failed(why) => warn!(link = name, "cannot delete host veth: {why}"),
    }
    outcome
}

async fn try_delete(name: &str) -> Outcome {
    let (conn, handle, _) = match rtnetlink::new_connection() {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(format!("cannot open a netlink socket: {e}")),
    };
    let task = tokio::spawn(conn);
    // By name in one request (the kernel looks IFLA_IFNAME up when the index
    // is 0): no get-then-delete race with ipamd coming back.
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    let result = tokio::time::timeout(
        NETLINK_TIMEOUT,
        handle.link().del_with_message(msg).execute(),
    )
    .await;
    task.abort();
    match result {
        Ok(Ok(())) => Outcome::Deleted,
        Ok(Err(rtnetlink::Error::NetlinkError(e))) if e.raw_code().abs() == ENODEV => {
            Outcome::NotFound
        }
        Ok(Err(rtnetlink::Error::NetlinkError(e))) => Outcome::Failed(e.to_io().to_string()),
        Ok(Err(e)) => Outcome::Failed(e.to_string()),
        Err(_) => Outcome::Failed(format!(
            "no netlink answer within {} ms",
            NETLINK_TIMEOUT.as_millis()
        )),
    }
}
