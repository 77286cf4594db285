//! The socket and who may use it. The socket is root-only (0600) and every
//! connection's peer credentials are checked, so only root (or ipamd's own
//! user) can allocate or release IPs.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use futures::Stream;
use tokio::net::{UnixListener, UnixStream};
use tracing::warn;

/// Binds the socket: removes a stale one, creates the directory, 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    // Bind under a umask that already denies others, then tighten: no window
    // in which another user could connect.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let l = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let l = l?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Accepted connections whose peer is root or ipamd's own user; others are
/// dropped with a warning.
pub fn authorized(listener: UnixListener) -> impl Stream<Item = std::io::Result<UnixStream>> {
    let me = nix::unistd::geteuid().as_raw();
    futures::stream::unfold(listener, move |l| async move {
        loop {
            match l.accept().await {
                Ok((s, _)) => match s.peer_cred() {
                    Ok(c) if c.uid() == 0 || c.uid() == me => return Some((Ok(s), l)),
                    Ok(c) => {
                        warn!(uid = c.uid(), pid = ?c.pid(), "refused a connection from a non-root peer")
                    }
                    Err(e) => {
                        warn!(error = %e, "refused a connection whose peer credentials are unknown")
                    }
                },
                Err(e) => {
                    // Out of fds and the like: don't spin on accept.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    return Some((Err(e), l));
                }
            }
        }
    })
}
