//! # ateom-snapshot
//!
//! Snapshots on this node (the PAUSED tier), laid out as
//!
//! ```text
//! <root>/<namespace>:<template>:<actor_id>/snapshots/
//!     .partial-<snapshot-id>/      being written by a backend: never read as a snapshot
//!         .intent.json             the manifest to be (everything but the artifact list),
//!                                  written before the workload is frozen
//!     .quarantine-<snapshot-id>/   captured (the backend finished writing) but not committed:
//!                                  a commit that failed (a full disk) or was interrupted;
//!                                  [`CapturedSnapshot::commit`] finishes it
//!     <snapshot-id>/
//!         <artifacts...>           written by the backend
//!         manifest.json            written last, names every artifact with size and sha256
//!     .pins.json                   ids the control plane still references (retention keeps them)
//! ```
//!
//! The commit protocol: a backend writes its artifacts into a `.partial-` directory; once it
//! is done the directory is renamed to `.quarantine-` ([`PendingSnapshot::captured`]: a
//! rename needs no free space, so a full disk cannot lose a capture); [`CapturedSnapshot::commit`]
//! hashes the artifacts, writes `manifest.json` (temp file, fsync, rename), fsyncs and renames
//! the directory to its final name. A directory without a manifest is never returned as a
//! snapshot, so a crash at any point leaves a partial capture (discarded, or finished by the
//! backend's own evidence), a whole capture (committed at the next start), or a complete
//! snapshot. [`LocalSnapshot::verify`] re-hashes every artifact before a restore uses it.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ateom_core::{ActorRef, Artifact, MANIFEST_FILE, ManifestError, SnapshotId, SnapshotManifest};
use sha2::{Digest, Sha256};

pub mod digest;

const PARTIAL_PREFIX: &str = ".partial-";
const CAPTURED_PREFIX: &str = ".quarantine-";
/// The manifest-to-be, written into a snapshot directory before the workload is frozen.
pub const INTENT_FILE: &str = ".intent.json";
const PINS_FILE: &str = ".pins.json";

