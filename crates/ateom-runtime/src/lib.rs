//! # ateom-runtime
//!
//! The core of one ateom worker: it holds **at most one workload** and moves it through
//!
//! ```text
//!            run / restore                 checkpoint
//!   Idle ───────────────────▶ Running ───────────────────▶ Idle
//!     ▲   (Busy while starting)   │   (Busy while freezing)
//!     └───── failure / delete ────┘
//! ```
//!
//! It is backend-agnostic: it validates nothing on the wire (that is the gRPC layer's job)
//! but enforces everything about state — one workload at a time, the right actor, snapshots
//! that exist, are intact and fit this host — and does the work shared by every backend:
//! readiness probing, the loopback forwarder, snapshot manifests, timings.

pub mod durable;
pub mod host;
pub mod probe;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use ateom_core::{
    ActorRef, Artifact, Backend, BackendError, Capabilities, CheckpointRequest, ContainerSource, Destination,
    HostFingerprint, LaunchContext, MANIFEST_FORMAT_VERSION, Mismatch, RestoreRequest, RestoreTarget,
    RunRequest, Sandbox, SnapshotId, SnapshotInput, SnapshotManifest, Verification, WorkloadSpec,
    check_compatibility,
};
use ateom_net::Forwarder;
use ateom_snapshot::{LocalSnapshot, LocalSnapshots, SnapshotError};
use tracing::{debug, info, warn};

/// How a runtime is set up.
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    /// Everything the worker owns lives below this directory.
    pub state_dir: PathBuf,
    /// The worker's name in host fingerprints (default: `/etc/machine-id`).
    pub host_id: Option<String>,
    /// Loopback address of the forwarder into the running workload (port 0: pick one).
    pub forward_addr: SocketAddr,
    /// How long Run/Restore wait for the readiness probe.
    pub ready_timeout: Duration,
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
    Store(Box<ateom_store::StoreError>),
    #[error("durable snapshot {location} has an unusable manifest: {detail}")]
    DurableManifest { location: String, detail: String },
    #[error("snapshot {snapshot} is kept on this node at {local}, but shipping it failed: {source}")]
    PushFailed {
        snapshot: String,
        local: String,
        #[source]
        source: Box<RuntimeError>,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
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
    pub destination: Destination,
    pub elapsed: Duration,
    /// DURABLE only: bytes written to object storage and the push time.
    pub pushed: Option<(u64, Duration)>,
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
    /// `idle`, `starting`, `restoring`, `running` or `checkpointing`.
    pub state: &'static str,
}

struct Active {
    actor: ActorRef,
    sandbox: Box<dyn Sandbox>,
    spec: WorkloadSpec,
    work_dir: PathBuf,
    service_port: Option<u16>,
}

