//! Settling intents from the worker's state: after a lost answer, after this replica
//! restarted, and for replicas that died (their liveness lease expired).
//!
//! | intent | the worker (once it is no longer busy with the actor) | outcome |
//! |---|---|---|
//! | RESUMING | runs the actor | RUNNING |
//! | RESUMING | does not | rolled back to where it came from, snapshot intact |
//! | PAUSING/SUSPENDING | runs the actor (after a grace for a request still on its way) | RUNNING |
//! | SUSPENDING | the intended snapshot is in object storage | SUSPENDED at it |
//! | PAUSING/SUSPENDING | has the intended snapshot, complete | PAUSED at it |
//! | PAUSING/SUSPENDING | has it in quarantine | CRASHED naming it and the fix (`ateom snapshots recover`, `ate resume`) |
//! | SUSPENDING of a PAUSED actor | no new snapshot, the paused one is there | PAUSED at the paused one (nothing ran meanwhile) |
//! | PAUSING/SUSPENDING | none of these | CRASHED naming the newest snapshot that exists and its age |
//! | DELETING | — | the delete is finished |
//!
//! A worker still restoring, checkpointing or pushing the actor is waited for (bounded by
//! `settle_timeout`, then looked at again on the next pass); nothing is ever guessed from
//! "the newest snapshot on the node".

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ate_core::resource::WorkerTarget;
use ate_core::store::{TemplateRecord, Versioned};
use ate_core::{Actor, ActorState, OpKind};
use tokio::task::JoinHandle;
use tracing::{Instrument, error, info, info_span, warn};

use super::gate::Gate;
use super::{Controller, CtlError, now_ms};
use crate::worker::{Caps, Failure, WorkerError, running_name};

/// How long after a PAUSING/SUSPENDING intent was written its checkpoint request may still
/// reach the worker.
const CHECKPOINT_GRACE_MS: u64 = 5_000;

impl Controller {
    /// Finishes or rolls back every intent that is due (see [`Self::reconcile_pass`]) and
    /// waits for them; restarts golden builds interrupted by a restart. Returns how many
    /// intents settled; those whose worker does not answer are left for the next pass.
    pub async fn reconcile(self: &Arc<Self>) -> Result<usize, CtlError> {
        let mut done = 0;
        for t in self.reconcile_pass().await? {
            match t.await {
                Ok(Ok(true)) => done += 1,
                Ok(Ok(false)) => {}
                Ok(Err(e)) => warn!(error = %e, "reconciling an actor (will retry)"),
                Err(e) => error!(error = %e, "reconcile task"),
            }
        }
        if self.leading() {
            self.reconcile_golden().await?;
        }
        Ok(done)
    }

    /// Starts settling, each in a task of its own, the intents that are due: this replica's
    /// own (left by its previous life, or whose worker did not answer), and, only while this
    /// replica leads ([`super::leader`]), those of replicas whose liveness lease expired
    /// (they died: taken over at once) and as a last resort those of live replicas older
    /// than `stale_op`. An actor whose operation lock is held here (an operation under way,
    /// or a settle of a previous pass) is skipped.
    pub async fn reconcile_pass(
        self: &Arc<Self>,
    ) -> Result<Vec<JoinHandle<Result<bool, CtlError>>>, CtlError> {
        let now = now_ms();
        let mut alive: HashMap<String, bool> = HashMap::new();
        let mut tasks = Vec::new();
        let leading = self.leading();
        for a in self.actors().await? {
            let Some(op) = &a.value.op else { continue };
            if op.owner != self.cfg.owner {
                if !leading {
                    continue;
                }
                let stale = now.saturating_sub(op.started_ms) > self.cfg.stale_op.as_millis() as u64;
                let owner_alive = match alive.get(&op.owner) {
                    Some(b) => *b,
                    None => {
                        let b = self.replica_alive(&op.owner).await?;
                        alive.insert(op.owner.clone(), b);
                        b
                    }
                };
                if owner_alive && !stale {
                    continue;
                }
            }
            let ctl = self.clone();
            let name = a.value.name.clone();
            let owner = op.owner.clone();
            tasks.push(tokio::spawn(async move {
                let gate = ctl.gate(&name);
                let Ok(_lock) = gate.op.clone().try_lock_owned() else { return Ok(false) };
                let span = info_span!("actor", actor = %name);
                let taken_over = owner != ctl.cfg.owner;
                if taken_over {
                    info!(parent: &span, %owner, "taking over the operation of a replica that is gone");
                }
                let r = ctl.reconcile_one(&name, &gate).instrument(span).await;
                if taken_over && matches!(r, Ok(true)) {
                    ctl.metrics.inc("takeovers");
                }
                r
            }));
        }
        Ok(tasks)
    }