/// Errors of the local snapshot store.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("no snapshot {id} for actor {actor} on this node")]
    NotFound { actor: String, id: String },
    #[error("actor {actor} has no snapshot on this node")]
    NoneForActor { actor: String },
    #[error("snapshot {id}: {source}")]
    BadManifest {
        id: String,
        #[source]
        source: ManifestError,
    },
    #[error("snapshot {id}: artifact {artifact} is corrupt: {detail}")]
    Corrupt { id: String, artifact: String, detail: String },
    #[error("snapshot {id} already exists")]
    Exists { id: String },
    #[error("snapshot {id}: its capture at {dir} has no readable intent: {detail}")]
    NoIntent { id: String, dir: String, detail: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> SnapshotError {
    let context = context.into();
    move |source| SnapshotError::Io { context, source }
}

/// The snapshots of every actor under one root directory.
#[derive(Clone, Debug)]
pub struct LocalSnapshots {
    root: PathBuf,
}

impl LocalSnapshots {
    /// `root` is the directory holding one sub-directory per actor (`<state-dir>/actors`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/<actor key>/snapshots`.
    pub fn actor_dir(&self, actor: &ActorRef) -> PathBuf {
        self.root.join(actor.key()).join("snapshots")
    }

    /// Starts a new snapshot: a `.partial-<id>` directory for the backend to fill, holding
    /// only `intent` (the manifest to be, artifacts not yet listed) as [`INTENT_FILE`].
    pub fn begin(
        &self,
        actor: &ActorRef,
        id: SnapshotId,
        intent: &SnapshotManifest,
    ) -> Result<PendingSnapshot, SnapshotError> {
        let pending = self.begin_empty(actor, id)?;
        let path = pending.dir.join(INTENT_FILE);
        ateom_sys::atomic_write(&path, &intent.to_json(), 0o600)
            .map_err(io_err(format!("writing {}", path.display())))?;
        Ok(pending)
    }

    /// Starts a new snapshot directory without an intent (a pull, whose manifest comes with
    /// it).
    pub fn begin_empty(&self, actor: &ActorRef, id: SnapshotId) -> Result<PendingSnapshot, SnapshotError> {
        let base = self.actor_dir(actor);
        fs::create_dir_all(&base).map_err(io_err(format!("creating {}", base.display())))?;
        let final_dir = base.join(id.as_str());
        if final_dir.exists() || base.join(format!("{CAPTURED_PREFIX}{id}")).exists() {
            return Err(SnapshotError::Exists { id: id.to_string() });
        }
        let dir = base.join(format!("{PARTIAL_PREFIX}{id}"));
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io_err(format!("removing stale {}", dir.display())))?;
        }
        fs::create_dir(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        Ok(PendingSnapshot { id, dir, final_dir, committed: false })
    }

    /// True when the actor has a snapshot of this id on this node, complete or captured.
    pub fn exists(&self, actor: &ActorRef, id: &SnapshotId) -> bool {
        let base = self.actor_dir(actor);
        base.join(id.as_str()).join(MANIFEST_FILE).is_file()
            || base.join(format!("{CAPTURED_PREFIX}{id}")).is_dir()
    }

    /// Every snapshot directory a checkpoint left unfinished, in every actor: partial
    /// captures (the backend may not have finished) and whole ones not yet committed.
    pub fn unfinished(&self) -> Result<Vec<Unfinished>, SnapshotError> {
        let mut out = Vec::new();
        let actors = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err(format!("listing {}", self.root.display()))(e)),
        };
        for actor in actors.flatten() {
            let Ok(snaps) = fs::read_dir(actor.path().join("snapshots")) else { continue };
            for s in snaps.flatten() {
                let name = s.file_name().to_string_lossy().into_owned();
                let (captured, id) = if let Some(id) = name.strip_prefix(PARTIAL_PREFIX) {
                    (false, id)
                } else if let Some(id) = name.strip_prefix(CAPTURED_PREFIX) {
                    (true, id)
                } else {
                    continue;
                };
                let Ok(id) = SnapshotId::parse("snapshot_id", id) else { continue };
                let base = s.path().parent().expect("in a directory").to_owned();
                out.push(Unfinished {
                    actor_key: actor.file_name().to_string_lossy().into_owned(),
                    final_dir: base.join(id.as_str()),
                    id,
                    dir: s.path(),
                    captured,
                });
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Opens one snapshot (its manifest is read and checked, its bytes are not).
    pub fn open(&self, actor: &ActorRef, id: &SnapshotId) -> Result<LocalSnapshot, SnapshotError> {
        let dir = self.actor_dir(actor).join(id.as_str());
        LocalSnapshot::open_dir(&dir, id.as_str()).map_err(|e| match e {
            SnapshotError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                SnapshotError::NotFound { actor: actor.to_string(), id: id.to_string() }
            }
            other => other,
        })
    }

    /// Ids of the actor's complete snapshots, oldest first.
    pub fn list(&self, actor: &ActorRef) -> Result<Vec<SnapshotId>, SnapshotError> {
        let base = self.actor_dir(actor);
        let entries = match fs::read_dir(&base) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(format!("listing {}", base.display()))(e)),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(format!("listing {}", base.display())))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') || !entry.path().join(MANIFEST_FILE).is_file() {
                continue;
            }
            if let Ok(id) = SnapshotId::parse("snapshot_id", name) {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// The actor's newest complete snapshot.
    pub fn latest(&self, actor: &ActorRef) -> Result<LocalSnapshot, SnapshotError> {
        let id = self
            .list(actor)?
            .pop()
            .ok_or_else(|| SnapshotError::NoneForActor { actor: actor.to_string() })?;
        self.open(actor, &id)
    }

    /// Deletes one snapshot: the manifest first, so a crash halfway leaves no snapshot.
    pub fn delete(&self, actor: &ActorRef, id: &SnapshotId) -> Result<(), SnapshotError> {
        let dir = self.actor_dir(actor).join(id.as_str());
        match fs::remove_file(dir.join(MANIFEST_FILE)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("removing manifest of {}", dir.display()))(e)),
        }
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(format!("removing {}", dir.display()))(e)),
        }
    }

    /// Deletes every snapshot of `actor` (complete ones and partial leftovers), each manifest
    /// first, then the emptied snapshot directory. Returns the complete snapshots deleted,
    /// oldest first, with the disk space each one occupied.
    pub fn delete_all(&self, actor: &ActorRef) -> Result<Vec<(SnapshotId, u64)>, SnapshotError> {
        let mut deleted = Vec::new();
        for id in self.list(actor)? {
            let used = disk_usage(&self.actor_dir(actor).join(id.as_str()));
            self.delete(actor, &id)?;
            deleted.push((id, used));
        }
        let base = self.actor_dir(actor);
        match fs::remove_dir_all(&base) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("removing {}", base.display()))(e)),
        }
        Ok(deleted)
    }

    /// Removes every `.partial-` directory (left by a crash during a checkpoint).
    /// Returns the removed paths. Captured (`.quarantine-`) directories stay.
    pub fn remove_partials(&self) -> Result<Vec<PathBuf>, SnapshotError> {
        let mut removed = Vec::new();
        for u in self.unfinished()? {
            if !u.captured {
                fs::remove_dir_all(&u.dir).map_err(io_err(format!("removing {}", u.dir.display())))?;
                removed.push(u.dir);
            }
        }
        Ok(removed)
    }

    /// The ids the control plane still references for this actor (see [`Self::set_pins`]).
    pub fn pins(&self, actor: &ActorRef) -> Vec<SnapshotId> {
        let path = self.actor_dir(actor).join(PINS_FILE);
        let Ok(bytes) = fs::read(&path) else { return Vec::new() };
        let ids: Vec<String> = serde_json::from_slice(&bytes).unwrap_or_default();
        ids.iter().filter_map(|s| SnapshotId::parse("pin", s).ok()).collect()
    }

    /// Records the ids the control plane still references for this actor: retention never
    /// deletes them. Replaces the previous set.
    pub fn set_pins(&self, actor: &ActorRef, ids: &[SnapshotId]) -> Result<(), SnapshotError> {
        let base = self.actor_dir(actor);
        fs::create_dir_all(&base).map_err(io_err(format!("creating {}", base.display())))?;
        let mut list: Vec<&str> = ids.iter().map(SnapshotId::as_str).collect();
        list.sort_unstable();
        list.dedup();
        let path = base.join(PINS_FILE);
        ateom_sys::atomic_write(&path, &serde_json::to_vec(&list).expect("strings serialize"), 0o600)
            .map_err(io_err(format!("writing {}", path.display())))
    }

    /// Deletes the actor's complete snapshots except the newest `keep_newest`, the pinned
    /// ones and `also_keep`. Returns what was deleted (oldest first) with the space each took.
    pub fn prune(
        &self,
        actor: &ActorRef,
        keep_newest: usize,
        also_keep: &[SnapshotId],
    ) -> Result<Vec<(SnapshotId, u64)>, SnapshotError> {
        let plan = self.prune_plan(actor, keep_newest, also_keep)?;
        for (id, _) in &plan {
            self.delete(actor, id)?;
        }
        Ok(plan)
    }

    /// What [`prune`](Self::prune) would delete, without deleting it.
    pub fn prune_plan(
        &self,
        actor: &ActorRef,
        keep_newest: usize,
        also_keep: &[SnapshotId],
    ) -> Result<Vec<(SnapshotId, u64)>, SnapshotError> {
        let ids = self.list(actor)?;
        let pins = self.pins(actor);
        let cut = ids.len().saturating_sub(keep_newest);
        Ok(ids[..cut]
            .iter()
            .filter(|id| !pins.contains(id) && !also_keep.contains(id))
            .map(|id| (id.clone(), disk_usage(&self.actor_dir(actor).join(id.as_str()))))
            .collect())
    }

    /// Actor keys (`namespace:template:actor_id`) that have a directory here.
    pub fn actor_keys(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.root) else { return Vec::new() };
        let mut keys: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        keys.sort();
        keys
    }

    /// Disk space every snapshot directory here occupies (complete, captured and partial).
    pub fn used_bytes(&self) -> u64 {
        self.actor_keys().iter().map(|k| disk_usage(&self.root.join(k).join("snapshots"))).sum()
    }

    /// Disk space one snapshot directory occupies.
    pub fn snapshot_bytes(&self, actor: &ActorRef, id: &SnapshotId) -> u64 {
        disk_usage(&self.actor_dir(actor).join(id.as_str()))
    }
}

