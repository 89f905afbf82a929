//! Starting a worker on a state directory a previous worker process used: adopt the sandbox
//! it left running, finish or undo the checkpoint it was taking, report what died, and
//! remove everything else it left behind.
//!
//! | journal phase | what is found | outcome |
//! |---|---|---|
//! | running | sandbox alive | adopted: served again (same loopback endpoint when free) |
//! | running | sandbox dead | cleaned up; the actor is reported lost, with the reason |
//! | checkpointing | whole capture (`.quarantine-`) | committed; the sandbox (a paused VM) is removed |
//! | checkpointing | whole capture, commit fails | the VM resumes if alive; else the capture stays quarantined |
//! | checkpointing | partial capture, sandbox alive | the checkpoint is undone: resumed, served again |
//! | checkpointing | partial capture the backend proves complete | committed |
//! | checkpointing | partial capture, sandbox dead | the actor is reported lost |
//! | pushing | committed local snapshot | kept; the interrupted upload is left to `snapshots gc` |

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ateom_core::{ActorRef, AdoptRequest, Adopted, Backend, Sandbox};
use ateom_net::Forwarder;
use ateom_snapshot::LocalSnapshots;
use tracing::{info, warn};

use crate::journal::{ActiveRecord, Journal, LostActor, Phase};
use crate::{Active, Runtime, RuntimeError, RuntimeOptions, Slot, create_private_dir, host, task_failed};

/// How many kept failure directories `<state>/failures/` holds.
const FAILURES_KEPT: usize = 10;

pub(crate) async fn start(
    backend: Arc<dyn Backend>,
    mut opts: RuntimeOptions,
) -> Result<Runtime, RuntimeError> {
    opts.state_dir = std::path::absolute(&opts.state_dir).map_err(|source| RuntimeError::Io {
        context: format!("making {} absolute", opts.state_dir.display()),
        source,
    })?;
    let state = opts.state_dir.clone();
    let signing = opts.signing.clone();
    create_private_dir(&state)?;
    restrict(&state);
    let lock = ateom_sys::StateLock::acquire(&state).map_err(|e| RuntimeError::Locked(e.to_string()))?;
    let actors = state.join("actors");
    create_private_dir(&actors)?;
    let journal = Journal::open(&state)?;
    let snapshots = LocalSnapshots::new(&actors);
    let shared = LocalSnapshots::new(state.join("cache").join("pulled"));

    let record = journal.active()?;
    let previous_endpoint = record.as_ref().map(|r| r.host_endpoint);
    let adopted = match record {
        Some(rec) => recover(&*backend, &journal, &snapshots, rec).await?,
        None => None,
    };

    // What else a crash left: partial captures nobody will finish, whole ones to commit.
    for u in snapshots.unfinished()? {
        if u.captured {
            let (key, id) = (u.actor_key.clone(), u.id.clone());
            let committed = tokio::task::spawn_blocking(move || u.into_captured().and_then(|c| c.commit()))
                .await
                .map_err(task_failed("committing a quarantined snapshot"))?;
            match committed {
                Ok(_) => info!(actor = %key, snapshot = %id, "committed a capture left in quarantine"),
                Err(e) => warn!(actor = %key, snapshot = %id, error = %e, "a capture stays in quarantine"),
            }
        } else {
            warn!(path = %u.dir.display(), "removed an incomplete snapshot left by a crash");
            u.discard()?;
        }
    }
    let _ = shared.remove_partials();
    remove_work_dirs(&actors, adopted.as_ref().map(|a| a.work_dir.as_path()));
    let keep = adopted.as_ref().map(|a| a.sandbox.handle());
    for what in backend.cleanup_stale(keep.as_ref()).await? {
        warn!(%what, "cleaned up after a previous run");
    }

    // The adopted workload is served where it was, if that port is still ours to take.
    let mut forwarder = None;
    if let (Some(prev), Some(_)) = (previous_endpoint, &adopted)
        && opts.forward_addr.port() == 0
        && opts.forward_addr.ip() == prev.ip()
    {
        match Forwarder::bind(prev).await {
            Ok(f) => forwarder = Some(f),
            Err(e) => {
                warn!(endpoint = %prev, error = %e, "the adopted workload's endpoint is taken; serving it on a new one")
            }
        }
    }
    let forwarder = match forwarder {
        Some(f) => f,
        None => Forwarder::bind(opts.forward_addr).await.map_err(|e| RuntimeError::Io {
            context: format!("binding forwarder on {}", opts.forward_addr),
            source: std::io::Error::other(e.to_string()),
        })?,
    };
    let host = host::probe(opts.host_id.as_deref());
    info!(
        backend = %backend.info().name,
        version = %backend.info().runtime_version,
        endpoint = %forwarder.local_addr(),
        host_id = %host.host_id,
        state_dir = %state.display(),
        "runtime ready"
    );
    let rt = Runtime {
        backend,
        opts,
        host,
        snapshots,
        shared,
        forwarder,
        stores: crate::durable::Stores::new(signing),
        journal,
        _lock: lock,
        slot: Mutex::new(Slot::Idle),
        deleting: Mutex::new(std::collections::HashSet::new()),
        pushing: Mutex::new(None),
        copying: Mutex::new(std::collections::HashSet::new()),
        copy_turn: tokio::sync::Mutex::new(()),
        used_bytes: AtomicU64::new(0),
    };
    if let Some(mut a) = adopted {
        rt.resume_serving(&mut a);
        rt.record(&a, Phase::Running)?;
        info!(actor = %a.actor, endpoint = %rt.forwarder.local_addr(), "serving the adopted workload");
        *rt.slot.lock().expect("slot lock") = Slot::Running(a);
    }
    rt.refresh_usage().await;
    Ok(rt)
}

