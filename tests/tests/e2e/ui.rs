//! Issue 14's pool page: `ipamctl ui` in front of a real ipamd (redb), its
//! page loaded by Debian's headless Chromium. The DOM after the page's
//! script ran must show every ToR, pool, node and IP with the counts
//! `ipamctl -o json` prints; a page left open shows an ADD and an ipamd
//! outage by itself; with 2,000 pools it searches and pages. Fails (never
//! skips) without chromium.

use moor_e2e::grpc::unix_channel;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use moor_e2e::chromium::{png_size, Browser, Chromium, WINDOW};
use moor_e2e::names::{container_id, deployment_pod, statefulset_pod};
use moor_e2e::testbed::{POD_NAMESPACE, TOR};
use moor_e2e::ui::{element, rows, Row, UiServer};
use moor_e2e::{Counts, Pod, Testbed};
use moor_proto::v1::admin_client::AdminClient;
use moor_proto::v1::CreatePoolRequest;
use moor_testkit::TempDir;
use serde_json::json;

/// `ipamctl ui --refresh`: short, so the tests see refreshes soon.
const REFRESH_SECONDS: u64 = 1;
/// Virtual time Chromium gives the page before its screenshot or DOM dump.
/// Fetches in flight hold virtual time still, so this is the page's timers'
/// time (a load or two), not a guess at how fast the machine is.
const BUDGET_MS: u32 = 1500;
/// A change in ipamd shows on an open page at its next refresh: within one
/// interval plus the time a load takes. The margin is for a loaded test
/// machine; the behaviour is "within the interval".
const SEEN_WITHIN: Duration = Duration::from_secs(REFRESH_SECONDS + 9);

fn add(tb: &Testbed, pod: &Pod) -> Ipv4Addr {
    let r = tb.moor("ADD", pod, &container_id(), "1.0.0", &json!({}), None);
    r.ok(&format!("ADD {}", pod.name));
    r.ip()
}

fn counts(row: &Row) -> Counts {
    Counts {
        total: row.num("total"),
        bound: row.num("bound"),
        in_use: row.num("in-use"),
        free: row.num("free"),
    }
}

/// The page's `body` attributes: `data-state` (loading, ok, error) and
/// `data-loads` (loads done since it opened); ("", 0) before the page is
/// there (a new tab is about:blank first).
fn page_state(dom: &str) -> (String, u64) {
    let Some(body) = element(dom, "page") else {
        return (String::new(), 0);
    };
    let loads = body.attr("data-loads").unwrap_or("0").parse().unwrap();
    (body.attr("data-state").unwrap_or("").to_string(), loads)
}

/// Pool rows (totals) by pool, and pool-per-ToR rows by (pool, ToR).
type PoolRows = (BTreeMap<String, Row>, BTreeMap<(String, String), Row>);

fn pool_rows(dom: &str) -> PoolRows {
    let mut pools = BTreeMap::new();
    let mut per_tor = BTreeMap::new();
    for r in rows(dom) {
        match (r.attr("data-pool"), r.attr("data-tor")) {
            (Some(p), None) => {
                pools.insert(p.to_string(), r);
            }
            (Some(p), Some(t)) => {
                per_tor.insert((p.to_string(), t.to_string()), r);
            }
            _ => {}
        }
    }
    (pools, per_tor)
}

/// Rows that carry `attr` (and no data-pool), by its value.
fn rows_by(dom: &str, attr: &str) -> BTreeMap<String, Row> {
    rows(dom)
        .into_iter()
        .filter(|r| r.attr("data-pool").is_none())
        .filter_map(|r| Some((r.attr(attr)?.to_string(), r)))
        .collect()
}

/// The pools in the page's table, in its order.
fn pool_names(dom: &str) -> Vec<String> {
    rows(dom)
        .into_iter()
        .filter(|r| r.attr("data-tor").is_none())
        .filter_map(|r| r.attr("data-pool").map(str::to_string))
        .collect()
}