/// A snapshot directory a checkpoint left unfinished (see [`LocalSnapshots::unfinished`]).
#[derive(Clone, Debug)]
pub struct Unfinished {
    /// `namespace:template:actor_id`
    pub actor_key: String,
    pub id: SnapshotId,
    pub dir: PathBuf,
    final_dir: PathBuf,
    /// The backend finished writing (`.quarantine-`): only the commit is missing.
    pub captured: bool,
}

impl Unfinished {
    /// Treats a partial directory as a whole capture (the backend's own evidence says it
    /// completed) and moves it to `.quarantine-`.
    pub fn into_captured(self) -> Result<CapturedSnapshot, SnapshotError> {
        if self.captured {
            return Ok(CapturedSnapshot { id: self.id, dir: self.dir, final_dir: self.final_dir });
        }
        let pending =
            PendingSnapshot { id: self.id, dir: self.dir, final_dir: self.final_dir, committed: false };
        pending.captured()
    }

    /// Removes the directory.
    pub fn discard(self) -> Result<(), SnapshotError> {
        fs::remove_dir_all(&self.dir).map_err(io_err(format!("removing {}", self.dir.display())))
    }
}

/// A snapshot being written. Dropping it before [`captured`](Self::captured) or a commit
/// removes it.
#[derive(Debug)]
pub struct PendingSnapshot {
    id: SnapshotId,
    dir: PathBuf,
    final_dir: PathBuf,
    committed: bool,
}

