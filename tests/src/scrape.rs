//! Scraping a real ipamd's metrics (`--metrics-listen`): where it logged it
//! listens, one HTTP request, the samples of a scrape.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use moor_testkit::netns::{self, spawn_in_netns};

/// How long ipamd may take to log its metrics address after start.
const LISTENING_WITHIN: Duration = Duration::from_secs(10);

/// The address the last ipamd logging to `log` serves metrics on (its
/// "metrics listening" line; text logs).
pub fn logged_addr(log: &Path) -> String {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let found = text
            .lines()
            .filter(|l| l.contains("metrics listening"))
            .filter_map(|l| l.split("addr=").nth(1))
            .next_back()
            .map(|a| {
                a.split_whitespace()
                    .next()
                    .unwrap_or(a)
                    .trim_matches('"')
                    .to_string()
            });
        if let Some(a) = found {
            return a;
        }
        assert!(
            started.elapsed() < LISTENING_WITHIN,
            "{} shows no metrics address within {LISTENING_WITHIN:?}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One HTTP/1.1 request to ipamd, from inside the netns `netns` (None:
/// this process's); (status, body). Panics if there is no answer.
pub fn http(netns: Option<&str>, addr: &str, method: &str, path: &str) -> (u16, String) {
    let netns = netns.map(netns::path);
    request(netns.as_deref(), addr, method, path).unwrap_or_else(|e| panic!("{e}"))
}

/// `method path` to `addr`, one request on its own connection; with
/// `netns`, from a thread inside the network namespace at that path (where
/// a testbed's ipamd and its Prometheus listen on 127.0.0.1). The status
/// and the body (chunks joined).
pub fn request(
    netns: Option<&Path>,
    addr: &str,
    method: &str,
    path: &str,
) -> Result<(u16, String), String> {
    let (addr, method, path) = (addr.to_string(), method.to_string(), path.to_string());
    let send = move || send_here(&addr, &method, &path);
    match netns {
        Some(ns) => spawn_in_netns(ns.to_path_buf(), send)
            .join()
            .map_err(|_| "the HTTP thread panicked".to_string())?,
        None => send(),
    }
}

fn send_here(addr: &str, method: &str, path: &str) -> Result<(u16, String), String> {
    let what = |e: std::io::Error| format!("{method} http://{addr}{path}: {e}");
    let to: SocketAddr = addr
        .parse()
        .map_err(|e| format!("{method} http://{addr}{path}: {e}"))?;
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).map_err(what)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(what)?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(what)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(what)?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{method} http://{addr}{path}: no end of headers in {raw:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{method} http://{addr}{path}: no status in {head:?}"))?;
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().replace(' ', "") == "transfer-encoding:chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

/// The body of a chunked transfer encoding.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16);
        match size {
            Ok(n) if n > 0 && after.len() >= n => {
                out.push_str(&after[..n]);
                rest = after[n..].strip_prefix("\r\n").unwrap_or(&after[n..]);
            }
            _ => break,
        }
    }
    out
}

/// Every sample of a scrape of `/metrics`: series (name and labels, as
/// printed) -> value.
pub fn scrape(netns: Option<&str>, addr: &str) -> BTreeMap<String, f64> {
    let (status, body) = http(netns, addr, "GET", "/metrics");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The value of `series` (0 when absent, as a counter not yet bumped).
pub fn value(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

/// The sum of every sample whose series starts with `prefix`.
pub fn sum(m: &BTreeMap<String, f64>, prefix: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunk_joins_chunks() {
        assert_eq!(dechunk("3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"), "abcde");
    }
}
