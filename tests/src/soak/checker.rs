//! The independent checker: scans every network namespace of the cluster
//! (pods', nodes', ToRs') all along and reports an IP live in two places
//! (BRIEF.md invariant 1: live = configured on an interface that is up
//! with carrier).
//!
//! One scan reads the namespaces one after another, so a pod's IP that
//! moved from one pod to another between two reads would look doubled. A
//! duplicate is therefore confirmed before it is reported: place A read
//! live, then place B read live, then A read live again. An interface is
//! live for one stretch of time (made, up, retired by DEL, never live
//! again), so A was live while B was read: both at once.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;

use super::{Bed, Shared};

/// A place an IP can be live: (netns, interface).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Place {
    pub netns: String,
    pub ifname: String,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.netns, self.ifname)
    }
}

/// A confirmed IP live in two places.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    pub ip: IpAddr,
    pub places: (Place, Place),
}

/// The addresses (global scope; not link-local) of every interface of
/// `netns` that is up with carrier. None if the netns is gone.
pub fn live_addresses(netns: &str) -> Option<Vec<(String, IpAddr)>> {
    let out = Command::new("ip")
        .args(["-n", netns, "-j", "addr", "show"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let links: Value = serde_json::from_slice(&out.stdout).ok()?;
    let mut live = Vec::new();
    for l in links.as_array()? {
        let flags: Vec<&str> = l["flags"]
            .as_array()
            .map(|f| f.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        // UP: the admin state; LOWER_UP: carrier.
        if !(flags.contains(&"UP") && flags.contains(&"LOWER_UP")) {
            continue;
        }
        let ifname = l["ifname"].as_str().unwrap_or_default();
        if ifname == "lo" {
            continue;
        }
        for a in l["addr_info"].as_array().into_iter().flatten() {
            if a["scope"] != "global" {
                continue;
            }
            if let Some(ip) = a["local"].as_str().and_then(|s| s.parse().ok()) {
                live.push((ifname.to_string(), ip));
            }
        }
    }
    Some(live)
}

/// Is `ip` live on `place` now?
fn live_at(place: &Place, ip: IpAddr) -> bool {
    live_addresses(&place.netns)
        .unwrap_or_default()
        .iter()
        .any(|(i, a)| *i == place.ifname && *a == ip)
}

/// The namespaces under /run/netns whose names start with `prefix`.
pub fn namespaces(prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// One scan of `netns`: every IP live in two places, each confirmed (see
/// the module doc). Returns the duplicates and the number of live
/// addresses seen.
pub fn scan(netns: &[String]) -> (Vec<Duplicate>, usize) {
    let mut at: BTreeMap<IpAddr, Vec<Place>> = BTreeMap::new();
    let mut seen = 0;
    for ns in netns {
        for (ifname, ip) in live_addresses(ns).unwrap_or_default() {
            seen += 1;
            at.entry(ip).or_default().push(Place {
                netns: ns.clone(),
                ifname,
            });
        }
    }
    let mut dups = Vec::new();
    for (ip, places) in at {
        for i in 0..places.len() {
            for j in i + 1..places.len() {
                let (a, b) = (&places[i], &places[j]);
                if live_at(a, ip) && live_at(b, ip) && live_at(a, ip) {
                    dups.push(Duplicate {
                        ip,
                        places: (a.clone(), b.clone()),
                    });
                }
            }
        }
    }
    (dups, seen)
}

/// Scans the bed's namespaces until told to stop; each duplicate is a
/// violation.
pub fn run(bed: &Bed, shared: &Shared) {
    let prefix = format!("{}-", bed.cluster().id);
    // Each duplicate once, however many scans see it.
    let mut reported = std::collections::BTreeSet::new();
    while !shared.stop_checker.load(Ordering::SeqCst) {
        let ns = namespaces(&prefix);
        let (dups, seen) = scan(&ns);
        shared.figures.bump("checker: scans");
        shared
            .figures
            .add("checker: live addresses seen", seen as u64);
        for d in dups {
            if !reported.insert((d.ip, d.places.clone())) {
                continue;
            }
            shared.figures.violation(format!(
                "{} live in two places at once: {} and {}",
                d.ip, d.places.0, d.places.1
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
