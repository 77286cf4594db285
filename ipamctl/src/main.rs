//! `ipamctl`: the admin CLI of moor. Talks to ipamd's Admin service over its
//! unix socket (`gc`: the controller's service on the controller's socket;
//! `ip evict --delete-pod`: also the Kubernetes API, as the operator).
//!
//! Exit codes: 0 done; 1 ipamd unreachable or it refused (its message is
//! printed as is), or `audit` found inconsistencies; 2 bad usage or bad
//! input, caught before any RPC.
//! stdout carries only the result: nothing is printed there on error, except
//! by a listing (`ip list`, `pool list`, `binding list`), printed as ipamd
//! streams it, that fails part way (see `listing`).

mod backup;
mod client;
mod evict;
mod gc;
mod listing;
mod output;
mod ui;
mod validate;
mod watch;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use moor_proto::v1::admin_client::AdminClient;
use moor_proto::v1::{
    AddBindingRequest, AddTorRequest, AuditRequest, CreatePoolRequest, DeletePoolRequest,
    DeleteTorRequest, EvictIpRequest, ExportPoolRequest, GetIpRequest, GetPoolRequest,
    GetTorRequest, ListNodesRequest, ListTorsRequest, ReleaseIpRequest, ResizePoolRequest,
};
use tonic::transport::Channel;

use client::ServerError;
use listing::Listing;
use output::{ExportFormat, Format, WatchFormat};
use validate::InputError;

#[derive(Debug, Parser)]
#[command(
    name = "ipamctl",
    version,
    about = "Admin CLI of moor: ToRs, IP pools, IPs, bindings and nodes held by ipamd"
)]
struct Cli {
    /// ipamd's unix socket.
    #[arg(
        long,
        global = true,
        env = "MOOR_SOCKET",
        value_name = "PATH",
        default_value = moor_proto::DEFAULT_SOCKET
    )]
    socket: PathBuf,

    /// Output format of read commands; json is stable, for scripts.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// ToRs (L2 domains): a subnet, a gateway, a VLAN, the ranges for pods.
    #[command(subcommand)]
    Tor(TorCommand),
    /// Per-app IP pools carved from ToRs; their IPs are the app's whitelist.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Single IPs: who holds them, and releasing a binding.
    #[command(subcommand)]
    Ip(IpCommand),
    /// Sticky bindings: pod -> IP.
    #[command(subcommand)]
    Binding(BindingCommand),
    /// The nodes that registered with the store (one per ipamd).
    #[command(subcommand)]
    Node(NodeCommand),
    /// Cross-check every record of the store (leases, bindings, attachment
    /// index, free counts, pools, ToRs) and print each inconsistency with
    /// its key and the fix, after the store's schema version. Exit 0 when
    /// the store is sound, 1 when not.
    Audit,
    /// Garbage collection by Kubernetes truth, now: release bindings whose
    /// pod and StatefulSet have been gone for longer than the controller's
    /// --binding-gc-grace-seconds, and attachments whose pod and node are
    /// gone. Asks the controller (ipamd --role controller or both) on
    /// --socket; the replica that leads answers.
    Gc {
        /// List what would be released and why; release nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write a consistent snapshot of the whole store (every record under
    /// moor's prefix, one store revision) to FILE: written to a temporary
    /// file next to it, fsynced and renamed, so FILE is never half written.
    /// The file says the schema version, moor version, time and record
    /// count, with a sha256 checksum.
    Backup {
        /// Where to write the backup.
        file: PathBuf,
    },
    /// Load a backup FILE into an empty store (a fresh etcd, or a new redb
    /// file): refused when the store holds any ToR, pool, lease, binding or
    /// attachment, and for a damaged file, changing nothing. ipamd refuses
    /// ADDs while it restores. Killed midway, run it again with the same
    /// FILE to finish. Then run `ipamctl audit`.
    Restore {
        /// The backup to load.
        file: PathBuf,
    },
    /// Serve a read-only web page of ipamd's ToRs, pools, IPs and nodes:
    /// counts as bars, a pool's IPs with pod, node and state, search and
    /// paging; it reloads its data by itself. Runs until stopped.
    Ui(UiArgs),
}

