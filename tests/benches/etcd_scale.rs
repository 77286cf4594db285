//! Benchmark: the cluster store at scale. 2,000 simulated nodes under 200
//! ToRs, 5,000 app pools of 20 IPs (100,000 IPs), all in a real etcd,
//! driven through the real allocation service (`moor_ipamd::ipam::Ipam` over
//! `EtcdStore`, the code ipamd runs), then the memory of a real `ipamd`
//! against that data set.
//!
//! Run it with `sudo ./scripts/bench-etcd [OPTIONS]` (it builds the release
//! `ipamd` and `ipamctl` first); `--help` lists the options. What it does:
//!
//! - Starts its own single-member etcd (/usr/bin/etcd) on free 127.0.0.1
//!   ports in a temp data dir (on disk, so commits pay a real fsync), with
//!   revision auto-compaction and a raised backend quota (and the flags
//!   `--etcd-arg` adds); killed and removed on exit, error, panic or Ctrl-C
//!   (Drop guards; PDEATHSIG as a backstop).
//! - Setup through `Ipam`: the ToRs (10.N.0.0/21, 1,600 pod IPs each), the
//!   nodes' registry records (10 per ToR), the pools (each over 2 ToRs,
//!   round robin), timed. Then one pool over every ToR, twice (the pool
//!   size, and enough to touch every ToR), to show what that costs at this
//!   scale (deleted again); a failure (etcd refusing a transaction that big)
//!   is reported as a row and the bench goes on.
//! - Allocation runs, one per concurrency level (1, 8 and 64 by default):
//!   that many tokio tasks, each its own "ipamd" (own `Ipam`, own etcd
//!   connection, own watch-fed view of its ToR, as ipamd keeps with etcd),
//!   one node each, on distinct ToRs where there are enough; each allocation
//!   = `allocate` (ipamd's ADD minus the datapath and the local mirror: one
//!   commit) for a random pool with IPs on that node's ToR, Deployment-style
//!   pod names (no binding is kept). The views are caught up before the
//!   clock starts. 30,000 allocations a run (half the IPs; 1,000 with
//!   one allocator), all held, checked (no IP twice, the leases in etcd are
//!   exactly ours, `audit` clean), then all released with the same
//!   concurrency, and checked again (no lease left, `audit` clean).
//! - Every store call of the allocators goes through a counting wrapper, so
//!   the table shows etcd round trips, failed compare-and-swaps and bytes
//!   per allocation; CPU time of etcd, of the bench and of every other
//!   process on the machine (others' builds skew the numbers) per phase.
//! - Memory: this process's peak RSS, etcd's, and a real `ipamd` (release
//!   binary) started on the same etcd prefix as one of the nodes, with its
//!   bridge in a network namespace of its own, while the last run's
//!   allocations are held; admin calls through `ipamctl` are timed and
//!   ipamd's VmRSS/VmHWM read from /proc: VmRSS after start once it holds
//!   still, after `ip list` of every IP, after `pool list`, and the peak
//!   (VmHWM, reset after start through /proc/PID/clear_refs so it is the
//!   admin calls' own) as a ratio of the settled VmRSS: the listings stream,
//!   so the ratio stays near 1 whatever the number of IPs. That part needs
//!   root; `--no-ipamd` skips it.
//! - etcd's own count: `grpc_server_handled_total` by method from its
//!   `/metrics`, before and after each allocation and release phase, idle
//!   traffic subtracted, per operation, and the watch events it sent
//!   (`etcd_debugging_mvcc_events_total`: how many views each put reached); and before each allocation phase,
//!   the floor at the same concurrency: single compare-and-swap
//!   transactions against the same etcd, whose rate and p99 moor's ADD is
//!   shown as a ratio of (etcd/metrics.rs).
//! - Every timed phase (floor, allocation, release) starts after etcd has
//!   dropped its write buffer (`settle`): etcd 3.4 copies its buffer of
//!   writes not yet committed to bbolt into every transaction it applies,
//!   at the largest size the buffer ever grew to, and drops it only at a
//!   commit that finds it unused. The floor's cleanup (one delete of
//!   2,500 keys) right before the allocations grew it to thousands of
//!   entries, and every ADD of the phase paid for copying them
//!   (`bucketBuffer.Copy`: a third of etcd's CPU in the phase).
//! - With `--split-cpus`, etcd and the bench on CPUs of their own
//!   (etcd/cpus.rs): both sides of the ratio then measure etcd without the
//!   allocators' CPU taken from it.
//! - Prints a table and a final JSON line.

#[path = "etcd/cpus.rs"]
mod cpus;
#[path = "etcd/metrics.rs"]
mod metrics;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use moor_e2e::names;
use moor_ipamd::core::{AttachmentKey, Lease, PodRef};
use moor_ipamd::ipam::{AllocRequest, Ipam, PoolChoice, PoolSpec};
use moor_ipamd::store::etcd::{EtcdOptions, EtcdStore};
use moor_ipamd::store::{Entry, Op, Store, StoreError, StoreExt, Txn, WatchStream};
use moor_testkit::cmd::try_ip;
use moor_testkit::{EtcdCluster, IpamdCommand, Netns, TempDir};
use serde_json::{json, Value};

type Res<T> = Result<T, String>;

const USAGE: &str = "\
etcd_scale: the cluster store at scale: ToRs, nodes and pools in a real etcd,
allocation latency and throughput at several concurrency levels, memory.

Usage: sudo ./scripts/bench-etcd [OPTIONS]
   or: cargo bench -p moor-e2e --bench etcd_scale -- [OPTIONS]
       (as root for the ipamd part, after cargo build --release --bin ipamd --bin ipamctl)

