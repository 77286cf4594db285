//! Real etcd members (Debian's etcd-server, 3.4) on free 127.0.0.1 ports,
//! one data directory each under a directory of the caller's. Members are
//! killed by pid and the directory removed on drop; they also get SIGKILL if
//! the thread that started them dies (`PR_SET_PDEATHSIG`): start and restart
//! them from the thread that owns the [`EtcdCluster`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
use nix::sys::signal::{kill, Signal};

use crate::cmd::{free_port, tail};
use crate::process::{kill9, pid, spawn_logged, terminate, STOP_GRACE};

/// The etcd server binary.
pub const ETCD: &str = "/usr/bin/etcd";

/// How long one probe call may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One member process and how to start it again.
struct Member {
    name: String,
    client_url: String,
    args: Vec<String>,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
}

/// A cluster of etcd members started together (`--initial-cluster-state
/// new`); one member is a single-node etcd.
pub struct EtcdCluster {
    dir: PathBuf,
    token: String,
    members: Vec<Member>,
}

/// A current-thread tokio runtime for one probe.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn connect(url: &str) -> Result<Client, etcd_client::Error> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(PROBE_TIMEOUT)
        .with_timeout(PROBE_TIMEOUT)
        // A member cut off from the others answers "no leader" at once.
        .with_require_leader(true);
    Client::connect([url], Some(opts)).await
}

