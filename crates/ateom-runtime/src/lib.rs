//! # ateom-runtime
//!
//! The core of one ateom worker: it holds **at most one workload** and moves it through
//!
//! ```text
//!            run / restore                 checkpoint (+ push when DURABLE)
//!   Idle ───────────────────▶ Running ───────────────────▶ Idle
//!     ▲   (Busy while starting)   │   (Busy while freezing, committing, pushing)
//!     └───── failure / delete ────┘
//! ```
//!
//! It is backend-agnostic: it validates nothing on the wire (that is the gRPC layer's job)
//! but enforces everything about state — one workload at a time, the right actor, snapshots
//! that exist, are intact and fit this host — and does the work shared by every backend:
//! readiness probing, the loopback forwarder, snapshot manifests, retention, timings.
//!
//! **Nothing is lost when the worker process dies.** Sandboxes outlive the `ateom` process;
//! the worker records each one in its journal ([`journal`]) before every phase change, and a
//! restarted worker on the same state directory adopts what it finds alive, finishes or
//! undoes an interrupted checkpoint, and reports the actors whose sandbox died meanwhile as
//! lost ([`recovery`]). A checkpoint never destroys the only copy of a workload's state: a
//! capture that cannot be committed is either taken back (a paused VM resumes) or kept whole
//! in quarantine until it can be ([`checkpoint`]).

pub mod checkpoint;
pub mod durable;
pub mod faults;
pub mod host;
pub mod journal;
pub mod node_agent;
pub mod probe;
mod recovery;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ateom_core::{
    ActorRef, Backend, BackendError, Capabilities, ContainerSource, HostFingerprint, LaunchContext, Mismatch,
    RestoreRequest, RestoreTarget, RunRequest, Sandbox, SnapshotId, SnapshotInput, SnapshotManifest,
    Verification, WorkloadSpec, check_compatibility,
};
use ateom_net::Forwarder;
use ateom_snapshot::{LocalSnapshot, LocalSnapshots, SnapshotError};
use tracing::{debug, info, warn};

pub use journal::LostActor;

/// How a runtime is set up.
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    /// Everything the worker owns lives below this directory (absolute).
    pub state_dir: PathBuf,
    /// The worker's name in host fingerprints (default: `/etc/machine-id`).
    pub host_id: Option<String>,
    /// Loopback address of the forwarder into the running workload (port 0: pick one, or
    /// the one an adopted workload was served on).
    pub forward_addr: SocketAddr,
    /// How long Run/Restore wait for the readiness probe.
    pub ready_timeout: Duration,
    /// Complete snapshots kept per actor besides the pinned ones (retention).
    pub keep_snapshots: usize,
    /// Free space a checkpoint leaves on the state directory's file system, on top of what it
    /// expects to write: below it, it refuses before freezing anything.
    pub min_free_bytes: u64,
    /// Sign durable snapshots with these keys, and restore only durable snapshots signed
    /// with one of them (`None`: no signatures written or required).
    pub signing: Option<ateom_store::SigningKeys>,
    /// Limits of every sandbox where a request sets none.
    pub default_resources: ateom_core::Resources,
}

impl RuntimeOptions {
    /// Defaults for a state directory: any free loopback port, 30 s readiness, 2 snapshots
    /// kept per actor, 64 MiB free space in reserve.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            host_id: None,
            forward_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ready_timeout: Duration::from_secs(30),
            keep_snapshots: 2,
            min_free_bytes: 64 << 20,
            signing: None,
            default_resources: ateom_core::Resources::default(),
        }
    }
}

/// Errors of the runtime; the gRPC layer maps each to a status code.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Invalid(#[from] ateom_core::InvalidArgument),
    #[error("worker is busy: actor {running} is {state}")]
    Busy { running: ActorRef, state: &'static str },
    #[error("no workload is running (requested actor {requested})")]
    NothingRunning { requested: ActorRef },
    #[error("actor {requested} is not running here; the running actor is {running}")]
    WrongActor { running: Box<ActorRef>, requested: Box<ActorRef> },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("snapshot {snapshot} cannot be restored on this host: {}", mismatches.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Incompatible { snapshot: String, mismatches: Vec<Mismatch> },
    #[error(transparent)]
    NotReady(#[from] probe::NotReady),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("{what} is not supported by this worker: {detail}")]
    Unsupported { what: &'static str, detail: String },
    #[error("snapshot store: {0}")]
    Store(#[source] Box<ateom_store::StoreError>),
    #[error("durable snapshot {location} has an unusable manifest: {detail}")]
    DurableManifest { location: String, detail: String },
    #[error("snapshot {snapshot} is kept on this node at {local}, but shipping it failed: {source}")]
    PushFailed {
        snapshot: String,
        local: String,
        #[source]
        source: Box<RuntimeError>,
    },
    /// Refused before freezing: the workload keeps running.
    #[error(
        "not enough free space for a snapshot of {actor} in {path}: {available} bytes free, the checkpoint \
         needs about {need} (expected size + the reserve of --min-free); the workload keeps running"
    )]
    NoSpace { actor: String, path: String, need: u64, available: u64 },
    /// The capture could not be committed, and the workload was taken back: it keeps running.
    #[error("committing snapshot {snapshot} failed ({source}); the workload was resumed and keeps running")]
    CommitFailedResumed {
        snapshot: String,
        #[source]
        source: Box<SnapshotError>,
    },
    /// The capture could not be committed and the workload cannot be taken back: the capture
    /// is kept whole, and `RecoverSnapshots` commits it later.
    #[error(
        "snapshot {snapshot} was captured but could not be committed ({source}); it is kept whole in \
         quarantine at {dir}: free space, then run `ateom snapshots recover`"
    )]
    Quarantined {
        snapshot: String,
        dir: String,
        #[source]
        source: Box<SnapshotError>,
    },
    #[error("the push of snapshot {snapshot} was stopped by a delete of actor {actor}")]
    PushCancelled { snapshot: String, actor: String },
    /// A DATA-on-golden restore named a golden snapshot that is not its template's.
    #[error(
        "golden snapshot {snapshot} is of {of}, not a golden snapshot of {actor}'s template ({allowed}); \
         nothing was restored"
    )]
    WrongGolden { snapshot: String, of: String, actor: String, allowed: String },
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error("{0}")]
    Locked(String),
    /// A sandbox failed to start; what it left to explain itself was kept.
    #[error("{source}; its logs are kept in {kept}{tail}")]
    WithDiagnostics {
        #[source]
        source: Box<RuntimeError>,
        kept: String,
        /// The last lines of the runtime's own log that explain it (or empty).
        tail: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    /// The error was caused by a full disk (ENOSPC / EDQUOT somewhere in its chain).
    pub fn is_no_space(&self) -> bool {
        if matches!(self, RuntimeError::NoSpace { .. }) {
            return true;
        }
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cur {
            // ENOSPC, EDQUOT
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && matches!(io.raw_os_error(), Some(28 | 122))
            {
                return true;
            }
            cur = e.source();
        }
        false
    }
}

