//! Durability policies (a template's `snapshot.durability`): what survives the loss of the
//! host an actor was paused on.
//!
//! | policy | a pause | the actor after it | after its host is lost |
//! |---|---|---|---|
//! | `local` | LOCAL checkpoint | PAUSED | unavailable, naming the host, until it returns |
//! | `durable` | DURABLE checkpoint (local copy + store, before the pause answers) | SUSPENDED | resumes on another host |
//! | `both` | LOCAL checkpoint, then the worker copies it to the store in the background | PAUSED, then SUSPENDED once the copy landed | resumes on another host once the copy landed |
//!
//! A SUSPENDED actor whose snapshot also stayed on its node resumes there when that worker is
//! free and answering (no data moves), and from the durable copy on any fitting worker
//! otherwise (placement; see `resume`). So `both` and `durable` need no path of their own on
//! resume: they only make the pause end in that record sooner or later.
//!
//! The background copy (`both`) holds no lock and records no intent: the worker copies a
//! committed snapshot (`PushSnapshot`, idempotent) while it may already run another actor,
//! and only then is the record changed, with a compare-and-set, from PAUSED at S to
//! SUSPENDED at S ([`ate_core::Actor::durable_copy_landed`]). A copy that lands after the
//! actor moved on changes nothing and is deleted from the store. Copies that never landed
//! (this replica stopped, the worker or the store was down) are found again by the leader's
//! sweep of PAUSED actors of `both` templates every [`COPY_SWEEP`].

use std::sync::Arc;
use std::time::Duration;

use ate_core::resource::Durability;
use ate_core::{ActorState, Tier};
use tracing::{debug, info, warn};

use super::{Controller, CtlError, now_ms};

/// How often PAUSED actors of `both` templates without a durable copy are looked for.
const COPY_SWEEP: Duration = Duration::from_secs(10);

impl Controller {
    /// Asks for a background copy of `actor`'s paused snapshot (durability `both`).
    pub(super) fn want_durable_copy(&self, actor: &str) {
        self.copies.lock().unwrap_or_else(|p| p.into_inner()).wanted.insert(actor.to_owned());
        self.copy_wanted.notify_one();
    }

