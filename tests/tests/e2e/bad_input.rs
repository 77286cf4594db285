//! Done-when 6: bad config, environment and CLI input, through the real
//! binaries: each case gets a clear error (exit code, CNI code, a message
//! naming the field or variable, or the words of the fix), and after the whole
//! table nothing has changed: ToRs, pools, IPs, bindings, host links, pods.

use std::process::Command;

use moor_e2e::names::{container_id, deployment_pod};
use moor_e2e::{Pod, Testbed};
use serde_json::{json, Value};

use crate::support::{check_add_result, snapshot};

enum Input {
    /// moor with this environment and stdin.
    Moor {
        env: Vec<(String, String)>,
        stdin: String,
    },
    /// ipamctl with these arguments (after --socket).
    Ctl(Vec<String>),
    /// ipamctl with exactly these arguments.
    CtlRaw(Vec<String>),
}

struct Case {
    what: &'static str,
    input: Input,
    exit: i32,
    /// The CNI error code (moor only).
    cni_code: Option<u64>,
    /// Every one must be in the message (case-insensitive).
    needles: Vec<String>,
}

#[test]
fn bad_input_is_refused_clearly_and_changes_nothing() {
    let tb = Testbed::new();
    tb.create_pool("web", "web", 3);
    tb.create_pool("api", "api", 1);
    // An IPv6-only ToR whose /64 the IPv6 cases overlap.
    let b = tb.subnet_base;
    // Canonical (as ipamd prints addresses): `fd00:X:Y::`, `fd00:X::`.
    let v6_net = std::net::Ipv6Addr::new(
        0xfd00,
        0x100 + u16::from(b[1]),
        u16::from(b[2]),
        0,
        0,
        0,
        0,
        0,
    )
    .to_string();
    moor_testkit::cmd::assert_ok(
        &tb.ipamctl(&[
            "tor",
            "add",
            "rack-6",
            "--subnet",
            &format!("{v6_net}/64"),
            "--gateway",
            &format!("{v6_net}1"),
        ]),
        "tor add rack-6",
    );
    // Live state the bad input must leave alone: two web pods, and the api
    // pool full.
    let web0 = tb.pod("web-0");
    let web1 = tb.pod("web-1");
    let api = tb.pod(&deployment_pod("api", 1));
    for p in [&web0, &web1, &api] {
        tb.moor("ADD", p, &container_id(), "1.0.0", &json!({}), None)
            .ok(&format!("ADD {}", p.name));
    }
    // The pods the bad ADDs are for; each would get an IP with good input.
    let victim = tb.pod("web-2");
    let api2 = tb.pod(&deployment_pod("api", 2));
    let cache = tb.pod("cache-0");
    // web-0 re-created while its old instance is still attached.
    let web0_again = tb.pod("web-0");
    let cid = container_id();
    let pods = [&web0, &web1, &api, &victim, &api2, &cache, &web0_again];
    let before = snapshot(&tb, &pods);

    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let conf = |v: &str, extra: Value| tb.net_conf(v, &extra).to_string();
    let good_conf = conf("1.0.0", json!({}));
    let env = |pod: &Pod, over: &[(&str, Option<&str>)]| {
        let mut e = tb.cni_env("ADD", pod, &cid);
        for (k, v) in over {
            e.retain(|(ek, _)| ek != k);
            if let Some(v) = v {
                e.push((k.to_string(), v.to_string()));
            }
        }
        e
    };
    let moor = |over: &[(&str, Option<&str>)], stdin: &str| Input::Moor {
        env: env(&victim, over),
        stdin: stdin.to_string(),
    };
    let moor_for = |pod: &Pod, stdin: &str| Input::Moor {
        env: env(pod, &[]),
        stdin: stdin.to_string(),
    };
    let case = |what, input, exit, cni_code: Option<u64>, needles: &[&str]| Case {
        what,
        input,
        exit,
        cni_code,
        needles: s(needles),
    };
    let net = |last: u8| format!("{}.{}.{}.{last}", b[0], b[1], b[2]);
    let other_net = format!("{}.{}.{}", b[0], b[1] ^ 0x80, b[2]);
    let gone_netns = format!("/run/netns/{}-no-such-pod", tb.id);
    let web0_ip = tb.pod_addr(&web0, "eth0").unwrap().ip.to_string();

    #[rustfmt::skip]
    let cases = vec![
        // moor: environment.
        case("no CNI_COMMAND", moor(&[("CNI_COMMAND", None)], &good_conf), 1, Some(4), &["CNI_COMMAND"]),
        case("unknown CNI_COMMAND", moor(&[("CNI_COMMAND", Some("ATTACH"))], &good_conf), 1, Some(4), &["CNI_COMMAND", "ATTACH"]),
        case("no CNI_CONTAINERID", moor(&[("CNI_CONTAINERID", None)], &good_conf), 1, Some(4), &["CNI_CONTAINERID"]),
        case("bad CNI_CONTAINERID", moor(&[("CNI_CONTAINERID", Some("-x/y"))], &good_conf), 1, Some(4), &["CNI_CONTAINERID", "-x/y"]),
        case("CNI_IFNAME too long", moor(&[("CNI_IFNAME", Some("eth0123456789abc"))], &good_conf), 1, Some(4), &["CNI_IFNAME", "15"]),
        case("CNI_IFNAME with /", moor(&[("CNI_IFNAME", Some("et/h0"))], &good_conf), 1, Some(4), &["CNI_IFNAME", "/"]),
        case("no CNI_NETNS on ADD", moor(&[("CNI_NETNS", None)], &good_conf), 1, Some(4), &["CNI_NETNS"]),
        case("relative CNI_NETNS", moor(&[("CNI_NETNS", Some("netns/web-2"))], &good_conf), 1, Some(7), &["CNI_NETNS", "netns/web-2"]),
        case("netns that does not exist", moor(&[("CNI_NETNS", Some(&gone_netns))], &good_conf), 1, Some(104), &[&gone_netns, "IP was given back"]),
        case("malformed CNI_ARGS", moor(&[("CNI_ARGS", Some("K8S_POD_NAMESPACE=shop;K8S_POD_NAME"))], &good_conf), 1, Some(4), &["CNI_ARGS", "KEY=VALUE"]),
        case("unknown CNI_ARGS key", moor(&[("CNI_ARGS", Some("K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-2;COLOR=blue"))], &good_conf), 1, Some(2), &["COLOR", "blue", "IgnoreUnknown"]),
        // moor: network config.
        case("unsupported cniVersion", moor(&[], &conf("0.2.0", json!({}))), 1, Some(1), &["0.2.0", "1.1.0"]),
        case("bad JSON", moor(&[], "{\"cniVersion\": \"1.0.0\", "), 1, Some(6), &["JSON"]),
        case("empty stdin", moor(&[], ""), 1, Some(6), &["stdin"]),
        case("name of the wrong type", moor(&[], &conf("1.0.0", json!({"name": 5}))), 1, Some(7), &["\"name\"", "string"]),
        case("timeoutMs of the wrong type", moor(&[], &conf("1.0.0", json!({"timeoutMs": "10s"}))), 1, Some(7), &["timeoutMs", "milliseconds"]),
        case("relative socket path", moor(&[], &conf("1.0.0", json!({"socket": "run/ipamd.sock"}))), 1, Some(7), &["socket", "absolute"]),
        case("pool that does not exist", moor(&[], &conf("1.0.0", json!({"pool": "nope"}))), 1, Some(102), &["pool nope", "ipamctl pool create"]),
        case("CHECK without prevResult", moor(&[("CNI_COMMAND", Some("CHECK"))], &good_conf), 1, Some(7), &["prevResult"]),
        case("GC without valid-attachments", moor(&[("CNI_COMMAND", Some("GC"))], &conf("1.1.0", json!({}))), 1, Some(7), &["valid-attachments"]),
        // moor: requests ipamd must refuse.
        case("pod with no pool for its app", moor_for(&cache, &good_conf), 1, Some(102), &["app shop/cache", "ipamctl pool create cache"]),
        case("pool full", moor_for(&api2, &good_conf), 1, Some(100), &["pool api is full", "ipamctl pool resize api"]),
        case("StatefulSet pod still attached elsewhere", moor_for(&web0_again, &good_conf), 1, Some(11), &[&web0_ip, "still attached"]),
        // ipamctl: caught before any RPC (exit 2).
        case("bad CIDR", Input::Ctl(s(&["tor", "add", "rack-2", "--subnet", &format!("{other_net}.0/33"), "--gateway", &format!("{other_net}.1")])), 2, None, &["--subnet", "/33"]),
        case("host bits set", Input::Ctl(s(&["tor", "add", "rack-2", "--subnet", &format!("{other_net}.5/24"), "--gateway", &format!("{other_net}.1")])), 2, None, &["--subnet", &format!("{other_net}.0/24")]),
        case("gateway outside the subnet", Input::Ctl(s(&["tor", "add", "rack-2", "--subnet", &format!("{other_net}.0/24"), "--gateway", &net(1)])), 2, None, &["--gateway", &net(1)]),
        case("VLAN 5000", Input::Ctl(s(&["tor", "add", "rack-2", "--subnet", &format!("{other_net}.0/24"), "--gateway", &format!("{other_net}.1"), "--vlan", "5000"])), 2, None, &["--vlan", "5000", "4094"]),
        case("range outside the subnet", Input::Ctl(s(&["tor", "add", "rack-2", "--subnet", &format!("{other_net}.0/24"), "--gateway", &format!("{other_net}.1"), "--range", &format!("{}-{}", net(10), net(20))])), 2, None, &["--range", &net(10)]),
        case("range backwards", Input::Ctl(s(&["tor", "add", "rack-2", "--subnet", &format!("{other_net}.0/24"), "--gateway", &format!("{other_net}.1"), "--range", &format!("{other_net}.20-{other_net}.10")])), 2, None, &["--range", &format!("{other_net}.20")]),
        case("pool size 0", Input::Ctl(s(&["pool", "create", "db", "--namespace", "shop", "--app", "db", "--size", "0"])), 2, None, &["--size", "0"]),
        case("bad pool name", Input::Ctl(s(&["pool", "create", "Web_1", "--namespace", "shop", "--app", "db"])), 2, None, &["Web_1", "lowercase"]),
        case("malformed IP", Input::Ctl(s(&["ip", "show", "10.1.2"])), 2, None, &["10.1.2"]),
        // IPv6 (issue 13), caught by ipamctl.
        case("IPv6 gateway outside its subnet", Input::Ctl(s(&["tor", "add", "rack-2", "--subnet", &format!("{other_net}.0/24"), "--gateway", &format!("{other_net}.1"), "--subnet", "fd00:77::/64", "--gateway", "fd00:78::1"])), 2, None, &["--gateway", "fd00:78::1", "fd00:77::/64"]),
        case("IPv6 range across prefixes", Input::Ctl(s(&["tor", "add", "rack-2", "--subnet", &format!("{other_net}.0/24"), "--gateway", &format!("{other_net}.1"), "--subnet", "fd00:77::/64", "--gateway", "fd00:77::1", "--range", "fd00:77::10-fd00:78::10"])), 2, None, &["--range", "fd00:77::/64"]),
        case("IPv6 subnet wider than a /64", Input::Ctl(s(&["tor", "add", "rack-2", "--subnet", "fd00:77::/48", "--gateway", "fd00:77::1"])), 2, None, &["--subnet", "/64"]),
        case("two IPv6 subnets", Input::Ctl(s(&["tor", "add", "rack-2", "--subnet", "fd00:77::/64", "--gateway", "fd00:77::1", "--subnet", "fd00:78::/64", "--gateway", "fd00:78::1"])), 2, None, &["--subnet", "IPv6"]),
        case("pool family not a family", Input::Ctl(s(&["pool", "create", "db", "--namespace", "shop", "--app", "db", "--family", "ipv5"])), 2, None, &["--family", "ipv5"]),
        // ipamctl: refused by ipamd (exit 1).
        case("overlapping subnet", Input::Ctl(s(&["tor", "add", "rack-2", "--subnet", &format!("{}/25", net(0)), "--gateway", &net(1)])), 1, None, &["overlap", "rack-1"]),
        // IPv6 (issue 13), refused by ipamd.
        case("overlapping /64", Input::Ctl(s(&["tor", "add", "rack-2", "--subnet", &format!("{other_net}.0/24"), "--gateway", &format!("{other_net}.1"), "--subnet", &format!("{v6_net}/64"), "--gateway", &format!("{v6_net}1")])), 1, None, &["overlap", "rack-6"]),
        case("IPv6 subnet inside another ToR's /64", Input::Ctl(s(&["tor", "add", "rack-2", "--subnet", &format!("{v6_net}8000:0:0:0/65"), "--gateway", &format!("{v6_net}8000:0:0:1")])), 1, None, &["overlap", "rack-6"]),
        case("dual-stack pool on an IPv4 ToR", Input::Ctl(s(&["pool", "create", "db", "--namespace", "shop", "--app", "db", "--family", "dual", "--tor", "rack-1"])), 1, None, &["rack-1", "IPv6"]),
        case("IPv4 pool on an IPv6 ToR", Input::Ctl(s(&["pool", "create", "db", "--namespace", "shop", "--app", "db", "--family", "ipv4", "--tor", "rack-6"])), 1, None, &["rack-6", "IPv4"]),
        case("ToRs with no family in common", Input::Ctl(s(&["pool", "create", "db", "--namespace", "shop", "--app", "db", "--tor", "rack-1", "--tor", "rack-6"])), 1, None, &["rack-1", "rack-6", "family"]),
        case("release of an IPv6 address in no pool", Input::Ctl(s(&["ip", "release", &format!("{v6_net}5")])), 1, None, &[&format!("{v6_net}5")]),
        case("duplicate ToR name", Input::Ctl(s(&["tor", "add", "rack-1", "--subnet", &format!("{other_net}.0/24"), "--gateway", &format!("{other_net}.1")])), 1, None, &["rack-1", "exists"]),
        case("pool for a missing ToR", Input::Ctl(s(&["pool", "create", "db", "--namespace", "shop", "--app", "db", "--tor", "rack-9"])), 1, None, &["rack-9"]),
        case("duplicate app", Input::Ctl(s(&["pool", "create", "web2", "--namespace", "shop", "--app", "web"])), 1, None, &["shop/web", "web"]),
        case("resize below what is in use", Input::Ctl(s(&["pool", "resize", "web", "--size", "1"])), 1, None, &["web", "in use"]),
        case("release of an IP in no pool", Input::Ctl(s(&["ip", "release", &net(250)])), 1, None, &[&net(250)]),
        case("delete a ToR that pools use", Input::Ctl(s(&["tor", "delete", "rack-1"])), 1, None, &["rack-1", "pool"]),
        case("ipamd not running", Input::CtlRaw(s(&["--socket", &format!("{}/nope.sock", tb.dir.display()), "tor", "list"])), 1, None, &["nope.sock"]),
    ];
    assert!(cases.len() >= 25);

    let mut wrong = Vec::new();
    for c in &cases {
        let (exit, cni_code, message) = match &c.input {
            Input::Moor { env, stdin } => {
                let r = tb.moor_raw(env, stdin.as_bytes());
                let code = r.json.get("code").and_then(Value::as_u64);
                (
                    r.code,
                    code,
                    format!("{} [stdout {}]", r.message(), r.stdout.trim()),
                )
            }
            Input::Ctl(args) => {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let out = tb.ipamctl(&args);
                assert!(
                    out.stdout.is_empty(),
                    "{}: ipamctl printed a result on error",
                    c.what
                );
                (
                    out.status.code().unwrap_or(-1),
                    None,
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            }
            Input::CtlRaw(args) => {
                let out = Command::new(&tb.bins().ipamctl)
                    .args(args)
                    .output()
                    .unwrap();
                (
                    out.status.code().unwrap_or(-1),
                    None,
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            }
        };
        let lower = message.to_lowercase();
        let missing: Vec<&String> = c
            .needles
            .iter()
            .filter(|n| !lower.contains(&n.to_lowercase()))
            .collect();
        if exit != c.exit || cni_code != c.cni_code || !missing.is_empty() {
            wrong.push(format!(
                "{}: exit {exit} (want {}), CNI code {cni_code:?} (want {:?}), missing {missing:?} in: {}",
                c.what,
                c.exit,
                c.cni_code,
                message.trim()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases wrong:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );

    let after = snapshot(&tb, &pods);
    assert_eq!(before, after, "the bad input changed state");
    println!("{} bad inputs refused, nothing changed", cases.len());

    // Control: the same ADD with good input succeeds, so the cases above
    // failed for the reason they name.
    let r = tb.moor("ADD", &victim, &cid, "1.0.0", &json!({}), None);
    r.ok("good ADD of web-2");
    check_add_result(&tb, &victim, &cid, &r.json, "1.0.0");
    let problems = tb.audit();
    assert!(problems.is_empty(), "audit: {problems:#?}");
}
