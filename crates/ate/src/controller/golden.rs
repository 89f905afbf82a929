//! Golden snapshots: each applied template's workload booted once on a free worker of its
//! pool and checkpointed DURABLE under `<location>/golden`; new actors start SUSPENDED on it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ate_core::store::{Expect, GoldenStatus, Holder, Kind, Lease, StoreExt, TemplateRecord, Versioned, put};
use tracing::{Instrument, info, info_span, warn};

use super::{Controller, CtlError, now_ms};
use crate::worker::running_name;

impl Controller {
    /// Golden builds interrupted by a restart (BUILDING, not built by this process) start again.
    pub async fn reconcile_golden(&self) -> Result<(), CtlError> {
        let running = self.golden_running.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for t in self.templates().await? {
            if t.value.golden.status != GoldenStatus::Building || running.contains(&t.value.name) {
                continue;
            }
            // A build interrupted by a restart: start it again (the worker is checkpointed
            // free first if it still runs the golden workload).
            let worker = t.value.golden.worker.clone().unwrap_or_default();
            let golden_actor = format!("golden.{}", t.value.golden.generation);
            if let Ok(target) = self.worker_target(&worker).await
                && let Ok(caps) = self.workers.caps(&worker, &target, Duration::from_secs(5)).await
                && caps.running == running_name(&t.value, &golden_actor)
            {
                let _ = self
                    .workers
                    .checkpoint(
                        &worker,
                        &target,
                        &t.value,
                        &golden_actor,
                        None,
                        None,
                        &[],
                        self.cfg.rpc_timeout,
                    )
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

    /// Builds pending golden snapshots, one task per template, while this replica leads. A
    /// build under way when the leadership is lost is abandoned at once: the new leader's
    /// `reconcile_golden` restarts it, as after a crash.
    pub async fn golden_loop(self: Arc<Self>) {
        loop {
            if !self.leading() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            self.metrics.inc("round_golden");
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
                        let build = ctl.build_golden(t).instrument(info_span!("golden", template = %name));
                        tokio::select! {
                            r = build => if let Err(e) = r {
                                warn!(template = %name, error = %e, "golden build");
                            },
                            _ = ctl.leadership_lost() => {
                                warn!(template = %name, "leadership lost: golden build abandoned (the new leader restarts it)");
                            }
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
                && c.snapshot_bytes_free.is_none_or(|f| f >= self.cfg.min_snapshot_free)
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
        let target = self.worker_target(&worker).await?;
        let golden_actor = format!("golden.{}", t.value.golden.generation);
        info!(%worker, actor = %golden_actor, "golden: booting");
        let t0 = Instant::now();
        let result = async {
            self.workers.run(&worker, &target, &building, &golden_actor, self.cfg.rpc_timeout).await?;
            let boot_ms = t0.elapsed().as_millis() as u64;
            let prefix = building.golden.prefix.clone();
            let ck = self
                .workers
                .checkpoint(
                    &worker,
                    &target,
                    &building,
                    &golden_actor,
                    Some(&prefix),
                    None,
                    &[],
                    self.cfg.rpc_timeout,
                )
                .await;
            match ck {
                Ok(ck) => Ok((ck.snapshot_id, boot_ms)),
                Err(e) => {
                    // Free the worker if the workload still runs.
                    let _ = self
                        .workers
                        .checkpoint(
                            &worker,
                            &target,
                            &building,
                            &golden_actor,
                            None,
                            None,
                            &[],
                            self.cfg.rpc_timeout,
                        )
                        .await;
                    Err(e)
                }
            }
        }
        .await;
        let mut result = result.map_err(|e| e.to_string());
        // With signing keys, the golden snapshot must verify here before any actor uses it
        // (a worker without the key writes unsigned snapshots every resume would refuse).
        if self.cfg.signing.is_some()
            && let Ok((id, _)) = &result
        {
            let prefix = building.golden.prefix.clone();
            let verified = match self.snapshot_store(&prefix) {
                Ok(store) => store.read_index(id).await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = verified {
                result = Err(format!("golden snapshot {id} does not verify with ate's snapshot keys: {e}"));
            }
        }
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
                done.golden.reason = Some(e.clone());
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
}
