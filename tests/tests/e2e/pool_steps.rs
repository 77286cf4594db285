//! Issue 12: pools too big for one etcd transaction, on a real etcd with
//! real ipamd and ipamctl binaries.
//! - A pool over 200 ToRs is created, grown, shrunk and deleted through
//!   `ipamctl`; `ipamctl audit` is clean after each.
//! - A pool with 1,000 bindings is deleted while ipamd is stopped in the
//!   middle by the test hook (`MOOR_TEST_STOP_AFTER_COMMITS`, an abort
//!   right after a commit, as kill -9 there); the restarted ipamd finishes
//!   the delete at start, and the store is clean.

use std::net::Ipv4Addr;
use std::process::Output;
use std::sync::Arc;

use moor_e2e::cluster::{Cluster, Layout};
use moor_ipamd::core::{validate, PodRef};
use moor_ipamd::ipam::{Ipam, PoolSpec};
use moor_ipamd::store::{keys, stop, Store, Txn};

const EXTRA_TORS: u32 = 199;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_ok(out: &Output, what: &str) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn assert_clean(c: &Cluster, what: &str) {
    let out = assert_ok(&c.ipamctl("n1", &["audit"]), &format!("audit {what}"));
    assert!(
        out.lines().any(|l| l.starts_with("clean: ")),
        "{what}: {out}"
    );
}

/// ToR records t001..t199 (8 pod IPs each) written straight into the
/// store: no node needs to be on them for pools to be carved from them.
fn define_extra_tors(c: &Cluster) {
    c.with_store(|s| async move {
        let mut t = Txn::default();
        for i in 1..=EXTRA_TORS {
            let (a, b) = (16 + i / 250, i % 250);
            let tor = validate::tor(
                &format!("t{i:03}"),
                &format!("172.{a}.{b}.0/24"),
                &format!("172.{a}.{b}.1"),
                0,
                &[(format!("172.{a}.{b}.10"), format!("172.{a}.{b}.17"))],
                "",
                &[],
            )
            .unwrap();
            t.put(&keys::tor(&tor.name), &tor);
            if t.ops.len() == 90 {
                assert!(s.commit(std::mem::take(&mut t)).await.unwrap());
            }
        }
        assert!(s.commit(t).await.unwrap());
    });
}

#[test]
fn pool_over_200_tors_through_ipamctl() {
    let c = Cluster::new(Layout::new().tor("tor-a", 16).node("n1", "tor-a"));
    define_extra_tors(&c);
    let tors = c.ipamctl_json("n1", &["tor", "list"]);
    assert_eq!(tors.as_array().unwrap().len(), 200, "{tors}");
    c.create_pool("wide", "wide", 400, &[]);
    assert_clean(&c, "after create");
    let carved = c.etcd_list("carved/");
    let wide = carved.iter().filter(|(k, _)| k.ends_with("/wide")).count();
    assert_eq!(wide, 200, "one carved record per ToR: {}", carved.len());
    c.resize_pool("wide", 1000);
    assert_clean(&c, "after grow");
    c.resize_pool("wide", 200);
    assert_clean(&c, "after shrink");
    let (counts, per_tor) = c.pool_counts("wide");
    assert_eq!(counts.total, 200, "{per_tor:?}");
    assert_eq!(per_tor.len(), 200, "one per ToR after the shrink");
    assert_ok(&c.ipamctl("n1", &["pool", "delete", "wide"]), "pool delete");
    assert_clean(&c, "after delete");
    assert!(c
        .etcd_list("carved/")
        .iter()
        .all(|(k, _)| k.ends_with("/_cooling")));
    assert!(c.etcd_list("pools/").is_empty());
}

#[test]
fn pool_with_1000_bindings_deleted_with_ipamd_killed_midway() {
    let c = Cluster::new(Layout::new().tor("tor-a", 16).node("n1", "tor-a"));
    // ToR big (1,000+ pod IPs) and pool `bound`: its 1,000 IPs each kept
    // for a pod, made through the library on the same etcd (the fast way).
    c.with_store(|s| async move {
        let ipam = Ipam::new(Arc::new(s) as Arc<dyn Store>);
        ipam.add_tor("big", "172.30.0.0/22", "172.30.0.1", 0, &[], "")
            .await
            .unwrap();
        let ips: Vec<std::net::IpAddr> = (0..1000u32)
            .map(|n| Ipv4Addr::from(0xac1e_0002 + n).into())
            .collect();
        let bind = (0..1000)
            .map(|n| PodRef {
                namespace: "shop".into(),
                name: format!("bound-{n}"),
                uid: String::new(),
            })
            .collect();
        let spec = PoolSpec {
            name: "bound".into(),
            namespace: "shop".into(),
            app: "bound".into(),
            ips,
            bind,
            ..PoolSpec::default()
        };
        ipam.create_pool(&spec, 0).await.unwrap();
    });
    assert_eq!(c.etcd_list("bindings/").len(), 1000);
    assert_clean(&c, "after the create");

    // ipamd aborts after 12 commits: its start and the first steps of the
    // delete, which takes ~40 (leases and bindings 30 at a time).
    c.stop_ipamd("n1");
    c.start_ipamd_with_env("n1", &[(stop::ENV, "12")]);
    let out = c.ipamctl("n1", &["pool", "delete", "bound"]);
    assert_ne!(out.status.code(), Some(0), "ipamd died under the delete");
    c.kill9_ipamd("n1");
    let pool = c.etcd_list("pools/bound");
    assert_eq!(pool.len(), 1, "the delete was stopped midway");
    assert_eq!(
        pool[0].1["op"]["step"]["kind"], "deleting",
        "{:?}",
        pool[0].1
    );
    let left = c.etcd_list("bindings/").len();
    assert!(left > 0 && left < 1000, "some bindings went: {left} left");

    // The restarted ipamd finishes the delete before it serves.
    c.start_ipamd("n1");
    assert!(c.etcd_list("pools/").is_empty());
    assert!(c.etcd_list("bindings/").is_empty());
    assert!(c.etcd_list("leases/").is_empty());
    assert!(c.etcd_list("apps/").is_empty());
    assert_clean(&c, "after the restart");
    let out = c.ipamctl("n1", &["pool", "show", "bound"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("does not exist"),
        "{}",
        text(&out.stderr)
    );
}
