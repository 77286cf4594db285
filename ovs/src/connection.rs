//! One JSON-RPC connection to ovsdb-server: framing, requests multiplexed by id,
//! replies to the server's `echo`, and a monitor on `Open_vSwitch` `cur_cfg` /
//! `next_cfg` so waiting for ovs-vswitchd costs no polling.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, watch};
use tokio::task::AbortHandle;

use crate::endpoint::Endpoint;

pub(crate) const DB: &str = "Open_vSwitch";
const CFG_MONITOR: &str = "moor-cfg";

type Writer = Arc<tokio::sync::Mutex<Box<dyn AsyncWrite + Send + Unpin>>>;
type Reply = Result<Value, Value>;

/// What ovs-vswitchd has applied, as last seen on this connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CfgState {
    /// No `Open_vSwitch` row (yet).
    Unknown,
    Known {
        next_cfg: i64,
        cur_cfg: i64,
    },
    /// The connection is gone; reconnect to learn more.
    Closed,
}

#[derive(Debug)]
pub(crate) enum CallError {
    /// The request never (fully) reached the server.
    NotSent(String),
    /// Sent, but the connection closed before the reply: the outcome is unknown.
    Lost(String),
    /// The server's JSON-RPC `error` member.
    Rpc(Value),
}

struct Pending {
    /// None once the connection is closed; then it holds why.
    calls: Option<HashMap<u64, oneshot::Sender<Reply>>>,
    closed_because: String,
}

pub(crate) struct Connection {
    writer: Writer,
    pending: Arc<Mutex<Pending>>,
    cfg: watch::Receiver<CfgState>,
    reader: AbortHandle,
}

impl Connection {
    /// Dials, starts the reader task and the cfg monitor. Not bounded in time:
    /// the caller bounds it.
    pub async fn open(endpoint: &Endpoint, ids: &AtomicU64) -> Result<Self, OpenError> {
        let (rd, wr): (
            Box<dyn AsyncRead + Send + Unpin>,
            Box<dyn AsyncWrite + Send + Unpin>,
        ) = match endpoint {
            Endpoint::Unix(path) => {
                let (r, w) = tokio::net::UnixStream::connect(path).await?.into_split();
                (Box::new(r), Box::new(w))
            }
            Endpoint::Tcp(addr) => {
                let s = tokio::net::TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
        };
        let writer: Writer = Arc::new(tokio::sync::Mutex::new(wr));
        let pending = Arc::new(Mutex::new(Pending {
            calls: Some(HashMap::new()),
            closed_because: String::new(),
        }));
        let (cfg_tx, cfg) = watch::channel(CfgState::Unknown);
        let cfg_tx = Arc::new(cfg_tx);
        let reader = tokio::spawn(read_loop(
            rd,
            writer.clone(),
            pending.clone(),
            cfg_tx.clone(),
        ))
        .abort_handle();
        let conn = Connection {
            writer,
            pending,
            cfg,
            reader,
        };
        let params = json!([DB, CFG_MONITOR, {DB: {"columns": ["cur_cfg", "next_cfg"]}}]);
        let initial = conn
            .call(ids.fetch_add(1, Ordering::Relaxed), "monitor", params)
            .await
            .map_err(OpenError::Monitor)?;
        // Updates may already have arrived; the reply is the older truth only
        // if nothing newer came in.
        cfg_tx.send_if_modified(|state| {
            if *state == CfgState::Unknown {
                *state = apply_cfg_update(*state, &initial);
                true
            } else {
                false
            }
        });
        Ok(conn)
    }

    pub fn is_closed(&self) -> bool {
        self.pending.lock().unwrap().calls.is_none()
    }

    pub fn cfg(&self) -> watch::Receiver<CfgState> {
        self.cfg.clone()
    }

    /// Gives up on this connection: in-flight calls fail with `Lost`.
    pub fn close(&self, because: &str) {
        close(&self.pending, because);
        self.reader.abort();
    }

    pub async fn call(&self, id: u64, method: &str, params: Value) -> Result<Value, CallError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.pending.lock().unwrap();
            match p.calls.as_mut() {
                Some(calls) => calls.insert(id, tx),
                None => return Err(CallError::NotSent(p.closed_because.clone())),
            };
        }
        // Forget the call if our caller stops waiting (its deadline passed).
        let _forget = Forget {
            pending: &self.pending,
            id,
        };
        let msg = json!({"method": method, "params": params, "id": id});
        let bytes = serde_json::to_vec(&msg).expect("a Value always serializes");
        let mut writer = self.writer.lock().await;
        // If our caller gives up in the middle of the write, the rest of the
        // stream would be garbage to the server: then this connection is done.
        let mut torn = TornWrite {
            pending: &self.pending,
            armed: true,
        };
        let written = writer.write_all(&bytes).await;
        torn.armed = false;
        drop(writer);
        if let Err(e) = written {
            // write_all failed before the last byte: the server cannot have
            // parsed the whole request, so it did not execute it.
            let because = format!("write failed: {e}");
            self.close(&because);
            return Err(CallError::NotSent(because));
        }
        match rx.await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(error)) => Err(CallError::Rpc(error)),
            Err(_) => Err(CallError::Lost(
                self.pending.lock().unwrap().closed_because.clone(),
            )),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("cfg monitor failed: {0:?}")]
    Monitor(CallError),
}

