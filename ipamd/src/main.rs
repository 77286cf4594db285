//! ipamd: allocates sticky IPs from per-app, per-ToR pools and wires pods on
//! this node. See docs/architecture.md.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use moor_ipamd::clock::{Clock, SystemClock};
use moor_ipamd::datapath::{BridgeDatapath, Datapath, OvsConfig, OvsDatapath, ReapPolicy};
use moor_ipamd::ipam::{registry::NodeRecord, Ipam};
use moor_ipamd::node::{heartbeat, tasks, Mirror, Node, NodeConfig};
use moor_ipamd::{api, controller, store};
use tracing::{error, info};

/// The controller's loops make a full pass at least this often.
const CONTROLLER_RESYNC: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    /// Pods go onto a Linux bridge that carries the host's uplink to the ToR.
    Physical,
    /// Pods are VLAN access ports (the VLAN of their ToR) of an Open vSwitch
    /// bridge whose trunk port is the uplink to the ToR (--ovsdb, --uplink).
    Ovs,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Physical => "physical",
            Mode::Ovs => "ovs",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    /// This node's CNI operations: the datapath and the socket (default).
    Node,
    /// The cluster's control loops, one active replica at a time through a
    /// Lease; no datapath, no socket. Needs the Kubernetes API.
    Controller,
    /// Both in one process: a one-node install on the embedded store.
    Both,
}