/// Acts on the journal record a previous worker process left. Returns the sandbox to serve.
async fn recover(
    backend: &dyn Backend,
    journal: &Journal,
    snapshots: &LocalSnapshots,
    rec: ActiveRecord,
) -> Result<Option<Box<Active>>, RuntimeError> {
    let actor = rec.actor.clone();
    let adopt = |checkpoint: Option<PathBuf>, resume: bool| {
        let rec = &rec;
        async move {
            let req = AdoptRequest {
                handle: &rec.sandbox,
                work_dir: &rec.work_dir,
                interrupted_checkpoint: checkpoint.as_deref(),
                resume,
            };
            match backend.adopt(req).await {
                Ok(a) => a,
                Err(e) => Adopted::Gone(format!("adopting it failed: {e}")),
            }
        }
    };
    let lost = |reason: String| {
        warn!(%actor, %reason, "the actor's workload died while no worker watched it");
        if let Err(e) = journal.add_lost(LostActor {
            actor: actor.clone(),
            reason,
            at: ateom_core::time::format_rfc3339_utc(SystemTime::now()),
        }) {
            warn!(error = %e, "recording a lost actor");
        }
    };
    let active = |sandbox: Box<dyn Sandbox>| {
        Box::new(Active {
            actor: rec.actor.clone(),
            sandbox,
            spec: rec.spec.clone(),
            work_dir: rec.work_dir.clone(),
            service_port: rec.service_port,
        })
    };

    let outcome = match &rec.phase {
        Phase::Pushing { snapshot_id, uri_prefix } => {
            info!(%actor, snapshot = %snapshot_id, store = %uri_prefix,
                "a push was interrupted: the local snapshot is kept; the partial upload is garbage for `ateom snapshots gc`");
            None
        }
        Phase::Running => match adopt(None, true).await {
            Adopted::Running(sb) => {
                info!(%actor, "adopted the running workload of the previous worker process");
                Some(active(sb))
            }
            Adopted::Captured => {
                lost("the sandbox is gone".into());
                None
            }
            Adopted::Gone(reason) => {
                lost(reason);
                None
            }
        },
        Phase::Checkpointing { snapshot_id, .. } => {
            let key = actor.key();
            let unfinished =
                snapshots.unfinished()?.into_iter().find(|u| u.id == *snapshot_id && u.actor_key == key);
            if snapshots.open(&actor, snapshot_id).is_ok() {
                // Committed just before the crash: only the sandbox is left to remove.
                info!(%actor, snapshot = %snapshot_id, "the interrupted checkpoint had committed");
                if let Adopted::Running(sb) = adopt(None, false).await {
                    let _ = sb.delete().await;
                }
                None
            } else {
                match unfinished {
                    Some(u) if u.captured => {
                        let captured = u.into_captured()?;
                        let dir = captured.dir().to_owned();
                        let (captured, committed) = tokio::task::spawn_blocking(move || {
                            let r = captured.commit();
                            (captured, r)
                        })
                        .await
                        .map_err(task_failed("committing an interrupted checkpoint"))?;
                        match committed {
                            Ok(_) => {
                                info!(%actor, snapshot = %snapshot_id, "finished the interrupted checkpoint");
                                if let Adopted::Running(sb) = adopt(None, false).await {
                                    let _ = sb.delete().await;
                                }
                                None
                            }
                            Err(e) => match adopt(Some(dir), true).await {
                                Adopted::Running(sb) => {
                                    warn!(%actor, error = %e, "the interrupted checkpoint cannot be committed; the workload was resumed");
                                    let _ = captured.discard();
                                    Some(active(sb))
                                }
                                _ => {
                                    warn!(%actor, snapshot = %snapshot_id, error = %e,
                                        "the interrupted checkpoint cannot be committed; its capture stays in quarantine");
                                    None
                                }
                            },
                        }
                    }
                    partial => {
                        let dir = partial.as_ref().map(|u| u.dir.clone());
                        match adopt(dir, true).await {
                            Adopted::Running(sb) => {
                                info!(%actor, "the interrupted checkpoint was undone: the workload keeps running");
                                if let Some(u) = partial {
                                    let _ = u.discard();
                                }
                                Some(active(sb))
                            }
                            Adopted::Captured => match partial {
                                Some(u) => {
                                    let captured = u.into_captured()?;
                                    match tokio::task::spawn_blocking(move || captured.commit())
                                        .await
                                        .map_err(task_failed("committing an interrupted checkpoint"))?
                                    {
                                        Ok(_) => {
                                            info!(%actor, snapshot = %snapshot_id, "finished the interrupted checkpoint")
                                        }
                                        Err(e) => warn!(%actor, snapshot = %snapshot_id, error = %e,
                                            "the interrupted checkpoint's capture stays in quarantine"),
                                    }
                                    None
                                }
                                None => {
                                    lost("its checkpoint was interrupted and left no capture".into());
                                    None
                                }
                            },
                            Adopted::Gone(reason) => {
                                if let Some(u) = partial {
                                    let _ = u.discard();
                                }
                                lost(format!(
                                    "its checkpoint was interrupted and the sandbox died: {reason}"
                                ));
                                None
                            }
                        }
                    }
                }
            }
        }
    };
    if outcome.is_none() {
        journal.clear()?;
    }
    Ok(outcome)
}