struct Forget<'a> {
    pending: &'a Mutex<Pending>,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Some(calls) = self.pending.lock().unwrap().calls.as_mut() {
            calls.remove(&self.id);
        }
    }
}

struct TornWrite<'a> {
    pending: &'a Mutex<Pending>,
    armed: bool,
}

impl Drop for TornWrite<'_> {
    fn drop(&mut self) {
        if self.armed {
            close(
                self.pending,
                "a request was cancelled halfway through its write",
            );
        }
    }
}

fn close(pending: &Mutex<Pending>, because: &str) {
    let mut p = pending.lock().unwrap();
    if p.calls.take().is_some() {
        // Dropping the senders wakes every waiting call with `Lost`.
        p.closed_because = because.to_string();
    }
}

async fn read_loop(
    mut rd: Box<dyn AsyncRead + Send + Unpin>,
    writer: Writer,
    pending: Arc<Mutex<Pending>>,
    cfg_tx: Arc<watch::Sender<CfgState>>,
) {
    let mut framer = Framer::default();
    let mut chunk = vec![0u8; 64 * 1024];
    let because = 'conn: loop {
        let n = match rd.read(&mut chunk).await {
            Ok(0) => break "connection closed by ovsdb-server".to_string(),
            Ok(n) => n,
            Err(e) => break format!("read failed: {e}"),
        };
        framer.push(&chunk[..n]);
        loop {
            match framer.next() {
                Ok(Some(msg)) => dispatch(msg, &writer, &pending, &cfg_tx).await,
                Ok(None) => break,
                Err(e) => break 'conn format!("bad JSON from ovsdb-server: {e}"),
            }
        }
    };
    tracing::debug!(%because, "ovsdb connection closed");
    close(&pending, &because);
    cfg_tx.send_replace(CfgState::Closed);
}

async fn dispatch(
    msg: Value,
    writer: &Writer,
    pending: &Mutex<Pending>,
    cfg_tx: &watch::Sender<CfgState>,
) {
    match msg.get("method").and_then(Value::as_str) {
        // ovsdb-server's inactivity probe: answer it or be disconnected.
        Some("echo") => {
            let reply = json!({"id": msg["id"], "result": msg["params"], "error": null});
            let bytes = serde_json::to_vec(&reply).expect("a Value always serializes");
            // A failed write shows up as a failed read right after.
            let _ = writer.lock().await.write_all(&bytes).await;
        }
        Some("update") if msg["params"][0] == CFG_MONITOR => {
            cfg_tx.send_modify(|state| *state = apply_cfg_update(*state, &msg["params"][1]));
        }
        Some(other) => tracing::debug!(method = other, "ignoring ovsdb notification"),
        None => {
            let Some(id) = msg.get("id").and_then(Value::as_u64) else {
                tracing::debug!(%msg, "ignoring ovsdb reply with a foreign id");
                return;
            };
            let waiter = pending
                .lock()
                .unwrap()
                .calls
                .as_mut()
                .and_then(|c| c.remove(&id));
            if let Some(waiter) = waiter {
                let reply = match msg.get("error") {
                    None | Some(Value::Null) => {
                        Ok(msg.get("result").cloned().unwrap_or(Value::Null))
                    }
                    Some(error) => Err(error.clone()),
                };
                let _ = waiter.send(reply);
            }
        }
    }
}