/// Asserts the DOM shows exactly ipamd's ToRs, pools (with their per-ToR
/// rows), the node, and `pool`'s IPs, with ipamctl's counts.
fn assert_page_shows(dom: &str, tb: &Testbed, pool: &str) {
    let ctl = tb.ctl();
    assert_eq!(page_state(dom).0, "ok", "the page loaded its data");
    let listed = ctl.json(&["pool", "list"]);
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let (pools, per_tor) = pool_rows(dom);
    assert_eq!(
        pools.keys().map(String::as_str).collect::<Vec<_>>(),
        names,
        "every pool, by name"
    );
    // The ToRs' sums, worked out here from `pool show`.
    let mut tor_sums: BTreeMap<String, (Counts, u64)> = BTreeMap::new();
    let mut tor_cells = BTreeSet::new();
    for name in &names {
        let (totals, by_tor) = ctl.pool_counts_per_tor(name);
        assert_eq!(counts(&pools[*name]), totals, "pool {name}'s totals");
        for (tor, c) in by_tor {
            let row = per_tor
                .get(&(name.to_string(), tor.clone()))
                .unwrap_or_else(|| panic!("no row for pool {name} in ToR {tor}"));
            assert_eq!(counts(row), c, "pool {name} in ToR {tor}");
            tor_cells.insert((name.to_string(), tor.clone()));
            let zero = Counts {
                total: 0,
                bound: 0,
                in_use: 0,
                free: 0,
            };
            let (sum, n) = tor_sums.entry(tor).or_insert((zero, 0));
            *sum = Counts {
                total: sum.total + c.total,
                bound: sum.bound + c.bound,
                in_use: sum.in_use + c.in_use,
                free: sum.free + c.free,
            };
            *n += 1;
        }
    }
    assert_eq!(
        per_tor.keys().cloned().collect::<BTreeSet<_>>(),
        tor_cells,
        "a row per pool and ToR it has IPs in, no other"
    );

    let tors = ctl.json(&["tor", "list"]);
    let tor_names: Vec<&str> = tors
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    let tor_rows = rows_by(dom, "data-tor");
    assert_eq!(
        tor_rows.keys().map(String::as_str).collect::<Vec<_>>(),
        tor_names,
        "every ToR"
    );
    for (tor, (sum, n)) in &tor_sums {
        let row = &tor_rows[tor];
        assert_eq!(counts(row), *sum, "ToR {tor}: its pools' counts summed");
        assert_eq!(row.num("pools"), *n, "ToR {tor}: its pools");
    }

    let nodes = rows_by(dom, "data-node");
    assert_eq!(nodes.keys().collect::<Vec<_>>(), [&tb.node]);
    assert_eq!(nodes[&tb.node].cell("alive"), "yes");
    assert_eq!(nodes[&tb.node].cell("tor"), TOR);

    let count = element(dom, "pool-count").expect("the pool count");
    assert_eq!(count.attr("data-total"), Some(&*names.len().to_string()));

    // The pool's IPs with their pod, node and state, as `ip list` has them.
    let ips = rows_by(dom, "data-ip");
    let listed = ctl.json(&["ip", "list", "--pool", pool]);
    let listed = listed.as_array().unwrap();
    assert_eq!(ips.len(), listed.len(), "every IP of {pool}");
    for ip in listed {
        let address = ip["address"].as_str().unwrap();
        let row = ips
            .get(address)
            .unwrap_or_else(|| panic!("{address} of {pool} is not shown"));
        let pod = if ip["binding"].is_object() {
            &ip["binding"]
        } else {
            &ip["attachment"]["pod"]
        };
        let pod = match (pod["namespace"].as_str(), pod["name"].as_str()) {
            (Some(ns), Some(name)) => format!("{ns}/{name}"),
            _ => String::new(),
        };
        assert_eq!(
            row.cell("state"),
            ip["state"].as_str().unwrap(),
            "{address}"
        );
        assert_eq!(row.cell("pod"), pod, "{address}");
        assert_eq!(
            row.cell("node"),
            ip["attachment"]["node"].as_str().unwrap_or(""),
            "{address}"
        );
        assert_eq!(row.cell("tor"), ip["tor"].as_str().unwrap(), "{address}");
    }
}

