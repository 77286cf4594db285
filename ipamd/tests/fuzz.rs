//! Property fuzzing (issue 15) of what ipamd decodes: every store record
//! (as the store decodes it), the gRPC requests at the server edge (the
//! protobuf decode tonic does, then the Admin and Cni services), the
//! AdmissionReview the controller's webhook reads, and the Kubernetes
//! objects the node agent reads its facts from. See fuzz/harness.rs.

#[path = "../../fuzz/harness.rs"]
mod harness;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1 as corev1;
use moor_ipamd::api::{AdminApi, CniApi};
use moor_ipamd::clock::ManualClock;
use moor_ipamd::controller::webhook::Admission;
use moor_ipamd::core::pod::{default_sticky_kinds, workload};
use moor_ipamd::core::{
    Attachment, AttachmentRef, Binding, CarvedShare, Cooling, FreeCount, Lease, NodeRecord, Pool,
    PoolOp, Quarantine, Tor,
};
use moor_ipamd::datapath::fake::RecordingDatapath;
use moor_ipamd::ipam::{Ipam, PoolChoice, PoolSpec};
use moor_ipamd::kubernetes::pod_facts;
use moor_ipamd::node::{Mirrored, Node, NodeConfig};
use moor_ipamd::store::mem::MemStore;
use moor_ipamd::store::schema::SchemaRecord;
use moor_ipamd::store::{decode, Entry, Store, StoreError};
use moor_proto::fields;
use moor_proto::v1;
use moor_proto::v1::admin_server::Admin;
use moor_proto::v1::cni_server::Cni;
use proptest::prelude::*;
use prost::Message;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tonic::Request;

const T0: u64 = 1_000_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A store with a ToR, a pool, an attached pod and a binding: its records
/// are the valid examples the store-record inputs are made from.
async fn seeded_ipam() -> (Arc<MemStore>, Arc<Ipam>) {
    let store = Arc::new(MemStore::new());
    let ipam = Arc::new(Ipam::new(store.clone()));
    ipam.add_tor(
        "r1",
        "10.1.0.0/24",
        "10.1.0.1",
        100,
        &[("10.1.0.10".into(), "10.1.0.29".into())],
        "",
    )
    .await
    .unwrap();
    ipam.create_pool(
        &PoolSpec {
            name: "web".into(),
            namespace: "default".into(),
            app: "web".into(),
            size: 4,
            ..PoolSpec::default()
        },
        T0,
    )
    .await
    .unwrap();
    (store, ipam)
}

/// Decodes `e` as `T` the way the store's readers do; a record that
/// decodes encodes again and decodes to the same.
fn as_record<T: DeserializeOwned + Serialize>(e: &Entry) -> Result<(), StoreError> {
    let rec: T = decode(e)?;
    let v = serde_json::to_value(&rec).expect("a decoded record encodes");
    let back: T = serde_json::from_value(v.clone()).expect("an encoded record decodes");
    assert_eq!(serde_json::to_value(&back).unwrap(), v);
    Ok(())
}

#[test]
fn store_records() {
    let rt = runtime();
    let mut seeds = harness::json_seeds("store_records");
    rt.block_on(async {
        let (store, _) = seeded_ipam().await;
        let (entries, _) = store.list("").await.unwrap();
        seeds.extend(
            entries
                .iter()
                .filter_map(|e| serde_json::from_slice::<Value>(&e.value).ok()),
        );
    });
    harness::run("store_records", harness::json_inputs_from(seeds), |input| {
        let e = Entry {
            key: "pools/fuzz".into(),
            value: input.to_vec(),
            version: 1,
        };
        let outcomes = [
            as_record::<Tor>(&e),
            as_record::<Pool>(&e),
            as_record::<Lease>(&e),
            as_record::<Binding>(&e),
            as_record::<Attachment>(&e),
            as_record::<AttachmentRef>(&e),
            as_record::<NodeRecord>(&e),
            as_record::<Quarantine>(&e),
            as_record::<FreeCount>(&e),
            as_record::<PoolOp>(&e),
            as_record::<CarvedShare>(&e),
            as_record::<Cooling>(&e),
            as_record::<SchemaRecord>(&e),
            as_record::<Mirrored>(&e),
            as_record::<String>(&e),
        ];
        let json = harness::is_json(input);
        for outcome in outcomes {
            match outcome {
                Ok(()) => assert!(json, "a record decoded from non-JSON"),
                // A bad record is reported as corrupt, naming its key.
                Err(StoreError::Corrupt { key, .. }) => assert_eq!(key, "pools/fuzz"),
                Err(other) => panic!("not a Corrupt error: {other}"),
            }
        }
    });
}