enum Slot {
    Idle,
    Busy { actor: ActorRef, state: &'static str },
    Running(Box<Active>),
}

/// One worker's runtime. Cheap to share (`Arc<Runtime>`); every method is safe to call
/// concurrently, and exactly one of two racing Run/Restore calls wins.
pub struct Runtime {
    backend: Arc<dyn Backend>,
    opts: RuntimeOptions,
    host: HostFingerprint,
    snapshots: LocalSnapshots,
    forwarder: Forwarder,
    stores: durable::Stores,
    slot: Mutex<Slot>,
    /// Actors whose local snapshots are being deleted: no Run or Restore of them meanwhile
    /// (other actors are not held up). Locked after `slot`, never before.
    deleting: Mutex<std::collections::HashSet<ActorRef>>,
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

impl Runtime {
    /// Prepares the state directory, removes what a crashed predecessor left behind and
    /// binds the forwarder.
    pub async fn start(backend: Arc<dyn Backend>, opts: RuntimeOptions) -> Result<Self, RuntimeError> {
        let actors = opts.state_dir.join("actors");
        std::fs::create_dir_all(&actors).map_err(|source| RuntimeError::Io {
            context: format!("creating {}", actors.display()),
            source,
        })?;
        let snapshots = LocalSnapshots::new(&actors);
        for p in snapshots.remove_partials()? {
            warn!(path = %p.display(), "removed an incomplete snapshot left by a crash");
        }
        remove_work_dirs(&actors);
        for what in backend.cleanup_stale().await? {
            warn!(%what, "cleaned up after a previous run");
        }
        let forwarder = Forwarder::bind(opts.forward_addr).await.map_err(|e| RuntimeError::Io {
            context: format!("binding forwarder on {}", opts.forward_addr),
            source: std::io::Error::other(e.to_string()),
        })?;
        let host = host::probe(opts.host_id.as_deref());
        info!(
            backend = %backend.info().name,
            version = %backend.info().runtime_version,
            endpoint = %forwarder.local_addr(),
            host_id = %host.host_id,
            "runtime ready"
        );
        Ok(Self {
            backend,
            opts,
            host,
            snapshots,
            forwarder,
            stores: durable::Stores::default(),
            slot: Mutex::new(Slot::Idle),
            deleting: Mutex::new(std::collections::HashSet::new()),
        })
    }

    pub fn snapshots(&self) -> &LocalSnapshots {
        &self.snapshots
    }

    pub fn host_endpoint(&self) -> SocketAddr {
        self.forwarder.local_addr()
    }

    pub fn info(&self) -> WorkerInfo {
        let info = self.backend.info();
        let (running, console, state) = match &*self.slot.lock().expect("slot lock") {
            Slot::Idle => (None, None, "idle"),
            Slot::Busy { actor, state } => (Some(actor.clone()), None, *state),
            Slot::Running(a) => (Some(a.actor.clone()), a.sandbox.console(), "running"),
        };
        WorkerInfo {
            backend: info.name.clone(),
            runtime_version: info.runtime_version.clone(),
            capabilities: info.capabilities.clone(),
            host: self.host.clone(),
            running,
            host_endpoint: self.forwarder.local_addr(),
            console,
            state,
        }
    }

    fn claim(&self, actor: &ActorRef, state: &'static str) -> Result<SlotGuard<'_>, RuntimeError> {
        let mut slot = self.slot.lock().expect("slot lock");
        if self.deleting.lock().expect("deleting lock").contains(actor) {
            return Err(RuntimeError::Busy { running: actor.clone(), state: "deleting" });
        }
        match &*slot {
            Slot::Idle => {
                *slot = Slot::Busy { actor: actor.clone(), state };
                Ok(SlotGuard { slot: &self.slot, armed: true })
            }
            Slot::Busy { actor, state } => Err(RuntimeError::Busy { running: actor.clone(), state }),
            Slot::Running(a) => Err(RuntimeError::Busy { running: a.actor.clone(), state: "running" }),
        }
    }

    fn actor_dir(&self, actor: &ActorRef) -> PathBuf {
        self.snapshots.root().join(actor.key())
    }

    fn launch_context(
        &self,
        actor: &ActorRef,
        spec: &WorkloadSpec,
        runtime: Option<ateom_core::RuntimeConfig>,
        asset_paths: BTreeMap<String, String>,
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
        std::fs::create_dir_all(&work_dir).map_err(|source| RuntimeError::Io {
            context: format!("creating {}", work_dir.display()),
            source,
        })?;
        let cache_dir = self.opts.state_dir.join("cache");
        Ok(LaunchContext { actor: actor.clone(), containers, runtime, asset_paths, work_dir, cache_dir })
    }

    /// Starts a workload and waits until it is ready.
    pub async fn run(&self, req: RunRequest) -> Result<Started, RuntimeError> {
        let start = Instant::now();
        let guard = self.claim(&req.actor, "starting")?;
        let ctx = self.launch_context(&req.actor, &req.spec, req.runtime, req.asset_paths)?;
        let work_dir = ctx.work_dir.clone();
        info!(actor = %req.actor, "run: starting sandbox");
        let sandbox = match self.backend.run(ctx).await {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&work_dir);
                return Err(e.into());
            }
        };
        self.go_live(guard, req.actor, req.spec, sandbox, work_dir, start, None).await
    }

