//! The SUSPENDED tier: shipping local snapshots to object storage and bringing them back.
//!
//! A durable snapshot is the local snapshot's artifacts in `ateom-store`'s chunked format
//! under `<uri_prefix>/<snapshot-id>/`, with the snapshot manifest as the index's `meta`.
//! The index is written last, so a snapshot whose upload was interrupted does not exist.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ateom_core::{ActorRef, SnapshotId, SnapshotManifest};
use ateom_snapshot::{LocalSnapshot, LocalSnapshots};
use ateom_store::{Progress, PullOptions, PushOptions, Store, StoreError};
use tracing::info;

use crate::RuntimeError;

/// Opened stores, by URI prefix (opening an S3 client is not free).
#[derive(Default)]
pub struct Stores {
    open: Mutex<HashMap<String, Store>>,
    /// Keys that sign what this worker pushes and that everything it pulls must be signed
    /// with (see `ateom_store::sign`).
    signing: Option<ateom_store::SigningKeys>,
}

impl Stores {
    pub fn new(signing: Option<ateom_store::SigningKeys>) -> Self {
        Stores { open: Mutex::default(), signing }
    }

    pub fn get(&self, uri_prefix: &str) -> Result<Store, RuntimeError> {
        let mut open = self.open.lock().expect("stores lock");
        if let Some(s) = open.get(uri_prefix) {
            return Ok(s.clone());
        }
        let mut s = Store::open(uri_prefix)?;
        if let Some(keys) = &self.signing {
            let cfg = ateom_store::StoreConfig { signing: Some(keys.clone()), ..s.config().clone() };
            s = s.with_config(cfg)?;
        }
        open.insert(uri_prefix.to_owned(), s.clone());
        Ok(s)
    }
}

/// Logs transfer progress at most once a second.
pub struct LogProgress {
    what: &'static str,
    snapshot: String,
    start: Instant,
    last: Mutex<Instant>,
}

impl LogProgress {
    pub fn new(what: &'static str, snapshot: &str) -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Self { what, snapshot: snapshot.to_owned(), start: now, last: Mutex::new(now) })
    }
}

impl Progress for LogProgress {
    fn update(&self, done: u64, total: u64) {
        let mut last = self.last.lock().expect("progress lock");
        if last.elapsed() >= Duration::from_secs(1) {
            *last = Instant::now();
            let secs = self.start.elapsed().as_secs_f64().max(1e-3);
            info!(
                snapshot = %self.snapshot,
                done_bytes = done,
                total_bytes = total,
                mib_per_s = format!("{:.1}", done as f64 / secs / 1048576.0),
                "{} in progress",
                self.what
            );
        }
    }
}

/// What a push did.
#[derive(Clone, Debug)]
pub struct Pushed {
    pub location: String,
    pub stored_bytes: u64,
    pub elapsed: Duration,
}

/// Ships a committed local snapshot under `uri_prefix`.
pub async fn push(
    store: &Store,
    snap: &LocalSnapshot,
    progress: Option<Arc<dyn Progress>>,
) -> Result<Pushed, RuntimeError> {
    let id = snap.manifest.snapshot_id.to_string();
    let names: Vec<String> = snap.manifest.artifacts.iter().map(|a| a.name.clone()).collect();
    let meta = serde_json::to_value(&snap.manifest).expect("manifest serializes");
    let mut opts = PushOptions { progress, ..PushOptions::default() };
    // The local commit hashed every artifact; the store does not need to again.
    opts.known_digests = snap.manifest.artifacts.iter().map(|a| (a.name.clone(), a.sha256.clone())).collect();
    // ... and, right after a commit, every chunk too.
    opts.known_chunk_digests = snap
        .chunk_digests
        .iter()
        .map(|(name, digests)| {
            let digests = digests.iter().map(|d| ateom_store::Digest(*d)).collect();
            (name.clone(), ateom_store::KnownChunks { chunk_size: ateom_core::DIGEST_CHUNK_SIZE, digests })
        })
        .collect();
    let report = store.push_dir_with(&snap.dir, &names, &id, meta, &opts).await?;
    let location = format!("{}/{id}", store.uri());
    info!(
        snapshot = %id,
        %location,
        logical_bytes = report.logical_bytes,
        stored_bytes = report.stored_bytes,
        chunks = report.chunks_total,
        zero_chunks = report.chunks_zero,
        push_ms = report.elapsed_ms,
        "snapshot pushed"
    );
    Ok(Pushed {
        location,
        stored_bytes: report.stored_bytes,
        elapsed: Duration::from_millis(report.elapsed_ms),
    })
}

