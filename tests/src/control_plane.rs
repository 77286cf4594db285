//! What the controller role's end-to-end tests run against: the fake API
//! server (namespace `moor-system` made), one real etcd member, the
//! kubeconfig naming the API, a directory for logs and sockets, and a
//! runtime to read the store through `Ipam` as the test's own eyes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use moor_ipamd::ipam::Ipam;
use moor_ipamd::store::etcd::{EtcdOptions, EtcdStore};
use moor_testkit::kubeapi::{objects, FakeApi};
use moor_testkit::{EtcdCluster, Ipamd, IpamdCommand, TempDir};

use crate::bins::bins;

/// The controller's Lease (ipamd's defaults).
pub const LEASE_NAMESPACE: &str = "moor-system";
pub const LEASE_NAME: &str = "moor-controller";

/// Where etcd member data for test `id` goes: under /dev/shm when there is
/// one (its fsyncs then cost nothing), else under `fallback`.
pub fn etcd_dir(id: &str, fallback: &Path) -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.join(id)
    } else {
        fallback.join("etcd")
    }
}

pub struct ControlPlane {
    pub api: FakeApi,
    pub etcd: EtcdCluster,
    /// The etcd prefix of this test's store.
    pub prefix: String,
    pub kubeconfig: PathBuf,
    pub dir: TempDir,
    pub rt: tokio::runtime::Runtime,
}

impl ControlPlane {
    /// `what` names the test in its directory and in a failure to start
    /// etcd.
    pub fn new(what: &str) -> ControlPlane {
        let dir = TempDir::new(what);
        let id = dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let etcd = EtcdCluster::start(&etcd_dir(&id, dir.path()), 1, &id, &[])
            .unwrap_or_else(|e| panic!("the {what} tests need a real etcd: {e}"));
        etcd.wait_ready(Duration::from_secs(30)).unwrap();
        let api = FakeApi::start();
        api.create(objects::namespace(LEASE_NAMESPACE));
        let kubeconfig = api.write_kubeconfig(dir.path());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        ControlPlane {
            api,
            etcd,
            prefix: format!("/{id}/"),
            kubeconfig,
            dir,
            rt,
        }
    }

    /// Runs `f` with an `Ipam` on this test's store.
    pub fn with_ipam<T, F: std::future::Future<Output = T>>(&self, f: impl FnOnce(Ipam) -> F) -> T {
        self.rt.block_on(async {
            let store = EtcdStore::open(EtcdOptions {
                prefix: self.prefix.clone(),
                ..EtcdOptions::new(self.etcd.endpoints())
            })
            .await
            .expect("open the etcd store");
            f(Ipam::new(Arc::new(store))).await
        })
    }

    /// `ipamd --role controller` on this API and store, with a 3 s Lease
    /// renewed every second; `extra` arguments go last.
    pub fn controller(&self, node: &str, extra: &[&str]) -> Ipamd {
        let store = format!("etcd:{}", self.etcd.endpoints().join(","));
        controller_command(
            self.dir.path(),
            node,
            &self.kubeconfig,
            &store,
            &self.prefix,
        )
        .args(extra.iter().copied())
        .spawn()
        .unwrap()
    }
}

/// `ipamd --role controller` named `node` on `kubeconfig`'s API and the etcd
/// `store` (`etcd:URL,...`) under `prefix`, its log and socket in `dir`, with
/// a 3 s Lease renewed every second (production: 15/5), so that a failover
/// takes seconds; killed with the thread that spawns it.
pub fn controller_command(
    dir: &Path,
    node: &str,
    kubeconfig: &Path,
    store: &str,
    prefix: &str,
) -> IpamdCommand {
    let log = dir.join(format!("{node}.log"));
    let socket = dir.join(format!("{node}.sock"));
    IpamdCommand::new(&bins().ipamd, &socket, &log)
        .args(["--role", "controller", "--node", node])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--store", store, "--etcd-prefix", prefix])
        .args([
            "--lease-namespace",
            LEASE_NAMESPACE,
            "--lease-name",
            LEASE_NAME,
        ])
        .args([
            "--lease-duration-seconds",
            "3",
            "--lease-renew-seconds",
            "1",
        ])
        .kill_with_thread()
}
