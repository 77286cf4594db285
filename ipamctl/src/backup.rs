//! `ipamctl backup FILE` and `ipamctl restore FILE`, and the backup file.
//!
//! The file is JSON lines, so it can be read (and diffed) by eye:
//!
//! ```text
//! {"moor_backup":1,"created_unix":...,"created":"2026-12-07T01:02:03Z","ipamctl_version":"0.1.0"}
//! {"key":"bindings/default/db-0","value":"{...the record as stored...}"}
//! ...
//! {"end":{"records":N,"schema_version":4,"revision":R,"moor_version":"0.1.0","store":"etcd:...","sha256":"..."}}
//! ```
//!
//! `sha256` covers every byte before the end line, so a truncated or
//! edited file is refused before anything is sent; it is also the backup's
//! id, which lets a restore killed midway be finished by restoring the same
//! file again. A backup is written to a temporary file next to FILE,
//! fsynced and renamed over it: FILE is the old backup or the new one,
//! never half of one.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use moor_proto::v1::admin_client::AdminClient;
use moor_proto::v1::{
    BackupRequest, BackupSummary, RestoreChunk, RestoreHeader, RestoreReply, StoreRecord,
};
use ring::digest::{Context as Digest, SHA256};
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use crate::output::Format;

/// The version of the file format.
const FORMAT: u32 = 1;
/// Records per restore message at most.
const BATCH: usize = 500;
/// Bytes of keys and values per restore message at most: ipamd, like any
/// tonic server, takes messages of up to 4 MiB (a pool record of many IPs
/// is big; 500 of them would not fit).
const BATCH_BYTES: usize = 1024 * 1024;

