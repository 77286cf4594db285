//! Issue 9, done-when 4: every field rule of `moor_proto::fields` holds the
//! same at every entry point that takes the field. Each bad value goes in
//! through `ipamctl` (exit 2, the flag named on stderr, nothing on stdout),
//! the `moor` binary (a CNI error with the expected code naming the field)
//! and ipamd's own gRPC socket (InvalidArgument naming the field), and after
//! the whole table nothing has changed: ToRs, pools, IPs, bindings, host
//! links, pending DELs. Good values at the edges of the rules then pass all
//! three.
//!
//! The columns, and why some are empty:
//!
//! | rule          | ipamctl                        | moor (ADD)                     | ipamd gRPC                  |
//! |---------------|--------------------------------|--------------------------------|-----------------------------|
//! | container id  | - (never takes one)            | CNI_CONTAINERID                | Add/Del key.container_id    |
//! | ifname        | - (never takes one)            | CNI_IFNAME                     | Add/Del key.ifname          |
//! | network name  | - (never takes one)            | config `name`                  | Add network                 |
//! | namespace     | --namespace                    | K8S_POD_NAMESPACE              | CreatePool, Add pod         |
//! | pod name      | - (never takes one)            | K8S_POD_NAME                   | Add pod                     |
//! | app           | --app                          | - (ipamd reads it off the pod name) | CreatePool app         |
//! | pool name     | NAME, --pool                   | MOOR_POOL, config `pool`       | CreatePool name, Add pool   |
//! | ToR name      | NAME, --tor, --segment-of      | - (the node's ToR is ipamd's flag) | AddTor name, segment_of |
//! | VLAN          | --vlan                         | - (never takes one)            | AddTor vlan                 |
//! | pool size     | --size (create, resize)        | - (never takes one)            | CreatePool, ResizePool size |
//!
//! Where a field is optional, the empty value (0 for numbers on the wire)
//! means "not given" and is not a bad value there: an empty namespace or pod
//! name in CNI_ARGS (no pod identity), an empty MOOR_POOL or pool (the app's
//! pool), an empty segment_of, VLAN 0 (untagged) and size 0 on CreatePool
//! (the default size). ipamd looks `--tor` names of a pool up instead of
//! checking them ("does not exist"), so that one is ipamctl's alone.

use moor_e2e::grpc::unix_channel;
use std::path::Path;

use moor_e2e::names::container_id;
use moor_e2e::Testbed;
use moor_proto::v1::admin_client::AdminClient;
use moor_proto::v1::cni_client::CniClient;
use moor_proto::v1::{
    AddRequest, AddTorRequest, AttachmentKey, CreatePoolRequest, DelRequest, PodRef,
    ResizePoolRequest,
};
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::support::snapshot;

/// ipamd's two services over its unix socket, called as a foreign client
/// would: no plugin or CLI in between.
struct Ipamd {
    rt: tokio::runtime::Runtime,
    cni: CniClient<Channel>,
    admin: AdminClient<Channel>,
}

impl Ipamd {
    fn connect(socket: &Path) -> Ipamd {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let channel = rt
            .block_on(unix_channel(socket))
            .unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()));
        Ipamd {
            rt,
            cni: CniClient::new(channel.clone()),
            admin: AdminClient::new(channel),
        }
    }

    /// The call's error, or None if ipamd accepted it.
    fn call(&self, rpc: &Rpc) -> Option<tonic::Status> {
        let (mut cni, mut admin) = (self.cni.clone(), self.admin.clone());
        self.rt.block_on(async move {
            match rpc.clone() {
                Rpc::Add(r) => cni.add(r).await.map(drop),
                Rpc::Del(r) => cni.del(r).await.map(drop),
                Rpc::AddTor(r) => admin.add_tor(r).await.map(drop),
                Rpc::CreatePool(r) => admin.create_pool(r).await.map(drop),
                Rpc::ResizePool(r) => admin.resize_pool(r).await.map(drop),
            }
            .err()
        })
    }
}

#[derive(Clone)]
enum Rpc {
    Add(AddRequest),
    Del(DelRequest),
    AddTor(AddTorRequest),
    CreatePool(CreatePoolRequest),
    ResizePool(ResizePoolRequest),
}

