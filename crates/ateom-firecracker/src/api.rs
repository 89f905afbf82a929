//! A typed client for the Firecracker API resources ateom uses, over the VMM's unix socket.
//!
//! Written here rather than taken from a crate: ateom needs ten endpoints, exact control of
//! timeouts (a hung VMM must never be waited on forever) and Firecracker's error bodies passed
//! through verbatim, while the existing SDKs (`fctools`, `firec`, `firecracker`) each bring
//! their own process management and runtime abstractions, which would duplicate ateom's (the
//! VMM must start inside the workload's network namespace, with its serial console piped to
//! ateom's console hub). One request per connection keeps it simple; Firecracker answers in
//! well under a millisecond.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;

/// `PUT /boot-source`
#[derive(Clone, Debug, Serialize)]
pub struct BootSource {
    pub kernel_image_path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

/// `PUT /machine-config`
#[derive(Clone, Debug, Serialize)]
pub struct MachineConfig {
    pub vcpu_count: u8,
    pub mem_size_mib: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
}

/// `PUT /drives/{drive_id}`
#[derive(Clone, Debug, Serialize)]
pub struct Drive {
    pub drive_id: String,
    /// Relative paths resolve against the VMM's working directory, and are stored that way
    /// in snapshots: a restore in another directory (another node) finds the disk again.
    pub path_on_host: String,
    pub is_root_device: bool,
    pub is_read_only: bool,
}

/// `PUT /network-interfaces/{iface_id}`
#[derive(Clone, Debug, Serialize)]
pub struct NetworkInterface {
    pub iface_id: String,
    pub host_dev_name: String,
    pub guest_mac: String,
}

/// `PUT /snapshot/create`
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotCreate {
    pub snapshot_type: &'static str,
    pub snapshot_path: String,
    pub mem_file_path: String,
}

/// `mem_backend` of `PUT /snapshot/load`.
#[derive(Clone, Debug, Serialize)]
pub struct MemBackend {
    pub backend_type: &'static str,
    pub backend_path: String,
}

/// `PUT /snapshot/load`
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotLoad {
    pub snapshot_path: String,
    pub mem_backend: MemBackend,
    pub resume_vm: bool,
}

/// `GET /` (instance info).
#[derive(Clone, Debug, Deserialize)]
pub struct InstanceInfo {
    pub id: String,
    pub state: String,
    pub vmm_version: String,
}

/// `GET /version`
#[derive(Clone, Debug, Deserialize)]
pub struct Version {
    pub firecracker_version: String,
}

/// Errors of API calls. `Fault` carries Firecracker's own message verbatim.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("firecracker API socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("firecracker did not answer {method} {uri} within {timeout:?} (the VMM may be hung)")]
    Timeout { method: Method, uri: String, timeout: Duration },
    #[error("firecracker refused {method} {uri} (HTTP {status}): {fault}")]
    Fault { method: Method, uri: String, status: u16, fault: String },
    #[error("firecracker API {method} {uri}: {detail}")]
    Protocol { method: Method, uri: String, detail: String },
}