#[derive(Debug, Serialize, Deserialize)]
struct Head {
    moor_backup: u32,
    created_unix: u64,
    created: String,
    ipamctl_version: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Line {
    key: String,
    value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    pub records: u64,
    pub schema_version: u32,
    pub revision: u64,
    pub moor_version: String,
    pub store: String,
    pub sha256: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct EndLine {
    end: End,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a backup file: the head line, then records, then [`Writer::end`].
pub struct Writer<W: Write> {
    out: W,
    digest: Digest,
    records: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W, now_unix: u64) -> io::Result<Self> {
        let mut digest = Digest::new(&SHA256);
        let head = Head {
            moor_backup: FORMAT,
            created_unix: now_unix,
            created: moor_proto::rfc3339_utc(now_unix),
            ipamctl_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let line = format!("{}\n", serde_json::to_string(&head)?);
        digest.update(line.as_bytes());
        out.write_all(line.as_bytes())?;
        Ok(Self {
            out,
            digest,
            records: 0,
        })
    }

    pub fn record(&mut self, key: String, value: Vec<u8>) -> anyhow::Result<()> {
        let value = String::from_utf8(value)
            .map_err(|_| anyhow!("store record {key} is not text: ipamd sent something else than moor's JSON records"))?;
        let line = format!("{}\n", serde_json::to_string(&Line { key, value })?);
        self.digest.update(line.as_bytes());
        self.out.write_all(line.as_bytes())?;
        self.records += 1;
        Ok(())
    }

    /// Writes the end line from ipamd's summary; the writer's own count
    /// must agree with it.
    pub fn end(mut self, s: &BackupSummary) -> anyhow::Result<(W, End)> {
        if s.records != self.records {
            bail!(
                "ipamd says it sent {} records and {} arrived: run the backup again",
                s.records,
                self.records
            );
        }
        let end = End {
            records: self.records,
            schema_version: s.schema_version,
            revision: s.revision,
            moor_version: s.moor_version.clone(),
            store: s.store.clone(),
            sha256: hex(self.digest.finish().as_ref()),
        };
        let line = format!(
            "{}\n",
            serde_json::to_string(&EndLine { end: end.clone() })?
        );
        self.out.write_all(line.as_bytes())?;
        Ok((self.out, end))
    }
}

/// Reads a backup file's records in order, checking as it goes; after the
/// last record, [`Reader::end`] says whether the file is whole.
pub struct Reader<R: BufRead> {
    input: R,
    digest: Digest,
    records: u64,
    end: Option<End>,
    path: String,
}

impl<R: BufRead> Reader<R> {
    pub fn new(mut input: R, path: &str) -> anyhow::Result<Self> {
        let mut digest = Digest::new(&SHA256);
        let mut line = String::new();
        input.read_line(&mut line)?;
        let head: Head = serde_json::from_str(&line).map_err(|_| {
            anyhow!("{path} is not a moor backup (its first line is not a backup header): give a file `ipamctl backup` wrote")
        })?;
        if head.moor_backup != FORMAT {
            bail!(
                "{path} is a moor backup of format {}, and this ipamctl reads format {FORMAT}: use an ipamctl of the release that wrote it",
                head.moor_backup
            );
        }
        digest.update(line.as_bytes());
        Ok(Self {
            input,
            digest,
            records: 0,
            end: None,
            path: path.to_string(),
        })
    }

    /// The next record, or None after the end line.
    pub fn next_record(&mut self) -> anyhow::Result<Option<(String, Vec<u8>)>> {
        let path = &self.path;
        if self.end.is_some() {
            return Ok(None);
        }
        let mut line = String::new();
        if self.input.read_line(&mut line)? == 0 || !line.ends_with('\n') {
            bail!("{path} is truncated (no end line after {} records): it is not a whole backup; use another copy", self.records);
        }
        if let Ok(e) = serde_json::from_str::<EndLine>(&line) {
            let sum = hex(std::mem::replace(&mut self.digest, Digest::new(&SHA256))
                .finish()
                .as_ref());
            if sum != e.end.sha256 {
                bail!("{path} fails its checksum (sha256 {sum}, the file says {}): it was edited or damaged; use another copy", e.end.sha256);
            }
            if e.end.records != self.records {
                bail!("{path} holds {} records and its end line says {}: it was edited; use another copy", self.records, e.end.records);
            }
            let mut rest = String::new();
            if self.input.read_line(&mut rest)? != 0 {
                bail!("{path} has data after its end line: it was edited; use another copy");
            }
            self.end = Some(e.end);
            return Ok(None);
        }
        let rec: Line = serde_json::from_str(&line).map_err(|err| {
            anyhow!("{path} line {} is not a backup record ({err}): the file was edited or damaged; use another copy", self.records + 2)
        })?;
        self.digest.update(line.as_bytes());
        self.records += 1;
        Ok(Some((rec.key, rec.value.into_bytes())))
    }

    /// The end line, once every record was read.
    pub fn end(&self) -> Option<&End> {
        self.end.as_ref()
    }
}

fn open(path: &Path) -> anyhow::Result<Reader<BufReader<File>>> {
    let shown = path.display().to_string();
    let f = File::open(path).with_context(|| format!("cannot read backup file {shown}"))?;
    Reader::new(BufReader::new(f), &shown)
}

/// Reads the whole file, checking it: its end line, or why it is refused.
pub fn verify(path: &Path) -> anyhow::Result<End> {
    let mut r = open(path)?;
    while r.next_record()?.is_some() {}
    Ok(r.end().cloned().expect("read to the end"))
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `ipamctl backup FILE`: streams the snapshot into a temporary file next
/// to FILE, fsyncs it, renames it over FILE and fsyncs the directory.
pub async fn backup(client: &mut AdminClient<Channel>, path: &Path) -> anyhow::Result<End> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("backup FILE {} names no file", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = write_to(client, &tmp).await;
    let end = match written {
        Ok(end) => end,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot move the backup into place at {}", path.display()))?;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync directory {}", dir.display()))?;
    Ok(end)
}

async fn write_to(client: &mut AdminClient<Channel>, tmp: &Path) -> anyhow::Result<End> {
    let file = File::create(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut w = Writer::new(BufWriter::new(file), now_unix())?;
    let mut stream = client.backup(BackupRequest {}).await?.into_inner();
    let mut summary = None;
    while let Some(chunk) = stream.message().await? {
        for r in chunk.records {
            w.record(r.key, r.value)?;
        }
        if chunk.summary.is_some() {
            summary = chunk.summary;
        }
    }
    let summary = summary.ok_or_else(|| {
        anyhow!("ipamd's backup stream ended without its summary: run the backup again")
    })?;
    let (out, end) = w.end(&summary)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(end)
}

/// `ipamctl restore FILE`, once [`verify`] passed: the header, the records
/// in the file's order, and `done` (sent only if the file read the same
/// again, end line and checksum).
pub async fn restore(
    client: &mut AdminClient<Channel>,
    path: &Path,
    end: &End,
) -> anyhow::Result<RestoreReply> {
    let mut reader = open(path)?;
    let header = RestoreHeader {
        backup_id: end.sha256.clone(),
        schema_version: end.schema_version,
        records: end.records,
        moor_version: end.moor_version.clone(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<RestoreChunk>(2);
    let feeder = async move {
        let mut chunk = RestoreChunk {
            header: Some(header),
            ..RestoreChunk::default()
        };
        let mut bytes = 0;
        loop {
            match reader.next_record()? {
                Some((key, value)) => {
                    bytes += key.len() + value.len();
                    chunk.records.push(StoreRecord { key, value });
                }
                None => {
                    chunk.done = true;
                    let _ = tx.send(chunk).await;
                    return Ok::<_, anyhow::Error>(());
                }
            }
            if chunk.records.len() == BATCH || bytes >= BATCH_BYTES {
                bytes = 0;
                if tx.send(std::mem::take(&mut chunk)).await.is_err() {
                    return Ok(());
                }
            }
        }
    };
    let feeder = tokio::spawn(feeder);
    let reply = client
        .restore(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    match reply {
        // ipamd refused (or failed): its reason, not the feeder's.
        Err(status) => {
            feeder.abort();
            Err(status.into())
        }
        // A file that changed since it was checked: ipamd never got `done`
        // and answered an error above; so this is the file read the same.
        Ok(reply) => {
            feeder.await??;
            Ok(reply.into_inner())
        }
    }
}

/// What `backup` prints.
pub fn backed_up(end: &End, file: &Path, format: Format) -> String {
    if format == Format::Json {
        let mut v = serde_json::to_value(end).expect("serializes");
        v["file"] = file.display().to_string().into();
        return format!("{v:#}\n");
    }
    format!(
        "backed up {} records of schema version {} at store revision {} ({}) to {}\nsha256 {}\n",
        end.records,
        end.schema_version,
        end.revision,
        end.store,
        file.display(),
        end.sha256
    )
}

/// What `restore` prints.
pub fn restored(r: &RestoreReply, end: &End, file: &Path, format: Format) -> String {
    if format == Format::Json {
        let v = serde_json::json!({
            "file": file.display().to_string(),
            "records": r.records,
            "resumed": r.resumed,
            "backup_schema_version": end.schema_version,
            "schema_version": r.schema_version,
            "sha256": end.sha256,
        });
        return format!("{v:#}\n");
    }
    let mut out = format!(
        "restored {} records from {}{}\n",
        r.records,
        file.display(),
        if r.resumed {
            " (finished an interrupted restore of it)"
        } else {
            ""
        }
    );
    if r.schema_version != end.schema_version {
        out.push_str(&format!(
            "migrated from schema version {} to {}\n",
            end.schema_version, r.schema_version
        ));
    }
    out.push_str("check it: ipamctl audit\n");
    out
}

#[cfg(test)]
#[path = "backup_tests.rs"]
mod tests;
