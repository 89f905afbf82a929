//! The controller: drives actors through their state machine against real workers.
//!
//! Every transition is `ate_core`'s pure function applied to the record just read, written
//! back with one atomic compare-and-set ([`Controller::commit`]) together with the worker
//! leases it takes or gives back — *before* the worker is called when it starts an operation
//! (the intent, naming the exact snapshot it writes or restores), and after the worker
//! answered when it ends one. An answer that never arrives is not a verdict: the outcome is
//! read from the worker's state and the snapshots that exist ([`reconcile`]).
//!
//! Concurrency inside one process: each actor has a [`Gate`] with an async *operation lock*
//! (at most one resume/pause/suspend/delete per actor at a time: the single flight of
//! resumes) and a count of requests in flight through the router (a pause or suspend drains
//! them first, bounded, and no new request enters while it runs). Across processes (several
//! replicas, or a restarted one) the store's compare-and-set decides, and each replica's
//! liveness lease ([`replicas`]) says when another replica's unfinished operation is
//! abandoned.
//!
//! One file per responsibility:
//!
//! | module | what |
//! |---|---|
//! | [`gate`] | per-actor operation lock and requests in flight |
//! | [`resources`] | `apply` (pools, templates, actors) and actor creation |
//! | [`resume`] | the router's entry, resumes (placement, restore, lost answers), eviction, `--from-snapshot` |
//! | [`pause`] | pause and suspend (LOCAL/DURABLE checkpoints into chosen ids) |
//! | [`durability`] | durability policies: durable pauses, background copies of paused snapshots |
//! | [`reconcile`] | settling intents from the worker's state: after a lost answer, a restart, a dead replica |
//! | [`snapshots`] | which snapshots of an actor exist (local, durable, golden) and the reasons naming them |
//! | [`delete`] | delete |
//! | [`golden`] | golden snapshots of templates |
//! | [`health`] | observing workers: capabilities, free space, lost and stray workloads |
//! | [`idle`] | the templates' idle policies |
//! | [`replicas`] | this replica's liveness lease and the liveness of others |
//! | [`leader`] | the leadership lease: which replica reconciles others' intents, applies idle policies, builds golden snapshots and repairs workers |

mod delete;
mod durability;
mod gate;
mod golden;
mod health;
mod idle;
mod leader;
mod pause;
mod reconcile;
mod replicas;
mod resources;
mod resume;
mod snapshots;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ate_core::resource::WorkerTarget;
use ate_core::store::{
    Expect, Holder, Kind, Lease, PoolRecord, StoreExt, TemplateRecord, Versioned, WorkerRecord, put,
};
use ate_core::{Actor, Candidate, DurableRef, Provenance, Store, StoreError, lease_change};
use tokio::sync::Notify;
use tracing::Instrument;
use tracing::{info_span, warn};

pub use gate::{Gate, Inflight};
pub use leader::{LEADER_LEASE, Status as LeaderStatus};
pub use snapshots::{ActorSnapshot, ActorSnapshots};

