//! A blocking client of the CRI RuntimeService (k8s.io/cri-api runtime/v1),
//! as kubelet speaks it to containerd, over containerd's unix socket. The
//! messages are the subset in `proto/cri-runtime-v1-subset.proto`.

use std::future::Future;
use std::io;
use std::path::Path;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Status;

/// The generated messages and client of package `runtime.v1`.
pub mod v1 {
    tonic::include_proto!("runtime.v1");
}

use v1::runtime_service_client::RuntimeServiceClient;
use v1::{
    ListPodSandboxRequest, PodSandbox, PodSandboxConfig, PodSandboxStatusRequest,
    PodSandboxStatusResponse, RemovePodSandboxRequest, RunPodSandboxRequest, StatusRequest,
    StatusResponse, StopPodSandboxRequest, VersionRequest, VersionResponse,
};

/// Bound on one CRI call. RunPodSandbox includes the CNI ADD of every plugin
/// of the chain and the start of the sandbox's shim and task.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection to one containerd's CRI plugin.
pub struct Cri {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

impl Cri {
    /// Connects to the gRPC socket `socket`; fails if nothing accepts there
    /// within `timeout`.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Cri, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let path = socket.to_path_buf();
        let connector = tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        });
        // The authority is a placeholder: the connector ignores it.
        let endpoint = Endpoint::from_static("http://[::]:50051").connect_timeout(timeout);
        let channel = rt
            .block_on(async {
                tokio::time::timeout(timeout, endpoint.connect_with_connector(connector)).await
            })
            .map_err(|_| format!("no connection to {} within {timeout:?}", socket.display()))?
            .map_err(|e| format!("connect to {}: {e}", socket.display()))?;
        Ok(Cri {
            rt,
            client: RuntimeServiceClient::new(channel),
        })
    }

    fn call<T, F: Future<Output = Result<tonic::Response<T>, Status>>>(
        &self,
        what: &str,
        f: F,
    ) -> Result<T, Status> {
        self.rt
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, f).await })
            .map_err(|_| {
                Status::deadline_exceeded(format!("{what}: no answer in {CALL_TIMEOUT:?}"))
            })?
            .map(tonic::Response::into_inner)
    }

    pub fn version(&self) -> Result<VersionResponse, Status> {
        let mut c = self.client.clone();
        self.call(
            "Version",
            c.version(VersionRequest {
                version: "v1".into(),
            }),
        )
    }

    /// Status, verbose (its `info` carries containerd's CNI config and the
    /// error of its last CNI config load).
    pub fn status(&self) -> Result<StatusResponse, Status> {
        let mut c = self.client.clone();
        self.call("Status", c.status(StatusRequest { verbose: true }))
    }

    /// Is the runtime's NetworkReady condition true (a CNI config loaded)?
    pub fn network_ready(&self) -> Result<bool, Status> {
        Ok(self
            .status()?
            .status
            .unwrap_or_default()
            .conditions
            .iter()
            .any(|c| c.r#type == "NetworkReady" && c.status))
    }

    /// RunPodSandbox with the default runtime handler; the sandbox's id.
    pub fn run_pod_sandbox(&self, config: PodSandboxConfig) -> Result<String, Status> {
        let mut c = self.client.clone();
        self.call(
            "RunPodSandbox",
            c.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            }),
        )
        .map(|r| r.pod_sandbox_id)
    }

    /// PodSandboxStatus, verbose: `info["info"]` is containerd's JSON about
    /// the sandbox (pid, runtime spec with the netns path, CNI result).
    pub fn pod_sandbox_status(&self, id: &str) -> Result<PodSandboxStatusResponse, Status> {
        let mut c = self.client.clone();
        self.call(
            "PodSandboxStatus",
            c.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: true,
            }),
        )
    }

    pub fn stop_pod_sandbox(&self, id: &str) -> Result<(), Status> {
        let mut c = self.client.clone();
        self.call(
            "StopPodSandbox",
            c.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            }),
        )
        .map(drop)
    }

    pub fn remove_pod_sandbox(&self, id: &str) -> Result<(), Status> {
        let mut c = self.client.clone();
        self.call(
            "RemovePodSandbox",
            c.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            }),
        )
        .map(drop)
    }

    /// Every sandbox the runtime knows, in any state.
    pub fn list_pod_sandbox(&self) -> Result<Vec<PodSandbox>, Status> {
        let mut c = self.client.clone();
        self.call(
            "ListPodSandbox",
            c.list_pod_sandbox(ListPodSandboxRequest { filter: None }),
        )
        .map(|r| r.items)
    }
}

/// What containerd's verbose PodSandboxStatus says about a sandbox beyond
/// the CRI fields.
#[derive(Debug, Clone)]
pub struct SandboxInfo {
    /// The sandbox process (the "pause" container's init), 0 once stopped.
    pub pid: u32,
    /// The network namespace containerd made for the sandbox, e.g.
    /// /var/run/netns/cni-UUID.
    pub netns: Option<String>,
    /// The whole JSON document.
    pub raw: Value,
}

impl SandboxInfo {
    /// Reads `info["info"]` of a verbose PodSandboxStatus answer.
    pub fn of(resp: &PodSandboxStatusResponse) -> Option<SandboxInfo> {
        let raw: Value = serde_json::from_str(resp.info.get("info")?).ok()?;
        let pid = raw["pid"].as_u64().unwrap_or(0) as u32;
        let netns = raw["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .and_then(|ns| {
                ns.iter()
                    .find(|n| n["type"] == "network")
                    .and_then(|n| n["path"].as_str())
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
            });
        Some(SandboxInfo { pid, netns, raw })
    }
}
