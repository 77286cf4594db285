//! A private Open vSwitch per test: ovsdb-server on a socket in a temp dir and
//! ovs-vswitchd (userspace datapath) inside a fresh network namespace, so the
//! tap devices it creates (`ovs-netdev`, one per bridge) vanish with the
//! namespace. Everything started is stopped by pid and removed in Drop, also
//! when the test panics. Missing binaries fail the test: never skipped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cmd::try_run;
use crate::netns::Netns;
use crate::process::{terminate, STOP_GRACE};

const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

pub struct Ovs {
    pub dir: PathBuf,
    pub netns: String,
    pub sock: PathBuf,
    ovsdb_server: Option<Child>,
    vswitchd: Option<Child>,
    /// The namespace `start` made (None for `start_in`); deleted after the
    /// daemons stop.
    made_netns: Option<Netns>,
    /// ovsdb-server runs in `netns` too (an existing namespace: `start_in`).
    ovsdb_in_netns: bool,
}

/// Runs `cmd`, which must succeed; its stdout, trimmed.
fn run(cmd: &mut Command) -> String {
    try_run(cmd)
        .unwrap_or_else(|e| panic!("{e} (is openvswitch-switch installed?)"))
        .trim()
        .to_string()
}

impl Ovs {
    /// ovsdb-server with an initialized database, and ovs-vswitchd in a new
    /// network namespace.
    pub fn start() -> Ovs {
        Self::start_with(None)
    }

    /// The same with ovsdb-server and ovs-vswitchd in `netns`, an existing
    /// namespace that its maker deletes (so that the node of a multi-node
    /// testbed holds its own switch).
    pub fn start_in(netns: &str) -> Ovs {
        Self::start_with(Some(netns))
    }

