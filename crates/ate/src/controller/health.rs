//! Observing workers: every `health_interval`, each worker's capabilities, slot state and
//! free snapshot space are recorded; a RUNNING actor whose workload is gone becomes CRASHED
//! (with the worker's own reason when a restarted worker reports it lost); a workload
//! nobody placed is checkpointed away so the worker is usable.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ate_core::store::{Expect, Holder, Kind, Lease, StoreExt, TemplateRecord, WorkerRecord, put};
use ate_core::{ActorState, StoreError};
use tracing::{info, warn};

use super::{Controller, CtlError, now_ms};
use crate::worker::{Caps, WorkerError, running_name};

impl Controller {
    /// Observes every worker, records what it reports, and repairs what disagrees with it.
    pub async fn health_loop(self: Arc<Self>) {
        loop {
            if let Err(e) = self.health_once().await {
                warn!(error = %e, "health check");
            }
            tokio::time::sleep(self.cfg.health_interval).await;
        }
    }

    /// One round of [`Self::health_loop`]; only the leader observes and repairs (one observer:
    /// see [`super::leader`]), other replicas skip it.
    pub async fn health_once(self: &Arc<Self>) -> Result<(), CtlError> {
        if !self.leading() {
            return Ok(());
        }
        self.metrics.inc("round_health");
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
                let caps = self.workers.caps(&w.name, &w.target(), Duration::from_secs(2)).await;
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
                    // A restarted worker that adopted the workload may forward from a new port.
                    let ep = &caps.info.host_endpoint;
                    if caps.runs(&caps.running) && !ep.is_empty() && a.value.endpoint.as_deref() != Some(ep) {
                        let gate = self.gate(&a.value.name);
                        let Ok(_lock) = gate.op.clone().try_lock_owned() else { continue };
                        let Ok(now) = self.actor(&a.value.name).await else { continue };
                        if now.version != a.version {
                            continue;
                        }
                        let Ok(next) = now.value.moved_endpoint(ep) else { continue };
                        if self.commit(&now, next).await.is_ok() {
                            info!(actor = %a.value.name, worker = %w.name, endpoint = %ep, "the worker serves it from a new endpoint");
                            gate.set_endpoint(Some(ep.clone()));
                        }
                    }
                    continue;
                }
                let gate = self.gate(&a.value.name);
                let Ok(_lock) = gate.op.clone().try_lock_owned() else { continue };
                let Ok(now) = self.actor(&a.value.name).await else { continue };
                if now.version != a.version {
                    continue;
                }
                let me = running_name(t, &a.value.name);
                let why = match caps.lost_reason(&me) {
                    Some(r) => format!("the worker reports it lost: {r}"),
                    None if caps.running.is_empty() => "the worker runs nothing".to_owned(),
                    None => format!("the worker runs {} ({})", caps.running, caps.state),
                };
                let since = match now.value.resume_source() {
                    Some(src) => format!(
                        "its state since {src} is lost; `ate resume actor {}` restores that snapshot",
                        a.value.name
                    ),
                    None => "its state is lost".to_owned(),
                };
                let reason =
                    format!("the workload is no longer running on worker {} ({why}); {since}", w.name);
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
                next.state = c.state.clone();
                // Rounded down to 16 MiB, so that a few bytes written do not rewrite the record.
                next.snapshot_bytes_free = c.snapshot_bytes_free.map(|f| f & !((16 << 20) - 1));
                next.error = None;
            }
            Err(e) => {
                next.healthy = false;
                next.error = Some(e.to_string());
            }
        }
        next.unhealthy_since_ms = match (next.healthy, w.unhealthy_since_ms) {
            (true, _) => None,
            (false, Some(since)) => Some(since),
            (false, None) => Some(now_ms()),
        };
        let changed = next.healthy != w.healthy
            || next.info != w.info
            || next.running != w.running
            || next.state != w.state
            || next.snapshot_bytes_free != w.snapshot_bytes_free
            || next.error != w.error
            || next.unhealthy_since_ms != w.unhealthy_since_ms;
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
        let _ = self
            .workers
            .checkpoint(&w.name, &w.target(), t, actor, None, None, &[], self.cfg.rpc_timeout)
            .await;
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
}
