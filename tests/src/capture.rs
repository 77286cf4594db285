//! tcpdump on one interface of a namespace, for tests that show which
//! frames went on a wire (e.g. a moved pod's announcements on a node's
//! uplink). One capture is one tcpdump process, decoding as it captures
//! (`-l -n -e -vv`) into a file of its own; [`Capture::stop`] ends it by pid
//! and returns the frames, one line each. Drop kills it if the test
//! panicked first.

use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use moor_testkit::process::{kill9, kill_with_thread, terminate};
use moor_testkit::TempDir;

/// How long tcpdump may take to open the interface.
const LISTENING: Duration = Duration::from_secs(10);

pub struct Capture {
    child: Option<Child>,
    dir: TempDir,
    /// "tcpdump on IF in NETNS (FILTER)", for messages.
    what: String,
}

impl Capture {
    /// Starts tcpdump on `ifname` in `netns` with the pcap filter `filter`
    /// and returns once it listens, so that no frame sent after this
    /// returns is missed.
    pub fn start(netns: &str, ifname: &str, filter: &str) -> Capture {
        let dir = TempDir::new("moor-capture");
        let what = format!("tcpdump on {ifname} in {netns} ({filter})");
        let (out, err) = (dir.path().join("frames"), dir.path().join("stderr"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns, "tcpdump", "-i", ifname])
            // Line-buffered, numeric, link-level headers, full decode.
            .args(["-l", "-n", "-e", "-vv", filter])
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("capture output file"))
            .stderr(File::create(&err).expect("capture stderr file"));
        kill_with_thread(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: cannot start it ({e}); is tcpdump installed?"));
        let mut c = Capture {
            child: Some(child),
            dir,
            what,
        };
        let started = Instant::now();
        loop {
            let said = std::fs::read_to_string(&err).unwrap_or_default();
            if said.contains("listening on") {
                return c;
            }
            let exited = c.child.as_mut().and_then(|ch| ch.try_wait().ok().flatten());
            assert!(
                exited.is_none() && started.elapsed() < LISTENING,
                "{} did not start listening within {LISTENING:?} (exit {exited:?}): {said}",
                c.what
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops tcpdump (SIGTERM, by pid) and returns every frame it decoded,
    /// one line each (tcpdump's continuation lines joined to their frame).
    pub fn stop(mut self) -> Vec<String> {
        if let Some(child) = self.child.take() {
            terminate(child, Duration::from_secs(3));
        }
        let text = std::fs::read_to_string(self.dir.path().join("frames"))
            .unwrap_or_else(|e| panic!("{}: no output ({e})", self.what));
        let mut frames: Vec<String> = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match frames.last_mut() {
                Some(frame) if line.starts_with([' ', '\t']) => {
                    frame.push(' ');
                    frame.push_str(line.trim());
                }
                _ => frames.push(line.to_string()),
            }
        }
        frames
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill9(&mut child);
        }
    }
}