    fn start_with(netns: Option<&str>) -> Ovs {
        let id = crate::unique("moor-ovs");
        // Short: a unix socket path must fit in 108 bytes.
        let dir = PathBuf::from(format!("/tmp/{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // From here on Drop cleans up whatever was started.
        let mut ovs = Ovs {
            sock: dir.join("db.sock"),
            netns: netns.map_or_else(|| id.clone(), str::to_string),
            dir,
            ovsdb_server: None,
            vswitchd: None,
            made_netns: None,
            ovsdb_in_netns: netns.is_some(),
        };
        run(Command::new("ovsdb-tool")
            .arg("create")
            .arg(ovs.dir.join("conf.db"))
            .arg(SCHEMA));
        ovs.start_ovsdb_server();
        ovs.vsctl(&["--no-wait", "init"]);
        if netns.is_none() {
            ovs.made_netns = Some(Netns::add(ovs.netns.clone()).unwrap_or_else(|e| panic!("{e}")));
        }
        ovs.start_vswitchd();
        ovs
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        // Keep every OVS runtime file (pidfiles, control and bridge
        // management sockets) in our dir, apart from other instances.
        for var in ["OVS_RUNDIR", "OVS_LOGDIR", "OVS_DBDIR"] {
            cmd.env(var, &self.dir);
        }
        cmd
    }

    /// Starts (or restarts, on the same database and socket) ovsdb-server and
    /// waits until it accepts connections.
    pub fn start_ovsdb_server(&mut self) {
        assert!(self.ovsdb_server.is_none(), "ovsdb-server already running");
        let d = &self.dir;
        let mut cmd = if self.ovsdb_in_netns {
            let mut c = self.command("ip");
            c.args(["netns", "exec", &self.netns, "ovsdb-server"]);
            c
        } else {
            self.command("ovsdb-server")
        };
        let child = cmd
            .arg(d.join("conf.db"))
            .arg(format!("--remote=punix:{}", self.sock.display()))
            // Also listen where the Manager table says (tcp, in one test).
            .arg("--remote=db:Open_vSwitch,Open_vSwitch,manager_options")
            .arg(format!(
                "--pidfile={}",
                d.join("ovsdb-server.pid").display()
            ))
            .arg(format!(
                "--unixctl={}",
                d.join("ovsdb-server.ctl").display()
            ))
            .arg(format!(
                "--log-file={}",
                d.join("ovsdb-server.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start ovsdb-server: {e} (apt-get install openvswitch-switch)")
            });
        self.ovsdb_server = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&self.sock).is_err() {
            if let Some(status) = self.ovsdb_server.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "ovsdb-server exited: {status}\n{}",
                    self.log("ovsdb-server.log")
                );
            }
            assert!(
                Instant::now() < deadline,
                "ovsdb-server did not listen on {}",
                self.sock.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts (or restarts) ovs-vswitchd in the namespace and waits until
    /// its control socket is there.
    pub fn start_vswitchd(&mut self) {
        assert!(self.vswitchd.is_none(), "ovs-vswitchd already running");
        let d = &self.dir;
        // A killed one leaves its control socket behind.
        let _ = std::fs::remove_file(d.join("ovs-vswitchd.ctl"));
        // `ip netns exec` execs ovs-vswitchd, so the child's pid is vswitchd's.
        let child = self
            .command("ip")
            .args(["netns", "exec", &self.netns, "ovs-vswitchd"])
            .arg(format!("unix:{}", self.sock.display()))
            .arg(format!(
                "--pidfile={}",
                d.join("ovs-vswitchd.pid").display()
            ))
            .arg(format!(
                "--unixctl={}",
                d.join("ovs-vswitchd.ctl").display()
            ))
            .arg(format!(
                "--log-file={}",
                d.join("ovs-vswitchd.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start ovs-vswitchd: {e}"));
        self.vswitchd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !d.join("ovs-vswitchd.ctl").exists() {
            if let Some(status) = self.vswitchd.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "ovs-vswitchd exited: {status}\n{}",
                    self.log("ovs-vswitchd.log")
                );
            }
            assert!(Instant::now() < deadline, "ovs-vswitchd did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops ovs-vswitchd (SIGTERM): the database stays, nothing applies it.
    pub fn stop_vswitchd(&mut self) {
        terminate(
            self.vswitchd.take().expect("ovs-vswitchd not running"),
            STOP_GRACE,
        );
    }

    /// SIGKILLs ovs-vswitchd, as a crash would; its tap devices stay.
    pub fn kill_vswitchd(&mut self) {
        let mut child = self.vswitchd.take().expect("ovs-vswitchd not running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGKILLs ovsdb-server, as a crash would.
    pub fn kill_ovsdb_server(&mut self) {
        let mut child = self.ovsdb_server.take().expect("ovsdb-server not running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub fn db(&self) -> String {
        format!("unix:{}", self.sock.display())
    }

    /// Runs `ovs-vsctl` against this instance; panics if it fails.
    pub fn vsctl(&self, args: &[&str]) -> String {
        run(self
            .command("ovs-vsctl")
            .arg(format!("--db={}", self.db()))
            .arg("--timeout=10")
            .args(args))
    }

    /// The same, returning whether it succeeded instead of panicking.
    pub fn vsctl_ok(&self, args: &[&str]) -> bool {
        self.command("ovs-vsctl")
            .arg(format!("--db={}", self.db()))
            .arg("--timeout=10")
            .args(args)
            .output()
            .expect("cannot run ovs-vsctl")
            .status
            .success()
    }

    /// Runs `ip -n NETNS ARGS`.
    pub fn ip(&self, args: &[&str]) -> String {
        run(Command::new("ip").args(["-n", &self.netns]).args(args))
    }

    /// Creates veth pairs `NAME` <-> `NAME-p` (both up) in the namespace,
    /// in one `ip -batch`.
    pub fn veths(&self, names: &[String]) {
        let mut batch = String::new();
        for n in names {
            batch += &format!(
                "link add {n} type veth peer name {n}p\nlink set {n} up\nlink set {n}p up\n"
            );
        }
        let path = self.dir.join("veths.batch");
        std::fs::write(&path, batch).unwrap();
        run(Command::new("ip")
            .args(["-n", &self.netns, "-batch"])
            .arg(&path));
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        if let Some(c) = self.vswitchd.take() {
            terminate(c, STOP_GRACE);
        }
        if let Some(c) = self.ovsdb_server.take() {
            terminate(c, STOP_GRACE);
        }
        // With vswitchd gone, the namespace takes its tap devices along.
        self.made_netns = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