impl PendingSnapshot {
    pub fn id(&self) -> &SnapshotId {
        &self.id
    }

    /// Where the backend writes its artifacts.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The backend finished writing: the directory becomes a whole capture
    /// (`.quarantine-<id>`), which survives a failed commit and a crash. A rename: it needs no
    /// free space.
    pub fn captured(mut self) -> Result<CapturedSnapshot, SnapshotError> {
        let name = format!("{CAPTURED_PREFIX}{}", self.id);
        let dir = self.dir.with_file_name(name);
        // From here on the files are never removed by this value: they may be the only copy
        // of a workload's state, whether or not the rename works.
        self.committed = true;
        fs::rename(&self.dir, &dir).map_err(io_err(format!(
            "renaming {} to {}",
            self.dir.display(),
            dir.display()
        )))?;
        if let Some(parent) = dir.parent() {
            let _ = sync_dir(parent);
        }
        Ok(CapturedSnapshot { id: self.id.clone(), dir, final_dir: self.final_dir.clone() })
    }

    /// Hashes every file in the directory, lets `finish` build the manifest from the
    /// artifact list, writes it last and moves the snapshot to its final name.
    pub fn commit(
        self,
        finish: impl FnOnce(Vec<Artifact>) -> SnapshotManifest,
    ) -> Result<LocalSnapshot, SnapshotError> {
        let (artifacts, chunks, names) = digest_dir(&self.dir)?;
        let manifest = finish(artifacts);
        debug_assert_eq!(manifest.snapshot_id, self.id);
        let mut snap = finish_dir(&self.dir, &self.final_dir, manifest)?;
        let mut this = self;
        this.committed = true;
        snap.chunk_digests = names.into_iter().zip(chunks).collect();
        Ok(snap)
    }

