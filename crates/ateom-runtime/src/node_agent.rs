//! Substrate's node agent and durable directories.
//!
//! ```text
//! <state>/actors/<ns>:<template>:<actor_id>/      the actor directory the node agent shares
//!     bundles/<container>/                        OCI bundles the node agent prepared
//!     durable-dir/<volume>/                       durable-directory volumes (bind-mounted)
//!     checkpoint-state/                           after a node-agent checkpoint: the snapshot's
//!                                                 files (manifest.json among them), relative
//!                                                 names as answered in `snapshot_files`
//!     restore-state/                              before a node-agent restore: the files the
//!                                                 node agent brought back (with or without a
//!                                                 manifest); consumed by the restore
//!     snapshots/, work/                           ateom's own
//! ```
//!
//! A request that carries only substrate's fields (1–8, no ateom extensions) follows this
//! convention; requests with ateom's own fields keep ateom's layout and tiers.
//!
//! Durable-directory volumes live on the host, so a FULL snapshot copies them in
//! (`durable/<volume>/`) after the workload is frozen, and a restore puts them back before the
//! sandbox starts; a DATA snapshot holds only them, and a DATA restore starts the workload
//! fresh from its image with them put back.

use std::path::{Path, PathBuf};

use ateom_core::{ActorRef, Artifact, SnapshotId, SnapshotManifest, Volume, WorkloadSpec};
use ateom_snapshot::{LocalSnapshot, LocalSnapshots};
use tracing::{info, warn};

use crate::RuntimeError;

/// Where a snapshot keeps the volumes it captured.
pub const DURABLE_DIR: &str = "durable";

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let context = context.into();
    move |source| RuntimeError::Io { context, source }
}

/// The volumes of a workload (creating their host directories: 0777 inside the actor
/// directory, which only root can reach).
pub fn volumes_for(actor_dir: &Path, spec: &WorkloadSpec) -> Result<Vec<Volume>, RuntimeError> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    for c in &spec.containers {
        for d in &c.durable_dirs {
            let host_dir = actor_dir.join("durable-dir").join(&d.volume);
            if !host_dir.is_dir() {
                std::fs::create_dir_all(&host_dir).map_err(io(format!("creating {}", host_dir.display())))?;
                std::fs::set_permissions(&host_dir, std::fs::Permissions::from_mode(0o777))
                    .map_err(io(format!("opening {} to the workload", host_dir.display())))?;
            }
            out.push(Volume {
                name: d.volume.clone(),
                container: c.name.to_string(),
                mount_path: d.mount_path.clone(),
                host_dir,
            });
        }
    }
    Ok(out)
}

/// Copies every volume into `<snapshot dir>/durable/<volume>/` (the workload is frozen).
pub fn capture_volumes(volumes: &[Volume], snapshot_dir: &Path) -> Result<u64, RuntimeError> {
    let mut bytes = 0;
    for v in ateom_core::distinct_volumes(volumes) {
        let to = snapshot_dir.join(DURABLE_DIR).join(&v.name);
        bytes += ateom_snapshot::copy_tree(&v.host_dir, &to).map_err(io(format!(
            "capturing volume {} ({})",
            v.mount_path,
            v.host_dir.display()
        )))?;
    }
    Ok(bytes)
}

/// Puts the volumes a snapshot captured back into their host directories (replacing what
/// is there). Volumes the snapshot does not hold are left as they are.
pub fn restore_volumes(snapshot_dir: &Path, volumes: &[Volume]) -> Result<(), RuntimeError> {
    for v in ateom_core::distinct_volumes(volumes) {
        let from = snapshot_dir.join(DURABLE_DIR).join(&v.name);
        if from.is_dir() {
            ateom_snapshot::replace_tree(&from, &v.host_dir).map_err(io(format!(
                "restoring volume {} into {}",
                v.mount_path,
                v.host_dir.display()
            )))?;
        }
    }
    Ok(())
}

/// Lays a committed snapshot out as the node agent expects: `<actorDir>/checkpoint-state/`
/// holding its files (hard links: no copy) and `manifest.json`, replacing an earlier one
/// atomically. Returns the relative names, manifest last.
pub fn publish_checkpoint_state(actor_dir: &Path, snap: &LocalSnapshot) -> Result<Vec<String>, RuntimeError> {
    let target = actor_dir.join("checkpoint-state");
    let staging = actor_dir.join(format!(".checkpoint-state.{}", snap.manifest.snapshot_id));
    let _ = std::fs::remove_dir_all(&staging);
    let mut names: Vec<String> = snap.manifest.artifacts.iter().map(|a| a.name.clone()).collect();
    names.push(ateom_core::MANIFEST_FILE.into());
    for name in &names {
        let from = snap.dir.join(name);
        let to = staging.join(name);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
        }
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to)
                .map_err(io(format!("copying {} into checkpoint-state", from.display())))?;
        }
    }
    let _ = std::fs::remove_dir_all(&target);
    std::fs::rename(&staging, &target).map_err(io(format!("placing {}", target.display())))?;
    let _ = ateom_sys::sync_dir(actor_dir);
    Ok(names)
}

