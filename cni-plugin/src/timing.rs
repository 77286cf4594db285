//! `MOOR_TIMING=1`: one line on stderr (never stdout, the result channel)
//! with CLOCK_MONOTONIC stamps of the plugin's steps, so a benchmark can
//! line them up with its own spawn and exit and with ipamd's timing line
//! (`moor_ipamd::node::timing`, same clock):
//! `moor timing cmd=ADD main=N config=N runtime=N connected=N replied=N done=N`
//! (a step not reached is 0).

use std::sync::atomic::{AtomicU64, Ordering};

use moor_proto::monotonic_ns;

#[derive(Debug, Clone, Copy)]
pub enum Stamp {
    /// `main` entered: what came before is exec and the dynamic loader.
    Main,
    /// stdin read, the config decoded, logging set up.
    Config,
    /// The async runtime built.
    Runtime,
    /// Connected to ipamd (socket and HTTP/2 handshake).
    Connected,
    /// ipamd's answer in.
    Replied,
    /// The result written; the process exits next.
    Done,
}

const NAMES: [&str; 6] = ["main", "config", "runtime", "connected", "replied", "done"];

static STAMPS: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];

/// Records `s` as now.
pub fn mark(s: Stamp) {
    STAMPS[s as usize].store(monotonic_ns(), Ordering::Relaxed);
}

/// The line, when MOOR_TIMING is 1.
pub fn report(cmd: &str, moor_timing: Option<&str>) {
    if moor_timing.map(str::trim) != Some("1") {
        return;
    }
    eprintln!("{}", line(cmd));
}

fn line(cmd: &str) -> String {
    let mut out = format!("moor timing cmd={cmd}");
    for (name, stamp) in NAMES.iter().zip(&STAMPS) {
        out.push_str(&format!(" {name}={}", stamp.load(Ordering::Relaxed)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_in_order_and_named() {
        mark(Stamp::Main);
        mark(Stamp::Done);
        let l = line("ADD");
        assert!(l.starts_with("moor timing cmd=ADD main="), "{l}");
        let v: Vec<u64> = l
            .split(' ')
            .skip(3)
            .map(|f| f.split_once('=').unwrap().1.parse().unwrap())
            .collect();
        assert_eq!(v.len(), 6, "{l}");
        assert!(v[0] > 0 && v[5] >= v[0], "{l}");
    }
}
