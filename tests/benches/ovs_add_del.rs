//! Benchmark (issue 4, done-when 5): N pods (default 100) ADDed, then
//! DELeted, on one node in OVS mode, moor against the same datapath steps
//! done the Kube-OVN way (netlink, then a forked `ovs-vsctl` per port), side
//! by side in one run, with 1 and with W concurrent workers.
//!
//! Run it with `sudo ./scripts/bench-ovs [OPTIONS]` (it builds the release
//! binaries first); `--help` lists the options. What it does:
//!
//! - One node: a private ovsdb-server and ovs-vswitchd (`datapath_type=netdev`)
//!   started by the moor-ovs test harness, ovs-vswitchd in the node's network
//!   namespace; `br-int` there, with a gateway namespace on a VLAN 100 access
//!   port. N pod namespaces, made before any timing and shared by all sides
//!   (the sides never run at the same time).
//! - Three sides, each doing the N ADDs and then the N DELs:
//!   - `moor`: the release `moor` binary (CNI ADD/DEL as a runtime runs it)
//!     against a release `ipamd --mode ovs` with its embedded redb store:
//!     IPAM, the veth, the pod's IP/MAC/route, the port over OVSDB (one
//!     transaction, then wait for ovs-vswitchd's `cur_cfg`), a gratuitous ARP.
//!   - `moor-dp`: ipamd's `OvsDatapath::wire`/`unwire` called in this process:
//!     the same datapath work as `moor` without the plugin process, gRPC and
//!     IPAM, to tell where moor's time goes.
//!   - `ref`: the Kube-OVN way, in this process: the veth pair into the pod
//!     netns over netlink, the pod end's TX checksum off, up, IP, default
//!     route (sequential netlink requests, as the Go netlink library makes
//!     them), then a forked `ovs-vsctl --may-exist add-port br-int H tag=100
//!     -- set interface H external_ids:...` (which waits for `cur_cfg`, as
//!     moor does), then a gratuitous ARP; DEL: a forked `ovs-vsctl
//!     --no-wait --if-exists --with-iface del-port` (moor does not wait for
//!     ovs-vswitchd on DEL either; `--ref-del-waits` drops `--no-wait`, as
//!     Kube-OVN does) and the veth deleted over netlink. Like ipamd, ref
//!     repeats the gratuitous ARP 200 ms and 1 s after the ADD, off its path.
//! - Rounds: every round runs each side with 1 worker, then with W workers;
//!   the order of the sides rotates every round, so machine drift hits all.
//!   After each DEL phase the bench waits (untimed) until ovs-vswitchd has
//!   caught up (`cur_cfg` = `next_cfg` and no pod port left in its
//!   datapath), so no phase pays for the one before it.
//! - Reported: per-op latency percentiles, the ADDs of the first and last
//!   fifth of the pods (fewest and most ports on the bridge), wall time and
//!   pods/s of each phase, ref's time split into netlink and `ovs-vsctl`,
//!   ipamd's and the OVS daemons' RSS, and (JSON) the slowest ops with when
//!   in their phase they ended, to tell where a tail comes from.
//! - Checked as it runs (untimed): every ADD and DEL succeeds; after an ADD
//!   phase the bridge has exactly the N pod ports, tagged 100, each with an
//!   ofport (applied by ovs-vswitchd), and every pod has its IP; moor handed
//!   out no IP twice; after a DEL phase no pod port, no host veth, no pod
//!   interface is left and moor's pool has nothing in use or bound. Before
//!   timing, one pod of each side pings the gateway through OVS.
//!
//! Everything it starts (ovsdb-server, ovs-vswitchd, ipamd: by pid) and
//! makes (namespaces, temp dirs) is removed by Drop guards, also on error,
//! panic or Ctrl-C.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use moor_e2e::bench::{
    check_interrupted, commit, cpus, ipamctl, kernel, lat_json, leftover_links, loadavg, median,
    memory_kib, mib, ms, no_problems, pct, pool_busy, release_bins, round3, run_workers, start,
    suffix, Args, Res, PATH_ENV, PERCENTILES,
};
use moor_e2e::bins::Bins;
use moor_ipamd::datapath::{gratuitous_arp, Datapath, OvsConfig, OvsDatapath, PodLink};
use moor_ovs::Endpoint;
use moor_proto::{host_ifname, mac_for_ipv4};
use moor_testkit::cmd::{describe_failure, try_ip as ip, try_run as run};
use moor_testkit::netns::{disable_ipv6, wait_ping};
use moor_testkit::{Ipamd, IpamdCommand, Netns, Ovs, TempDir};
use netlink_packet_route::link::{InfoData, InfoVeth};
use nix::sched::{setns, CloneFlags};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use serde_json::{json, Value};

const USAGE: &str = "\
ovs_add_del: N pods ADDed then DELeted on one node in OVS mode (private
ovsdb-server + ovs-vswitchd, datapath_type=netdev): moor (moor + ipamd --mode
ovs), ipamd's OVS datapath alone (moor-dp), and the Kube-OVN way (netlink +
a forked ovs-vsctl per port, ref), side by side in one run.

Usage: sudo ./scripts/bench-ovs [OPTIONS]
   or: cargo bench -p moor-e2e --bench ovs_add_del -- [OPTIONS]   (as root,
       after cargo build --release --bins)

Options:
  --pods N          pods per phase (ADDed together, then DELeted) [default: 100]
  --workers W       concurrent workers of the concurrent phases   [default: 8]
  --rounds R        rounds (each: every side with 1, then W workers) [default: 3]
  --ref-del-waits   ref's del-port waits for ovs-vswitchd (Kube-OVN's default;
                    moor's DEL does not wait, so by default ref does not either)
  --ipamd-log F     ipamd's --log filter, e.g. moor_ipamd=debug  [default: warn]
  --keep-logs DIR   copy the logs of ipamd, ovsdb-server and ovs-vswitchd to DIR
  -h, --help        this text
";

