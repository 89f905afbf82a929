//! Checkpoint: freeze, capture, commit, retention, push — without ever destroying the only
//! copy of a workload's state.
//!
//! ```text
//!  take the running workload (refused if another actor, or if the id exists)
//!  free-space check ── not enough ──▶ RESOURCE_EXHAUSTED, the workload keeps running
//!  journal: Checkpointing{id}      (a restarted worker knows what it may find)
//!  .partial-<id>/.intent.json      (the manifest to be)
//!  backend freezes + writes ── fails ──▶ resumed if alive, else reported gone
//!  rename to .quarantine-<id>      (a whole capture: survives a failed commit or a crash)
//!  commit (hash, manifest last, rename to <id>)
//!        └─ fails ──▶ backend takes the workload back (a paused VM resumes) ── or ──▶
//!                     the capture stays in quarantine (`ateom snapshots recover`)
//!  sandbox deleted; retention prunes the actor's older snapshots
//!  DURABLE: journal Pushing{id}, slot `pushing` until the push ends (a delete stops it)
//! ```

use std::time::{Instant, SystemTime};

use ateom_core::{CheckpointRequest, Destination, MANIFEST_FORMAT_VERSION, SnapshotId, SnapshotManifest};
use ateom_snapshot::LocalSnapshot;
use tracing::{debug, info, warn};

use crate::{
    Active, Checkpointed, PushedSnapshot, Runtime, RuntimeError, Slot, durable, faults, journal, task_failed,
};

