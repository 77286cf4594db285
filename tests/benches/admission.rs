//! Benchmark: admission latency of the controller's webhook. A real
//! `ipamd --role controller` (release binary) with `--webhook-listen`,
//! called as the API server calls it: AdmissionReview v1 over HTTPS on
//! kept-alive HTTP/1.1 connections, 1,000 reviews per run, on the embedded
//! store (redb) and on etcd.
//!
//! Run it with `./scripts/bench-admission [OPTIONS]` (it builds the release
//! `ipamd` first); `--help` lists the options. No root needed. What it does:
//!
//! - Per store: a data set written through the allocation service before
//!   the controller starts (`moor_ipamd::ipam::Ipam`, the code ipamd runs):
//!   40 ToRs, 200 app pools of 30 IPs over 2 ToRs each, 1,000 StatefulSet
//!   pods bound (attached, then released with their binding kept). The
//!   embedded store is a redb file the controller then opens; etcd is a
//!   single member of its own (on disk, /usr/bin/etcd), removed afterwards.
//! - testkit's fake API server holds the namespaces; a certificate (CA and
//!   serving certificate, rcgen) is made for the run.
//! - The reviews cycle through four kinds of pod: a bound StatefulSet pod
//!   (answer: its binding's ToR), an unbound one, a Deployment pod with only
//!   a generateName (both: its pool's ToRs), a pod outside moor's pools (no
//!   patch). Every answer is checked: 200, the uid, allowed, the patch
//!   applied gives exactly the expected ToRs.
//! - Timed per review on the client: request written to response read, TLS
//!   included, the connection kept (as the API server keeps it). 50
//!   untimed reviews first on each connection. With several connections
//!   the reviews are split over them, all in flight at once.
//! - Prints a table (p50, p90, p99, max, reviews/s per store and connection
//!   count) and a final JSON line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use moor_e2e::bench::{
    catch_signals, check_interrupted, commit, cpus, kernel, lat_json, loadavg, ms, pct, round3,
    temp_dir, Args,
};
use moor_e2e::webhook::{apply, bind_on, make_certs, review, Certs, Client};
use moor_ipamd::core::Policy;
use moor_ipamd::ipam::{Ipam, PoolSpec};
use moor_ipamd::store::{self, StoreOptions};
use moor_testkit::cmd::free_port;
use moor_testkit::kubeapi::objects;
use moor_testkit::{EtcdCluster, FakeApi, Ipamd, IpamdCommand, TempDir};
use serde_json::{json, Value};

type Res<T> = Result<T, String>;

const USAGE: &str = "\
admission: latency of the controller's admission webhook: AdmissionReview v1
over HTTPS to a real ipamd --role controller, on the embedded store and etcd.

Usage: ./scripts/bench-admission [OPTIONS]
   or: cargo bench -p moor-e2e --bench admission -- [OPTIONS]
       (after cargo build --release --bin ipamd)

Options:
  --reviews N          timed reviews per run                       [default: 1000]
  --connections LIST   kept-alive connections, comma-separated     [default: 1,8]
  --stores LIST        embedded, etcd                              [default: embedded,etcd]
  --tors N             ToRs                                        [default: 40]
  --pools N            app pools (30 IPs over 2 ToRs each)         [default: 200]
  --bound N            StatefulSet pods with a binding             [default: 1000]
  -h, --help           this text
";

const NS: &str = "bench";
const TOR_LABEL: &str = "moor.io/tor";
const WARMUP: usize = 50;

#[derive(Debug, Clone)]
struct Opts {
    reviews: usize,
    connections: Vec<usize>,
    stores: Vec<String>,
    tors: usize,
    pools: usize,
    bound: usize,
}

fn list(v: &str, what: &str) -> Res<Vec<String>> {
    let items: Vec<String> = v.split(',').map(|s| s.trim().to_string()).collect();
    if items.iter().any(String::is_empty) {
        return Err(format!("{what} {v:?}: an empty item"));
    }
    Ok(items)
}

