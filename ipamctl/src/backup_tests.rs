use super::*;

fn summary(records: u64) -> BackupSummary {
    BackupSummary {
        records,
        schema_version: 4,
        revision: 42,
        moor_version: "0.1.0".into(),
        store: "etcd:http://127.0.0.1:2379 (prefix /moor/)".into(),
    }
}

/// A backup of `n` records, as bytes.
fn file(n: u64) -> (Vec<u8>, End) {
    let mut w = Writer::new(Vec::new(), 1_765_000_000).unwrap();
    w.record("schema".into(), br#"{"version":4}"#.to_vec())
        .unwrap();
    for i in 1..n {
        w.record(
            format!("pools/p{i}"),
            format!(r#"{{"name":"p{i}"}}"#).into_bytes(),
        )
        .unwrap();
    }
    w.end(&summary(n)).unwrap()
}

type Records = Vec<(String, Vec<u8>)>;

fn read_all(bytes: &[u8]) -> anyhow::Result<(Records, End)> {
    let mut r = Reader::new(bytes, "b.json")?;
    let mut out = Vec::new();
    while let Some(rec) = r.next_record()? {
        out.push(rec);
    }
    Ok((out, r.end().cloned().unwrap()))
}

fn refused(bytes: &[u8]) -> String {
    format!("{:#}", read_all(bytes).unwrap_err())
}

#[test]
fn round_trip_keeps_every_record_byte_for_byte() {
    let (bytes, end) = file(3);
    let (records, read_end) = read_all(&bytes).unwrap();
    assert_eq!(read_end, end);
    assert_eq!(end.records, 3);
    assert_eq!(end.schema_version, 4);
    assert_eq!(end.sha256.len(), 64);
    assert_eq!(
        records[0],
        ("schema".to_string(), br#"{"version":4}"#.to_vec())
    );
    assert_eq!(records[2].0, "pools/p2");
    let text = String::from_utf8(bytes).unwrap();
    assert!(
        text.starts_with(
            r#"{"moor_backup":1,"created_unix":1765000000,"created":"2025-12-06T05:46:40Z""#
        ),
        "{text}"
    );
}

#[test]
fn an_edited_record_fails_the_checksum() {
    let (bytes, _) = file(3);
    let text = String::from_utf8(bytes)
        .unwrap()
        .replace(r#"\"p1\""#, r#"\"p9\""#);
    let e = refused(text.as_bytes());
    assert!(
        e.contains("fails its checksum") && e.contains("use another copy"),
        "{e}"
    );
}

#[test]
fn a_truncated_file_is_refused() {
    let (bytes, _) = file(3);
    let text = String::from_utf8(bytes).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // Without its end line.
    let cut = format!("{}\n", lines[..lines.len() - 1].join("\n"));
    let e = refused(cut.as_bytes());
    assert!(
        e.contains("truncated") && e.contains("after 3 records"),
        "{e}"
    );
    // Cut in the middle of a line.
    let e = refused(&text.as_bytes()[..text.len() / 2]);
    assert!(
        e.contains("truncated") || e.contains("is not a backup record"),
        "{e}"
    );
    // Empty.
    let e = refused(b"");
    assert!(e.contains("is not a moor backup"), "{e}");
}

#[test]
fn a_dropped_record_or_a_changed_count_is_refused() {
    let (bytes, _) = file(3);
    let text = String::from_utf8(bytes).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(2);
    let e = refused(format!("{}\n", lines.join("\n")).as_bytes());
    assert!(e.contains("fails its checksum"), "{e}");
    let counted = text.replace(r#""records":3"#, r#""records":2"#);
    let e = refused(counted.as_bytes());
    assert!(e.contains("holds 3 records and its end line says 2"), "{e}");
    let extra = format!("{text}{{\"key\":\"x\",\"value\":\"1\"}}\n");
    let e = refused(extra.as_bytes());
    assert!(e.contains("data after its end line"), "{e}");
}

#[test]
fn other_files_and_formats_are_refused() {
    let e = refused(b"{\"name\":\"web\"}\n");
    assert!(e.contains("is not a moor backup"), "{e}");
    let (bytes, _) = file(1);
    let newer =
        String::from_utf8(bytes)
            .unwrap()
            .replacen("\"moor_backup\":1", "\"moor_backup\":2", 1);
    let e = refused(newer.as_bytes());
    assert!(
        e.contains("format 2") && e.contains("reads format 1"),
        "{e}"
    );
}

#[test]
fn a_count_ipamd_disagrees_with_is_an_error() {
    let mut w = Writer::new(Vec::new(), 0).unwrap();
    w.record("schema".into(), b"{}".to_vec()).unwrap();
    let e = w.end(&summary(2)).unwrap_err().to_string();
    assert!(e.contains("says it sent 2 records and 1 arrived"), "{e}");
}

#[test]
fn missing_file_names_it() {
    let e = format!(
        "{:#}",
        verify(Path::new("/nonexistent/moor.backup")).unwrap_err()
    );
    assert!(
        e.contains("cannot read backup file /nonexistent/moor.backup"),
        "{e}"
    );
}
