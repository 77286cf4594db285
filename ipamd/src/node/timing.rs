//! One debug line per ADD and DEL saying how long each step took, so that a
//! slow ADD shows where its time went without a profiler (the anchors had no
//! ADD latency breakdown at all). Enable it with
//! `--log info,moor_ipamd::node::timing=debug`; `scripts/bench --timing`
//! collects the lines into a table (docs/benchmarks.md).
//!
//! The line, times in microseconds:
//! `ADD timing cid=C ifname=I start_ns=N total_us=T decide=.. allocate=.. ...`
//! `start_ns` is CLOCK_MONOTONIC when ipamd began the request, comparable
//! with the plugin's own stamps (`MOOR_TIMING=1`).

use std::fmt::Write;
use std::time::Duration;

use tracing::Level;

use crate::core::AttachmentKey;
use crate::datapath::{monotonic_ns, Laps, WireSteps};

/// The steps of one request, timed as they end.
pub(super) struct Timing {
    start_ns: u64,
    total: Laps,
    laps: Laps,
    steps: Vec<(&'static str, Duration)>,
}

impl Timing {
    pub(super) fn start() -> Self {
        Timing {
            start_ns: monotonic_ns(),
            total: Laps::start(),
            laps: Laps::start(),
            steps: Vec::with_capacity(16),
        }
    }

    /// `name` ended now: it took the time since the previous step.
    pub(super) fn step(&mut self, name: &'static str) {
        let took = self.laps.lap();
        self.steps.push((name, took));
    }

    /// The wire ended now, with the datapath's own steps.
    pub(super) fn wire(&mut self, w: &WireSteps) {
        self.step("wire");
        self.steps.extend([
            ("wire.prepare", w.prepare),
            ("wire.clear", w.clear),
            ("wire.create", w.create),
            ("wire.pod_side", w.pod_side),
            ("wire.pod_thread_wait", w.pod_thread_wait),
            ("wire.forwarding", w.forwarding),
            ("wire.probe", w.probe),
            ("wire.announce", w.announce),
        ]);
    }

    /// Logs the line (at debug, target `moor_ipamd::node::timing`).
    pub(super) fn log(mut self, op: &str, key: &AttachmentKey) {
        if !tracing::enabled!(Level::DEBUG) {
            return;
        }
        let total = self.total.lap();
        tracing::debug!("{}", self.line(op, key, total));
    }

    fn line(&mut self, op: &str, key: &AttachmentKey, total: Duration) -> String {
        let mut line = format!(
            "{op} timing cid={} ifname={} start_ns={} total_us={}",
            key.container_id,
            key.ifname,
            self.start_ns,
            total.as_micros()
        );
        for (name, took) in &self.steps {
            let _ = write!(line, " {name}={}", took.as_micros());
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_every_step_in_microseconds() {
        let mut t = Timing::start();
        t.step("decide");
        t.wire(&WireSteps {
            create: Duration::from_micros(1500),
            ..WireSteps::default()
        });
        let key = AttachmentKey {
            node: "n1".into(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
        };
        let line = t.line("ADD", &key, Duration::from_micros(4200));
        assert!(
            line.starts_with("ADD timing cid=c1 ifname=eth0 start_ns="),
            "{line}"
        );
        assert!(line.contains(" total_us=4200 decide="), "{line}");
        assert!(line.contains(" wire.create=1500 wire.pod_side=0"), "{line}");
        // Every field after the first two words is name=number.
        for field in line.split(' ').skip(2) {
            let (name, value) = field.split_once('=').expect(field);
            assert!(!name.is_empty());
            if !["cid", "ifname"].contains(&name) {
                value.parse::<u128>().expect(field);
            }
        }
    }
}
