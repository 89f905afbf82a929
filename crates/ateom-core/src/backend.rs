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
    /// Limits of the sandbox: the request's, completed with the worker's defaults.
    pub resources: crate::Resources,
    /// Durable-directory volumes to mount (host directories that outlive the sandbox).
    pub volumes: Vec<Volume>,
}

/// substrate's `runtime_asset_paths`, as a backend reads them: the binaries and images it
/// uses instead of the worker's defaults. Keys: `runsc` (gvisor); `firecracker`, `jailer`,
/// `kernel`, `rootfs` (firecracker); `qemu`, `kernel`, `rootfs` (qemu). Values are absolute
/// paths. A backend refuses keys it does not know, naming the ones it does.
pub struct AssetPaths<'a> {
    paths: &'a BTreeMap<String, String>,
}

impl<'a> AssetPaths<'a> {
    /// Checks that every key is one of `known` and every value an absolute path.
    pub fn check(paths: &'a BTreeMap<String, String>, known: &[&str]) -> Result<Self, BackendError> {
        for (k, v) in paths {
            if !known.contains(&k.as_str()) {
                return Err(BackendError::InvalidConfig {
                    field: format!("runtime_asset_paths[{k:?}]"),
                    reason: format!("this backend knows the keys {}", known.join(", ")),
                });
            }
            if !v.starts_with('/') {
                return Err(BackendError::InvalidConfig {
                    field: format!("runtime_asset_paths[{k:?}]"),
                    reason: format!("{v:?} must be an absolute path"),
                });
            }
        }
        Ok(Self { paths })
    }

    /// The path given for `key`, if any.
    pub fn get(&self, key: &str) -> Option<PathBuf> {
        self.paths.get(key).map(PathBuf::from)
    }

    /// Records every asset used in provenance (`asset.<key>`).
    pub fn record(&self, extra: &mut BTreeMap<String, String>) {
        for (k, v) in self.paths {
            extra.insert(format!("asset.{k}"), v.clone());
        }
    }
}

/// For a backend that does not attach durable directories yet (Firecracker): a request with
/// any is refused, naming the first and the backends that do.
pub fn refuse_durable_dirs(backend: &str, volumes: &[Volume]) -> Result<(), BackendError> {
    match volumes.first() {
        None => Ok(()),
        Some(v) => Err(BackendError::InvalidConfig {
            field: "spec.containers.durable_dir_volumes".into(),
            reason: format!(
                "durable directories ({}) are not supported on {backend} yet; use the qemu or gvisor backend",
                v.mount_path
            ),
        }),
    }
}

/// The distinct volumes of a workload, in spec order (a volume mounted into several
/// containers, or at several paths, is one directory and counts once). Runtime and backends
/// number volumes by this order.
pub fn distinct_volumes(volumes: &[Volume]) -> Vec<&Volume> {
    let mut seen = std::collections::BTreeSet::new();
    volumes.iter().filter(|v| seen.insert(v.name.as_str())).collect()
}

/// A durable-directory volume: a host directory mounted into one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    /// The volume's name: `<actorDir>/durable-dir/<name>/`, `durable/<name>/` in a snapshot.
    pub name: String,
    /// The container it is mounted into.
    pub container: String,
    /// Where it appears inside the container (absolute).
    pub mount_path: String,
    /// `<actorDir>/durable-dir/<name>/` on the host.
    pub host_dir: PathBuf,
}

/// A snapshot a restore starts from: files in a directory, described by `manifest` (read and
/// checked against this host before the backend is called).
///
/// The files may still be being verified against the manifest's digests while the backend
/// prepares what does not read them (namespaces, processes), so their directory is only
/// reachable through [`SnapshotInput::verified_dir`], which waits for the verdict: no
/// backend can read an unverified byte.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotInput<'a> {
    dir: &'a Path,
    pub manifest: &'a SnapshotManifest,
    verification: &'a Verification,
    /// The durable-directory volumes come from another snapshot (DATA on golden), already put
    /// into the host directories: whatever volume state this snapshot holds must not be used.
    pub foreign_volumes: bool,
}

impl<'a> SnapshotInput<'a> {
    pub fn new(dir: &'a Path, manifest: &'a SnapshotManifest, verification: &'a Verification) -> Self {
        Self { dir, manifest, verification, foreign_volumes: false }
    }

