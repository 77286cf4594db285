//! The fuzz harness every crate's `tests/fuzz.rs` includes (by `#[path]`,
//! so the five crates share one copy without a crate of its own).
//!
//! A target is a property over one input, given as bytes: it must not panic
//! and must refuse what it has to refuse. `run` first replays the target's
//! regression corpus, `fuzz/corpus/<target>/*`, then `MOOR_FUZZ_CASES`
//! generated inputs (default 256, so the test suite stays fast;
//! `scripts/fuzz` runs 100,000). A generated input that fails is shrunk by
//! proptest and saved into the corpus as `crash-<hash>.bin`, so it is
//! replayed from then on.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Map, Number, Value};

/// Generated cases per target: `MOOR_FUZZ_CASES`, default 256.
pub fn cases() -> u32 {
    match std::env::var("MOOR_FUZZ_CASES") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("MOOR_FUZZ_CASES={v:?} is not a number of cases")),
        Err(_) => 256,
    }
}

pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// The target's corpus files, by name. Every target has one.
pub fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{target}: no regression corpus at {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "{target}: empty corpus {}",
        dir.display()
    );
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// The corpus files that are JSON: the valid examples near-valid inputs are
/// made from.
pub fn json_seeds(target: &str) -> Vec<Value> {
    corpus(target)
        .into_iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "json"))
        .filter_map(|(_, b)| serde_json::from_slice(&b).ok())
        .collect()
}

/// Replays the corpus, then runs the generated cases; panics (the test
/// fails) on the first input that makes `check` panic, after saving it.
pub fn run<S>(target: &str, inputs: S, check: impl Fn(&[u8]))
where
    S: Strategy<Value = Vec<u8>>,
{
    let started = Instant::now();
    let corpus = corpus(target);
    for (path, bytes) in &corpus {
        let replay = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(bytes)));
        if replay.is_err() {
            panic!("{target}: regression input {} fails again", path.display());
        }
    }
    let cases = cases();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2048,
        ..Config::default()
    });
    let outcome = runner.run(&inputs, |input| {
        check(&input);
        Ok(())
    });
    if let Err(e) = outcome {
        let input = match &e {
            proptest::test_runner::TestError::Fail(_, input) => Some(input.clone()),
            proptest::test_runner::TestError::Abort(_) => None,
        };
        let saved = input.map(|input| save_crash(target, &input));
        panic!(
            "{target}: {e}; minimal input {}",
            saved.map_or("not saved".into(), |p| format!("saved as {}", p.display()))
        );
    }
    eprintln!(
        "fuzz {target}: {} corpus inputs + {cases} cases in {:.1} s, 0 panics",
        corpus.len(),
        started.elapsed().as_secs_f64()
    );
}

fn save_crash(target: &str, input: &[u8]) -> PathBuf {
    // FNV-1a: a stable name, so the same crash is saved once.
    let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    let path = corpus_dir(target).join(format!("crash-{hash:016x}.bin"));
    std::fs::write(&path, input).unwrap();
    path
}

/// Any bytes, short and long.
pub fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        prop::collection::vec(any::<u8>(), 0..2048),
    ]
}

/// Strings a parser may choke on: control characters, NUL, a BOM,
/// right-to-left marks, combining marks, emoji, lone surrogate escapes,
/// separators, long runs.
pub fn odd_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9.-]{0,20}",
        2 => any::<String>(),
        1 => prop::sample::select(vec![
            "", " ", "\0", "\u{feff}", "\u{202e}abc", "e\u{301}", "\u{1f600}", "..", "/", "-",
            "a;b=c", "=", ";", "\n", "\\", "\"", "0", "-1", "1e999", "null", "true",
            "ADD", "DEL", "eth0", "default", "10.0.0.1", "10.0.0.0/24", "::1", "fe80::1%eth0",
            "ｅｔｈ０", "İ", "ß",
        ])
        .prop_map(str::to_string),
        1 => (prop::sample::select(vec!["a", "\u{1f600}", "é", "-", "0"]), 60usize..5000)
            .prop_map(|(s, n)| s.repeat(n)),
    ]
}

/// Numbers at the edges of every integer width and of f64.
pub fn odd_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::sample::select(vec![
            json!(0),
            json!(-1),
            json!(1),
            json!(255),
            json!(256),
            json!(4094),
            json!(4095),
            json!(65535),
            json!(65536),
            json!(u32::MAX),
            json!(u64::from(u32::MAX) + 1),
            json!(i64::MAX),
            json!(i64::MIN),
            json!(u64::MAX),
            json!(0.5),
            json!(-0.0),
            json!(1e300),
            json!(-1e300),
            json!(f64::MIN_POSITIVE),
        ]),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
    ]
}