#[derive(Debug, Parser)]
#[command(name = "ipamd", version, about = "moor's per-node IPAM daemon")]
struct Args {
    /// What this process runs: node, controller or both.
    #[arg(long, env = "MOOR_ROLE", value_enum, default_value = "node")]
    role: Role,
    /// Controller: the coordination.k8s.io/v1 Lease its replicas elect a
    /// leader through.
    #[arg(long, default_value = "moor-controller", value_name = "NAME")]
    lease_name: String,
    /// Controller: the Lease's namespace (the controller's own).
    #[arg(
        long,
        env = "MOOR_LEASE_NAMESPACE",
        default_value = "moor-system",
        value_name = "NAMESPACE"
    )]
    lease_namespace: String,
    /// Controller: a leader that has not renewed for this long is replaced.
    /// It stops acting a third of it earlier, on its own.
    #[arg(long, default_value_t = 15, value_name = "SECONDS")]
    lease_duration_seconds: u64,
    /// Controller: how often the leader renews (at most a third of the
    /// duration); candidates read the Lease this often, at most every 2 s.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    lease_renew_seconds: u64,
    /// Unix socket to serve the CNI and admin APIs on (root-only, 0600).
    #[arg(long, env = "MOOR_SOCKET", default_value = moor_proto::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Where state lives: redb:PATH (embedded, one node) or
    /// etcd:URL[,URL...] (etcd members' client URLs; shared by many nodes).
    #[arg(
        long,
        env = "MOOR_STORE",
        default_value = "redb:/var/lib/moor/ipamd.redb"
    )]
    store: String,
    /// CA certificate (PEM) of the etcd members' certificates (https:// URLs).
    #[arg(long, env = "MOOR_ETCD_CA")]
    etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) to present to etcd; goes with --etcd-key.
    #[arg(long, env = "MOOR_ETCD_CERT")]
    etcd_cert: Option<PathBuf>,
    /// Private key (PEM) of --etcd-cert.
    #[arg(long, env = "MOOR_ETCD_KEY")]
    etcd_key: Option<PathBuf>,
    /// Every key ipamd keeps in etcd is under this prefix.
    #[arg(long, env = "MOOR_ETCD_PREFIX", default_value = "/moor/")]
    etcd_prefix: String,
    /// This node's name, as pods' attachments record it. Default: hostname.
    #[arg(long, env = "MOOR_NODE")]
    node: Option<String>,
    /// The ToR (L2 domain) this node is under. It may be defined later with
    /// `ipamctl tor add`; ADDs fail with a clear error until then. With the
    /// Kubernetes API and no --tor, the node's label --tor-label says it.
    #[arg(long, env = "MOOR_TOR")]
    tor: Option<String>,
    /// Kubeconfig of the API server whose pods this node runs (default: the
    /// in-cluster service account when ipamd runs in a pod; without either,
    /// ipamd reads workloads from pod names, as for podman or plain
    /// containerd).
    #[arg(long, env = "KUBECONFIG", value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// The Node label that names this node's ToR (with the API, no --tor).
    #[arg(long, default_value = "moor.io/tor", value_name = "KEY")]
    tor_label: String,
    /// Owner kinds (GROUP/Kind) whose pods keep their IP under the auto
    /// policy; other controllers' pods give it back. Bare pods always keep
    /// theirs.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "apps/StatefulSet",
        value_name = "GROUP/Kind,..."
    )]
    sticky_owner_kinds: Vec<moor_ipamd::core::OwnerKind>,
    /// Bound on one API request an ADD makes (a pod missing from the cache):
    /// an ADD against an API that does not answer fails with code 11 inside
    /// the runtime's patience.
    #[arg(long, default_value_t = 1500, value_name = "MS")]
    api_timeout_ms: u64,
    /// A pod's failed ADDs are one Event whose count is written back at most
    /// this often.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    event_interval_seconds: u64,
    #[arg(long, value_enum, default_value = "physical")]
    mode: Mode,
    /// Physical mode: the Linux bridge that carries the uplink to the ToR.
    /// OVS mode: the OVS bridge for pods' ports (e.g. br-int), created if
    /// missing. Required by the node role.
    #[arg(long, env = "MOOR_BRIDGE")]
    bridge: Option<String>,
    /// OVS mode: ovsdb-server's endpoint, unix:PATH or tcp:IP:PORT.
    /// Default: unix:/run/openvswitch/db.sock.
    #[arg(long, env = "MOOR_OVSDB", value_name = "ENDPOINT")]
    ovsdb: Option<moor_ovs::Endpoint>,
    /// OVS mode: the node's link to the ToR, made a trunk port of --bridge
    /// (and set up) if it is not one yet. It must exist in ovs-vswitchd's
    /// network namespace (--netns).
    #[arg(long, env = "MOOR_UPLINK", value_name = "IFACE")]
    uplink: Option<String>,
    /// OVS mode: the VLANs the uplink trunks, e.g. 100,200. Default: all.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "VLAN,...",
        requires = "uplink"
    )]
    uplink_vlans: Vec<u16>,
    /// OVS mode: datapath_type of --bridge when ipamd creates it (netdev: the
    /// userspace datapath, for hosts without the openvswitch kernel module).
    /// An existing bridge with another type is an error.
    #[arg(long, value_name = "TYPE")]
    ovs_datapath_type: Option<String>,
    /// OVS mode: bound on each OVSDB call, reconnecting and waiting for
    /// ovs-vswitchd included, in milliseconds.
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    ovsdb_timeout_ms: u64,
    /// Network namespace that holds --bridge and the host ends of pod veths.
    /// Default: ipamd's own. Lets several nodes share one machine (tests)
    /// while ipamd reaches its store from its own namespace.
    #[arg(long, value_name = "PATH")]
    netns: Option<PathBuf>,
    /// Where the plugin records DELs made while ipamd is down. Default: the
    /// socket path + ".pending" (what the plugin uses by default).
    #[arg(long)]
    pending_dir: Option<PathBuf>,
    /// Local copy of this node's attachments, used with an etcd store so DEL,
    /// CHECK, GC and restarts work while etcd is unreachable. Ignored with a
    /// redb store (which is local already).
    #[arg(
        long,
        env = "MOOR_LOCAL_STATE",
        default_value = "/var/lib/moor/local.redb"
    )]
    local_state: PathBuf,
    /// Before a pod uses its IP, probe for another owner of it for this many
    /// milliseconds (RFC 5227 ARP probes; 1-900). A conflict fails the ADD
    /// (code 107) and quarantines the IP until `ipamctl ip release`. Costs
    /// that much ADD latency; 0 (the default) turns it off.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    dad_probe_ms: u64,
    /// A DEL retires the pod's veth at once and a reaper deletes retired
    /// veths in batches: once no ADD or DEL has run for this long...
    #[arg(long, default_value_t = 50, value_name = "MS")]
    reap_quiet_ms: u64,
    /// ...or at the latest this long after the first veth of a batch was
    /// retired. Longer batches hold the kernel's rtnl lock less often.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    reap_max_wait_ms: u64,
    /// CNI GC and the leak sweep leave attachments younger than this alone.
    #[arg(long, default_value_t = 60)]
    gc_grace_seconds: u64,
    /// Every N seconds, release this node's attachments whose host veth is
    /// gone (seen so on two passes in a row, and older than
    /// --gc-grace-seconds): DELs a runtime never sent. In OVS mode, also
    /// remove moor's ports whose interface is gone. 0 turns it off.
    #[arg(long, default_value_t = 60, value_name = "N")]
    reconcile_interval_seconds: u64,
    /// Log filter (tracing EnvFilter syntax), e.g. info or moor_ipamd=debug.
    #[arg(long, env = "MOOR_LOG", default_value = "info")]
    log: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).context("--log")?)
        .init();
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
    if args.api_timeout_ms == 0 || args.event_interval_seconds == 0 {
        bail!("--api-timeout-ms and --event-interval-seconds must be more than 0");
    }
    let store_opts = store::StoreOptions {
        etcd_ca: args.etcd_ca.clone(),
        etcd_cert: args.etcd_cert.clone(),
        etcd_key: args.etcd_key.clone(),
        etcd_prefix: args.etcd_prefix.clone(),
    };
    let store = store::open(&args.store, &store_opts)
        .await
        .map_err(anyhow::Error::msg)?;
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
            resync: CONTROLLER_RESYNC,
        };
        info!(identity = %lease.identity, lease = %format!("{}/{}", lease.namespace, lease.name), store = %store.describe(), "controller started: electing a leader");
        c.start(stopped()).1
    };
    if args.role == Role::Controller {
        let elector = start_controller(Arc::new(Ipam::new(store.clone())));
        let _ = elector.await;
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
        Arc::new(Ipam::new(store.clone())),
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

    let elector = (args.role == Role::Both).then(|| start_controller(node.ipam.clone()));
    let ipam = node.ipam.clone();
    let shutdown = {
        let stopped = stopped();
        async move {
            stopped.await;
            // Watches never end by themselves; requests in flight may finish.
            ipam.shut_down();
        }
    };
    api::serve(node, listener, shutdown).await?;
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
