//! Schema 4 -> 5: on etcd, an ADD writes no attachment index entry
//! (`attachments/<node>/<container>/<ifname>`); a node finds its
//! attachments among the leases of its ToR (`ipam::find`). No record is
//! rewritten here: entries an ipamd of schema 4 wrote stay valid, and each
//! node's ipamd drops its own at its first start on schema 5, once that
//! node's attachments are served by it alone (`Ipam::drop_index_of`). The
//! version bump is what matters: an ipamd of schema 4 would look for the
//! index entry of an attachment made since, find none, and take the pod
//! for gone, so it refuses the store instead.
//!
//! With the embedded store (redb) nothing changes: it keeps the index.

use futures::future::BoxFuture;

use super::{Store, StoreError};

/// The migration, as `schema::MIGRATIONS` runs it: nothing to rewrite.
pub fn run(_store: &dyn Store) -> BoxFuture<'_, Result<(), StoreError>> {
    Box::pin(async { Ok(()) })
}