/// Re-hashes a local snapshot before use; one just pulled was verified on its way in.
async fn verify_unless_pulled(
    snap: &LocalSnapshot,
    pulled: Option<(u64, Duration)>,
) -> Result<(), RuntimeError> {
    if pulled.is_none() {
        let s = snap.clone();
        tokio::task::spawn_blocking(move || s.verify())
            .await
            .map_err(task_failed("verifying snapshot"))??;
    }
    Ok(())
}

/// What Run and Restore report.
#[derive(Clone, Debug)]
pub struct Started {
    pub workload_address: Option<SocketAddr>,
    pub host_endpoint: SocketAddr,
    pub console: Option<String>,
    pub ready: Duration,
    /// Restore only: the snapshot used.
    pub snapshot_id: Option<SnapshotId>,
    /// Restore only: bytes fetched from object storage and how long it took.
    pub pulled: Option<(u64, Duration)>,
}

/// What a checkpoint reports.
#[derive(Clone, Debug)]
pub struct Checkpointed {
    pub manifest: SnapshotManifest,
    pub files: Vec<PathBuf>,
    pub location: String,
    pub destination: ateom_core::Destination,
    pub elapsed: Duration,
    /// DURABLE only: bytes written to object storage and the push time.
    pub pushed: Option<(u64, Duration)>,
}

/// What `push_snapshot` did.
#[derive(Clone, Debug)]
pub struct PushedSnapshot {
    pub location: String,
    pub stored_bytes: u64,
    pub elapsed: Duration,
    /// The store held it whole already; nothing was written.
    pub already_stored: bool,
}

/// What a delete did on this worker.
#[derive(Clone, Debug, Default)]
pub struct Deleted {
    /// The actor was running here and was stopped.
    pub stopped: bool,
    /// Its local snapshots that were deleted, oldest first.
    pub snapshots: Vec<SnapshotId>,
    /// Disk space they occupied.
    pub freed_bytes: u64,
}

/// What `GetCapabilities` reports.
#[derive(Clone, Debug)]
pub struct WorkerInfo {
    pub backend: String,
    pub runtime_version: String,
    pub capabilities: Capabilities,
    pub host: HostFingerprint,
    pub running: Option<ActorRef>,
    pub host_endpoint: SocketAddr,
    /// The running workload's serial console, if its backend has one.
    pub console: Option<String>,
    /// `idle`, `starting`, `restoring`, `running`, `checkpointing`, `pushing` or `deleting`.
    pub state: &'static str,
    /// The snapshot the checkpoint under way writes (states `checkpointing` and `pushing`).
    pub checkpoint_snapshot: Option<SnapshotId>,
    /// Disk space local snapshots occupy, and free space on their file system.
    pub snapshot_bytes_used: u64,
    pub snapshot_bytes_free: u64,
    /// Actors whose sandbox a restarted worker found dead, oldest first.
    pub lost: Vec<LostActor>,
}

/// One local snapshot, as `ListSnapshots` reports it.
#[derive(Clone, Debug)]
pub struct SnapshotInfo {
    pub id: SnapshotId,
    /// RFC 3339 (empty for a quarantined capture).
    pub created_at: String,
    pub bytes: u64,
    pub pinned: bool,
    /// `complete` or `quarantined`.
    pub state: &'static str,
}

/// What a prune removed (or would remove).
#[derive(Clone, Debug, Default)]
pub struct Pruned {
    /// `(actor, snapshot)` pairs, per actor oldest first.
    pub deleted: Vec<(ActorRef, SnapshotId)>,
    pub freed_bytes: u64,
}

/// What `RecoverSnapshots` did.
#[derive(Clone, Debug, Default)]
pub struct Recovered {
    pub committed: Vec<(String, SnapshotId)>,
    /// `(actor key, snapshot, why it is still quarantined)`.
    pub still_quarantined: Vec<(String, SnapshotId, String)>,
}

struct Active {
    actor: ActorRef,
    sandbox: Box<dyn Sandbox>,
    spec: WorkloadSpec,
    work_dir: PathBuf,
    service_port: Option<u16>,
}

/// How long shutdown waits for an operation in flight (a start, a checkpoint) to finish.
const SHUTDOWN_SETTLE: Duration = Duration::from_secs(120);

enum Slot {
    Idle,
    Busy { actor: ActorRef, state: &'static str, snapshot: Option<SnapshotId> },
    Running(Box<Active>),
}

/// One worker's runtime. Cheap to share (`Arc<Runtime>`); every method is safe to call
/// concurrently, and exactly one of two racing Run/Restore calls wins.
pub struct Runtime {
    backend: Arc<dyn Backend>,
    opts: RuntimeOptions,
    host: HostFingerprint,
    snapshots: LocalSnapshots,
    /// Snapshots of *other* actors pulled for a restore (a template's golden snapshot),
    /// shared by every actor of this worker instead of copied into each one's directory.
    shared: LocalSnapshots,
    forwarder: Forwarder,
    stores: durable::Stores,
    journal: journal::Journal,
    _lock: ateom_sys::StateLock,
    slot: Mutex<Slot>,
    /// Actors whose local snapshots are being deleted: no Run or Restore of them meanwhile
    /// (other actors are not held up). Locked after `slot`, never before.
    deleting: Mutex<std::collections::HashSet<ActorRef>>,
    /// The push under way, if any: the actor and the switch a delete uses to stop it.
    pushing: Mutex<Option<(ActorRef, tokio::sync::watch::Sender<bool>)>>,
    /// Committed snapshots being copied to object storage by `push_snapshot` (the worker is
    /// not held meanwhile): retention keeps them until the copy ends. One copy at a time.
    copying: Mutex<std::collections::HashSet<(ActorRef, SnapshotId)>>,
    copy_turn: tokio::sync::Mutex<()>,
    /// Disk space of the local snapshots, refreshed after every change.
    used_bytes: AtomicU64,
}

/// Takes an actor out of `Runtime::deleting` when its delete ends, however it ends.
struct DeletingGuard<'a> {
    set: &'a Mutex<std::collections::HashSet<ActorRef>>,
    actor: ActorRef,
}

