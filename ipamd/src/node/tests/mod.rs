//! `Node` in-process: the memory store, the recording datapath and a manual
//! clock. No root, no kernel, milliseconds per test. Each test pins one
//! behaviour of a CNI operation (ordering, rollback, outage, recovery) that
//! before needed a root end-to-end run to see.

mod add;
mod del;
mod evict;
mod gc;
mod kube;
mod offline;
mod recover;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::audit::audit;
use crate::clock::ManualClock;
use crate::core::{Attachment, AttachmentKey, Lease, PodRef, Policy};
use crate::datapath::fake::RecordingDatapath;
use crate::datapath::{Datapath, DatapathError, PodLink, ReconcileReport, Wired};
use crate::error::Error;
use crate::ipam::{Ipam, PoolSpec};
use crate::store::mem::MemStore;
use crate::store::{keys, Store, StoreExt};

use super::{AddRequest, Added, Mirror, Node, NodeConfig};

/// When every test's clock starts.
pub const T0: u64 = 1_000_000;
pub const GRACE: u64 = 60;

/// A temp dir removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("moor-node-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A node `n1` on ToR `r1` (10.1.0.10-10.1.0.29), pools `web` (app web)
/// and `db` (app db) of 4 IPs each, policy auto: `db-0` is sticky, a
/// Deployment pod `web-7d9f8c6b5-x2x9z` is not.
pub struct Harness {
    pub store: Arc<MemStore>,
    pub ipam: Arc<Ipam>,
    pub dp: Arc<RecordingDatapath>,
    pub clock: Arc<ManualClock>,
    pub node: Node,
    pub dir: TempDir,
    /// Whether the node has a local mirror (as with an etcd store).
    pub mirrored: bool,
}

pub const WEB_POD: &str = "web-7d9f8c6b5-x2x9z";

impl Harness {
    pub async fn new() -> Self {
        Self::build(false).await
    }

    /// With a local mirror, as a node on etcd has.
    pub async fn mirrored() -> Self {
        Self::build(true).await
    }

    async fn build(mirrored: bool) -> Self {
        let store = Arc::new(MemStore::new());
        let ipam = Arc::new(Ipam::new(store.clone()));
        ipam.add_tor(
            "r1",
            "10.1.0.0/24",
            "10.1.0.1",
            0,
            &[("10.1.0.10".into(), "10.1.0.29".into())],
            "",
        )
        .await
        .unwrap();
        for app in ["web", "db"] {
            ipam.create_pool(
                &PoolSpec {
                    name: app.into(),
                    namespace: "default".into(),
                    app: app.into(),
                    size: 4,
                    tors: vec![],
                    policy: Policy::Auto,
                    allow_namespaces: vec![],
                    ..PoolSpec::default()
                },
                0,
            )
            .await
            .unwrap();
        }
        let dir = TempDir::new();
        let dp = Arc::new(RecordingDatapath::new());
        let clock = Arc::new(ManualClock::new(T0));
        let node = Self::node_on(&ipam, dp.clone(), &clock, &dir, mirrored);
        Self {
            store,
            ipam,
            dp,
            clock,
            node,
            dir,
            mirrored,
        }
    }

    fn node_on(
        ipam: &Arc<Ipam>,
        dp: Arc<dyn Datapath>,
        clock: &Arc<ManualClock>,
        dir: &TempDir,
        mirrored: bool,
    ) -> Node {
        let mirror = mirrored.then(|| Mirror::open(&dir.0.join("mirror.redb")).unwrap());
        Node::new(
            NodeConfig {
                name: "n1".into(),
                tor: "r1".into(),
                pending_dir: dir.0.join("pending"),
                gc_grace: Duration::from_secs(GRACE),
                sticky_kinds: crate::core::pod::default_sticky_kinds(),
            },
            ipam.clone(),
            dp,
            mirror,
            clock.clone(),
        )
    }

    /// ipamd starts again on the same store, datapath and local files (a
    /// kill -9 and a restart): a new `Node`, nothing carried over in memory.
    pub fn restart(self) -> Self {
        let dp = self.dp.clone();
        self.restart_with(dp)
    }