/// Any JSON value, a few levels deep.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        odd_number(),
        odd_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((odd_string(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Nesting deeper than serde_json's recursion limit (128), and unbalanced.
pub fn deep_nesting() -> impl Strategy<Value = Vec<u8>> {
    (1usize..3000, any::<bool>(), any::<bool>()).prop_map(|(depth, object, closed)| {
        let (open, close) = if object {
            (r#"{"a":"#, "}")
        } else {
            ("[", "]")
        };
        let mut s = open.repeat(depth);
        s.push('1');
        if closed {
            s.push_str(&close.repeat(depth));
        }
        s.into_bytes()
    })
}

/// One change to a valid document.
#[derive(Debug, Clone)]
pub enum Edit {
    /// The value at the picked place becomes another value (a wrong type,
    /// a huge number, an odd string...).
    Replace(usize, Value),
    /// The field or element at the picked place goes.
    Remove(usize),
    /// An extra field in the picked object.
    Insert(usize, String, Value),
    /// The value at the picked place is wrapped in an array.
    Wrap(usize),
}

pub fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<usize>(), json_value()).prop_map(|(i, v)| Edit::Replace(i, v)),
        2 => any::<usize>().prop_map(Edit::Remove),
        1 => (any::<usize>(), odd_string(), json_value()).prop_map(|(i, k, v)| Edit::Insert(i, k, v)),
        1 => any::<usize>().prop_map(Edit::Wrap),
    ]
}

/// Paths (object keys and array indexes) to every value in `v`.
fn paths(v: &Value, here: &mut Vec<PathStep>, out: &mut Vec<Vec<PathStep>>) {
    out.push(here.clone());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                here.push(PathStep::Key(k.clone()));
                paths(child, here, out);
                here.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                here.push(PathStep::Index(i));
                paths(child, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

#[derive(Debug, Clone)]
enum PathStep {
    Key(String),
    Index(usize),
}

fn at<'a>(v: &'a mut Value, path: &[PathStep]) -> &'a mut Value {
    path.iter().fold(v, |v, step| match step {
        PathStep::Key(k) => &mut v[k.as_str()],
        PathStep::Index(i) => &mut v[*i],
    })
}

pub fn apply(doc: &mut Value, edit: &Edit) {
    let mut all = Vec::new();
    paths(doc, &mut Vec::new(), &mut all);
    let pick = |i: usize| all[i % all.len()].clone();
    match edit {
        Edit::Replace(i, v) => *at(doc, &pick(*i)) = v.clone(),
        Edit::Wrap(i) => {
            let place = at(doc, &pick(*i));
            *place = Value::Array(vec![place.take()]);
        }
        Edit::Remove(i) => {
            let path = pick(*i);
            if let Some((last, parent)) = path.split_last() {
                match (at(doc, parent), last) {
                    (Value::Object(m), PathStep::Key(k)) => {
                        m.remove(k);
                    }
                    (Value::Array(a), PathStep::Index(i)) => {
                        a.remove(*i);
                    }
                    _ => {}
                }
            }
        }
        Edit::Insert(i, k, v) => {
            if let Value::Object(m) = at(doc, &pick(*i)) {
                m.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Valid documents with one to four edits; sometimes the text is then cut
/// short or has one byte changed.
pub fn near_valid(seeds: Vec<Value>) -> impl Strategy<Value = Vec<u8>> {
    assert!(!seeds.is_empty(), "near_valid needs a valid seed");
    (
        prop::sample::select(seeds),
        prop::collection::vec(edit(), 1..5),
        prop_oneof![
            6 => Just(None),
            1 => (any::<usize>(), any::<Option<u8>>()).prop_map(Some),
        ],
    )
        .prop_map(|(mut doc, edits, damage)| {
            for e in &edits {
                apply(&mut doc, e);
            }
            let mut bytes = serde_json::to_vec(&doc).unwrap();
            if let Some((at, byte)) = damage {
                let at = at % (bytes.len() + 1);
                match byte {
                    Some(b) if at < bytes.len() => bytes[at] = b,
                    _ => bytes.truncate(at),
                }
            }
            bytes
        })
}

/// What most JSON targets get: near-valid documents from the target's
/// corpus seeds (most often), any JSON, deep nesting, any bytes.
pub fn json_inputs(target: &str) -> impl Strategy<Value = Vec<u8>> {
    json_inputs_from(json_seeds(target))
}

/// `json_inputs`, with near-valid documents made from `seeds`.
pub fn json_inputs_from(seeds: Vec<Value>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => near_valid(seeds),
        2 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => deep_nesting(),
        1 => bytes(),
    ]
}

/// Whether `bytes` is JSON at all: what is not must never be accepted.
pub fn is_json(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
}
