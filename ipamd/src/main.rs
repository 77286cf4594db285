//! ipamd: allocates sticky IPs from per-app, per-ToR pools and wires pods on
//! this node. See docs/architecture.md.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use moor_ipamd::clock::{Clock, SystemClock};
use moor_ipamd::datapath::{BridgeDatapath, Datapath, OvsConfig, OvsDatapath, ReapPolicy};
use moor_ipamd::ipam::{registry::NodeRecord, Ipam};
use moor_ipamd::node::{heartbeat, tasks, Mirror, Node, NodeConfig};
use moor_ipamd::{api, controller, store};
use tracing::{error, info};

#[path = "main/args.rs"]
mod args;
#[path = "main/pool_ops.rs"]
mod pool_ops;

use args::{Args, GcMode, LogFormat, Mode, Role};

/// The test hook `MOOR_TEST_STOP_AFTER_COMMITS=N` (tests only: see
/// `store::stop`): ipamd aborts right after its N-th store commit, as if
/// killed there.
fn stop_hook(s: Arc<dyn store::Store>) -> anyhow::Result<Arc<dyn store::Store>> {
    let Ok(n) = std::env::var(store::stop::ENV) else {
        return Ok(s);
    };
    let n: u64 = n
        .parse()
        .with_context(|| format!("{}={n:?} is not a number of commits", store::stop::ENV))?;
    tracing::warn!(
        "test hook {}: aborting after {n} store commits",
        store::stop::ENV
    );
    Ok(Arc::new(store::stop::StopAfter::aborting(s, n)))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).context("--log")?);
    match args.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // Fields at the top level, next to "level" and "message", so a log
        // pipeline filters on "pool" or "ip" directly.
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if let Err(e) = rt.block_on(run(args)) {
        error!("{e:#}");
        eprintln!("ipamd: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    let node_name = match args.node.clone() {
        Some(n) => n,
        None => nix::unistd::gethostname()?.to_string_lossy().into_owned(),
    };
    if args.tor.as_deref() == Some("") {
        bail!("--tor is empty: name the ToR this node is under");
    }
    let kube = moor_ipamd::kubernetes::client(args.kubeconfig.as_deref())
        .await
        .map_err(anyhow::Error::msg)?;
    let lease = controller::LeaseConfig {
        namespace: args.lease_namespace.clone(),
        name: args.lease_name.clone(),
        identity: controller::identity(&node_name),
        duration: Duration::from_secs(args.lease_duration_seconds),
        renew_every: Duration::from_secs(args.lease_renew_seconds),
    };
    if args.role != Role::Node {
        if kube.is_none() {
            bail!("--role {}: the controller needs the Kubernetes API: give it --kubeconfig (or run it in a pod with its service account)", role_name(args.role));
        }
        lease.validate().map_err(anyhow::Error::msg)?;
        if args.binding_gc_grace_seconds == 0 {
            bail!("--binding-gc-grace-seconds must be more than 0 (default 600): a pod deleted and re-created by hand would lose its IP in between");
        }
    }
    if args.role != Role::Controller && args.bridge.is_none() {
        bail!("--bridge is missing: name the bridge pods attach to (physical mode: the Linux bridge with the uplink; ovs mode: the OVS bridge)");
    }
    if args.role == Role::Controller {
        for (set, flag) in [
            (args.bridge.is_some(), "--bridge"),
            (args.ovsdb.is_some(), "--ovsdb"),
            (args.uplink.is_some(), "--uplink"),
            (args.netns.is_some(), "--netns"),
        ] {
            if set {
                bail!("{flag} is for --role node or both: the controller runs no datapath");
            }
        }
    }
    if args.role == Role::Node && kube.is_none() && args.tor.is_none() {
        bail!("--tor is missing: name the ToR this node is under (or give ipamd the Kubernetes API with --kubeconfig and label the node: kubectl label node NODE {}=TOR)", args.tor_label);
    }
    let controller = args.role != Role::Node;
    let webhook =
        (args.webhook.bind(controller, &args.tor_label).await).map_err(anyhow::Error::msg)?;
    if args.api_timeout_ms == 0
        || args.event_interval_seconds == 0
        || args.controller_resync_seconds == 0
    {
        bail!("--api-timeout-ms, --event-interval-seconds and --controller-resync-seconds must be more than 0");
    }
    let store_opts = store::StoreOptions {
        etcd_ca: args.etcd_ca.clone(),
        etcd_cert: args.etcd_cert.clone(),
        etcd_key: args.etcd_key.clone(),
        etcd_prefix: args.etcd_prefix.clone(),
    };
    // A port that cannot be had is logged, not fatal: pods' networking must
    // not wait on metrics. Served from now on (until ipamd exits), the
    // node's gauges once it is up.
    let metrics_node: api::metrics::NodeCell = Arc::default();
    if let Some(addr) =
        api::metrics::parse_listen(&args.metrics_listen).map_err(anyhow::Error::msg)?
    {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                info!(addr = %l.local_addr()?, "metrics listening on /metrics");
                let forever = std::future::pending::<()>();
                tokio::spawn(api::metrics::serve(metrics_node.clone(), l, forever));
            }
            Err(e) => error!(%addr, error = %e,
                "--metrics-listen: cannot listen there (another process on the port? pick another, or off); serving without metrics"),
        }
    }
    let store = store::open(&args.store, &store_opts)
        .await
        .map_err(anyhow::Error::msg)?;
    let backend = if args.store.starts_with("etcd:") {
        "etcd"
    } else {
        "redb"
    };
    let store: Arc<dyn store::Store> = Arc::new(store::metered::Metered::new(store, backend));
    let store = stop_hook(store)?;
    // One allocation service for the whole process (node, admin API,
    // controller, webhook): one set of per-pool turns, one view.
    let ipam = Arc::new(Ipam::new(store.clone()).with_cooldown(args.ip_cooldown_seconds));
    // Pool changes a previous run was killed in the middle of are finished
    // (or undone) before anything else.
    pool_ops::finish_at_start(ipam.clone()).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        info!("shutting down");
        stop_tx.send_replace(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let start_controller = |ipam: Arc<Ipam>| {
        let c = controller::Controller {
            client: kube.clone().expect("checked: the controller has the API"),
            lease: lease.clone(),
            ipam,
            clock: Arc::new(SystemClock),
            resync: Duration::from_secs(args.controller_resync_seconds),
            gc_grace: Duration::from_secs(args.binding_gc_grace_seconds),
            gc_auto: args.binding_gc == GcMode::Auto,
            event_interval: Duration::from_secs(args.event_interval_seconds),
        };
        info!(identity = %lease.identity, lease = %format!("{}/{}", lease.namespace, lease.name), store = %store.describe(), "controller started: electing a leader");
        c.start(stopped())
    };
    let mut webhook = webhook.map(|w| {
        let client = kube.clone().expect("checked: the controller has the API");
        let stop = stopped();
        move |ipam| w.start(client, ipam, stop)
    });
    if args.role == Role::Controller {
        let listener = api::bind(&args.socket)
            .with_context(|| format!("binding {}", args.socket.display()))?;
        let _webhook = webhook.take().map(|w| w(ipam.clone()));
        let running = start_controller(ipam);
        api::serve_controller(running.collector, listener, stopped()).await?;
        let _ = std::fs::remove_file(&args.socket);
        // It releases the Lease on the same signal.
        let _ = tokio::time::timeout(Duration::from_secs(3), running.elector).await;
        return Ok(());
    }
    let bridge = args
        .bridge
        .clone()
        .expect("checked: the node role has --bridge");
    if args.dad_probe_ms > 900 {
        bail!(
            "--dad-probe-ms {} is too long: every ADD waits that long; use 1-900 (200 finds a host that answers ARP on a healthy LAN), or 0 to turn the probe off",
            args.dad_probe_ms
        );
    }
    let dad = (args.dad_probe_ms > 0).then(|| Duration::from_millis(args.dad_probe_ms));
    if args.reap_quiet_ms == 0 || args.reap_max_wait_ms < args.reap_quiet_ms {
        bail!(
            "--reap-quiet-ms {} --reap-max-wait-ms {}: give a quiet spell of at least 1 ms and a longest wait at least as long (defaults 50 and 1000)",
            args.reap_quiet_ms,
            args.reap_max_wait_ms
        );
    }
    let reap = ReapPolicy {
        quiet: Duration::from_millis(args.reap_quiet_ms),
        max_wait: Duration::from_millis(args.reap_max_wait_ms),
    };
    let datapath: Arc<dyn Datapath> = match args.mode {
        Mode::Physical => {
            for (set, flag) in [
                (args.ovsdb.is_some(), "--ovsdb"),
                (args.uplink.is_some(), "--uplink"),
                (args.ovs_datapath_type.is_some(), "--ovs-datapath-type"),
            ] {
                if set {
                    bail!("{flag} is for --mode ovs; physical mode attaches the uplink to --bridge itself");
                }
            }
            let dp = BridgeDatapath::new_in(&bridge, args.netns.as_deref())
                .await
                .with_context(|| format!("--bridge {bridge}"))?
                .with_reap_policy(reap);
            Arc::new(match dad {
                Some(w) => dp.with_dad_probe(w),
                None => dp,
            })
        }
        Mode::Ovs => {
            if args.ovsdb_timeout_ms == 0 {
                bail!("--ovsdb-timeout-ms must be more than 0");
            }
            let endpoint = match args.ovsdb.clone() {
                Some(e) => e,
                None => "unix:/run/openvswitch/db.sock".parse()?,
            };
            let cfg = OvsConfig {
                datapath_type: args.ovs_datapath_type.clone(),
                uplink: args.uplink.clone(),
                uplink_vlans: args.uplink_vlans.clone(),
                timeout: Duration::from_millis(args.ovsdb_timeout_ms),
                ..OvsConfig::new(endpoint.clone(), bridge.clone())
            };
            let dp = OvsDatapath::new_in(&cfg, args.netns.as_deref())
                .await
                .with_context(|| format!("--mode ovs --bridge {bridge} --ovsdb {endpoint}"))?
                .with_reap_policy(reap);
            Arc::new(match dad {
                Some(w) => dp.with_dad_probe(w),
                None => dp,
            })
        }
    };
    let pending_dir = args.pending_dir.unwrap_or_else(|| {
        let mut p = args.socket.clone().into_os_string();
        p.push(".pending");
        p.into()
    });
    let mirror = if args.store.starts_with("redb:") {
        None
    } else {
        Some(
            Mirror::open(&args.local_state)
                .with_context(|| format!("--local-state {}", args.local_state.display()))?,
        )
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut node = Node::new(
        NodeConfig {
            name: node_name.clone(),
            tor: args.tor.clone().unwrap_or_default(),
            pending_dir,
            gc_grace: Duration::from_secs(args.gc_grace_seconds),
            sticky_kinds: args.sticky_owner_kinds.clone(),
        },
        ipam,
        datapath,
        mirror,
        clock.clone(),
    );
    if let Some(client) = kube.clone() {
        let opts = moor_ipamd::kubernetes::ApiOptions {
            node: node_name.clone(),
            tor_label: args.tor_label.clone(),
            get_timeout: Duration::from_millis(args.api_timeout_ms),
            event_interval: Duration::from_secs(args.event_interval_seconds),
        };
        let cluster = moor_ipamd::kubernetes::ApiCluster::start(client, opts, clock.clone());
        // A start that serves ADDs before the first lists arrive would GET
        // every pod it is asked about; DELs must not wait long for it either.
        if !cluster.wait_ready(Duration::from_secs(3)).await {
            tracing::warn!("the Kubernetes API has not answered yet; serving meanwhile (ADDs of pods not cached GET them)");
        }
        node = node.with_cluster(cluster);
    }
    let node = Arc::new(node);
    let recovered = node.recover().await.context("recovering after start")?;
    let started = clock.now_unix();
    let me = NodeRecord {
        name: node_name.clone(),
        tor: node.tor().unwrap_or_default(),
        mode: args.mode.as_str().into(),
        version: env!("CARGO_PKG_VERSION").into(),
        started_unix: started,
        heartbeat_unix: started,
    };
    if let Err(e) = moor_ipamd::ipam::registry::beat(store.as_ref(), &me).await {
        // The heartbeat retries; DEL and CHECK must work meanwhile.
        tracing::warn!(error = %e, "could not register this node yet");
    }
    heartbeat::spawn_heartbeat(node.clone(), me);
    let listener =
        api::bind(&args.socket).with_context(|| format!("binding {}", args.socket.display()))?;
    let _ = metrics_node.set(node.clone());
    info!(
        node = %node_name,
        tor = %node.tor().unwrap_or_else(|e| e.to_string()),
        store = %store.describe(),
        socket = %args.socket.display(),
        "ipamd ready"
    );

    // DELs the plugin recorded while we could not be reached (it may have
    // raced our start) are picked up within seconds; a start during a store
    // outage finishes its recovery once it answers.
    tasks::spawn_replay(node.clone(), recovered);
    if args.reconcile_interval_seconds > 0 {
        let every = Duration::from_secs(args.reconcile_interval_seconds);
        tasks::spawn_sweep(node.clone(), every);
    }

    let controller = (args.role == Role::Both).then(|| start_controller(node.ipam.clone()));
    let (elector, collector) = match controller {
        Some(c) => (Some(c.elector), Some(c.collector)),
        None => (None, None),
    };
    let _webhook = webhook.take().map(|w| w(node.ipam.clone()));
    let ipam = node.ipam.clone();
    let shutdown = {
        let stopped = stopped();
        async move {
            stopped.await;
            // Watches never end by themselves; requests in flight may finish.
            ipam.shut_down();
        }
    };
    api::serve(node, collector, listener, shutdown).await?;
    let _ = std::fs::remove_file(&args.socket);
    if let Some(elector) = elector {
        // It releases the Lease on the same signal.
        let _ = tokio::time::timeout(Duration::from_secs(3), elector).await;
    }
    Ok(())
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Node => "node",
        Role::Controller => "controller",
        Role::Both => "both",
    }
}
