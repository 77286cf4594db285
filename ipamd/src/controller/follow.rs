//! One workload's pool, made to follow what the workload declares: found
//! (by name, or the app's own pool), adopted, or created; resized to cover
//! the workload's pods and its annotation; published as the whitelist
//! ConfigMap `moor-pool-<pool>`.

use crate::core::Pool;
use crate::error::Error;
use crate::ipam::Resize;
use crate::kubernetes::configmaps::{self, Owner, Whitelist};
use crate::kubernetes::events::EventType::{Normal, Warning};
use crate::kubernetes::workloads::Workload;

use super::declared::{Declared, FAMILY_ANNOTATION};
use super::pools::{DeclaredPools, Fenced, Memory, Pass, Pools};

fn ips_list(ips: &[std::net::IpAddr]) -> String {
    ips.iter()
        .map(|ip| ip.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl DeclaredPools {
    /// Makes `w`'s pool follow `d`. Returns the pool's name, or None when
    /// the pool was refused (reported on the workload).
    pub(super) async fn follow(
        &self,
        w: &Workload,
        d: &Declared,
        pools: &mut Pools,
        mem: &mut Memory,
        pass: &mut Pass,
    ) -> Result<Option<String>, Fenced> {
        let Some(pool) = self.pool_of(w, d, pools, mem, pass).await? else {
            return Ok(None);
        };
        if let Some(asked) = d.spec.family.filter(|f| *f != pool.family) {
            // A pool's family is fixed when it is made (its IPs and the
            // whitelists published from them depend on it).
            self.say(
                mem,
                w,
                Warning,
                "MoorPoolFamily",
                &format!(
                    "{}: pool {} is {}, {FAMILY_ANNOTATION} asks {asked}: a pool keeps the family it was made with; to change it, delete the pool once its pods are gone (ipamctl pool delete {}) and it is made again, or drop the annotation",
                    w.describe(),
                    pool.name,
                    pool.family,
                    pool.name
                ),
            );
        }
        let pool = if d.explicit() || pool.size() == d.target {
            pool
        } else {
            self.resize(w, d, pool, mem, pass).await?
        };
        let name = pool.name.clone();
        pools.by_name.insert(name.clone(), pool.clone());
        self.publish(w, &pool, mem, pass).await?;
        Ok(Some(name))
    }

    /// The pool `w` follows: the one it names (or, naming none, its app's),
    /// adopted if need be, or a new one.
    async fn pool_of(
        &self,
        w: &Workload,
        d: &Declared,
        pools: &Pools,
        mem: &mut Memory,
        pass: &mut Pass,
    ) -> Result<Option<Pool>, Fenced> {
        let spec = &d.spec;
        let (ns, app) = (&spec.namespace, &spec.app);
        let found = match pools.by_name.get(&spec.name) {
            Some(p) => Some(p),
            None if !d.named => pools.of_app(ns, app),
            None => None,
        };
        let refuse = |why: String| (Warning, "MoorPoolRefused", why);
        let refused = match found {
            Some(p) if (&p.namespace, &p.app) != (ns, app) => Some(refuse(format!(
                "pool {} belongs to app {}/{}, not {ns}/{app}: a workload adopts only a pool of its own app; name another pool in moor.io/pool, or leave it out to get one of its own",
                p.name, p.namespace, p.app
            ))),
            Some(p) => match &p.owner {
                Some(o)
                    if (o.kind.as_str(), &o.name) != (w.kind, &w.name)
                        && pools.present.contains(&(o.kind.clone(), ns.clone(), o.name.clone())) =>
                {
                    Some(refuse(format!(
                        "pool {} already follows {} {ns}/{}: one pool follows one workload; give this one another app name",
                        p.name, o.kind, o.name
                    )))
                }
                _ => None,
            },
            None => pools.of_app(ns, app).map(|other| {
                refuse(format!(
                    "app {ns}/{app} already has pool {}, and one app has one pool: name it in moor.io/pool, or delete it (ipamctl pool delete {}) to get pool {}",
                    other.name, other.name, spec.name
                ))
            }),
        };
        if let Some((t, reason, why)) = refused {
            self.say(mem, w, t, reason, &format!("{}: {why}", w.describe()));
            return Ok(None);
        }
        if let Some(p) = found {
            if p.owner == spec.owner {
                return Ok(Some(p.clone()));
            }
            let adopt = self
                .ipam
                .set_pool_owner(&p.name, ns, app, spec.owner.clone());
            return match self.fenced(adopt).await? {
                Ok(p) => {
                    self.say(
                        mem,
                        w,
                        Normal,
                        "MoorPoolAdopted",
                        &format!(
                            "pool {} ({} IPs) follows {} now: it grows and shrinks with it and is deleted with it{}",
                            p.name,
                            p.size(),
                            w.describe(),
                            if spec.owner.as_ref().is_some_and(|o| o.retain) {
                                " unless moor.io/retain"
                            } else {
                                ""
                            }
                        ),
                    );
                    Ok(Some(p))
                }
                Err(e) => {
                    self.say(
                        mem,
                        w,
                        Warning,
                        "MoorPoolRefused",
                        &format!("{}: {e}", w.describe()),
                    );
                    Ok(None)
                }
            };
        }
        let now = self.clock.now_unix();
        match self.fenced(self.ipam.create_pool(spec, now)).await? {
            Ok(p) => {
                let delay = if spec.delay_secs > 0 {
                    format!(
                        "; pods may take them {} s from now (moor.io/whitelist-delay)",
                        spec.delay_secs
                    )
                } else {
                    String::new()
                };
                let bound = if spec.bind.is_empty() {
                    String::new()
                } else {
                    let pods: Vec<String> = spec.bind.iter().map(|p| p.name.clone()).collect();
                    format!("; kept for {} in that order", pods.join(", "))
                };
                self.say(
                    mem,
                    w,
                    Normal,
                    "MoorPoolCreated",
                    &format!(
                        "created the pool {} declares: pool {} of {} IPs on {}: {}{bound}{delay}; published in ConfigMap {}",
                        w.describe(),
                        p.name,
                        p.size(),
                        p.ips.keys().cloned().collect::<Vec<_>>().join(", "),
                        ips_list(&p.all_ips()),
                        configmaps::name(&p.name)
                    ),
                );
                pass.created.push(p.name.clone());
                Ok(Some(p))
            }
            Err(e) => {
                let why = match &e {
                    Error::Conflict(_) | Error::Invalid(_) => e.to_string(),
                    other => format!("{other} (retrying)"),
                };
                // Most refusals name the pool already.
                let pool = format!("pool {}", spec.name);
                let msg = if why.contains(&pool) {
                    format!("{}: {why}", w.describe())
                } else {
                    format!("{}: {pool}: {why}", w.describe())
                };
                self.say(mem, w, Warning, "MoorPoolRefused", &msg);
                Ok(None)
            }
        }
    }

    /// Grows or shrinks `pool` to `d.target`; shrinks only as far as its
    /// bound and in-use IPs allow.
    async fn resize(
        &self,
        w: &Workload,
        d: &Declared,
        pool: Pool,
        mem: &mut Memory,
        pass: &mut Pass,
    ) -> Result<Pool, Fenced> {
        let r = Resize {
            size: d.target,
            delay_secs: d.spec.delay_secs,
            as_far_as_possible: true,
        };
        let now = self.clock.now_unix();
        let from = pool.size();
        let why = format!(
            "to follow {} (moor.io/pool-size {}, {} pods at most)",
            w.describe(),
            d.asked,
            d.pods
        );
        let done = match self
            .fenced(self.ipam.resize_pool_with(&pool.name, &r, now))
            .await?
        {
            Ok(done) => done,
            Err(e) => {
                let msg = format!("pool {} could not be resized {why}: {e}", pool.name);
                self.say(mem, w, Warning, "MoorPoolResizeFailed", &msg);
                return Ok(pool);
            }
        };
        let to = done.pool.size();
        if !done.added.is_empty() {
            let delay = if d.spec.delay_secs > 0 {
                format!(
                    "; pods may take them {} s from now (moor.io/whitelist-delay)",
                    d.spec.delay_secs
                )
            } else {
                String::new()
            };
            let msg = format!(
                "pool {} grew from {from} to {to} IPs {why}: added {}{delay}",
                pool.name,
                ips_list(&done.added)
            );
            self.say(mem, w, Normal, "MoorPoolGrown", &msg);
        }
        if !done.removed.is_empty() {
            let msg = format!(
                "pool {} shrank from {from} to {to} IPs {why}: gave back {}, which cool down for {} s before any pool takes them{}",
                pool.name,
                ips_list(&done.removed),
                self.ipam.cooldown_secs(),
                if to > d.target {
                    format!("; {} more stay until their pods release them", to - d.target)
                } else {
                    String::new()
                }
            );
            self.say(mem, w, Normal, "MoorPoolShrunk", &msg);
        } else if to > d.target {
            let msg = format!(
                "pool {} stays at {to} IPs, above the {} asked {why}: its other IPs are bound or in use (ipamctl binding list --pool {})",
                pool.name, d.target, pool.name
            );
            self.say(mem, w, Normal, "MoorPoolShrinkWaiting", &msg);
        }
        if from != to {
            pass.resized.push(pool.name.clone());
        }
        Ok(done.pool)
    }

    /// Writes the pool's whitelist ConfigMap if it says something else.
    async fn publish(
        &self,
        w: &Workload,
        pool: &Pool,
        mem: &mut Memory,
        pass: &mut Pass,
    ) -> Result<(), Fenced> {
        // A dual-stack pool's whitelist holds both families.
        let mut ips = pool.all_ips();
        match self.ipam.partners(pool).await {
            Ok(p) => ips.extend(p.into_values().map(std::net::IpAddr::V6)),
            Err(e) => {
                // Published on a later pass (nothing is remembered).
                tracing::warn!(pool = %pool.name, error = %e, "whitelist not published: the pool's IPv6 partners could not be read");
                return Ok(());
            }
        }
        let have = (ips.clone(), w.uid.clone());
        if mem.published.get(&pool.name) == Some(&have) {
            return Ok(());
        }
        let wl = Whitelist {
            namespace: pool.namespace.clone(),
            pool: pool.name.clone(),
            ips,
            owner: Owner {
                api_version: w.api_version.to_string(),
                kind: w.kind.to_string(),
                name: w.name.clone(),
                uid: w.uid.clone(),
            },
        };
        match self.fenced(self.configmaps.apply(&wl)).await? {
            Ok(wrote) => {
                mem.published.insert(pool.name.clone(), have);
                mem.said
                    .remove(&format!("{} MoorWhitelistFailed", w.describe()));
                if wrote {
                    pass.published.push(pool.name.clone());
                }
            }
            Err(e) => {
                let msg = format!(
                    "the whitelist of pool {} (ConfigMap {}/{}) could not be written: {e}",
                    pool.name,
                    pool.namespace,
                    configmaps::name(&pool.name)
                );
                self.say(mem, w, Warning, "MoorWhitelistFailed", &msg);
            }
        }
        Ok(())
    }
}
