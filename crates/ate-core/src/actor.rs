//! The actor state machine, as pure functions from one actor record to the next.
//!
//! ```text
//!                 begin_resume                finish_resume
//!   SUSPENDED ─────────────────▶ RESUMING ─────────────────▶ RUNNING
//!   PAUSED    ─────────────────▶    │ fail_resume               │ begin_pause ──▶ PAUSING ──▶ PAUSED
//!   CRASHED   ──(explicit resume)─▶ ▼                           │ begin_suspend ▶ SUSPENDING ▶ SUSPENDED
//!                                CRASHED (reason kept)          │
//!   PAUSED ──begin_suspend (restore on its node, then DURABLE)──▶ SUSPENDING
//!   any stable state ──begin_delete──▶ DELETING ──▶ (record removed)
//! ```
//!
//! The intermediate states (RESUMING, PAUSING, SUSPENDING, DELETING) carry an [`Op`]: the
//! intent — which worker, which snapshot — written *before* the control plane calls the
//! worker, so a restarted control plane can finish or roll back ([`Actor::rollback`],
//! [`Actor::adopt_running`]).
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
    /// None: the newest snapshot of the actor on that worker (what a reconciled checkpoint
    /// whose answer was lost left behind; the worker's restore answer names it).
    pub snapshot_id: Option<String>,
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

    pub fn snapshot_id(&self) -> Option<&str> {
        match self {
            Source::Local(l) => l.snapshot_id.as_deref(),
            Source::Durable(d) => Some(&d.snapshot_id),
        }
    }
}

