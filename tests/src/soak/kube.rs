//! The Kubernetes side of a soak (physical mode): testkit's fake API
//! server (the one stand-in), every node agent reading its pods from it
//! (`--kubeconfig`), and two `ipamd --role controller` replicas sharing a
//! Lease. Pods are API objects shaped as the StatefulSet and ReplicaSet
//! controllers make them (ownerReferences, labels), created on their node
//! before the runtime's ADD and deleted after its DEL, as kubelet orders
//! it. Faults: an API server outage (connections refused and reset) and a
//! controller failover (kill -9 of the Lease holder).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use moor_testkit::kubeapi::{objects, Resource};
use moor_testkit::{FakeApi, Ipamd, TempDir};

use crate::cluster::Cluster;
use crate::control_plane::{controller_command, LEASE_NAME, LEASE_NAMESPACE};
use crate::testbed::POD_NAMESPACE;
use crate::Pod;

/// The controllers' `--node`s (the Lease holder is `NAME_...`).
pub const CONTROLLERS: [&str; 2] = ["ctl-a", "ctl-b"];

pub struct Kube {
    pub api: FakeApi,
    pub kubeconfig: PathBuf,
    dir: TempDir,
    controllers: Mutex<[Option<Ipamd>; 2]>,
}

impl Kube {
    /// The fake API with the namespaces; the kubeconfig the node agents
    /// and controllers use.
    pub fn start() -> Kube {
        let dir = TempDir::new("soak-kube");
        let api = FakeApi::start();
        api.create(objects::namespace(LEASE_NAMESPACE));
        api.create(objects::namespace(POD_NAMESPACE));
        let kubeconfig = api.write_kubeconfig(dir.path());
        Kube {
            api,
            kubeconfig,
            dir,
            controllers: Mutex::new([None, None]),
        }
    }

    /// The Nodes (labelled with their ToR) and the workloads whose pods the
    /// workers run: StatefulSet `sts` and Deployment `deploy`.
    pub fn seed(&self, c: &Cluster, sts: &str, deploy: &str) {
        for n in &c.nodes {
            self.api
                .create(objects::node(&n.name).label("moor.io/tor", &n.tor));
        }
        self.api.create(objects::statefulset(POD_NAMESPACE, sts, 1));
        self.api
            .create(objects::deployment(POD_NAMESPACE, deploy, 1));
    }

    /// Starts controller `i` (0 or 1) on the cluster's store.
    pub fn start_controller(&self, c: &Cluster, i: usize) {
        let name = CONTROLLERS[i];
        let ipamd = controller_command(
            self.dir.path(),
            name,
            &self.kubeconfig,
            &c.store_spec(),
            &c.prefix,
        )
        .spawn()
        .unwrap_or_else(|e| panic!("controller {name}: {e}"));
        let mut slots = self.controllers.lock().unwrap();
        assert!(slots[i].is_none(), "controller {name} is already running");
        slots[i] = Some(ipamd);
    }

    /// The index of the controller holding the Lease, if one does.
    pub fn leader(&self) -> Option<usize> {
        let lease = self
            .api
            .get(Resource::Leases, LEASE_NAMESPACE, LEASE_NAME)?;
        let holder = lease["spec"]["holderIdentity"].as_str()?;
        CONTROLLERS
            .iter()
            .position(|c| holder.starts_with(&format!("{c}_")))
    }

    /// Waits up to `within` for a leader other than `not`.
    pub fn wait_leader(&self, not: Option<usize>, within: Duration) -> Option<usize> {
        let start = Instant::now();
        loop {
            match self.leader() {
                Some(l) if Some(l) != not => return Some(l),
                _ if start.elapsed() > within => return None,
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// kill -9 of controller `i`.
    pub fn kill9_controller(&self, i: usize) {
        if let Some(c) = self.controllers.lock().unwrap()[i].take() {
            c.kill9();
        }
    }

    /// The last lines of both controllers' logs.
    pub fn log_tails(&self, lines: usize) -> String {
        CONTROLLERS
            .iter()
            .map(|c| {
                let log = self.dir.path().join(format!("{c}.log"));
                format!(
                    "---- controller {c}:\n{}",
                    moor_testkit::cmd::tail(&log, lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The pod object of `pod` on `node` as its controller makes it:
    /// StatefulSet `sts`'s pod `ordinal`, or a pod of Deployment `deploy`
    /// (the ReplicaSet hash is the second part of its name).
    pub fn create_pod(&self, pod: &Pod, node: &str, sts: &str, deploy: &str, ordinal: Option<u32>) {
        let builder = match ordinal {
            Some(o) => objects::statefulset_pod(POD_NAMESPACE, sts, o),
            None => {
                let hash = pod.name.split('-').nth(1).unwrap_or("hash");
                objects::deployment_pod(POD_NAMESPACE, deploy, hash).name(&pod.name)
            }
        };
        self.api
            .create(builder.uid(&pod.uid).node(node).phase("Running"));
    }

    /// Deletes the pod's object (after its sandbox's DEL).
    pub fn delete_pod(&self, pod: &Pod) {
        if self
            .api
            .get(Resource::Pods, POD_NAMESPACE, &pod.name)
            .is_some_and(|p| p["metadata"]["uid"] == pod.uid.as_str())
        {
            self.api.delete(Resource::Pods, POD_NAMESPACE, &pod.name);
        }
    }
}