impl Runtime {
    /// Freezes the running workload into a snapshot and frees the worker.
    pub async fn checkpoint(&self, req: CheckpointRequest) -> Result<Checkpointed, RuntimeError> {
        let start = Instant::now();
        // Open the store before freezing anything: a bad location fails without side effects.
        let store = match (&req.destination, &req.uri_prefix) {
            (Destination::Durable, Some(prefix)) => Some(self.stores.get(prefix)?),
            _ => None,
        };
        self.wait_for_dead_cleanup(&req.actor).await;
        let (mut active, guard) = self.take_running(&req.actor)?;
        let id = req
            .snapshot_id
            .clone()
            .unwrap_or_else(|| SnapshotId::generate(SystemTime::now(), rand::random()));
        if self.snapshots.exists(&active.actor, &id) {
            self.back_to_running(active, guard);
            return Err(ateom_snapshot::SnapshotError::Exists { id: id.to_string() }.into());
        }
        self.record_pins(&req.actor, &req.keep);
        let volumes = match crate::node_agent::volumes_for(&self.actor_dir(&active.actor), &active.spec) {
            Ok(v) => v,
            Err(e) => {
                self.back_to_running(active, guard);
                return Err(e);
            }
        };
        if let Err(e) = self.check_space(&active).await {
            self.back_to_running(active, guard);
            return Err(e);
        }
        let phase = journal::Phase::Checkpointing {
            snapshot_id: id.clone(),
            destination: req.destination,
            uri_prefix: req.uri_prefix.clone(),
        };
        if let Err(e) = self.record(&active, phase) {
            self.back_to_running(active, guard);
            return Err(e);
        }
        self.set_busy(&active.actor, "checkpointing", Some(id.clone()));
        // No connection may be open inside the sandbox while it freezes.
        self.forwarder.set_target(None);
        self.forwarder.abort_all().await;
        if req.scope == ateom_core::Scope::Data {
            return self.checkpoint_data(req, active, guard, id, volumes, start, store).await;
        }

        let pending = match self.snapshots.begin(&active.actor, id.clone(), &self.intent(&active, &id)) {
            Ok(p) => p,
            Err(e) => {
                self.back_to_running(active, guard);
                return Err(e.into());
            }
        };
        faults::point("checkpoint-before-freeze");
        info!(actor = %active.actor, snapshot = %id, "checkpoint: freezing");
        let frozen = Instant::now();
        if let Err(e) = active.sandbox.checkpoint(pending.dir()).await {
            drop(pending);
            if active.sandbox.is_alive().await {
                warn!(actor = %active.actor, error = %e, "checkpoint failed; the workload keeps running");
                self.back_to_running(active, guard);
            } else {
                warn!(actor = %active.actor, error = %e, "checkpoint failed and the sandbox is gone");
                self.forget_dead(active, &format!("its checkpoint failed and the sandbox died: {e}")).await;
            }
            return Err(e.into());
        }
        debug!(backend_ms = frozen.elapsed().as_millis() as u64, "backend checkpoint done");
        faults::point("checkpoint-after-freeze");
        let partial_dir = pending.dir().to_owned();
        // The durable directories live on the host (a microVM's volume disks are read back into
        // them first): they join the snapshot while the workload is frozen.
        let captured_volumes = active
            .sandbox
            .volumes_to_host(&volumes, Some(&partial_dir))
            .map_err(|e| RuntimeError::Io {
                context: "reading the volumes back".into(),
                source: std::io::Error::other(e.to_string()),
            })
            .and_then(|()| crate::node_agent::capture_volumes(&volumes, &partial_dir));
        if let Err(e) = captured_volumes {
            let e = match e {
                RuntimeError::Io { context, source } => ateom_snapshot::SnapshotError::Io { context, source },
                other => ateom_snapshot::SnapshotError::Io {
                    context: "capturing volumes".into(),
                    source: std::io::Error::other(other.to_string()),
                },
            };
            let captured = pending.captured().ok();
            return Err(self.uncommitted(active, guard, &partial_dir, captured, &id, e).await);
        }
        let captured = match pending.captured() {
            Ok(c) => c,
            // The files stay in `.partial-`: a restarted worker asks the backend about them.
            Err(e) => return Err(self.uncommitted(active, guard, &partial_dir, None, &id, e).await),
        };

        // Commit. A backend that can take the workload back keeps it frozen until the commit
        // is safe; otherwise the sandbox is torn down while the snapshot is hashed.
        let commit_start = Instant::now();
        let committing = tokio::task::spawn_blocking(move || {
            let r = captured.commit();
            (captured, r)
        });
        let Active { actor, work_dir, .. } = &*active;
        let (actor, work_dir) = (actor.clone(), work_dir.clone());
        let snap = if active.sandbox.can_abort_checkpoint() {
            let (captured, committed) = committing.await.map_err(task_failed("committing snapshot"))?;
            match committed {
                Ok(snap) => {
                    let Active { sandbox, .. } = *active;
                    if let Err(e) = sandbox.delete().await {
                        warn!(%actor, error = %e, "deleting the sandbox after checkpoint");
                    }
                    let _ = tokio::fs::remove_dir_all(&work_dir).await;
                    snap
                }
                Err(e) => {
                    let dir = captured.dir().to_owned();
                    return Err(self.uncommitted(active, guard, &dir, Some(captured), &id, e).await);
                }
            }
        } else {
            let Active { sandbox, .. } = *active;
            let teardown = async {
                if let Err(e) = sandbox.delete().await {
                    warn!(%actor, error = %e, "deleting the sandbox after checkpoint");
                }
                let _ = tokio::fs::remove_dir_all(&work_dir).await;
            };
            let (committed, ()) = tokio::join!(committing, teardown);
            let (captured, committed) = committed.map_err(task_failed("committing snapshot"))?;
            match committed {
                Ok(snap) => snap,
                Err(e) => {
                    let _ = self.journal.clear();
                    drop(guard);
                    self.refresh_usage().await;
                    return Err(quarantined(&id, &captured, e));
                }
            }
        };
        debug!(commit_ms = commit_start.elapsed().as_millis() as u64, "snapshot digested and committed");
        faults::point("checkpoint-after-commit");
        let local_elapsed = start.elapsed();
        info!(
            actor = %snap.manifest.actor,
            snapshot = %snap.manifest.snapshot_id,
            bytes = snap.manifest.total_bytes(),
            checkpoint_ms = local_elapsed.as_millis() as u64,
            "checkpoint complete"
        );
        self.retain(&actor, &id).await;
        self.finish_checkpoint(req, guard, snap, store, start).await
    }

    /// What every checkpoint does once its snapshot is committed: lay it out for the node
    /// agent (when it asked), push it (DURABLE), free the worker, answer.
    async fn finish_checkpoint(
        &self,
        req: CheckpointRequest,
        guard: crate::SlotGuard<'_>,
        snap: LocalSnapshot,
        store: Option<ateom_store::Store>,
        start: Instant,
    ) -> Result<Checkpointed, RuntimeError> {
        let actor = snap.manifest.actor.clone();
        let relative = if req.node_agent {
            match crate::node_agent::publish_checkpoint_state(&self.actor_dir(&actor), &snap) {
                Ok(names) => Some(names),
                Err(e) => {
                    let _ = self.journal.clear();
                    drop(guard);
                    return Err(e);
                }
            }
        } else {
            None
        };
        let (location, pushed) = match (store, &req.uri_prefix) {
            (Some(store), Some(prefix)) => {
                let pushed = self.push(&actor, &snap, &store, prefix).await;
                let _ = self.journal.clear();
                drop(guard);
                match pushed {
                    Ok(p) => (p.location, Some((p.stored_bytes, p.elapsed))),
                    Err(e @ RuntimeError::PushCancelled { .. }) => return Err(e),
                    Err(e) => {
                        return Err(RuntimeError::PushFailed {
                            snapshot: snap.manifest.snapshot_id.to_string(),
                            local: snap.dir.display().to_string(),
                            source: Box::new(e),
                        });
                    }
                }
            }
            _ => {
                let _ = self.journal.clear();
                drop(guard); // Idle again: the sandbox is gone, the snapshot is safe on this node.
                (snap.dir.display().to_string(), None)
            }
        };
        Ok(Checkpointed {
            files: match relative {
                Some(names) => names.into_iter().map(std::path::PathBuf::from).collect(),
                None => snap.files(),
            },
            location,
            manifest: snap.manifest,
            destination: req.destination,
            elapsed: start.elapsed(),
            pushed,
        })
    }

