//! The elector and the pools loop against testkit's fake API server, in
//! process, with a lease of 3 s renewed every 1 s.

use std::sync::Arc;
use std::time::Duration;

use moor_testkit::kubeapi::{objects, FakeApi, Resource};
use moor_testkit::TempDir;
use tokio::time::Instant;

use super::*;
use crate::clock::SystemClock;
use crate::kubernetes::lease::LeaseApi;

const NS: &str = "moor-system";
const LEASE: &str = "moor-controller";

async fn client(api: &FakeApi) -> kube::Client {
    let dir = TempDir::new("controller");
    crate::kubernetes::client(Some(&api.write_kubeconfig(dir.path())))
        .await
        .unwrap()
        .unwrap()
}

fn lease_config(identity: &str) -> LeaseConfig {
    LeaseConfig {
        namespace: NS.into(),
        name: LEASE.into(),
        identity: identity.into(),
        duration: Duration::from_secs(3),
        renew_every: Duration::from_secs(1),
    }
}

async fn elector(api: &FakeApi, identity: &str) -> Elector {
    let cfg = lease_config(identity);
    let lease = LeaseApi::new(client(api).await, NS, LEASE, cfg.request_timeout());
    Elector::new(cfg, lease, Arc::new(SystemClock), Leadership::new())
}

fn fake_api() -> FakeApi {
    let api = FakeApi::start();
    api.create(objects::namespace(NS));
    api
}

fn holder(api: &FakeApi) -> (String, i64) {
    let l = api
        .get(Resource::Leases, NS, LEASE)
        .expect("the Lease exists");
    (
        l["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        l["spec"]["leaseTransitions"].as_i64().unwrap_or(-1),
    )
}

#[tokio::test]
async fn one_holder_and_a_takeover_only_after_the_lease_ran_out() {
    let api = fake_api();
    let mut a = elector(&api, "a").await;
    let mut b = elector(&api, "b").await;
    assert_eq!(a.step().await, Step::Acquired);
    assert!(a.leadership().is_leader());
    assert_eq!(holder(&api), ("a".into(), 0));
    let l = api.get(Resource::Leases, NS, LEASE).unwrap();
    assert_eq!(l["spec"]["leaseDurationSeconds"], 3);
    assert!(l["spec"]["acquireTime"].is_string() && l["spec"]["renewTime"].is_string());

    // While a renews, b follows.
    for _ in 0..3 {
        assert_eq!(b.step().await, Step::Following);
        assert_eq!(a.step().await, Step::Renewed);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(!b.leadership().is_leader());

    // a dies: b takes over once the Lease stayed unchanged for 3 s, not
    // before.
    let died = Instant::now();
    let took = loop {
        match b.step().await {
            Step::Acquired => break died.elapsed(),
            Step::Following => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("b: {other:?}"),
        }
    };
    assert!(took >= Duration::from_secs(3), "took over after {took:?}");
    assert!(took < Duration::from_secs(4), "took over after {took:?}");
    assert_eq!(holder(&api), ("b".into(), 1));
    assert!(b.leadership().is_leader());

    // a comes back: its renewal names a stale version (409), it sees b and
    // stays out.
    assert!(!a.leadership().is_leader(), "a's fence closed by itself");
    assert_eq!(a.step().await, Step::Lost);
    assert!(!a.leadership().is_leader());
    assert_eq!(holder(&api), ("b".into(), 1));
}

#[tokio::test]
async fn a_leader_that_cannot_renew_stops_acting_before_its_lease_can_expire() {
    let api = fake_api();
    let mut a = elector(&api, "a").await;
    let sent = Instant::now();
    assert_eq!(a.step().await, Step::Acquired);
    api.stop();
    assert_eq!(a.step().await, Step::Failed);
    while a.leadership().is_leader() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let acted = sent.elapsed();
    // The fence: 3 s - a third of it. Nobody may take the Lease before 3 s.
    assert!(acted < Duration::from_millis(2100), "acted for {acted:?}");
    assert!(acted >= Duration::from_millis(1900), "acted for {acted:?}");
    api.restart();
    // Nobody else wrote it meanwhile: the same version is renewed.
    assert_eq!(a.step().await, Step::Renewed);
    assert!(a.leadership().is_leader());
}

#[tokio::test]
async fn two_candidates_at_once_make_one_holder() {
    let api = fake_api();
    for round in 0..5 {
        let mut b = elector(&api, &format!("b{round}")).await;
        let mut c = elector(&api, &format!("c{round}")).await;
        let (sb, sc) = tokio::join!(b.step(), c.step());
        let won = [sb, sc].iter().filter(|s| **s == Step::Acquired).count();
        assert_eq!(won, 1, "round {round}: {sb:?} {sc:?}");
        assert_eq!(
            [&b, &c]
                .iter()
                .filter(|e| e.leadership().is_leader())
                .count(),
            1
        );
        // The winner hands over at once on its way out.
        b.release().await;
        c.release().await;
        assert_eq!(holder(&api).0, "");
    }
}

#[tokio::test]
async fn a_released_lease_is_taken_at_once() {
    let api = fake_api();
    let mut a = elector(&api, "a").await;
    let mut b = elector(&api, "b").await;
    assert_eq!(a.step().await, Step::Acquired);
    assert_eq!(b.step().await, Step::Following);
    a.release().await;
    assert!(!a.leadership().is_leader());
    assert_eq!(holder(&api), ("".into(), 0));
    assert_eq!(b.step().await, Step::Acquired);
    assert_eq!(holder(&api), ("b".into(), 1));
}

#[test]
fn lease_timing_is_checked() {
    let mut cfg = lease_config("a");
    cfg.validate().unwrap();
    assert_eq!(cfg.margin(), Duration::from_secs(1));
    cfg.renew_every = Duration::from_secs(2);
    assert!(cfg
        .validate()
        .unwrap_err()
        .contains("--lease-renew-seconds 2"));
    cfg.renew_every = Duration::ZERO;
    assert!(cfg.validate().is_err());
    let defaults = LeaseConfig {
        duration: Duration::from_secs(15),
        renew_every: Duration::from_secs(5),
        ..lease_config("a")
    };
    defaults.validate().unwrap();
    assert_eq!(defaults.poll(), Duration::from_secs(2));
}

mod pools;
