//! ipamd's command line: every flag, its default and what it is for.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Mode {
    /// Pods go onto a Linux bridge that carries the host's uplink to the ToR.
    Physical,
    /// Pods are VLAN access ports (the VLAN of their ToR) of an Open vSwitch
    /// bridge whose trunk port is the uplink to the ToR (--ovsdb, --uplink).
    Ovs,
}

impl Mode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Mode::Physical => "physical",
            Mode::Ovs => "ovs",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum GcMode {
    Auto,
    Manual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Role {
    /// This node's CNI operations: the datapath and the socket (default).
    Node,
    /// The cluster's control loops, one active replica at a time through a
    /// Lease; no datapath; its socket serves only `ipamctl gc`. Needs the
    /// Kubernetes API.
    Controller,
    /// Both in one process: a one-node install on the embedded store.
    Both,
}

#[derive(Debug, Parser)]
#[command(name = "ipamd", version, about = "moor's per-node IPAM daemon")]
pub(crate) struct Args {
    /// What this process runs: node, controller or both.
    #[arg(long, env = "MOOR_ROLE", value_enum, default_value = "node")]
    pub(crate) role: Role,
    /// Controller: the coordination.k8s.io/v1 Lease its replicas elect a
    /// leader through.
    #[arg(long, default_value = "moor-controller", value_name = "NAME")]
    pub(crate) lease_name: String,
    /// Controller: the Lease's namespace (the controller's own).
    #[arg(
        long,
        env = "MOOR_LEASE_NAMESPACE",
        default_value = "moor-system",
        value_name = "NAMESPACE"
    )]
    pub(crate) lease_namespace: String,
    /// Controller: a leader that has not renewed for this long is replaced.
    /// It stops acting a third of it earlier, on its own.
    #[arg(long, default_value_t = 15, value_name = "SECONDS")]
    pub(crate) lease_duration_seconds: u64,
    /// Controller: how often the leader renews (at most a third of the
    /// duration); candidates read the Lease this often, at most every 2 s.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub(crate) lease_renew_seconds: u64,
    #[command(flatten)]
    pub(crate) webhook: moor_ipamd::controller::webhook::WebhookFlags,
    /// Controller: a binding is released once no pod of its name and no
    /// StatefulSet that would own it has existed for this long; an
    /// attachment whose pod is gone, once its Node has been NotReady this
    /// long (or is deleted) and moor's agent there has stopped reporting.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    pub(crate) binding_gc_grace_seconds: u64,
    /// Controller: `auto` releases what is due every few seconds; `manual`
    /// keeps counting the grace but releases only on `ipamctl gc`.
    #[arg(long, value_enum, default_value = "auto")]
    pub(crate) binding_gc: GcMode,
    /// Controller: a full pass of its loops at least this often (besides
    /// one on every workload change): retries failed writes and deletes a
    /// gone workload's pool once its last IP is released.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub(crate) controller_resync_seconds: u64,
    /// IPs a pool gives back (it shrank or was deleted) are carved by no
    /// pool for this long, so a database never sees another app's pod on
    /// an IP it still trusts (whitelists are updated first). 0: at once.
    #[arg(long, default_value_t = moor_ipamd::ipam::DEFAULT_IP_COOLDOWN_SECS, value_name = "SECONDS")]
    pub(crate) ip_cooldown_seconds: u64,
    /// Unix socket to serve the CNI and admin APIs on (root-only, 0600); the
    /// controller role serves its own API there (`ipamctl gc`).
    #[arg(long, env = "MOOR_SOCKET", default_value = moor_proto::DEFAULT_SOCKET)]
    pub(crate) socket: PathBuf,
    /// Where state lives: redb:PATH (embedded, one node) or
    /// etcd:URL[,URL...] (etcd members' client URLs; shared by many nodes).
    #[arg(
        long,
        env = "MOOR_STORE",
        default_value = "redb:/var/lib/moor/ipamd.redb"
    )]
    pub(crate) store: String,
    /// CA certificate (PEM) of the etcd members' certificates (https:// URLs).
    #[arg(long, env = "MOOR_ETCD_CA")]
    pub(crate) etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) to present to etcd; goes with --etcd-key.
    #[arg(long, env = "MOOR_ETCD_CERT")]
    pub(crate) etcd_cert: Option<PathBuf>,
    /// Private key (PEM) of --etcd-cert.
    #[arg(long, env = "MOOR_ETCD_KEY")]
    pub(crate) etcd_key: Option<PathBuf>,
    /// Every key ipamd keeps in etcd is under this prefix.
    #[arg(long, env = "MOOR_ETCD_PREFIX", default_value = "/moor/")]
    pub(crate) etcd_prefix: String,
    /// This node's name, as pods' attachments record it. Default: hostname.
    #[arg(long, env = "MOOR_NODE")]
    pub(crate) node: Option<String>,
    /// The ToR (L2 domain) this node is under. It may be defined later with
    /// `ipamctl tor add`; ADDs fail with a clear error until then. With the
    /// Kubernetes API and no --tor, the node's label --tor-label says it.
    #[arg(long, env = "MOOR_TOR")]
    pub(crate) tor: Option<String>,
    /// Kubeconfig of the API server whose pods this node runs (default: the
    /// in-cluster service account when ipamd runs in a pod; without either,
    /// ipamd reads workloads from pod names, as for podman or plain
    /// containerd).
    #[arg(long, env = "KUBECONFIG", value_name = "PATH")]
    pub(crate) kubeconfig: Option<PathBuf>,
    /// The Node label that names this node's ToR (with the API, no --tor);
    /// the webhook's node affinity and spread are on it.
    #[arg(long, default_value = "moor.io/tor", value_name = "KEY")]
    pub(crate) tor_label: String,
    /// Owner kinds (GROUP/Kind) whose pods keep their IP under the auto
    /// policy; other controllers' pods give it back. Bare pods always keep
    /// theirs.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "apps/StatefulSet",
        value_name = "GROUP/Kind,..."
    )]
    pub(crate) sticky_owner_kinds: Vec<moor_ipamd::core::OwnerKind>,
    /// Bound on one API request an ADD makes (a pod missing from the cache):
    /// an ADD against an API that does not answer fails with code 11 inside
    /// the runtime's patience.
    #[arg(long, default_value_t = 1500, value_name = "MS")]
    pub(crate) api_timeout_ms: u64,
    /// A pod's failed ADDs are one Event whose count is written back at most
    /// this often.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub(crate) event_interval_seconds: u64,
    #[arg(long, value_enum, default_value = "physical")]
    pub(crate) mode: Mode,
    /// Physical mode: the Linux bridge that carries the uplink to the ToR.
    /// OVS mode: the OVS bridge for pods' ports (e.g. br-int), created if
    /// missing. Required by the node role.
    #[arg(long, env = "MOOR_BRIDGE")]
    pub(crate) bridge: Option<String>,
    /// OVS mode: ovsdb-server's endpoint, unix:PATH or tcp:IP:PORT.
    /// Default: unix:/run/openvswitch/db.sock.
    #[arg(long, env = "MOOR_OVSDB", value_name = "ENDPOINT")]
    pub(crate) ovsdb: Option<moor_ovs::Endpoint>,
    /// OVS mode: the node's link to the ToR, made a trunk port of --bridge
    /// (and set up) if it is not one yet. It must exist in ovs-vswitchd's
    /// network namespace (--netns).
    #[arg(long, env = "MOOR_UPLINK", value_name = "IFACE")]
    pub(crate) uplink: Option<String>,
    /// OVS mode: the VLANs the uplink trunks, e.g. 100,200. Default: all.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "VLAN,...",
        requires = "uplink"
    )]
    pub(crate) uplink_vlans: Vec<u16>,
    /// OVS mode: datapath_type of --bridge when ipamd creates it (netdev: the
    /// userspace datapath, for hosts without the openvswitch kernel module).
    /// An existing bridge with another type is an error.
    #[arg(long, value_name = "TYPE")]
    pub(crate) ovs_datapath_type: Option<String>,
    /// OVS mode: bound on each OVSDB call, reconnecting and waiting for
    /// ovs-vswitchd included, in milliseconds.
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    pub(crate) ovsdb_timeout_ms: u64,
    /// Network namespace that holds --bridge and the host ends of pod veths.
    /// Default: ipamd's own. Lets several nodes share one machine (tests)
    /// while ipamd reaches its store from its own namespace.
    #[arg(long, value_name = "PATH")]
    pub(crate) netns: Option<PathBuf>,
    /// Where the plugin records DELs made while ipamd is down. Default: the
    /// socket path + ".pending" (what the plugin uses by default).
    #[arg(long)]
    pub(crate) pending_dir: Option<PathBuf>,
    /// Local copy of this node's attachments, used with an etcd store so DEL,
    /// CHECK, GC and restarts work while etcd is unreachable. Ignored with a
    /// redb store (which is local already).
    #[arg(
        long,
        env = "MOOR_LOCAL_STATE",
        default_value = "/var/lib/moor/local.redb"
    )]
    pub(crate) local_state: PathBuf,
    /// Before a pod uses its IP, probe for another owner of it for this many
    /// milliseconds (RFC 5227 ARP probes; 1-900). A conflict fails the ADD
    /// (code 107) and quarantines the IP until `ipamctl ip release`. Costs
    /// that much ADD latency; 0 (the default) turns it off.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub(crate) dad_probe_ms: u64,
    /// A DEL retires the pod's veth at once and a reaper deletes retired
    /// veths in batches: once no ADD or DEL has run for this long...
    #[arg(long, default_value_t = 50, value_name = "MS")]
    pub(crate) reap_quiet_ms: u64,
    /// ...or at the latest this long after the first veth of a batch was
    /// retired. Longer batches hold the kernel's rtnl lock less often.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub(crate) reap_max_wait_ms: u64,
    /// CNI GC and the leak sweep leave attachments younger than this alone.
    #[arg(long, default_value_t = 60)]
    pub(crate) gc_grace_seconds: u64,
    /// Every N seconds, release this node's attachments whose host veth is
    /// gone (seen so on two passes in a row, and older than
    /// --gc-grace-seconds): DELs a runtime never sent. In OVS mode, also
    /// remove moor's ports whose interface is gone. 0 turns it off.
    #[arg(long, default_value_t = 60, value_name = "N")]
    pub(crate) reconcile_interval_seconds: u64,
    /// Where to serve Prometheus metrics (GET /metrics) and /healthz, and
    /// nothing else: ADDRESS:PORT, or off. The DaemonSet sets the node's
    /// address so Prometheus can scrape it.
    #[arg(
        long,
        env = "MOOR_METRICS_LISTEN",
        default_value = "127.0.0.1:9471",
        value_name = "ADDR:PORT|off"
    )]
    pub(crate) metrics_listen: String,
    /// Log lines as text (default) or json: one object a line, with the
    /// event's fields (pod, container id, IP, pool, ToR, code) as keys.
    #[arg(long, env = "MOOR_LOG_FORMAT", value_enum, default_value = "text")]
    pub(crate) log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. info or moor_ipamd=debug.
    #[arg(long, env = "MOOR_LOG", default_value = "info")]
    pub(crate) log: String,
}
