//! Issue 15, done-when 1: the 2-minute soak (both modes at once, each on
//! its own 3-node cluster), and the checker shown to catch a planted IP
//! live in two places. The full run is `scripts/soak`
//! (docs/reliability.md).

use moor_e2e::soak::checker::scan;
use moor_e2e::soak::faults::Fault;
use moor_e2e::soak::{self, Config, Figures, Mode};
use moor_testkit::Netns;

/// Stop starting ops after this long; with the clusters' set-up and the
/// end checks the test takes about 2 minutes.
const SECONDS: u64 = 90;

fn short(mode: Mode, seed: u64) -> Config {
    Config {
        mode,
        ops: 1_500,
        faults: 6,
        seconds: SECONDS,
        seed,
        workers_per_node: 2,
    }
}

#[test]
fn two_minute_soak_has_no_violation() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    println!("soak test: seed {seed} (scripts/soak --seed {seed} ... repeats its choices)");
    // Each mode on its own thread, which keeps its cluster.
    let runs: Vec<(Mode, Figures)> = std::thread::scope(|s| {
        let handles =
            [Mode::Physical, Mode::Ovs].map(|m| (m, s.spawn(move || soak::run(short(m, seed)))));
        handles
            .into_iter()
            .map(|(m, h)| (m, h.join().expect("a soak run panicked")))
            .collect()
    });
    for (mode, f) in &runs {
        println!("==== soak {mode}, seed {seed}\n{f}");
    }
    for (mode, f) in &runs {
        assert_eq!(
            f.violations(),
            Vec::<String>::new(),
            "soak {mode}, seed {seed}"
        );
        for kind in Fault::kinds(*mode) {
            assert!(
                f.get(&format!("faults: {}", kind.name())) >= 1,
                "soak {mode}, seed {seed}: no {} happened",
                kind.name()
            );
        }
        assert!(f.get("ADD: succeeded") > 0 && f.get("DEL: succeeded") > 0);
        assert!(
            f.get("ops: move StatefulSet pod") > 0,
            "soak {mode}: no move"
        );
        assert!(
            f.get("checker: scans") > 0,
            "soak {mode}: the checker never ran"
        );
        if *mode == Mode::Ovs {
            assert!(
                f.get("ADD: dual-stack results") > 0,
                "soak ovs: no dual-stack pod"
            );
        }
    }
}

/// The checker's scan finds an IP planted on two live interfaces, and only
/// while both are live (up with carrier).
#[test]
fn checker_catches_a_planted_duplicate() {
    let a = Netns::new("soak-a");
    let b = Netns::new("soak-b");
    let both = [a.name.clone(), b.name.clone()];
    a.ip(&[
        "link", "add", "x0", "type", "veth", "peer", "name", "y0", "netns", &b.name,
    ]);
    a.ip(&["addr", "add", "10.254.7.9/24", "dev", "x0"]);
    b.ip(&["addr", "add", "10.254.7.9/24", "dev", "y0"]);
    a.ip(&["addr", "add", "10.254.7.10/24", "dev", "x0"]);
    // Down: nothing is live.
    let (dups, seen) = scan(&both);
    assert!(dups.is_empty() && seen == 0, "{dups:?}, {seen} live");
    // x0 up, y0 down: x0 has no carrier; still nothing live.
    a.ip(&["link", "set", "x0", "up"]);
    let (dups, seen) = scan(&both);
    assert!(dups.is_empty() && seen == 0, "{dups:?}, {seen} live");
    // Both up: 10.254.7.9 is live in two places, 10.254.7.10 in one.
    b.ip(&["link", "set", "y0", "up"]);
    let (dups, seen) = scan(&both);
    assert_eq!(seen, 3);
    assert_eq!(dups.len(), 1, "{dups:?}");
    assert_eq!(dups[0].ip.to_string(), "10.254.7.9");
    let places = [&dups[0].places.0, &dups[0].places.1].map(|p| p.to_string());
    assert_eq!(places, [format!("{}/x0", a.name), format!("{}/y0", b.name)]);
    // One end down again (a DEL retires a pod's link so): not live twice.
    b.ip(&["link", "set", "y0", "down"]);
    let (dups, _) = scan(&both);
    assert!(dups.is_empty(), "{dups:?}");
}