Options:
  --tors N             ToRs (10.N.0.0/21, 1,600 pod IPs each)      [default: 200]
  --nodes N            simulated nodes, spread evenly over ToRs    [default: 2000]
  --pools N            app pools                                   [default: 5000]
  --pool-size N        IPs per pool                                [default: 20]
  --tors-per-pool N    ToRs each pool spreads over (round robin)   [default: 2]
  --setup-concurrency N  pools created at once                     [default: 8]
  --concurrency LIST   allocator counts, comma-separated           [default: 1,8,64]
  --allocs N           allocations per run, all held, then released [default: 30000]
  --allocs-single N    allocations of the 1-allocator run          [default: 1000]
  --floor-ops N        single-CAS transactions of each floor phase  [default: 5000]
  --idle-cap-s N       longest idle window after a phase (its etcd
                       traffic is subtracted at its rate)          [default: 10]
  --no-ipamd           skip the real ipamd (no root needed)
  --keep-logs          keep etcd's and ipamd's logs (printed path)
  --split-cpus         etcd on the first half of this process's CPUs, the
                       bench (allocators, floor clients, ipamd) on the rest:
                       etcd's rate without the clients' CPU taken from it,
                       as on a cluster where etcd has machines of its own
  --etcd-arg FLAG      one more flag for the bench's etcd, repeatable, e.g.
                       --etcd-arg --backend-batch-interval=10ms (diagnostics:
                       the default run uses etcd's defaults)
  -h, --help           this text

Environment:
  MOOR_BENCH_SHAPED_FLOOR=1|C,P  last in each level, a diagnostic floor of
                       transactions of C compares and P puts (1: the ADD's
                       shape, 3 and 1)
";

const PREFIX: &str = "/moor/";
const NAMESPACE: &str = "bench";
/// Pod IPs per ToR: 10.N.0.16 - 10.N.6.79.
const TOR_RANGE: (&str, &str) = ("0.16", "6.79");

// ---------------------------------------------------------------- options

#[derive(Debug, Clone)]
struct Opts {
    tors: usize,
    nodes: usize,
    pools: usize,
    pool_size: u32,
    tors_per_pool: usize,
    setup_concurrency: usize,
    concurrency: Vec<usize>,
    allocs: usize,
    allocs_single: usize,
    floor_ops: usize,
    idle_cap: Duration,
    ipamd: bool,
    keep_logs: bool,
    /// etcd and the bench on CPUs of their own (`cpus.rs`).
    split_cpus: bool,
    /// `MOOR_BENCH_SHAPED_FLOOR`: a diagnostic floor of this shape, last
    /// in each level.
    shaped_floor: Option<metrics::Shape>,
    /// More flags for the bench's etcd (diagnostics: what etcd's own
    /// settings do to both sides).
    etcd_args: Vec<String>,
}

fn parse_opts() -> Res<Option<Opts>> {
    let mut o = Opts {
        tors: 200,
        nodes: 2000,
        pools: 5000,
        pool_size: 20,
        tors_per_pool: 2,
        setup_concurrency: 8,
        concurrency: vec![1, 8, 64],
        allocs: 30000,
        allocs_single: 1000,
        floor_ops: 5000,
        idle_cap: Duration::from_secs(10),
        ipamd: true,
        keep_logs: false,
        split_cpus: false,
        shaped_floor: std::env::var("MOOR_BENCH_SHAPED_FLOOR")
            .ok()
            .map(|v| metrics::Shape::parse(&v))
            .transpose()?,
        etcd_args: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |what: &str| -> Res<usize> {
            let v = args.next().ok_or_else(|| format!("{what} needs a value"))?;
            v.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{what} {v:?}: give a positive whole number"))
        };
        match a.as_str() {
            "--tors" => o.tors = num("--tors")?,
            "--nodes" => o.nodes = num("--nodes")?,
            "--pools" => o.pools = num("--pools")?,
            "--pool-size" => o.pool_size = num("--pool-size")? as u32,
            "--tors-per-pool" => o.tors_per_pool = num("--tors-per-pool")?,
            "--setup-concurrency" => o.setup_concurrency = num("--setup-concurrency")?,
            "--allocs" => o.allocs = num("--allocs")?,
            "--allocs-single" => o.allocs_single = num("--allocs-single")?,
            "--floor-ops" => o.floor_ops = num("--floor-ops")?,
            "--idle-cap-s" => o.idle_cap = Duration::from_secs(num("--idle-cap-s")? as u64),
            "--concurrency" => {
                let v = args.next().ok_or("--concurrency needs a value")?;
                o.concurrency = v
                    .split(',')
                    .map(|s| s.trim().parse::<usize>().ok().filter(|n| *n > 0))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| format!("--concurrency {v:?}: give e.g. 8,64"))?;
            }
            "--no-ipamd" => o.ipamd = false,
            "--keep-logs" => o.keep_logs = true,
            "--split-cpus" => o.split_cpus = true,
            "--etcd-arg" => {
                let v = args.next().ok_or("--etcd-arg needs a value")?;
                if !v.starts_with("--") {
                    return Err(format!(
                        "--etcd-arg {v:?}: give one etcd flag with its value, e.g. --etcd-arg --backend-batch-interval=10ms"
                    ));
                }
                o.etcd_args.push(v);
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            // cargo bench passes --bench to harness = false targets.
            "--bench" => {}
            other => return Err(format!("unknown option {other:?}\n\n{USAGE}")),
        }
    }
    if o.tors > 250 {
        return Err("--tors: at most 250 (ToR N is 10.N.0.0/21)".into());
    }
    if o.tors_per_pool > o.tors {
        return Err("--tors-per-pool is more than --tors".into());
    }
    if o.nodes < 2 {
        return Err("--nodes: at least 2 (node 1 is the real ipamd's)".into());
    }
    let capacity = o.tors as u64 * 1600;
    let want = o.pools as u64 * u64::from(o.pool_size);
    if want > capacity * 97 / 100 {
        return Err(format!(
            "{} pools of {} need {want} IPs; {} ToRs have {capacity}: use fewer or smaller pools",
            o.pools, o.pool_size, o.tors
        ));
    }
    if o.allocs as u64 > want / 2 {
        return Err(format!(
            "--allocs {}: at most half the pools' {want} IPs can be held at once here",
            o.allocs
        ));
    }
    Ok(Some(o))
}

// ------------------------------------------------------------- small bits

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// splitmix64, for picking nodes and pools.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A field of /proc/PID/status in KiB (VmRSS, VmHWM).
fn proc_kib(pid: &str, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

/// CPU time (user + system) a process has used so far, in seconds.
fn cpu_secs(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After "pid (comm) ": state is field 3, utime 14, stime 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / hz.max(1) as f64)
}

/// Busy CPU seconds of the whole machine (every core), from /proc/stat.
fn machine_busy_secs() -> f64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle, iowait.
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    busy as f64 / hz.max(1) as f64
}

/// CPU seconds of etcd, of this process, and of everything else running on
/// the machine (others' builds and tests skew the numbers: we show it).
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    etcd: f64,
    bench: f64,
    others: f64,
}

fn cpu_now(etcd: &Etcd) -> Cpu {
    let e = cpu_secs(&etcd.pid()).unwrap_or(0.0);
    let b = cpu_secs("self").unwrap_or(0.0);
    Cpu {
        etcd: e,
        bench: b,
        others: machine_busy_secs() - e - b,
    }
}

impl Cpu {
    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            etcd: self.etcd - before.etcd,
            bench: self.bench - before.bench,
            others: (self.others - before.others).max(0.0),
        }
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

#[derive(Debug, Clone, Copy, Default)]
struct Stats {
    n: usize,
    mean: Duration,
    p50: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    if v.is_empty() {
        return Stats::default();
    }
    v.sort();
    let n = v.len();
    let at = |p: f64| v[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
    Stats {
        n,
        mean: v.iter().sum::<Duration>() / n as u32,
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: v[n - 1],
    }
}

impl Stats {
    fn json(&self) -> Value {
        json!({
            "n": self.n, "mean_ms": ms(self.mean), "p50_ms": ms(self.p50),
            "p90_ms": ms(self.p90), "p99_ms": ms(self.p99), "max_ms": ms(self.max),
        })
    }

    fn row(&self) -> String {
        format!(
            "{:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            ms(self.mean),
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.max)
        )
    }
}

// ----------------------------------------------------------------- etcd

/// Longer than etcd's backend batch interval (100 ms): a commit falls in it.
const BATCH_GAP: Duration = Duration::from_millis(150);

/// Brings etcd's write buffer back to nothing before a timed phase (see
/// the module's doc). etcd commits to bbolt only when something was
/// written, and at a commit it drops a bucket's buffer only if nothing was
/// written to that bucket since the last one; so: a pause (the last writes
/// are committed), a lease granted and revoked (writes to the lease bucket
/// alone: the next commit finds the key bucket's buffer unused and drops
/// it), a pause for that commit.
async fn settle(raw: &EtcdStore) -> Res<()> {
    tokio::time::sleep(BATCH_GAP).await;
    let mut c = raw.client();
    let lease_and_revoke = async {
        // A short TTL: a lease a failed revoke leaves behind goes soon.
        let lease = c
            .lease_grant(5, None)
            .await
            .map_err(|e| format!("settle: lease grant: {e}"))?;
        c.lease_revoke(lease.id())
            .await
            .map_err(|e| format!("settle: lease revoke: {e}"))?;
        Ok::<_, String>(())
    };
    tokio::time::timeout(Duration::from_secs(10), lease_and_revoke)
        .await
        .map_err(|_| "settle: etcd did not grant and revoke a lease within 10 s".to_string())??;
    tokio::time::sleep(BATCH_GAP).await;
    Ok(())
}

/// Our single-member etcd: killed by pid and its directory removed on drop;
/// with --keep-logs its log is copied out first.
struct Etcd {
    cluster: EtcdCluster,
    keep_logs: bool,
}

impl Etcd {
    fn start(dir: &Path, keep_logs: bool, extra: &[String]) -> Res<Etcd> {
        let mut args = vec![
            // 8 GiB: the setup rewrites the ToRs' carved records thousands
            // of times; compaction frees the space, but the file only grows.
            "--quota-backend-bytes=8589934592",
            "--auto-compaction-mode=revision",
            "--auto-compaction-retention=1000",
            "--logger=zap",
            "--log-level=warn",
            // `curl URL/debug/pprof/profile?seconds=5 > etcd.pprof`, then
            // `go tool pprof -top etcd.pprof`: how the settle was found.
            "--enable-pprof",
        ];
        args.extend(extra.iter().map(String::as_str));
        let cluster = EtcdCluster::start(dir, 1, &moor_testkit::unique("moor-bench-etcd"), &args)?;
        Ok(Etcd { cluster, keep_logs })
    }

    fn url(&self) -> String {
        self.cluster.client_url(0).to_string()
    }

    fn pid(&self) -> String {
        self.cluster.pid(0).unwrap_or(0).to_string()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.cluster.kill9_all();
        if self.keep_logs {
            let kept =
                std::env::temp_dir().join(format!("moor-bench-etcd-{}.log", std::process::id()));
            if std::fs::copy(self.cluster.log(0), &kept).is_ok() {
                eprintln!("etcd's log: {}", kept.display());
            }
        }
    }
}

