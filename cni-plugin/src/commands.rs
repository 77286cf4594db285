//! ADD, DEL, CHECK, STATUS and GC: each turns the CNI request into one call
//! to ipamd and ipamd's answer into the CNI result or error.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use moor_proto::pending::{self, PendingDel};
use moor_proto::v1::{AddRequest, AttachmentKey, CheckRequest, DelRequest, GcRequest, PodRef};
use serde_json::Value;
use tracing::{info, warn};

use crate::client::{CallError, Ipamd};
use crate::config::NetConf;
use crate::env::{Attachment, CniArgs};
use crate::error::{code, CniError};
use crate::host_veth;
use crate::result;

/// ADD fails fast when ipamd is down: the runtime retries on code 11.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// DEL gives up on ipamd sooner: it can finish without it.
const DEL_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn add(conf: &NetConf, att: &Attachment, args: &CniArgs) -> Result<Value, CniError> {
    conf.check_pool()?;
    args.check_for_add()?;
    // MOOR_POOL in CNI_ARGS is the pool; the config's is a default that
    // ipamd weighs against what the Kubernetes API says of the pod (without
    // the API, ipamd takes it as it takes MOOR_POOL).
    let req = AddRequest {
        key: Some(key(att)),
        netns: att.netns.clone(),
        pod: Some(pod(args)),
        pool: args.pool.clone().unwrap_or_default(),
        network: conf.name.clone(),
        default_pool: conf.pool.clone().unwrap_or_default(),
    };
    let ipamd = Ipamd::connect(&conf.socket, CONNECT_TIMEOUT, conf.timeout)
        .await
        .map_err(|e| e.into_cni(code::TRY_AGAIN_LATER))?;
    let reply = ipamd
        .add(req)
        .await
        .map_err(|e| e.into_cni(code::TRY_AGAIN_LATER))?;
    info!(
        address = %reply.address, pool = %reply.pool, tor = %reply.tor, sticky = reply.sticky,
        "attached"
    );
    let ours = result::build(&reply, conf.version, &conf.cni_version)?;
    Ok(match &conf.prev_result {
        Some(prev) => result::merge_into_prev(prev, ours, &conf.cni_version),
        None => ours,
    })
}

/// DEL through ipamd; when ipamd cannot be reached, delete the host veth here
/// and leave a pending record that ipamd replays on start. An error ipamd
/// itself returns is passed on: the runtime retries DEL.
pub async fn del(conf: &NetConf, att: &Attachment, args: &CniArgs) -> Result<(), CniError> {
    let req = DelRequest {
        key: Some(key(att)),
        netns: att.netns.clone(),
        pod: Some(pod(args)),
        network: conf.name.clone(),
    };
    let outcome = match Ipamd::connect(&conf.socket, DEL_CONNECT_TIMEOUT, conf.timeout).await {
        Ok(ipamd) => ipamd.del(req).await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(reply) => {
            info!(
                released = reply.released, address = %reply.address,
                binding_kept = reply.binding_kept, "detached"
            );
            Ok(())
        }
        Err(CallError::Failed(e)) => Err(e),
        Err(CallError::Unreachable(why)) => del_without_ipamd(conf, att, args, &why).await,
    }
}

async fn del_without_ipamd(
    conf: &NetConf,
    att: &Attachment,
    args: &CniArgs,
    why: &str,
) -> Result<(), CniError> {
    warn!(
        "{why}; deleting the host veth here and leaving the DEL for ipamd in {}",
        conf.pending_dir.display()
    );
    let rec = PendingDel {
        container_id: att.container_id.clone(),
        ifname: att.ifname.clone(),
        netns: att.netns.clone(),
        pod_namespace: args.pod_namespace.clone(),
        pod_name: args.pod_name.clone(),
        network: conf.name.clone(),
        written_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        rollback: false,
    };
    // Record first: if we are killed after it, ipamd still releases the IP.
    let written = pending::write(&conf.pending_dir, &rec);
    host_veth::delete(&moor_proto::host_ifname(&att.container_id, &att.ifname)).await;
    match written {
        Ok(path) => {
            info!(record = %path.display(), "pending DEL recorded");
            Ok(())
        }
        // Without the record the IP would stay allocated until GC: better
        // that the runtime retries DEL (by then ipamd may be back).
        Err(e) => Err(CniError::new(
            code::TRY_AGAIN_LATER,
            "moor: ipamd is not reachable and the DEL could not be recorded",
            format!(
                "{why}; writing the pending DEL record into {} failed: {e}",
                conf.pending_dir.display()
            ),
        )),
    }
}

