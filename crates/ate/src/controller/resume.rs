//! Resumes: the router's entry ([`Controller::acquire`]), placement, the restore of exactly
//! the recorded snapshot, lost restore answers, eviction, and explicit resumes from a chosen
//! snapshot (`--from-snapshot`).
//!
//! A restore whose answer is lost (transport error, our own deadline) or that the worker
//! refuses as busy is not a failure of the snapshot: the worker's state decides. While the
//! worker is still restoring the actor, the actor stays RESUMING and keeps the worker's lease
//! (nothing else is placed there); once it settles, the actor is RUNNING if the worker runs
//! it, else it is rolled back to the state it came from, its snapshot intact, and the resume
//! is tried again. A snapshot the worker does not have makes the actor CRASHED with a reason
//! that names the newest snapshot that does exist — never a silent fallback to older state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ate_core::resource::WorkerTarget;
use ate_core::store::{Holder, TemplateRecord, Versioned};
use ate_core::{Actor, ActorState, Decision, DurableRef, Source, Tier, place};
use tracing::{Instrument, debug, info, info_span, warn};

use super::gate::{Gate, Inflight};
use super::snapshots::Found;
use super::{Controller, CtlError, Lock, now_ms};
use crate::worker::{Failure, WorkerError, running_name};

/// What a resume is for.
#[derive(Clone, Debug)]
pub(super) enum Mode {
    /// Traffic: a CRASHED actor stays CRASHED (no retry storm).
    Traffic,
    /// `ate resume`: also retries a CRASHED actor from its recorded snapshot.
    Explicit,
    /// `ate resume --from-snapshot`: exactly this snapshot, whatever the newest state is;
    /// `prefer`: a worker that holds a local copy of it.
    From { source: Source, prefer: Option<String> },
}

/// How a restore ended, when it did not fail.
enum Restore {
    Running,
    /// The worker did not start the workload (its answer was lost, or it was busy): the actor
    /// is back in the state it came from, its snapshot intact. Why, for the caller.
    RolledBack(String),
}

impl Controller {
    // ---------------------------------------------------------------- the router's entry

