//! Pause and suspend: LOCAL and DURABLE checkpoints into a snapshot id chosen and recorded
//! before the worker is called.
//!
//! ```text
//!  RUNNING ──(drain; intent: PAUSING|SUSPENDING with snapshot id S)──▶ CheckpointWorkload(id S)
//!      answer S ──▶ PAUSED at S | SUSPENDED at S
//!      anything else ──▶ settled from the worker's state (reconcile::settle_checkpoint):
//!          still runs ──▶ RUNNING;  S exists ──▶ PAUSED/SUSPENDED at S;
//!          S quarantined ──▶ CRASHED naming S and the fix;  else CRASHED naming the newest
//!  PAUSED at P ──(intent: SUSPENDING with id S)──▶ RestoreWorkload(P) on its node ──▶ the same
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use ate_core::resource::Durability;
use ate_core::snapshot::new_snapshot_id;
use ate_core::store::{TemplateRecord, Versioned};
use ate_core::{Actor, ActorState, Tier};
use tracing::{debug, info, warn};

use super::gate::Gate;
use super::{Controller, CtlError, now_ms};
use crate::worker::{Failure, WorkerError, running_name};

impl Controller {
    pub(super) async fn pause_locked(&self, actor: &str, gate: &Arc<Gate>) -> Result<(), CtlError> {
        let a = self.actor(actor).await?;
        match a.value.state {
            ActorState::Running => {}
            ActorState::Paused | ActorState::Suspended => return Ok(()),
            s => {
                return Err(CtlError::Conflict(format!("actor {actor} is {s}; only a RUNNING actor pauses")));
            }
        }
        let t = self.template(&a.value.template).await?;
        let policy = t.value.spec.snapshot.durability;
        gate.drain(self.cfg.drain_timeout).await?;
        // `durable`: every pause is a DURABLE checkpoint (see `durability`).
        let r = self.checkpoint_running(a, gate, policy == Durability::Durable).await;
        gate.undrain();
        if r.is_ok() && policy == Durability::Both {
            self.want_durable_copy(actor);
        }
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
        let id = new_snapshot_id(now, rand::random());
        let next = if durable {
            a.value.begin_suspend(&id, &self.cfg.owner, now)?
        } else {
            a.value.begin_pause(&id, &self.cfg.owner, now)?
        };
        let cur = self.commit(&a, next).await?;
        gate.set_endpoint(None);
        self.checkpoint_and_finish(cur, &t.value, gate).await
    }

    /// Asks the worker to checkpoint into the intent's snapshot and writes the end: the
    /// answer's snapshot when it is the intended one; otherwise whatever the worker's state
    /// says ([`Controller::settle_checkpoint`]).
    async fn checkpoint_and_finish(
        &self,
        cur: Versioned<Actor>,
        t: &TemplateRecord,
        gate: &Arc<Gate>,
    ) -> Result<(), CtlError> {
        let durable = cur.value.state == ActorState::Suspending;
        let actor = cur.value.name.clone();
        let worker = cur
            .value
            .worker
            .clone()
            .ok_or_else(|| CtlError::Conflict(format!("actor {actor} checkpoints without a worker")))?;
        let id = cur
            .value
            .intended_snapshot()
            .ok_or_else(|| CtlError::Conflict(format!("actor {actor} checkpoints without a snapshot id")))?
            .to_owned();
        let target = self.worker_target(&worker).await?;
        let prefix = durable.then(|| t.actor_prefix(&actor));
        let previous = cur.value.durable.clone();
        let keep = cur.value.referenced_snapshots();
        let answer = self
            .workers
            .checkpoint(
                &worker,
                &target,
                t,
                &actor,
                prefix.as_deref(),
                Some(&id),
                &keep,
                self.cfg.rpc_timeout,
            )
            .await;
        let e = match answer {
            Ok(ck) if ck.snapshot_id == id => {
                let done = match &prefix {
                    Some(p) => cur.value.finish_suspend(p, now_ms())?,
                    None => cur.value.finish_pause(now_ms())?,
                };
                self.commit_retrying(&cur, done).await?;
                self.checkpointed(durable, &worker, &id, previous.as_ref(), prefix.as_deref());
                return Ok(());
            }
            Ok(ck) => WorkerError {
                worker: worker.clone(),
                op: "CheckpointWorkload",
                code: tonic::Code::Internal,
                message: format!(
                    "the worker wrote snapshot {:?} instead of the requested {id} (a worker that ignores caller-chosen snapshot ids?)",
                    ck.snapshot_id
                ),
            },
            Err(e) => e,
        };
        warn!(%worker, snapshot = %id, error = %e, "checkpoint without the expected answer; settling it from the worker's state");
        let settled = self.settle_checkpoint(cur, t, gate, Some(&e)).await?;
        match (settled.value.state, durable) {
            (ActorState::Paused, false) | (ActorState::Suspended, true) => {
                self.checkpointed(durable, &worker, &id, previous.as_ref(), prefix.as_deref());
                Ok(())
            }
            (ActorState::Crashed, _) => {
                Err(CtlError::Crashed { actor, reason: settled.value.reason.unwrap_or_default() })
            }
            _ => Err(CtlError::Worker(e)),
        }
    }

