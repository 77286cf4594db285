//! etcd's own count of what it served, and the floor moor's ADD is measured
//! against.
//!
//! - Requests: `grpc_server_handled_total` from etcd's `/metrics` (on its
//!   client URL), summed by `grpc_method` (Range, Txn, Put, ...), scraped
//!   before and after a phase. What etcd served meanwhile for anyone else
//!   (idle traffic) is measured in an idle window right after the phase and
//!   subtracted at its rate. This counts what reached etcd, whatever the
//!   code path, rather than what our store wrapper thinks it sent.
//! - Watch events: `etcd_debugging_mvcc_events_total`, the events etcd
//!   sent to watchers, the same way: per ADD, how many views a lease put
//!   reached (the fan-out).
//! - The floor: single compare-and-swap transactions (compare a key's
//!   create revision, put ~400 bytes: one etcd request, one raft entry, one
//!   fsync), at the same concurrency, each worker on its own connection as
//!   each allocator is. No ADD can beat its own commit.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, DeleteOptions, Txn, TxnOp};
use serde_json::{json, Value};

type Res<T> = Result<T, String>;

/// Requests etcd had handled, by gRPC method, at one moment.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    at: Option<Instant>,
    by_method: BTreeMap<String, f64>,
    /// Watch events sent, all watchers together.
    events: f64,
}

/// `GET /metrics` of the etcd at `url` (http://HOST:PORT), parsed.
pub fn scrape(url: &str) -> Res<Scrape> {
    let addr = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: expected an http:// client URL"))?
        .trim_end_matches('/');
    let mut conn = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(conn, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")
        .map_err(|e| format!("GET {url}/metrics: {e}"))?;
    let mut body = String::new();
    conn.read_to_string(&mut body)
        .map_err(|e| format!("read {url}/metrics: {e}"))?;
    let at = Some(Instant::now());
    let by_method = parse(&body);
    if by_method.is_empty() {
        return Err(format!(
            "{url}/metrics has no grpc_server_handled_total: {}",
            body.lines().next().unwrap_or("")
        ));
    }
    let events = body
        .lines()
        .find_map(|l| {
            l.strip_prefix("etcd_debugging_mvcc_events_total ")?
                .trim()
                .parse()
                .ok()
        })
        .ok_or_else(|| format!("{url}/metrics has no etcd_debugging_mvcc_events_total"))?;
    Ok(Scrape {
        at,
        by_method,
        events,
    })
}

/// Sums `grpc_server_handled_total{...grpc_method="M"...} V` by M.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("grpc_server_handled_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let method = labels.split(',').find_map(|l| {
            l.strip_prefix("grpc_method=\"")
                .map(|m| m.trim_end_matches('"').to_string())
        });
        if let (Some(m), Ok(v)) = (method, value.trim().parse::<f64>()) {
            *out.entry(m).or_insert(0.0) += v;
        }
    }
    out
}

impl Scrape {
    /// Requests by method between `before` and this scrape, how long, and
    /// the watch events sent meanwhile.
    fn since(&self, before: &Scrape) -> (BTreeMap<String, f64>, Duration, f64) {
        let mut d = BTreeMap::new();
        for (m, v) in &self.by_method {
            let was = before.by_method.get(m).copied().unwrap_or(0.0);
            if *v > was {
                d.insert(m.clone(), v - was);
            }
        }
        let took = match (self.at, before.at) {
            (Some(a), Some(b)) => a.saturating_duration_since(b),
            _ => Duration::ZERO,
        };
        (d, took, (self.events - before.events).max(0.0))
    }
}

/// What etcd served per operation in one phase, idle traffic subtracted.
#[derive(Debug, Clone, Default)]
pub struct PerOp {
    pub by_method: BTreeMap<String, f64>,
    /// What the idle window saw, per second.
    pub idle_per_s: f64,
    /// Watch events etcd sent per operation (to every watcher).
    pub watch_events: f64,
}

impl PerOp {
    pub fn total(&self) -> f64 {
        self.by_method.values().sum()
    }

    pub fn get(&self, method: &str) -> f64 {
        self.by_method.get(method).copied().unwrap_or(0.0)
    }

    pub fn json(&self) -> Value {
        let r = |v: f64| (v * 100.0).round() / 100.0;
        json!({
            "total": r(self.total()),
            "by_method": self.by_method.iter().map(|(k, v)| (k.clone(), json!(r(*v))))
                .collect::<serde_json::Map<_, _>>(),
            "idle_requests_per_s": r(self.idle_per_s),
            "watch_events": r(self.watch_events),
        })
    }
}

/// `before` and `after` a phase of `ops` operations; then an idle window
/// as long as the phase (at most `idle_cap`) whose rate is subtracted.
pub async fn per_op(
    url: &str,
    before: &Scrape,
    after: &Scrape,
    ops: usize,
    idle_cap: Duration,
) -> Res<PerOp> {
    let (phase, wall, events) = after.since(before);
    let idle0 = scrape(url)?;
    tokio::time::sleep(wall.min(idle_cap)).await;
    let (idle, idle_wall, idle_events) = scrape(url)?.since(&idle0);
    let secs = idle_wall.as_secs_f64().max(1e-3);
    let watch_events =
        (events - idle_events / secs * wall.as_secs_f64()).max(0.0) / ops.max(1) as f64;
    let mut by_method = BTreeMap::new();
    for (m, v) in phase {
        let background = idle.get(&m).copied().unwrap_or(0.0) / secs * wall.as_secs_f64();
        let v = (v - background).max(0.0) / ops.max(1) as f64;
        if v > 0.0 {
            by_method.insert(m, v);
        }
    }
    Ok(PerOp {
        by_method,
        // (An empty f64 sum is -0.0.)
        idle_per_s: (idle.values().sum::<f64>() / secs).max(0.0),
        watch_events,
    })
}

