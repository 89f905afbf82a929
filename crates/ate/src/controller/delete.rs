//! Delete: the workload is stopped where it runs (nothing checkpointed), the actor's local
//! snapshots are removed on every worker and its durable ones from the object store, then
//! the record.

use std::sync::Arc;
use std::time::Duration;

use ate_core::ActorState;
use ate_core::store::{Expect, Kind, delete};

use tracing::{info, warn};

use super::gate::Gate;
use super::{Controller, CtlError, now_ms};

impl Controller {
    pub(super) async fn delete_locked(&self, actor: &str, gate: &Arc<Gate>) -> Result<(), CtlError> {
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
            let target = self.worker_target(&worker).await?;
            if let Err(e) = self.workers.delete(&worker, &target, &t.value, actor, self.cfg.rpc_timeout).await
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
            let (target, t) = (w.target(), &t.value);
            async move { self.workers.delete(&w.name, &target, t, actor, timeout).await }
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
}
