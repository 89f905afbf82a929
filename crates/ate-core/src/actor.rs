//! The actor state machine, as pure functions from one actor record to the next.
//!
//! ```text
//!                 begin_resume                finish_resume
//!   SUSPENDED ─────────────────▶ RESUMING ─────────────────▶ RUNNING
//!   PAUSED    ─────────────────▶    │ fail_resume               │ begin_pause ──▶ PAUSING ──▶ PAUSED
//!   CRASHED   ──(explicit resume)─▶ ▼                           │ begin_suspend ▶ SUSPENDING ▶ SUSPENDED
//!                                CRASHED (reason kept)          │
//!   PAUSED ──begin_suspend (restore on its node, then DURABLE)──▶ SUSPENDING
//!   PAUSING | SUSPENDING ──checkpoint_quarantined──▶ CRASHED (newest state: the capture)
//!   any stable state ──begin_delete──▶ DELETING ──▶ (record removed)
//! ```
//!
//! The intermediate states (RESUMING, PAUSING, SUSPENDING, DELETING) carry an [`Op`]: the
//! intent — which worker, which snapshot — written *before* the control plane calls the
//! worker, so a restarted control plane can finish or roll back ([`Actor::rollback`],
//! [`Actor::adopt_running`]).
//!
//! **Exact snapshots.** A PAUSING/SUSPENDING intent records the id of the snapshot it is
//! about to write ([`crate::snapshot::new_snapshot_id`]); the worker writes exactly that id or
//! nothing. PAUSED and SUSPENDED therefore always name the exact snapshot that holds the
//! actor's newest state ([`Actor::exact_snapshots_hold`]), never "the newest one on the node".
//! A normal resume restores only the newest state ([`Actor::begin_resume`]); an older
//! snapshot is restored only by an explicit operator request ([`Actor::begin_resume_from`]).
//!
//! **The lease invariant.** `actor.worker` is `Some(w)` exactly in the states that occupy a
//! worker (RESUMING, RUNNING, PAUSING, SUSPENDING, and DELETING of a running actor); the
//! worker's lease record names the actor then, and both are written in one atomic store
//! write ([`lease_change`] says which lease a transition takes or gives back). PAUSED holds no
//! lease: its snapshot stays on the node, the worker is free for others.
//!
//! **Snapshot references are never dropped** by a transition except by replacing them with
//! a newer snapshot of the same tier: a resume failure keeps them, so an explicit resume of a
//! CRASHED actor can retry once the cause is fixed.

use serde::{Deserialize, Serialize};

/// The states of issue 6 §2, plus DELETING (the intent of a delete).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ActorState {
    Suspended,
    Resuming,
    Running,
    Pausing,
    Paused,
    Suspending,
    Crashed,
    Deleting,
}

impl ActorState {
    pub const ALL: [ActorState; 8] = [
        ActorState::Suspended,
        ActorState::Resuming,
        ActorState::Running,
        ActorState::Pausing,
        ActorState::Paused,
        ActorState::Suspending,
        ActorState::Crashed,
        ActorState::Deleting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActorState::Suspended => "SUSPENDED",
            ActorState::Resuming => "RESUMING",
            ActorState::Running => "RUNNING",
            ActorState::Pausing => "PAUSING",
            ActorState::Paused => "PAUSED",
            ActorState::Suspending => "SUSPENDING",
            ActorState::Crashed => "CRASHED",
            ActorState::Deleting => "DELETING",
        }
    }

    /// A state that records an operation in flight.
    pub fn is_intermediate(self) -> bool {
        matches!(
            self,
            ActorState::Resuming | ActorState::Pausing | ActorState::Suspending | ActorState::Deleting
        )
    }
}

impl std::fmt::Display for ActorState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A host fingerprint as workers report it (`GetCapabilities.host`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Host {
    #[serde(default)]
    pub cpu_vendor: String,
    #[serde(default)]
    pub cpu_model: String,
    #[serde(default)]
    pub cpu_flags_digest: String,
    #[serde(default)]
    pub host_kernel: String,
    #[serde(default)]
    pub host_id: String,
}

/// Where a snapshot came from: what placement compares with a worker before giving it the
/// snapshot. Read from the durable index's manifest (`meta`), which is what the worker
/// itself checks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    #[serde(default)]
    pub backend: String,
    #[serde(default)]
    pub runtime_version: String,
    #[serde(default)]
    pub snapshot_portability_class: String,
    #[serde(default)]
    pub restore_requires_same_host: bool,
    #[serde(default)]
    pub host: Host,
}

impl Provenance {
    /// From a snapshot manifest as JSON (ateom's `manifest.json`, or the `meta` of a durable
    /// index). Missing fields stay empty and therefore fit nothing that has them.
    pub fn from_manifest_json(v: &serde_json::Value) -> Provenance {
        let s = |x: &serde_json::Value| x.as_str().unwrap_or_default().to_owned();
        let caps = &v["capabilities"];
        let host: Host = serde_json::from_value(v["host"].clone()).unwrap_or_default();
        Provenance {
            backend: s(&v["backend"]),
            runtime_version: s(&v["runtime_version"]),
            snapshot_portability_class: s(&caps["snapshot_portability_class"]),
            restore_requires_same_host: caps["restore_requires_same_host"].as_bool().unwrap_or(false),
            host,
        }
    }
}

/// Which kind of durable snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// The template's golden snapshot (a new actor's first resume).
    Golden,
    /// The actor's own durable snapshot.
    Durable,
    /// A LOCAL snapshot on one node.
    Local,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Golden => "golden",
            Tier::Durable => "durable",
            Tier::Local => "local",
        }
    }
}