const BRIDGE: &str = "br-int";
const VLAN: u16 = 100;
const SUBNET: &str = "10.210.0.0/16";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 210, 0, 1);
const PREFIX: u8 = 16;
/// moor's pods get IPs of this range from ipamd; moor-dp and ref use
/// 10.210.10.0 and up.
const MOOR_RANGE: &str = "10.210.1.1-10.210.8.254";
const TOR: &str = "bench-rack";
const POOL: &str = "bench";
const POD_NAMESPACE: &str = "bench";
/// How much of ipamd's log an error shows.
const LOG_LINES: usize = 30;
const POD_NAME_PREFIX: &str = "bench-7d9f8c6b5-";
/// The gateway's port on br-int (its veth end in the node netns).
const GW_PORT: &str = "gw-h";
/// Bounds each `ovs-vsctl` call (Kube-OVN passes 30).
const VSCTL_TIMEOUT: &str = "--timeout=10";
/// When ref repeats its gratuitous ARP, as ipamd's `announce_again` does.
const LATER_ANNOUNCEMENTS: [Duration; 2] = [Duration::from_millis(200), Duration::from_millis(800)];

// ---------------------------------------------------------------- options

#[derive(Debug, Clone)]
struct Opts {
    pods: usize,
    workers: usize,
    rounds: usize,
    ref_del_waits: bool,
    ipamd_log: String,
    keep_logs: Option<PathBuf>,
}

fn parse_opts() -> Res<Option<Opts>> {
    let mut o = Opts {
        pods: 100,
        workers: 8,
        rounds: 3,
        ref_del_waits: false,
        ipamd_log: "warn".into(),
        keep_logs: None,
    };
    let mut args = Args::new(USAGE);
    while let Some(a) = args.next_arg() {
        let slot = match a.key.as_str() {
            "-h" | "--help" => return Ok(None),
            "--ref-del-waits" => {
                o.ref_del_waits = true;
                continue;
            }
            "--ipamd-log" => {
                o.ipamd_log = args.value(a, "a value")?;
                continue;
            }
            "--keep-logs" => {
                o.keep_logs = Some(PathBuf::from(args.value(a, "a value")?));
                continue;
            }
            "--pods" => &mut o.pods,
            "--workers" => &mut o.workers,
            "--rounds" => &mut o.rounds,
            _ => return Err(args.unknown(&a)),
        };
        *slot = args.number(a)?;
    }
    if o.pods == 0 || o.pods > 1500 {
        return Err(format!("--pods {}: expected 1 to 1500", o.pods));
    }
    if o.workers == 0 || o.workers > 64 {
        return Err(format!("--workers {}: expected 1 to 64", o.workers));
    }
    if o.rounds == 0 {
        return Err("--rounds 0: expected at least 1".into());
    }
    Ok(Some(o))
}

// ---------------------------------------------------------------- helpers

/// The IP of pod `i` for moor-dp and ref (moor's come from ipamd).
fn fixed_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 210, 10 + (i / 250) as u8, (i % 250) as u8 + 2)
}

// ---------------------------------------------------------------- guards

/// This run's temp dir (sockets, store, logs, the OVS database).
fn temp_dir() -> Res<TempDir> {
    TempDir::create(PathBuf::from(format!(
        "/tmp/moor-bench-ovs.{}",
        std::process::id()
    )))
}

/// A named network namespace without IPv6 (its neighbour discovery chatter
/// would be flooded to every port by ovs-vswitchd and is not what is timed),
/// deleted on drop.
fn netns_without_ipv6(name: String) -> Res<Netns> {
    let ns = Netns::add(name)?;
    disable_ipv6(&ns.name)?;
    Ok(ns)
}

// ---------------------------------------------------------------- sides

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Moor,
    MoorDp,
    Ref,
}

const SIDES: [Side; 3] = [Side::Moor, Side::MoorDp, Side::Ref];

impl Side {
    fn key(self) -> &'static str {
        match self {
            Side::Moor => "moor",
            Side::MoorDp => "moor-dp",
            Side::Ref => "ref",
        }
    }

    fn idx(self) -> usize {
        match self {
            Side::Moor => 0,
            Side::MoorDp => 1,
            Side::Ref => 2,
        }
    }
}

/// A pod port's tag and ofport, as `ovs-vsctl` reads them.
type PortState = (Option<u64>, Option<i64>);

/// What an ADD made, for its DEL and the checks.
#[derive(Debug, Clone)]
struct Attached {
    cid: String,
    pod_name: String,
    uid: String,
    host: String,
    ip: Ipv4Addr,
}

/// One timed operation; `parts` splits ref's time (ADD: netlink, ovs-vsctl;
/// DEL: ovs-vsctl, netlink).
struct Op {
    /// The pod's index: ADDs of low indexes find few ports on the bridge,
    /// the last ones N-1.
    pod: usize,
    took: Duration,
    parts: Option<[Duration; 2]>,
}

/// Per-worker state, made before the start line (untimed).
enum Ctx {
    Plain,
    Ref(RefWorker),
}

/// A ref worker: its thread is in the node's netns for the whole phase,
/// with a runtime and a netlink socket of its own (as each Kube-OVN worker
/// goroutine has), entering a pod's netns only for the pod-side requests.
struct RefWorker {
    rt: tokio::runtime::Runtime,
    node: Handle,
    node_fd: File,
}

