//! `pool export NAME --watch`: the whitelist feed.
//!
//! ipamd's `WatchPool` stream starts with a snapshot of the pool's IP set and
//! then sends every change; after a store error or compaction it sends a new
//! snapshot. This side prints each message as soon as it arrives (flushed),
//! and when the stream breaks or ipamd cannot be reached (a restart, an
//! upgrade) it reconnects with backoff, forever: the first message of the new
//! stream is again a snapshot, so a consumer that replaces its set on every
//! snapshot never misses a change.
//!
//! It ends only when the pool is deleted (exit 0, after `! deleted`), when
//! the consumer goes away (stdout closed: exit 0), or on a refusal that
//! retrying cannot cure: the pool does not exist when the watch starts, bad
//! input, an ipamd without WatchPool (exit 1).

use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use moor_proto::v1::pool_change::Kind;
use moor_proto::v1::{PoolChange, WatchPoolRequest};
use tonic::{Code, Status};

use crate::client::{self, ServerError};
use crate::output::{self, UnknownKind, WatchFormat};

/// Reconnect pauses: `FIRST`, doubling, at most `MAX`; back to `FIRST` once
/// a snapshot arrived.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(200);
    pub const MAX: Duration = Duration::from_secs(5);

    pub fn new() -> Self {
        Self { next: Self::FIRST }
    }

    /// The pause before the next attempt.
    pub fn pause(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        now
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// What to do when ipamd answers a watch with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Try again after a pause: ipamd restarting, a store outage, a broken
    /// connection.
    Retry,
    /// Give up with ipamd's message (exit 1).
    Fail,
    /// The pool is gone: it was deleted while the watch was reconnecting.
    Deleted,
}

/// `synced`: a snapshot was printed before, so the pool existed.
pub fn on_error(status: &Status, synced: bool) -> OnError {
    match status.code() {
        Code::NotFound if synced => OnError::Deleted,
        Code::NotFound
        | Code::InvalidArgument
        | Code::Unimplemented
        | Code::PermissionDenied
        | Code::Unauthenticated => OnError::Fail,
        _ => OnError::Retry,
    }
}

/// How a watch ended, when it ended well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// `! deleted` was printed.
    Deleted,
    /// Whoever read stdout went away.
    ConsumerGone,
}

/// Why one connection's stream ended.
enum Broke {
    /// Nothing to watch any more, or nobody to tell.
    Done(Done),
    /// ipamd answered with an error.
    Status(Status),
    /// ipamd could not be reached, or it closed the stream.
    Lost(String),
    Fatal(anyhow::Error),
}

/// Follows `pool` until it is deleted, printing to `out` and one line per
/// reconnect to `note`.
pub async fn follow(
    socket: &Path,
    pool: &str,
    format: WatchFormat,
    out: &mut dyn Write,
    note: &mut dyn FnMut(&str),
) -> anyhow::Result<Done> {
    let mut backoff = Backoff::new();
    let mut synced = false;
    loop {
        let why = match stream_once(socket, pool, format, out, &mut synced, &mut backoff).await {
            Broke::Done(done) => return Ok(done),
            Broke::Fatal(e) => return Err(e),
            Broke::Lost(why) => why,
            Broke::Status(status) => match on_error(&status, synced) {
                OnError::Fail => return Err(ServerError(status).into()),
                OnError::Deleted => {
                    note(&format!(
                        "ipamctl: pool {pool} was deleted while the watch was reconnecting ({})",
                        ServerError(status)
                    ));
                    let gone = PoolChange {
                        kind: Kind::Deleted.into(),
                        pool: pool.to_string(),
                        ips: vec![],
                        revision: 0,
                    };
                    return match emit(out, &gone, format) {
                        Ok(()) => Ok(Done::Deleted),
                        Err(b) => end(b),
                    };
                }
                OnError::Retry => ServerError(status).to_string(),
            },
        };
        let pause = backoff.pause();
        note(&format!(
            "ipamctl: watch of pool {pool}: {why}; reconnecting in {pause:?}"
        ));
        tokio::time::sleep(pause).await;
    }
}

fn end(b: Broke) -> anyhow::Result<Done> {
    match b {
        Broke::Done(d) => Ok(d),
        Broke::Fatal(e) => Err(e),
        Broke::Status(s) => Err(ServerError(s).into()),
        Broke::Lost(why) => Err(anyhow::anyhow!(why)),
    }
}

