//! A datapath that wires nothing: it records every call, keeps the set of
//! pods it "wired" (so CHECK, the sweep and reconcile see a consistent
//! world), and fails when a test scripts it to. With it, a daemon operation
//! (ADD ordering and rollback, DAD quarantine, crash recovery, the sweep)
//! runs in-process in milliseconds without root; the real datapaths have
//! their own tests against real namespaces and OVS.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;

use super::{Datapath, DatapathError, PodLink, ReconcileReport, Wired};

/// One call the datapath received, with its argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Wire(PodLink),
    Unwire(String),
    Check(PodLink),
    HostLinkExists(String),
    Reconcile(Vec<PodLink>),
    OrphanPorts,
    RemoveOrphanPort(String),
}

impl Call {
    pub fn op(&self) -> Op {
        match self {
            Call::Wire(_) => Op::Wire,
            Call::Unwire(_) => Op::Unwire,
            Call::Check(_) => Op::Check,
            Call::HostLinkExists(_) => Op::HostLinkExists,
            Call::Reconcile(_) => Op::Reconcile,
            Call::OrphanPorts => Op::OrphanPorts,
            Call::RemoveOrphanPort(_) => Op::RemoveOrphanPort,
        }
    }
}

/// The datapath's operations, to script failures for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Wire,
    Unwire,
    Check,
    HostLinkExists,
    Reconcile,
    OrphanPorts,
    RemoveOrphanPort,
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    /// Wired pods by host interface name.
    links: BTreeMap<String, PodLink>,
    /// Switch ports without an interface (`orphan_ports`).
    orphans: BTreeSet<String>,
    failures: HashMap<Op, VecDeque<DatapathError>>,
}

#[derive(Default)]
pub struct RecordingDatapath {
    state: Mutex<State>,
}

/// The MTU every fake link reports.
pub const MTU: u32 = 1500;

