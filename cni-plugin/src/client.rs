//! gRPC to ipamd over its unix socket, and what an ipamd failure means in CNI
//! codes.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use moor_proto::v1::cni_client::CniClient;
use moor_proto::v1::{
    AddReply, AddRequest, CheckRequest, DelReply, DelRequest, GcReply, GcRequest, StatusReply,
    StatusRequest,
};
use tokio::net::UnixStream;
use tonic::codegen::http;
use tonic::{Code, Status};

use crate::error::{code, CniError};

/// Why a call to ipamd did not give an answer.
#[derive(Debug)]
pub enum CallError {
    /// ipamd could not be reached or the connection broke: it is not running,
    /// its socket is missing, or it died mid-request. The string says which
    /// socket and why.
    Unreachable(String),
    /// ipamd answered with an error, or did not answer in time.
    Failed(CniError),
}

impl CallError {
    /// The CNI error, with `unreachable_code` when ipamd could not be reached
    /// (11 "try again later" for ADD/CHECK/GC, 50 for STATUS).
    pub fn into_cni(self, unreachable_code: u32) -> CniError {
        match self {
            Self::Unreachable(why) => {
                let msg = if unreachable_code == code::TRY_AGAIN_LATER {
                    "moor: ipamd is not reachable, try again later"
                } else {
                    "moor: ipamd is not available"
                };
                CniError::new(unreachable_code, msg, why)
            }
            Self::Failed(e) => e,
        }
    }
}

/// A connection to ipamd's `Cni` service.
pub struct Ipamd {
    client: CniClient<Http2>,
    socket: PathBuf,
    timeout: Duration,
}

impl Ipamd {
    /// Connects within `connect_timeout`; each later request may take up to
    /// `timeout`.
    pub async fn connect(
        socket: &Path,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Self, CallError> {
        // The timeout covers the HTTP/2 handshake too: a daemon that hangs
        // with its accept backlog still open would stall it.
        let connected = tokio::time::timeout(connect_timeout, Http2::connect(socket)).await;
        let http2 = match connected {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => return Err(unreachable(socket, &error_chain(&e))),
            Err(_) => {
                return Err(unreachable(
                    socket,
                    &format!("no connection within {} ms", connect_timeout.as_millis()),
                ))
            }
        };
        crate::timing::mark(crate::timing::Stamp::Connected);
        Ok(Self {
            client: CniClient::new(http2),
            socket: socket.to_path_buf(),
            timeout,
        })
    }

    pub async fn add(&self, req: AddRequest) -> Result<AddReply, CallError> {
        let mut c = self.client.clone();
        self.finish("ADD", c.add(self.request(req))).await
    }

    /// NotFound from ipamd is success: DEL must not fail a teardown because
    /// the attachment is already gone (spec: DEL is best-effort, repeatable).
    pub async fn del(&self, req: DelRequest) -> Result<DelReply, CallError> {
        let mut c = self.client.clone();
        let req = self.request(req);
        let call = async move {
            match c.del(req).await {
                Err(s) if s.code() == Code::NotFound => {
                    tracing::debug!("ipamd has no such attachment: {}", s.message());
                    Ok(tonic::Response::new(DelReply::default()))
                }
                r => r,
            }
        };
        self.finish("DEL", call).await
    }

    pub async fn check(&self, req: CheckRequest) -> Result<(), CallError> {
        let mut c = self.client.clone();
        self.finish("CHECK", c.check(self.request(req)))
            .await
            .map(|_| ())
    }

    pub async fn status(&self) -> Result<StatusReply, CallError> {
        let mut c = self.client.clone();
        self.finish("STATUS", c.status(self.request(StatusRequest {})))
            .await
    }

    pub async fn gc(&self, req: GcRequest) -> Result<GcReply, CallError> {
        let mut c = self.client.clone();
        self.finish("GC", c.gc(self.request(req))).await
    }

    /// Tells ipamd the deadline (grpc-timeout) so it can stop work nobody
    /// waits for.
    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(self.timeout);
        req
    }

