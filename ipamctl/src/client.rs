//! The gRPC connection to ipamd's unix socket, and the errors an operator
//! sees when it fails.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use moor_proto::v1::admin_client::AdminClient;
use tonic::transport::{Channel, Endpoint};

/// A connect to a local socket that takes this long means ipamd is wedged.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Whole-call limit, so a stuck ipamd does not hang a script forever.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// `ip list` over every pool of a big cluster exceeds tonic's 4 MiB default.
const MAX_REPLY: usize = 256 * 1024 * 1024;

/// A watch's HTTP/2 pings: a peer that stops answering (a frozen ipamd, a
/// half-open connection) is given up after `WATCH_PING + WATCH_PING_TIMEOUT`
/// and the watch reconnects, instead of waiting for changes forever.
const WATCH_PING: Duration = Duration::from_secs(10);
const WATCH_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// A channel to ipamd's socket for one-shot calls, of any of its services.
pub async fn channel(socket: &Path) -> Result<Channel, Unreachable> {
    // The URI is required by the API and ignored: the connector dials the
    // unix socket whatever it says.
    let endpoint = Endpoint::from_static("http://[::]:50051")
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT);
    connect_to(socket, endpoint).await
}

/// The Admin service over `channel`.
pub fn admin(channel: Channel) -> AdminClient<Channel> {
    AdminClient::new(channel).max_decoding_message_size(MAX_REPLY)
}

/// Connects for a stream that lasts as long as ipamd runs (`pool export
/// --watch`): no whole-call limit, and pings to notice a dead peer.
pub async fn connect_watch(socket: &Path) -> Result<AdminClient<Channel>, Unreachable> {
    let endpoint = Endpoint::from_static("http://[::]:50051")
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(WATCH_PING)
        .keep_alive_timeout(WATCH_PING_TIMEOUT)
        .keep_alive_while_idle(true);
    Ok(admin(connect_to(socket, endpoint).await?))
}

async fn connect_to(socket: &Path, endpoint: Endpoint) -> Result<Channel, Unreachable> {
    let path = socket.to_path_buf();
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let p = path.clone();
            async move {
                Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(p).await?,
                ))
            }
        }))
        .await
        .map_err(|e| Unreachable::new(socket, &e))?;
    Ok(channel)
}

/// ipamd could not be reached at all.
#[derive(Debug)]
pub struct Unreachable {
    pub socket: PathBuf,
    /// The underlying OS error, when there is one.
    pub kind: Option<io::ErrorKind>,
    pub detail: String,
}

impl Unreachable {
    fn new(socket: &Path, err: &(dyn std::error::Error + 'static)) -> Self {
        // tonic wraps the connector's io::Error a few levels deep.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
        let mut io_error = None;
        while let Some(e) = source {
            if let Some(io) = e.downcast_ref::<io::Error>() {
                io_error = Some(io);
                break;
            }
            source = e.source();
        }
        Self {
            socket: socket.to_path_buf(),
            kind: io_error.map(io::Error::kind),
            detail: io_error.map_or_else(|| chain(err), ToString::to_string),
        }
    }
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let socket = self.socket.display();
        match self.kind {
            Some(io::ErrorKind::PermissionDenied) => write!(
                f,
                "cannot reach ipamd at {socket}: permission denied; \
                 run ipamctl as root (or a user allowed to open the socket)"
            ),
            Some(io::ErrorKind::NotFound) => write!(
                f,
                "cannot reach ipamd at {socket}: no such socket; ipamd is not running \
                 or the path is wrong (pass --socket PATH or set MOOR_SOCKET)"
            ),
            Some(io::ErrorKind::ConnectionRefused) => write!(
                f,
                "cannot reach ipamd at {socket}: connection refused; ipamd is not running \
                 (a stale socket file is left) or the path is wrong \
                 (pass --socket PATH or set MOOR_SOCKET)"
            ),
            _ => write!(
                f,
                "cannot reach ipamd at {socket}: {}; ipamd is not running or the path \
                 is wrong (pass --socket PATH or set MOOR_SOCKET)",
                self.detail
            ),
        }
    }
}

impl std::error::Error for Unreachable {}

/// An error ipamd answered with. Its message is written for operators and
/// printed as is.
#[derive(Debug)]
pub struct ServerError(pub tonic::Status);

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.message().is_empty() {
            // e.g. Unimplemented from an ipamd older than this ipamctl.
            write!(f, "ipamd: {}", self.0.code())
        } else {
            f.write_str(self.0.message())
        }
    }
}

impl std::error::Error for ServerError {}

impl From<tonic::Status> for ServerError {
    fn from(s: tonic::Status) -> Self {
        Self(s)
    }
}

fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(e) = source {
        parts.push(e.to_string());
        source = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn missing_socket_is_named_with_the_fix() {
        let dir = std::env::temp_dir().join(format!("ipamctl-client-{}", std::process::id()));
        let socket = dir.join("nothing.sock");
        let err = runtime().block_on(channel(&socket)).unwrap_err();
        assert_eq!(err.kind, Some(io::ErrorKind::NotFound));
        let text = err.to_string();
        assert!(text.contains(&socket.display().to_string()), "{text}");
        assert!(text.contains("ipamd is not running"), "{text}");
        assert!(text.contains("--socket"), "{text}");
    }

    #[test]
    fn stale_socket_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("ipamctl-stale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("ipamd.sock");
        let _ = std::fs::remove_file(&socket);
        // Bound then closed: the file stays, nobody listens.
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let err = runtime().block_on(channel(&socket)).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(err.kind, Some(io::ErrorKind::ConnectionRefused));
        assert!(err.to_string().contains("connection refused"), "{err}");
    }

    #[test]
    fn server_message_is_kept_as_is() {
        let e = ServerError(tonic::Status::not_found("pool web not found"));
        assert_eq!(e.to_string(), "pool web not found");
        let e = ServerError(tonic::Status::unimplemented(""));
        assert!(e.to_string().starts_with("ipamd: "), "{e}");
    }
}