/// A client for one VMM's API socket.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
    /// The socket's path as connect(2) takes it (deep paths through the directory's fd).
    connect_path: std::sync::Arc<Option<ateom_microvm::SocketPath>>,
    timeout: Duration,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        let socket = socket.into();
        let connect_path = std::sync::Arc::new(ateom_microvm::SocketPath::new(&socket).ok());
        Self { socket, connect_path, timeout: Duration::from_secs(5) }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Bytes, ApiError> {
        let work = async {
            let path = self.connect_path.as_ref().as_ref().map_or(self.socket.as_path(), |p| p.path());
            let stream = UnixStream::connect(path)
                .await
                .map_err(|source| ApiError::Connect { path: self.socket.clone(), source })?;
            let proto =
                |detail: String| ApiError::Protocol { method: method.clone(), uri: uri.to_owned(), detail };
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| proto(e.to_string()))?;
            let driver = tokio::spawn(conn);
            let mut req = Request::builder().method(method.clone()).uri(uri).header("Host", "localhost");
            if body.is_some() {
                req = req.header("Content-Type", "application/json").header("Accept", "application/json");
            }
            let req = req
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(|e| proto(e.to_string()))?;
            let resp = sender.send_request(req).await.map_err(|e| proto(e.to_string()))?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await.map_err(|e| proto(e.to_string()))?.to_bytes();
            driver.abort();
            if status.is_success() {
                Ok(bytes)
            } else {
                #[derive(Deserialize)]
                struct Fault {
                    fault_message: String,
                }
                let fault = serde_json::from_slice::<Fault>(&bytes)
                    .map(|f| f.fault_message)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
                Err(ApiError::Fault {
                    method: method.clone(),
                    uri: uri.to_owned(),
                    status: status.as_u16(),
                    fault,
                })
            }
        };
        tokio::time::timeout(timeout, work).await.map_err(|_| ApiError::Timeout {
            method: method.clone(),
            uri: uri.to_owned(),
            timeout,
        })?
    }

    async fn put<T: Serialize>(&self, uri: &str, body: &T, timeout: Duration) -> Result<(), ApiError> {
        let json = serde_json::to_vec(body).expect("API bodies serialize");
        self.call(Method::PUT, uri, Some(json), timeout).await.map(drop)
    }

    async fn patch<T: Serialize>(&self, uri: &str, body: &T) -> Result<(), ApiError> {
        let json = serde_json::to_vec(body).expect("API bodies serialize");
        self.call(Method::PATCH, uri, Some(json), self.timeout).await.map(drop)
    }

    async fn get<T: for<'de> Deserialize<'de>>(&self, uri: &str) -> Result<T, ApiError> {
        let bytes = self.call(Method::GET, uri, None, self.timeout).await?;
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Protocol {
            method: Method::GET,
            uri: uri.to_owned(),
            detail: format!("unexpected body {:?}: {e}", String::from_utf8_lossy(&bytes)),
        })
    }

    pub async fn instance_info(&self) -> Result<InstanceInfo, ApiError> {
        self.get("/").await
    }

    pub async fn version(&self) -> Result<Version, ApiError> {
        self.get("/version").await
    }

    pub async fn boot_source(&self, b: &BootSource) -> Result<(), ApiError> {
        self.put("/boot-source", b, self.timeout).await
    }

    pub async fn machine_config(&self, m: &MachineConfig) -> Result<(), ApiError> {
        self.put("/machine-config", m, self.timeout).await
    }

    pub async fn drive(&self, d: &Drive) -> Result<(), ApiError> {
        self.put(&format!("/drives/{}", d.drive_id), d, self.timeout).await
    }

    pub async fn network_interface(&self, n: &NetworkInterface) -> Result<(), ApiError> {
        self.put(&format!("/network-interfaces/{}", n.iface_id), n, self.timeout).await
    }

    pub async fn start(&self) -> Result<(), ApiError> {
        self.put("/actions", &serde_json::json!({"action_type": "InstanceStart"}), Duration::from_secs(30))
            .await
    }

    pub async fn flush_metrics(&self) -> Result<(), ApiError> {
        self.put("/actions", &serde_json::json!({"action_type": "FlushMetrics"}), self.timeout).await
    }

    pub async fn pause(&self) -> Result<(), ApiError> {
        self.patch("/vm", &serde_json::json!({"state": "Paused"})).await
    }

    pub async fn resume(&self) -> Result<(), ApiError> {
        self.patch("/vm", &serde_json::json!({"state": "Resumed"})).await
    }

    /// Writing the memory file takes about a second per GiB here; the timeout scales.
    pub async fn create_snapshot(&self, s: &SnapshotCreate, mem_mib: u32) -> Result<(), ApiError> {
        let timeout = Duration::from_secs(30) + Duration::from_millis(u64::from(mem_mib) * 20);
        self.put("/snapshot/create", s, timeout).await
    }

    pub async fn load_snapshot(&self, s: &SnapshotLoad) -> Result<(), ApiError> {
        self.put("/snapshot/load", s, Duration::from_secs(60)).await
    }
}