impl Drop for DeletingGuard<'_> {
    fn drop(&mut self) {
        self.set.lock().expect("deleting lock").remove(&self.actor);
    }
}

/// Resets the slot to Idle if an operation ends without handing over a running workload.
struct SlotGuard<'a> {
    slot: &'a Mutex<Slot>,
    armed: bool,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            *self.slot.lock().expect("slot lock") = Slot::Idle;
        }
    }
}

/// What to do with a running workload when the daemon stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnExit {
    /// Leave it running: the next `ateom serve` on this state directory adopts it.
    Keep,
    /// Delete it (its state is discarded).
    Stop,
}

impl Runtime {
    /// Prepares the state directory, adopts the sandbox a previous worker process left
    /// running (or finishes its interrupted checkpoint), removes everything else it left
    /// behind and binds the forwarder.
    pub async fn start(backend: Arc<dyn Backend>, opts: RuntimeOptions) -> Result<Self, RuntimeError> {
        recovery::start(backend, opts).await
    }

    pub fn snapshots(&self) -> &LocalSnapshots {
        &self.snapshots
    }

    pub fn host_endpoint(&self) -> SocketAddr {
        self.forwarder.local_addr()
    }

    pub fn info(&self) -> WorkerInfo {
        let info = self.backend.info();
        let (running, console, state, checkpoint_snapshot) = match &*self.slot.lock().expect("slot lock") {
            Slot::Idle => (None, None, "idle", None),
            Slot::Busy { actor, state, snapshot } => (Some(actor.clone()), None, *state, snapshot.clone()),
            Slot::Running(a) => (Some(a.actor.clone()), a.sandbox.console(), "running", None),
        };
        let free = ateom_sys::space(self.snapshots.root()).map(|s| s.available).unwrap_or(0);
        WorkerInfo {
            backend: info.name.clone(),
            runtime_version: info.runtime_version.clone(),
            capabilities: info.capabilities.clone(),
            host: self.host.clone(),
            running,
            host_endpoint: self.forwarder.local_addr(),
            console,
            state,
            checkpoint_snapshot,
            snapshot_bytes_used: self.used_bytes.load(Ordering::Relaxed),
            snapshot_bytes_free: free,
            lost: self.journal.lost(),
        }
    }

    /// Recomputes the disk space of the local snapshots (after a change).
    async fn refresh_usage(&self) {
        let (a, b) = (self.snapshots.clone(), self.shared.clone());
        if let Ok(used) = tokio::task::spawn_blocking(move || a.used_bytes() + b.used_bytes()).await {
            self.used_bytes.store(used, Ordering::Relaxed);
        }
    }