    /// `restart`, with the node on `datapath` (one that wraps `self.dp`, so
    /// the recording datapath still sees every call).
    pub fn restart_with(self, datapath: Arc<dyn Datapath>) -> Self {
        let Harness {
            store,
            ipam,
            dp,
            clock,
            node,
            dir,
            mirrored,
        } = self;
        // The mirror's redb file is closed before it is opened again.
        drop(node);
        let node = Self::node_on(&ipam, datapath, &clock, &dir, mirrored);
        Harness {
            store,
            ipam,
            dp,
            clock,
            node,
            dir,
            mirrored,
        }
    }

    pub fn req(&self, cid: &str, pod: &str) -> AddRequest {
        AddRequest {
            container_id: cid.into(),
            ifname: "eth0".into(),
            netns: format!("/run/netns/{cid}"),
            network: "moor".into(),
            pod: pod_ref(pod),
            pool: None,
            default_pool: None,
        }
    }

    pub async fn add(&self, cid: &str, pod: &str) -> Result<Added, Error> {
        self.node.add(&self.req(cid, pod)).await
    }

    pub fn key(&self, cid: &str) -> AttachmentKey {
        AttachmentKey {
            node: "n1".into(),
            container_id: cid.into(),
            ifname: "eth0".into(),
        }
    }

    pub fn host(cid: &str) -> String {
        moor_proto::host_ifname(cid, "eth0")
    }

    /// The lease of an IP as the store has it now.
    pub async fn lease(&self, pool: &str, ip: std::net::IpAddr) -> Option<Lease> {
        self.store
            .get_json::<Lease>(&keys::lease(pool, ip))
            .await
            .unwrap()
            .map(|(l, _)| l)
    }

    /// The attachment on an IP's lease as the store has it now (None: no
    /// lease, or a lease without one).
    pub async fn attachment(&self, pool: &str, ip: std::net::IpAddr) -> Option<Attachment> {
        self.lease(pool, ip).await.and_then(|l| l.attachment)
    }

    pub async fn binding(&self, pod: &str) -> bool {
        self.store
            .get(&keys::binding(&pod_ref(pod)))
            .await
            .unwrap()
            .is_some()
    }

    /// The store's records agree with each other (BRIEF's invariants as the
    /// store shows them).
    pub async fn clean(&self) {
        let bad = audit(self.store.as_ref()).await.unwrap();
        assert!(bad.is_empty(), "{bad:#?}");
    }

    pub fn pending_files(&self) -> usize {
        std::fs::read_dir(self.dir.0.join("pending"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

pub fn pod_ref(name: &str) -> PodRef {
    PodRef {
        namespace: "default".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
    }
}

/// What happens right after a successful wire, between an ADD's "wired" and
/// its "ready".
pub enum AfterWire {
    /// ipamd dies: the ADD never goes on (the test drops it once notified).
    Crash(Arc<tokio::sync::Notify>),
    /// The store stops answering.
    StoreDown(Arc<MemStore>),
}

/// The recording datapath, with something happening after its first wire.
pub struct Interrupting {
    dp: Arc<RecordingDatapath>,
    then: AfterWire,
    done: std::sync::atomic::AtomicBool,
}

impl Interrupting {
    pub fn new(dp: &Arc<RecordingDatapath>, then: AfterWire) -> Arc<Self> {
        Arc::new(Self {
            dp: dp.clone(),
            then,
            done: Default::default(),
        })
    }
}

#[async_trait::async_trait]
impl Datapath for Interrupting {
    async fn wire(&self, link: &PodLink) -> Result<Wired, DatapathError> {
        let wired = self.dp.wire(link).await?;
        if self.done.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Ok(wired);
        }
        match &self.then {
            AfterWire::Crash(wired) => {
                wired.notify_one();
                std::future::pending::<()>().await;
            }
            AfterWire::StoreDown(store) => store.set_down(true),
        }
        Ok(wired)
    }
    async fn unwire(&self, h: &str) -> Result<(), DatapathError> {
        self.dp.unwire(h).await
    }
    async fn check(&self, link: &PodLink) -> Result<(), DatapathError> {
        self.dp.check(link).await
    }
    async fn host_link_exists(&self, h: &str) -> Result<bool, DatapathError> {
        self.dp.host_link_exists(h).await
    }
    async fn reconcile(&self, live: &[PodLink]) -> Result<ReconcileReport, DatapathError> {
        self.dp.reconcile(live).await
    }
}