/// The floor at one concurrency: its rate, latencies, and etcd's count.
pub struct Floor {
    pub ops: usize,
    pub wall: Duration,
    pub latencies: Vec<Duration>,
    pub per_op: PerOp,
}

impl Floor {
    /// Two floors as one: their ops and time added, latencies pooled.
    pub fn and(mut self, other: Floor) -> Floor {
        self.ops += other.ops;
        self.wall += other.wall;
        self.latencies.extend(other.latencies);
        self.latencies.sort();
        self
    }
}

/// `ops` single compare-and-swap transactions from `clients` (one task
/// each), keys under `prefix` (deleted afterwards, untimed).
pub async fn floor(
    url: &str,
    clients: Vec<Client>,
    prefix: &str,
    ops: usize,
    idle_cap: Duration,
) -> Res<Floor> {
    floor_shaped(url, clients, prefix, ops, idle_cap, None).await
}

/// The shape of a diagnostic floor's transactions: `compares` compares
/// (1–4: the put key's absence, then absent keys) and `puts` puts (1–2: 470
/// bytes, then 40). Moor's ADD of a Deployment pod on etcd is 3 and 1
/// (schema 5; it was 4 and 2 with the attachment index).
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub compares: usize,
    pub puts: usize,
}

impl Shape {
    pub const ADD: Shape = Shape {
        compares: 3,
        puts: 1,
    };

    /// `MOOR_BENCH_SHAPED_FLOOR`: `1` for the ADD's shape, or
    /// `COMPARES,PUTS`.
    pub fn parse(v: &str) -> Res<Shape> {
        if v == "1" {
            return Ok(Shape::ADD);
        }
        let bad = || {
            format!(
                "MOOR_BENCH_SHAPED_FLOOR={v:?}: give 1 (the ADD's shape: 3 compares, 1 put) or COMPARES,PUTS with 1-4 compares and 1-2 puts, e.g. 4,1"
            )
        };
        let (c, p) = v.split_once(',').ok_or_else(bad)?;
        let n = |x: &str| x.trim().parse::<usize>().map_err(|_| bad());
        let shape = Shape {
            compares: n(c)?,
            puts: n(p)?,
        };
        if !(1..=4).contains(&shape.compares) || !(1..=2).contains(&shape.puts) {
            return Err(bad());
        }
        Ok(shape)
    }
}

/// `floor`, or with `shape`d transactions, to tell the cost of the
/// transaction's shape from the rest of moor's ADD (diagnostic).
pub async fn floor_shaped(
    url: &str,
    clients: Vec<Client>,
    prefix: &str,
    ops: usize,
    idle_cap: Duration,
    shape: Option<Shape>,
) -> Res<Floor> {
    let value = vec![b'x'; if shape.is_some() { 470 } else { 400 }];
    let next = Arc::new(AtomicUsize::new(0));
    let before = scrape(url)?;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for mut c in clients.iter().cloned() {
        let (next, value, prefix) = (next.clone(), value.clone(), prefix.to_string());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ops {
                    return Ok::<_, String>(lat);
                }
                let key = format!("{prefix}{i:08}");
                let txn = if let Some(shape) = shape {
                    let k = |what: &str| format!("{prefix}{what}/{i:08}");
                    let compares = ["a", "b", "c"][..shape.compares - 1]
                        .iter()
                        .map(|w| Compare::mod_revision(k(w), CompareOp::Equal, 0))
                        .chain([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                        .collect::<Vec<_>>();
                    let mut puts = vec![TxnOp::put(key.clone(), value.clone(), None)];
                    if shape.puts == 2 {
                        puts.push(TxnOp::put(k("b"), vec![b'y'; 40], None));
                    }
                    Txn::new().when(compares).and_then(puts)
                } else {
                    Txn::new()
                        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(key.clone(), value.clone(), None)])
                };
                let t = Instant::now();
                let r = c
                    .txn(txn)
                    .await
                    .map_err(|e| format!("floor txn {key}: {e}"))?;
                lat.push(t.elapsed());
                if !r.succeeded() {
                    return Err(format!("floor txn {key}: compare failed"));
                }
            }
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.map_err(|e| e.to_string())??);
    }
    let wall = t.elapsed();
    let after = scrape(url)?;
    let per_op = per_op(url, &before, &after, ops, idle_cap).await?;
    let mut c = clients.into_iter().next().ok_or("no client")?;
    c.delete(prefix, Some(DeleteOptions::new().with_prefix()))
        .await
        .map_err(|e| format!("delete {prefix}: {e}"))?;
    latencies.sort();
    Ok(Floor {
        ops,
        wall,
        latencies,
        per_op,
    })
}