use crate::metrics::Metrics;
use crate::worker::{EndpointError, Upstream, WorkerError, Workers, front_endpoint};

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
    /// How long the worker holding an actor's newest state must have been silent (its host
    /// presumed lost) before an operator may resume the actor from an older durable snapshot
    /// on another host (`--host-loss-grace`). Shorter risks two copies of one actor, should
    /// the host come back.
    pub host_loss_grace: Duration,
    /// How long a pause/suspend waits for requests in flight to finish.
    pub drain_timeout: Duration,
    /// Deadline of one worker call (`--rpc-timeout`). A call past it is a lost answer, settled
    /// from the worker's state, never a failure.
    pub rpc_timeout: Duration,
    /// How long a lost answer waits for the worker to finish what it is doing for the actor
    /// (restoring, checkpointing, pushing) before reconciliation looks again later.
    pub settle_timeout: Duration,
    pub health_interval: Duration,
    pub idle_interval: Duration,
    /// How often unsettled intents (own ones whose worker did not answer, and those of
    /// replicas whose liveness lease expired) are looked at.
    pub reconcile_interval: Duration,
    /// This replica's liveness lease lasts this long unless renewed (renewed every fifth of
    /// it): another replica takes over its operations at most this long after it died.
    pub replica_ttl: Duration,
    /// The leadership lease lasts this long unless renewed (renewed every fifth of it): a
    /// leader that dies is replaced about this long after its last renewal (`--leader-ttl`,
    /// default `--replica-ttl`).
    pub leader_ttl: Duration,
    /// The last resort for intents of *other* replicas that are alive (still renew their
    /// lease) but never finish: reconciled here once this old.
    pub stale_op: Duration,
    /// Pause the least recently used idle actor when a resume finds no free worker.
    pub evict: bool,
    /// A new placement avoids workers with less free snapshot space than this.
    pub min_snapshot_free: u64,
    /// Other replicas share the store (Redis): an actor this replica saw RUNNING may have
    /// been paused or moved by another since, so every request checks the record before it
    /// is forwarded (one store read). With a store of its own (SQLite) every transition
    /// goes through this process and its view is always current.
    pub shared_store: bool,
    /// `--snapshot-key-file`: every snapshot index read for placement (golden and durable
    /// provenance) must carry a signature that verifies with one of these keys, else the
    /// actor becomes CRASHED (see `ateom_store::sign`).
    pub signing: Option<ateom_store::SigningKeys>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            owner: "ate".into(),
            resume_timeout: Duration::from_secs(30),
            local_wait: Duration::from_secs(3),
            host_loss_grace: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(10),
            rpc_timeout: Duration::from_secs(120),
            settle_timeout: Duration::from_secs(120),
            health_interval: Duration::from_secs(1),
            idle_interval: Duration::from_millis(200),
            reconcile_interval: Duration::from_secs(1),
            replica_ttl: Duration::from_secs(5),
            leader_ttl: Duration::from_secs(5),
            stale_op: Duration::from_secs(300),
            evict: true,
            min_snapshot_free: 256 << 20,
            shared_store: false,
            signing: None,
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

/// Runs a state-changing operation to its end on a task of its own. Its caller (an HTTP
/// handler, a proxied request) may stop waiting when its client disconnects; the operation
/// must not stop halfway with it: a gate left draining (the actor unreachable from this
/// replica), a record left mid-transition, a workload started but never recorded.
pub(super) async fn run_to_end<T: Send + 'static>(
    op: impl std::future::Future<Output = Result<T, CtlError>> + Send + 'static,
) -> Result<T, CtlError> {
    tokio::spawn(op)
        .await
        .unwrap_or_else(|e| Err(CtlError::Unavailable(format!("the operation's task failed: {e}"))))
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
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
    golden_running: Mutex<HashSet<String>>,
    /// Background copies of paused snapshots (durability `both`): asked for, and under way.
    copies: Mutex<Copies>,
    copy_wanted: Notify,
    leadership: leader::Leadership,
}

#[derive(Default)]
struct Copies {
    wanted: HashSet<String>,
    running: HashSet<String>,
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
            copies: Mutex::new(Copies::default()),
            copy_wanted: Notify::new(),
            leadership: Default::default(),
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

    /// Where requests to an actor at `endpoint` go: a loopback endpoint as it is, a
    /// `tls://host:port` endpoint only if it is the TLS front of one of the pools' workers.
    pub async fn upstream(&self, endpoint: &str) -> Result<Upstream, EndpointError> {
        if !endpoint.starts_with("tls://") {
            return crate::worker::loopback_endpoint(endpoint).map(Upstream::Loopback);
        }
        if let Some(f) = self.workers.front(endpoint) {
            return Ok(Upstream::Tls(f));
        }
        // Not connected yet (a restarted control plane): from the worker records.
        let unknown = || EndpointError::UnknownFront(endpoint.chars().take(128).collect());
        let records = self.worker_records().await.map_err(|_| unknown())?;
        let w = records
            .into_iter()
            .find(|w| w.value.remote.as_ref().is_some_and(|r| front_endpoint(&r.forward) == endpoint))
            .ok_or_else(unknown)?;
        self.workers.client(&w.value.name, &w.value.target()).map_err(|_| unknown())?;
        self.workers.front(endpoint).map(Upstream::Tls).ok_or_else(unknown)
    }