    /// Waits for readiness, points the forwarder at the workload and marks it running.
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
        if let (Some(probe), Some(dialer)) = (&service, &dialer) {
            let exited = || sandbox.exited();
            if let Err(e) = probe::wait_ready(dialer.as_ref(), probe, self.opts.ready_timeout, &exited).await
            {
                warn!(%actor, error = %e, "workload never became ready; tearing it down");
                if let Err(del) = sandbox.delete().await {
                    warn!(%actor, error = %del, "delete after failed readiness");
                }
                let _ = std::fs::remove_dir_all(&work_dir);
                return Err(e.into());
            }
        }
        let ready = start.elapsed();
        let service_port = service.as_ref().map(|p| p.port);
        if let (Some(port), Some(dialer)) = (service_port, &dialer) {
            self.forwarder.set_target(Some((dialer.clone(), port)));
        }
        let workload_address = match (&dialer, service_port) {
            (Some(d), Some(port)) => Some(SocketAddr::new(d.ip(), port)),
            _ => None,
        };
        let console = sandbox.console();
        info!(%actor, ready_ms = ready.as_millis() as u64, endpoint = %self.forwarder.local_addr(), "workload ready");
        *self.slot.lock().expect("slot lock") =
            Slot::Running(Box::new(Active { actor, sandbox, spec, work_dir, service_port }));
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