fn parse_opts() -> Res<Option<Opts>> {
    let mut o = Opts {
        reviews: 1000,
        connections: vec![1, 8],
        stores: vec!["embedded".into(), "etcd".into()],
        tors: 40,
        pools: 200,
        bound: 1000,
    };
    let mut args = Args::new(USAGE);
    while let Some(arg) = args.next_arg() {
        match arg.key.as_str() {
            "-h" | "--help" => return Ok(None),
            "--reviews" => o.reviews = args.number(arg)?,
            "--tors" => o.tors = args.number(arg)?,
            "--pools" => o.pools = args.number(arg)?,
            "--bound" => o.bound = args.number(arg)?,
            "--connections" => {
                let v = args.value(arg, "a list of numbers")?;
                o.connections = list(&v, "--connections")?
                    .iter()
                    .map(|n| n.parse().ok().filter(|n| (1..=64).contains(n)))
                    .collect::<Option<_>>()
                    .ok_or(format!("--connections {v:?}: numbers from 1 to 64"))?;
            }
            "--stores" => {
                let v = args.value(arg, "a list of stores")?;
                o.stores = list(&v, "--stores")?;
                if let Some(s) = o
                    .stores
                    .iter()
                    .find(|s| !["embedded", "etcd"].contains(&s.as_str()))
                {
                    return Err(format!("--stores: {s:?} is not embedded or etcd"));
                }
            }
            _ => return Err(args.unknown(&arg)),
        }
    }
    if o.reviews == 0 || o.tors < 2 || o.pools == 0 {
        return Err("--reviews and --pools must be at least 1, --tors at least 2".into());
    }
    if o.tors > 250 {
        return Err(format!("--tors {}: at most 250 (10.N.0.0/22)", o.tors));
    }
    if o.bound > o.pools * 30 / 2 {
        return Err(format!(
            "--bound {}: at most half the pools' IPs ({})",
            o.bound,
            o.pools * 15
        ));
    }
    Ok(Some(o))
}

/// The release ipamd beside the bench (target/release), or in MOOR_BIN_DIR.
fn ipamd_bin() -> Res<PathBuf> {
    let dir = match std::env::var_os("MOOR_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::current_exe()
            .map_err(|e| format!("the bench's own path: {e}"))?
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .ok_or("cannot find the target dir")?,
    };
    let bin = dir.join("ipamd");
    if !bin.is_file() {
        return Err(format!(
            "{} is missing: run ./scripts/bench-admission (it builds it) or cargo build --release --bin ipamd",
            bin.display()
        ));
    }
    Ok(bin)
}

// ---------------------------------------------------------------- data set

/// A pod to review and the ToRs its answer must name (empty: no patch).
#[derive(Clone)]
struct Case {
    pod: Value,
    tors: Vec<String>,
}

fn sts_pod(app: &str, ordinal: usize) -> Value {
    let mut p = objects::statefulset_pod(NS, app, ordinal as u32)
        .label("app", app)
        .build();
    p.as_object_mut().unwrap().remove("status");
    p
}

/// Writes the data set through `ipam`; returns the cases, a quarter of each
/// kind.
async fn populate(ipam: &Ipam, o: &Opts) -> Res<Vec<Case>> {
    for t in 0..o.tors {
        let range = [(format!("10.{t}.0.10"), format!("10.{t}.3.250"))];
        let (name, subnet, gw) = (
            format!("t{t}"),
            format!("10.{t}.0.0/22"),
            format!("10.{t}.0.1"),
        );
        ipam.add_tor(&name, &subnet, &gw, 0, &range, "")
            .await
            .map_err(|e| format!("tor add {name}: {e}"))?;
    }
    let mut pool_tors = Vec::new();
    for p in 0..o.pools {
        let tors = vec![format!("t{}", p % o.tors), format!("t{}", (p + 1) % o.tors)];
        let pool = ipam
            .create_pool(
                &PoolSpec {
                    name: format!("app{p}"),
                    namespace: NS.into(),
                    app: format!("app{p}"),
                    size: 30,
                    tors,
                    policy: Policy::Auto,
                    allow_namespaces: vec![],
                    ..Default::default()
                },
                0,
            )
            .await
            .map_err(|e| format!("pool create app{p}: {e}"))?;
        let mut on: Vec<String> = pool.ips.keys().cloned().collect();
        on.sort();
        pool_tors.push(on);
    }
    let mut bound = Vec::new();
    for i in 0..o.bound {
        let p = i % o.pools;
        let name = format!("app{p}-{}", i / o.pools);
        let tor = pool_tors[p][i % pool_tors[p].len()].clone();
        bind_on(ipam, NS, &name, &tor, true).await?;
        bound.push(Case {
            pod: sts_pod(&format!("app{p}"), i / o.pools),
            tors: vec![tor],
        });
    }
    let n = o.reviews.max(4);
    let mut cases = Vec::new();
    for i in 0..n {
        let p = i % o.pools;
        let case = match i % 4 {
            0 if !bound.is_empty() => bound[i / 4 % bound.len()].clone(),
            0 | 1 => Case {
                // Beyond the bound ordinals: no binding.
                pod: sts_pod(&format!("app{p}"), 1000 + i),
                tors: pool_tors[p].clone(),
            },
            2 => {
                let mut pod = objects::deployment_pod(NS, &format!("app{p}"), "7d9f8c6b5")
                    .label("app", &format!("app{p}"))
                    .build();
                pod["metadata"].as_object_mut().unwrap().remove("name");
                pod.as_object_mut().unwrap().remove("status");
                Case {
                    pod,
                    tors: pool_tors[p].clone(),
                }
            }
            _ => Case {
                pod: sts_pod(&format!("other{p}"), 0),
                tors: vec![],
            },
        };
        cases.push(case);
    }
    Ok(cases)
}