    async fn worker_target(&self, worker: &str) -> Result<WorkerTarget, CtlError> {
        let n = worker.to_owned();
        let w = self.db(move |s| s.get_as::<WorkerRecord>(Kind::Worker, &n)).await?;
        w.map(|w| w.value.target())
            .ok_or_else(|| CtlError::NotFound { what: "worker", name: worker.to_owned() })
    }

    /// One actor transition: the actor record (at the version it was read) and the leases
    /// it gives back or takes, in one atomic write.
    async fn commit(&self, before: &Versioned<Actor>, after: Actor) -> Result<Versioned<Actor>, CtlError> {
        debug_assert!(after.lease_invariant_holds(), "{after:?}");
        debug_assert!(after.exact_snapshots_hold() || !before.value.exact_snapshots_hold(), "{after:?}");
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

    /// The gate of an actor that exists (read from the store when this process has no gate
    /// for it yet): a name that is no actor allocates nothing.
    async fn gate_existing(&self, actor: &str) -> Result<Arc<Gate>, CtlError> {
        if let Some(g) = self.gates.lock().unwrap_or_else(|p| p.into_inner()).get(actor) {
            return Ok(g.clone());
        }
        self.actor(actor).await?;
        Ok(self.gate(actor))
    }

    /// Forgets gates of actors that no longer exist and that nobody holds (the gate map
    /// stays the size of the actor list).
    pub(super) fn prune_gates(&self, existing: &HashSet<&str>) {
        self.gates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|name, g| existing.contains(name.as_str()) || Arc::strong_count(g) > 1);
    }

    /// Gates held by this process (tests: unknown hosts must not add any).
    pub fn gate_count(&self) -> usize {
        self.gates.lock().unwrap_or_else(|p| p.into_inner()).len()
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
        let mut s = ateom_store::Store::open(prefix)
            .map_err(|e| CtlError::Invalid(format!("snapshot location {prefix}: {e}")))?;
        if let Some(keys) = &self.cfg.signing {
            let config = ateom_store::StoreConfig { signing: Some(keys.clone()), ..s.config().clone() };
            s = s
                .with_config(config)
                .map_err(|e| CtlError::Invalid(format!("snapshot location {prefix}: {e}")))?;
        }
        m.insert(prefix.to_owned(), s.clone());
        Ok(s)
    }

    /// The provenance of a durable snapshot, from its index (the manifest ateom wrote; the
    /// worker checks the same one).
    async fn provenance(&self, d: &DurableRef) -> Result<Provenance, Unreadable> {
        let store = self
            .snapshot_store(&d.prefix)
            .map_err(|e| Unreadable { missing: false, message: e.to_string() })?;
        match store.read_index(&d.snapshot_id).await {
            Ok(index) => Ok(Provenance::from_manifest_json(&index.meta)),
            Err(e) => Err(Unreadable {
                missing: e.is_not_found(),
                message: format!("{} snapshot {} under {}: {e}", d.tier.as_str(), d.snapshot_id, d.prefix),
            }),
        }
    }