impl RefWorker {
    fn new(node_path: &Path) -> Res<Self> {
        let node_fd =
            File::open(node_path).map_err(|e| format!("open {}: {e}", node_path.display()))?;
        setns(&node_fd, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns node: {e}"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("runtime: {e}"))?;
        let node = rt.block_on(async {
            let (conn, handle, _) =
                rtnetlink::new_connection().map_err(|e| format!("netlink: {e}"))?;
            tokio::spawn(conn);
            Res::Ok(handle)
        })?;
        Ok(Self { rt, node, node_fd })
    }
}

/// A packet socket in the pod's netns that sends the gratuitous ARP.
struct Garp {
    socket: OwnedFd,
    ifindex: i32,
    frame: [u8; moor_ipamd::datapath::GARP_LEN],
}

impl Garp {
    fn open(ifindex: u32, mac: [u8; 6], ip: Ipv4Addr) -> std::io::Result<Self> {
        // SAFETY: plain syscall with constant arguments; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Garp {
            // SAFETY: `fd` was just returned by socket() and is ours alone.
            socket: unsafe { OwnedFd::from_raw_fd(fd) },
            ifindex: ifindex as i32,
            frame: gratuitous_arp(mac, ip),
        })
    }

    fn send(&self) -> std::io::Result<()> {
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_protocol = 0x0806u16.to_be();
        to.sll_ifindex = self.ifindex;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        // SAFETY: buffer and address are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                self.frame.as_ptr().cast(),
                self.frame.len(),
                0,
                std::ptr::addr_of!(to).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// ref's pod side, in the pod's netns (the calling thread entered it): TX
/// checksum off, link up, address, default route, one request at a time;
/// returns the socket for the gratuitous ARP.
async fn ref_configure_pod(mac: [u8; 6], ip: Ipv4Addr) -> Res<Garp> {
    let (conn, h, _) = rtnetlink::new_connection().map_err(|e| format!("netlink in pod: {e}"))?;
    let conn = tokio::spawn(conn);
    let result = async {
        moor_ipamd::datapath::disable_tx_checksum("eth0")
            .map_err(|e| format!("tx off on eth0: {e}"))?;
        let index = match h.link().get().match_name("eth0").execute().next().await {
            Some(Ok(l)) => l.header.index,
            other => return Err(format!("eth0 not found in the pod: {other:?}")),
        };
        h.link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| format!("set eth0 up: {e}"))?;
        h.address()
            .add(index, IpAddr::V4(ip), PREFIX)
            .execute()
            .await
            .map_err(|e| format!("add {ip}/{PREFIX}: {e}"))?;
        h.route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(GATEWAY)
                    .output_interface(index)
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| format!("add default route: {e}"))?;
        Garp::open(index, mac, ip).map_err(|e| format!("packet socket: {e}"))
    }
    .await;
    conn.abort();
    result
}

// ---------------------------------------------------------------- testbed

fn find_bins() -> Res<Bins> {
    let bins = release_bins("./scripts/bench-ovs")?;
    for tool in ["ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovsdb-tool"] {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
            .any(|d| d.join(tool).is_file());
        if !found {
            return Err(format!(
                "{tool} is missing: install openvswitch-switch (./scripts/setup)"
            ));
        }
    }
    Ok(bins)
}

/// Field order is drop order: the in-process datapath and its runtime,
/// ipamd, pods, gateway, Open vSwitch (its namespace), temp dir.
struct Bed {
    dp: OvsDatapath,
    dp_rt: tokio::runtime::Runtime,
    ipamd: Ipamd,
    pods: Vec<Netns>,
    _gw: Netns,
    ovs: Ovs,
    tmp: TempDir,
    socket: PathBuf,
    moor: PathBuf,
    ipamctl: PathBuf,
    moor_config: String,
    node_path: PathBuf,
    seq: AtomicU64,
    ref_del_waits: bool,
    keep_logs: Option<PathBuf>,
    /// ipamd's RSS right after its start, KiB.
    ipamd_start_kib: u64,
}

impl Bed {
    fn new(bins: &Bins, opts: &Opts) -> Res<Self> {
        let tmp = temp_dir()?;
        eprintln!("bench: starting ovsdb-server and ovs-vswitchd (netdev)");
        let ovs = Ovs::start();
        disable_ipv6(&ovs.netns)?;
        let node_path = PathBuf::from("/run/netns").join(&ovs.netns);

        // ipamd in the host netns, the host ends of pods in the node's
        // (where ovs-vswitchd runs), as on a real node ipamd reaches its
        // store from the host; it creates br-int.
        let socket = tmp.join("ipamd.sock");
        let log = tmp.join("ipamd.log");
        let ipamd = IpamdCommand::new(&bins.ipamd, &socket, &log)
            .arg("--store")
            .arg(format!("redb:{}", tmp.join("ipamd.redb").display()))
            .args(["--node", "bench-node", "--tor", TOR, "--mode", "ovs"])
            .args(["--bridge", BRIDGE, "--ovs-datapath-type", "netdev"])
            .arg("--ovsdb")
            .arg(ovs.db())
            .arg("--netns")
            .arg(&node_path)
            .args(["--log", &opts.ipamd_log])
            .within(Duration::from_secs(15))
            .start()?;
        let ipamd_start_kib = memory_kib(ipamd.pid()).map_or(0, |m| m.0);

        // The gateway: a namespace on an access port of VLAN 100.
        let id = format!("mbovs{}", std::process::id());
        let gw = netns_without_ipv6(format!("{id}-gw"))?;
        ip(&[
            "-n", &ovs.netns, "link", "add", GW_PORT, "type", "veth", "peer", "name", "eth0",
            "netns", &gw.name,
        ])?;
        ip(&["-n", &ovs.netns, "link", "set", GW_PORT, "up"])?;
        ip(&[
            "-n",
            &gw.name,
            "addr",
            "add",
            &format!("{GATEWAY}/{PREFIX}"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &gw.name, "link", "set", "eth0", "up"])?;
        ovs.vsctl(&["add-port", BRIDGE, GW_PORT, &format!("tag={VLAN}")]);

        eprintln!("bench: {} pod namespaces", opts.pods);
        let mut pods = Vec::with_capacity(opts.pods);
        for i in 0..opts.pods {
            check_interrupted()?;
            pods.push(netns_without_ipv6(format!("{id}-p{i}"))?);
        }

        let dp_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("runtime: {e}"))?;
        let cfg = OvsConfig {
            datapath_type: Some("netdev".into()),
            ..OvsConfig::new(Endpoint::Unix(ovs.sock.clone()), BRIDGE)
        };
        let dp = dp_rt
            .block_on(OvsDatapath::new_in(&cfg, Some(&node_path)))
            .map_err(|e| format!("OvsDatapath::new_in: {e}"))?;

        let bed = Bed {
            dp,
            dp_rt,
            ipamd,
            pods,
            _gw: gw,
            moor_config: json!({
                "cniVersion": "1.0.0", "name": "moor", "type": "moor", "socket": socket,
            })
            .to_string(),
            ovs,
            tmp,
            socket,
            moor: bins.moor.clone(),
            ipamctl: bins.ipamctl.clone(),
            node_path,
            seq: AtomicU64::new(0),
            ref_del_waits: opts.ref_del_waits,
            keep_logs: opts.keep_logs.clone(),
            ipamd_start_kib,
        };
        bed.ctl(&[
            "tor",
            "add",
            TOR,
            "--subnet",
            SUBNET,
            "--gateway",
            &GATEWAY.to_string(),
            "--vlan",
            &VLAN.to_string(),
            "--range",
            MOOR_RANGE,
        ])?;
        bed.ctl(&[
            "pool",
            "create",
            POOL,
            "--namespace",
            POD_NAMESPACE,
            "--app",
            "bench",
            "--size",
            &(opts.pods + 10).to_string(),
        ])?;
        Ok(bed)
    }

