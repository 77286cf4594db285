//! The end checks, once every worker has DELeted its last pod and every
//! fault is repaired: after a settle (ipamd's reaper deletes retired
//! veths, pending DEL records are applied, the leak sweep runs; all with
//! short intervals here), nothing is left: no attachment, no host veth, no
//! OVS port of a pod, no pending DEL record, no binding but the
//! StatefulSet pods' (which are meant to stay: their pods come back), and
//! `ipamctl audit` exits 0.

use std::time::{Duration, Instant};

use super::driver::{DEPLOYMENT_APP, ORDINALS, STATEFULSET_APP};
use super::{Bed, Net, Shared};

/// How long the cluster may take to settle after the last DEL.
const SETTLE: Duration = Duration::from_secs(60);

/// What is left over, as violations' texts (empty when settled).
fn leftovers(bed: &Bed) -> Vec<String> {
    let c = bed.cluster();
    let mut left = Vec::new();
    for n in &c.nodes {
        let pending = n.pending();
        if !pending.is_empty() {
            left.push(format!(
                "{} pending DEL record(s) on {}: {:?}",
                pending.len(),
                n.name,
                pending.iter().map(|p| &p.container_id).collect::<Vec<_>>()
            ));
        }
        let links = c.host_links(&n.name);
        if !links.is_empty() {
            left.push(format!("host veths left on {}: {links:?}", n.name));
        }
        if let Net::Ovs(ovs) = &bed.net {
            let ports: Vec<String> = ovs.pod_ports(&n.name).into_keys().collect();
            if !ports.is_empty() {
                left.push(format!("OVS pod ports left on {}: {ports:?}", n.name));
            }
        }
    }
    for ip in c.ip_list() {
        if !ip["attachment"].is_null() {
            left.push(format!("IP still attached after every DEL: {ip}"));
        }
        if ip["state"] == "bound" {
            let name = ip["binding"]["name"].as_str().unwrap_or_default();
            if !name.starts_with(&format!("{STATEFULSET_APP}-")) {
                left.push(format!("a binding of a pod that is not sticky: {ip}"));
            }
        }
    }
    let attachments = c.etcd_list("attachments/");
    if !attachments.is_empty() {
        left.push(format!(
            "{} attachment record(s) left in etcd: {:?}",
            attachments.len(),
            attachments.iter().map(|(k, _)| k).collect::<Vec<_>>()
        ));
    }
    left
}

/// Waits for the cluster to settle, then checks it; every problem is a
/// violation.
pub fn end_checks(bed: &Bed, shared: &Shared) {
    let c = bed.cluster();
    for n in &c.nodes {
        assert!(
            c.ipamd_running(&n.name),
            "the injector left {}'s ipamd down",
            n.name
        );
    }
    let start = Instant::now();
    let left = loop {
        let left = leftovers(bed);
        if left.is_empty() || start.elapsed() > SETTLE {
            break left;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    shared
        .figures
        .add("end: settle ms", start.elapsed().as_millis() as u64);
    for l in left {
        shared
            .figures
            .violation(format!("after a {SETTLE:?} settle: {l}"));
    }
    let audit = c.ipamctl(&c.nodes[0].name, &["audit"]);
    shared.figures.bump("end: ipamctl audit runs");
    if !audit.status.success() {
        shared.figures.violation(format!(
            "ipamctl audit exited {:?}: {}{}",
            audit.status.code(),
            String::from_utf8_lossy(&audit.stdout),
            String::from_utf8_lossy(&audit.stderr)
        ));
    }
    let (web, _) = c.pool_counts(DEPLOYMENT_APP);
    let (db, _) = c.pool_counts(STATEFULSET_APP);
    shared
        .figures
        .add("end: StatefulSet bindings kept", db.bound);
    let ordinals = (c.nodes.len() * shared.cfg.workers_per_node) as u64 * u64::from(ORDINALS);
    if web.bound + web.in_use + db.in_use != 0 || db.bound > ordinals {
        shared.figures.violation(format!(
            "pool counts after the settle: {DEPLOYMENT_APP} {web:?}, {STATEFULSET_APP} {db:?} \
             (want nothing in use, no Deployment binding, at most {ordinals} StatefulSet bindings)"
        ));
    }
}
