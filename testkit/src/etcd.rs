//! Real etcd members (Debian's etcd-server, 3.4) on free 127.0.0.1 ports,
//! one data directory each under a directory of the caller's. Members are
//! killed by pid and the directory removed on drop; they also get SIGKILL if
//! the thread that started them dies (`PR_SET_PDEATHSIG`): start and restart
//! them from the thread that owns the [`EtcdCluster`].
//!
//! [`EtcdCluster::start_tls`] serves clients over https only, to clients
//! with a certificate of a CA made for the cluster.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use nix::sys::signal::{kill, Signal};

use crate::cmd::{free_port, tail, try_run};
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
    /// With [`EtcdCluster::start_tls`]: the CA and the client's identity.
    tls: Option<TlsOptions>,
}

/// A current-thread tokio runtime for one probe.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs openssl in `dir`; `args` split at whitespace.
fn openssl(dir: &Path, args: &str) -> Result<(), String> {
    try_run(
        Command::new("openssl")
            .args(args.split_whitespace())
            .current_dir(dir),
    )
    .map(drop)
    .map_err(|e| format!("{e}\n(etcd with TLS needs Debian's openssl)"))
}

/// Makes in `dir` a CA (ca.pem, ca.key), a server certificate for 127.0.0.1
/// (server.pem, server.key) and a client certificate (client.pem,
/// client.key), valid for a day.
fn make_pki(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    openssl(
        dir,
        &format!("req -x509 {ec} -keyout ca.key -out ca.pem -days 1 -subj /CN=moor-test-ca"),
    )?;
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        let ext_file = dir.join(format!("{name}.ext"));
        std::fs::write(&ext_file, ext).map_err(|e| format!("{}: {e}", ext_file.display()))?;
        openssl(
            dir,
            &format!("req {ec} -keyout {name}.key -out {name}.csr -subj /CN={name}"),
        )?;
        openssl(
            dir,
            &format!(
                "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out {name}.pem -days 1 -extfile {name}.ext"
            ),
        )?;
    }
    Ok(())
}

/// What a client of the cluster in `pki` presents: its CA and the client
/// certificate.
fn client_tls(pki: &Path) -> Result<TlsOptions, String> {
    let pem = |f: &str| {
        let path = pki.join(f);
        std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
    };
    Ok(TlsOptions::new()
        .ca_certificate(Certificate::from_pem(pem("ca.pem")?))
        .identity(Identity::from_pem(pem("client.pem")?, pem("client.key")?)))
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
        Self::start_with(dir, members, token, extra_args, false)
    }

    /// Like [`EtcdCluster::start`], but the members serve clients over https
    /// only and want a client certificate (`--client-cert-auth`): the CA
    /// and the certificates are made (with openssl) in [`EtcdCluster::pki`].
    /// The probes here and [`EtcdCluster::client`] use them.
    pub fn start_tls(
        dir: &Path,
        members: usize,
        token: &str,
        extra_args: &[&str],
    ) -> Result<EtcdCluster, String> {
        Self::start_with(dir, members, token, extra_args, true)
    }

    fn start_with(
        dir: &Path,
        members: usize,
        token: &str,
        extra_args: &[&str],
        tls: bool,
    ) -> Result<EtcdCluster, String> {
        if !Path::new(ETCD).exists() {
            return Err(format!(
                "{ETCD} is missing: install Debian's etcd-server (./scripts/setup does)"
            ));
        }
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let mut extra_args: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
        let mut client_tls_options = None;
        if tls {
            let pki = dir.join("pki");
            make_pki(&pki)?;
            client_tls_options = Some(client_tls(&pki)?);
            let path = |f: &str| pki.join(f).display().to_string();
            extra_args.extend([
                format!("--cert-file={}", path("server.pem")),
                format!("--key-file={}", path("server.key")),
                format!("--trusted-ca-file={}", path("ca.pem")),
                "--client-cert-auth".to_string(),
            ]);
        }
        let scheme = if tls { "https" } else { "http" };
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
            tls: client_tls_options,
        };
        for (i, (client, peer)) in ports.iter().enumerate() {
            let name = format!("m{i}");
            let client_url = format!("{scheme}://127.0.0.1:{client}");
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
            args.extend(extra_args.iter().cloned());
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

    /// With [`EtcdCluster::start_tls`], the directory that holds ca.pem,
    /// client.pem and client.key (and the server's and the CA's keys).
    pub fn pki(&self) -> Option<PathBuf> {
        self.tls.is_some().then(|| self.dir.join("pki"))
    }

    /// How the probes connect: short timeouts, a leader required (a member
    /// cut off from the others answers "no leader" at once), and with
    /// [`EtcdCluster::start_tls`] the CA and the client certificate.
    pub fn connect_options(&self) -> ConnectOptions {
        let opts = ConnectOptions::new()
            .with_connect_timeout(PROBE_TIMEOUT)
            .with_timeout(PROBE_TIMEOUT)
            .with_require_leader(true);
        match &self.tls {
            Some(tls) => opts.with_tls(tls.clone()),
            None => opts,
        }
    }

    /// A client of the whole cluster, with [`EtcdCluster::connect_options`].
    pub async fn client(&self) -> Result<Client, etcd_client::Error> {
        Client::connect(self.endpoints(), Some(self.connect_options())).await
    }

    async fn connect(&self, url: &str) -> Result<Client, etcd_client::Error> {
        Client::connect([url], Some(self.connect_options())).await
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
    /// runtime (inside one, [`EtcdCluster::wait_ready_async`]).
    pub fn wait_ready(&self, within: Duration) -> Result<(), String> {
        runtime().block_on(self.wait_ready_async(within))
    }

    /// [`EtcdCluster::wait_ready`] for async callers.
    pub async fn wait_ready_async(&self, within: Duration) -> Result<(), String> {
        let until = Instant::now() + within;
        for (i, m) in self.members.iter().enumerate() {
            if !self.running(i) {
                continue;
            }
            loop {
                let probe = async {
                    let mut c = self.connect(&m.client_url).await?;
                    let key = format!("/moor-ready-{}/{}", self.token, m.name);
                    c.put(key, "1", None).await
                };
                let last = match probe.await {
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
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// The index of the member that is the leader, if a running member
    /// knows one. Blocks: call it outside any tokio runtime (inside one,
    /// [`EtcdCluster::leader_async`]).
    pub fn leader(&self) -> Option<usize> {
        runtime().block_on(self.leader_async())
    }

    /// [`EtcdCluster::leader`] for async callers.
    pub async fn leader_async(&self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        for m in &self.members {
            let status = tokio::time::timeout(PROBE_TIMEOUT, async {
                self.connect(&m.client_url).await?.status().await
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
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.kill9_all();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