/// One way in for a bad value.
enum Entry {
    /// `ipamctl` with these arguments: exit 2, `flag` on stderr.
    Ctl { args: Vec<String>, flag: String },
    /// `moor` ADD with these variables set (None: unset) over a good
    /// environment and these keys over a good config: CNI error `code`,
    /// `field` in its message.
    Moor {
        env: Vec<(&'static str, Option<String>)>,
        conf: Value,
        code: u64,
        field: String,
    },
    /// A call on ipamd's socket: InvalidArgument naming `field`.
    Rpc { rpc: Rpc, field: String },
}

struct Case {
    rule: &'static str,
    value: String,
    entry: Entry,
}

/// How a message shows the value: quoted, or its start when long (moor and
/// ipamd shorten long values).
fn value_needle(v: &str) -> String {
    if v.len() <= 100 {
        format!("{v:?}")
    } else {
        v[..40].to_string()
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn every_field_rule_holds_at_every_entry_point() {
    let tb = Testbed::new();
    tb.create_pool("web", "web", 3);
    let ipamd = Ipamd::connect(&tb.socket);
    // The pod every bad ADD is for; with good input it would get an IP.
    let pod = tb.pod("web-0");
    let netns = pod.netns_path();
    let b = tb.subnet_base;
    let other_net = format!("{}.{}.{}", b[0], b[1] ^ 0x80, b[2]);
    let subnet = format!("{other_net}.0/24");
    let gateway = format!("{other_net}.1");
    let before = snapshot(&tb, &[&pod]);

    let long = |n: usize| "a".repeat(n);
    // (rule, bad values); the empty value is filtered per entry point where
    // it means "not given".
    let rules: Vec<(&str, Vec<String>)> = vec![
        (
            "container id",
            strings(&["", "-abc", "_abc", "ab/c", "ab c", "abé"]),
        ),
        (
            "ifname",
            strings(&[
                "",
                "eth0123456789abc",
                "et/h0",
                "eth0:1",
                "..",
                "eth 0",
                "eth\t0",
            ]),
        ),
        ("network name", strings(&["a/b", "-net", "net work"])),
        (
            "namespace",
            [
                strings(&["", "Shop", "a.b", "-shop", "shop_1"]),
                vec![long(64)],
            ]
            .concat(),
        ),
        (
            "pod name",
            [
                strings(&["Web_0", "web..0", "web-", ".web"]),
                vec![long(254)],
            ]
            .concat(),
        ),
        (
            "app",
            [
                strings(&["", "My_App", "my_app", "a/b", "app-", ".app", "a..b"]),
                vec![long(254)],
            ]
            .concat(),
        ),
        (
            "pool name",
            [strings(&["", "Web_1", "my.pool", "-web"]), vec![long(64)]].concat(),
        ),
        (
            "ToR name",
            [
                strings(&["", "Rack_1", "rack-", "-rack", "rack.1"]),
                vec![long(64)],
            ]
            .concat(),
        ),
        ("vlan", strings(&["0", "4095", "5000"])),
        ("pool size", strings(&["0", "65536"])),
    ];

    let mut cases = Vec::new();
    for (rule, values) in &rules {
        for v in values {
            let mut entries = Vec::new();
            let ctl = |args: &[&str], flag: &str| Entry::Ctl {
                args: strings(args),
                flag: flag.into(),
            };
            let moor_env = |var: &'static str, val: &str, field: &str| Entry::Moor {
                env: vec![(var, Some(val.to_string()))],
                conf: json!({}),
                code: 4,
                field: field.into(),
            };
            let moor_args = |args: String, field: &str| Entry::Moor {
                env: vec![("CNI_ARGS", Some(args))],
                conf: json!({}),
                code: 4,
                field: field.into(),
            };
            let moor_conf = |conf: Value, field: &str| Entry::Moor {
                env: vec![],
                conf,
                code: 7,
                field: field.into(),
            };
            let rpc = |rpc: Rpc, field: &str| Entry::Rpc {
                rpc,
                field: field.into(),
            };
            let key = |cid: &str, ifname: &str| AttachmentKey {
                container_id: cid.into(),
                ifname: ifname.into(),
            };
            let pod_ref = |ns: &str, name: &str| PodRef {
                namespace: ns.into(),
                name: name.into(),
                uid: String::new(),
            };
            let add = |key: AttachmentKey, pod: PodRef, pool: &str, network: &str| {
                Rpc::Add(AddRequest {
                    key: Some(key),
                    netns: netns.clone(),
                    pod: Some(pod),
                    pool: pool.into(),
                    network: network.into(),
                    default_pool: String::new(),
                })
            };
            let good_key = || key(&container_id(), "eth0");
            let web0 = || pod_ref("shop", "web-0");
            let create = |name: &str, ns: &str, app: &str, size: u32| {
                Rpc::CreatePool(CreatePoolRequest {
                    name: name.into(),
                    namespace: ns.into(),
                    app: app.into(),
                    size,
                    ..Default::default()
                })
            };
            let add_tor = |name: &str, vlan: u32, segment_of: &str| {
                Rpc::AddTor(AddTorRequest {
                    name: name.into(),
                    subnet: subnet.clone(),
                    gateway: gateway.clone(),
                    vlan,
                    segment_of: segment_of.into(),
                    ..Default::default()
                })
            };
            let empty = v.is_empty();
            match *rule {
                "container id" => {
                    entries.push(moor_env("CNI_CONTAINERID", v, "CNI_CONTAINERID"));
                    let k = key(v, "eth0");
                    entries.push(rpc(add(k.clone(), web0(), "", ""), "container id"));
                    entries.push(rpc(
                        Rpc::Del(DelRequest {
                            key: Some(k),
                            netns: netns.clone(),
                            ..Default::default()
                        }),
                        "container id",
                    ));
                }
                "ifname" => {
                    entries.push(moor_env("CNI_IFNAME", v, "CNI_IFNAME"));
                    let k = key(&container_id(), v);
                    entries.push(rpc(add(k.clone(), web0(), "", ""), "interface name"));
                    entries.push(rpc(
                        Rpc::Del(DelRequest {
                            key: Some(k),
                            netns: netns.clone(),
                            ..Default::default()
                        }),
                        "interface name",
                    ));
                }
                "network name" => {
                    entries.push(moor_conf(json!({ "name": v }), "\"name\""));
                    entries.push(rpc(add(good_key(), web0(), "", v), "network"));
                }
                "namespace" => {
                    entries.push(ctl(
                        &[
                            "pool",
                            "create",
                            "db",
                            "--app",
                            "db",
                            &format!("--namespace={v}"),
                        ],
                        "--namespace",
                    ));
                    entries.push(rpc(create("db", v, "db", 1), "namespace"));
                    if !empty {
                        entries.push(moor_args(
                            format!("K8S_POD_NAMESPACE={v};K8S_POD_NAME=web-0"),
                            "K8S_POD_NAMESPACE in CNI_ARGS",
                        ));
                        entries.push(rpc(
                            add(good_key(), pod_ref(v, "web-0"), "", ""),
                            "pod namespace",
                        ));
                    }
                }
                "pod name" => {
                    entries.push(moor_args(
                        format!("K8S_POD_NAMESPACE=shop;K8S_POD_NAME={v}"),
                        "K8S_POD_NAME in CNI_ARGS",
                    ));
                    entries.push(rpc(add(good_key(), pod_ref("shop", v), "", ""), "pod name"));
                }
                "app" => {
                    entries.push(ctl(
                        &[
                            "pool",
                            "create",
                            "x",
                            "--namespace",
                            "default",
                            &format!("--app={v}"),
                        ],
                        "--app",
                    ));
                    entries.push(rpc(create("x", "default", v, 1), "app"));
                }
                "pool name" => {
                    entries.push(ctl(
                        &[
                            "pool",
                            "create",
                            "--namespace",
                            "shop",
                            "--app",
                            "db",
                            "--",
                            v,
                        ],
                        "NAME",
                    ));
                    entries.push(ctl(&["pool", "resize", "--size", "5", "--", v], "NAME"));
                    entries.push(ctl(&["ip", "list", &format!("--pool={v}")], "--pool"));
                    entries.push(rpc(create(v, "shop", "db", 1), "pool name"));
                    if !empty {
                        entries.push(moor_args(
                            format!("K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;MOOR_POOL={v}"),
                            "MOOR_POOL in CNI_ARGS",
                        ));
                        entries.push(moor_conf(json!({ "pool": v }), "\"pool\""));
                        entries.push(rpc(add(good_key(), web0(), v, ""), "pool"));
                    }
                }
                "ToR name" => {
                    let tor_add = |name: &str, extra: &[&str]| {
                        let mut a =
                            strings(&["tor", "add", "--subnet", &subnet, "--gateway", &gateway]);
                        a.extend(strings(extra));
                        // After "--", a name starting with '-' is a name.
                        a.extend(strings(&["--", name]));
                        a
                    };
                    entries.push(Entry::Ctl {
                        args: tor_add(v, &[]),
                        flag: "NAME".into(),
                    });
                    entries.push(Entry::Ctl {
                        args: tor_add("rack-2", &[&format!("--segment-of={v}")]),
                        flag: "--segment-of".into(),
                    });
                    entries.push(ctl(
                        &[
                            "pool",
                            "create",
                            "db",
                            "--namespace",
                            "shop",
                            "--app",
                            "db",
                            &format!("--tor={v}"),
                        ],
                        "--tor",
                    ));
                    entries.push(rpc(add_tor(v, 0, ""), "ToR name"));
                    if !empty {
                        entries.push(rpc(add_tor("rack-2", 0, v), "segment-of"));
                    }
                }
                "vlan" => {
                    let mut a = strings(&[
                        "tor",
                        "add",
                        "rack-2",
                        "--subnet",
                        &subnet,
                        "--gateway",
                        &gateway,
                        "--vlan",
                    ]);
                    a.push(v.clone());
                    entries.push(Entry::Ctl {
                        args: a,
                        flag: "--vlan".into(),
                    });
                    if v != "0" {
                        entries.push(rpc(add_tor("rack-2", v.parse().unwrap(), ""), "vlan"));
                    }
                }
                "pool size" => {
                    entries.push(ctl(
                        &[
                            "pool",
                            "create",
                            "db",
                            "--namespace",
                            "shop",
                            "--app",
                            "db",
                            "--size",
                            v,
                        ],
                        "--size",
                    ));
                    entries.push(ctl(&["pool", "resize", "web", "--size", v], "--size"));
                    let n: u32 = v.parse().unwrap();
                    entries.push(rpc(
                        Rpc::ResizePool(ResizePoolRequest {
                            name: "web".into(),
                            size: n,
                        }),
                        "size",
                    ));
                    if n != 0 {
                        entries.push(rpc(create("db", "shop", "db", n), "size"));
                    }
                }
                other => unreachable!("no entry points for {other}"),
            }
            cases.extend(entries.into_iter().map(|entry| Case {
                rule,
                value: v.clone(),
                entry,
            }));
        }
    }
    // Every rule reaches at least two entry points, ipamd among them.
    for (rule, _) in &rules {
        let kinds: std::collections::BTreeSet<&str> = cases
            .iter()
            .filter(|c| c.rule == *rule)
            .map(|c| match c.entry {
                Entry::Ctl { .. } => "ipamctl",
                Entry::Moor { .. } => "moor",
                Entry::Rpc { .. } => "ipamd",
            })
            .collect();
        assert!(
            kinds.len() >= 2 && kinds.contains("ipamd"),
            "{rule}: {kinds:?}"
        );
    }

    let mut wrong = Vec::new();
    for c in &cases {
        let value = value_needle(&c.value);
        let (what, problem) = match &c.entry {
            Entry::Ctl { args, flag } => {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let out = tb.ipamctl(&args);
                let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
                let problem = if out.status.code() != Some(2) {
                    Some(format!("exit {:?}, want 2", out.status.code()))
                } else if !out.stdout.is_empty() {
                    Some("printed a result on stdout".into())
                } else if !stderr.contains(flag.as_str()) || !stderr.contains(&value) {
                    Some(format!("does not name {flag} and {value}"))
                } else {
                    None
                };
                (
                    format!("ipamctl {}", args.join(" ")),
                    problem.map(|p| format!("{p}: {}", stderr.trim())),
                )
            }
            Entry::Moor {
                env,
                conf,
                code,
                field,
            } => {
                let mut e = tb.cni_env("ADD", &pod, &container_id());
                for (k, v) in env {
                    e.retain(|(ek, _)| ek != k);
                    if let Some(v) = v {
                        e.push((k.to_string(), v.clone()));
                    }
                }
                let stdin = tb.net_conf("1.0.0", conf).to_string();
                let r = tb.moor_raw(&e, stdin.as_bytes());
                let got = r.json.get("code").and_then(Value::as_u64);
                let message = r.message();
                let problem = if r.code == 0 {
                    Some("accepted".to_string())
                } else if got != Some(*code) {
                    Some(format!("CNI code {got:?}, want {code}"))
                } else if !message.contains(field.as_str()) || !message.contains(&value) {
                    Some(format!("does not name {field} and {value}"))
                } else {
                    None
                };
                (
                    format!("moor ADD {env:?} {conf}"),
                    problem.map(|p| format!("{p}: {}", r.stdout.trim())),
                )
            }
            Entry::Rpc { rpc, field } => {
                let what = match rpc {
                    Rpc::Add(_) => "Cni.Add",
                    Rpc::Del(_) => "Cni.Del",
                    Rpc::AddTor(_) => "Admin.AddTor",
                    Rpc::CreatePool(_) => "Admin.CreatePool",
                    Rpc::ResizePool(_) => "Admin.ResizePool",
                };
                // ipamd names numbers bare.
                let value = if c.rule == "vlan" || c.rule == "pool size" {
                    format!("{field} {}", c.value)
                } else {
                    value.clone()
                };
                let problem = match ipamd.call(rpc) {
                    None => Some("accepted".to_string()),
                    Some(s) if s.code() != tonic::Code::InvalidArgument => {
                        Some(format!("{:?}: {}", s.code(), s.message()))
                    }
                    Some(s)
                        if !s.message().contains(field.as_str())
                            || !s.message().contains(&value) =>
                    {
                        Some(format!(
                            "does not name {field} and {value}: {}",
                            s.message()
                        ))
                    }
                    Some(_) => None,
                };
                (format!("ipamd {what}"), problem)
            }
        };
        if let Some(p) = problem {
            wrong.push(format!("{} {:?} via {what}: {p}", c.rule, c.value));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases wrong:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    let after = snapshot(&tb, &[&pod]);
    assert_eq!(before, after, "a bad value changed state");
    println!(
        "{} bad values of {} rules refused at every entry point, nothing changed",
        cases.len(),
        rules.len()
    );

    // Control: values at the edges of the rules pass all three. An app with
    // a dot (a DNS subdomain) through ipamctl, then a pod of it through moor
    // and ipamd, which reads the app "web.v2" off the pod name.
    tb.ctl().ok(&[
        "pool",
        "create",
        "web-v2",
        "--namespace",
        "shop",
        "--app",
        "web.v2",
        "--size",
        "1",
    ]);
    let v2 = tb.pod("web.v2-0");
    let cid = container_id();
    let r = tb.moor("ADD", &v2, &cid, "1.0.0", &json!({}), None);
    r.ok("ADD of web.v2-0");
    let ip = tb
        .ip_of_container(&cid)
        .unwrap_or_else(|| panic!("no IP attached to {cid}"));
    assert_eq!(ip["pool"], "web-v2", "{ip}");
    tb.moor("DEL", &v2, &cid, "1.0.0", &json!({}), None)
        .ok("DEL of web.v2-0");
    // The longest names, straight to ipamd.
    let name63 = long(63);
    let app253 = format!("{}.{}.{}.{}", long(63), long(63), long(63), long(61));
    assert_eq!(app253.len(), 253);
    let ok = ipamd.call(&Rpc::CreatePool(CreatePoolRequest {
        name: name63.clone(),
        namespace: name63.clone(),
        app: app253,
        size: 1,
        ..Default::default()
    }));
    assert!(ok.is_none(), "63/63/253-character names: {ok:?}");
    let problems = tb.audit();
    assert!(problems.is_empty(), "audit: {problems:#?}");
}