/// One connection: prints its messages until the stream ends.
async fn stream_once(
    socket: &Path,
    pool: &str,
    format: WatchFormat,
    out: &mut dyn Write,
    synced: &mut bool,
    backoff: &mut Backoff,
) -> Broke {
    let mut client = match client::connect_watch(socket).await {
        Ok(c) => c,
        // Not running, or restarting (ipamd removes its socket on exit).
        // Permission denied is the one that waiting does not cure.
        Err(e) if e.kind == Some(io::ErrorKind::PermissionDenied) => return Broke::Fatal(e.into()),
        Err(e) => return Broke::Lost(e.to_string()),
    };
    let request = WatchPoolRequest {
        name: pool.to_string(),
    };
    let mut stream = match client.watch_pool(request).await {
        Ok(r) => r.into_inner(),
        Err(s) => return Broke::Status(s),
    };
    loop {
        let change = match stream.message().await {
            Ok(Some(c)) => c,
            Ok(None) => return Broke::Lost("ipamd ended the stream".into()),
            Err(s) => return Broke::Status(s),
        };
        if let Err(b) = emit(out, &change, format) {
            return b;
        }
        match Kind::try_from(change.kind) {
            Ok(Kind::Snapshot) => {
                *synced = true;
                backoff.reset();
            }
            Ok(Kind::Deleted) => return Broke::Done(Done::Deleted),
            _ => {}
        }
    }
}

/// Prints one message and flushes it, so a syncer sees it at once.
fn emit(out: &mut dyn Write, change: &PoolChange, format: WatchFormat) -> Result<(), Broke> {
    let text =
        output::pool_change(change, format).map_err(|e: UnknownKind| Broke::Fatal(e.into()))?;
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(Broke::Done(Done::ConsumerGone)),
        Err(e) => Err(Broke::Fatal(
            anyhow::Error::new(e).context("writing the feed to stdout"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_200ms_to_5s_and_resets() {
        let mut b = Backoff::new();
        let got: Vec<u64> = (0..8).map(|_| b.pause().as_millis() as u64).collect();
        assert_eq!(got, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        b.reset();
        assert_eq!(b.pause(), Duration::from_millis(200));
    }

    #[test]
    fn errors_retry_unless_retrying_cannot_help() {
        // (code, synced before, what to do)
        let cases = [
            (Code::NotFound, false, OnError::Fail),
            (Code::NotFound, true, OnError::Deleted),
            (Code::InvalidArgument, false, OnError::Fail),
            (Code::InvalidArgument, true, OnError::Fail),
            (Code::Unimplemented, false, OnError::Fail),
            (Code::PermissionDenied, true, OnError::Fail),
            (Code::Unavailable, false, OnError::Retry),
            (Code::Unavailable, true, OnError::Retry),
            (Code::Internal, true, OnError::Retry),
            (Code::Unknown, true, OnError::Retry),
            (Code::Cancelled, true, OnError::Retry),
            (Code::DeadlineExceeded, false, OnError::Retry),
            (Code::FailedPrecondition, true, OnError::Retry),
        ];
        for (code, synced, want) in cases {
            assert_eq!(
                on_error(&Status::new(code, "x"), synced),
                want,
                "{code:?} synced={synced}"
            );
        }
    }

    struct Closed;
    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn emit_flushes_whole_lines_and_stops_when_the_reader_is_gone() {
        let change = PoolChange {
            kind: Kind::Add.into(),
            pool: "web".into(),
            ips: vec!["10.1.0.11".into(), "10.1.0.10".into()],
            revision: 7,
        };
        let mut out = Vec::new();
        assert!(emit(&mut out, &change, WatchFormat::Plain).is_ok());
        assert_eq!(out, b"+ 10.1.0.10\n+ 10.1.0.11\n");
        assert!(matches!(
            emit(&mut Closed, &change, WatchFormat::Plain),
            Err(Broke::Done(Done::ConsumerGone))
        ));
        let odd = PoolChange { kind: 9, ..change };
        assert!(matches!(
            emit(&mut out, &odd, WatchFormat::Json),
            Err(Broke::Fatal(_))
        ));
    }
}
