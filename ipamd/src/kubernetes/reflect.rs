//! The one way moor caches a kind of object: a kube-runtime reflector fed
//! by a task of its own for as long as ipamd runs, trimmed of what moor
//! never reads before it is cached, retrying a failed watch with backoff
//! while the cache keeps serving what it has.

use std::fmt::Debug;

use futures::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::warn;

/// A reflector of `api` under `cfg`; every object is cached without its
/// managed fields (most of an object's metadata, and moor reads none of
/// them) and after `trim` (what else its caller never reads); `changed`, when given, counts
/// every watch event, for loops to wake on. `what` names the watch in logs.
pub(super) fn reflect<K>(
    api: Api<K>,
    cfg: watcher::Config,
    what: &'static str,
    mut trim: impl FnMut(&mut K) + Send + 'static,
    changed: Option<watch::Sender<u64>>,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, cfg)
        .default_backoff()
        .modify(move |o| {
            o.meta_mut().managed_fields = None;
            trim(o)
        })
        .reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        // Up once the first list is in; down on a failed watch, up again at
        // the next event (a watch resumed from its last version relists
        // nothing, so no InitDone comes).
        let (mut listed, mut up) = (false, false);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) => {
                    listed |= matches!(ev, watcher::Event::InitDone);
                    if listed && !up {
                        up = true;
                        crate::metrics::global().kube_cache(what, true);
                    }
                    if let Some(c) = &changed {
                        c.send_modify(|n| *n += 1);
                    }
                }
                Err(e) => {
                    up = false;
                    crate::metrics::global().kube_cache(what, false);
                    warn!(what, error = %e, "Kubernetes watch failed; retrying with backoff (the cache keeps serving)")
                }
            }
        }
    });
    reader
}
