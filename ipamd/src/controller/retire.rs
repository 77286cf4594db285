//! Pools whose workload let go of them: deleted once the workload is gone
//! and none of their IPs is in use (its ConfigMap first: the workload owns
//! it, but an orphaning delete leaves it behind), unless `moor.io/retain`;
//! or, when the workload still exists but no longer declares them, left as
//! pools made by hand, their ConfigMap deleted first.

use std::collections::HashMap;

use tracing::info;

use crate::core::{Pool, PoolOwner};
use crate::error::Error;
use crate::kubernetes::events::EventType::Normal;
use crate::kubernetes::events::Involved;

use super::pools::{DeclaredPools, Fenced, Memory, Pass, Pools};

/// (kind, namespace, name) of a workload.
pub(super) type WorkloadKey = (String, String, String);

fn involved(p: &Pool, o: &PoolOwner) -> Involved {
    Involved {
        api_version: if o.kind == "Job" {
            "batch/v1"
        } else {
            "apps/v1"
        }
        .to_string(),
        kind: o.kind.clone(),
        namespace: p.namespace.clone(),
        name: o.name.clone(),
        uid: o.uid.clone(),
    }
}

impl DeclaredPools {
    /// `following`: the pool each workload of the caches follows now (None:
    /// it declares none; absent: its annotations are wrong or its pool was
    /// refused, so it is left alone).
    pub(super) async fn retire(
        &self,
        following: &HashMap<WorkloadKey, Option<String>>,
        pools: &Pools,
        mem: &mut Memory,
        pass: &mut Pass,
    ) -> Result<(), Fenced> {
        for p in pools.by_name.values() {
            let Some(o) = &p.owner else {
                continue;
            };
            let key = (o.kind.clone(), p.namespace.clone(), o.name.clone());
            if pools.present.contains(&key) {
                match following.get(&key) {
                    Some(Some(name)) if *name == p.name => {}
                    None => {}
                    Some(_) => self.unfollow(p, o, mem).await?,
                }
            } else if self.workloads.ready(&o.kind) {
                // Gone (the cache of its kind is complete, so absence is
                // deletion, not a list still under way).
                self.delete_gone(p, o, mem, pass).await?;
            }
        }
        Ok(())
    }

    /// Logs `message` once per (pool, topic).
    fn note(&self, mem: &mut Memory, pool: &str, topic: &str, message: String) {
        let key = format!("pool {pool} {topic}");
        if mem.said.get(&key) != Some(&message) {
            info!(pool, "{message}");
            mem.said.insert(key, message);
        }
    }