    async fn finish<T>(
        &self,
        op: &str,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, CallError> {
        let answer = tokio::time::timeout(self.timeout, call).await;
        crate::timing::mark(crate::timing::Stamp::Replied);
        match answer {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => Err(from_status(&status, op, &self.socket)),
            Err(_) => Err(CallError::Failed(CniError::new(
                code::TRY_AGAIN_LATER,
                "moor: ipamd did not answer in time, try again later",
                format!(
                    "{op} to ipamd at {} got no answer within {} ms (config timeoutMs)",
                    self.socket.display(),
                    self.timeout.as_millis()
                ),
            ))),
        }
    }
}

/// One HTTP/2 connection to ipamd's socket, as the gRPC client's transport.
///
/// Not tonic's `Channel`: the plugin makes one call and exits, and the
/// Channel's machinery for long-lived clients (a buffer task between the
/// caller and the connection, reconnects, load balancing) is a task hop
/// each way and set-up on every pod event.
#[derive(Clone)]
pub struct Http2(SendRequest<tonic::body::Body>);

impl Http2 {
    async fn connect(socket: &Path) -> io::Result<Self> {
        let stream = UnixStream::connect(socket).await?;
        let (send, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(io::Error::other)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection to ipamd: {e}");
            }
        });
        Ok(Http2(send))
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Http2 {
    type Response = http::Response<hyper::body::Incoming>;
    /// Every failure here is the connection's (ipamd's own errors come as
    /// gRPC statuses in a response): an io::Error, which `from_status`
    /// reads as "ipamd unreachable".
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, io::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        self.0.poll_ready(cx).map_err(broken)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        // HTTP/2 wants a scheme and an authority; the socket is the
        // address, so the authority is a placeholder.
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        match http::Uri::builder()
            .scheme("http")
            .authority("ipamd")
            .path_and_query(path)
            .build()
        {
            Ok(uri) => *req.uri_mut() = uri,
            Err(e) => return Box::pin(std::future::ready(Err(io::Error::other(e)))),
        }
        let sent = self.0.send_request(req);
        Box::pin(async move { sent.await.map_err(broken) })
    }
}

fn broken(e: hyper::Error) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, e)
}

/// ipamd's error as a CNI error. ipamd says which CNI code it means in the
/// `moor-cni-code` metadata; without it the gRPC code decides. `details`
/// carries ipamd's message whole: it already names pool, ToR and counts.
pub fn from_status(status: &Status, op: &str, socket: &Path) -> CallError {
    let wanted = status
        .metadata()
        .get(moor_proto::CNI_CODE_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u32>().ok());
    let cni_code = match (wanted, status.code()) {
        (Some(c), _) => c,
        // Without ipamd's own code, Unavailable is the transport's: the
        // connection broke or the daemon went away mid-request.
        (None, Code::Unavailable) => {
            return CallError::Unreachable(format!(
                "{op} to ipamd at {} failed: {}; ipamd is not running or not reachable",
                socket.display(),
                status.message()
            ))
        }
        // A daemon killed mid-request breaks the HTTP/2 connection: tonic
        // reports that as Unknown "transport error" with the broken
        // connection as its source (seen in the kill -9 e2e test).
        (None, _) if broke_in_transport(status) => {
            return CallError::Unreachable(format!(
                "{op} to ipamd at {} failed: {}; ipamd is not running or died mid-request",
                socket.display(),
                error_chain(status)
            ))
        }
        (None, Code::DeadlineExceeded | Code::Aborted) => code::TRY_AGAIN_LATER,
        (None, Code::InvalidArgument) => code::INVALID_CONFIG,
        (
            None,
            Code::FailedPrecondition
            | Code::ResourceExhausted
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::OutOfRange,
        ) => code::REFUSED,
        (None, Code::Unimplemented) => code::VERSION_SKEW,
        (None, _) => code::IPAMD_FAILED,
    };
    let details = if status.message().is_empty() {
        format!(
            "ipamd answered {op} with {:?} and no message",
            status.code()
        )
    } else {
        status.message().to_string()
    };
    CallError::Failed(CniError::new(cni_code, short_msg(cni_code), details))
}

/// Did the call fail in the connection rather than in ipamd's handler?
fn broke_in_transport(status: &Status) -> bool {
    let mut cur = std::error::Error::source(status);
    while let Some(e) = cur {
        if e.is::<tonic::transport::Error>() || e.is::<io::Error>() || e.is::<hyper::Error>() {
            return true;
        }
        cur = e.source();
    }
    false
}

fn short_msg(cni_code: u32) -> &'static str {
    match cni_code {
        code::INCOMPATIBLE_VERSION => "moor: incompatible CNI version",
        code::UNSUPPORTED_FIELD => "moor: unsupported field",
        3 => "moor: container unknown",
        code::INVALID_ENV => "moor: invalid environment",
        code::IO_FAILURE => "moor: I/O failure",
        code::DECODING_FAILURE => "moor: cannot decode input",
        code::INVALID_CONFIG => "moor: invalid request",
        code::TRY_AGAIN_LATER => "moor: try again later",
        code::NOT_AVAILABLE | 51 => "moor: ipamd is not available",
        code::POOL_FULL => "moor: pool full",
        code::WRONG_TOR => "moor: pod is on the wrong ToR for its IP",
        code::NO_POOL => "moor: no pool for this pod",
        code::TOR_UNDEFINED => "moor: this node's ToR is not defined",
        code::DATAPATH => "moor: wiring the interface failed",
        code::OTHER_POOL => "moor: pod keeps an IP of another pool",
        code::NOT_ATTACHED => "moor: not attached on this node",
        code::REFUSED => "moor: allocation refused",
        code::VERSION_SKEW => "moor: ipamd does not implement this request (version skew)",
        code::IPAMD_FAILED => "moor: ipamd failed",
        _ => "moor: ipamd error",
    }
}