/// The files a node agent placed in `<actorDir>/restore-state/`, made a local snapshot of
/// the actor, or `None` when there are none.
///
/// * With a `manifest.json` among them, the snapshot is exactly that manifest's: the files
///   must be the ones it lists with their sizes, and the restore verifies every byte against
///   its digests and its provenance against this host, as for any snapshot.
/// * Without one, nothing can vouch for the files: they are committed under a new id with a
///   manifest describing this host and backend (so provenance checks pass trivially) and
///   digests taken now; the backend's own checks (runsc validates its image) are all that
///   stands between them and the sandbox. Only whole captures of a backend that needs no
///   provenance can restore this way (gVisor); a microVM refuses for lack of it.
pub fn import_restore_state(
    actor_dir: &Path,
    snapshots: &LocalSnapshots,
    actor: &ActorRef,
    template: impl FnOnce(SnapshotId) -> SnapshotManifest,
) -> Result<Option<LocalSnapshot>, RuntimeError> {
    let dir = actor_dir.join("restore-state");
    let has_files = std::fs::read_dir(&dir).map(|mut d| d.next().is_some()).unwrap_or(false);
    if !has_files {
        return Ok(None);
    }
    let manifest_path = dir.join(ateom_core::MANIFEST_FILE);
    let snap = if manifest_path.is_file() {
        let bytes =
            std::fs::read(&manifest_path).map_err(io(format!("reading {}", manifest_path.display())))?;
        let manifest = SnapshotManifest::from_json(&bytes).map_err(|source| {
            RuntimeError::Snapshot(ateom_snapshot::SnapshotError::BadManifest {
                id: "restore-state".into(),
                source,
            })
        })?;
        if manifest.actor.namespace != actor.namespace || manifest.actor.template != actor.template {
            return Err(RuntimeError::Snapshot(ateom_snapshot::SnapshotError::Corrupt {
                id: manifest.snapshot_id.to_string(),
                artifact: ateom_core::MANIFEST_FILE.into(),
                detail: format!(
                    "restore-state holds a snapshot of {}, not of {actor}'s template",
                    manifest.actor
                ),
            }));
        }
        let id = manifest.snapshot_id.clone();
        if let Ok(existing) = snapshots.open(actor, &id) {
            info!(%actor, snapshot = %id, "restore-state holds a snapshot already on this node; using that");
            let _ = std::fs::remove_dir_all(&dir);
            return Ok(Some(existing));
        }
        let pending = snapshots.begin_empty(actor, id.clone())?;
        move_contents(&dir, pending.dir(), true)?;
        pending.commit_verified(manifest)?
    } else {
        let id = SnapshotId::generate(std::time::SystemTime::now(), rand::random());
        warn!(%actor, snapshot = %id, "restore-state has no manifest: its files are restored unverified");
        let mut intent = template(id.clone());
        intent.provenance.insert("origin".into(), "node-agent restore-state, no manifest: unverified".into());
        let pending = snapshots.begin(actor, id, &intent)?;
        move_contents(&dir, pending.dir(), false)?;
        pending.captured()?.commit()?
    };
    let _ = std::fs::remove_dir(&dir);
    info!(%actor, snapshot = %snap.manifest.snapshot_id, "took the node agent's restore-state as a local snapshot");
    Ok(Some(snap))
}

/// Moves every entry of `from` into `to` (renames, same file system), leaving out the
/// manifest when `skip_manifest` (it is written by the commit).
fn move_contents(from: &Path, to: &Path, skip_manifest: bool) -> Result<(), RuntimeError> {
    for e in std::fs::read_dir(from).map_err(io(format!("listing {}", from.display())))? {
        let e = e.map_err(io(format!("listing {}", from.display())))?;
        let name = e.file_name();
        if skip_manifest && name == ateom_core::MANIFEST_FILE {
            let _ = std::fs::remove_file(e.path());
            continue;
        }
        let dest: PathBuf = to.join(&name);
        std::fs::rename(e.path(), &dest)
            .map_err(io(format!("moving {} into a snapshot", e.path().display())))?;
    }
    Ok(())
}

/// The artifacts of a DATA snapshot are only its volumes.
pub fn is_volume_artifact(a: &Artifact) -> bool {
    a.name.starts_with(&format!("{DURABLE_DIR}/"))
}