async fn open_store(url: &str) -> Res<EtcdStore> {
    // ipamd's defaults (2 s per call): a slower answer fails the run.
    EtcdStore::open(EtcdOptions {
        prefix: PREFIX.to_string(),
        ..EtcdOptions::new([url])
    })
    .await
    .map_err(|e| e.to_string())
}

// ------------------------------------------------------- counting store

/// What went to etcd, summed over every store of one kind of caller.
#[derive(Default)]
struct Counters {
    gets: AtomicU64,
    lists: AtomicU64,
    commits: AtomicU64,
    cas_failed: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Count {
    gets: u64,
    lists: u64,
    commits: u64,
    cas_failed: u64,
    bytes_read: u64,
    bytes_written: u64,
}

impl Counters {
    fn snap(&self) -> Count {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Count {
            gets: g(&self.gets),
            lists: g(&self.lists),
            commits: g(&self.commits),
            cas_failed: g(&self.cas_failed),
            bytes_read: g(&self.bytes_read),
            bytes_written: g(&self.bytes_written),
        }
    }
}

impl Count {
    fn since(self, before: Count) -> Count {
        Count {
            gets: self.gets - before.gets,
            lists: self.lists - before.lists,
            commits: self.commits - before.commits,
            cas_failed: self.cas_failed - before.cas_failed,
            bytes_read: self.bytes_read - before.bytes_read,
            bytes_written: self.bytes_written - before.bytes_written,
        }
    }

    fn round_trips(&self) -> u64 {
        self.gets + self.lists + self.commits
    }

    fn per(&self, n: usize) -> Value {
        let n = n.max(1) as f64;
        let r = |v: u64| (v as f64 / n * 100.0).round() / 100.0;
        json!({
            "round_trips": r(self.round_trips()), "gets": r(self.gets),
            "lists": r(self.lists), "commits": r(self.commits),
            "cas_failed": r(self.cas_failed), "bytes_read": r(self.bytes_read),
            "bytes_written": r(self.bytes_written),
        })
    }
}

/// A `Store` that counts what passes through it. The trait is
/// `#[async_trait]`; this is what that macro would write.
struct Counting {
    inner: Arc<EtcdStore>,
    c: Arc<Counters>,
}

type StoreFut<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

impl Store for Counting {
    fn get<'l0, 'l1, 'a>(&'l0 self, key: &'l1 str) -> StoreFut<'a, Option<Entry>>
    where
        'l0: 'a,
        'l1: 'a,
        Self: 'a,
    {
        Box::pin(async move {
            self.c.gets.fetch_add(1, Ordering::Relaxed);
            let r = self.inner.get(key).await?;
            let n = r.as_ref().map_or(0, |e| e.value.len() as u64);
            self.c.bytes_read.fetch_add(n, Ordering::Relaxed);
            Ok(r)
        })
    }

    fn list<'l0, 'l1, 'a>(&'l0 self, prefix: &'l1 str) -> StoreFut<'a, (Vec<Entry>, u64)>
    where
        'l0: 'a,
        'l1: 'a,
        Self: 'a,
    {
        Box::pin(async move {
            self.c.lists.fetch_add(1, Ordering::Relaxed);
            let r = self.inner.list(prefix).await?;
            let n: u64 = r.0.iter().map(|e| e.value.len() as u64).sum();
            self.c.bytes_read.fetch_add(n, Ordering::Relaxed);
            Ok(r)
        })
    }

