//! A pod's IP kept before the pod exists: services moving from VMs and
//! physical hosts keep the IPs their peers whitelisted (`moor.io/ips` on a
//! StatefulSet binds them to its ordinals; `ipamctl binding add NS/POD IP`
//! by hand). The pod's first ADD then finds its binding and takes that IP,
//! on any node of the IP's ToR.

use std::net::{IpAddr, Ipv6Addr};

use crate::core::{Binding, Lease, PodRef, Pool};
use crate::error::{Error, Result};
use crate::store::retry::{cas, Attempt};
use crate::store::{keys, StoreExt, Txn};

use super::Ipam;

impl Ipam {
    /// Binds `ip` (free, in a pool the pod's namespace may use) to `pod`.
    /// Binding a pod to the IP it already keeps changes nothing. A
    /// dual-stack pod's IPv6 address binds its IPv4 partner, the address
    /// its records are keyed by; the partner comes back with the binding.
    pub async fn bind(&self, pod: &PodRef, asked: IpAddr) -> Result<(Binding, Option<Ipv6Addr>)> {
        moor_proto::fields::namespace("pod namespace", &pod.namespace)
            .and_then(|_| moor_proto::fields::pod_name("pod name", &pod.name))
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let view = self.ip(asked).await.map_err(|e| match e {
            Error::NotFound(_) => Error::NotFound(format!(
                "{asked} is in no pool: make a pool with it first (ipamctl pool create NAME --namespace {} --app APP --ip {asked})",
                pod.namespace
            )),
            other => other,
        })?;
        let ip = view.ip;
        let _turn = self.pool_turn(&view.pool).await;
        let name = view.pool.as_str();
        let bound = cas(self.store.as_ref(), "binding add", || async move {
            let (pool, pool_entry) = self.pool_entry(name).await?;
            // A pool being created or deleted binds nothing; an IP being
            // given back (a shrink in progress) is no longer the pool's.
            if let Some(what) = pool.closed() {
                return Err(Error::Conflict(format!(
                    "pool {name} is {what}: bind an IP of another pool, or retry once it is done"
                )));
            }
            let tor = pool.tor_of(ip).filter(|_| !pool.leaving(ip));
            let Some(tor) = tor.map(str::to_string) else {
                return Err(Error::Conflict(format!(
                    "{ip} left pool {name} meanwhile; run the command again"
                )));
            };
            refuse_other_namespace(&pool, pod, ip)?;
            let want = Binding {
                pod: pod.clone(),
                pool: name.to_string(),
                ip,
                tor: tor.clone(),
            };
            let bkey = keys::binding(pod);
            let bound = self.store.get_json::<Binding>(&bkey).await?;
            if let Some((b, _)) = &bound {
                if b.pool == want.pool && b.ip == ip {
                    return Ok(Attempt::Done(b.clone()));
                }
                return Err(Error::Conflict(format!(
                    "pod {pod} already keeps IP {} of pool {}: release it first (ipamctl ip release {})",
                    b.ip, b.pool, b.ip
                )));
            }
            let lkey = keys::lease(name, ip);
            if let Some((l, _)) = self.store.get_json::<Lease>(&lkey).await? {
                let who = match (&l.binding, &l.attachment, &l.quarantine) {
                    (_, Some(a), _) => format!("in use by pod {}", a.pod),
                    (_, None, Some(q)) => format!("quarantined (MAC {} answered for it)", q.mac),
                    (Some(p), ..) => format!("kept for pod {p}"),
                    _ => "not free".to_string(),
                };
                return Err(Error::Conflict(format!(
                    "{ip} of pool {name} is {who}: pick a free IP (ipamctl ip list --pool {name})"
                )));
            }
            let lease = Lease {
                ipv6: None,
                ip,
                pool: name.to_string(),
                tor: tor.clone(),
                binding: Some(pod.clone()),
                attachment: None,
                evict: false,
                quarantine: None,
            };
            let mut txn = Txn::default();
            txn.expect(&keys::pool(name), Some(&pool_entry))
                .expect(&lkey, None)
                .expect(&bkey, None)
                .put(&lkey, &lease)
                .put(&bkey, &want);
            Ok(Attempt::Commit(txn, want))
        })
        .await?;
        Ok((bound, view.ipv6))
    }
}

fn refuse_other_namespace(pool: &Pool, pod: &PodRef, ip: IpAddr) -> Result<()> {
    if pool.allows(&pod.namespace) {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "{ip} is in pool {} of namespace {}, which does not allow pods of namespace {}: bind a pod of namespace {}, or make the pool with --allow-namespace {}",
        pool.name, pool.namespace, pod.namespace, pool.namespace, pod.namespace
    )))
}
