//! Running this node's `moor` binary directly, as containerd would, for
//! what CRI does not show: a CNI error's code, how long one ADD took, and
//! STATUS (CNI 1.1.0, which containerd 1.6 does not call). The config is
//! the conflist's moor entry; calls land in moor's log like containerd's.

use std::fs::File;

use serde_json::Value;

use moor_testkit::netns::{self, Netns};

use super::CriNode;
use crate::testbed::{run_moor, CniRun};

impl CriNode {
    /// The conflist's moor entry as a runtime hands it to the plugin:
    /// `cniVersion` and `name` from the list.
    fn moor_stdin(&self, cni_version: &str) -> String {
        let mut conf = self.moor_conf();
        conf["cniVersion"] = cni_version.into();
        conf["name"] = self.network.as_str().into();
        conf.to_string()
    }

    /// A netns of this node for ADDs the test runs itself (created on first
    /// use, deleted with the node).
    pub fn direct_netns(&self) -> String {
        let mut guard = self.direct_netns.lock().unwrap();
        guard.get_or_insert_with(|| {
            Netns::add(self.direct_netns_name()).unwrap_or_else(|e| panic!("{e}"))
        });
        self.direct_netns_path()
    }

    fn direct_netns_name(&self) -> String {
        format!("{}-direct", self.id)
    }

    /// [`CriNode::direct_netns`]'s path: the harness's own, not a pod's
    /// that containerd made (and must remove).
    pub(super) fn direct_netns_path(&self) -> String {
        netns::path(&self.direct_netns_name()).display().to_string()
    }

    /// `moor` with `env` (plus CNI_PATH) and the config of CNI version
    /// `cni_version` on stdin, in the root netns as containerd runs it.
    pub fn moor_raw(&self, env: &[(&str, &str)], cni_version: &str) -> CniRun {
        let root = File::open("/proc/self/ns/net").expect("open the root netns");
        let cni_path = self.cni_bin.display().to_string();
        let mut all: Vec<(&str, &str)> = env.to_vec();
        all.push(("CNI_PATH", &cni_path));
        // As containerd's environment sets it: every call in moor's log.
        all.push(("MOOR_LOG", "debug"));
        run_moor(
            &self.bins.moor,
            &root,
            &all,
            self.moor_stdin(cni_version).as_bytes(),
        )
    }

    /// CNI ADD of container `container_id` (eth0 in [`CriNode::direct_netns`])
    /// for `pod` (an object as the API holds it), with the CNI_ARGS
    /// containerd passes: the pod's namespace, name and uid.
    pub fn moor_add(&self, pod: &Value, container_id: &str) -> CniRun {
        let netns = self.direct_netns();
        let args = cni_args(pod, container_id);
        self.moor_raw(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", container_id),
                ("CNI_NETNS", &netns),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", &args),
            ],
            "1.0.0",
        )
    }

    /// CNI DEL of what [`CriNode::moor_add`] made.
    pub fn moor_del(&self, pod: &Value, container_id: &str) -> CniRun {
        let netns = self.direct_netns();
        let args = cni_args(pod, container_id);
        self.moor_raw(
            &[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", container_id),
                ("CNI_NETNS", &netns),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", &args),
            ],
            "1.0.0",
        )
    }

    /// CNI STATUS (1.1.0): exit 0 when ready, else error 50 with the reason.
    pub fn moor_status(&self) -> CniRun {
        self.moor_raw(&[("CNI_COMMAND", "STATUS")], "1.1.0")
    }
}

/// CNI_ARGS as containerd 1.6 sets them for a pod's sandbox.
fn cni_args(pod: &Value, container_id: &str) -> String {
    let m = |k: &str| pod["metadata"][k].as_str().unwrap_or_default();
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={container_id};K8S_POD_UID={}",
        m("namespace"),
        m("name"),
        m("uid")
    )
}
