//! Netlink requests with the care rtnetlink leaves to its callers: errno-level
//! errors, "not found" as `None`, and dumps retried when the kernel marks them
//! interrupted (NLM_F_DUMP_INTR: the table changed while it was being read,
//! so the answer may miss or repeat entries). Named after the reference
//! plugins' `pkg/netlinksafe`.

use std::io;

use futures::StreamExt;
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use rtnetlink::{Handle, LinkUnspec};

/// How many times a dump is tried before giving up on a consistent answer.
const DUMP_ATTEMPTS: usize = 5;

/// The errno of a kernel NACK, if `e` is one.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| c.get().abs()),
        _ => None,
    }
}

/// Kernel NACKs become the matching `io::Error` (so `raw_os_error` works);
/// anything else keeps rtnetlink's wording.
pub(crate) fn to_io(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

/// The link called `name`, or `None` if there is none (ENODEV).
pub(crate) async fn link_by_name(handle: &Handle, name: &str) -> io::Result<Option<LinkMessage>> {
    let mut replies = handle.link().get().match_name(name).execute();
    match replies.next().await {
        Some(Ok(link)) => Ok(Some(link)),
        Some(Err(e)) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Some(Err(e)) => Err(to_io(e)),
        None => Ok(None),
    }
}

/// The link with index `index`, or `None` if there is none (ENODEV).
pub(crate) async fn link_by_index(handle: &Handle, index: u32) -> io::Result<Option<LinkMessage>> {
    let mut replies = handle.link().get().match_index(index).execute();
    match replies.next().await {
        Some(Ok(link)) => Ok(Some(link)),
        Some(Err(e)) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Some(Err(e)) => Err(to_io(e)),
        None => Ok(None),
    }
}

/// Deletes the link called `name`. `Ok(false)` if there was none.
pub(crate) async fn delete_link_by_name(handle: &Handle, name: &str) -> io::Result<bool> {
    let request = handle
        .link()
        .del_with_message(LinkUnspec::new_with_name(name).build());
    match request.execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(to_io(e)),
    }
}

/// Deletes link `index`. `Ok(false)` if there was none. By index, not by
/// name, where the name may have passed to another link since it was read
/// (a retired host end's name, taken by a same-key re-ADD).
pub(crate) async fn delete_link_by_index(handle: &Handle, index: u32) -> io::Result<bool> {
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(to_io(e)),
    }
}

/// Sends `request` as a dump and collects the answers, retrying while the
/// kernel flags the dump as interrupted.
pub(crate) async fn dump(
    handle: &Handle,
    request: RouteNetlinkMessage,
) -> io::Result<Vec<RouteNetlinkMessage>> {
    for _ in 0..DUMP_ATTEMPTS {
        let mut message = NetlinkMessage::from(request.clone());
        message.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut replies = handle.clone().request(message).map_err(to_io)?;
        let mut answers = Vec::new();
        let mut interrupted = false;
        while let Some(reply) = replies.next().await {
            interrupted |= reply.header.flags & NLM_F_DUMP_INTR != 0;
            match reply.payload {
                NetlinkPayload::InnerMessage(answer) => answers.push(answer),
                // Newer kernels may end an inconsistent dump with EINTR
                // instead of (or as well as) flagging its messages.
                NetlinkPayload::Error(e) if e.raw_code().abs() == libc::EINTR => interrupted = true,
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                _ => {}
            }
        }
        if !interrupted {
            return Ok(answers);
        }
        tracing::debug!("netlink dump interrupted by a concurrent change; retrying");
    }
    Err(io::Error::new(
        io::ErrorKind::Interrupted,
        format!("netlink dump interrupted {DUMP_ATTEMPTS} times in a row by concurrent changes"),
    ))
}
