//! CNI ADD: mark in flight -> allocate (one commit, the attachment ready)
//! -> wire -> unmark -> reply. A wiring failure gives the IP back; a
//! duplicate-address conflict quarantines it; a store outage falls back to
//! the pod's cached binding (`offline`). A crash before the unmark is rolled
//! back at the next start (`inflight`, `recover`).

use tracing::{info, warn};

use crate::core::explain::quarantine_message;
use crate::core::{
    validate, AttachmentKey, AttachmentState, Lease, PodFacts, PodRef, Quarantine, Tor,
};
use crate::datapath::{DatapathError, PodLink, Wired};
use crate::error::{cni_code, Error, Result};
use crate::ipam::AllocRequest;
use crate::kubernetes::reason_for;

use super::placement::Placement;
use super::timing::Timing;
use super::{link_for, Node};

/// One CNI ADD, as the runtime asked for it.
#[derive(Debug, Clone, Default)]
pub struct AddRequest {
    pub container_id: String,
    pub ifname: String,
    /// `CNI_NETNS`: the pod's network namespace, a path.
    pub netns: String,
    /// The network (config) name.
    pub network: String,
    /// Who the pod is (K8S_POD_* in CNI_ARGS); empty when the runtime said
    /// nothing.
    pub pod: PodRef,
    /// MOOR_POOL in CNI_ARGS: the pool, whatever the pod says.
    pub pool: Option<String>,
    /// The network config's pool: without the Kubernetes API as explicit as
    /// MOOR_POOL, with it the last default.
    pub default_pool: Option<String>,
}

/// What an ADD made: the IP, its ToR segment, the link as wired, and what
/// the datapath created (None for a repeated ADD of an intact attachment).
#[derive(Debug, Clone)]
pub struct Added {
    pub lease: Lease,
    pub tor: Tor,
    pub link: PodLink,
    pub wired: Option<Wired>,
}

impl Node {
    pub async fn add(&self, req: &AddRequest) -> Result<Added> {
        let added = self.add_pod(req).await;
        if let Err(e) = &added {
            self.report_failure(req, e);
        }
        added
    }

    /// A failed ADD becomes an Event on the pod (with the API), so `kubectl
    /// describe pod` says why its sandbox does not start.
    fn report_failure(&self, req: &AddRequest, e: &Error) {
        let (Some(c), true) = (&self.cluster, req.pod.is_known()) else {
            return;
        };
        let pod = PodFacts {
            namespace: req.pod.namespace.clone(),
            name: req.pod.name.clone(),
            uid: req.pod.uid.clone(),
            ..Default::default()
        };
        c.pod_event(&pod, reason_for(e.cni_code()), &e.to_string());
    }

    async fn add_pod(&self, req: &AddRequest) -> Result<Added> {
        let timing = Timing::start();
        let key = self.key(&req.container_id, &req.ifname)?;
        if !req.netns.starts_with('/') {
            return Err(Error::Invalid(format!(
                "netns {:?} is not a path: CNI_NETNS must name the pod's network namespace, e.g. /run/netns/NAME",
                req.netns
            )));
        }
        let pool = req.pool.as_deref().unwrap_or_default();
        validate::add_input(&req.pod, pool, &req.network).map_err(Error::Invalid)?;
        if let Some(p) = &req.default_pool {
            moor_proto::fields::pool_name("the network config's pool", p)
                .map_err(|e| Error::Invalid(e.to_string()))?;
        }
        // A DEL of this attachment that ipamd missed while down comes first.
        self.replay_pending_del(&key).await?;
        let tor = self.tor()?;
        self.ipam.start_view(&tor);
        let unfinished = self.inflight.unfinished(&key);
        let mark = self.inflight.begin(&key)?;
        let mut unsettled = false;
        let added = self
            .add_marked(req, &key, tor, timing, unfinished, &mut unsettled)
            .await;
        // Kept only when a failed ADD's allocation could not be given back:
        // the next start (or the runtime's DEL) does it.
        if let Some(m) = mark.filter(|_| !unsettled) {
            m.done();
        }
        added
    }