    fn take_running(&self, requested: &ActorRef) -> Result<(Box<Active>, SlotGuard<'_>), RuntimeError> {
        let mut slot = self.slot.lock().expect("slot lock");
        match std::mem::replace(&mut *slot, Slot::Idle) {
            Slot::Running(a) if a.actor == *requested => {
                *slot = Slot::Busy { actor: a.actor.clone(), state: "checkpointing" };
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
            Slot::Busy { actor, state } => {
                *slot = Slot::Busy { actor: actor.clone(), state };
                Err(RuntimeError::Busy { running: actor, state })
            }
            Slot::Idle => Err(RuntimeError::NothingRunning { requested: requested.clone() }),
        }
    }

    /// Freezes the running workload into a snapshot and frees the worker.
    pub async fn checkpoint(&self, req: CheckpointRequest) -> Result<Checkpointed, RuntimeError> {
        let start = Instant::now();
        // Open the store before freezing anything: a bad location fails without side effects.
        let store = match (&req.destination, &req.uri_prefix) {
            (Destination::Durable, Some(prefix)) => Some(self.stores.get(prefix)?),
            _ => None,
        };
        let (mut active, mut guard) = self.take_running(&req.actor)?;
        // No connection may be open inside the sandbox while it freezes.
        self.forwarder.set_target(None);
        self.forwarder.abort_all().await;

        let id = SnapshotId::generate(SystemTime::now(), rand::random());
        let pending = match self.snapshots.begin(&active.actor, id.clone()) {
            Ok(p) => p,
            Err(e) => {
                self.resume_serving(&mut active);
                *self.slot.lock().expect("slot lock") = Slot::Running(active);
                guard.armed = false;
                return Err(e.into());
            }
        };
        info!(actor = %active.actor, snapshot = %id, "checkpoint: freezing");
        let frozen = Instant::now();
        let out = match active.sandbox.checkpoint(pending.dir()).await {
            Ok(out) => {
                debug!(backend_ms = frozen.elapsed().as_millis() as u64, "backend checkpoint done");
                out
            }
            Err(e) => {
                drop(pending);
                if active.sandbox.is_alive().await {
                    warn!(actor = %active.actor, error = %e, "checkpoint failed; the workload keeps running");
                    self.resume_serving(&mut active);
                    *self.slot.lock().expect("slot lock") = Slot::Running(active);
                    guard.armed = false;
                } else {
                    warn!(actor = %active.actor, error = %e, "checkpoint failed and the sandbox is gone");
                    let work_dir = active.work_dir.clone();
                    let _ = active.sandbox.delete().await;
                    let _ = std::fs::remove_dir_all(work_dir);
                }
                return Err(e.into());
            }
        };
        let Active { actor, sandbox, spec, work_dir, .. } = *active;
        let backend = self.backend.info().clone();
        let host = self.host.clone();
        let actor2 = actor.clone();
        // Tear the sandbox down while the snapshot is hashed and committed.
        let teardown = async {
            if let Err(e) = sandbox.delete().await {
                warn!(actor = %actor2, error = %e, "deleting the sandbox after checkpoint");
            }
            let _ = tokio::fs::remove_dir_all(&work_dir).await;
        };
        let commit_start = Instant::now();
        let commit = tokio::task::spawn_blocking(move || {
            let committed = pending.commit(|artifacts: Vec<Artifact>| SnapshotManifest {
                format_version: MANIFEST_FORMAT_VERSION,
                snapshot_id: id,
                actor: actor.clone(),
                created_at: ateom_core::time::format_rfc3339_utc(SystemTime::now()),
                backend: backend.name,
                runtime_version: out.provenance.runtime_version.clone(),
                kernel_id: out.provenance.kernel_id.clone(),
                cpu_template: out.provenance.cpu_template.clone(),
                host,
                capabilities: backend.capabilities,
                image_digests: out.image_digests,
                workload: spec,
                provenance: out.provenance.extra,
                artifacts,
            });
            debug!(commit_ms = commit_start.elapsed().as_millis() as u64, "snapshot digested and committed");
            committed
        });
        let (committed, ()) = tokio::join!(commit, teardown);
        let snap = committed.map_err(task_failed("committing snapshot"))??;
        drop(guard); // Idle again: the sandbox is gone, the snapshot is safe on this node.
        let local_elapsed = start.elapsed();
        info!(
            actor = %snap.manifest.actor,
            snapshot = %snap.manifest.snapshot_id,
            bytes = snap.manifest.total_bytes(),
            checkpoint_ms = local_elapsed.as_millis() as u64,
            "checkpoint complete"
        );
        let (location, pushed) = match store {
            None => (snap.dir.display().to_string(), None),
            Some(store) => {
                let progress = durable::LogProgress::new("push", snap.manifest.snapshot_id.as_str());
                match durable::push(&store, &snap, Some(progress)).await {
                    Ok(p) => (p.location, Some((p.stored_bytes, p.elapsed))),
                    Err(e) => {
                        return Err(RuntimeError::PushFailed {
                            snapshot: snap.manifest.snapshot_id.to_string(),
                            local: snap.dir.display().to_string(),
                            source: Box::new(e),
                        });
                    }
                }
            }
        };
        Ok(Checkpointed {
            files: snap.files(),
            location,
            manifest: snap.manifest,
            destination: req.destination,
            elapsed: start.elapsed(),
            pushed,
        })
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
        let guard = self.claim(&req.actor, "restoring")?;
        let (snap, pulled) = self.find_snapshot(&req).await?;
        self.check_restorable(&snap)?;
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
        let spec =
            if req.spec.containers.is_empty() { snap.manifest.workload.clone() } else { req.spec.clone() };
        let ctx = self.launch_context(&req.actor, &spec, req.runtime, req.asset_paths)?;
        let work_dir = ctx.work_dir.clone();
        info!(actor = %req.actor, snapshot = %snap.manifest.snapshot_id, "restore: starting sandbox");
        let backend_start = Instant::now();
        let input = SnapshotInput::new(&snap.dir, &snap.manifest, &verification);
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
                let _ = std::fs::remove_dir_all(&work_dir);
                return Err(e.into());
            }
        };
        debug!(backend_ms = backend_start.elapsed().as_millis() as u64, "backend restore done");
        let id = snap.manifest.snapshot_id.clone();
        let mut started = self.go_live(guard, req.actor, spec, sandbox, work_dir, start, Some(id)).await?;
        started.pulled = pulled;
        Ok(started)
    }