impl RecordingDatapath {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next call of `op` fails with `err` (queued: several calls to
    /// this fail the next several calls, in order).
    pub fn fail_next(&self, op: Op, err: DatapathError) {
        let mut s = self.state.lock().unwrap();
        s.failures.entry(op).or_default().push_back(err);
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    /// The operations called so far, in order (without arguments).
    pub fn ops(&self) -> Vec<Op> {
        self.calls().iter().map(Call::op).collect()
    }

    /// Forgets the calls recorded so far.
    pub fn clear_calls(&self) {
        self.state.lock().unwrap().calls.clear();
    }

    /// The pods wired now, by host interface name.
    pub fn links(&self) -> BTreeMap<String, PodLink> {
        self.state.lock().unwrap().links.clone()
    }

    pub fn is_wired(&self, host_ifname: &str) -> bool {
        self.state.lock().unwrap().links.contains_key(host_ifname)
    }

    /// The pod's veth vanished behind ipamd's back (its netns was deleted).
    pub fn lose_link(&self, host_ifname: &str) {
        self.state.lock().unwrap().links.remove(host_ifname);
    }

    /// A switch port whose interface is gone (a DEL that could not reach
    /// the switch's database).
    pub fn add_orphan_port(&self, name: &str) {
        self.state.lock().unwrap().orphans.insert(name.to_string());
    }

    pub fn orphans(&self) -> BTreeSet<String> {
        self.state.lock().unwrap().orphans.clone()
    }

    /// Records `call`; returns the failure scripted for it, if any.
    fn record(&self, call: Call) -> Result<(), DatapathError> {
        let mut s = self.state.lock().unwrap();
        let op = call.op();
        s.calls.push(call);
        match s.failures.get_mut(&op).and_then(VecDeque::pop_front) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// What differs between the link wired and the link asked for.
fn differences(have: &PodLink, want: &PodLink) -> Vec<String> {
    let mut d = Vec::new();
    if have.address != want.address {
        d.push(format!("address {} (want {})", have.address, want.address));
    }
    if have.mac != want.mac {
        d.push("MAC differs".to_string());
    }
    if have.gateway != want.gateway {
        d.push(format!("gateway {} (want {})", have.gateway, want.gateway));
    }
    if have.ipv6 != want.ipv6 {
        let show = |v6: Option<super::PodIpv6>| {
            v6.map_or("none".to_string(), |v6| {
                format!("{} via {}", v6.address, v6.gateway)
            })
        };
        d.push(format!(
            "IPv6 {} (want {})",
            show(have.ipv6),
            show(want.ipv6)
        ));
    }
    if have.vlan != want.vlan {
        d.push(format!("VLAN {:?} (want {:?})", have.vlan, want.vlan));
    }
    if have.ifname != want.ifname {
        d.push(format!("ifname {} (want {})", have.ifname, want.ifname));
    }
    d
}

#[async_trait::async_trait]
impl Datapath for RecordingDatapath {
    async fn wire(&self, link: &PodLink) -> Result<Wired, DatapathError> {
        self.record(Call::Wire(link.clone()))?;
        let mut s = self.state.lock().unwrap();
        if s.links.contains_key(&link.host_ifname) {
            return Err(DatapathError::HostLinkExists {
                host_ifname: link.host_ifname.clone(),
            });
        }
        s.links.insert(link.host_ifname.clone(), link.clone());
        let n = s.links.len() as u8;
        Ok(Wired {
            host_mac: [0x02, 0, 0, 0, 0, n.max(1)],
            mtu: MTU,
            steps: Default::default(),
        })
    }

    async fn unwire(&self, host_ifname: &str) -> Result<(), DatapathError> {
        self.record(Call::Unwire(host_ifname.to_string()))?;
        self.state.lock().unwrap().links.remove(host_ifname);
        Ok(())
    }

    async fn check(&self, link: &PodLink) -> Result<(), DatapathError> {
        self.record(Call::Check(link.clone()))?;
        let s = self.state.lock().unwrap();
        let Some(have) = s.links.get(&link.host_ifname) else {
            return Err(DatapathError::CheckFailed(format!(
                "host interface {} does not exist",
                link.host_ifname
            )));
        };
        let d = differences(have, link);
        if d.is_empty() {
            Ok(())
        } else {
            Err(DatapathError::CheckFailed(d.join(", ")))
        }
    }

    async fn host_link_exists(&self, host_ifname: &str) -> Result<bool, DatapathError> {
        self.record(Call::HostLinkExists(host_ifname.to_string()))?;
        Ok(self.is_wired(host_ifname))
    }

    async fn reconcile(&self, live: &[PodLink]) -> Result<ReconcileReport, DatapathError> {
        self.record(Call::Reconcile(live.to_vec()))?;
        let s = self.state.lock().unwrap();
        let mut r = ReconcileReport::default();
        for l in live {
            if s.links.contains_key(&l.host_ifname) {
                r.kept += 1;
            } else {
                r.host_gone.push(l.clone());
            }
        }
        Ok(r)
    }

    async fn orphan_ports(&self) -> Result<Vec<String>, DatapathError> {
        self.record(Call::OrphanPorts)?;
        Ok(self.orphans().into_iter().collect())
    }

    async fn remove_orphan_port(&self, name: &str) -> Result<bool, DatapathError> {
        self.record(Call::RemoveOrphanPort(name.to_string()))?;
        Ok(self.state.lock().unwrap().orphans.remove(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(host: &str, ip: &str) -> PodLink {
        PodLink {
            netns: "/run/netns/p".into(),
            ifname: "eth0".into(),
            host_ifname: host.into(),
            address: format!("{ip}/24").parse().unwrap(),
            gateway: "10.0.0.1".parse().unwrap(),
            ipv6: None,
            mac: [0x0a, 0x58, 10, 0, 0, 5],
            vlan: None,
            pod_namespace: "ns".into(),
            pod_name: "p".into(),
            container_id: "c".into(),
        }
    }

    #[tokio::test]
    async fn records_calls_and_keeps_a_consistent_world() {
        let dp = RecordingDatapath::new();
        let l = link("mr1", "10.0.0.5");
        dp.wire(&l).await.unwrap();
        assert!(dp.is_wired("mr1"));
        dp.check(&l).await.unwrap();
        let other = link("mr1", "10.0.0.6");
        let e = dp.check(&other).await.unwrap_err().to_string();
        assert!(e.contains("address 10.0.0.5/24 (want 10.0.0.6/24)"), "{e}");
        assert!(matches!(
            dp.wire(&l).await,
            Err(DatapathError::HostLinkExists { .. })
        ));
        dp.unwire("mr1").await.unwrap();
        dp.unwire("mr1").await.unwrap();
        assert!(!dp.host_link_exists("mr1").await.unwrap());
        assert_eq!(
            dp.ops(),
            [
                Op::Wire,
                Op::Check,
                Op::Check,
                Op::Wire,
                Op::Unwire,
                Op::Unwire,
                Op::HostLinkExists
            ]
        );
    }

    #[tokio::test]
    async fn scripted_failures_come_in_order_and_change_nothing() {
        let dp = RecordingDatapath::new();
        dp.fail_next(Op::Wire, DatapathError::CheckFailed("one".into()));
        dp.fail_next(Op::Wire, DatapathError::CheckFailed("two".into()));
        let l = link("mr2", "10.0.0.7");
        assert!(dp.wire(&l).await.unwrap_err().to_string().contains("one"));
        assert!(dp.wire(&l).await.unwrap_err().to_string().contains("two"));
        assert!(!dp.is_wired("mr2"));
        dp.wire(&l).await.unwrap();
        assert!(dp.is_wired("mr2"));
    }
}