/// Polls the open page's DOM until `done` holds; panics with the last DOM's
/// state after `within`.
fn wait_for(
    browser: &mut Browser,
    what: &str,
    within: Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    let start = Instant::now();
    loop {
        let dom = browser.dom();
        if done(&dom) {
            return dom;
        }
        assert!(
            start.elapsed() < within,
            "{what}: not on the page within {within:?}; page state {:?}, banner {:?}",
            page_state(&dom),
            element(&dom, "error").map(|e| e.text)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn page_shows_every_tor_and_pool_and_follows_ipamd() {
    let tb = Testbed::new();
    let ctl = tb.ctl();
    // A second ToR, without a node: pools spread over both.
    ctl.tor_add(
        "rack-2",
        "172.30.0.0/24",
        Ipv4Addr::new(172, 30, 0, 1),
        (Ipv4Addr::new(172, 30, 0, 10), Ipv4Addr::new(172, 30, 0, 99)),
        &["--vlan", "30"],
    );
    ctl.create_pool("web", "web", 6, &[]);
    ctl.create_pool("api", "api", 4, &[TOR]);
    ctl.create_pool("db", "db", 3, &["rack-2"]);
    let (_, web_tors) = ctl.pool_counts_per_tor("web");
    assert_eq!(
        web_tors.len(),
        2,
        "web spreads over both ToRs: {web_tors:?}"
    );
    // Every state: in use (ADDs), bound (an IP kept for a pod not yet there).
    add(&tb, &tb.pod(&statefulset_pod("web", 0)));
    add(&tb, &tb.pod(&deployment_pod("api", 1)));
    let db_ip = ctl.pool_export("db").remove(0);
    ctl.ok(&["binding", "add", &format!("{POD_NAMESPACE}/db-0"), &db_ip]);

    let ui = UiServer::start(&tb.bins().ipamctl, &tb.socket, REFRESH_SECONDS as u32);
    let chromium = Chromium::new();
    let shots = TempDir::new("moor-ui-shot");
    let png = shots.join("page.png");
    chromium.screenshot(&ui.url("?pool=web"), &png, BUDGET_MS);
    let bytes = std::fs::read(&png).expect("chromium wrote the screenshot");
    assert_eq!(png_size(&bytes), Some(WINDOW), "a PNG of the laptop window");
    // A blank 1280x800 page compresses to a few KB; tables, text and bars
    // make tens of KB.
    assert!(
        bytes.len() > 20_000,
        "the screenshot is nearly empty: {} bytes",
        bytes.len()
    );
    if let Some(keep) = std::env::var_os("MOOR_UI_SCREENSHOT") {
        std::fs::copy(&png, Path::new(&keep)).expect("copy the screenshot");
    }

    let dom = chromium.dump_dom(&ui.url("?pool=web"), BUDGET_MS);
    assert_page_shows(&dom, &tb, "web");
    // A pool that is not there (deleted while a link to it lives on).
    let (status, body) = ui.get("/api/pools/no-such-pool/ips");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no-such-pool"), "{body}");

    // A page left open follows ipamd by itself.
    let mut browser = Browser::open(&ui.url("?pool=web"));
    let dom = wait_for(
        &mut browser,
        "the first load",
        Duration::from_secs(30),
        |d| page_state(d).0 == "ok",
    );
    let loads = page_state(&dom).1;
    let before = counts(&pool_rows(&dom).0["web"]);
    let ip = add(&tb, &tb.pod(&statefulset_pod("web", 1)));
    let want = ctl.pool_counts("web");
    assert_eq!(want.in_use, before.in_use + 1, "the ADD took an IP of web");
    let dom = wait_for(
        &mut browser,
        "web's counts after an ADD",
        SEEN_WITHIN,
        |d| {
            let shown = pool_rows(d).0.get("web").map(counts);
            let row = rows_by(d, "data-ip").remove(&ip.to_string());
            shown == Some(want)
                && row.is_some_and(|r| {
                    r.cell("state") == "in-use"
                        && r.cell("pod") == format!("{POD_NAMESPACE}/web-1")
                        && r.cell("node") == tb.node
                })
        },
    );
    assert!(
        page_state(&dom).1 > loads,
        "the page reloaded its data itself"
    );
    assert_page_shows(&dom, &tb, "web");

    // ipamd goes away: a banner says so, the last data stays; it comes back.
    tb.stop_ipamd();
    let dom = wait_for(&mut browser, "the banner of an outage", SEEN_WITHIN, |d| {
        page_state(d).0 == "error"
    });
    let banner = element(&dom, "error").unwrap();
    assert!(banner.attr("hidden").is_none(), "the banner shows");
    assert!(
        banner.text.contains("cannot reach ipamd"),
        "{}",
        banner.text
    );
    assert_eq!(
        pool_rows(&dom).0.get("web").map(counts),
        Some(want),
        "the last data stays"
    );
    let (status, body) = ui.get("/api/overview");
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("cannot reach ipamd"), "{body}");
    tb.start_ipamd();
    let dom = wait_for(
        &mut browser,
        "recovery after ipamd is back",
        SEEN_WITHIN,
        |d| page_state(d).0 == "ok",
    );
    assert!(
        element(&dom, "error").unwrap().attr("hidden").is_some(),
        "the banner is gone"
    );
    assert_page_shows(&dom, &tb, "web");
}

/// Pools of the big test, and its page size (the page's default).
const POOLS: usize = 2000;
const PER_PAGE: usize = 50;

fn big_pool(i: usize) -> String {
    format!("pool-{i:04}")
}

fn big_app(i: usize) -> String {
    format!("app-{i}")
}

/// ToRs of the big test. Making a pool reads every carving of its ToR, so
/// 2,000 pools in one ToR take several times as long to make (measured here:
/// 26-40 s, against 13 s over 10 ToRs).
const BIG_TORS: usize = 10;

fn big_tor(i: usize) -> String {
    format!("big-{}", i % BIG_TORS)
}

/// Creates the pools through ipamd's Admin API, one client, one call each:
/// 2,000 `ipamctl pool create` processes would take longer than the test.
fn create_big_pools(socket: &Path) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let channel = unix_channel(socket).await.expect("connect to ipamd");
        let mut admin = AdminClient::new(channel);
        // One at a time: ipamd checks a ToR's carvings unchanged when it
        // commits a pool, so pools made at once in one ToR conflict.
        for i in 0..POOLS {
            let req = CreatePoolRequest {
                name: big_pool(i),
                namespace: POD_NAMESPACE.into(),
                app: big_app(i),
                size: 1,
                tors: vec![big_tor(i)],
                ..Default::default()
            };
            admin
                .create_pool(req)
                .await
                .unwrap_or_else(|e| panic!("create {}: {e}", big_pool(i)));
        }
    });
}