    /// Commits files whose digests were already verified against `manifest` by whoever
    /// wrote them (a pull from object storage checks every byte on the way in). Only the
    /// set of files and their sizes are checked here.
    pub fn commit_verified(mut self, manifest: SnapshotManifest) -> Result<LocalSnapshot, SnapshotError> {
        let id = self.id.to_string();
        let mut names = Vec::new();
        collect_files(&self.dir, &self.dir, &mut names)?;
        names.sort();
        let mut expected: Vec<&str> = manifest.artifacts.iter().map(|a| a.name.as_str()).collect();
        expected.sort_unstable();
        if names != expected {
            return Err(SnapshotError::Corrupt {
                id,
                artifact: "(file set)".into(),
                detail: format!("have {names:?}, the manifest lists {expected:?}"),
            });
        }
        for a in &manifest.artifacts {
            let len = fs::metadata(self.dir.join(&a.name)).map(|m| m.len()).unwrap_or(u64::MAX);
            if len != a.size {
                return Err(SnapshotError::Corrupt {
                    id,
                    artifact: a.name.clone(),
                    detail: format!("size {len} but the manifest says {}", a.size),
                });
            }
        }
        let snap = finish_dir(&self.dir, &self.final_dir, manifest)?;
        self.committed = true;
        Ok(snap)
    }
}

impl Drop for PendingSnapshot {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A whole capture that is not committed yet (`.quarantine-<id>`). Unlike a pending
/// snapshot it is *kept* when dropped: it may be the only copy of an actor's state.
#[derive(Debug)]
pub struct CapturedSnapshot {
    id: SnapshotId,
    dir: PathBuf,
    final_dir: PathBuf,
}

impl CapturedSnapshot {
    pub fn id(&self) -> &SnapshotId {
        &self.id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest-to-be recorded before the freeze.
    pub fn intent(&self) -> Result<SnapshotManifest, SnapshotError> {
        let path = self.dir.join(INTENT_FILE);
        let no_intent = |detail: String| SnapshotError::NoIntent {
            id: self.id.to_string(),
            dir: self.dir.display().to_string(),
            detail,
        };
        let bytes = fs::read(&path).map_err(|e| no_intent(e.to_string()))?;
        SnapshotManifest::from_json(&bytes).map_err(|e| no_intent(e.to_string()))
    }

    /// Hashes the artifacts, completes the intent with them, writes the manifest last and
    /// moves the snapshot to its final name. On failure (a full disk, say) the capture stays
    /// where it is, whole, for a later commit; a half-written manifest is removed.
    pub fn commit(&self) -> Result<LocalSnapshot, SnapshotError> {
        let mut manifest = self.intent()?;
        let result = digest_dir(&self.dir).and_then(|(artifacts, chunks, names)| {
            manifest.artifacts = artifacts;
            let mut snap = finish_dir(&self.dir, &self.final_dir, manifest)?;
            snap.chunk_digests = names.into_iter().zip(chunks).collect();
            Ok(snap)
        });
        if result.is_err() {
            let _ = fs::remove_file(self.dir.join(".manifest.json.tmp"));
            let _ = fs::remove_file(self.dir.join(MANIFEST_FILE));
        }
        result
    }

    /// Removes the capture (its workload was taken back, so it is not needed).
    pub fn discard(self) -> Result<(), SnapshotError> {
        fs::remove_dir_all(&self.dir).map_err(io_err(format!("removing {}", self.dir.display())))
    }
}

/// Hashes (and sparsifies) every artifact under `dir`: the artifact list, their chunk
/// digests and their names, in name order.
type DigestedDir = (Vec<Artifact>, Vec<Vec<[u8; 32]>>, Vec<String>);

fn digest_dir(dir: &Path) -> Result<DigestedDir, SnapshotError> {
    let mut names = Vec::new();
    collect_files(dir, dir, &mut names)?;
    names.sort();
    let (artifacts, chunks): (Vec<Artifact>, Vec<_>) =
        digest_files_parallel(dir, &names)?.into_iter().unzip();
    Ok((artifacts, chunks, names))
}

/// Syncs the artifacts, writes the manifest (temp, fsync, rename), and renames `dir` to
/// `final_dir`.
fn finish_dir(
    dir: &Path,
    final_dir: &Path,
    manifest: SnapshotManifest,
) -> Result<LocalSnapshot, SnapshotError> {
    for a in &manifest.artifacts {
        sync_file(&dir.join(&a.name))?;
    }
    let tmp = dir.join(".manifest.json.tmp");
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(format!("creating {}", tmp.display())))?;
        f.write_all(&manifest.to_json()).map_err(io_err("writing manifest"))?;
        f.sync_all().map_err(io_err("syncing manifest"))?;
    }
    fs::rename(&tmp, dir.join(MANIFEST_FILE)).map_err(io_err("renaming manifest"))?;
    sync_dir(dir)?;
    fs::rename(dir, final_dir).map_err(io_err(format!(
        "renaming {} to {}",
        dir.display(),
        final_dir.display()
    )))?;
    if let Some(parent) = final_dir.parent() {
        sync_dir(parent)?;
    }
    Ok(LocalSnapshot { dir: final_dir.to_owned(), manifest, chunk_digests: BTreeMap::new() })
}

