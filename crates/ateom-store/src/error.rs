//! Error types. Every failure names what it was working on (snapshot, artifact, chunk, object
//! key, local path) so that a control plane can turn it into a readable CRASHED reason.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Signatures are required (signing keys are configured) and this object has none.
    #[error(
        "{object} under {prefix} is not signed; this store requires signed snapshots (refusing it before reading anything else)"
    )]
    Unsigned { object: String, prefix: String },

    /// The object's signature does not verify with any configured key.
    #[error(
        "{object} under {prefix} has a signature (key {key_id}) that does not verify with this worker's keys: refusing it"
    )]
    BadSignature { object: String, prefix: String, key_id: String },

    /// The URI given to [`Store::open`](crate::Store::open) cannot be used.
    #[error("invalid store location {uri:?}: {reason}")]
    InvalidLocation { uri: String, reason: String },

    /// The URI scheme is not one of `file`, `s3`, `gs`, `az` (or the cloud feature is off).
    #[error("unsupported store scheme {scheme:?} in {uri:?} (supported: {supported})")]
    UnsupportedScheme { uri: String, scheme: String, supported: &'static str },

    /// An option passed to the object-store builder was not understood.
    #[error("invalid option {key:?} for {scheme} store: {reason}")]
    InvalidOption { scheme: &'static str, key: String, reason: String },

    /// A [`StoreConfig`](crate::StoreConfig) value is out of range.
    #[error("invalid store configuration: {0}")]
    InvalidConfig(String),

    /// The snapshot id is not usable as one path segment.
    #[error("invalid snapshot id {id:?}: {reason}")]
    InvalidSnapshotId { id: String, reason: &'static str },

    /// An artifact name given to a push is not a safe relative path, or repeats.
    #[error("invalid artifact name {name:?}: {reason}")]
    InvalidArtifactName { name: String, reason: &'static str },

    /// There is no committed snapshot (no index object) with this id. For `pull(None)` without
    /// a `LATEST` pointer the id is `LATEST`.
    #[error("no such snapshot {id} under {prefix}")]
    NotFound { id: String, prefix: String },

    /// The index object exists but does not decode or validate.
    #[error("corrupt index of snapshot {id} under {prefix}: {source}")]
    CorruptIndex {
        id: String,
        prefix: String,
        #[source]
        source: crate::index::IndexError,
    },

    /// The `LATEST` pointer exists but does not decode.
    #[error("corrupt LATEST pointer under {prefix}: {reason}")]
    CorruptLatest { prefix: String, reason: String },

    /// A chunk object the index references is absent.
    #[error("snapshot {id}: chunk {chunk} of artifact {artifact:?} is missing (object {key})")]
    MissingChunk { id: String, artifact: String, chunk: usize, key: String },

    /// A chunk object was fetched but its bytes are not what the index promises.
    #[error("snapshot {id}: chunk {chunk} of artifact {artifact:?} (object {key}) is corrupt: {fault}")]
    CorruptChunk { id: String, artifact: String, chunk: usize, key: String, fault: Box<ChunkFault> },

    /// An index entry contradicts itself: checked for every chunk before any is fetched, so a
    /// tampered table is refused before a byte moves.
    #[error("snapshot {id}: chunk {chunk} of artifact {artifact:?} is refused by its index entry: {fault}")]
    InconsistentChunk { id: String, artifact: String, chunk: usize, fault: Box<ChunkFault> },

    /// After a pull the artifact's whole-file digest differs from the index.
    #[error("snapshot {id}: artifact {artifact:?} has sha256 {actual} after pull, index says {expected}")]
    ArtifactDigestMismatch { id: String, artifact: String, expected: String, actual: String },

    /// An object is larger than a reader of its kind accepts (`LATEST`, `index.json`, or a chunk
    /// object larger than its index entry says). Checked from the response's size before the
    /// body is read, and again while reading, so a huge object never fills memory.
    #[error("object {key} is {size} bytes{}, more than the {limit} bytes a reader accepts", if *.at_least { " or more" } else { "" })]
    ObjectTooLarge { key: String, size: u64, at_least: bool, limit: u64 },

    /// A `file://` store refused to delete through a symbolic link (a path component under the
    /// store's root is a symlink). Deletes and gc never follow links out of the store.
    #[error("refusing to delete {path} in a file:// store: {component} is a symbolic link")]
    SymlinkInStore { path: PathBuf, component: PathBuf },

    /// A local artifact changed size while it was being pushed.
    #[error("artifact {path} changed while being read: expected {expected} bytes, read {actual}")]
    ArtifactChanged { path: PathBuf, expected: u64, actual: u64 },

    /// A local artifact is not a regular file.
    #[error("artifact {path} is not a regular file")]
    NotAFile { path: PathBuf },

    /// A remote operation failed for good (after retries where the error was transient).
    #[error("object store {op} of {key} failed after {attempts} attempt(s) in {elapsed_ms} ms: {source}")]
    Remote {
        op: &'static str,
        key: String,
        attempts: u32,
        elapsed_ms: u64,
        #[source]
        source: RemoteError,
    },

    /// Local file-system I/O failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// zstd refused to compress a chunk (out of memory, bad level).
    #[error("compressing chunk {chunk} of artifact {artifact:?} failed: {source}")]
    Compress {
        artifact: String,
        chunk: usize,
        #[source]
        source: std::io::Error,
    },

    /// The index could not be serialized (cannot happen for valid `meta` values).
    #[error("encoding the index failed: {0}")]
    EncodeIndex(#[source] serde_json::Error),

    /// A worker task panicked or was cancelled by the runtime.
    #[error("background {what} task failed: {source}")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

/// What was wrong with a fetched chunk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkFault {
    /// The stored object's size differs from the index's `compressed_length`.
    #[error("stored object is {actual} bytes, index says {expected}")]
    StoredLength { expected: u64, actual: u64 },
    /// The object is not a valid zstd frame, or it decodes to more than the chunk length.
    #[error("zstd decode failed: {0}")]
    Decode(String),
    /// The object decoded to a different number of bytes than the chunk length.
    #[error("decoded to {actual} bytes, index says {expected}")]
    DecodedLength { expected: u64, actual: u64 },
    /// The decoded bytes hash to something else than the index's sha256.
    #[error("sha256 {actual} does not match index sha256 {expected}")]
    Digest { expected: String, actual: String },
    /// The index marks the chunk all-zero (nothing stored), but its sha256 is not that of
    /// `length` zero bytes: the table was altered (e.g. a data chunk turned into a hole).
    #[error("marked all-zero, but its sha256 {expected} is not the sha256 of {length} zero bytes ({zeros})")]
    ZeroDigest { expected: String, zeros: String, length: u64 },
    /// The index stores the chunk as an object, but its sha256 is that of `length` zero bytes:
    /// no writer stores a zero chunk, so the table was altered.
    #[error(
        "stored as an object, but its sha256 is the sha256 of {length} zero bytes (writers never store zero chunks)"
    )]
    StoredZeros { length: u64 },
}

/// The last error of a failed remote operation.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The object store returned an error.
    #[error(transparent)]
    Store(#[from] object_store::Error),
    /// One attempt took longer than [`RetryPolicy::attempt_timeout`](crate::RetryPolicy).
    #[error("attempt timed out after {0:?}")]
    AttemptTimeout(Duration),
}

impl RemoteError {
    /// `true` when the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, RemoteError::Store(object_store::Error::NotFound { .. }))
    }
}

impl StoreError {
    /// `true` for [`StoreError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io { path: path.into(), source }
    }
}