    async fn delete_gone(
        &self,
        p: &Pool,
        o: &PoolOwner,
        mem: &mut Memory,
        pass: &mut Pass,
    ) -> Result<(), Fenced> {
        let what = format!("{} {}/{}", o.kind, p.namespace, o.name);
        if o.retain {
            let msg = format!("{what} is gone; pool {} stays (moor.io/retain: \"true\"): delete it with `ipamctl pool delete {}`", p.name, p.name);
            self.note(mem, &p.name, "retained", msg);
            return Ok(());
        }
        let leases = match self.ipam.leases(&p.name).await {
            Ok(l) => l,
            Err(_) => return Ok(()), // the next pass reads again
        };
        let in_use: Vec<String> = leases
            .iter()
            .filter_map(|l| {
                l.attachment
                    .as_ref()
                    .map(|a| format!("{} ({})", l.ip, a.pod))
            })
            .collect();
        if !in_use.is_empty() {
            let msg = format!(
                "{what} is gone; pool {} is deleted once none of its IPs is in use: {} still are",
                p.name,
                in_use.join(", ")
            );
            self.note(mem, &p.name, "waiting", msg);
            return Ok(());
        }
        // The ConfigMap before the pool: the workload's deletion takes it
        // along only while it still owns it (an orphaning delete strips the
        // reference), and a whitelist that outlives its pool would trust
        // IPs another app gets after the cool-down.
        if let Err(e) = self
            .fenced(self.configmaps.delete(&p.namespace, &p.name))
            .await?
        {
            self.note(
                mem,
                &p.name,
                "failed",
                format!(
                    "{what} is gone; deleting pool {}'s ConfigMap failed: {e} (retrying before the pool is deleted)",
                    p.name
                ),
            );
            return Ok(());
        }
        let now = self.clock.now_unix();
        match self.fenced(self.ipam.delete_pool(&p.name, now)).await? {
            Ok(gone) => {
                let bound = leases.iter().filter(|l| l.binding.is_some()).count();
                let msg = format!(
                    "{what} is gone and none of pool {}'s IPs is in use: deleted the pool{}; its {} IPs ({}) cool down for {} s before any pool takes them",
                    gone.name,
                    if bound > 0 {
                        format!(" and the {bound} IPs kept for its pods")
                    } else {
                        String::new()
                    },
                    gone.size(),
                    gone.all_ips()
                        .iter()
                        .map(|ip| ip.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    self.ipam.cooldown_secs()
                );
                info!(pool = %gone.name, "{msg}");
                self.event(&involved(p, o), Normal, "MoorPoolDeleted", &msg);
                mem.said
                    .retain(|k, _| !k.starts_with(&format!("pool {} ", p.name)));
                mem.published.remove(&p.name);
                pass.deleted.push(gone.name);
            }
            // An ADD got in first, or someone deleted it meanwhile: the
            // next pass sees.
            Err(Error::Conflict(m)) | Err(Error::NotFound(m)) => {
                self.note(
                    mem,
                    &p.name,
                    "waiting",
                    format!("{what} is gone; pool {}: {m}", p.name),
                );
            }
            Err(e) => {
                self.note(
                    mem,
                    &p.name,
                    "failed",
                    format!(
                        "{what} is gone; deleting pool {} failed: {e} (retrying)",
                        p.name
                    ),
                );
            }
        }
        Ok(())
    }

    /// The workload exists but declares no pool (or another) now: the pool
    /// stays, as one made by hand, and its ConfigMap goes.
    async fn unfollow(&self, p: &Pool, o: &PoolOwner, mem: &mut Memory) -> Result<(), Fenced> {
        let what = format!("{} {}/{}", o.kind, p.namespace, o.name);
        // The ConfigMap first: once the pool has no owner no pass looks at
        // it again, and a whitelist left behind would keep trusting IPs the
        // pool may give back later.
        let deleted = match self
            .fenced(self.configmaps.delete(&p.namespace, &p.name))
            .await?
        {
            Ok(d) => d,
            Err(e) => {
                self.note(
                    mem,
                    &p.name,
                    "failed",
                    format!(
                        "pool {} no longer declared by {what}: deleting its ConfigMap failed: {e} (retrying)",
                        p.name
                    ),
                );
                return Ok(());
            }
        };
        mem.published.remove(&p.name);
        let release = self
            .ipam
            .set_pool_owner(&p.name, &p.namespace, &p.app, None);
        if let Err(e) = self.fenced(release).await? {
            self.note(
                mem,
                &p.name,
                "failed",
                format!(
                    "pool {} no longer declared by {what}: {e} (retrying)",
                    p.name
                ),
            );
            return Ok(());
        }
        let msg = format!(
            "pool {} no longer follows {what}: its annotations no longer declare it; the pool stays as one made by hand (ipamctl pool delete {} deletes it){}",
            p.name,
            p.name,
            if deleted {
                format!(", its ConfigMap {} is deleted", crate::kubernetes::configmaps::name(&p.name))
            } else {
                String::new()
            }
        );
        info!(pool = %p.name, "{msg}");
        self.event(&involved(p, o), Normal, "MoorPoolUnfollowed", &msg);
        Ok(())
    }
}