    /// A DATA checkpoint: the workload is stopped (its memory is not part of a DATA snapshot),
    /// then its durable directories are captured, nothing else. Nothing is lost if this fails:
    /// the volumes stay in their host directories.
    #[allow(clippy::too_many_arguments)]
    async fn checkpoint_data(
        &self,
        req: CheckpointRequest,
        active: Box<Active>,
        guard: crate::SlotGuard<'_>,
        id: SnapshotId,
        volumes: Vec<ateom_core::Volume>,
        start: Instant,
        store: Option<ateom_store::Store>,
    ) -> Result<Checkpointed, RuntimeError> {
        let mut intent = self.intent(&active, &id);
        intent.scope = ateom_core::Scope::Data;
        // A microVM's volume disks are read back into the host directories first (its guest
        // writes them synchronously). If that fails, the workload keeps running.
        if let Err(e) = active.sandbox.volumes_to_host(&volumes, None) {
            warn!(actor = %active.actor, error = %e, "reading the volumes back failed; the workload keeps running");
            self.back_to_running(active, guard);
            return Err(e.into());
        }
        let Active { sandbox, work_dir, actor, .. } = *active;
        info!(%actor, snapshot = %id, volumes = volumes.len(), "checkpoint (DATA): stopping the workload, keeping its durable directories");
        if let Err(e) = sandbox.delete().await {
            warn!(%actor, error = %e, "deleting the sandbox for a DATA checkpoint");
        }
        let _ = tokio::fs::remove_dir_all(&work_dir).await;
        let snapshots = self.snapshots.clone();
        let who = actor.clone();
        let snap_id = id.clone();
        let committed = tokio::task::spawn_blocking(move || -> Result<LocalSnapshot, RuntimeError> {
            let pending = snapshots.begin(&who, snap_id, &intent)?;
            crate::node_agent::capture_volumes(&volumes, pending.dir())?;
            Ok(pending.captured()?.commit()?)
        })
        .await
        .map_err(task_failed("committing a DATA snapshot"));
        let snap = match committed.and_then(|r| r) {
            Ok(s) => s,
            Err(e) => {
                let _ = self.journal.clear();
                drop(guard);
                return Err(e);
            }
        };
        info!(%actor, snapshot = %id, bytes = snap.manifest.total_bytes(), "checkpoint (DATA) complete");
        self.retain(&actor, &id).await;
        self.finish_checkpoint(req, guard, snap, store, start).await
    }

    /// The manifest to be, recorded before the freeze.
    fn intent(&self, active: &Active, id: &SnapshotId) -> SnapshotManifest {
        let backend = self.backend.info().clone();
        let out = active.sandbox.snapshot_output();
        SnapshotManifest {
            format_version: MANIFEST_FORMAT_VERSION,
            snapshot_id: id.clone(),
            actor: active.actor.clone(),
            created_at: ateom_core::time::format_rfc3339_utc(SystemTime::now()),
            backend: backend.name,
            runtime_version: out.provenance.runtime_version.clone(),
            kernel_id: out.provenance.kernel_id.clone(),
            cpu_template: out.provenance.cpu_template.clone(),
            host: self.host.clone(),
            capabilities: backend.capabilities,
            image_digests: out.image_digests,
            workload: active.spec.redacted(),
            provenance: out.provenance.extra,
            artifacts: Vec::new(),
            scope: ateom_core::Scope::Full,
        }
    }