    /// Whether durable snapshot `id` exists (its index is there) under `prefix`.
    async fn durable_exists(&self, prefix: &str, id: &str) -> Result<bool, CtlError> {
        match self.snapshot_store(prefix)?.read_index(id).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(CtlError::Unavailable(format!("reading snapshot {id} under {prefix}: {e}"))),
        }
    }

    /// Every worker as placement sees it: its lease free, and not seen busy since (a worker
    /// observed running or restoring something after its lease was given back does work
    /// nobody holds it for: a stray workload, or an operation whose answer was lost).
    async fn candidates(&self) -> Result<Vec<Candidate>, CtlError> {
        let (workers, leases) =
            self.db(|s| Ok((s.list_as::<WorkerRecord>(Kind::Worker)?, s.list(Kind::Lease)?))).await?;
        let leases: HashMap<String, Option<Lease>> =
            leases.into_iter().map(|(n, r)| (n, serde_json::from_slice::<Lease>(&r.body).ok())).collect();
        Ok(workers
            .into_iter()
            .map(|w| {
                let free = match leases.get(&w.value.name) {
                    Some(Some(l)) if l.holder.is_none() => {
                        w.value.running.is_empty() || w.value.observed_ms < l.since_ms
                    }
                    None => w.value.running.is_empty(),
                    _ => false,
                };
                Candidate {
                    free,
                    name: w.value.name,
                    pool: w.value.pool,
                    healthy: w.value.healthy,
                    info: w.value.info,
                    snapshot_bytes_free: w.value.snapshot_bytes_free,
                }
            })
            .collect())
    }

    // ---------------------------------------------------------------- explicit operations

    /// Resumes an actor now (also retries a CRASHED one, from its recorded snapshot).
    pub async fn resume(self: &Arc<Self>, actor: &str) -> Result<Actor, CtlError> {
        self.to_completion(actor, "resume", |ctl, actor, gate| async move {
            let deadline = std::time::Instant::now() + ctl.cfg.resume_timeout;
            ctl.resume_locked(&actor, &gate, resume::Mode::Explicit, deadline).await
        })
        .await
    }

    /// Resumes an actor from exactly `snapshot_id` (`ate resume actor NAME --from-snapshot
    /// ID`), which may be older than its newest state: the operator's explicit choice.
    pub async fn resume_from(self: &Arc<Self>, actor: &str, snapshot_id: &str) -> Result<Actor, CtlError> {
        let snapshot_id = snapshot_id.to_owned();
        self.to_completion(actor, "resume", |ctl, actor, gate| async move {
            ctl.resume_from_locked(&actor, &snapshot_id, &gate).await
        })
        .await
    }

    pub async fn pause(self: &Arc<Self>, actor: &str) -> Result<Actor, CtlError> {
        self.to_completion(
            actor,
            "pause",
            |ctl, actor, gate| async move { ctl.pause_locked(&actor, &gate).await },
        )
        .await
    }

    pub async fn suspend(self: &Arc<Self>, actor: &str) -> Result<Actor, CtlError> {
        self.to_completion(actor, "suspend", |ctl, actor, gate| async move {
            ctl.suspend_locked(&actor, &gate, true).await
        })
        .await
    }

    pub async fn delete(self: &Arc<Self>, actor: &str) -> Result<(), CtlError> {
        let gate = self.gate_existing(actor).await?;
        let lock = self.op_lock(&gate, self.cfg.resume_timeout, "delete").await?;
        let (ctl, name) = (self.clone(), actor.to_owned());
        let span = info_span!("actor", actor = %actor);
        run_to_end(
            async move {
                let _lock = lock;
                ctl.delete_locked(&name, &gate).await
            }
            .instrument(span),
        )
        .await
    }

    /// One explicit operation under the actor's lock, on a task of its own, answering the
    /// actor as it is afterwards. See [`run_to_end`] for why not in the caller's task.
    async fn to_completion<F, Fut>(
        self: &Arc<Self>,
        actor: &str,
        what: &str,
        op: F,
    ) -> Result<Actor, CtlError>
    where
        F: FnOnce(Arc<Self>, String, Arc<Gate>) -> Fut,
        Fut: std::future::Future<Output = Result<(), CtlError>> + Send + 'static,
    {
        let gate = self.gate_existing(actor).await?;
        let lock = self.op_lock(&gate, self.cfg.resume_timeout, what).await?;
        let ctl = self.clone();
        let done = op(self.clone(), actor.to_owned(), gate);
        let name = actor.to_owned();
        let span = info_span!("actor", actor = %actor);
        run_to_end(
            async move {
                let _lock = lock;
                done.await?;
                Ok(ctl.actor(&name).await?.value)
            }
            .instrument(span),
        )
        .await
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

/// A durable snapshot whose index cannot be read.
#[derive(Debug)]
struct Unreadable {
    /// It does not exist (as opposed to: the store failed, or the index is damaged).
    missing: bool,
    message: String,
}