/// Makes an existing directory private to root (0700): it may predate this version.
fn restrict(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
        warn!(dir = %dir.display(), error = %e, "making the state directory private");
    }
}

fn remove_work_dirs(actors: &Path, keep: Option<&Path>) {
    let Ok(entries) = std::fs::read_dir(actors) else { return };
    for e in entries.flatten() {
        let work = e.path().join("work");
        if Some(work.as_path()) == keep {
            continue;
        }
        if work.exists() {
            warn!(path = %work.display(), "removing a work directory left by a crash");
            let _ = std::fs::remove_dir_all(work);
        }
    }
}

/// Copies what a failed sandbox left to explain itself (its logs: `*.log` files and the
/// runtime's debug logs, at most 1 MiB each, their tails) to
/// `<state>/failures/<time>-<actor>-<what>/`, keeps the newest [`FAILURES_KEPT`] such
/// directories, and returns the new one with the last lines of the runtime's log that say
/// what went wrong.
pub(crate) fn keep_failure_dir(
    state_dir: &Path,
    actor: &ActorRef,
    work_dir: &Path,
    what: &str,
) -> Option<(PathBuf, String)> {
    let logs = log_files(work_dir);
    if logs.is_empty() {
        return None;
    }
    let root = state_dir.join("failures");
    let stamp = ateom_core::time::format_rfc3339_utc(SystemTime::now()).replace(':', "");
    let dir = root.join(format!("{stamp}-{}-{what}", actor.key().replace(':', "_")));
    create_private_dir(&dir).ok()?;
    let mut tail = String::new();
    for (i, log) in logs.iter().enumerate() {
        let name = log.strip_prefix(work_dir).unwrap_or(log).to_string_lossy().replace('/', "_");
        let bytes = read_tail(log, 1 << 20);
        let _ = std::fs::write(dir.join(format!("{i:02}-{name}")), &bytes);
        let text = String::from_utf8_lossy(&bytes);
        let telling: Vec<&str> = text
            .lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("fatal") || l.contains("error") || l.starts_with('w') && l.contains("warning")
            })
            .collect();
        if let Some(last) = telling.last() {
            tail = last.trim().chars().take(400).collect();
        }
    }
    prune_failures(&root);
    Some((dir, tail))
}

fn log_files(work_dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![work_dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(ty) = e.file_type() else { continue };
            if ty.is_dir() && !p.ends_with("bundle") && !p.ends_with("rootfs") {
                stack.push(p);
            } else if ty.is_file() && p.extension().is_some_and(|x| x == "log" || x == "txt") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn read_tail(path: &Path, max: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else { return Vec::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > max {
        let _ = f.seek(SeekFrom::Start(len - max));
    }
    let mut buf = Vec::new();
    let _ = f.take(max).read_to_end(&mut buf);
    buf
}

fn prune_failures(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    let mut dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    dirs.sort();
    let excess = dirs.len().saturating_sub(FAILURES_KEPT);
    for d in &dirs[..excess] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_keep_the_logs_name_the_cause_and_stay_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path();
        let work = state.join("actors/ns:t:a/work");
        std::fs::create_dir_all(work.join("runsc-debug")).unwrap();
        std::fs::write(work.join("console.log"), "starting\n").unwrap();
        std::fs::write(
            work.join("runsc-debug/runsc.log.20261129-gofer.txt"),
            "I1129 gofer starting\nW1129 FATAL ERROR: mounting root: relative path \"w1/x\"\nI1129 done\n",
        )
        .unwrap();
        let actor = ActorRef::parse("ns", "t", "a").unwrap();
        let (dir, tail) = keep_failure_dir(state, &actor, &work, "run").unwrap();
        assert!(dir.starts_with(state.join("failures")));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
        assert!(tail.contains("relative path"), "{tail}");
        for _ in 0..FAILURES_KEPT + 3 {
            std::thread::sleep(std::time::Duration::from_millis(2));
            keep_failure_dir(state, &actor, &work, "run").unwrap();
        }
        assert!(std::fs::read_dir(state.join("failures")).unwrap().count() <= FAILURES_KEPT);
        assert!(keep_failure_dir(state, &actor, &state.join("nothing"), "run").is_none());
    }
}