pub async fn check(conf: &NetConf, att: &Attachment, args: &CniArgs) -> Result<(), CniError> {
    if !conf.version.has_check() {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("CHECK is not part of CNI version {}", conf.cni_version),
            "CHECK needs cniVersion 0.4.0 or later",
        ));
    }
    let Some(prev) = &conf.prev_result else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "CHECK without prevResult",
            format!(
                "CNI {} requires the runtime to pass the ADD result as prevResult on CHECK",
                conf.cni_version
            ),
        ));
    };
    let req = CheckRequest {
        key: Some(key(att)),
        netns: att.netns.clone(),
        pod: Some(pod(args)),
        address: result::check_address(prev, &att.ifname),
        network: conf.name.clone(),
    };
    let ipamd = Ipamd::connect(&conf.socket, CONNECT_TIMEOUT, conf.timeout)
        .await
        .map_err(|e| e.into_cni(code::TRY_AGAIN_LATER))?;
    ipamd
        .check(req)
        .await
        .map_err(|e| e.into_cni(code::TRY_AGAIN_LATER))
}

/// STATUS (1.1.0): ready to serve ADD, or code 50 saying why not.
pub async fn status(conf: &NetConf) -> Result<(), CniError> {
    needs_1_1(conf, "STATUS")?;
    let ipamd = Ipamd::connect(&conf.socket, CONNECT_TIMEOUT, conf.timeout)
        .await
        .map_err(|e| e.into_cni(code::NOT_AVAILABLE))?;
    let reply = ipamd
        .status()
        .await
        .map_err(|e| e.into_cni(code::NOT_AVAILABLE))?;
    if reply.ready {
        info!(node = %reply.node, tor = %reply.tor, free = reply.free, "ipamd ready");
        return Ok(());
    }
    let reason = if reply.reason.is_empty() {
        "no reason given".to_string()
    } else {
        reply.reason
    };
    Err(CniError::new(
        code::NOT_AVAILABLE,
        "moor: ipamd is not ready",
        format!(
            "ipamd at {} (node {:?}, ToR {:?}) is not ready: {reason}",
            conf.socket.display(),
            reply.node,
            reply.tor
        ),
    ))
}

/// GC (1.1.0): ipamd releases every attachment of this network not listed.
pub async fn gc(conf: &NetConf) -> Result<(), CniError> {
    needs_1_1(conf, "GC")?;
    // Without the list ipamd would see every attachment as stale: refuse.
    let Some(valid) = &conf.valid_attachments else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "GC without cni.dev/valid-attachments",
            "GC needs the list of still valid attachments in cni.dev/valid-attachments",
        ));
    };
    let req = GcRequest {
        network: conf.name.clone(),
        valid: valid
            .iter()
            .map(|(container_id, ifname)| AttachmentKey {
                container_id: container_id.clone(),
                ifname: ifname.clone(),
            })
            .collect(),
    };
    let ipamd = Ipamd::connect(&conf.socket, CONNECT_TIMEOUT, conf.timeout)
        .await
        .map_err(|e| e.into_cni(code::TRY_AGAIN_LATER))?;
    let reply = ipamd
        .gc(req)
        .await
        .map_err(|e| e.into_cni(code::TRY_AGAIN_LATER))?;
    info!(released = ?reply.released, "gc done");
    Ok(())
}

