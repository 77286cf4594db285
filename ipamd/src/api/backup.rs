//! `Admin.Backup` and `Admin.Restore`: the wire side of `ipam/backup.rs`.
//!
//! While this ipamd restores, its `Cni` service refuses ADDs with "try
//! again later" (kubelet retries): a half-restored store may lack records
//! an ADD must see. Other ipamds on the same etcd are kept safe by the
//! restore order (pools appear last, complete); see `ipam/backup.rs`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::{Stream, StreamExt};
use moor_proto::v1;
use tonic::{Status, Streaming};

use crate::error::Error;
use crate::ipam::backup::{Part, RestoreHeader};
use crate::node::Node;

use super::status;

/// Whether this ipamd is restoring its store: shared by the `Admin` and
/// `Cni` services.
#[derive(Debug, Default, Clone)]
pub struct Restoring(Arc<AtomicBool>);

impl Restoring {
    pub fn now(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// The refusal of an ADD while a restore runs, or None.
    pub fn refuse_add(&self) -> Option<Error> {
        self.now().then(|| {
            Error::unavailable(
                "ipamd is restoring its store (ipamctl restore): ADD waits until the restore ends; retry",
            )
        })
    }
}

/// Clears the flag however the restore ends (error, client gone).
struct Running(Restoring);

impl Drop for Running {
    fn drop(&mut self) {
        (self.0).0.store(false, Ordering::Release);
    }
}

pub type BackupStream =
    std::pin::Pin<Box<dyn Stream<Item = std::result::Result<v1::BackupChunk, Status>> + Send>>;

pub fn backup(node: &Node) -> BackupStream {
    let store = node.ipam.store().describe();
    Box::pin(node.ipam.backup().map(move |part| {
        Ok(match part.map_err(|e| status(&e))? {
            Part::Records(entries) => v1::BackupChunk {
                records: entries
                    .into_iter()
                    .map(|e| v1::StoreRecord {
                        key: e.key,
                        value: e.value,
                    })
                    .collect(),
                summary: None,
            },
            Part::End(s) => v1::BackupChunk {
                records: vec![],
                summary: Some(v1::BackupSummary {
                    records: s.records,
                    schema_version: s.schema_version,
                    revision: s.revision,
                    moor_version: env!("CARGO_PKG_VERSION").to_string(),
                    store: store.clone(),
                }),
            },
        })
    }))
}

pub async fn restore(
    node: &Node,
    restoring: &Restoring,
    mut chunks: Streaming<v1::RestoreChunk>,
) -> std::result::Result<v1::RestoreReply, Status> {
    if restoring.0.swap(true, Ordering::AcqRel) {
        return Err(status(&Error::Conflict(
            "a restore is already running on this ipamd: wait for it to end".into(),
        )));
    }
    let _running = Running(restoring.clone());
    let first = chunks
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("restore: no message was sent"))?;
    let mut first = first;
    let Some(h) = first.header.take() else {
        return Err(Status::invalid_argument(
            "restore: the first message must carry the header (use ipamctl restore)",
        ));
    };
    let header = RestoreHeader {
        backup_id: h.backup_id,
        schema_version: h.schema_version,
        records: h.records,
    };
    let mut r = node
        .ipam
        .restore_begin(header, node.clock.now_unix())
        .await
        .map_err(|e| status(&e))?;
    let mut chunk = Some(first);
    loop {
        let Some(c) = chunk.take() else {
            return Err(Status::aborted(
                "restore: the stream ended before the last message: the store keeps the restore marker; run the same ipamctl restore again to finish",
            ));
        };
        let records = c.records.into_iter().map(|r| (r.key, r.value)).collect();
        r.records(records).await.map_err(|e| status(&e))?;
        if c.done {
            break;
        }
        chunk = chunks.next().await.transpose()?;
    }
    let done = r.finish().await.map_err(|e| status(&e))?;
    Ok(v1::RestoreReply {
        records: done.records,
        resumed: done.resumed,
        schema_version: done.schema_version,
    })
}