    fn ctl(&self, args: &[&str]) -> Res<String> {
        ipamctl(&self.ipamctl, &self.socket, args)
    }

    /// `ovs-vsctl` against our ovsdb-server, timed, as a per-pod fork.
    fn vsctl(&self, args: &[&str]) -> Res<()> {
        let out = Command::new("ovs-vsctl")
            .env_clear()
            .env("PATH", PATH_ENV)
            .env("OVS_RUNDIR", &self.ovs.dir)
            .arg(format!("--db={}", self.ovs.db()))
            .arg(VSCTL_TIMEOUT)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run ovs-vsctl: {e}"))?;
        if !out.status.success() {
            return Err(describe_failure(
                &format!("ovs-vsctl {}", args.join(" ")),
                &out,
            ));
        }
        Ok(())
    }

    fn new_attached(&self, side: Side, i: usize) -> Attached {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let tag = 0xa + side.idx() as u64;
        let cid = format!("{tag:x}{:015x}{seq:048x}", std::process::id());
        Attached {
            host: host_ifname(&cid, "eth0"),
            pod_name: format!("{POD_NAME_PREFIX}{}", suffix(seq)),
            uid: format!("00000000-0000-4000-8{tag:03x}-{seq:012x}"),
            cid,
            ip: fixed_ip(i),
        }
    }

    fn pod_link(&self, i: usize, a: &Attached) -> PodLink {
        PodLink {
            netns: self.pods[i].path(),
            ifname: "eth0".into(),
            host_ifname: a.host.clone(),
            address: format!("{}/{PREFIX}", a.ip).parse().expect("a valid CIDR"),
            gateway: GATEWAY.into(),
            ipv6: None,
            mac: mac_for_ipv4(a.ip),
            vlan: Some(VLAN),
            pod_namespace: POD_NAMESPACE.into(),
            pod_name: a.pod_name.clone(),
            container_id: a.cid.clone(),
        }
    }