/// A complete snapshot on this node.
#[derive(Clone, Debug)]
pub struct LocalSnapshot {
    pub dir: PathBuf,
    pub manifest: SnapshotManifest,
    /// Right after [`PendingSnapshot::commit`]: each artifact's chunk digests
    /// (`DIGEST_CHUNK_SIZE` chunks, the ones its `chunk_digest` root is made of), so that a
    /// push that follows need not hash the same bytes again. Empty when opened from disk.
    pub chunk_digests: BTreeMap<String, Vec<[u8; 32]>>,
}

impl LocalSnapshot {
    /// Opens a snapshot directory anywhere (for example one just pulled from object storage).
    pub fn open_dir(dir: &Path, id_for_errors: &str) -> Result<Self, SnapshotError> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = fs::read(&path).map_err(io_err(format!("reading {}", path.display())))?;
        let manifest = SnapshotManifest::from_json(&bytes)
            .map_err(|source| SnapshotError::BadManifest { id: id_for_errors.to_owned(), source })?;
        Ok(Self { dir: dir.to_owned(), manifest, chunk_digests: BTreeMap::new() })
    }

    /// Absolute paths of the artifacts and then the manifest.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut v: Vec<_> = self.manifest.artifacts.iter().map(|a| self.dir.join(&a.name)).collect();
        v.push(self.dir.join(MANIFEST_FILE));
        v
    }

    /// Re-hashes every artifact (in parallel) and compares size and sha256 with the manifest.
    /// The error names the first artifact that does not match.
    pub fn verify(&self) -> Result<(), SnapshotError> {
        let id = self.manifest.snapshot_id.to_string();
        for a in &self.manifest.artifacts {
            let meta = fs::metadata(self.dir.join(&a.name)).map_err(|e| SnapshotError::Corrupt {
                id: id.clone(),
                artifact: a.name.clone(),
                detail: format!("cannot read it: {e}"),
            })?;
            if meta.len() != a.size {
                return Err(SnapshotError::Corrupt {
                    id,
                    artifact: a.name.clone(),
                    detail: format!("size {} but the manifest says {}", meta.len(), a.size),
                });
            }
        }
        // Chunked digests: parallel, holes skipped. Older manifests: whole-file sha256.
        for a in &self.manifest.artifacts {
            let path = self.dir.join(&a.name);
            let (got, want, what) = match &a.chunk_digest {
                Some(c) => (digest::chunk_root(&path, c.chunk_size), &c.root, "chunk digest"),
                None => (sha256_file(&path).map(|(_, d)| d), &a.sha256, "sha256"),
            };
            let got = got.map_err(|e| SnapshotError::Corrupt {
                id: id.clone(),
                artifact: a.name.clone(),
                detail: format!("cannot read it: {e}"),
            })?;
            if &got != want {
                return Err(SnapshotError::Corrupt {
                    id,
                    artifact: a.name.clone(),
                    detail: format!("{what} {got} but the manifest says {want}"),
                });
            }
        }
        Ok(())
    }
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), SnapshotError> {
    for entry in fs::read_dir(dir).map_err(io_err(format!("listing {}", dir.display())))? {
        let entry = entry.map_err(io_err(format!("listing {}", dir.display())))?;
        let ty = entry.file_type().map_err(io_err("stat"))?;
        let path = entry.path();
        if ty.is_dir() {
            collect_files(root, &path, out)?;
        } else if ty.is_file() {
            let rel = path.strip_prefix(root).expect("under root").to_string_lossy().into_owned();
            // Dot-files are ateom's own bookkeeping (intent, manifest temp, backend status).
            if rel != MANIFEST_FILE && !rel.starts_with('.') {
                out.push(rel);
            }
        }
    }
    Ok(())
}

