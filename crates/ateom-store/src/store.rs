//! The [`Store`] handle, its configuration, progress reporting and the shared helpers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::Serialize;

use crate::error::{RemoteError, StoreError};
use crate::index::{
    INDEX_OBJECT, LATEST_OBJECT, LatestPointer, MAX_CHUNK_SIZE, MAX_INDEX_BYTES, MAX_LATEST_BYTES,
    MIN_CHUNK_SIZE, SnapshotIndex,
};
use crate::local::SymlinkRefused;
use crate::retry::{Failed, RetryPolicy, retry};

/// What a bounded GET read.
pub(crate) enum Bounded {
    Bytes(Bytes),
    /// Larger than the limit: `size` from the response (`at_least`: counted while reading).
    TooLarge {
        size: u64,
        at_least: bool,
    },
}

/// A failed capped GET: the object is missing, or anything else as a store error.
pub(crate) enum GetError {
    NotFound,
    Store(StoreError),
}

/// Default chunk size: 1 MiB (see the crate docs for why).
pub const DEFAULT_CHUNK_SIZE: u64 = 1 << 20;
/// Default zstd level.
pub const DEFAULT_LEVEL: i32 = 1;
/// Default number of chunk transfers in flight.
pub const DEFAULT_CONCURRENCY: usize = 8;

/// Tunables of a [`Store`]. `Default` gives 1 MiB chunks, zstd level 1, 8 transfers in
/// flight, one compression worker per core and [`RetryPolicy::default`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Chunk size for pushes: a multiple of 4096 in 4 KiB..=64 MiB. (Pulls use the chunk size
    /// recorded in the index.)
    pub chunk_size: u64,
    /// zstd level for pushes (zstd's range; 1 is fast and already shrinks memory images well).
    pub compression_level: i32,
    /// Chunk uploads / downloads in flight at once (>= 1).
    pub concurrency: usize,
    /// Chunks being hashed / compressed / decompressed at once on the blocking pool (>= 1).
    pub cpu_workers: usize,
    /// Retries of every remote operation.
    pub retry: RetryPolicy,
    /// Sign indexes and `LATEST` on push, and refuse unsigned or mis-signed ones on read
    /// (see [`crate::sign`]). `None`: signatures are neither written nor required.
    pub signing: Option<crate::sign::SigningKeys>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            chunk_size: DEFAULT_CHUNK_SIZE,
            compression_level: DEFAULT_LEVEL,
            concurrency: DEFAULT_CONCURRENCY,
            cpu_workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            retry: RetryPolicy::default(),
            signing: None,
        }
    }
}

impl StoreConfig {
    /// Check every field's range.
    pub fn validate(&self) -> Result<(), StoreError> {
        let bad = |m: String| Err(StoreError::InvalidConfig(m));
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size)
            || !self.chunk_size.is_multiple_of(4096)
        {
            return bad(format!(
                "chunk_size {} must be a multiple of 4096 in {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}",
                self.chunk_size
            ));
        }
        let levels = zstd::compression_level_range();
        if !levels.contains(&self.compression_level) {
            return bad(format!("compression_level {} is outside zstd's {levels:?}", self.compression_level));
        }
        if self.concurrency == 0 || self.cpu_workers == 0 {
            return bad("concurrency and cpu_workers must be at least 1".into());
        }
        if self.retry.max_attempts == 0 {
            return bad("retry.max_attempts must be at least 1".into());
        }
        if self.retry.attempt_timeout.is_zero() {
            return bad("retry.attempt_timeout must be positive".into());
        }
        Ok(())
    }
}

/// Receives progress of a push or pull: logical bytes done out of the total. Called from
/// async tasks after each chunk, so it must be cheap (e.g. set an indicatif bar's position).
pub trait Progress: Send + Sync {
    fn update(&self, done_bytes: u64, total_bytes: u64);
}

impl<F: Fn(u64, u64) + Send + Sync> Progress for F {
    fn update(&self, done_bytes: u64, total_bytes: u64) {
        self(done_bytes, total_bytes)
    }
}

/// Options of one push.
#[derive(Clone)]
pub struct PushOptions {
    /// Progress receiver.
    pub progress: Option<Arc<dyn Progress>>,
    /// Point `LATEST` at the snapshot after its index is written (default true), unless
    /// `LATEST` already names a newer snapshot (see `force_latest`).
    pub update_latest: bool,
    /// Move `LATEST` even when it names a newer snapshot than this one (default false:
    /// `LATEST` never moves backwards; "newer" is the larger snapshot id, see the crate docs).
    pub force_latest: bool,
    /// Whole-file sha256 (lowercase hex) of artifacts the caller has already hashed (for
    /// ateom: the local snapshot's manifest, verified when it was committed). Those artifacts
    /// are not hashed again, so a push costs work proportional to the data, not to the file
    /// size (zeros are never read twice). Every chunk still carries its own sha256.
    pub known_digests: HashMap<String, String>,
    /// The sha256 of every chunk of artifacts the caller has just hashed, for chunks of
    /// `chunk_size` bytes (ateom: the digests its commit computed moments before). Where the
    /// size matches the store's chunk size and the count the artifact's, those chunks are not
    /// hashed again. A wrong digest is never trusted blindly: every pull verifies each chunk
    /// against it, so a mismatch fails the restore loudly.
    pub known_chunk_digests: HashMap<String, KnownChunks>,
}