    /// Bookkeeping after a checkpoint reached its goal: metrics, and the durable snapshot a
    /// suspend replaced is deleted.
    fn checkpointed(
        &self,
        durable: bool,
        worker: &str,
        id: &str,
        previous: Option<&ate_core::DurableRef>,
        prefix: Option<&str>,
    ) {
        self.metrics.inc(if durable { "suspends" } else { "pauses" });
        info!(%worker, snapshot = %id, "{}", if durable { "suspended" } else { "paused" });
        if let (Some(prev), Some(p)) = (previous, prefix)
            && prev.tier == Tier::Durable
            && prev.snapshot_id != id
        {
            self.forget_durable(p.to_owned(), prev.snapshot_id.clone());
        }
    }

    /// Deletes a replaced durable snapshot of an actor (best effort, in the background).
    pub(super) fn forget_durable(&self, prefix: String, id: String) {
        let Ok(store) = self.snapshot_store(&prefix) else { return };
        tokio::spawn(async move {
            if let Err(e) = store.delete(&id).await {
                debug!(%prefix, %id, error = %e, "removing a replaced durable snapshot");
            }
        });
    }

    /// `make_room`: a PAUSED actor's node is busy — evict an idle actor there (bounded
    /// wait) rather than give up (explicit suspends; the idle policy just tries later).
    pub(super) async fn suspend_locked(
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
            ActorState::Paused => self.suspend_paused(a, gate).await,
            ActorState::Suspended => Ok(()),
            s => Err(CtlError::Conflict(format!(
                "actor {actor} is {s}; only RUNNING or PAUSED actors suspend"
            ))),
        }
    }

    /// PAUSED at P → SUSPENDING: restore P on the node holding it, then checkpoint DURABLE.
    async fn suspend_paused(&self, a: Versioned<Actor>, gate: &Arc<Gate>) -> Result<(), CtlError> {
        let actor = a.value.name.clone();
        let t = self.template(&a.value.template).await?;
        let paused_at = a.value.local.as_ref().map(|l| l.snapshot_id.clone()).unwrap_or_default();
        if paused_at.is_empty() {
            return Err(CtlError::Conflict(format!(
                "actor {actor}'s record names no exact paused snapshot (written by an older ate); choose one: `ate snapshots actor {actor}`, `ate resume actor {actor} --from-snapshot ID`"
            )));
        }
        let id = new_snapshot_id(now_ms(), rand::random());
        let next = a.value.begin_suspend(&id, &self.cfg.owner, now_ms())?;
        let worker = next
            .worker
            .clone()
            .ok_or_else(|| CtlError::Conflict(format!("paused actor {actor} has no node")))?;
        let cur = match self.commit(&a, next).await {
            Ok(c) => c,
            Err(CtlError::Store(e)) if e.is_conflict() => {
                return Err(CtlError::Unavailable(format!("worker {worker} holding the snapshot is busy")));
            }
            Err(e) => return Err(e),
        };
        let target = self.worker_target(&worker).await?;
        let keep = cur.value.referenced_snapshots();
        let restored = self
            .workers
            .restore(&worker, &target, &t.value, &actor, None, &paused_at, &keep, self.cfg.rpc_timeout)
            .await;
        let e = match restored {
            Ok(_) => return self.checkpoint_and_finish(cur, &t.value, gate).await,
            Err(e) => e,
        };
        match e.failure() {
            Failure::NotReached => {
                let back = cur.value.rollback(now_ms())?;
                self.commit_retrying(&cur, back).await?;
                Err(CtlError::Unavailable(format!(
                    "worker {worker} holding paused snapshot {paused_at} could not be reached ({e}); actor {actor} is PAUSED at {paused_at} again"
                )))
            }
            Failure::LostAnswer | Failure::Busy => {
                if e.failure() == Failure::LostAnswer {
                    self.metrics.inc("lost_answers");
                }
                let me = running_name(&t.value, &actor);
                match self.settled_caps(&worker, &target, &me).await {
                    Ok(c) if c.runs(&me) => self.checkpoint_and_finish(cur, &t.value, gate).await,
                    Ok(c) => {
                        let back = cur.value.rollback(now_ms())?;
                        self.commit_retrying(&cur, back).await?;
                        Err(CtlError::Unavailable(format!(
                            "restoring paused snapshot {paused_at} on worker {worker} to suspend it did not happen ({e}; the worker is {}); actor {actor} is PAUSED at {paused_at} again",
                            if c.state.is_empty() { "idle" } else { c.state.as_str() }
                        )))
                    }
                    Err(err) => Err(CtlError::Unavailable(format!(
                        "restoring paused snapshot {paused_at} on worker {worker} has not settled ({err}); reconciliation finishes it"
                    ))),
                }
            }
            Failure::SnapshotMissing => {
                let what = format!("paused snapshot {paused_at} on worker {worker}");
                let reason = self.missing_reason(&t.value, &cur.value, &paused_at, &what).await;
                warn!(%reason, "actor CRASHED");
                self.commit_retrying(&cur, cur.value.crash(&reason, now_ms())).await?;
                Err(CtlError::Crashed { actor, reason })
            }
            _ => {
                let reason = format!(
                    "restore of local snapshot {paused_at} on worker {worker} (to suspend it) failed: {e}"
                );
                warn!(%reason, "actor CRASHED");
                self.commit_retrying(&cur, cur.value.crash(&reason, now_ms())).await?;
                Err(CtlError::Crashed { actor, reason })
            }
        }
    }
}