/// sha256 of a file, streamed in 1 MiB reads.
pub fn sha256_file(path: &Path) -> io::Result<(u64, String)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf)?;
        if r == 0 {
            break;
        }
        h.update(&buf[..r]);
        n += r as u64;
    }
    Ok((n, hex::encode(h.finalize())))
}

/// Digests (and sparsifies) the named files under `dir`, one thread per file (bounded by
/// the core count).
type Digested = (Artifact, Vec<[u8; 32]>);

fn digest_files_parallel(dir: &Path, names: &[String]) -> Result<Vec<Digested>, SnapshotError> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).max(1);
    let mut results: Vec<Option<Result<Digested, SnapshotError>>> = (0..names.len()).map(|_| None).collect();
    for (chunk_names, chunk_results) in names.chunks(workers).zip(results.chunks_mut(workers)) {
        std::thread::scope(|s| {
            let handles: Vec<_> = chunk_names
                .iter()
                .map(|name| {
                    s.spawn(move || {
                        let path = dir.join(name);
                        digest::digest_and_sparsify(&path)
                            .map(|d| {
                                let artifact = Artifact {
                                    name: name.clone(),
                                    size: d.size,
                                    sha256: d.sha256,
                                    chunk_digest: Some(d.chunk_digest),
                                };
                                (artifact, d.chunks)
                            })
                            .map_err(io_err(format!("hashing {}", path.display())))
                    })
                })
                .collect();
            for (slot, h) in chunk_results.iter_mut().zip(handles) {
                *slot = Some(h.join().expect("hash thread does not panic"));
            }
        });
    }
    results.into_iter().map(|r| r.expect("every slot filled")).collect()
}

fn sync_file(path: &Path) -> Result<(), SnapshotError> {
    File::open(path).and_then(|f| f.sync_all()).map_err(io_err(format!("syncing {}", path.display())))
}

fn sync_dir(path: &Path) -> Result<(), SnapshotError> {
    File::open(path).and_then(|f| f.sync_all()).map_err(io_err(format!("syncing {}", path.display())))
}

#[cfg(test)]
mod tests;

/// Bytes of disk a directory tree occupies (allocated blocks, so holes count for nothing).
fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = fs::symlink_metadata(path) else { return 0 };
    let own = md.blocks() * 512;
    if !md.is_dir() {
        return own;
    }
    let children = fs::read_dir(path).into_iter().flatten().flatten();
    own + children.map(|e| disk_usage(&e.path())).sum::<u64>()
}

/// Copies a directory tree (regular files, directories, symlinks as links; modes kept) from
/// `src` into `dst`, which is created. Returns the bytes of file data copied. Device nodes,
/// FIFOs and sockets are skipped: a durable directory holds data.
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<u64> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dst)?;
    fs::set_permissions(dst, fs::Permissions::from_mode(fs::metadata(src)?.permissions().mode() & 0o7777))?;
    let mut bytes = 0;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        let to = dst.join(entry.file_name());
        if ty.is_dir() {
            bytes += copy_tree(&entry.path(), &to)?;
        } else if ty.is_file() {
            bytes += fs::copy(entry.path(), &to)?;
        } else if ty.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path())?, &to)?;
        }
    }
    Ok(bytes)
}

/// Replaces the contents of `dst` with a copy of `src` (see [`copy_tree`]): the old contents
/// are moved aside first and removed only once the copy is complete.
pub fn replace_tree(src: &Path, dst: &Path) -> io::Result<u64> {
    let aside = dst.with_file_name(format!(
        ".{}.old-{}",
        dst.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    let had = dst.exists();
    if had {
        let _ = fs::remove_dir_all(&aside);
        fs::rename(dst, &aside)?;
    }
    match copy_tree(src, dst) {
        Ok(n) => {
            if had {
                let _ = fs::remove_dir_all(&aside);
            }
            Ok(n)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(dst);
            if had {
                let _ = fs::rename(&aside, dst);
            }
            Err(e)
        }
    }
}
