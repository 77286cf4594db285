//! What `ipamctl` prints: aligned tables for people, JSON for scripts.
//!
//! The JSON comes from the view structs below, not from the generated proto
//! types, so that its shape is ours to keep stable: snake_case field names,
//! enums as lowercase words, absent things as `null`, lists as arrays, sorted
//! (ToRs, pools by name; IPs by pool, then address; bindings by pod). The
//! long lists ipamd streams are printed by `listing`, with the rows below.

use std::net::IpAddr;

use clap::ValueEnum;
use moor_proto::v1::pool_change::Kind;
use moor_proto::v1::{
    Attachment, AuditReply, Binding, EvictIpReply, ExportPoolReply, Ip, Node, PodRef, Pool,
    PoolChange, ReleaseIpReply, ReleasePolicy, Tor,
};
use serde::Serialize;

/// `-o/--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// `pool export --format`: how a whitelist is handed to a firewall or a
/// database's grant script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// One IP a line; a dual-stack pool's IPv4 addresses, then their IPv6
    /// partners.
    Plain,
    /// Header `ip,pool`, then one row per IP; a dual-stack pool's header is
    /// `ip,pool,ip6`, each row an IPv4 address with its IPv6 partner.
    Csv,
    /// `{"pool": NAME, "ips": [..], "ips6": [..]}` (`ips6`: a dual-stack
    /// pool's IPv6 partners of `ips`, same order; else empty).
    Json,
}

/// `pool export --watch`: the feed's line format. There is no CSV feed: a
/// change is not a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchFormat {
    /// `= N` then N `+ IP` lines on a snapshot; `+ IP` / `- IP` per change;
    /// `! deleted` when the pool is gone.
    Plain,
    /// One compact JSON object a line: [`ChangeView`].
    Json,
}

// ---------------------------------------------------------------------------
// JSON views.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RangeView {
    pub first: String,
    pub last: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TorView {
    pub name: String,
    /// The IPv4 subnet (an IPv6-only segment: its IPv6 one).
    pub subnet: String,
    pub gateway: String,
    /// A dual-stack segment's IPv6 subnet and gateway; `null` otherwise.
    pub subnet6: Option<String>,
    pub gateway6: Option<String>,
    /// `null` = untagged.
    pub vlan: Option<u32>,
    pub ranges: Vec<RangeView>,
    /// IPs pools of the segment's own family carve (dual stack: pairs).
    pub capacity: u32,
    /// IPs IPv6-only pools may carve (saturating: a /64 is more than any
    /// pool asks for); 0 without IPv6.
    pub capacity6: u32,
    pub carved: u32,
    /// The ToR this record is a segment of; `null`: a ToR's own segment.
    pub segment_of: Option<String>,
}

impl TorView {
    fn has_ipv6(&self) -> bool {
        self.subnet6.is_some() || self.subnet.contains(':')
    }

    /// Both subnets (or gateways), IPv4 first, for one table cell.
    fn both(first: &str, v6: &Option<String>) -> String {
        match v6 {
            Some(v6) => format!("{first},{v6}"),
            None => first.to_string(),
        }
    }
}

