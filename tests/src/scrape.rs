//! Scraping a real ipamd's metrics (`--metrics-listen`): where it logged it
//! listens, one HTTP request, the samples of a scrape.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
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
/// this process's); (status, body).
pub fn http(netns: Option<&str>, addr: &str, method: &str, path: &str) -> (u16, String) {
    let to = addr.to_string();
    let connect = move || TcpStream::connect(&to);
    let mut s = match netns {
        Some(ns) => spawn_in_netns(netns::path(ns), connect).join().unwrap(),
        None => connect(),
    }
    .unwrap_or_else(|e| panic!("connect {addr} in {netns:?}: {e}"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {out:?}"));
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
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
