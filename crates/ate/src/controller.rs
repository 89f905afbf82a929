//! The controller: drives actors through their state machine against real workers.
//!
//! Every transition is `ate_core`'s pure function applied to the record just read, written
//! back with one atomic compare-and-set ([`Controller::commit`]) together with the worker
//! leases it takes or gives back — *before* the worker is called when it starts an operation
//! (the intent), and after the worker answered when it ends one.
//!
//! Concurrency inside one process: each actor has a [`Gate`] with an async *operation lock*
//! (at most one resume/pause/suspend/delete per actor at a time: the single flight of
//! resumes) and a count of requests in flight through the router (a pause or suspend drains
//! them first, bounded, and no new request enters while it runs). Across processes (several
//! replicas, or a restarted one) the store's compare-and-set decides.
//!
//! Background loops: [`Controller::health_loop`] (GetCapabilities of every worker; a RUNNING
//! actor whose workload vanished becomes CRASHED; a workload nobody placed is checkpointed
//! away), [`Controller::idle_loop`] (the templates' idle policies), [`Controller::golden_loop`]
//! (golden snapshots of applied templates). [`Controller::reconcile`] runs at start.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ate_core::store::{
    Expect, Golden, GoldenStatus, Holder, Kind, Lease, PoolRecord, StoreExt, TemplateRecord, Versioned,
    WorkerRecord, delete, put,
};
use ate_core::{
    Actor, ActorState, Candidate, Decision, DurableRef, OpKind, Provenance, Resource, Source, Store,
    StoreError, Tier, lease_change, place,
};
use tokio::sync::Notify;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::metrics::Metrics;
use crate::worker::{Caps, WorkerError, Workers, running_name};

/// Tunables of a controller.
#[derive(Clone, Debug)]
pub struct Config {
    /// This replica's name in the intents it records (`--replica-id`).
    pub owner: String,
    /// How long a request waits for its actor's resume (including waiting for a worker).
    pub resume_timeout: Duration,
    /// How long a PAUSED actor waits for the worker holding its snapshot before it may use
    /// a durable copy of the same snapshot elsewhere.
    pub local_wait: Duration,
    /// How long a pause/suspend waits for requests in flight to finish.
    pub drain_timeout: Duration,
    /// Deadline of one worker call.
    pub rpc_timeout: Duration,
    pub health_interval: Duration,
    pub idle_interval: Duration,
    /// Intents of *other* replicas older than this are reconciled as abandoned.
    pub stale_op: Duration,
    /// Pause the least recently used idle actor when a resume finds no free worker.
    pub evict: bool,
    /// Other replicas share the store (Redis): an actor this replica saw RUNNING may have
    /// been paused or moved by another since, so every request checks the record before it
    /// is forwarded (one store read). With a store of its own (SQLite) every transition
    /// goes through this process and its view is always current.
    pub shared_store: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            owner: "ate".into(),
            resume_timeout: Duration::from_secs(30),
            local_wait: Duration::from_secs(3),
            drain_timeout: Duration::from_secs(10),
            rpc_timeout: Duration::from_secs(120),
            health_interval: Duration::from_secs(1),
            idle_interval: Duration::from_millis(200),
            stale_op: Duration::from_secs(300),
            evict: true,
            shared_store: false,
        }
    }
}