#[derive(Debug, Args)]
struct UiArgs {
    /// Where to serve the page, IP:PORT (port 0: any free port, printed on
    /// stderr). Loopback only, unless --allow-remote.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9472")]
    listen: String,
    /// Seconds between the page's reloads of its data.
    #[arg(long, value_name = "SECONDS", default_value_t = ui::DEFAULT_REFRESH_SECONDS.to_string())]
    refresh: String,
    /// Serve the page on a non-loopback --listen address, and to any Host
    /// name. It has no login: whoever reaches it sees every pod's IP and node.
    #[arg(long)]
    allow_remote: bool,
}

#[derive(Debug, Subcommand)]
enum TorCommand {
    /// Add a ToR.
    Add(TorAddArgs),
    /// List ToRs.
    List,
    /// Show one ToR.
    Show { name: String },
    /// Delete a ToR (ipamd refuses while pools hold IPs of it).
    Delete { name: String },
}

// Values are taken as strings and checked by `validate`, so that every bad
// value gets the same kind of message: flag, value, fix.
#[derive(Debug, Args)]
struct TorAddArgs {
    /// The ToR's name: lowercase letters, digits and '-', e.g. rack-1.
    name: String,
    /// The segment's subnet, e.g. 10.1.0.0/24 or fd00:1::/64 (an IPv6 one
    /// is a /64 to /126). Give one per family for dual stack: --subnet
    /// 10.1.0.0/24 --gateway 10.1.0.1 --subnet fd00:1::/64 --gateway
    /// fd00:1::1; each pod then gets an address of each.
    #[arg(long = "subnet", value_name = "CIDR", required = true)]
    subnets: Vec<String>,
    /// The router of the subnet, e.g. 10.1.0.1; one per --subnet, in the
    /// same order.
    #[arg(long = "gateway", value_name = "IP", required = true)]
    gateways: Vec<String>,
    /// 802.1Q VLAN id, 1-4094; omit for untagged.
    #[arg(long, value_name = "ID", allow_negative_numbers = true)]
    vlan: Option<String>,
    /// Addresses reserved for pods, FIRST-LAST, of either family;
    /// repeatable. Default: the whole subnet of a family that has none, but
    /// network, gateway and broadcast.
    #[arg(long = "range", value_name = "A-B")]
    ranges: Vec<String>,
    /// Make this an extra segment (VLAN and subnet) of ToR TOR: nodes of
    /// TOR serve it too, and pools that name it with --tor take IPs from it.
    /// Each segment of a ToR has its own VLAN.
    #[arg(long, value_name = "TOR")]
    segment_of: Option<String>,
}

#[derive(Debug, Subcommand)]
enum PoolCommand {
    /// Create a pool for an app.
    Create(PoolCreateArgs),
    /// Grow or shrink a pool.
    Resize {
        name: String,
        #[arg(long, value_name = "N", allow_negative_numbers = true)]
        size: String,
    },
    /// List pools.
    List,
    /// Show a pool with its counts per ToR.
    Show { name: String },
    /// Delete a pool.
    Delete { name: String },
    /// Print the pool's whitelist: every IP of the pool, whatever its state
    /// (a dual-stack pool's IPv6 partners too).
    ///
    /// With --watch, stream it for a whitelist syncer, one line a change,
    /// flushed: `= N` (replace your set with the N `+ IP` lines that follow),
    /// `+ IP` (joined), `- IP` (left), `! deleted` (the pool is gone; exit
    /// 0). With --format json (or -o json): one object a line,
    /// {"kind":"snapshot|add|remove|deleted","pool":..,"ips":[..],"revision":N}.
    /// When ipamd restarts or the stream breaks, it reconnects (backoff
    /// 200 ms to 5 s, forever, a note on stderr each time) and the feed
    /// starts again with a snapshot.
    Export {
        name: String,
        /// Default: json with -o json, else plain. --watch takes plain or json.
        #[arg(long, value_enum)]
        format: Option<ExportFormat>,
        /// Follow the pool: a snapshot, then every change, until it is deleted.
        #[arg(long)]
        watch: bool,
    },
}