// ---------------------------------------------------------------- one store

struct Bed {
    _dir: TempDir,
    _api: FakeApi,
    _etcd: Option<EtcdCluster>,
    ipamd: Ipamd,
    certs: Certs,
    listen: std::net::SocketAddr,
    cases: Vec<Case>,
}

fn setup(rt: &tokio::runtime::Runtime, kind: &str, o: &Opts, bin: &Path) -> Res<Bed> {
    let dir = temp_dir(&format!("moor-bench-admission-{kind}"))?;
    let certs = make_certs(dir.path());
    let api = FakeApi::start();
    for ns in ["moor-system", NS] {
        api.create(objects::namespace(ns));
    }
    let kubeconfig = api.write_kubeconfig(dir.path());
    let (etcd, spec, prefix) = match kind {
        "embedded" => (
            None,
            format!("redb:{}", dir.path().join("store.redb").display()),
            String::new(),
        ),
        _ => {
            let id = moor_testkit::unique("adm");
            let etcd = EtcdCluster::start(&dir.path().join("etcd"), 1, &id, &[])?;
            etcd.wait_ready(Duration::from_secs(30))?;
            let spec = format!("etcd:{}", etcd.endpoints().join(","));
            (Some(etcd), spec, format!("/{id}/"))
        }
    };
    let opts = StoreOptions {
        etcd_prefix: if prefix.is_empty() {
            "/moor/".into()
        } else {
            prefix.clone()
        },
        ..StoreOptions::default()
    };
    let started = Instant::now();
    let cases = rt.block_on(async {
        let s = store::open(&spec, &opts).await?;
        let ipam = Ipam::new(s);
        populate(&ipam, o).await
        // The store closes here: the controller opens the redb file next.
    })?;
    eprintln!(
        "{kind}: data set written in {:.1} s ({} ToRs, {} pools, {} bindings)",
        started.elapsed().as_secs_f64(),
        o.tors,
        o.pools,
        o.bound
    );
    let listen: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = IpamdCommand::new(bin, &dir.path().join("s"), &dir.path().join("ipamd.log"))
        .args(["--role", "controller", "--node", "bench"])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--store")
        .arg(&spec)
        .args([
            "--webhook-listen",
            &listen.to_string(),
            "--tor-label",
            TOR_LABEL,
        ])
        .arg("--webhook-cert")
        .arg(&certs.cert)
        .arg("--webhook-key")
        .arg(&certs.key)
        .args(["--log", "warn"]);
    if !prefix.is_empty() {
        cmd = cmd.args(["--etcd-prefix", &prefix]);
    }
    let ipamd = cmd.spawn()?;
    Ok(Bed {
        _dir: dir,
        _api: api,
        _etcd: etcd,
        ipamd,
        certs,
        listen,
        cases,
    })
}

/// The ToRs the answer's patch names (empty: no patch).
fn answered_tors(pod: &Value, answer: &Value, uid: &str) -> Res<Vec<String>> {
    let patched = apply(pod, answer, uid)?;
    if &patched == pod {
        return Ok(vec![]);
    }
    let terms = &patched["spec"]["affinity"]["nodeAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"];
    let e = terms[0]["matchExpressions"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["key"] == TOR_LABEL))
        .ok_or_else(|| format!("no {TOR_LABEL} expression in {patched}"))?;
    serde_json::from_value(e["values"].clone()).map_err(|e| e.to_string())
}