/// Errors of controller operations; the API and the router map them to HTTP statuses.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{what} {name} not found")]
    NotFound { what: &'static str, name: String },
    #[error("actor {actor} is CRASHED: {reason}")]
    Crashed { actor: String, reason: String },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Worker(#[from] WorkerError),
}

impl From<ate_core::TransitionError> for CtlError {
    fn from(e: ate_core::TransitionError) -> Self {
        CtlError::Conflict(e.to_string())
    }
}

impl CtlError {
    pub fn http_status(&self) -> u16 {
        match self {
            CtlError::NotFound { .. } => 404,
            CtlError::Crashed { .. } | CtlError::Unavailable(_) => 503,
            CtlError::Conflict(_) => 409,
            CtlError::Invalid(_) => 400,
            CtlError::Store(e) if e.is_conflict() => 409,
            CtlError::Store(_) => 500,
            CtlError::Worker(_) => 502,
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[derive(Debug)]
struct GateState {
    /// RUNNING here: the worker endpoint requests go to.
    endpoint: Option<String>,
    /// A pause/suspend/delete is draining: no new request may enter.
    draining: bool,
    inflight: usize,
    last_active: Instant,
}

/// Per-actor concurrency control inside one process.
pub struct Gate {
    op: Arc<tokio::sync::Mutex<()>>,
    st: Mutex<GateState>,
    idle: Notify,
}

impl Gate {
    fn new() -> Self {
        Gate {
            op: Arc::new(tokio::sync::Mutex::new(())),
            st: Mutex::new(GateState {
                endpoint: None,
                draining: false,
                inflight: 0,
                last_active: Instant::now(),
            }),
            idle: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn try_enter(self: &Arc<Self>) -> Option<Inflight> {
        let mut st = self.lock();
        let endpoint = st.endpoint.clone()?;
        if st.draining {
            return None;
        }
        st.inflight += 1;
        st.last_active = Instant::now();
        Some(Inflight { gate: self.clone(), endpoint })
    }

    fn set_endpoint(&self, endpoint: Option<String>) {
        let mut st = self.lock();
        st.endpoint = endpoint;
        st.last_active = Instant::now();
    }

    /// Stops new requests and waits for those in flight (bounded).
    async fn drain(&self, timeout: Duration) -> Result<(), CtlError> {
        self.lock().draining = true;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.idle.notified();
            if self.lock().inflight == 0 {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                self.undrain();
                return Err(CtlError::Unavailable(format!(
                    "requests still in flight after {timeout:?}; not interrupting them"
                )));
            }
        }
    }

    fn undrain(&self) {
        self.lock().draining = false;
    }

    fn evictable(&self) -> Option<Instant> {
        let st = self.lock();
        (st.inflight == 0 && !st.draining).then_some(st.last_active)
    }
}

/// A request in flight to a RUNNING actor; dropping it ends the request.
pub struct Inflight {
    gate: Arc<Gate>,
    pub endpoint: String,
}

impl Drop for Inflight {
    fn drop(&mut self) {
        let mut st = self.gate.lock();
        st.inflight -= 1;
        st.last_active = Instant::now();
        if st.inflight == 0 {
            self.gate.idle.notify_waiters();
        }
    }
}

/// The control plane's core. Share it as `Arc<Controller>`.
pub struct Controller {
    store: Arc<dyn Store>,
    pub cfg: Config,
    workers: Workers,
    gates: Mutex<HashMap<String, Arc<Gate>>>,
    pub metrics: Metrics,
    lease_freed: Notify,
    snapshot_stores: Mutex<HashMap<String, ateom_store::Store>>,
    golden_running: Mutex<std::collections::HashSet<String>>,
}

type Lock = tokio::sync::OwnedMutexGuard<()>;

impl Controller {
    pub fn new(store: Arc<dyn Store>, cfg: Config) -> Arc<Self> {
        Arc::new(Controller {
            store,
            cfg,
            workers: Workers::default(),
            gates: Mutex::new(HashMap::new()),
            metrics: Metrics::default(),
            lease_freed: Notify::new(),
            snapshot_stores: Mutex::new(HashMap::new()),
            golden_running: Mutex::new(Default::default()),
        })
    }

    pub fn store_backend(&self) -> &'static str {
        self.store.backend()
    }

    // ---------------------------------------------------------------- store access

    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, CtlError> {
        let s = self.store.clone();
        tokio::task::spawn_blocking(move || f(&*s))
            .await
            .map_err(|e| CtlError::Unavailable(format!("store task: {e}")))?
            .map_err(CtlError::Store)
    }

    pub async fn actor(&self, name: &str) -> Result<Versioned<Actor>, CtlError> {
        let n = name.to_owned();
        self.db(move |s| s.get_as::<Actor>(Kind::Actor, &n))
            .await?
            .ok_or_else(|| CtlError::NotFound { what: "actor", name: name.to_owned() })
    }

    pub async fn actors(&self) -> Result<Vec<Versioned<Actor>>, CtlError> {
        self.db(|s| s.list_as::<Actor>(Kind::Actor)).await
    }

    pub async fn template(&self, name: &str) -> Result<Versioned<TemplateRecord>, CtlError> {
        let n = name.to_owned();
        self.db(move |s| s.get_as::<TemplateRecord>(Kind::Template, &n))
            .await?
            .ok_or_else(|| CtlError::NotFound { what: "template", name: name.to_owned() })
    }

    pub async fn templates(&self) -> Result<Vec<Versioned<TemplateRecord>>, CtlError> {
        self.db(|s| s.list_as::<TemplateRecord>(Kind::Template)).await
    }

    pub async fn worker_records(&self) -> Result<Vec<Versioned<WorkerRecord>>, CtlError> {
        self.db(|s| s.list_as::<WorkerRecord>(Kind::Worker)).await
    }

    pub async fn leases(&self) -> Result<BTreeMap<String, Versioned<Lease>>, CtlError> {
        let all = self.db(|s| s.list(Kind::Lease)).await?;
        let mut out = BTreeMap::new();
        for (name, r) in all {
            let l: Lease = serde_json::from_slice(&r.body).map_err(|e| {
                CtlError::Store(StoreError::Decode {
                    kind: "lease",
                    name: name.clone(),
                    detail: e.to_string(),
                })
            })?;
            out.insert(name, Versioned { version: r.version, value: l });
        }
        Ok(out)
    }

    pub async fn pools(&self) -> Result<Vec<Versioned<PoolRecord>>, CtlError> {
        self.db(|s| s.list_as::<PoolRecord>(Kind::Pool)).await
    }

    async fn worker_socket(&self, worker: &str) -> Result<String, CtlError> {
        let n = worker.to_owned();
        let w = self.db(move |s| s.get_as::<WorkerRecord>(Kind::Worker, &n)).await?;
        w.map(|w| w.value.socket)
            .ok_or_else(|| CtlError::NotFound { what: "worker", name: worker.to_owned() })
    }

    /// One actor transition: the actor record (at the version it was read) and the leases
    /// it gives back or takes, in one atomic write.
    async fn commit(&self, before: &Versioned<Actor>, after: Actor) -> Result<Versioned<Actor>, CtlError> {
        debug_assert!(after.lease_invariant_holds(), "{after:?}");
        let change = lease_change(&before.value, &after);
        let before_v = before.version;
        let released = change.release.is_some();
        let r = self
            .db(move |s| {
                let name = after.name.clone();
                let now = now_ms();
                let mut changes = vec![put(Kind::Actor, &name, Expect::Version(before_v), &after)];
                if let Some(w) = &change.release {
                    match s.get_as::<Lease>(Kind::Lease, w)? {
                        Some(l) if l.value.holder == Some(Holder::Actor(name.clone())) => changes.push(put(
                            Kind::Lease,
                            w,
                            Expect::Version(l.version),
                            &Lease { holder: None, since_ms: now },
                        )),
                        other => warn!(actor = %name, worker = %w, lease = ?other.map(|l| l.value),
                            "releasing a lease this actor did not hold; leaving it"),
                    }
                }
                if let Some(w) = &change.acquire {
                    let held = Lease { holder: Some(Holder::Actor(name.clone())), since_ms: now };
                    match s.get_as::<Lease>(Kind::Lease, w)? {
                        Some(l) if l.value.holder.is_none() => {
                            changes.push(put(Kind::Lease, w, Expect::Version(l.version), &held))
                        }
                        None => changes.push(put(Kind::Lease, w, Expect::Absent, &held)),
                        Some(l) => {
                            return Err(StoreError::Conflict {
                                kind: "lease",
                                name: w.clone(),
                                expected: Expect::Any,
                                found: Some(l.version),
                            });
                        }
                    }
                }
                let version = s.commit(&changes)?;
                Ok(Versioned { version, value: after })
            })
            .await;
        if released && r.is_ok() {
            self.lease_freed.notify_waiters();
        }
        r
    }

    fn gate(&self, actor: &str) -> Arc<Gate> {
        self.gates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(actor.to_owned())
            .or_insert_with(|| Arc::new(Gate::new()))
            .clone()
    }

    async fn op_lock(&self, gate: &Arc<Gate>, wait: Duration, what: &str) -> Result<Lock, CtlError> {
        tokio::time::timeout(wait, gate.op.clone().lock_owned()).await.map_err(|_| {
            CtlError::Unavailable(format!("another operation on this actor is still running ({what})"))
        })
    }

    fn snapshot_store(&self, prefix: &str) -> Result<ateom_store::Store, CtlError> {
        let mut m = self.snapshot_stores.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = m.get(prefix) {
            return Ok(s.clone());
        }
        let s = ateom_store::Store::open(prefix)
            .map_err(|e| CtlError::Invalid(format!("snapshot location {prefix}: {e}")))?;
        m.insert(prefix.to_owned(), s.clone());
        Ok(s)
    }

    /// The provenance of a durable snapshot, from its index (the manifest ateom wrote; the
    /// worker checks the same one).
    async fn provenance(&self, d: &DurableRef) -> Result<Provenance, String> {
        let store = self.snapshot_store(&d.prefix).map_err(|e| e.to_string())?;
        match store.read_index(&d.snapshot_id).await {
            Ok(index) => Ok(Provenance::from_manifest_json(&index.meta)),
            Err(e) => Err(format!("{} snapshot {} under {}: {e}", d.tier.as_str(), d.snapshot_id, d.prefix)),
        }
    }

    async fn candidates(&self) -> Result<Vec<Candidate>, CtlError> {
        let (workers, leases) =
            self.db(|s| Ok((s.list_as::<WorkerRecord>(Kind::Worker)?, s.list(Kind::Lease)?))).await?;
        let busy: std::collections::HashSet<String> = leases
            .into_iter()
            .filter(|(_, r)| {
                serde_json::from_slice::<Lease>(&r.body).map(|l| l.holder.is_some()).unwrap_or(true)
            })
            .map(|(n, _)| n)
            .collect();
        Ok(workers
            .into_iter()
            .map(|w| Candidate {
                free: !busy.contains(&w.value.name),
                name: w.value.name,
                pool: w.value.pool,
                healthy: w.value.healthy,
                info: w.value.info,
            })
            .collect())
    }

    // ---------------------------------------------------------------- resources

    /// Applies resources (pools, templates, actors). Returns one line per resource.
    pub async fn apply(&self, resources: Vec<Resource>) -> Result<Vec<String>, CtlError> {
        let mut out = Vec::new();
        for r in resources {
            match r {
                Resource::WorkerPool { metadata, spec, .. } => {
                    let name = metadata.name.clone();
                    let rec = PoolRecord { name: name.clone(), spec: spec.clone() };
                    self.db(move |s| {
                        let mut changes = vec![put(Kind::Pool, &rec.name, Expect::Any, &rec)];
                        for w in &rec.spec.workers {
                            let existing = s.get_as::<WorkerRecord>(Kind::Worker, &w.name)?;
                            if let Some(e) = &existing
                                && e.value.pool != rec.name
                            {
                                return Err(StoreError::Backend(format!(
                                    "worker {} already belongs to pool {}",
                                    w.name, e.value.pool
                                )));
                            }
                            let keep = existing.as_ref().filter(|e| e.value.socket == w.socket);
                            if keep.is_none() {
                                let wr = WorkerRecord {
                                    name: w.name.clone(),
                                    pool: rec.name.clone(),
                                    socket: w.socket.clone(),
                                    info: None,
                                    healthy: false,
                                    running: String::new(),
                                    error: None,
                                    observed_ms: 0,
                                };
                                changes.push(put(Kind::Worker, &w.name, Expect::Any, &wr));
                            }
                            if s.get(Kind::Lease, &w.name)?.is_none() {
                                changes.push(put(Kind::Lease, &w.name, Expect::Absent, &Lease::default()));
                            }
                        }
                        s.commit(&changes)
                    })
                    .await
                    .map_err(|e| match e {
                        CtlError::Store(StoreError::Backend(m)) => CtlError::Invalid(m),
                        e => e,
                    })?;
                    info!(pool = %name, workers = spec.workers.len(), "worker pool applied");
                    out.push(format!("workerpool/{name} applied ({} workers)", spec.workers.len()));
                }
                Resource::ActorTemplate { metadata, spec, .. } => {
                    let name = metadata.name.clone();
                    let existing = self.template(&name).await.ok();
                    let unchanged = existing.as_ref().is_some_and(|t| {
                        t.value.spec == spec
                            && t.value.namespace == metadata.namespace
                            && t.value.golden.status != GoldenStatus::Failed
                    });
                    if unchanged {
                        out.push(format!("actortemplate/{name} unchanged"));
                        continue;
                    }
                    let generation = existing.as_ref().map_or(0, |t| t.value.golden.generation) + 1;
                    let rec = TemplateRecord {
                        name: name.clone(),
                        namespace: metadata.namespace.clone(),
                        golden: Golden {
                            status: GoldenStatus::Pending,
                            generation,
                            worker: None,
                            prefix: TemplateRecord::golden_prefix(&spec),
                            snapshot_id: None,
                            reason: None,
                            boot_ms: 0,
                        },
                        spec,
                    };
                    let expect = existing.map_or(Expect::Absent, |t| Expect::Version(t.version));
                    self.db(move |s| s.commit(&[put(Kind::Template, &rec.name, expect, &rec)])).await?;
                    info!(template = %name, generation, "template applied; golden snapshot pending");
                    out.push(format!(
                        "actortemplate/{name} applied (golden snapshot generation {generation} pending)"
                    ));
                }
                Resource::Actor { metadata, spec, .. } => {
                    match self.create_actor(&metadata.name, &spec.template, Duration::from_secs(300)).await {
                        Ok(_) => out.push(format!("actor/{} created", metadata.name)),
                        Err(CtlError::Conflict(_)) => {
                            let a = self.actor(&metadata.name).await?;
                            if a.value.template != spec.template {
                                return Err(CtlError::Conflict(format!(
                                    "actor {} exists with template {}",
                                    metadata.name, a.value.template
                                )));
                            }
                            out.push(format!("actor/{} unchanged", metadata.name));
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(out)
    }

    /// Creates an actor: SUSPENDED on its template's golden snapshot (waiting, bounded, for
    /// the golden snapshot to be ready).
    pub async fn create_actor(&self, name: &str, template: &str, wait: Duration) -> Result<Actor, CtlError> {
        ate_core::resource::check_name(name).map_err(|p| CtlError::Invalid(format!("actor name {p}")))?;
        let deadline = Instant::now() + wait;
        let t = loop {
            let t = self.template(template).await?;
            match t.value.golden.status {
                GoldenStatus::Ready => break t,
                GoldenStatus::Failed => {
                    return Err(CtlError::Unavailable(format!(
                        "template {template}'s golden snapshot failed: {}",
                        t.value.golden.reason.unwrap_or_default()
                    )));
                }
                s if Instant::now() > deadline => {
                    return Err(CtlError::Unavailable(format!(
                        "template {template}'s golden snapshot is still {s:?}; try again"
                    )));
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let golden = DurableRef {
            prefix: t.value.golden.prefix.clone(),
            snapshot_id: t.value.golden.snapshot_id.clone().unwrap_or_default(),
            tier: Tier::Golden,
        };
        let a = Actor::new(name, template, golden, now_ms());
        let rec = a.clone();
        self.db(move |s| s.commit(&[put(Kind::Actor, &rec.name, Expect::Absent, &rec)])).await.map_err(
            |e| match e {
                CtlError::Store(e) if e.is_conflict() => {
                    CtlError::Conflict(format!("actor {name} already exists"))
                }
                e => e,
            },
        )?;
        info!(actor = %name, %template, "actor created (SUSPENDED on the golden snapshot)");
        Ok(a)
    }

    // ---------------------------------------------------------------- the router's entry

    /// Waits until `actor` is RUNNING (resuming it if needed, once however many callers
    /// ask) and registers a request in flight.
    pub async fn acquire(self: &Arc<Self>, actor: &str) -> Result<Inflight, CtlError> {
        let gate = self.gate(actor);
        if let Some(i) = self.enter_current(actor, &gate).await {
            return Ok(i);
        }
        let deadline = Instant::now() + self.cfg.resume_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let lock = self.op_lock(&gate, left, "waiting for it to resume").await?;
            if let Some(i) = self.enter_current(actor, &gate).await {
                return Ok(i);
            }
            let span = info_span!("actor", actor = %actor);
            self.resume_locked(actor, &gate, false, deadline).instrument(span).await?;
            if let Some(i) = self.enter_current(actor, &gate).await {
                drop(lock);
                return Ok(i);
            }
            drop(lock);
            if Instant::now() > deadline {
                return Err(CtlError::Unavailable(format!("actor {actor} did not stay running")));
            }
        }
    }

    /// Enters the gate if the actor is RUNNING at the endpoint this replica knows; with a
    /// shared store the record is read first and a stale endpoint (another replica paused or
    /// moved the actor) is dropped instead of used: the worker behind it may run another
    /// actor by now.
    async fn enter_current(&self, actor: &str, gate: &Arc<Gate>) -> Option<Inflight> {
        let inflight = gate.try_enter()?;
        if !self.cfg.shared_store {
            return Some(inflight);
        }
        let endpoint = inflight.endpoint.clone();
        // Held (counted in flight) while the record is read, so a pause here waits for it.
        self.forget_unless_current(actor, gate, &endpoint).await.then_some(inflight)
    }

    /// After a request to `endpoint` failed: if the store no longer says the actor RUNS
    /// there (another replica paused, suspended or moved it), forget the endpoint, so that the
    /// next request waits for that operation or resumes the actor instead of retrying a
    /// workload that is gone.
    pub async fn revalidate(&self, actor: &str, endpoint: &str) {
        self.forget_unless_current(actor, &self.gate(actor), endpoint).await;
    }

    /// Whether the store says the actor RUNS at `endpoint`; if it does not, the gate's
    /// endpoint is cleared when it is still that one. An unreadable record confirms nothing
    /// and clears nothing.
    async fn forget_unless_current(&self, actor: &str, gate: &Gate, endpoint: &str) -> bool {
        let Ok(a) = self.actor(actor).await else { return false };
        if a.value.state == ActorState::Running && a.value.endpoint.as_deref() == Some(endpoint) {
            return true;
        }
        let mut st = gate.lock();
        if st.endpoint.as_deref() == Some(endpoint) {
            st.endpoint = None;
            debug!(actor, endpoint, state = %a.value.state, "endpoint no longer current; dropped");
        }
        false
    }

    // ---------------------------------------------------------------- explicit operations

    pub async fn resume(self: &Arc<Self>, actor: &str) -> Result<Actor, CtlError> {
        let gate = self.gate(actor);
        let _lock = self.op_lock(&gate, self.cfg.resume_timeout, "resume").await?;
        let deadline = Instant::now() + self.cfg.resume_timeout;
        self.resume_locked(actor, &gate, true, deadline)
            .instrument(info_span!("actor", actor = %actor))
            .await?;
        Ok(self.actor(actor).await?.value)
    }

    pub async fn pause(self: &Arc<Self>, actor: &str) -> Result<Actor, CtlError> {
        let gate = self.gate(actor);
        let _lock = self.op_lock(&gate, self.cfg.resume_timeout, "pause").await?;
        self.pause_locked(actor, &gate).instrument(info_span!("actor", actor = %actor)).await?;
        Ok(self.actor(actor).await?.value)
    }

    pub async fn suspend(self: &Arc<Self>, actor: &str) -> Result<Actor, CtlError> {
        let gate = self.gate(actor);
        let _lock = self.op_lock(&gate, self.cfg.resume_timeout, "suspend").await?;
        self.suspend_locked(actor, &gate, true).instrument(info_span!("actor", actor = %actor)).await?;
        Ok(self.actor(actor).await?.value)
    }

    pub async fn delete(self: &Arc<Self>, actor: &str) -> Result<(), CtlError> {
        let gate = self.gate(actor);
        let _lock = self.op_lock(&gate, self.cfg.resume_timeout, "delete").await?;
        self.delete_locked(actor, &gate).instrument(info_span!("actor", actor = %actor)).await
    }

    // ---------------------------------------------------------------- resume

    async fn resume_locked(
        self: &Arc<Self>,
        actor: &str,
        gate: &Arc<Gate>,
        explicit: bool,
        deadline: Instant,
    ) -> Result<(), CtlError> {
        let mut started = Instant::now();
        let local_deadline = started + self.cfg.local_wait;
        loop {
            let a = self.actor(actor).await?;
            match a.value.state {
                ActorState::Running => {
                    gate.set_endpoint(a.value.endpoint.clone());
                    return Ok(());
                }
                ActorState::Crashed if !explicit => {
                    return Err(CtlError::Crashed {
                        actor: actor.into(),
                        reason: a.value.reason.unwrap_or_default(),
                    });
                }
                ActorState::Suspended | ActorState::Paused | ActorState::Crashed => {}
                s => {
                    // Another replica's operation (or one being reconciled): wait for it.
                    if Instant::now() > deadline {
                        return Err(CtlError::Unavailable(format!("actor {actor} is still {s}")));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
            let t = self.template(&a.value.template).await?;
            let Some(newest) = a.value.resume_source() else {
                let c = self.commit(&a, a.value.crash("no snapshot to resume from", now_ms())).await?;
                return Err(CtlError::Crashed {
                    actor: actor.into(),
                    reason: c.value.reason.unwrap_or_default(),
                });
            };
            // The durable snapshot may be used when it is the newest state itself.
            let durable_usable = a.value.durable.clone().filter(|d| match &a.value.local {
                None => true,
                Some(l) => l.snapshot_id.as_deref() == Some(d.snapshot_id.as_str()),
            });
            // A SUSPENDED actor whose snapshot also stayed on its node restores from the
            // durable tier, preferably on that node (no data moves) but on any fitting free
            // worker otherwise; only a PAUSED actor (local snapshot newer than any durable
            // one) is tied to its node.
            let local_on = match &newest {
                Source::Local(l) if durable_usable.is_none() => Some(l.worker.clone()),
                _ => None,
            };
            let waited = Instant::now() > local_deadline;
            let provenance = match &durable_usable {
                Some(d) if local_on.is_none() || waited => match self.provenance(d).await {
                    Ok(p) => Some(p),
                    Err(reason) => {
                        let c = self.commit(&a, a.value.crash(&reason, now_ms())).await?;
                        self.metrics.resume_failed(d.tier);
                        warn!(%reason, "resume impossible: snapshot unreadable");
                        return Err(CtlError::Crashed {
                            actor: actor.into(),
                            reason: c.value.reason.unwrap_or_default(),
                        });
                    }
                },
                _ => None,
            };
            let candidates = self.candidates().await?;
            let req = ate_core::placement::Request {
                pool: &t.value.spec.pool,
                backend: &t.value.spec.backend,
                local_on: local_on.as_deref(),
                durable: provenance.as_ref(),
                prefer: a.value.local.as_ref().map(|l| l.worker.as_str()),
                waited,
            };
            match place(&req, &candidates) {
                Decision::Use { worker, local } => {
                    let source = if local {
                        newest.clone()
                    } else if a.value.local.as_ref().is_some_and(|l| l.worker == worker)
                        && durable_usable.is_some()
                    {
                        // The durable snapshot's local copy on this node: restored by id
                        // through the durable prefix, which finds it without a pull.
                        Source::Durable(durable_usable.clone().expect("checked"))
                    } else {
                        Source::Durable(durable_usable.clone().expect("placement used a durable snapshot"))
                    };
                    let resuming =
                        match a.value.begin_resume(source.clone(), &worker, &self.cfg.owner, now_ms()) {
                            Ok(r) => r,
                            Err(e) => return Err(e.into()),
                        };
                    let resuming = match self.commit(&a, resuming).await {
                        Ok(r) => r,
                        Err(CtlError::Store(e)) if e.is_conflict() => continue, // re-read, re-place
                        Err(e) => return Err(e),
                    };
                    return self.do_restore(resuming, &t.value, &worker, source, gate, started).await;
                }
                Decision::Wait { reason, busy } => {
                    if Instant::now() > deadline {
                        return Err(CtlError::Unavailable(format!(
                            "cannot resume actor {actor} now: {reason}"
                        )));
                    }
                    if self.cfg.evict && self.evict_one(&busy, actor).await {
                        started = Instant::now();
                        continue;
                    }
                    let notified = self.lease_freed.notified();
                    let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
                    // Waiting for capacity is not resume latency.
                    started = Instant::now();
                }
                Decision::Crash { reason } => {
                    warn!(%reason, "no worker can take this actor's snapshot");
                    self.metrics.resume_failed(newest.tier());
                    let c = self.commit(&a, a.value.crash(&reason, now_ms())).await?;
                    return Err(CtlError::Crashed {
                        actor: actor.into(),
                        reason: c.value.reason.unwrap_or_default(),
                    });
                }
            }
        }
    }

    async fn do_restore(
        &self,
        resuming: Versioned<Actor>,
        t: &TemplateRecord,
        worker: &str,
        source: Source,
        gate: &Arc<Gate>,
        started: Instant,
    ) -> Result<(), CtlError> {
        let actor = resuming.value.name.clone();
        let socket = self.worker_socket(worker).await?;
        let (prefix, id) = match &source {
            Source::Local(l) => (None, l.snapshot_id.clone()),
            Source::Durable(d) => (Some(d.prefix.clone()), Some(d.snapshot_id.clone())),
        };
        info!(%worker, tier = source.tier().as_str(), snapshot = ?id, "resuming");
        let r = self
            .workers
            .restore(worker, &socket, t, &actor, prefix.as_deref(), id.as_deref(), self.cfg.rpc_timeout)
            .await;
        match r {
            Ok(r) => {
                let running = resuming.value.finish_resume(&r.endpoint, &r.snapshot_id, now_ms())?;
                let running = self.commit_retrying(&resuming, running).await?;
                gate.set_endpoint(running.value.endpoint.clone());
                let took = started.elapsed();
                self.metrics.resumed(source.tier(), took);
                info!(%worker, tier = source.tier().as_str(), snapshot = %r.snapshot_id,
                    pulled_bytes = r.pulled_bytes, resume_ms = took.as_millis() as u64, "running");
                Ok(())
            }
            Err(e) => {
                let reason = format!(
                    "restore of {} snapshot {} on worker {worker} failed: {e}",
                    source.tier().as_str(),
                    id.as_deref().unwrap_or("(newest)")
                );
                warn!(code = ?e.code, %reason, "resume failed; actor CRASHED");
                self.metrics.resume_failed(source.tier());
                let crashed = resuming.value.fail_resume(&reason, now_ms())?;
                self.commit_retrying(&resuming, crashed).await?;
                Err(CtlError::Crashed { actor, reason })
            }
        }
    }

    /// Writes the end of an operation this process started. A conflict means someone else
    /// wrote the actor meanwhile (a reconciling replica): re-read, and if the record still
    /// carries our intent, apply the same end to it.
    async fn commit_retrying(
        &self,
        before: &Versioned<Actor>,
        after: Actor,
    ) -> Result<Versioned<Actor>, CtlError> {
        match self.commit(before, after.clone()).await {
            Err(CtlError::Store(e)) if e.is_conflict() => {
                let now = self.actor(&before.value.name).await?;
                if now.value.op == before.value.op && now.value.state == before.value.state {
                    let mut retry = after;
                    retry.created_ms = now.value.created_ms;
                    self.commit(&now, retry).await
                } else {
                    Err(CtlError::Conflict(format!(
                        "actor {} changed during the operation (now {})",
                        before.value.name, now.value.state
                    )))
                }
            }
            r => r,
        }
    }

    /// Pauses the least recently active idle RUNNING actor on one of `workers` to free it.
    async fn evict_one(self: &Arc<Self>, workers: &[String], for_actor: &str) -> bool {
        let Ok(leases) = self.leases().await else { return false };
        let mut best: Option<(Instant, String, Arc<Gate>, Lock)> = None;
        for w in workers {
            let Some(Holder::Actor(victim)) = leases.get(w).and_then(|l| l.value.holder.clone()) else {
                continue;
            };
            if victim == for_actor {
                continue;
            }
            let gate = self.gate(&victim);
            let Some(last) = gate.evictable() else { continue };
            if best.as_ref().is_some_and(|(b, ..)| *b <= last) {
                continue;
            }
            let Ok(lock) = gate.op.clone().try_lock_owned() else { continue };
            best = Some((last, victim, gate, lock));
        }
        let Some((_, victim, gate, _lock)) = best else { return false };
        let ok =
            self.pause_locked(&victim, &gate).instrument(info_span!("actor", actor = %victim)).await.is_ok();
        if ok {
            self.metrics.inc("evictions");
            info!(actor = %victim, for_actor, "evicted (paused) to make room");
        }
        ok
    }

    // ---------------------------------------------------------------- pause / suspend

    async fn pause_locked(&self, actor: &str, gate: &Arc<Gate>) -> Result<(), CtlError> {
        let a = self.actor(actor).await?;
        match a.value.state {
            ActorState::Running => {}
            ActorState::Paused | ActorState::Suspended => return Ok(()),
            s => {
                return Err(CtlError::Conflict(format!("actor {actor} is {s}; only a RUNNING actor pauses")));
            }
        }
        gate.drain(self.cfg.drain_timeout).await?;
        let r = self.checkpoint_running(a, gate, false).await;
        gate.undrain();
        r
    }

    /// RUNNING → PAUSING/SUSPENDING → PAUSED/SUSPENDED (the gate is drained).
    async fn checkpoint_running(
        &self,
        a: Versioned<Actor>,
        gate: &Arc<Gate>,
        durable: bool,
    ) -> Result<(), CtlError> {
        let t = self.template(&a.value.template).await?;
        let now = now_ms();
        let next = if durable {
            a.value.begin_suspend(&self.cfg.owner, now)?
        } else {
            a.value.begin_pause(&self.cfg.owner, now)?
        };
        let cur = self.commit(&a, next).await?;
        gate.set_endpoint(None);
        self.checkpoint_and_finish(cur, &t.value, gate, durable).await
    }

    async fn checkpoint_and_finish(
        &self,
        cur: Versioned<Actor>,
        t: &TemplateRecord,
        gate: &Arc<Gate>,
        durable: bool,
    ) -> Result<(), CtlError> {
        let actor = cur.value.name.clone();
        let worker = cur.value.worker.clone().expect("an operation on a worker");
        let socket = self.worker_socket(&worker).await?;
        let prefix = durable.then(|| t.actor_prefix(&actor));
        let previous = cur.value.durable.clone();
        match self
            .workers
            .checkpoint(&worker, &socket, t, &actor, prefix.as_deref(), self.cfg.rpc_timeout)
            .await
        {
            Ok(ck) => {
                let done = if let Some(p) = &prefix {
                    cur.value.finish_suspend(p, &ck.snapshot_id, now_ms())?
                } else {
                    cur.value.finish_pause(Some(&ck.snapshot_id), now_ms())?
                };
                self.commit_retrying(&cur, done).await?;
                self.metrics.inc(if durable { "suspends" } else { "pauses" });
                info!(%worker, snapshot = %ck.snapshot_id, "{}", if durable { "suspended" } else { "paused" });
                if let (Some(prev), Some(p)) = (previous, &prefix)
                    && prev.tier == Tier::Durable
                    && prev.snapshot_id != ck.snapshot_id
                {
                    self.forget_durable(p.clone(), prev.snapshot_id);
                }
                Ok(())
            }
            Err(e) => self.after_failed_checkpoint(cur, e, gate).await,
        }
    }

    /// Deletes a replaced durable snapshot of an actor (best effort, in the background).
    fn forget_durable(&self, prefix: String, id: String) {
        let Ok(store) = self.snapshot_store(&prefix) else { return };
        tokio::spawn(async move {
            if let Err(e) = store.delete(&id).await {
                debug!(%prefix, %id, error = %e, "removing a replaced durable snapshot");
            }
        });
    }

    /// A checkpoint failed: if the workload still runs, the actor is RUNNING again; if the
    /// DURABLE checkpoint committed locally but did not ship, it is PAUSED on the node;
    /// otherwise its state since the last snapshot is gone: CRASHED.
    async fn after_failed_checkpoint(
        &self,
        cur: Versioned<Actor>,
        e: WorkerError,
        gate: &Arc<Gate>,
    ) -> Result<(), CtlError> {
        let worker = cur.value.worker.clone().unwrap_or_default();
        let t = self.template(&cur.value.template).await?;
        let socket = self.worker_socket(&worker).await?;
        let caps = self.settled_caps(&worker, &socket, &running_name(&t.value, &cur.value.name)).await;
        let still = matches!(&caps, Ok(c) if c.runs(&running_name(&t.value, &cur.value.name)));
        let next = if still {
            let endpoint = caps.as_ref().map(|c| c.info.host_endpoint.clone()).unwrap_or_default();
            warn!(error = %e, "checkpoint failed; the workload keeps running");
            let n = cur.value.adopt_running(&endpoint, now_ms())?;
            gate.set_endpoint(Some(endpoint));
            n
        } else if e.lost_in_transit() {
            // We never heard the worker's verdict: ask it (and the store) what happened,
            // exactly as after a control-plane restart.
            warn!(error = %e, "lost contact during the checkpoint; reconciling from the worker's state");
            self.reconcile_one(&cur.value.name, gate).await?;
            return Ok(());
        } else if cur.value.state == ActorState::Suspending && e.message.contains("kept on this node") {
            warn!(error = %e, "suspend committed locally but did not ship; PAUSED on the node");
            cur.value.suspend_kept_local(None, now_ms())?
        } else {
            warn!(error = %e, "checkpoint failed and the workload is gone; CRASHED");
            cur.value.crash(&format!("checkpoint failed and the workload is gone: {e}"), now_ms())
        };
        self.commit_retrying(&cur, next).await?;
        Err(CtlError::Worker(e))
    }

    /// `make_room`: a PAUSED actor's node is busy — evict an idle actor there (bounded
    /// wait) rather than give up (explicit suspends; the idle policy just tries later).
    async fn suspend_locked(
        self: &Arc<Self>,
        actor: &str,
        gate: &Arc<Gate>,
        make_room: bool,
    ) -> Result<(), CtlError> {
        let deadline = Instant::now() + self.cfg.resume_timeout;
        loop {
            match self.suspend_once(actor, gate).await {
                Err(CtlError::Unavailable(m)) if make_room && m.contains("holding the snapshot is busy") => {
                    if Instant::now() > deadline {
                        return Err(CtlError::Unavailable(m));
                    }
                    let a = self.actor(actor).await?;
                    let home: Vec<String> = a.value.local.iter().map(|l| l.worker.clone()).collect();
                    if !self.evict_one(&home, actor).await {
                        let notified = self.lease_freed.notified();
                        let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
                    }
                }
                r => return r,
            }
        }
    }

    async fn suspend_once(&self, actor: &str, gate: &Arc<Gate>) -> Result<(), CtlError> {
        let a = self.actor(actor).await?;
        match a.value.state {
            ActorState::Running => {
                gate.drain(self.cfg.drain_timeout).await?;
                let r = self.checkpoint_running(a, gate, true).await;
                gate.undrain();
                r
            }
            ActorState::Paused => {
                // Restore on the node holding the local snapshot, then checkpoint DURABLE.
                let t = self.template(&a.value.template).await?;
                let next = a.value.begin_suspend(&self.cfg.owner, now_ms())?;
                let worker = next.worker.clone().expect("a paused actor has a node");
                let cur = match self.commit(&a, next).await {
                    Ok(c) => c,
                    Err(CtlError::Store(e)) if e.is_conflict() => {
                        return Err(CtlError::Unavailable(format!(
                            "worker {worker} holding the snapshot is busy"
                        )));
                    }
                    Err(e) => return Err(e),
                };
                let socket = self.worker_socket(&worker).await?;
                let id = a.value.local.as_ref().and_then(|l| l.snapshot_id.clone());
                match self
                    .workers
                    .restore(&worker, &socket, &t.value, actor, None, id.as_deref(), self.cfg.rpc_timeout)
                    .await
                {
                    Ok(_) => self.checkpoint_and_finish(cur, &t.value, gate, true).await,
                    Err(e) => {
                        let reason = format!(
                            "restore of local snapshot on worker {worker} (to suspend it) failed: {e}"
                        );
                        warn!(%reason, "actor CRASHED");
                        self.commit_retrying(&cur, cur.value.crash(&reason, now_ms())).await?;
                        Err(CtlError::Crashed { actor: actor.into(), reason })
                    }
                }
            }
            ActorState::Suspended => Ok(()),
            s => Err(CtlError::Conflict(format!(
                "actor {actor} is {s}; only RUNNING or PAUSED actors suspend"
            ))),
        }
    }

    // ---------------------------------------------------------------- delete

    async fn delete_locked(&self, actor: &str, gate: &Arc<Gate>) -> Result<(), CtlError> {
        let mut a = self.actor(actor).await?;
        if a.value.state != ActorState::Deleting {
            let next = a.value.begin_delete(&self.cfg.owner, now_ms())?;
            a = self.commit(&a, next).await?;
        }
        let t = self.template(&a.value.template).await?;
        let stopped_on = a.value.worker.clone();
        if let Some(worker) = stopped_on.clone() {
            // Free the worker: its workload is stopped and its local snapshots deleted.
            gate.drain(self.cfg.drain_timeout).await.ok();
            gate.set_endpoint(None);
            let socket = self.worker_socket(&worker).await?;
            if let Err(e) = self.workers.delete(&worker, &socket, &t.value, actor, self.cfg.rpc_timeout).await
            {
                gate.undrain();
                return Err(CtlError::Worker(e));
            }
            let released = a.value.delete_released_worker()?;
            a = self.commit(&a, released).await?;
        }
        // Local snapshots (the PAUSED tier) on every other worker. The one holding the newest
        // must answer; others that do not answer now keep garbage that `ateom` on them can list.
        let holder = a.value.local.as_ref().map(|l| l.worker.clone());
        let mut records = self.worker_records().await?;
        records.retain(|w| stopped_on.as_deref() != Some(w.value.name.as_str()));
        let answers = futures::future::join_all(records.iter().map(|w| {
            let w = &w.value;
            let timeout = if holder.as_deref() == Some(w.name.as_str()) {
                self.cfg.rpc_timeout
            } else {
                self.cfg.rpc_timeout.min(Duration::from_secs(10))
            };
            self.workers.delete(&w.name, &w.socket, &t.value, actor, timeout)
        }))
        .await;
        for (w, answer) in records.iter().map(|w| &w.value).zip(answers) {
            match answer {
                Ok((_, n)) if n > 0 => info!(worker = %w.name, snapshots = n, "local snapshots deleted"),
                Ok(_) => {}
                Err(e) if holder.as_deref() == Some(w.name.as_str()) => return Err(CtlError::Worker(e)),
                Err(e) => warn!(worker = %w.name, error = %e, "could not delete local snapshots there"),
            }
        }
        // The actor's own durable snapshots (never the template's golden one).
        let prefix = t.value.actor_prefix(actor);
        let store = self.snapshot_store(&prefix)?;
        let snaps =
            store.list().await.map_err(|e| CtlError::Unavailable(format!("listing {prefix}: {e}")))?;
        for s in snaps {
            store
                .delete(&s.snapshot_id)
                .await
                .map_err(|e| CtlError::Unavailable(format!("deleting {prefix}/{}: {e}", s.snapshot_id)))?;
        }
        let v = a.version;
        let n = actor.to_owned();
        self.db(move |s| s.commit(&[delete(Kind::Actor, &n, Expect::Version(v))])).await?;
        self.gates.lock().unwrap_or_else(|p| p.into_inner()).remove(actor);
        info!("deleted (local and durable snapshots removed)");
        Ok(())
    }

    // ---------------------------------------------------------------- reconciliation

    /// Finishes or rolls back every intent left by this replica's previous life (and
    /// intents of other replicas older than `stale_op`). Returns how many were handled;
    /// intents whose worker does not answer are left for the next call.
    pub async fn reconcile(self: &Arc<Self>) -> Result<usize, CtlError> {
        let now = now_ms();
        let mut done = 0;
        let mut tasks = Vec::new();
        for a in self.actors().await? {
            let Some(op) = &a.value.op else { continue };
            let stale = now.saturating_sub(op.started_ms) > self.cfg.stale_op.as_millis() as u64;
            if op.owner != self.cfg.owner && !stale {
                continue;
            }
            let ctl = self.clone();
            let name = a.value.name.clone();
            tasks.push(tokio::spawn(async move {
                let gate = ctl.gate(&name);
                let Ok(_lock) = gate.op.clone().try_lock_owned() else { return Ok(false) };
                ctl.reconcile_one(&name, &gate).instrument(info_span!("actor", actor = %name)).await
            }));
        }
        for t in tasks {
            match t.await {
                Ok(Ok(true)) => done += 1,
                Ok(Ok(false)) => {}
                Ok(Err(e)) => warn!(error = %e, "reconciling an actor (will retry)"),
                Err(e) => error!(error = %e, "reconcile task"),
            }
        }
        self.reconcile_golden().await?;
        Ok(done)
    }

    /// The worker's capabilities once it is no longer busy with `me` (a restore or
    /// checkpoint it is still carrying out), waiting up to the RPC timeout. A worker still
    /// busy after that is an error: the caller retries later.
    async fn settled_caps(&self, worker: &str, socket: &str, me: &str) -> Result<Caps, CtlError> {
        let until = Instant::now() + self.cfg.rpc_timeout;
        loop {
            let caps = self.workers.caps(worker, socket, Duration::from_secs(5)).await?;
            if !caps.busy_with(me) {
                return Ok(caps);
            }
            if Instant::now() >= until {
                return Err(CtlError::Unavailable(format!(
                    "worker {worker} is still {} {me}; will look again",
                    caps.state
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn reconcile_one(&self, actor: &str, gate: &Arc<Gate>) -> Result<bool, CtlError> {
        let a = self.actor(actor).await?;
        if !a.value.state.is_intermediate() {
            return Ok(false);
        }
        if a.value.state == ActorState::Deleting {
            info!("reconcile: finishing the delete");
            self.delete_locked(actor, gate).await?;
            self.metrics.inc("reconciled");
            return Ok(true);
        }
        let t = self.template(&a.value.template).await?;
        let worker = a.value.worker.clone().expect("an intermediate state holds a worker");
        let socket = self.worker_socket(&worker).await?;
        let me = running_name(&t.value, actor);
        // A restore or checkpoint still under way on the worker is waited for: its outcome
        // decides (adopting a half-restored workload as RUNNING would route traffic nowhere).
        let caps = self.settled_caps(&worker, &socket, &me).await?;
        let mut here = caps.runs(&me);
        if here && matches!(a.value.state, ActorState::Pausing | ActorState::Suspending) {
            // The checkpoint request may still be on its way: give it a moment to start.
            let until = Instant::now() + Duration::from_secs(5);
            while here && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(100)).await;
                here = self.settled_caps(&worker, &socket, &me).await?.runs(&me);
            }
        }
        let now = now_ms();
        let next = match (a.value.state, here) {
            (_, true) => {
                info!(%worker, from = %a.value.state, "reconcile: the worker runs it: RUNNING");
                gate.set_endpoint(Some(caps.info.host_endpoint.clone()));
                a.value.adopt_running(&caps.info.host_endpoint, now)?
            }
            (ActorState::Resuming, false) => {
                info!(%worker, "reconcile: the restore never happened or failed: rolled back");
                a.value.rollback(now)?
            }
            (ActorState::Pausing, false) => {
                info!(%worker, "reconcile: the checkpoint finished: PAUSED on the node (newest local snapshot)");
                a.value.finish_pause(None, now)?
            }
            (ActorState::Suspending, false) => {
                let prefix = t.value.actor_prefix(actor);
                let previous = match &a.value.op {
                    Some(ate_core::Op { kind: OpKind::Suspend { previous, .. }, .. }) => previous.clone(),
                    _ => None,
                };
                let latest = self.snapshot_store(&prefix)?.latest().await.ok();
                match latest {
                    Some(id)
                        if Some(&id) != previous.as_ref() && previous.as_ref().is_none_or(|p| id > *p) =>
                    {
                        info!(%worker, snapshot = %id, "reconcile: the durable checkpoint shipped: SUSPENDED");
                        a.value.finish_suspend(&prefix, &id, now)?
                    }
                    _ => {
                        info!(%worker, "reconcile: no new durable snapshot: PAUSED on the node");
                        a.value.suspend_kept_local(None, now)?
                    }
                }
            }
            (s, _) => return Err(CtlError::Conflict(format!("cannot reconcile {s}"))),
        };
        self.commit(&a, next).await?;
        self.metrics.inc("reconciled");
        Ok(true)
    }

    async fn reconcile_golden(&self) -> Result<(), CtlError> {
        let running = self.golden_running.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for t in self.templates().await? {
            if t.value.golden.status != GoldenStatus::Building || running.contains(&t.value.name) {
                continue;
            }
            // A build interrupted by a restart: start it again (the worker is checkpointed
            // free first if it still runs the golden workload).
            let worker = t.value.golden.worker.clone().unwrap_or_default();
            let golden_actor = format!("golden.{}", t.value.golden.generation);
            if let Ok(socket) = self.worker_socket(&worker).await
                && let Ok(caps) = self.workers.caps(&worker, &socket, Duration::from_secs(5)).await
                && caps.running == running_name(&t.value, &golden_actor)
            {
                let _ = self
                    .workers
                    .checkpoint(&worker, &socket, &t.value, &golden_actor, None, self.cfg.rpc_timeout)
                    .await;
            }
            let mut rec = t.value.clone();
            rec.golden.status = GoldenStatus::Pending;
            rec.golden.worker = None;
            let v = t.version;
            let name = rec.name.clone();
            self.db(move |s| {
                let mut changes = vec![put(Kind::Template, &rec.name, Expect::Version(v), &rec)];
                if let Some(l) = s.get_as::<Lease>(Kind::Lease, &worker)?
                    && l.value.holder == Some(Holder::Golden(rec.name.clone()))
                {
                    changes.push(put(Kind::Lease, &worker, Expect::Version(l.version), &Lease::default()));
                }
                s.commit(&changes)
            })
            .await?;
            info!(template = %name, "reconcile: golden build restarted");
        }
        Ok(())
    }

    // ---------------------------------------------------------------- golden snapshots

    /// Builds pending golden snapshots, one task per template.
    pub async fn golden_loop(self: Arc<Self>) {
        loop {
            if let Ok(ts) = self.templates().await {
                for t in ts {
                    if t.value.golden.status != GoldenStatus::Pending {
                        continue;
                    }
                    let mut running = self.golden_running.lock().unwrap_or_else(|p| p.into_inner());
                    if !running.insert(t.value.name.clone()) {
                        continue;
                    }
                    drop(running);
                    let ctl = self.clone();
                    tokio::spawn(async move {
                        let name = t.value.name.clone();
                        if let Err(e) =
                            ctl.build_golden(t).instrument(info_span!("golden", template = %name)).await
                        {
                            warn!(template = %name, error = %e, "golden build");
                        }
                        ctl.golden_running.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
                    });
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn build_golden(&self, t: Versioned<TemplateRecord>) -> Result<(), CtlError> {
        let spec = &t.value.spec;
        let cands = self.candidates().await?;
        let Some(w) = cands.iter().find(|c| {
            c.pool == spec.pool
                && c.healthy
                && c.free
                && c.info.as_ref().is_some_and(|i| i.backend == spec.backend)
        }) else {
            return Ok(()); // nothing free yet; the loop comes back
        };
        let worker = w.name.clone();
        let mut building = t.value.clone();
        building.golden.status = GoldenStatus::Building;
        building.golden.worker = Some(worker.clone());
        let v = t.version;
        let (b2, w2) = (building.clone(), worker.clone());
        let claimed = self
            .db(move |s| {
                let l = s.get_as::<Lease>(Kind::Lease, &w2)?;
                let held = Lease { holder: Some(Holder::Golden(b2.name.clone())), since_ms: now_ms() };
                let expect = match l {
                    Some(l) if l.value.holder.is_none() => Expect::Version(l.version),
                    None => Expect::Absent,
                    Some(l) => Expect::Version(l.version + u64::MAX / 2), // busy: conflict
                };
                s.commit(&[
                    put(Kind::Template, &b2.name, Expect::Version(v), &b2),
                    put(Kind::Lease, &w2, expect, &held),
                ])
            })
            .await;
        let rev = match claimed {
            Ok(rev) => rev,
            Err(CtlError::Store(e)) if e.is_conflict() => return Ok(()),
            Err(e) => return Err(e),
        };
        let socket = self.worker_socket(&worker).await?;
        let golden_actor = format!("golden.{}", t.value.golden.generation);
        info!(%worker, actor = %golden_actor, "golden: booting");
        let t0 = Instant::now();
        let result = async {
            self.workers.run(&worker, &socket, &building, &golden_actor, self.cfg.rpc_timeout).await?;
            let boot_ms = t0.elapsed().as_millis() as u64;
            let prefix = building.golden.prefix.clone();
            let ck = self
                .workers
                .checkpoint(&worker, &socket, &building, &golden_actor, Some(&prefix), self.cfg.rpc_timeout)
                .await;
            match ck {
                Ok(ck) => Ok((ck.snapshot_id, boot_ms)),
                Err(e) => {
                    // Free the worker if the workload still runs.
                    let _ = self
                        .workers
                        .checkpoint(&worker, &socket, &building, &golden_actor, None, self.cfg.rpc_timeout)
                        .await;
                    Err(e)
                }
            }
        }
        .await;
        let mut done = building.clone();
        done.golden.worker = None;
        match &result {
            Ok((id, boot_ms)) => {
                done.golden.status = GoldenStatus::Ready;
                done.golden.snapshot_id = Some(id.clone());
                done.golden.boot_ms = *boot_ms;
                done.golden.reason = None;
                self.metrics.inc("golden_builds");
                info!(%worker, snapshot = %id, boot_ms, "golden snapshot ready");
            }
            Err(e) => {
                done.golden.status = GoldenStatus::Failed;
                done.golden.reason = Some(e.to_string());
                warn!(%worker, error = %e, "golden build failed");
            }
        }
        let w3 = worker.clone();
        self.db(move |s| {
            let l = s.get_as::<Lease>(Kind::Lease, &w3)?;
            let mut changes = vec![put(Kind::Template, &done.name, Expect::Version(rev), &done)];
            if let Some(l) = l
                && l.value.holder == Some(Holder::Golden(done.name.clone()))
            {
                changes.push(put(Kind::Lease, &w3, Expect::Version(l.version), &Lease::default()));
            }
            s.commit(&changes)
        })
        .await?;
        self.lease_freed.notify_waiters();
        Ok(())
    }

    // ---------------------------------------------------------------- health

    /// Observes every worker, records what it reports, and repairs what disagrees with it.
    pub async fn health_loop(self: Arc<Self>) {
        loop {
            if let Err(e) = self.health_once().await {
                warn!(error = %e, "health check");
            }
            tokio::time::sleep(self.cfg.health_interval).await;
        }
    }

    /// One round of [`Self::health_loop`].
    pub async fn health_once(self: &Arc<Self>) -> Result<(), CtlError> {
        // Actors read *before* asking the workers: a RUNNING actor seen here was running
        // when its worker answered.
        let actors = self.actors().await?;
        let templates: HashMap<String, TemplateRecord> =
            self.templates().await?.into_iter().map(|t| (t.value.name.clone(), t.value)).collect();
        let records = self.worker_records().await?;
        let leases = self.leases().await?;
        let observed = futures::future::join_all(records.iter().map(|w| {
            let w = w.value.clone();
            async move {
                let caps = self.workers.caps(&w.name, &w.socket, Duration::from_secs(2)).await;
                (w, caps)
            }
        }))
        .await;
        for (w, caps) in observed {
            self.record_observation(&w, &caps).await?;
            let Ok(caps) = caps else { continue };
            let holder = leases.get(&w.name).and_then(|l| l.value.holder.clone());
            // RUNNING actors on this worker that the worker does not run: their workload is gone.
            for a in actors.iter().filter(|a| {
                a.value.state == ActorState::Running && a.value.worker.as_deref() == Some(&w.name)
            }) {
                let Some(t) = templates.get(&a.value.template) else { continue };
                if caps.running == running_name(t, &a.value.name) {
                    continue;
                }
                let gate = self.gate(&a.value.name);
                let Ok(_lock) = gate.op.clone().try_lock_owned() else { continue };
                let Ok(now) = self.actor(&a.value.name).await else { continue };
                if now.version != a.version {
                    continue;
                }
                let reason = format!(
                    "the workload is no longer running on worker {} (it reports {:?}); its state since the last snapshot is lost",
                    w.name, caps.running
                );
                warn!(actor = %a.value.name, %reason, "CRASHED");
                gate.set_endpoint(None);
                let _ = self.commit(&now, now.value.crash(&reason, now_ms())).await;
            }
            // A workload nobody placed there (a restore that arrived after its intent was
            // rolled back): checkpoint it away so the worker is usable. Its snapshot is
            // never referenced.
            if !caps.running.is_empty() && holder.is_none() {
                self.clear_stray(&w, &caps, &templates).await;
            }
        }
        Ok(())
    }

    async fn record_observation(
        &self,
        w: &WorkerRecord,
        caps: &Result<Caps, WorkerError>,
    ) -> Result<(), CtlError> {
        let mut next = w.clone();
        match caps {
            Ok(c) => {
                next.healthy = true;
                next.info = Some(c.info.clone());
                next.running = c.running.clone();
                next.error = None;
            }
            Err(e) => {
                next.healthy = false;
                next.error = Some(e.to_string());
            }
        }
        let changed = next.healthy != w.healthy
            || next.info != w.info
            || next.running != w.running
            || next.error != w.error;
        let stale = now_ms().saturating_sub(w.observed_ms) > 30_000;
        if changed || stale {
            next.observed_ms = now_ms();
            if next.healthy != w.healthy {
                if next.healthy {
                    info!(worker = %w.name, "worker answers");
                } else {
                    warn!(worker = %w.name, error = ?next.error, "worker does not answer");
                }
            }
            let n = next.name.clone();
            self.db(move |s| s.commit(&[put(Kind::Worker, &n, Expect::Any, &next)])).await?;
        }
        Ok(())
    }

    async fn clear_stray(&self, w: &WorkerRecord, caps: &Caps, templates: &HashMap<String, TemplateRecord>) {
        let mut parts = caps.running.splitn(3, '/');
        let (Some(ns), Some(tpl), Some(actor)) = (parts.next(), parts.next(), parts.next()) else { return };
        // Our own golden builds and actors mid-operation are not strays.
        if actor.starts_with("golden.") {
            return;
        }
        let Some(t) = templates.get(tpl).filter(|t| t.namespace == ns) else { return };
        let gate = self.gate(actor);
        let Ok(_lock) = gate.op.clone().try_lock_owned() else { return };
        // Claim the worker so nothing is placed there meanwhile.
        let name = w.name.clone();
        let who = caps.running.clone();
        let claimed = self
            .db(move |s| {
                let l = s.get_as::<Lease>(Kind::Lease, &name)?;
                match l {
                    Some(l) if l.value.holder.is_none() => s.commit(&[put(
                        Kind::Lease,
                        &name,
                        Expect::Version(l.version),
                        &Lease { holder: Some(Holder::Golden(format!("stray:{who}"))), since_ms: now_ms() },
                    )]),
                    _ => {
                        Err(StoreError::Conflict { kind: "lease", name, expected: Expect::Any, found: None })
                    }
                }
            })
            .await;
        let Ok(_) = claimed else { return };
        warn!(worker = %w.name, running = %caps.running, "a workload nobody placed: checkpointing it away");
        let _ = self.workers.checkpoint(&w.name, &w.socket, t, actor, None, self.cfg.rpc_timeout).await;
        let name = w.name.clone();
        let _ = self
            .db(move |s| {
                if let Some(l) = s.get_as::<Lease>(Kind::Lease, &name)?
                    && matches!(&l.value.holder, Some(Holder::Golden(h)) if h.starts_with("stray:"))
                {
                    s.commit(&[put(Kind::Lease, &name, Expect::Version(l.version), &Lease::default())])?;
                }
                Ok(())
            })
            .await;
        self.lease_freed.notify_waiters();
    }

    // ---------------------------------------------------------------- idle policy

    /// Pauses actors idle longer than their template's `pauseAfterSeconds`, suspends actors
    /// paused longer than `suspendAfterSeconds`.
    pub async fn idle_loop(self: Arc<Self>) {
        loop {
            if let Err(e) = self.idle_once().await {
                warn!(error = %e, "idle policy");
            }
            tokio::time::sleep(self.cfg.idle_interval).await;
        }
    }

    async fn idle_once(self: &Arc<Self>) -> Result<(), CtlError> {
        let templates: HashMap<String, TemplateRecord> =
            self.templates().await?.into_iter().map(|t| (t.value.name.clone(), t.value)).collect();
        let now = now_ms();
        for a in self.actors().await? {
            let Some(t) = templates.get(&a.value.template) else { continue };
            let policy = &t.spec.idle_policy;
            let gate = self.gate(&a.value.name);
            let (pause, suspend) = match a.value.state {
                ActorState::Running => {
                    let Some(after) = policy.pause_after_seconds else { continue };
                    let Some(last) = gate.evictable() else { continue };
                    let since_state = Duration::from_millis(now.saturating_sub(a.value.state_since_ms));
                    let idle = last.elapsed().min(since_state);
                    (idle.as_secs_f64() >= after, false)
                }
                ActorState::Paused => {
                    let Some(after) = policy.suspend_after_seconds else { continue };
                    (false, now.saturating_sub(a.value.state_since_ms) as f64 >= after * 1000.0)
                }
                _ => continue,
            };
            if !(pause || suspend) {
                continue;
            }
            let Ok(lock) = gate.op.clone().try_lock_owned() else { continue };
            let ctl = self.clone();
            let name = a.value.name.clone();
            tokio::spawn(
                async move {
                    let _lock = lock;
                    let r = if pause {
                        ctl.pause_locked(&name, &gate).await
                    } else {
                        ctl.suspend_locked(&name, &gate, false).await
                    };
                    if let Err(e) = r {
                        debug!(error = %e, "idle policy skipped");
                    }
                }
                .instrument(info_span!("actor", actor = %a.value.name)),
            );
        }
        Ok(())
    }

    // ---------------------------------------------------------------- views

    /// Actors per state, workers per (pool, busy|free|unhealthy): the metrics gauges.
    pub async fn gauges(&self) -> Result<(BTreeMap<String, u64>, BTreeMap<(String, String), u64>), CtlError> {
        let mut actors = BTreeMap::new();
        for a in self.actors().await? {
            *actors.entry(a.value.state.as_str().to_owned()).or_default() += 1;
        }
        let leases = self.leases().await?;
        let mut workers = BTreeMap::new();
        for w in self.worker_records().await? {
            let state = if !w.value.healthy {
                "unhealthy"
            } else if leases.get(&w.value.name).is_some_and(|l| l.value.holder.is_some()) {
                "busy"
            } else {
                "free"
            };
            *workers.entry((w.value.pool.clone(), state.to_owned())).or_default() += 1;
        }
        Ok((actors, workers))
    }

    /// Requests in flight per actor (this process).
    pub fn inflight(&self, actor: &str) -> usize {
        self.gates.lock().unwrap_or_else(|p| p.into_inner()).get(actor).map_or(0, |g| g.lock().inflight)
    }
}
