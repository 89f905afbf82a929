//! The seam every sandbox backend plugs into.
//!
//! The runtime (one workload at a time, validation, manifests, readiness, forwarding) talks
//! to backends only through [`Backend`] and [`Sandbox`]; backends know nothing of gRPC and
//! nothing of each other.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{ActorRef, BackendProvenance, ContainerSource, ContainerSpec, RuntimeConfig, SnapshotManifest};

/// What a backend can do. Reported by `GetCapabilities` and copied into every manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub supports_local_pause: bool,
    pub supports_incremental: bool,
    pub supports_memory_snapshot: bool,
    pub restore_requires_same_host: bool,
    /// Snapshots restore only where this string is equal (e.g. `gvisor/<version>/x86_64`).
    pub snapshot_portability_class: String,
    /// How guest code executes here: `ptrace`, `kvm`, `tcg`, ...
    pub accelerator: String,
}

/// Identity of the host a worker runs on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFingerprint {
    pub cpu_vendor: String,
    pub cpu_model: String,
    /// sha256 (hex, first 16 chars) of the sorted CPU flags.
    pub cpu_flags_digest: String,
    pub host_kernel: String,
    pub host_id: String,
}

/// A backend's name, version and capabilities, probed once at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendInfo {
    pub name: String,
    pub runtime_version: String,
    pub capabilities: Capabilities,
}

/// Everything a backend needs to start (or restore) a sandbox.
#[derive(Clone, Debug)]
pub struct LaunchContext {
    pub actor: ActorRef,
    /// Containers in order, each with where its root file system comes from.
    pub containers: Vec<(ContainerSpec, ContainerSource)>,
    pub runtime: Option<RuntimeConfig>,
    /// Substrate's `runtime_asset_paths`, passed through.
    pub asset_paths: BTreeMap<String, String>,
    /// A fresh, empty directory owned by this sandbox; the runtime removes it after delete.
    pub work_dir: PathBuf,
    /// A directory for caches shared by all sandboxes of this worker (images, rootfs).
    pub cache_dir: PathBuf,
}

/// A snapshot a restore starts from: verified files in `dir`, described by `manifest`.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotInput<'a> {
    pub dir: &'a Path,
    pub manifest: &'a SnapshotManifest,
}

/// What a backend reports about the snapshot it just wrote.
#[derive(Clone, Debug, Default)]
pub struct CheckpointOutput {
    pub provenance: BackendProvenance,
    /// Container name -> image manifest digest.
    pub image_digests: BTreeMap<String, String>,
}

/// Opens TCP connections to the workload inside its sandbox's network namespace.
#[async_trait]
pub trait Dialer: Send + Sync {
    /// The workload's address inside its namespace.
    fn ip(&self) -> IpAddr;
    /// Connects to `port` on the workload; the socket lives in the sandbox's namespace.
    async fn dial(&self, port: u16) -> std::io::Result<tokio::net::TcpStream>;
}

/// A sandbox backend (gVisor, Firecracker, QEMU).
#[async_trait]
pub trait Backend: Send + Sync {
    fn info(&self) -> &BackendInfo;

    /// Starts the workload. Returns once its processes run; readiness is the runtime's job.
    async fn run(&self, ctx: LaunchContext) -> Result<Box<dyn Sandbox>, BackendError>;

    /// Starts a new sandbox from a snapshot whose bytes and provenance the runtime verified.
    async fn restore(
        &self,
        ctx: LaunchContext,
        snapshot: SnapshotInput<'_>,
    ) -> Result<Box<dyn Sandbox>, BackendError>;

    /// Removes what a crashed predecessor left behind (processes, namespaces, mounts).
    /// Returns a human description of each thing removed.
    async fn cleanup_stale(&self) -> Result<Vec<String>, BackendError>;
}

/// One running sandbox.
#[async_trait]
pub trait Sandbox: Send + Sync {
    /// How to reach the workload inside its namespace (`None` for guests without a network).
    fn dialer(&self) -> Option<Arc<dyn Dialer>>;

    /// Where the serial console is reachable from the host, if the backend has one.
    fn console(&self) -> Option<String> {
        None
    }

    /// Why the sandbox stopped on its own (failed to start, crashed), or `None` while it
    /// runs. Checked while waiting for readiness, so a dead sandbox fails fast.
    fn exited(&self) -> Option<String> {
        None
    }

    /// Freezes the workload and writes its state into `dir` (empty, on the same file
    /// system as the final snapshot). On success the sandbox is stopped and only `delete`
    /// remains. On failure the backend resumes the workload if it still can.
    async fn checkpoint(&mut self, dir: &Path) -> Result<CheckpointOutput, BackendError>;

    /// True while the sandbox's processes are alive.
    async fn is_alive(&self) -> bool;

    /// Tears everything down: processes, namespaces, mounts. Idempotent in effect.
    async fn delete(self: Box<Self>) -> Result<(), BackendError>;
}

/// Errors of backends, precise enough for the runtime to pick a gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A binary or device the backend needs is not on this host.
    #[error("{what} is not available: {detail}")]
    Unavailable { what: String, detail: String },
    /// The request's runtime configuration does not fit this backend.
    #[error("invalid {field}: {reason}")]
    InvalidConfig { field: String, reason: String },
    /// The container image could not be turned into a root file system.
    #[error("preparing image for container {container:?}: {detail}")]
    Image { container: String, detail: String },
    #[error("network setup failed: {0}")]
    Network(String),
    /// The sandbox did not start (or did not come back from a snapshot).
    #[error("{op} failed: {detail}")]
    Failed { op: &'static str, detail: String },
    /// The snapshot does not fit this backend (wrong artifacts, unsupported features).
    #[error("snapshot unusable: {0}")]
    Snapshot(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl BackendError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }

    pub fn failed(op: &'static str, detail: impl Into<String>) -> Self {
        Self::Failed { op, detail: detail.into() }
    }
}