/// One connection's share: `cases` reviewed in order, timed, checked.
async fn drive(bed: &Bed, conn: usize, cases: Vec<Case>) -> Res<Vec<Duration>> {
    let mut client = Client::connect(bed.listen, &bed.certs.ca_pem).await?;
    let mut times = Vec::with_capacity(cases.len());
    for (i, case) in cases.iter().enumerate() {
        let uid = format!("b{conn}-{i}");
        let body = review(&case.pod, NS, &uid);
        let t = Instant::now();
        let answer = client.review(&body).await?;
        let took = t.elapsed();
        let tors = answered_tors(&case.pod, &answer, &uid)?;
        if tors != case.tors {
            return Err(format!(
                "review {uid} of {}: ToRs {tors:?}, expected {:?}",
                case.pod["metadata"]["name"], case.tors
            ));
        }
        if i >= WARMUP {
            times.push(took);
        }
    }
    Ok(times)
}

struct Row {
    store: String,
    connections: usize,
    sorted: Vec<Duration>,
    wall: Duration,
}

fn run_store(rt: &tokio::runtime::Runtime, kind: &str, o: &Opts, bin: &Path) -> Res<Vec<Row>> {
    let bed = setup(rt, kind, o, bin)?;
    // Up within 10 s.
    let start = Instant::now();
    while rt
        .block_on(Client::connect(bed.listen, &bed.certs.ca_pem))
        .is_err()
    {
        if start.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "the webhook did not answer within 10 s:\n{}",
                bed.ipamd.log_tail(30)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut rows = Vec::new();
    for &k in &o.connections {
        check_interrupted()?;
        let shares: Vec<Vec<Case>> = (0..k)
            .map(|c| {
                let mine: Vec<Case> = bed.cases.iter().skip(c).step_by(k).cloned().collect();
                let warm: Vec<Case> = bed
                    .cases
                    .iter()
                    .cycle()
                    .skip(c)
                    .take(WARMUP)
                    .cloned()
                    .collect();
                warm.into_iter().chain(mine).collect()
            })
            .collect();
        let t = Instant::now();
        let results = rt.block_on(async {
            let runs = shares
                .into_iter()
                .enumerate()
                .map(|(c, s)| drive(&bed, c, s));
            futures::future::join_all(runs).await
        });
        let wall = t.elapsed();
        let mut sorted = Vec::new();
        for r in results {
            sorted.extend(r.map_err(|e| format!("{e}\n{}", bed.ipamd.log_tail(20)))?);
        }
        sorted.sort();
        rows.push(Row {
            store: kind.into(),
            connections: k,
            sorted,
            wall,
        });
    }
    let mut ipamd = bed.ipamd;
    if !ipamd.alive() {
        return Err(format!("the controller died:\n{}", ipamd.log_tail(30)));
    }
    Ok(rows)
}

fn main() -> ExitCode {
    let o = match parse_opts() {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("admission: {e}");
            return ExitCode::from(2);
        }
    };
    catch_signals();
    let bin = match ipamd_bin() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("admission: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for kind in &o.stores {
        match run_store(&rt, kind, &o, &bin) {
            Ok(r) => rows.extend(r),
            Err(e) => {
                eprintln!("admission: {kind}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!(
        "admission webhook, {} reviews per run; {} ToRs, {} pools, {} bindings; {} CPUs, kernel {}, load {}, commit {}",
        o.reviews, o.tors, o.pools, o.bound, cpus(), kernel(), loadavg(), commit()
    );
    println!(
        "{:<9} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}",
        "store", "conns", "reviews", "p50 ms", "p90 ms", "p99 ms", "max ms", "reviews/s"
    );
    let mut json_rows = Vec::new();
    for r in &rows {
        // Warm-up reviews ran inside the wall time too.
        let sent = r.sorted.len() + r.connections * WARMUP;
        let rate = sent as f64 / r.wall.as_secs_f64();
        println!(
            "{:<9} {:>5} {:>8} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>10.0}",
            r.store,
            r.connections,
            r.sorted.len(),
            ms(pct(&r.sorted, 50.0)),
            ms(pct(&r.sorted, 90.0)),
            ms(pct(&r.sorted, 99.0)),
            ms(pct(&r.sorted, 100.0)),
            rate
        );
        json_rows.push(json!({
            "store": r.store, "connections": r.connections,
            "latency_ms": lat_json(&r.sorted), "reviews_per_s": round3(rate),
        }));
    }
    println!(
        "{}",
        json!({"bench": "admission", "reviews": o.reviews, "tors": o.tors, "pools": o.pools,
               "bound": o.bound, "cpus": cpus(), "commit": commit(), "runs": json_rows})
    );
    ExitCode::SUCCESS
}