/// A protobuf field as the generator writes it (right or wrong types).
#[derive(Debug, Clone)]
enum Field {
    Str(u32, String),
    Varint(u32, u64),
    Msg(u32, Vec<(u32, String)>),
}

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn delimited(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
    varint(u64::from(field) << 3 | 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

fn encode(fields: &[Field]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fields {
        match f {
            Field::Str(n, s) => delimited(*n, s.as_bytes(), &mut out),
            Field::Varint(n, v) => {
                varint(u64::from(*n) << 3, &mut out);
                varint(*v, &mut out);
            }
            Field::Msg(n, inner) => {
                let inner: Vec<Field> = inner
                    .iter()
                    .map(|(k, s)| Field::Str(*k, s.clone()))
                    .collect();
                delimited(*n, &encode(&inner), &mut out);
            }
        }
    }
    out
}

/// Names, addresses and CIDRs near the valid ones, and odd strings.
fn grpc_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "r1", "web", "default", "db", "c1", "eth0", "/var/run/netns/x", "10.1.0.0/24",
            "10.1.0.1", "10.1.0.10", "10.1.0.29", "10.1.0.300", "fd00::/64", "fd00::1", "::",
            "0.0.0.0/0", "10.1.0.0/33", "ipv4", "ipv6", "dual", "*", "moor", "web-0",
        ])
        .prop_map(str::to_string),
        2 => harness::odd_string(),
    ]
}

fn grpc_field() -> impl Strategy<Value = Field> {
    prop_oneof![
        4 => (1u32..10, grpc_string()).prop_map(|(n, s)| Field::Str(n, s)),
        2 => (1u32..10, prop_oneof![0u64..5000, any::<u64>()]).prop_map(|(n, v)| Field::Varint(n, v)),
        2 => (1u32..10, prop::collection::vec((1u32..4, grpc_string()), 0..4))
            .prop_map(|(n, f)| Field::Msg(n, f)),
    ]
}

/// The method (first byte), then its request as protobuf.
fn grpc_inputs() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => (any::<u8>(), prop::collection::vec(grpc_field(), 0..8)).prop_map(|(m, f)| {
            let mut out = vec![m];
            out.extend(encode(&f));
            out
        }),
        1 => harness::bytes(),
    ]
}

fn decoded<M: Message + Default>(body: &[u8]) -> Option<Request<M>> {
    M::decode(body).ok().map(Request::new)
}

/// What an accepted request must have held.
fn valid_key(k: &Option<v1::AttachmentKey>) {
    let k = k.as_ref().expect("an attachment key");
    fields::container_id("container_id", &k.container_id).expect("a valid container id");
    fields::ifname("ifname", &k.ifname).expect("a valid ifname");
}

