//! The counts a soak run keeps and prints: ops by kind, ADD failures by
//! cause, DEL retries, faults of each kind, checker scans, violations.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

/// Counters by name, and the violations found, shared by every thread of
/// a run.
#[derive(Debug, Default)]
pub struct Figures {
    counts: Mutex<BTreeMap<String, u64>>,
    violations: Mutex<Vec<String>>,
    /// One example message per failure cause, to read what it said.
    examples: Mutex<BTreeMap<String, String>>,
    wall: Mutex<Duration>,
}

impl Figures {
    pub fn add(&self, what: &str, n: u64) {
        *self
            .counts
            .lock()
            .unwrap()
            .entry(what.to_string())
            .or_default() += n;
    }

    pub fn bump(&self, what: &str) {
        self.add(what, 1);
    }

    /// Counts a failure of `what` and keeps its first message.
    pub fn failure(&self, what: &str, message: &str) {
        self.bump(what);
        self.examples
            .lock()
            .unwrap()
            .entry(what.to_string())
            .or_insert_with(|| message.chars().take(300).collect());
    }

    pub fn get(&self, what: &str) -> u64 {
        self.counts.lock().unwrap().get(what).copied().unwrap_or(0)
    }

    /// Records a broken invariant (printed at once, too).
    pub fn violation(&self, what: String) {
        eprintln!("soak: VIOLATION: {what}");
        self.violations.lock().unwrap().push(what);
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }

    pub fn set_wall(&self, d: Duration) {
        *self.wall.lock().unwrap() = d;
    }

    pub fn wall(&self) -> Duration {
        *self.wall.lock().unwrap()
    }

    /// Every counter whose name starts with `prefix`, the prefix cut.
    pub fn with_prefix(&self, prefix: &str) -> BTreeMap<String, u64> {
        self.counts
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), *v)))
            .collect()
    }
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts = self.counts.lock().unwrap();
        let mut section = "";
        for (k, v) in counts.iter() {
            let (head, name) = k.split_once(": ").unwrap_or(("", k));
            if head != section {
                writeln!(f, "{head}:")?;
                section = head;
            }
            writeln!(f, "  {name:<44} {v:>8}")?;
        }
        let examples = self.examples.lock().unwrap();
        if !examples.is_empty() {
            writeln!(f, "first message of each failure cause:")?;
            for (k, m) in examples.iter() {
                writeln!(f, "  {k}: {m}")?;
            }
        }
        let violations = self.violations.lock().unwrap();
        writeln!(f, "wall time: {:.1?}", *self.wall.lock().unwrap())?;
        writeln!(f, "violations: {}", violations.len())?;
        for v in violations.iter() {
            writeln!(f, "  {v}")?;
        }
        Ok(())
    }
}

/// The message of a thread's panic.
pub fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(not a string)".into())
}