    fn commit<'l0, 'a>(&'l0 self, txn: Txn) -> StoreFut<'a, bool>
    where
        'l0: 'a,
        Self: 'a,
    {
        Box::pin(async move { Ok(self.commit_at(txn).await?.is_some()) })
    }

    fn commit_at<'l0, 'a>(&'l0 self, txn: Txn) -> StoreFut<'a, Option<u64>>
    where
        'l0: 'a,
        Self: 'a,
    {
        Box::pin(async move {
            self.c.commits.fetch_add(1, Ordering::Relaxed);
            let n: u64 = txn
                .ops
                .iter()
                .map(|op| match op {
                    Op::Put { value, .. } => value.len() as u64,
                    Op::Delete { .. } => 0,
                })
                .sum();
            self.c.bytes_written.fetch_add(n, Ordering::Relaxed);
            let rev = self.inner.commit_at(txn).await?;
            if rev.is_none() {
                self.c.cas_failed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(rev)
        })
    }

    /// The view's watches: not counted (a watch is one stream, not a
    /// request per change; etcd's own count below says the same).
    fn watch<'l0, 'l1, 'a>(&'l0 self, prefix: &'l1 str, after: u64) -> StoreFut<'a, WatchStream>
    where
        'l0: 'a,
        'l1: 'a,
        Self: 'a,
    {
        Box::pin(async move { self.inner.watch(prefix, after).await })
    }

    fn keeps_history(&self) -> bool {
        self.inner.keeps_history()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

// ------------------------------------------------------------ the world

fn tor_name(i: usize) -> String {
    format!("tor-{:02}", i + 1)
}

fn node_name(i: usize) -> String {
    format!("node-{:04}", i + 1)
}

fn pool_name(i: usize) -> String {
    format!("app-{:04}", i + 1)
}

/// What the allocators choose from.
struct World {
    /// Per node: its ToR's index. Node 0 is left to the real ipamd.
    node_tor: Vec<usize>,
    /// Per ToR: (pool index, how many IPs the pool has there).
    slots: Vec<Vec<(usize, u32)>>,
    /// Per ToR, parallel to `slots`: how many of those IPs the bench holds.
    held: Vec<Vec<AtomicU32>>,
    pool_names: Vec<String>,
    tor_names: Vec<String>,
    seq: AtomicU64,
}

impl World {
    /// A pool with room on `node`'s ToR, reserved; None when its ToR is full.
    fn pick_on(&self, rng: &mut Rng, node: usize) -> Option<(usize, usize)> {
        let tor = self.node_tor[node];
        let n = self.slots[tor].len();
        let start = rng.below(n);
        (0..n).map(|i| (start + i) % n).find_map(|s| {
            let cap = self.slots[tor][s].1;
            self.held[tor][s]
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| {
                    (h < cap).then_some(h + 1)
                })
                .ok()
                .map(|_| (tor, s))
        })
    }

    /// The node allocator `i` of `n` plays: one per ToR while there are
    /// ToRs enough (node 0 is the real ipamd's).
    fn node_for(&self, i: usize) -> usize {
        let tors = self.slots.len();
        let (tor, nth) = (i % tors, i / tors);
        (1..self.node_tor.len())
            .filter(|&node| self.node_tor[node] == tor)
            .nth(nth)
            .unwrap_or(1 + i % (self.node_tor.len() - 1))
    }

    fn unreserve(&self, tor: usize, slot: usize) {
        self.held[tor][slot].fetch_sub(1, Ordering::Relaxed);
    }
}

/// One allocation the bench holds.
#[derive(Clone)]
struct Held {
    key: AttachmentKey,
    ip: IpAddr,
    pool: usize,
    tor: usize,
    slot: usize,
}

struct Done {
    held: Held,
    total: Duration,
}

// ----------------------------------------------------------------- setup

struct Setup {
    tors_wall: Duration,
    nodes_wall: Duration,
    pools_wall: Duration,
    pool_create: Stats,
    pool_count: Count,
    carved_bytes_max: usize,
    carved_bytes_mean: usize,
    pool_bytes_mean: usize,
    all_tors: Value,
}

async fn setup(
    o: &Opts,
    url: &str,
    ipam: &Arc<Ipam>,
    counters: &Arc<Counters>,
) -> Res<(Setup, World)> {
    let t = Instant::now();
    for i in 0..o.tors {
        let n = i + 1;
        ipam.add_tor(
            &tor_name(i),
            &format!("10.{n}.0.0/21"),
            &format!("10.{n}.0.1"),
            0,
            &[(
                format!("10.{n}.{}", TOR_RANGE.0),
                format!("10.{n}.{}", TOR_RANGE.1),
            )],
            "",
        )
        .await
        .map_err(|e| format!("tor add {}: {e}", tor_name(i)))?;
    }
    let tors_wall = t.elapsed();
    println!("setup: {} ToRs in {:.2} s", o.tors, tors_wall.as_secs_f64());

    // The node registry, as each node's ipamd writes it at start.
    let node_tor: Vec<usize> = (0..o.nodes).map(|i| i * o.tors / o.nodes).collect();
    let t = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let node_tor_a = Arc::new(node_tor.clone());
    let mut tasks = Vec::new();
    for _ in 0..o.setup_concurrency {
        let (store, next, node_tor) = (ipam.store().clone(), next.clone(), node_tor_a.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= node_tor.len() {
                    return Ok::<(), String>(());
                }
                let now = now_unix();
                let rec = moor_ipamd::ipam::registry::NodeRecord {
                    name: node_name(i),
                    tor: tor_name(node_tor[i]),
                    mode: "physical".into(),
                    version: "bench".into(),
                    started_unix: now,
                    heartbeat_unix: now,
                };
                moor_ipamd::ipam::registry::beat(store.as_ref(), &rec)
                    .await
                    .map_err(|e| format!("registering {}: {e}", rec.name))?;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let nodes_wall = t.elapsed();
    println!(
        "setup: {} node records in {:.2} s",
        o.nodes,
        nodes_wall.as_secs_f64()
    );

    // The pools, `setup_concurrency` at a time, like several admins or an
    // operator creating them in parallel.
    let before = counters.snap();
    let t = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..o.setup_concurrency {
        let (ipam, next, o) = (ipam.clone(), next.clone(), o.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= o.pools {
                    return Ok::<_, String>(lat);
                }
                let spec = PoolSpec {
                    name: pool_name(i),
                    namespace: NAMESPACE.into(),
                    app: pool_name(i),
                    size: o.pool_size,
                    tors: (0..o.tors_per_pool)
                        .map(|k| tor_name((i + k) % o.tors))
                        .collect(),
                    ..PoolSpec::default()
                };
                let t = Instant::now();
                ipam.create_pool(&spec, now_unix())
                    .await
                    .map_err(|e| format!("pool create {}: {e}", spec.name))?;
                lat.push(t.elapsed());
                if (i + 1) % 500 == 0 {
                    println!("setup: {} pools", i + 1);
                }
            }
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.map_err(|e| e.to_string())??);
    }
    let pools_wall = t.elapsed();
    let pool_count = counters.snap().since(before);
    let pool_create = stats(lat);
    println!(
        "setup: {} pools of {} in {:.1} s ({:.0} pools/s), {} failed compare-and-swaps",
        o.pools,
        o.pool_size,
        pools_wall.as_secs_f64(),
        o.pools as f64 / pools_wall.as_secs_f64(),
        pool_count.cas_failed
    );

    // What the allocators pick from: the pools as stored.
    let pools = ipam.pools().await.map_err(|e| e.to_string())?;
    let tor_names: Vec<String> = (0..o.tors).map(tor_name).collect();
    let tor_index: HashMap<&str, usize> = tor_names
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let pool_names: Vec<String> = (0..o.pools).map(pool_name).collect();
    let pool_index: HashMap<&str, usize> = pool_names
        .iter()
        .enumerate()
        .map(|(i, p)| (p.as_str(), i))
        .collect();
    let mut slots: Vec<Vec<(usize, u32)>> = vec![Vec::new(); o.tors];
    let mut total = 0usize;
    for p in &pools {
        let pi = pool_index[p.name.as_str()];
        for (tor, ips) in &p.ips {
            if !ips.is_empty() {
                slots[tor_index[tor.as_str()]].push((pi, ips.len() as u32));
                total += ips.len();
            }
        }
    }
    if pools.len() != o.pools || total != o.pools * o.pool_size as usize {
        return Err(format!(
            "after setup: {} pools with {total} IPs, expected {} with {}",
            pools.len(),
            o.pools,
            o.pools * o.pool_size as usize
        ));
    }
    let held = slots
        .iter()
        .map(|s| s.iter().map(|_| AtomicU32::new(0)).collect())
        .collect();

    // Record sizes: what pool create and `ip show` read.
    let raw = open_store(url).await?;
    let mut carved = Vec::new();
    for t in &tor_names {
        // Schema 2: every record under the ToR's prefix (one per pool there
        // and one of cooling IPs) is what a carving reads.
        let (entries, _) = raw
            .list(&format!("carved/{t}/"))
            .await
            .map_err(|e| e.to_string())?;
        carved.push(entries.iter().map(|e| e.value.len()).sum());
    }
    let (pool_entries, _) = raw.list("pools/").await.map_err(|e| e.to_string())?;
    let pool_bytes_mean =
        pool_entries.iter().map(|e| e.value.len()).sum::<usize>() / pool_entries.len().max(1);

    // One pool over every ToR (PoolSpec.tors empty): reads every ToR's
    // carved record and rewrites those it takes IPs from, in one
    // transaction. Once with the usual size (not every ToR gets an IP), once
    // big enough to touch every ToR. Each is deleted again.
    let mut all_tors = Vec::new();
    for size in [o.pool_size, 2 * o.tors as u32] {
        let name = format!("all-tors-{size}");
        let spec = PoolSpec {
            name: name.clone(),
            namespace: NAMESPACE.into(),
            app: name.clone(),
            size,
            ..PoolSpec::default()
        };
        let before = counters.snap();
        let t = Instant::now();
        let r = ipam.create_pool(&spec, now_unix()).await;
        let took = t.elapsed();
        let c = counters.snap().since(before);
        all_tors.push(json!({
            "size": size,
            "ok": r.is_ok(),
            "ms": ms(took),
            "error": r.as_ref().err().map(|e| e.to_string()),
            "round_trips": c.round_trips(),
            "bytes_read": c.bytes_read,
            "bytes_written": c.bytes_written,
        }));
        let what = format!(
            "setup: one pool of {size} over all {} ToRs: {:.1} ms, {} round trips, read {} KiB, {} {} KiB",
            o.tors,
            ms(took),
            c.round_trips(),
            c.bytes_read / 1024,
            if r.is_ok() { "wrote" } else { "tried to write" },
            c.bytes_written / 1024
        );
        match r {
            Ok(_) => {
                println!("{what}");
                ipam.delete_pool(&name, now_unix())
                    .await
                    .map_err(|e| format!("deleting pool {name}: {e}"))?;
            }
            Err(e) => println!("{what}: FAILED: {e}"),
        }
    }
    let all_tors = Value::from(all_tors);

    Ok((
        Setup {
            tors_wall,
            nodes_wall,
            pools_wall,
            pool_create,
            pool_count,
            carved_bytes_max: carved.iter().copied().max().unwrap_or(0),
            carved_bytes_mean: carved.iter().sum::<usize>() / carved.len().max(1),
            pool_bytes_mean,
            all_tors,
        },
        World {
            node_tor,
            slots,
            held,
            pool_names,
            tor_names,
            seq: AtomicU64::new(0),
        },
    ))
}

// ------------------------------------------------------------ allocation

struct Run {
    concurrency: usize,
    allocs: usize,
    alloc_wall: Duration,
    total: Stats,
    alloc_count: Count,
    release_wall: Duration,
    release: Stats,
    release_count: Count,
    held_audit: Duration,
    /// CPU seconds of etcd and of the bench process while allocating.
    alloc_cpu: Cpu,
    release_cpu: Cpu,
    ipamd: Option<Value>,
    /// What etcd itself served per allocation and per release.
    alloc_etcd: metrics::PerOp,
    release_etcd: metrics::PerOp,
    /// Single compare-and-swap transactions at the same concurrency.
    floor: metrics::Floor,
}

/// One allocator: its own `Ipam` (and view) on its own etcd connection,
/// like the ipamd of `node`; `n` allocations on the pools of its ToR.
async fn allocator(
    ipam: Arc<Ipam>,
    world: Arc<World>,
    node: usize,
    n: usize,
    seed: u64,
) -> Res<Vec<Done>> {
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    for _ in 0..n {
        let (tor, slot) = world
            .pick_on(&mut rng, node)
            .ok_or_else(|| format!("{}: its ToR's pools are full", node_name(node)))?;
        let pool = world.slots[tor][slot].0;
        let seq = world.seq.fetch_add(1, Ordering::Relaxed);
        let app = &world.pool_names[pool];
        let pod = names::deployment_pod(app, seq);
        let key = AttachmentKey {
            node: node_name(node),
            container_id: names::container_id(),
            ifname: "eth0".into(),
        };
        let pod = PodRef {
            namespace: NAMESPACE.into(),
            name: pod,
            uid: format!("uid-{seq}"),
        };
        let (choice, stable) = PoolChoice::by_name(&pod, None);
        let req = AllocRequest {
            key: key.clone(),
            pod,
            choice,
            stable,
            netns: format!("/var/run/netns/cni-{}", &key.container_id[..16]),
            network: "moor".into(),
            tor: world.tor_names[tor].clone(),
            now_unix: now_unix(),
        };
        let t = Instant::now();
        let a = ipam
            .allocate(&req)
            .await
            .map_err(|e| format!("allocate {key} in {app}: {e}"))?;
        let total = t.elapsed();
        let ip = a.lease.ip;
        if a.lease.pool != *app || a.lease.tor != world.tor_names[tor] || a.existing {
            return Err(format!(
                "{key}: got {ip} of pool {} on {} (existing {}), asked {app} on {}",
                a.lease.pool, a.lease.tor, a.existing, world.tor_names[tor]
            ));
        }
        out.push(Done {
            held: Held {
                key,
                ip,
                pool,
                tor,
                slot,
            },
            total,
        });
    }
    Ok(out)
}

/// Every lease in etcd is one of ours, attached and ready; no IP twice.
async fn check_held(store: &EtcdStore, held: &[Held], world: &World) -> Res<()> {
    let mut ips = HashSet::new();
    for h in held {
        if !ips.insert(h.ip) {
            return Err(format!("{} was handed out twice", h.ip));
        }
    }
    let (leases, _) = store
        .list_json::<Lease>("leases/")
        .await
        .map_err(|e| e.to_string())?;
    if leases.len() != held.len() {
        return Err(format!(
            "etcd has {} leases, the allocators hold {}",
            leases.len(),
            held.len()
        ));
    }
    let by_ip: HashMap<IpAddr, &Held> = held.iter().map(|h| (h.ip, h)).collect();
    for (l, _) in &leases {
        let Some(h) = by_ip.get(&l.ip) else {
            return Err(format!("lease of {} that no allocator holds", l.ip));
        };
        let ok =
            l.attachment.as_ref().is_some_and(|a| {
                a.key == h.key && a.state == moor_ipamd::core::AttachmentState::Ready
            }) && l.binding.is_none()
                && l.pool == world.pool_names[h.pool];
        if !ok {
            return Err(format!("lease of {} is not {}'s: {l:?}", l.ip, h.key));
        }
    }
    Ok(())
}

async fn audit(store: &EtcdStore, when: &str) -> Res<Duration> {
    let t = Instant::now();
    let bad = moor_ipamd::audit::audit(store)
        .await
        .map_err(|e| format!("audit {when}: {e}"))?;
    if !bad.is_empty() {
        let shown: Vec<&String> = bad.iter().take(10).collect();
        return Err(format!(
            "audit {when}: {} problems, e.g. {shown:#?}",
            bad.len()
        ));
    }
    Ok(t.elapsed())
}

#[allow(clippy::too_many_arguments)]
async fn run_level(
    o: &Opts,
    url: &str,
    conc: usize,
    world: &Arc<World>,
    raw: &EtcdStore,
    ipamd_here: bool,
    etcd: &Etcd,
    dir: &Path,
) -> Res<Run> {
    let counters = Arc::new(Counters::default());
    let mut ipams = Vec::new();
    for i in 0..conc {
        let inner = Arc::new(open_store(url).await?);
        // Connect before the clock starts.
        inner.get("warm-up").await.map_err(|e| e.to_string())?;
        let ipam = Arc::new(Ipam::new(Arc::new(Counting {
            inner,
            c: counters.clone(),
        })));
        let node = world.node_for(i);
        ipam.serve_node(&node_name(node));
        ipam.start_view(&world.tor_names[world.node_tor[node]]);
        ipams.push((ipam, node));
    }
    // Every view caught up (listed and watching) before the clock starts.
    let t = Instant::now();
    for (ipam, node) in &ipams {
        let view = ipam
            .view_for(&world.tor_names[world.node_tor[*node]])
            .ok_or("no view")?;
        while !view.ready() {
            if t.elapsed() > Duration::from_secs(120) {
                return Err("the allocators' views did not catch up in 120 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    println!(
        "{conc:>3} views:      caught up in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let allocs = if conc == 1 {
        o.allocs_single.min(o.allocs)
    } else {
        o.allocs
    };
    // The floor, at this concurrency, on connections of its own.
    let mut clients = Vec::new();
    for _ in 0..conc {
        clients.push(open_store(url).await?.client());
    }
    let floor_ops = if conc == 1 {
        o.floor_ops.min(allocs)
    } else {
        o.floor_ops
    };
    let shaped_clients = clients.clone();
    // The floor runs before and after the allocations, half each: etcd's
    // state (and the machine's load) moves during a level, and the ADDs
    // are held to the floor of the same span.
    let run_floor = |when: &'static str| {
        let clients = clients.clone();
        async move {
            let cpu0 = cpu_now(etcd);
            let f = metrics::floor(
                url,
                clients,
                "/moor-floor/",
                floor_ops.div_ceil(2),
                o.idle_cap,
            )
            .await?;
            let c = cpu_now(etcd).since(cpu0);
            println!(
                "{conc:>3} floor {when}: {} single-CAS txns in {:.1} s ({:.0}/s), p50 {:.2} ms, p99 {:.2} ms, {:.2} etcd requests each, CPU per txn: etcd {:.2} ms, bench {:.2} ms, others {:.2} cores",
                f.ops,
                f.wall.as_secs_f64(),
                f.ops as f64 / f.wall.as_secs_f64(),
                ms(stats(f.latencies.clone()).p50),
                ms(stats(f.latencies.clone()).p99),
                f.per_op.total(),
                c.etcd * 1e3 / f.ops as f64,
                c.bench * 1e3 / f.ops as f64,
                c.others / f.wall.as_secs_f64(),
            );
            Ok::<_, String>(f)
        }
    };
    settle(raw).await?;
    let floor_before = run_floor("before").await?;
    // Allocate.
    settle(raw).await?;
    let scraped = metrics::scrape(url)?;
    let cpu0 = cpu_now(etcd);
    let before = counters.snap();
    let t = Instant::now();
    let mut tasks = Vec::new();
    // An allocator allocates on its own ToR only: at most its share of the
    // room there.
    let mut on_tor: HashMap<usize, usize> = HashMap::new();
    for (_, node) in &ipams {
        *on_tor.entry(world.node_tor[*node]).or_default() += 1;
    }
    for (i, (ipam, node)) in ipams.iter().enumerate() {
        let seed = (conc as u64) << 32 | i as u64;
        let tor = world.node_tor[*node];
        let room: u32 = world.slots[tor].iter().map(|(_, n)| n).sum();
        let quota =
            (allocs / conc + usize::from(i < allocs % conc)).min(room as usize / on_tor[&tor]);
        tasks.push(tokio::spawn(allocator(
            ipam.clone(),
            world.clone(),
            *node,
            quota,
            seed,
        )));
    }
    // Each allocator releases what it allocated (its view follows those
    // pools).
    let mut held_by: Vec<Vec<Held>> = Vec::new();
    let mut done = Vec::new();
    for t in tasks {
        let mine = t.await.map_err(|e| e.to_string())??;
        held_by.push(mine.iter().map(|d| d.held.clone()).collect());
        done.extend(mine);
    }
    let alloc_wall = t.elapsed();
    let alloc_count = counters.snap().since(before);
    let cpu1 = cpu_now(etcd);
    let alloc_etcd = metrics::per_op(
        url,
        &scraped,
        &metrics::scrape(url)?,
        done.len(),
        o.idle_cap,
    )
    .await?;
    let alloc_cpu = cpu1.since(cpu0);
    let total = stats(done.iter().map(|d| d.total).collect());
    println!(
        "{conc:>3} allocators: {} allocations in {:.1} s ({:.0}/s), p50 {:.2} ms, p99 {:.2} ms",
        done.len(),
        alloc_wall.as_secs_f64(),
        done.len() as f64 / alloc_wall.as_secs_f64(),
        ms(total.p50),
        ms(total.p99)
    );
    settle(raw).await?;
    let floor = floor_before.and(run_floor("after ").await?);
    let held: Vec<Held> = done.into_iter().map(|d| d.held).collect();
    check_held(raw, &held, world).await?;
    let held_audit = audit(raw, "with every allocation held").await?;
    println!(
        "{conc:>3} allocators: held allocations check out (audit {:.1} s)",
        held_audit.as_secs_f64()
    );

    let ipamd = if ipamd_here {
        Some(ipamd_part(o, url, dir, world, etcd).await?)
    } else {
        None
    };

    // Release, with the same concurrency.
    settle(raw).await?;
    let scraped = metrics::scrape(url)?;
    let cpu0 = cpu_now(etcd);
    let before = counters.snap();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for ((ipam, _), mine) in ipams.iter().zip(held_by) {
        let (ipam, world) = (ipam.clone(), world.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for h in &mine {
                let t = Instant::now();
                let r = ipam
                    .release(&h.key, false)
                    .await
                    .map_err(|e| format!("release {}: {e}", h.key))?;
                lat.push(t.elapsed());
                match r {
                    Some(r) if r.ip == h.ip && !r.binding_kept => {}
                    other => return Err(format!("release {}: {other:?}", h.key)),
                }
                world.unreserve(h.tor, h.slot);
            }
            Ok::<_, String>(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.map_err(|e| e.to_string())??);
    }
    let release_wall = t.elapsed();
    let release_count = counters.snap().since(before);
    let cpu1 = cpu_now(etcd);
    let release_etcd =
        metrics::per_op(url, &scraped, &metrics::scrape(url)?, lat.len(), o.idle_cap).await?;
    let release_cpu = cpu1.since(cpu0);
    let release = stats(lat);
    println!(
        "{conc:>3} allocators: {} releases in {:.1} s ({:.0}/s), p50 {:.2} ms, p99 {:.2} ms",
        release.n,
        release_wall.as_secs_f64(),
        release.n as f64 / release_wall.as_secs_f64(),
        ms(release.p50),
        ms(release.p99)
    );
    check_held(raw, &[], world).await?;
    audit(raw, "after releasing everything").await?;
    // Diagnostic, last: the floor's transactions shaped like an ADD (three
    // compares, one put) or as asked, to tell the transaction's shape from
    // the rest.
    if let Some(shape) = &o.shaped_floor {
        let cpu0 = cpu_now(etcd);
        let f = metrics::floor_shaped(
            url,
            shaped_clients,
            "/moor-floor-add/",
            floor_ops,
            o.idle_cap,
            Some(*shape),
        )
        .await?;
        let c = cpu_now(etcd).since(cpu0);
        println!(
            "{conc:>3} shaped floor (compares/puts {}/{}): {:.0}/s, p99 {:.2} ms, CPU per txn: etcd {:.2} ms, bench {:.2} ms",
            shape.compares,
            shape.puts,
            f.ops as f64 / f.wall.as_secs_f64(),
            ms(stats(f.latencies.clone()).p99),
            c.etcd * 1e3 / f.ops as f64,
            c.bench * 1e3 / f.ops as f64,
        );
    }
    Ok(Run {
        concurrency: conc,
        allocs: held.len(),
        alloc_wall,
        total,
        alloc_count,
        release_wall,
        release,
        release_count,
        held_audit,
        alloc_cpu,
        release_cpu,
        ipamd,
        alloc_etcd,
        release_etcd,
        floor,
    })
}

// ----------------------------------------------------------------- ipamd

/// target/release/ipamd and ipamctl, next to this bench's executable.
fn release_bin(name: &str) -> Res<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut dir = exe.parent().ok_or("bench has no directory")?.to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let p = dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "{} is missing: cargo build --release --bin ipamd --bin ipamctl (./scripts/bench-etcd does)",
            p.display()
        ))
    }
}

async fn ipamd_part(o: &Opts, url: &str, dir: &Path, world: &World, etcd: &Etcd) -> Res<Value> {
    let ipamd_bin = release_bin("ipamd")?;
    let ipamctl_bin = release_bin("ipamctl")?;
    let ns = Netns::add(format!("moor-bench-etcd-{}", std::process::id()))?;
    try_ip(&["-n", &ns.name, "link", "add", "br0", "type", "bridge"])?;
    // A pinned MAC (BRIEF.md): a bridge otherwise takes its ports' lowest.
    try_ip(&[
        "-n",
        &ns.name,
        "link",
        "set",
        "br0",
        "address",
        "02:00:00:be:0c:01",
        "up",
    ])?;
    let socket = dir.join("ipamd.sock");
    let log_path = dir.join("ipamd.log");
    let node = node_name(0);
    let tor = &world.tor_names[world.node_tor[0]];
    let cmd = IpamdCommand::new(&ipamd_bin, &socket, &log_path)
        .args(["--store", &format!("etcd:{url}"), "--etcd-prefix", PREFIX])
        .args(["--node", &node, "--tor", tor, "--bridge", "br0"])
        .arg("--netns")
        .arg(ns.path())
        .arg("--local-state")
        .arg(dir.join("local.redb"))
        .arg("--pending-dir")
        .arg(dir.join("pending"))
        .args(["--log", "warn"])
        // If this process dies without running Drop, ipamd goes too.
        .kill_with_thread()
        .within(Duration::from_secs(20));
    let t = Instant::now();
    let guard = tokio::task::block_in_place(|| cmd.start())?;
    let pid = guard.pid().to_string();
    let start_ms = ms(t.elapsed());
    let rss_start = proc_kib(&pid, "VmRSS");
    println!(
        "ipamd ({node} on {tor}): up in {start_ms:.0} ms, VmRSS {}",
        mib(rss_start)
    );
    // Start-up work (watches, the first reconcile) settles within seconds:
    // the baseline is VmRSS once it holds still.
    let rss_settled = settled_rss(&pid).await;
    let hwm_start = proc_kib(&pid, "VmHWM");
    // The peak of the admin calls alone: writing 5 to clear_refs resets
    // VmHWM to the current VmRSS (Linux 4.0+).
    let hwm_reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
    println!(
        "ipamd: VmRSS {} settled, peak so far (VmHWM) {}{}",
        mib(rss_settled),
        mib(hwm_start),
        if hwm_reset {
            ""
        } else {
            " (VmHWM could not be reset: the peak below includes start-up)"
        }
    );

    let pool = &world.pool_names[1];
    // The listings of everything first, so their RSS is theirs alone.
    let calls: Vec<(String, Vec<String>)> = vec![
        ("ip list".into(), vec!["ip".into(), "list".into()]),
        ("pool list".into(), vec!["pool".into(), "list".into()]),
        (
            format!("pool show {pool}"),
            vec!["pool".into(), "show".into(), pool.clone()],
        ),
        (
            format!("ip list --pool {pool}"),
            vec!["ip".into(), "list".into(), "--pool".into(), pool.clone()],
        ),
        ("tor list".into(), vec!["tor".into(), "list".into()]),
        ("node list".into(), vec!["node".into(), "list".into()]),
        (
            "ip show 10.2.0.20".into(),
            vec!["ip".into(), "show".into(), "10.2.0.20".into()],
        ),
        ("ip list (again)".into(), vec!["ip".into(), "list".into()]),
    ];
    let mut results = Vec::new();
    for (what, args) in calls {
        let t = Instant::now();
        let out = tokio::process::Command::new(&ipamctl_bin)
            .arg("--socket")
            .arg(&socket)
            .args(["-o", "json"])
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| format!("ipamctl {what}: {e}"))?;
        let took = t.elapsed();
        let ok = out.status.success();
        let items = serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().map(Vec::len));
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let rss = proc_kib(&pid, "VmRSS");
        println!(
            "ipamd: ipamctl {what}: {} in {:.0} ms, {} bytes of JSON{}; ipamd VmRSS {}",
            if ok { "ok" } else { "FAILED" },
            ms(took),
            out.stdout.len(),
            items.map_or(String::new(), |n| format!(" ({n} items)")),
            mib(rss)
        );
        if !ok {
            println!("ipamd:   {}", err.lines().next().unwrap_or(""));
        }
        results.push(json!({
            "call": what, "ok": ok, "ms": ms(took), "json_bytes": out.stdout.len(),
            "items": items, "error": (!ok).then_some(err), "vmrss_kib": rss,
        }));
    }
    let rss_end = proc_kib(&pid, "VmRSS");
    let hwm = proc_kib(&pid, "VmHWM");
    let rss_after = |call: &str| {
        results
            .iter()
            .find(|r| r["call"] == call)
            .and_then(|r| r["vmrss_kib"].as_u64())
    };
    let (rss_ip_list, rss_pool_list) = (rss_after("ip list"), rss_after("pool list"));
    let ratio = match (hwm, rss_settled) {
        (Some(h), Some(s)) if s > 0 => Some(h as f64 / s as f64),
        _ => None,
    };
    println!(
        "ipamd: VmRSS {} settled, {} after ip list, {} after pool list, {} at the end; peak (VmHWM) of the admin calls {} = {} x settled; etcd VmRSS {}",
        mib(rss_settled),
        mib(rss_ip_list),
        mib(rss_pool_list),
        mib(rss_end),
        mib(hwm),
        ratio.map_or("?".into(), |r| format!("{r:.2}")),
        mib(proc_kib(&etcd.pid(), "VmRSS"))
    );
    if o.keep_logs {
        let kept =
            std::env::temp_dir().join(format!("moor-bench-ipamd-{}.log", std::process::id()));
        let _ = std::fs::copy(&log_path, &kept);
        eprintln!("ipamd's log: {}", kept.display());
    }
    drop(guard);
    Ok(json!({
        "node": node, "tor": tor, "start_ms": start_ms,
        "vmrss_start_kib": rss_start, "vmrss_settled_kib": rss_settled,
        "vmhwm_start_kib": hwm_start,
        "vmrss_after_ip_list_kib": rss_ip_list, "vmrss_after_pool_list_kib": rss_pool_list,
        "vmrss_end_kib": rss_end, "vmhwm_kib": hwm, "vmhwm_reset": hwm_reset,
        "peak_over_settled": ratio,
        "calls": results,
    }))
}

/// VmRSS once two samples 500 ms apart differ by less than 1% (at most
/// 10 s of waiting).
async fn settled_rss(pid: &str) -> Option<u64> {
    let mut last = proc_kib(pid, "VmRSS")?;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = proc_kib(pid, "VmRSS")?;
        if now.abs_diff(last) * 100 < last {
            return Some(now);
        }
        last = now;
    }
    Some(last)
}

// ------------------------------------------------------------------ main

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

async fn bench(o: Opts, etcd: &Etcd, dir: &Path, split: Option<cpus::Split>) -> Res<Value> {
    let load_start = loadavg();
    println!("load average before the run: {load_start}");
    let cpus_line = match &split {
        Some(s) => format!(
            "CPUs split: etcd on {}, the bench on {}",
            cpus::describe(&s.etcd),
            cpus::describe(&s.bench)
        ),
        None => "CPUs shared by etcd and the bench".to_string(),
    };
    println!("{cpus_line}");
    // All of the machine's, the bench's and etcd's together when split.
    let cores = match &split {
        Some(s) => s.etcd.len() + s.bench.len(),
        None => std::thread::available_parallelism().map_or(0, |n| n.get()),
    };
    let url = etcd.url();
    let first = open_store(&url).await?;
    let counters = Arc::new(Counters::default());
    let admin = Arc::new(Ipam::new(Arc::new(Counting {
        inner: Arc::new(first),
        c: counters.clone(),
    })));
    let raw = open_store(&url).await?;

    let t_setup = Instant::now();
    let (s, world) = setup(&o, &url, &admin, &counters).await?;
    let world = Arc::new(world);
    let setup_wall = t_setup.elapsed();
    audit(&raw, "after setup").await?;

    let mut runs = Vec::new();
    for (i, &c) in o.concurrency.iter().enumerate() {
        let last = i + 1 == o.concurrency.len();
        runs.push(run_level(&o, &url, c, &world, &raw, last && o.ipamd, etcd, dir).await?);
    }

    let mut status = raw.client();
    let st = status.status().await.map_err(|e| e.to_string())?;
    let db_size = st.db_size();
    let db_in_use = st.raft_used_db_size();
    let etcd_rss = proc_kib(&etcd.pid(), "VmRSS");
    let etcd_hwm = proc_kib(&etcd.pid(), "VmHWM");
    let bench_hwm = proc_kib("self", "VmHWM");
    let load_end = loadavg();

    // ---- the table
    println!();
    println!(
        "== moor etcd scale: {} ToRs, {} nodes, {} pools of {} over {} ToRs each ({} IPs), {} cores",
        o.tors,
        o.nodes,
        o.pools,
        o.pool_size,
        o.tors_per_pool,
        o.pools * o.pool_size as usize,
        cores
    );
    println!("{cpus_line}");
    println!(
        "setup                 {:.1} s: ToRs {:.2} s, node records {:.2} s, pools {:.1} s ({:.0} pools/s at {} at once; create p50 {:.1} ms, p99 {:.1} ms; {} CAS retries)",
        setup_wall.as_secs_f64(),
        s.tors_wall.as_secs_f64(),
        s.nodes_wall.as_secs_f64(),
        s.pools_wall.as_secs_f64(),
        o.pools as f64 / s.pools_wall.as_secs_f64(),
        o.setup_concurrency,
        ms(s.pool_create.p50),
        ms(s.pool_create.p99),
        s.pool_count.cas_failed
    );
    println!(
        "records               carved/<tor>/ {:.1} KiB (max {:.1}), pools/<name> {} B; per pool create: {:.1} round trips, read {:.1} KiB, wrote {:.1} KiB",
        s.carved_bytes_mean as f64 / 1024.0,
        s.carved_bytes_max as f64 / 1024.0,
        s.pool_bytes_mean,
        s.pool_count.round_trips() as f64 / o.pools as f64,
        s.pool_count.bytes_read as f64 / o.pools as f64 / 1024.0,
        s.pool_count.bytes_written as f64 / o.pools as f64 / 1024.0
    );
    println!();
    println!(
        "{:<26} {:>5} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "ms per op", "conc", "ops", "ops/s", "mean", "p50", "p90", "p99", "max"
    );
    for r in &runs {
        let line = |what: &str, st: &Stats, wall: Option<Duration>| {
            println!(
                "{:<26} {:>5} {:>7} {:>7} {}",
                what,
                r.concurrency,
                st.n,
                wall.map_or("".into(), |w| format!(
                    "{:.0}",
                    st.n as f64 / w.as_secs_f64()
                )),
                st.row()
            )
        };
        line("allocate", &r.total, Some(r.alloc_wall));
        line("release", &r.release, Some(r.release_wall));
    }
    println!();
    println!(
        "{:<26} {:>5} {:>7} {:>6} {:>6} {:>8} {:>9} {:>9} {:>10} {:>10} {:>8}",
        "etcd calls, CPU per op",
        "conc",
        "trips",
        "gets",
        "lists",
        "commits",
        "CAS fail",
        "read B",
        "etcd CPU",
        "bench CPU",
        "others"
    );
    for r in &runs {
        for (what, c, n, cpu, wall) in [
            (
                "allocate",
                r.alloc_count,
                r.allocs,
                r.alloc_cpu,
                r.alloc_wall,
            ),
            (
                "release",
                r.release_count,
                r.allocs,
                r.release_cpu,
                r.release_wall,
            ),
        ] {
            let f = |v: u64| v as f64 / n.max(1) as f64;
            let cpu_ms = |s: f64| format!("{:.2} ms", s * 1e3 / n.max(1) as f64);
            println!(
                "{:<26} {:>5} {:>7.2} {:>6.2} {:>6.2} {:>8.2} {:>9.3} {:>9.0} {:>10} {:>10} {:>8}",
                what,
                r.concurrency,
                f(c.round_trips()),
                f(c.gets),
                f(c.lists),
                f(c.commits),
                f(c.cas_failed),
                f(c.bytes_read),
                cpu_ms(cpu.etcd),
                cpu_ms(cpu.bench),
                format!("{:.2} c", cpu.others / wall.as_secs_f64())
            );
        }
    }
    println!();
    println!(
        "etcd's own count: requests per op (grpc_server_handled_total by method), watch events sent per op (etcd_debugging_mvcc_events_total: how many views a put reached), idle traffic subtracted"
    );
    let methods: Vec<String> = {
        let mut m: Vec<String> = runs
            .iter()
            .flat_map(|r| [&r.alloc_etcd, &r.release_etcd, &r.floor.per_op])
            .flat_map(|p| p.by_method.keys().cloned())
            .collect();
        m.sort();
        m.dedup();
        m
    };
    print!("{:<26} {:>5} {:>7}", "", "conc", "total");
    for m in &methods {
        print!(" {m:>11}");
    }
    println!(" {:>12} {:>12}", "idle req/s", "watch events");
    for r in &runs {
        for (what, p) in [
            ("allocate", &r.alloc_etcd),
            ("release", &r.release_etcd),
            ("floor: one CAS txn", &r.floor.per_op),
        ] {
            print!("{what:<26} {:>5} {:>7.2}", r.concurrency, p.total());
            for m in &methods {
                print!(" {:>11.2}", p.get(m));
            }
            println!(" {:>12.2} {:>12.2}", p.idle_per_s, p.watch_events);
        }
    }
    println!();
    println!(
        "moor's ADD (allocate) against the floor (single compare-and-swap txns, same etcd, same concurrency)"
    );
    println!(
        "{:>5} {:>12} {:>10} {:>10} {:>10} {:>10} {:>14} {:>14}",
        "conc",
        "floor ops/s",
        "floor p50",
        "floor p99",
        "ADD ops/s",
        "ADD p99",
        "ADD/floor rate",
        "ADD/floor p99"
    );
    let floor_rows: Vec<Value> = runs
        .iter()
        .map(|r| {
            let f = stats(r.floor.latencies.clone());
            let floor_rate = r.floor.ops as f64 / r.floor.wall.as_secs_f64();
            let add_rate = r.allocs as f64 / r.alloc_wall.as_secs_f64();
            println!(
                "{:>5} {:>12.0} {:>10.2} {:>10.2} {:>10.0} {:>10.2} {:>14.3} {:>14.2}",
                r.concurrency,
                floor_rate,
                ms(f.p50),
                ms(f.p99),
                add_rate,
                ms(r.total.p99),
                add_rate / floor_rate,
                ms(r.total.p99) / ms(f.p99)
            );
            json!({
                "concurrency": r.concurrency,
                "floor_ops": r.floor.ops,
                "floor_per_s": floor_rate,
                "floor": f.json(),
                "floor_etcd_per_op": r.floor.per_op.json(),
                "add_per_s": add_rate,
                "ratio_add_rate_over_floor": add_rate / floor_rate,
                "ratio_add_p99_over_floor_p99": ms(r.total.p99) / ms(f.p99),
            })
        })
        .collect();
    println!();
    println!(
        "memory                bench process peak {}; etcd VmRSS {}, peak {}; etcd db {:.0} MiB ({:.0} MiB in use)",
        mib(bench_hwm),
        mib(etcd_rss),
        mib(etcd_hwm),
        db_size as f64 / 1048576.0,
        db_in_use as f64 / 1048576.0
    );
    println!("load average           {load_start} before, {load_end} after (\"others\" above: cores busy with other processes)");
    if let Some(v) = runs.iter().find_map(|r| r.ipamd.as_ref()) {
        println!(
            "ipamd                 VmRSS {} after start (settled), {} after ip list of all {} IPs, {} after pool list, peak {} = {} x after start",
            mib(v["vmrss_settled_kib"].as_u64()),
            mib(v["vmrss_after_ip_list_kib"].as_u64()),
            o.pools * o.pool_size as usize,
            mib(v["vmrss_after_pool_list_kib"].as_u64()),
            mib(v["vmhwm_kib"].as_u64()),
            v["peak_over_settled"]
                .as_f64()
                .map_or("?".into(), |r| format!("{r:.2}"))
        );
    }

    Ok(json!({
        "bench": "etcd_scale",
        "tors": o.tors, "nodes": o.nodes, "pools": o.pools, "pool_size": o.pool_size,
        "tors_per_pool": o.tors_per_pool, "ips": o.pools * o.pool_size as usize,
        "cores": cores,
        "cpu_split": split.as_ref().map(|s| json!({"etcd": s.etcd, "bench": s.bench})),
        "loadavg_start": load_start,
        "etcd_args": o.etcd_args,
        "loadavg_end": load_end,
        "setup": {
            "wall_s": setup_wall.as_secs_f64(),
            "tors_s": s.tors_wall.as_secs_f64(),
            "nodes_s": s.nodes_wall.as_secs_f64(),
            "pools_s": s.pools_wall.as_secs_f64(),
            "pools_per_s": o.pools as f64 / s.pools_wall.as_secs_f64(),
            "setup_concurrency": o.setup_concurrency,
            "pool_create": s.pool_create.json(),
            "per_pool_create": s.pool_count.per(o.pools),
            "carved_bytes_mean": s.carved_bytes_mean,
            "carved_bytes_max": s.carved_bytes_max,
            "pool_bytes_mean": s.pool_bytes_mean,
            "pool_over_all_tors": s.all_tors,
        },
        "runs": runs.iter().map(|r| json!({
            "concurrency": r.concurrency,
            "allocs": r.allocs,
            "alloc_per_s": r.allocs as f64 / r.alloc_wall.as_secs_f64(),
            "alloc": r.total.json(),
            "per_alloc": r.alloc_count.per(r.allocs),
            "release_per_s": r.release.n as f64 / r.release_wall.as_secs_f64(),
            "release": r.release.json(),
            "per_release": r.release_count.per(r.allocs),
            "audit_held_s": r.held_audit.as_secs_f64(),
            "alloc_cpu_ms_per_op": {
                "etcd": r.alloc_cpu.etcd * 1e3 / r.allocs.max(1) as f64,
                "bench": r.alloc_cpu.bench * 1e3 / r.allocs.max(1) as f64,
                "others_cores": r.alloc_cpu.others / r.alloc_wall.as_secs_f64(),
            },
            "alloc_etcd_per_op": r.alloc_etcd.json(),
            "release_etcd_per_op": r.release_etcd.json(),
            "release_cpu_ms_per_op": {
                "etcd": r.release_cpu.etcd * 1e3 / r.allocs.max(1) as f64,
                "bench": r.release_cpu.bench * 1e3 / r.allocs.max(1) as f64,
                "others_cores": r.release_cpu.others / r.release_wall.as_secs_f64(),
            },
        })).collect::<Vec<_>>(),
        "memory": {
            "bench_vmhwm_kib": bench_hwm,
            "etcd_vmrss_kib": etcd_rss,
            "etcd_vmhwm_kib": etcd_hwm,
            "etcd_db_bytes": db_size,
            "etcd_db_in_use_bytes": db_in_use,
        },
        "ipamd": runs.iter().find_map(|r| r.ipamd.clone()),
        "floor": floor_rows,
    }))
}

fn main() -> ExitCode {
    let o = match parse_opts() {
        Ok(Some(o)) => o,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("etcd_scale: {e}");
            return ExitCode::from(2);
        }
    };
    if o.ipamd && !nix::unistd::geteuid().is_root() {
        eprintln!(
            "etcd_scale: the ipamd part needs root (a network namespace with a bridge): run sudo ./scripts/bench-etcd, or pass --no-ipamd"
        );
        return ExitCode::from(2);
    }
    let dir = std::env::temp_dir().join(format!("moor-bench-etcd-{}", std::process::id()));
    // Dropped last: after etcd and ipamd are gone.
    let _dir = match TempDir::create(dir.clone()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("etcd_scale: {e}");
            return ExitCode::FAILURE;
        }
    };
    // With --split-cpus the main thread, still the only one, takes etcd's
    // CPUs to start it and the bench's after (`cpus.rs`).
    let split = match o.split_cpus.then(cpus::split).transpose() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("etcd_scale: {e}");
            return ExitCode::from(2);
        }
    };
    let bind = |cpus: &[usize]| {
        cpus::bind_this_thread(cpus).map_err(|e| eprintln!("etcd_scale: --split-cpus: {e}"))
    };
    if let Some(s) = &split {
        if bind(&s.etcd).is_err() {
            return ExitCode::FAILURE;
        }
    }
    // etcd is started here, on the main thread, so PDEATHSIG follows this
    // process and not some worker thread.
    let etcd = match Etcd::start(&dir.join("etcd"), o.keep_logs, &o.etcd_args) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("etcd_scale: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(s) = &split {
        if bind(&s.bench).is_err() {
            return ExitCode::FAILURE;
        }
    }
    if let Err(e) = etcd.cluster.wait_ready(Duration::from_secs(30)) {
        eprintln!("etcd_scale: {e}");
        return ExitCode::FAILURE;
    }
    // At least two workers, also on the one CPU a split leaves the bench
    // here, as with the cores shared. With one, a split run ended in
    // "KeepAliveTimedOut" on the run's last read: the idle connection's
    // keep-alive answer (1.5 s timeout) waited, most likely, behind a long
    // synchronous step such as the audit of every record.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let r = rt.block_on(async {
        tokio::select! {
            r = bench(o, &etcd, &dir, split) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    drop(etcd);
    match r {
        Ok(v) => {
            println!("total run {:.0} s", started.elapsed().as_secs_f64());
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("etcd_scale: {e}");
            ExitCode::FAILURE
        }
    }
}