/// Folds a monitor reply or `update` notification (RFC 7047 table-updates for
/// our one-table monitor) into the state.
fn apply_cfg_update(state: CfgState, updates: &Value) -> CfgState {
    let Some(rows) = updates.get(DB).and_then(Value::as_object) else {
        return state;
    };
    let mut state = state;
    for update in rows.values() {
        let Some(new) = update.get("new") else {
            state = CfgState::Unknown; // the row was deleted
            continue;
        };
        let (prev_next, prev_cur) = match state {
            CfgState::Known { next_cfg, cur_cfg } => (Some(next_cfg), Some(cur_cfg)),
            _ => (None, None),
        };
        let next = new["next_cfg"].as_i64().or(prev_next);
        let cur = new["cur_cfg"].as_i64().or(prev_cur);
        if let (Some(next_cfg), Some(cur_cfg)) = (next, cur) {
            state = CfgState::Known { next_cfg, cur_cfg };
        }
    }
    state
}

/// Splits the byte stream into JSON values. RFC 7047 puts no delimiter between
/// messages, so this tracks nesting (and strings, whose brackets do not count)
/// over each byte once, and parses a value only when it is complete.
#[derive(Default)]
struct Framer {
    buf: Vec<u8>,
    scanned: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl Framer {
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    fn next(&mut self) -> Result<Option<Value>, String> {
        while self.scanned < self.buf.len() {
            let b = self.buf[self.scanned];
            self.scanned += 1;
            if self.in_string {
                match b {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' if self.depth > 0 => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' if self.depth > 0 => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        let end = self.scanned;
                        let value = serde_json::from_slice(&self.buf[..end]);
                        self.buf.drain(..end);
                        self.scanned = 0;
                        return value.map(Some).map_err(|e| e.to_string());
                    }
                }
                b' ' | b'\t' | b'\r' | b'\n' if self.depth == 0 => {}
                _ if self.depth == 0 => {
                    return Err(format!("unexpected byte {:?} between messages", b as char))
                }
                _ => {}
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(chunks: &[&str]) -> Vec<Value> {
        let mut f = Framer::default();
        let mut out = Vec::new();
        for c in chunks {
            f.push(c.as_bytes());
            while let Some(v) = f.next().unwrap() {
                out.push(v);
            }
        }
        out
    }

    #[test]
    fn splits_back_to_back_messages() {
        let got = frames(&[r#"{"id":1,"result":[]}{"id":2,"result":{"a":[1,{"b":2}]}}"#]);
        assert_eq!(
            got,
            vec![
                json!({"id":1,"result":[]}),
                json!({"id":2,"result":{"a":[1,{"b":2}]}})
            ]
        );
    }

    #[test]
    fn waits_for_the_rest_of_a_split_message() {
        let got = frames(&[
            r#"{"id":1,"res"#,
            r#"ult":["set",[1,"#,
            "2]]}\n",
            r#"{"id""#,
            ":2}",
        ]);
        assert_eq!(
            got,
            vec![json!({"id":1,"result":["set",[1,2]]}), json!({"id":2})]
        );
    }

    #[test]
    fn brackets_and_quotes_inside_strings_do_not_count() {
        let text = r#"{"details":"a } ] { [ \" \\"}{"id":3}"#;
        let got = frames(&[text]);
        assert_eq!(got[0]["details"], r#"a } ] { [ " \"#);
        assert_eq!(got[1], json!({"id":3}));
        // Byte by byte, splitting escapes too.
        let one_by_one: Vec<String> = text.chars().map(String::from).collect();
        let refs: Vec<&str> = one_by_one.iter().map(String::as_str).collect();
        assert_eq!(frames(&refs), got);
    }

    #[test]
    fn garbage_between_messages_is_an_error() {
        let mut f = Framer::default();
        f.push(b"{}x");
        assert_eq!(f.next().unwrap(), Some(json!({})));
        assert!(f.next().is_err());
    }

    #[test]
    fn cfg_updates_fold_into_the_state() {
        let initial = json!({DB: {"u": {"new": {"cur_cfg": 3, "next_cfg": 4}}}});
        let s = apply_cfg_update(CfgState::Unknown, &initial);
        assert_eq!(
            s,
            CfgState::Known {
                next_cfg: 4,
                cur_cfg: 3
            }
        );
        let modify = json!({DB: {"u": {"old": {"cur_cfg": 3}, "new": {"cur_cfg": 4}}}});
        let s = apply_cfg_update(s, &modify);
        assert_eq!(
            s,
            CfgState::Known {
                next_cfg: 4,
                cur_cfg: 4
            }
        );
        assert_eq!(apply_cfg_update(s, &json!({})), s);
        let delete = json!({DB: {"u": {"old": {"cur_cfg": 4, "next_cfg": 4}}}});
        assert_eq!(apply_cfg_update(s, &delete), CfgState::Unknown);
    }
}