/// Every call of the Admin and Cni services, on one node (a memory store and
/// a recording datapath) whose state the cases share.
#[test]
fn grpc_requests() {
    let rt = runtime();
    let dir = moor_testkit::TempDir::new("moor-fuzz-grpc");
    let (admin, cni) = rt.block_on(async {
        let (_, ipam) = seeded_ipam().await;
        let node = Arc::new(Node::new(
            NodeConfig {
                name: "n1".into(),
                tor: "r1".into(),
                pending_dir: PathBuf::from(dir.path()).join("pending"),
                gc_grace: Duration::from_secs(60),
                sticky_kinds: default_sticky_kinds(),
            },
            ipam,
            Arc::new(RecordingDatapath::new()),
            None,
            Arc::new(ManualClock::new(T0)),
        ));
        {
            let restoring = moor_ipamd::api::Restoring::default();
            (
                AdminApi(node.clone(), restoring.clone()),
                CniApi(node, restoring),
            )
        }
    });
    harness::run("grpc_requests", grpc_inputs(), |input| {
        let Some((method, body)) = input.split_first() else {
            return;
        };
        rt.block_on(async {
            let status = match method % 16 {
                0 => match decoded::<v1::AddTorRequest>(body) {
                    Some(r) => admin.add_tor(r).await.map(|t| {
                        fields::tor_name("name", &t.get_ref().name).expect("a valid ToR name");
                    }),
                    None => return,
                },
                1 => match decoded(body) {
                    Some(r) => admin.get_tor(r).await.map(drop),
                    None => return,
                },
                2 => match decoded(body) {
                    Some(r) => admin.delete_tor(r).await.map(drop),
                    None => return,
                },
                3 => match decoded::<v1::CreatePoolRequest>(body) {
                    Some(r) => admin.create_pool(r).await.map(|p| {
                        let p = p.into_inner();
                        fields::pool_name("name", &p.name).expect("a valid pool name");
                        fields::namespace("namespace", &p.namespace).expect("a valid namespace");
                    }),
                    None => return,
                },
                4 => match decoded(body) {
                    Some(r) => admin.resize_pool(r).await.map(drop),
                    None => return,
                },
                5 => match decoded(body) {
                    Some(r) => admin.get_pool(r).await.map(drop),
                    None => return,
                },
                6 => match decoded(body) {
                    Some(r) => admin.delete_pool(r).await.map(drop),
                    None => return,
                },
                7 => match decoded(body) {
                    Some(r) => admin.export_pool(r).await.map(drop),
                    None => return,
                },
                8 => match decoded(body) {
                    Some(r) => admin.get_ip(r).await.map(drop),
                    None => return,
                },
                9 => match decoded(body) {
                    Some(r) => admin.release_ip(r).await.map(drop),
                    None => return,
                },
                10 => match decoded(body) {
                    Some(r) => admin.evict_ip(r).await.map(drop),
                    None => return,
                },
                11 => match decoded(body) {
                    Some(r) => admin.add_binding(r).await.map(drop),
                    None => return,
                },
                12 => match decoded::<v1::AddRequest>(body) {
                    Some(r) => {
                        let key = r.get_ref().key.clone();
                        cni.add(r).await.map(|_| valid_key(&key))
                    }
                    None => return,
                },
                13 => match decoded::<v1::DelRequest>(body) {
                    Some(r) => cni.del(r).await.map(drop),
                    None => return,
                },
                14 => match decoded::<v1::CheckRequest>(body) {
                    Some(r) => cni.check(r).await.map(drop),
                    None => return,
                },
                _ => match decoded(body) {
                    Some(r) => admin.list_tors(r).await.map(drop),
                    None => return,
                },
            };
            if let Err(s) = status {
                assert!(!s.message().is_empty(), "an error without a message: {s:?}");
            }
        })
    });
}

/// The controller's admission webhook, on a store with a ToR and a pool.
#[test]
fn admission_review() {
    let rt = runtime();
    let admission = rt.block_on(async {
        let (_, ipam) = seeded_ipam().await;
        Admission {
            ipam,
            namespace_pool: Box::new(|ns| (ns == "default").then(|| "web".to_string())),
            tor_label: "moor.io/tor".into(),
            default_pool: None,
        }
    });
    harness::run(
        "admission_review",
        harness::json_inputs("admission_review"),
        |input| match rt.block_on(admission.review(input)) {
            Ok(body) => {
                assert!(harness::is_json(input), "a review accepted from non-JSON");
                let out: Value = serde_json::from_slice(&body).expect("the answer is JSON");
                assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
                assert_eq!(out["kind"], "AdmissionReview");
                // Only a request written as an object is read (serde would
                // take an array of its fields too: request-as-array.json).
                let review: Value = serde_json::from_slice(input).unwrap();
                assert!(
                    review["request"].is_object(),
                    "a request that is not an object accepted"
                );
                // The uid is echoed, never empty.
                let uid = out["response"]["uid"].as_str().expect("a uid");
                assert!(!uid.is_empty());
                assert_eq!(out["response"]["allowed"], true);
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        },
    );
}

/// The objects the node agent reads: a Pod's facts (owner, pool
/// annotation, workload, the pool it asks for), a Node's labels, a
/// Namespace's annotations.
#[test]
fn kube_objects() {
    let sticky = default_sticky_kinds();
    harness::run(
        "kube_objects",
        harness::json_inputs("kube_objects"),
        |input| {
            if let Ok(pod) = serde_json::from_slice::<corev1::Pod>(input) {
                assert!(harness::is_json(input));
                let facts = pod_facts(&pod.metadata);
                assert_eq!(facts.name, pod.metadata.name.clone().unwrap_or_default());
                let _ = facts.pool_annotation();
                let _ = facts.job();
                let _ = workload(&facts, &sticky);
                let _ = PoolChoice::from_api(&facts, Some("web".into()), None, &sticky);
            }
            if let Ok(node) = serde_json::from_slice::<corev1::Node>(input) {
                let _ = node
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("moor.io/tor"));
            }
            if let Ok(ns) = serde_json::from_slice::<corev1::Namespace>(input) {
                let _ = ns
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("moor.io/pool"));
            }
        },
    );
}