/// Chunk digests known for one artifact (see [`PushOptions::known_chunk_digests`]).
#[derive(Clone, Debug)]
pub struct KnownChunks {
    pub chunk_size: u64,
    pub digests: Vec<crate::index::Digest>,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            progress: None,
            update_latest: true,
            force_latest: false,
            known_digests: HashMap::new(),
            known_chunk_digests: HashMap::new(),
        }
    }
}

/// Options of one pull.
#[derive(Clone, Default)]
pub struct PullOptions {
    /// Progress receiver. (There is no option to verify less: every pull checks every chunk
    /// and every whole-file sha256; see "What each digest covers" in the crate docs.)
    pub progress: Option<Arc<dyn Progress>>,
}

impl std::fmt::Debug for PushOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushOptions")
            .field("progress", &self.progress.is_some())
            .field("update_latest", &self.update_latest)
            .field("force_latest", &self.force_latest)
            .finish()
    }
}

impl std::fmt::Debug for PullOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullOptions").field("progress", &self.progress.is_some()).finish()
    }
}

/// Figures of a finished push.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PushReport {
    pub snapshot_id: String,
    /// Sum of artifact sizes.
    pub logical_bytes: u64,
    /// Compressed bytes of the snapshot's distinct chunk objects.
    pub stored_bytes: u64,
    /// Compressed bytes sent by this push (excludes skipped and deduplicated chunks).
    pub uploaded_bytes: u64,
    /// Size of the index object.
    pub index_bytes: u64,
    pub chunks_total: u64,
    /// All-zero chunks (not stored).
    pub chunks_zero: u64,
    /// Chunk objects written by this push.
    pub chunks_uploaded: u64,
    /// Chunks whose object was already under the snapshot prefix (an earlier, interrupted or
    /// replaced push of the same id).
    pub chunks_skipped_existing: u64,
    /// Chunks identical to another chunk of this snapshot (stored once).
    pub chunks_deduplicated: u64,
    /// An index for this id existed before and was replaced.
    pub replaced_existing: bool,
    /// Chunk objects of the replaced snapshot that the new index does not use, removed.
    pub stale_chunks_removed: u64,
    /// The snapshot `LATEST` names after the push (`None` when `update_latest` was off).
    pub latest: Option<String>,
    /// `LATEST` now names this snapshot (false when it already named a newer one).
    pub latest_moved: bool,
    pub elapsed_ms: u64,
}

/// Figures of a finished pull.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PullReport {
    pub snapshot_id: String,
    pub logical_bytes: u64,
    /// Compressed bytes fetched.
    pub stored_bytes: u64,
    pub chunks_total: u64,
    pub chunks_zero: u64,
    pub chunks_fetched: u64,
    pub elapsed_ms: u64,
}

/// A handle on one store prefix (`<uri_prefix>`), under which each snapshot lives in
/// `<uri_prefix>/<snapshot_id>/`. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: Path,
    pub display: String,
    pub config: StoreConfig,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("uri", &self.inner.display)
            .field("backend", &self.inner.store.to_string())
            .field("config", &self.inner.config)
            .finish()
    }
}

impl Store {
    /// Open a store prefix: `file:///abs/dir`, `s3://bucket/prefix`, `gs://bucket/prefix` or
    /// `az://container/prefix`. Cloud endpoints, regions and credentials come from the
    /// environment (`AWS_ENDPOINT_URL`/`AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ALLOW_HTTP`, `GOOGLE_*`, `AZURE_*`).
    /// A `file://` directory is created if missing. Nothing is contacted yet.
    pub fn open(uri_prefix: &str) -> Result<Store, StoreError> {
        Self::open_with_options(uri_prefix, std::iter::empty::<(&str, &str)>())
    }

    /// Like [`Store::open`], with object_store builder options (for example
    /// `("aws_endpoint", "http://127.0.0.1:9000")`, `("aws_access_key_id", …)`,
    /// `("aws_allow_http", "true")`) that override the environment.
    pub fn open_with_options<I, K, V>(uri_prefix: &str, options: I) -> Result<Store, StoreError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<String>,
    {
        let loc = crate::location::open(uri_prefix, options)?;
        Ok(Self::from_parts(loc.store, loc.prefix, loc.display, StoreConfig::default()))
    }

