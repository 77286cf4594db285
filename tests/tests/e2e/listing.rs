//! The admin listings stream: ipamd reads the store a page at a time and
//! sends `ip list` in messages of at most 500 IPs, ipamctl prints them as
//! they come (real ipamd on redb, real ipamctl, and ipamd's gRPC API called
//! directly to see the messages). An ipamctl older than the stream (the
//! unary ListIps) gets an error naming the fix, not the first message.

use moor_e2e::grpc::unix_channel;
use std::net::Ipv4Addr;

use moor_e2e::Testbed;
use moor_proto::v1::admin_client::AdminClient;
use moor_proto::v1::{ListIpsRequest, ListPoolsRequest};
use serde_json::Value;

/// Pools on the big ToR, and IPs each: 3,000 IPs in all.
const POOLS: usize = 12;
const SIZE: u32 = 250;

fn pool_name(i: usize) -> String {
    format!("list-{i:02}")
}

/// The sizes of the messages of ipamd's StreamIps (every pool), and what
/// the replaced unary ListIps answers.
fn messages(tb: &Testbed) -> (Vec<usize>, tonic::Status) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let channel = unix_channel(&tb.socket).await.expect("connect to ipamd");
        let mut admin = AdminClient::new(channel);
        let mut stream = admin
            .stream_ips(ListIpsRequest::default())
            .await
            .expect("StreamIps")
            .into_inner();
        let mut sizes = Vec::new();
        while let Some(m) = stream.message().await.expect("a message") {
            sizes.push(m.ips.len());
        }
        let old = admin
            .list_ips(ListIpsRequest::default())
            .await
            .expect_err("the unary ListIps is refused");
        let old_pools = admin
            .list_pools(ListPoolsRequest {})
            .await
            .expect_err("the unary ListPools is refused");
        assert_eq!(old_pools.code(), tonic::Code::FailedPrecondition);
        (sizes, old)
    })
}

#[test]
fn ip_list_of_thousands_streams_in_order() {
    let tb = Testbed::new();
    let ctl = tb.ctl();
    ctl.tor_add(
        "big",
        "10.250.0.0/20",
        Ipv4Addr::new(10, 250, 0, 1),
        (
            Ipv4Addr::new(10, 250, 0, 10),
            Ipv4Addr::new(10, 250, 15, 250),
        ),
        &[],
    );
    // Created last name first: the first pool in name order holds the
    // highest IPs, so an order by address alone would not pass.
    for i in (0..POOLS).rev() {
        ctl.create_pool(&pool_name(i), &pool_name(i), SIZE, &["big"]);
    }
    // A few bindings, listed by their own stream.
    let first = ctl.pool_export(&pool_name(0));
    for (k, ip) in first.iter().take(3).enumerate() {
        ctl.ok(&["binding", "add", &format!("shop/db-{k}"), ip]);
    }

    let ips = tb.ip_list();
    let total = POOLS * SIZE as usize;
    assert_eq!(ips.len(), total, "every IP of every pool");
    let key = |v: &Value| {
        let ip: Ipv4Addr = v["address"].as_str().unwrap().parse().unwrap();
        (v["pool"].as_str().unwrap().to_string(), ip)
    };
    let keys: Vec<(String, Ipv4Addr)> = ips.iter().map(key).collect();
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "pools by name, each pool's IPs by address, none twice"
    );
    for i in 0..POOLS {
        let mut export: Vec<Ipv4Addr> = ctl
            .pool_export(&pool_name(i))
            .iter()
            .map(|ip| ip.parse().unwrap())
            .collect();
        export.sort();
        let listed: Vec<Ipv4Addr> = keys
            .iter()
            .filter(|(p, _)| *p == pool_name(i))
            .map(|(_, ip)| *ip)
            .collect();
        assert_eq!(
            listed,
            export,
            "ip list shows exactly {}'s IPs",
            pool_name(i)
        );
    }
    let bound: Vec<&Value> = ips.iter().filter(|v| v["state"] == "bound").collect();
    assert_eq!(bound.len(), 3, "the bindings show in ip list");

    // The table: a header and a line per IP, every line with 7 fields.
    let out = tb.ipamctl(&["ip", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    assert_eq!(table.lines().count(), total + 1);
    assert!(table.lines().all(|l| l.split_whitespace().count() == 7));

    let pools = tb.ipamctl_json(&["pool", "list"]);
    let names: Vec<&str> = pools
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        (0..POOLS).map(pool_name).collect::<Vec<_>>(),
        "pool list: every pool, by name"
    );
    let bindings = tb.ipamctl_json(&["binding", "list", "--pool", &pool_name(0)]);
    assert_eq!(bindings.as_array().unwrap().len(), 3, "{bindings}");
    assert_eq!(bindings[0]["pod"]["name"], "db-0");

    // On the wire: several messages of at most 500 IPs, adding up.
    let (sizes, old) = messages(&tb);
    assert!(sizes.len() >= total / 500, "{sizes:?}");
    assert!(sizes.iter().all(|&n| (1..=500).contains(&n)), "{sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), total);
    assert_eq!(old.code(), tonic::Code::FailedPrecondition);
    assert!(
        old.message().contains("StreamIps") && old.message().contains("ipamctl of ipamd's release"),
        "{old:?}"
    );
}
