//! Where the time of one wire goes, step by step: the ADD path logs it with
//! its own steps (`node::timing`), so a slow ADD says which step was slow
//! without a profiler, and `scripts/bench --timing` tabulates it.

use std::time::{Duration, Instant};

/// How long each step of one [`super::Datapath::wire`] took. A step that
/// was not taken (no probe, the fake datapath) is zero. OVS mode adds the
/// port while the pod side is configured: `forwarding` is then the part of
/// the OVSDB transaction (up to ovs-vswitchd applying the port) that
/// outlasted the pod side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireSteps {
    /// Input checks, opening the pod's netns, starting its thread, reading
    /// the bridge.
    pub prepare: Duration,
    /// Until the pod's thread had looked CNI_IFNAME up in the pod's netns
    /// (and moved a retired pod end aside, on a re-ADD into a netns whose
    /// last veth is not reaped yet), as far as the wire waited for it.
    pub clear: Duration,
    /// The one RTM_NEWLINK that creates the pair.
    pub create: Duration,
    /// The pod's side, as the ADD waited for it: up, address, route and
    /// the announcement socket, on the pod's thread.
    pub pod_side: Duration,
    /// Of `pod_side`, how long the work waited for the pod's thread to have
    /// finished its earlier job (it starts in `prepare`, enters the netns
    /// and clears CNI_IFNAME first).
    pub pod_thread_wait: Duration,
    /// Until the host end forwards (a bridge port's state; OVS: the port
    /// applied by ovs-vswitchd).
    pub forwarding: Duration,
    /// The duplicate-address probe.
    pub probe: Duration,
    /// The first gratuitous ARP.
    pub announce: Duration,
}

/// A stopwatch that hands out the time since its last lap.
#[derive(Debug, Clone, Copy)]
pub struct Laps(Instant);

impl Laps {
    pub fn start() -> Self {
        Laps(Instant::now())
    }

    /// The time since the start or the previous lap.
    pub fn lap(&mut self) -> Duration {
        let now = Instant::now();
        let took = now.saturating_duration_since(self.0);
        self.0 = now;
        took
    }
}

pub use moor_proto::monotonic_ns;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn laps_add_up_and_the_clock_moves_forward() {
        let a = monotonic_ns();
        let mut laps = Laps::start();
        std::thread::sleep(Duration::from_millis(2));
        let first = laps.lap();
        let second = laps.lap();
        assert!(first >= Duration::from_millis(2), "{first:?}");
        assert!(second < first, "{second:?} after {first:?}");
        assert!(monotonic_ns() >= a + 2_000_000);
    }
}
