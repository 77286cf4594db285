//! What ipamd counts for Prometheus (docs/operations.md lists every series).
//!
//! One set of metrics per process ([`global`]): counters are bumped where
//! things happen, in every layer, and a scrape encodes them together with
//! the gauges worked out at that moment ([`Snapshot`]: pool use on this
//! node's ToR, attachments, pending DELs). The HTTP listener that serves
//! them is `api::metrics`.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// CNI request latency buckets: 1 ms to 60 s, so that a slow ADD (a store
/// outage, a runtime's retry) lands in a bucket rather than in +Inf.
const CNI_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Store request latency buckets: 0.1 ms (an embedded read) to 10 s.
const STORE_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpCode {
    op: &'static str,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Op {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreOp {
    backend: &'static str,
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Backend {
    backend: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreErr {
    backend: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolTor {
    pool: String,
    tor: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolState {
    pool: String,
    tor: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AddrFamily {
    family: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KubeResource {
    resource: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

/// Webhook latency buckets: 1 ms to 10 s (the API server's timeout).
const WEBHOOK_BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
];

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every series ipamd exports.
pub struct Metrics {
    registry: Registry,
    cni_requests: Family<OpCode, Counter>,
    cni_duration: HistogramFamily<Op>,
    store_duration: HistogramFamily<StoreOp>,
    store_up: Family<Backend, Gauge>,
    store_errors: Family<StoreErr, Counter>,
    pool_ips: Family<PoolState, Gauge>,
    pool_full: Family<PoolTor, Counter>,
    node_attachments: Gauge,
    announcements: Family<AddrFamily, Counter>,
    dad_conflicts: Counter,
    sweep_released: Counter,
    pending_dels: Gauge,
    kube_cache_ready: Family<KubeResource, Gauge>,
    kube_watch_errors: Family<KubeResource, Counter>,
    webhook_duration: HistogramFamily<Outcome>,
    controller_actions: Family<Reason, Counter>,
    controller_leader: Gauge,
    /// Whether this replica leads, asked at each scrape (the controller
    /// role sets it; a fence can expire between two events).
    leader: std::sync::OnceLock<Box<dyn Fn() -> bool + Send + Sync>>,
    /// Serializes scrapes: each works out the gauges, refills them, then
    /// encodes.
    scraping: tokio::sync::Mutex<()>,
}

/// What a scrape works out when it happens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Per (pool, ToR segment) of this node's ToR: total, free, bound, in
    /// use. None: not readable now (the series keep their last values).
    pub pools: Option<Vec<PoolUse>>,
    pub attachments: Option<u64>,
    pub pending_dels: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolUse {
    pub pool: String,
    pub tor: String,
    pub total: u32,
    pub free: u32,
    pub bound: u32,
    pub in_use: u32,
}

/// The CNI commands `moor_cni_*` count, as the plugin names them.
pub const CNI_OPS: [&str; 5] = ["ADD", "DEL", "CHECK", "STATUS", "GC"];

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &GLOBAL
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let cni_hist: fn() -> Histogram = || Histogram::new(CNI_BUCKETS.iter().copied());
        let store_hist: fn() -> Histogram = || Histogram::new(STORE_BUCKETS.iter().copied());
        let webhook_hist: fn() -> Histogram = || Histogram::new(WEBHOOK_BUCKETS.iter().copied());
        let m = Metrics {
            registry: Registry::default(),
            cni_requests: Family::default(),
            cni_duration: Family::new_with_constructor(cni_hist),
            store_duration: Family::new_with_constructor(store_hist),
            store_up: Family::default(),
            store_errors: Family::default(),
            pool_ips: Family::default(),
            pool_full: Family::default(),
            node_attachments: Gauge::default(),
            announcements: Family::default(),
            dad_conflicts: Counter::default(),
            sweep_released: Counter::default(),
            pending_dels: Gauge::default(),
            kube_cache_ready: Family::default(),
            kube_watch_errors: Family::default(),
            webhook_duration: Family::new_with_constructor(webhook_hist),
            controller_actions: Family::default(),
            controller_leader: Gauge::default(),
            leader: std::sync::OnceLock::new(),
            scraping: tokio::sync::Mutex::new(()),
        };
        // Every op has its series from the start, so a rate over "no ADD
        // yet" is 0, not absent.
        for op in CNI_OPS {
            drop(m.cni_duration.get_or_create(&Op { op }));
        }
        drop(
            m.announcements
                .get_or_create(&AddrFamily { family: "ipv4" }),
        );
        m.with_registry()
    }

    fn with_registry(mut self) -> Self {
        let mut r = Registry::default();
        r.register(
            "moor_cni_requests",
            "CNI requests ipamd served, by command and CNI result code (0: success)",
            self.cni_requests.clone(),
        );
        r.register(
            "moor_cni_request_duration_seconds",
            "How long ipamd took to serve a CNI request, by command",
            self.cni_duration.clone(),
        );
        r.register(
            "moor_store_request_duration_seconds",
            "How long a store request took, by backend and operation",
            self.store_duration.clone(),
        );
        r.register(
            "moor_store_up",
            "1 when the last store request got an answer, 0 when the store was unreachable",
            self.store_up.clone(),
        );
        r.register(
            "moor_store_errors",
            "Store requests that failed, by backend and kind",
            self.store_errors.clone(),
        );
        r.register(
            "moor_pool_ips",
            "IPs of a pool on this node's ToR (segment), by state: total, free, bound, in_use; every node of the ToR exports the same series (aggregate with max by (pool, tor))",
            self.pool_ips.clone(),
        );
        r.register(
            "moor_pool_full",
            "ADDs refused because the pod's pool had no free IP on the node's ToR",
            self.pool_full.clone(),
        );
        r.register(
            "moor_node_attachments",
            "Pod interfaces attached on this node",
            self.node_attachments.clone(),
        );
        r.register(
            "moor_announcements",
            "Gratuitous announcements sent for pods' IPs, by address family",
            self.announcements.clone(),
        );
        r.register(
            "moor_dad_conflicts",
            "ADDs whose duplicate-address probe found another owner of the IP",
            self.dad_conflicts.clone(),
        );
        r.register(
            "moor_sweep_released",
            "IPs the leak sweep released",
            self.sweep_released.clone(),
        );
        r.register(
            "moor_pending_dels",
            "DELs the plugin recorded while ipamd or the store was down, not replayed yet",
            self.pending_dels.clone(),
        );
        r.register(
            "moor_kube_cache_ready",
            "1 once a Kubernetes cache has its first list and its watch is healthy; 0 before and while its watch fails (it then serves what it has)",
            self.kube_cache_ready.clone(),
        );
        r.register(
            "moor_kube_watch_errors",
            "Failed Kubernetes watches (each retried with backoff), by resource",
            self.kube_watch_errors.clone(),
        );
        r.register(
            "moor_webhook_request_duration_seconds",
            "How long the admission webhook took to answer a review, by outcome",
            self.webhook_duration.clone(),
        );
        r.register(
            "moor_controller_actions",
            "What the controller did, by the reason of the Event it reported (MoorPoolCreated, MoorBindingReleased, ...)",
            self.controller_actions.clone(),
        );
        r.register(
            "moor_controller_leader",
            "1 while this controller replica holds the Lease and acts",
            self.controller_leader.clone(),
        );
        r.register(
            "moor_build",
            "ipamd's version and the commit it was built from",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("commit", build_commit().to_string()),
            ]),
        );
        self.registry = r;
        self
    }

    /// A CNI request served in `took`; `code` 0 on success.
    pub fn cni_request(&self, op: &'static str, code: u32, took: Duration) {
        self.cni_counted(op, code.to_string(), took);
    }

    /// A CNI request given up on after `took`, unanswered: its caller's
    /// deadline passed (the plugin's timeout) or it hung up.
    pub fn cni_cancelled(&self, op: &'static str, took: Duration) {
        self.cni_counted(op, "cancelled".to_string(), took);
    }

    fn cni_counted(&self, op: &'static str, code: String, took: Duration) {
        self.cni_requests.get_or_create(&OpCode { op, code }).inc();
        self.cni_duration
            .get_or_create(&Op { op })
            .observe(took.as_secs_f64());
    }

    /// The store's series start at 0 (errors) so that an alert's
    /// `increase()` sees the first failure, not only the second.
    pub fn store_backend(&self, backend: &'static str) {
        for kind in ["unavailable", "corrupt", "compacted", "other"] {
            drop(self.store_errors.get_or_create(&StoreErr { backend, kind }));
        }
    }

    /// A store request that took `took`; `error`: the kind of its failure.
    pub fn store_request(
        &self,
        backend: &'static str,
        op: &'static str,
        took: Duration,
        error: Option<&'static str>,
    ) {
        self.store_duration
            .get_or_create(&StoreOp { backend, op })
            .observe(took.as_secs_f64());
        if let Some(kind) = error {
            self.store_errors
                .get_or_create(&StoreErr { backend, kind })
                .inc();
        }
        // Only an unreachable store is down; a conflict or a corrupt record
        // came from a store that answered.
        let up = i64::from(error != Some("unavailable"));
        self.store_up.get_or_create(&Backend { backend }).set(up);
    }

    /// An ADD refused because `pool` had no free IP on `tor`.
    pub fn pool_full(&self, pool: &str, tor: &str) {
        self.pool_full
            .get_or_create(&PoolTor {
                pool: pool.to_string(),
                tor: tor.to_string(),
            })
            .inc();
    }

    pub fn announcement(&self, family: &'static str) {
        self.announcements
            .get_or_create(&AddrFamily { family })
            .inc();
    }

    pub fn dad_conflict(&self) {
        self.dad_conflicts.inc();
    }

    pub fn sweep_released(&self, n: u64) {
        self.sweep_released.inc_by(n);
    }

    /// A Kubernetes cache of `resource` is (or is no longer) up to date.
    pub fn kube_cache(&self, resource: &'static str, ready: bool) {
        self.kube_cache_ready
            .get_or_create(&KubeResource { resource })
            .set(i64::from(ready));
        if !ready {
            self.kube_watch_errors
                .get_or_create(&KubeResource { resource })
                .inc();
        }
    }

    /// The webhook answered a review in `took`; `outcome`: patched,
    /// unchanged (nothing to add), or bad_request (not an AdmissionReview).
    pub fn webhook_review(&self, outcome: &'static str, took: Duration) {
        self.webhook_duration
            .get_or_create(&Outcome { outcome })
            .observe(took.as_secs_f64());
    }

    /// The controller acted and reported it with an Event of `reason`.
    pub fn controller_action(&self, reason: &str) {
        self.controller_actions
            .get_or_create(&Reason {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Where a scrape learns whether this replica leads (once per process).
    pub fn leader_from(&self, leads: impl Fn() -> bool + Send + Sync + 'static) {
        let _ = self.leader.set(Box::new(leads));
    }

    /// The OpenMetrics text of every series, with the gauges of `now`; a
    /// gauge whose source could not be read keeps its last value.
    pub async fn encode(&self, now: Snapshot) -> String {
        self.scrape(async { now }).await
    }

    /// [`Metrics::encode`] with the gauges `now` works out, one scrape at a
    /// time: two at once could publish an older snapshot after a newer one.
    pub async fn scrape(&self, now: impl std::future::Future<Output = Snapshot>) -> String {
        let _one = self.scraping.lock().await;
        let now = now.await;
        if let Some(pools) = &now.pools {
            self.set_pools(pools);
        }
        if let Some(n) = now.attachments {
            self.node_attachments.set(n as i64);
        }
        if let Some(n) = now.pending_dels {
            self.pending_dels.set(n as i64);
        }
        if let Some(leads) = self.leader.get() {
            self.controller_leader.set(i64::from(leads()));
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Replaces the pool series: a pool that is gone (or no longer on this
    /// ToR) goes with its series.
    fn set_pools(&self, pools: &[PoolUse]) {
        self.pool_ips.clear();
        for p in pools {
            // At 0 from the first scrape: the first refusal is an increase.
            drop(self.pool_full.get_or_create(&PoolTor {
                pool: p.pool.clone(),
                tor: p.tor.clone(),
            }));
            for (state, n) in [
                ("total", p.total),
                ("free", p.free),
                ("bound", p.bound),
                ("in_use", p.in_use),
            ] {
                self.pool_ips
                    .get_or_create(&PoolState {
                        pool: p.pool.clone(),
                        tor: p.tor.clone(),
                        state,
                    })
                    .set(i64::from(n));
            }
        }
    }
}

/// The commit ipamd was built from (build.rs), or "unknown".
fn build_commit() -> &'static str {
    option_env!("MOOR_BUILD_COMMIT").unwrap_or("unknown")
}

#[cfg(test)]
mod tests;