    /// The worker's capabilities once it is no longer busy with `me` (a restore, checkpoint
    /// or push it is still carrying out), waiting up to `settle_timeout`. A worker still
    /// busy after that, or not answering, is an error: the caller retries later.
    pub(super) async fn settled_caps(
        &self,
        worker: &str,
        target: &WorkerTarget,
        me: &str,
    ) -> Result<Caps, CtlError> {
        let until = Instant::now() + self.cfg.settle_timeout;
        loop {
            let caps = self.workers.caps(worker, target, Duration::from_secs(5)).await?;
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

    /// The health loop found `worker` not answering (its record says unhealthy).
    pub(super) async fn worker_silent(&self, worker: &str) -> bool {
        self.worker_map().await.ok().and_then(|m| m.get(worker).map(|w| !w.healthy)).unwrap_or(false)
    }

    pub(super) async fn reconcile_one(&self, actor: &str, gate: &Arc<Gate>) -> Result<bool, CtlError> {
        let a = self.actor(actor).await?;
        if !a.value.state.is_intermediate() {
            return Ok(false);
        }
        match a.value.state {
            ActorState::Deleting => {
                info!("reconcile: finishing the delete");
                self.delete_locked(actor, gate).await?;
            }
            ActorState::Resuming => {
                let t = self.template(&a.value.template).await?;
                self.settle_resuming(a, &t.value, gate).await?;
            }
            ActorState::Pausing | ActorState::Suspending => {
                let t = self.template(&a.value.template).await?;
                self.settle_checkpoint(a, &t.value, gate, None).await?;
            }
            s => return Err(CtlError::Conflict(format!("cannot reconcile {s}"))),
        }
        self.metrics.inc("reconciled");
        Ok(true)
    }

    /// RESUMING whose answer was never seen: RUNNING if the worker runs it, else rolled back.
    async fn settle_resuming(
        &self,
        a: Versioned<Actor>,
        t: &TemplateRecord,
        gate: &Arc<Gate>,
    ) -> Result<Versioned<Actor>, CtlError> {
        let worker =
            a.value.worker.clone().ok_or_else(|| CtlError::Conflict("RESUMING without a worker".into()))?;
        let target = self.worker_target(&worker).await?;
        let me = running_name(t, &a.value.name);
        let caps = match self.settled_caps(&worker, &target, &me).await {
            Ok(c) => c,
            Err(e) if self.worker_silent(&worker).await => {
                warn!(%worker, error = %e, "reconcile: the worker does not answer (its host may be lost): the resume is rolled back; a copy it may have started serves nothing and is cleared as a stray if it returns");
                return self.commit(&a, a.value.rollback(now_ms())?).await;
            }
            Err(e) => return Err(e),
        };
        if caps.runs(&me) {
            info!(%worker, "reconcile: the worker runs it: RUNNING");
            let endpoint = caps.info.host_endpoint.clone();
            let done = self.commit(&a, a.value.adopt_running(&endpoint, now_ms())?).await?;
            gate.set_endpoint(Some(endpoint));
            Ok(done)
        } else {
            info!(%worker, state = %caps.state, "reconcile: the restore never happened or failed: rolled back");
            self.commit(&a, a.value.rollback(now_ms())?).await
        }
    }

    /// Settles a PAUSING/SUSPENDING actor from the worker's state and the snapshots that
    /// exist (see the module table). `failure`: the worker call's error, when this follows
    /// one (None: reconciliation without an answer to go by).
    pub(super) async fn settle_checkpoint(
        &self,
        a: Versioned<Actor>,
        t: &TemplateRecord,
        gate: &Arc<Gate>,
        failure: Option<&WorkerError>,
    ) -> Result<Versioned<Actor>, CtlError> {
        let actor = a.value.name.clone();
        let worker = a
            .value
            .worker
            .clone()
            .ok_or_else(|| CtlError::Conflict(format!("{} without a worker", a.value.state)))?;
        let target = self.worker_target(&worker).await?;
        let me = running_name(t, &actor);
        let verdict = failure.map(WorkerError::failure).filter(|f| *f != Failure::LostAnswer);
        if failure.is_some() && verdict.is_none() {
            self.metrics.inc("lost_answers");
        }
        let mut caps = self.settled_caps(&worker, &target, &me).await?;
        if caps.runs(&me) && verdict.is_none() {
            // No verdict: the checkpoint request may still be on its way (it is sent right
            // after the intent is written). Give it until 5 s after the intent began.
            let started = a.value.op.as_ref().map_or(0, |o| o.started_ms);
            let left = (started + CHECKPOINT_GRACE_MS).saturating_sub(now_ms()).min(CHECKPOINT_GRACE_MS);
            let until = Instant::now() + Duration::from_millis(left);
            while caps.runs(&me) && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(100)).await;
                caps = self.settled_caps(&worker, &target, &me).await?;
            }
        }
        let now = now_ms();
        if caps.runs(&me) {
            info!(%worker, from = %a.value.state, error = ?failure.map(ToString::to_string),
                "the checkpoint did not happen; the workload keeps running: RUNNING");
            let endpoint = caps.info.host_endpoint.clone();
            let done = self.commit_retrying(&a, a.value.adopt_running(&endpoint, now)?).await?;
            gate.set_endpoint(Some(endpoint));
            return Ok(done);
        }
        let cause = match failure {
            Some(e) => e.to_string(),
            None => "its answer was lost: the control plane restarted or lost the connection".into(),
        };
        let lost = caps
            .lost_reason(&me)
            .map(|r| format!("; the worker reports the workload lost: {r}"))
            .unwrap_or_default();
        let Some(id) = a.value.intended_snapshot().map(str::to_owned) else {
            // An intent of an older ate, without the id: its outcome cannot be told from the
            // snapshots that exist, and guessing could pick older state.
            let what = format!(
                "the {} on worker {worker} ended without a verdict ({cause}{lost}) and its intent names no snapshot id (written by an older ate)",
                a.value.state
            );
            let reason = self.missing_reason(t, &a.value, "", &what).await;
            warn!(%reason, "CRASHED");
            return self.commit_retrying(&a, a.value.crash(&reason, now)).await;
        };
        let local = self
            .workers
            .list_snapshots(&worker, &target, t, &actor, Duration::from_secs(10))
            .await
            .map_err(CtlError::Worker)?;
        let here = local.iter().find(|s| s.id == id);
        let suspending = a.value.state == ActorState::Suspending;
        let prefix = t.actor_prefix(&actor);
        let shipped = suspending && self.durable_exists(&prefix, &id).await?;
        let from_paused_at = match &a.value.op {
            Some(ate_core::Op { kind: OpKind::Suspend { from_paused: true, .. }, .. }) => {
                a.value.local.as_ref().map(|l| l.snapshot_id.clone())
            }
            _ => None,
        };
        let next = if shipped {
            info!(%worker, snapshot = %id, "the durable checkpoint is in object storage: SUSPENDED at exactly it");
            a.value.finish_suspend(&prefix, now)?
        } else if here.is_some_and(|s| s.quarantined) {
            let reason = format!(
                "the checkpoint into snapshot {id} on worker {worker} could not be committed ({cause}); the capture is kept whole in quarantine on worker {worker}. Free space there, run `ateom snapshots recover` on it, then `ate resume actor {actor}`: it resumes exactly snapshot {id}"
            );
            warn!(%reason, "CRASHED (quarantined)");
            a.value.checkpoint_quarantined(&reason, now)?
        } else if here.is_some() && !suspending {
            info!(%worker, snapshot = %id, "the checkpoint committed: PAUSED at exactly it");
            a.value.finish_pause(now)?
        } else if here.is_some() {
            info!(%worker, snapshot = %id, "the durable checkpoint committed locally but is not in object storage: PAUSED at exactly it");
            a.value.suspend_kept_local(now)?
        } else if let Some(p) = from_paused_at.filter(|p| local.iter().any(|s| s.id == *p && !s.quarantined))
        {
            info!(%worker, paused_at = %p, "the suspend of a paused actor made no snapshot: PAUSED at its snapshot again");
            a.value.rollback(now)?
        } else {
            let what = format!(
                "the {} on worker {worker} did not complete ({cause}{lost}) and the workload is no longer running: its snapshot {id}",
                if suspending { "suspend" } else { "pause" }
            );
            let reason = self.missing_reason(t, &a.value, &id, &what).await;
            warn!(%reason, "CRASHED");
            a.value.crash(&reason, now)
        };
        self.commit_retrying(&a, next).await
    }
}