    /// The snapshot's directory, once its files are verified. A failed verification is a
    /// [`BackendError::Unverified`]; the runtime reports the verification's own error.
    pub async fn verified_dir(&self) -> Result<&'a Path, BackendError> {
        self.verification.wait().await?;
        Ok(self.dir)
    }
}

/// The verdict on a snapshot's files, delivered once (see [`SnapshotInput`]).
#[derive(Clone, Debug)]
pub struct Verification(tokio::sync::watch::Receiver<Option<bool>>);

/// Delivers a [`Verification`]'s verdict. Dropped without a verdict means "not verified".
#[derive(Debug)]
pub struct VerificationSender(tokio::sync::watch::Sender<Option<bool>>);

impl Verification {
    /// Files that were verified already (pulled and checked chunk by chunk, for example).
    pub fn done() -> Self {
        Self(tokio::sync::watch::channel(Some(true)).1)
    }

    /// A verdict still to come from the returned sender.
    pub fn pending() -> (VerificationSender, Self) {
        let (tx, rx) = tokio::sync::watch::channel(None);
        (VerificationSender(tx), Self(rx))
    }

    /// Waits for the verdict.
    pub async fn wait(&self) -> Result<(), BackendError> {
        let mut rx = self.0.clone();
        match rx.wait_for(Option::is_some).await.map(|v| *v) {
            Ok(Some(true)) => Ok(()),
            _ => Err(BackendError::Unverified),
        }
    }
}

impl VerificationSender {
    pub fn send(self, verified: bool) {
        let _ = self.0.send(Some(verified));
    }
}

/// What a backend reports about the snapshots a sandbox writes: known from the moment the
/// sandbox runs, so the runtime records it (in the snapshot's intent) before it freezes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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

    /// Finds the sandbox a previous worker process left running, from the handle it recorded
    /// ([`Sandbox::handle`]), so a restarted worker keeps serving it. See [`AdoptRequest`].
    async fn adopt(&self, req: AdoptRequest<'_>) -> Result<Adopted, BackendError>;

    /// Removes what a crashed predecessor left behind (processes, namespaces, mounts), except
    /// the sandbox named by `keep` (one that was adopted). Returns a human description of
    /// each thing removed.
    async fn cleanup_stale(&self, keep: Option<&SandboxHandle>) -> Result<Vec<String>, BackendError>;
}

/// What a backend records about a live sandbox so that a restarted worker can find it again:
/// process ids, socket paths, namespace names — whatever the backend needs. Opaque to the
/// runtime, which keeps it in the worker's journal (`<state>/worker/active.json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SandboxHandle(pub serde_json::Value);

/// Asks a backend to take over a sandbox that a previous worker process started.
#[derive(Clone, Copy, Debug)]
pub struct AdoptRequest<'a> {
    pub handle: &'a SandboxHandle,
    /// The sandbox's work directory (kept across the restart).
    pub work_dir: &'a Path,
    /// The previous worker died while checkpointing into this directory (the backend's
    /// artifacts, possibly incomplete): the backend says whether that capture completed
    /// ([`Adopted::Captured`]).
    pub interrupted_checkpoint: Option<&'a Path>,
    /// Make a frozen workload run again (a VM paused for a snapshot is resumed). False when
    /// the sandbox is only adopted to be deleted (its snapshot was committed).
    pub resume: bool,
}

/// What adopting a sandbox found.
pub enum Adopted {
    /// It is alive (and running again, when `resume` was asked); the worker serves it.
    Running(Box<dyn Sandbox>),
    /// The interrupted checkpoint completed: its directory holds a whole capture, and the
    /// sandbox is gone.
    Captured,
    /// It is dead; the reason says what was found. Whatever was left of it was removed.
    Gone(String),
}