    /// Waits until `actor` is RUNNING (resuming it if needed, once however many callers
    /// ask) and registers a request in flight.
    pub async fn acquire(self: &Arc<Self>, actor: &str) -> Result<Inflight, CtlError> {
        let gate = self.gate_existing(actor).await?;
        if let Some(i) = self.enter_current(actor, &gate).await {
            return Ok(i);
        }
        // The resume runs to its end even if this request's client goes away (see run_to_end).
        let (ctl, actor) = (self.clone(), actor.to_owned());
        super::run_to_end(async move {
            let deadline = Instant::now() + ctl.cfg.resume_timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let lock = ctl.op_lock(&gate, left, "waiting for it to resume").await?;
                if let Some(i) = ctl.enter_current(&actor, &gate).await {
                    return Ok(i);
                }
                let span = info_span!("actor", actor = %actor);
                ctl.resume_locked(&actor, &gate, Mode::Traffic, deadline).instrument(span).await?;
                if let Some(i) = ctl.enter_current(&actor, &gate).await {
                    drop(lock);
                    return Ok(i);
                }
                drop(lock);
                if Instant::now() > deadline {
                    return Err(CtlError::Unavailable(format!("actor {actor} did not stay running")));
                }
            }
        })
        .await
    }

    /// A request in flight if `actor` is RUNNING here already (no resume, no store read with
    /// a store of its own); None otherwise. Allocates nothing for an unknown actor.
    pub async fn enter_running(&self, actor: &str) -> Option<Inflight> {
        let gate = self.gates.lock().unwrap_or_else(|p| p.into_inner()).get(actor).cloned()?;
        self.enter_current(actor, &gate).await
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

    // ---------------------------------------------------------------- resume

    pub(super) async fn resume_locked(
        self: &Arc<Self>,
        actor: &str,
        gate: &Arc<Gate>,
        mode: Mode,
        deadline: Instant,
    ) -> Result<(), CtlError> {
        let mut started = Instant::now();
        let local_deadline = started + self.cfg.local_wait;
        let chosen = match &mode {
            Mode::From { source, prefer } => Some((source.clone(), prefer.clone())),
            _ => None,
        };
        loop {
            let a = self.actor(actor).await?;
            match a.value.state {
                ActorState::Running if chosen.is_none() => {
                    gate.set_endpoint(a.value.endpoint.clone());
                    return Ok(());
                }
                ActorState::Running => {
                    return Err(CtlError::Conflict(format!(
                        "actor {actor} is RUNNING; pause or suspend it before resuming it from another snapshot"
                    )));
                }
                ActorState::Crashed if matches!(mode, Mode::Traffic) => {
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
            let newest = match chosen.as_ref().map(|c| c.0.clone()).or_else(|| a.value.resume_source()) {
                Some(s) => s,
                None => return self.crash_resume(&a, "no snapshot to resume from").await,
            };
            if newest.snapshot_id().is_empty() {
                let what = format!(
                    "the record of actor {actor} (written by an older ate) names no exact snapshot, only \"the newest on worker {}\"; that",
                    a.value.local.as_ref().map_or("?", |l| l.worker.as_str())
                );
                let reason = self.missing_reason(&t.value, &a.value, "", &what).await;
                return self.crash_resume(&a, &reason).await;
            }
            let (local_on, durable_usable, prefer) = match &chosen {
                Some((Source::Local(l), _)) => (Some(l.worker.clone()), None, None),
                Some((Source::Durable(d), prefer)) => (None, Some(d.clone()), prefer.clone()),
                None => {
                    // The durable snapshot may be used when it is the newest state itself.
                    let durable_usable = a.value.durable.clone().filter(|d| match &a.value.local {
                        None => true,
                        Some(l) => l.snapshot_id == d.snapshot_id,
                    });
                    // A SUSPENDED actor whose snapshot also stayed on its node restores from
                    // the durable tier, preferably on that node (no data moves) but on any
                    // fitting free worker otherwise; only a PAUSED actor (local snapshot newer
                    // than any durable one) is tied to its node.
                    let local_on = match &newest {
                        Source::Local(l) if durable_usable.is_none() => Some(l.worker.clone()),
                        _ => None,
                    };
                    (local_on, durable_usable, a.value.local.as_ref().map(|l| l.worker.clone()))
                }
            };
            let waited = Instant::now() > local_deadline;
            let provenance = match &durable_usable {
                Some(d) if local_on.is_none() || waited => match self.provenance(d).await {
                    Ok(p) => Some(p),
                    Err(u) => {
                        self.metrics.resume_failed(d.tier);
                        let reason = if u.missing {
                            let what =
                                format!("{} snapshot {} under {}", d.tier.as_str(), d.snapshot_id, d.prefix);
                            self.missing_reason(&t.value, &a.value, &d.snapshot_id, &what).await
                        } else {
                            u.message
                        };
                        warn!(%reason, "resume impossible: snapshot unreadable");
                        return self.crash_resume(&a, &reason).await;
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
                prefer: prefer.as_deref(),
                waited,
                min_free_bytes: self.cfg.min_snapshot_free,
            };
            match place(&req, &candidates) {
                Decision::Use { worker, local } => {
                    let source = match (&chosen, local) {
                        (Some((s, _)), _) => s.clone(),
                        (None, true) => newest.clone(),
                        // The durable snapshot (restored by id through its prefix; a local copy
                        // of the same snapshot on that node is found without a pull).
                        (None, false) => match &durable_usable {
                            Some(d) => Source::Durable(d.clone()),
                            None => {
                                return Err(CtlError::Conflict(
                                    "placement chose a durable snapshot the actor does not have".into(),
                                ));
                            }
                        },
                    };
                    let owner = &self.cfg.owner;
                    let resuming = if chosen.is_some() {
                        a.value.begin_resume_from(source.clone(), &worker, owner, now_ms())?
                    } else {
                        a.value.begin_resume(source.clone(), &worker, owner, now_ms())?
                    };
                    let resuming = match self.commit(&a, resuming).await {
                        Ok(r) => r,
                        Err(CtlError::Store(e)) if e.is_conflict() => continue, // re-read, re-place
                        Err(e) => return Err(e),
                    };
                    match self.do_restore(resuming, &t.value, &worker, source, gate, started).await? {
                        Restore::Running => return Ok(()),
                        Restore::RolledBack(why) => {
                            if Instant::now() > deadline {
                                return Err(CtlError::Unavailable(why));
                            }
                            info!(%why, "trying the resume again");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            started = Instant::now();
                        }
                    }
                }
                Decision::Wait { reason, busy } => {
                    // The worker holding the newest state does not answer (its host may be
                    // lost): say so once the local wait is over, instead of holding every
                    // request for the whole resume timeout.
                    let silent = waited
                        && local_on
                            .as_deref()
                            .is_some_and(|h| candidates.iter().any(|c| c.name == h && !c.healthy));
                    if silent || Instant::now() > deadline {
                        let why = match silent {
                            true => self.unavailable_note(&a.value).await.unwrap_or(reason),
                            false => reason,
                        };
                        return Err(CtlError::Unavailable(format!("cannot resume actor {actor} now: {why}")));
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
                    return self.crash_resume(&a, &reason).await;
                }
            }
        }
    }

    /// A stable actor that cannot resume: CRASHED with `reason` (its snapshot references
    /// kept, so `ate resume` retries once the cause is fixed).
    async fn crash_resume(&self, a: &Versioned<Actor>, reason: &str) -> Result<(), CtlError> {
        let c = self.commit(a, a.value.crash(reason, now_ms())).await?;
        Err(CtlError::Crashed { actor: a.value.name.clone(), reason: c.value.reason.unwrap_or_default() })
    }

    async fn do_restore(
        &self,
        resuming: Versioned<Actor>,
        t: &TemplateRecord,
        worker: &str,
        source: Source,
        gate: &Arc<Gate>,
        started: Instant,
    ) -> Result<Restore, CtlError> {
        let actor = resuming.value.name.clone();
        let target = self.worker_target(worker).await?;
        let prefix = match &source {
            Source::Local(_) => None,
            Source::Durable(d) => Some(d.prefix.clone()),
        };
        let id = source.snapshot_id().to_owned();
        let keep = resuming.value.referenced_snapshots();
        info!(%worker, tier = source.tier().as_str(), snapshot = %id, "resuming");
        let r = self
            .workers
            .restore(worker, &target, t, &actor, prefix.as_deref(), &id, &keep, self.cfg.rpc_timeout)
            .await;
        let e = match r {
            Ok(r) => {
                if r.snapshot_id != id && !r.snapshot_id.is_empty() {
                    warn!(asked = %id, restored = %r.snapshot_id, "the worker restored another snapshot than asked");
                }
                let running = resuming.value.finish_resume(&r.endpoint, &id, now_ms())?;
                let running = self.commit_retrying(&resuming, running).await?;
                gate.set_endpoint(running.value.endpoint.clone());
                let took = started.elapsed();
                self.metrics.resumed(source.tier(), took);
                info!(%worker, tier = source.tier().as_str(), snapshot = %id,
                    pulled_bytes = r.pulled_bytes, resume_ms = took.as_millis() as u64, "running");
                return Ok(Restore::Running);
            }
            Err(e) => e,
        };
        match e.failure() {
            Failure::LostAnswer | Failure::Busy => {
                self.settle_restore(resuming, t, worker, &target, &source, &e, gate, started).await
            }
            Failure::NotReached => {
                // Nothing started there (the worker, maybe its host, is gone): back to where the
                // actor came from, and placement again (health marks the worker unhealthy).
                let from = resuming.value.op.as_ref().map_or(ActorState::Crashed, |o| o.from);
                let back = resuming.value.rollback(now_ms())?;
                self.commit_retrying(&resuming, back).await?;
                Ok(Restore::RolledBack(format!(
                    "worker {worker} could not be reached ({e}); actor {actor} is {from} again with its snapshot intact"
                )))
            }
            Failure::SnapshotMissing => {
                self.metrics.resume_failed(source.tier());
                let what = format!("{source}");
                let missing = self.missing_reason(t, &resuming.value, &id, &what).await;
                let reason = format!("restore on worker {worker} refused ({:?}): {missing}", e.code);
                warn!(%reason, "resume failed; actor CRASHED");
                let crashed = resuming.value.fail_resume(&reason, now_ms())?;
                self.commit_retrying(&resuming, crashed).await?;
                Err(CtlError::Crashed { actor, reason })
            }
            _ => {
                let reason = format!("restore of {source} on worker {worker} failed: {e}");
                warn!(code = ?e.code, %reason, "resume failed; actor CRASHED");
                self.metrics.resume_failed(source.tier());
                let crashed = resuming.value.fail_resume(&reason, now_ms())?;
                self.commit_retrying(&resuming, crashed).await?;
                Err(CtlError::Crashed { actor, reason })
            }
        }
    }

    /// A restore without a verdict (lost answer) or refused as busy: wait for the worker to
    /// settle, then RUNNING if it runs the actor, else roll back (snapshot intact). A worker
    /// that does not settle keeps the intent and its lease for reconciliation.
    #[allow(clippy::too_many_arguments)]
    async fn settle_restore(
        &self,
        resuming: Versioned<Actor>,
        t: &TemplateRecord,
        worker: &str,
        target: &WorkerTarget,
        source: &Source,
        e: &WorkerError,
        gate: &Arc<Gate>,
        started: Instant,
    ) -> Result<Restore, CtlError> {
        let actor = resuming.value.name.clone();
        let me = running_name(t, &actor);
        if e.failure() == Failure::LostAnswer {
            self.metrics.inc("lost_answers");
        }
        warn!(%worker, error = %e, "no verdict on the restore; settling it from the worker's state");
        let caps = match self.settled_caps(worker, target, &me).await {
            Ok(c) => c,
            Err(err) if self.worker_silent(worker).await => {
                // The worker does not answer at all (its host may be lost): nothing it may have
                // started is reachable or recorded (a copy there holds no lease and is cleared
                // as a stray if it returns), so the snapshot is intact: back, and placed again.
                let from = resuming.value.op.as_ref().map_or(ActorState::Crashed, |o| o.from);
                let back = resuming.value.rollback(now_ms())?;
                self.commit_retrying(&resuming, back).await?;
                let why = format!(
                    "worker {worker} stopped answering during the restore ({err}); actor {actor} is {from} again with its snapshot intact"
                );
                warn!(%why, "rolled back");
                return Ok(Restore::RolledBack(why));
            }
            Err(err) => {
                return Err(CtlError::Unavailable(format!(
                    "the restore of actor {actor} on worker {worker} has not settled ({err}); the actor stays RESUMING there and reconciliation finishes it"
                )));
            }
        };
        if caps.runs(&me) {
            let endpoint = caps.info.host_endpoint.clone();
            let running = resuming.value.finish_resume(&endpoint, source.snapshot_id(), now_ms())?;
            let running = self.commit_retrying(&resuming, running).await?;
            gate.set_endpoint(running.value.endpoint.clone());
            self.metrics.resumed(source.tier(), started.elapsed());
            info!(%worker, snapshot = %source.snapshot_id(), "the restore completed though its answer was lost: RUNNING");
            return Ok(Restore::Running);
        }
        let from = resuming.value.op.as_ref().map_or(ActorState::Crashed, |o| o.from);
        let back = resuming.value.rollback(now_ms())?;
        self.commit_retrying(&resuming, back).await?;
        let state = if caps.state.is_empty() { "idle" } else { caps.state.as_str() };
        let why = format!(
            "the restore of {source} on worker {worker} did not happen ({e}; the worker is {state}{}); actor {actor} is {from} again with its snapshot intact",
            if caps.running.is_empty() { String::new() } else { format!(" with {}", caps.running) },
        );
        warn!(%why, "rolled back");
        Ok(Restore::RolledBack(why))
    }

    /// Pauses the least recently active idle RUNNING actor on one of `workers` to free it.
    pub(super) async fn evict_one(self: &Arc<Self>, workers: &[String], for_actor: &str) -> bool {
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

    // ---------------------------------------------------------------- --from-snapshot

    /// Finds snapshot `id` of the actor (durable, golden, or local on a worker) and resumes
    /// from exactly it.
    pub(super) async fn resume_from_locked(
        self: &Arc<Self>,
        actor: &str,
        id: &str,
        gate: &Arc<Gate>,
    ) -> Result<(), CtlError> {
        ate_core::snapshot::check_snapshot_id(id).map_err(CtlError::Invalid)?;
        self.give_up_silent_home(actor).await?;
        let a = self.actor(actor).await?;
        if !matches!(a.value.state, ActorState::Suspended | ActorState::Paused | ActorState::Crashed) {
            return Err(CtlError::Conflict(format!(
                "actor {actor} is {}; only a SUSPENDED, PAUSED or CRASHED actor resumes from a chosen snapshot (pause it first)",
                a.value.state
            )));
        }
        let t = self.template(&a.value.template).await?;
        let (source, prefer) = match self.find_snapshot(&t.value, &a.value, id).await? {
            Found::Durable { prefix, local_copy_on } => (
                Source::Durable(DurableRef { prefix, snapshot_id: id.to_owned(), tier: Tier::Durable }),
                local_copy_on,
            ),
            Found::Golden { prefix } => {
                (Source::Durable(DurableRef { prefix, snapshot_id: id.to_owned(), tier: Tier::Golden }), None)
            }
            Found::Local { worker } => {
                (Source::Local(ate_core::LocalRef { worker, snapshot_id: id.to_owned() }), None)
            }
        };
        info!(snapshot = %id, %source, from = %a.value.state, "explicit resume from a chosen snapshot");
        let deadline = Instant::now() + self.cfg.resume_timeout;
        self.resume_locked(actor, gate, Mode::From { source, prefer }, deadline).await
    }
}
