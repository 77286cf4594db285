use std::time::Duration;

use super::*;

fn line_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn pool(pool: &str, tor: &str, total: u32, free: u32) -> PoolUse {
    PoolUse {
        pool: pool.into(),
        tor: tor.into(),
        total,
        free,
        bound: 1,
        in_use: total - free - 1,
    }
}

#[tokio::test]
async fn requests_count_by_op_and_code_and_time_into_every_bucket() {
    let m = Metrics::new();
    m.cni_request("ADD", 0, Duration::from_millis(3));
    m.cni_request("ADD", 0, Duration::from_secs(45));
    m.cni_request("ADD", 100, Duration::from_millis(1));
    m.cni_request("DEL", 0, Duration::from_micros(200));
    let text = m.encode(Snapshot::default()).await;
    let v = |s: &str| line_value(&text, s);
    assert_eq!(
        v(r#"moor_cni_requests_total{op="ADD",code="0"}"#),
        Some(2.0)
    );
    assert_eq!(
        v(r#"moor_cni_requests_total{op="ADD",code="100"}"#),
        Some(1.0)
    );
    assert_eq!(
        v(r#"moor_cni_request_duration_seconds_count{op="ADD"}"#),
        Some(3.0)
    );
    // 45 s lands in the 60 s bucket, not in +Inf alone.
    assert_eq!(
        v(r#"moor_cni_request_duration_seconds_bucket{le="30.0",op="ADD"}"#),
        Some(2.0)
    );
    assert_eq!(
        v(r#"moor_cni_request_duration_seconds_bucket{le="60.0",op="ADD"}"#),
        Some(3.0)
    );
    // Commands not seen yet are there, at 0.
    assert_eq!(
        v(r#"moor_cni_request_duration_seconds_count{op="GC"}"#),
        Some(0.0)
    );
    assert!(text.contains("moor_build_info{"), "{text}");
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
}

#[tokio::test]
async fn pool_series_follow_the_snapshot_and_vanish_with_the_pool() {
    let m = Metrics::new();
    let text = m
        .encode(Snapshot {
            pools: Some(vec![pool("web", "t1", 10, 4), pool("db", "t1", 3, 0)]),
            attachments: Some(5),
            pending_dels: Some(2),
        })
        .await;
    let v = |s: &str| line_value(&text, s);
    assert_eq!(
        v(r#"moor_pool_ips{pool="web",tor="t1",state="total"}"#),
        Some(10.0)
    );
    assert_eq!(
        v(r#"moor_pool_ips{pool="web",tor="t1",state="free"}"#),
        Some(4.0)
    );
    assert_eq!(
        v(r#"moor_pool_ips{pool="web",tor="t1",state="in_use"}"#),
        Some(5.0)
    );
    assert_eq!(
        v(r#"moor_pool_ips{pool="db",tor="t1",state="free"}"#),
        Some(0.0)
    );
    assert_eq!(v("moor_node_attachments"), Some(5.0));
    assert_eq!(v("moor_pending_dels"), Some(2.0));

    // db deleted; attachments unreadable this time: the last value stays.
    let text = m
        .encode(Snapshot {
            pools: Some(vec![pool("web", "t1", 10, 3)]),
            attachments: None,
            pending_dels: Some(0),
        })
        .await;
    assert!(!text.contains(r#"pool="db""#), "{text}");
    assert_eq!(
        line_value(&text, r#"moor_pool_ips{pool="web",tor="t1",state="free"}"#),
        Some(3.0)
    );
    assert_eq!(line_value(&text, "moor_node_attachments"), Some(5.0));
    assert_eq!(line_value(&text, "moor_pending_dels"), Some(0.0));

    // The store is down: the pool series stay as they were.
    let text = m.encode(Snapshot::default()).await;
    assert_eq!(
        line_value(&text, r#"moor_pool_ips{pool="web",tor="t1",state="free"}"#),
        Some(3.0)
    );
}

#[tokio::test]
async fn the_store_is_down_only_when_it_did_not_answer() {
    let m = Metrics::new();
    let ms = Duration::from_millis(1);
    m.store_request("etcd", "commit", ms, None);
    let up = r#"moor_store_up{backend="etcd"}"#;
    assert_eq!(
        line_value(&m.encode(Snapshot::default()).await, up),
        Some(1.0)
    );
    m.store_request("etcd", "get", ms, Some("unavailable"));
    let text = m.encode(Snapshot::default()).await;
    assert_eq!(line_value(&text, up), Some(0.0));
    assert_eq!(
        line_value(
            &text,
            r#"moor_store_errors_total{backend="etcd",kind="unavailable"}"#
        ),
        Some(1.0)
    );
    m.store_request("etcd", "get", ms, Some("corrupt"));
    assert_eq!(
        line_value(&m.encode(Snapshot::default()).await, up),
        Some(1.0)
    );
}

#[tokio::test]
async fn counters_of_the_datapath_sweep_and_refusals() {
    let m = Metrics::new();
    m.pool_full("web", "t1");
    m.pool_full("web", "t1");
    m.announcement("ipv4");
    m.dad_conflict();
    m.sweep_released(3);
    let text = m.encode(Snapshot::default()).await;
    let v = |s: &str| line_value(&text, s);
    assert_eq!(v(r#"moor_pool_full_total{pool="web",tor="t1"}"#), Some(2.0));
    assert_eq!(v(r#"moor_announcements_total{family="ipv4"}"#), Some(1.0));
    assert_eq!(v("moor_dad_conflicts_total"), Some(1.0));
    assert_eq!(v("moor_sweep_released_total"), Some(3.0));
}