    async fn add_marked(
        &self,
        req: &AddRequest,
        key: &AttachmentKey,
        tor: String,
        mut timing: Timing,
        unfinished: bool,
        unsettled: &mut bool,
    ) -> Result<Added> {
        let key = key.clone();
        let place = match self.placement(req).await {
            Ok(p) => p,
            // A repeated ADD of an attachment that exists needs no decision:
            // it gets what it has even while the API cannot be asked.
            Err(e) => match self.ipam.attached(&key).await {
                Ok(Some(_)) => Placement::default(),
                _ => return Err(e),
            },
        };
        let pod = &req.pod;
        timing.step("decide");
        let alloc = match self.store_down_recently() {
            Some(since) => Err(Error::unavailable(format!(
                "the store ({}) has not answered since {}s ago; no IP can be allocated until it does, retry later",
                self.ipam.store().describe(),
                self.now().saturating_sub(since)
            ))),
            None => self.note(
                self.ipam
                    .allocate(&AllocRequest {
                        key: key.clone(),
                        pod: pod.clone(),
                        choice: place.choice.clone(),
                        stable: place.stable,
                        netns: req.netns.clone(),
                        network: req.network.clone(),
                        tor: tor.clone(),
                        now_unix: self.now(),
                    })
                    .await,
            ),
        };
        let alloc = match alloc {
            Ok(a) => a,
            Err(e) if e.is_unavailable() => {
                // The pool the pod names, as far as it is known without the
                // store (MOOR_POOL, else its annotation): a binding in
                // another pool is refused online, so it is not served here.
                let c = &place.choice;
                let pool = c.explicit.as_deref().or(c.pod_annotation.as_deref());
                let offline = self.add_offline(&key, req, &tor, pool, e).await;
                // The allocation may have been committed before the store
                // went away (its reply lost): the mark stays, so a retried
                // ADD of the key wires what it finds and a restart rolls
                // an unwired one back.
                *unsettled |= offline.is_err();
                return offline;
            }
            Err(e) => return Err(e),
        };
        timing.step("allocate");
        let link = link_for(&alloc.tor, &alloc.lease, &req.netns)?;
        // Whether this ADD owns the attachment: made it now, or adopts the
        // one an earlier ADD of the key committed without learning so.
        let mut owned = !alloc.existing;
        if alloc.existing && alloc.attachment().state == AttachmentState::Ready {
            // A repeated ADD: fine if what we built is still intact.
            match self.datapath.check(&link).await {
                Ok(()) => {
                    info!(%key, container_id = %key.container_id, pod = %alloc.attachment().pod,
                        ip = %alloc.lease.ip, pool = %alloc.lease.pool, tor = %alloc.tor.name, "ADD");
                    return Ok(Added {
                        lease: alloc.lease,
                        tor: alloc.tor,
                        link,
                        wired: None,
                    });
                }
                Err(e) if unfinished || alloc.after_lost_reply => {
                    warn!(%key, ip = %alloc.lease.ip, error = %e,
                        "an earlier ADD of this attachment lost its store's reply after committing: wiring it now");
                    // Whatever that ADD built half way goes first.
                    if let Err(e) = self.datapath.unwire(&link.host_ifname).await {
                        warn!(%key, error = %e, "could not remove an earlier ADD's half-built wiring");
                    }
                    owned = true;
                }
                Err(e) => {
                    return Err(Error::Conflict(format!(
                        "{key} is already attached with {} but its wiring is broken ({e}): DEL it first",
                        alloc.lease.ip
                    )))
                }
            }
        }
        if owned {
            // Copied before wiring: a restart during an outage rolls it back.
            self.mirror_put(&alloc.lease, &alloc.tor).await;
        }
        timing.step("mirror");
        let wired = match self.datapath.wire(&link).await {
            Ok(w) => w,
            Err(DatapathError::AddressConflict { ip, mac }) if owned => {
                let q = Quarantine {
                    mac: mac.clone(),
                    node: self.cfg.name.clone(),
                    since_unix: self.now(),
                };
                let pod = &alloc.attachment().pod;
                if let Err(re) = self.ipam.quarantine(&key, q, alloc.at()).await {
                    // Not quarantined: at least give the IP back (the next
                    // ADD probes again), or a restart rolls it back.
                    warn!(%key, %ip, other_mac = %mac, error = %re, "duplicate address, and the IP could not be quarantined");
                    if let Err(re) = self.ipam.release_at(&key, true, alloc.at()).await {
                        warn!(%key, error = %re, "could not roll back the allocation of a failed ADD");
                        *unsettled = true;
                    }
                    return Err(Error::refused(
                        cni_code::ADDRESS_CONFLICT,
                        format!(
                            "IP {ip} of pod {pod} is already used on the network by MAC {mac} (moor's duplicate-address probe), and it could not be quarantined ({re}): find that host; the IP was given back and the next ADD probes again"
                        ),
                    ));
                }
                warn!(%key, %ip, other_mac = %mac, "duplicate address: IP quarantined");
                return Err(Error::refused(
                    cni_code::ADDRESS_CONFLICT,
                    quarantine_message(ip, &mac, Some(pod)),
                ));
            }
            Err(e) => {
                // A pending attachment found here belongs to an ADD that may
                // still be running; only roll back what this call made.
                let rollback = if owned {
                    self.ipam.release_at(&key, true, alloc.at()).await
                } else {
                    Ok(None)
                };
                if let Err(re) = rollback {
                    // The attachment stays marked; the next start rolls it back.
                    warn!(%key, error = %re, "could not roll back the allocation of a failed ADD");
                    *unsettled = true;
                }
                return Err(Error::datapath(
                    format!(
                        "wiring {} for pod {} failed, the IP was given back",
                        alloc.lease.ip,
                        alloc.attachment().pod
                    ),
                    e,
                ));
            }
        };
        timing.wire(&wired.steps);
        info!(%key, container_id = %key.container_id, pod = %alloc.attachment().pod,
            ip = %alloc.lease.ip, pool = %alloc.lease.pool, tor = %alloc.tor.name, "ADD");
        let lease = alloc.lease;
        timing.log("ADD", &key);
        Ok(Added {
            lease,
            tor: alloc.tor,
            link,
            wired: Some(wired),
        })
    }
}