#[test]
fn page_searches_and_pages_two_thousand_pools() {
    let tb = Testbed::new();
    for k in 0..BIG_TORS {
        let ip = |last: u8| Ipv4Addr::new(10, 250, k as u8, last);
        tb.ctl().tor_add(
            &big_tor(k),
            &format!("10.250.{k}.0/24"),
            ip(1),
            (ip(10), ip(250)),
            &[],
        );
    }
    let started = Instant::now();
    create_big_pools(&tb.socket);
    eprintln!("{POOLS} pools created in {:?}", started.elapsed());

    // Refresh longer than the budget: each DOM is one load's.
    let ui = UiServer::start(&tb.bins().ipamctl, &tb.socket, 5);
    let chromium = Chromium::new();
    let load = |query: &str| {
        let dom = chromium.dump_dom(&ui.url(query), BUDGET_MS);
        assert_eq!(page_state(&dom).0, "ok", "{query}: the page loaded");
        dom
    };
    let count = |dom: &str, key: &str| -> usize {
        let c = element(dom, "pool-count").expect("the pool count");
        c.attr(key)
            .unwrap_or_else(|| panic!("no {key}"))
            .parse()
            .unwrap()
    };
    let pager = |dom: &str| -> (usize, usize) {
        let p = element(dom, "pools-pager").expect("the pager");
        let n = |k: &str| p.attr(k).unwrap().parse().unwrap();
        (n("data-page"), n("data-pages"))
    };
    let pages = POOLS.div_ceil(PER_PAGE);

    // The first page, and the one ToR holding them all.
    let dom = load("");
    assert_eq!(count(&dom, "data-total"), POOLS);
    assert_eq!(pager(&dom), (1, pages));
    assert_eq!(
        pool_names(&dom),
        (0..PER_PAGE).map(big_pool).collect::<Vec<_>>()
    );
    let tors = rows_by(&dom, "data-tor");
    for k in 0..BIG_TORS {
        let tor = &tors[&big_tor(k)];
        let n = (POOLS / BIG_TORS) as u64;
        assert_eq!(tor.num("pools"), n, "{}", big_tor(k));
        assert_eq!(tor.num("total"), n, "{}", big_tor(k));
        assert_eq!(tor.num("free"), n, "{}", big_tor(k));
    }

    // A search by app: app-77 and app-770 to app-779.
    let dom = load("?q=app-77");
    let want: Vec<String> = std::iter::once(77).chain(770..780).map(big_pool).collect();
    assert_eq!(pool_names(&dom), want);
    assert_eq!(count(&dom, "data-matching"), want.len());
    assert_eq!(count(&dom, "data-total"), POOLS);
    assert_eq!(pager(&dom), (1, 1));
    // By name, whatever the case typed.
    assert_eq!(pool_names(&load("?q=POOL-1234")), [big_pool(1234)]);
    assert_eq!(pool_names(&load("?q=no-such-pool")), Vec::<String>::new());

    // Paging, alone and within a search.
    let dom = load("?page=7");
    assert_eq!(pager(&dom), (7, pages));
    assert_eq!(
        pool_names(&dom),
        (6 * PER_PAGE..7 * PER_PAGE)
            .map(big_pool)
            .collect::<Vec<_>>()
    );
    let dom = load("?q=pool-1&page=3");
    assert_eq!(count(&dom, "data-matching"), 1000, "pool-1000 to pool-1999");
    assert_eq!(pager(&dom), (3, 1000 / PER_PAGE));
    assert_eq!(
        pool_names(&dom),
        (1100..1150).map(big_pool).collect::<Vec<_>>()
    );
    // Past the end: the last page.
    let dom = load(&format!("?page={}", pages + 1));
    assert_eq!(pager(&dom), (pages, pages));
    assert_eq!(
        pool_names(&dom),
        (POOLS - PER_PAGE..POOLS).map(big_pool).collect::<Vec<_>>()
    );
}

#[test]
fn ui_refuses_a_remote_listen_without_allow_remote() {
    let bins = moor_e2e::bins::bins();
    for (args, flag) in [
        (&["ui", "--listen", "0.0.0.0:0"][..], "--listen"),
        (&["ui", "--listen", "[::]:9472"][..], "--listen"),
        (&["ui", "--refresh", "0"][..], "--refresh"),
    ] {
        let out = std::process::Command::new(&bins.ipamctl)
            .args(["--socket", "/nonexistent/ipamd.sock"])
            .args(args)
            .output()
            .expect("run ipamctl");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("listening"),
            "{args:?}: it served: {stderr}"
        );
        if flag == "--listen" {
            assert!(
                stderr.contains("--allow-remote"),
                "names the way out: {stderr}"
            );
        }
    }
}