#[derive(Debug, Args)]
struct PoolCreateArgs {
    /// The pool's name: lowercase letters, digits and '-', e.g. mysql-prod.
    name: String,
    /// Namespace of the app's pods.
    #[arg(long, value_name = "NS")]
    namespace: String,
    /// The app: the name of the pods' Deployment, StatefulSet, ... (a Kubernetes
    /// object name) whose pods take IPs from this pool.
    #[arg(long)]
    app: String,
    /// Number of IPs, 1-65535; default 30.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    size: Option<String>,
    /// ToRs to carve from, repeatable; default all, spread by their usage.
    #[arg(long = "tor", value_name = "T")]
    tors: Vec<String>,
    /// Who keeps an IP after pod deletion: auto (stable pod names), sticky
    /// (every pod) or release (no pod). Default auto.
    #[arg(long)]
    policy: Option<String>,
    /// Another namespace whose pods may name this pool (annotation
    /// moor.io/pool on the pod or its namespace), repeatable; `*` for all.
    #[arg(long = "allow-namespace", value_name = "NS")]
    allow_namespaces: Vec<String>,
    /// Bring your own IPs: exactly this IP, repeatable (each in a pod range
    /// of a ToR, in no pool, not cooling down), instead of --size carved
    /// ones. Keep one for a pod with `binding add`.
    #[arg(long = "ip", value_name = "IP")]
    ips: Vec<String>,
    /// Which addresses its pods get: ipv4, ipv6, or dual (one of each, from
    /// dual-stack ToR segments; --ip then lists the IPv4 ones, each brings
    /// its IPv6 partner). Default: every family all its ToRs have.
    #[arg(long, value_enum)]
    family: Option<validate::PoolFamily>,
}