impl From<&Tor> for TorView {
    fn from(t: &Tor) -> Self {
        Self {
            name: t.name.clone(),
            subnet: t.subnet.clone(),
            gateway: t.gateway.clone(),
            subnet6: (!t.subnet6.is_empty()).then(|| t.subnet6.clone()),
            gateway6: (!t.gateway6.is_empty()).then(|| t.gateway6.clone()),
            vlan: (t.vlan != 0).then_some(t.vlan),
            ranges: t
                .ranges
                .iter()
                .map(|r| RangeView {
                    first: r.first.clone(),
                    last: r.last.clone(),
                })
                .collect(),
            capacity: t.capacity,
            capacity6: t.capacity6,
            carved: t.carved,
            segment_of: (!t.segment_of.is_empty()).then(|| t.segment_of.clone()),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct CountsView {
    pub total: u32,
    pub bound: u32,
    pub in_use: u32,
    pub free: u32,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PoolTorView {
    pub tor: String,
    #[serde(flatten)]
    pub counts: CountsView,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PoolView {
    pub name: String,
    pub namespace: String,
    pub app: String,
    pub size: u32,
    /// `auto`, `sticky` or `release`.
    pub policy: String,
    /// `ipv4`, `ipv6` or `dual`: which addresses its pods get.
    pub family: String,
    /// Other namespaces whose pods may name the pool (`*`: all).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_namespaces: Vec<String>,
    pub tors: Vec<PoolTorView>,
    /// The sums over `tors`.
    pub totals: CountsView,
}

impl From<&Pool> for PoolView {
    fn from(p: &Pool) -> Self {
        let tors: Vec<PoolTorView> = p
            .tors
            .iter()
            .map(|t| PoolTorView {
                tor: t.tor.clone(),
                counts: CountsView {
                    total: t.total,
                    bound: t.bound,
                    in_use: t.in_use,
                    free: t.free,
                },
            })
            .collect();
        let totals = tors.iter().fold(CountsView::default(), |a, t| CountsView {
            total: a.total.saturating_add(t.counts.total),
            bound: a.bound.saturating_add(t.counts.bound),
            in_use: a.in_use.saturating_add(t.counts.in_use),
            free: a.free.saturating_add(t.counts.free),
        });
        Self {
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            app: p.app.clone(),
            size: p.size,
            policy: policy_name(p.policy),
            // An ipamd from before dual stack sends none: its pools are all
            // IPv4.
            family: if p.family.is_empty() {
                "ipv4".to_string()
            } else {
                p.family.clone()
            },
            allow_namespaces: p.allow_namespaces.clone(),
            tors,
            totals,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl PodView {
    /// `None` for a missing or all-empty PodRef (proto3 cannot tell them apart
    /// reliably across implementations).
    fn of(p: Option<&PodRef>) -> Option<Self> {
        let p = p?;
        if p.namespace.is_empty() && p.name.is_empty() && p.uid.is_empty() {
            return None;
        }
        Some(Self {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            uid: p.uid.clone(),
        })
    }

    fn display(&self) -> String {
        if self.namespace.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", self.namespace, self.name)
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AttachmentView {
    pub container_id: String,
    pub ifname: String,
    pub node: String,
    pub netns: String,
    pub pod: Option<PodView>,
    pub host_ifname: String,
    pub mac: String,
    /// `pending` (ADD in flight) or `ready`.
    pub state: String,
    pub network: String,
    pub created_unix: u64,
}

impl From<&Attachment> for AttachmentView {
    fn from(a: &Attachment) -> Self {
        Self {
            container_id: a.container_id.clone(),
            ifname: a.ifname.clone(),
            node: a.node.clone(),
            netns: a.netns.clone(),
            pod: PodView::of(a.pod.as_ref()),
            host_ifname: a.host_ifname.clone(),
            mac: a.mac.clone(),
            state: a.state.clone(),
            network: a.network.clone(),
            created_unix: a.created_unix,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct IpView {
    pub address: String,
    /// A dual-stack pod's IPv6 partner of `address`; `null` otherwise.
    pub address6: Option<String>,
    pub pool: String,
    pub tor: String,
    /// `free`, `bound`, `in-use` or `quarantined`.
    pub state: String,
    /// The pod this IP is kept for.
    pub binding: Option<PodView>,
    /// The live use of the IP.
    pub attachment: Option<AttachmentView>,
    /// Why no pod gets the IP (state `quarantined`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<QuarantineView>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct QuarantineView {
    /// The MAC that answered for the IP.
    pub mac: String,
    pub node: String,
    pub since_unix: u64,
}

impl From<&Ip> for IpView {
    fn from(ip: &Ip) -> Self {
        Self {
            address: ip.address.clone(),
            address6: (!ip.address6.is_empty()).then(|| ip.address6.clone()),
            pool: ip.pool.clone(),
            tor: ip.tor.clone(),
            state: ip.state.clone(),
            binding: PodView::of(ip.binding.as_ref()),
            attachment: ip.attachment.as_ref().map(AttachmentView::from),
            quarantine: ip.quarantine.as_ref().map(|q| QuarantineView {
                mac: q.mac.clone(),
                node: q.node.clone(),
                since_unix: q.since_unix,
            }),
        }
    }
}

impl IpView {
    /// The pod column: who holds the IP, by binding or else by attachment.
    fn pod(&self) -> Option<String> {
        self.binding
            .as_ref()
            .or_else(|| self.attachment.as_ref().and_then(|a| a.pod.as_ref()))
            .map(PodView::display)
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BindingView {
    pub pod: PodView,
    pub pool: String,
    pub address: String,
    /// A dual-stack pool's IPv6 partner of `address`; `null` otherwise.
    pub address6: Option<String>,
    pub tor: String,
    pub attached: bool,
}

impl From<&Binding> for BindingView {
    fn from(b: &Binding) -> Self {
        Self {
            pod: PodView::of(b.pod.as_ref()).unwrap_or(PodView {
                namespace: String::new(),
                name: String::new(),
                uid: String::new(),
            }),
            pool: b.pool.clone(),
            address: b.address.clone(),
            address6: (!b.address6.is_empty()).then(|| b.address6.clone()),
            tor: b.tor.clone(),
            attached: b.attached,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReleaseView {
    /// The IP after release.
    pub ip: Option<IpView>,
    pub was_bound: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ExportView {
    pub pool: String,
    pub ips: Vec<String>,
    /// A dual-stack pool: the IPv6 partner of each of `ips`, same order.
    pub ips6: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EvictView {
    /// The IP after the call.
    pub ip: Option<IpView>,
    /// The binding (and with --force, the attachment) is gone now.
    pub released: bool,
    /// The binding goes with the holder's DEL.
    pub pending: bool,
    /// Who holds the IP, if anyone.
    pub holder: Option<AttachmentView>,
    pub message: String,
}

impl From<&EvictIpReply> for EvictView {
    fn from(r: &EvictIpReply) -> Self {
        Self {
            ip: r.ip.as_ref().map(IpView::from),
            released: r.released,
            pending: r.pending,
            holder: r.holder.as_ref().map(AttachmentView::from),
            message: r.message.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub tor: String,
    pub mode: String,
    pub version: String,
    pub alive: bool,
    pub started_unix: u64,
    pub heartbeat_unix: u64,
}

impl From<&Node> for NodeView {
    fn from(n: &Node) -> Self {
        Self {
            name: n.name.clone(),
            tor: n.tor.clone(),
            mode: n.mode.clone(),
            version: n.version.clone(),
            alive: n.alive,
            started_unix: n.started_unix,
            heartbeat_unix: n.heartbeat_unix,
        }
    }
}

/// One line of `pool export --watch` in JSON.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ChangeView {
    /// `snapshot` (replace the whole set with `ips`), `add`, `remove` or
    /// `deleted`.
    pub kind: &'static str,
    pub pool: String,
    pub ips: Vec<String>,
    pub revision: u64,
}

/// A change kind this ipamctl does not know (a newer ipamd): it cannot be
/// applied, and guessing would corrupt a whitelist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownKind(pub i32);

impl std::fmt::Display for UnknownKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ipamd sent a pool change of unknown kind {}; this ipamctl is older than ipamd: \
             use the ipamctl of ipamd's release",
            self.0
        )
    }
}

impl std::error::Error for UnknownKind {}

fn policy_name(p: i32) -> String {
    match ReleasePolicy::try_from(p) {
        Ok(ReleasePolicy::Auto) => "auto".into(),
        Ok(ReleasePolicy::Sticky) => "sticky".into(),
        Ok(ReleasePolicy::Release) => "release".into(),
        // A newer ipamd; say so rather than guess.
        Err(_) => format!("unknown({p})"),
    }
}

// ---------------------------------------------------------------------------
// Rendering, one function per command. Each returns the whole text so that
// nothing reaches stdout unless all of it is ready.
// ---------------------------------------------------------------------------

pub fn tor_list(tors: &[Tor], format: Format) -> String {
    let mut views: Vec<TorView> = tors.iter().map(TorView::from).collect();
    views.sort_by(|a, b| a.name.cmp(&b.name));
    if format == Format::Json {
        return json(&views);
    }
    // A dual-stack segment's subnets and gateways share a cell, IPv4
    // first, as its ranges do: every row has the same columns.
    let mut t = Table::new(&[
        "NAME",
        "TOR",
        "SUBNET",
        "GATEWAY",
        "VLAN",
        "RANGES",
        "CAPACITY",
        "CARVED",
        "CAPACITY6",
    ]);
    for v in &views {
        t.row([
            v.name.clone(),
            v.segment_of.clone().unwrap_or_else(|| v.name.clone()),
            TorView::both(&v.subnet, &v.subnet6),
            TorView::both(&v.gateway, &v.gateway6),
            vlan(v.vlan),
            ranges(&v.ranges, ","),
            v.capacity.to_string(),
            v.carved.to_string(),
            if v.has_ipv6() {
                v.capacity6.to_string()
            } else {
                String::new()
            },
        ]);
    }
    t.render()
}

pub fn tor_show(tor: &Tor, format: Format) -> String {
    let v = TorView::from(tor);
    if format == Format::Json {
        return json(&v);
    }
    let mut rows = vec![
        ("Name", v.name.clone()),
        (
            "ToR",
            v.segment_of.clone().unwrap_or_else(|| v.name.clone()),
        ),
        ("Subnet", v.subnet.clone()),
        ("Gateway", v.gateway.clone()),
    ];
    if let (Some(subnet6), Some(gateway6)) = (&v.subnet6, &v.gateway6) {
        rows.extend([("Subnet6", subnet6.clone()), ("Gateway6", gateway6.clone())]);
    }
    rows.extend([
        ("VLAN", vlan(v.vlan)),
        ("Ranges", ranges(&v.ranges, ", ")),
        ("Capacity", v.capacity.to_string()),
    ]);
    if v.has_ipv6() {
        rows.push(("Capacity6", v.capacity6.to_string()));
    }
    rows.push(("Carved", v.carved.to_string()));
    fields(&rows)
}

/// `pool list`'s table columns.
pub const POOL_HEADERS: [&str; 8] = [
    "NAME",
    "NAMESPACE",
    "APP",
    "SIZE",
    "POLICY",
    "FAMILY",
    "TORS",
    "FREE",
];

pub fn pool_row(v: &PoolView) -> [String; 8] {
    [
        v.name.clone(),
        v.namespace.clone(),
        v.app.clone(),
        v.size.to_string(),
        v.policy.clone(),
        v.family.clone(),
        v.tors
            .iter()
            .map(|t| t.tor.as_str())
            .collect::<Vec<_>>()
            .join(","),
        v.totals.free.to_string(),
    ]
}

/// The whole list at once, as `listing` prints it streamed (its tests
/// compare the two).
#[cfg(test)]
pub fn pool_list(pools: &[Pool], format: Format) -> String {
    let mut views: Vec<PoolView> = pools.iter().map(PoolView::from).collect();
    views.sort_by(|a, b| a.name.cmp(&b.name));
    if format == Format::Json {
        return json(&views);
    }
    let mut t = Table::new(&POOL_HEADERS);
    for v in &views {
        t.row(pool_row(v));
    }
    t.render()
}

pub fn pool_show(pool: &Pool, format: Format) -> String {
    let v = PoolView::from(pool);
    if format == Format::Json {
        return json(&v);
    }
    let mut rows = vec![
        ("Name", v.name.clone()),
        ("Namespace", v.namespace.clone()),
        ("App", v.app.clone()),
        ("Size", v.size.to_string()),
        ("Policy", v.policy.clone()),
        ("Family", v.family.clone()),
    ];
    if !v.allow_namespaces.is_empty() {
        rows.push(("Allowed namespaces", v.allow_namespaces.join(", ")));
    }
    let mut out = fields(&rows);
    out.push('\n');
    let mut t = Table::new(&["TOR", "TOTAL", "BOUND", "IN-USE", "FREE"]);
    let counts = |name: &str, c: &CountsView| {
        [
            name.to_string(),
            c.total.to_string(),
            c.bound.to_string(),
            c.in_use.to_string(),
            c.free.to_string(),
        ]
    };
    for pt in &v.tors {
        t.row(counts(&pt.tor, &pt.counts));
    }
    t.row(counts("total", &v.totals));
    out.push_str(&t.render());
    out
}

/// A whitelist holds every address a pod of the pool may have: a
/// dual-stack pool's IPv6 partners too.
pub fn pool_export(reply: &ExportPoolReply, format: ExportFormat) -> String {
    match format {
        ExportFormat::Plain => reply
            .ips
            .iter()
            .chain(&reply.ips6)
            .map(|ip| format!("{ip}\n"))
            .collect(),
        // Pool names are DNS labels and IPs are dotted quads or IPv6
        // colons: nothing to quote.
        ExportFormat::Csv if reply.ips6.is_empty() => {
            let mut out = String::from("ip,pool\n");
            for ip in &reply.ips {
                out.push_str(&format!("{ip},{}\n", reply.pool));
            }
            out
        }
        // The partner in a column of its own, after the two every pool
        // has, so a reader of `ip,pool` reads a dual-stack pool alike.
        ExportFormat::Csv => {
            let mut out = String::from("ip,pool,ip6\n");
            for (i, ip) in reply.ips.iter().enumerate() {
                let ip6 = reply.ips6.get(i).map_or("", String::as_str);
                out.push_str(&format!("{ip},{},{ip6}\n", reply.pool));
            }
            out
        }
        ExportFormat::Json => json(&ExportView {
            pool: reply.pool.clone(),
            ips: reply.ips.clone(),
            ips6: reply.ips6.clone(),
        }),
    }
}

/// `ip list`'s table columns.
/// A dual-stack pod's two addresses share one cell, as a segment's subnets
/// do in `tor list`: every row keeps its columns.
fn both_addresses(address: &str, address6: Option<&str>) -> String {
    match address6 {
        Some(v6) => format!("{address},{v6}"),
        None => address.to_string(),
    }
}

pub const IP_HEADERS: [&str; 7] = ["IP", "POOL", "TOR", "STATE", "POD", "NODE", "CONTAINER"];

pub fn ip_row(v: &IpView) -> [String; 7] {
    let att = v.attachment.as_ref();
    [
        both_addresses(&v.address, v.address6.as_deref()),
        v.pool.clone(),
        v.tor.clone(),
        v.state.clone(),
        v.pod().unwrap_or_default(),
        att.map(|a| a.node.clone()).unwrap_or_default(),
        att.map(|a| short_id(&a.container_id)).unwrap_or_default(),
    ]
}

/// The whole list at once, as `listing` prints it streamed (its tests
/// compare the two).
#[cfg(test)]
pub fn ip_list(ips: &[Ip], format: Format) -> String {
    let mut views: Vec<IpView> = ips.iter().map(IpView::from).collect();
    views.sort_by_key(|a| address_key(&a.address));
    if format == Format::Json {
        return json(&views);
    }
    let mut t = Table::new(&IP_HEADERS);
    for v in &views {
        t.row(ip_row(v));
    }
    t.render()
}

pub fn ip_show(ip: &Ip, format: Format) -> String {
    let v = IpView::from(ip);
    if format == Format::Json {
        return json(&v);
    }
    fields(&ip_fields(&v))
}

pub fn ip_release(reply: &ReleaseIpReply, format: Format) -> String {
    let v = ReleaseView {
        ip: reply.ip.as_ref().map(IpView::from),
        was_bound: reply.was_bound,
    };
    if format == Format::Json {
        return json(&v);
    }
    let address = v.ip.as_ref().map(|ip| ip.address.as_str()).unwrap_or("");
    let mut out = if v.was_bound {
        format!("released {address}: its binding is dropped\n")
    } else {
        format!("released {address}: it had no binding\n")
    };
    if let Some(ip) = &v.ip {
        out.push_str(&fields(&ip_fields(ip)));
    }
    out
}

/// `binding list`'s table columns.
pub const BINDING_HEADERS: [&str; 5] = ["POD", "POOL", "IP", "TOR", "ATTACHED"];

pub fn binding_row(v: &BindingView) -> [String; 5] {
    [
        v.pod.display(),
        v.pool.clone(),
        both_addresses(&v.address, v.address6.as_deref()),
        v.tor.clone(),
        if v.attached { "yes" } else { "no" }.to_string(),
    ]
}

pub fn binding_list(bindings: &[Binding], format: Format) -> String {
    let mut views: Vec<BindingView> = bindings.iter().map(BindingView::from).collect();
    views.sort_by(|a, b| {
        (&a.pod.namespace, &a.pod.name, &a.pool).cmp(&(&b.pod.namespace, &b.pod.name, &b.pool))
    });
    if format == Format::Json {
        return json(&views);
    }
    let mut t = Table::new(&BINDING_HEADERS);
    for v in &views {
        t.row(binding_row(v));
    }
    t.render()
}

/// `ip evict`: ipamd's message (what happened, who holds the IP), then the
/// IP as `ip show` prints it.
pub fn ip_evict(reply: &EvictIpReply, format: Format) -> String {
    let v = EvictView::from(reply);
    if format == Format::Json {
        return json(&v);
    }
    let mut out = String::new();
    if !v.message.is_empty() {
        out.push_str(v.message.trim_end());
        out.push('\n');
    }
    if let Some(ip) = &v.ip {
        out.push_str(&fields(&ip_fields(ip)));
    }
    out
}

/// `node list`; `now_unix` turns the times into ages in the table (JSON
/// keeps unix seconds).
pub fn node_list(nodes: &[Node], now_unix: u64, format: Format) -> String {
    let mut views: Vec<NodeView> = nodes.iter().map(NodeView::from).collect();
    views.sort_by(|a, b| a.name.cmp(&b.name));
    if format == Format::Json {
        return json(&views);
    }
    let mut t = Table::new(&[
        "NAME",
        "TOR",
        "MODE",
        "VERSION",
        "ALIVE",
        "STARTED",
        "HEARTBEAT",
    ]);
    for v in &views {
        t.row([
            v.name.clone(),
            v.tor.clone(),
            v.mode.clone(),
            v.version.clone(),
            if v.alive { "yes" } else { "no" }.to_string(),
            age(now_unix, v.started_unix),
            age(now_unix, v.heartbeat_unix),
        ]);
    }
    t.render()
}

/// One message of `pool export --watch`, as the lines to print.
pub fn pool_change(change: &PoolChange, format: WatchFormat) -> Result<String, UnknownKind> {
    let kind = Kind::try_from(change.kind).map_err(|_| UnknownKind(change.kind))?;
    let mut ips = change.ips.clone();
    ips.sort_by_key(|a| address_key(a));
    if format == WatchFormat::Json {
        let v = ChangeView {
            kind: match kind {
                Kind::Snapshot => "snapshot",
                Kind::Add => "add",
                Kind::Remove => "remove",
                Kind::Deleted => "deleted",
            },
            pool: change.pool.clone(),
            ips,
            revision: change.revision,
        };
        let mut s = serde_json::to_string(&v).expect("views serialize");
        s.push('\n');
        return Ok(s);
    }
    let lines = |sign: char| -> String { ips.iter().map(|ip| format!("{sign} {ip}\n")).collect() };
    Ok(match kind {
        Kind::Snapshot => format!("= {}\n{}", ips.len(), lines('+')),
        Kind::Add => lines('+'),
        Kind::Remove => lines('-'),
        Kind::Deleted => "! deleted\n".to_string(),
    })
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FindingView {
    pub key: String,
    pub problem: String,
    pub fix: String,
}

/// `audit -o json`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AuditView {
    /// The store's schema version (1 for a store without the record).
    pub schema_version: u32,
    pub schema_recorded: bool,
    /// The newest schema version the answering ipamd knows.
    pub schema_known: u32,
    pub records: u64,
    pub revision: u64,
    /// No findings.
    pub clean: bool,
    /// Sorted by key.
    pub findings: Vec<FindingView>,
}

/// `audit`: the schema version, a summary line, then each finding as its
/// key and problem on one line and the fix indented under it.
pub fn audit(reply: &AuditReply, format: Format) -> String {
    let mut findings: Vec<FindingView> = reply
        .findings
        .iter()
        .map(|f| FindingView {
            key: f.key.clone(),
            problem: f.problem.clone(),
            fix: f.fix.clone(),
        })
        .collect();
    findings.sort_by(|a, b| a.key.cmp(&b.key));
    let v = AuditView {
        schema_version: reply.schema_version,
        schema_recorded: reply.schema_recorded,
        schema_known: reply.schema_known,
        records: reply.records,
        revision: reply.revision,
        clean: findings.is_empty(),
        findings,
    };
    if format == Format::Json {
        return json(&v);
    }
    let mut out = format!("schema version {}", v.schema_version);
    if !v.schema_recorded {
        out.push_str(" (no record yet: ipamd writes it when it opens the store)");
    } else if v.schema_version > v.schema_known {
        out.push_str(&format!(" (newer than ipamd knows: {})", v.schema_known));
    }
    out.push('\n');
    let n = v.findings.len();
    if n == 0 {
        out.push_str(&format!(
            "clean: {} records checked at store revision {}\n",
            v.records, v.revision
        ));
        return out;
    }
    out.push_str(&format!(
        "{n} finding{} in {} records at store revision {}:\n",
        if n == 1 { "" } else { "s" },
        v.records,
        v.revision
    ));
    for f in &v.findings {
        out.push_str(&format!("{}: {}\n  fix: {}\n", f.key, f.problem, f.fix));
    }
    out
}

/// What `tor delete` and `pool delete` print.
pub fn deleted(kind: &str, name: &str, format: Format) -> String {
    if format == Format::Json {
        let mut m = serde_json::Map::new();
        m.insert(kind.to_string(), name.into());
        m.insert("deleted".to_string(), true.into());
        return json(&m);
    }
    format!("deleted {kind} {name}\n")
}

fn ip_fields(v: &IpView) -> Vec<(&'static str, String)> {
    let mut rows = vec![("Address", v.address.clone())];
    if let Some(v6) = &v.address6 {
        rows.push(("Address6", v6.clone()));
    }
    rows.extend([
        ("Pool", v.pool.clone()),
        ("ToR", v.tor.clone()),
        ("State", v.state.clone()),
        (
            "Binding",
            v.binding.as_ref().map(PodView::display).unwrap_or_default(),
        ),
    ]);
    match &v.attachment {
        None => rows.push(("Attachment", String::new())),
        Some(a) => rows.extend([
            ("Attachment", String::new()),
            ("  Container", a.container_id.clone()),
            ("  Ifname", a.ifname.clone()),
            ("  Node", a.node.clone()),
            ("  Netns", a.netns.clone()),
            (
                "  Pod",
                a.pod.as_ref().map(PodView::display).unwrap_or_default(),
            ),
            ("  Host ifname", a.host_ifname.clone()),
            ("  MAC", a.mac.clone()),
            ("  State", a.state.clone()),
            ("  Network", a.network.clone()),
            ("  Created", utc(a.created_unix)),
        ]),
    }
    if let Some(q) = &v.quarantine {
        rows.extend([
            ("Quarantine", String::new()),
            ("  Other MAC", q.mac.clone()),
            ("  Heard by", q.node.clone()),
            ("  Since", utc(q.since_unix)),
            ("  Lift with", format!("ipamctl ip release {}", v.address)),
        ]);
    }
    rows
}

pub fn json<T: Serialize + ?Sized>(value: &T) -> String {
    let mut s = serde_json::to_string_pretty(value).expect("views serialize");
    s.push('\n');
    s
}

fn vlan(v: Option<u32>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn ranges(ranges: &[RangeView], sep: &str) -> String {
    ranges
        .iter()
        .map(|r| {
            if r.first == r.last {
                r.first.clone()
            } else {
                format!("{}-{}", r.first, r.last)
            }
        })
        .collect::<Vec<_>>()
        .join(sep)
}

/// Container ids are 64 hex digits; 12 tell them apart, as `docker ps` shows.
fn short_id(id: &str) -> String {
    id.chars().take(12).collect()
}

/// Sort key that puts 10.0.0.9 before 10.0.0.10 and IPv4 before IPv6, as
/// ipamd sorts; anything unparsable last.
fn address_key(a: &str) -> (u8, u128, String) {
    match a.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => (0, u128::from(u32::from(ip)), String::new()),
        Ok(IpAddr::V6(ip)) => (1, u128::from(ip), String::new()),
        Err(_) => (2, 0, a.to_string()),
    }
}

/// How long ago `then` was, kubectl style: `12s ago`, `5m ago`, `3h ago`,
/// `9d ago`; `in 4s` when `then` is ahead of this clock (a node whose clock
/// is fast); empty for 0 (never).
fn age(now: u64, then: u64) -> String {
    if then == 0 {
        return String::new();
    }
    let short = |secs: u64| match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    };
    if then > now {
        format!("in {}", short(then - now))
    } else {
        format!("{} ago", short(now - then))
    }
}

/// `2024-05-01T12:00:00Z`; empty for "never".
fn utc(secs: u64) -> String {
    if secs == 0 {
        return String::new();
    }
    moor_proto::rfc3339_utc(secs)
}

/// `Key:  value` lines, values aligned; an empty value shows as `-`, except
/// on a section header (a key followed by indented keys).
fn fields(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    let mut out = String::new();
    for (i, (k, v)) in rows.iter().enumerate() {
        let key = format!("{k}:");
        let header = v.is_empty()
            && rows
                .get(i + 1)
                .is_some_and(|(next, _)| next.starts_with(' '));
        if header {
            out.push_str(&key);
        } else {
            let v = if v.is_empty() { "-" } else { v };
            out.push_str(&format!("{key:width$}  {v}"));
        }
        out.push('\n');
    }
    out
}

/// Columns left-aligned to their widest cell, two spaces apart; an empty
/// cell shows as `-` so that `awk` sees the same number of fields in every
/// row.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Self {
            rows: vec![headers.iter().map(|h| h.to_string()).collect()],
        }
    }

    pub fn row<const N: usize>(&mut self, cells: [String; N]) {
        self.row_vec(cells.to_vec());
    }

    pub fn row_vec(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.rows[0].len(), "row width");
        self.rows.push(
            cells
                .into_iter()
                .map(|c| if c.is_empty() { "-".to_string() } else { c })
                .collect(),
        );
    }

    /// Each column's width: its widest cell.
    pub fn widths(&self) -> Vec<usize> {
        (0..self.rows[0].len())
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| r[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }

    pub fn render(&self) -> String {
        self.render_rows(0, &self.widths())
    }

    /// The rows from `from` on (0: the header), aligned to `widths`; a cell
    /// wider than its column pushes the rest of its line out, still two
    /// spaces apart.
    pub fn render_rows(&self, from: usize, widths: &[usize]) -> String {
        let cols = self.rows[0].len();
        let mut out = String::new();
        for r in &self.rows[from..] {
            let mut line = String::new();
            for (i, cell) in r.iter().enumerate() {
                line.push_str(cell);
                if i + 1 < cols {
                    let pad = widths[i].saturating_sub(cell.chars().count());
                    line.push_str(&" ".repeat(pad + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moor_proto::v1::{IpRange, PoolTor};
    use serde_json::json;

    fn tor(name: &str, vlan: u32) -> Tor {
        Tor {
            name: name.into(),
            subnet: "10.1.0.0/24".into(),
            gateway: "10.1.0.1".into(),
            vlan,
            ranges: vec![
                IpRange {
                    first: "10.1.0.10".into(),
                    last: "10.1.0.99".into(),
                },
                IpRange {
                    first: "10.1.0.200".into(),
                    last: "10.1.0.200".into(),
                },
            ],
            capacity: 91,
            carved: 30,
            segment_of: String::new(),
            ..Default::default()
        }
    }

    fn pool() -> Pool {
        Pool {
            name: "mysql".into(),
            namespace: "db".into(),
            app: "mysql".into(),
            size: 30,
            policy: ReleasePolicy::Sticky.into(),
            allow_namespaces: vec![],
            tors: vec![
                PoolTor {
                    tor: "rack-1".into(),
                    total: 15,
                    bound: 3,
                    in_use: 10,
                    free: 2,
                },
                PoolTor {
                    tor: "rack-2".into(),
                    total: 15,
                    bound: 0,
                    in_use: 1,
                    free: 14,
                },
            ],
            ..Default::default()
        }
    }

    fn pod(ns: &str, name: &str) -> Option<PodRef> {
        Some(PodRef {
            namespace: ns.into(),
            name: name.into(),
            uid: "u1".into(),
        })
    }

    fn in_use_ip() -> Ip {
        Ip {
            address: "10.1.0.17".into(),
            pool: "mysql".into(),
            tor: "rack-1".into(),
            state: "in-use".into(),
            binding: pod("db", "mysql-0"),
            attachment: Some(Attachment {
                container_id: "0123456789abcdef0123".into(),
                ifname: "eth0".into(),
                node: "node-a".into(),
                netns: "/var/run/netns/x".into(),
                pod: pod("db", "mysql-0"),
                host_ifname: "mr0123456789ab".into(),
                mac: "0a:58:0a:01:00:11".into(),
                state: "ready".into(),
                network: "moor".into(),
                created_unix: 1_714_564_800,
            }),
            quarantine: None,
            ..Default::default()
        }
    }

    fn free_ip(addr: &str) -> Ip {
        Ip {
            address: addr.into(),
            pool: "mysql".into(),
            tor: "rack-2".into(),
            state: "free".into(),
            binding: Some(PodRef::default()),
            attachment: None,
            quarantine: None,
            ..Default::default()
        }
    }

    #[test]
    fn quarantined_ip_shows_the_other_mac_and_the_way_out() {
        let ip = Ip {
            state: "quarantined".into(),
            quarantine: Some(moor_proto::v1::Quarantine {
                mac: "02:00:00:00:00:99".into(),
                node: "node-a".into(),
                since_unix: 1_714_564_800,
            }),
            ..free_ip("10.1.0.40")
        };
        let out = ip_show(&ip, Format::Table);
        assert!(out.contains("02:00:00:00:00:99"), "{out}");
        assert!(out.contains("ipamctl ip release 10.1.0.40"), "{out}");
        let v: serde_json::Value = serde_json::from_str(&ip_show(&ip, Format::Json)).unwrap();
        assert_eq!(v["quarantine"]["mac"], "02:00:00:00:00:99");
        let free: serde_json::Value =
            serde_json::from_str(&ip_show(&free_ip("10.1.0.41"), Format::Json)).unwrap();
        assert!(free.get("quarantine").is_none(), "{free}");
    }

    #[test]
    fn table_aligns_columns_and_fills_empty_cells() {
        let mut t = Table::new(&["A", "LONGER", "C"]);
        t.row(["xxxx".into(), String::new(), "z".into()]);
        t.row(["y".into(), "b".into(), String::new()]);
        assert_eq!(
            t.render(),
            "A     LONGER  C\n\
             xxxx  -       z\n\
             y     b       -\n"
        );
    }

    #[test]
    fn tor_list_table_shows_untagged_vlan_as_dash_and_segments_under_their_tor() {
        let db = Tor {
            segment_of: "rack-1".into(),
            vlan: 200,
            ..tor("rack-1-db", 0)
        };
        let out = tor_list(&[tor("rack-2", 0), tor("rack-1", 100), db], Format::Table);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "NAME       TOR     SUBNET       GATEWAY   VLAN  RANGES                          CAPACITY  CARVED  CAPACITY6"
        );
        assert_eq!(
            lines[1],
            "rack-1     rack-1  10.1.0.0/24  10.1.0.1  100   10.1.0.10-10.1.0.99,10.1.0.200  91        30      -"
        );
        assert!(lines[2].starts_with("rack-1-db  rack-1  10.1.0.0/24  10.1.0.1  200   "));
        assert!(lines[3].starts_with("rack-2     rack-2  10.1.0.0/24  10.1.0.1  -     "));
    }

    #[test]
    fn tor_json_is_an_array_of_snake_case_objects() {
        let out = tor_list(&[tor("rack-1", 0)], Format::Json);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            json!([{
                "name": "rack-1",
                "subnet": "10.1.0.0/24",
                "gateway": "10.1.0.1",
                "subnet6": null,
                "gateway6": null,
                "vlan": null,
                "ranges": [
                    {"first": "10.1.0.10", "last": "10.1.0.99"},
                    {"first": "10.1.0.200", "last": "10.1.0.200"}
                ],
                "capacity": 91,
                "capacity6": 0,
                "carved": 30,
                "segment_of": null
            }])
        );
        let one: serde_json::Value =
            serde_json::from_str(&tor_show(&tor("rack-1", 7), Format::Json)).unwrap();
        assert_eq!(one["vlan"], 7);
    }

    #[test]
    fn tor_show_is_a_field_block() {
        let out = tor_show(&tor("rack-1", 0), Format::Table);
        assert!(out.contains("Name:      rack-1\n"), "{out}");
        assert!(out.contains("VLAN:      -\n"), "{out}");
        assert!(
            out.contains("Ranges:    10.1.0.10-10.1.0.99, 10.1.0.200\n"),
            "{out}"
        );
    }

    #[test]
    fn pool_show_has_per_tor_rows_and_a_total() {
        let out = pool_show(&pool(), Format::Table);
        assert!(out.contains("Policy:     sticky\n"), "{out}");
        let table: Vec<&str> = out.split("\n\n").nth(1).unwrap().lines().collect();
        assert_eq!(table[0], "TOR     TOTAL  BOUND  IN-USE  FREE");
        assert_eq!(table[1], "rack-1  15     3      10      2");
        assert_eq!(table[2], "rack-2  15     0      1       14");
        assert_eq!(table[3], "total   30     3      11      16");
    }

    #[test]
    fn pool_json_has_counts_per_tor_and_totals() {
        let v: serde_json::Value =
            serde_json::from_str(&pool_list(&[pool()], Format::Json)).unwrap();
        assert_eq!(v[0]["policy"], "sticky");
        assert_eq!(
            v[0]["tors"][0],
            json!({"tor": "rack-1", "total": 15, "bound": 3, "in_use": 10, "free": 2})
        );
        assert_eq!(
            v[0]["totals"],
            json!({"total": 30, "bound": 3, "in_use": 11, "free": 16})
        );
    }

    #[test]
    fn pool_list_table_sums_free_and_names_tors() {
        let out = pool_list(&[pool()], Format::Table);
        assert_eq!(
            out,
            "NAME   NAMESPACE  APP    SIZE  POLICY  FAMILY  TORS           FREE\n\
             mysql  db         mysql  30    sticky  ipv4    rack-1,rack-2  16\n"
        );
    }

    #[test]
    fn unknown_policy_is_shown_not_guessed() {
        let mut p = pool();
        p.policy = 9;
        assert_eq!(PoolView::from(&p).policy, "unknown(9)");
    }

    #[test]
    fn export_formats() {
        let reply = ExportPoolReply {
            pool: "mysql".into(),
            ips: vec!["10.1.0.10".into(), "10.1.0.11".into()],
            ..Default::default()
        };
        assert_eq!(
            pool_export(&reply, ExportFormat::Plain),
            "10.1.0.10\n10.1.0.11\n"
        );
        assert_eq!(
            pool_export(&reply, ExportFormat::Csv),
            "ip,pool\n10.1.0.10,mysql\n10.1.0.11,mysql\n"
        );
        let v: serde_json::Value =
            serde_json::from_str(&pool_export(&reply, ExportFormat::Json)).unwrap();
        assert_eq!(
            v,
            json!({"pool": "mysql", "ips": ["10.1.0.10", "10.1.0.11"], "ips6": []})
        );
        let empty = ExportPoolReply {
            pool: "x".into(),
            ips: vec![],
            ..Default::default()
        };
        assert_eq!(pool_export(&empty, ExportFormat::Plain), "");
        assert_eq!(pool_export(&empty, ExportFormat::Csv), "ip,pool\n");
    }

    #[test]
    fn ip_list_sorts_by_address_and_shortens_container_ids() {
        let ips = [free_ip("10.1.0.100"), in_use_ip(), free_ip("10.1.0.9")];
        let out = ip_list(&ips, Format::Table);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                "IP          POOL   TOR     STATE   POD         NODE    CONTAINER",
                "10.1.0.9    mysql  rack-2  free    -           -       -",
                "10.1.0.17   mysql  rack-1  in-use  db/mysql-0  node-a  0123456789ab",
                "10.1.0.100  mysql  rack-2  free    -           -       -",
            ]
        );
    }

    #[test]
    fn ip_json_uses_null_for_absent_binding_and_attachment() {
        let v: serde_json::Value =
            serde_json::from_str(&ip_list(&[free_ip("10.1.0.9"), in_use_ip()], Format::Json))
                .unwrap();
        assert_eq!(
            v[0],
            json!({
                "address": "10.1.0.9", "address6": null, "pool": "mysql", "tor": "rack-2",
                "state": "free", "binding": null, "attachment": null
            })
        );
        assert_eq!(
            v[1]["binding"],
            json!({"namespace": "db", "name": "mysql-0", "uid": "u1"})
        );
        assert_eq!(v[1]["attachment"]["container_id"], "0123456789abcdef0123");
        assert_eq!(v[1]["attachment"]["created_unix"], 1_714_564_800u64);
    }

    #[test]
    fn ip_show_nests_the_attachment() {
        let out = ip_show(&in_use_ip(), Format::Table);
        assert!(out.contains("Binding:        db/mysql-0\n"), "{out}");
        assert!(out.contains("\nAttachment:\n  Container:"), "{out}");
        assert!(
            out.contains("  Created:      2024-05-01T12:00:00Z\n"),
            "{out}"
        );
        let free = ip_show(&free_ip("10.1.0.9"), Format::Table);
        assert!(free.contains("Attachment:  -\n"), "{free}");
        assert!(free.contains("Binding:     -\n"), "{free}");
    }

    #[test]
    fn release_reports_whether_a_binding_was_dropped() {
        let reply = ReleaseIpReply {
            ip: Some(free_ip("10.1.0.9")),
            was_bound: true,
        };
        assert!(ip_release(&reply, Format::Table)
            .starts_with("released 10.1.0.9: its binding is dropped\n"));
        let v: serde_json::Value = serde_json::from_str(&ip_release(&reply, Format::Json)).unwrap();
        assert_eq!(v["was_bound"], true);
        assert_eq!(v["ip"]["state"], "free");
    }

    #[test]
    fn binding_list_table_and_json() {
        let b = |ns: &str, name: &str, attached| Binding {
            pod: pod(ns, name),
            pool: "mysql".into(),
            address: "10.1.0.17".into(),
            tor: "rack-1".into(),
            attached,
            ..Default::default()
        };
        let dual = Binding {
            address6: "fd00:1::11".into(),
            ..b("db", "mysql-2", false)
        };
        let list = [b("db", "mysql-1", false), b("db", "mysql-0", true), dual];
        assert_eq!(
            binding_list(&list, Format::Table),
            "POD         POOL   IP                    TOR     ATTACHED\n\
             db/mysql-0  mysql  10.1.0.17             rack-1  yes\n\
             db/mysql-1  mysql  10.1.0.17             rack-1  no\n\
             db/mysql-2  mysql  10.1.0.17,fd00:1::11  rack-1  no\n"
        );
        let v: serde_json::Value =
            serde_json::from_str(&binding_list(&list, Format::Json)).unwrap();
        assert_eq!(
            v[0],
            json!({
                "pod": {"namespace": "db", "name": "mysql-0", "uid": "u1"},
                "pool": "mysql", "address": "10.1.0.17", "address6": null, "tor": "rack-1",
                "attached": true
            })
        );
        assert_eq!(v[2]["address6"], "fd00:1::11");
    }

    #[test]
    fn empty_lists_are_a_header_or_an_empty_array() {
        assert_eq!(binding_list(&[], Format::Json), "[]\n");
        assert_eq!(
            binding_list(&[], Format::Table),
            "POD  POOL  IP  TOR  ATTACHED\n"
        );
    }

    #[test]
    fn deleted_message() {
        assert_eq!(
            deleted("tor", "rack-1", Format::Table),
            "deleted tor rack-1\n"
        );
        let v: serde_json::Value =
            serde_json::from_str(&deleted("pool", "web", Format::Json)).unwrap();
        assert_eq!(v, json!({"pool": "web", "deleted": true}));
    }

    fn evict_reply(pending: bool) -> EvictIpReply {
        let ip = in_use_ip();
        EvictIpReply {
            holder: ip.attachment.clone(),
            ip: Some(ip),
            released: !pending,
            pending,
            message: "10.1.0.17 is held by pod db/mysql-0 (container 0123 on node node-a); \
                      its binding goes when that pod is deleted"
                .into(),
        }
    }

    #[test]
    fn evict_prints_the_message_then_the_ip() {
        let out = ip_evict(&evict_reply(true), Format::Table);
        let (first, rest) = out.split_once('\n').unwrap();
        assert!(
            first.starts_with("10.1.0.17 is held by pod db/mysql-0"),
            "{out}"
        );
        assert!(first.contains("node node-a"), "{out}");
        assert_eq!(rest, ip_show(&in_use_ip(), Format::Table), "{out}");

        // A freed IP: message and the free IP; no IP at all: just the message.
        let freed = EvictIpReply {
            ip: Some(free_ip("10.1.0.9")),
            released: true,
            message: "10.1.0.9 was kept for a pod that is not running; it is free now".into(),
            ..Default::default()
        };
        let out = ip_evict(&freed, Format::Table);
        assert!(
            out.starts_with(
                "10.1.0.9 was kept for a pod that is not running; it is free now\nAddress:"
            ),
            "{out}"
        );
        assert!(out.contains("State:       free\n"), "{out}");
        let bare = EvictIpReply {
            message: "done".into(),
            ..Default::default()
        };
        assert_eq!(ip_evict(&bare, Format::Table), "done\n");
    }

    #[test]
    fn evict_json_is_the_reply() {
        // (reply, released, pending, holder is null)
        let cases = [
            (evict_reply(true), false, true, false),
            (evict_reply(false), true, false, false),
            (
                EvictIpReply {
                    ip: Some(free_ip("10.1.0.9")),
                    released: true,
                    message: "free now".into(),
                    ..Default::default()
                },
                true,
                false,
                true,
            ),
        ];
        for (reply, released, pending, no_holder) in cases {
            let v: serde_json::Value =
                serde_json::from_str(&ip_evict(&reply, Format::Json)).unwrap();
            let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(
                keys,
                ["holder", "ip", "message", "pending", "released"],
                "{v}"
            );
            assert_eq!(v["released"], released, "{v}");
            assert_eq!(v["pending"], pending, "{v}");
            assert_eq!(v["holder"].is_null(), no_holder, "{v}");
            assert_eq!(v["message"], reply.message.as_str(), "{v}");
        }
        let v: serde_json::Value =
            serde_json::from_str(&ip_evict(&evict_reply(true), Format::Json)).unwrap();
        assert_eq!(v["holder"]["node"], "node-a");
        assert_eq!(v["holder"]["pod"]["name"], "mysql-0");
        assert_eq!(v["ip"]["address"], "10.1.0.17");
    }

    fn node(name: &str, alive: bool, started: u64, heartbeat: u64) -> Node {
        Node {
            name: name.into(),
            tor: "rack-1".into(),
            mode: "physical".into(),
            version: "0.1.0".into(),
            alive,
            started_unix: started,
            heartbeat_unix: heartbeat,
        }
    }

    #[test]
    fn node_list_shows_ages_and_sorts_by_name() {
        const NOW: u64 = 1_714_564_800;
        let nodes = [
            node("node-b", false, NOW - 3 * 86_400, NOW - 7200),
            node("node-a", true, NOW - 300, NOW - 12),
            node("node-c", true, 0, NOW + 4),
        ];
        assert_eq!(
            node_list(&nodes, NOW, Format::Table),
            "NAME    TOR     MODE      VERSION  ALIVE  STARTED  HEARTBEAT\n\
             node-a  rack-1  physical  0.1.0    yes    5m ago   12s ago\n\
             node-b  rack-1  physical  0.1.0    no     3d ago   2h ago\n\
             node-c  rack-1  physical  0.1.0    yes    -        in 4s\n"
        );
        let v: serde_json::Value =
            serde_json::from_str(&node_list(&nodes, NOW, Format::Json)).unwrap();
        assert_eq!(
            v[0],
            json!({
                "name": "node-a", "tor": "rack-1", "mode": "physical", "version": "0.1.0",
                "alive": true, "started_unix": NOW - 300, "heartbeat_unix": NOW - 12
            })
        );
        assert_eq!(v[1]["alive"], false);
        assert_eq!(node_list(&[], NOW, Format::Json), "[]\n");
        assert_eq!(
            node_list(&[], NOW, Format::Table),
            "NAME  TOR  MODE  VERSION  ALIVE  STARTED  HEARTBEAT\n"
        );
    }

    #[test]
    fn ages() {
        // (now - then, shown)
        for (ago, want) in [
            (0, "0s ago"),
            (59, "59s ago"),
            (119, "119s ago"),
            (120, "2m ago"),
            (7199, "119m ago"),
            (7200, "2h ago"),
            (2 * 86_400 - 1, "47h ago"),
            (2 * 86_400, "2d ago"),
        ] {
            assert_eq!(age(1_000_000, 1_000_000 - ago), want, "{ago}");
        }
        assert_eq!(age(100, 0), "", "0 = never");
        assert_eq!(age(100, 130), "in 30s", "a clock ahead of ours");
    }

    fn change(kind: Kind, ips: &[&str]) -> PoolChange {
        PoolChange {
            kind: kind.into(),
            pool: "web".into(),
            ips: ips.iter().map(|s| s.to_string()).collect(),
            revision: 42,
        }
    }

    #[test]
    fn watch_lines() {
        // (change, plain, json)
        let cases = [
            (
                change(Kind::Snapshot, &["10.1.0.10", "10.1.0.9"]),
                "= 2\n+ 10.1.0.9\n+ 10.1.0.10\n",
                r#"{"kind":"snapshot","pool":"web","ips":["10.1.0.9","10.1.0.10"],"revision":42}"#,
            ),
            (
                change(Kind::Snapshot, &[]),
                "= 0\n",
                r#"{"kind":"snapshot","pool":"web","ips":[],"revision":42}"#,
            ),
            (
                change(Kind::Add, &["10.1.0.12", "10.1.0.11"]),
                "+ 10.1.0.11\n+ 10.1.0.12\n",
                r#"{"kind":"add","pool":"web","ips":["10.1.0.11","10.1.0.12"],"revision":42}"#,
            ),
            (
                change(Kind::Remove, &["10.1.0.10"]),
                "- 10.1.0.10\n",
                r#"{"kind":"remove","pool":"web","ips":["10.1.0.10"],"revision":42}"#,
            ),
            (
                change(Kind::Deleted, &[]),
                "! deleted\n",
                r#"{"kind":"deleted","pool":"web","ips":[],"revision":42}"#,
            ),
        ];
        for (c, plain, json_line) in cases {
            assert_eq!(pool_change(&c, WatchFormat::Plain).unwrap(), plain, "{c:?}");
            assert_eq!(
                pool_change(&c, WatchFormat::Json).unwrap(),
                format!("{json_line}\n"),
                "{c:?}"
            );
        }
        let mut odd = change(Kind::Add, &["10.1.0.1"]);
        odd.kind = 7;
        let e = pool_change(&odd, WatchFormat::Plain).unwrap_err();
        assert_eq!(e, UnknownKind(7));
        assert!(e.to_string().contains("unknown kind 7"), "{e}");
    }

    #[test]
    fn audit_plain_and_json() {
        use moor_proto::v1::AuditFinding;
        let mut reply = AuditReply {
            schema_version: 1,
            schema_recorded: true,
            schema_known: 1,
            records: 12,
            revision: 40,
            findings: vec![],
        };
        assert_eq!(
            audit(&reply, Format::Table),
            "schema version 1\nclean: 12 records checked at store revision 40\n"
        );
        reply.findings = vec![
            AuditFinding {
                key: "leases/web/10.1.0.17".into(),
                problem: "is kept for pod default/web-0, which has no binding".into(),
                fix: "ipamctl ip release 10.1.0.17".into(),
            },
            AuditFinding {
                key: "free/web/r1".into(),
                problem: "says 4 free of 4".into(),
                fix: "report a bug".into(),
            },
        ];
        assert_eq!(
            audit(&reply, Format::Table),
            "schema version 1\n2 findings in 12 records at store revision 40:\n\
             free/web/r1: says 4 free of 4\n  fix: report a bug\n\
             leases/web/10.1.0.17: is kept for pod default/web-0, which has no binding\n  \
             fix: ipamctl ip release 10.1.0.17\n"
        );
        let v: serde_json::Value = serde_json::from_str(&audit(&reply, Format::Json)).unwrap();
        assert_eq!(v["clean"], json!(false));
        assert_eq!(v["schema_version"], json!(1));
        assert_eq!(v["findings"][0]["key"], json!("free/web/r1"));
        assert_eq!(
            v["findings"][1]["fix"],
            json!("ipamctl ip release 10.1.0.17")
        );
        reply.schema_recorded = false;
        reply.findings.clear();
        assert!(audit(&reply, Format::Table).starts_with("schema version 1 (no record yet"));
    }

    /// A dual-stack segment as ipamd answers it: IPv4 in `subnet`, IPv6 in
    /// `subnet6`, ranges of both.
    fn dual_tor() -> Tor {
        Tor {
            subnet6: "fd00:1::/64".into(),
            gateway6: "fd00:1::1".into(),
            capacity6: u32::MAX,
            ranges: vec![
                IpRange {
                    first: "10.1.0.10".into(),
                    last: "10.1.0.99".into(),
                },
                IpRange {
                    first: "fd00:1::10".into(),
                    last: "fd00:1::ffff".into(),
                },
            ],
            ..tor("rack-6", 0)
        }
    }

    #[test]
    fn dual_stack_tor_shows_both_subnets_and_gateways() {
        let v6_only = Tor {
            subnet: "fd00:2::/64".into(),
            gateway: "fd00:2::1".into(),
            ranges: vec![],
            capacity: u32::MAX,
            capacity6: u32::MAX,
            ..tor("rack-7", 0)
        };
        let out = tor_list(
            &[dual_tor(), v6_only.clone(), tor("rack-1", 0)],
            Format::Table,
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                "NAME    TOR     SUBNET                   GATEWAY             VLAN  RANGES                                       CAPACITY    CARVED  CAPACITY6",
                "rack-1  rack-1  10.1.0.0/24              10.1.0.1            -     10.1.0.10-10.1.0.99,10.1.0.200               91          30      -",
                "rack-6  rack-6  10.1.0.0/24,fd00:1::/64  10.1.0.1,fd00:1::1  -     10.1.0.10-10.1.0.99,fd00:1::10-fd00:1::ffff  91          30      4294967295",
                "rack-7  rack-7  fd00:2::/64              fd00:2::1           -     -                                            4294967295  30      4294967295",
            ]
        );
        let v: serde_json::Value =
            serde_json::from_str(&tor_show(&dual_tor(), Format::Json)).unwrap();
        assert_eq!(
            (&v["subnet"], &v["gateway"], &v["subnet6"], &v["gateway6"]),
            (
                &json!("10.1.0.0/24"),
                &json!("10.1.0.1"),
                &json!("fd00:1::/64"),
                &json!("fd00:1::1")
            )
        );
        assert_eq!(v["capacity6"], u32::MAX);
        assert_eq!(
            v["ranges"][1],
            json!({"first": "fd00:1::10", "last": "fd00:1::ffff"})
        );
        let show = tor_show(&dual_tor(), Format::Table);
        assert_eq!(
            show,
            "Name:       rack-6\n\
             ToR:        rack-6\n\
             Subnet:     10.1.0.0/24\n\
             Gateway:    10.1.0.1\n\
             Subnet6:    fd00:1::/64\n\
             Gateway6:   fd00:1::1\n\
             VLAN:       -\n\
             Ranges:     10.1.0.10-10.1.0.99, fd00:1::10-fd00:1::ffff\n\
             Capacity:   91\n\
             Capacity6:  4294967295\n\
             Carved:     30\n"
        );
        let only = tor_show(&v6_only, Format::Table);
        assert!(only.contains("Subnet:     fd00:2::/64\n"), "{only}");
        assert!(!only.contains("Subnet6"), "{only}");
        assert!(only.contains("Capacity6:  4294967295\n"), "{only}");
        assert!(!tor_show(&tor("rack-1", 0), Format::Table).contains("6:"));
    }

    #[test]
    fn pools_show_their_family() {
        let dual = Pool {
            family: "dual".into(),
            ..pool()
        };
        let out = pool_show(&dual, Format::Table);
        assert!(
            out.contains("Policy:     sticky\nFamily:     dual\n"),
            "{out}"
        );
        let v: serde_json::Value = serde_json::from_str(&pool_show(&dual, Format::Json)).unwrap();
        assert_eq!(v["family"], "dual");
        let list = pool_list(&[dual], Format::Table);
        assert!(
            list.lines()
                .nth(1)
                .unwrap()
                .contains("  sticky  dual    rack-1"),
            "{list}"
        );
        // An ipamd from before dual stack sends no family: IPv4, all of them.
        assert_eq!(PoolView::from(&pool()).family, "ipv4");
    }

    fn dual_export() -> ExportPoolReply {
        ExportPoolReply {
            pool: "db".into(),
            ips: vec!["10.1.0.10".into(), "10.1.0.11".into()],
            ips6: vec!["fd00:1::a".into(), "fd00:1::b".into()],
        }
    }

    #[test]
    fn dual_stack_export_lists_both_families() {
        let reply = dual_export();
        assert_eq!(
            pool_export(&reply, ExportFormat::Plain),
            "10.1.0.10\n10.1.0.11\nfd00:1::a\nfd00:1::b\n"
        );
        assert_eq!(
            pool_export(&reply, ExportFormat::Csv),
            "ip,pool,ip6\n10.1.0.10,db,fd00:1::a\n10.1.0.11,db,fd00:1::b\n"
        );
        let v: serde_json::Value =
            serde_json::from_str(&pool_export(&reply, ExportFormat::Json)).unwrap();
        assert_eq!(
            v,
            json!({
                "pool": "db",
                "ips": ["10.1.0.10", "10.1.0.11"],
                "ips6": ["fd00:1::a", "fd00:1::b"]
            })
        );
        // An IPv6-only pool: its addresses are `ips`, the CSV is `ip,pool`.
        let v6 = ExportPoolReply {
            pool: "v6".into(),
            ips: vec!["fd00:2::10".into()],
            ips6: vec![],
        };
        assert_eq!(
            pool_export(&v6, ExportFormat::Csv),
            "ip,pool\nfd00:2::10,v6\n"
        );
        assert_eq!(pool_export(&v6, ExportFormat::Plain), "fd00:2::10\n");
    }

    #[test]
    fn dual_stack_ip_shows_its_ipv6_partner() {
        let ip = Ip {
            address6: "fd00:1::8".into(),
            ..in_use_ip()
        };
        let v: serde_json::Value = serde_json::from_str(&ip_show(&ip, Format::Json)).unwrap();
        assert_eq!(
            (&v["address"], &v["address6"]),
            (&json!("10.1.0.17"), &json!("fd00:1::8"))
        );
        let show = ip_show(&ip, Format::Table);
        assert!(
            show.starts_with("Address:        10.1.0.17\nAddress6:       fd00:1::8\nPool:"),
            "{show}"
        );
        assert!(!ip_show(&in_use_ip(), Format::Table).contains("Address6"));
        // The list: both in the IP cell, 7 columns on every row, IPv4
        // addresses before IPv6 ones (an IPv6-only pool), each numerically.
        let v6 = |a: &str| Ip {
            address: a.into(),
            ..free_ip("")
        };
        let out = ip_list(
            &[v6("fd00:2::10"), v6("fd00:2::9"), ip, free_ip("10.1.0.9")],
            Format::Table,
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                "IP                   POOL   TOR     STATE   POD         NODE    CONTAINER",
                "10.1.0.9             mysql  rack-2  free    -           -       -",
                "10.1.0.17,fd00:1::8  mysql  rack-1  in-use  db/mysql-0  node-a  0123456789ab",
                "fd00:2::9            mysql  rack-2  free    -           -       -",
                "fd00:2::10           mysql  rack-2  free    -           -       -",
            ]
        );
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "");
        assert_eq!(utc(86_399), "1970-01-01T23:59:59Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_714_564_800), "2024-05-01T12:00:00Z");
    }
}