    /// Use an already built object store (any `ObjectStore`, e.g. one wrapped for metrics)
    /// with `prefix` as the store prefix. `display` names it in messages.
    pub fn from_object_store(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        display: impl Into<String>,
    ) -> Result<Store, StoreError> {
        let p = Path::parse(prefix.trim_matches('/'))
            .map_err(|e| StoreError::InvalidLocation { uri: prefix.into(), reason: e.to_string() })?;
        Ok(Self::from_parts(store, p, display.into(), StoreConfig::default()))
    }

    fn from_parts(store: Arc<dyn ObjectStore>, prefix: Path, display: String, config: StoreConfig) -> Store {
        Store { inner: Arc::new(Inner { store, prefix, display, config }) }
    }

    /// The same store with another configuration.
    pub fn with_config(&self, config: StoreConfig) -> Result<Store, StoreError> {
        config.validate()?;
        let i = &self.inner;
        Ok(Self::from_parts(i.store.clone(), i.prefix.clone(), i.display.clone(), config))
    }

    /// The configuration in use.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// The URI prefix as given to `open`, without a trailing `/`.
    pub fn uri(&self) -> &str {
        &self.inner.display
    }

    /// Read and validate the index of `snapshot_id`.
    pub async fn read_index(&self, snapshot_id: &str) -> Result<SnapshotIndex, StoreError> {
        check_id(snapshot_id)?;
        self.inner.read_index(snapshot_id).await
    }

    /// The snapshot id `LATEST` points at (the pointer may outlive a deleted snapshot; pulls
    /// then report that id as not found).
    pub async fn latest(&self) -> Result<String, StoreError> {
        self.inner.read_latest().await
    }
}

pub(crate) fn check_id(id: &str) -> Result<(), StoreError> {
    crate::index::check_snapshot_id(id)
        .map_err(|reason| StoreError::InvalidSnapshotId { id: id.to_string(), reason })
}

pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Inner {
    /// `<prefix>/<rel>` where `rel` is a `/`-separated relative key already validated.
    pub fn key(&self, rel: &str) -> Path {
        let mut parts: Vec<object_store::path::PathPart<'static>> =
            self.prefix.parts().map(|p| p.as_ref().to_string().into()).collect();
        parts.extend(rel.split('/').map(|s| object_store::path::PathPart::from(s.to_string())));
        Path::from_iter(parts)
    }

    pub fn snapshot_dir(&self, id: &str) -> Path {
        self.key(id)
    }

    pub fn index_key(&self, id: &str) -> Path {
        self.key(&format!("{id}/{INDEX_OBJECT}"))
    }

    pub fn latest_key(&self) -> Path {
        self.key(LATEST_OBJECT)
    }

    pub fn not_found(&self, id: &str) -> StoreError {
        StoreError::NotFound { id: id.to_string(), prefix: self.display.clone() }
    }

    /// GET with retries, reading at most `limit` bytes: the object's size (from the response
    /// headers, or the file's metadata) is checked before its body is read, and a body that
    /// runs past the limit anyway stops being read. A too-large object is not retried.
    pub async fn get_bounded(&self, op: &'static str, key: &Path, limit: u64) -> Result<Bounded, Failed> {
        use futures::TryStreamExt;
        use object_store::GetResultPayload;
        retry(&self.config.retry, op, key, || async {
            let r = self.store.get_opts(key, object_store::GetOptions::default()).await?;
            let size = r.meta.size;
            if size > limit {
                return Ok(Bounded::TooLarge { size, at_least: false });
            }
            if matches!(r.payload, GetResultPayload::File(..)) {
                // Reads exactly the range fixed when the file was opened (<= limit).
                return r.bytes().await.map(Bounded::Bytes);
            }
            let mut buf = Vec::new();
            buf.try_reserve_exact(size as usize).map_err(|e| object_store::Error::Generic {
                store: "ateom-store",
                source: Box::new(std::io::Error::new(std::io::ErrorKind::OutOfMemory, e)),
            })?;
            let mut body = r.into_stream();
            while let Some(part) = body.try_next().await? {
                let total = buf.len() as u64 + part.len() as u64;
                if total > limit {
                    return Ok(Bounded::TooLarge { size: total, at_least: true });
                }
                buf.extend_from_slice(&part);
            }
            Ok(Bounded::Bytes(Bytes::from(buf)))
        })
        .await
    }

    /// [`Inner::get_bounded`], a too-large object being [`StoreError::ObjectTooLarge`].
    pub async fn get_capped(&self, op: &'static str, key: &Path, limit: u64) -> Result<Bytes, GetError> {
        match self.get_bounded(op, key, limit).await {
            Ok(Bounded::Bytes(b)) => Ok(b),
            Ok(Bounded::TooLarge { size, at_least }) => Err(GetError::Store(StoreError::ObjectTooLarge {
                key: key.to_string(),
                size,
                at_least,
                limit,
            })),
            Err(f) if f.is_not_found() => Err(GetError::NotFound),
            Err(f) => Err(GetError::Store(f.into())),
        }
    }

    /// PUT with retries (overwrite).
    pub async fn put(&self, op: &'static str, key: &Path, data: Bytes) -> Result<(), Failed> {
        retry(&self.config.retry, op, key, || {
            let payload = PutPayload::from_bytes(data.clone());
            async move { self.store.put(key, payload).await.map(|_| ()) }
        })
        .await
    }

    /// DELETE with retries; `false` when the object was already missing. A `file://` store's
    /// refusal to delete through a symlink is [`StoreError::SymlinkInStore`].
    pub async fn delete(&self, key: &Path) -> Result<bool, StoreError> {
        match retry(&self.config.retry, "delete", key, || self.store.delete(key)).await {
            Ok(()) => Ok(true),
            Err(f) if f.is_not_found() => Ok(false),
            Err(f) => {
                if let RemoteError::Store(object_store::Error::PermissionDenied { source, .. }) = &f.source
                    && let Some(r) = source.downcast_ref::<SymlinkRefused>()
                {
                    return Err(StoreError::SymlinkInStore {
                        path: r.path.clone(),
                        component: r.component.clone(),
                    });
                }
                Err(f.into())
            }
        }
    }

    /// LIST (recursive) with retries of the whole listing; a missing prefix is empty.
    pub async fn list_all(&self, prefix: &Path) -> Result<Vec<object_store::ObjectMeta>, Failed> {
        use futures::TryStreamExt;
        match retry(&self.config.retry, "list", prefix, || self.store.list(Some(prefix)).try_collect()).await
        {
            Err(f) if f.is_not_found() => Ok(Vec::new()),
            other => other,
        }
    }

    pub async fn read_index(&self, id: &str) -> Result<SnapshotIndex, StoreError> {
        let key = self.index_key(id);
        let bytes = match self.get_capped("get index", &key, MAX_INDEX_BYTES as u64).await {
            Ok(b) => b,
            Err(GetError::NotFound) => return Err(self.not_found(id)),
            Err(GetError::Store(e)) => return Err(e),
        };
        let mut index = SnapshotIndex::decode(&bytes).map_err(|source| StoreError::CorruptIndex {
            id: id.to_string(),
            prefix: self.display.clone(),
            source,
        })?;
        if let Some(keys) = &self.config.signing {
            let object = format!("{id}/{INDEX_OBJECT}");
            let Some(sig) = index.signature.take() else {
                return Err(StoreError::Unsigned { object, prefix: self.display.clone() });
            };
            let signed = index.encode()?;
            if !keys.verify(&sig, crate::sign::INDEX_DOMAIN, &self.display, &signed) {
                return Err(StoreError::BadSignature {
                    object,
                    prefix: self.display.clone(),
                    key_id: sig.key_id,
                });
            }
        }
        if index.snapshot_id != id {
            return Err(StoreError::CorruptIndex {
                id: id.to_string(),
                prefix: self.display.clone(),
                source: crate::index::IndexError::SnapshotId {
                    id: index.snapshot_id.chars().take(128).collect(),
                    reason: "the index names another snapshot than the prefix it is stored under",
                },
            });
        }
        Ok(index)
    }

    pub async fn read_latest(&self) -> Result<String, StoreError> {
        let bytes = match self.get_capped("get LATEST", &self.latest_key(), MAX_LATEST_BYTES as u64).await {
            Ok(b) => b,
            Err(GetError::NotFound) => return Err(self.not_found(LATEST_OBJECT)),
            Err(GetError::Store(e)) => return Err(e),
        };
        let mut p = LatestPointer::decode(&bytes)
            .map_err(|reason| StoreError::CorruptLatest { prefix: self.display.clone(), reason })?;
        if let Some(keys) = &self.config.signing {
            let object = LATEST_OBJECT.to_owned();
            let Some(sig) = p.signature.take() else {
                return Err(StoreError::Unsigned { object, prefix: self.display.clone() });
            };
            if !keys.verify(&sig, crate::sign::LATEST_DOMAIN, &self.display, p.snapshot_id.as_bytes()) {
                return Err(StoreError::BadSignature {
                    object,
                    prefix: self.display.clone(),
                    key_id: sig.key_id,
                });
            }
        }
        Ok(p.snapshot_id)
    }
}