#[derive(Debug, Subcommand)]
enum IpCommand {
    /// List IPs, of one pool or all.
    List {
        #[arg(long, value_name = "P")]
        pool: Option<String>,
    },
    /// Show one IP.
    Show {
        #[arg(value_name = "IP")]
        address: String,
    },
    /// Drop the IP's binding so the IP goes back to its pool.
    Release {
        #[arg(value_name = "IP")]
        address: String,
    },
    /// Delete a pod by its IP: a binding no running pod holds is dropped now;
    /// a held one goes with the pod's DEL, and ipamctl says which pod and
    /// node hold it.
    Evict {
        #[arg(value_name = "IP")]
        address: String,
        /// Also end the live attachment now, if it is on ipamd's own node (the
        /// pod loses its interface) or on a node that is not alive.
        #[arg(long, conflicts_with = "delete_pod")]
        force: bool,
        /// Delete the pod that holds the IP through the Kubernetes Eviction
        /// API (PodDisruptionBudgets are honoured: a refusal changes
        /// nothing), then mark the IP so its binding goes with the pod's
        /// DEL. Needs create on pods/eviction in the pod's namespace.
        #[arg(long)]
        delete_pod: bool,
        /// With --delete-pod: the kubeconfig to reach the API server with.
        /// Default: KUBECONFIG, ~/.kube/config, or the pod's service account.
        #[arg(long, value_name = "PATH")]
        kubeconfig: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// List nodes and whether they are alive (a heartbeat within 30 s).
    List,
}

#[derive(Debug, Subcommand)]
enum BindingCommand {
    /// List bindings, of one pool or all.
    List {
        #[arg(long, value_name = "P")]
        pool: Option<String>,
    },
    /// Keep a free IP of a pool for a pod before the pod exists (a service
    /// moving from a VM keeps the IP its peers whitelisted): the pod's first
    /// ADD, on any node of the IP's ToR, takes it.
    Add {
        /// The pod, as NAMESPACE/NAME.
        #[arg(value_name = "NS/POD")]
        pod: String,
        #[arg(value_name = "IP")]
        address: String,
    },
}

/// One checked RPC, ready to send.
#[derive(Debug)]
enum Rpc {
    AddTor(AddTorRequest),
    ListTors,
    GetTor(String),
    DeleteTor(String),
    CreatePool(CreatePoolRequest),
    ResizePool(ResizePoolRequest),
    /// A stream printed as it comes: see `listing`.
    List(Listing),
    GetPool(String),
    DeletePool(String),
    ExportPool(String, ExportFormat),
    /// Not one call: a stream, see `watch`.
    WatchPool(String, WatchFormat),
    GetIp(String),
    ReleaseIp(String),
    EvictIp(EvictIpRequest),
    AddBinding(AddBindingRequest),
    ListNodes,
    Audit,
    /// `gc`: the controller's service; true = dry run.
    CollectGarbage(bool),
    /// `ip evict --delete-pod`: ipamd and the Kubernetes API.
    EvictPod(evict::DeletePod),
    /// `ui`: not one call, a web server: see `ui::run`.
    Ui(ui::Config),
    /// `backup FILE`: a stream into a file, see `backup`.
    Backup(PathBuf),
    /// `restore FILE`: the file is checked first, see `backup`.
    Restore(PathBuf),
}

/// Checks the command line and turns it into an RPC, without I/O.
fn plan(command: &Command, format: Format) -> Result<Rpc, InputError> {
    use validate::{pool_name, tor_name};
    let pool_filter = |p: &Option<String>| match p {
        Some(p) => pool_name("--pool", p),
        None => Ok(String::new()),
    };
    Ok(match command {
        Command::Tor(c) => match c {
            TorCommand::Add(a) => Rpc::AddTor(validate::tor_add(&validate::TorAdd {
                name: &a.name,
                subnets: &a.subnets,
                gateways: &a.gateways,
                vlan: a.vlan.as_deref(),
                ranges: &a.ranges,
                segment_of: a.segment_of.as_deref(),
            })?),
            TorCommand::List => Rpc::ListTors,
            TorCommand::Show { name: n } => Rpc::GetTor(tor_name("NAME", n)?),
            TorCommand::Delete { name: n } => Rpc::DeleteTor(tor_name("NAME", n)?),
        },
        Command::Pool(c) => match c {
            PoolCommand::Create(a) => {
                Rpc::CreatePool(validate::pool_create(&validate::PoolCreate {
                    name: &a.name,
                    namespace: &a.namespace,
                    app: &a.app,
                    size: a.size.as_deref(),
                    tors: &a.tors,
                    policy: a.policy.as_deref(),
                    allow_namespaces: &a.allow_namespaces,
                    ips: &a.ips,
                    family: a.family,
                })?)
            }
            PoolCommand::Resize { name: n, size } => Rpc::ResizePool(ResizePoolRequest {
                name: pool_name("NAME", n)?,
                size: validate::size("--size", size)?,
            }),
            PoolCommand::List => Rpc::List(Listing::Pools),
            PoolCommand::Show { name: n } => Rpc::GetPool(pool_name("NAME", n)?),
            PoolCommand::Delete { name: n } => Rpc::DeletePool(pool_name("NAME", n)?),
            PoolCommand::Export {
                name: n,
                format: f,
                watch: true,
            } => {
                let f = validate::watch_format(*f, format)?;
                Rpc::WatchPool(pool_name("NAME", n)?, f)
            }
            PoolCommand::Export {
                name: n,
                format: f,
                watch: false,
            } => {
                let f = f.unwrap_or(match format {
                    Format::Json => ExportFormat::Json,
                    Format::Table => ExportFormat::Plain,
                });
                Rpc::ExportPool(pool_name("NAME", n)?, f)
            }
        },
        Command::Ip(c) => match c {
            IpCommand::List { pool } => Rpc::List(Listing::Ips(pool_filter(pool)?)),
            IpCommand::Show { address } => {
                Rpc::GetIp(validate::address("IP", address)?.to_string())
            }
            IpCommand::Release { address } => {
                Rpc::ReleaseIp(validate::address("IP", address)?.to_string())
            }
            IpCommand::Evict {
                address,
                delete_pod: true,
                kubeconfig,
                ..
            } => Rpc::EvictPod(evict::DeletePod {
                address: validate::address("IP", address)?.to_string(),
                kubeconfig: kubeconfig.clone(),
            }),
            IpCommand::Evict { address, force, .. } => {
                Rpc::EvictIp(validate::evict(address, *force)?)
            }
        },
        Command::Binding(BindingCommand::List { pool }) => {
            Rpc::List(Listing::Bindings(pool_filter(pool)?))
        }
        Command::Binding(BindingCommand::Add { pod, address }) => {
            Rpc::AddBinding(validate::binding_add(pod, address)?)
        }
        Command::Node(NodeCommand::List) => Rpc::ListNodes,
        Command::Audit => Rpc::Audit,
        Command::Gc { dry_run } => Rpc::CollectGarbage(*dry_run),
        Command::Ui(a) => Rpc::Ui(ui::config(&a.listen, &a.refresh, a.allow_remote)?),
        Command::Backup { file } => Rpc::Backup(file.clone()),
        Command::Restore { file } => Rpc::Restore(file.clone()),
    })
}

/// A rendered reply, and whether it reports a problem (`audit` findings:
/// exit 1 with the output on stdout).
struct Rendered {
    text: String,
    failed: bool,
}

impl From<String> for Rendered {
    fn from(text: String) -> Self {
        Self {
            text,
            failed: false,
        }
    }
}

/// Sends the RPC and renders its reply.
async fn call(
    client: &mut AdminClient<Channel>,
    rpc: Rpc,
    format: Format,
) -> Result<Rendered, tonic::Status> {
    Ok(match rpc {
        Rpc::AddTor(req) => output::tor_show(&client.add_tor(req).await?.into_inner(), format),
        Rpc::ListTors => {
            let reply = client.list_tors(ListTorsRequest {}).await?.into_inner();
            output::tor_list(&reply.tors, format)
        }
        Rpc::GetTor(name) => {
            let tor = client.get_tor(GetTorRequest { name }).await?.into_inner();
            output::tor_show(&tor, format)
        }
        Rpc::DeleteTor(name) => {
            client
                .delete_tor(DeleteTorRequest { name: name.clone() })
                .await?;
            output::deleted("tor", &name, format)
        }
        Rpc::CreatePool(req) => {
            output::pool_show(&client.create_pool(req).await?.into_inner(), format)
        }
        Rpc::ResizePool(req) => {
            output::pool_show(&client.resize_pool(req).await?.into_inner(), format)
        }
        Rpc::GetPool(name) => {
            let pool = client.get_pool(GetPoolRequest { name }).await?.into_inner();
            output::pool_show(&pool, format)
        }
        Rpc::DeletePool(name) => {
            client
                .delete_pool(DeletePoolRequest { name: name.clone() })
                .await?;
            output::deleted("pool", &name, format)
        }
        Rpc::ExportPool(name, export_format) => {
            let reply = client
                .export_pool(ExportPoolRequest { name })
                .await?
                .into_inner();
            output::pool_export(&reply, export_format)
        }
        Rpc::WatchPool(..) => unreachable!("a watch is a stream: see run_watch"),
        Rpc::List(_) => unreachable!("a listing is a stream: see run_listing"),
        Rpc::CollectGarbage(_)
        | Rpc::EvictPod(_)
        | Rpc::Ui(_)
        | Rpc::Backup(_)
        | Rpc::Restore(_) => {
            unreachable!("not the Admin service alone: see run")
        }
        Rpc::GetIp(address) => {
            let ip = client.get_ip(GetIpRequest { address }).await?.into_inner();
            output::ip_show(&ip, format)
        }
        Rpc::ReleaseIp(address) => {
            let reply = client
                .release_ip(ReleaseIpRequest { address })
                .await?
                .into_inner();
            output::ip_release(&reply, format)
        }
        Rpc::EvictIp(req) => output::ip_evict(&client.evict_ip(req).await?.into_inner(), format),
        Rpc::AddBinding(req) => {
            let binding = client.add_binding(req).await?.into_inner();
            output::binding_list(&[binding], format)
        }
        Rpc::ListNodes => {
            let reply = client.list_nodes(ListNodesRequest {}).await?.into_inner();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            output::node_list(&reply.nodes, now, format)
        }
        Rpc::Audit => {
            let reply = client.audit(AuditRequest {}).await?.into_inner();
            return Ok(Rendered {
                failed: !reply.findings.is_empty(),
                text: output::audit(&reply, format),
            });
        }
    }
    .into())
}

/// Runs `f` to completion on a runtime of this thread (one RPC or stream
/// per command: nothing to share between threads).
fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

fn run(cli: &Cli, rpc: Rpc) -> anyhow::Result<Rendered> {
    block_on(async {
        let channel = client::channel(&cli.socket).await?;
        Ok(match rpc {
            Rpc::CollectGarbage(dry_run) => {
                let reply = gc::collect(channel, dry_run).await.map_err(ServerError)?;
                let (text, failed) = gc::render(&reply, cli.output);
                Rendered { text, failed }
            }
            Rpc::EvictPod(req) => evict::delete_pod(&mut client::admin(channel), &req, cli.output)
                .await?
                .into(),
            rpc => call(&mut client::admin(channel), rpc, cli.output)
                .await
                .map_err(ServerError)?,
        })
    })
}

/// `pool export --watch`: prints as it goes, so it owns stdout.
fn run_watch(cli: &Cli, pool: &str, format: WatchFormat) -> ExitCode {
    let result = block_on(watch::follow(
        &cli.socket,
        pool,
        format,
        &mut io::stdout(),
        &mut |note| eprintln!("{note}"),
    ));
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipamctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `ip list`, `pool list`, `binding list`: printed as the stream comes, so
/// it owns stdout.
fn run_listing(cli: &Cli, listing: &Listing) -> ExitCode {
    let result = block_on(async {
        let channel = client::channel(&cli.socket).await?;
        let mut out = io::stdout().lock();
        listing::print(&mut client::admin(channel), listing, cli.output, &mut out).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipamctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `backup FILE` / `restore FILE`. A restore checks the whole file first:
/// a missing, truncated or edited file exits 2 and sends nothing.
fn run_backup(cli: &Cli, restore: bool, file: &std::path::Path) -> ExitCode {
    let checked = if restore {
        match backup::verify(file) {
            Ok(end) => Some(end),
            Err(e) => {
                eprintln!("ipamctl: {e:#}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    let result = block_on(async {
        let mut client = client::connect_watch(&cli.socket).await?;
        Ok(match &checked {
            Some(end) => {
                let r = backup::restore(&mut client, file, end).await?;
                backup::restored(&r, end, file, cli.output)
            }
            None => {
                let end = backup::backup(&mut client, file).await?;
                backup::backed_up(&end, file, cli.output)
            }
        })
    });
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ipamctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    // clap prints its own usage errors and exits 2.
    let cli = Cli::parse();
    // Input is checked before connecting: a typo is answered even when ipamd
    // is down, and never reaches it.
    let rpc = match plan(&cli.command, cli.output) {
        Ok(rpc) => rpc,
        Err(e) => {
            eprintln!("ipamctl: {e}");
            return ExitCode::from(2);
        }
    };
    if let Rpc::WatchPool(pool, format) = &rpc {
        return run_watch(&cli, pool, *format);
    }
    if let Rpc::List(listing) = &rpc {
        return run_listing(&cli, listing);
    }
    if let Rpc::Backup(file) | Rpc::Restore(file) = &rpc {
        return run_backup(&cli, matches!(rpc, Rpc::Restore(_)), file);
    }
    if let Rpc::Ui(config) = &rpc {
        return match ui::run(&cli.socket, config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ipamctl: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run(&cli, rpc) {
        Ok(r) => match io::stdout().lock().write_all(r.text.as_bytes()) {
            Ok(()) if r.failed => ExitCode::FAILURE,
            // `ipamctl ip list | head` closes the pipe early: not an error.
            Ok(()) => ExitCode::SUCCESS,
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe && r.failed => ExitCode::FAILURE,
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ipamctl: writing the output: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("ipamctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn plan_of(args: &[&str]) -> Result<Rpc, InputError> {
        let cli = Cli::try_parse_from(std::iter::once("ipamctl").chain(args.iter().copied()))
            .expect("parses");
        plan(&cli.command, cli.output)
    }

    #[test]
    fn plans_carry_the_checked_values() {
        match plan_of(&[
            "tor",
            "add",
            "rack-1",
            "--subnet",
            "10.1.0.0/24",
            "--gateway",
            "10.1.0.1",
            "--vlan",
            "100",
            "--range",
            "10.1.0.10-10.1.0.20",
            "--range",
            "10.1.0.30-10.1.0.40",
        ]) {
            Ok(Rpc::AddTor(req)) => {
                assert_eq!(req.vlan, 100);
                assert_eq!(req.ranges.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        // Dual stack: --subnet and --gateway pair up in order, IPv6 first
        // or not.
        match plan_of(&[
            "tor",
            "add",
            "rack-1",
            "--subnet",
            "fd00:1::/64",
            "--gateway",
            "fd00:1::1",
            "--subnet",
            "10.1.0.0/24",
            "--gateway",
            "10.1.0.1",
            "--range",
            "fd00:1::10-fd00:1::ffff",
        ]) {
            Ok(Rpc::AddTor(req)) => {
                assert_eq!(
                    (req.subnet.as_str(), req.gateway.as_str()),
                    ("10.1.0.0/24", "10.1.0.1")
                );
                assert_eq!(
                    (req.subnet6.as_str(), req.gateway6.as_str()),
                    ("fd00:1::/64", "fd00:1::1")
                );
            }
            other => panic!("{other:?}"),
        }
        for (family, want) in [(&["--family", "dual"][..], "dual"), (&[][..], "")] {
            let mut args = vec![
                "pool",
                "create",
                "web",
                "--namespace",
                "shop",
                "--app",
                "web",
            ];
            args.extend_from_slice(family);
            match plan_of(&args) {
                Ok(Rpc::CreatePool(req)) => assert_eq!(req.family, want, "{args:?}"),
                other => panic!("{other:?}"),
            }
        }
        match plan_of(&["ip", "show", "fd00:1::11"]) {
            Ok(Rpc::GetIp(address)) => assert_eq!(address, "fd00:1::11"),
            other => panic!("{other:?}"),
        }
        match plan_of(&["pool", "resize", "web", "--size", "40"]) {
            Ok(Rpc::ResizePool(req)) => assert_eq!((req.name.as_str(), req.size), ("web", 40)),
            other => panic!("{other:?}"),
        }
        match plan_of(&["-o", "json", "pool", "export", "web"]) {
            Ok(Rpc::ExportPool(_, ExportFormat::Json)) => {}
            other => panic!("{other:?}"),
        }
        match plan_of(&["pool", "export", "web"]) {
            Ok(Rpc::ExportPool(_, ExportFormat::Plain)) => {}
            other => panic!("{other:?}"),
        }
        match plan_of(&["ip", "list"]) {
            Ok(Rpc::List(Listing::Ips(pool))) => assert_eq!(pool, "", "empty = all pools"),
            other => panic!("{other:?}"),
        }
        match plan_of(&["ip", "evict", "10.1.0.17"]) {
            Ok(Rpc::EvictIp(req)) => {
                assert_eq!((req.address.as_str(), req.force), ("10.1.0.17", false))
            }
            other => panic!("{other:?}"),
        }
        match plan_of(&["ip", "evict", "--force", "10.1.0.17"]) {
            Ok(Rpc::EvictIp(req)) => assert!(req.force),
            other => panic!("{other:?}"),
        }
        match plan_of(&["ip", "evict", "10.1.0.17", "--delete-pod"]) {
            Ok(Rpc::EvictPod(req)) => {
                assert_eq!((req.address.as_str(), req.kubeconfig), ("10.1.0.17", None))
            }
            other => panic!("{other:?}"),
        }
        match plan_of(&[
            "ip",
            "evict",
            "10.1.0.17",
            "--delete-pod",
            "--kubeconfig",
            "/k",
        ]) {
            Ok(Rpc::EvictPod(req)) => assert_eq!(req.kubeconfig, Some(PathBuf::from("/k"))),
            other => panic!("{other:?}"),
        }
        assert!(
            Cli::try_parse_from([
                "ipamctl",
                "ip",
                "evict",
                "10.1.0.17",
                "--delete-pod",
                "--force"
            ])
            .is_err(),
            "--delete-pod and --force: one or the other"
        );
        match plan_of(&["gc", "--dry-run"]) {
            Ok(Rpc::CollectGarbage(true)) => {}
            other => panic!("{other:?}"),
        }
        match plan_of(&["gc"]) {
            Ok(Rpc::CollectGarbage(false)) => {}
            other => panic!("{other:?}"),
        }
        match plan_of(&["node", "list"]) {
            Ok(Rpc::ListNodes) => {}
            other => panic!("{other:?}"),
        }
        match plan_of(&["-o", "json", "audit"]) {
            Ok(Rpc::Audit) => {}
            other => panic!("{other:?}"),
        }
        match plan_of(&["ui"]) {
            Ok(Rpc::Ui(c)) => {
                assert_eq!(c.listen.to_string(), "127.0.0.1:9472");
                assert_eq!((c.refresh_seconds, c.allow_remote), (5, false));
            }
            other => panic!("{other:?}"),
        }
        match plan_of(&[
            "ui",
            "--listen",
            "0.0.0.0:80",
            "--allow-remote",
            "--refresh",
            "1",
        ]) {
            Ok(Rpc::Ui(c)) => assert_eq!((c.refresh_seconds, c.allow_remote), (1, true)),
            other => panic!("{other:?}"),
        }
        // (args, the watch's line format)
        for (args, want) in [
            (
                &["pool", "export", "web", "--watch"][..],
                WatchFormat::Plain,
            ),
            (
                &["-o", "json", "pool", "export", "web", "--watch"][..],
                WatchFormat::Json,
            ),
            (
                &["pool", "export", "web", "--watch", "--format", "json"][..],
                WatchFormat::Json,
            ),
            (
                &[
                    "-o", "json", "pool", "export", "--format", "plain", "web", "--watch",
                ][..],
                WatchFormat::Plain,
            ),
        ] {
            match plan_of(args) {
                Ok(Rpc::WatchPool(pool, f)) => {
                    assert_eq!((pool.as_str(), f), ("web", want), "{args:?}")
                }
                other => panic!("{args:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn plans_reject_bad_names_and_addresses() {
        for (args, flag) in [
            (&["tor", "show", "Rack1"][..], "NAME"),
            (&["pool", "delete", "a_b"][..], "NAME"),
            (&["pool", "resize", "web", "--size", "-1"][..], "--size"),
            (&["ip", "list", "--pool", "Web"][..], "--pool"),
            (&["binding", "list", "--pool", ""][..], "--pool"),
            (&["ip", "release", "10.1.0.300"][..], "IP"),
            (&["ip", "show", "fd00::1/64"][..], "IP"),
            (&["ip", "evict", "10.1.0.17/24"][..], "IP"),
            (&["ip", "evict", "--force", "web-0"][..], "IP"),
            (&["ip", "evict", "--delete-pod", "web-0"][..], "IP"),
            (&["pool", "export", "Web", "--watch"][..], "NAME"),
            (&["ui", "--listen", "0.0.0.0:9472"][..], "--listen"),
            (&["ui", "--refresh", "0"][..], "--refresh"),
            (
                &["pool", "export", "web", "--watch", "--format", "csv"][..],
                "--format",
            ),
        ] {
            let e = plan_of(args).expect_err(&format!("{args:?}"));
            assert_eq!(e.flag, flag, "{args:?}: {e}");
        }
    }
}