    /// Refuses to freeze when the snapshot would not fit: what the backend expects to write
    /// (or, when it cannot tell, the size of the actor's previous snapshot) plus the reserve.
    async fn check_space(&self, active: &Active) -> Result<(), RuntimeError> {
        let previous = self
            .snapshots
            .latest(&active.actor)
            .map(|s| s.manifest.artifacts.iter().map(|a| a.size).sum::<u64>())
            .unwrap_or(0);
        let expected = active.sandbox.estimated_snapshot_bytes().await.unwrap_or(0).max(previous);
        let need = expected.saturating_add(self.opts.min_free_bytes);
        let root = self.snapshots.root();
        let available = ateom_sys::space(root)
            .map_err(|source| RuntimeError::Io {
                context: format!("free space of {}", root.display()),
                source,
            })?
            .available;
        if available < need {
            return Err(RuntimeError::NoSpace {
                actor: active.actor.to_string(),
                path: root.display().to_string(),
                need,
                available,
            });
        }
        Ok(())
    }

    /// A capture that could not be committed: the backend takes the workload back if it can
    /// (then the capture is discarded), otherwise the capture stays whole in quarantine.
    async fn uncommitted(
        &self,
        mut active: Box<Active>,
        guard: crate::SlotGuard<'_>,
        dir: &std::path::Path,
        captured: Option<ateom_snapshot::CapturedSnapshot>,
        id: &SnapshotId,
        e: ateom_snapshot::SnapshotError,
    ) -> RuntimeError {
        warn!(actor = %active.actor, snapshot = %id, error = %e, "the capture cannot be committed");
        match active.sandbox.abort_checkpoint(dir).await {
            Ok(true) => {
                if let Some(c) = captured
                    && let Err(d) = c.discard()
                {
                    warn!(error = %d, "removing the capture of a workload that runs again");
                }
                info!(actor = %active.actor, "the workload was resumed and keeps running");
                self.back_to_running(active, guard);
                RuntimeError::CommitFailedResumed { snapshot: id.to_string(), source: Box::new(e) }
            }
            other => {
                if let Err(a) = other {
                    warn!(actor = %active.actor, error = %a, "taking the workload back failed");
                }
                let Active { sandbox, work_dir, .. } = *active;
                let _ = sandbox.delete().await;
                let _ = tokio::fs::remove_dir_all(&work_dir).await;
                let _ = self.journal.clear();
                drop(guard);
                self.refresh_usage().await;
                match captured {
                    Some(c) => quarantined(id, &c, e),
                    None => RuntimeError::Quarantined {
                        snapshot: id.to_string(),
                        dir: dir.display().to_string(),
                        source: Box::new(e),
                    },
                }
            }
        }
    }

    /// A sandbox that died under us: removed, and its actor remembered as lost.
    pub(crate) async fn forget_dead(&self, active: Box<Active>, reason: &str) {
        let Active { sandbox, work_dir, actor, .. } = *active;
        let _ = sandbox.delete().await;
        let _ = tokio::fs::remove_dir_all(&work_dir).await;
        let _ = self.journal.clear();
        let _ = self.journal.add_lost(journal::LostActor {
            actor,
            reason: reason.to_owned(),
            at: ateom_core::time::format_rfc3339_utc(SystemTime::now()),
        });
        *self.slot.lock().expect("slot lock") = Slot::Idle;
    }