    fn claim(&self, actor: &ActorRef, state: &'static str) -> Result<SlotGuard<'_>, RuntimeError> {
        let mut slot = self.slot.lock().expect("slot lock");
        if self.deleting.lock().expect("deleting lock").contains(actor) {
            return Err(RuntimeError::Busy { running: actor.clone(), state: "deleting" });
        }
        match &*slot {
            Slot::Idle => {
                *slot = Slot::Busy { actor: actor.clone(), state, snapshot: None };
                Ok(SlotGuard { slot: &self.slot, armed: true })
            }
            Slot::Busy { actor, state, .. } => Err(RuntimeError::Busy { running: actor.clone(), state }),
            Slot::Running(a) => Err(RuntimeError::Busy { running: a.actor.clone(), state: "running" }),
        }
    }

    fn set_busy(&self, actor: &ActorRef, state: &'static str, snapshot: Option<SnapshotId>) {
        *self.slot.lock().expect("slot lock") = Slot::Busy { actor: actor.clone(), state, snapshot };
    }

    fn actor_dir(&self, actor: &ActorRef) -> PathBuf {
        self.snapshots.root().join(actor.key())
    }

    /// Records the pins a request brought (the snapshots its caller still references).
    fn record_pins(&self, actor: &ActorRef, keep: &[SnapshotId]) {
        if keep.is_empty() {
            return;
        }
        if let Err(e) = self.snapshots.set_pins(actor, keep) {
            warn!(%actor, error = %e, "recording pinned snapshots");
        }
    }

    fn launch_context(
        &self,
        actor: &ActorRef,
        spec: &WorkloadSpec,
        runtime: Option<ateom_core::RuntimeConfig>,
        asset_paths: BTreeMap<String, String>,
        resources: ateom_core::Resources,
    ) -> Result<LaunchContext, RuntimeError> {
        let actor_dir = self.actor_dir(actor);
        let mut containers = Vec::with_capacity(spec.containers.len());
        for c in &spec.containers {
            let source = match &c.image {
                Some(image) => ContainerSource::Image(image.clone()),
                None => {
                    let bundle = actor_dir.join("bundles").join(c.name.as_str());
                    if bundle.join("config.json").is_file() {
                        ContainerSource::Bundle(bundle)
                    } else {
                        ContainerSource::Nothing { expected_bundle: bundle }
                    }
                }
            };
            containers.push((c.clone(), source));
        }
        let work_dir = actor_dir.join("work");
        let _ = std::fs::remove_dir_all(&work_dir);
        create_private_dir(&work_dir)?;
        let cache_dir = self.opts.state_dir.join("cache");
        let resources = resources.or(self.opts.default_resources);
        let volumes = node_agent::volumes_for(&actor_dir, spec)?;
        Ok(LaunchContext {
            actor: actor.clone(),
            containers,
            runtime,
            asset_paths,
            work_dir,
            cache_dir,
            resources,
            volumes,
        })
    }

    /// Starts a workload and waits until it is ready.
    pub async fn run(&self, req: RunRequest) -> Result<Started, RuntimeError> {
        let start = Instant::now();
        let guard = self.claim(&req.actor, "starting")?;
        let ctx = self.launch_context(&req.actor, &req.spec, req.runtime, req.asset_paths, req.resources)?;
        let work_dir = ctx.work_dir.clone();
        info!(actor = %req.actor, "run: starting sandbox");
        let sandbox = match self.backend.run(ctx).await {
            Ok(s) => s,
            Err(e) => {
                let e = self.keep_failure(&req.actor, &work_dir, "run", e.into());
                let _ = std::fs::remove_dir_all(&work_dir);
                return Err(e);
            }
        };
        faults::point("run-after-start");
        self.go_live(guard, req.actor, req.spec, sandbox, work_dir, start, None).await
    }

    /// Waits for readiness, records the sandbox in the journal, points the forwarder at the
    /// workload and marks it running.
    #[allow(clippy::too_many_arguments)]
    async fn go_live(
        &self,
        mut guard: SlotGuard<'_>,
        actor: ActorRef,
        spec: WorkloadSpec,
        sandbox: Box<dyn Sandbox>,
        work_dir: PathBuf,
        start: Instant,
        snapshot_id: Option<SnapshotId>,
    ) -> Result<Started, RuntimeError> {
        let service = spec.service().map(|(_, p)| p.clone());
        let dialer = sandbox.dialer();
        if let Some(dialer) = &dialer {
            // Every container's probe, each within its own timeout (from now: the sandbox is
            // up), all at once.
            let exited = || sandbox.exited();
            let probes =
                spec.containers.iter().filter_map(|c| c.readyz.as_ref()).map(|p| {
                    probe::wait_ready(dialer.as_ref(), p, p.timeout(self.opts.ready_timeout), &exited)
                });
            let outcome = futures::future::try_join_all(probes).await;
            if let Err(e) = outcome {
                warn!(%actor, error = %e, "workload never became ready; tearing it down");
                let e = self.keep_failure(&actor, &work_dir, "readiness", e.into());
                if let Err(del) = sandbox.delete().await {
                    warn!(%actor, error = %del, "delete after failed readiness");
                }
                let _ = std::fs::remove_dir_all(&work_dir);
                return Err(e);
            }
        }
        let ready = start.elapsed();
        let service_port = service.as_ref().map(|p| p.port);
        let active = Box::new(Active { actor, sandbox, spec, work_dir, service_port });
        // Recorded before anyone is told it runs: a worker restarted from here on adopts it.
        if let Err(e) = self.record(&active, journal::Phase::Running) {
            warn!(actor = %active.actor, error = %e, "cannot record the sandbox; tearing it down");
            let Active { sandbox, work_dir, .. } = *active;
            let _ = sandbox.delete().await;
            let _ = std::fs::remove_dir_all(&work_dir);
            return Err(e);
        }
        faults::point("go-live-after-journal");
        if let (Some(port), Some(dialer)) = (service_port, &dialer) {
            self.forwarder.set_target(Some((dialer.clone(), port)));
        }
        let workload_address = match (&dialer, service_port) {
            (Some(d), Some(port)) => Some(SocketAddr::new(d.ip(), port)),
            _ => None,
        };
        let console = active.sandbox.console();
        info!(actor = %active.actor, ready_ms = ready.as_millis() as u64, endpoint = %self.forwarder.local_addr(), "workload ready");
        *self.slot.lock().expect("slot lock") = Slot::Running(active);
        guard.armed = false;
        Ok(Started {
            workload_address,
            host_endpoint: self.forwarder.local_addr(),
            console,
            ready,
            snapshot_id,
            pulled: None,
        })
    }

    /// Writes the journal record of a live sandbox.
    fn record(&self, a: &Active, phase: journal::Phase) -> Result<(), RuntimeError> {
        self.journal.record(&journal::ActiveRecord {
            version: journal::JOURNAL_VERSION,
            actor: a.actor.clone(),
            spec: a.spec.clone(),
            sandbox: a.sandbox.handle(),
            work_dir: a.work_dir.clone(),
            host_endpoint: self.forwarder.local_addr(),
            service_port: a.service_port,
            phase,
        })?;
        Ok(())
    }

    /// Keeps what a failed start leaves to explain itself (the work directory's logs) under
    /// `<state>/failures/`, pruned to the newest few, and names it in the error.
    fn keep_failure(&self, actor: &ActorRef, work_dir: &Path, what: &str, e: RuntimeError) -> RuntimeError {
        match recovery::keep_failure_dir(&self.opts.state_dir, actor, work_dir, what) {
            Some((kept, tail)) => {
                warn!(%actor, kept = %kept.display(), "kept the failed sandbox's logs");
                let tail = if tail.is_empty() { tail } else { format!("; log: {tail}") };
                RuntimeError::WithDiagnostics { source: Box::new(e), kept: kept.display().to_string(), tail }
            }
            None => e,
        }
    }

    /// While this actor's workload is being removed (`supervise` found it dead, or a delete
    /// is under way), waits for that to end (up to 30 s): a checkpoint then learns that
    /// nothing runs, with the actor reported lost, and a restore goes ahead, instead of a
    /// "busy" neither can act on.
    async fn wait_for_dead_cleanup(&self, actor: &ActorRef) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline
            && matches!(&*self.slot.lock().expect("slot lock"),
                Slot::Busy { actor: a, state: "deleting", .. } if a == actor)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn take_running(&self, requested: &ActorRef) -> Result<(Box<Active>, SlotGuard<'_>), RuntimeError> {
        let mut slot = self.slot.lock().expect("slot lock");
        match std::mem::replace(&mut *slot, Slot::Idle) {
            Slot::Running(a) if a.actor == *requested => {
                *slot = Slot::Busy { actor: a.actor.clone(), state: "checkpointing", snapshot: None };
                Ok((a, SlotGuard { slot: &self.slot, armed: true }))
            }
            Slot::Running(a) => {
                let running = a.actor.clone();
                *slot = Slot::Running(a);
                Err(RuntimeError::WrongActor {
                    running: Box::new(running),
                    requested: Box::new(requested.clone()),
                })
            }
            Slot::Busy { actor, state, snapshot } => {
                *slot = Slot::Busy { actor: actor.clone(), state, snapshot };
                Err(RuntimeError::Busy { running: actor, state })
            }
            Slot::Idle => Err(RuntimeError::NothingRunning { requested: requested.clone() }),
        }
    }

    /// Puts a workload whose checkpoint did not happen back into service.
    fn back_to_running(&self, mut active: Box<Active>, mut guard: SlotGuard<'_>) {
        self.resume_serving(&mut active);
        if let Err(e) = self.record(&active, journal::Phase::Running) {
            warn!(actor = %active.actor, error = %e, "recording the sandbox as running again");
        }
        *self.slot.lock().expect("slot lock") = Slot::Running(active);
        guard.armed = false;
    }

    fn resume_serving(&self, active: &mut Active) {
        if let (Some(port), Some(d)) = (active.service_port, active.sandbox.dialer()) {
            self.forwarder.set_target(Some((d, port)));
        }
    }

    /// Starts a fresh sandbox from a snapshot and waits until it is ready.
    ///
    /// With a `uri_prefix`, the snapshot (the given id, or the prefix's newest) is taken
    /// from this node if it is already here, and pulled otherwise — after its provenance
    /// was checked against this host, so an incompatible snapshot moves no data.
    pub async fn restore(&self, req: RestoreRequest) -> Result<Started, RuntimeError> {
        let start = Instant::now();
        self.wait_for_dead_cleanup(&req.actor).await;
        let guard = self.claim(&req.actor, "restoring")?;
        self.record_pins(&req.actor, &req.keep);
        let imported = if req.node_agent { self.import_restore_state(&req)? } else { None };
        let (snap, pulled) = match imported {
            Some(s) => (s, None),
            None => self.find_snapshot(&req).await?,
        };
        self.check_restorable(&snap)?;
        if req.golden.is_some() {
            return self.restore_on_golden(guard, req, snap, pulled, start).await;
        }
        let data_only = snap.manifest.scope == ateom_core::Scope::Data;
        if data_only && req.scope == ateom_core::Scope::Full {
            return Err(RuntimeError::Unsupported {
                what: "a FULL restore of a DATA snapshot",
                detail: format!(
                    "snapshot {} holds only the durable directories; restore it with scope DATA (the workload starts fresh with them)",
                    snap.manifest.snapshot_id
                ),
            });
        }
        if data_only || req.scope == ateom_core::Scope::Data {
            return self.restore_data(guard, req, snap, pulled, start).await;
        }
        let spec =
            if req.spec.containers.is_empty() { snap.manifest.workload.clone() } else { req.spec.clone() };
        self.restore_full(guard, req, spec, snap, pulled, None, start).await
    }

    /// DATA on golden: the workload resumes from the template's golden snapshot (memory,
    /// processes, root file system) with the actor's volumes from `data` (its own snapshot, of
    /// either scope, already checked against this host) put back first. The golden snapshot is
    /// pulled once into the shared cache; it must be a FULL snapshot of the actor's template
    /// in an allowed namespace, fit this host, and is verified like any other.
    async fn restore_on_golden(
        &self,
        guard: SlotGuard<'_>,
        req: RestoreRequest,
        data: LocalSnapshot,
        pulled: Option<(u64, Duration)>,
        start: Instant,
    ) -> Result<Started, RuntimeError> {
        let golden = req.golden.clone().expect("a golden restore");
        verify_unless_pulled(&data, pulled).await?;
        let golden_req = RestoreRequest {
            uri_prefix: Some(golden.uri_prefix.clone()),
            snapshot_id: None,
            keep: Vec::new(),
            node_agent: false,
            golden: None,
            ..req.clone()
        };
        let (gsnap, gpulled) = self.find_snapshot(&golden_req).await?;
        let of = &gsnap.manifest.actor;
        if of.template != req.actor.template || !golden.namespaces.contains(&of.namespace) {
            return Err(RuntimeError::WrongGolden {
                snapshot: gsnap.manifest.snapshot_id.to_string(),
                of: of.to_string(),
                actor: req.actor.to_string(),
                allowed: golden
                    .namespaces
                    .iter()
                    .map(|n| format!("{n}/{}", req.actor.template))
                    .collect::<Vec<_>>()
                    .join(" or "),
            });
        }
        if gsnap.manifest.scope != ateom_core::Scope::Full {
            return Err(RuntimeError::Unsupported {
                what: "a golden snapshot that holds only durable directories",
                detail: format!(
                    "golden snapshot {} at {} is a DATA snapshot; a golden snapshot must be FULL",
                    gsnap.manifest.snapshot_id, golden.uri_prefix
                ),
            });
        }
        self.check_restorable(&gsnap)?;
        let spec = if !req.spec.containers.is_empty() {
            req.spec.clone()
        } else if !data.manifest.workload.containers.is_empty() {
            data.manifest.workload.clone()
        } else {
            gsnap.manifest.workload.clone()
        };
        info!(actor = %req.actor, golden = %gsnap.manifest.snapshot_id, data = %data.manifest.snapshot_id,
            "restore (DATA on golden): the golden snapshot with the actor's volumes");
        let pulled = match (pulled, gpulled) {
            (None, None) => None,
            (a, b) => {
                let (a, b) = (a.unwrap_or_default(), b.unwrap_or_default());
                Some((a.0 + b.0, a.1 + b.1))
            }
        };
        self.restore_full(guard, req, spec, gsnap, pulled, Some(&data), start).await
    }

    /// Restores `snap` (a FULL snapshot) into a fresh sandbox running `spec`, with the
    /// durable-directory volumes put back first from `volumes_from` (already verified) or, by
    /// default, from `snap` itself.
    #[allow(clippy::too_many_arguments)]
    async fn restore_full(
        &self,
        guard: SlotGuard<'_>,
        req: RestoreRequest,
        spec: WorkloadSpec,
        snap: LocalSnapshot,
        pulled: Option<(u64, Duration)>,
        volumes_from: Option<&LocalSnapshot>,
        start: Instant,
    ) -> Result<Started, RuntimeError> {
        faults::point("restore-before-sandbox");
        // A pulled snapshot was verified chunk by chunk on arrival. A local one is verified
        // while the backend prepares (namespaces, processes); the backend reads no file of it
        // before the verdict (`SnapshotInput::verified_dir`).
        let (verification, verifying) = if pulled.is_some() {
            (Verification::done(), None)
        } else {
            let (tx, verification) = Verification::pending();
            let verify_snap = snap.clone();
            let verify_start = Instant::now();
            let task = tokio::task::spawn_blocking(move || {
                let r = verify_snap.verify();
                tx.send(r.is_ok());
                debug!(
                    verify_ms = verify_start.elapsed().as_millis() as u64,
                    ok = r.is_ok(),
                    "snapshot verified"
                );
                r
            });
            (verification, Some(task))
        };
        let ctx = self.launch_context(&req.actor, &spec, req.runtime, req.asset_paths, req.resources)?;
        let work_dir = ctx.work_dir.clone();
        // The volumes the snapshot captured go back before the sandbox sees them.
        if let Some(from) = volumes_from {
            node_agent::restore_volumes(&from.dir, &ctx.volumes)?;
        } else if !ctx.volumes.is_empty() {
            if let Some(task) = &verifying
                && !task.is_finished()
            {
                verification.wait().await.map_err(RuntimeError::Backend)?;
            }
            node_agent::restore_volumes(&snap.dir, &ctx.volumes)?;
        }
        info!(actor = %req.actor, snapshot = %snap.manifest.snapshot_id, "restore: starting sandbox");
        let backend_start = Instant::now();
        let mut input = SnapshotInput::new(&snap.dir, &snap.manifest, &verification);
        input.foreign_volumes = volumes_from.is_some();
        let restored = self.backend.restore(ctx, input).await;
        // The verification's own verdict comes first: a damaged snapshot is reported as
        // such, whatever the backend made of it.
        if let Some(task) = verifying {
            let verdict = task.await.map_err(task_failed("verifying snapshot"));
            if let Err(e) = verdict.and_then(|r| r.map_err(RuntimeError::from)) {
                if let Ok(sandbox) = restored {
                    warn!(actor = %req.actor, "verification failed after the backend restored; tearing it down");
                    let _ = sandbox.delete().await;
                }
                let _ = std::fs::remove_dir_all(&work_dir);
                return Err(e);
            }
        }
        let sandbox = match restored {
            Ok(s) => s,
            Err(e) => {
                let e = self.keep_failure(&req.actor, &work_dir, "restore", e.into());
                let _ = std::fs::remove_dir_all(&work_dir);
                return Err(e);
            }
        };
        debug!(backend_ms = backend_start.elapsed().as_millis() as u64, "backend restore done");
        faults::point("restore-after-sandbox");
        let id = snap.manifest.snapshot_id.clone();
        let mut started = self.go_live(guard, req.actor, spec, sandbox, work_dir, start, Some(id)).await?;
        started.pulled = pulled;
        if started.pulled.is_some() {
            self.refresh_usage().await;
        }
        Ok(started)
    }

    /// The node agent's restore-state (if it placed one) as a local snapshot of the actor.
    fn import_restore_state(&self, req: &RestoreRequest) -> Result<Option<LocalSnapshot>, RuntimeError> {
        let actor_dir = self.actor_dir(&req.actor);
        let info = self.backend.info().clone();
        let host = self.host.clone();
        let spec = req.spec.redacted();
        let actor = req.actor.clone();
        node_agent::import_restore_state(&actor_dir, &self.snapshots, &req.actor, |id| SnapshotManifest {
            format_version: ateom_core::MANIFEST_FORMAT_VERSION,
            snapshot_id: id,
            actor,
            created_at: ateom_core::time::format_rfc3339_utc(std::time::SystemTime::now()),
            backend: info.name,
            runtime_version: info.runtime_version,
            kernel_id: String::new(),
            cpu_template: String::new(),
            host,
            capabilities: info.capabilities,
            image_digests: BTreeMap::new(),
            workload: spec,
            provenance: BTreeMap::new(),
            artifacts: Vec::new(),
            scope: ateom_core::Scope::Full,
        })
    }

    /// A DATA restore: the workload starts fresh from its image (or bundle), with the
    /// snapshot's volumes put back first.
    async fn restore_data(
        &self,
        guard: SlotGuard<'_>,
        req: RestoreRequest,
        snap: LocalSnapshot,
        pulled: Option<(u64, Duration)>,
        start: Instant,
    ) -> Result<Started, RuntimeError> {
        verify_unless_pulled(&snap, pulled).await?;
        let spec =
            if req.spec.containers.is_empty() { snap.manifest.workload.clone() } else { req.spec.clone() };
        let ctx = self.launch_context(&req.actor, &spec, req.runtime, req.asset_paths, req.resources)?;
        node_agent::restore_volumes(&snap.dir, &ctx.volumes)?;
        let work_dir = ctx.work_dir.clone();
        info!(actor = %req.actor, snapshot = %snap.manifest.snapshot_id, "restore (DATA): starting the workload fresh with its volumes");
        let sandbox = match self.backend.run(ctx).await {
            Ok(s) => s,
            Err(e) => {
                let e = self.keep_failure(&req.actor, &work_dir, "restore", e.into());
                let _ = std::fs::remove_dir_all(&work_dir);
                return Err(e);
            }
        };
        let id = snap.manifest.snapshot_id.clone();
        let mut started = self.go_live(guard, req.actor, spec, sandbox, work_dir, start, Some(id)).await?;
        started.pulled = pulled;
        Ok(started)
    }

    /// The snapshot a restore uses, pulling it from object storage when needed. A snapshot
    /// of another actor (a template's golden snapshot) is pulled once into the worker's
    /// shared cache and used from there by every actor.
    async fn find_snapshot(
        &self,
        req: &RestoreRequest,
    ) -> Result<(LocalSnapshot, Option<(u64, Duration)>), RuntimeError> {
        let Some(prefix) = &req.uri_prefix else {
            let snap = match &req.snapshot_id {
                Some(id) => self.snapshots.open(&req.actor, id)?,
                None => self.snapshots.latest(&req.actor)?,
            };
            return Ok((snap, None));
        };
        let store = self.stores.get(prefix)?;
        let id = match &req.snapshot_id {
            Some(id) => id.clone(),
            None => {
                let latest = store.latest().await?;
                SnapshotId::parse("LATEST", &latest).map_err(|e| RuntimeError::DurableManifest {
                    location: format!("{prefix}/LATEST"),
                    detail: e.to_string(),
                })?
            }
        };
        if let Ok(local) = self.snapshots.open(&req.actor, &id) {
            info!(snapshot = %id, "restore: the durable snapshot is already on this node");
            return Ok((local, None));
        }
        let found = durable::manifest(&store, id.as_str()).await?;
        let owner = found.manifest.actor.clone();
        let into = if owner == req.actor { &self.snapshots } else { &self.shared };
        if owner != req.actor
            && let Ok(cached) = self.shared.open(&owner, &id)
        {
            info!(snapshot = %id, of = %owner, "restore: using the shared copy on this node");
            return Ok((cached, None));
        }
        // Refuse before moving any data.
        self.check_manifest(&found.manifest)?;
        faults::point("pull-before");
        let progress = durable::LogProgress::new("pull", id.as_str());
        let pulled = durable::pull(&store, into, &owner, found, Some(progress)).await?;
        if owner != req.actor {
            let shared = self.shared.clone();
            let keep = self.opts.keep_snapshots.max(1);
            let _ = tokio::task::spawn_blocking(move || shared.prune(&owner, keep, &[id])).await;
        }
        Ok((pulled.snapshot, Some((pulled.bytes, pulled.elapsed))))
    }

    /// Refuses a snapshot whose provenance does not fit this host.
    pub fn check_restorable(&self, snap: &LocalSnapshot) -> Result<(), RuntimeError> {
        self.check_manifest(&snap.manifest)
    }

    fn check_manifest(&self, manifest: &SnapshotManifest) -> Result<(), RuntimeError> {
        let info = self.backend.info();
        let target = RestoreTarget {
            backend: &info.name,
            runtime_version: &info.runtime_version,
            capabilities: &info.capabilities,
            host: &self.host,
        };
        let mismatches = check_compatibility(manifest, &target);
        if mismatches.is_empty() {
            Ok(())
        } else {
            Err(RuntimeError::Incompatible { snapshot: manifest.snapshot_id.to_string(), mismatches })
        }
    }

    /// Removes `actor` from this worker: its workload is stopped if it is the one running (its
    /// state is discarded; nothing is checkpointed) and, unless `keep_snapshots`, its local
    /// snapshots are deleted. A push of the actor's snapshot under way is stopped and what it
    /// wrote is removed. An actor with nothing here is deleted successfully with nothing to
    /// report. Refused while the actor is being started, restored or checkpointed.
    ///
    /// No Run or Restore of the actor can start while its snapshots are being deleted (see
    /// `deleting`); other actors are not held up.
    pub async fn delete(&self, actor: &ActorRef, keep_snapshots: bool) -> Result<Deleted, RuntimeError> {
        self.stop_push_of(actor).await?;
        let (stopping, guard, _deleting) = {
            let mut slot = self.slot.lock().expect("slot lock");
            let mut deleting = self.deleting.lock().expect("deleting lock");
            if deleting.contains(actor) {
                return Err(RuntimeError::Busy { running: actor.clone(), state: "deleting" });
            }
            let (stopping, guard) = match std::mem::replace(&mut *slot, Slot::Idle) {
                Slot::Running(a) if a.actor == *actor => {
                    *slot = Slot::Busy { actor: actor.clone(), state: "deleting", snapshot: None };
                    (Some(a), Some(SlotGuard { slot: &self.slot, armed: true }))
                }
                Slot::Busy { actor: busy, state, snapshot } if busy == *actor => {
                    *slot = Slot::Busy { actor: busy.clone(), state, snapshot };
                    return Err(RuntimeError::Busy { running: busy, state });
                }
                other => {
                    *slot = other;
                    (None, None)
                }
            };
            deleting.insert(actor.clone());
            (stopping, guard, DeletingGuard { set: &self.deleting, actor: actor.clone() })
        };
        let stopped = stopping.is_some();
        if let Some(a) = stopping {
            info!(actor = %a.actor, "delete: stopping the running workload (state discarded)");
            self.stop_active(a).await?;
        }
        let mut deleted = Vec::new();
        if !keep_snapshots {
            let snapshots = self.snapshots.clone();
            let who = actor.clone();
            deleted = tokio::task::spawn_blocking(move || snapshots.delete_all(&who))
                .await
                .map_err(task_failed("deleting snapshots"))??;
            // The actor's directory goes too once nothing else (a node agent's bundles) is in it.
            let _ = std::fs::remove_dir(self.actor_dir(actor));
            self.refresh_usage().await;
        }
        drop(guard);
        let freed_bytes = deleted.iter().map(|(_, b)| b).sum();
        info!(%actor, stopped, snapshots = deleted.len(), freed_bytes, "actor deleted from this worker");
        Ok(Deleted { stopped, snapshots: deleted.into_iter().map(|(id, _)| id).collect(), freed_bytes })
    }

    /// Stops the push of `actor`'s snapshot, if one is under way, and waits until the
    /// checkpoint that ran it has ended (it removes what the push wrote).
    async fn stop_push_of(&self, actor: &ActorRef) -> Result<(), RuntimeError> {
        let stopping = {
            let p = self.pushing.lock().expect("pushing lock");
            match &*p {
                Some((a, stop)) if a == actor => {
                    let _ = stop.send(true);
                    true
                }
                _ => false,
            }
        };
        if !stopping {
            return Ok(());
        }
        info!(%actor, "delete: stopping the push under way");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let busy = matches!(&*self.slot.lock().expect("slot lock"),
                Slot::Busy { actor: a, state: "pushing", .. } if a == actor);
            if !busy {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(RuntimeError::Busy { running: actor.clone(), state: "pushing" });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The actor's local snapshots (complete and quarantined), oldest first.
    pub fn list_snapshots(&self, actor: &ActorRef) -> Result<Vec<SnapshotInfo>, RuntimeError> {
        let pins = self.snapshots.pins(actor);
        let mut out = Vec::new();
        for id in self.snapshots.list(actor)? {
            let created_at =
                self.snapshots.open(actor, &id).map(|s| s.manifest.created_at).unwrap_or_default();
            out.push(SnapshotInfo {
                bytes: self.snapshots.snapshot_bytes(actor, &id),
                pinned: pins.contains(&id),
                created_at,
                id,
                state: "complete",
            });
        }
        let key = actor.key();
        for u in self.snapshots.unfinished()? {
            if u.captured && u.actor_key == key && !self.checkpoint_in_progress(&u.id) {
                let bytes = dir_bytes(&u.dir);
                out.push(SnapshotInfo {
                    pinned: pins.contains(&u.id),
                    id: u.id,
                    created_at: String::new(),
                    bytes,
                    state: "quarantined",
                });
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    fn checkpoint_in_progress(&self, id: &SnapshotId) -> bool {
        matches!(&*self.slot.lock().expect("slot lock"), Slot::Busy { snapshot: Some(s), .. } if s == id)
    }

    /// What the running workload uses now, with its actor (`None` when nothing runs, or when
    /// `actor` is given and is not the one running).
    pub fn stats(&self, actor: Option<&ActorRef>) -> Option<(ActorRef, ateom_core::SandboxStats)> {
        // A few small reads of kernel files, under the slot lock.
        let slot = self.slot.lock().expect("slot lock");
        let Slot::Running(a) = &*slot else { return None };
        if actor.is_some_and(|want| *want != a.actor) {
            return None;
        }
        Some((a.actor.clone(), a.sandbox.stats().unwrap_or_default()))
    }

    /// Watches the running workload: when its sandbox stops on its own (it crashed, or was
    /// killed past a limit), connections forwarded into it are cut at once (a dead peer
    /// never answers them), its leftovers are removed, the worker is free again and the actor
    /// is reported lost with the reason. Runs until the process ends.
    pub async fn supervise(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let dead = {
                let mut slot = self.slot.lock().expect("slot lock");
                match std::mem::replace(&mut *slot, Slot::Idle) {
                    Slot::Running(a) => match a.sandbox.exited() {
                        Some(why) => {
                            *slot = Slot::Busy { actor: a.actor.clone(), state: "deleting", snapshot: None };
                            Some((a, why))
                        }
                        None => {
                            *slot = Slot::Running(a);
                            None
                        }
                    },
                    other => {
                        *slot = other;
                        None
                    }
                }
            };
            if let Some((a, why)) = dead {
                warn!(actor = %a.actor, reason = %why, "the workload died on its own");
                self.forwarder.set_target(None);
                self.forwarder.abort_all().await;
                self.forget_dead(a, &format!("the workload died: {why}")).await;
            }
        }
    }

    /// Deletes local snapshots that are neither pinned nor among the newest `keep` of their
    /// actor (`None`: the worker's setting), for one actor or all of them.
    pub async fn prune(
        &self,
        actor: Option<&ActorRef>,
        keep: Option<usize>,
        dry_run: bool,
    ) -> Result<Pruned, RuntimeError> {
        let keep = keep.unwrap_or(self.opts.keep_snapshots);
        let actors: Vec<ActorRef> = match actor {
            Some(a) => vec![a.clone()],
            None => self.snapshots.actor_keys().iter().filter_map(|k| ActorRef::parse_key(k).ok()).collect(),
        };
        let mut out = Pruned::default();
        for a in actors {
            // The snapshot a checkpoint of this actor is writing right now is not a candidate.
            let snapshots = self.snapshots.clone();
            let who = a.clone();
            let copying = self.copying_of(&a);
            let deleted = tokio::task::spawn_blocking(move || {
                if dry_run {
                    snapshots.prune_plan(&who, keep, &copying)
                } else {
                    snapshots.prune(&who, keep, &copying)
                }
            })
            .await
            .map_err(task_failed("pruning snapshots"))??;
            for (id, bytes) in deleted {
                out.freed_bytes += bytes;
                out.deleted.push((a.clone(), id));
            }
        }
        if !dry_run {
            self.refresh_usage().await;
        }
        Ok(out)
    }

    /// Commits quarantined captures (kept after a commit failed) now that they can be.
    pub async fn recover_snapshots(&self) -> Result<Recovered, RuntimeError> {
        let mut out = Recovered::default();
        for u in self.snapshots.unfinished()? {
            if !u.captured || self.checkpoint_in_progress(&u.id) {
                continue;
            }
            let (key, id) = (u.actor_key.clone(), u.id.clone());
            let result = tokio::task::spawn_blocking(move || u.into_captured().and_then(|c| c.commit()))
                .await
                .map_err(task_failed("committing a quarantined snapshot"))?;
            match result {
                Ok(snap) => {
                    info!(actor = %key, snapshot = %id, dir = %snap.dir.display(), "quarantined snapshot committed");
                    out.committed.push((key, id));
                }
                Err(e) => {
                    warn!(actor = %key, snapshot = %id, error = %e, "snapshot stays quarantined");
                    out.still_quarantined.push((key, id, e.to_string()));
                }
            }
        }
        self.refresh_usage().await;
        Ok(out)
    }

    /// The daemon stops: with [`OnExit::Keep`] the workload keeps running and stays in the
    /// journal for the next worker process to adopt; with [`OnExit::Stop`] it is deleted.
    pub async fn shutdown(&self, on_exit: OnExit) {
        self.forwarder.set_target(None);
        self.forwarder.abort_all().await;
        self.settle(SHUTDOWN_SETTLE).await;
        if on_exit == OnExit::Keep {
            let mut slot = self.slot.lock().expect("slot lock");
            if let Slot::Running(a) = std::mem::replace(&mut *slot, Slot::Idle) {
                info!(actor = %a.actor, "shutdown: the workload keeps running; the next `ateom serve` adopts it");
                // Never dropped: a sandbox's drop may stop what it owns (a VMM process), and
                // this one must outlive the daemon. The process is about to exit anyway.
                std::mem::forget(a);
            }
            return;
        }
        let active = {
            let mut slot = self.slot.lock().expect("slot lock");
            match std::mem::replace(&mut *slot, Slot::Idle) {
                Slot::Running(a) => Some(a),
                other => {
                    *slot = other;
                    None
                }
            }
        };
        if let Some(a) = active {
            info!(actor = %a.actor, "shutdown: deleting the running workload");
            let actor = a.actor.clone();
            if let Err(e) = self.stop_active(a).await {
                warn!(%actor, error = %e, "delete at shutdown");
            }
        }
    }

    /// Waits (at most `limit`) for a start, restore, checkpoint or delete in flight to
    /// finish, so that shutdown acts on a settled slot: a sandbox still being created when
    /// the daemon is told to stop is then stopped too, not left running unowned. A push in
    /// flight is not waited for (the sandbox is already gone; the snapshot is on disk).
    async fn settle(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let busy = match &*self.slot.lock().expect("slot lock") {
                Slot::Busy { state, .. } if *state != "pushing" => Some(*state),
                _ => None,
            };
            let Some(state) = busy else { return };
            if tokio::time::Instant::now() >= deadline {
                warn!(state, "shutdown: an operation is still in flight; not waiting longer");
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops a running workload for good (nothing is checkpointed): no traffic reaches it any
    /// more, and its sandbox, work directory and journal record are removed.
    async fn stop_active(&self, a: Box<Active>) -> Result<(), BackendError> {
        self.forwarder.set_target(None);
        self.forwarder.abort_all().await;
        let Active { sandbox, work_dir, actor, .. } = *a;
        let deleted = sandbox.delete().await;
        let _ = tokio::fs::remove_dir_all(&work_dir).await;
        if let Err(e) = self.journal.clear() {
            warn!(%actor, error = %e, "clearing the journal after a stop");
        }
        deleted
    }
}

/// A blocking task that panicked or was cancelled, as a runtime error naming the work.
fn task_failed(context: &'static str) -> impl FnOnce(tokio::task::JoinError) -> RuntimeError {
    move |e| RuntimeError::Io { context: context.into(), source: std::io::Error::other(e.to_string()) }
}

/// Creates a directory only root can enter (sandbox work dirs hold bundles with secrets).
fn create_private_dir(dir: &Path) -> Result<(), RuntimeError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| RuntimeError::Io { context: format!("creating {}", dir.display()), source })
}

/// Bytes a directory tree occupies on disk.
fn dir_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::symlink_metadata(path) else { return 0 };
    let own = md.blocks() * 512;
    if !md.is_dir() {
        return own;
    }
    own + std::fs::read_dir(path).into_iter().flatten().flatten().map(|e| dir_bytes(&e.path())).sum::<u64>()
}