fn needs_1_1(conf: &NetConf, what: &str) -> Result<(), CniError> {
    if conf.version.has_status_and_gc() {
        return Ok(());
    }
    Err(CniError::new(
        code::INCOMPATIBLE_VERSION,
        format!("{what} is not part of CNI version {}", conf.cni_version),
        format!("{what} needs cniVersion 1.1.0"),
    ))
}

fn key(att: &Attachment) -> AttachmentKey {
    AttachmentKey {
        container_id: att.container_id.clone(),
        ifname: att.ifname.clone(),
    }
}

fn pod(args: &CniArgs) -> PodRef {
    PodRef {
        namespace: args.pod_namespace.clone(),
        name: args.pod_name.clone(),
        uid: args.pod_uid.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(v: Value) -> NetConf {
        NetConf::from_json(v.as_object().unwrap()).unwrap()
    }

    fn att() -> Attachment {
        Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: "/ns".into(),
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// Version and input checks come before any connection attempt.
    #[test]
    fn version_gates_and_missing_inputs() {
        let sock = "/nonexistent/moor-test.sock";
        let cases: Vec<(&str, Value, u32, &str)> = vec![
            (
                "status",
                json!({"cniVersion": "1.0.0", "name": "n", "socket": sock}),
                1,
                "1.0.0",
            ),
            (
                "gc",
                json!({"cniVersion": "0.4.0", "name": "n", "socket": sock}),
                1,
                "0.4.0",
            ),
            (
                "gc",
                json!({"cniVersion": "1.1.0", "name": "n", "socket": sock}),
                7,
                "valid-attachments",
            ),
            (
                "check",
                json!({"cniVersion": "0.3.1", "name": "n", "socket": sock}),
                1,
                "0.3.1",
            ),
            (
                "check",
                json!({"cniVersion": "1.0.0", "name": "n", "socket": sock}),
                7,
                "prevResult",
            ),
        ];
        for (op, c, want, needle) in cases {
            let c = conf(c);
            let e = block_on(async {
                match op {
                    "status" => status(&c).await,
                    "gc" => gc(&c).await,
                    _ => check(&c, &att(), &CniArgs::default()).await,
                }
            })
            .expect_err(op);
            assert_eq!(e.code, want, "{op}: {e}");
            assert!(e.to_string().contains(needle), "{op}: {e}");
        }
    }

    #[test]
    fn unreachable_ipamd_codes() {
        let sock = "/nonexistent/moor-test.sock";
        let c = conf(json!({
            "cniVersion": "1.1.0", "name": "n", "socket": sock,
            "cni.dev/valid-attachments": [],
            "prevResult": {"ips": [{"address": "10.0.0.2/24"}]},
        }));
        let e = block_on(status(&c)).unwrap_err();
        assert_eq!(e.code, 50);
        assert!(e.details.contains(sock), "{e}");
        assert_eq!(block_on(gc(&c)).unwrap_err().code, 11);
        assert_eq!(
            block_on(check(&c, &att(), &CniArgs::default()))
                .unwrap_err()
                .code,
            11
        );
        let e = block_on(add(&c, &att(), &CniArgs::default())).unwrap_err();
        assert_eq!(e.code, 11);
        assert!(
            e.details.contains(sock) && e.details.contains("not running"),
            "{e}"
        );
    }

    #[test]
    fn del_without_ipamd_fails_only_if_the_record_cannot_be_written() {
        // A pending dir under a regular file cannot be created.
        let file = std::env::temp_dir().join(format!("moor-del-blocker-{}", std::process::id()));
        std::fs::write(&file, b"").unwrap();
        let c = conf(json!({
            "cniVersion": "1.0.0", "name": "n", "socket": "/nonexistent/moor-test.sock",
            "pendingDir": file.join("pending").to_str().unwrap(),
        }));
        // A container id no real link derives from: this may run as root.
        let a = Attachment {
            container_id: format!("moor-unit-{}", std::process::id()),
            ..att()
        };
        let e = block_on(del(&c, &a, &CniArgs::default())).unwrap_err();
        assert_eq!(e.code, 11);
        assert!(e.details.contains("pending"), "{e}");
        std::fs::remove_file(&file).unwrap();
    }
}