    /// Retention after a commit: the actor's snapshots beyond the newest `keep_snapshots`
    /// that nobody pinned go (never the one just made).
    async fn retain(&self, actor: &ateom_core::ActorRef, just_made: &SnapshotId) {
        let snapshots = self.snapshots.clone();
        let mut also_keep = self.copying_of(actor);
        also_keep.push(just_made.clone());
        let (who, keep) = (actor.clone(), self.opts.keep_snapshots.max(1));
        match tokio::task::spawn_blocking(move || snapshots.prune(&who, keep, &also_keep)).await {
            Ok(Ok(deleted)) if !deleted.is_empty() => {
                let freed: u64 = deleted.iter().map(|(_, b)| b).sum();
                let ids: Vec<String> = deleted.iter().map(|(i, _)| i.to_string()).collect();
                info!(%actor, deleted = ?ids, freed_bytes = freed, "retention pruned older snapshots");
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(%actor, error = %e, "retention"),
            Err(e) => warn!(%actor, error = %e, "retention task"),
        }
        self.refresh_usage().await;
    }

    /// Ships a committed snapshot, holding the worker (`pushing`) until it ends. A delete of
    /// the actor stops it; what it wrote is then removed from the store.
    async fn push(
        &self,
        actor: &ateom_core::ActorRef,
        snap: &LocalSnapshot,
        store: &ateom_store::Store,
        prefix: &str,
    ) -> Result<durable::Pushed, RuntimeError> {
        let id = snap.manifest.snapshot_id.clone();
        let rec = journal::ActiveRecord {
            version: journal::JOURNAL_VERSION,
            actor: actor.clone(),
            spec: snap.manifest.workload.clone(),
            sandbox: ateom_core::SandboxHandle::default(),
            work_dir: std::path::PathBuf::new(),
            host_endpoint: self.forwarder.local_addr(),
            service_port: None,
            phase: journal::Phase::Pushing { snapshot_id: id.clone(), uri_prefix: prefix.to_owned() },
        };
        if let Err(e) = self.journal.record(&rec) {
            warn!(%actor, error = %e, "recording the push");
        }
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        *self.pushing.lock().expect("pushing lock") = Some((actor.clone(), stop_tx));
        self.set_busy(actor, "pushing", Some(id.clone()));
        faults::point("push-before");
        let progress = durable::LogProgress::new("push", id.as_str());
        let result = tokio::select! {
            r = durable::push(store, snap, Some(progress)) => r,
            () = async { let _ = stop_rx.wait_for(|stop| *stop).await; } => {
                warn!(%actor, snapshot = %id, "push stopped by a delete; removing what it wrote");
                if let Err(e) = store.delete(id.as_str()).await {
                    warn!(snapshot = %id, error = %e, "removing the stopped push's objects (gc will)");
                }
                Err(RuntimeError::PushCancelled { snapshot: id.to_string(), actor: actor.to_string() })
            }
        };
        *self.pushing.lock().expect("pushing lock") = None;
        result
    }

    /// Snapshots of `actor` being copied to object storage now (retention keeps them).
    pub(crate) fn copying_of(&self, actor: &ateom_core::ActorRef) -> Vec<SnapshotId> {
        let copying = self.copying.lock().expect("copying lock");
        copying.iter().filter(|(a, _)| a == actor).map(|(_, id)| id.clone()).collect()
    }

    /// Copies a committed local snapshot to object storage under `uri_prefix` without holding
    /// the worker (`PushSnapshot`): a control plane pauses locally and makes the pause durable
    /// in the background while this worker runs the next workload. One copy at a time (they
    /// compete for the same disk and network); retention keeps the snapshot until the copy
    /// ends. Idempotent: a snapshot whose index is already stored there, matching its manifest,
    /// answers at once. A copy that fails removes what it wrote (the store's gc would too).
    pub async fn push_snapshot(
        &self,
        actor: &ateom_core::ActorRef,
        id: &SnapshotId,
        uri_prefix: &str,
    ) -> Result<PushedSnapshot, RuntimeError> {
        let store = self.stores.get(uri_prefix)?;
        // Opened (and checked) before waiting for the turn: a wrong id fails at once.
        self.snapshots.open(actor, id)?;
        let _turn = self.copy_turn.lock().await;
        if let Ok(stored) = durable::manifest(&store, id.as_str()).await
            && stored.manifest.actor == *actor
        {
            return Ok(PushedSnapshot {
                location: format!("{}/{id}", store.uri()),
                stored_bytes: 0,
                elapsed: std::time::Duration::ZERO,
                already_stored: true,
            });
        }
        let key = (actor.clone(), id.clone());
        self.copying.lock().expect("copying lock").insert(key.clone());
        struct Done<'a>(
            &'a std::sync::Mutex<std::collections::HashSet<(ateom_core::ActorRef, SnapshotId)>>,
            (ateom_core::ActorRef, SnapshotId),
        );
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.lock().expect("copying lock").remove(&self.1);
            }
        }
        let _done = Done(&self.copying, key);
        // Opened again under the copy's protection: retention may have run in between.
        let snap = self.snapshots.open(actor, id)?;
        let progress = durable::LogProgress::new("push", id.as_str());
        match durable::push(&store, &snap, Some(progress)).await {
            Ok(p) => {
                info!(%actor, snapshot = %id, location = %p.location, stored_bytes = p.stored_bytes, "local snapshot copied to the store");
                Ok(PushedSnapshot {
                    location: p.location,
                    stored_bytes: p.stored_bytes,
                    elapsed: p.elapsed,
                    already_stored: false,
                })
            }
            Err(e) => {
                if let Err(d) = store.delete(id.as_str()).await {
                    warn!(snapshot = %id, error = %d, "removing what a failed copy wrote (gc will)");
                }
                Err(e)
            }
        }
    }
}

fn quarantined(
    id: &SnapshotId,
    captured: &ateom_snapshot::CapturedSnapshot,
    e: ateom_snapshot::SnapshotError,
) -> RuntimeError {
    warn!(snapshot = %id, dir = %captured.dir().display(), "the capture is kept in quarantine");
    RuntimeError::Quarantined {
        snapshot: id.to_string(),
        dir: captured.dir().display().to_string(),
        source: Box::new(e),
    }
}
