//! What each IP is used for, and the operator's two ways to take a kept IP
//! back: `ip release` (drop the binding now) and `ip evict` (drop it with the
//! holder's DEL). The listings of every IP and binding are in `listing`.

use std::net::IpAddr;

use crate::core::{Attachment, Binding, IpFamily, Lease, Pool, Tor};
use crate::error::{Error, Result};
use crate::store::retry::{cas, Attempt};
use crate::store::{keys, StoreExt, Txn};

use super::{IpView, Ipam};

impl Ipam {
    /// The IP `asked` (either address of a dual-stack pod) and its use.
    pub async fn ip(&self, asked: IpAddr) -> Result<IpView> {
        let not_found = || {
            Error::NotFound(format!(
                "{asked} is in no pool (ipamctl ip list shows the IPs of every pool)"
            ))
        };
        // Only the ToR records, then one list of the segment's carved
        // records (`tors()` would read every segment's).
        let (tors, _) = self.store.list_json::<Tor>(keys::TORS).await?;
        let tor = tors
            .iter()
            .map(|(t, _)| t)
            .find(|t| t.family_of(asked).is_some())
            .ok_or_else(not_found)?;
        let carved = self.carved(&tor.name).await?;
        // An IPv6 address of a dual-stack pod is known by its IPv4 partner.
        let (ip, pool) = match carved.ips.get(&asked) {
            Some(pool) => (asked, pool),
            None => {
                let v4 = tor.partner_of(asked).ok_or_else(not_found)?;
                (v4, carved.ips.get(&v4).ok_or_else(not_found)?)
            }
        };
        let family = self
            .store
            .get_json::<Pool>(&keys::pool(pool))
            .await?
            .map(|(p, _)| p.family);
        let ipv6 = match family {
            Some(IpFamily::Dual) => tor.partner(ip),
            _ => None,
        };
        if asked != ip && ipv6.map(IpAddr::V6) != Some(asked) {
            // The partner of an IPv4 address whose pool is not dual stack.
            return Err(not_found());
        }
        let lease = self
            .store
            .get_json::<Lease>(&keys::lease(pool, ip))
            .await?
            .map(|(l, _)| l);
        Ok(IpView {
            ip,
            ipv6,
            pool: pool.clone(),
            tor: tor.name.clone(),
            lease,
        })
    }

    /// Drops the binding on an IP. A live attachment keeps the IP until its
    /// DEL; then it goes back to the pool.
    pub async fn release_ip(&self, ip: IpAddr) -> Result<(IpView, bool)> {
        let (view, dropped, _) = self.drop_binding(ip, false).await?;
        Ok((view, dropped))
    }

    /// Every binding (of one pool, or all), and whether its IP is attached
    /// (`binding_walk`, collected).
    pub async fn bindings(
        &self,
        pool: Option<&str>,
    ) -> Result<Vec<(Binding, bool, Option<std::net::Ipv6Addr>)>> {
        use futures::TryStreamExt;
        self.binding_walk(pool).try_collect().await
    }

    /// `ip evict` without force: a bound IP no pod holds is released now; a
    /// held one is marked so its binding goes with the holder's DEL. Returns
    /// the IP after the change, whether it was released, and the holder.
    pub async fn mark_evict(&self, ip: IpAddr) -> Result<(IpView, bool, Option<Attachment>)> {
        self.drop_binding(ip, true).await
    }

    /// The binding of `ip` goes: now if no pod holds the IP (the IP is free
    /// again); if one does, now (`ip release`) or, with `at_del`, with that
    /// pod's DEL (`ip evict`). Returns the IP after the change, whether the
    /// binding was dropped now, and the holder.
    async fn drop_binding(
        &self,
        ip: IpAddr,
        at_del: bool,
    ) -> Result<(IpView, bool, Option<Attachment>)> {
        let view = self.ip(ip).await?;
        let ip = view.ip;
        let _turn = self.pool_turn(&view.pool).await;
        let key = keys::lease(&view.pool, ip);
        let what = if at_del { "ip evict" } else { "ip release" };
        let view = &view;
        let key = key.as_str();
        cas(self.store.as_ref(), what, || async move {
            let Some((mut lease, entry)) = self.store.get_json::<Lease>(key).await? else {
                let free = IpView {
                    lease: None,
                    ..view.clone()
                };
                return Ok(Attempt::Done((free, false, None, None)));
            };
            let holder = lease.attachment.clone();
            let lifted = lease.quarantine.take();
            if let Some(q) = &lifted {
                if at_del {
                    return Err(Error::Conflict(format!(
                        "{ip} is quarantined (MAC {} answered for it on the network), not held by a pod: once that host is dealt with, lift the quarantine with `ipamctl ip release {ip}`",
                        q.mac
                    )));
                }
            }
            // `ip release` of a quarantined IP (the operator has dealt with
            // the other owner) lifts the quarantine and drops a binding kept
            // on the IP; an attachment (a pod restarted on it during a store
            // outage) stays, and the IP with it.
            let binding = lease.binding.clone();
            if binding.is_none() && lifted.is_none() {
                let unchanged = IpView {
                    lease: Some(lease),
                    ..view.clone()
                };
                return Ok(Attempt::Done((unchanged, false, holder, None)));
            }
            let mut txn = Txn::default();
            txn.expect(key, Some(&entry));
            let dropped = if holder.is_some() && at_del {
                // The binding goes with the holder's DEL.
                lease.evict = true;
                txn.put(key, &lease);
                false
            } else {
                if let Some(pod) = &binding {
                    txn.delete(&keys::binding(pod));
                }
                if holder.is_some() {
                    lease.binding = None;
                    txn.put(key, &lease);
                } else {
                    txn.delete(key);
                }
                true
            };
            let lease = holder.is_some().then_some(lease);
            let after = IpView {
                lease,
                ..view.clone()
            };
            Ok(Attempt::Commit(txn, (after, dropped, holder, lifted)))
        })
        .await
        .map(|(after, dropped, holder, lifted)| {
            if let Some(q) = lifted {
                tracing::info!(%ip, other_mac = %q.mac, "quarantine lifted");
            }
            (after, dropped, holder)
        })
    }
}