/// A durable snapshot's manifest, checked against its index: every artifact's size and
/// whole-file sha256 equal the index's (which every pull verifies), and where the manifest has
/// a chunked digest of the index's chunk size, the index's chunk table adds up to it.
pub struct DurableManifest {
    pub manifest: SnapshotManifest,
}

/// The manifest of a durable snapshot, read from its index (small: no data moves).
pub async fn manifest(store: &Store, id: &str) -> Result<DurableManifest, RuntimeError> {
    let index = store.read_index(id).await?;
    let bytes = serde_json::to_vec(&index.meta).expect("json value serializes");
    let manifest = SnapshotManifest::from_json(&bytes).map_err(|e| RuntimeError::DurableManifest {
        location: format!("{}/{id}", store.uri()),
        detail: e.to_string(),
    })?;
    // The index's digests are what pull verifies against; they must be the manifest's.
    for a in &manifest.artifacts {
        let indexed = index.artifacts.iter().find(|e| e.name == a.name);
        match indexed {
            Some(e) if e.sha256.to_hex() == a.sha256 && e.size == a.size => match &a.chunk_digest {
                Some(c) if c.chunk_size == index.chunk_size => {
                    let root = ateom_snapshot::digest::root_of(e.chunks.iter().map(|ch| ch.sha256.0));
                    if root != c.root {
                        return Err(RuntimeError::DurableManifest {
                            location: format!("{}/{id}", store.uri()),
                            detail: format!(
                                "the chunk table of {} does not add up to its chunk digest",
                                a.name
                            ),
                        });
                    }
                }
                _ => {}
            },
            _ => {
                return Err(RuntimeError::DurableManifest {
                    location: format!("{}/{id}", store.uri()),
                    detail: format!("artifact {} in the manifest does not match the chunk index", a.name),
                });
            }
        }
    }
    if index.artifacts.len() != manifest.artifacts.len() {
        return Err(RuntimeError::DurableManifest {
            location: format!("{}/{id}", store.uri()),
            detail: "the chunk index and the manifest list different artifacts".into(),
        });
    }
    if manifest.snapshot_id.as_str() != id {
        return Err(RuntimeError::DurableManifest {
            location: format!("{}/{id}", store.uri()),
            detail: format!("the manifest names snapshot {}", manifest.snapshot_id),
        });
    }
    Ok(DurableManifest { manifest })
}

/// What a pull did.
#[derive(Clone, Debug)]
pub struct Pulled {
    pub snapshot: LocalSnapshot,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Fetches a durable snapshot into the actor's local snapshots (verifying every byte on
/// the way in) and commits it there with its manifest.
pub async fn pull(
    store: &Store,
    local: &LocalSnapshots,
    actor: &ActorRef,
    durable: DurableManifest,
    progress: Option<Arc<dyn Progress>>,
) -> Result<Pulled, RuntimeError> {
    let manifest = durable.manifest;
    let id: SnapshotId = manifest.snapshot_id.clone();
    let pending = local.begin_empty(actor, id.clone())?;
    // Every fetched chunk is checked against its table entry; with the table bound to the
    // manifest, a whole-file pass over zeros adds nothing.
    let opts = PullOptions { progress };
    let report = store.pull_with(Some(id.as_str()), pending.dir(), &opts).await?;
    let snapshot =
        tokio::task::spawn_blocking(move || pending.commit_verified(manifest)).await.map_err(|e| {
            RuntimeError::Io {
                context: "committing pulled snapshot".into(),
                source: std::io::Error::other(e),
            }
        })??;
    info!(
        snapshot = %id,
        from = %store.uri(),
        stored_bytes = report.stored_bytes,
        logical_bytes = report.logical_bytes,
        pull_ms = report.elapsed_ms,
        "snapshot pulled"
    );
    Ok(Pulled { snapshot, bytes: report.stored_bytes, elapsed: Duration::from_millis(report.elapsed_ms) })
}

impl From<StoreError> for RuntimeError {
    fn from(e: StoreError) -> Self {
        RuntimeError::Store(Box::new(e))
    }
}