fn unreachable(socket: &Path, why: &str) -> CallError {
    CallError::Unreachable(format!(
        "cannot connect to ipamd at {}: {why}; ipamd is not running or not reachable",
        socket.display()
    ))
}

/// "transport error: ... : No such file or directory (os error 2)", without
/// repeating a cause its wrapper already printed.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    fn status(code: Code, msg: &str, cni: Option<&'static str>) -> Status {
        let mut s = Status::new(code, msg);
        if let Some(c) = cni {
            s.metadata_mut()
                .insert(moor_proto::CNI_CODE_KEY, MetadataValue::from_static(c));
        }
        s
    }

    fn failed(s: &Status) -> CniError {
        match from_status(s, "ADD", Path::new("/run/moor/ipamd.sock")) {
            CallError::Failed(e) => e,
            CallError::Unreachable(w) => panic!("unexpectedly unreachable: {w}"),
        }
    }

    #[test]
    fn ipamd_code_in_metadata_wins() {
        let e = failed(&status(
            Code::FailedPrecondition,
            "pod db/mysql-0 is bound to 10.1.0.17 on ToR tor-a but node n3 is on ToR tor-b",
            Some("107"),
        ));
        assert_eq!(e.code, 107);
        assert!(e.details.contains("tor-b"));
        let e = failed(&status(Code::Unavailable, "store unavailable", Some("11")));
        assert_eq!(e.code, 11);
        assert_eq!(e.details, "store unavailable");
    }

    #[test]
    fn grpc_codes_map_to_cni_codes() {
        let cases = [
            (Code::InvalidArgument, 7),
            (Code::ResourceExhausted, 110),
            (Code::FailedPrecondition, 110),
            (Code::NotFound, 110),
            (Code::AlreadyExists, 110),
            (Code::DeadlineExceeded, 11),
            (Code::Aborted, 11),
            (Code::Unimplemented, 111),
            (Code::Internal, 112),
            (Code::Unknown, 112),
        ];
        for (grpc, want) in cases {
            let e = failed(&status(
                grpc,
                "pool mysql: 30 of 30 IPs in use on ToR tor-a",
                None,
            ));
            assert_eq!(e.code, want, "{grpc:?}");
            assert!(e.msg.len() < 70, "{e}");
            assert_eq!(e.details, "pool mysql: 30 of 30 IPs in use on ToR tor-a");
        }
        // Garbage in the metadata falls back to the gRPC code.
        assert_eq!(
            failed(&status(Code::InvalidArgument, "x", Some("seven"))).code,
            7
        );
    }

    #[test]
    fn transport_unavailable_is_unreachable_and_names_the_socket() {
        let s = status(Code::Unavailable, "connection reset", None);
        match from_status(&s, "DEL", Path::new("/run/x.sock")) {
            CallError::Unreachable(w) => {
                assert!(
                    w.contains("/run/x.sock") && w.contains("not running"),
                    "{w}"
                );
                let e = CallError::Unreachable(w).into_cni(code::NOT_AVAILABLE);
                assert_eq!(e.code, 50);
            }
            CallError::Failed(e) => panic!("{e}"),
        }
    }

    #[test]
    fn broken_connection_mid_request_is_unreachable() {
        let mut s = status(Code::Unknown, "transport error", None);
        s.set_source(std::sync::Arc::new(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        )));
        match from_status(&s, "ADD", Path::new("/run/x.sock")) {
            CallError::Unreachable(w) => {
                assert!(w.contains("/run/x.sock") && w.contains("reset"), "{w}");
                assert_eq!(CallError::Unreachable(w).into_cni(11).code, 11);
            }
            CallError::Failed(e) => panic!("{e}"),
        }
        // Unknown without a transport cause stays ipamd's failure.
        assert_eq!(failed(&status(Code::Unknown, "boom", None)).code, 112);
    }

    #[test]
    fn connect_failure_is_unreachable() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let sock = std::env::temp_dir().join(format!("moor-no-such-{}.sock", std::process::id()));
        let r = rt.block_on(Ipamd::connect(
            &sock,
            Duration::from_secs(1),
            Duration::from_secs(1),
        ));
        match r {
            Err(CallError::Unreachable(w)) => {
                assert!(w.contains(&sock.display().to_string()), "{w}");
                assert!(w.contains("No such file"), "{w}");
            }
            Err(CallError::Failed(e)) => panic!("{e}"),
            Ok(_) => panic!("connected to nothing"),
        }
    }
}