    /// The snapshot a restore uses, pulling it from object storage when needed.
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
        // Refuse before moving any data.
        self.check_manifest(&found.manifest)?;
        let progress = durable::LogProgress::new("pull", id.as_str());
        let pulled = durable::pull(&store, &self.snapshots, &req.actor, found, Some(progress)).await?;
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
    /// snapshots are deleted. An actor with nothing here is deleted successfully with nothing
    /// to report. Refused while the actor is being started, restored or checkpointed.
    ///
    /// No Run or Restore of the actor can start while its snapshots are being deleted (see
    /// `deleting`); other actors are not held up.
    pub async fn delete(&self, actor: &ActorRef, keep_snapshots: bool) -> Result<Deleted, RuntimeError> {
        let (stopping, guard, _deleting) = {
            let mut slot = self.slot.lock().expect("slot lock");
            let mut deleting = self.deleting.lock().expect("deleting lock");
            if deleting.contains(actor) {
                return Err(RuntimeError::Busy { running: actor.clone(), state: "deleting" });
            }
            let (stopping, guard) = match std::mem::replace(&mut *slot, Slot::Idle) {
                Slot::Running(a) if a.actor == *actor => {
                    *slot = Slot::Busy { actor: actor.clone(), state: "deleting" };
                    (Some(a), Some(SlotGuard { slot: &self.slot, armed: true }))
                }
                Slot::Busy { actor: busy, state } if busy == *actor => {
                    *slot = Slot::Busy { actor: busy.clone(), state };
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
        }
        drop(guard);
        let freed_bytes = deleted.iter().map(|(_, b)| b).sum();
        info!(%actor, stopped, snapshots = deleted.len(), freed_bytes, "actor deleted from this worker");
        Ok(Deleted { stopped, snapshots: deleted.into_iter().map(|(id, _)| id).collect(), freed_bytes })
    }

    /// Deletes the running workload, if any (daemon shutdown).
    pub async fn shutdown(&self) {
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
        self.forwarder.set_target(None);
        self.forwarder.abort_all().await;
        if let Some(a) = active {
            info!(actor = %a.actor, "shutdown: deleting the running workload");
            let actor = a.actor.clone();
            if let Err(e) = self.stop_active(a).await {
                warn!(%actor, error = %e, "delete at shutdown");
            }
        }
    }

    /// Stops a running workload for good (nothing is checkpointed): no traffic reaches it any
    /// more, and its sandbox and work directory are removed.
    async fn stop_active(&self, a: Box<Active>) -> Result<(), BackendError> {
        self.forwarder.set_target(None);
        self.forwarder.abort_all().await;
        let Active { sandbox, work_dir, .. } = *a;
        let deleted = sandbox.delete().await;
        let _ = tokio::fs::remove_dir_all(&work_dir).await;
        deleted
    }
}

/// A blocking task that panicked or was cancelled, as a runtime error naming the work.
fn task_failed(context: &'static str) -> impl FnOnce(tokio::task::JoinError) -> RuntimeError {
    move |e| RuntimeError::Io { context: context.into(), source: std::io::Error::other(e.to_string()) }
}

fn remove_work_dirs(actors: &Path) {
    let Ok(entries) = std::fs::read_dir(actors) else { return };
    for e in entries.flatten() {
        let work = e.path().join("work");
        if work.exists() {
            warn!(path = %work.display(), "removing a work directory left by a crash");
            let _ = std::fs::remove_dir_all(work);
        }
    }
}