    /// Runs the background copies: those asked for right after a pause, and every
    /// [`COPY_SWEEP`] those a sweep finds missing. One task per actor at a time.
    pub async fn durability_loop(self: Arc<Self>) {
        let mut last_sweep = std::time::Instant::now();
        loop {
            let _ = tokio::time::timeout(COPY_SWEEP, self.copy_wanted.notified()).await;
            // The sweep is the leader's (every replica copies what it paused itself).
            if last_sweep.elapsed() >= COPY_SWEEP && self.leading() {
                last_sweep = std::time::Instant::now();
                match self.copies_missing().await {
                    Ok(names) => names.into_iter().for_each(|n| self.want_durable_copy_quietly(n)),
                    Err(e) => warn!(error = %e, "looking for paused actors without a durable copy"),
                }
            }
            let start: Vec<String> = {
                let mut c = self.copies.lock().unwrap_or_else(|p| p.into_inner());
                let wanted = std::mem::take(&mut c.wanted);
                let start: Vec<String> = wanted.into_iter().filter(|a| !c.running.contains(a)).collect();
                c.running.extend(start.iter().cloned());
                start
            };
            for actor in start {
                let ctl = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = ctl.copy_paused(&actor).await {
                        warn!(%actor, error = %e, "durable copy of the paused snapshot (tried again by the sweep)");
                        ctl.metrics.inc("durable_copy_failures");
                    }
                    ctl.copies.lock().unwrap_or_else(|p| p.into_inner()).running.remove(&actor);
                });
            }
        }
    }

    fn want_durable_copy_quietly(&self, actor: String) {
        self.copies.lock().unwrap_or_else(|p| p.into_inner()).wanted.insert(actor);
    }

    /// PAUSED actors of `both` templates whose paused snapshot has no durable copy yet.
    async fn copies_missing(&self) -> Result<Vec<String>, CtlError> {
        let both: std::collections::HashSet<String> = self
            .templates()
            .await?
            .into_iter()
            .filter(|t| t.value.spec.snapshot.durability == Durability::Both)
            .map(|t| t.value.name)
            .collect();
        if both.is_empty() {
            return Ok(vec![]);
        }
        Ok(self
            .actors()
            .await?
            .into_iter()
            .filter(|a| a.value.state == ActorState::Paused && both.contains(&a.value.template))
            .map(|a| a.value.name)
            .collect())
    }

    /// Copies the paused snapshot of `actor` to the store through the worker holding it, then
    /// records it (PAUSED at S → SUSPENDED at S).
    async fn copy_paused(&self, actor: &str) -> Result<(), CtlError> {
        let a = self.actor(actor).await?;
        let Some(local) = a.value.local.clone().filter(|l| !l.snapshot_id.is_empty()) else {
            return Ok(());
        };
        if a.value.state != ActorState::Paused {
            return Ok(());
        }
        let t = self.template(&a.value.template).await?;
        let prefix = t.value.actor_prefix(actor);
        let target = self.worker_target(&local.worker).await?;
        let started = std::time::Instant::now();
        let stored = self
            .workers
            .push_snapshot(
                &local.worker,
                &target,
                &t.value,
                actor,
                &local.snapshot_id,
                &prefix,
                self.cfg.rpc_timeout,
            )
            .await?;
        let took = started.elapsed();
        // Record it, unless the actor moved on meanwhile (compare-and-set, re-read on conflict).
        for _ in 0..5 {
            let now = self.actor(actor).await?;
            let previous = now.value.durable.clone();
            let next = match now.value.durable_copy_landed(&prefix, &local.snapshot_id, now_ms()) {
                Ok(n) => n,
                Err(_) => {
                    let referenced = now.value.referenced_snapshots().contains(&local.snapshot_id);
                    debug!(%actor, snapshot = %local.snapshot_id, state = %now.value.state, "the durable copy landed after the actor moved on");
                    if !referenced {
                        self.forget_durable(prefix.clone(), local.snapshot_id.clone());
                    }
                    return Ok(());
                }
            };
            match self.commit(&now, next).await {
                Ok(_) => {
                    self.metrics.inc("durable_copies");
                    info!(%actor, snapshot = %local.snapshot_id, worker = %local.worker, stored_bytes = stored, ms = took.as_millis() as u64, "paused snapshot copied to the store: SUSPENDED");
                    if let Some(prev) = previous
                        && prev.tier == Tier::Durable
                        && prev.snapshot_id != local.snapshot_id
                    {
                        self.forget_durable(prefix.clone(), prev.snapshot_id);
                    }
                    return Ok(());
                }
                Err(CtlError::Store(e)) if e.is_conflict() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(CtlError::Unavailable(format!("actor {actor} kept changing while its durable copy was recorded")))
    }
}

// ---------------------------------------------------------------- host loss

/// The worker holding an actor's newest state, when that worker does not answer.
pub(super) struct SilentHome {
    pub worker: String,
    pub host: Option<String>,
    pub silent_ms: u64,
}

impl SilentHome {
    fn on(&self) -> String {
        match &self.host {
            Some(h) => format!("worker {} (host {h})", self.worker),
            None => format!("worker {}", self.worker),
        }
    }
}

impl Controller {
    /// Where `a`'s newest state is, if that worker has stopped answering: the worker it runs
    /// on (or is between states on), or the worker holding its local snapshot when no durable
    /// copy of the same snapshot exists.
    pub(super) fn silent_home(
        a: &ate_core::Actor,
        workers: &std::collections::HashMap<String, ate_core::store::WorkerRecord>,
        now: u64,
    ) -> Option<SilentHome> {
        let home = match (&a.worker, &a.local, &a.durable) {
            (Some(w), _, _) => w.clone(),
            (None, Some(l), Some(d)) if d.snapshot_id == l.snapshot_id => return None,
            (None, Some(l), _) => l.worker.clone(),
            _ => return None,
        };
        let w = workers.get(&home)?;
        if w.healthy {
            return None;
        }
        Some(SilentHome {
            worker: home,
            host: w.info.as_ref().map(|i| i.host.host_id.clone()).filter(|h| !h.is_empty()),
            silent_ms: now.saturating_sub(w.unhealthy_since_ms.unwrap_or(now)),
        })
    }

    /// What an operator reads about an actor whose newest state is on a silent worker: the
    /// worker, its host, how long, and the newest durable snapshot with its age (what
    /// `--from-snapshot` can restore elsewhere once `--host-loss-grace` has passed).
    pub(super) fn lost_host_note(&self, a: &ate_core::Actor, home: &SilentHome, now: u64) -> String {
        use ate_core::snapshot::{format_age, snapshot_id_time_ms};
        let mut note = format!(
            "its newest state is on {}, which has not answered for {}",
            home.on(),
            format_age(home.silent_ms)
        );
        if let Some(d) = &a.durable {
            let age = snapshot_id_time_ms(&d.snapshot_id).map_or_else(
                || "age unknown".to_owned(),
                |t| format!("{} old", format_age(now.saturating_sub(t))),
            );
            let grace = self.cfg.host_loss_grace.as_millis() as u64;
            let when = if home.silent_ms >= grace {
                "now".to_owned()
            } else {
                format!("in {} (--host-loss-grace)", format_age(grace - home.silent_ms))
            };
            note.push_str(&format!(
                "; its newest durable snapshot is {} ({} snapshot, {age}): `ate resume actor {} --from-snapshot {}` restores that older state on another host {when}",
                d.snapshot_id,
                d.tier.as_str(),
                a.name,
                d.snapshot_id
            ));
        } else {
            note.push_str("; it has no durable snapshot");
        }
        note
    }

    /// The note for `a` if its newest state is on a silent worker (for the API's views).
    pub async fn unavailable_note(&self, a: &ate_core::Actor) -> Option<String> {
        let workers = self.worker_map().await.ok()?;
        let now = now_ms();
        Self::silent_home(a, &workers, now).map(|h| self.lost_host_note(a, &h, now))
    }

    /// [`Self::unavailable_note`] for many actors, reading the workers once.
    pub async fn unavailable_notes<'a>(
        &self,
        actors: impl Iterator<Item = &'a ate_core::Actor>,
    ) -> Vec<Option<String>> {
        let workers = self.worker_map().await.unwrap_or_default();
        let now = now_ms();
        actors.map(|a| Self::silent_home(a, &workers, now).map(|h| self.lost_host_note(a, &h, now))).collect()
    }

    pub(super) async fn worker_map(
        &self,
    ) -> Result<std::collections::HashMap<String, ate_core::store::WorkerRecord>, CtlError> {
        Ok(self.worker_records().await?.into_iter().map(|w| (w.value.name.clone(), w.value)).collect())
    }

    /// Before an explicit resume from a chosen snapshot: when the actor's newest state is on
    /// a silent worker, refused until `--host-loss-grace` has passed (the host may come back
    /// with it); past it, a RUNNING (or mid-operation) actor there is first recorded CRASHED,
    /// giving that worker up, so that it can resume elsewhere. A host that returns later finds
    /// its old copy of the workload unplaced, and health checks it away.
    pub(super) async fn give_up_silent_home(&self, actor: &str) -> Result<(), CtlError> {
        let a = self.actor(actor).await?;
        let now = now_ms();
        let Some(home) = Self::silent_home(&a.value, &self.worker_map().await?, now) else { return Ok(()) };
        let grace = self.cfg.host_loss_grace.as_millis() as u64;
        if home.silent_ms < grace {
            return Err(CtlError::Conflict(format!(
                "actor {actor}: {}; resuming it elsewhere now could run it twice should the host come back — retry in {}",
                self.lost_host_note(&a.value, &home, now),
                ate_core::snapshot::format_age(grace - home.silent_ms)
            )));
        }
        if a.value.worker.is_some() {
            let reason = format!(
                "{} was given up as lost after {} without an answer; the state it held there is lost unless the host returns",
                home.on(),
                ate_core::snapshot::format_age(home.silent_ms)
            );
            warn!(%actor, %reason, "CRASHED");
            self.gate(actor).set_endpoint(None);
            self.commit(&a, a.value.crash(&reason, now)).await?;
        }
        Ok(())
    }
}