    /// The real `moor` binary, as a runtime runs it; wall time spawn to exit.
    fn moor_cni(&self, command: &str, i: usize, a: &Attached) -> Res<(Duration, Output)> {
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={POD_NAMESPACE};K8S_POD_NAME={};\
             K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            a.pod_name, a.cid, a.uid
        );
        let netns = self.pods[i].path();
        let start = Instant::now();
        let mut child = Command::new(&self.moor)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &a.cid)
            .env("CNI_NETNS", &netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", self.moor.parent().expect("a directory"))
            .env("CNI_ARGS", &args)
            .env("PATH", PATH_ENV)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot spawn moor: {e}"))?;
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let written = pipe.write_all(self.moor_config.as_bytes());
        drop(pipe);
        let out = child
            .wait_with_output()
            .map_err(|e| format!("waiting for moor: {e}"))?;
        let took = start.elapsed();
        if !out.status.success() || written.is_err() {
            check_interrupted()?;
            return Err(describe_failure(
                &format!("moor {command} (pod {}, container {})", a.pod_name, a.cid),
                &out,
            ));
        }
        Ok((took, out))
    }

    fn add(&self, side: Side, ctx: &Ctx, i: usize) -> Res<(Op, Attached)> {
        let mut a = self.new_attached(side, i);
        let op = match (side, ctx) {
            (Side::Moor, _) => {
                let (took, out) = self.moor_cni("ADD", i, &a)?;
                let result: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
                    describe_failure(&format!("moor ADD printed no JSON ({e})"), &out)
                })?;
                let addr = result["ips"][0]["address"]
                    .as_str()
                    .and_then(|s| s.split('/').next())
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("moor ADD result has no ips[0].address: {result}"))?;
                a.ip = addr;
                Op {
                    pod: i,
                    took,
                    parts: None,
                }
            }
            (Side::MoorDp, _) => {
                let link = self.pod_link(i, &a);
                let start = Instant::now();
                self.dp_rt
                    .handle()
                    .block_on(self.dp.wire(&link))
                    .map_err(|e| format!("OvsDatapath::wire {}: {e}", a.host))?;
                Op {
                    pod: i,
                    took: start.elapsed(),
                    parts: None,
                }
            }
            (Side::Ref, Ctx::Ref(w)) => self.ref_add(w, i, &a)?,
            (Side::Ref, Ctx::Plain) => unreachable!("ref runs with a RefWorker"),
        };
        Ok((op, a))
    }

    fn ref_add(&self, w: &RefWorker, i: usize, a: &Attached) -> Res<Op> {
        let mac = mac_for_ipv4(a.ip);
        let start = Instant::now();
        let pod_fd = File::open(self.pods[i].path()).map_err(|e| format!("open pod netns: {e}"))?;
        // The pair in one request, the pod end created in the pod's netns
        // with its MAC (as ipamd does; Kube-OVN creates it here and moves it,
        // one request more).
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name("eth0")
            .address(mac.to_vec())
            .mtu(self.dp.mtu())
            .setns_by_fd(pod_fd.as_raw_fd())
            .build();
        let pair = LinkVeth::new(&a.host, "eth0")
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .mtu(self.dp.mtu())
            .up()
            .build();
        let garp = w.rt.block_on(async {
            w.node
                .link()
                .add(pair)
                .execute()
                .await
                .map_err(|e| format!("create veth {}: {e}", a.host))?;
            setns(&pod_fd, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns pod: {e}"))?;
            let configured = ref_configure_pod(mac, a.ip).await;
            setns(&w.node_fd, CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("setns back to the node: {e}"))?;
            configured
        })?;
        let netlink = start.elapsed();
        let tag = format!("tag={VLAN}");
        let ids = [
            "external_ids:owner=ref".to_string(),
            format!("external_ids:namespace={POD_NAMESPACE}"),
            format!("external_ids:name={}", a.pod_name),
            format!("external_ids:container={}", a.cid),
            "external_ids:ifname=eth0".to_string(),
            format!("external_ids:ip={}", a.ip),
        ];
        let mut args = vec![
            "--may-exist",
            "add-port",
            BRIDGE,
            &a.host,
            &tag,
            "--",
            "set",
            "interface",
            &a.host,
        ];
        args.extend(ids.iter().map(String::as_str));
        self.vsctl(&args)?;
        // The port is applied (ovs-vsctl waited): announce through it, and
        // twice more later, as ipamd does (its socket's close, an RCU grace
        // period in the kernel, is then off the ADD's path too).
        garp.send().map_err(|e| format!("gratuitous ARP: {e}"))?;
        std::thread::spawn(move || {
            for delay in LATER_ANNOUNCEMENTS {
                std::thread::sleep(delay);
                if garp.send().is_err() {
                    return; // the pod is gone
                }
            }
        });
        let took = start.elapsed();
        Ok(Op {
            pod: i,
            took,
            parts: Some([netlink, took - netlink]),
        })
    }

    fn del(&self, side: Side, ctx: &Ctx, i: usize, a: &Attached) -> Res<Op> {
        Ok(match (side, ctx) {
            (Side::Moor, _) => Op {
                pod: i,
                took: self.moor_cni("DEL", i, a)?.0,
                parts: None,
            },
            (Side::MoorDp, _) => {
                let start = Instant::now();
                self.dp_rt
                    .handle()
                    .block_on(self.dp.unwire(&a.host))
                    .map_err(|e| format!("OvsDatapath::unwire {}: {e}", a.host))?;
                Op {
                    pod: i,
                    took: start.elapsed(),
                    parts: None,
                }
            }
            (Side::Ref, Ctx::Ref(w)) => {
                let start = Instant::now();
                let mut args = vec!["--if-exists", "--with-iface", "del-port", BRIDGE, &a.host];
                if !self.ref_del_waits {
                    args.insert(0, "--no-wait");
                }
                self.vsctl(&args)?;
                let vsctl = start.elapsed();
                w.rt.block_on(
                    w.node
                        .link()
                        .del_with_message(LinkUnspec::new_with_name(&a.host).build())
                        .execute(),
                )
                .map_err(|e| format!("delete veth {}: {e}", a.host))?;
                let took = start.elapsed();
                Op {
                    pod: i,
                    took,
                    parts: Some([vsctl, took - vsctl]),
                }
            }
            (Side::Ref, Ctx::Plain) => unreachable!("ref runs with a RefWorker"),
        })
    }

    fn ctx(&self, side: Side) -> Res<Ctx> {
        Ok(match side {
            Side::Ref => Ctx::Ref(RefWorker::new(&self.node_path)?),
            _ => Ctx::Plain,
        })
    }

    // ------------------------------------------------------------ checks

    /// Pod ports on br-int: name -> (tag, ofport).
    fn pod_ports(&self) -> Res<BTreeMap<String, PortState>> {
        let names: BTreeSet<String> = self
            .ovs
            .vsctl(&["list-ports", BRIDGE])
            .lines()
            .filter(|l| !l.is_empty() && *l != GW_PORT)
            .map(str::to_string)
            .collect();
        let table = |args: &[&str]| -> Res<BTreeMap<String, Value>> {
            let v: Value = serde_json::from_str(&self.ovs.vsctl(args))
                .map_err(|e| format!("ovs-vsctl {args:?}: {e}"))?;
            Ok(v["data"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| Some((r[0].as_str()?.to_string(), r[1].clone())))
                .collect())
        };
        let tags = table(&["--format=json", "--columns=name,tag", "list", "port"])?;
        let ofports = table(&[
            "--format=json",
            "--columns=name,ofport",
            "list",
            "interface",
        ])?;
        Ok(names
            .into_iter()
            .map(|n| {
                let tag = tags.get(&n).and_then(Value::as_u64);
                let ofport = ofports.get(&n).and_then(Value::as_i64);
                (n, (tag, ofport))
            })
            .collect())
    }

    fn check_added(&self, side: Side, attached: &[Attached]) -> Res<()> {
        let ports = self.pod_ports()?;
        let want: BTreeSet<&str> = attached.iter().map(|a| a.host.as_str()).collect();
        let have: BTreeSet<&str> = ports.keys().map(String::as_str).collect();
        if want != have {
            return Err(format!(
                "{}: after the ADDs br-int has {} pod ports, expected {}: missing {:?}, extra {:?}",
                side.key(),
                have.len(),
                want.len(),
                want.difference(&have).collect::<Vec<_>>(),
                have.difference(&want).collect::<Vec<_>>()
            ));
        }
        for (name, (tag, ofport)) in &ports {
            if *tag != Some(u64::from(VLAN)) || !ofport.is_some_and(|p| p > 0) {
                return Err(format!(
                    "{}: port {name} has tag {tag:?} and ofport {ofport:?}, expected tag {VLAN} \
                     and an ofport (applied by ovs-vswitchd)",
                    side.key()
                ));
            }
        }
        let ips: HashSet<Ipv4Addr> = attached.iter().map(|a| a.ip).collect();
        if ips.len() != attached.len() {
            return Err(format!("{}: an IP was handed out twice", side.key()));
        }
        for (i, a) in attached.iter().enumerate() {
            let v: Value = serde_json::from_str(&ip(&[
                "-j",
                "-n",
                &self.pods[i].name,
                "addr",
                "show",
                "dev",
                "eth0",
            ])?)
            .map_err(|e| format!("ip -j addr: {e}"))?;
            let has = v[0]["addr_info"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|ai| ai["local"].as_str() == Some(&a.ip.to_string()));
            if !has {
                return Err(format!(
                    "{}: pod {} has no {} on eth0: {v}",
                    side.key(),
                    self.pods[i].name,
                    a.ip
                ));
            }
        }
        Ok(())
    }

    /// Waits (untimed) until ovs-vswitchd has caught up with every change
    /// made so far: `cur_cfg` = `next_cfg`, and its datapath holds no pod
    /// port any more (it goes on removing them after `cur_cfg` caught up).
    /// DELs do not wait for it, so without this the first ADDs of the next
    /// phase, whichever side runs it, would wait for the previous phase's
    /// removals (seen: the first 8 ADDs of a phase all taking 350-550 ms).
    fn settle(&self) -> Res<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let ctl = self.ovs.dir.join("ovs-vswitchd.ctl");
        loop {
            let cfg = self
                .ovs
                .vsctl(&["get", "Open_vSwitch", ".", "next_cfg", "cur_cfg"]);
            let v: Vec<&str> = cfg.split_whitespace().collect();
            let dp = run(Command::new("ovs-appctl")
                .env("OVS_RUNDIR", &self.ovs.dir)
                .arg("-t")
                .arg(&ctl)
                .arg("dpctl/show"))?;
            // ovs-netdev, br-int and the gateway's port.
            let ports = dp
                .lines()
                .filter(|l| l.trim_start().starts_with("port "))
                .count();
            if v.len() == 2 && v[0] == v[1] && ports == 3 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "ovs-vswitchd did not catch up within 30 s (next_cfg, cur_cfg: {cfg:?}; \
                     datapath: {dp})"
                ));
            }
            check_interrupted()?;
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn check_clean(&mut self, side: Side) -> Res<()> {
        self.settle()?;
        let mut problems = Vec::new();
        if !self.ipamd.alive() {
            problems.push(format!(
                "ipamd died; its log:\n{}",
                self.ipamd.log_tail(LOG_LINES)
            ));
        }
        let ports = self.pod_ports()?;
        if !ports.is_empty() {
            problems.push(format!("pod ports left on br-int: {:?}", ports.keys()));
        }
        let base: HashSet<&str> = ["lo", "ovs-netdev", BRIDGE, GW_PORT].into();
        leftover_links(&self.ovs.netns, &base, &self.pods, &mut problems)?;
        if side == Side::Moor {
            if let Some(busy) = pool_busy(&self.ctl(&["-o", "json", "pool", "show", POOL])?)? {
                problems.push(format!("pool {POOL}: {busy}"));
            }
        }
        no_problems(
            problems,
            &format!("{}: not clean after the DELs", side.key()),
        )
    }

    /// One untimed pod of `side` that must reach the gateway through OVS.
    fn warm_up(&mut self, side: Side) -> Res<()> {
        let ctx = std::thread::scope(|s| {
            s.spawn(|| -> Res<()> {
                let ctx = self.ctx(side)?;
                let (_, a) = self.add(side, &ctx, 0)?;
                let pinged = wait_ping(&self.pods[0].name, GATEWAY, Duration::from_secs(10));
                self.del(side, &ctx, 0, &a)?;
                pinged.map_err(|e| format!("{} pod: {e}", side.key()))
            })
            .join()
            .unwrap_or_else(|_| Err("warm-up panicked".into()))
        });
        ctx?;
        self.check_clean(side)
    }

    fn pid_of(&self, daemon: &str) -> Option<u32> {
        std::fs::read_to_string(self.ovs.dir.join(format!("{daemon}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Bed {
    /// Before the fields go (and the directories with them): the logs, if
    /// asked for.
    fn drop(&mut self) {
        let Some(dir) = &self.keep_logs else { return };
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("--keep-logs {}: {e}", dir.display());
            return;
        }
        for from in [
            self.tmp.join("ipamd.log"),
            self.ovs.dir.join("ovsdb-server.log"),
            self.ovs.dir.join("ovs-vswitchd.log"),
        ] {
            let to = dir.join(from.file_name().expect("a file name"));
            if let Err(e) = std::fs::copy(&from, &to) {
                eprintln!("copy {} to {}: {e}", from.display(), to.display());
            }
        }
    }
}

// ---------------------------------------------------------------- phases

/// An op and when it ended, counted from the start of its phase.
struct Timed {
    op: Op,
    at: Duration,
}

/// `workers` threads ADD (or DEL) pods 0..n, each taking the next pod
/// index, started together; returns every op and the wall time from the
/// start to the last one's end.
fn phase<F>(bed: &Bed, side: Side, workers: usize, n: usize, op: F) -> Res<(Vec<Timed>, Duration)>
where
    F: Fn(&Ctx, usize) -> Res<Op> + Sync,
{
    let next = AtomicUsize::new(0);
    let (results, t0, wall) = run_workers(
        workers,
        |_| bed.ctx(side),
        |ctx| {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                return Ok(None);
            }
            op(ctx, i).map(Some)
        },
    );
    let mut ops = Vec::with_capacity(n);
    for r in results {
        ops.extend(r?.into_iter().map(|(op, ended)| Timed {
            op,
            at: ended.saturating_duration_since(t0),
        }));
    }
    Ok((ops, wall))
}

#[derive(Default)]
struct Samples {
    add: Vec<Duration>,
    /// ADDs of the first and the last fifth of the pods (fewest and most
    /// ports on the bridge).
    add_first: Vec<Duration>,
    add_last: Vec<Duration>,
    del: Vec<Duration>,
    add_walls: Vec<Duration>,
    del_walls: Vec<Duration>,
    /// ref only: ADD netlink, ADD ovs-vsctl, DEL ovs-vsctl, DEL netlink.
    parts: [Vec<Duration>; 4],
    /// The slowest ADDs and DELs, to tell where tails come from.
    slowest_add: Vec<Slow>,
    slowest_del: Vec<Slow>,
}

/// One slow op: which pod, in which round, how far into its phase it ended.
#[derive(Clone, Copy)]
struct Slow {
    took: Duration,
    pod: usize,
    round: usize,
    at: Duration,
}

const SLOWEST_KEPT: usize = 5;

fn keep_slowest(kept: &mut Vec<Slow>, s: Slow) {
    kept.push(s);
    kept.sort_by_key(|s| std::cmp::Reverse(s.took));
    kept.truncate(SLOWEST_KEPT);
}

fn slow_json(v: &[Slow]) -> Value {
    v.iter()
        .map(|s| {
            json!({
                "ms": round3(ms(s.took)),
                "pod": s.pod,
                "round": s.round + 1,
                "ended_s_into_phase": round3(s.at.as_secs_f64()),
            })
        })
        .collect()
}

impl Samples {
    fn sort(&mut self) {
        self.add.sort();
        self.add_first.sort();
        self.add_last.sort();
        self.del.sort();
        for p in &mut self.parts {
            p.sort();
        }
    }

    fn pods_per_s(&self, pods: usize) -> f64 {
        let wall: Duration = self.add_walls.iter().chain(&self.del_walls).sum();
        (pods * self.add_walls.len()) as f64 / wall.as_secs_f64().max(1e-9)
    }

    fn to_json(&self, pods: usize) -> Value {
        let walls = |v: &[Duration]| v.iter().map(|d| round3(ms(*d))).collect::<Vec<_>>();
        let mut j = json!({
            "add_ms": lat_json(&self.add),
            "add_first_fifth_p50_ms": round3(ms(pct(&self.add_first, 50.0))),
            "add_last_fifth_p50_ms": round3(ms(pct(&self.add_last, 50.0))),
            "del_ms": lat_json(&self.del),
            "add_phase_wall_ms": walls(&self.add_walls),
            "del_phase_wall_ms": walls(&self.del_walls),
            "add_del_pods_per_s": round3(self.pods_per_s(pods)),
            "slowest_add": slow_json(&self.slowest_add),
            "slowest_del": slow_json(&self.slowest_del),
        });
        if !self.parts[0].is_empty() {
            j["parts_p50_ms"] = json!({
                "add_netlink": round3(ms(pct(&self.parts[0], 50.0))),
                "add_ovs_vsctl": round3(ms(pct(&self.parts[1], 50.0))),
                "del_ovs_vsctl": round3(ms(pct(&self.parts[2], 50.0))),
                "del_netlink": round3(ms(pct(&self.parts[3], 50.0))),
            });
        }
        j
    }
}

/// Memory seen over the run, KiB.
#[derive(Default)]
struct Memory {
    ipamd_start: u64,
    ipamd_loaded_max: u64,
    ipamd_hwm: u64,
    vswitchd_loaded_max: u64,
    ovsdb_loaded_max: u64,
}

/// ADDs all pods with `workers` workers, checks, DELs them, checks.
fn run_side(
    bed: &mut Bed,
    side: Side,
    workers: usize,
    pods: usize,
    round: usize,
    s: &mut Samples,
    mem: &mut Memory,
) -> Res<()> {
    let slots: Vec<Mutex<Option<Attached>>> = (0..pods).map(|_| Mutex::new(None)).collect();
    let (ops, wall) = phase(bed, side, workers, pods, |ctx, i| {
        let (op, a) = bed.add(side, ctx, i)?;
        *slots[i].lock().unwrap() = Some(a);
        Ok(op)
    })?;
    let attached: Vec<Attached> = slots
        .iter()
        .map(|m| m.lock().unwrap().clone().expect("every pod was ADDed"))
        .collect();
    s.add_walls.push(wall);
    let fifth = (pods / 5).max(1);
    for Timed { op: o, at } in ops {
        keep_slowest(
            &mut s.slowest_add,
            Slow {
                took: o.took,
                pod: o.pod,
                round,
                at,
            },
        );
        s.add.push(o.took);
        if o.pod < fifth {
            s.add_first.push(o.took);
        }
        if o.pod >= pods - fifth {
            s.add_last.push(o.took);
        }
        if let Some([a, b]) = o.parts {
            s.parts[0].push(a);
            s.parts[1].push(b);
        }
    }
    // Memory with every pod attached (before the checks fork anything).
    if side == Side::Moor {
        if let Some((rss, _)) = memory_kib(bed.ipamd.pid()) {
            mem.ipamd_loaded_max = mem.ipamd_loaded_max.max(rss);
        }
    }
    for (daemon, slot) in [
        ("ovs-vswitchd", &mut mem.vswitchd_loaded_max),
        ("ovsdb-server", &mut mem.ovsdb_loaded_max),
    ] {
        if let Some((rss, _)) = bed.pid_of(daemon).and_then(memory_kib) {
            *slot = (*slot).max(rss);
        }
    }
    bed.check_added(side, &attached)?;

    let (ops, wall) = phase(bed, side, workers, pods, |ctx, i| {
        bed.del(side, ctx, i, &attached[i])
    })?;
    s.del_walls.push(wall);
    for Timed { op: o, at } in ops {
        keep_slowest(
            &mut s.slowest_del,
            Slow {
                took: o.took,
                pod: o.pod,
                round,
                at,
            },
        );
        s.del.push(o.took);
        if let Some([a, b]) = o.parts {
            s.parts[2].push(a);
            s.parts[3].push(b);
        }
    }
    bed.check_clean(side)
}

// ---------------------------------------------------------------- report

fn ovs_version() -> String {
    run(Command::new("ovs-vswitchd").arg("--version"))
        .ok()
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

struct Report {
    opts: Opts,
    /// [workers level: 1, W][side]
    samples: [[Samples; 3]; 2],
    mem: Memory,
    total: Duration,
    load: (String, String),
}

impl Report {
    fn print(&mut self) {
        for level in self.samples.iter_mut() {
            for s in level.iter_mut() {
                s.sort();
            }
        }
        let o = &self.opts;
        let n = o.pods;
        println!();
        println!(
            "OVS mode, one node: {n} pods ADDed then DELeted, {} rounds, {:.1} s; \
             moor vs the Kube-OVN way (ref: netlink + a forked ovs-vsctl per port)",
            o.rounds,
            self.total.as_secs_f64()
        );
        println!(
            "machine: {} CPUs, kernel {}; {} (datapath_type=netdev); source {}",
            cpus(),
            kernel(),
            ovs_version(),
            commit()
        );
        println!(
            "load average (1 min): {} before the timed part, {} after; ref's del-port {}",
            self.load.0,
            self.load.1,
            if o.ref_del_waits {
                "waits for ovs-vswitchd"
            } else {
                "--no-wait (as moor's DEL)"
            }
        );
        println!(
            "moor = moor + ipamd --mode ovs (redb); moor-dp = ipamd's OvsDatapath in-process \
             (no plugin process, gRPC, IPAM)"
        );
        println!(
            "{:<30}{:>11}{:>11}{:>11}{:>10}{:>10}",
            "", "moor", "moor-dp", "ref", "moor/ref", "dp/ref"
        );
        let row = |label: &str, v: [f64; 3], unit: &str| {
            println!(
                "{label:<30}{:>8.2}{unit:<3}{:>8.2}{unit:<3}{:>8.2}{unit:<3}{:>10.2}{:>10.2}",
                v[0],
                v[1],
                v[2],
                v[0] / v[2],
                v[1] / v[2]
            );
        };
        for (level, workers) in [(0, 1), (1, o.workers)] {
            let s = &self.samples[level];
            println!("-- {workers} worker{}", if workers == 1 { "" } else { "s" });
            for (name, p) in PERCENTILES {
                let v = [0, 1, 2].map(|k| ms(pct(&s[k].add, p)));
                row(&format!("  ADD {name}"), v, " ms");
            }
            let fifth = (n / 5).max(1);
            let v = [0, 1, 2].map(|k| ms(pct(&s[k].add_first, 50.0)));
            row(&format!("  ADD p50, pods 1-{fifth}"), v, " ms");
            let v = [0, 1, 2].map(|k| ms(pct(&s[k].add_last, 50.0)));
            row(&format!("  ADD p50, pods {}-{n}", n - fifth + 1), v, " ms");
            for (name, p) in PERCENTILES {
                let v = [0, 1, 2].map(|k| ms(pct(&s[k].del, p)));
                row(&format!("  DEL {name}"), v, " ms");
            }
            let v = [0, 1, 2].map(|k| median(&s[k].add_walls).as_secs_f64());
            row(&format!("  {n} ADDs, wall (median)"), v, " s");
            let v = [0, 1, 2].map(|k| median(&s[k].del_walls).as_secs_f64());
            row(&format!("  {n} DELs, wall (median)"), v, " s");
            let v = [0, 1, 2].map(|k| s[k].pods_per_s(n));
            println!(
                "{:<30}{:>8.1}   {:>8.1}   {:>8.1}   {:>10.2}{:>10.2}",
                "  ADD+DEL pods/s",
                v[0],
                v[1],
                v[2],
                v[0] / v[2],
                v[1] / v[2]
            );
        }
        println!(
            "-- where ref's time goes, p50 (1 worker / {} workers)",
            o.workers
        );
        let labels = [
            "  ADD: netlink (veth, pod IP/MAC/route)",
            "  ADD: ovs-vsctl add-port (waits)",
            if o.ref_del_waits {
                "  DEL: ovs-vsctl del-port (waits)"
            } else {
                "  DEL: ovs-vsctl --no-wait del-port"
            },
            "  DEL: netlink (delete the veth)",
        ];
        for (k, label) in labels.iter().enumerate() {
            println!(
                "{label:<42}{:>8.2} ms / {:.2} ms",
                ms(pct(&self.samples[0][2].parts[k], 50.0)),
                ms(pct(&self.samples[1][2].parts[k], 50.0))
            );
        }
        let m = &self.mem;
        println!("-- memory (RSS)");
        println!(
            "  ipamd: {:.1} MiB at start, {:.1} MiB with {n} pods (max over rounds), peak {:.1} MiB",
            mib(m.ipamd_start),
            mib(m.ipamd_loaded_max),
            mib(m.ipamd_hwm)
        );
        println!(
            "  with {n} ports (both sides): ovs-vswitchd {:.1} MiB, ovsdb-server {:.1} MiB",
            mib(m.vswitchd_loaded_max),
            mib(m.ovsdb_loaded_max)
        );
        println!("moor/ref < 1 on latencies and > 1 on pods/s means moor is faster.");
        println!();
        let sides = |level: usize| {
            let s = &self.samples[level];
            json!({
                "moor": s[0].to_json(n),
                "moor_dp": s[1].to_json(n),
                "ref": s[2].to_json(n),
            })
        };
        let j = json!({
            "bench": "ovs_add_del",
            "cpus": cpus(),
            "kernel": kernel(),
            "ovs": ovs_version(),
            "loadavg_before": self.load.0,
            "loadavg_after": self.load.1,
            "commit": commit(),
            "pods": n,
            "workers": o.workers,
            "rounds": o.rounds,
            "ref_del_waits": o.ref_del_waits,
            "seconds": round3(self.total.as_secs_f64()),
            "single": sides(0),
            "multi": sides(1),
            "memory_mib": {
                "ipamd_start": round3(mib(m.ipamd_start)),
                "ipamd_with_pods": round3(mib(m.ipamd_loaded_max)),
                "ipamd_peak": round3(mib(m.ipamd_hwm)),
                "ovs_vswitchd_with_pods": round3(mib(m.vswitchd_loaded_max)),
                "ovsdb_server_with_pods": round3(mib(m.ovsdb_loaded_max)),
            },
        });
        println!("{j}");
    }
}

// ---------------------------------------------------------------- main

fn bench(opts: &Opts, bed: &mut Bed) -> Res<Report> {
    eprintln!("bench: warm-up (one pod of each side pings the gateway through OVS)");
    for side in SIDES {
        bed.warm_up(side)?;
    }
    let mut samples: [[Samples; 3]; 2] = Default::default();
    let mut mem = Memory {
        ipamd_start: bed.ipamd_start_kib,
        ..Memory::default()
    };
    let load_before = loadavg();
    let t0 = Instant::now();
    for round in 0..opts.rounds {
        let mut order = SIDES;
        order.rotate_left(round % SIDES.len());
        for (level, workers) in [(0, 1), (1, opts.workers)] {
            for side in order {
                check_interrupted()?;
                let s = &mut samples[level][side.idx()];
                run_side(bed, side, workers, opts.pods, round, s, &mut mem)?;
                eprintln!(
                    "bench: round {}/{} {:<7} {workers} worker(s): {} ADDs {:.2} s, {} DELs {:.2} s",
                    round + 1,
                    opts.rounds,
                    side.key(),
                    opts.pods,
                    s.add_walls.last().map_or(0.0, Duration::as_secs_f64),
                    opts.pods,
                    s.del_walls.last().map_or(0.0, Duration::as_secs_f64),
                );
            }
        }
    }
    let total = t0.elapsed();
    mem.ipamd_hwm = memory_kib(bed.ipamd.pid()).map_or(0, |m| m.1);
    Ok(Report {
        opts: opts.clone(),
        samples,
        mem,
        total,
        load: (load_before, loadavg()),
    })
}

fn main() -> ExitCode {
    let (opts, bins) = match start(
        "ovs_add_del",
        USAGE,
        parse_opts(),
        "it runs Open vSwitch and creates network namespaces",
        "./scripts/bench-ovs",
        find_bins,
    ) {
        Ok(started) => started,
        Err(code) => return code,
    };
    moor_e2e::bench::run(
        "ovs_add_del",
        Bed::new(&bins, &opts),
        |bed| bench(&opts, bed),
        |mut report| report.print(),
        |bed| {
            eprintln!(
                "ipamd log ({}):\n{}",
                bed.tmp.join("ipamd.log").display(),
                bed.ipamd.log_tail(LOG_LINES)
            );
        },
    )
}