impl EtcdCluster {
    /// Starts `members` members named m0, m1, ... with their data under
    /// `dir` (made afresh; on disk, commits pay a real fsync; under /dev/shm
    /// they cost nothing), `token` as `--initial-cluster-token` and
    /// `extra_args` on every member's command line. Does not wait for them
    /// (see [`EtcdCluster::wait_ready`]).
    pub fn start(
        dir: &Path,
        members: usize,
        token: &str,
        extra_args: &[&str],
    ) -> Result<EtcdCluster, String> {
        if !Path::new(ETCD).exists() {
            return Err(format!(
                "{ETCD} is missing: install Debian's etcd-server (./scripts/setup does)"
            ));
        }
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let ports: Vec<(u16, u16)> = (0..members).map(|_| (free_port(), free_port())).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            dir: dir.to_path_buf(),
            token: token.to_string(),
            members: Vec::new(),
        };
        for (i, (client, peer)) in ports.iter().enumerate() {
            let name = format!("m{i}");
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let dir = dir.join(&name);
            let mut args = vec![
                format!("--name={name}"),
                format!("--data-dir={}", dir.join("data").display()),
                format!("--listen-client-urls={client_url}"),
                format!("--advertise-client-urls={client_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster={initial}"),
                format!("--initial-cluster-token={token}"),
                "--initial-cluster-state=new".into(),
            ];
            args.extend(extra_args.iter().map(|a| a.to_string()));
            cluster.members.push(Member {
                name,
                client_url,
                args,
                dir,
                child: Mutex::new(None),
            });
        }
        for i in 0..members {
            cluster.try_start_member(i)?;
        }
        Ok(cluster)
    }

    /// The members' client URLs.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Member `i`'s name (`m<i>`).
    pub fn name(&self, i: usize) -> &str {
        &self.members[i].name
    }

    pub fn client_url(&self, i: usize) -> &str {
        &self.members[i].client_url
    }

    /// Member `i`'s log (all its runs).
    pub fn log(&self, i: usize) -> PathBuf {
        self.members[i].dir.join("etcd.log")
    }

    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        tail(&self.log(i), lines)
    }

    pub fn running(&self, i: usize) -> bool {
        self.members[i].child.lock().unwrap().is_some()
    }

    /// Member `i`'s pid, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i]
            .child
            .lock()
            .unwrap()
            .as_ref()
            .map(Child::id)
    }

    /// Starts member `i` (again) on its data directory and ports; does not
    /// wait. Panics if it is running or cannot be started.
    pub fn start_member(&self, i: usize) {
        self.try_start_member(i).unwrap_or_else(|e| panic!("{e}"));
    }

    fn try_start_member(&self, i: usize) -> Result<(), String> {
        let m = &self.members[i];
        let mut guard = m.child.lock().unwrap();
        assert!(guard.is_none(), "etcd member {} is running", m.name);
        std::fs::create_dir_all(&m.dir).map_err(|e| format!("{}: {e}", m.dir.display()))?;
        let child = spawn_logged(Command::new(ETCD).args(&m.args), &m.dir.join("etcd.log"))
            .map_err(|e| format!("cannot start {ETCD}: {e}"))?;
        *guard = Some(child);
        Ok(())
    }

    /// SIGKILL member `i` (its data stays). No-op if it is not running.
    pub fn kill9(&self, i: usize) {
        if let Some(mut c) = self.members[i].child.lock().unwrap().take() {
            kill9(&mut c);
        }
    }

    /// SIGTERM member `i`, SIGKILL if it has not exited after 3 s (a member
    /// that lost quorum may ignore SIGTERM). No-op if it is not running.
    pub fn stop(&self, i: usize) {
        if let Some(c) = self.members[i].child.lock().unwrap().take() {
            terminate(c, STOP_GRACE);
        }
    }

    /// SIGSTOP (`pause`) or SIGCONT member `i`: a member that hangs, with
    /// its connections open, instead of one that is gone.
    pub fn pause(&self, i: usize, pause: bool) {
        if let Some(c) = self.members[i].child.lock().unwrap().as_ref() {
            let sig = if pause {
                Signal::SIGSTOP
            } else {
                Signal::SIGCONT
            };
            let _ = kill(pid(c), sig);
        }
    }

    pub fn kill9_all(&self) {
        for i in 0..self.members.len() {
            self.kill9(i);
        }
    }

    /// Starts every member that is not running and waits until each
    /// answers (30 s at most; panics then).
    pub fn start_all(&self) {
        for i in 0..self.members.len() {
            if !self.running(i) {
                self.start_member(i);
            }
        }
        self.wait_ready(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Until a write through every running member succeeds (so there is a
    /// leader and that member is in the cluster); an error with the
    /// member's log after `within`. Blocks: call it outside any tokio
    /// runtime.
    pub fn wait_ready(&self, within: Duration) -> Result<(), String> {
        let until = Instant::now() + within;
        let rt = runtime();
        for (i, m) in self.members.iter().enumerate() {
            if !self.running(i) {
                continue;
            }
            loop {
                let probe = rt.block_on(async {
                    let mut c = connect(&m.client_url).await?;
                    let key = format!("/moor-ready-{}/{}", self.token, m.name);
                    c.put(key, "1", None).await
                });
                let last = match probe {
                    Ok(_) => break,
                    Err(e) => e.to_string(),
                };
                if Instant::now() > until {
                    return Err(format!(
                        "etcd member {} at {} did not become ready in {within:?} (last error: {last}); its log ends:\n{}",
                        m.name,
                        m.client_url,
                        self.log_tail(i, 15)
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// The index of the member that is the leader, if a running member
    /// knows one. Blocks: call it outside any tokio runtime.
    pub fn leader(&self) -> Option<usize> {
        runtime().block_on(async {
            let mut ids = Vec::new();
            let mut leader = None;
            for m in &self.members {
                let status = tokio::time::timeout(PROBE_TIMEOUT, async {
                    connect(&m.client_url).await?.status().await
                })
                .await;
                match status {
                    Ok(Ok(st)) => {
                        if st.leader() != 0 {
                            leader = Some(st.leader());
                        }
                        ids.push(st.header().map(|h| h.member_id()));
                    }
                    _ => ids.push(None),
                }
            }
            let leader = leader?;
            ids.iter().position(|id| *id == Some(leader))
        })
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.kill9_all();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
