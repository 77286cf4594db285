//! After ipamd starts: the bridge's pod ports made to match this node's
//! attachments.

use std::collections::{HashMap, HashSet};

use moor_ovs::ErrorKind;

use crate::datapath::{veth, DatapathError, PodLink, ReconcileReport};

use super::port::{
    fmt_tag, ovs_error, pod_port, setting_problems, CONTAINER_KEY, IFNAME_KEY, NAME_KEY,
};
use super::OvsDatapath;

impl OvsDatapath {
    /// Ports with `moor-owner=moor` on our bridge whose (container, ifname)
    /// is not live are removed (the host veth, if any, is left alone);
    /// live pods' ports with other settings are replaced; missing ones are
    /// added again if the host veth exists, and reported in `host_gone` if
    /// not. Ports without our owner mark (the uplink, anyone else's) are
    /// never touched, except one squatting a live pod's port name.
    pub(super) async fn reconcile_ports(
        &self,
        live: &[PodLink],
    ) -> Result<ReconcileReport, DatapathError> {
        let mut report = ReconcileReport::default();
        let bridge = self.bridge.as_str();
        let ours = self.our_ports().await?;
        let wanted: HashMap<(&str, &str), &PodLink> = live
            .iter()
            .map(|l| ((l.container_id.as_str(), l.ifname.as_str()), l))
            .collect();
        let mut seen: HashSet<&str> = HashSet::new();
        let mut changed = false;
        for port in &ours {
            let key = (
                port.external_ids.get(CONTAINER_KEY),
                port.external_ids.get(IFNAME_KEY),
            );
            let link = match key {
                (Some(c), Some(i)) => wanted.get(&(c.as_str(), i.as_str())).copied(),
                _ => None,
            }
            .filter(|l| l.host_ifname == port.name);
            let Some(link) = link else {
                self.ovs_nowait
                    .remove_port(bridge, &port.name)
                    .await
                    .map_err(ovs_error(format!(
                        "remove port {} of a pod that is gone from OVS bridge {bridge}",
                        port.name
                    )))?;
                tracing::info!(port = %port.name, bridge, pod = ?port.external_ids.get(NAME_KEY),
                    "reconcile: removed the port of a pod that has no attachment here");
                report.removed.push(port.name.clone());
                changed = true;
                continue;
            };
            seen.insert(link.host_ifname.as_str());
            if !self.host_exists(&link.host_ifname).await? {
                report.host_gone.push(link.clone());
                continue;
            }
            let problems = setting_problems(port, link);
            if problems.is_empty() {
                report.kept += 1;
                continue;
            }
            self.readd(link, true).await?;
            tracing::warn!(port = %port.name, bridge, problems = %problems.join("; "),
                "reconcile: replaced a live pod's port that had other settings");
            report.repaired.push(port.name.clone());
            changed = true;
        }
        for link in live {
            if seen.contains(link.host_ifname.as_str()) {
                continue;
            }
            if !self.host_exists(&link.host_ifname).await? {
                report.host_gone.push(link.clone());
                continue;
            }
            match self.readd(link, false).await {
                Ok(()) => {
                    tracing::info!(port = %link.host_ifname, bridge,
                        "reconcile: added a live pod's missing port again");
                    report.readded.push(link.host_ifname.clone());
                }
                // The name is taken by a port without our mark.
                Err(DatapathError::Ovs { source, .. })
                    if matches!(source.kind(), ErrorKind::Conflict { .. }) =>
                {
                    self.readd(link, true).await?;
                    tracing::warn!(port = %link.host_ifname, bridge, conflict = %source,
                        "reconcile: replaced a port squatting a live pod's port name");
                    report.repaired.push(link.host_ifname.clone());
                }
                Err(e) => return Err(e),
            }
            changed = true;
        }
        if changed {
            let timeout = self.ovs.options().timeout;
            self.ovs
                .wait_applied(timeout)
                .await
                .map_err(ovs_error(format!(
                    "wait for ovs-vswitchd to apply the reconciled ports of OVS bridge {bridge}"
                )))?;
        }
        Ok(report)
    }

    pub(super) async fn host_exists(&self, host_ifname: &str) -> Result<bool, DatapathError> {
        Ok(veth::host_end(&self.handle, host_ifname).await?.is_some())
    }

    /// Adds the port of a live pod again, replacing a port of that name with
    /// other settings (or someone else's) on our bridge.
    async fn readd(&self, link: &PodLink, replace: bool) -> Result<(), DatapathError> {
        let op = || {
            format!(
                "add port {} (VLAN {}) to OVS bridge {} again",
                link.host_ifname,
                fmt_tag(link.vlan),
                self.bridge
            )
        };
        if replace {
            self.ovs_nowait
                .remove_port(&self.bridge, &link.host_ifname)
                .await
                .map_err(ovs_error(op()))?;
        }
        self.ovs_nowait
            .add_port(&self.bridge, &pod_port(link))
            .await
            .map_err(ovs_error(op()))
    }
}