/// The intent of an intermediate state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OpKind {
    Resume {
        source: Source,
    },
    Pause,
    /// `from_paused`: the actor was PAUSED; the worker restores its local snapshot, then
    /// checkpoints it DURABLE. `previous`: the durable snapshot it had before.
    Suspend {
        from_paused: bool,
        previous: Option<String>,
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

    /// Where a resume would restore from now: the local snapshot when it is the newest
    /// state, else the durable one.
    pub fn resume_source(&self) -> Option<Source> {
        if let Some(l) = &self.local {
            return Some(Source::Local(l.clone()));
        }
        self.durable.clone().map(Source::Durable)
    }

    /// SUSPENDED | PAUSED | CRASHED → RESUMING on `worker`, restoring `source`.
    pub fn begin_resume(
        &self,
        source: Source,
        worker: &str,
        owner: &str,
        now_ms: u64,
    ) -> Result<Actor, TransitionError> {
        if !matches!(self.state, ActorState::Suspended | ActorState::Paused | ActorState::Crashed) {
            return Err(self.refuse("resume"));
        }
        let ok_source = match &source {
            Source::Local(l) => self.local.as_ref() == Some(l) && l.worker == worker,
            Source::Durable(d) => {
                self.durable.as_ref() == Some(d)
                    && self.local.as_ref().is_none_or(|l| l.snapshot_id.as_deref() == Some(&d.snapshot_id))
            }
        };
        if !ok_source {
            return Err(self.refuse("resume from a snapshot that is not its newest state"));
        }
        let from = self.state;
        let mut a = self.moved(ActorState::Resuming, now_ms);
        a.worker = Some(worker.to_owned());
        a.op =
            Some(Op { kind: OpKind::Resume { source }, owner: owner.to_owned(), started_ms: now_ms, from });
        Ok(a)
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

    /// RUNNING → PAUSING (LOCAL checkpoint on its worker).
    pub fn begin_pause(&self, owner: &str, now_ms: u64) -> Result<Actor, TransitionError> {
        if self.state != ActorState::Running {
            return Err(self.refuse("pause"));
        }
        let mut a = self.moved(ActorState::Pausing, now_ms);
        a.op = Some(Op {
            kind: OpKind::Pause,
            owner: owner.to_owned(),
            started_ms: now_ms,
            from: ActorState::Running,
        });
        Ok(a)
    }

    /// PAUSING → PAUSED: the snapshot is on the worker, which is free again.
    pub fn finish_pause(&self, snapshot_id: Option<&str>, now_ms: u64) -> Result<Actor, TransitionError> {
        if self.state != ActorState::Pausing {
            return Err(self.refuse("finish a pause"));
        }
        let worker = self.worker.clone().ok_or_else(|| self.refuse("finish a pause without a worker"))?;
        let mut a = self.moved(ActorState::Paused, now_ms);
        a.local = Some(LocalRef { worker, snapshot_id: snapshot_id.map(str::to_owned) });
        a.worker = None;
        a.endpoint = None;
        a.op = None;
        a.restored_from = None;
        Ok(a)
    }

    /// RUNNING → SUSPENDING (DURABLE checkpoint on its worker), or PAUSED → SUSPENDING on
    /// the worker holding the local snapshot (restore there, then checkpoint DURABLE).
    pub fn begin_suspend(&self, owner: &str, now_ms: u64) -> Result<Actor, TransitionError> {
        let previous = self.durable.as_ref().map(|d| d.snapshot_id.clone());
        let (from_paused, worker) = match self.state {
            ActorState::Running => (false, self.worker.clone()),
            ActorState::Paused => (true, self.local.as_ref().map(|l| l.worker.clone())),
            _ => return Err(self.refuse("suspend")),
        };
        let from = self.state;
        let mut a = self.moved(ActorState::Suspending, now_ms);
        a.worker = worker;
        a.op = Some(Op {
            kind: OpKind::Suspend { from_paused, previous },
            owner: owner.to_owned(),
            started_ms: now_ms,
            from,
        });
        Ok(a)
    }

    /// SUSPENDING → SUSPENDED: the snapshot is in object storage (and, the same snapshot,
    /// still on the worker: a resume there moves no data).
    pub fn finish_suspend(
        &self,
        prefix: &str,
        snapshot_id: &str,
        now_ms: u64,
    ) -> Result<Actor, TransitionError> {
        if self.state != ActorState::Suspending {
            return Err(self.refuse("finish a suspend"));
        }
        let worker = self.worker.clone().ok_or_else(|| self.refuse("finish a suspend without a worker"))?;
        let mut a = self.moved(ActorState::Suspended, now_ms);
        a.durable = Some(DurableRef {
            prefix: prefix.to_owned(),
            snapshot_id: snapshot_id.to_owned(),
            tier: Tier::Durable,
        });
        a.local = Some(LocalRef { worker, snapshot_id: Some(snapshot_id.to_owned()) });
        a.worker = None;
        a.endpoint = None;
        a.op = None;
        a.restored_from = None;
        Ok(a)
    }

    /// SUSPENDING → PAUSED on the same worker: the DURABLE checkpoint committed locally but
    /// shipping failed (or its outcome is unknown); the newest state is on the node.
    pub fn suspend_kept_local(
        &self,
        snapshot_id: Option<&str>,
        now_ms: u64,
    ) -> Result<Actor, TransitionError> {
        if self.state != ActorState::Suspending {
            return Err(self.refuse("keep a suspend local"));
        }
        let worker =
            self.worker.clone().ok_or_else(|| self.refuse("keep a suspend local without a worker"))?;
        let mut a = self.moved(ActorState::Paused, now_ms);
        a.local = Some(LocalRef { worker, snapshot_id: snapshot_id.map(str::to_owned) });
        a.worker = None;
        a.endpoint = None;
        a.op = None;
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
            Some(Op { kind: OpKind::Resume { source }, .. }) => source.snapshot_id().map(str::to_owned),
            _ => self.restored_from.clone(),
        };
        let mut a = self.moved(ActorState::Running, now_ms);
        a.endpoint = Some(endpoint.to_owned());
        a.op = None;
        a.restored_from = restored;
        if resumed {
            a.resumes += 1;
            a.reason = None;
        }
        Ok(a)
    }

    /// RESUMING → the stable state it came from (the worker never started the workload):
    /// the lease is given back, snapshot references are untouched.
    pub fn rollback(&self, now_ms: u64) -> Result<Actor, TransitionError> {
        let Some(op) = &self.op else { return Err(self.refuse("roll back")) };
        if self.state != ActorState::Resuming {
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

        let p = run.begin_pause("cp", 4).unwrap().finish_pause(Some("s1"), 5).unwrap();
        assert_eq!(p.state, ActorState::Paused);
        assert_eq!(p.worker, None);
        assert_eq!(p.local, Some(LocalRef { worker: "w1".into(), snapshot_id: Some("s1".into()) }));
        assert_eq!(p.durable, Some(golden()), "the golden reference is kept");
        // A paused actor resumes from its local snapshot, on its own node only.
        let src = p.resume_source().unwrap();
        assert!(p.begin_resume(src.clone(), "w2", "cp", 6).is_err());
        assert!(p.begin_resume(Source::Durable(golden()), "w2", "cp", 6).is_err(), "golden is older");
        let r2 = p.begin_resume(src, "w1", "cp", 6).unwrap();
        let run2 = r2.finish_resume("127.0.0.1:5", "s1", 7).unwrap();

        let s = run2.begin_suspend("cp", 8).unwrap();
        assert_eq!(s.worker.as_deref(), Some("w1"));
        let s = s.finish_suspend("file:///b/actors/a1", "s2", 9).unwrap();
        assert_eq!(s.state, ActorState::Suspended);
        assert_eq!(s.durable.as_ref().unwrap().tier, Tier::Durable);
        // The same snapshot is on w1 too; a durable resume anywhere fits its newest state.
        assert!(s.begin_resume(Source::Durable(s.durable.clone().unwrap()), "w3", "cp", 10).is_ok());
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
    fn suspending_a_paused_actor_runs_on_its_node() {
        let a = new_actor();
        let run = a
            .begin_resume(a.resume_source().unwrap(), "w2", "cp", 2)
            .unwrap()
            .finish_resume("e", "g1", 3)
            .unwrap();
        let p = run.begin_pause("cp", 4).unwrap().finish_pause(Some("s1"), 5).unwrap();
        let s = p.begin_suspend("cp", 6).unwrap();
        assert_eq!(s.worker.as_deref(), Some("w2"));
        assert!(matches!(s.op.as_ref().unwrap().kind, OpKind::Suspend { from_paused: true, .. }));
        let kept = s.suspend_kept_local(None, 7).unwrap();
        assert_eq!(kept.state, ActorState::Paused);
        assert_eq!(kept.local.unwrap().worker, "w2");
    }

    #[test]
    fn rollback_returns_to_where_it_came_from() {
        let a = new_actor();
        let r = a.begin_resume(a.resume_source().unwrap(), "w1", "cp", 2).unwrap();
        let back = r.rollback(3).unwrap();
        assert_eq!(back.state, ActorState::Suspended);
        assert_eq!(back.worker, None);
        assert_eq!(back.durable, a.durable);
        assert!(back.op.is_none());
    }

    #[test]
    fn illegal_transitions_are_refused() {
        let a = new_actor();
        assert!(a.begin_pause("cp", 1).is_err());
        assert!(a.finish_resume("e", "s", 1).is_err());
        assert!(a.finish_pause(None, 1).is_err());
        assert!(a.finish_suspend("p", "s", 1).is_err());
        assert!(a.adopt_running("e", 1).is_err());
        let r = a.begin_resume(a.resume_source().unwrap(), "w1", "cp", 2).unwrap();
        assert!(r.begin_resume(r.resume_source().unwrap(), "w1", "cp", 2).is_err(), "one resume at a time");
        assert!(r.begin_delete("cp", 2).is_err());
        let err = r.begin_pause("cp", 2).unwrap_err();
        assert_eq!(err.to_string(), "actor a1: cannot pause while RESUMING");
    }

    /// Every event the control plane can apply, with its arguments.
    #[derive(Clone, Debug)]
    enum Event {
        Resume(u8),
        FinishResume,
        FailResume,
        Pause,
        FinishPause(bool),
        Suspend,
        FinishSuspend,
        SuspendKeptLocal,
        Adopt,
        Rollback,
        Crash,
        Delete,
        DeleteRelease,
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            (0u8..3).prop_map(Event::Resume),
            Just(Event::FinishResume),
            Just(Event::FailResume),
            Just(Event::Pause),
            any::<bool>().prop_map(Event::FinishPause),
            Just(Event::Suspend),
            Just(Event::FinishSuspend),
            Just(Event::SuspendKeptLocal),
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
            Event::FinishResume => a.finish_resume("e", &format!("s{t}"), t).ok(),
            Event::FailResume => a.fail_resume("refused", t).ok(),
            Event::Pause => a.begin_pause("cp", t).ok(),
            Event::FinishPause(known) => a.finish_pause(known.then(|| format!("s{t}")).as_deref(), t).ok(),
            Event::Suspend => a.begin_suspend("cp", t).ok(),
            Event::FinishSuspend => a.finish_suspend("p", &format!("s{t}"), t).ok(),
            Event::SuspendKeptLocal => a.suspend_kept_local(None, t).ok(),
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
        /// (never two workers at once), a snapshot reference is never lost, and a PAUSED
        /// actor's resume only ever targets the node holding its snapshot.
        #[test]
        fn invariants_hold_for_every_event_sequence(events in proptest::collection::vec(event(), 1..60)) {
            let mut a = new_actor();
            let mut held: Option<String> = None;
            for (t, e) in events.iter().enumerate() {
                let t = t as u64 + 10;
                let Some(next) = apply(&a, e, t) else { continue };
                prop_assert!(next.lease_invariant_holds(), "{e:?}: {next:?}");
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
                if a.state == ActorState::Paused && next.state == ActorState::Resuming {
                    prop_assert_eq!(next.worker.as_ref(), a.local.as_ref().map(|l| &l.worker));
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