/// A snapshot in object storage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableRef {
    /// The `snapshot_uri_prefix` it lives under.
    pub prefix: String,
    pub snapshot_id: String,
    /// Golden (the template's) or Durable (the actor's own).
    pub tier: Tier,
}

/// A LOCAL snapshot on one worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalRef {
    pub worker: String,
    /// The exact snapshot. Records written before ids were chosen by the control plane may
    /// hold `null` ("the newest"): read as empty, which names no snapshot, so such an actor
    /// resumes only through an explicit `--from-snapshot`.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub snapshot_id: String,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What a resume restores from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "lowercase")]
pub enum Source {
    Local(LocalRef),
    Durable(DurableRef),
}

impl Source {
    pub fn tier(&self) -> Tier {
        match self {
            Source::Local(_) => Tier::Local,
            Source::Durable(d) => d.tier,
        }
    }

    pub fn snapshot_id(&self) -> &str {
        match self {
            Source::Local(l) => &l.snapshot_id,
            Source::Durable(d) => &d.snapshot_id,
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Local(l) => write!(f, "local snapshot {} on worker {}", l.snapshot_id, l.worker),
            Source::Durable(d) => {
                write!(f, "{} snapshot {} under {}", d.tier.as_str(), d.snapshot_id, d.prefix)
            }
        }
    }
}

/// The intent of an intermediate state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OpKind {
    /// `explicit`: an operator chose this snapshot (`--from-snapshot`), which need not be the
    /// newest state; once RUNNING the record's snapshot references become that snapshot.
    Resume {
        source: Source,
        #[serde(default, skip_serializing_if = "is_false")]
        explicit: bool,
    },
    /// A LOCAL checkpoint into exactly `snapshot_id`.
    Pause {
        #[serde(default)]
        snapshot_id: String,
    },
    /// A DURABLE checkpoint into exactly `snapshot_id`. `from_paused`: the actor was PAUSED;
    /// the worker restores its local snapshot, then checkpoints it. `previous`: the durable
    /// snapshot it had before.
    Suspend {
        from_paused: bool,
        previous: Option<String>,
        #[serde(default)]
        snapshot_id: String,
    },
    Delete,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    #[serde(flatten)]
    pub kind: OpKind,
    /// The control-plane replica that started it.
    pub owner: String,
    pub started_ms: u64,
    /// The stable state to return to on rollback.
    pub from: ActorState,
}

impl Op {
    /// The snapshot a PAUSING/SUSPENDING intent writes (chosen before the worker is called).
    pub fn intended_snapshot(&self) -> Option<&str> {
        match &self.kind {
            OpKind::Pause { snapshot_id } | OpKind::Suspend { snapshot_id, .. }
                if !snapshot_id.is_empty() =>
            {
                Some(snapshot_id)
            }
            _ => None,
        }
    }
}

/// One actor's record in the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub name: String,
    pub template: String,
    pub state: ActorState,
    /// The worker whose lease this actor holds (see the module docs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// RUNNING: the worker's loopback endpoint forwarding into the workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The newest LOCAL snapshot (PAUSED tier), if it is the newest state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalRef>,
    /// The newest durable snapshot (the actor's own, or the template's golden one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durable: Option<DurableRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<Op>,
    /// CRASHED: why. Otherwise the last notable failure, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// RUNNING: the snapshot the workload was restored from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
    #[serde(default)]
    pub resumes: u64,
    pub created_ms: u64,
    pub state_since_ms: u64,
}

/// A transition that is not allowed from the actor's current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("actor {actor}: cannot {action} while {state}")]
pub struct TransitionError {
    pub actor: String,
    pub action: &'static str,
    pub state: ActorState,
}

/// What a transition does to worker leases: give one back and/or take one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseChange {
    pub release: Option<String>,
    pub acquire: Option<String>,
}

/// The lease effect of going from `before` to `after`.
pub fn lease_change(before: &Actor, after: &Actor) -> LeaseChange {
    if before.worker == after.worker {
        return LeaseChange::default();
    }
    LeaseChange { release: before.worker.clone(), acquire: after.worker.clone() }
}

impl Actor {
    /// A new actor: SUSPENDED on its template's golden snapshot, so its first resume is a
    /// restore, not a boot.
    pub fn new(name: &str, template: &str, golden: DurableRef, now_ms: u64) -> Actor {
        Actor {
            name: name.to_owned(),
            template: template.to_owned(),
            state: ActorState::Suspended,
            worker: None,
            endpoint: None,
            local: None,
            durable: Some(golden),
            op: None,
            reason: None,
            restored_from: None,
            resumes: 0,
            created_ms: now_ms,
            state_since_ms: now_ms,
        }
    }

    fn refuse(&self, action: &'static str) -> TransitionError {
        TransitionError { actor: self.name.clone(), action, state: self.state }
    }

    fn moved(&self, state: ActorState, now_ms: u64) -> Actor {
        let mut a = self.clone();
        a.state = state;
        a.state_since_ms = now_ms;
        a
    }

    /// The snapshot the current PAUSING/SUSPENDING intent writes.
    pub fn intended_snapshot(&self) -> Option<&str> {
        self.op.as_ref().and_then(Op::intended_snapshot)
    }