impl std::fmt::Debug for Adopted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Adopted::Running(_) => f.write_str("Running"),
            Adopted::Captured => f.write_str("Captured"),
            Adopted::Gone(why) => write!(f, "Gone({why:?})"),
        }
    }
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

    /// What the backend records to find this sandbox again after the worker restarts.
    fn handle(&self) -> SandboxHandle;

    /// Provenance and image digests of the snapshots this sandbox writes.
    fn snapshot_output(&self) -> CheckpointOutput;

    /// How many bytes a checkpoint would write, if the backend can tell (guest RAM + disk
    /// for a VM, the sandbox's resident memory for gVisor). The runtime refuses to freeze
    /// when the disk has less free.
    async fn estimated_snapshot_bytes(&self) -> Option<u64> {
        None
    }

    /// Freezes the workload and writes its state into `dir` (empty apart from the runtime's
    /// dot-files, on the same file system as the final snapshot). On success the workload is
    /// frozen for good unless [`abort_checkpoint`](Self::abort_checkpoint) takes it back; only
    /// `delete` remains otherwise. On failure the backend resumes the workload if it still can.
    async fn checkpoint(&mut self, dir: &Path) -> Result<(), BackendError>;

    /// True when a successful checkpoint leaves the workload frozen but alive (a paused VM),
    /// so [`abort_checkpoint`](Self::abort_checkpoint) can take it back. The runtime then
    /// deletes the sandbox only after the snapshot is committed.
    fn can_abort_checkpoint(&self) -> bool {
        false
    }

    /// The snapshot written by a successful `checkpoint` into `dir` could not be committed
    /// (a full disk, say): take the workload back if the backend can — a paused VM is
    /// resumed, files it still uses are moved back out of `dir`. True when it runs again.
    async fn abort_checkpoint(&mut self, dir: &Path) -> Result<bool, BackendError> {
        let _ = dir;
        Ok(false)
    }

    /// True while the sandbox's processes are alive.
    async fn is_alive(&self) -> bool;

    /// Brings the durable-directory volumes' host directories up to date with what the
    /// workload wrote, for backends that keep volumes elsewhere (a microVM's volume disks).
    /// Called with the workload frozen by [`Sandbox::checkpoint`] (`checkpoint_dir`: where it
    /// put its artifacts) or, for a DATA checkpoint, while it still runs (`None`). The default
    /// does nothing: the host directories are the volumes (gVisor's bind mounts).
    fn volumes_to_host(
        &self,
        _volumes: &[Volume],
        _checkpoint_dir: Option<&Path>,
    ) -> Result<(), BackendError> {
        Ok(())
    }

    /// What the sandbox uses now (from its cgroup, or its VMM process), when the backend can
    /// tell. Cheap: a few small reads of kernel files.
    fn stats(&self) -> Option<SandboxStats> {
        None
    }

    /// Tears everything down: processes, namespaces, mounts. Idempotent in effect.
    async fn delete(self: Box<Self>) -> Result<(), BackendError>;
}

/// What a sandbox uses of the host at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxStats {
    /// Resident memory (the sandbox's cgroup, or the VMM process's RSS).
    pub memory_bytes: Option<u64>,
    /// CPU time used since the sandbox started, nanoseconds.
    pub cpu_ns: Option<u64>,
    /// Processes and threads.
    pub pids: Option<u64>,
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
    /// The snapshot's files did not pass verification, so the backend did not read them.
    #[error("the snapshot's files did not pass verification")]
    Unverified,
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

#[cfg(test)]
mod verification_tests {
    use super::*;

    #[tokio::test]
    async fn the_directory_is_reachable_only_after_a_positive_verdict() {
        let manifest = crate::manifest::tests::sample();
        let dir = Path::new("/snapshots/s1");

        let done = Verification::done();
        assert_eq!(SnapshotInput::new(dir, &manifest, &done).verified_dir().await.unwrap(), dir);

        let (tx, pending) = Verification::pending();
        let input = SnapshotInput::new(dir, &manifest, &pending);
        let waiter = tokio::spawn({
            let pending = pending.clone();
            async move { pending.wait().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "no verdict yet");
        tx.send(true);
        waiter.await.unwrap().unwrap();
        assert_eq!(input.verified_dir().await.unwrap(), dir);

        let (tx, failed) = Verification::pending();
        tx.send(false);
        let input = SnapshotInput::new(dir, &manifest, &failed);
        assert!(matches!(input.verified_dir().await, Err(BackendError::Unverified)));

        let (tx, abandoned) = Verification::pending();
        drop(tx);
        assert!(matches!(abandoned.wait().await, Err(BackendError::Unverified)), "no verdict is no pass");
    }
}