    /// Every snapshot id this record references (its local and durable snapshots, the one
    /// an intent writes or restores, the one it was restored from): what a worker's
    /// retention must keep (`keep_snapshot_ids`).
    pub fn referenced_snapshots(&self) -> Vec<String> {
        let mut ids: Vec<String> = [
            self.local.as_ref().map(|l| l.snapshot_id.clone()),
            self.durable.as_ref().map(|d| d.snapshot_id.clone()),
            self.intended_snapshot().map(str::to_owned),
            self.restored_from.clone(),
            match &self.op {
                Some(Op { kind: OpKind::Resume { source, .. }, .. }) => Some(source.snapshot_id().to_owned()),
                _ => None,
            },
        ]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// Where a resume would restore from now: the local snapshot when it is the newest
    /// state, else the durable one.
    pub fn resume_source(&self) -> Option<Source> {
        if let Some(l) = &self.local {
            return Some(Source::Local(l.clone()));
        }
        self.durable.clone().map(Source::Durable)
    }

    /// SUSPENDED | PAUSED | CRASHED → RESUMING on `worker`, restoring `source`, which must
    /// be the actor's newest state (a local snapshot on its own node, or the durable one when
    /// no newer local snapshot exists).
    pub fn begin_resume(
        &self,
        source: Source,
        worker: &str,
        owner: &str,
        now_ms: u64,
    ) -> Result<Actor, TransitionError> {
        let ok_source = match &source {
            Source::Local(l) => self.local.as_ref() == Some(l) && l.worker == worker,
            Source::Durable(d) => {
                self.durable.as_ref() == Some(d)
                    && self.local.as_ref().is_none_or(|l| l.snapshot_id == d.snapshot_id)
            }
        };
        if !ok_source {
            return Err(self.refuse("resume from a snapshot that is not its newest state"));
        }
        self.resuming(source, worker, owner, now_ms, false)
    }

    /// SUSPENDED | PAUSED | CRASHED → RESUMING from a snapshot an operator chose
    /// (`ate resume actor NAME --from-snapshot ID`): possibly older than the newest state,
    /// which is why only an explicit request does this. A local snapshot restores only on
    /// the worker holding it.
    pub fn begin_resume_from(
        &self,
        source: Source,
        worker: &str,
        owner: &str,
        now_ms: u64,
    ) -> Result<Actor, TransitionError> {
        if let Source::Local(l) = &source
            && l.worker != worker
        {
            return Err(self.refuse("resume a local snapshot on another worker"));
        }
        self.resuming(source, worker, owner, now_ms, true)
    }

    fn resuming(
        &self,
        source: Source,
        worker: &str,
        owner: &str,
        now_ms: u64,
        explicit: bool,
    ) -> Result<Actor, TransitionError> {
        if !matches!(self.state, ActorState::Suspended | ActorState::Paused | ActorState::Crashed) {
            return Err(self.refuse("resume"));
        }
        if source.snapshot_id().is_empty() {
            return Err(self.refuse("resume from a snapshot without an id"));
        }
        let from = self.state;
        let mut a = self.moved(ActorState::Resuming, now_ms);
        a.worker = Some(worker.to_owned());
        a.op = Some(Op {
            kind: OpKind::Resume { source, explicit },
            owner: owner.to_owned(),
            started_ms: now_ms,
            from,
        });
        Ok(a)
    }

    /// What a resume that ended RUNNING does to the snapshot references: an explicit resume
    /// makes the chosen snapshot the newest state.
    fn resumed_refs(&mut self) {
        if let Some(Op { kind: OpKind::Resume { source, explicit: true }, .. }) = &self.op {
            match source.clone() {
                Source::Local(l) => self.local = Some(l),
                Source::Durable(d) => {
                    self.durable = Some(d);
                    self.local = None;
                }
            }
        }
    }

    /// RESUMING → RUNNING: the worker answered ready.
    pub fn finish_resume(
        &self,
        endpoint: &str,
        restored: &str,
        now_ms: u64,
    ) -> Result<Actor, TransitionError> {
        if self.state != ActorState::Resuming {
            return Err(self.refuse("finish a resume"));
        }
        let mut a = self.moved(ActorState::Running, now_ms);
        a.resumed_refs();
        a.endpoint = Some(endpoint.to_owned());
        a.restored_from = Some(restored.to_owned()).filter(|s| !s.is_empty());
        a.op = None;
        a.reason = None;
        a.resumes += 1;
        Ok(a)
    }

    /// RESUMING → CRASHED: the restore was refused or failed. The worker is given back;
    /// snapshot references are kept so an explicit resume can retry.
    pub fn fail_resume(&self, reason: &str, now_ms: u64) -> Result<Actor, TransitionError> {
        if self.state != ActorState::Resuming {
            return Err(self.refuse("fail a resume"));
        }
        Ok(self.crash(reason, now_ms))
    }

    /// Any state → CRASHED with `reason`, giving the worker back.
    pub fn crash(&self, reason: &str, now_ms: u64) -> Actor {
        let mut a = self.moved(ActorState::Crashed, now_ms);
        a.worker = None;
        a.endpoint = None;
        a.op = None;
        a.reason = Some(reason.to_owned());
        a
    }

    /// RUNNING → PAUSING: a LOCAL checkpoint on its worker into exactly `snapshot_id`
    /// (recorded before the worker is called).
    pub fn begin_pause(&self, snapshot_id: &str, owner: &str, now_ms: u64) -> Result<Actor, TransitionError> {
        if self.state != ActorState::Running {
            return Err(self.refuse("pause"));
        }
        if snapshot_id.is_empty() {
            return Err(self.refuse("pause without a snapshot id"));
        }
        let mut a = self.moved(ActorState::Pausing, now_ms);
        a.op = Some(Op {
            kind: OpKind::Pause { snapshot_id: snapshot_id.to_owned() },
            owner: owner.to_owned(),
            started_ms: now_ms,
            from: ActorState::Running,
        });
        Ok(a)
    }

    /// PAUSING → PAUSED at exactly the intended snapshot (the worker made it, or
    /// reconciliation found it), which is on the worker; the worker is free again.
    pub fn finish_pause(&self, now_ms: u64) -> Result<Actor, TransitionError> {
        if self.state != ActorState::Pausing {
            return Err(self.refuse("finish a pause"));
        }
        let worker = self.worker.clone().ok_or_else(|| self.refuse("finish a pause without a worker"))?;
        let id = self.intended_snapshot().ok_or_else(|| self.refuse("finish a pause without an id"))?;
        let mut a = self.moved(ActorState::Paused, now_ms);
        a.local = Some(LocalRef { worker, snapshot_id: id.to_owned() });
        a.worker = None;
        a.endpoint = None;
        a.op = None;
        a.restored_from = None;
        Ok(a)
    }

    /// RUNNING → SUSPENDING (DURABLE checkpoint on its worker), or PAUSED → SUSPENDING on
    /// the worker holding the local snapshot (restore there, then checkpoint DURABLE); the
    /// durable snapshot will be exactly `snapshot_id`.
    pub fn begin_suspend(
        &self,
        snapshot_id: &str,
        owner: &str,
        now_ms: u64,
    ) -> Result<Actor, TransitionError> {
        let previous = self.durable.as_ref().map(|d| d.snapshot_id.clone());
        let (from_paused, worker) = match self.state {
            ActorState::Running => (false, self.worker.clone()),
            ActorState::Paused => (true, self.local.as_ref().map(|l| l.worker.clone())),
            _ => return Err(self.refuse("suspend")),
        };
        if snapshot_id.is_empty() {
            return Err(self.refuse("suspend without a snapshot id"));
        }
        let from = self.state;
        let mut a = self.moved(ActorState::Suspending, now_ms);
        a.worker = worker;
        a.op = Some(Op {
            kind: OpKind::Suspend { from_paused, previous, snapshot_id: snapshot_id.to_owned() },
            owner: owner.to_owned(),
            started_ms: now_ms,
            from,
        });
        Ok(a)
    }

    /// SUSPENDING → SUSPENDED at exactly the intended snapshot, which is in object storage
    /// under `prefix` (and, the same snapshot, still on the worker: a resume there moves no
    /// data).
    pub fn finish_suspend(&self, prefix: &str, now_ms: u64) -> Result<Actor, TransitionError> {
        if self.state != ActorState::Suspending {
            return Err(self.refuse("finish a suspend"));
        }
        let worker = self.worker.clone().ok_or_else(|| self.refuse("finish a suspend without a worker"))?;
        let id = self.intended_snapshot().ok_or_else(|| self.refuse("finish a suspend without an id"))?;
        let mut a = self.moved(ActorState::Suspended, now_ms);
        a.durable =
            Some(DurableRef { prefix: prefix.to_owned(), snapshot_id: id.to_owned(), tier: Tier::Durable });
        a.local = Some(LocalRef { worker, snapshot_id: id.to_owned() });
        a.worker = None;
        a.endpoint = None;
        a.op = None;
        a.restored_from = None;
        Ok(a)
    }

    /// PAUSED at S → SUSPENDED at S: the worker that holds local snapshot S copied it to
    /// object storage under `prefix` in the background (durability `both`). The record is the
    /// one a durable checkpoint leaves: the same snapshot local and durable. Refused unless S
    /// is still the newest state (a copy that lands after a resume changes nothing).
    pub fn durable_copy_landed(
        &self,
        prefix: &str,
        snapshot_id: &str,
        now_ms: u64,
    ) -> Result<Actor, TransitionError> {
        let newest = self.local.as_ref().is_some_and(|l| l.snapshot_id == snapshot_id);
        if self.state != ActorState::Paused || self.op.is_some() || !newest || snapshot_id.is_empty() {
            return Err(self.refuse("record a durable copy of a snapshot that is not its paused state"));
        }
        let mut a = self.moved(ActorState::Suspended, now_ms);
        a.durable = Some(DurableRef {
            prefix: prefix.to_owned(),
            snapshot_id: snapshot_id.to_owned(),
            tier: Tier::Durable,
        });
        Ok(a)
    }

    /// SUSPENDING → PAUSED on the same worker at exactly the intended snapshot: the DURABLE
    /// checkpoint committed locally but was not shipped (or its outcome is unknown); the
    /// newest state is on the node.
    pub fn suspend_kept_local(&self, now_ms: u64) -> Result<Actor, TransitionError> {
        if self.state != ActorState::Suspending {
            return Err(self.refuse("keep a suspend local"));
        }
        let worker =
            self.worker.clone().ok_or_else(|| self.refuse("keep a suspend local without a worker"))?;
        let id = self.intended_snapshot().ok_or_else(|| self.refuse("keep a suspend local without an id"))?;
        let mut a = self.moved(ActorState::Paused, now_ms);
        a.local = Some(LocalRef { worker, snapshot_id: id.to_owned() });
        a.worker = None;
        a.endpoint = None;
        a.op = None;
        a.restored_from = None;
        Ok(a)
    }

    /// PAUSING | SUSPENDING → CRASHED whose newest state is the intended snapshot, captured
    /// whole but not committed (a full disk) and kept in quarantine on the worker: once
    /// `ateom snapshots recover` commits it there under the same id, an explicit resume
    /// restores exactly it.
    pub fn checkpoint_quarantined(&self, reason: &str, now_ms: u64) -> Result<Actor, TransitionError> {
        if !matches!(self.state, ActorState::Pausing | ActorState::Suspending) {
            return Err(self.refuse("quarantine a checkpoint"));
        }
        let worker =
            self.worker.clone().ok_or_else(|| self.refuse("quarantine a checkpoint without a worker"))?;
        let id =
            self.intended_snapshot().ok_or_else(|| self.refuse("quarantine a checkpoint without an id"))?;
        let mut a = self.crash(reason, now_ms);
        a.local = Some(LocalRef { worker, snapshot_id: id.to_owned() });
        a.restored_from = None;
        Ok(a)
    }

    /// PAUSING | SUSPENDING | RESUMING → RUNNING on its worker: the worker still (or
    /// already) runs the workload (a checkpoint that failed without harm, or a reconciled
    /// operation whose answer was lost).
    pub fn adopt_running(&self, endpoint: &str, now_ms: u64) -> Result<Actor, TransitionError> {
        if !matches!(self.state, ActorState::Pausing | ActorState::Suspending | ActorState::Resuming) {
            return Err(self.refuse("adopt a running workload"));
        }
        if self.worker.is_none() {
            return Err(self.refuse("adopt a running workload without a worker"));
        }
        let resumed = self.state == ActorState::Resuming;
        let restored = match &self.op {
            Some(Op { kind: OpKind::Resume { source, .. }, .. }) => Some(source.snapshot_id().to_owned()),
            _ => self.restored_from.clone(),
        };
        let mut a = self.moved(ActorState::Running, now_ms);
        if resumed {
            a.resumed_refs();
            a.resumes += 1;
            a.reason = None;
        }
        a.endpoint = Some(endpoint.to_owned());
        a.op = None;
        a.restored_from = restored;
        Ok(a)
    }

    /// RUNNING → RUNNING at another endpoint: its worker (restarted, adopting the workload)
    /// now forwards to it from another loopback port.
    pub fn moved_endpoint(&self, endpoint: &str) -> Result<Actor, TransitionError> {
        if self.state != ActorState::Running {
            return Err(self.refuse("move the endpoint"));
        }
        let mut a = self.clone();
        a.endpoint = Some(endpoint.to_owned());
        Ok(a)
    }

    /// Back to the stable state an operation came from, giving the worker back, with the
    /// snapshot references untouched: RESUMING whose workload never started, or SUSPENDING
    /// of a PAUSED actor whose checkpoint never happened (its local snapshot is still its
    /// newest state: no request reached the restored workload meanwhile).
    pub fn rollback(&self, now_ms: u64) -> Result<Actor, TransitionError> {
        let Some(op) = &self.op else { return Err(self.refuse("roll back")) };
        let ok = match (&self.state, &op.kind) {
            (ActorState::Resuming, _) => true,
            (ActorState::Suspending, OpKind::Suspend { from_paused: true, .. }) => {
                op.from == ActorState::Paused && self.local.is_some()
            }
            _ => false,
        };
        if !ok {
            return Err(self.refuse("roll back"));
        }
        let mut a = self.moved(op.from, now_ms);
        a.worker = None;
        a.endpoint = None;
        a.op = None;
        Ok(a)
    }

    /// Any state except DELETING → DELETING (a running actor keeps its worker until its
    /// workload is checkpointed away).
    pub fn begin_delete(&self, owner: &str, now_ms: u64) -> Result<Actor, TransitionError> {
        if self.state == ActorState::Deleting {
            return Err(self.refuse("delete"));
        }
        if self.state.is_intermediate() {
            return Err(self.refuse("delete during an operation"));
        }
        let from = self.state;
        let mut a = self.moved(ActorState::Deleting, now_ms);
        a.op = Some(Op { kind: OpKind::Delete, owner: owner.to_owned(), started_ms: now_ms, from });
        Ok(a)
    }

    /// DELETING: the workload is gone from its worker; give the lease back.
    pub fn delete_released_worker(&self) -> Result<Actor, TransitionError> {
        if self.state != ActorState::Deleting {
            return Err(self.refuse("release a worker for deletion"));
        }
        let mut a = self.clone();
        a.worker = None;
        a.endpoint = None;
        Ok(a)
    }

    /// Whether the lease invariant holds for this record.
    pub fn lease_invariant_holds(&self) -> bool {
        match self.state {
            ActorState::Resuming | ActorState::Running | ActorState::Pausing => self.worker.is_some(),
            ActorState::Suspending => self.worker.is_some(),
            ActorState::Deleting => true,
            ActorState::Suspended | ActorState::Paused | ActorState::Crashed => self.worker.is_none(),
        }
    }

    /// Whether every snapshot the record stands on is named exactly: PAUSED names its local
    /// snapshot, SUSPENDED its durable one, PAUSING/SUSPENDING the snapshot they write.
    pub fn exact_snapshots_hold(&self) -> bool {
        match self.state {
            ActorState::Paused => self.local.as_ref().is_some_and(|l| !l.snapshot_id.is_empty()),
            ActorState::Suspended => self.durable.as_ref().is_some_and(|d| !d.snapshot_id.is_empty()),
            ActorState::Pausing | ActorState::Suspending => self.intended_snapshot().is_some(),
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn golden() -> DurableRef {
        DurableRef { prefix: "file:///b/golden".into(), snapshot_id: "g1".into(), tier: Tier::Golden }
    }

    fn new_actor() -> Actor {
        Actor::new("a1", "counter", golden(), 1)
    }

    fn local(w: &str, id: &str) -> LocalRef {
        LocalRef { worker: w.into(), snapshot_id: id.into() }
    }

    fn running_on(w: &str) -> Actor {
        let a = new_actor();
        a.begin_resume(a.resume_source().unwrap(), w, "cp", 2).unwrap().finish_resume("e", "g1", 3).unwrap()
    }

    #[test]
    fn a_full_cycle_through_every_tier() {
        let a = new_actor();
        assert_eq!(a.state, ActorState::Suspended);
        assert_eq!(a.resume_source(), Some(Source::Durable(golden())));
        let r = a.begin_resume(a.resume_source().unwrap(), "w1", "cp", 2).unwrap();
        assert_eq!((r.state, r.worker.as_deref()), (ActorState::Resuming, Some("w1")));
        assert_eq!(lease_change(&a, &r), LeaseChange { release: None, acquire: Some("w1".into()) });
        let run = r.finish_resume("127.0.0.1:5", "g1", 3).unwrap();
        assert_eq!(
            (run.state, run.resumes, run.restored_from.as_deref()),
            (ActorState::Running, 1, Some("g1"))
        );
        assert_eq!(lease_change(&r, &run), LeaseChange::default());

        let pausing = run.begin_pause("s1", "cp", 4).unwrap();
        assert_eq!(pausing.intended_snapshot(), Some("s1"), "the intent names the snapshot first");
        let p = pausing.finish_pause(5).unwrap();
        assert_eq!(p.state, ActorState::Paused);
        assert_eq!(p.worker, None);
        assert_eq!(p.local, Some(local("w1", "s1")));
        assert_eq!(p.durable, Some(golden()), "the golden reference is kept");
        // A paused actor resumes from its local snapshot, on its own node only.
        let src = p.resume_source().unwrap();
        assert!(p.begin_resume(src.clone(), "w2", "cp", 6).is_err());
        assert!(p.begin_resume(Source::Durable(golden()), "w2", "cp", 6).is_err(), "golden is older");
        let r2 = p.begin_resume(src, "w1", "cp", 6).unwrap();
        let run2 = r2.finish_resume("127.0.0.1:5", "s1", 7).unwrap();

        let s = run2.begin_suspend("s2", "cp", 8).unwrap();
        assert_eq!(s.worker.as_deref(), Some("w1"));
        let s = s.finish_suspend("file:///b/actors/a1", 9).unwrap();
        assert_eq!(s.state, ActorState::Suspended);
        assert_eq!(s.durable.as_ref().map(|d| (d.tier, d.snapshot_id.as_str())), Some((Tier::Durable, "s2")));
        assert_eq!(s.local, Some(local("w1", "s2")));
        // The same snapshot is on w1 too; a durable resume anywhere fits its newest state.
        assert!(s.begin_resume(Source::Durable(s.durable.clone().unwrap()), "w3", "cp", 10).is_ok());
    }

    #[test]
    fn a_durable_copy_of_the_paused_snapshot_makes_it_restorable_anywhere() {
        let p = running_on("w1").begin_pause("s1", "cp", 4).unwrap().finish_pause(5).unwrap();
        let s = p.durable_copy_landed("file:///b/actors/a1", "s1", 6).unwrap();
        assert_eq!(s.state, ActorState::Suspended);
        assert_eq!(s.local, Some(local("w1", "s1")), "the local copy stays the preferred one");
        let d = s.durable.clone().unwrap();
        assert_eq!((d.tier, d.snapshot_id.as_str()), (Tier::Durable, "s1"));
        assert_eq!(lease_change(&p, &s), LeaseChange::default());
        assert!(s.begin_resume(Source::Durable(d), "w2", "cp", 7).is_ok(), "another host may restore it");
        // A copy of anything but the paused state changes nothing.
        assert!(p.durable_copy_landed("file:///b/actors/a1", "s0", 6).is_err(), "an older snapshot");
        assert!(running_on("w1").durable_copy_landed("file:///b/actors/a1", "s1", 6).is_err());
        let resuming = p.begin_resume(p.resume_source().unwrap(), "w1", "cp", 6).unwrap();
        assert!(resuming.durable_copy_landed("file:///b/actors/a1", "s1", 7).is_err());
        assert!(s.durable_copy_landed("file:///b/actors/a1", "s1", 8).is_err(), "already SUSPENDED");
    }

    #[test]
    fn intents_without_an_id_are_refused() {
        let run = running_on("w1");
        assert!(run.begin_pause("", "cp", 4).is_err());
        assert!(run.begin_suspend("", "cp", 4).is_err());
    }

    #[test]
    fn a_refused_restore_crashes_and_keeps_the_references() {
        let a = new_actor();
        let r = a.begin_resume(a.resume_source().unwrap(), "w1", "cp", 2).unwrap();
        let c = r.fail_resume("DATA_LOSS: chunk x is corrupt", 3).unwrap();
        assert_eq!(c.state, ActorState::Crashed);
        assert_eq!(c.worker, None);
        assert_eq!(c.reason.as_deref(), Some("DATA_LOSS: chunk x is corrupt"));
        assert_eq!(c.durable, a.durable);
        assert_eq!(lease_change(&r, &c), LeaseChange { release: Some("w1".into()), acquire: None });
        // Retry explicitly.
        assert!(c.begin_resume(c.resume_source().unwrap(), "w2", "cp", 4).is_ok());
    }

    #[test]
    fn suspending_a_paused_actor_runs_on_its_node_and_rolls_back_to_its_pause() {
        let p = running_on("w2").begin_pause("s1", "cp", 4).unwrap().finish_pause(5).unwrap();
        let s = p.begin_suspend("s2", "cp", 6).unwrap();
        assert_eq!(s.worker.as_deref(), Some("w2"));
        assert!(matches!(s.op.as_ref().unwrap().kind, OpKind::Suspend { from_paused: true, .. }));
        let kept = s.suspend_kept_local(7).unwrap();
        assert_eq!(kept.state, ActorState::Paused);
        assert_eq!(kept.local, Some(local("w2", "s2")), "kept at exactly the intended id");
        // The checkpoint never happened: back to PAUSED at the old snapshot, lease returned.
        let back = s.rollback(7).unwrap();
        assert_eq!((back.state, back.worker.as_ref()), (ActorState::Paused, None));
        assert_eq!(back.local, Some(local("w2", "s1")));
        // A suspend of a RUNNING actor cannot roll back: its running state is not a snapshot.
        assert!(running_on("w1").begin_suspend("s3", "cp", 8).unwrap().rollback(9).is_err());
        assert!(running_on("w1").begin_pause("s3", "cp", 8).unwrap().rollback(9).is_err());
    }

    #[test]
    fn a_quarantined_checkpoint_crashes_naming_the_capture() {
        let q = running_on("w1")
            .begin_pause("s7", "cp", 4)
            .unwrap()
            .checkpoint_quarantined("disk full", 5)
            .unwrap();
        assert_eq!(q.state, ActorState::Crashed);
        assert_eq!((q.worker.as_ref(), q.reason.as_deref()), (None, Some("disk full")));
        assert_eq!(q.local, Some(local("w1", "s7")));
        // Once recovered on w1, a (explicit) resume restores exactly it, on w1 only.
        let src = q.resume_source().unwrap();
        assert_eq!(src.snapshot_id(), "s7");
        assert!(q.begin_resume(src.clone(), "w2", "cp", 6).is_err());
        assert!(q.begin_resume(src, "w1", "cp", 6).is_ok());
        assert!(running_on("w1").checkpoint_quarantined("x", 5).is_err());
    }

    #[test]
    fn only_an_explicit_resume_restores_an_older_snapshot() {
        let p = running_on("w1").begin_pause("s1", "cp", 4).unwrap().finish_pause(5).unwrap();
        let run =
            p.begin_resume(p.resume_source().unwrap(), "w1", "cp", 6).unwrap().finish_resume("e", "s1", 7);
        let p2 = run.unwrap().begin_pause("s2", "cp", 8).unwrap().finish_pause(9).unwrap();
        let older = Source::Local(local("w1", "s1"));
        assert!(p2.begin_resume(older.clone(), "w1", "cp", 10).is_err(), "s1 is not the newest state");
        assert!(p2.begin_resume_from(older.clone(), "w2", "cp", 10).is_err(), "a local snapshot stays home");
        let r = p2.begin_resume_from(older, "w1", "cp", 10).unwrap();
        assert!(matches!(r.op.as_ref().unwrap().kind, OpKind::Resume { explicit: true, .. }));
        // Rolled back (never started): nothing changed.
        assert_eq!(r.rollback(11).unwrap().local, Some(local("w1", "s2")));
        // Running from it: s1 is now the newest state the record stands on.
        let run = r.finish_resume("e", "s1", 11).unwrap();
        assert_eq!(run.local, Some(local("w1", "s1")));
        // An explicit durable snapshot replaces both references.
        let d = DurableRef { prefix: "p".into(), snapshot_id: "d0".into(), tier: Tier::Durable };
        let r = p2.begin_resume_from(Source::Durable(d.clone()), "w3", "cp", 12).unwrap();
        let run = r.adopt_running("e", 13).unwrap();
        assert_eq!((run.local.as_ref(), run.durable.as_ref()), (None, Some(&d)));
        assert_eq!(run.restored_from.as_deref(), Some("d0"));
    }

    #[test]
    fn records_of_older_versions_still_decode() {
        let json = r#"{"name":"a1","template":"t","state":"PAUSED","local":{"worker":"w1","snapshot_id":null},
            "created_ms":1,"state_since_ms":1}"#;
        let a: Actor = serde_json::from_str(json).unwrap();
        assert_eq!(a.local, Some(local("w1", "")));
        assert!(!a.exact_snapshots_hold(), "an old record names no exact snapshot");
        // Such an actor does not resume by default; only explicitly.
        assert!(a.begin_resume(a.resume_source().unwrap(), "w1", "cp", 2).is_err());
        let pause: Op =
            serde_json::from_str(r#"{"op":"pause","owner":"x","started_ms":1,"from":"RUNNING"}"#).unwrap();
        assert_eq!(pause.intended_snapshot(), None);
    }

    #[test]
    fn referenced_snapshots_are_what_retention_must_keep() {
        let p = running_on("w1").begin_pause("s1", "cp", 4).unwrap().finish_pause(5).unwrap();
        let s = p.begin_suspend("s2", "cp", 6).unwrap();
        assert_eq!(s.referenced_snapshots(), ["g1", "s1", "s2"]);
    }

    #[test]
    fn illegal_transitions_are_refused() {
        let a = new_actor();
        assert!(a.begin_pause("s", "cp", 1).is_err());
        assert!(a.finish_resume("e", "s", 1).is_err());
        assert!(a.finish_pause(1).is_err());
        assert!(a.finish_suspend("p", 1).is_err());
        assert!(a.adopt_running("e", 1).is_err());
        assert!(a.rollback(1).is_err());
        let r = a.begin_resume(a.resume_source().unwrap(), "w1", "cp", 2).unwrap();
        assert!(r.begin_resume(r.resume_source().unwrap(), "w1", "cp", 2).is_err(), "one resume at a time");
        assert!(r.begin_delete("cp", 2).is_err());
        let err = r.begin_pause("s", "cp", 2).unwrap_err();
        assert_eq!(err.to_string(), "actor a1: cannot pause while RESUMING");
    }

    /// Every event the control plane can apply, with its arguments.
    #[derive(Clone, Debug)]
    enum Event {
        Resume(u8),
        ResumeFrom(u8, bool),
        FinishResume,
        FailResume,
        Pause,
        FinishPause,
        Suspend,
        FinishSuspend,
        SuspendKeptLocal,
        Quarantine,
        Adopt,
        Rollback,
        Crash,
        Delete,
        DeleteRelease,
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            (0u8..3).prop_map(Event::Resume),
            (0u8..3, any::<bool>()).prop_map(|(w, l)| Event::ResumeFrom(w, l)),
            Just(Event::FinishResume),
            Just(Event::FailResume),
            Just(Event::Pause),
            Just(Event::FinishPause),
            Just(Event::Suspend),
            Just(Event::FinishSuspend),
            Just(Event::SuspendKeptLocal),
            Just(Event::Quarantine),
            Just(Event::Adopt),
            Just(Event::Rollback),
            Just(Event::Crash),
            Just(Event::Delete),
            Just(Event::DeleteRelease),
        ]
    }

    fn apply(a: &Actor, e: &Event, t: u64) -> Option<Actor> {
        let w = |i: u8| format!("w{i}");
        match e {
            Event::Resume(i) => {
                let src = a.resume_source()?;
                let worker = match &src {
                    Source::Local(l) => l.worker.clone(),
                    Source::Durable(_) => w(*i),
                };
                a.begin_resume(src, &worker, "cp", t).ok()
            }
            Event::ResumeFrom(i, is_local) => {
                let src = if *is_local {
                    Source::Local(LocalRef { worker: w(*i), snapshot_id: format!("old{t}") })
                } else {
                    Source::Durable(DurableRef {
                        prefix: "p".into(),
                        snapshot_id: format!("old{t}"),
                        tier: Tier::Durable,
                    })
                };
                a.begin_resume_from(src, &w(*i), "cp", t).ok()
            }
            Event::FinishResume => a.finish_resume("e", &format!("s{t}"), t).ok(),
            Event::FailResume => a.fail_resume("refused", t).ok(),
            Event::Pause => a.begin_pause(&format!("s{t}"), "cp", t).ok(),
            Event::FinishPause => a.finish_pause(t).ok(),
            Event::Suspend => a.begin_suspend(&format!("s{t}"), "cp", t).ok(),
            Event::FinishSuspend => a.finish_suspend("p", t).ok(),
            Event::SuspendKeptLocal => a.suspend_kept_local(t).ok(),
            Event::Quarantine => a.checkpoint_quarantined("full", t).ok(),
            Event::Adopt => a.adopt_running("e", t).ok(),
            Event::Rollback => a.rollback(t).ok(),
            Event::Crash => Some(a.crash("boom", t)),
            Event::Delete => a.begin_delete("cp", t).ok(),
            Event::DeleteRelease => a.delete_released_worker().ok(),
        }
    }

    proptest! {
        /// Whatever sequence of events is applied (illegal ones are refused and change
        /// nothing): the lease invariant holds, leases move only through `lease_change`
        /// (never two workers at once), a snapshot reference is never lost, every PAUSED or
        /// SUSPENDED record names exactly the snapshot its intent chose, and a PAUSED actor's
        /// resume only ever targets the node holding its snapshot.
        #[test]
        fn invariants_hold_for_every_event_sequence(events in proptest::collection::vec(event(), 1..60)) {
            let mut a = new_actor();
            let mut held: Option<String> = None;
            for (t, e) in events.iter().enumerate() {
                let t = t as u64 + 10;
                let Some(next) = apply(&a, e, t) else { continue };
                prop_assert!(next.lease_invariant_holds(), "{e:?}: {next:?}");
                prop_assert!(next.exact_snapshots_hold(), "{e:?}: {next:?}");
                let change = lease_change(&a, &next);
                if let Some(r) = &change.release {
                    prop_assert_eq!(Some(r), held.as_ref(), "released a lease it did not hold");
                    held = None;
                }
                if let Some(acq) = &change.acquire {
                    prop_assert!(held.is_none(), "two leases at once");
                    held = Some(acq.clone());
                }
                prop_assert_eq!(&held, &next.worker);
                prop_assert!(next.durable.is_some(), "the durable reference was lost: {e:?}");
                if a.state == ActorState::Paused && next.state == ActorState::Resuming
                    && matches!(next.op.as_ref().map(|o| &o.kind), Some(OpKind::Resume { explicit: false, .. }))
                {
                    prop_assert_eq!(next.worker.as_ref(), a.local.as_ref().map(|l| &l.worker));
                }
                // A checkpoint ends at exactly its intended snapshot.
                if matches!(a.state, ActorState::Pausing | ActorState::Suspending)
                    && matches!(next.state, ActorState::Paused | ActorState::Suspended)
                {
                    let intended = a.intended_snapshot().unwrap();
                    let rolled_back = next.state == ActorState::Paused && next.local == a.local;
                    prop_assert!(rolled_back || next.local.as_ref().map(|l| l.snapshot_id.as_str()) == Some(intended));
                }
                if next.state.is_intermediate() {
                    prop_assert!(next.op.is_some(), "an intermediate state records its intent");
                } else {
                    prop_assert!(next.op.is_none());
                }
                if next.state == ActorState::Crashed {
                    prop_assert!(next.reason.is_some());
                }
                a = next;
            }
        }
    }
}
